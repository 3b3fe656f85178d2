"""Autoregressive decode (issue 14): the decode schedule, greedy generation on the executor with
the KV cache in per-core SRAM, checked step by step against ONNX Runtime (no-cache model on the
growing sequence), faults in the cache, and decode performance from the decode schedule."""

from __future__ import annotations

import dataclasses
import functools
import json
import re

import numpy as np
import pytest

from compiler.cli import main
from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.executor.generate import generate, start, step
from compiler.executor.run import CacheOverflow
from compiler.outdir.trace import check_trace
from compiler.schedule.build import FIXED, Step
from compiler.schedule.decode import with_weights
from compiler.tiling.candidates import TilingOptions
from compiler.verify import Artifact, VerifyOptions
from compiler.verify.decode import program, verify_decode

STEPS = 8


@functools.cache
def compiled(model: str, context: int = 16 + STEPS):
    opts = CompileOptions(tiling=TilingOptions(context=context, prompt_resident=True),
                          solver=SolverOptions(time_limit_s=10))
    return compile_model(model, "mesh8x8", opts)


_RUNNABLE: dict[int, object] = {}


def _dg(r):
    """The compile's decode graph with weights (the plan's is shape-only), loaded once."""
    if id(r) not in _RUNNABLE:
        _RUNNABLE[id(r)] = with_weights(r.decode.graph, r.graph.source or r.graph.name, r.graph)
    return _RUNNABLE[id(r)]


def _art(r) -> Artifact:
    return Artifact(r.graph.source or r.graph.name, r.graph, r.target, r.schedule)


@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny", "llama-tiny-opset23"])
def test_greedy_decode_matches_onnx_runtime(model):
    r = compiled(model)
    assert r.decode is not None
    rep = verify_decode(_art(r), _dg(r), r.decode.schedule, STEPS, VerifyOptions())
    assert rep.passed, "\n".join(rep.lines())
    assert len(rep.steps) == STEPS + 1  # prefill's token, then one per decode step
    assert [s.token for s in rep.steps] == [s.ref_token for s in rep.steps]
    assert all(s.check.max_abs <= 1e-4 for s in rep.steps)
    assert [s.position for s in rep.steps] == list(range(15, 16 + STEPS))


@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny"])
def test_decode_schedule_holds_a_resident_cache_appended_in_place(model):
    r = compiled(model)
    s, dg = r.decode.schedule, r.decode.graph
    appends = [st for st in s.steps if st.kind == "append"]
    assert len(appends) == len(dg.caches) == 2 * len(r.graph.blocks())
    for c, st in zip(dg.caches, appends, strict=True):
        cache = dg.graph.tensor(c.name)
        assert cache.shape[c.axis] == r.decode.schedule.context == 16 + STEPS
        assert st.writes[0].tensor == c.name and st.reads[1].tensor == c.name
        assert st.region == c.layer
        loads = [x for x in s.steps if x.kind == "load" and x.writes[0].tensor == c.name]
        assert [x.phase for x in loads] == ["setup"]  # resident: allocated once
        assert any(st.writes[0].spec)  # split over the region's cores, not replicated
    assert all(st.scaling == FIXED for st in s.steps)
    assert dg.graph.tensor(r.graph.outputs[0]).shape[1] == 1  # the last token's logits


def test_attention_op_reads_the_caches_and_a_per_step_mask():
    """The ONNX Attention op (opset 23) in decode: K and V come from the resident caches, the
    causal frontier from a boolean mask fed at t (the op's own is_causal would be top-left)."""
    r = compiled("llama-tiny-opset23")
    dg = r.decode.graph
    ops = [op for op in dg.graph.ops if op.kind == "Attention"]
    assert len(ops) == len(r.graph.blocks()) and len(dg.masks) == len(ops)
    caches = {c.name for c in dg.caches}
    for op, (mask, window) in zip(ops, dg.masks, strict=True):
        assert set(op.inputs[1:3]) <= caches and op.inputs[3] == mask and window == -1
        assert not op.attr("is_causal", 0)
        assert dg.graph.tensor(mask).shape == (1, 1, 1, r.decode.schedule.context)
    assert len([st for st in r.decode.schedule.steps if st.kind == "append"]) == len(caches)


@pytest.mark.parametrize("window", [-1, 0, 3])
def test_decode_mask_rows_are_the_causal_window_after_a_cache(window):
    """The decode mask of position t (a row computed from t, no [context, context] table)
    allows what Attention(is_causal, left_window_size) allows a query after t cached keys (the
    executor's kernel), and masks the empty rows past t."""
    from compiler import ir
    from compiler.executor.kernels import _attention_bias
    from compiler.schedule.decode_attention import mask_row

    context = 10
    op = ir.Op("a", "Attention", ("q", "k", "v"), ("y",),
               (("is_causal", 1), ("left_window_size", window)))
    for t in range(context):
        row = mask_row(context, window, t)
        assert row.shape == (1, 1, 1, context) and row.dtype == np.bool_
        bias = _attention_bias(op, None, None, 1, t + 1, t).reshape(-1)
        want = np.concatenate([bias == 0, np.zeros(context - t - 1, bool)])
        assert row.reshape(-1).tolist() == want.tolist()


