"""`wafer verify`: run a compiled schedule on the reference executor and compare it with ONNX
Runtime running the original model, output by output and (with --per-layer) layer by layer.

The only module that imports onnxruntime. ORT runs on the CPU provider with graph optimizations
disabled (its fusions change numerics) and one or two intra-op threads. Comparisons follow
numpy's allclose: a tensor passes when |got - ref| <= atol + rtol * |ref| everywhere, and a NaN
or Inf where ORT has none (or none where ORT has one) fails. docs/verify.md has the details.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from compiler import __version__, ir
from compiler.errors import UsageError, WaferError
from compiler.executor import run_schedule
from compiler.frontend.export import reference_model_bytes
from compiler.vocab import PASS_THROUGH_OPS, PRECISIONS, Precision

if TYPE_CHECKING:
    from compiler.schedule.build import Schedule
    from compiler.target import Target

VERIFY_SCHEMA_VERSION = "1.1"  # 1.1: one `layers` entry per layer; expected, allow_nan
FP32, TARGET, TARGET_STRICT = Precision.FP32, Precision.TARGET, Precision.TARGET_STRICT
# (atol, rtol) by the precision the executor computes in; --atol/--rtol override. The 16-bit
# ones hold the tiny zoo models with a 2x margin (docs/verify.md); PCC is the better signal there.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-3), "float64": (1e-4, 1e-3),
    "float16": (5e-2, 1e-2), "bfloat16": (4e-1, 5e-2),
}
ORT = "onnxruntime"  # TensorCheck.reference when comparing with ONNX Runtime
PCC_PASS = 0.99  # Tenstorrent's usual bar; reported, not enforced
REL_FLOOR = 1e-3  # max rel divides by max(|ref|, REL_FLOOR * rms(ref))
FALLBACK_VOCAB = 2  # integer inputs whose embedding table is not found: ids in [0, 2)


class InputsError(WaferError):
    """An --inputs file that is unreadable or does not match the model's inputs."""


class ReferenceRunError(WaferError):
    """ONNX Runtime could not load or run the original model."""


# --- inputs ------------------------------------------------------------------------------------


