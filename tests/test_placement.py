"""Placement: the validator names every broken rule; costs and bounds are right by hand; greedy
placers and their stage-1 hints are valid and deterministic; place() rejects unknown methods;
random small problems always validate or are infeasible with every method. (Packing geometry:
test_geometry.py; the CP-SAT placer: test_cpsat.py.)"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from placement_cases import (
    CAPACITY,
    RES,
    STREAM,
    chain_edges,
    equal_chain,
    opt,
    problem,
    square_block,
    strip_chain,
)

from compiler.errors import InfeasiblePlacementError, InvalidPlacementError, UsageError
from compiler.placement import place
from compiler.placement.check import (
    byte_hops,
    byte_hops_lower_bound,
    check_placement,
    interwafer_bytes,
    metrics,
    offchip_bytes_per_token,
    offchip_lower_bound,
    validate,
    wafer_cycles,
)
from compiler.placement.greedy import (
    StripFill,
    first_fit,
    greedy_residency,
    greedy_strips,
    grouped_choices,
    serpentine,
    spread_choices,
)
from compiler.placement.problem import Block, Edge, Placement, PlacementProblem, Rect

FAST = {"time_limit_s": 3.0}


def two_blocks() -> PlacementProblem:
    blocks = [Block("a", "block", (opt(4, 4), opt(2, 8))), Block("b", "block", (opt(4, 4),))]
    return problem(blocks, 16, 16)


def at(options: tuple[int, ...], *rects: Rect) -> Placement:
    return Placement(options, rects)


# -- validator ---------------------------------------------------------------------------------


def test_valid_placement_has_no_violations() -> None:
    p = two_blocks()
    good = at((0, 0), Rect(0, 0, 0, 4, 4), Rect(0, 0, 4, 4, 4))
    assert validate(p, good) == ()
    check_placement(p, good)


def test_overlap_is_named_with_rows_and_cols() -> None:
    bad = at((0, 0), Rect(0, 10, 0, 4, 4), Rect(0, 12, 2, 4, 4))
    assert validate(two_blocks(), bad) == (
        "blocks a and b overlap on wafer 0 at rows 12-13, cols 2-3",)


def test_out_of_grid() -> None:
    bad = at((0, 0), Rect(0, 14, 0, 4, 4), Rect(0, 0, -1, 4, 4))
    found = validate(two_blocks(), bad)
    assert "block a at rows 14-17, cols 0-3 is outside the 16x16 grid" in found
    assert "block b at rows 0-3, cols -1-2 is outside the 16x16 grid" in found


def test_wrong_size_and_bad_option_index() -> None:
    bad = at((1, 3), Rect(0, 0, 0, 4, 4), Rect(0, 8, 8, 4, 4))
    assert validate(two_blocks(), bad) == (
        "block a rect is 4x4 but option 1 is 2x8",
        "block b has option 3 but only 1 options",
    )


def test_over_capacity() -> None:
    fat = Block("fat", "block", (opt(2, 2, per_core=CAPACITY + 1),))
    p = problem([fat], 8, 8)
    assert validate(p, at((0,), Rect(0, 0, 0, 2, 2))) == (
        f"block fat option 0 needs {CAPACITY + 1:,} bytes per core but cores hold "
        f"{CAPACITY:,}",)


def test_wafers_out_of_range_and_not_contiguous() -> None:
    p = dataclasses.replace(equal_chain(3, 2, 8, 8), wafers=2)
    bad = at((0, 0, 0), Rect(1, 0, 0, 2, 2), Rect(0, 0, 0, 2, 2), Rect(2, 0, 0, 2, 2))
    found = validate(p, bad)
    assert "block block.2 is on wafer 2 of 2" in found
    assert any(f.startswith("block block.1 is on wafer 0 after block block.0 on wafer 1: "
                            "wafers must not decrease") for f in found)


def test_length_mismatch_and_check_placement_raises() -> None:
    p = two_blocks()
    assert validate(p, at((0,), Rect(0, 0, 0, 4, 4))) == (
        "placement has 1 options and 1 rects for 2 blocks",)
    bad = at((0, 0), Rect(0, 0, 0, 4, 4), Rect(0, 0, 0, 4, 4))
    with pytest.raises(InvalidPlacementError, match="blocks a and b overlap on wafer 0"):
        check_placement(p, bad)


# -- costs and bounds --------------------------------------------------------------------------


def test_costs_by_hand() -> None:
    blocks = [Block("a", "b", (opt(2, 2, cycles=5),)),
              Block("b", "b", (opt(2, 4, STREAM, offchip=70, cycles=7),)),
              Block("c", "b", (opt(2, 2, cycles=11),))]
    edges = (Edge(0, 1, 10), Edge(1, 2, 100), Edge(0, 2, 1))
    p = dataclasses.replace(problem(blocks, 8, 8, edges=edges, io=5), wafers=2)
    pl = at((0, 0, 0), Rect(0, 0, 0, 2, 2), Rect(0, 2, 1, 2, 4), Rect(1, 0, 0, 2, 2))
    assert validate(p, pl) == ()
    # a centre (1, 1), b centre (3, 3): 4 hops x 10 bytes; b->c and a->c cross wafers
    assert byte_hops(p, pl) == 40.0
    assert interwafer_bytes(p, pl) == 101
    assert offchip_bytes_per_token(p, pl) == 75
    assert wafer_cycles(p, pl) == (12, 11)
    # a and b are at least min((2+2)/2, (2+4)/2) = 2 apart
    assert byte_hops_lower_bound(p, pl.options, [0, 0, 1]) == 20.0
    m = metrics(p, pl)
    assert (m.slowest_wafer_cycles, m.cores_used, m.wafers_used) == (12, 16, 2)
    assert m.byte_hops_ratio == 2.0


def test_offchip_lower_bound_is_the_fractional_knapsack() -> None:
    # 64 cores; each block: resident 40 cores (0 bytes) or streaming 4 cores (360 bytes)
    blocks = [Block(f"b{i}", "b", (opt(5, 8), opt(2, 2, STREAM, offchip=360))) for i in range(2)]
    p = problem(blocks, 8, 8, io=3)
    # both streaming: 8 cores; 56 left buys 56/36 of one block's 360 bytes back: 720 - 560 = 160
    assert offchip_lower_bound(p) == 3 + 160
    assert offchip_lower_bound(equal_chain(4, 4, 8, 8)) == 0


# -- greedy ------------------------------------------------------------------------------------


def test_strip_fill_mixes_classes_to_hold_the_most() -> None:
    fill = StripFill(strip_chain(), "columns")
    key = ((4, 2), (5, 3))  # 5 blocks: 5 + 4 (3 + 2 stacked) beats 5 + 5 and 4 + 4 + 4
    assert fill.width(key, 5) == 9
    assert sorted(fill.columns(key, 5)) == [(4, 2), (5, 3)]


def test_greedy_strips_keeps_strips_resident() -> None:
    p = strip_chain()
    # rows: three 10x3 side by side in a 10-row strip, the norm in the row under them
    assert greedy_strips(p, "rows") == ((0,) * 7, (0, 0, 0, 1, 1, 1, 1))
    # columns give the norm a column of its own, so one block of the last wafer streams
    found = greedy_strips(p, "columns")
    assert found is not None and sorted(found[0][:6]) == [0, 0, 0, 0, 0, 2]


def test_grouped_choices_put_equal_choices_together_per_wafer() -> None:
    p = equal_chain(6, 4, 16, 16, shapes=True)
    assert grouped_choices(p, (1, 0, 1, 2, 0, 2), (0, 0, 0, 1, 1, 1)) == (1, 1, 0, 2, 2, 0)


def test_spread_choices_deals_alike_blocks_evenly() -> None:
    blocks = [square_block(f"block.{i}", 4, stream_side=2, stream_bytes=5) for i in range(6)]
    p = problem([Block("embedding", "embedding", (opt(2, 2),)), *blocks], 16, 16)
    spread = spread_choices(p, (0, 1, 1, 0, 0, 0, 0))
    assert spread[0] == 0 and sorted(spread[1:]) == [0, 0, 0, 0, 1, 1]
    streamed = [b for b in range(1, 7) if spread[b] == 1]
    assert streamed[1] - streamed[0] >= 3  # no longer side by side


@pytest.mark.parametrize("placer", [first_fit, serpentine])
def test_greedy_valid_and_deterministic(placer) -> None:  # noqa: ANN001 - a placer function
    p = equal_chain(20, 8, 40, 40, shapes=True)
    a, b = placer(p), placer(p)
    assert validate(p, a) == () and (a.options, a.rects) == (b.options, b.rects)
    assert a.report.status == "HEURISTIC" and a.report.method.startswith("greedy-")


def test_serpentine_keeps_consecutive_blocks_adjacent() -> None:
    p = equal_chain(16, 4, 16, 20)
    pl = serpentine(p)
    assert byte_hops(p, pl) == byte_hops_lower_bound(p, pl.options)


def test_first_fit_new_epoch_streams_the_rest() -> None:
    p = equal_chain(6, 8, 16, 16)  # four 8x8 fill the wafer; the rest stream as 4x4
    with pytest.raises(InfeasiblePlacementError, match=r"block block.4 \(4x4 = 16 cores\)"):
        first_fit(p)
    blocks = [square_block(f"b{i}", 8, stream_side=4, stream_bytes=9) for i in range(3)]
    p = problem(blocks, 12, 16)  # two 8x8 fill rows 0-7; the third streams as 4x4 below
    pl = first_fit(p)
    assert validate(p, pl) == () and pl.options == (0, 0, 1)
    assert offchip_bytes_per_token(p, pl) == 9


def test_greedy_moves_to_the_next_wafer() -> None:
    p = equal_chain(6, 8, 16, 16, wafers=2)
    pl = first_fit(p)
    assert validate(p, pl) == ()
    assert [r.wafer for r in pl.rects] == [0, 0, 0, 0, 1, 1]
    assert [r.wafer for r in serpentine(p).rects] == [0, 0, 0, 1, 1, 1]  # balanced ranges


def test_greedy_residency_streams_cheaply() -> None:
    blocks = [square_block("big", 6, stream_side=2, stream_bytes=100),
              square_block("s1", 4, stream_side=1, stream_bytes=45),
              square_block("s2", 4, stream_side=1, stream_bytes=45)]
    choice = greedy_residency(problem(blocks, 8, 8), 64)
    assert choice is not None and choice[0] == (0, 1, 0)  # 36 + 1 + 16 cores


# -- place() -----------------------------------------------------------------------------------


def test_place_rejects_unknown_methods_and_validates() -> None:
    with pytest.raises(UsageError, match="first-fit"):
        place(two_blocks(), "annealing")
    pl = place(equal_chain(4, 4, 8, 8), "first-fit")
    assert validate(equal_chain(4, 4, 8, 8), pl) == ()


# -- property: every method is valid or says infeasible ----------------------------------------


@st.composite
def small_problems(draw: st.DrawFn) -> PlacementProblem:
    rows, cols = draw(st.integers(3, 14)), draw(st.integers(3, 14))
    n = draw(st.integers(1, 6))
    dims = st.tuples(st.integers(1, 6), st.integers(1, 6))
    blocks = []
    for i in range(n):
        shapes = draw(st.lists(dims, min_size=1, max_size=3))
        options = tuple(
            opt(r, c, draw(st.sampled_from([RES, STREAM])),
                per_core=draw(st.sampled_from([1_000, 30_000, CAPACITY + 1])),
                offchip=draw(st.integers(0, 500)), cycles=draw(st.integers(1, 1_000)))
            for r, c in shapes)
        blocks.append(Block(f"block.{i}", "block", options))
    skips = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1),
                                    st.integers(0, 500)), max_size=2))
    edges = chain_edges(n, draw(st.integers(0, 1_000)), skips=skips)
    return problem(blocks, rows, cols, wafers=draw(st.integers(1, 3)), edges=edges)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_every_method_is_valid_or_infeasible(p: PlacementProblem) -> None:
    placed = {}
    for method in ("first-fit", "serpentine", "cpsat"):
        opts = {"time_limit_s": 1.0} if method == "cpsat" else {}
        try:
            placed[method] = place(p, method, **opts)
        except InfeasiblePlacementError:
            continue
        assert validate(p, placed[method]) == ()
    if "first-fit" in placed or "serpentine" in placed:
        assert "cpsat" in placed  # CP-SAT finds a placement whenever a greedy one exists