def test_decode_mask_row_at_a_long_context_is_one_row():
    """At 128k context the per-step mask is 128k booleans (a [context, context] table was
    16 GB): the row of t allows exactly the window's keys up to t."""
    from compiler.schedule.decode_attention import mask_row

    context, t = 131072, 100000
    row = mask_row(context, 4095, t).reshape(-1)
    assert row.nbytes == context
    assert np.flatnonzero(row).tolist() == list(range(t - 4095, t + 1))
    assert np.flatnonzero(mask_row(context, -1, t)).size == t + 1


def test_decode_peak_is_counted_and_within_the_tiling_estimate():
    """The cache lives in the decode machine's per-core SRAM; its fullest core stays within what
    the tiling (KV at the context + activations) promised the placer."""
    for model in ("gpt2-tiny", "llama-tiny"):
        r = compiled(model)
        prog = program(_art(r), _dg(r), r.decode.schedule, "fp32")
        gen = generate(prog, r.target, list(range(16)), 3)
        layers = {lt.layer: i for i, lt in enumerate(r.tiled.layers)}
        for region, peak in gen.peak_bytes.items():
            opt = r.placement.option(r.problem, layers[region])
            assert 0 < peak <= opt.per_core_bytes, (model, region, peak, opt.per_core_bytes)
        caches = {c.layer for c in r.decode.graph.caches}
        cache_free = max(p for reg, p in gen.peak_bytes.items() if reg not in caches)
        assert min(gen.peak_bytes[c] for c in caches) > 0 and cache_free > 0


CONTEXT = 64  # 8 times the prompt: the decode step's cache-long tensors outgrow the prompt's


@pytest.mark.parametrize(("model", "target"), [
    ("gpt2-tiny", "mesh8x8"), ("gpt2-tiny", "wse3"), ("llama-tiny", "mesh8x8"),
    ("llama-tiny", "wse3"), ("gpt2-tiny-past", "mesh8x8"), ("llama-tiny-past", "wse3"),
    ("tests/fixtures/hf/mistral_dynamo_op18_dynamic.onnx", "mesh8x8"),
    ("tests/fixtures/hf/qwen2_dynamo_op18_dynamic_withpast.onnx", "wse3")])
@pytest.mark.parametrize("resident", [False, True])
def test_one_decode_step_estimate_bounds_the_decode_peak(model, target, resident):
    """Tiled for one decode step (or the whole prompt), every region's fullest core in the decode
    machine stays within the tiling's per-core estimate for each cache form the decode schedule
    may take (under grouped-query attention: the cache after the repeat and before it, the
    repeat running on the cache every step; the spread forms when the tiling priced them,
    i.e. only when the other forms do not fit); the placer packed by the form that holds
    least, and the form the compile keeps fits every region."""
    from compiler.frontend import DimRequest, FrontendOptions
    from compiler.schedule.decode import decode_forms, plan_for

    opts = CompileOptions(frontend=FrontendOptions(DimRequest(batch=1, seq_len=8)),
                          tiling=TilingOptions(context=CONTEXT, prompt_resident=resident),
                          solver=SolverOptions(method="first-fit"))
    r = compile_model(model, target, opts)
    forms = decode_forms(r.graph.source or r.graph.name, r.graph, CONTEXT)
    assert not isinstance(forms, str), forms
    assert len(forms) == (4 if "llama" in model or "mistral" in model or "qwen" in model else 3)
    layers = {lt.layer: i for i, lt in enumerate(r.tiled.layers)}
    priced = {f for lt, o in zip(r.tiled.layers, r.placement.options, strict=True)
              for f, _ in lt.candidates[o].form_bytes}
    assert priced == {dg.form for dg in forms if not dg.spread}  # these models fit without
    for dg in (dg for dg in forms if dg.form in priced):
        plan = plan_for(dg, r.schedule, r.target)
        prog = program(_art(r), with_weights(dg, r.graph.source or r.graph.name, r.graph),
                       plan.schedule, "fp32")
        gen = generate(prog, r.target, [3, 1, 4], 6)  # a short prompt: decode steps only
        assert set(gen.peak_bytes) == set(layers)
        chosen = {lt.layer: lt.candidates[o]
                  for lt, o in zip(r.tiled.layers, r.placement.options, strict=True)}
        bound = {region: max((n for f, n in chosen[region].form_bytes if f == dg.form),
                             default=chosen[region].per_core_bytes) for region in layers}
        over = {region: (peak, bound[region]) for region, peak in gen.peak_bytes.items()
                if peak > bound[region]}
        assert not over, (dg.form, over)
        assert all(chosen[region].per_core_bytes <= bound[region] for region in layers)
    assert all(c.fits_form(r.decode.graph.form, r.target.usable_bytes_per_core)
               for c in chosen.values())


