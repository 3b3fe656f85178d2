"""Tiling (compiler/tiling/candidates.py, fit.py, tiles.py): candidates fit SRAM, alike blocks
share a template, streaming moves bytes off-chip, and a layer too big for the grid says so.
The layout rules and tile shapes are in test_layouts.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import zoo_graph

from compiler.errors import CapacityError
from compiler.placement.problem import Residency
from compiler.target import load_target
from compiler.tiling.candidates import (
    LATENCY_SHARE,
    TilingOptions,
    _frontier,
    _grid_tiling,
    tile_graph,
    to_problem,
)

ROOT = Path(__file__).resolve().parents[1]

CASES = [("gpt2-tiny", "mesh8x8"), ("llama-tiny", "mesh8x8"), ("bert-tiny", "mesh16x16"),
         ("llama-tiny-opset23", "mesh8x8"), ("llama3-8b", "wse3")]


@pytest.fixture(scope="module")
def tiled():
    return {(m, t): tile_graph(zoo_graph(m), load_target(t)) for m, t in CASES}


@pytest.mark.parametrize("case", CASES)
def test_every_candidate_fits_a_core(tiled, case):
    target = load_target(case[1])
    for lt in tiled[case].layers:
        assert lt.candidates, lt.layer
        for c in lt.candidates:
            assert c.per_core_bytes <= target.usable_bytes_per_core
            assert c.rows <= target.grid.rows and c.cols <= target.grid.cols


@pytest.mark.parametrize("case", CASES)
def test_resident_tiles_hold_every_weight_byte(tiled, case):
    for lt in tiled[case].layers:
        for c in lt.candidates:
            if c.residency is Residency.RESIDENT:
                assert c.weight_bytes * c.rows * c.cols >= lt.weight_bytes
                assert c.kv_bytes * c.rows * c.cols >= lt.kv_bytes


def test_alike_blocks_share_one_template(tiled):
    layers = tiled[("llama3-8b", "wse3")].layers
    blocks = [lt for lt in layers if lt.kind == "block"]
    assert len({lt.template for lt in blocks[1:]}) == 1
    assert all(lt.candidates == blocks[1].candidates for lt in blocks[1:])


def test_streaming_moves_the_weights_off_chip(tiled):
    lt = next(x for x in tiled[("llama3-8b", "wse3")].layers if x.kind == "block")
    by_mode = {c.residency: c for c in lt.candidates}
    assert by_mode[Residency.RESIDENT].offchip_bytes_per_token == 0
    assert by_mode[Residency.STREAM_WEIGHTS].offchip_bytes_per_token == lt.weight_bytes
    assert by_mode[Residency.STREAM_KV].offchip_bytes_per_token == lt.kv_bytes
    smallest = {m: min(c.rows * c.cols for c in lt.candidates if c.residency is m)
                for m in by_mode}
    assert smallest[Residency.STREAM_WEIGHTS] < smallest[Residency.RESIDENT]


def test_long_context_needs_more_cores_for_the_kv_cache():
    g, t = zoo_graph("llama3-8b"), load_target("wse3")
    short = tile_graph(g, t, TilingOptions(context=8192))
    long = tile_graph(g, t, TilingOptions(context=131072))

    def cores(tg):
        lt = next(x for x in tg.layers if x.kind == "block")
        return min(c.rows * c.cols for c in lt.candidates if c.residency is Residency.RESIDENT)

    block = next(x for x in long.layers if x.kind == "block")
    assert block.kv_bytes == 32 * 8 * 128 * 2 * 2 * 131072 // 32  # one layer's K and V, fp16
    assert cores(long) > cores(short)


def test_edges_follow_the_chain_and_skip_constant_subgraphs(tiled):
    tg = tiled[("gpt2-tiny", "mesh8x8")]
    assert [(e.src, e.dst) for e in tg.edges] == [(i, i + 1) for i in range(len(tg.layers) - 1)]
    hidden_fp16 = 64 * 2
    assert all(e.bytes_per_token == hidden_fp16 for e in tg.edges)


def test_layer_too_big_for_the_grid_says_bytes_and_layer():
    tiny = load_target("mesh8x8", {"grid.rows": 1, "grid.cols": 1, "core.sram_bytes": "8KiB",
                                   "core.reserve_bytes": 4096})
    with pytest.raises(CapacityError, match=r"layer \S+: a core needs [\d,]+ bytes but 4,096 are"):
        tile_graph(zoo_graph("gpt2-tiny"), tiny)


def test_405b_blocks_are_offered_a_shape_that_packs_six_a_wafer():
    """A resident llama3.1-405b block needs a little under a sixth of a wse3 wafer; the
    frontier's own shapes tile only 5 a wafer, so the 2 x 3 split of the wafer is offered too
    (126 blocks then fit 22 wafers of the 24)."""
    target = load_target("wse3-x24")
    block = next(lt for lt in tile_graph(zoo_graph("llama3.1-405b"), target).layers
                 if lt.kind == "block")
    rows, cols = target.grid.rows, target.grid.cols
    packs = [(rows // c.rows) * (cols // c.cols) for c in block.candidates
             if c.residency is Residency.RESIDENT]
    assert max(packs) == 6 and (rows * cols) // min(
        c.rows * c.cols for c in block.candidates if c.residency is Residency.RESIDENT) == 6


def test_gpt2_small_holds_a_128_token_prompt_on_wse3():
    tiled = tile_graph(zoo_graph("gpt2-small", 1, 128), load_target("wse3"),
                       TilingOptions(prompt_resident=True))
    assert tiled.prompt_resident and all(lt.candidates for lt in tiled.layers)


def test_problem_adapter_keeps_blocks_and_edges(tiled):
    tg = tiled[("llama-tiny", "mesh8x8")]
    problem = to_problem(tg, load_target("mesh8x8"))
    assert [b.name for b in problem.blocks] == [lt.layer for lt in tg.layers]
    assert problem.edges == tg.edges and problem.capacity_bytes == 65536 - 4096


def test_wider_shapes_are_offered_when_they_cut_decode_cycles(tiled):
    """Llama 3 8B's blocks on a wse3: besides the smallest rectangles that fit, one wider
    shape (idle cores otherwise) with fewer decode cycles than all of them, within a fair
    share of the wafer per layer."""
    target = load_target("wse3")
    graph = tiled[("llama3-8b", "wse3")]
    share = LATENCY_SHARE * target.grid.rows * target.grid.cols / len(graph.layers)
    block = next(lt for lt in graph.layers if lt.kind == "block")
    resident = [c for c in block.candidates if c.residency is Residency.RESIDENT]
    least = min(c.rows * c.cols for c in resident)
    small = [c for c in resident if c.rows * c.cols <= 1.25 * least]
    fast = min(resident, key=lambda c: c.cycles)
    assert fast.cycles < min(c.cycles for c in small)
    assert least * 1.25 < fast.rows * fast.cols <= share


def test_the_fastest_block_shape_tiles_the_wafer(tiled):
    """Issue 17 (h-dec): Llama 3 8B's fastest block shape on a wse3 (the latency shape) tiles
    the wafer, so all 32 alike blocks pack in it side by side. A shape that does not (76 x 255:
    30 a wafer) made the placer move the blocks to 19 x 762 strips at twice the cycles."""
    target = load_target("wse3")
    rows, cols = target.grid.rows, target.grid.cols
    graph = tiled[("llama3-8b", "wse3")]
    block = next(lt for lt in graph.layers if lt.kind == "block")
    fast = min((c for c in block.candidates if c.residency is Residency.RESIDENT),
               key=lambda c: c.cycles)
    assert (rows // (rows // fast.rows), cols // (cols // fast.cols)) == (fast.rows, fast.cols)
    assert (rows // fast.rows) * (cols // fast.cols) >= sum(
        lt.kind == "block" for lt in graph.layers)


@pytest.mark.parametrize("case", [("llama-tiny", "wse3"), ("gpt2-tiny", "mesh8x8"),
                                  ("llama3-8b", "wse3")])
def test_the_latency_search_floor_bounds_the_cycles(case):
    """The latency-shape search stops at the first shape whose floor (`_cycles_floor`: compute,
    overheads, hops, link bytes, one combine per reduce) reaches the best cycles found, so the
    floor must never exceed a shape's estimated cycles, on any shape."""
    from compiler.tiling import candidates as cand
    from compiler.tiling.costs import batch_size, kv_cache_tensors
    from compiler.tiling.layouts import graph_layouts

    g, target = zoo_graph(case[0]), load_target(case[1])
    layouts, params = graph_layouts(g), cand._param_derived(g)
    sides = sorted({1, 2, 3, 5, 8, 36, 63, 255, 762} | set(cand._row_counts(64)))
    for layer in g.layers:
        model = cand._layer_model(g, layer, layouts[layer.name], target, kv_cache_tensors(g),
                                  64, batch_size(g), params)
        floor = cand._cycles_floor(model, target)
        for r in (s for s in sides if s <= target.grid.rows):
            for c in (s for s in sides if s <= target.grid.cols):
                assert floor(r, c) <= cand._cycles(model, r, c, target), (layer.name, r, c)


