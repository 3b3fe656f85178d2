"""The executor runs schedules, not graphs: it matches ONNX Runtime on real models when the
schedule is right, and it notices when a schedule is wrong (missing transfer, wrong region,
consumer before producer, overfilled core, wrong spec)."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import onnxruntime as ort
import pytest
from conftest import FIXTURES, fixture_entries

from compiler import zoo
from compiler.driver import CompileOptions, compile_model
from compiler.executor import TARGET, MemoryOverflow, ScheduleFault, run_schedule
from compiler.frontend import DimRequest, FrontendOptions
from compiler.placement import place
from compiler.schedule.build import build_schedule
from compiler.tiling.layouts import tile_numel

TINY = ("gpt2-tiny", "llama-tiny", "bert-tiny", "llama-tiny-opset23")
# every tiny zoo model on a small-SRAM mesh (layers span many cores) and on wse3, and split
# across two wafers
CASES = [*((m, "mesh8x8") for m in TINY), *((m, "wse3") for m in TINY),
         ("gpt2-tiny", "mesh8x8-x2"), ("llama-tiny", "mesh8x8-x2")]


@functools.cache
def compiled(model: str, target: str, seq: int | None = None):
    dims = FrontendOptions(DimRequest(batch=1 if seq else None, seq_len=seq))
    return compile_model(model, target, CompileOptions(frontend=dims))


def _inputs(g, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in g.inputs:
        t = g.tensor(name)
        if "mask" in name:
            out[name] = np.ones(t.shape, np.int64)
        elif "type" in name:
            out[name] = np.zeros(t.shape, np.int64)
        else:  # token ids: below the smallest embedding table indexed at run time
            vocab = min(g.tensor(op.inputs[0]).shape[0] for op in g.ops
                        if op.kind == "Gather" and g.tensor(op.inputs[0]).is_const
                        and op.inputs[1] not in g.const_derived)
            out[name] = rng.integers(0, vocab, t.shape).astype(np.int64)
    return out


def _ort(model_bytes: bytes, inputs: dict) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs), strict=True))


@pytest.mark.parametrize("case", CASES, ids="/".join)
def test_zoo_model_matches_onnx_runtime(case):
    r = compiled(*case)
    inputs = _inputs(r.graph)
    got = run_schedule(r.schedule, r.graph, r.target, inputs)
    ref = _ort(zoo.build(case[0]).SerializeToString(), inputs)
    for name, want in ref.items():
        assert np.max(np.abs(got.outputs[name] - want)) <= 1e-4, name
    assert max(got.peak_bytes.values()) <= r.target.usable_bytes_per_core


@pytest.mark.parametrize("target", ["mesh8x8", "wse3"])
@pytest.mark.parametrize("entry", fixture_entries(), ids=lambda e: e["name"])
def test_real_export_matches_onnx_runtime(entry, target):
    path = FIXTURES / entry["file"]
    # a static export fixes its dims: --batch/--seq-len there would be an error
    dims = DimRequest(batch=2, seq_len=8) if entry["seq"] == "dynamic" else DimRequest()
    r = compile_model(path, target, CompileOptions(frontend=FrontendOptions(dims)))
    inputs = _inputs(r.graph)
    got = run_schedule(r.schedule, r.graph, r.target, inputs)
    ref = _ort(path.read_bytes(), inputs)
    for name, want in ref.items():
        assert np.max(np.abs(got.outputs[name] - want)) <= 1e-4, name


def test_gpt2_small_runs_a_128_token_prompt_on_wse3_within_sram():
    """Issue 5's target model: the whole 128-token prompt resident, each core within SRAM."""
    r = compiled("gpt2-small", "wse3", 128)
    assert r.tiled.prompt_resident
    inputs = _inputs(r.graph)
    got = run_schedule(r.schedule, r.graph, r.target, inputs)
    assert max(got.peak_bytes.values()) <= r.target.usable_bytes_per_core
    want = _ort(zoo.build("gpt2-small").SerializeToString(), inputs)["logits"]
    assert np.max(np.abs(got.outputs["logits"] - want)) <= 1e-4


def test_target_precision_rounds_to_fp16_storage():
    r = compiled("gpt2-tiny", "mesh8x8")
    inputs = _inputs(r.graph)
    exact = run_schedule(r.schedule, r.graph, r.target, inputs).outputs["logits"]
    fp16 = run_schedule(r.schedule, r.graph, r.target, inputs, precision=TARGET).outputs["logits"]
    err = np.max(np.abs(exact - fp16))
    assert 1e-5 < err < 5e-2  # rounding is visible but small