def test_cache_overflow_is_a_named_error():
    r = compiled("gpt2-tiny")
    prog = program(_art(r), _dg(r), r.decode.schedule, "fp32")
    with pytest.raises(CacheOverflow, match="--context"):
        generate(prog, r.target, list(range(16)), STEPS + 2)
    m = start(prog, r.target, {}, "fp32")
    with pytest.raises(CacheOverflow, match="KV cache overflow: .* position 24 .* 24 positions"):
        step(prog, m, 1, 16 + STEPS)
    # the append itself refuses a position past its cache (the executor's own check)
    m.position = 16 + STEPS
    victim = next(st for st in r.decode.schedule.steps if st.kind == "append")
    from compiler.executor.run import _STEP

    with pytest.raises(CacheOverflow, match=f"KV cache overflow at step {victim.id} "):
        for st in r.decode.schedule.steps:
            if st.phase != "setup" and st.id <= victim.id:
                feed = {"input_ids": np.asarray([[1]])}
                feed.update({n: np.asarray(prog.tables[n])[tuple(
                    slice(0, 1) if i in q else slice(None) for i in range(prog.tables[n].ndim))]
                    for n, q in prog.feeds})
                _STEP[st.kind](m, st, feed)


@pytest.mark.parametrize("which", [0, 3])  # block.0's K, block.1's V
def test_a_dropped_cache_append_is_caught_by_verify(which):
    """Fault injection: an append becomes a no-op relayout of the cache."""
    r = compiled("gpt2-tiny")
    s = r.decode.schedule
    victim = [st for st in s.steps if st.kind == "append"][which]
    cache = victim.reads[1]
    noop = Step(victim.id, "collective", victim.region, reads=(cache,), writes=(cache,),
                deps=victim.deps, op_kind="relayout", axis="r", scaling=FIXED)
    broken = dataclasses.replace(s, steps=tuple(noop if st.id == victim.id else st
                                                for st in s.steps))
    rep = verify_decode(_art(r), _dg(r), broken, 3, VerifyOptions())
    assert not rep.passed
    assert rep.first_diverging_step == 1  # prefill is right; the first decode step reads junk
    assert rep.steps[0].passed and not rep.steps[1].check.passed
    assert rep.diverging_layer == victim.region == f"block.{which // 2}"  # where it was dropped
    assert f"layer {victim.region}" in rep.summary()


def test_the_prefill_writes_the_caches_that_decode_starts_from():
    """Prefill's own cache_write steps fill each block's K and V cache (positions 0..S-1, in
    the decode schedule's layout on the attention region, counted against its cores' memory);
    the decode machine takes over those tiles."""
    from compiler.executor.run import run_schedule
    from compiler.schedule.build import build_schedule
    from compiler.tiling.tiles import gather

    r = compiled("llama-tiny")
    writes = [st for st in r.schedule.steps if st.kind == "cache_write"]
    loads = {st.writes[0].tensor: st for st in r.decode.schedule.steps if st.kind == "load"}
    assert len(writes) == len(r.schedule.caches) == len(r.decode.graph.caches) == 4
    for c, st in zip(r.decode.graph.caches, writes, strict=True):
        assert st.writes[0].tensor == c.name and st.reads[0].tensor == c.prefill
        assert st.region == c.layer == loads[c.name].region
        assert st.writes[0].spec == loads[c.name].writes[0].spec == st.reads[0].spec
    prompt = np.asarray([list(range(16))], np.int64)
    keep = frozenset(c.prefill for c in r.decode.graph.caches)
    run = run_schedule(r.schedule, r.graph, r.target, {"input_ids": prompt}, keep=keep)
    for c in r.decode.graph.caches:
        region, spec, tiles = run.caches[c.name]
        whole = gather(tiles, spec, r.decode.graph.graph.tensor(c.name).shape)
        head = np.take(whole, range(16), axis=c.axis)
        assert np.array_equal(head, run.values[c.prefill]) and region == c.layer
        assert not np.take(whole, range(16, whole.shape[c.axis]), axis=c.axis).any()
    bare = build_schedule(r.graph, r.tiled, r.problem, r.placement, r.target)
    assert not bare.caches and not [st for st in bare.steps if st.kind == "cache_write"]
    without = run_schedule(bare, r.graph, r.target, {"input_ids": prompt})
    for layer in {c.layer for c in r.decode.graph.caches}:  # the caches take SRAM in prefill
        assert run.peak_bytes[layer] > without.peak_bytes[layer]


def _shown(spec) -> str:
    return re.escape("[" + ",".join(a or "-" for a in spec) + "]")


def _prefill_mutated(r, mutate):
    return dataclasses.replace(r.schedule, steps=tuple(mutate(list(r.schedule.steps))))


