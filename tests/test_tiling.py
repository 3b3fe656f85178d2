"""Tiling and layouts: candidates fit SRAM, tiles cover their tensors, alike blocks share a
template, streaming moves bytes off-chip, and a layer too big for the grid says so."""

from __future__ import annotations

import dataclasses
import math

import pytest
from conftest import FIXTURES, zoo_graph
from hypothesis import given
from hypothesis import strategies as st

from compiler import zoo
from compiler.errors import CapacityError
from compiler.frontend import DimRequest, FrontendOptions, load_model
from compiler.placement.problem import Residency
from compiler.target import load_target
from compiler.tiling.candidates import TilingOptions, tile_graph, to_problem
from compiler.tiling.layouts import R, graph_layouts, tile_numel, tile_shape

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


def test_consecutive_matmuls_alternate_orientation():
    layouts = graph_layouts(zoo_graph("gpt2-tiny"))["block.0"]
    weight_specs = [lay.inputs[1] for lay in layouts
                    if lay.kind == "MatMul" and len(lay.inputs[1]) == 2]
    assert len(weight_specs) == 4
    for a, b in zip(weight_specs, weight_specs[1:], strict=False):
        assert a[1] == b[0]  # N of one matmul is split like K of the next: no re-layout


def _relayouts(layouts) -> list[str]:
    return [c.tensor for lay in layouts for c in lay.collectives if c.kind == "relayout"]


def test_attention_keys_come_split_out_of_the_fused_qkv_split():
    """K and V leave the Split of the fused QKV projection (a retile: it moves tiles anyway)
    already split by keys over the axis the heads leave free, so no core ever holds a head's
    K or V whole and the attention matmuls need no relayout."""
    g = zoo_graph("gpt2-tiny")
    layouts = graph_layouts(g)["block.0"]
    assert _relayouts(layouts) == []
    split = next(lay for lay in layouts if lay.kind == "Split")
    q, k, v = split.outputs
    assert q[1] is None and k[1] is not None and v[1] == k[1]  # tokens: whole for Q only
    qk, pv = [lay for lay in layouts if lay.kind == "MatMul" and len(lay.inputs[1]) == 4]
    heads = qk.inputs[0][1]
    assert heads and heads != k[1]
    assert qk.inputs[1][-1] == k[1] and pv.inputs[1][-2] == k[1]  # keys over the free axis


def test_keys_stay_split_through_a_constant_scale():
    """A real torch export scales K by a constant (SDPA's sqrt of 1/sqrt(d)) between the Split
    and attention: the Mul computes on key-split tiles and no relayout is left."""
    g = load_model(FIXTURES / "gpt2_torchscript_op17_static.onnx", FrontendOptions(DimRequest()))
    layouts = graph_layouts(g)["block.0"]
    assert _relayouts(layouts) == []
    scale = next(lay for op, lay in zip(next(x for x in g.layers if x.name == "block.0").ops,
                                        layouts, strict=True)
                 if op.kind == "Mul" and g.consumers[op.outputs[0]][0].kind == "MatMul"
                 and lay.outputs[0][-1])
    assert scale.outputs[0][1] != scale.outputs[0][-1]  # heads and keys on different axes


def test_a_tensor_read_elsewhere_keeps_its_spec():
    """The hoisting only rewrites a chain nobody else reads: with K^T also a graph output,
    K stays whole per head and is relayouted before attention, as before; V still is not."""
    g = zoo_graph("gpt2-tiny")
    layer = next(x for x in g.layers if x.name == "block.0")
    qk = [op for op in layer.ops if op.kind == "MatMul" and op.inputs[1] not in g.const_derived]
    k_t = qk[0].inputs[1]
    layouts = graph_layouts(dataclasses.replace(g, outputs=(*g.outputs, k_t)))["block.0"]
    assert _relayouts(layouts) == [k_t]
    split = next(lay for lay in layouts if lay.kind == "Split")
    assert split.outputs[1][1] is None and split.outputs[2][1] is not None


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # 2, 4 and 8 query heads per key head
def test_the_gqa_repeat_holds_no_more_per_core_than_the_keys(tmp_path, kv_heads):
    """The key/value repeat of grouped-query attention (Unsqueeze, Expand, Reshape) splits its
    query groups over the mesh axis the key heads leave free: a core holds its share of the
    copies, not all of them, so with as many columns as groups its tile of the repeated keys
    is no bigger than its tile of the keys, however many query heads share a key head."""
    cfg = dataclasses.replace(zoo.ZOO["llama-tiny"].config, heads=8, kv_heads=kv_heads)
    path = tmp_path / "gqa.onnx"
    path.write_bytes(zoo.build_llama(cfg).SerializeToString())
    g = load_model(path)
    layer = g.layers[1]
    expands = [(op, lay) for op, lay in zip(layer.ops, graph_layouts(g)[layer.name],
                                            strict=True) if op.kind == "Expand"]
    assert len(expands) == 2  # K and V
    for op, lay in expands:
        src, out = g.tensor(op.inputs[0]).shape, g.tensor(op.outputs[0]).shape
        assert math.prod(out) == math.prod(src) * 8 // kv_heads
        for rows, cols in ((4, 8), (8, 16), (3, 5)):
            share = math.ceil(8 // kv_heads / cols)  # copies per core
            assert tile_numel(out, lay.outputs[0], rows, cols) <= \
                tile_numel(src, lay.inputs[0], rows, cols) * share


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


@given(shape=st.lists(st.integers(1, 300), min_size=1, max_size=4),
       rows=st.integers(1, 40), cols=st.integers(1, 40), data=st.data())
def test_tiles_cover_their_tensor(shape, rows, cols, data):
    axes = data.draw(st.permutations([R, "c"] + [None] * (len(shape))))[:len(shape)]
    spec = tuple(axes)
    tile = tile_shape(shape, spec, rows, cols)
    size = {R: rows, "c": cols, None: 1}
    for d, t, s in zip(shape, tile, spec, strict=True):
        assert t * size[s] >= d and (t - 1) * size[s] < d
    assert math.prod(tile) <= math.prod(shape)
