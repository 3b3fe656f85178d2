"""The one reader of OUT/: the documents of one compile as an `OutDir`, read from OUT (or parsed
from the texts a compile is about to write). The report is built from these only, so `wafer view
OUT` and `wafer compile` draw the same picture (a compile hands over the Schedules it wrote
rather than rebuilding them from schedule.json: equal, tests/test_report_schedules.py);
`wafer verify` opens OUT through `read_compiled`, which needs only what verification does
(placement.json's records and schedule.json)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import UsageError, WaferError
from compiler.outdir.trace import schedule_doc_problems, schedule_from_doc
from compiler.schedule.build import Schedule

PLACEMENT, SCHEDULE, LOG, VERIFY = ("placement.json", "schedule.json", "compile_log.json",
                                    "verify.json")
# Keys the report reads; an OUT written before they existed must be recompiled.
NEEDED = {PLACEMENT: ("model", "target", "layers", "metrics", "solver", "performance"),
          SCHEDULE: ("regions", "steps", "timing", "target"),
          LOG: ("stage_seconds",)}


@dataclass(frozen=True)
class ModelRecord:
    """placement.json's `model`: what was compiled, at which dims."""

    name: str  # "" when not recorded
    source: str
    sha256: str | None
    dims: Mapping[str, Any]
    shape_only: bool


@dataclass(frozen=True)
class TargetRecord:
    """placement.json's `target`: which target, from where, its sha256."""

    name: str
    source: str
    sha256: str | None


@dataclass(frozen=True)
class OutDir:
    """One compile's documents: placement.json (as parsed), schedule.json as a Schedule (its
    per-mode `timing` and `clock_hz` beside it), compile_log.json, verify.json when present."""

    placement: dict[str, Any]
    schedule: Schedule
    timing: dict[str, Any]  # schedule.json's timing: per mode, starts/ends per step
    clock_hz: float  # schedule.json's target clock
    log: dict[str, Any]
    verify: dict[str, Any] | None  # verify.json, when OUT has one
    out: str = "OUT"  # where they came from, for messages
    decode: Schedule | None = None  # schedule.json's decode section, when it has one
    decode_timing: dict[str, Any] | None = None  # its timeline (one decode step)

    @property
    def model(self) -> ModelRecord:
        m = self.placement.get("model", {})
        return ModelRecord(str(m.get("name", "")), str(m.get("source", "")),
                           m.get("sha256"), m.get("dims", {}), bool(m.get("shape_only")))

    @property
    def target(self) -> TargetRecord:
        t = self.placement.get("target", {})
        return TargetRecord(str(t.get("name", "")), str(t.get("source", "")), t.get("sha256"))

    @property
    def options(self) -> Mapping[str, Any]:
        return self.placement.get("options", {})


def _out_dir(docs: dict[str, dict[str, Any]], out: str,
             schedules: Schedules | None = None) -> OutDir:
    sdoc = docs[SCHEDULE]
    timing, target = sdoc.get("timing", {}), sdoc.get("target", {})
    from compiler.outdir.decode import decode_schedule_from_doc

    dec = sdoc.get("decode")
    prefill, decode = schedules or (schedule_from_doc(sdoc), decode_schedule_from_doc(sdoc))
    return OutDir(docs[PLACEMENT], prefill, timing,
                  float(target.get("clock_hz", 0.0)), docs.get(LOG, {}), docs.get(VERIFY), out,
                  decode, dec["timing"]["decode"] if dec else None)


def read_out(out: str | Path) -> OutDir:
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


# the prefill and decode Schedules a schedule.json was written from, when the caller holds
# them (a compile's report): what `schedule_from_doc` would rebuild from it, not rebuilt
Schedules = tuple[Schedule, Schedule | None]


def docs_from_texts(texts: dict[str, str], out: str = "OUT",
                    schedules: Schedules | None = None) -> OutDir:
    """OUT's documents from their texts; `schedules`: the Schedules schedule.json was written
    from (a compile's report: the same OutDir, without rebuilding 92k steps of a giant). With
    them, schedule.json's step lists are not read (its text may leave them out) nor checked:
    the compile wrote them from these very Schedules."""
    docs = {name: _parse(out, name, texts[name]) for name in (PLACEMENT, SCHEDULE, LOG, VERIFY)
            if name in texts}
    for name, keys in NEEDED.items():
        if name not in docs:
            raise UsageError(f"{out}/{name} is missing: {_recompile(out)}")
        missing = [k for k in keys if k not in docs[name]
                   and not (schedules and name == SCHEDULE and k == "steps")]
        if missing:
            raise UsageError(f"{out}/{name} has no {', '.join(missing)} (written by an older "
                             f"wafer?): {_recompile(out)}")
    _check_structure(docs, out, schedule=schedules is None)
    return _out_dir(docs, out, schedules)


# per placement.json layer: the fields the report reads and their JSON types
LAYER_FIELDS = {"name": str, "kind": str, "residency": str, "rect": dict,
                "per_core_bytes": dict, "weight_bytes": int, "kv_bytes": int,
                "flops_per_token": int, "offchip_bytes_per_token": int | float,
                "cycles_per_token": int, "onnx_nodes": list}
RECT_FIELDS = ("wafer", "row", "col", "rows", "cols")
_JSON_NAMES = {str: "a string", dict: "an object", int: "an integer", list: "a list"}


def _check_structure(docs: dict[str, dict[str, Any]], out: str, schedule: bool = True) -> None:
    """A damaged (hand-edited, truncated) OUT is one error line, not an exception deep in the
    view-model: the schedule as `wafer verify` checks it (with `schedule`), the placement's
    layer records."""
    problems = schedule_doc_problems(docs[SCHEDULE]) if schedule else []
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


# --- what verification reads --------------------------------------------------------------------


def read_compiled(out: str | Path) -> OutDir:
    """OUT as `wafer verify` reads it: placement.json (its model, target and options objects)
    and schedule.json (checked, parsed); not compile_log.json or an earlier verify.json (`log`
    is empty, `verify` None). One-line errors name the file and say to compile again."""
    out = Path(out)
    placement = _read_json(out / PLACEMENT)
    model = _table(placement, "model", out)
    for key in ("target", "options"):
        _table(placement, key, out)
    _table(model, "dims", out)
    docs = {PLACEMENT: placement, SCHEDULE: _read_schedule(out / SCHEDULE)}
    return _out_dir(docs, str(out))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} not found: give an OUT directory written by "
                         "`wafer compile`") from None
    except (OSError, ValueError) as exc:
        raise WaferError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise WaferError(f"{path}: expected a JSON object; compile again")
    return doc


def _table(doc: Mapping[str, Any], key: str, out: Path) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise WaferError(f"{out}/placement.json: {key} is not an object; compile again")
    return value


def _read_schedule(path: Path) -> dict[str, Any]:
    """schedule.json, checked: any structural damage is a one-line error."""
    doc = _read_json(path)
    problems = schedule_doc_problems(doc)
    if problems:
        raise WaferError(f"{path}: {problems[0]}; compile again")
    return doc
