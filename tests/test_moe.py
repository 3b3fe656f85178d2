"""Mixture-of-experts: the IR record (`ir.MoE`), the router kernels against ONNX Runtime, the
recognised MoE layers of real tiny exports, and their verify runs."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler import ir
from compiler.errors import UnsupportedOpsError
from compiler.executor.kernels import KERNELS, Ctx, KernelError, Operand
from compiler.frontend import DimRequest, FrontendOptions, load_model


def test_moe_record_checks_its_counts():
    moe = ir.MoE(experts=4, active=2, shared=1)
    assert moe.describe() == "moe 4 experts, top-2, 1 shared"
    with pytest.raises(ValueError, match="active 5 not in 1..experts 4"):
        ir.MoE(experts=4, active=5)
    with pytest.raises(ValueError, match="1 expert weight groups for 4 experts"):
        ir.MoE(experts=4, active=1, expert_weights=(("w",),))


def test_moe_weights_must_be_read_by_the_layer(gpt2_tiny):
    block = gpt2_tiny.layers[1]
    bogus = dataclasses.replace(block, moe=ir.MoE(experts=2, active=1, router=("nope",)))
    layers = (gpt2_tiny.layers[0], bogus, *gpt2_tiny.layers[2:])
    with pytest.raises(ir.GraphCheckError, match="MoE weight 'nope' is not read there"):
        ir.check_graph(dataclasses.replace(gpt2_tiny, layers=layers))


# --- recognised MoE blocks of real exports (tools/export_moe.py) ------------------------------

MOE = Path(__file__).parent / "fixtures" / "moe"
FAMILIES = ("mixtral", "qwen2moe", "olmoe")


@functools.cache
def moe_graph(family: str, batch: int = 1, seq: int = 8) -> ir.Graph:
    path = MOE / f"{family}_batched_mm_dynamo.onnx"
    return load_model(path, FrontendOptions(DimRequest(batch=batch, seq_len=seq)))


def _manifest(family: str) -> dict:
    entries = json.loads((MOE / "MANIFEST.json").read_text())["fixtures"]
    return next(e for e in entries if e["name"] == f"{family}_batched_mm_dynamo")


@pytest.mark.parametrize("family", FAMILIES)
def test_moe_blocks_are_recognised_with_their_experts(family):
    g = moe_graph(family)
    config = _manifest(family)["config"]
    blocks = g.blocks()
    assert len(blocks) == config["layers"]
    for block in blocks:
        if block.index in config["dense_layers"]:
            assert block.moe is None
            continue
        moe = block.moe
        assert (moe.experts, moe.active, moe.shared) == (
            config["experts"], config["active"], config["shared_experts"])
        assert moe.router == (f"model.layers.{block.index}.mlp.gate.weight",)
        assert g.tensor(moe.router[0]).shape == (config["experts"], config["hidden"])
        # gate+up and down: each expert's share is one slice along axis 0
        assert len(moe.stacked) == 2
        assert all(g.tensor(w).shape[0] == config["experts"] for w in moe.stacked)
    assert [b.index for b in blocks if b.moe is None] == config["dense_layers"]


def test_shared_expert_weights_are_named_apart_from_the_routed_ones():
    moe = moe_graph("qwen2moe").blocks()[1].moe
    assert moe.shared == 1
    assert {w.rsplit(".", 2)[-2] for w in moe.shared_weights} == {
        "gate_proj", "up_proj", "down_proj", "shared_expert_gate"}
    assert not set(moe.shared_weights) & set(moe.stacked + moe.router)


def test_ir_text_names_the_moe_blocks():
    text = ir.format_graph(moe_graph("qwen2moe"), with_ops=False)
    assert "layer block.0 (block, 72 ops)\n" in text
    assert "moe 4 experts, top-2, 1 shared)" in text


def test_the_per_expert_loop_export_is_refused_for_its_data_dependent_shapes():
    with pytest.raises(UnsupportedOpsError) as info:
        load_model(MOE / "mixtral_eager_torchscript.onnx")
    kinds = {op.op_type for op in info.value.ops}
    assert kinds == {"NonZero"}


# --- router kernels against ONNX Runtime ------------------------------------------------------


def _ort(node: onnx.NodeProto, feeds: dict[str, np.ndarray], outs: list[str]) -> list:
    import onnxruntime as ort

    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    graph = helper.make_graph([node], "g", inputs, [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    model.graph.output.extend(v for v in inferred if v.name in outs)
    model.ir_version = 9
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    return session.run(outs, feeds)


def _whole(x: np.ndarray, const: bool = False) -> Operand:
    return Operand(x[None, None], (None,) * x.ndim, x.shape, x if const else None)


def _op(kind: str, **attrs) -> ir.Op:
    return ir.Op(kind.lower(), kind, (), (), tuple(attrs.items()))


def _tied_logits(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Router logits with many ties: 3 distinct values (and a -0.0 beside 0.0)."""
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-1.0, 0.0, 0.5], np.float32), size=shape)
    x.flat[0] = -0.0
    return x


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize(("shape", "axis"), [((16, 8), -1), ((6, 8), 0), ((2, 5, 8), 1)])
def test_topk_matches_onnxruntime_on_ties(k, largest, shape, axis):
    x = _tied_logits(shape, seed=k + 10 * largest)
    kk = np.array([k], np.int64)
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=axis, largest=largest, sorted=1)
    want_v, want_i = _ort(node, {"x": x, "k": kk}, ["v", "i"])
    op = _op("TopK", axis=axis, largest=largest, sorted=1)
    got_v, got_i = KERNELS["TopK"](op, [_whole(x), _whole(kk, const=True)], [], Ctx(1, 1))
    np.testing.assert_array_equal(got_i[0, 0], want_i)
    np.testing.assert_array_equal(got_v[0, 0], want_v)
    assert got_i.dtype == np.int64


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_on_tokens_split_over_rows_is_local(k):
    """Tokens split over 4 row cores, the expert axis whole: each core picks its own."""
    x = _tied_logits((12, 4), seed=k)
    kk = np.array([k], np.int64)
    blocked = x.reshape(4, 1, 3, 4)  # (R, C, tokens/R, experts)
    op = _op("TopK", axis=-1, largest=1, sorted=1)
    split = Operand(blocked, ("r", None), x.shape)
    got_v, got_i = KERNELS["TopK"](op, [split, _whole(kk, const=True)], [], Ctx(4, 1))
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1)
    want_v, want_i = _ort(node, {"x": x, "k": kk}, ["v", "i"])
    np.testing.assert_array_equal(got_i.reshape(12, k), want_i)
    np.testing.assert_array_equal(got_v.reshape(12, k), want_v)


