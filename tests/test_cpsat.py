"""CP-SAT placer (compiler/placement/cpsat/, real OR-Tools): valid, deterministic, never worse
than its hint; stage 1 streams the least and balances wafers; strip packing where area does not
pack; infeasible problems say what is needed; the runner reads status and values off the solver."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from ortools.sat.python import cp_model
from placement_cases import (
    CAPACITY,
    STREAM,
    chain_edges,
    covering_model,
    equal_chain,
    opt,
    problem,
    square_block,
    strip_chain,
)

from compiler.errors import InfeasiblePlacementError
from compiler.placement import place
from compiler.placement.check import (
    byte_hops,
    byte_hops_lower_bound,
    offchip_bytes_per_token,
    offchip_lower_bound,
    validate,
    wafer_cycles,
)
from compiler.placement.cpsat import runner, stages
from compiler.placement.cpsat.residency import fastest_overfill, hopeless, residency_instance
from compiler.placement.cpsat.runner import Clock, SolveParams
from compiler.placement.greedy import first_fit, serpentine
from compiler.placement.problem import Block, PlacementProblem

FAST = {"time_limit_s": 3.0}


def test_runner_reads_status_objective_and_values() -> None:
    model = cp_model.CpModel()
    x, y = model.new_int_var(0, 10, "x"), model.new_bool_var("y")
    model.add(x + 3 * y >= 7)
    model.minimize(x + 2 * y)
    clock = Clock(SolveParams(seed=0, workers=1, deterministic=True), left=1.0)
    out = runner.run(model, 1.0, clock)
    assert (out.name, out.solved, out.optimal, out.infeasible) == ("OPTIMAL", True, True, False)
    assert (out.value(x), out.is_true(y), out.objective, out.bound) == (4, True, 6.0, 6.0)
    assert 0.0 <= clock.left < 1.0  # the solve was charged
    model.add(x + y <= 2)
    assert runner.run(model, 1.0, clock).infeasible


def mixed_problem() -> PlacementProblem:
    """12 blocks of mixed sizes and shapes with skip edges: serpentine is not optimal here."""
    sides = [6, 10, 4, 8, 6, 12, 4, 6, 10, 8, 4, 6]
    blocks = [square_block(f"block.{i}", s, shapes=True, stream_side=2, stream_bytes=500)
              for i, s in enumerate(sides)]
    edges = chain_edges(len(sides), 1_000, skips=[(0, 11, 300), (2, 6, 500), (3, 9, 200)])
    return problem(blocks, 40, 48, edges=edges, name="mixed")


@pytest.fixture
def budget_decides(monkeypatch) -> None:
    """A deterministic budget far inside the wall-clock deadline even on a busy machine (these
    searches use their whole budget): the deadline must not decide, or the result would vary."""
    monkeypatch.setattr(runner, "DET_PER_SECOND", runner.DET_PER_SECOND / 20)


def test_cpsat_valid_never_worse_than_its_hint_and_reports(budget_decides) -> None:
    p = mixed_problem()
    pl = place(p, "cpsat", **FAST)
    wafers = [r.wafer for r in pl.rects]
    hint = serpentine(p, pl.options, wafers)
    assert byte_hops(p, pl) <= byte_hops(p, hint)
    r = pl.report
    assert r.method == "cpsat" and r.status in ("OPTIMAL", "FEASIBLE")
    assert (r.seed, r.workers, r.time_limit_s, r.deterministic) == (0, 1, 3.0, True)
    assert r.objective == byte_hops(p, pl)
    assert r.bound is not None and byte_hops_lower_bound(p, pl.options) <= r.bound <= r.objective
    assert [name for name, _ in r.stages] == ["residency", "wafer 0"]


def test_cpsat_is_deterministic(budget_decides) -> None:
    p = mixed_problem()
    a = place(p, "cpsat", time_limit_s=2.0, seed=3)
    b = place(p, "cpsat", time_limit_s=2.0, seed=3)
    assert (a.options, a.rects) == (b.options, b.rects)
    assert a.report.seed == 3


def test_residency_streams_two_small_blocks_rather_than_one_big() -> None:
    # 56 cores: all resident needs 80; streaming big saves 36 cores for 100 B, streaming both
    # small ones saves 38 for 90 B: the minimum streams the small ones.
    blocks = [Block("big", "b", (opt(5, 8), opt(2, 2, STREAM, offchip=100))),
              Block("s1", "b", (opt(4, 5), opt(1, 2, STREAM, offchip=45))),
              Block("s2", "b", (opt(4, 5), opt(1, 2, STREAM, offchip=45)))]
    p = problem(blocks, 7, 8, io=1)
    pl = place(p, "cpsat", **FAST)
    assert pl.options == (0, 1, 1)
    assert offchip_bytes_per_token(p, pl) == 91
    assert offchip_lower_bound(p) <= 91


def test_residency_equals_the_bound_when_everything_fits() -> None:
    p = dataclasses.replace(equal_chain(16, 16, 64, 64), io_bytes_per_token=7)
    pl = place(p, "cpsat", **FAST)  # 16 x 256 cores tile the 4096 exactly
    assert offchip_bytes_per_token(p, pl) == offchip_lower_bound(p) == 7


def test_residency_streams_the_least_needed() -> None:
    p = equal_chain(20, 16, 64, 64)  # 20 x 256 > 4096: ceil(1024 / 192) = 6 must stream
    pl = place(p, "cpsat", **FAST)
    assert offchip_bytes_per_token(p, pl) == 6 * 10_000


@pytest.mark.parametrize("wafers", [1, 2])
def test_only_strips_pack_and_everything_stays_resident(wafers: int) -> None:
    # by area three fast 4x7 blocks fit a wafer, but only three 10x3 strips do (and greedy
    # placers, taking the fewest cores, stream): stage 1 by strips keeps all resident
    p = strip_chain(3 * wafers, wafers=wafers)
    assert offchip_bytes_per_token(p, first_fit(p)) > offchip_lower_bound(p)
    pl = place(p, "cpsat", **FAST)
    assert offchip_bytes_per_token(p, pl) == offchip_lower_bound(p) == 0
    assert pl.options[:-1] == (0,) * 3 * wafers
    assert any(line.startswith("rows: off-chip 0") for _, line in pl.report.stages)


def test_infeasible_capacity_says_cores_needed_and_available() -> None:
    p = equal_chain(20, 16, 32, 32)  # even streaming, 20 x 64 = 1280 cores > 1024
    with pytest.raises(InfeasiblePlacementError, match=r"need at least 1,280 cores.*1,024"):
        place(p, "cpsat", **FAST)
    fat = Block("fat", "block", (opt(2, 2, per_core=CAPACITY + 1),))
    with pytest.raises(InfeasiblePlacementError, match="block fat has no usable option"):
        place(problem([fat], 8, 8), "cpsat", **FAST)


def test_chain_on_a_big_grid_beats_first_fit_and_nears_the_bound() -> None:
    p = equal_chain(20, 20, 100, 100, shapes=True)
    pl = place(p, "cpsat", **FAST)
    ff = first_fit(p)
    assert byte_hops(p, pl) <= 0.7 * byte_hops(p, ff)
    assert byte_hops(p, pl) <= 1.25 * byte_hops_lower_bound(p, pl.options)


def best_split(cycles: list[int], parts: int) -> int:
    """Least slowest-part sum over contiguous splits into at most `parts` (brute force)."""
    best = sum(cycles)
    for cuts in itertools.combinations(range(1, len(cycles)), parts - 1):
        bounds = (0, *cuts, len(cycles))
        best = min(best, max(sum(cycles[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


def test_multi_wafer_ranges_are_contiguous_and_balanced() -> None:
    cycles = [900, 100, 400, 700, 300, 300, 800, 200, 500, 600]
    blocks = [square_block(f"block.{i}", 8, cycles=c) for i, c in enumerate(cycles)]
    p = problem(blocks, 16, 16, wafers=3, edges=chain_edges(len(blocks), 1))
    pl = place(p, "cpsat", **FAST)
    wafers = [r.wafer for r in pl.rects]
    assert wafers == sorted(wafers)
    assert max(wafer_cycles(p, pl)) == best_split(cycles, 3)


def test_alike_wafers_are_solved_once_and_share_the_layout() -> None:
    """A model's repeating unit: wafers with the same blocks, shapes and edges get one stage-2
    solve (with all their time) and the same layout, said in the report."""
    p = equal_chain(12, 4, 10, 10, wafers=3)
    pl = place(p, "cpsat", **FAST)
    assert not validate(p, pl)
    by_wafer = {}
    for rect in pl.rects:
        by_wafer.setdefault(rect.wafer, []).append((rect.row, rect.col, rect.rows, rect.cols))
    assert len(by_wafer) == 3
    notes = dict(pl.report.stages)
    shared = [k for k in (1, 2) if "its layout" in notes[f"wafer {k}"]]
    assert shared  # at least one wafer reused an earlier one's layout ...
    for k in shared:  # ... and holds exactly that layout
        assert by_wafer[k] == by_wafer[int(notes[f"wafer {k}"].split("wafer ")[1][0])]


@pytest.mark.parametrize("wafers", [1, 2])
def test_area_stops_when_the_fastest_choice_overfills_and_places_the_same(
        wafers: int, budget_decides, monkeypatch) -> None:
    # 3 blocks a wafer whose fastest option, 4x7, tiles only twice on an 11 x 9 wafer: stage 1
    # by area stops after its off-chip term, and the placement is the full path's
    p = strip_chain(3 * wafers, wafers=wafers)
    inst = residency_instance(p)
    assert fastest_overfill(inst, ((1,) * 3 * wafers + (0,), (0,) * (3 * wafers + 1)))
    assert fastest_overfill(inst, ((2,) * 3 * wafers + (0,), (0,) * (3 * wafers + 1))) is None
    short = place(p, "cpsat", **FAST)
    assert any("4 x 7" in line and "stopped there" in line for _, line in short.report.stages)
    monkeypatch.setattr(stages, "fastest_overfill", lambda inst, choice: None)
    full = place(p, "cpsat", **FAST)
    assert any(line.endswith("does not pack") for _, line in full.report.stages)
    assert (short.options, short.rects) == (full.options, full.rects)


def test_area_runs_every_term_when_the_fastest_choice_tiles() -> None:
    p = equal_chain(16, 16, 64, 64)  # 16 fast 16 x 16 blocks tile the 64 x 64 wafer
    assert fastest_overfill(residency_instance(p), ((0,) * 16, (0,) * 16)) is None
    pl = place(p, "cpsat", **FAST)
    assert not any("stopped" in line for _, line in pl.report.stages)


def no_solution_yet() -> runner.Outcome:
    """A real solve stopped before its first solution (presolve of 3,000 rows outlasts it)."""
    model, _ = covering_model(60, 3_000)
    return runner.run(model, 0.01, Clock(SolveParams(0, 1, True), 10.0))


def test_a_term_without_solution_ends_stage_1_when_the_next_has_no_more_time() -> None:
    unknown = no_solution_yet()
    assert unknown.name == "UNKNOWN"
    assert hopeless(unknown, 0.5, [1.0], had=0.5)  # the last term, as much time: skipped
    assert hopeless(unknown, 1.0, [1.0, 1.0], had=0.5)  # the next of two gets half
    assert not hopeless(unknown, 2.0, [1.0], had=0.5)  # more time: it may yet solve
    model = cp_model.CpModel()
    model.minimize(model.new_int_var(3, 9, "x"))
    solved = runner.run(model, 0.5, Clock(SolveParams(0, 1, True), 10.0))
    assert solved.name == "OPTIMAL" and not hopeless(solved, 0.1, [1.0], had=0.5)


def test_charging_skipped_solves_leaves_the_later_shares_as_they_were() -> None:
    clock = Clock(SolveParams(0, 1, True), 10.0)
    clock.charge(2.0, 2)
    assert clock.left == pytest.approx(10.0 - 2.0 - 2 * runner.SOLVE_CHARGE_S)
    clock.charge(20.0)
    assert clock.left == 0.0
    wall = Clock(SolveParams(0, 1, False), 10.0)
    wall.charge(2.0)
    assert wall.left == 10.0
