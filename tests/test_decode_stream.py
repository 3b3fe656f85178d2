"""A KV cache that streams (issue 14 item 1): when the cache at --context does not fit resident,
the decode schedule writes each step's K/V back to the off-chip cache and loads the cache in
chunks for attention; the executor runs those steps with per-core memory enforced and verify
checks every token against ONNX Runtime. Target: mesh8x8 with 20 KiB cores (tests/targets/),
where llama-tiny's cache is resident at context 256 and streams at 2048."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
from pathlib import Path

from compiler.cli import main
from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.outdir.trace import check_trace
from compiler.placement.problem import Residency
from compiler.schedule.decode import offchip_bytes, with_weights
from compiler.tiling.candidates import TilingOptions
from compiler.verify import Artifact, VerifyOptions
from compiler.verify.decode import verify_decode

TARGET = str(Path(__file__).parent / "targets" / "mesh8x8-20k.toml")
STREAMING = {Residency.STREAM_KV.value, Residency.STREAM_ALL.value}


@functools.cache
def compiled(context: int):
    opts = CompileOptions(tiling=TilingOptions(context=context, prompt_resident=True),
                          solver=SolverOptions(time_limit_s=10))
    return compile_model("llama-tiny", TARGET, opts)


def _streamed(r) -> set[str]:
    return {region for region, mode in r.decode.schedule.residency if mode in STREAMING}


def _cache_steps(r):
    """(write-backs, token-phase cache loads) of the decode schedule."""
    s, caches = r.decode.schedule, {c.name for c in r.decode.graph.caches}
    backs = [st for st in s.steps if st.kind == "store" and st.writes]
    loads = [st for st in s.steps if st.kind == "load" and st.phase == "token"
             and any(st.writes[0].tensor.startswith(c) for c in caches)]
    return backs, loads


def test_a_streamed_cache_is_written_back_and_loaded_in_chunks():
    r = compiled(2048)
    assert _streamed(r) == {c.layer for c in r.decode.graph.caches}
    backs, loads = _cache_steps(r)
    dg = r.decode.graph
    assert sorted(st.writes[0].tensor for st in backs) == sorted(c.name for c in dg.caches)
    assert all(st.op_kind == "append" and st.nbytes > 0 for st in backs)
    assert not [st for st in r.decode.schedule.steps if st.kind == "append"]  # none in SRAM
    for c in dg.caches:
        chunks = [ch for ch in dg.streams if ch.cache == c.name]
        assert len(chunks) > 1 and chunks[0].start == 0 and chunks[-1].stop == 2048
        assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:], strict=False))
        mine = [st for st in loads if st.writes[0].tensor in {ch.name for ch in chunks}]
        back = next(st for st in backs if st.writes[0].tensor == c.name)
        assert len(mine) == len(chunks) and all(st.deps == (back.id,) for st in mine)
        # the chunks move the whole cache, once per decode step
        whole = r.target.tensor_bytes(dataclasses.replace(
            dg.graph.tensor(chunks[0].name), shape=tuple(
                2048 if i == c.axis else d
                for i, d in enumerate(dg.graph.tensor(chunks[0].name).shape))))
        assert sum(st.nbytes for st in mine) == whole


def test_a_cache_that_fits_does_not_stream():
    r = compiled(256)
    assert not _streamed(r) and not r.decode.graph.streams
    backs, loads = _cache_steps(r)
    assert not backs and not loads
    assert len([st for st in r.decode.schedule.steps if st.kind == "append"]) == \
        len(r.decode.graph.caches)


def test_offchip_bytes_grow_with_context_when_streaming():
    small, big = compiled(2048), compiled(4096)
    assert _streamed(small) and _streamed(big)
    resident = offchip_bytes(compiled(256).decode.schedule)
    assert resident < offchip_bytes(small.decode.schedule) < offchip_bytes(big.decode.schedule)
    cache = sum(small.target.tensor_bytes(small.decode.graph.graph.tensor(ch.name))
                for ch in small.decode.graph.streams)
    assert offchip_bytes(small.decode.schedule) - resident >= cache
    assert big.decode.estimate.tokens_per_s < small.decode.estimate.tokens_per_s


def test_streamed_decode_matches_onnx_runtime_within_the_tiling_estimate():
    r = compiled(2048)
    art = Artifact(r.graph.source or r.graph.name, r.graph, r.target, r.schedule)
    dg = with_weights(r.decode.graph, art.source, r.graph)
    rep = verify_decode(art, dg, r.decode.schedule, 3, VerifyOptions())
    assert rep.passed, "\n".join(rep.lines())
    assert all(s.check.max_abs <= 1e-4 for s in rep.steps)
    layers = {lt.layer: i for i, lt in enumerate(r.tiled.layers)}
    for region, peak in rep.peak_bytes:  # one chunk at a time: the double buffer's half
        assert 0 < peak <= r.placement.option(r.problem, layers[region]).per_core_bytes


def test_a_dropped_write_back_is_caught_by_verify():
    """Without the write-back the step's own K never reaches the cache it attends over."""
    r = compiled(2048)
    s = r.decode.schedule
    back = next(st for st in s.steps if st.kind == "store" and st.writes)
    # the store no longer writes the cache: an ordinary store of the new K that nobody reads
    steps = tuple(dataclasses.replace(st, writes=()) if st.id == back.id else st
                  for st in s.steps)
    art = Artifact(r.graph.source or r.graph.name, r.graph, r.target, r.schedule)
    dg = with_weights(r.decode.graph, art.source, r.graph)
    rep = verify_decode(art, dg, dataclasses.replace(s, steps=steps), 3, VerifyOptions())
    assert not rep.passed and rep.first_diverging_step == 1


