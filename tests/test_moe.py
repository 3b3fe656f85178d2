"""Mixture-of-experts: the IR record (`ir.MoE`), the router kernels against ONNX Runtime, the
recognised MoE layers of real tiny exports, and their verify runs."""

from __future__ import annotations

import dataclasses

import pytest

from compiler import ir


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
