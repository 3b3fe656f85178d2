"""The decode schedule in OUT/: schedule.json's `decode` section and its drawing in trace.json.

schedule.json keeps the prefill schedule where it always was (`steps`, `timing`) and adds
`decode`: the decode step's steps (same regions; kind `append` writes a step's K/V into its KV
cache at position t), its timing at the context, the KV caches and the position feeds.
trace.json draws the decode step first (pids = wafers, as before) and, after it, the prefill
(TTFT) on processes `prefill: wafer N` (pid = wafers + N), each with its own flows and
counters.
"""

from __future__ import annotations

from typing import Any

from compiler.outdir.trace import _timing_doc, schedule_from_doc, step_doc, trace_doc
from compiler.schedule.build import Schedule
from compiler.schedule.decode import DecodePlan
from compiler.schedule.perf import PerfOptions, Timeline
from compiler.target import Target
from compiler.vocab import Mode


def decode_doc(plan: DecodePlan, steps: bool = True) -> dict[str, Any]:
    """schedule.json's decode section; without `steps`, no step list."""
    s, dg = plan.schedule, plan.graph
    return {
        "tokens": s.tokens, "batch": s.batch, "context": s.context,
        "kv_cache": "grouped" if dg.grouped else "expanded",
        "kv_layout": f"keys-{dg.spread}" if dg.spread else "heads",
        "caches": [{"layer": c.layer, "tensor": c.name, "new": c.new, "prefill": c.prefill,
                    "axis": c.axis} for c in dg.caches],
        "feeds": [{"tensor": f.name, "query_axes": list(f.query_axes),
                   "key_axes": list(f.key_axes)} for f in dg.feeds],
        **({"steps": [step_doc(st) for st in s.steps]} if steps else {}),
        "timing": {Mode.DECODE.value: _timing_doc(plan.timeline)},
    }


def decode_schedule_from_doc(doc: dict[str, Any]) -> Schedule | None:
    """The decode Schedule of a schedule.json (None when it has no decode section)."""
    dec = doc.get("decode")
    if dec is None:
        return None
    return schedule_from_doc({**doc, "steps": dec["steps"], "tokens": dec["tokens"],
                              "batch": dec["batch"], "context": dec["context"],
                              "kv_caches": []})  # the prefill's: decode appends to them


def decode_problems(doc: dict[str, Any]) -> list[str]:
    from compiler.outdir.trace import check_schedule_doc

    dec = doc.get("decode")
    if dec is None:
        return []
    try:
        sub = {**doc, "steps": dec["steps"], "timing": dec["timing"]}
        return [f"decode: {p}" for p in check_schedule_doc(sub)]
    except (KeyError, TypeError) as exc:
        return [f"decode: malformed ({type(exc).__name__}: {exc})"]


def two_schedule_trace(prefill: Schedule, prefill_tl: Timeline, plan: DecodePlan,
                       target: Target) -> dict[str, Any]:
    """trace.json with the decode step (pids 0..) and the prefill (pids after them)."""
    dec = trace_doc(plan.schedule, target, plan.timeline, PerfOptions(Mode.DECODE))
    pre = trace_doc(prefill, target, prefill_tl, PerfOptions(Mode.PREFILL))
    shift = max((r.wafer for r in prefill.regions), default=0) + 1
    flow_shift = len(plan.schedule.steps)
    events = list(dec["traceEvents"])
    for ev in pre["traceEvents"]:
        ev = {**ev, "pid": ev["pid"] + shift}
        if ev.get("name") == "process_name":
            ev["args"] = {"name": f"prefill: {ev['args']['name']}"}
        if ev.get("name") == "process_sort_index":
            ev["args"] = {"sort_index": ev["args"]["sort_index"] + shift}
        if ev["ph"] in ("s", "f"):
            ev["id"] = ev["id"] + flow_shift
        events.append(ev)
    for ev in events[:len(dec["traceEvents"])]:
        if ev.get("name") == "process_name":
            ev["args"] = {"name": f"decode: {ev['args']['name']}"}
    meta = {**dec["metadata"], "prefill": pre["metadata"]}
    return {"traceEvents": events, "displayTimeUnit": "ns", "metadata": meta}
