"""The documents of one compile, read from OUT/ (or parsed from the texts a compile is about to
write): the report is built from these only, so `wafer view OUT` and `wafer compile` draw the
same picture."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import UsageError, WaferError

PLACEMENT, SCHEDULE, LOG, VERIFY = ("placement.json", "schedule.json", "compile_log.json",
                                    "verify.json")
# Keys the report reads; an OUT written before they existed must be recompiled.
NEEDED = {PLACEMENT: ("model", "target", "layers", "metrics", "solver", "performance"),
          SCHEDULE: ("regions", "steps", "timing", "target"),
          LOG: ("stage_seconds",)}


@dataclass(frozen=True)
class OutDocs:
    placement: dict[str, Any]
    schedule: dict[str, Any]
    log: dict[str, Any]
    verify: dict[str, Any] | None  # verify.json, when OUT has one
    out: str = "OUT"  # where they came from, for messages


def read_out(out: str | Path) -> OutDocs:
    """OUT's documents; one-line errors for a missing OUT, a missing file or an old format."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out} is not a directory: give an OUT written by `wafer compile`")
    texts = {}
    for name in (PLACEMENT, SCHEDULE, LOG, VERIFY):
        path = out / name
        if path.exists():
            texts[name] = path.read_text()
        elif name != VERIFY:
            raise UsageError(f"{path} is missing: {_recompile(out)}")
    return docs_from_texts(texts, str(out))


def docs_from_texts(texts: dict[str, str], out: str = "OUT") -> OutDocs:
    docs = {name: _parse(out, name, texts[name]) for name in (PLACEMENT, SCHEDULE, LOG, VERIFY)
            if name in texts}
    for name, keys in NEEDED.items():
        if name not in docs:
            raise UsageError(f"{out}/{name} is missing: {_recompile(out)}")
        missing = [k for k in keys if k not in docs[name]]
        if missing:
            raise UsageError(f"{out}/{name} has no {', '.join(missing)} (written by an older "
                             f"wafer?): {_recompile(out)}")
    _check_structure(docs, out)
    return OutDocs(docs[PLACEMENT], docs[SCHEDULE], docs[LOG], docs.get(VERIFY), out)


# per placement.json layer: the fields the report reads and their JSON types
LAYER_FIELDS = {"name": str, "kind": str, "residency": str, "rect": dict,
                "per_core_bytes": dict, "weight_bytes": int, "kv_bytes": int,
                "flops_per_token": int, "offchip_bytes_per_token": int | float,
                "cycles_per_token": int, "onnx_nodes": list}
RECT_FIELDS = ("wafer", "row", "col", "rows", "cols")
_JSON_NAMES = {str: "a string", dict: "an object", int: "an integer", list: "a list"}


def _check_structure(docs: dict[str, dict[str, Any]], out: str) -> None:
    """A damaged (hand-edited, truncated) OUT is one error line, not an exception deep in the
    view-model: the schedule as `wafer verify` checks it, the placement's layer records."""
    from compiler.outdir.trace import schedule_doc_problems

    problems = schedule_doc_problems(docs[SCHEDULE])
    if problems:
        raise WaferError(f"{out}/{SCHEDULE}: {problems[0]}: {_recompile(out)}")
    layers = docs[PLACEMENT]["layers"]
    if not isinstance(layers, list):
        raise WaferError(f"{out}/{PLACEMENT}: layers is not a list: {_recompile(out)}")
    for i, layer in enumerate(layers):
        problem = _layer_problem(layer)
        if problem:
            raise WaferError(f"{out}/{PLACEMENT}: layers[{i}]: {problem}: {_recompile(out)}")


def _layer_problem(layer: object) -> str:
    if not isinstance(layer, dict):
        return "not an object"
    for key, kind in LAYER_FIELDS.items():
        if not isinstance(layer.get(key), kind) or isinstance(layer.get(key), bool):
            return f"{key} is missing or not {_JSON_NAMES.get(kind, 'a number')}"
    rect = layer["rect"]
    if not all(isinstance(rect.get(k), int) for k in RECT_FIELDS):
        return f"rect needs integer {', '.join(RECT_FIELDS)}"
    if not isinstance(layer["per_core_bytes"].get("total"), int):
        return "per_core_bytes has no integer total"
    return ""


def _parse(out: str, name: str, text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        raise WaferError(f"{out}/{name} is not valid JSON: {_recompile(out)}") from None
    if not isinstance(doc, dict):
        raise WaferError(f"{out}/{name} is not a JSON object: {_recompile(out)}")
    return doc


def _recompile(out: str | Path) -> str:
    return f"recompile with `wafer compile MODEL -t TARGET -o {out} --force`"
