"""Warm starts (issue 18): a compile started from a nearby problem's placement (a sweep point
from the one before it along the last --vary) gives a placement the independent validator
accepts and never worse than its start; an equal problem takes the placement as it is; a hint
that does not carry over is ignored. In a sweep the 2nd and 3rd points of a chain are hinted,
sweep.json says so, and the cache keeps each placement for the point after it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.driver import CompileOptions, Reuse, SolverOptions, compile_model
from compiler.placement import place
from compiler.placement.check import validate
from compiler.placement.greedy import first_fit
from compiler.placement.problem import Rect
from compiler.placement.warm import PlacementHint, cost, keep_better, translate
from compiler.sweep import cache_path
from compiler.sweep.point import cached_hint
from compiler.target import load_target
from compiler.tiling.candidates import TilingOptions

OPTS = CompileOptions(solver=SolverOptions(time_limit_s=5))
FIRST_FIT = CompileOptions(solver=SolverOptions(method="first-fit"))


def _links(value: str):
    return load_target("mesh8x8", {"links.bytes_per_cycle": value})


@pytest.fixture(scope="module")
def first():
    return compile_model("llama-tiny", _links("2"), OPTS)


def test_a_hinted_compile_validates_and_is_no_worse_than_its_start(first):
    hint = PlacementHint.of(first.problem, first.placement)
    r = compile_model("llama-tiny", _links("8"), OPTS, hint=hint)
    assert r.problem != first.problem  # link width changes the blocks' cycles
    assert r.reused == ("hint",)
    assert validate(r.problem, r.placement) == ()
    start = translate(r.problem, hint)
    assert start is not None and start.rects == first.placement.rects
    assert cost(r.problem, r.placement) <= cost(r.problem, start)
    assert r.metrics.byte_hops == cost(r.problem, r.placement)[1]
    # a quarter of the limit to search, the deadline at the whole limit (not a quarter of it)
    assert r.placement.report.time_limit_s == OPTS.solver.time_limit_s
    assert ("budget", "25% of the limit for the searches (1.25 s), the deadline at the whole "
            "5 s") in r.placement.report.stages


def test_an_equal_problem_takes_the_hint_as_it_is(first):
    slow = load_target("mesh8x8", {"links.bytes_per_cycle": "2", "offchip.latency_s": "1e-3"})
    hint = PlacementHint.of(first.problem, first.placement)
    r = compile_model("llama-tiny", slow, OPTS, hint=hint)
    assert r.problem == first.problem  # off-chip latency: not something the placer sees
    assert r.reused == ("placement",)
    assert r.placement == first.placement


def test_a_hint_that_does_not_carry_over_is_ignored(first):
    hint = PlacementHint.of(first.problem, first.placement)
    name, rows, cols, residency = hint.blocks[1]
    odd = dataclasses.replace(hint, blocks=(hint.blocks[0], (name, rows + 99, cols, residency),
                                            *hint.blocks[2:]))  # a shape no option has
    r = compile_model("llama-tiny", _links("8"), OPTS, hint=odd)
    assert translate(r.problem, odd) is None
    assert r.reused == ()
    fresh = compile_model("llama-tiny", _links("8"), OPTS)
    assert (r.placement.options, r.placement.rects) == (fresh.placement.options,
                                                        fresh.placement.rects)


@pytest.fixture(scope="module")
def one_b():
    """Llama 3.2 1B on WSE-3, placed first-fit: a start CP-SAT's stage 2 improves on without
    proving optimality in a small budget (its searches end by the budget)."""
    return compile_model("llama3.2-1b", "wse3", FIRST_FIT)


def test_a_warm_started_solve_does_not_depend_on_the_wall_clock_deadline(one_b):
    """The same deterministic budget (0.4 s) under two wall-clock deadlines (20 s and 80 s): the
    same placement, and no search was stopped by the deadline (a warm start used to get a
    deadline of its shortened limit, which a loaded machine reached first)."""
    problem = one_b.problem
    start = translate(problem, PlacementHint.of(problem, one_b.placement))
    assert start is not None
    runs = [place(problem, "cpsat", time_limit_s=wall, budget_share=0.4 / wall, hint=start)
            for wall in (20.0, 80.0)]
    a, b = runs
    assert (a.options, a.rects) == (b.options, b.rects)
    for r, wall in zip(runs, (20.0, 80.0), strict=True):
        stages = dict(r.report.stages)
        assert "time limit" not in stages  # no search reached the deadline
        assert stages["budget"].endswith(f"(0.4 s), the deadline at the whole {wall:g} s")
        assert r.report.time_limit_s == wall
        # stage 2 searched and did not prove its layout optimal: the budget ended a search
        assert re.search(r"fine( window \+-\d+)?: FEASIBLE", stages["wafer 0"])


def test_translate_refuses_what_the_validator_refuses(first):
    hint = PlacementHint.of(first.problem, first.placement)
    assert translate(first.problem, hint) is not None
    a = hint.rects[0]
    moved = (a, *(Rect(r.wafer, a.row, a.col, r.rows, r.cols) for r in hint.rects[1:2]),
             *hint.rects[2:])  # the second block on top of the first
    assert translate(first.problem, dataclasses.replace(hint, rects=moved)) is None


def test_keep_better_keeps_the_cheaper_start(first):
    problem, start = first.problem, first.placement
    worse = first_fit(problem)
    assert cost(problem, worse) > cost(problem, start)  # the greedy shelves: more byte-hops
    kept = keep_better(problem, worse, start)
    assert (kept.options, kept.rects) == (start.options, start.rects)
    assert kept.report.stages[-1][0] == "hint"
    assert keep_better(problem, start, worse) is start


def _sweep(out: Path, *extra: str) -> dict:
    argv = ["-q", "sweep", "llama-tiny", "-t", "mesh8x8", "--vary",
            "links.bytes_per_cycle=2,4,8", "--time-limit", "5", "--workers", "2", *extra]
    assert main([*argv, "-o", str(out)]) == 0
    return json.loads((out / "sweep.json").read_text())


def test_a_three_point_sweep_hints_its_second_and_third_points(tmp_path, capsys):
    doc = _sweep(tmp_path / "sw")
    points = doc["points"]
    assert [p["hinted_by"] for p in points] == [None, 0, 1]
    assert doc["run"]["hinted"] == 2 and doc["run"]["hints"] is True
    assert [bool({"hint", "placement"} & set(p["reused"])) for p in points] == [
        False, True, True]
    for p in points:  # each placement, as cached, validates on its point's own problem
        target = _links(p["overrides"]["links.bytes_per_cycle"])
        problem = compile_model("llama-tiny", target, FIRST_FIT).problem
        placed = cached_hint(tmp_path / "sw", p["key"])
        assert placed is not None
        start = translate(problem, placed)
        assert start is not None and validate(problem, start) == ()
        assert cost(problem, start) == (p["offchip_bytes_per_token"], p["byte_hops"])
    # resumed: the last point computed again from the cached placement of the one before it
    cache_path(tmp_path / "sw", points[2]["key"]).unlink()
    again = _sweep(tmp_path / "sw")
    assert again["run"]["cached"] == 2 and again["points"][2]["hinted_by"] == 1
    assert again["points"][2]["byte_hops"] == points[2]["byte_hops"]
    cold = _sweep(tmp_path / "cold", "--no-hints")
    assert [p["hinted_by"] for p in cold["points"]] == [None] * 3
    assert cold["run"]["hinted"] == 0 and cold["run"]["hints"] is False
    capsys.readouterr()



def _without_cycles(problem):
    return dataclasses.replace(problem, blocks=tuple(
        dataclasses.replace(b, options=tuple(dataclasses.replace(o, cycles=0)
                                             for o in b.options))
        for b in problem.blocks))


def test_a_link_width_changes_only_the_options_cycles(first):
    """Why a sweep's link-width chain is warm-started and not reused (issue 18): two points
    that differ only in links.bytes_per_cycle have the same blocks, shapes, residencies,
    bytes, edges and grid; only each option's cycles (compute plus collectives) differ, and
    those weigh in stage 1's objective, so the problems are not equal (no `placement` reuse)
    but every block's placement carries over as the other's warm start, option for option."""
    wide = compile_model("llama-tiny", _links("8"), FIRST_FIT).problem
    assert _without_cycles(wide) == _without_cycles(first.problem)
    assert wide != first.problem
    hint = PlacementHint.of(first.problem, first.placement)
    start = translate(wide, hint)
    assert start is not None
    assert (start.options, start.rects) == (first.placement.options, first.placement.rects)


def test_a_sweep_point_with_an_equal_problem_reuses_the_fresh_placement(tmp_path, capsys):
    """A sweep along a target field the placer never sees (off-chip latency): the second
    point's problem equals the first's, so it takes that placement (`reused` names
    `placement`, `run.reused_placement` counts it), and that placement is the one a fresh
    compile of the second point gives (real OR-Tools, deterministic)."""
    argv = ["-q", "sweep", "llama-tiny", "-t", "mesh8x8", "--vary",
            "offchip.latency_s=1e-6,1e-3", "--time-limit", "5", "--workers", "1"]
    assert main([*argv, "-o", str(tmp_path / "sw")]) == 0
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    a, b = doc["points"]
    assert "placement" in b["reused"] and b["hinted_by"] == 0
    assert "placement" not in a["reused"] and doc["run"]["reused_placement"] == 1
    slow = load_target("mesh8x8", {"offchip.latency_s": "1e-3"})
    fresh = compile_model("llama-tiny", slow, OPTS)
    reused = cached_hint(tmp_path / "sw", b["key"])
    assert reused is not None
    assert (reused.placement.options, reused.rects) == (fresh.placement.options,
                                                        fresh.placement.rects)
    assert (b["offchip_bytes_per_token"], b["byte_hops"]) == (
        fresh.metrics.offchip_bytes_per_token, fresh.metrics.byte_hops)
    assert b["ttft_s"] != a["ttft_s"]  # each point priced with its own target
    capsys.readouterr()


def test_a_decode_schedule_reused_along_a_link_width_is_the_fresh_one():
    """Points along a link width (issue 18 item 3) share their decode stage's streamed forms
    and schedule steps in one process (`Reuse.decode`), and the prefill schedule's steps
    (`Reuse.schedules`); only the reduce algorithms and the timing are priced again. The
    reused plan equals a fresh compile's of the same point from the same warm start, step for
    step (llama-tiny streams two blocks' caches at 8k)."""
    opts = CompileOptions(tiling=TilingOptions(context=8192), solver=SolverOptions(time_limit_s=5))
    reuse = Reuse()
    first = compile_model("llama-tiny", _links("2"), opts, reuse=reuse)
    hint = PlacementHint.of(first.problem, first.placement)
    again = compile_model("llama-tiny", _links("8"), opts, reuse=reuse, hint=hint)
    fresh = compile_model("llama-tiny", _links("8"), opts, hint=hint)
    assert {"decode-schedule", "schedule"} <= set(again.reused)
    assert "decode-schedule" not in fresh.reused and "schedule" not in fresh.reused
    assert again.placement.rects == fresh.placement.rects
    assert again.decode is not None and again.decode.graph.streams  # the streamed memo too
    assert again.decode.graph.streams == fresh.decode.graph.streams
    assert again.decode.schedule == fresh.decode.schedule
    assert again.decode.estimate == fresh.decode.estimate
    assert again.schedule == fresh.schedule and again.estimates == fresh.estimates
    algorithms = {s.algorithm for s in again.decode.schedule.steps}
    assert algorithms == {s.algorithm for s in fresh.decode.schedule.steps}


def test_a_decode_memo_hit_prices_its_own_links():
    """A memo hit re-chooses each reduce's algorithm for its own target: the steps kept are
    the ones before `with_algorithms`, so a hit on another link width gives what building
    anew gives (here with a target whose reduces change algorithm)."""
    from compiler.schedule import decode as decode_mod

    opts = CompileOptions(tiling=TilingOptions(context=8192), solver=SolverOptions(time_limit_s=5))
    r = compile_model("llama-tiny", _links("2"), opts)
    assert r.decode is not None
    memo = decode_mod.DecodeMemo()
    dg, prefill = r.decode.graph, r.schedule
    algorithms = []
    for links in ("2", "1", "16"):
        target = _links(links)
        built = decode_mod.build_decode_schedule(dg, prefill, target)
        assert decode_mod.build_decode_schedule(dg, prefill, target, memo) == built
        algorithms.append({s.algorithm for s in built.steps})
    assert memo.hits == 2 and len(memo.steps) == 1
    assert algorithms[0] != algorithms[1]  # 1 byte/cycle: another reduce algorithm (tree3)


def test_a_tiling_along_a_link_width_measures_each_shape_once_and_is_the_fresh_one():
    """The tiling's per-shape bytes (`candidates._measured`) do not depend on the links: the
    second point of a link-width chain measures no layer again; a layer's cycles on one target
    (`candidates._priced`) are priced once; and the tiled graph (shapes, bytes, cycles, decode
    forms' bytes) equals one tiled with nothing remembered."""
    from compiler.tiling import candidates

    opts = CompileOptions(tiling=TilingOptions(context=8192),
                          solver=SolverOptions(method="first-fit"))
    candidates._MEASURED.clear()
    narrow = compile_model("llama-tiny", _links("2"), opts)
    kept = dict(candidates._MEASURED)
    wide = compile_model("llama-tiny", _links("8"), opts)
    assert kept and candidates._MEASURED.keys() == kept.keys()  # every layer a hit
    assert any(lt.candidates[0].form_bytes for lt in wide.tiled.layers)  # decode forms too
    priced = dict(candidates._PRICED)
    again = compile_model("llama-tiny", _links("8"), opts)  # cycles on this target: priced
    assert candidates._PRICED.keys() == priced.keys() and again.tiled == wide.tiled
    for memo in (candidates._MEASURED, candidates._PRICED):
        memo.clear()
    candidates._by_floor.cache_clear()
    fresh = compile_model("llama-tiny", _links("8"), opts)
    assert wide.tiled == fresh.tiled and wide.problem == fresh.problem
    assert wide.tiled != narrow.tiled  # the cycles are each point's own