@pytest.mark.parametrize("fault", ["dropped", "wrong region", "wrong layout"])
def test_a_dropped_or_misplaced_prefill_cache_write_is_caught(fault):
    """Fault injection: the prefill's cache write of block.0's K is dropped (a no-op relayout
    of its source), runs on another region, or writes the cache split the other way (its tiles
    on other cores): the executor refuses, naming the cache, before any decode step reads it."""
    from compiler.executor.run import ScheduleFault

    r = compiled("llama-tiny")
    victim = next(st for st in r.schedule.steps if st.kind == "cache_write")
    src, cache = victim.reads[0], victim.writes[0]

    def flip(spec):
        return tuple({"r": "c", "c": "r"}.get(a) if a else None for a in spec)

    changed = {
        "dropped": Step(victim.id, "collective", victim.region, reads=(src,), writes=(src,),
                        deps=victim.deps, op_kind="relayout", axis="r"),
        "wrong region": dataclasses.replace(victim, region="block.1"),
        "wrong layout": dataclasses.replace(victim, writes=(dataclasses.replace(
            cache, spec=flip(cache.spec)),)),
    }[fault]
    pattern = {"dropped": f"wrote no KV cache {cache.tensor}",
               "wrong region": f"step {victim.id} .*is not resident on block.1",
               "wrong layout": f"prefill wrote KV cache {cache.tensor} on block.0 as "
                               f"{_shown(flip(cache.spec))} but the decode schedule holds it on "
                               f"block.0 as {_shown(cache.spec)}"}[fault]
    broken = _prefill_mutated(r, lambda steps: [changed if st.id == victim.id else st
                                                for st in steps])
    art = Artifact(r.graph.source or r.graph.name, r.graph, r.target, broken)
    prog = program(art, _dg(r), r.decode.schedule, "fp32")
    with pytest.raises(ScheduleFault, match=pattern):
        generate(prog, r.target, list(range(16)), 2)
    with pytest.raises(ScheduleFault, match=pattern):  # and so does verify --decode
        verify_decode(art, _dg(r), r.decode.schedule, 2, VerifyOptions())


def test_decode_throughput_comes_from_the_decode_schedule():
    from compiler.schedule.decode import load_decode_graph, plan_for

    r = compiled("gpt2-tiny")
    assert r.estimates["decode"] == r.decode.estimate
    assert r.estimates["decode"].cycles == r.decode.timeline.makespan
    assert r.estimates["decode"].context == 16 + STEPS
    # the same placement at longer contexts: attention over more cached keys costs more
    plans = [plan_for(load_decode_graph("gpt2-tiny", r.graph, c), r.schedule, r.target)
             for c in (24, 1024, 8192)]
    cycles = [p.estimate.cycles for p in plans]
    assert cycles[0] == r.decode.estimate.cycles and cycles[0] < cycles[1] < cycles[2]
    assert [p.estimate.flops for p in plans] == sorted({p.estimate.flops for p in plans})
    # TTFT is the prefill's
    assert r.estimates["prefill"].ttft_s == r.timelines["prefill"].makespan / r.target.core.clock_hz


def test_no_decode_schedule_for_an_encoder():
    assert compile_model("bert-tiny", "mesh8x8",
                         CompileOptions(solver=SolverOptions(time_limit_s=10))).decode is None


