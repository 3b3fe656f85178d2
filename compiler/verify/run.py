"""Verifying a compiled artifact: inputs -> ONNX Runtime -> the reference executor on the
schedule -> compare, and with --per-layer a second, narrower run over the first diverging layer.
open_out reads what a compile wrote (through compiler.outdir.read) and rebuilds the graph."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler import ir
from compiler.errors import UsageError, WaferError
from compiler.executor import run_schedule
from compiler.outdir.read import ModelRecord, TargetRecord, read_compiled
from compiler.schedule.memory import HINT_VERIFY, check_runnable
from compiler.verify.compare import (
    DEFAULT_TOLERANCES,
    FP32,
    check_overrides,
    first_diverging_op,
    layer_activations,
    layer_outputs,
    verify,
)
from compiler.verify.inputs import load_expected, load_inputs, random_inputs
from compiler.verify.reference import run_reference
from compiler.verify.report import VerifyReport
from compiler.vocab import PRECISIONS

if TYPE_CHECKING:
    from compiler.schedule.build import Schedule
    from compiler.target import Target


# --- verifying a compiled artifact -----------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """What verification needs: the model source (for ORT), its graph, the target, and the
    schedule (or the whole CompileResult) the executor runs."""

    source: str
    graph: ir.Graph
    target: Target
    schedule: Schedule


@dataclass(frozen=True)
class VerifyOptions:
    inputs: Path | None = None
    seed: int = 0
    atol: float | None = None  # None: the precision's default (DEFAULT_TOLERANCES)
    rtol: float | None = None
    overrides: tuple[tuple[str, float], ...] = ()
    per_layer: bool = False
    precision: str = FP32  # or TARGET / TARGET_STRICT: the target's compute dtype, emulated
    fail_fast: bool = False
    allow_nan: bool = False  # NaN on both sides passes
    expected: Path | None = None  # --load-outputs: expected outputs by name (.npz)


@dataclass(frozen=True)
class Verification:
    report: VerifyReport
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # the executor's graph outputs
    reference: dict[str, np.ndarray]  # ORT's graph outputs


Hook = Callable[[str, float], None] | None


def refuse_shape_only(graph_name: str, shape_only: bool) -> None:
    if shape_only:
        raise UsageError(f"{graph_name} was compiled shape-only (no weights): nothing to verify; "
                         "compile a model with weights")


def refuse_streamed_prompt(model: ModelRecord, options: Mapping[str, Any]) -> None:
    """A placement that holds one decode step's activations cannot run the whole prompt."""
    if options.get("prompt_resident", True) is False:
        dims = ", ".join(f"{k}={v}" for k, v in model.dims.items())
        raise UsageError(
            f"{model.name or 'the model'} was compiled with the prompt streamed through in "
            f"decode steps ({dims}: the whole prompt's activations do not fit in SRAM at once), "
            "so the executor cannot run it; compile with a shorter --seq-len to verify")


def tolerances(art: Artifact, opts: VerifyOptions) -> tuple[str, float, float]:
    """(precision label, atol, rtol): the precision's defaults unless given."""
    if opts.precision not in PRECISIONS:
        raise UsageError(f"--precision {opts.precision}: expected one of {', '.join(PRECISIONS)}")
    dtype = "float32" if opts.precision == FP32 else art.target.compute.dtype.value
    label = FP32 if opts.precision == FP32 else f"{dtype} ({opts.precision})"
    atol, rtol = DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES["float16"])
    for name, v in (("--atol", opts.atol), ("--rtol", opts.rtol)):
        if v is not None and not (v >= 0 and math.isfinite(v)):
            raise UsageError(f"{name} {v} must be a finite number >= 0")
    atol = atol if opts.atol is None else opts.atol
    rtol = rtol if opts.rtol is None else opts.rtol
    return label, atol, rtol


def run_verification(art: Artifact, opts: VerifyOptions, hook: Hook = None) -> Verification:
    """Inputs -> executor -> ORT -> compare; with per_layer, the first diverging layer and
    the first diverging op inside it (a second ORT run over that layer's tensors only)."""
    refuse_shape_only(art.graph.name, art.graph.shape_only)
    check_overrides(art.graph, dict(opts.overrides))
    # issue 15: tiles the executor could not hold (weights streamed by a default compile) are
    # refused here, exit 5, not found as a MemoryOverflow (exit 70) midway through the run
    check_runnable(art.schedule, art.graph, art.target, HINT_VERIFY)
    label, atol, rtol = tolerances(art, opts)
    g = art.graph
    inputs = load_inputs(opts.inputs, g) if opts.inputs else random_inputs(g, opts.seed)
    expected = load_expected(opts.expected, g) if opts.expected else None
    per_layer = layer_outputs(g) if opts.per_layer else None
    extra = [n for names in (per_layer or {}).values() for n in names]
    # the reference first: a model ONNX Runtime cannot run is invalid input (exit 3), never a
    # fault of the executor
    ref = _timed(hook, "onnxruntime", run_reference, art.source, inputs, extra)
    run = _timed(hook, "executor", execute, art, inputs, opts.precision, extra)
    got = {**run.values, **run.outputs} if opts.per_layer else dict(run.outputs)
    seed = None if opts.inputs else opts.seed
    report = verify(g, got, ref, per_layer, atol, rtol, dict(opts.overrides), seed=seed,
                    precision=label, fail_fast=opts.fail_fast, allow_nan=opts.allow_nan,
                    expected=expected, expected_file=str(opts.expected))
    report = replace(report, target=art.target.name,
                     inputs=str(opts.inputs) if opts.inputs else report.inputs)
    if report.first_diverging is not None:
        report = _drill_down(art, report, inputs, opts.precision, hook)
    outs = {n: run.outputs[n] for n in g.outputs if n in run.outputs}
    return Verification(report, inputs, outs, {n: ref[n] for n in g.outputs if n in ref})


