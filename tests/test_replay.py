"""Replay: the artifacts of a few small compiles are regenerated and diffed against
tests/golden/replay/, so a change that alters placement.json, schedule.json or trace.json must say
why (tinygrad's process replay). WAFER_UPDATE_GOLDEN=1 rewrites them; review the diff.

Floats are written with 10 significant digits and the tool's version is masked, so the files do
not move with the platform's last bits or a version bump; everything else is compared verbatim,
key order included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import check_golden

from compiler.cli import main

# tiny zoo models on two single-wafer targets and one two-wafer target
CASES = [("gpt2-tiny", "mesh8x8"), ("gpt2-tiny", "mesh16x16"), ("llama-tiny", "mesh8x8-x2"),
         ("bert-tiny", "mesh16x16"), ("llama-tiny-opset23", "mesh8x8")]
ARTIFACTS = ("placement.json", "schedule.json", "trace.json")


def canonical(text: str) -> str:
    """The artifact as the golden file holds it: floats to 10 digits, tool version masked."""
    doc = _rounded(json.loads(text))
    if isinstance(doc, dict) and isinstance(doc.get("tool"), dict):
        doc["tool"] = {**doc["tool"], "version": "*"}
    return json.dumps(doc, indent=1) + "\n"


def _rounded(x):
    if isinstance(x, float):
        return float(f"{x:.10g}")
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}.{c[1]}")
def compiled(request, tmp_path_factory) -> tuple[str, Path]:
    model, target = request.param
    out = tmp_path_factory.mktemp("replay") / "out"
    assert main(["-q", "compile", model, "-t", target, "-o", str(out), "--no-report"]) == 0
    return f"{model}.{target}", out


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_artifact_matches_replay(compiled, artifact):
    case, out = compiled
    check_golden(f"replay/{case}.{artifact}", canonical((out / artifact).read_text()))


def test_canonical_form_rounds_floats_and_masks_the_version():
    text = json.dumps({"tool": {"name": "wafer", "version": "9.9"}, "x": [0.1 + 0.2, 3]})
    assert json.loads(canonical(text)) == {"tool": {"name": "wafer", "version": "*"},
                                           "x": [0.3, 3]}
