"""Golden files: the IR's printed form of small zoo models. A change to the frontend that alters
them must say why: regenerate with WAFER_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import pytest
from conftest import check_golden, zoo_graph

from compiler import ir


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny-opset23"])
def test_ir_matches_golden(name):
    text = ir.format_graph(zoo_graph(name))
    check_golden(f"{name}.ir.txt", text)
