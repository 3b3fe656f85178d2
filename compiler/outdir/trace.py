"""Schedule and timeline artifacts: schedule.json (the steps, with timings) and trace.json
(Chrome Trace Event format, opens in Perfetto and chrome://tracing).

schedule.json (`schedule_doc`, schema docs/schedule.schema.json) holds every field of every
step, so `schedule_from_doc` rebuilds the Schedule; fields equal to their default are left out,
except id, kind, region, deps and the fields a kind always carries. Deterministic: no wall
times, fixed key order, byte-identical for the same schedule.

trace.json (`trace_doc`, docs/trace.md) draws one timeline: a process per wafer; on it a track
per region (compute and collective steps: the performance model serializes them per region,
so they never overlap), NoC lane tracks for sends (lanes allocated greedily so that no two
sends on one lane overlap), an inter-wafer track per destination wafer and an off-chip track
(loads and stores, serialized per wafer). Flow arrows run from each send to its first consumer;
a counter tracks cumulative off-chip bytes per wafer. Setup-phase steps (resident weights and
constants, loaded once before the first token) take no time per token and are not drawn; the
metadata counts them. `check_trace` lists what would make a viewer reject or mis-draw a trace.

Times are microseconds (cycles / clock_hz * 1e6, full float precision). Perfetto imports a
float time as int(us * 1000) ns; `_us` nudges a value by an ulp where that truncation would
fall below the exact nanosecond floor, so back-to-back slices stay back to back after import.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from compiler import __version__
from compiler.schedule.build import KVCacheRef, Region, Schedule, Step, TensorRef
from compiler.schedule.perf import PerfOptions, Timeline, step_scale
from compiler.target import Target
from compiler.vocab import OFFCHIP_KINDS, REGION_KINDS, TRANSFER_KINDS, Phase, StepKind

SCHEDULE_SCHEMA_VERSION = "1.1"  # 1.1: the decode section (append steps)
# Fields written for a kind even when they hold their default (the schema requires them).
KIND_FIELDS: dict[StepKind, tuple[str, ...]] = {
    StepKind.LOAD: ("writes", "nbytes"),
    StepKind.COMPUTE: ("reads", "writes", "op", "op_kind"),
    StepKind.COLLECTIVE: ("reads", "writes", "op_kind", "axis", "nbytes"),
    StepKind.SEND: ("reads", "writes", "dst", "route", "hops", "lanes", "nbytes"),
    StepKind.WAFER_SEND: ("reads", "writes", "dst", "nbytes"),
    StepKind.STORE: ("reads", "nbytes"),
    StepKind.APPEND: ("reads", "writes", "op_kind", "nbytes"),
    StepKind.CACHE_WRITE: ("reads", "writes", "op_kind", "nbytes"),
}
_ALWAYS = ("id", "kind", "region", "deps")
_STEP_FIELDS = dataclasses.fields(Step)


# --- schedule.json ------------------------------------------------------------------------------


def schedule_doc(schedule: Schedule, target: Target, timelines: dict[str, Timeline],
                 steps: bool = True) -> dict[str, Any]:
    """schedule.json content: the schedule and, per mode (decode, prefill), its timeline;
    without `steps`, no step list (outdir/write.py `report_texts`)."""
    s = schedule
    return {
        "schema_version": SCHEDULE_SCHEMA_VERSION,
        "tool": {"name": "wafer", "version": __version__},
        "model": s.model,
        "target": {"name": target.name, "clock_hz": target.core.clock_hz,
                   "grid": [target.grid.rows, target.grid.cols], "wafers": target.wafers.count},
        "tokens": s.tokens, "batch": s.batch, "context": s.context,
        "residency": dict(s.residency),
        "regions": [dataclasses.asdict(r) for r in s.regions],
        **({"kv_caches": [_cache_doc(c) for c in s.caches]} if s.caches else {}),
        **({"steps": [step_doc(st) for st in s.steps]} if steps else {}),
        "timing": {mode: _timing_doc(tl) for mode, tl in timelines.items()},
    }


def _cache_doc(c: KVCacheRef) -> dict[str, Any]:
    return {"tensor": c.tensor, "source": c.source, "axis": c.axis, "layer": c.layer,
            "spec": [a or "-" for a in c.spec]}


_DEFAULTS = tuple((f.name, f.default) for f in _STEP_FIELDS)
_KEPT = {kind: frozenset(_ALWAYS) | frozenset(fields) for kind, fields in KIND_FIELDS.items()}


def step_doc(step: Step) -> dict[str, Any]:
    keep = _KEPT.get(step.kind, _ALWAYS)
    out: dict[str, Any] = {}
    for name, default in _DEFAULTS:
        value = getattr(step, name)
        if name in keep or value != default:
            out[name] = _encode(name, value)
    return out


def _encode(name: str, value: Any) -> Any:
    if name in ("reads", "writes"):
        return [_ref_doc(r) for r in value]
    if name in ("deps",):
        return list(value)
    if name in ("fused", "route"):
        return [list(pair) for pair in value]
    return value


def _ref_doc(ref: TensorRef) -> dict[str, Any]:
    doc: dict[str, Any] = {"tensor": ref.tensor, "spec": [a or "-" for a in ref.spec]}
    if ref.partial:
        doc["partial"] = ref.partial
    return doc


def _timing_doc(tl: Timeline) -> dict[str, Any]:
    return {"cycles": tl.makespan, "critical_path": list(tl.critical_path),
            "starts": list(tl.starts), "ends": list(tl.ends)}


def schedule_from_doc(doc: dict[str, Any]) -> Schedule:
    """The Schedule a schedule.json describes (the inverse of `schedule_doc`)."""
    return Schedule(
        model=doc["model"], target=doc["target"]["name"],
        regions=tuple(Region(**r) for r in doc["regions"]),
        steps=tuple(_step_from_doc(st) for st in doc["steps"]),
        tokens=doc["tokens"], batch=doc["batch"], context=doc["context"],
        residency=tuple(doc["residency"].items()),
        caches=tuple(KVCacheRef(c["tensor"], c["source"], int(c["axis"]), c["layer"],
                                tuple(None if a == "-" else a for a in c["spec"]))
                     for c in doc.get("kv_caches", ())))


def _step_from_doc(doc: dict[str, Any]) -> Step:
    kw: dict[str, Any] = {}
    for name, value in doc.items():
        if name in ("reads", "writes"):
            value = tuple(_ref_from_doc(r) for r in value)
        elif name in ("deps", "fused", "route"):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        elif name == "kind":
            value = StepKind(value)
        kw[name] = value
    return Step(**kw)


def _ref_from_doc(doc: dict[str, Any]) -> TensorRef:
    spec = tuple(None if a == "-" else a for a in doc["spec"])
    return TensorRef(doc["tensor"], spec, doc.get("partial"))


def schedule_doc_problems(doc: dict[str, Any]) -> list[str]:
    """`check_schedule_doc` plus a trial parse: a document too damaged to be checked (missing
    keys, wrong types) is one problem saying so, not an exception."""
    try:
        problems = check_schedule_doc(doc)
        if not problems:
            schedule_from_doc(doc)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return [f"malformed ({type(exc).__name__}: {exc})"]
    return problems


def check_schedule_doc(doc: dict[str, Any]) -> list[str]:
    """What the schema cannot say: ids in order, deps earlier, regions known, timings sized."""
    regions = {r["name"] for r in doc["regions"]}
    n = len(doc["steps"])
    problems = _check_regions(doc)
    for i, st in enumerate(doc["steps"]):
        if st["id"] != i:
            problems.append(f"steps[{i}]: id {st['id']}, expected {i}")
        if st["kind"] not in tuple(StepKind):
            problems.append(f"step {i}: unknown kind {st['kind']!r}")
        problems += [f"step {i}: dependency {d} is not an earlier step"
                     for d in st["deps"] if not 0 <= d < i]
        problems += [f"step {i}: unknown region {st.get(k)!r}"
                     for k in ("region", "dst") if k in st and st[k] not in regions]
    for mode, tm in doc["timing"].items():
        problems += _check_timing(mode, tm, n)
    return problems


def _check_regions(doc: dict[str, Any]) -> list[str]:
    """Every region a rectangle of at least one core inside a wafer of the grid."""
    (rows, cols), wafers = doc["target"]["grid"], doc["target"]["wafers"]
    return [f"region {r['name']}: {r['rows']} x {r['cols']} at ({r['row']}, {r['col']}) on wafer "
            f"{r['wafer']} is not inside {wafers} wafer(s) of {rows} x {cols} cores"
            for r in doc["regions"]
            if not (r["rows"] >= 1 and r["cols"] >= 1 and r["row"] >= 0 and r["col"] >= 0
                    and r["row"] + r["rows"] <= rows and r["col"] + r["cols"] <= cols
                    and 0 <= r["wafer"] < wafers)]


def _check_timing(mode: str, tm: dict[str, Any], n: int) -> list[str]:
    problems = [f"timing.{mode}.{k}: {len(tm[k])} entries for {n} steps"
                for k in ("starts", "ends") if len(tm[k]) != n]
    if problems:
        return problems
    problems += [f"timing.{mode}: step {i} ends before it starts"
                 for i, (a, b) in enumerate(zip(tm["starts"], tm["ends"], strict=True)) if b < a]
    problems += [f"timing.{mode}.critical_path: unknown step {i}"
                 for i in tm["critical_path"] if not 0 <= i < n]
    if tm["ends"] and max(tm["ends"]) != tm["cycles"]:
        problems.append(f"timing.{mode}.cycles: {tm['cycles']} is not the last end")
    return problems


# --- trace.json ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)
def _us(cycles: float, clock_hz: float) -> float:
    """`cycles` in microseconds; Perfetto's int(us * 1000) then gives floor(exact ns).
    Cached: a giant's trace asks for the same starts and durations again and again."""
    x = cycles * 1e6 / clock_hz
    if float(cycles).is_integer() and float(clock_hz).is_integer():  # exact, as the Fraction
        ns = int(cycles) * 10**9 // int(clock_hz)
    else:
        ns = math.floor(Fraction(cycles) * 10**9 / Fraction(clock_hz))
    for _ in range(8):
        if int(x * 1000.0) < ns:
            x = math.nextafter(x, math.inf)
        elif int(x * 1000.0) > ns:
            x = math.nextafter(x, -math.inf)
        else:
            break
    return x


