"""`wafer verify OUT --decode N` and `wafer generate`: greedy generation on the reference
executor (prefill, then N decode steps with the KV cache in per-core SRAM), checked token by
token against ONNX Runtime running the original no-cache model on the growing sequence.

Step 0 is prefill's last position (the first new token); step i >= 1 is the decode step at
absolute position prompt + i - 1. Every step's logits are compared (allclose at the precision's
tolerances, max abs error) and the greedy tokens must be identical; the first step that fails
either is the first diverging step. ORT is fed the executor's own tokens, so a divergence does
not cascade into every later step's comparison.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import ExitCode, UsageError, WaferError
from compiler.verify import (
    Artifact,
    TensorCheck,
    VerifyOptions,
    compare,
    load_inputs,
    random_inputs,
    run_reference,
    tolerances,
)

DECODE_SCHEMA_VERSION = "1.0"
_ORT_INT = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class NoDecodeSchedule(WaferError):
    """The compile has no decode schedule (not a causal LM with token-id inputs and weights)."""

    exit_code = ExitCode.UNSUPPORTED


@dataclass(frozen=True)
class StepCheck:
    step: int  # 0: prefill's last position; i: the i-th decode step
    position: int  # absolute position of the logits
    token: int  # the executor's greedy token
    ref_token: int  # ORT's on the same sequence
    check: TensorCheck

    @property
    def passed(self) -> bool:
        return self.check.passed and self.token == self.ref_token

    def line(self) -> str:
        what = "prefill" if self.step == 0 else f"decode step {self.step}"
        tok = (f"token {self.token}" if self.token == self.ref_token else
               f"token {self.token}, ONNX Runtime's {self.ref_token}")
        return (f"{'PASSED' if self.passed else 'FAILED'} {what} (position {self.position}): "
                f"{tok}; logits max abs {self.check.max_abs:.3g}"
                + ("" if self.check.passed else
                   f" (atol {self.check.atol:g}, rtol {self.check.rtol:g})"))


@dataclass(frozen=True)
class DecodeReport:
    model: str
    target: str
    prompt: tuple[int, ...]
    steps: tuple[StepCheck, ...]
    context: int
    precision: str
    peak_bytes: tuple[tuple[str, int], ...]  # decode machine, per region (fullest core)
    diverging_layer: str | None = None  # in the first diverging decode step: the first layer
    diverging_tensor: str | None = None  # (and the tensor it hands on) that leaves tolerance
    executor_s: tuple[float, ...] = ()  # wall seconds per decode step on the executor
    reference_s: tuple[float, ...] = ()  # ORT's per step (no-cache model, growing sequence)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.steps)

    @property
    def first_diverging_step(self) -> int | None:
        return next((s.step for s in self.steps if not s.passed), None)

    def lines(self) -> list[str]:
        return [*(s.line() for s in self.steps), self.summary()]

    def summary(self) -> str:
        n = len(self.steps) - 1
        worst = max((s.check.max_abs for s in self.steps), default=0.0)
        first = self.first_diverging_step
        where = (f" (layer {self.diverging_layer}: {self.diverging_tensor})"
                 if self.diverging_layer else "")
        verdict = ("PASSED: greedy tokens identical" if first is None else
                   f"FAILED: first diverging at step {first}{where}; tokens compared")
        return (f"decode {verdict} to ONNX Runtime's over prefill + {n} decode step(s) "
                f"({len(self.prompt)}-token prompt, context {self.context}, {self.precision}); "
                f"worst logits max abs {worst:.3g}")

    def doc(self) -> dict[str, Any]:
        return {
            "schema_version": DECODE_SCHEMA_VERSION, "model": self.model, "target": self.target,
            "passed": self.passed, "first_diverging_step": self.first_diverging_step,
            "first_diverging_layer": self.diverging_layer,
            "first_diverging_tensor": self.diverging_tensor,
            "prompt": list(self.prompt), "context": self.context, "precision": self.precision,
            "tokens": [s.token for s in self.steps],
            "reference_tokens": [s.ref_token for s in self.steps],
            "steps": [{"step": s.step, "position": s.position, "token": s.token,
                       "reference_token": s.ref_token, "passed": s.passed,
                       "max_abs": _finite(s.check.max_abs), "logits_passed": s.check.passed}
                      for s in self.steps],
            "peak_bytes_per_core": dict(self.peak_bytes),
            "seconds_per_decode_step": {"executor": _mean(self.executor_s),
                                        "onnxruntime": _mean(self.reference_s)},
        }

    def to_json(self) -> str:
        return json.dumps(self.doc(), indent=1) + "\n"


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 6) if xs else None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --- the decode program of an artifact --------------------------------------------------------


def program(art: Artifact, dg, decode_schedule, precision: str):
    """The executor's DecodeProgram: both schedules and graphs, the position tables (the model
    at seq = context, its constants evaluated on the host)."""
    from compiler.executor import host_constants
    from compiler.executor.generate import DecodeProgram, MaskTables
    from compiler.schedule.decode import load_tables, mask_dependent, with_weights

    dg = with_weights(dg, art.source, art.graph)  # a compile's plan holds it shape-only
    big = load_tables(art.source, dg, dict(art.graph.dims).get("batch"))
    consts = host_constants(big, art.target, precision)
    rows = {name for name, _ in dg.masks}  # computed per step from t (executor.generate)
    masked = mask_dependent(big, dg.input_masks)
    tables = {f.name: consts[f.name] for f in dg.feeds if f.name not in masked | rows}
    hosted = frozenset(f.name for f in dg.feeds if f.name in masked)
    return DecodeProgram(art.schedule, art.graph, decode_schedule, dg.graph,
                         tuple((c.prefill, c.name, c.axis) for c in dg.caches),
                         tuple((f.name, f.query_axes) for f in dg.feeds), tables,
                         dg.tokens[0], art.graph.outputs[0], dg.input_masks,
                         MaskTables(big, consts, hosted) if dg.input_masks else None,
                         tuple((c.cache, c.name, c.axis, c.start, c.stop) for c in dg.streams),
                         dg.masks)


def open_decode(out: str | Path, art: Artifact):
    """(decode graph, decode schedule) of OUT: the schedule from schedule.json's decode section,
    the graph derived again from the recorded model (checked against the schedule's caches)."""
    from compiler.outdir.decode import decode_problems, decode_schedule_from_doc
    from compiler.schedule.decode import DecodeUnsupported, load_decode_graph, with_streams

    path = Path(out) / "schedule.json"
    doc = json.loads(path.read_text())
    if "decode" not in doc:
        raise NoDecodeSchedule(f"{path} has no decode schedule: {art.graph.name} is not a causal "
                               "LM whose inputs are token ids and an attention mask (or OUT "
                               "predates decode); compile it again")
    problems = decode_problems(doc)
    if problems:
        raise WaferError(f"{path}: {problems[0]}; compile again")
    try:
        dg = load_decode_graph(art.source, art.graph, int(doc["decode"]["context"]),
                               grouped=doc["decode"].get("kv_cache") == "grouped")
        layout = str(doc["decode"].get("kv_layout", "heads"))
        dg = dataclasses.replace(dg, spread=layout[5:] if layout.startswith("keys-") else "")
    except DecodeUnsupported as exc:
        raise NoDecodeSchedule(f"{art.graph.name}: {exc}") from None
    if [c.name for c in dg.caches] != [c["tensor"] for c in doc["decode"]["caches"]]:
        raise WaferError(f"{path}: its KV caches are not the model's; compile again")
    schedule = decode_schedule_from_doc(doc)
    return with_streams(dg, schedule, art.target), schedule


# --- verification --------------------------------------------------------------------------


Hook = Callable[[str, float], None] | None


def check_room(prompt_len: int, steps: int, context: int, what: str = "") -> None:
    """`steps` decode steps after a prompt write positions up to prompt + steps - 1."""
    need = prompt_len + steps
    if steps < 0 or need > context:
        what = what or f"--decode {steps}"
        raise UsageError(f"{what} after a {prompt_len}-token prompt needs a KV cache of "
                         f"{need} positions but the compile's context is {context}; compile "
                         f"with --context >= {need}")


def verify_decode(art: Artifact, dg, decode_schedule, steps: int,
                  opts: VerifyOptions, hook: Hook = None) -> DecodeReport:
    """Prefill + `steps` decode steps on the executor against ORT, step by step."""
    from compiler.executor.generate import generate

    label, atol, rtol = tolerances(art, opts)
    g = art.graph
    inputs = load_inputs(opts.inputs, g) if opts.inputs else random_inputs(g, opts.seed)
    prompt = [int(x) for x in np.asarray(inputs[dg.tokens[0]])[0]]
    masks = dg.input_masks
    mask = [int(x) for x in np.asarray(inputs[masks[0]])[0]] if masks else None
    check_room(len(prompt), steps, dg.context)
    reference = _Reference(art.source, dg.tokens[0], dg.input_masks)
    reference(dict(inputs), g.outputs[0])  # a model ORT cannot run is invalid input, first
    prog = program(art, dg, decode_schedule, opts.precision)
    clock = _Clock(hook)
    handoffs = _handoffs(dg.graph)
    with np.errstate(all="ignore"):
        gen = generate(prog, art.target, prompt, steps + 1, opts.precision, clock.tick,
                       frozenset(n for names in handoffs.values() for n in names), mask)
    checks, ref_s = _compare_steps(art, reference, prompt, gen, (atol, rtol), hook, mask)
    report = DecodeReport(g.name, art.target.name, tuple(prompt), tuple(checks), dg.context,
                          label, tuple(sorted(gen.peak_bytes.items())),
                          executor_s=tuple(clock.seconds[1:]), reference_s=tuple(ref_s[1:]))
    first = report.first_diverging_step
    if first:  # a decode step (prefill's own layers: wafer verify --per-layer)
        layer, tensor = _diverging_layer(art, reference, handoffs, report, gen, first,
                                         (atol, rtol), mask)
        report = dataclasses.replace(report, diverging_layer=layer, diverging_tensor=tensor)
    return report


def _handoffs(g) -> dict[str, list[str]]:
    """Per layer of the decode graph, the tensors it hands on (not the logits)."""
    from compiler.verify import layer_outputs

    return {k: [n for n in v if n not in g.outputs] for k, v in layer_outputs(g).items()}


def _diverging_layer(art: Artifact, reference: _Reference, handoffs: dict[str, list[str]],
                     report: DecodeReport, gen, step: int, tols: tuple[float, float],
                     mask: list[int] | None) -> tuple[str | None, str | None]:
    """ORT once more at that step's sequence, keeping the layers' handed-on tensors: the first
    whose last position leaves tolerance."""
    seq = [*report.prompt, *(s.token for s in report.steps)][:gen.positions[step] + 1]
    names = [n for v in handoffs.values() for n in v]
    ref = run_reference(art.source, reference.feed(seq, mask), names)
    got = gen.values[step]
    for layer, tensors in handoffs.items():
        for name in tensors:
            if name not in ref or name not in got:
                continue
            last = _last_position(np.asarray(ref[name]), got[name].shape)
            if last is not None and not compare(name, got[name], last, *tols).passed:
                return layer, name
    return None, None


def _last_position(ref: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """ORT's tensor over the whole sequence at its last position (the decode step's shape)."""
    if ref.shape == tuple(shape):
        return ref
    differ = [i for i, (a, b) in enumerate(zip(ref.shape, shape, strict=False)) if a != b]
    if len(ref.shape) != len(shape) or len(differ) != 1 or shape[differ[0]] != 1:
        return None
    return np.take(ref, [-1], axis=differ[0])


class _Clock:
    """Wall time between generated tokens (the first includes prefill), as stage lines."""

    def __init__(self, hook: Hook):
        self.hook, self.seconds = hook, []
        self.t0 = time.perf_counter()

    def tick(self, i: int, pos: int, logits) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self.t0)
        if self.hook:
            self.hook(f"executor: {'prefill' if i == 0 else f'decode step {i}'}", now - self.t0)
        self.t0 = time.perf_counter()


class _Reference:
    """One ONNX Runtime session on the original model, run once per step (building the model
    and its session again per step costs more than the runs)."""

    def __init__(self, source: str, tokens: str, masks: tuple[str, ...] = ()):
        from compiler.frontend.export import reference_model_bytes
        from compiler.frontend.past import is_past, is_present
        from compiler.verify.reference import _session

        self.source, self.tokens, self.masks = source, tokens, masks
        self.session = _session(reference_model_bytes(source), str(source))
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.dtypes = {n: _ORT_INT.get(types.get(n, ""), np.int64) for n in (tokens, *masks)}
        pasts = [i.name for i in self.session.get_inputs() if is_past(i.name)]
        presents = [o.name for o in self.session.get_outputs() if is_present(o.name)]
        self.pasts = tuple(zip(pasts, presents, strict=True)) if len(pasts) == len(presents) \
            else ()
        self.state: tuple[list[int], dict[str, np.ndarray]] | None = None

    def last_logits(self, seq: Sequence[int], mask: Sequence[int] | None,
                    output: str) -> np.ndarray:
        """The logits at the last position of `seq`: the no-cache model on the whole sequence,
        or a with-past model's graph one step on from the previous call (its presents fed back
        as the pasts), the whole sequence at past length 0 when `seq` does not extend it."""
        feed = self.feed(seq, mask)
        if not self.pasts:
            return self(feed, output)[:, -1]
        names = [output, *(present for _, present in self.pasts)]
        if self.state is not None and list(seq[:-1]) == self.state[0]:
            feed[self.tokens] = feed[self.tokens][:, -1:]
            feed.update(self.state[1])
        values = self._run(names, feed)
        self.state = (list(seq), {past: v for (past, _), v in zip(self.pasts, values[1:],
                                                                   strict=True)})
        return values[0][:, -1]

    def feed(self, seq: Sequence[int], mask: Sequence[int] | None) -> dict[str, np.ndarray]:
        """The no-cache model's inputs for the sequence `seq`: its ids and the growing mask
        (the prompt's own mask over its positions, 1 after)."""
        feed = {self.tokens: np.asarray([seq], self.dtypes[self.tokens])}
        for name in self.masks:
            grown = [*(mask or []), *[1] * len(seq)][:len(seq)]
            feed[name] = np.asarray([grown], self.dtypes[name])
        return feed

    def __call__(self, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        return self._run([output], feed)[0]

    def _run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        from compiler.verify import ReferenceRunError
        from compiler.verify.reference import empty_pasts

        feed = {**empty_pasts(self.session, feed), **feed}
        try:
            return self.session.run(names, feed)
        except Exception as exc:  # ORT raises its own pybind types
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ReferenceRunError(f"ONNX Runtime failed to run {self.source}: {line}") from None


def _compare_steps(art: Artifact, reference: _Reference, prompt: Sequence[int], gen,
                   tols: tuple[float, float], hook: Hook,
                   mask: list[int] | None = None) -> tuple[list[StepCheck], list[float]]:
    atol, rtol = tols
    g = art.graph
    seq = list(prompt)
    checks, seconds = [], []
    for i, (logits, pos) in enumerate(zip(gen.logits, gen.positions, strict=True)):
        t0 = time.perf_counter()
        ref = reference.last_logits(seq[:pos + 1], mask, g.outputs[0])
        seconds.append(time.perf_counter() - t0)
        if hook:
            hook(f"onnxruntime: {pos + 1} tokens", seconds[-1])
        check = compare(f"logits@{pos}", logits, ref, atol, rtol)
        checks.append(StepCheck(i, pos, gen.tokens[i], int(np.argmax(ref[0])), check))
        seq.append(gen.tokens[i])
    return checks, seconds


def run_generate(art: Artifact, dg, decode_schedule, prompt: Sequence[int], new_tokens: int,
                 precision: str = "fp32") -> list[int]:
    """`new_tokens` greedy token ids after `prompt` on the executor."""
    from compiler.executor.generate import generate
    from compiler.verify import index_extent

    vocab = index_extent(art.graph, dg.tokens[0])
    bad = [t for t in prompt if t < 0 or (vocab is not None and t >= vocab)]
    if bad or not prompt:
        what = f"{bad[0]} is outside the vocabulary [0, {vocab})" if bad else "it is empty"
        raise UsageError(f"--prompt-ids: {what}")
    if new_tokens < 1:
        raise UsageError("-n must be at least 1")
    check_room(len(prompt), new_tokens - 1, dg.context, f"-n {new_tokens}")
    prog = program(art, dg, decode_schedule, precision)
    with np.errstate(all="ignore"):
        return generate(prog, art.target, prompt, new_tokens, precision).tokens
