"""Mixture-of-experts units in placement (compiler/placement/hubs.py, chain.py, cpsat/stages.py).

A router and its expert groups are found as a unit (a hub linked to the alike rectangles right
after it), laid out as one compact box (every member inside it, none overlapping), and wafer
cuts move off units. End to end, a small MoE decoder built by models/moe.py is compiled for
real (frontend, tiling, CP-SAT) on a 16 x 16 mesh: every expert group lies within a bound of its
router, the one a compact unit keeps (the groups side by side beside the router).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.placement import chain
from compiler.placement.check import validate
from compiler.placement.cpsat.layout import LayoutInstance, full_ranges, layout_cost
from compiler.placement.cpsat.runner import Clock, SolveParams
from compiler.placement.cpsat.wafer import place_wafer
from compiler.placement.hubs import (
    UnitRun,
    hub_units,
    unit_run,
    unit_shapes,
    unit_wafer,
    whole_units,
)
from compiler.zoo import MoEConfig, build_moe

# six MoE layers of 8 experts in 4 groups, top-2: each router dispatches to 4 group rectangles
# (5 x 1 routers, 3 x 2 groups on mesh16x16; before units, groups sat up to 10.5 hops away)
CFG = MoEConfig(vocab=64, hidden=64, layers=6, heads=4, kv_heads=2, head_dim=16, experts=8,
                active=2, expert_intermediate=256, expert_groups=4, shared=0, intermediate=48,
                moe_every=1, shape_only=True, dtype="float32", default_seq=8)


def moe_chain(units: int, spokes: int, hub=(5, 9), spoke=(9, 4)):
    """An embedding, `units` routers each followed by its expert groups, a head: the wafer a
    router-and-groups model gives, with dispatch (router -> group) and combine (group -> next
    router) edges and the residual chain between routers."""
    dims = [(6, 30)] + ([hub] + [spoke] * spokes) * units + [(50, 1)]
    size = spokes + 1
    hubs = [1 + k * size for k in range(units)]
    edges = [(0, 1, 1000)]
    for k, h in enumerate(hubs):
        nxt = hubs[k + 1] if k + 1 < units else len(dims) - 1
        edges += [(h, nxt, 1000)] + [(h, h + j, 300) for j in range(1, size)]
        edges += [(h + j, nxt, 300) for j in range(1, size)]
    return dims, edges


def test_a_router_with_its_groups_is_a_unit_and_alike_units_a_run() -> None:
    dims, edges = moe_chain(5, 4)
    assert hub_units(dims, edges) == [range(1 + 5 * k, 6 + 5 * k) for k in range(5)]
    assert unit_run(dims, edges) == UnitRun(1, 5, 5)


def test_a_wafer_is_laid_out_as_units_only_when_its_run_holds_nearly_half_of_it() -> None:
    dims, edges = moe_chain(5, 4)
    assert unit_wafer(dims, edges) == UnitRun(1, 5, 5)
    # units 2-4 each in shapes of their own (stage 1 mixed them): the run is units 0-1
    mixed = [(h, w + (i - 1) // 5 % 2 + 1) if 11 <= i < 26 else (h, w)
             for i, (h, w) in enumerate(dims)]
    assert unit_run(mixed, edges) == UnitRun(1, 5, 2)  # 10 of 27 rectangles
    assert unit_wafer(mixed, edges) is None
    # units 3-4 mixed: the run of units 0-2 holds 15 of 27 (over half); units 0, 1, 3, 4 in
    # two shapes: the longer run holds 10 of 22 (45%), a wafer of units still
    assert unit_wafer([(h, w + 1) if 16 <= i < 26 else (h, w) for i, (h, w) in enumerate(dims)],
                      edges) == UnitRun(1, 5, 3)
    dims4, edges4 = moe_chain(4, 4)
    two = [(h, w + 1) if 11 <= i < 21 else (h, w) for i, (h, w) in enumerate(dims4)]
    assert len(two) == 22 and unit_wafer(two, edges4) == UnitRun(1, 5, 2)
    assert unit_wafer(two + [(1, 1)], [*edges4, (21, 22, 1)]) is None  # 10 of 23: under 45%


def test_a_dense_chain_has_no_units() -> None:
    dims = [(6, 30)] + [(9, 4)] * 10 + [(50, 1)]
    assert unit_run(dims, [(i, i + 1, 10) for i in range(len(dims) - 1)]) is None


@given(st.tuples(st.integers(1, 40), st.integers(1, 40)),
       st.tuples(st.integers(1, 40), st.integers(1, 40)), st.integers(3, 16))
def test_every_unit_shape_holds_its_members_apart_inside_its_box(hub, spoke, n) -> None:
    for shape in unit_shapes(hub, spoke, n):
        dims = [hub] + [spoke] * n
        assert len(shape.offsets) == n + 1
        assert chain_valid(*shape.box, dims, shape.offsets)


def chain_valid(rows: int, cols: int, dims, spots) -> bool:
    boxes = [(r, c, r + h, c + w) for (r, c), (h, w) in zip(spots, dims, strict=True)]
    inside = all(r >= 0 and c >= 0 and r2 <= rows and c2 <= cols for r, c, r2, c2 in boxes)
    apart = all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
                for k, a in enumerate(boxes) for b in boxes[k + 1:])
    return inside and apart


def test_the_chain_packing_keeps_every_group_beside_its_router() -> None:
    dims, edges = moe_chain(5, 4)
    rows, cols = 60, 60
    spots = chain.chain_pack(rows, cols, dims, edges)
    assert spots is not None and chain_valid(rows, cols, dims, spots)
    for u in hub_units(dims, edges):
        reach = _reach([dims[i] for i in u])
        for g in u[1:]:
            assert _distance(spots[u.start], dims[u.start], spots[g], dims[g]) <= reach


def test_wafer_cuts_move_off_units_when_the_wafers_have_the_cores() -> None:
    dims, edges = moe_chain(4, 4)  # blocks 1-5, 6-10, 11-15, 16-20 are units
    split = tuple(0 if b < 8 else 1 for b in range(len(dims)))  # cuts unit 6-10 at 8
    assert whole_units(dims, edges, split, 10_000) == tuple(
        0 if b < 6 else 1 for b in range(len(dims)))  # the nearer end: its router
    assert whole_units(dims, edges, split, 300) is None  # a wafer would not hold it
    whole = tuple(0 if b < 11 else 1 for b in range(len(dims)))
    assert whole_units(dims, edges, whole, 10_000) is None  # nothing to move


def test_a_wafer_of_units_is_refined_where_its_hint_put_it() -> None:
    """Stage 2 on a wafer of MoE units skips the coarse solve (its order-blind start never
    beats the units' hint) and refines the hint in windows: never worse than the hint."""
    small, edges = moe_chain(5, 4)
    dims = tuple((8 * h, 8 * w) for h, w in small)  # a grid over 200 cells a side: coarse cells
    hint = chain.chain_pack(480, 480, dims, edges)
    assert hint is not None
    inst = LayoutInstance(480, 480, dims, tuple(edges), hint=hint,
                          **full_ranges(480, 480, dims))
    clock = Clock(SolveParams(seed=0, workers=1, deterministic=True), left=2.0)
    got = place_wafer(inst, 2.0, clock, "wafer 0", units=True)
    assert "MoE units: no coarse solve" in got.summary
    assert got.cost == layout_cost(inst, got.spots) <= layout_cost(inst, hint)
    assert chain_valid(480, 480, dims, got.spots)


@cache
def _compiled(tmp: Path):
    path = tmp / "moe4.onnx"
    onnx.save(build_moe(CFG, name="moe4"), path)
    options = CompileOptions(solver=SolverOptions(time_limit_s=10.0), check=True)
    return compile_model(path, "mesh16x16", options)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _compiled(tmp_path_factory.mktemp("hubs"))


def test_each_expert_group_is_placed_within_reach_of_its_router(compiled) -> None:
    """The dispatch distance (router centre to group centre, Manhattan, in cores) of every
    expert group is at most half the sum of its unit's longer sides: the groups in one row,
    half on each side of their router, the farthest a compact unit puts one (before units,
    the packing put groups up to 1.2x that far: 10.5 hops where this allows 8.5)."""
    r = compiled
    validate(r.problem, r.placement)
    names = [b.name for b in r.problem.blocks]
    groups = [n for n in names if ".experts." in n]
    assert len(groups) == CFG.layers * CFG.expert_groups
    for name in groups:
        router = names.index(name.split(".experts.")[0])
        unit = [router] + [i for i, n in enumerate(names) if n.startswith(names[router] + ".")]
        rects = [r.placement.rects[i] for i in unit]
        a, b = r.placement.rects[router], r.placement.rects[names.index(name)]
        assert a.wafer == b.wafer
        reach = _reach([(rc.rows, rc.cols) for rc in rects]) / 2
        got = _distance((a.row, a.col), (a.rows, a.cols), (b.row, b.col), (b.rows, b.cols))
        assert got <= reach, (name, got, reach)


def _reach(dims) -> float:
    return float(sum(max(h, w) for h, w in dims))


def _distance(a, da, b, db) -> float:
    return abs(a[0] + da[0] / 2 - b[0] - db[0] / 2) + abs(a[1] + da[1] / 2 - b[1] - db[1] / 2)


def test_a_chain_packing_asked_to_beat_a_cost_is_the_cheapest_or_none() -> None:
    """chain_pack(beat=c) stops each layout once it cannot cost less than c: the cheapest
    packing when that costs less, else None (an MoE wafer of more than MAX_BOXED)."""
    dims, edges = moe_chain(10, 4)
    assert len(dims) > chain.MAX_BOXED
    best = chain.chain_pack(60, 60, dims, edges)
    assert best is not None
    c = chain.cost(dims, edges, best)
    assert chain.chain_pack(60, 60, dims, edges, beat=c + 1) == best
    assert chain.chain_pack(60, 60, dims, edges, beat=c) is None


def test_a_wafer_of_units_searches_its_irregular_layers_and_seams_first() -> None:
    """lns.neighbourhoods on a wafer of MoE units: the same neighbourhoods, those holding a
    rectangle outside the units or of the first or last unit first."""
    from compiler.placement.cpsat.lns import neighbourhoods

    dims, edges = moe_chain(6, 4)
    spots = chain.chain_pack(60, 60, dims, edges)
    assert spots is not None
    inst = LayoutInstance(60, 60, tuple(dims), tuple(edges), hint=spots,
                          **full_ranges(60, 60, tuple(dims)))
    plain, ordered = neighbourhoods(inst, spots), neighbourhoods(inst, spots, units=True)
    assert sorted(map(sorted, plain)) == sorted(map(sorted, ordered)) and plain != ordered
    run = unit_wafer(dims, edges)
    assert run is not None
    inner = set(run.members) - set(run.unit(0)) - set(run.unit(run.count - 1))
    seams = [not free <= inner for free in ordered]
    assert seams == sorted(seams, reverse=True) and any(seams) and not all(seams)