@dataclasses.dataclass(frozen=True)
class _Tracks:
    of_step: dict[int, tuple[int, int]]  # step id -> (pid, tid)
    threads: tuple[tuple[int, int, str], ...]  # (pid, tid, name), tid = display order


def _assign_tracks(s: Schedule, tl: Timeline, timed: list[Step]) -> _Tracks:
    where = {r.name: (i, r.wafer) for i, r in enumerate(s.regions)}
    lanes = _noc_lanes([st for st in timed if st.kind == StepKind.SEND], tl, where)
    key_of = {st.id: _track_key(st, where, lanes) for st in timed}
    keys = sorted(set(key_of.values()) | {(w, 0, i) for i, w in where.values()})
    tid = {k: n + 1 for n, k in enumerate(keys)}
    names = [r.name for r in s.regions]
    threads = tuple((k[0], tid[k], _track_name(k, names)) for k in keys)
    return _Tracks({i: (k[0], tid[k]) for i, k in key_of.items()}, threads)


def _track_key(st: Step, where: dict[str, tuple[int, int]],
               lanes: dict[int, int]) -> tuple[int, int, int]:
    """(wafer, group, index): groups are regions, NoC lanes, inter-wafer links, off-chip."""
    index, wafer = where[st.region]
    if st.kind in REGION_KINDS:
        return wafer, 0, index
    if st.kind == StepKind.SEND:
        return wafer, 1, lanes[st.id]
    if st.kind == StepKind.WAFER_SEND:
        return wafer, 2, where[st.dst][1]
    return wafer, 3, 0


