"""tools/export_hf.py --checkpoint DIR / --config FILE: your own model, exported with and without
KV cache by both torch exporters, and what it refuses.

The exports need torch and transformers (the [hf] extra), which the CI venv does not have: those
tests skip there (the committed fixtures, tests/test_hf_fixtures.py, are what CI checks).  The
refusals that need no torch run everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from test_fixtures import EXPORTER, _load_exporter

export_hf = _load_exporter()
ARGS = ["--opsets", "18", "--seq", "dynamic", "--forms", "nocache,withpast"]
TINY_QWEN2 = {
    "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96,
    "max_position_embeddings": 64,
}


def _hf() -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    return torch, transformers


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPORTER), *argv], capture_output=True, text=True)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Any]:
    """A tiny trained-looking Llama saved with save_pretrained (safetensors), and the model."""
    torch, transformers = _hf()
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=80, max_position_embeddings=64,
    )
    torch.manual_seed(7)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    directory = tmp_path_factory.mktemp("ckpt") / "my-llama"
    model.save_pretrained(directory, safe_serialization=True)
    assert any(directory.glob("*.safetensors"))
    return directory, model


def test_checkpoint_exports_both_forms_with_both_exporters(checkpoint, tmp_path) -> None:
    torch, _ = _hf()
    directory, model = checkpoint
    out = tmp_path / "out"
    done = _run("--checkpoint", str(directory), "--out", str(out), *ARGS)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["source"] == {"checkpoint": str(directory)}
    names = {e["name"] for e in manifest["fixtures"]}
    assert names == {
        f"llama_{x}_op18_dynamic{form}"
        for x in ("dynamo", "torchscript") for form in ("", "_withpast")
    }
    ids = torch.randint(0, 80, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits.numpy()
    for x in ("dynamo", "torchscript"):
        feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((2, 7), np.int64)}
        got = _session(out / f"llama_{x}_op18_dynamic.onnx").run(["logits"], feeds)[0]
        np.testing.assert_allclose(got, want, atol=1e-4)  # the checkpoint's weights, not random
        path = out / f"llama_{x}_op18_dynamic_withpast.onnx"
        stepwise = export_hf.decode_onnxruntime(path, ids.numpy(), (4, 1, 1, 1))
        np.testing.assert_allclose(stepwise, want, atol=1e-4)


def test_config_file_exports_random_weights(tmp_path) -> None:
    _hf()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_QWEN2))
    out = tmp_path / "out"
    done = _run("--config", str(config), "--out", str(out), "--exporters", "dynamo", *ARGS)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["source"] == {"config": str(config)}
    assert manifest["weights"].startswith("random, seeded")
    entries = {e["form"]: e for e in manifest["fixtures"]}
    assert set(entries) == {"nocache", "withpast"}
    assert entries["withpast"]["config"]["kv_heads"] == 2
    assert entries["nocache"]["config"]["vocab"] == 96


def test_an_encoder_checkpoint_gets_no_with_past_form(tmp_path) -> None:
    _hf()
    config = tmp_path / "config.json"
    encoder = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 48,
               "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 64}
    config.write_text(json.dumps(encoder))
    out = tmp_path / "out"
    done = _run("--config", str(config), "--out", str(out), "--exporters", "torchscript", *ARGS)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert [c["name"] for c in manifest["combinations"]] == ["bert_torchscript_op18_dynamic"]
    outputs = [o["name"] for o in manifest["fixtures"][0]["outputs"]]
    assert outputs == ["last_hidden_state", "pooler_output"]


@pytest.mark.parametrize(
    ("setup", "flag", "message"),
    [
        ("empty-dir", "--checkpoint", "no config.json there"),
        ("bad-type", "--config", "model_type 'no-such-model' is not a transformers model type"),
        ("not-json", "--config", "--config"),
        ("no-weights", "--checkpoint", "--checkpoint"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, setup, flag, message) -> None:
    _hf()
    target = tmp_path / "src"
    if setup in ("empty-dir", "no-weights"):
        target.mkdir()
    if setup == "no-weights":
        (target / "config.json").write_text(json.dumps(TINY_QWEN2))
    if setup == "bad-type":
        target.write_text(json.dumps({"model_type": "no-such-model"}))
    if setup == "not-json":
        target.write_text("{not json")
    done = _run(flag, str(target), "--out", str(tmp_path / "out"), *ARGS)
    assert done.returncode == 3
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert message in done.stderr
    assert not (tmp_path / "out").exists()


def test_checkpoint_and_fixtures_do_not_mix(tmp_path) -> None:
    done = _run("--checkpoint", str(tmp_path), "--fixtures", "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert "--fixtures makes the curated tiny families" in done.stderr
