"""Shared fixtures: zoo graphs are loaded once per session (they are immutable values)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from compiler import ir
from compiler.frontend import DimRequest, FrontendOptions, load_model

FIXTURES = Path(__file__).parent / "fixtures"
TINY_ZOO = ("gpt2-tiny", "llama-tiny", "llama-tiny-opset23", "bert-tiny")
BIG_ZOO = ("llama3-8b", "llama3-70b", "llama3.1-405b")


@functools.cache
def zoo_graph(name: str, batch: int | None = None, seq: int | None = None) -> ir.Graph:
    return load_model(name, FrontendOptions(DimRequest(batch=batch, seq_len=seq)))


def manifest() -> dict:
    path = FIXTURES / "MANIFEST.json"
    return json.loads(path.read_text()) if path.exists() else {}


def fixture_entries() -> list[dict]:
    data = manifest()
    entries = data.get("fixtures", data) if isinstance(data, dict) else data
    return list(entries.values()) if isinstance(entries, dict) else list(entries)


@pytest.fixture
def gpt2_tiny() -> ir.Graph:
    return zoo_graph("gpt2-tiny")