def _track_name(key: tuple[int, int, int], regions: list[str]) -> str:
    _, group, index = key
    return (regions[index], f"NoC {index}", f"inter-wafer -> wafer {index}", "off-chip")[group]


def _noc_lanes(sends: list[Step], tl: Timeline,
               where: dict[str, tuple[int, int]]) -> dict[int, int]:
    """Greedy interval colouring per wafer: each send on the lowest lane free at its start."""
    lane_ends: dict[int, list[int]] = defaultdict(list)
    lanes = {}
    for st in sorted(sends, key=lambda st: (tl.starts[st.id], st.id)):
        ends = lane_ends[where[st.region][1]]
        lane = next((i for i, e in enumerate(ends) if e <= tl.starts[st.id]), len(ends))
        if lane == len(ends):
            ends.append(0)
        ends[lane] = tl.ends[st.id]
        lanes[st.id] = lane
    return lanes


@dataclasses.dataclass(frozen=True)
class _Ctx:
    s: Schedule
    tl: Timeline
    clock_hz: float
    opts: PerfOptions | None
    tracks: _Tracks

    def ts(self, step_id: int) -> float:
        return _us(self.tl.starts[step_id], self.clock_hz)

    def dur(self, step_id: int) -> float:
        return _us(self.tl.ends[step_id] - self.tl.starts[step_id], self.clock_hz)

    def scaled(self, st: Step, value: int) -> int:
        return value if self.opts is None else round(value * step_scale(st, self.s, self.opts))


