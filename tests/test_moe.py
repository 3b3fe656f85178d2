"""Mixture-of-experts: the IR record (`ir.MoE`), the router kernels against ONNX Runtime, the
recognised MoE layers of real tiny exports, and their verify runs."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest

from compiler import ir
from compiler.errors import UnsupportedOpsError
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
