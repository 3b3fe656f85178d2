"""Collective algorithms (tiling/collectives.py): the choice follows the physics, the schedule
records it, the performance model prices the record, and the executor adds in its order."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from compiler.driver import CompileOptions, compile_model
from compiler.executor.run import _reduce_grid, _reduce_in_order
from compiler.schedule.build import Step, with_algorithms
from compiler.schedule.check import schedule_problems
from compiler.schedule.perf import step_cycles
from compiler.target import load_target
from compiler.tiling import collectives as co
from compiler.vocab import CollectiveKind, StepKind


@pytest.fixture(scope="module")
def wse3():
    return load_target("wse3")


def _with_overhead(t, cycles: int):
    return dataclasses.replace(t, runtime=dataclasses.replace(t.runtime,
                                                              step_overhead_cycles=cycles))


@pytest.mark.parametrize("tile", [2, 64, 455, 4096, 65536])
def test_two_cores_prefer_a_chain(wse3, tile):
    assert co.choose(2, tile, wse3) == co.Algorithm()
    # a tree of two cores is the same one stage plus a second phase
    assert co.reduce_cycles(co.Algorithm(co.TREE, 2), 2, tile, wse3) > \
        co.reduce_cycles(co.Algorithm(), 2, tile, wse3)


def test_a_long_strip_prefers_a_tree(wse3):
    """1,172 cores (a WSE-3 column) and a 455-byte tile (16 KB over 36 lines): the chain's
    1,171 store-and-forward stages lose to a few tree levels."""
    alg = co.choose(1172, 455, wse3)
    assert alg.kind == co.TREE
    chain = co.reduce_cycles(co.Algorithm(), 1172, 455, wse3)
    assert co.reduce_cycles(alg, 1172, 455, wse3) < chain / 10


def test_the_choice_flips_with_the_phase_overhead(wse3):
    """A tree pays one runtime overhead per level: when phases are dear a one-phase algorithm
    wins on the same line, when they are free a tree does."""
    dear, free = _with_overhead(wse3, 100_000), _with_overhead(wse3, 0)
    assert co.choose(256, 455, dear).phases == 1
    assert co.choose(256, 455, free).kind == co.TREE


def test_the_choice_flips_with_the_tile(wse3):
    """Tiny tiles on a line of 64: hops dominate and two chains from both ends win; big tiles:
    the stages (link + additions) dominate and a tree's fewer stages win."""
    assert co.choose(64, 2, wse3).kind == co.TWOWAY
    assert co.choose(64, 8192, wse3).kind == co.TREE


@pytest.mark.parametrize("m", [3, 8, 36, 152, 1172])
def test_choose_is_the_cheapest(wse3, m):
    for tile in (2, 91, 455, 4096):
        best = min(co.reduce_cycles(a, m, tile, wse3) for a in co.candidates(m))
        assert co.reduce_cycles(co.choose(m, tile, wse3), m, tile, wse3) == best


@pytest.mark.parametrize("m", [36, 152, 1172])
def test_a_tree_lands_its_sum_mid_line(wse3, m):
    """Each group reduces into its middle core, so the root is near the line's middle and the
    sum goes back about m / 2 hops each way: with free tiles and phases a tree's hops up and
    back are well under the 2 (m - 1) of a tree rooted at its first core (uneven last
    levels keep it above m - 1: 36 cores in 4 levels end with two leaders 18 apart)."""
    free = _with_overhead(wse3, 0)
    hop = wse3.links.hop_latency_cycles
    for levels in (2, 3, 4):
        _, root = co.combines(co.Algorithm(co.TREE, levels), m)
        assert abs(root - (m - 1) / 2) <= m / 8
        assert co.reduce_cycles(co.Algorithm(co.TREE, levels), m, 0, free) < 0.8 * 2 * (m - 1) * hop


@pytest.mark.parametrize("m", range(1, 41))
def test_combines_add_every_partial_once(m):
    for alg in (*co.candidates(m), co.Algorithm(co.TREE, 3), co.Algorithm(co.TWOWAY)):
        pairs, root = co.combines(alg, m)
        held = {i: {i} for i in range(m)}
        spent: set[int] = set()
        for dst, src in pairs:
            assert dst not in spent and src not in spent and dst != src
            held[dst] |= held.pop(src)
            spent.add(src)
        assert held == {root: set(range(m))}, alg.label
        assert len(pairs) == m - 1


def test_labels_round_trip():
    for m in (2, 5, 1000):
        for alg in co.candidates(m):
            assert co.parse(alg.label) == alg
    assert co.parse("") == co.Algorithm()
    for bad in ("tree1", "tree", "ring", "treex"):
        with pytest.raises(ValueError):
            co.parse(bad)


def _step(label: str) -> Step:
    return Step(0, StepKind.COLLECTIVE, "r", op_kind=CollectiveKind.REDUCE, axis="r",
                algorithm=label)