def trace_doc(schedule: Schedule, target: Target, timeline: Timeline,
              opts: PerfOptions | None = None) -> dict[str, Any]:
    """Chrome Trace Event JSON of one timeline. With `opts` (the mode the timeline was computed
    for), bytes and FLOPs in args and counters are that mode's; without, the schedule's."""
    timed = [st for st in schedule.steps if st.phase != Phase.SETUP]
    ctx = _Ctx(schedule, timeline, target.core.clock_hz, opts,
               _assign_tracks(schedule, timeline, timed))
    critical = set(timeline.critical_path)
    slices = [_slice(ctx, st, st.id in critical)
              for st in sorted(timed, key=lambda st: (timeline.starts[st.id], st.id))]
    events = _metadata_events(ctx) + slices + _flows(ctx, timed) + _counters(ctx, timed)
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "metadata": _trace_metadata(ctx, target, timed)}


def _metadata_events(ctx: _Ctx) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for w in sorted({r.wafer for r in ctx.s.regions}):
        events += [_meta("process_name", w, None, {"name": f"wafer {w}"}),
                   _meta("process_sort_index", w, None, {"sort_index": w})]
    for pid, tid, name in ctx.tracks.threads:
        events += [_meta("thread_name", pid, tid, {"name": name}),
                   _meta("thread_sort_index", pid, tid, {"sort_index": tid})]
    return events


def _meta(name: str, pid: int, tid: int | None, args: dict[str, Any]) -> dict[str, Any]:
    ev: dict[str, Any] = {"name": name, "ph": "M", "pid": pid}
    if tid is not None:
        ev["tid"] = tid
    ev["args"] = args
    return ev


def _slice(ctx: _Ctx, st: Step, critical: bool) -> dict[str, Any]:
    pid, tid = ctx.tracks.of_step[st.id]
    return {"name": _slice_name(st), "cat": st.kind, "ph": "X", "ts": ctx.ts(st.id),
            "dur": ctx.dur(st.id), "pid": pid, "tid": tid, "args": _args(ctx, st, critical)}


def _slice_name(st: Step) -> str:
    if st.kind in TRANSFER_KINDS:
        return f"{st.kind} {st.region} -> {st.dst}"
    if st.kind in OFFCHIP_KINDS:
        # a load names what it brings, a store what it writes: an output, or (a write-back of
        # a decode step's K/V) the off-chip KV cache
        refs = st.writes if st.kind == StepKind.LOAD or st.writes else st.reads
        return f"{st.kind} {refs[0].tensor}" if refs else st.kind
    return st.op_kind or st.kind


def _args(ctx: _Ctx, st: Step, critical: bool) -> dict[str, Any]:
    args: dict[str, Any] = {"step": st.id, "region": st.region}
    optional = {"op": st.op, "dst": st.dst, "axis": st.axis, "hops": st.hops,
                "bytes": ctx.scaled(st, st.nbytes), "flops": ctx.scaled(st, st.flops),
                "tensors": ", ".join(dict.fromkeys(r.tensor for r in st.reads + st.writes))}
    args.update((k, v) for k, v in optional.items() if v)
    args.update(deps=list(st.deps), start_cycle=ctx.tl.starts[st.id],
                end_cycle=ctx.tl.ends[st.id], critical=critical)
    return args


