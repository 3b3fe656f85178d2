"""The per-expert loop form of a mixture-of-experts export (issue 16 item 1): HF's eager MoE
forward exported with TorchScript (tools/export_moe.py, tests/fixtures/moe/*_eager_torchscript)
unrolls its loop over the experts hit with NonZero and ScatterElements; the frontend rewrites it
into the batched GatherND form (compiler/frontend/moeloop.py). The compiled schedule runs on the
executor against ONNX Runtime and torch; a loop that does not match stays refused.

ONNX Runtime runs these exports only at their trace shape (batch 2, seq 16) and only on inputs
whose tokens hit every expert (the unrolled loop splits the experts hit into as many pieces as
the trace hit), so the comparisons use the torch reference's inputs (`*.ref.npz`)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compiler import ir
from compiler.cli import main
from compiler.driver import CompileOptions, compile_model
from compiler.errors import UnsupportedOpsError
from compiler.executor import run_schedule
from compiler.executor.kernels import KERNELS
from compiler.frontend import load_model
from compiler.tiling.costs import op_flops
from compiler.verify import run_reference
from compiler.verify.compare import DEFAULT_TOLERANCES, compare

MOE = Path(__file__).parent / "fixtures" / "moe"
LOOPS = ("mixtral", "qwen2moe")


def _path(family: str) -> Path:
    return MOE / f"{family}_eager_torchscript.onnx"


def _config(family: str) -> dict:
    entries = json.loads((MOE / "MANIFEST.json").read_text())["fixtures"]
    return next(e for e in entries if e["name"] == _path(family).stem)["config"]


@functools.cache
def _reference(family: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The torch reference's inputs (every expert hit, so ORT runs the export) and logits."""
    with np.load(_path(family).with_suffix(".ref.npz")) as z:
        inputs = {k.removeprefix("input."): z[k] for k in z.files if k.startswith("input.")}
        return inputs, z["output.logits"]


@functools.cache
def _compiled(family: str, target: str = "mesh8x8"):
    return compile_model(_path(family), target, CompileOptions(check=True))


def _run(result, family: str, graph: ir.Graph | None = None) -> np.ndarray:
    inputs, _ = _reference(family)
    with np.errstate(all="ignore"):
        run = run_schedule(result.schedule, graph or result.graph, result.target, inputs)
    return run.outputs["logits"]


@pytest.mark.parametrize("family", LOOPS)
def test_the_loop_becomes_the_batched_form_with_its_moe_record(family):
    g = load_model(_path(family))
    config = _config(family)
    kinds = {op.kind for op in g.ops}
    assert not kinds & {"NonZero", "OneHot", "ScatterElements"}
    for block in g.blocks():
        if block.index in config["dense_layers"]:
            assert block.moe is None
            continue
        moe = block.moe
        assert (moe.experts, moe.active, moe.shared) == (
            config["experts"], config["active"], config["shared_experts"])
        prefix = f"model.layers.{block.index}.mlp.experts."
        assert set(moe.stacked) == {prefix + "gate_up_proj", prefix + "down_proj"}
        gathers = [op for op in block.ops if op.kind == "GatherND"]
        assert sorted(op.inputs[0] for op in gathers) == sorted(moe.stacked)
        assert len(moe.router) == 1 and g.tensor(moe.router[0]).shape == (
            config["hidden"], config["experts"])


def test_expert_flops_count_k_experts_per_token_not_all():
    """T tokens x k experts x (gate+up and down): the loop's rows, no dense all-experts run."""
    g = load_model(_path("mixtral"))
    config = _config("mixtral")
    hidden, ffn, k = config["hidden"], config["intermediate"], config["active"]
    tokens = 2 * 16
    for block in g.blocks():
        experts = [op for op in block.ops if op.kind == "MatMul"
                   and any(g.producers[x].kind == "GatherND" for x in op.inputs
                           if x in g.producers)]
        assert len(experts) == 2
        per_token = 2 * hidden * 2 * ffn + 2 * ffn * hidden
        assert sum(op_flops(g, op) for op in experts) == tokens * k * per_token


@pytest.mark.parametrize(("family", "target"),
                         [("mixtral", "mesh8x8"), ("mixtral", "wse3"), ("qwen2moe", "mesh8x8")])
def test_the_loop_export_matches_onnxruntime_and_torch_on_the_executor(family, target):
    inputs, torch_logits = _reference(family)
    got = _run(_compiled(family, target), family)
    ort_logits = run_reference(_path(family), inputs)["logits"]
    atol, rtol = DEFAULT_TOLERANCES["float32"]
    for ref, name in ((ort_logits, "onnxruntime"), (torch_logits, "torch")):
        check = compare("logits", got, ref, atol, rtol, reference=name)
        assert check.passed, check.line()


def test_a_token_sent_to_the_wrong_expert_is_caught(monkeypatch):
    result = _compiled("mixtral")
    inputs, want = _reference("mixtral")
    atol, rtol = DEFAULT_TOLERANCES["float32"]
    assert compare("logits", _run(result, "mixtral"), want, atol, rtol).passed
    kernel = KERNELS["TopK"]

    def faulty(op, ins, outs, ctx):
        values, index = kernel(op, ins, outs, ctx)
        index = index.copy()
        index[..., 0, 0] = (index[..., 0, 0] + 1) % ins[0].shape[-1]
        return [values, index]

    monkeypatch.setitem(KERNELS, "TopK", faulty)
    assert not compare("logits", _run(result, "mixtral"), want, atol, rtol).passed


def test_wafer_compile_verify_passes_on_the_reference_inputs(tmp_path):
    inputs, _ = _reference("qwen2moe")
    feed = tmp_path / "in.npz"
    np.savez(feed, **inputs)
    out = tmp_path / "out"
    code = main(["-q", "compile", str(_path("qwen2moe")), "-t", "mesh8x8", "-o", str(out),
                 "--verify", "--inputs", str(feed)])
    assert code == 0
    assert json.loads((out / "verify.json").read_text())["passed"] is True


def test_decode_is_refused_for_the_exports_fixed_shape():
    """TorchScript fixes (batch, seq) = (2, 16): no one-token graph to derive decode from."""
    result = _compiled("mixtral")
    assert result.decode is None
    assert "fixes input input_ids dim 1 to 16" in result.no_decode


def _with_initial_sum(tmp_path: Path, value: float) -> Path:
    """The fixture with block 0's running sum starting at `value` instead of zeros."""
    model = onnx.load(str(_path("mixtral")))
    for node in model.graph.node:
        if node.output[0] == "/model/layers.0/mlp/experts/Constant_37_output_0":
            t = numpy_helper.to_array(node.attribute[0].t)
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.full_like(t, value)))
    path = tmp_path / "loop.onnx"
    onnx.save(model, str(path))
    return path


def test_a_loop_that_does_not_match_stays_refused_naming_nonzero(tmp_path):
    """A running sum that does not start at zero is not the index_add loop: block 0 keeps its
    NonZero (refused, exit 4), while block 1's loop is still rewritten."""
    with pytest.raises(UnsupportedOpsError) as info:
        load_model(_with_initial_sum(tmp_path, 1.0))
    assert {op.op_type for op in info.value.ops} == {"NonZero"}
    assert all("/model/layers.0/" in op.node for op in info.value.ops)
    assert load_model(_with_initial_sum(tmp_path, 0.0)).blocks()[0].moe is not None
