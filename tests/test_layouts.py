"""compiler/tiling/layouts.py: the per-op layout rules (matmuls alternate orientation, attention
keys come split out of the QKV split, the GQA repeat splits its copies) and tile shapes that cover
their tensor."""

from __future__ import annotations

import dataclasses
import math

import pytest
from conftest import FIXTURES, zoo_graph
from hypothesis import given
from hypothesis import strategies as st

from compiler import zoo
from compiler.frontend import DimRequest, FrontendOptions, load_model
from compiler.tiling.layouts import R, graph_layouts, tile_numel, tile_shape


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


# --- query blocking (issue 15): an axis factored between the heads and the query rows ----------

FACTORED = [((1, 12, 40, 8), (None, "c12", "c/12", None)),
            ((1, 12, 8, 40), (None, "c12", None, "r")),
            ((1, 12, 40, 40), (None, "r12", "r/12", "c")),
            ((1, 1, 40, 40), (None, None, "c/12", "r")),
            ((1, 40, 12, 8), (None, "c/12", "c12", None)),
            ((1, 40, 96), (None, "c/12", "c12")),
            ((96,), ("c12",)),
            ((5, 7), ("r", "c"))]


@pytest.mark.parametrize(("shape", "spec"), FACTORED)
@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (3, 5), (2, 12), (4, 30), (37, 3), (1, 100)])
def test_factored_specs_scatter_and_gather_back(shape, spec, rows, cols) -> None:
    """Core j along a factored axis holds outer part j // inner and inner part j % inner; the
    cores past outer x inner, and ragged tiles, hold zeros; gather inverts scatter."""
    import numpy as np

    from compiler.tiling.layouts import factor, factor_parts
    from compiler.tiling.tiles import gather, scatter, valid_mask

    full = np.arange(1, math.prod(shape) + 1).reshape(shape)
    blocked = scatter(full, spec, rows, cols)
    assert blocked.shape[2:] == tile_shape(shape, spec, rows, cols)
    assert np.array_equal(gather(blocked, spec, shape), full)
    mask = valid_mask(shape, spec, rows, cols)
    held = np.ones(blocked.shape, bool) if mask is None else np.broadcast_to(mask, blocked.shape)
    assert not blocked[~held].any() and blocked[held].all()
    copies = 1  # cores holding each element: a factor alone is the same on its group
    for s in {s for s in spec if factor(s)}:
        n, inner = factor(s)
        if (n, not inner) not in {factor(t) for t in spec}:
            outer_parts, inner_parts = factor_parts(n, rows if s[0] == "r" else cols)
            copies *= outer_parts if inner else inner_parts
    assert set(np.bincount(blocked[held])[1:]) == {copies}


def test_query_blocked_attention_splits_heads_and_query_rows() -> None:
    """With query blocking, Q x K^T writes [batch, heads, query, key] as (-, a12, a/12, b):
    12 heads over the outer factor of one axis, blocks of query rows over its inner factor,
    keys over the other axis; P x V keeps the blocks and reduces over the keys; the output
    projection reads its input plain again (query blocks end inside the attention)."""
    g = load_model(FIXTURES / "real" / "sentence_bert_ts_op17.onnx",
                   FrontendOptions(DimRequest(batch=1, seq_len=64)))
    plain = graph_layouts(g)["block.0"]
    blocked = graph_layouts(g, query_blocks=True)["block.0"]
    acts = [lay for lay in blocked if lay.kind == "MatMul" and len(lay.inputs[1]) == 4]
    scores, context = acts
    (h, q, k), = [s[1:] for s in scores.outputs]
    assert h[1:] == "12" and q == f"{h[0]}/12" and k and k != h[0]
    assert context.outputs[0][1:3] == (h, q)
    assert [c.axis for c in context.collectives if c.kind == "reduce"] == [k]
    assert all(len(s or "-") == 1 for lay in blocked
               if lay.kind == "MatMul" and len(lay.inputs[1]) == 2
               for s in lay.inputs[0])  # weight matmuls read plain specs
    assert not any(len(s or "-") > 1 for lay in plain for spec in (*lay.inputs, *lay.outputs)
                   for s in (spec or ()))


@pytest.mark.parametrize(("shape", "spec"), FACTORED + [((1, 12, 64, 20), (None, "r", None, "c")),
                                                        ((1, 12, 20, 64), (None, "r", "c", None))])
@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (3, 5), (37, 3), (4, 30)])
def test_position_cells_write_one_position_as_a_scatter_of_the_whole(shape, spec, rows,
                                                                     cols) -> None:
    """An append writes position p of a KV cache through `position_cells` in place: the same
    blocked array, on every axis and position, as scattering the whole tensor with p
    replaced (every copy on every core written, padding left zero)."""
    import numpy as np

    from compiler.tiling.tiles import blocked_shape, position_cells, scatter

    full = np.arange(1, math.prod(shape) + 1, dtype=np.float32).reshape(shape)
    for axis in range(len(shape)):
        cells, sources, starts = position_cells(shape, spec, rows, cols, axis)
        for p in {0, shape[axis] // 2, shape[axis] - 1}:
            new = -np.arange(1, math.prod(shape) // shape[axis] + 1, dtype=np.float32).reshape(
                [1 if i == axis else d for i, d in enumerate(shape)])
            want = full.copy()
            want[(slice(None),) * axis + (slice(p, p + 1),)] = new
            got = scatter(full, spec, rows, cols)
            assert got.shape == blocked_shape(shape, spec, rows, cols)
            got.reshape(-1)[cells[starts[p]:starts[p + 1]]] = new.reshape(-1)[
                sources[starts[p]:starts[p + 1]]]
            assert np.array_equal(got, scatter(want, spec, rows, cols))


def test_spread_decode_cache_falls_as_the_block_grows_both_ways():
    """Issue 17: in the spread decode form a KV cache [batch, kv heads, keys, head dim] is
    split keys over columns and head dim over rows, so its per-core bytes fall as a block
    grows taller or wider; with heads over rows (the heads form) they stop falling once the
    rows outnumber the KV heads (Llama 3 70B: 8 of a block's 117 rows held its cache)."""
    from compiler.schedule.decode import decode_forms, decode_layouts

    g = load_model("llama-tiny")
    forms = {dg.form: dg for dg in decode_forms("llama-tiny", g, 64)}
    specs = {}
    for form in ((True, ""), (True, "c")):
        dg = forms[form]
        lay = decode_layouts(dg)
        by_op = {op.name: op for op in dg.graph.ops}
        cache = dg.caches[0].name
        specs[form] = next(s for lays in lay.values() for la in lays
                           for n, s in zip(by_op[la.op].inputs, la.inputs, strict=True)
                           if n == cache)
    shape = (1, 2, 64, 16)
    spread = [tile_numel(shape, specs[(True, "c")], r, c) for r, c in
              ((2, 2), (4, 2), (8, 2), (8, 4), (8, 8), (16, 8))]
    assert spread == sorted(spread, reverse=True) and len(set(spread)) == len(spread)
    heads = [tile_numel(shape, specs[(True, "")], r, 4) for r in (2, 4, 8)]
    assert heads[0] == heads[1] == heads[2]  # 2 KV heads: more rows hold nothing more
    assert spread[-1] * 8 <= heads[-1]
