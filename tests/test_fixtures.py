"""The real Hugging Face export fixtures in tests/fixtures/ agree with their MANIFEST.json.

The fixtures are tiny GPT-2 / Llama / BERT models exported by ``tools/export_hf.py --fixtures``
with torch's dynamo and TorchScript exporters.  These tests need only onnx, onnxruntime and numpy
(no torch): each file exists, is small, self-contained and valid, has the recorded inputs,
outputs and op histogram, and reproduces the saved torch reference in onnxruntime.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = FIXTURES / "MANIFEST.json"
EXPORTER = Path(__file__).parents[1] / "tools" / "export_hf.py"
SIZE_LIMIT = 1_000_000
HF_EXTRA_ERROR = "error: the exporter needs the hf extra: pip install 'wafer-compiler[hf]'"


def _load_exporter() -> Any:
    """tools/export_hf.py by its path (a developer tool, not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("export_hf", EXPORTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


op_histogram = _load_exporter().op_histogram  # the exporter's own count


def _manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())


ENTRIES: list[dict[str, Any]] = _manifest()["fixtures"] if MANIFEST.exists() else []
WITH_REFERENCE = [e for e in ENTRIES if e["reference"]]


def _ids(entry: dict[str, Any]) -> str:
    return entry["name"]


@functools.cache
def _load(name: str) -> onnx.ModelProto:
    return onnx.load(str(FIXTURES / f"{name}.onnx"))


def _io(values: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": v.name,
            "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
        }
        for v in values
    ]


def test_manifest_covers_the_matrix() -> None:
    assert MANIFEST.exists(), "run: python tools/export_hf.py --out tests/fixtures --fixtures"
    kinds = {(e["family"], e["exporter"], e["seq"]) for e in ENTRIES}
    families, exporters = {"gpt2", "llama", "bert"}, {"dynamo", "torchscript"}
    assert {(f, x, s) for f in families for x in exporters for s in ("static", "dynamic")} <= kinds
    assert 12 <= len(ENTRIES) <= 24


def test_no_unlisted_files() -> None:
    listed = {e["file"] for e in ENTRIES} | {e["reference"]["file"] for e in WITH_REFERENCE}
    on_disk = {p.name for p in FIXTURES.iterdir() if p.suffix in (".onnx", ".npz")}
    assert on_disk == listed


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids)
def test_file_is_small_and_unchanged(entry: dict[str, Any]) -> None:
    data = (FIXTURES / entry["file"]).read_bytes()
    assert len(data) == entry["bytes"] < SIZE_LIMIT
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids)
def test_passes_checker_and_is_self_contained(entry: dict[str, Any]) -> None:
    model = _load(entry["name"])
    onnx.checker.check_model(model, full_check=True)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == entry["opset"] == entry["opset_requested"]


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids)
def test_manifest_describes_file(entry: dict[str, Any]) -> None:
    model = _load(entry["name"])
    assert op_histogram(model) == entry["op_histogram"]
    assert sum(entry["op_histogram"].values()) == entry["nodes"]
    assert _io(model.graph.input) == entry["inputs"]
    assert _io(model.graph.output) == entry["outputs"]
    assert len(model.graph.initializer) == entry["initializers"]
    dims = {d for i in entry["inputs"] for d in i["shape"]}
    assert dims == ({"batch", "seq"} if entry["seq"] == "dynamic" else {2, 16})


@pytest.mark.parametrize("entry", WITH_REFERENCE, ids=_ids)
def test_onnxruntime_matches_torch_reference(entry: dict[str, Any]) -> None:
    ref = entry["reference"]
    with np.load(FIXTURES / ref["file"]) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    feeds = {k.removeprefix("input."): v for k, v in data.items() if k.startswith("input.")}
    expected = {k.removeprefix("output."): v for k, v in data.items() if k.startswith("output.")}
    assert all(v.shape == (ref["batch"], ref["seq"]) for v in feeds.values())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    path = str(FIXTURES / entry["file"])
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got = session.run(list(expected), feeds)
    for (name, want), have in zip(expected.items(), got, strict=True):
        np.testing.assert_allclose(have, want, rtol=0, atol=ref["atol"], err_msg=name)


def test_exporter_without_torch_prints_one_line(tmp_path: Path) -> None:
    """With torch and transformers unimportable, the script exits with the hf-extra hint."""
    block = (
        "import sys, runpy\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.argv = ['export_hf.py', '--out', {str(tmp_path)!r}]\n"
        f"runpy.run_path({str(EXPORTER)!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == HF_EXTRA_ERROR
    assert done.stdout == ""


def test_models_groups_expand() -> None:
    """--models accepts the groups 'causal' and 'encoders' beside family names, in order."""
    exporter = _load_exporter()
    args = exporter.parse_args(["--out", "x", "--models", "gpt2,encoders,causal"])
    assert args.models == ["gpt2", *exporter.ENCODER_FAMILIES, *exporter.CAUSAL_FAMILIES]
    assert "t5" in exporter.ENCODER_FAMILIES and "roberta" in exporter.ENCODER_FAMILIES
    assert set(exporter.ENCODER_FAMILIES) <= set(exporter.TINY_CONFIGS)
    assert set(exporter.TINY_CONFIGS) == set(exporter.HF_CLASSES) == set(exporter.FAMILIES)