def _flows(ctx: _Ctx, timed: list[Step]) -> list[dict[str, Any]]:
    """An arrow per send and wafer_send: from the transfer to its first consumer that takes
    time (else its first consumer). Both ends sit mid-slice, so each binds to its slice."""
    consumers: dict[int, list[int]] = defaultdict(list)
    for st in timed:
        for d in st.deps:
            consumers[d].append(st.id)
    events = []
    for st in timed:
        if st.kind not in TRANSFER_KINDS or not consumers[st.id]:
            continue
        used = consumers[st.id]
        to = next((c for c in used if ctx.tl.ends[c] > ctx.tl.starts[c]), used[0])
        name = _slice_name(st)
        events += [_flow_end(ctx, "s", st.id, st.id, name, st.kind),
                   _flow_end(ctx, "f", to, st.id, name, st.kind)]
    return events


def _flow_end(ctx: _Ctx, ph: str, step_id: int, flow_id: int, name: str,
              cat: str) -> dict[str, Any]:
    pid, tid = ctx.tracks.of_step[step_id]
    ev: dict[str, Any] = {"name": name, "cat": cat, "ph": ph, "id": flow_id,
                          "ts": ctx.ts(step_id) + ctx.dur(step_id) / 2, "pid": pid, "tid": tid}
    if ph == "f":
        ev["bp"] = "e"
    return ev


def _counters(ctx: _Ctx, timed: list[Step]) -> list[dict[str, Any]]:
    """Cumulative off-chip bytes per wafer, stepping up as each load or store completes."""
    total: dict[int, int] = {}
    events = [_counter(w, 0.0, 0) for w in sorted({r.wafer for r in ctx.s.regions})]
    offchip = [st for st in timed if st.kind in OFFCHIP_KINDS]
    for st in sorted(offchip, key=lambda st: (ctx.tl.ends[st.id], st.id)):
        pid = ctx.tracks.of_step[st.id][0]
        total[pid] = total.get(pid, 0) + ctx.scaled(st, st.nbytes)
        events.append(_counter(pid, _us(ctx.tl.ends[st.id], ctx.clock_hz), total[pid]))
    return events


def _counter(pid: int, ts: float, value: int) -> dict[str, Any]:
    return {"name": "off-chip bytes", "ph": "C", "ts": ts, "pid": pid, "args": {"bytes": value}}


def _trace_metadata(ctx: _Ctx, target: Target, timed: list[Step]) -> dict[str, Any]:
    setup = [st for st in ctx.s.steps if st.phase == Phase.SETUP]
    return {
        "tool": {"name": "wafer", "version": __version__},
        "model": ctx.s.model, "target": target.name, "clock_hz": ctx.clock_hz,
        "mode": ctx.opts.mode if ctx.opts else None, "time_unit": "us",
        "makespan_cycles": ctx.tl.makespan, "makespan_us": _us(ctx.tl.makespan, ctx.clock_hz),
        "critical_path": list(ctx.tl.critical_path), "steps_drawn": len(timed),
        "setup_steps_not_drawn": len(setup),
        "setup_offchip_bytes": sum(st.nbytes for st in setup if st.kind == StepKind.LOAD),
    }


# --- trace validation ---------------------------------------------------------------------------

_REQUIRED = {
    "X": ("name", "ts", "dur", "pid", "tid"),
    "M": ("name", "pid", "args"),
    "C": ("name", "ts", "pid", "args"),
    "s": ("name", "cat", "id", "ts", "pid", "tid"),
    "f": ("name", "cat", "id", "ts", "pid", "tid", "bp"),
}
_META_NAMES = ("process_name", "process_sort_index", "thread_name", "thread_sort_index")


def check_trace(doc: Any, eps: float = 1e-6) -> list[str]:
    """Problems that would make a trace viewer reject or mis-draw `doc` (empty: none):
    required keys per phase, numeric times, slices on each (pid, tid) properly nested (within
    `eps`), flow start/finish pairs matched and bound to a slice, track names present."""
    events = doc.get("traceEvents") if isinstance(doc, dict) else None
    if not isinstance(events, list):
        return ["traceEvents: missing or not a list"]
    problems = [p for i, ev in enumerate(events) for p in _check_event(i, ev)]
    if problems:
        return problems
    slices = _slices_by_track(events)
    return (_check_nesting(slices, eps) + _check_flows(events, slices, eps)
            + _check_names(events))


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_event(i: int, ev: Any) -> list[str]:
    if not isinstance(ev, dict):
        return [f"event {i}: not an object"]
    ph = ev.get("ph")
    if ph not in _REQUIRED:
        return [f"event {i}: unknown or missing ph {ph!r}"]
    where = f"event {i} ({ph} {ev.get('name')!r})"
    problems = [f"{where}: missing {k!r}" for k in _REQUIRED[ph] if k not in ev]
    problems += [f"{where}: {k} {ev[k]!r} is not a number >= 0"
                 for k in ("ts", "dur") if k in ev and not (_is_num(ev[k]) and ev[k] >= 0)]
    if ph == "M" and ev.get("name") not in _META_NAMES:
        problems.append(f"{where}: unknown metadata name")
    if ph == "M" and str(ev.get("name")).startswith("thread") and "tid" not in ev:
        problems.append(f"{where}: missing 'tid'")
    if ph == "C" and not all(_is_num(v) for v in dict(ev.get("args") or {}).values()):
        problems.append(f"{where}: counter values must be numbers")
    if ph == "f" and ev.get("bp") != "e":
        problems.append(f"{where}: bp must be 'e' (bind to the enclosing slice)")
    return problems


