"""Mixture-of-experts decode (issue 16 item 3, decode half): the tiny MoE exports of three
families (tests/fixtures/moe/) get a decode schedule, and the executor's prefill + decode steps
(each token routed to the experts its router picks, on the cores where those experts' column
slices live) match ONNX Runtime step by step; a decode token sent to the wrong expert is caught;
the MoE decode estimate comes from the decode schedule; a graph whose decode schedule cannot be
built because of a bug fails loudly, while an encoder is refused with its reason."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.errors import InternalError
from compiler.executor.kernels import KERNELS
from compiler.frontend import DimRequest, FrontendOptions
from compiler.schedule.decode_mask import varying_axes
from compiler.tiling.candidates import TilingOptions
from compiler.verify import Artifact, VerifyOptions
from compiler.verify.decode import verify_decode
from compiler.vocab import Mode
from compiler.zoo import build_moe

MOE = Path(__file__).parent / "fixtures" / "moe"
REAL = Path(__file__).parent / "fixtures" / "real"
FAMILIES = ("mixtral", "qwen2moe", "olmoe")
PROMPT, STEPS, LONG = 8, 8, 32


@functools.cache
def compiled(name: str, target: str, context: int = PROMPT + STEPS):
    opts = CompileOptions(frontend=FrontendOptions(DimRequest(batch=1, seq_len=PROMPT)),
                          tiling=TilingOptions(context=context, prompt_resident=True),
                          solver=SolverOptions(time_limit_s=10), check=True)
    return compile_model(MOE / f"{name}.onnx", target, opts)


def _verify(r, steps: int):
    from compiler.schedule.decode import with_weights

    art = Artifact(str(r.graph.source), r.graph, r.target, r.schedule)
    dg = with_weights(r.decode.graph, str(r.graph.source), r.graph)
    return verify_decode(art, dg, r.decode.schedule, steps, VerifyOptions())


def _passed(rep, steps: int) -> None:
    assert rep.passed, "\n".join(rep.lines())
    assert len(rep.steps) == steps + 1  # prefill's token, then one per decode step
    assert [s.token for s in rep.steps] == [s.ref_token for s in rep.steps]
    assert all(s.check.max_abs <= 1e-4 for s in rep.steps)


@pytest.mark.parametrize("target", ["mesh8x8", "wse3"])
@pytest.mark.parametrize("family", FAMILIES)
def test_moe_export_decodes_like_onnx_runtime(family, target):
    """The token-id export, prefill + 8 decode steps, every step's logits against ORT."""
    r = compiled(f"{family}_batched_mm_dynamo_ids", target)
    assert r.decode is not None, r.no_decode
    dg = r.decode.graph
    assert len(dg.caches) == 2 * len(r.graph.blocks())  # K and V of every block
    moe_blocks = [b.name for b in r.graph.blocks() if b.moe is not None]
    topk = [st for st in r.decode.schedule.steps if st.op_kind == "TopK"]
    assert sorted(st.region for st in topk) == sorted(moe_blocks)  # one router per MoE block
    _passed(_verify(r, STEPS), STEPS)


def test_moe_export_with_its_attention_mask_decodes_32_steps_on_wse3():
    """The issue's target at full length, on the slowest case: Mixtral (both blocks MoE) with
    input_ids and attention_mask, 32 decode steps on WSE-3."""
    r = compiled("mixtral_batched_mm_dynamo", "wse3", PROMPT + LONG)
    assert r.decode is not None and r.decode.graph.input_masks == ("attention_mask",)
    _passed(_verify(r, LONG), LONG)


def _wrong_expert_in_decode(kernel):
    """TopK with a one-token step's (decode's) first pick moved to the next expert; prefill
    (eight tokens) routes as it should."""
    def faulty(op, ins, outs, ctx):
        values, index = kernel(op, ins, outs, ctx)
        if ins[0].shape[-2] != 1:
            return [values, index]
        index = index.copy()
        index[..., 0, 0] = (index[..., 0, 0] + 1) % ins[0].shape[-1]
        return [values, index]
    return faulty


