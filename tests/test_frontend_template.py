"""A shape-only zoo giant's frontend from its template model (compiler/frontend/template.py)
is the graph the whole model gives: every op, tensor, shape, constant and MoE record, in the
same order, at the prompt and at one token (the decode step's second load)."""

from __future__ import annotations

import numpy as np
import pytest

import compiler.frontend.load as load
from compiler import ir
from compiler.frontend import DimRequest, FrontendOptions, load_model
from compiler.frontend.template import HEAD, TAIL, Template, template_for
from compiler.zoo import ZOO

ONE_TOKEN = FrontendOptions(DimRequest(batch=1, seq_len=1), shapes_only=True)


def _same(a: ir.Graph, b: ir.Graph) -> None:
    assert a == b
    for x, y in zip(a.tensors, b.tensors, strict=True):  # Tensor.data is not compared by ==
        assert (x.data is None) == (y.data is None), x.name
        if x.data is not None:
            assert x.data.dtype == y.data.dtype and np.array_equal(x.data, y.data), x.name


# the cheapest giants of each kind: a dense decoder, an MoE one, one alternating dense and MoE
@pytest.mark.parametrize("name", ["llama3.2-1b", "mixtral-8x7b", "llama4-maverick"])
@pytest.mark.parametrize("options", [FrontendOptions(), ONE_TOKEN], ids=["prompt", "one-token"])
def test_a_giant_from_its_template_is_the_whole_models_graph(name, options, monkeypatch):
    entry = ZOO[name]
    t = template_for(entry.config, entry.family)
    assert t is not None and t.small < entry.config.layers  # the fast path is taken
    fast = load_model(name, options)
    monkeypatch.setattr(load, "_template", lambda source: None)  # the slow definition
    slow = load_model(name, options)
    _same(fast, slow)
    assert len({lt.index for lt in fast.layers} - {None}) == entry.config.layers


def test_the_template_keeps_the_ends_and_one_period():
    t = Template(layers=48, period=2)
    assert (t.head, t.small, t.shift) == (HEAD * 2, (HEAD + 1 + TAIL) * 2, 48 - 10)
    assert [t.middle(i) for i in range(4, 10)] == [4, 5, 4, 5, 4, 5]
    assert template_for(ZOO["llama-tiny"].config, "llama") is None  # too short to gain
    assert template_for(ZOO["gpt2-small"].config, "gpt2") is None  # not a templated family