def test_one_core_candidates_pay_no_collectives():
    """On one core every collective is local: the candidate's decode cycles are its FLOPs at
    one core's rate plus one phase's overhead (the performance model prices it so too)."""
    target = load_target(ROOT / "benchmarks" / "targets" / "stream-mesh8x8.toml")
    rate = target.core.flops(target.compute.dtype)
    for lt in tile_graph(zoo_graph("gpt2-tiny"), target).layers:
        for c in lt.candidates:
            if c.rows * c.cols == 1:
                assert c.cycles == -(-lt.flops_per_token // rate) + \
                    target.runtime.step_overhead_cycles, lt.layer


def test_peak_counts_what_the_per_tensor_sums_count():
    """The candidate search measures tile bytes with numpy (`_Peak`): for every rectangle, the
    largest group's sum is what `_live_bytes` gives tensor by tensor (each tensor at its
    largest spec, factored entries and 4.25-bit weights included), and a rank mismatch is
    refused as `tile_numel` refuses it."""
    import random

    from compiler.tiling.candidates import _live_bytes, _Peak

    rng = random.Random(7)
    axes = [None, "r", "c", "c12", "c/12", "r4", "r/4"]
    tensors = []
    for _ in range(40):
        shape = tuple(rng.choice([1, 3, 12, 64, 100, 4096]) for _ in range(rng.randint(0, 4)))
        specs = tuple({tuple(rng.choice(axes) for _ in shape) for _ in range(rng.randint(1, 3))})
        tensors.append((shape, specs, rng.choice([1, 2, 4, 0.53125])))
    groups = [rng.sample(tensors, rng.randint(1, 12)) for _ in range(9)]
    peak = _Peak(groups)
    for rows, cols in [(1, 1), (1, 7), (3, 12), (16, 5), (762, 1172)]:
        assert peak(rows, cols) == max(_live_bytes(grp, rows, cols) for grp in groups)
    assert _Peak([])(4, 4) == 0 and _Peak([[]])(4, 4) == 0
    with pytest.raises(ValueError):
        _Peak([[((4, 4), ((None,),), 2)]])


def test_blocks_that_pack_no_more_a_wafer_are_offered_the_split_leaving_a_strip():
    """Llama 3 70B at 2,048 on wse3-x4: 21 blocks a wafer fit by area but no split holds 21,
    and the full 20-a-wafer splits leave too little beside them for the embedding or the head
    (38 of the 80 blocks streamed their caches). The tiling offers a 20-a-wafer split cut to
    its least fitting size, which leaves a strip about one block wide."""
    rows, cols, area = 1172, 762, 42_500

    def fits(r: int, c: int) -> bool:
        return r * c >= area

    shapes = _grid_tiling(_frontier(fits, rows, cols), fits, load_target("wse3"))
    assert all(fits(r, c) for r, c in shapes)
    free = [rows * cols - 20 * r * c for r, c in shapes if (rows // r) * (cols // c) >= 20]
    assert max(free) >= area