def test_cli_compile_verify_decode_generate(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["-q", "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out), "--verify",
                 "--decode", "4", "--time-limit", "10", "--no-report"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "decode PASSED" in text and "context 20" in text  # --context defaults to 16 + 4
    doc = json.loads((out / "verify-decode.json").read_text())
    assert doc["passed"] and doc["tokens"] == doc["reference_tokens"] and len(doc["steps"]) == 5
    sched = json.loads((out / "schedule.json").read_text())
    assert sched["schema_version"] == "1.1" and sched["decode"]["context"] == 20
    assert not check_trace(json.loads((out / "trace.json").read_text()))
    # verify from OUT again: the same tokens; too many steps is refused before running
    assert main(["-q", "verify", str(out), "--decode", "4"]) == 0
    capsys.readouterr()
    assert main(["-q", "verify", str(out), "--decode", "4", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)  # one document: verify's report and decode's
    assert both["outputs"][0]["name"] == "logits" and both["decode"]["passed"]
    assert main(["-q", "verify", str(out), "--decode", "5"]) == 2
    err = capsys.readouterr().err
    assert "--context >= 21" in err and err.count("\n") == 1
    assert main(["-q", "generate", str(out), "--prompt-ids", "1,2,3", "-n", "6"]) == 0
    ids = capsys.readouterr().out.strip().split(",")
    assert len(ids) == 6 and all(0 <= int(i) < 256 for i in ids)


@pytest.mark.parametrize(("model", "context", "code", "message"), [
    ("bert-tiny", "32", 4, "no decode schedule"),  # not a causal LM
    ("gpt2-tiny", "20", 2, "--context >= 24"),  # 16 + 8 positions do not fit 20
])
def test_cli_decode_refused_before_writing(tmp_path, capsys, model, context, code, message):
    out = tmp_path / "out"
    got = main(["-q", "compile", model, "-t", "mesh8x8", "-o", str(out), "--verify",
                "--decode", "8", "--context", context, "--time-limit", "10"])
    err = capsys.readouterr().err
    assert got == code and not out.exists() and list(tmp_path.iterdir()) == []
    assert message in err and err.count("\n") == 1


def test_generated_tokens_match_a_numpy_rerun_of_the_whole_sequence():
    """Generation from a prompt shorter than the compiled one (prefill through decode steps)
    gives the tokens that ORT gives on the growing sequence."""
    from compiler.verify import run_reference

    r = compiled("llama-tiny")
    prog = program(_art(r), _dg(r), r.decode.schedule, "fp32")
    prompt = [5, 17, 99]
    gen = generate(prog, r.target, prompt, 5)
    seq = list(prompt)
    for tok in gen.tokens:
        ref = run_reference("llama-tiny", {"input_ids": np.asarray([seq], np.int64)})["logits"]
        assert int(np.argmax(ref[0, -1])) == tok
        seq.append(tok)


def _mutated(r, mutate) -> object:
    s = r.decode.schedule
    return dataclasses.replace(s, steps=tuple(mutate(list(s.steps))))


def test_a_stale_cache_read_is_caught_by_verify():
    """The first K append runs after the MatMul that reads the cache: that MatMul sees the
    cache without the step's own key."""
    r = compiled("gpt2-tiny")

    def stale(steps):
        i = next(k for k, st in enumerate(steps) if st.kind == "append")
        cache = steps[i].writes[0].tensor
        j = next(k for k, st in enumerate(steps) if k > i and st.kind == "compute"
                 and any(ref.tensor == cache for ref in st.reads))
        return steps[:i] + steps[i + 1:j + 1] + [steps[i]] + steps[j + 1:]

    rep = verify_decode(_art(r), _dg(r), _mutated(r, stale), 2, VerifyOptions())
    assert not rep.passed and rep.first_diverging_step == 1
    assert rep.diverging_layer == "block.0"


def test_a_cache_tile_on_the_wrong_core_is_a_schedule_fault():
    """The append names the cache split the other way (its tiles on other cores), or runs on
    another region: the executor refuses the step."""
    from compiler.executor.run import ScheduleFault

    r = compiled("llama-tiny")
    victim = next(st for st in r.decode.schedule.steps if st.kind == "append")
    other = next(c.layer for c in r.decode.graph.caches if c.layer != victim.region)

    def flip(spec):
        return tuple({"r": "c", "c": "r"}.get(a) if a else None for a in spec)

    def swapped(steps):
        new, cache = victim.reads
        ref = dataclasses.replace(cache, spec=flip(cache.spec))
        return [dataclasses.replace(st, reads=(new, ref), writes=(ref,)) if st.id == victim.id
                else st for st in steps]

    def moved(steps):
        return [dataclasses.replace(st, region=other) if st.id == victim.id else st
                for st in steps]

    for mutate, pattern in ((swapped, "is on .* as .* but the step reads"),
                            (moved, "is not resident on")):
        prog = program(_art(r), _dg(r), _mutated(r, mutate), "fp32")
        with pytest.raises(ScheduleFault, match=f"step {victim.id} .*{pattern}"):
            generate(prog, r.target, list(range(16)), 2)


def test_an_append_at_the_wrong_position_changes_the_logits():
    """Decode steps that write (and mask, and rotate) at t + 1 instead of t give logits that
    verify's comparison with ONNX Runtime rejects."""
    from compiler.verify import compare, run_reference

    r = compiled("llama-tiny")
    prog = program(_art(r), _dg(r), r.decode.schedule, "fp32")
    prompt = [3, 1, 4, 1, 5]
    ref = run_reference("llama-tiny", {"input_ids": np.asarray([prompt], np.int64)})["logits"]
    for shift, ok in ((0, True), (1, False)):
        m = start(prog, r.target, {}, "fp32")
        for pos, tok in enumerate(prompt):
            logits = step(prog, m, tok, pos + shift * (pos > 0))
        assert compare("logits", logits, ref[:, -1], 1e-4, 1e-3).passed is ok


# --- attention_mask inputs: a [batch, context] mask per step, padding following t -------------

FIXTURES = "tests/fixtures"


@functools.cache
def compiled_file(path: str, seq: int = 8, context: int = 8 + STEPS):
    from compiler.frontend import DimRequest, FrontendOptions

    opts = CompileOptions(frontend=FrontendOptions(DimRequest(batch=1, seq_len=seq)),
                          tiling=TilingOptions(context=context, prompt_resident=True),
                          solver=SolverOptions(time_limit_s=10))
    return compile_model(path, "mesh8x8", opts)


@pytest.mark.parametrize("model", ["gpt2-tiny-mask",
                                   f"{FIXTURES}/gpt2_torchscript_op20_dynamic.onnx",
                                   f"{FIXTURES}/llama_dynamo_op18_dynamic.onnx"])
def test_decode_with_an_attention_mask_matches_onnx_runtime(model):
    """HF-style models with input_ids and attention_mask: the mask is a host feed, its rows at t
    reach the decode step, ORT gets the growing mask."""
    r = compiled(model) if not model.endswith(".onnx") else compiled_file(model)
    assert r.decode is not None
    dg = r.decode.graph
    assert dg.input_masks == ("attention_mask",) and dg.tokens == ("input_ids",)
    assert "attention_mask" not in dg.graph.inputs  # expanded on the host, rows fed per step
    keyed = [f for f in dg.feeds if f.key_axes]
    assert keyed and all(dg.graph.tensor(f.name).shape[f.key_axes[0]] == dg.context
                         for f in keyed)
    rep = verify_decode(_art(r), dg, r.decode.schedule, STEPS, VerifyOptions())
    assert rep.passed, "\n".join(rep.lines())
    assert all(s.check.max_abs <= 1e-4 for s in rep.steps)


def test_a_padded_prompt_mask_follows_every_decode_step(tmp_path):
    """A left-padded prompt: its zeros stay masked in every decode step (ORT is fed the same
    mask, grown by ones); the padding changes the tokens' logits, so a mask ignored would fail."""
    from compiler.verify import random_inputs

    r = compiled("gpt2-tiny-mask")
    inputs = random_inputs(r.graph)
    inputs["attention_mask"][0, :5] = 0
    path = tmp_path / "in.npz"
    np.savez(path, **inputs)
    dg, s = r.decode.graph, r.decode.schedule
    padded = verify_decode(_art(r), dg, s, 4, VerifyOptions(inputs=path))
    assert padded.passed, "\n".join(padded.lines())
    plain = verify_decode(_art(r), dg, s, 4, VerifyOptions())
    assert plain.prompt == padded.prompt
    prog = program(_art(r), dg, s, "fp32")
    ones, pad = (generate(prog, r.target, list(padded.prompt), 3, prompt_mask=m).logits
                 for m in ([1] * 16, [0] * 5 + [1] * 11))
    assert all(np.abs(a - b).max() > 1e-3 for a, b in zip(ones, pad, strict=True))


# --- with-past exports: past_key_values in, present out, mapped onto the resident cache --------


@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny"])
def test_a_with_past_export_decodes_onto_the_resident_cache(model):
    """MODEL-past (MODEL's weights, exported with past; llama's caches at 2 KV heads, rotary
    and mask from the past length): prefill is its graph at past length 0, the decode step
    reads the resident cache where the graph read Concat(past, new), and ORT runs its with-past
    graph step by step; the tokens are the no-cache model's."""
    r, plain = compiled(f"{model}-past"), compiled(model)
    assert r.graph.inputs == ("input_ids",)
    assert r.graph.outputs[1:] == tuple(f"present.{i}.{kv}" for i in range(2)
                                        for kv in ("key", "value"))
    assert r.decode is not None and r.decode.graph.graph.outputs == ("logits",)
    assert [c.name for c in r.decode.graph.caches] == [c.name for c in plain.decode.graph.caches]
    rep = verify_decode(_art(r), r.decode.graph, r.decode.schedule, STEPS, VerifyOptions())
    assert rep.passed, "\n".join(rep.lines())
    ref = verify_decode(_art(plain), plain.decode.graph, plain.decode.schedule, STEPS,
                        VerifyOptions())
    assert [s.token for s in rep.steps] == [s.token for s in ref.steps]


def test_the_with_past_reference_feeds_present_back_as_past():
    from compiler.verify import run_reference
    from compiler.verify.decode import _Reference

    ref = _Reference("gpt2-tiny-past", "input_ids")
    assert len(ref.pasts) == 4
    seq = [5, 17, 99, 3]
    for n in range(len(seq), len(seq) + 4):
        got = ref.last_logits(seq[:n], None, "logits")
        assert ref.state is not None and ref.state[0] == seq[:n]
        assert all(v.shape[2] == n for v in ref.state[1].values())  # the past grew to n
        want = run_reference("gpt2-tiny", {"input_ids": np.asarray([seq[:n]])})["logits"]
        np.testing.assert_allclose(got, want[:, -1], atol=1e-5)
        seq.append(int(np.argmax(got[0])))


def test_a_past_that_is_not_concatenated_is_refused_naming_its_reader(tmp_path, capsys):
    import onnx

    from compiler import zoo

    model = zoo.build("gpt2-tiny-past")
    model.graph.node.append(onnx.helper.make_node(
        "Mul", ["past_key_values.1.value", "past_key_values.1.value"], ["sq"], name="/odd/Mul"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["-q", "inspect", str(path)]) == 3
    err = capsys.readouterr().err
    assert "past_key_values.1.value is read by Mul /odd/Mul" in err and err.count("\n") == 1


def test_a_with_past_export_with_an_attention_mask_spanning_past_and_new(tmp_path, capsys):
    """HF's with-past form: attention_mask [batch, past_seq + seq] beside the pasts; at past
    length 0 its dim is the prompt's, and in decode it is the [batch, context] host feed."""
    import onnx

    from compiler import zoo

    cfg = dataclasses.replace(zoo.ZOO["gpt2-tiny"].config, past=True, attention_mask=True)
    model = zoo.build_gpt2(cfg, name="gpt2-tiny-past-mask")
    dims = [d.dim_param for d in model.graph.input[-1].type.tensor_type.shape.dim]
    assert model.graph.input[-1].name == "attention_mask" and dims == ["batch", "past_seq + seq"]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = tmp_path / "out"
    assert main(["-q", "compile", str(path), "-t", "mesh8x8", "-o", str(out), "--verify",
                 "--decode", "6", "--time-limit", "10", "--no-report"]) == 0, capsys.readouterr()
    doc = json.loads((out / "verify-decode.json").read_text())
    assert doc["passed"] and doc["tokens"] == doc["reference_tokens"]
    # from OUT again: the recorded dims bind the model without its pasts (past length 0)
    assert main(["-q", "verify", str(out), "--decode", "3"]) == 0, capsys.readouterr()


# --- HF causal-LM families (tests/fixtures/hf, tools/export_hf.py): no-cache and with-past -------

HF_DECODING = ["mistral", "qwen2", "phi", "gpt_neox", "falcon", "gptj", "bloom", "gemma2",
               "stablelm", "opt"]


@pytest.mark.parametrize("form", ["", "_withpast"])
@pytest.mark.parametrize("family", HF_DECODING)
def test_hf_family_decodes_like_onnx_runtime(family, form):
    """GQA (mistral, qwen2, gemma2), MQA (falcon), partial and interleaved rotary (phi,
    gpt_neox, gptj, stablelm), sliding windows of 8 (mistral, gemma2; the 8-token prompt and
    8 steps pass them), soft-capping (gemma2), parallel attention, ALiBi with its scores
    reshaped between the MatMul and the Softmax (bloom), learned positions from the mask's
    CumSum (opt); with-past forms run in ORT step by step. docs/performance.md lists the
    32-step runs."""
    r = compiled_file(f"{FIXTURES}/hf/{family}_dynamo_op18_dynamic{form}.onnx")
    assert r.decode is not None and r.decode.graph.input_masks == ("attention_mask",)
    rep = verify_decode(_art(r), r.decode.graph, r.decode.schedule, STEPS, VerifyOptions())
    assert rep.passed, "\n".join(rep.lines())
    assert all(s.check.max_abs <= 1e-4 for s in rep.steps)


def _alibi_slopes(heads: int) -> np.ndarray:
    """ALiBi's head slopes (Press et al.; heads a power of 2): 2^(-8 (h + 1) / heads)."""
    return 2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)


@pytest.mark.parametrize("form", ["", "_withpast"])
def test_bloom_alibi_bias_follows_the_absolute_position(form, tmp_path):
    """BLOOM: scores [B*H, q, k] (baddbmm with the ALiBi tensor) reshaped to [B, H, q, k] for
    the mask Add and the Softmax, and back; the ALiBi positions are CumSum(mask) - 1 over the
    attention mask. The decode step reads the caches through that Reshape, and the ALiBi tensor
    is a key-long feed made on the host from each step's mask: at step t its key j holds
    slope_h * (j - pad) for the prompt's real and later tokens up to t, 0 elsewhere (a
    left-padded prompt shifts the positions; a table taken at position 0 or at the prompt would
    not)."""
    from compiler.schedule.decode import mask_dependent, step_mask
    from compiler.verify import random_inputs

    r = compiled_file(f"{FIXTURES}/hf/bloom_dynamo_op18_dynamic{form}.onnx")
    dg = r.decode.graph
    alibi = [f for f in dg.feeds if f.key_axes and not f.query_axes]
    assert len(alibi) == 1 and len(dg.caches) == 2 * len(r.graph.blocks())
    assert alibi[0].name in mask_dependent(r.graph, dg.input_masks)
    shape = dg.graph.tensor(alibi[0].name).shape
    assert shape[alibi[0].key_axes[0]] == dg.context
    prog = program(_art(r), dg, r.decode.schedule, "fp32")
    pad, t = 3, 12
    mask = [0] * pad + [1] * (8 - pad)
    got = prog.mask_tables({"attention_mask": step_mask(mask, t, dg.context)})[alibi[0].name]
    keys = np.arange(dg.context) - pad
    keys[(keys < 0) | (keys > t - pad)] = 0
    want = _alibi_slopes(shape[0])[:, None, None] * keys  # (H, 1, context)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    inputs = random_inputs(r.graph)
    inputs["attention_mask"][0, :pad] = 0
    path = tmp_path / "in.npz"
    np.savez(path, **inputs)
    rep = verify_decode(_art(r), dg, r.decode.schedule, STEPS, VerifyOptions(inputs=path))
    assert rep.passed, "\n".join(rep.lines())
    assert all(s.check.max_abs <= 1e-4 for s in rep.steps)


def test_mpt_alibi_table_decodes_like_onnx_runtime():
    """MPT (tests/fixtures/alibi): its ALiBi is a constant table, slope x arange(1 - max_seq, 1),
    sliced to the last `keys` columns (offsets from the last key, not the query). In decode it
    is a key-only feed at the context, offset from the true slope x (j - t) by one constant per
    head, which the Softmax cancels; not a mask-dependent feed (BLOOM's is)."""
    from compiler.schedule.decode import mask_dependent

    r = compiled_file(f"{FIXTURES}/alibi/mpt_dynamo_op18_dynamic.onnx")
    assert r.decode is not None
    dg = r.decode.graph
    alibi = [f for f in dg.feeds if f.key_axes and not f.query_axes]
    assert len(alibi) == 1 and alibi[0].name not in mask_dependent(r.graph, dg.input_masks)
    rep = verify_decode(_art(r), dg, r.decode.schedule, STEPS, VerifyOptions())
    assert rep.passed, "\n".join(rep.lines())
    assert all(s.check.max_abs <= 1e-4 for s in rep.steps)


def test_a_reshape_moving_the_keys_off_the_last_axis_is_refused_naming_it():
    """BLOOM's scores Reshape [B*H, q, k] -> [B, H, q, k] keeps the keys last; one that moved
    them ([B, H, q*k, 1] here) has no decode step the derivation can follow."""
    from compiler.schedule.decode import DecodeUnsupported, _load_g1, decode_graph

    path = f"{FIXTURES}/hf/bloom_dynamo_op18_dynamic.onnx"
    r = compiled_file(path)

    def moved(g):
        b, h, q, k = g.tensor("view_2").shape
        return dataclasses.replace(g, tensors=tuple(
            dataclasses.replace(t, shape=(b, h, q * k, 1)) if t.name == "view_2" else t
            for t in g.tensors))

    assert len(decode_graph(r.graph, _load_g1(path, r.graph, True), 24).caches) == 4
    with pytest.raises(DecodeUnsupported, match="Reshape node_view_2 moves the attention's key"):
        decode_graph(moved(r.graph), moved(_load_g1(path, r.graph, True)), 24)


def test_spread_cache_form_verifies_token_by_token():
    """The spread form (issue 17: one-query attention with heads whole, the KV cache's keys
    over one mesh axis and its head dim over the other, the scores reduced over the head dim)
    on a grouped-query model: the prefill writes the caches in that layout, every cache is
    split over both axes of a region of several rows and columns (16 KiB cores: blocks on
    8 x 5), and the greedy tokens and logits match ONNX Runtime step by step."""
    from compiler.schedule.build import build_schedule
    from compiler.schedule.decode import decode_forms, plan_for, prefill_caches
    from compiler.target import load_target

    opts = CompileOptions(tiling=TilingOptions(context=16 + STEPS, prompt_resident=True),
                          solver=SolverOptions(time_limit_s=10))
    r = compile_model("llama-tiny", load_target("mesh16x16", {"core.sram_bytes": "16KiB"}),
                      opts)
    source = r.graph.source or r.graph.name
    forms = decode_forms(source, r.graph, 16 + STEPS)
    spread = [dg for dg in forms if dg.spread]
    assert [dg.form for dg in spread] == [(True, "c"), (True, "r")]
    for dg in spread:  # keys over the columns, then over the rows
        plan = plan_for(dg, r.schedule, r.target)
        regions = {g.name: g for g in plan.schedule.regions}
        loads = [st for st in plan.schedule.steps if st.kind == "load"
                 and st.writes[0].tensor.startswith("kv_cache.")]
        assert len(loads) == 2 * 2  # K and V of both blocks
        for st in loads:  # [batch, kv heads, keys, head dim]
            region = regions[st.region]
            assert region.rows > 1 and region.cols > 1
            assert st.writes[0].spec == (None, None, dg.spread, "r" if dg.spread == "c" else "c")
        reduced = {st.axis for st in plan.schedule.steps if st.op_kind == "reduce"
                   and "self_attn/MatMul" in st.reads[0].tensor}
        assert reduced == {"r", "c"}  # the scores over the head dim, P x V over the keys
        prefill = build_schedule(r.graph, r.tiled, r.problem, r.placement, r.target,
                                 prefill_caches(plan))
        art = Artifact(source, r.graph, r.target, prefill)
        rep = verify_decode(art, with_weights(dg, source, r.graph), plan.schedule, STEPS,
                            VerifyOptions())
        assert rep.passed, "\n".join(rep.lines())
        assert [s.token for s in rep.steps] == [s.ref_token for s in rep.steps]
        assert all(s.check.max_abs <= 1e-4 for s in rep.steps)


def test_rotary_tensors_split_the_head_dim():
    """Issue 18: in a spread decode form, one token's heads ([1, H, 1, D] after the
    projection's reshape) split the head dim over the mesh axis the heads leave free, so the
    rotary ops (rotate-half's Slice, Neg, Concat and the cos/sin products) hold a slice of a
    head row a core, not a whole one
    (Llama 3.1 405B's blocks have 128 heads over 586 rows: every core held a 128-wide row of
    each); the spread forms still match ONNX Runtime (test_spread_cache_form_verifies_...)."""
    from compiler.schedule.decode import decode_forms, decode_layouts

    r = compiled("llama-tiny")
    dg = next(f for f in decode_forms(r.graph.source, r.graph, 16 + STEPS) if f.spread)
    g = dg.graph
    rotary = [(op, lay) for lays in decode_layouts(dg).values() for lay in lays
              for op in [next(o for o in g.ops if o.name == lay.op)]
              if lay.kind in ("Neg", "Concat") and "self_attn" in lay.op]
    assert len(rotary) == 2 * 2 * 2  # Q and K in both blocks
    for op, lay in rotary:
        assert len(g.tensor(op.outputs[0]).shape) == 4
        heads, dim = lay.outputs[0][1], lay.outputs[0][3]
        assert heads and dim and heads != dim, (op.name, lay.outputs[0])
