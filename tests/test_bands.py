"""Issue 18's dense layouts: the byte-hops floor raised on chains of alike rectangles
(check.separation_bound2) is a lower bound, proven here against exhaustive optima on small
grids, and the banded packing (bands.py) is a valid packing near that floor on the shapes of
Llama 3 8B at 128k context and gpt2-small, where the hints before it were 1.3-1.7x the bound."""

from __future__ import annotations

import random
from itertools import product

import pytest
from test_chain import valid

from compiler.placement.bands import band_pack
from compiler.placement.chain import chain_pack, cost, longest_run
from compiler.placement.check import chain_excess2, chains, separation_bound2
from compiler.placement.cpsat.layout import (
    LayoutInstance,
    full_ranges,
    layout_cost,
    layout_floor,
)
from compiler.placement.cpsat.runner import Clock, SolveParams
from compiler.placement.cpsat.wafer import place_wafer
from compiler.placement.geometry import any_pack

# Llama 3 8B at 128k context on a WSE-3 as stage 1 chose it (KV cache streamed): embedding,
# 32 blocks of 293 x 69 (four bands of them fill the 1172 rows), the norm and head strips
LLAMA_128K = [(76, 316)] + [(293, 69)] * 32 + [(1172, 1), (1172, 21)]
# gpt2-small on a WSE-3: embedding, 12 blocks, a half-height norm and a full-height head
GPT2 = [(15, 152)] + [(117, 31)] * 12 + [(586, 9), (1172, 17)]


def _chain(dims: list[tuple[int, int]], weight: int = 8192) -> list[tuple[int, int, int]]:
    return [(i, i + 1, weight) for i in range(len(dims) - 1)]


def _separation2(dims, edges) -> int:
    return sum(w * min(dims[i][0] + dims[j][0], dims[i][1] + dims[j][1]) for i, j, w in edges)


def exhaustive_optimum(rows: int, cols: int, dims, edges) -> int | None:
    """The least doubled cost over every packing (depth-first, pruned by the separation of
    the edges still open, which never overestimates)."""
    spots: list[tuple[int, int]] = []
    best = [None]

    def partial(k: int) -> int:
        done = sum(w * (abs(2 * spots[i][0] + dims[i][0] - 2 * spots[j][0] - dims[j][0])
                        + abs(2 * spots[i][1] + dims[i][1] - 2 * spots[j][1] - dims[j][1]))
                   for i, j, w in edges if i < k and j < k)
        return done + _separation2(dims, [e for e in edges if e[0] >= k or e[1] >= k])

    def free(r: int, c: int, h: int, w: int) -> bool:
        return all(r + h <= r2 or r2 + h2 <= r or c + w <= c2 or c2 + w2 <= c
                   for (r2, c2), (h2, w2) in zip(spots, dims, strict=False))

    def go(k: int) -> None:
        if best[0] is not None and partial(k) >= best[0]:
            return
        if k == len(dims):
            best[0] = partial(k)
            return
        h, w = dims[k]
        for r, c in product(range(rows - h + 1), range(cols - w + 1)):
            if free(r, c, h, w):
                spots.append((r, c))
                go(k + 1)
                spots.pop()

    go(0)
    return best[0]