@pytest.mark.parametrize("label", ["chain", "twoway", "tree2", "tree3"])
def test_executor_adds_in_the_recorded_order(label):
    """float32 addition is not associative: each order gives its own bits, and the executor's
    result is exactly the recorded order's."""
    rng = np.random.default_rng(0)
    m = 9
    data = (rng.standard_normal((m, 1, 5)) * 10.0 ** rng.integers(-4, 5, (m, 1, 5)))
    data = data.astype(np.float32)
    pairs, root = co.combines(co.parse(label), m)
    parts = [data[i:i + 1] for i in range(m)]
    for dst, src in pairs:
        parts[dst] = parts[dst] + parts[src]
    got = _reduce_in_order(data, 0, _step(label))
    assert got.shape == (1, 1, 5)
    np.testing.assert_array_equal(got, parts[root])


def test_orders_differ_in_the_last_bits():
    """The four orders do not all give the same float32 sums (so the test above can tell
    them apart)."""
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((9, 1, 64)) * 10.0 ** rng.integers(-4, 5, (9, 1, 64)))
    data = data.astype(np.float32)
    results = {label: _reduce_in_order(data, 0, _step(label)).tobytes()
               for label in ("chain", "twoway", "tree2", "tree3")}
    assert len(set(results.values())) > 1


def test_an_unknown_algorithm_is_a_schedule_problem(wse3):
    r = compile_model("llama-tiny", "mesh8x8", CompileOptions())
    s = r.schedule
    reduces = [st for st in s.steps if st.op_kind == CollectiveKind.REDUCE]
    assert reduces and all(st.algorithm for st in reduces)
    bad = dataclasses.replace(reduces[0], algorithm="ring")
    steps = tuple(bad if st.id == bad.id else st for st in s.steps)
    problems = schedule_problems(dataclasses.replace(s, steps=steps), r.target)
    assert any("ring" in p for p in problems)


def test_the_model_prices_the_recorded_algorithm():
    """The same reduce, recorded as another algorithm, costs what that algorithm costs."""
    r = compile_model("llama-tiny", "mesh8x8", CompileOptions())
    s, t = r.schedule, r.target
    step = next(st for st in s.steps if st.op_kind == CollectiveKind.REDUCE
                and _line(s, st) >= 4)
    m = _line(s, step)
    region = s.region(step.region)
    tile = step.nbytes * m / (region.rows * region.cols)
    assert step.algorithm == co.choose(m, tile, t).label
    base = step_cycles(step, s, t, 1.0)
    for alg in co.candidates(m):
        other = dataclasses.replace(step, algorithm=alg.label)
        extra = co.reduce_cycles(alg, m, tile, t) - co.reduce_cycles(co.parse(step.algorithm),
                                                                       m, tile, t)
        assert step_cycles(other, s, t, 1.0) - base == pytest.approx(extra, abs=1)


def _line(s, step) -> int:
    region = s.region(step.region)
    return region.rows if step.axis == "r" else region.cols


# --- the 2D form: partial sums over both axes -----------------------------------------------


def test_the_2d_form_beats_one_line_through_the_region(wse3):
    """Partials on every core of a 64 x 64 region: rows then columns (hops about 64 + 64)
    against the best one-axis algorithm on a line snaking through all 4,096 cores."""
    for tile in (2, 455, 8192):
        grid = co.choose_grid(64, 64, tile, wse3)
        snake = co.reduce_cycles(co.choose(64 * 64, tile, wse3), 64 * 64, tile, wse3)
        assert co.grid_cycles(grid, 64, 64, tile, wse3) < snake, tile
        if tile <= 455:  # hops dominate: bounded by the two sides, not their product
            assert co.grid_cycles(grid, 64, 64, tile, wse3) < snake / 2, tile


def test_the_2d_form_is_each_axis_at_its_cheapest(wse3):
    """Each phase takes its own line's cheapest algorithm, the second phase pays one runtime
    overhead; rows first and columns first cost the same, and the tie goes to rows first."""
    grid = co.choose_grid(8, 152, 455, wse3)
    assert grid.first == "r"
    assert grid.along_first == co.choose(8, 455, wse3)
    assert grid.along_second == co.choose(152, 455, wse3)
    expect = co.reduce_cycles(grid.along_first, 8, 455, wse3) + \
        co.reduce_cycles(grid.along_second, 152, 455, wse3) + wse3.runtime.step_overhead_cycles
    assert co.grid_cycles(grid, 8, 152, 455, wse3) == pytest.approx(expect)
    reverse = co.Grid("c", grid.along_second, grid.along_first)
    assert co.grid_cycles(reverse, 8, 152, 455, wse3) == pytest.approx(expect)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (3, 7), (6, 6), (9, 2)])
