"""Comparing our values with the reference, numpy's allclose way: a tensor passes when
|got - ref| <= atol + rtol * |ref| everywhere, and a NaN or Inf where the reference has none (or
none where it has one) fails; NaN on both sides fails unless allowed. Per output, and per layer
(the tensors each layer hands on), with the first diverging layer and op. docs/verify.md."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from compiler import ir
from compiler.errors import UsageError
from compiler.verify.report import ORT, Divergence, LayerCheck, TensorCheck, VerifyReport
from compiler.vocab import Precision

FP32, TARGET, TARGET_STRICT = Precision.FP32, Precision.TARGET, Precision.TARGET_STRICT
# (atol, rtol) by the precision the executor computes in; --atol/--rtol override. The 16-bit
# ones hold the tiny zoo models with a 2x margin (docs/verify.md); PCC is the better signal there.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-3), "float64": (1e-4, 1e-3),
    "float16": (5e-2, 1e-2), "bfloat16": (4e-1, 5e-2),
}
PCC_PASS = 0.99  # Tenstorrent's usual bar; reported, not enforced
REL_FLOOR = 1e-3  # max rel divides by max(|ref|, REL_FLOOR * rms(ref))


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