def test_topk_along_a_split_axis_is_refused():
    x = _tied_logits((4, 8), seed=0)
    op = _op("TopK", axis=-1)
    split = Operand(x.reshape(4, 2, 4).transpose(1, 0, 2)[None], (None, "c"), x.shape)
    with pytest.raises(KernelError, match="TopK along dim 1, which is split over 'c'"):
        KERNELS["TopK"](op, [split, _whole(np.array([2], np.int64), True)], [], Ctx(1, 2))


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_one_hot_matches_onnxruntime_with_negative_and_out_of_range_indices(axis):
    idx = np.array([[0, 3, -1], [-4, 4, 2]], np.int64)  # -4 wraps to 0, 4 is out of range
    depth, values = np.array(4, np.int64), np.array([0.0, 1.0], np.float32)
    node = helper.make_node("OneHot", ["i", "d", "v"], ["y"], axis=axis)
    (want,) = _ort(node, {"i": idx, "d": depth, "v": values}, ["y"])
    op = _op("OneHot", axis=axis)
    (got,) = KERNELS["OneHot"](op, [_whole(idx), _whole(depth, True), _whole(values, True)], [],
                               Ctx(1, 1))
    np.testing.assert_array_equal(got[0, 0], want)


@pytest.mark.parametrize("reduction", ["none", "add", "max"])
def test_scatter_elements_matches_onnxruntime_on_the_combine_of_expert_outputs(reduction):
    """index_add of k expert outputs per token: rows repeat (one per chosen expert)."""
    rng = np.random.default_rng(3)
    data = rng.standard_normal((5, 4)).astype(np.float32)
    rows = np.array([0, 2, 2, 4, 0, 1], np.int64) if reduction != "none" else np.array(
        [0, 2, 4, 1, -2, 3], np.int64)
    idx = np.repeat(rows[:, None], 4, axis=1)
    upd = rng.standard_normal((6, 4)).astype(np.float32)
    node = helper.make_node("ScatterElements", ["d", "i", "u"], ["y"], axis=0,
                            reduction=reduction)
    (want,) = _ort(node, {"d": data, "i": idx, "u": upd}, ["y"])
    op = _op("ScatterElements", axis=0, reduction=reduction)
    (got,) = KERNELS["ScatterElements"](op, [_whole(data), _whole(idx), _whole(upd)], [],
                                        Ctx(1, 1))
    np.testing.assert_allclose(got[0, 0], want, rtol=1e-6, atol=1e-6)
