"""The chain packing hint (compiler/placement/chain.py): the body of alike blocks snaked, the
odd rectangles beside their links; always a valid packing, and on a transformer-shaped chain
far nearer the separation bound than the order-blind packings it replaces as CP-SAT's hint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from placement_cases import chain_edges, opt, problem

from compiler.placement import chain, place
from compiler.placement.chain import chain_pack, cost, longest_run
from compiler.placement.check import byte_hops, byte_hops_lower_bound, validate
from compiler.placement.cpsat.layout import (
    LayoutInstance,
    full_ranges,
    layout_cost,
    layout_lower_bound,
)
from compiler.placement.cpsat.runner import Clock, SolveParams
from compiler.placement.cpsat.stages import CHAIN_NEAR
from compiler.placement.cpsat.wafer import place_wafer
from compiler.placement.geometry import any_pack
from compiler.placement.problem import Block

# Llama 3 8B on a WSE-3 at 8k context, as stage 1 chose its shapes: an embedding, 32 blocks, a
# one-column norm strip and the head, 8 KiB per token on every link of the chain
LLAMA8B = [(76, 316)] + [(181, 90)] * 32 + [(1172, 1), (390, 69)]
CHAIN = [(i, i + 1, 8192) for i in range(len(LLAMA8B) - 1)]


def valid(rows: int, cols: int, dims, spots) -> bool:
    boxes = [(r, c, r + h, c + w) for (r, c), (h, w) in zip(spots, dims, strict=True)]
    inside = all(r >= 0 and c >= 0 and r2 <= rows and c2 <= cols for r, c, r2, c2 in boxes)
    apart = all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
                for k, a in enumerate(boxes) for b in boxes[k + 1:])
    return inside and apart


def test_longest_run_is_the_body() -> None:
    assert longest_run(LLAMA8B) == range(1, 33)
    assert longest_run([(2, 2)] * 3 + [(1, 1)]) is None  # shorter than MIN_BODY
    assert longest_run([(1, 1), (2, 2), (2, 2), (3, 3), (2, 2)] + [(4, 1)] * 5) == range(5, 10)


def test_chain_pack_beats_the_order_blind_packings_on_a_transformer() -> None:
    spots = chain_pack(1172, 762, LLAMA8B, CHAIN)
    assert spots is not None and valid(1172, 762, LLAMA8B, spots)
    inst = LayoutInstance(1172, 762, tuple(LLAMA8B), tuple(CHAIN), hint=None,
                          **full_ranges(1172, 762, LLAMA8B))
    greedy = any_pack(1172, 762, LLAMA8B)  # shelves fail on the norm strip: the skyline packs
    assert greedy is not None
    bound = layout_lower_bound(inst)
    assert cost(LLAMA8B, CHAIN, spots) < 0.7 * cost(LLAMA8B, CHAIN, greedy)
    assert cost(LLAMA8B, CHAIN, spots) < 1.5 * bound
    # consecutive blocks of the body touch: most body links cost exactly the separation
    body = [(i, j) for i, j, _ in CHAIN if i >= 1 and j <= 32]
    touching = [cost(LLAMA8B, [(i, j, 1)], spots) == 90 * 2 for i, j in body]
    assert sum(touching) >= len(body) - 4


def test_chain_pack_refuses_what_it_cannot_place() -> None:
    assert chain_pack(10, 10, [(5, 5)] * 5, [(0, 1, 1)]) is None  # 5 of 5x5 on 10x10
    assert chain_pack(10, 10, [(1, 1), (2, 3)], [(0, 1, 1)]) is None  # no body


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 12), st.tuples(st.integers(1, 6), st.integers(1, 6)),
       st.lists(st.tuples(st.integers(1, 30), st.integers(1, 30)), max_size=4),
       st.integers(20, 60), st.integers(20, 60))
def test_chain_pack_is_always_a_valid_packing(n, body, odd, rows, cols) -> None:
    dims = [odd[0]] if odd else []
    dims += [body] * n + odd[1:]
    edges = [(i, i + 1, 1 + i % 3) for i in range(len(dims) - 1)]
    spots = chain_pack(rows, cols, dims, edges)
    if spots is not None:
        assert len(spots) == len(dims) and valid(rows, cols, dims, spots)


def test_stage2_keeps_a_hint_at_the_bound_without_solving() -> None:
    # 6 blocks of 2x2 in one row: the snake touches every link, exactly the separation bound
    dims = ((2, 2),) * 6
    edges = tuple((i, i + 1, 5) for i in range(5))
    hint = chain_pack(2, 12, dims, edges)
    inst = LayoutInstance(2, 12, dims, edges, hint=hint, **full_ranges(2, 12, dims))
    assert layout_cost(inst, hint) == layout_lower_bound(inst)
    clock = Clock(SolveParams(seed=0, workers=1, deterministic=True), left=5.0)
    placed = place_wafer(inst, 5.0, clock)
    assert placed.spots == hint and placed.optimal and "kept" in placed.summary
    assert clock.left == 5.0  # no solve was charged


def test_cpsat_places_a_transformer_chain_from_the_chain_hint() -> None:
    # the LLAMA8B chain scaled down 4x on a 293 x 190 grid, one shape per block
    dims = [(-(-h // 4), -(-w // 4)) for h, w in LLAMA8B]
    blocks = [Block(f"b{i}", "block", (opt(h, w),)) for i, (h, w) in enumerate(dims)]
    prob = problem(blocks, 293, 190, edges=chain_edges(len(dims), 8192))
    placement = place(prob, "cpsat", time_limit_s=3.0)
    assert validate(prob, placement) == ()
    bound = byte_hops_lower_bound(prob, placement.options)
    assert byte_hops(prob, placement) <= CHAIN_NEAR * bound


def test_chain_pack_leaves_room_before_the_body_for_what_leads_into_it() -> None:
    # Llama 3 70B's first wafer, shapes dealt in runs: three full-width strips, then 18 blocks
    # that pair across the wafer. The body snakes down one column and up the other; the slack
    # along its bands goes before its first member, where the strips lead into it.
    dims = [(65, 762)] * 3 + [(107, 373)] * 18
    edges = [(i, i + 1, 16_384) for i in range(len(dims) - 1)]
    spots = chain_pack(1172, 762, dims, edges)
    assert spots is not None and valid(1172, 762, dims, spots)
    inst = LayoutInstance(1172, 762, tuple(dims), tuple(edges), hint=None,
                          **full_ranges(1172, 762, dims))
    assert cost(dims, edges, spots) <= 1.25 * layout_lower_bound(inst)
    seam = cost(dims, [(2, 3, 1)], spots)  # strip to first block: beside it, not a wafer away
    assert seam <= 4 * min(65 + 107, 762 + 373)


def test_chain_pack_boxes_the_rest_when_nearest_spots_fragment_a_full_wafer() -> None:
    # Llama 3 8B at 8k context as stage 1 leaves it (94% of the wafer), shapes in runs: 23
    # full-width resident blocks, 8 half-width KV-streaming ones, the odd layers around them.
    # Placing each odd rectangle beside its links fragments the 275 rows the stack leaves;
    # packed in block order into that band, they fit.
    dims = [(76, 316), (76, 147)] + [(39, 762)] * 23 + [(31, 381)] * 8 + [(1, 1), (107, 241)]
    edges = [(i, i + 1, 8192) for i in range(len(dims) - 1)]
    spots = chain_pack(1172, 762, dims, edges)
    assert spots is not None and valid(1172, 762, dims, spots)


def _brute_spot(rows, cols, dims, spots, i, links):
    """The cheapest free candidate by testing every candidate against every placed box."""
    h, w = dims[i]
    near = [(2 * spots[j][0] + dims[j][0], 2 * spots[j][1] + dims[j][1], wt)
            for j, wt in links if j in spots]
    taken = np.array([(r, c, r + dims[k][0], c + dims[k][1]) for k, (r, c) in spots.items()],
                     dtype=np.int64).reshape(-1, 4)
    rs, cs = chain._candidates(rows, cols, h, w, taken, near)
    best = None
    for r in rs.tolist():
        for c in cs.tolist():
            if any(r < r2 and r0 < r + h and c < c2 and c0 < c + w for r0, c0, r2, c2 in taken):
                continue
            total = sum(wt * (abs(2 * r + h - r2) + abs(2 * c + w - c2)) for r2, c2, wt in near)
            if best is None or (total, r, c) < best[0]:
                best = ((total, r, c), ((r, c), total))
    return None if best is None else best[1]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_cheapest_spot_is_the_cheapest_free_candidate(seed: int) -> None:
    """The spot search counts the boxes over every candidate at once (a difference grid over
    the candidate rows and columns): it finds the same spot (and cost) as testing every
    candidate against every box, on random crowded grids."""
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    dims = [(int(rng.integers(1, 12)), int(rng.integers(1, 12))) for _ in range(40)]
    spots: dict[int, tuple[int, int]] = {}
    for k in range(1, 40):  # rectangle 0 is the one to place
        r, c = int(rng.integers(0, rows - dims[k][0] + 1)), int(rng.integers(0, cols - dims[k][1]))
        if valid(rows, cols, [*(dims[j] for j in spots), dims[k]], [*spots.values(), (r, c)]):
            spots[k] = (r, c)
    links = [(int(j), int(rng.integers(1, 100))) for j in rng.choice(list(spots), 3)]
    taken = np.array([(r, c, r + dims[k][0], c + dims[k][1]) for k, (r, c) in spots.items()],
                     dtype=np.int64).reshape(-1, 4)
    got = chain._cheapest_spot(rows, cols, dims, spots, taken, 0, links)
    assert got == _brute_spot(rows, cols, dims, spots, 0, links)


def test_chain_pack_stops_a_layout_that_cannot_win_with_the_same_answer() -> None:
    """An MoE-like wafer (groups of experts, a block between each layer's groups): stopping a
    body layout once its placed edges cost what the best complete one did gives the packing of
    trying every body layout to the end."""
    dims = [(6, 30)] + ([(5, 9)] + [(9, 4)] * 4) * 5 + [(50, 1)]
    edges = [(i, i + 1, 1000) for i in range(len(dims) - 1)]
    edges += [(k, k + j, 300) for k in range(1, len(dims) - 1, 5) for j in range(2, 5)]
    rows, cols = 50, 40
    assert longest_run(dims) is not None
    best = None
    for spots in chain.all_layouts(rows, cols, dims, edges):  # MoE units' first, then the body
        full = chain._place_rest(rows, cols, dims, edges, spots)
        if full is not None and (best is None or cost(dims, edges, full) < best[0]):
            best = (cost(dims, edges, full), full)
    assert best is not None
    assert chain._chain_pack.__wrapped__(rows, cols, tuple(dims), tuple(edges)) == best[1]


CASES = json.loads((Path(__file__).parent / "golden" / "chain_pack_cases.json").read_text())


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["name"])
def test_chain_pack_gives_the_packings_of_the_unvectorised_search(case: dict) -> None:
    """Wafers recorded from the zoo's compiles (an MoE wafer of 100 rectangles among them)
    pack exactly as the spot search that tested candidates a slice at a time in cost order
    packed them (its answers stored with the instances)."""
    dims = tuple(tuple(d) for d in case["dims"])
    edges = tuple(tuple(e) for e in case["edges"])
    got = chain._chain_pack.__wrapped__(case["rows"], case["cols"], dims, edges)
    want = None if case["spots"] is None else tuple(tuple(p) for p in case["spots"])
    assert got == want
