"""The frontend on real exporter output (tests/fixtures, made by tools/export_hf.py with torch's
dynamo and TorchScript exporters at opsets 17-23): every fixture groups into its blocks. Their
parameter and KV-cache counts are checked in test_costs.py."""

from __future__ import annotations

import pytest
from conftest import FIXTURES, fixture_entries

from compiler import ir
from compiler.frontend import DimRequest, FrontendOptions, load_model

ENTRIES = fixture_entries()
LAYERS = {"gpt2": "ebbnh", "llama": "ebbnh", "bert": "ebbh"}


def _load(entry: dict) -> ir.Graph:
    # a static export fixes its dims: --batch/--seq-len there would be an error
    dims = DimRequest(batch=2, seq_len=8) if entry["seq"] == "dynamic" else DimRequest()
    return load_model(FIXTURES / entry["file"], FrontendOptions(dims))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["name"])
def test_fixture_groups_into_its_blocks(entry):
    g = _load(entry)
    ir.check_graph(g)
    kinds = "".join(layer.kind.value[0] for layer in g.layers)
    assert kinds == LAYERS[entry["family"]]
    assert [b.index for b in g.blocks()] == list(range(entry["config"]["layers"]))


def test_every_exporter_and_opset_is_covered():
    combos = {(e["exporter"], e["opset"]) for e in ENTRIES}
    assert {("dynamo", 18), ("dynamo", 23), ("torchscript", 17), ("torchscript", 20)} <= combos