def test_a_decode_token_sent_to_the_wrong_expert_is_caught(monkeypatch):
    r = compiled("mixtral_batched_mm_dynamo_ids", "mesh8x8")
    monkeypatch.setitem(KERNELS, "TopK", _wrong_expert_in_decode(KERNELS["TopK"]))
    rep = _verify(r, 2)
    assert rep.steps[0].passed  # prefill's token
    assert not rep.steps[1].check.passed  # the first decode step
    assert rep.first_diverging_step == 1
    assert rep.diverging_layer == "block.0"  # the first MoE block


def test_the_moe_decode_estimate_comes_from_the_decode_schedule(tmp_path):
    """The zoo's MoE builder (expert groups on their own rectangles): the decode schedule
    holds every group's region, and the expected / worst-case rates re-time that schedule."""
    from compiler.zoo import MoEConfig

    cfg = MoEConfig(vocab=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, experts=8,
                    active=2, expert_intermediate=16, expert_groups=4, shared=1,
                    intermediate=48, moe_every=2, shape_only=False, dtype="float32",
                    default_seq=8)
    path = tmp_path / "moe-small.onnx"
    onnx.save(build_moe(cfg, name="moe-small"), path)
    r = compile_model(path, "mesh16x16", CompileOptions(solver=SolverOptions(time_limit_s=10)))
    assert r.decode is not None, r.no_decode
    regions = {x.name for x in r.decode.schedule.regions}
    assert {f"block.1.experts.{i}" for i in range(4)} <= regions
    hz = r.target.core.clock_hz
    assert r.moe.all_experts_tokens_per_s == r.moe.batch * hz / r.decode.timeline.makespan
    assert r.moe.worst_tokens_per_s <= r.moe.expected_tokens_per_s
    _retimings_reuse_the_unchanged_steps_exactly(r)


def _retimings_reuse_the_unchanged_steps_exactly(r) -> None:
    """The MoE re-timings' fast path (the base schedule's step cycles kept for the steps a
    scenario leaves alone) gives the makespan of the slow definition (every step timed anew)
    for every kind of scenario: a group skipped, scaled, or a streamed share loaded."""
    import dataclasses

    import numpy as np

    from compiler.schedule.moe import _cycles, _scaled
    from compiler.schedule.perf import PerfOptions, step_durations, timeline
    from compiler.tiling.routing import UNIFORM, group_loads

    s = r.decode.schedule
    opts = PerfOptions(Mode.DECODE, context=r.decode.graph.context)
    base = step_durations(s, r.target, opts)
    assert timeline(s, r.target, opts, cycles=base) == timeline(s, r.target, opts)
    groups = sorted(group_loads(r.graph, UNIFORM, s.batch))
    rng = np.random.default_rng(1)
    scenarios = [{g: (0.0, 0.0, 0.0) for g in groups}, {groups[0]: (0.0, 0.0, 0.0)},
                 {g: (1.0, 1.0, 1.0) for g in groups[1:]},
                 *({g: tuple(rng.choice([0.0, 0.5, 1.0], 3)) for g in groups} for _ in range(4))]
    made: dict = {}
    for scenario in scenarios:
        steps = tuple(_scaled(st, scenario) for st in s.steps)
        assert steps == tuple(_scaled_as_defined(st, scenario) for st in s.steps)
        slow = timeline(dataclasses.replace(s, steps=steps), r.target, opts)
        assert _cycles(s, r.target, opts, scenario, base) == slow.makespan
        assert _cycles(s, r.target, opts, scenario, base, made) == slow.makespan
    assert made  # the scenarios shared scaled steps
    assert len({_cycles(s, r.target, opts, sc, base) for sc in scenarios}) > 1  # not inert


