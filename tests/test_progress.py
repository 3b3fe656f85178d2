"""Live progress and the time limit: the CP-SAT placer reports incumbents through a plain
callback (real OR-Tools); the rich display on a (forced) terminal shows stage, elapsed and gap;
not a terminal gives plain stage lines; -q nothing; --time-limit is a wall-clock deadline on
placement (asserted through the solver's own reported wall time)."""

from __future__ import annotations

import io

import pytest
from placement_cases import chain_edges, equal_chain, problem, square_block
from rich.console import Console

from compiler.cli import main
from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.placement import place
from compiler.placement.cpsat import runner
from compiler.progress import Live, Plain, Quiet, solver_text, stage_display


def test_cpsat_reports_incumbents_with_objective_and_bound():
    events = []
    result = compile_model("gpt2-tiny", "mesh8x8", CompileOptions(solver=SolverOptions(
        time_limit_s=5)), on_progress=lambda *e: events.append(e))
    incumbents = [e for e in events if e[1] is not None]
    assert incumbents and all(bound is not None and bound <= objective + 1e-6
                              for _, objective, bound, _ in incumbents)
    stages = [stage for stage, *_ in events]
    assert any(s.startswith("stage 1") for s in stages)
    assert any(s.startswith("stage 2 wafer 0") for s in stages)
    elapsed = [e[3] for e in events]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= result.placement.report.wall_time_s
    # stage 2 reports byte-hops: its last incumbent is the placement's objective
    last = [e for e in incumbents if e[0].startswith("stage 2")][-1]
    assert last[1] == pytest.approx(result.placement.report.objective)


def test_progress_does_not_change_the_placement():
    p = equal_chain(6, 4, 16, 16, shapes=True)
    quiet = place(p, "cpsat", time_limit_s=2.0)
    heard = place(p, "cpsat", time_limit_s=2.0, on_progress=lambda *e: None)
    assert (quiet.options, quiet.rects) == (heard.options, heard.rects)


def test_rich_display_on_a_terminal_shows_stage_elapsed_and_gap():
    buf = io.StringIO()
    display = Live(Console(file=buf, force_terminal=True, width=120))
    display.start("placement")
    display.solver("stage 2 wafer 0 fine", None, None, 0.1)
    display.solver("stage 2 wafer 0 fine", 1000.0, 800.0, 0.2)
    display.refresh()
    live = buf.getvalue()
    assert "placement" in live and "stage 2 wafer 0 fine" in live and "gap 20.0%" in live
    assert "0:00:0" in live  # elapsed
    display.done("placement", 1.5)
    display.close()
    assert "[placement] 1.50 s" in buf.getvalue()


def test_stage_display_kinds():
    assert isinstance(stage_display(True, io.StringIO()), Quiet)
    plain = stage_display(False, io.StringIO())  # a StringIO is not a terminal
    assert isinstance(plain, Plain) and not isinstance(plain, Live)
    plain.start("tiling")
    plain.solver("stage 1 factor 1.00: off-chip", 5.0, 4.0, 0.1)
    plain.done("tiling", 0.25)
    assert plain.stream.getvalue() == "[tiling] 0.25 s\n"
    assert solver_text("s", 10.0, 10.0) == "s: gap 0.0%, 10 (bound 10)"
    assert solver_text("s", None, 8.0) == "s: bound 8" and solver_text("s", None, None) == "s"


def test_compile_not_on_a_terminal_prints_plain_stage_lines(tmp_path, capsys):
    code = main(["compile", "gpt2-tiny", "-t", "mesh8x8", "-o", str(tmp_path / "o"),
                 "--no-report", "--time-limit", "5"])
    err = capsys.readouterr().err
    assert code == 0
    lines = err.splitlines()
    assert lines and all(line.startswith("[") and line.endswith(" s") for line in lines), lines
    assert "[placement]" in err and "\x1b[" not in err  # no terminal control codes
    code = main(["-q", "compile", "gpt2-tiny", "-t", "mesh8x8", "-o", str(tmp_path / "q"),
                 "--no-report", "--time-limit", "5"])
    assert code == 0 and capsys.readouterr().err == ""


def test_time_limit_is_a_wall_clock_deadline(monkeypatch):
    """Make the deterministic budget far larger than the wall limit (as on a machine 100x
    slower than the calibration): the deadline still ends the solve, and the report says the
    result depends on the machine."""
    monkeypatch.setattr(runner, "DET_PER_SECOND", 100.0)
    n = 16  # blocks of mixed sizes with skip edges: not solved to optimality in a second
    blocks = [square_block(f"b{i}", 4 + (i * 5) % 7, shapes=True) for i in range(n)]
    skips = [(i, i + 3, 500 + 100 * i) for i in range(n - 3)] + [(0, n - 1, 3000)]
    p = problem(blocks, 60, 60, edges=chain_edges(n, 1000, skips))
    r = place(p, "cpsat", time_limit_s=1.0).report
    assert r.status == "FEASIBLE"
    assert r.wall_time_s < 1.0 + 0.5  # Python after the deadline: assembling, validating
    notes = dict(r.stages)
    assert "1 s limit, or a solve's fuse) stopped the search" in notes["time limit"]


def test_deterministic_budget_decides_on_a_small_problem():
    p = equal_chain(6, 4, 16, 16, shapes=True)
    r = place(p, "cpsat", time_limit_s=2.0).report
    assert "time limit" not in dict(r.stages) and r.wall_time_s <= 2.0
