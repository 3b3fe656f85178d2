"""Golden files: the IR's printed form of small zoo models. A change to the frontend that alters
them must say why: regenerate with WAFER_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import zoo_graph

from compiler import ir

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny-opset23"])
def test_ir_matches_golden(name):
    text = ir.format_graph(zoo_graph(name))
    path = GOLDEN / f"{name}.ir.txt"
    if os.environ.get("WAFER_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}; run with WAFER_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text()
