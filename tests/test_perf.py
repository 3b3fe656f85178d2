"""compiler/schedule/perf.py, the performance model: better hardware never predicts slower, decode
is latency-bound, link loads add up to the routed bytes, and the shared ports (one off-chip port
per wafer, one inter-wafer port per wafer and direction) queue what passes them."""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.driver import CompileOptions, compile_model
from compiler.schedule.build import ATTENTION, Region, Schedule, Step, TensorRef
from compiler.schedule.perf import (
    PerfOptions,
    breakdown,
    estimate,
    shares,
    step_cycles,
    streamed_kv_cycles,
    timeline,
)
from compiler.target import load_target
from compiler.tiling.candidates import TilingOptions
from compiler.vocab import Mode

CASES = [("gpt2-tiny", "mesh8x8"), ("llama-tiny", "mesh8x8"), ("bert-tiny", "mesh16x16"),
         ("llama-tiny-opset23", "mesh8x8"), ("gpt2-tiny", "mesh8x8-x2"), ("llama3-8b", "wse3")]


@functools.cache
def compiled(model: str, target: str):
    return compile_model(model, target)


def _improved(target, field: str, factor: float):
    section, key = field.split(".")
    part = getattr(target, section)
    value = getattr(part, key)
    new = type(value)(value * factor) if isinstance(value, int) else value * factor
    return dataclasses.replace(target, **{section: dataclasses.replace(part, **{key: new})})


# (field, factor that makes the hardware better)
BETTER = [("links.bytes_per_cycle", 2), ("links.hop_latency_cycles", 0.5),
          ("runtime.step_overhead_cycles", 0.5), ("offchip.bandwidth_bytes_per_s", 2),
          ("offchip.latency_s", 0.5), ("core.clock_hz", 2)]


@settings(max_examples=25, deadline=None)
@given(case=st.sampled_from(CASES[:5]), change=st.sampled_from(BETTER),
       mode=st.sampled_from([Mode.DECODE, Mode.PREFILL]), batch=st.integers(1, 8))
def test_better_hardware_never_predicts_slower(case, change, mode, batch):
    r = compiled(*case)
    opts = PerfOptions(mode, batch=batch)
    base = estimate(r.schedule, r.target, opts)
    better = estimate(r.schedule, _improved(r.target, *change), opts)
    assert better.seconds <= base.seconds * (1 + 1e-9)


def test_batch_one_decode_is_latency_bound_far_below_the_roofline():
    d = compiled("llama3-8b", "wse3").estimates[Mode.DECODE]
    assert d.tokens_per_s < d.compute_bound_tokens_per_s / 100


def test_longer_context_costs_decode_time():
    r = compiled("llama3-8b", "wse3")
    short = timeline(r.schedule, r.target, PerfOptions(Mode.DECODE, context=1024)).makespan
    long = timeline(r.schedule, r.target, PerfOptions(Mode.DECODE, context=131072)).makespan
    assert long > short


def test_link_loads_add_up_to_the_routed_bytes():
    from compiler.schedule.perf import busiest_link, link_loads

    s = compiled("llama3-8b", "wse3").schedule
    opts = PerfOptions(Mode.DECODE)
    loads = link_loads(s, opts)
    sends = [x for x in s.steps if x.kind == "send"]
    routed = sum(x.nbytes * x.hops / x.lanes for x in sends) / s.tokens  # batch 1: per token
    assert sum(loads.values()) == pytest.approx(routed)
    top = busiest_link(s, opts)
    assert top.nbytes == max(loads.values())
    assert abs(top.src[0] - top.dst[0]) + abs(top.src[1] - top.dst[1]) == 1