def random_inputs(graph: ir.Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs valid for the model at the graph's bound shapes: token ids within the
    vocabulary of the table they index, masks all ones, token types zeros, positions arange,
    floats N(0, 1). Each input has its own stream (seed, name), so adding one changes no other."""
    out = {}
    for name in graph.inputs:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        out[name] = _random_input(graph, graph.tensor(name), rng)
    return out


def _random_input(graph: ir.Graph, t: ir.Tensor, rng: np.random.Generator) -> np.ndarray:
    dtype, key = _np_dtype(t), t.name.lower()
    if "mask" in key:
        return np.ones(t.shape, dtype)
    if t.dtype is ir.DType.BOOL:
        return rng.random(t.shape) < 0.5
    if t.dtype.is_float:
        return rng.standard_normal(t.shape).astype(dtype)
    if "token_type" in key or "segment" in key:
        return np.zeros(t.shape, dtype)
    extent = index_extent(graph, t.name)
    if "position" in key and t.shape:
        ids = np.broadcast_to(np.arange(t.shape[-1]), t.shape)
        return (ids % extent if extent else ids).astype(dtype)
    return rng.integers(0, extent or FALLBACK_VOCAB, t.shape).astype(dtype)


def index_extent(graph: ir.Graph, name: str) -> int | None:
    """The size of the table axis `name` indexes: the Gather whose indices are `name` (through
    casts and reshapes), e.g. the vocabulary of an embedding; None if there is none."""
    frontier, seen = [name], set()
    while frontier:
        t = frontier.pop(0)
        seen.add(t)
        for op in graph.consumers.get(t, ()):
            if op.kind == "Gather" and len(op.inputs) > 1 and op.inputs[1] == t:
                shape = graph.tensor(op.inputs[0]).shape
                return shape[int(op.attr("axis", 0) or 0) % len(shape)]
            if op.kind in PASS_THROUGH_OPS and op.inputs[0] == t:
                frontier += [o for o in op.outputs if o and o not in seen]
    return None


def _np_dtype(t: ir.Tensor) -> np.dtype:
    if t.dtype is ir.DType.BFLOAT16:
        raise InputsError(f"input {t.name} is bfloat16, which numpy cannot hold; "
                          "verify a float32 or float16 export of the model")
    return np.dtype(t.dtype.value)


def load_inputs(path: str | Path, graph: ir.Graph) -> dict[str, np.ndarray]:
    """Inputs from an .npz keyed by input name (or `input.NAME`, as --save-outputs writes
    them); `output.*` and `reference.*` entries and the model's output names are ignored (so one
    file can hold inputs and expected outputs). Shapes and dtypes must match."""
    arrays = _read_npz(Path(path))
    named = {k.removeprefix("input."): v for k, v in arrays.items()
             if not k.startswith(("output.", "reference.")) and k not in graph.outputs}
    unknown = sorted(set(named) - set(graph.inputs))
    missing = [n for n in graph.inputs if n not in named]
    if unknown or missing:
        what = f"has no {', '.join(missing)}" if missing else f"names {', '.join(unknown)}"
        raise InputsError(f"{path} {what}; the model's inputs are: {', '.join(graph.inputs)}")
    for name in graph.inputs:
        _check_input(path, graph.tensor(name), named[name])
    return {n: named[n] for n in graph.inputs}


def load_expected(path: str | Path, graph: ir.Graph) -> dict[str, np.ndarray]:
    """Expected outputs from an .npz keyed by output name (or `reference.NAME`, so a
    --save-outputs file reads back as ORT's outputs of that run); `input.*` and `output.*`
    entries and the model's input names are ignored. Every other name must be an output."""
    arrays = _read_npz(Path(path), "outputs")
    named = {k.removeprefix("reference."): v for k, v in arrays.items()
             if not k.startswith(("input.", "output.")) and k not in graph.inputs}
    unknown = sorted(set(named) - set(graph.outputs))
    if unknown or not named:
        what = (f"names {', '.join(unknown)}, which is not an output of {graph.name}" if unknown
                else "holds no outputs")
        raise InputsError(f"{path} {what}; its outputs are: {', '.join(graph.outputs)}")
    return named


def _read_npz(path: Path, what: str = "inputs") -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise InputsError(f"{path}: no such {what} file") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise InputsError(f"{path}: not a readable .npz archive ({type(exc).__name__})") from None


def _check_input(path: str | Path, t: ir.Tensor, a: np.ndarray) -> None:
    if a.shape != t.shape:
        raise InputsError(
            f"{path}: {t.name} has shape {_dims(a.shape)} but the model was compiled for "
            f"{_dims(t.shape)}; compile again with --input-shapes {t.name}:{_dims(a.shape)}")
    if a.dtype != _np_dtype(t):
        raise InputsError(f"{path}: {t.name} is {a.dtype}, the model takes {t.dtype.value}")


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


# --- ONNX Runtime --------------------------------------------------------------------------


def run_reference(source: str | Path, inputs: Mapping[str, np.ndarray],
                  extra_outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """ONNX Runtime on the original model: its outputs and those of `extra_outputs` that the
    source graph computes, by name."""
    session = _session(reference_model_bytes(source, extra_outputs), str(source))
    missing = [i.name for i in session.get_inputs() if i.name not in inputs]
    if missing:
        raise InputsError(f"{source}: no value for input(s) {', '.join(missing)}")
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    try:
        values = session.run(names, feed)
    except Exception as exc:  # ORT raises its own pybind types
        msg = f"ONNX Runtime failed to run {source}: {_first_line(exc)}"
        raise ReferenceRunError(msg) from None
    return dict(zip(names, values, strict=True))


def _session(model: bytes, name: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = min(2, os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # fatal only: ORT's errors come back as exceptions (one line)
    try:
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ReferenceRunError(f"ONNX Runtime cannot load {name}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- comparing one tensor --------------------------------------------------------------------


@dataclass(frozen=True)
class TensorCheck:
    """One tensor compared with ORT's. `where` is the index of the largest absolute error (or
    of the first NaN/Inf mismatch), `got`/`ref` the values there; `min_atol` the smallest atol
    that passes at this rtol; `nan`/`inf` count NaN/Inf in the result where ORT has none."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    max_rel: float
    where: tuple[int, ...] | None
    got: float
    ref: float
    pearson: float
    min_atol: float
    nan: int
    inf: int
    nonfinite_mismatches: int
    atol: float
    rtol: float
    passed: bool
    note: str = ""  # why it could not be compared (missing, shape), when it could not
    nan_both: int = 0  # elements NaN on both sides: a failure unless allow_nan
    finite: int = -1  # elements finite on both sides (-1: not counted)
    reference: str = ORT  # what `ref` is: ONNX Runtime, or the --load-outputs file
    allow_nan: bool = False  # NaN on both sides passed

    def line(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        head = f"{status} {self.name}" + ("" if self.reference == ORT else f" vs {self.reference}")
        if self.note:
            return f"{head}: {self.note}"
        at = f"at {list(self.where)}: {_pair(self.got, self.ref)}" if self.where else "empty"
        stats = f"max rel {_e(self.max_rel)}, PCC {self.pearson:.6f}"
        if self.nonfinite_mismatches:
            rest = ("no finite elements" if self.nonfinite_mismatches == math.prod(self.shape)
                    else f"finite elements: max abs {_e(self.max_abs)}, {stats}")
            text = (f"{head}: {self._nonfinite()}; {self.nonfinite_mismatches} non-finite "
                    f"mismatch(es), first {at}; {rest}")
        elif self.nan_both and not self.finite:
            text = (f"{head}: non-finite: {self.nan_both} NaN on both sides, allowed by "
                    "--allow-nan; no finite elements")
        else:
            text = (f"{head}: max abs {_e(self.max_abs)} ({at}), {stats}, passes "
                    f"at atol >= {_e(self.min_atol)}")
            if self.nan_both:
                text += (f"; non-finite: {self.nan_both} NaN on both sides, allowed by "
                         "--allow-nan")
        return text if self.passed else f"{text} (atol {self.atol:g}, rtol {self.rtol:g})"

    def _nonfinite(self) -> str:
        who = "ORT" if self.reference == ORT else "the file"
        parts = [f"{self.nan} NaN, {self.inf} Inf where {who} has none"] \
            if self.nan or self.inf or not self.nan_both else []
        if self.nan_both:
            how = ", allowed by --allow-nan" if self.allow_nan else " (--allow-nan accepts them)"
            parts.append(f"non-finite: {self.nan_both} NaN on both sides{how}")
        return "; ".join(parts)


def compare(name: str, got: np.ndarray, ref: np.ndarray, atol: float, rtol: float, *,
            allow_nan: bool = False, reference: str = ORT) -> TensorCheck:
    """`got` (ours) against `ref` (ORT's, or `reference`'s): error statistics and the allclose
    verdict. NaN on both sides fails unless `allow_nan`; equal infinities match."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        who = "ONNX Runtime's" if reference == ORT else f"{reference}'s"
        return replace(missing_check(name, got.shape, atol, rtol,
                                     f"shape {list(got.shape)}, {who} is {list(ref.shape)}"),
                       reference=reference)
    with np.errstate(all="ignore"):  # Inf - Inf, x / tiny: masked below
        check = _compare(name, got.astype(np.float64), ref.astype(np.float64), atol, rtol,
                         allow_nan)
    return replace(check, reference=reference) if reference != ORT else check


def _compare(name: str, g: np.ndarray, r: np.ndarray, atol: float, rtol: float,
             allow_nan: bool) -> TensorCheck:
    finite = np.isfinite(g) & np.isfinite(r)
    nan_both = np.isnan(g) & np.isnan(r)
    same_nonfinite = (nan_both if allow_nan else False) | (np.isinf(g) & (g == r))
    bad = ~finite & ~same_nonfinite
    diff = np.where(finite, np.abs(g - r), 0.0)
    scale = np.where(finite, np.abs(r), 0.0)
    slack = diff - rtol * scale
    where = _where(bad, diff)
    n_bad = int(bad.sum())
    passed = not n_bad and bool(np.all(diff <= atol + rtol * scale))
    return TensorCheck(
        name=name, shape=g.shape, max_abs=math.inf if n_bad else _max(diff),
        mean_abs=_mean(diff, finite),
        max_rel=_max(diff / np.maximum(scale, _rel_floor(scale, finite))), where=where,
        got=float(g[where]) if where is not None else math.nan,
        ref=float(r[where]) if where is not None else math.nan,
        pearson=_pearson(g[finite], r[finite], passed),
        min_atol=math.inf if n_bad else max(_max(slack), 0.0),
        nan=int((np.isnan(g) & ~np.isnan(r)).sum()), inf=int((np.isinf(g) & (g != r)).sum()),
        nonfinite_mismatches=n_bad, atol=atol, rtol=rtol, passed=passed,
        nan_both=int(nan_both.sum()), finite=int(finite.sum()), allow_nan=allow_nan)


def missing_check(name: str, shape: tuple[int, ...], atol: float, rtol: float,
                  note: str) -> TensorCheck:
    """A failed check of a tensor that could not be compared."""
    return TensorCheck(name, tuple(shape), math.inf, math.inf, math.inf, None, math.nan,
                       math.nan, 0.0, math.inf, 0, 0, 0, atol, rtol, False, note)


def _where(bad: np.ndarray, diff: np.ndarray) -> tuple[int, ...] | None:
    if diff.size == 0:
        return None
    flat = int(np.argmax(bad)) if bad.any() else int(np.argmax(diff))
    return tuple(int(i) for i in np.unravel_index(flat, diff.shape))


def _max(a: np.ndarray) -> float:
    return float(a.max()) if a.size else 0.0


def _mean(diff: np.ndarray, finite: np.ndarray) -> float:
    return float(diff[finite].mean()) if finite.any() else 0.0


def _rel_floor(scale: np.ndarray, finite: np.ndarray) -> float:
    rms = math.sqrt(float(np.mean(scale[finite] ** 2))) if finite.any() else 0.0
    return max(REL_FLOOR * rms, np.finfo(np.float64).tiny)


def _pearson(g: np.ndarray, r: np.ndarray, within_tolerance: bool) -> float:
    """Pearson correlation; where it is undefined (a constant side, or no elements) 1.0 when
    the tensors agree within tolerance and 0.0 when they do not."""
    if g.size < 2:
        return 1.0 if within_tolerance else 0.0
    gc, rc = g - g.mean(), r - r.mean()
    denom = math.sqrt(float(np.dot(gc, gc)) * float(np.dot(rc, rc)))
    if denom == 0.0:
        return 1.0 if within_tolerance else 0.0
    return max(-1.0, min(1.0, float(np.dot(gc, rc)) / denom))


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCheck:
    """One layer: every tensor it hands on (to a later layer, or as a graph output) compared;
    `check` is the first that failed, else the one with the largest max abs error, and `op`
    the ONNX node producing it."""

    layer: str
    op: str  # the ONNX node producing check's tensor
    op_kind: str
    check: TensorCheck
    tensors: int = 1  # how many tensors the layer hands on, all compared
    failed: int = 0  # how many of them failed

    @property
    def passed(self) -> bool:
        return not self.failed

    def line(self) -> str:
        more = ("" if self.tensors == 1 else
                f" [{self.failed} of {self.tensors} tensors failed]" if self.failed else
                f" [worst of {self.tensors} tensors]")
        return f"layer {self.layer} ({self.op}, {self.op_kind}): {self.check.line()}{more}"


@dataclass(frozen=True)
class Divergence:
    """Where results first leave tolerance: the layer, and the op and tensor inside it."""

    layer: str
    op: str
    op_kind: str
    tensor: str


@dataclass(frozen=True)
class VerifyReport:
    outputs: tuple[TensorCheck, ...]
    layers: tuple[LayerCheck, ...]  # one per layer, in layer order; empty without --per-layer
    first_diverging: Divergence | None
    passed: bool  # every graph output, layer and expected output passed
    atol: float
    rtol: float
    seed: int | None  # None when the inputs came from a file
    precision: str
    overrides: tuple[tuple[str, float], ...] = ()
    unmatched: tuple[str, ...] = ()  # layer tensors the source model does not compute
    model: str = ""
    target: str = ""
    inputs: str = ""  # "random (seed N)" or the --inputs path
    allow_nan: bool = False
    expected: tuple[TensorCheck, ...] = ()  # our outputs against the --load-outputs file
    expected_file: str = ""  # that file

    def lines(self) -> list[str]:
        """Per-layer lines (with --per-layer), a line per output (and per expected output with
        --load-outputs), and the summary."""
        return [*(lc.line() for lc in self.layers), *(c.line() for c in self.outputs),
                *(c.line() for c in self.expected), self.summary()]

    def summary(self) -> str:
        how = f"{self.precision}, atol {self.atol:g}, rtol {self.rtol:g}, inputs {self.inputs}"
        worst = max((c.max_abs for c in (*self.outputs, *self.expected)), default=0.0)
        nonfinite = sum(c.nonfinite_mismatches > 0 for c in (*self.outputs, *self.expected))
        nf = f"; non-finite values (NaN/Inf) fail {nonfinite} check(s)" if nonfinite else ""
        allowed = sum(c.nan_both > 0 and not c.nonfinite_mismatches for c in self.outputs)
        nf += (f"; NaN on both sides in {allowed} output(s), allowed by --allow-nan"
               if allowed else "")
        return f"{self._head()} ({how}); max abs error {_e(worst)}{nf}{self._layer_note()}"

    def _head(self) -> str:
        n, k = len(self.outputs), len(self.expected)
        if self.passed:
            also = f" and {k} match {self.expected_file}" if self.expected else ""
            return f"PASSED: {n} output(s) of {self.model} match ONNX Runtime{also}"
        counts = ((sum(not c.passed for c in self.outputs), n, "output(s)", "ONNX Runtime"),
                  (sum(not c.passed for c in self.expected), k, "output(s)",
                   self.expected_file),
                  (sum(not lc.passed for lc in self.layers), len(self.layers), "layer(s)",
                   "ONNX Runtime"))
        reasons = [f"{bad} of {total} {what}{{of}} differ from {ref}"
                   for bad, total, what, ref in counts if bad]
        reasons = [r.replace("{of}", f" of {self.model}" if i == 0 else "")
                   for i, r in enumerate(reasons or ["nothing compared{of}"])]
        return "FAILED: " + "; ".join(reasons)

    def _layer_note(self) -> str:
        d = self.first_diverging
        if d is not None:
            return f"; first diverging layer {d.layer}: {d.op} ({d.op_kind}) -> {d.tensor}"
        if self.layers:
            return f"; all {len(self.layers)} layer(s) within tolerance"
        return ""

    def to_dict(self) -> dict[str, Any]:
        doc = {"schema_version": VERIFY_SCHEMA_VERSION,
               "tool": {"name": "wafer", "version": __version__}, **asdict(self)}
        doc["overrides"] = dict(self.overrides)
        return _jsonable(doc)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"


def _jsonable(x: Any) -> Any:
    """Non-finite floats as strings ("inf", "nan"): JSON has no such numbers."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _e(x: float) -> str:
    return f"{x:.2g}" if math.isfinite(x) else str(x)


def _pair(got: float, ref: float) -> str:
    """Both values, with enough digits to tell them apart (up to float32's 9)."""
    digits = 6 if f"{got:.6g}" != f"{ref:.6g}" else 9
    return f"{got:.{digits}g} vs {ref:.{digits}g}"


# --- verify: pure comparison -----------------------------------------------------------------


def layer_outputs(graph: ir.Graph) -> dict[str, list[str]]:
    """Per layer (in order), the tensors it hands on: read by a later layer, or graph outputs."""
    last_reader: dict[str, int] = {}
    for i, layer in enumerate(graph.layers):
        for op in layer.ops:
            for name in op.inputs:
                last_reader[name] = i
    outputs = set(graph.outputs)
    return {layer.name: [o for op in layer.ops for o in op.outputs
                         if o and (o in outputs or last_reader.get(o, -1) > i)]
            for i, layer in enumerate(graph.layers)}


def check_overrides(graph: ir.Graph, overrides: Mapping[str, float]) -> None:
    unknown = [n for n in overrides if n not in graph.tensor_map]
    if unknown:
        raise UsageError(f"--tol names {', '.join(unknown)}, which is not a tensor of the model; "
                         f"its outputs are: {', '.join(graph.outputs)}")


@dataclass(frozen=True)
class Tolerance:
    """atol (or a tensor's override), rtol, and whether NaN on both sides passes."""

    atol: float
    rtol: float
    overrides: Mapping[str, float]
    allow_nan: bool = False

    def check(self, name: str, got: np.ndarray, ref: np.ndarray, reference: str = ORT):
        return compare(name, got, ref, self.overrides.get(name, self.atol), self.rtol,
                       allow_nan=self.allow_nan, reference=reference)


def verify(graph: ir.Graph, executor_outputs: Mapping[str, np.ndarray],
           reference: Mapping[str, np.ndarray], layer_outputs: Mapping[str, Sequence[str]] | None,
           atol: float, rtol: float, overrides: Mapping[str, float] | None = None, *,
           seed: int | None = 0, precision: str = FP32, fail_fast: bool = False,
           allow_nan: bool = False, expected: Mapping[str, np.ndarray] | None = None,
           expected_file: str = "expected") -> VerifyReport:
    """Compare the executor's values (graph outputs, and with `layer_outputs` the tensors each
    layer hands on) with ORT's, and the graph outputs with `expected` (by name) when given.
    `overrides` gives an atol per tensor name."""
    tol = Tolerance(atol, rtol, dict(overrides or {}), allow_nan)
    check_overrides(graph, tol.overrides)
    outs = _check_outputs(graph, executor_outputs, reference, tol, fail_fast)
    exp = tuple(_check(graph, n, executor_outputs, expected, tol, expected_file)
                for n in graph.outputs if n in (expected or {}))
    layers, unmatched = _check_layers(graph, layer_outputs or {}, executor_outputs, reference,
                                      tol, fail_fast)
    first = next((Divergence(lc.layer, lc.op, lc.op_kind, lc.check.name)
                  for lc in layers if not lc.passed), None)
    passed = (len(outs) == len(graph.outputs) and all(c.passed for c in (*outs, *exp))
              and all(lc.passed for lc in layers))
    return VerifyReport(outs, layers, first, passed, atol, rtol, seed, precision,
                        tuple(sorted(tol.overrides.items())), unmatched, graph.name,
                        inputs="file" if seed is None else f"random (seed {seed})",
                        allow_nan=allow_nan, expected=exp,
                        expected_file=expected_file if expected is not None else "")


def _check_outputs(graph: ir.Graph, got: Mapping[str, np.ndarray],
                   ref: Mapping[str, np.ndarray], tol: Tolerance,
                   fail_fast: bool) -> tuple[TensorCheck, ...]:
    checks: list[TensorCheck] = []
    for name in graph.outputs:
        checks.append(_check(graph, name, got, ref, tol))
        if fail_fast and not checks[-1].passed:
            break
    return tuple(checks)


def _check(graph: ir.Graph, name: str, got: Mapping[str, np.ndarray],
           ref: Mapping[str, np.ndarray], tol: Tolerance, reference: str = ORT) -> TensorCheck:
    shape = graph.tensor(name).shape
    atol = tol.overrides.get(name, tol.atol)
    if name not in got:
        return missing_check(name, shape, atol, tol.rtol, "the executor did not produce it")
    if name not in ref:
        return missing_check(name, shape, atol, tol.rtol, "ONNX Runtime did not return it")
    return tol.check(name, got[name], ref[name], reference)


def _check_layers(graph: ir.Graph, per_layer: Mapping[str, Sequence[str]],
                  got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                  tol: Tolerance,
                  fail_fast: bool) -> tuple[tuple[LayerCheck, ...], tuple[str, ...]]:
    """One LayerCheck per layer with at least one tensor ORT also computes."""
    checks: list[LayerCheck] = []
    unmatched: list[str] = []
    for layer in graph.layers:
        names = per_layer.get(layer.name, ())
        unmatched += [n for n in names if n not in ref]
        tensors = [_check(graph, n, got, ref, tol) for n in names if n in ref]
        if tensors:
            checks.append(_layer_check(graph, layer.name, tensors))
        if fail_fast and checks and not checks[-1].passed:
            break
    return tuple(checks), tuple(unmatched)


def _layer_check(graph: ir.Graph, layer: str, tensors: Sequence[TensorCheck]) -> LayerCheck:
    failed = [c for c in tensors if not c.passed]
    shown = failed[0] if failed else max(tensors, key=lambda c: c.max_abs)
    op = graph.producers[shown.name]
    return LayerCheck(layer, op.name, op.kind, shown, len(tensors), len(failed))


def layer_activations(graph: ir.Graph, layer: str) -> list[str]:
    """Every tensor the ops of `layer` compute, in op order."""
    ops = next(la.ops for la in graph.layers if la.name == layer)
    return [o for op in ops for o in op.outputs if o]


def first_diverging_op(graph: ir.Graph, layer: str, got: Mapping[str, np.ndarray],
                       ref: Mapping[str, np.ndarray], atol: float, rtol: float,
                       overrides: Mapping[str, float] | None = None, *,
                       allow_nan: bool = False) -> Divergence | None:
    """Inside a diverging layer: the first op (in order) whose output leaves tolerance."""
    tol = Tolerance(atol, rtol, overrides or {}, allow_nan)
    for name in layer_activations(graph, layer):
        if name not in got or name not in ref:
            continue
        if not tol.check(name, got[name], ref[name]).passed:
            op = graph.producers[name]
            return Divergence(layer, op.name, op.kind, name)
    return None


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


def refuse_streamed_prompt(model: dict, options: dict) -> None:
    """A placement that holds one decode step's activations cannot run the whole prompt."""
    if options.get("prompt_resident", True) is False:
        dims = ", ".join(f"{k}={v}" for k, v in model.get("dims", {}).items())
        raise UsageError(
            f"{model.get('name', 'the model')} was compiled with the prompt streamed through in "
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
    doc = _read_json(out / "placement.json")
    model, target_rec, options = (_table(doc, key, out) for key in ("model", "target", "options"))
    refuse_shape_only(model.get("name", str(out)), bool(model.get("shape_only")))
    refuse_streamed_prompt(model, options)
    source = _recorded_model(out, model)
    target = _recorded_target(out, target_rec)
    dims = DimRequest(_input_shapes(source, _table(model, "dims", out)))
    graph = load_model(source, FrontendOptions(dims, shapes_only=False))
    schedule = _schedule(out)
    if schedule.model != graph.name:
        raise WaferError(f"{out}/schedule.json is for {schedule.model}, not {graph.name}")
    return Artifact(source, graph, target, schedule)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} not found: give an OUT directory written by "
                         "`wafer compile`") from None
    except (OSError, ValueError) as exc:
        raise WaferError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise WaferError(f"{path}: expected a JSON object; compile again")
    return doc


def _table(doc: Mapping[str, Any], key: str, out: Path) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise WaferError(f"{out}/placement.json: {key} is not an object; compile again")
    return value


def _schedule(out: Path):
    """schedule.json parsed and checked; any structural damage is a one-line error."""
    from compiler.outdir.trace import schedule_doc_problems, schedule_from_doc

    path = out / "schedule.json"
    doc = _read_json(path)
    problems = schedule_doc_problems(doc)
    if problems:
        raise WaferError(f"{path}: {problems[0]}; compile again")
    return schedule_from_doc(doc)


def _recorded_model(out: Path, model: Mapping[str, Any]) -> str:
    from compiler.frontend.load import source_digest

    source = str(model.get("source", ""))
    try:
        digest = source_digest(source)
    except (KeyError, OSError):
        raise WaferError(f"{out}: the model it was compiled from, {source!r}, is not found "
                         "(paths are relative to where `wafer compile` ran)") from None
    if digest != model.get("sha256"):
        raise WaferError(f"{out}: {source} changed since it was compiled (sha256 differs); "
                         "compile it again")
    return source


def _recorded_target(out: Path, rec: Mapping[str, Any]) -> Target:
    from compiler.target import builtin_names, load_target

    source, name = str(rec.get("source", "")), str(rec.get("name", ""))
    builtin = Path(source).stem if source.startswith("targets/") else ""
    target = load_target(builtin if builtin in builtin_names() else source)
    if target.sha256 != rec.get("sha256"):
        raise WaferError(f"{out}: target {name} ({source}) changed since the compile "
                         "(sha256 differs); compile again")
    return target


def _input_shapes(source: str, dims: Mapping[str, int]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The recorded dim bindings as whole input shapes (--input-shapes)."""
    from compiler.frontend.export import input_specs

    shapes = []
    for name, _, spec in input_specs(source):
        unbound = [d for d in spec if isinstance(d, str) and d not in dims]
        if unbound:
            raise WaferError(f"placement.json records no size for dim {unbound[0]!r} of input "
                             f"{name}; compile again with --input-shapes {name}:[...]")
        shapes.append((name, tuple(dims[d] if isinstance(d, str) else d for d in spec)))
    return tuple(shapes)