def _cases() -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Small chains of alike rectangles, some with a full-height wall or an odd rectangle at
    an end (seeded, so the same every run)."""
    rng, out = random.Random(18), [(3, 5, [(1, 2)] * 4), (2, 6, [(1, 2)] * 5),
                                   (4, 4, [(2, 1)] * 4 + [(4, 1)]), (3, 4, [(1, 1)] * 6)]
    while len(out) < 40:
        rows, cols = rng.randint(2, 4), rng.randint(3, 5)
        h, w = rng.randint(1, 2), rng.randint(1, 3)
        n = rng.randint(3, 6)
        dims = [(h, w)] * n
        extra = rng.choice(["", "wall", "odd"])
        if extra == "wall":
            dims = dims + [(rows, 1)]
        elif extra == "odd":
            dims = [(1, rng.randint(1, 2))] + dims
        if sum(a * b for a, b in dims) <= rows * cols and len(dims) <= 7:
            out.append((rows, cols, dims))
    return out


def test_the_raised_bound_is_never_above_an_exhaustive_optimum() -> None:
    raised = tight = 0
    for rows, cols, dims in _cases():
        edges = _chain(dims, 1)
        best = exhaustive_optimum(rows, cols, dims, edges)
        if best is None:
            continue  # does not pack: nothing to bound
        bound = separation_bound2(rows, cols, dims, edges)
        assert _separation2(dims, edges) <= bound <= best, (rows, cols, dims)
        raised += bound > _separation2(dims, edges)
        tight += bound == best > _separation2(dims, edges)
    assert raised >= 8 and tight >= 4  # the chain term matters, and is often exact


def test_chains_are_runs_of_alike_rectangles_with_equal_links() -> None:
    dims = [(1, 3)] + [(2, 2)] * 4 + [(1, 1)] * 2
    assert chains(dims, _chain(dims)) == [(1, 4, 8192)]
    uneven = [(i, i + 1, 8192 if i < 2 else 4096) for i in range(len(dims) - 1)]
    assert chains(dims, uneven) == [(2, 3, 4096)]  # 2 -> 3 -> 4 weigh alike; 1 -> 2 alone
    assert chains(dims, [e for e in _chain(dims) if e[0] != 2]) == []  # broken at 2 -> 3


def test_llama_128k_turns_three_times_on_the_wafer() -> None:
    """32 blocks of 293 x 69 beside 22 full-height columns: 10 a band, so 4 bands and at
    least 3 turns of 293 rows instead of 69 columns: 3 x 224 hops over the separation."""
    assert chain_excess2(1172, 762, LLAMA_128K, 1, 32) == 2 * 3 * (293 - 69)
    edges = _chain(LLAMA_128K)
    assert separation_bound2(1172, 762, LLAMA_128K, edges) == (
        _separation2(LLAMA_128K, edges) + 8192 * 2 * 3 * 224)


def test_band_pack_is_valid_and_near_the_raised_bound() -> None:
    edges = _chain(LLAMA_128K)
    inst = LayoutInstance(1172, 762, tuple(LLAMA_128K), tuple(edges), hint=None,
                          **full_ranges(1172, 762, LLAMA_128K))
    spots = band_pack(1172, 762, LLAMA_128K, edges)
    assert spots is not None and valid(1172, 762, LLAMA_128K, spots)
    assert longest_run(LLAMA_128K) == range(1, 33)
    chained = chain_pack(1172, 762, LLAMA_128K, edges)
    assert chained is None or cost(LLAMA_128K, edges, spots) < cost(LLAMA_128K, edges, chained)
    assert cost(LLAMA_128K, edges, spots) < 1.2 * layout_floor(inst)  # was 1.29x on main


def test_band_pack_leaves_room_for_a_norm_before_the_head() -> None:
    edges = _chain(GPT2, 1536)
    spots = band_pack(1172, 762, GPT2, edges)
    assert spots is not None and valid(1172, 762, GPT2, spots)
    assert cost(GPT2, edges, spots) <= 1.01 * _separation2(GPT2, edges)


@pytest.mark.parametrize("dims", [[(3, 3)] * 3, [(1, 1), (2, 2)] * 3])
def test_band_pack_needs_a_body(dims) -> None:  # noqa: ANN001 - a list of dims
    assert band_pack(20, 20, dims, _chain(dims)) is None


def test_stage_2_starts_from_the_banded_hint_and_is_never_worse() -> None:
    """A wafer hinted with the skyline's order-blind packing: stage 2 takes the banded one
    (cheaper) and ends at or below it, within 1.2x of the raised bound, deterministically."""
    edges = _chain(LLAMA_128K)
    skyline = any_pack(1172, 762, LLAMA_128K)
    assert skyline is not None
    inst = LayoutInstance(1172, 762, tuple(LLAMA_128K), tuple(edges), hint=skyline,
                          **full_ranges(1172, 762, LLAMA_128K))
    banded = band_pack(1172, 762, LLAMA_128K, edges)
    runs = [place_wafer(inst, 2.0, Clock(SolveParams(seed=0, workers=1, deterministic=True),
                                         left=2.0)) for _ in range(2)]
    assert runs[0].spots == runs[1].spots
    placed = runs[0]
    assert "banded hint" in placed.summary and valid(1172, 762, LLAMA_128K, placed.spots)
    assert layout_cost(inst, placed.spots) <= cost(LLAMA_128K, edges, banded)
    assert layout_cost(inst, placed.spots) < 1.2 * layout_floor(inst)
    assert layout_floor(inst) <= placed.bound <= layout_cost(inst, placed.spots)