def test_link_loads_asked_again_are_the_same_and_a_copy():
    """The summary and the report both ask for the decode schedule's link loads: the second
    answer is the remembered one (equal to computing them anew, a copy the caller may change);
    other options or another schedule are computed."""
    from compiler.schedule import perf

    s = compiled("llama3-8b", "wse3").schedule
    first = perf.link_loads(s, PerfOptions(Mode.DECODE))
    first[("x",)] = 1.0
    again = perf.link_loads(s, PerfOptions(Mode.DECODE))
    assert ("x",) not in again and again == perf._link_loads(s, PerfOptions(Mode.DECODE))
    prefill = perf.link_loads(s, PerfOptions(Mode.PREFILL))
    assert prefill == perf._link_loads(s, PerfOptions(Mode.PREFILL)) != again
    other = dataclasses.replace(s, steps=s.steps[:len(s.steps) // 2])
    assert perf.link_loads(other, PerfOptions(Mode.PREFILL)) == perf._link_loads(
        other, PerfOptions(Mode.PREFILL)) != prefill


# --- shared ports: one off-chip port per wafer, one inter-wafer port per wafer and direction ------

# (model, SRAM per core, grid side, context): mesh8x8 shrunk until several blocks stream
STREAMING = [("llama-tiny", 16 * 1024, 4, 1024), ("gpt2-tiny", 32 * 1024, 4, 2048)]


@functools.cache
def streaming(model: str, sram: int, side: int, context: int):
    t = load_target("mesh8x8")
    t = dataclasses.replace(t, core=dataclasses.replace(t.core, sram_bytes=sram),
                            grid=dataclasses.replace(t.grid, rows=side, cols=side))
    return compile_model(model, t, CompileOptions(tiling=TilingOptions(context=context)))


def _kv_reads(r, target=None):
    kv = {lt.layer: lt.kv_bytes for lt in r.tiled.layers if lt.kv_bytes}
    return streamed_kv_cycles(r.schedule, target or r.target, kv)


@pytest.mark.parametrize("case", STREAMING)
def test_decode_is_never_faster_than_the_offchip_port(case):
    """All off-chip bytes of a decode token (streamed weights and KV cache, token I/O) pass one
    port: the step takes at least bytes / bandwidth, however many blocks stream."""
    r = streaming(*case)
    assert sum(mode != "resident" for _, mode in r.schedule.residency) >= 2
    t = r.target
    port = r.metrics.offchip_bytes_per_token / t.offchip.bandwidth_bytes_per_s * t.core.clock_hz
    assert r.estimates[Mode.DECODE].cycles >= port
    assert estimate(r.schedule, t, PerfOptions(Mode.DECODE), _kv_reads(r)).cycles >= port


@pytest.mark.parametrize("case", STREAMING)
def test_a_faster_offchip_port_speeds_up_a_streaming_model(case):
    r = streaming(*case)
    better = _improved(r.target, "offchip.bandwidth_bytes_per_s", 2)
    base = estimate(r.schedule, r.target, PerfOptions(Mode.DECODE), _kv_reads(r)).cycles
    decode = PerfOptions(Mode.DECODE)
    assert estimate(r.schedule, better, decode, _kv_reads(r, better)).cycles < base


def _schedule(target, regions, steps, residency=()):
    return Schedule("hand", target.name, tuple(Region(n, w, 0, 0, 1, 1) for n, w in regions),
                    tuple(steps), tokens=1, batch=1, context=1, residency=tuple(residency))


def test_streamed_kv_reads_of_two_regions_queue_on_the_port():
    t = load_target("mesh8x8")  # off-chip: 1 byte per cycle
    s = _schedule(t, [("a", 0), ("b", 0)],
                  [Step(i, "compute", name, op_kind="MatMul", scaling=ATTENTION)
                   for i, name in enumerate("ab")], [("a", "stream_kv"), ("b", "stream_kv")])
    reads = streamed_kv_cycles(s, t, {"a": 10_000, "b": 10_000})
    assert sorted(reads) == [0, 1]
    assert timeline(s, t, PerfOptions(Mode.DECODE), reads).makespan >= 20_000


@pytest.mark.parametrize("pairs", [[("a", "b"), ("a", "c")], [("b", "a"), ("c", "a")]],
                         ids=["one sender", "one receiver"])
def test_transfers_between_wafers_queue_on_a_wafers_port(pairs):
    t = load_target("mesh8x8-x2")  # wafer links: 1 byte per cycle per wafer and direction
    t = dataclasses.replace(t, wafers=dataclasses.replace(t.wafers, count=3))
    s = _schedule(t, [("a", 0), ("b", 1), ("c", 2)],
                  [Step(i, "wafer_send", src, dst=dst, nbytes=10_000)
                   for i, (src, dst) in enumerate(pairs)])
    assert timeline(s, t, PerfOptions(Mode.DECODE)).makespan >= 20_000


def _chain(t, rows: int, cols: int, axis: str, setup_weight: bool = False):
    """load x -> reduce along `axis` -> matmul (reading a weight loaded at setup) on one region."""
    region = Region("a", 0, 0, 0, rows, cols)
    steps = [Step(0, "load", "a", nbytes=64),
             Step(1, "collective", "a", op_kind="reduce", axis=axis, deps=(0,), nbytes=4096),
             Step(2, "compute", "a", op_kind="MatMul", deps=(1,), flops=1 << 20)]
    if setup_weight:
        steps = [Step(0, "load", "a", phase="setup", nbytes=64, scaling="fixed"),
                 Step(1, "compute", "a", op_kind="MatMul", deps=(0,), flops=1 << 20)]
    return Schedule("hand", t.name, (region,), tuple(steps), tokens=1, batch=1, context=1)


def test_a_collective_along_a_one_core_axis_is_free_and_fused():
    t = load_target("mesh8x8")
    over = t.runtime.step_overhead_cycles
    lone = timeline(_chain(t, 1, 4, "r"), t, PerfOptions(Mode.DECODE))
    spread = timeline(_chain(t, 4, 1, "r"), t, PerfOptions(Mode.DECODE))
    assert lone.ends[1] == lone.starts[1] + over  # the reduce opens the phase, moves nothing
    assert lone.ends[2] - lone.starts[2] == (1 << 20) // (4 * 8)  # matmul fused, no overhead
    assert spread.ends[1] - spread.starts[1] > over  # 4 cores along r: hops and bytes
    assert spread.ends[2] - spread.starts[2] > (1 << 20) // (4 * 8)  # waits on a real phase


def test_a_weight_loaded_at_setup_opens_no_phase():
    t = load_target("mesh8x8")
    tl = timeline(_chain(t, 2, 2, "r", setup_weight=True), t, PerfOptions(Mode.DECODE))
    flops_cycles = (1 << 20) // (4 * 8)
    assert tl.makespan == flops_cycles + t.runtime.step_overhead_cycles  # the token's first step


@pytest.mark.parametrize("case", CASES[:5])
def test_the_breakdown_adds_up_to_the_makespan(case):
    """Where the cycles go: per layer and category, the critical path's cycles, summing to the
    makespan in both modes, every category >= 0, compute only where there are FLOPs."""
    r = compiled(*case)
    for mode in (Mode.DECODE, Mode.PREFILL):
        tl = r.timelines[mode]
        rows = breakdown(r.schedule, r.target, tl)
        assert sum(x.total for x in rows) == tl.makespan
        assert all(v >= 0 for x in rows for v in dataclasses.astuple(x)[1:])
        assert {x.layer for x in rows} <= {reg.name for reg in r.schedule.regions}
        assert abs(sum(shares(rows).values()) - 1) < 1e-9


@pytest.mark.parametrize("spec, lines", [((None, "r", None, "c"), 4), ((None, None, None, "c"), 1)],
                         ids=["heads over rows", "whole on each line"])
def test_an_append_moves_each_lines_slice_of_the_new_kv(spec, lines):
    """A K/V split over the other axis like its cache reaches position t's core in slices, one
    per line along the cache's axis, all lines at once: its bytes over a link are the slice's
    (Llama 3 8B's 8,192-byte K on 199 x 84: 2,274 -> 237 cycles), its hops the axis's."""
    t = load_target("mesh8x8")
    region = Region("a", 0, 0, 0, 4, 8)
    ref = TensorRef("new", spec)
    step = Step(0, "append", "a", reads=(ref, TensorRef("cache", spec)), op_kind="append",
                axis="c", nbytes=4096, scaling="fixed")
    s = Schedule("hand", t.name, (region,), (step,), tokens=1, batch=1, context=1)
    cost = step_cycles(step, s, t, 1.0) - t.runtime.step_overhead_cycles
    hops = 7 * t.links.hop_latency_cycles
    assert cost == hops + math.ceil(4096 / lines / t.links.bytes_per_cycle)
