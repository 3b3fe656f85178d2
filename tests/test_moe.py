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
from compiler.cli import main
from compiler.driver import CompileOptions, compile_model
from compiler.executor import run_schedule
from compiler.executor.kernels import KERNELS, Ctx, KernelError, Operand
from compiler.frontend import DimRequest, FrontendOptions, load_model
from compiler.tiling.costs import op_flops
from compiler.verify import run_reference
from compiler.verify.compare import DEFAULT_TOLERANCES, compare
from compiler.verify.inputs import random_inputs


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


# --- compiled, run on the executor, against ONNX Runtime ---------------------------------------


@functools.cache
def compiled(family: str, target: str = "mesh8x8"):
    options = CompileOptions(frontend=FrontendOptions(DimRequest(batch=1, seq_len=8)),
                             check=True)
    return compile_model(MOE / f"{family}_batched_mm_dynamo.onnx", target, options)


@functools.cache
def reference(family: str) -> tuple[dict, dict]:
    graph = compiled(family).graph
    inputs = random_inputs(graph, seed=0)
    return inputs, run_reference(MOE / f"{family}_batched_mm_dynamo.onnx", inputs)


def _logits_check(result, graph: ir.Graph | None = None, family: str = "mixtral"):
    inputs, ref = reference(family)
    with np.errstate(all="ignore"):
        run = run_schedule(result.schedule, graph or result.graph, result.target, inputs)
    atol, rtol = DEFAULT_TOLERANCES["float32"]
    return compare("logits", run.outputs["logits"], ref["logits"], atol, rtol)


@pytest.mark.parametrize("target", ["mesh8x8", "wse3"])
@pytest.mark.parametrize("family", FAMILIES)
def test_moe_exports_match_onnxruntime_on_the_executor(family, target):
    check = _logits_check(compiled(family, target), family=family)
    assert check.passed, check.line()


def test_expert_weights_are_split_over_the_cores_of_their_block():
    """Each core of an MoE block holds a column slice of every expert (the stacked weights'
    last dim over the columns), not the whole expert set on every core."""
    result = compiled("mixtral")
    moe = result.graph.blocks()[0].moe
    loads = [s for s in result.schedule.steps
             if s.kind == "load" and s.writes[0].tensor in moe.stacked]
    assert {s.writes[0].tensor for s in loads} == set(moe.stacked)
    assert all(s.writes[0].spec[-1] == "c" for s in loads)


def _wrong_expert(kernel):
    """TopK as the machine would run it with token 0 sent to the expert after its first pick."""
    def faulty(op, ins, outs, ctx):
        values, index = kernel(op, ins, outs, ctx)
        index = index.copy()
        experts = ins[0].shape[-1]
        index[..., 0, 0] = (index[..., 0, 0] + 1) % experts
        return [values, index]
    return faulty


def test_a_token_sent_to_the_wrong_expert_is_caught(monkeypatch):
    result = compiled("mixtral")
    assert _logits_check(result).passed
    monkeypatch.setitem(KERNELS, "TopK", _wrong_expert(KERNELS["TopK"]))
    check = _logits_check(result)
    assert not check.passed
    assert check.line().startswith("FAILED logits")


def test_experts_whose_weights_trade_places_are_caught():
    """Expert 0's weights where expert 1's should be (and back): tokens reach the wrong expert."""
    result = compiled("mixtral")
    name = result.graph.blocks()[1].moe.stacked[0]
    data = result.graph.tensor(name).data.copy()
    data[[0, 1]] = data[[1, 0]]
    tensors = tuple(dataclasses.replace(t, data=data) if t.name == name else t
                    for t in result.graph.tensors)
    check = _logits_check(result, dataclasses.replace(result.graph, tensors=tensors))
    assert not check.passed


def test_expert_flops_count_k_experts_per_token_not_all():
    """The batched expert MatMuls of a block cost tokens x k x (gate+up and down), and the
    router's TopK two comparisons per logit."""
    g = moe_graph("mixtral")  # batch 1, seq 8
    config = _manifest("mixtral")["config"]
    hidden, ffn, k = config["hidden"], config["intermediate"], config["active"]
    block = g.blocks()[0]
    experts = [op for op in block.ops if op.kind == "MatMul"
               and g.producers.get(op.inputs[0]) is not None
               and g.producers[op.inputs[0]].kind == "GatherND"]
    assert len(experts) == 2
    per_token = 2 * hidden * 2 * ffn + 2 * ffn * hidden
    assert sum(op_flops(g, op) for op in experts) == 8 * k * per_token
    (topk,) = (op for op in block.ops if op.kind == "TopK")
    assert op_flops(g, topk) == 2 * 8 * config["experts"]


@pytest.mark.parametrize("family", FAMILIES)
def test_token_id_only_exports_match_torch(family):
    """The `_ids` exports (token ids alone, the form decode takes) at the torch reference's
    (batch, seq) = (2, 12): the executor against the logits torch computed."""
    name = f"{family}_batched_mm_dynamo_ids"
    with np.load(MOE / f"{name}.ref.npz") as z:
        ids, want = z["input.input_ids"], z["output.logits"]
    options = CompileOptions(frontend=FrontendOptions(DimRequest(batch=2, seq_len=12)),
                             check=True)
    result = compile_model(MOE / f"{name}.onnx", "mesh8x8", options)
    run = run_schedule(result.schedule, result.graph, result.target, {"input_ids": ids})
    check = compare("logits", run.outputs["logits"], want, *DEFAULT_TOLERANCES["float32"],
                    reference="torch")
    assert check.passed, check.line()


def test_wafer_compile_verify_passes_with_the_exports_default_dims(tmp_path):
    """The exports record wafer.default_dims (batch 1, seq 8): no dim flags needed."""
    out = tmp_path / "out"
    source = MOE / "qwen2moe_batched_mm_dynamo.onnx"
    code = main(["-q", "compile", str(source), "-t", "mesh8x8", "-o", str(out), "--verify"])
    assert code == 0
    doc = json.loads((out / "verify.json").read_text())
    assert doc["passed"] is True