def _slices_by_track(events: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    tracks: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        if ev["ph"] == "X":
            tracks[(ev["pid"], ev["tid"])].append(ev)
    for evs in tracks.values():
        evs.sort(key=lambda ev: (ev["ts"], -ev["dur"]))
    return tracks


def _check_nesting(tracks: dict[tuple, list[dict[str, Any]]], eps: float) -> list[str]:
    """Each slice lies inside the enclosing one or starts after it ends."""
    problems = []
    for (pid, tid), evs in sorted(tracks.items(), key=lambda kv: str(kv[0])):
        stack: list[dict[str, Any]] = []
        for ev in evs:
            while stack and _end(stack[-1]) <= ev["ts"] + eps:
                stack.pop()
            if stack and _end(ev) > _end(stack[-1]) + eps:
                problems.append(f"pid {pid} tid {tid}: {_label(ev)} overlaps {_label(stack[-1])}"
                                " without nesting")
            stack.append(ev)
    return problems


def _end(ev: dict[str, Any]) -> float:
    return ev["ts"] + ev["dur"]


def _label(ev: dict[str, Any]) -> str:
    return f"{ev.get('name')!r} [{ev['ts']}, {_end(ev)}]"


def _check_flows(events: list[dict[str, Any]], tracks: dict[tuple, list[dict[str, Any]]],
                 eps: float) -> list[str]:
    ends: dict[Any, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: {"s": [], "f": []})
    for ev in events:
        if ev["ph"] in ("s", "f"):
            ends[(ev["cat"], ev["name"], ev["id"])][ev["ph"]].append(ev)
    problems = []
    for key, pair in ends.items():
        if len(pair["s"]) != 1 or len(pair["f"]) != 1:
            problems.append(f"flow {key[2]!r} ({key[1]!r}): {len(pair['s'])} start(s), "
                            f"{len(pair['f'])} finish(es); expected one of each")
            continue
        start, finish = pair["s"][0], pair["f"][0]
        if finish["ts"] < start["ts"] - eps:
            problems.append(f"flow {key[2]!r}: finishes before it starts")
        problems += [f"flow {key[2]!r}: {ev['ph']} at {ev['ts']} is inside no slice on pid "
                     f"{ev['pid']} tid {ev['tid']}" for ev in (start, finish)
                     if not _enclosed(ev, tracks.get((ev["pid"], ev["tid"]), []), eps)]
    return problems


def _enclosed(ev: dict[str, Any], slices: list[dict[str, Any]], eps: float) -> bool:
    i = bisect_right([s["ts"] for s in slices], ev["ts"] + eps)
    return any(_end(s) >= ev["ts"] - eps for s in slices[:i])


def _check_names(events: Iterable[dict[str, Any]]) -> list[str]:
    events = list(events)
    named_p = {ev["pid"] for ev in events if ev["ph"] == "M" and ev["name"] == "process_name"}
    named_t = {(ev["pid"], ev["tid"]) for ev in events
               if ev["ph"] == "M" and ev["name"] == "thread_name"}
    used_p = {ev["pid"] for ev in events if ev["ph"] in ("X", "C")}
    used_t = {(ev["pid"], ev["tid"]) for ev in events if ev["ph"] == "X"}
    return ([f"pid {p}: no process_name metadata" for p in sorted(used_p - named_p, key=str)]
            + [f"pid {p} tid {t}: no thread_name metadata"
               for p, t in sorted(used_t - named_t, key=str)])