def test_a_bug_in_the_decode_schedule_is_an_internal_error(monkeypatch):
    """A decode graph that derives is scheduled: a failure there is not "no decode schedule"."""
    import compiler.schedule.decode as decode

    def broken(*args, **kwargs):
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(decode, "build_decode_schedule", broken)
    with pytest.raises(InternalError, match="stage decode.*IndexError"):
        compile_model("gpt2-tiny", "mesh8x8", CompileOptions(solver=SolverOptions(
            time_limit_s=10)))


def test_an_encoders_bidirectional_mask_is_refused_with_its_reason():
    """A TorchScript sentence BERT: its [1, 1, S, S] mask grows along queries and keys like a
    causal one, but every query row is the same (padding only)."""
    opts = CompileOptions(frontend=FrontendOptions(DimRequest(batch=1, seq_len=16)),
                          solver=SolverOptions(time_limit_s=10))
    r = compile_model(REAL / "sentence_bert_ts_op17.onnx", "mesh8x8", opts)
    assert r.decode is None
    assert "is the same for every query position" in r.no_decode
    assert "\n" not in r.no_decode


def test_varying_axes_of_a_causal_and_a_padding_mask(gpt2_tiny):
    """Exact where the mask holds data: a causal [S, S] table varies along queries and keys,
    a padding row expanded over the queries along the keys only."""
    import dataclasses

    from compiler import ir

    s = 5
    causal = np.triu(np.full((1, 1, s, s), -1e9, np.float32), 1)
    padding = np.broadcast_to(np.array([0, 0, 0, -1e9, -1e9], np.float32), (1, 1, s, s))
    tensors = (ir.Tensor("causal", causal.shape, ir.DType.FLOAT32, ir.TensorKind.CONSTANT,
                         causal),
               ir.Tensor("padding", padding.shape, ir.DType.FLOAT32, ir.TensorKind.CONSTANT,
                         np.ascontiguousarray(padding)))
    g = dataclasses.replace(gpt2_tiny, tensors=gpt2_tiny.tensors + tensors)
    assert varying_axes(g, "causal") == {2, 3}
    assert varying_axes(g, "padding") == {3}


def test_a_shape_only_graph_keeps_its_small_integer_constants():
    """Axes, shapes and k stay (the layouts read them: at one token a ReduceSum's output shape
    cannot tell which dim of size 1 it removed); weights stay without data."""
    from compiler.frontend import load_model

    g = load_model(MOE / "mixtral_batched_mm_dynamo_ids.onnx", FrontendOptions(
        DimRequest(batch=1, seq_len=1), shapes_only=True))
    assert g.shape_only
    sums = [op for op in g.ops if op.kind == "ReduceSum" and len(op.inputs) > 1]
    assert sums and all(g.tensor(op.inputs[1]).data is not None for op in sums)
    assert all(t.data is None for t in g.tensors if t.kind.value == "weight" and t.dtype.is_float)


def _scaled_as_defined(st, scenario):
    """The MoE scenarios' step scaling as first written: every scaled step a new one."""
    import dataclasses

    from compiler.schedule.moe import _free
    from compiler.vocab import Phase, StepKind

    if st.phase == Phase.SETUP:
        return st
    into = scenario.get(st.dst) if st.dst else None
    own = scenario.get(st.region)
    if own is None and into is None:
        return st
    if st.kind in (StepKind.SEND, StepKind.WAFER_SEND):
        factor = (into or own or (1.0, 1.0, 1.0))[1]
        if own is not None and into is not None:
            factor = min(own[1], into[1])
        return _free(st) if factor == 0 else dataclasses.replace(
            st, nbytes=round(st.nbytes * factor))
    compute = own[0] if own is not None else 1.0
    if compute == 0:
        return _free(st)
    if st.kind == StepKind.LOAD and own is not None:
        return dataclasses.replace(st, nbytes=round(st.nbytes * own[2]))
    return dataclasses.replace(st, flops=round(st.flops * compute),
                               nbytes=round(st.nbytes * compute))
