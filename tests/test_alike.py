"""Alike layers laid out once (issue 18 item 2): `graph_layouts` gives a layer whose signature
matches an earlier one's that layer's layouts renamed (compiler/tiling/alike.py). Checked here
against the rules run on every layer, on prefill graphs and on every decode form (chunked
streaming forms included), and that the blocks do share."""

from __future__ import annotations

import pytest
from conftest import zoo_graph
from test_decode_stream import compiled

from compiler.schedule.decode import decode_forms, decode_layouts
from compiler.tiling import alike
from compiler.tiling.layouts import graph_layouts, layer_layouts, replicated


def _every_layer(g, inputs=None, spread=""):
    """graph_layouts without sharing: the rules on every layer."""
    specs = {n: replicated(len(g.tensor(n).shape)) for n in g.inputs}
    specs.update(inputs or {})
    out = {}
    for layer in g.layers:
        out[layer.name] = layer_layouts(g, layer, specs, False, spread)
        for op, lay in zip(layer.ops, out[layer.name], strict=True):
            specs.update(zip(op.outputs, lay.outputs, strict=False))
    return out


def _shared(g) -> int:
    """How many layers took an earlier layer's layouts."""
    specs = {n: replicated(len(g.tensor(n).shape)) for n in g.inputs}
    seen, shared = set(), 0
    for layer, lays in graph_layouts(g).items():
        lay = next(la for la in g.layers if la.name == layer)
        key, _ = alike.signature(g, lay, specs)
        shared += key in seen
        seen.add(key)
        for op, la in zip(lay.ops, lays, strict=True):
            specs.update(zip(op.outputs, la.outputs, strict=False))
    return shared


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "bert-tiny", "llama3-8b"])
def test_prefill_layouts_equal_the_rules_on_every_layer(name):
    g = zoo_graph(name)
    assert graph_layouts(g) == _every_layer(g)


def test_a_shape_only_giants_blocks_share_their_layouts():
    """Constants with values (a loaded model's weights) keep layers apart; shape-only, all but
    the first blocks (fed by the embedding) and the last (feeding the norm) share."""
    g = zoo_graph("llama3-8b")
    blocks = sum(la.kind.value == "block" for la in g.layers)
    assert _shared(g) >= blocks - 3 > 0


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny", "llama3-8b"])
def test_decode_form_layouts_equal_the_rules_on_every_layer(name):
    g = zoo_graph(name)
    forms = decode_forms(name, g, 256)
    assert len(forms) >= 2
    for dg in forms:
        assert decode_layouts(dg) == _rules_decode(dg)


def test_streamed_chunked_form_layouts_equal_the_rules_on_every_layer():
    dg = compiled(2048).decode.graph
    assert dg.streams
    assert decode_layouts(dg) == _rules_decode(dg)


def _rules_decode(dg):
    """decode.decode_layouts with the rules run on every layer."""
    from compiler.schedule import decode

    return decode._decode_layouts(dg, rules=_every_layer)
