"""The causal-LM family fixtures in tests/fixtures/hf/ agree with their MANIFEST.json.

Tiny Mistral, Qwen2, Phi, GPT-NeoX, Falcon, GPT-J, BLOOM, Gemma2, StableLM and OPT models made by
``tools/export_hf.py --models causal --forms nocache,withpast --fixtures``, each in two forms:
no-cache (input_ids, attention_mask -> logits) and with-past (plus past_key_values.N.key/value in,
present.N.key/value out).  Needs only onnx, onnxruntime and numpy (no torch): each file is small,
valid and described by the manifest; the no-cache form reproduces torch's saved outputs and the
with-past form, run step by step with its own present.* fed back, torch's full-sequence logits.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_fixtures import op_histogram

HF = Path(__file__).parent / "fixtures" / "hf"
MANIFEST = HF / "MANIFEST.json"
SET_LIMIT = 4_500_000  # bytes: the whole hf/ set (20 files of 2-layer, hidden-32 models)
ENTRIES: list[dict[str, Any]] = (
    json.loads(MANIFEST.read_text())["fixtures"] if MANIFEST.exists() else []
)
NOCACHE = [e for e in ENTRIES if e["form"] == "nocache"]
WITHPAST = [e for e in ENTRIES if e["form"] == "withpast"]


def _ids(entry: dict[str, Any]) -> str:
    return entry["name"]


@functools.cache
def _load(file: str) -> onnx.ModelProto:
    return onnx.load(str(HF / file))


def _session(file: str, root: Path = HF) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(root / file), options, providers=["CPUExecutionProvider"])


def _reference(entry: dict[str, Any],
               root: Path = HF) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(root / entry["reference"]["file"]) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    feeds = {k.removeprefix("input."): v for k, v in data.items() if k.startswith("input.")}
    outputs = {k.removeprefix("output."): v for k, v in data.items() if k.startswith("output.")}
    return feeds, outputs


def _dims(value: dict[str, Any]) -> list[Any]:
    return value["shape"]


def test_six_or_more_families_in_both_forms() -> None:
    assert MANIFEST.exists(), (
        "run: python tools/export_hf.py --out tests/fixtures/hf --models causal "
        "--exporters dynamo,torchscript --opsets 18 --seq dynamic --forms nocache,withpast "
        "--fixtures"
    )
    both = {e["family"] for e in NOCACHE} & {e["family"] for e in WITHPAST}
    assert len(both) >= 6
    assert {"gpt2", "llama", "bert"}.isdisjoint(e["family"] for e in ENTRIES)
    assert len({(e["family"], e["form"]) for e in ENTRIES}) == len(ENTRIES)


def test_no_unlisted_files_and_the_set_is_small() -> None:
    listed = {e["file"] for e in ENTRIES} | {e["reference"]["file"] for e in ENTRIES}
    on_disk = {p.name for p in HF.iterdir() if p.suffix in (".onnx", ".npz")}
    assert on_disk == listed
    assert sum(p.stat().st_size for p in HF.iterdir()) < SET_LIMIT


def test_failed_combinations_say_why() -> None:
    combos = json.loads(MANIFEST.read_text())["combinations"]
    kept = {e["name"] for e in ENTRIES}
    assert kept <= {c["name"] for c in combos if c["ok"]}
    assert all(c["reason"] for c in combos if not c["ok"])


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids)
def test_file_is_valid_and_described(entry: dict[str, Any]) -> None:
    data = (HF / entry["file"]).read_bytes()
    assert len(data) == entry["bytes"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    model = _load(entry["file"])
    onnx.checker.check_model(model, full_check=True)
    assert op_histogram(model) == entry["op_histogram"]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == entry["opset"] == entry["opset_requested"]
    assert [v.name for v in model.graph.input] == [i["name"] for i in entry["inputs"]]
    assert [v.name for v in model.graph.output] == [o["name"] for o in entry["outputs"]]


@pytest.mark.parametrize("entry", WITHPAST, ids=_ids)
def test_with_past_io_is_the_torch_exporters(entry: dict[str, Any]) -> None:
    """past_key_values.N.key/value [batch, kv_heads, past_seq, head_dim] in, logits and
    present.N.key/value [batch, kv_heads, past_seq + seq, head_dim] out."""
    config = entry["config"]
    layers, kv = config["layers"], [config["kv_heads"], config["head_dim"]]
    pairs = [(i, kind) for i in range(layers) for kind in ("key", "value")]
    inputs, outputs = entry["inputs"], entry["outputs"]
    assert [i["name"] for i in inputs] == ["input_ids", "attention_mask"] + [
        f"past_key_values.{i}.{kind}" for i, kind in pairs
    ]
    assert [o["name"] for o in outputs] == ["logits"] + [f"present.{i}.{k}" for i, k in pairs]
    assert _dims(inputs[0]) == ["batch", "seq"]
    assert _dims(inputs[1]) == ["batch", "past_seq + seq"]
    assert all(_dims(i) == ["batch", kv[0], "past_seq", kv[1]] for i in inputs[2:])
    assert _dims(outputs[0]) == ["batch", "seq", config["vocab"]]
    assert all(_dims(o) == ["batch", kv[0], "past_seq + seq", kv[1]] for o in outputs[1:])


@pytest.mark.parametrize("entry", NOCACHE, ids=_ids)
def test_no_cache_form_matches_torch(entry: dict[str, Any]) -> None:
    feeds, expected = _reference(entry)
    assert list(expected) == ["logits"]
    ref = entry["reference"]
    assert all(v.shape == (ref["batch"], ref["seq"]) for v in feeds.values())
    got = _session(entry["file"]).run(list(expected), feeds)
    np.testing.assert_allclose(got[0], expected["logits"], rtol=0, atol=ref["atol"])


@pytest.mark.parametrize("entry", WITHPAST, ids=_ids)
def test_with_past_form_decodes_step_by_step_like_torch(entry: dict[str, Any]) -> None:
    """A prompt with an empty past, then single tokens, each step's present.* the next past:
    the logits of every position equal torch's one full-sequence pass."""
    data, expected = _reference(entry)
    ids, chunks = data["input_ids"], entry["reference"]["chunks"]
    assert len(chunks) > 2 and chunks[1:] == [1] * (len(chunks) - 1)
    session = _session(entry["file"])
    past = {
        i["name"]: np.zeros([ids.shape[0], *i["shape"][1:2], 0, i["shape"][3]], np.float32)
        for i in entry["inputs"][2:]
    }
    logits, start = [], 0
    for size in chunks:
        mask = np.ones((ids.shape[0], start + size), np.int64)
        feeds = {"input_ids": ids[:, start : start + size], "attention_mask": mask}
        out = session.run(None, feeds | past)
        assert all(p.shape[2] == start + size for p in out[1:])
        logits.append(out[0])
        past = dict(zip(past, out[1:], strict=True))
        start += size
    got = np.concatenate(logits, axis=1)
    np.testing.assert_allclose(got, expected["logits"], rtol=0, atol=entry["reference"]["atol"])
    # the cache matters: the last token alone, without its past, gives other logits
    empty = {k: v[:, :, :0] for k, v in past.items()}
    last = {"input_ids": ids[:, -1:], "attention_mask": mask[:, -1:]}
    alone = session.run(["logits"], last | empty)
    assert np.max(np.abs(alone[0][:, 0] - expected["logits"][:, -1])) > 0.01


ALIBI = Path(__file__).parent / "fixtures" / "alibi"


def test_the_alibi_fixtures_are_listed_valid_and_match_torch() -> None:
    """tests/fixtures/alibi/: MPT with ALiBi (a constant table of key offsets, where BLOOM's
    comes from the mask's CumSum), made by ``tools/export_hf.py --config
    tests/fixtures/alibi/mpt_alibi.config.json --exporters dynamo --opsets 18 --seq dynamic
    --forms nocache --out tests/fixtures/alibi`` (its with-past form does not pass
    torch.export)."""
    entries = json.loads((ALIBI / "MANIFEST.json").read_text())["fixtures"]
    assert [e["family"] for e in entries] == ["mpt"]
    listed = {e["file"] for e in entries} | {e["reference"]["file"] for e in entries}
    assert {p.name for p in ALIBI.iterdir() if p.suffix in (".onnx", ".npz")} == listed
    for entry in entries:
        data = (ALIBI / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        feeds, expected = _reference(entry, ALIBI)
        got = _session(entry["file"], ALIBI).run(["logits"], feeds)
        np.testing.assert_allclose(got[0], expected["logits"], rtol=0,
                                   atol=entry["reference"]["atol"])