@pytest.mark.parametrize("case", [("gpt2-tiny", "mesh8x8"), ("bert-tiny", "wse3")], ids="/".join)
def test_a_load_puts_the_bytes_the_schedule_says_on_the_cores(case):
    """The executor's memory accounting and the schedule's byte counts are one rule (a float32
    model on a float16 target): a load run alone leaves tiles whose per-core bytes times the
    number of distinct tiles are the step's nbytes."""
    r = compiled(*case)
    s, inputs, checked = r.schedule, _inputs(r.graph), 0
    for step in (st for st in s.steps if st.kind == "load"):
        ref, reg = step.writes[0], s.region(step.region)
        t = r.graph.tensor(ref.tensor)
        tiles = math.prod({"r": reg.rows, "c": reg.cols}[a] for a in ref.spec if a)
        if tile_numel(t.shape, ref.spec, reg.rows, reg.cols) * tiles != t.numel:
            continue  # padded tiles hold more than the tensor
        alone = dataclasses.replace(s, steps=(dataclasses.replace(step, id=0, deps=()),))
        peak = run_schedule(alone, r.graph, r.target, inputs).peak_bytes[reg.name]
        assert peak * tiles == step.nbytes, ref.tensor
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("shape", [(2, 2), (3, 5), (8, 8)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_gqa_repeat_split_over_columns_matches_onnx_runtime(shape):
    """llama-tiny's key/value repeat splits its query groups over columns (each core makes its
    own copies); with every layer forced onto rectangles of several columns, some ragged, the
    schedule runs within SRAM and matches ONNX Runtime."""
    r = compiled("llama-tiny", "wse3")
    rows, cols = shape
    blocks = tuple(dataclasses.replace(b, options=(dataclasses.replace(
        b.options[0], rows=rows, cols=cols),)) for b in r.problem.blocks)
    problem = dataclasses.replace(r.problem, blocks=blocks)
    schedule = build_schedule(r.graph, r.tiled, problem, place(problem, "first-fit"), r.target)
    expands = [st for st in schedule.steps if st.op_kind == "Expand"]
    assert expands and all("c" in st.writes[0].spec for st in expands)
    inputs = _inputs(r.graph)
    got = run_schedule(schedule, r.graph, r.target, inputs)
    for name, want in _ort(zoo.build("llama-tiny").SerializeToString(), inputs).items():
        assert np.max(np.abs(got.outputs[name] - want)) <= 1e-4, name


# --- fault injection --------------------------------------------------------------------------


def _mutated(schedule, steps):
    return dataclasses.replace(schedule, steps=tuple(steps))


def _renumber(steps):
    ids = {s.id: i for i, s in enumerate(steps)}
    return [dataclasses.replace(s, id=i, deps=tuple(ids[d] for d in s.deps if d in ids))
            for i, s in enumerate(steps)]


def _run(r, schedule):
    return run_schedule(schedule, r.graph, r.target, _inputs(r.graph))


def test_dropped_transfer_is_a_fault_naming_step_and_tensor():
    r = compiled("gpt2-tiny", "mesh8x8")
    steps = list(r.schedule.steps)
    send = next(s for s in steps if s.kind == "send")
    steps = _renumber([s for s in steps if s is not send])
    with pytest.raises(ScheduleFault, match=rf"{send.reads[0].tensor} is not resident on "
                                            rf"{send.dst}"):
        _run(r, _mutated(r.schedule, steps))


def test_send_to_the_wrong_region_is_caught():
    r = compiled("gpt2-tiny", "mesh8x8")
    steps = list(r.schedule.steps)
    i = next(i for i, s in enumerate(steps) if s.kind == "send")
    wrong = next(x.name for x in r.schedule.regions if x.name not in (steps[i].dst,
                                                                      steps[i].region))
    steps[i] = dataclasses.replace(steps[i], dst=wrong)
    with pytest.raises(ScheduleFault, match="is not resident on"):
        _run(r, _mutated(r.schedule, steps))


def test_consumer_before_producer_is_caught():
    r = compiled("llama-tiny", "mesh8x8")
    steps = list(r.schedule.steps)
    i = next(i for i, s in enumerate(steps) if s.kind == "compute" and s.deps and
             steps[max(s.deps)].kind == "compute")
    j = max(steps[i].deps)
    steps[i], steps[j] = steps[j], steps[i]
    with pytest.raises(ScheduleFault, match=r"schedule fault at step \d+ .* is not resident"):
        _run(r, _mutated(r.schedule, steps))


def test_overfilled_core_names_step_region_and_bytes():
    r = compiled("gpt2-tiny", "mesh8x8")
    small = dataclasses.replace(r.target, core=dataclasses.replace(
        r.target.core, sram_bytes=r.target.core.reserve_bytes + 8192))
    with pytest.raises(MemoryOverflow, match=r"a core of \S+ would hold [\d,]+ bytes .* has 8,192"):
        run_schedule(r.schedule, r.graph, small, _inputs(r.graph))


def test_wrong_spec_is_caught():
    r = compiled("gpt2-tiny", "mesh8x8")
    steps = list(r.schedule.steps)
    i = next(i for i, s in enumerate(steps) if s.kind == "compute" and s.op_kind == "MatMul")
    ref = steps[i].reads[0]
    flipped = tuple({"r": "c", "c": "r"}.get(a, a) if a else a for a in ref.spec)
    if flipped == ref.spec:
        flipped = tuple("r" if k == len(ref.spec) - 1 else None for k in range(len(ref.spec)))
    steps[i] = dataclasses.replace(steps[i], reads=(dataclasses.replace(ref, spec=flipped),
                                                    *steps[i].reads[1:]))
    with pytest.raises(ScheduleFault, match=f"tensor {ref.tensor} is on"):
        _run(r, _mutated(r.schedule, steps))


def test_corrupted_weight_tile_changes_the_output():
    r = compiled("gpt2-tiny", "mesh8x8")
    inputs = _inputs(r.graph)
    good = run_schedule(r.schedule, r.graph, r.target, inputs).outputs["logits"]
    name = "transformer.h.0.attn.c_attn.weight"
    data = r.graph.tensor(name).data.copy()
    data[3, 5] += 1.0
    tensors = tuple(dataclasses.replace(t, data=data) if t.name == name else t
                    for t in r.graph.tensors)
    bad_graph = dataclasses.replace(r.graph, tensors=tensors)
    bad = run_schedule(r.schedule, bad_graph, r.target, inputs).outputs["logits"]
    assert np.max(np.abs(bad - good)) > 1e-3