def test_cli_compile_verify_decode_with_a_streamed_cache(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["-q", "compile", "llama-tiny", "-t", TARGET, "-o", str(out), "--context",
                 "2048", "--verify", "--decode", "3", "--time-limit", "10"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "decode PASSED" in text and "context 2048" in text
    doc = json.loads((out / "verify-decode.json").read_text())
    assert doc["passed"] and doc["tokens"] == doc["reference_tokens"]
    sched = json.loads((out / "schedule.json").read_text())
    assert set(sched["residency"].values()) & STREAMING
    trace = json.loads((out / "trace.json").read_text())
    assert not check_trace(trace)
    names = {ev["name"] for ev in trace["traceEvents"] if ev.get("ph") == "X"}
    assert "store kv_cache.block.0.k" in names and "load kv_cache.block.0.k.chunk0" in names
    # the report counts the chunks and write-backs as each streamed layer's off-chip traffic
    with (out / "report-data" / "layers.csv").open() as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    steps = sched["decode"]["steps"]
    for layer, mode in sched["residency"].items():
        if mode not in STREAMING:
            continue
        loads = sum(st["nbytes"] for st in steps if st["kind"] == "load" and st["region"] == layer
                    and st["writes"][0]["tensor"].startswith("kv_cache."))
        backs = sum(st["nbytes"] for st in steps if st["kind"] == "store"
                    and st["region"] == layer and st.get("writes"))
        assert loads > 0 and backs > 0
        assert int(rows[layer]["input_bytes_per_token"]) >= loads
        assert int(rows[layer]["output_bytes_per_token"]) >= backs
    assert main(["-q", "verify", str(out), "--decode", "3"]) == 0  # from OUT: same chunks


def test_a_form_is_skipped_only_when_its_offchip_floor_exceeds_a_scheduled_makespan():
    """decode._bounded_plans (issue 18): every form's off-chip floor is at most its built
    decode step's makespan, so the form the compile keeps is the one scheduling every form
    would keep; and the floor does skip a form here (the cache after the grouped-query
    repeat moves four times the bytes)."""
    from compiler.schedule.decode import (
        _bounded_plans,
        decode_forms,
        offchip_floor,
        plan_for,
        with_streams,
    )

    r = compiled(2048)
    forms = decode_forms("llama-tiny", r.graph, 2048)
    built = [plan_for(dg, r.schedule, r.target) for dg in forms]
    for dg, plan in zip(forms, built, strict=True):
        floor = offchip_floor(with_streams(dg, r.schedule, r.target), r.schedule, r.target)
        assert 0 < floor <= plan.estimate.cycles
    bounded = _bounded_plans(forms, r.schedule, r.target)
    kept = [p for p in bounded if not isinstance(p, str)]
    assert len(kept) < len(forms)
    fastest = max(built, key=lambda p: p.estimate.tokens_per_s)
    chosen = max(kept, key=lambda p: p.estimate.tokens_per_s)
    assert (chosen.graph.form, chosen.estimate.cycles) == (fastest.graph.form,
                                                           fastest.estimate.cycles)
    assert chosen.schedule == fastest.schedule
