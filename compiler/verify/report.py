"""What verification found, as data and as text: a TensorCheck per compared tensor, a
LayerCheck per layer, the first Divergence, and the VerifyReport (verify.json's document and the
printed lines)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from compiler import __version__
from compiler.outdir.write import verify_text

VERIFY_SCHEMA_VERSION = "1.1"  # 1.1: one `layers` entry per layer; expected, allow_nan
ORT = "onnxruntime"  # TensorCheck.reference when comparing with ONNX Runtime


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
        """verify.json's text (its format is compiler.outdir's)."""
        return verify_text(self.to_dict())


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