def _drill_down(art: Artifact, report: VerifyReport, inputs: Mapping[str, np.ndarray],
                precision: str, hook: Hook) -> VerifyReport:
    """Both sides again, keeping every tensor of the diverging layer only (never all)."""
    d = report.first_diverging
    assert d is not None
    names = layer_activations(art.graph, d.layer)
    run = _timed(hook, f"executor: {d.layer}", execute, art, inputs, precision, names)
    ref = _timed(hook, f"onnxruntime: {d.layer}", run_reference, art.source, inputs, names)
    got = {**run.values, **run.outputs}
    op = first_diverging_op(art.graph, d.layer, got, ref, report.atol, report.rtol,
                            dict(report.overrides), allow_nan=report.allow_nan)
    return replace(report, first_diverging=op or d)


def execute(art: Artifact, inputs: Mapping[str, np.ndarray], precision: str,
            keep: Sequence[str] = ()):
    """The reference executor on the artifact's schedule, keeping the whole tensors `keep`."""
    with np.errstate(all="ignore"):  # overflow to Inf/NaN is reported by the comparison
        return run_schedule(art.schedule, art.graph, art.target, dict(inputs),
                            precision=precision, keep=frozenset(keep))


def _timed(hook: Hook, name: str, fn: Callable, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    if hook:
        hook(name, time.perf_counter() - t0)
    return result


def save_outputs(path: str | Path, v: Verification) -> None:
    """inputs as `input.NAME`, our outputs as `output.NAME`, ORT's as `reference.NAME`; the
    file is a valid --inputs file."""
    arrays = {**{f"input.{k}": a for k, a in v.inputs.items()},
              **{f"output.{k}": a for k, a in v.outputs.items()},
              **{f"reference.{k}": a for k, a in v.reference.items()}}
    np.savez(Path(path), **arrays)


# --- opening OUT/ ----------------------------------------------------------------------------


def open_out(out: str | Path) -> Artifact:
    """The artifact a compile wrote: model and target as recorded in placement.json (checked
    against their sha256), the graph at the recorded dims, the schedule from schedule.json."""
    from compiler.frontend import DimRequest, FrontendOptions, load_model

    out = Path(out)
    docs = read_compiled(out)
    model = docs.model
    refuse_shape_only(model.name or str(out), model.shape_only)
    refuse_streamed_prompt(model, docs.options)
    source = _recorded_model(out, model)
    target = _recorded_target(out, docs.target)
    dims = DimRequest(_input_shapes(source, model.dims))
    graph = load_model(source, FrontendOptions(dims, shapes_only=False))
    if docs.schedule.model != graph.name:
        raise WaferError(f"{out}/schedule.json is for {docs.schedule.model}, not {graph.name}")
    return Artifact(source, graph, target, docs.schedule)


def _recorded_model(out: Path, model: ModelRecord) -> str:
    from compiler.frontend.load import source_digest

    source = model.source
    try:
        digest = source_digest(source)
    except (KeyError, OSError):
        raise WaferError(f"{out}: the model it was compiled from, {source!r}, is not found "
                         "(paths are relative to where `wafer compile` ran)") from None
    if digest != model.sha256:
        raise WaferError(f"{out}: {source} changed since it was compiled (sha256 differs); "
                         "compile it again")
    return source


def _recorded_target(out: Path, rec: TargetRecord) -> Target:
    from compiler.target import builtin_names, load_target

    source, name = rec.source, rec.name
    builtin = Path(source).stem if source.startswith("targets/") else ""
    target = load_target(builtin if builtin in builtin_names() else source)
    if target.sha256 != rec.sha256:
        raise WaferError(f"{out}: target {name} ({source}) changed since the compile "
                         "(sha256 differs); compile again")
    return target


def _without_past(dim: int | str, past: set[str]) -> int | str:
    """`past_seq + seq` at past length 0 is `seq` (as the frontend binds it)."""
    terms = [t.strip() for t in dim.split("+")] if isinstance(dim, str) else []
    if len(terms) == 2 and any(t in past for t in terms):
        return next((t for t in terms if t not in past), dim)
    return dim


def _input_shapes(source: str, dims: Mapping[str, int]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The recorded dim bindings as whole input shapes (--input-shapes)."""
    from compiler.frontend.export import input_specs
    from compiler.frontend.past import is_past

    specs = input_specs(source)
    past = {d for name, _, spec in specs if is_past(name) for d in spec
            if isinstance(d, str) and d not in dims}  # a with-past export: past length 0
    shapes = []
    for name, _, spec in specs:
        if is_past(name):
            continue
        spec = [_without_past(d, past) for d in spec]
        unbound = [d for d in spec if isinstance(d, str) and d not in dims]
        if unbound:
            raise WaferError(f"placement.json records no size for dim {unbound[0]!r} of input "
                             f"{name}; compile again with --input-shapes {name}:[...]")
        shapes.append((name, tuple(dims[d] if isinstance(d, str) else d for d in spec)))
    return tuple(shapes)