def test_grid_combines_add_every_partial_once(shape):
    rows, cols = shape
    for first in ("r", "c"):
        for a, b in ((co.Algorithm(), co.Algorithm(co.TWOWAY)),
                     (co.Algorithm(co.TREE, 2), co.Algorithm(co.TREE, 3))):
            pairs, root = co.grid_combines(co.Grid(first, a, b), rows, cols)
            cores = {(i, j) for i in range(rows) for j in range(cols)}
            held = {c: {c} for c in cores}
            for dst, src in pairs:
                assert dst != src and src in held and dst in held
                held[dst] |= held.pop(src)
            assert held == {root: cores}
            assert len(pairs) == rows * cols - 1


def test_2d_labels_round_trip():
    grid = co.Grid("c", co.Algorithm(co.TREE, 3), co.Algorithm(co.TWOWAY))
    assert grid.label == "2d-cr:tree3,twoway" and grid.phases == 4
    assert co.parse(grid.label) == grid
    for bad in ("2d-rr:chain,chain", "2d-rc:chain", "2d-rc:ring,chain",
                "2d-rc:2d-rc:chain,chain,chain"):
        with pytest.raises(ValueError):
            co.parse(bad)


def _grid_step(label: str) -> Step:
    return Step(0, StepKind.COLLECTIVE, "r", op_kind=CollectiveKind.REDUCE, axis=co.BOTH,
                algorithm=label)


@pytest.mark.parametrize("label", ["2d-rc:chain,twoway", "2d-cr:chain,twoway",
                                   "2d-rc:tree2,chain"])
def test_executor_adds_a_2d_reduce_in_the_recorded_order(label):
    """The executor's sum is exactly the recorded 2D order's, bit for bit."""
    rng = np.random.default_rng(1)
    rows, cols = 5, 4
    data = (rng.standard_normal((rows, cols, 6)) *
            10.0 ** rng.integers(-4, 5, (rows, cols, 6))).astype(np.float32)
    pairs, root = co.grid_combines(co.parse(label), rows, cols)
    parts = {(i, j): data[i:i + 1, j:j + 1] for i in range(rows) for j in range(cols)}
    for dst, src in pairs:
        parts[dst] = parts[dst] + parts[src]
    got = _reduce_grid(data, _grid_step(label))
    assert got.shape == (1, 1, 6)
    np.testing.assert_array_equal(got, parts[root])
    np.testing.assert_allclose(got[0, 0], data.sum(axis=(0, 1)), rtol=1e-4, atol=1e-2)


def test_rows_first_and_columns_first_differ_in_the_last_bits():
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((5, 4, 64)) *
            10.0 ** rng.integers(-4, 5, (5, 4, 64))).astype(np.float32)
    rc = _reduce_grid(data, _grid_step("2d-rc:chain,chain"))
    cr = _reduce_grid(data, _grid_step("2d-cr:chain,chain"))
    assert rc.tobytes() != cr.tobytes()


def test_a_2d_form_goes_only_with_partials_over_both_axes():
    r = compile_model("llama-tiny", "mesh8x8", CompileOptions())
    s = r.schedule
    one_axis = next(st for st in s.steps if st.op_kind == CollectiveKind.REDUCE)
    bad = dataclasses.replace(one_axis, algorithm="2d-rc:chain,chain")
    steps = tuple(bad if st.id == bad.id else st for st in s.steps)
    problems = schedule_problems(dataclasses.replace(s, steps=steps), r.target)
    assert any("2D form" in p for p in problems)
    with pytest.raises(Exception, match="2D algorithm"):
        _reduce_in_order(np.zeros((4, 1, 2), np.float32), 0, _step("2d-rc:chain,chain"))


def test_the_model_prices_a_2d_reduce_and_the_builder_chooses_it():
    """A reduce of partials over both axes of its region: `with_algorithms` records the
    cheapest 2D form and `step_cycles` prices it (its tile is the whole tensor)."""
    r = compile_model("llama-tiny", "mesh8x8", CompileOptions())
    s, t = r.schedule, r.target
    step = next(st for st in s.steps if st.op_kind == CollectiveKind.REDUCE)
    region = dataclasses.replace(s.region(step.region), rows=3, cols=4)  # 2D whatever it was
    s = dataclasses.replace(s, regions=tuple(region if g.name == region.name else g
                                             for g in s.regions))
    both = dataclasses.replace(step, axis=co.BOTH, algorithm="")
    (chosen,) = with_algorithms([both], {region.name: region}, t)
    grid = co.choose_grid(region.rows, region.cols, step.nbytes, t)
    assert chosen.algorithm == grid.label
    steps = tuple(chosen if st.id == step.id else st for st in s.steps)
    s2 = dataclasses.replace(s, steps=steps)
    cycles = co.grid_cycles(grid, region.rows, region.cols, step.nbytes, t)
    assert step_cycles(chosen, s2, t, 1.0) == math.ceil(cycles) + t.runtime.step_overhead_cycles
