"""schedule.json (schema, round trip, determinism) and trace.json (Chrome Trace Event format:
tracks, nesting, flows, counters, agreement with the timeline) on the zoo."""

from __future__ import annotations

import copy
import functools
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as hst

from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.outdir import trace as trace_mod
from compiler.outdir.trace import (
    check_schedule_doc,
    check_trace,
    schedule_doc,
    schedule_from_doc,
    trace_doc,
)
from compiler.schedule.build import Schedule, build_schedule
from compiler.schedule.perf import PerfOptions, Timeline, timeline
from compiler.target import Target
from compiler.vocab import Mode, Phase

SCHEMA = json.loads((Path(__file__).parent.parent / "docs/schedule.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
CASES = [("gpt2-tiny", "mesh8x8"), ("llama-tiny", "mesh8x8"), ("llama-tiny-opset23", "mesh8x8"),
         ("bert-tiny", "mesh8x8"), ("gpt2-tiny", "mesh8x8-x2"), ("llama3-8b", "wse3")]
MODES = (Mode.DECODE, Mode.PREFILL)


@functools.cache
def compiled(model: str, target: str) -> tuple[Schedule, Target, dict[str, Timeline]]:
    # The schedule's shape, not the placement's quality, matters here: first-fit keeps the
    # 3.6k-step llama3-8b fast.
    options = CompileOptions(solver=SolverOptions(method="first-fit"))
    r = compile_model(model, target, options if model == "llama3-8b" else None)
    s = build_schedule(r.graph, r.tiled, r.problem, r.placement, r.target)
    return s, r.target, {m: timeline(s, r.target, PerfOptions(m)) for m in MODES}


@functools.cache
def sched_doc(model: str, target: str) -> dict[str, Any]:
    return schedule_doc(*compiled(model, target))


@functools.cache
def trace(model: str, target: str, mode: str = Mode.DECODE) -> dict[str, Any]:
    s, t, tls = compiled(model, target)
    return trace_doc(s, t, tls[mode], PerfOptions(mode))


def slices(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [ev for ev in doc["traceEvents"] if ev["ph"] == "X"]


def schema_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(doc)]


# --- schedule.json ------------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("case", CASES, ids="/".join)
def test_zoo_schedule_validates_and_round_trips(case):
    doc = json.loads(json.dumps(sched_doc(*case)))
    assert schema_errors(doc) == []
    assert check_schedule_doc(doc) == []
    assert schedule_from_doc(doc) == compiled(*case)[0]
    assert set(doc["timing"]) == set(MODES)


def test_schedule_doc_is_byte_identical_across_compiles():
    def text() -> str:
        r = compile_model("gpt2-tiny", "mesh8x8")
        s = build_schedule(r.graph, r.tiled, r.problem, r.placement, r.target)
        return json.dumps(schedule_doc(s, r.target, {Mode.DECODE: timeline(s, r.target)}), indent=1)

    assert text() == text()


def test_schedule_doc_omits_defaults_but_keeps_identity():
    doc = sched_doc("gpt2-tiny", "mesh8x8")
    for st in doc["steps"]:
        assert {"id", "kind", "region", "deps"} <= set(st)
        assert st.get("phase") != "token" and st.get("scaling") != "tokens"
        assert st.get("lanes") != 1 or st["kind"] == "send"
    assert any(st.get("phase") == "setup" for st in doc["steps"])


def _set(path: str, value: Any):
    def mutate(doc: dict[str, Any]) -> None:
        *keys, last = path.split(".")
        node = doc
        for k in keys:
            node = node[int(k)] if k.isdigit() else node[k]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return mutate


_DELETE = object()
MUTATIONS = {
    "unknown kind": _set("steps.0.kind", "teleport"),
    "missing deps": _set("steps.0.deps", _DELETE),
    "missing id": _set("steps.3.id", _DELETE),
    "unknown step field": _set("steps.0.colour", "red"),
    "bad phase": _set("steps.0.phase", "sometimes"),
    "bad scaling": _set("steps.0.scaling", "quadratic"),
    "bad spec axis": _set("steps.0.writes.0.spec", ["x"]),
    "negative bytes": _set("steps.0.nbytes", -1),
    "collective without axis": lambda d: _first(d, "collective").pop("axis"),
    "unknown collective": lambda d: _first(d, "collective").update(op_kind="scatter"),
    "compute with axis": lambda d: _first(d, "compute").update(axis="r"),
    "send without dst": lambda d: _first(d, "send").pop("dst"),
    "load with a route": lambda d: _first(d, "load").update(route=[[0, 0], [0, 1]]),
    "region without rows": _set("regions.0.rows", _DELETE),
    "bad residency": lambda d: d["residency"].update({"block.0": "floating"}),
    "wrong schema version": _set("schema_version", "2.0"),
    "unknown mode": lambda d: d["timing"].update(training=d["timing"][Mode.DECODE]),
    "timing without starts": _set("timing.decode.starts", _DELETE),
    "extra top-level key": _set("wall_time_s", 1.5),
}


def _first(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(st for st in doc["steps"] if st["kind"] == kind)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_schema_rejects_mutated_documents(name):
    doc = copy.deepcopy(sched_doc("gpt2-tiny", "mesh8x8"))
    MUTATIONS[name](doc)
    assert schema_errors(doc), name


def test_semantic_check_catches_what_the_schema_cannot():
    doc = copy.deepcopy(sched_doc("gpt2-tiny", "mesh8x8"))
    doc["steps"][5]["deps"] = [7]
    doc["steps"][6]["region"] = "nowhere"
    doc["timing"][Mode.DECODE]["ends"].pop()
    problems = check_schedule_doc(doc)
    assert any("dependency 7" in p for p in problems)
    assert any("nowhere" in p for p in problems)
    assert any("timing.decode.ends" in p for p in problems)


# --- trace.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids="/".join)
def test_zoo_traces_pass_check(case):
    for mode in MODES:
        doc = json.loads(json.dumps(trace(*case, mode)))
        assert check_trace(doc) == [], mode
        assert doc["displayTimeUnit"] == "ns"


@pytest.mark.parametrize("case", CASES, ids="/".join)
def test_traces_nest_after_perfettos_integer_nanosecond_import(case):
    """Perfetto reads a float ts as int(ts * 1000) ns: back-to-back slices must stay so."""
    doc = copy.deepcopy(trace(*case))
    for ev in doc["traceEvents"]:
        for k in ("ts", "dur"):
            if k in ev:
                ev[k] = int(ev[k] * 1000.0)
    assert check_trace(doc, eps=0) == []


def test_trace_is_deterministic():
    a = trace("llama-tiny", "mesh8x8")
    s, t, tls = compiled("llama-tiny", "mesh8x8")
    assert json.dumps(a) == json.dumps(trace_doc(s, t, tls[Mode.DECODE], PerfOptions(Mode.DECODE)))


def test_every_token_step_drawn_once_setup_steps_not():
    s, _, _ = compiled("llama-tiny", "mesh8x8")
    doc = trace("llama-tiny", "mesh8x8")
    drawn = [ev["args"]["step"] for ev in slices(doc)]
    assert sorted(drawn) == [st.id for st in s.steps if st.phase != Phase.SETUP]
    setup = sum(st.phase == Phase.SETUP for st in s.steps)
    assert doc["metadata"]["setup_steps_not_drawn"] == setup


@pytest.mark.parametrize("case", CASES, ids="/".join)
def test_critical_path_steps_appear(case):
    s, _, tls = compiled(*case)
    doc = trace(*case)
    marked = {ev["args"]["step"] for ev in slices(doc) if ev["args"]["critical"]}
    timed_path = {i for i in tls[Mode.DECODE].critical_path if s.steps[i].phase != Phase.SETUP}
    assert timed_path and marked == timed_path
    assert doc["metadata"]["critical_path"] == list(tls[Mode.DECODE].critical_path)


@pytest.mark.parametrize("case", CASES, ids="/".join)
def test_ts_follow_the_timeline(case):
    s, t, tls = compiled(*case)
    tl, us = tls[Mode.DECODE], 1e6 / t.core.clock_hz
    evs = sorted(slices(trace(*case)), key=lambda ev: (tl.starts[ev["args"]["step"]],
                                                        ev["args"]["step"]))
    assert [ev["ts"] for ev in evs] == sorted(ev["ts"] for ev in evs)
    for ev in evs:
        i = ev["args"]["step"]
        assert ev["ts"] == pytest.approx(tl.starts[i] * us, rel=1e-12, abs=1e-12)
        assert ev["dur"] == pytest.approx((tl.ends[i] - tl.starts[i]) * us, rel=1e-12, abs=1e-12)
        assert ev["dur"] >= 0
    assert max(ev["ts"] + ev["dur"] for ev in evs) == pytest.approx(tl.makespan * us)


def _thread_names(doc: dict[str, Any]) -> dict[tuple[int, int], str]:
    return {(ev["pid"], ev["tid"]): ev["args"]["name"] for ev in doc["traceEvents"]
            if ev["ph"] == "M" and ev["name"] == "thread_name"}


def test_tracks_per_wafer_and_kind():
    s, _, _ = compiled("gpt2-tiny", "mesh8x8-x2")
    doc = trace("gpt2-tiny", "mesh8x8-x2")
    names = _thread_names(doc)
    procs = {ev["pid"]: ev["args"]["name"] for ev in doc["traceEvents"]
             if ev["ph"] == "M" and ev["name"] == "process_name"}
    assert procs == {0: "wafer 0", 1: "wafer 1"}
    expect = {"compute": None, "collective": None, "send": "NoC ", "wafer_send": "inter-wafer",
              "load": "off-chip", "store": "off-chip"}
    for ev in slices(doc):
        st = s.steps[ev["args"]["step"]]
        track = names[(ev["pid"], ev["tid"])]
        assert ev["pid"] == s.region(st.region).wafer
        assert track == st.region if expect[st.kind] is None else \
            track.startswith(expect[st.kind])
    assert any(ev["cat"] == "wafer_send" for ev in slices(doc))


def test_flows_pair_every_transfer_with_a_consumer():
    s, _, _ = compiled("gpt2-tiny", "mesh8x8-x2")
    doc = trace("gpt2-tiny", "mesh8x8-x2")
    transfers = {st.id for st in s.steps if st.kind in ("send", "wafer_send")}
    flows = [ev for ev in doc["traceEvents"] if ev["ph"] in ("s", "f")]
    assert {ev["id"] for ev in flows if ev["ph"] == "s"} == transfers
    assert {ev["id"] for ev in flows if ev["ph"] == "f"} == transfers
    names = _thread_names(doc)
    regions = {r.name for r in s.regions}
    assert all(names[(ev["pid"], ev["tid"])] in regions for ev in flows if ev["ph"] == "f")


def test_offchip_counter_accumulates_token_bytes():
    s, _, _ = compiled("llama-tiny", "mesh8x8")
    doc = trace("llama-tiny", "mesh8x8")
    values = [ev["args"]["bytes"] for ev in doc["traceEvents"] if ev["ph"] == "C"]
    assert values == sorted(values) and values[0] == 0
    drawn = [ev["args"].get("bytes", 0) for ev in slices(doc) if ev["cat"] in ("load", "store")]
    assert values[-1] == sum(drawn) > 0


def test_concurrent_sends_get_their_own_noc_lanes():
    """Zoo sends run one after another (one lane); force them to overlap: greedy lanes give each
    its own, and putting them back on one lane is reported."""
    s, t, tls = compiled("llama-tiny", "mesh8x8")
    tl = tls[Mode.DECODE]
    sends = [st.id for st in s.steps if st.kind == "send"]
    starts, ends = list(tl.starts), list(tl.ends)
    first = min(starts[i] for i in sends)
    for k, i in enumerate(sends):  # staggered from the first one's start, each still ending
        starts[i] = first + k         # when its consumer needs it: they overlap, none nests
    doc = trace_doc(s, t, Timeline(tuple(starts), tuple(ends), tl.makespan, tl.critical_path))
    assert check_trace(doc) == []
    lanes = {k: v for k, v in _thread_names(doc).items() if v.startswith("NoC")}
    assert sorted(lanes.values()) == [f"NoC {k}" for k in range(len(sends))]
    for ev in doc["traceEvents"]:
        if ev["ph"] in ("X", "s") and (ev["pid"], ev["tid"]) in lanes:
            ev["tid"] = min(tid for _, tid in lanes)
    assert sum("overlaps" in p for p in check_trace(doc)) == len(sends) - 1


# --- check_trace on hand-made documents ---------------------------------------------------------


def _doc(*events: dict[str, Any]) -> dict[str, Any]:
    meta = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "wafer 0"}},
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": 1, "args": {"name": "r"}}]
    return {"traceEvents": meta + list(events)}


def _x(ts: float, dur: float, name: str = "op", tid: int = 1) -> dict[str, Any]:
    return {"name": name, "ph": "X", "ts": ts, "dur": dur, "pid": 0, "tid": tid}


def test_check_trace_accepts_nesting_and_back_to_back():
    doc = _doc(_x(0, 10, "outer"), _x(2, 3, "inner"), _x(5, 5, "inner2"), _x(10, 1), _x(11, 0))
    assert check_trace(doc) == []
    assert check_trace(_doc(_x(0.1 + 0.2, 1), _x(0.0, 0.3))) == []  # float rounding


def test_check_trace_reports_an_overlapping_pair():
    problems = check_trace(_doc(_x(0, 10, "a"), _x(5, 10, "b")))
    assert len(problems) == 1 and "overlaps" in problems[0] and "'b'" in problems[0]
    assert check_trace(_doc(_x(0, 10, "a"), _x(5, 10, "b", tid=2)))[0].endswith(
        "no thread_name metadata")


def test_check_trace_reports_structure_flows_and_names():
    assert check_trace({"events": []}) == ["traceEvents: missing or not a list"]
    problems = check_trace(_doc({"name": "op", "ph": "X", "ts": "0", "pid": 0, "tid": 1},
                                {"ph": "Q"}))
    assert any("missing 'dur'" in p for p in problems)
    assert any("ts '0'" in p for p in problems)
    assert any("unknown or missing ph" in p for p in problems)
    start = {"name": "t", "cat": "send", "ph": "s", "id": 1, "ts": 1, "pid": 0, "tid": 1}
    finish = dict(start, ph="f", ts=20, bp="e")
    assert check_trace(_doc(_x(0, 5), _x(10, 15), start, finish)) == []
    assert "1 start(s), 0 finish(es)" in check_trace(_doc(_x(0, 5), start))[0]
    assert "inside no slice" in check_trace(_doc(_x(0, 5), start, dict(finish, ts=8)))[0]
    assert "bp must be" in check_trace(_doc(_x(0, 5), start, dict(finish, bp="n")))[0]
    assert check_trace({"traceEvents": [_x(0, 1)]}) == [
        "pid 0: no process_name metadata", "pid 0 tid 1: no thread_name metadata"]


@settings(max_examples=500, deadline=None)
@example(cycles=2211, clock_hz=1.1e9).via("naive x * 1000 is one ns short")
@example(cycles=1001, clock_hz=1e9).via("naive x * 1000 is one ns short")
@example(cycles=7007.0, clock_hz=875e6).via("naive x * 1000 is one ns short")
@given(cycles=hst.one_of(hst.integers(0, 10**13), hst.floats(0, 1e12, allow_nan=False)),
       clock_hz=hst.sampled_from([1.1e9, 875e6, 1e9, 1.234567e9, 850_000_001.0]))
def test_a_timestamp_in_us_gives_perfetto_the_exact_floor_nanosecond(cycles, clock_hz):
    """Perfetto takes int(us * 1000) ns: that is floor(cycles / clock) in exact arithmetic,
    on the integer fast path and the Fraction path alike."""
    us = trace_mod._us(cycles, clock_hz)
    assert int(us * 1000.0) == math.floor(Fraction(cycles) * 10**9 / Fraction(clock_hz))
    assert abs(us - cycles * 1e6 / clock_hz) <= 1e-6 * max(1.0, us)
