"""Kernels of quantized graphs, reproducing ONNX Runtime's CPU integer arithmetic exactly.

The QDQ form (QuantizeLinear / DequantizeLinear, per tensor or per axis; int8, uint8, int4,
uint4 and the float8 types), the dynamic form (DynamicQuantizeLinear + MatMulInteger) and the
QOperator matmuls (QLinearMatMul, com.microsoft QGemm). ORT's rules, followed step by step:

- quantize: x / scale in float32, clamped to the type's range shifted by the zero point,
  rounded half to even, plus the zero point (MLAS QuantizeLinear); float8: x / scale rounded
  to nearest even, saturated to the largest finite value unless `saturate=0`;
- dequantize: (int32(x) - zero_point) converted to float32, times the scale;
- integer matmuls accumulate (a - a_zp) x (b - b_zp) in int32; a quantized output is
  requantized as float32(acc) x (a_scale x b_scale / y_scale), clamped, rounded half to even,
  plus y's zero point (MLAS RequantizeOutput).

The layouts keep every operand whole on each core (compiler/tiling/layouts.py), except per-
tensor QuantizeLinear / DequantizeLinear, which are elementwise.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from compiler.executor.kernels import Ctx, KernelError, Operand, kernel, lift

# ONNX element types of quantized outputs (output_dtype / the zero point's type)
_INT_RANGE = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}
_FLOAT8 = {17: ml_dtypes.float8_e4m3fn, 18: ml_dtypes.float8_e4m3fnuz,
           19: ml_dtypes.float8_e5m2, 20: ml_dtypes.float8_e5m2fnuz}
_INT4 = {21: (np.uint8, 0, 15), 22: (np.int8, -8, 7)}  # ONNX UINT4 = 21, INT4 = 22
_ONNX_INT8 = {2: np.uint8, 3: np.int8}


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _per_axis(op, p: Operand | None, x: Operand) -> np.ndarray | None:
    """A scale or zero point shaped to broadcast against x's blocked data: a scalar as is, a
    1-D tensor along `axis` (per channel), a blocked one (block_size) repeated along it."""
    if p is None:
        return None
    rank = x.rank
    if p.rank == 0:
        return p.data.reshape(p.data.shape[:2] + (1,) * rank)
    if p.rank == 1 and rank > 1:
        axis = int(op.attr("axis", 1)) % rank
        shape = [1] * rank
        shape[axis] = p.shape[0]
        return p.data.reshape(p.data.shape[:2] + tuple(shape))
    block = int(op.attr("block_size", 0) or 0)
    if block:
        axis = int(op.attr("axis", 1)) % rank
        return np.repeat(p.data, block, axis=axis + 2)[
            (slice(None),) * (axis + 2) + (slice(0, x.shape[axis]),)]
    return lift(p, rank)


def _target_type(op, zp: Operand | None, outs: list) -> int:
    """The ONNX element type a QuantizeLinear writes: output_dtype (the frontend sets it from
    the output's type, so int4 and float8 are told from the int8 / float32 they are held in),
    else the zero point's type, else uint8."""
    explicit = int(op.attr("output_dtype", 0) or 0)
    if explicit:
        return explicit
    if zp is not None:
        return {np.dtype(np.int8): 3, np.dtype(np.uint8): 2}.get(zp.data.dtype, 2)
    return 2


def quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, to: int,
             saturate: bool = True) -> np.ndarray:
    """ORT's QuantizeLinear on numpy arrays (scale and zp already broadcastable)."""
    q = _f32(x) / _f32(scale)
    if to in _FLOAT8:
        return _to_float8(q + (_f32(zp) if zp is not None else 0), _FLOAT8[to], saturate)
    dtype, lo, hi = _int_range(to)
    z = np.zeros((), np.int32) if zp is None else np.asarray(zp).astype(np.int32)
    q = np.clip(q, (lo - z).astype(np.float32), (hi - z).astype(np.float32))
    return (np.rint(q).astype(np.int32) + z).astype(dtype)


def _int_range(to: int) -> tuple[type, int, int]:
    if to in _INT4:
        return _INT4[to]
    dtype = _ONNX_INT8.get(to)
    if dtype is None:
        raise KernelError(f"QuantizeLinear to ONNX element type {to} is not supported")
    lo, hi = _INT_RANGE[np.dtype(dtype)]
    return dtype, lo, hi


def _to_float8(q: np.ndarray, dtype, saturate: bool) -> np.ndarray:
    """float32 -> float8 (nearest even), held as float32; saturated to the finite range."""
    if saturate:
        top = float(ml_dtypes.finfo(dtype).max)
        q = np.where(np.isnan(q), q, np.clip(q, -top, top))
    return q.astype(dtype).astype(np.float32)


def dequantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None) -> np.ndarray:
    """ORT's DequantizeLinear: float32(int32(x) - zp) * scale (float8: float32(x) * scale)."""
    if x.dtype.kind == "f":  # float8 held as float32: the zero point is 0
        return _f32(x) * _f32(scale)
    z = np.zeros((), np.int32) if zp is None else np.asarray(zp).astype(np.int32)
    return (x.astype(np.int32) - z).astype(np.float32) * _f32(scale)


@kernel("QuantizeLinear")
def quantize_linear(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    to = _target_type(op, zp, outs)
    return [quantize(x.data, _per_axis(op, scale, x), _per_axis(op, zp, x), to,
                     bool(op.attr("saturate", 1)))]


@kernel("DequantizeLinear")
def dequantize_linear(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    return [dequantize(x.data, _per_axis(op, scale, x), _per_axis(op, zp, x))]


@kernel("DynamicQuantizeLinear")
def dynamic_quantize_linear(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """uint8 with a scale and zero point from the range of the whole (whole on every core)
    input, which is widened to include 0; all zeros give scale 1."""
    x = _f32(ins[0].data)
    lead = x.shape[:2]
    flat = x.reshape(*lead, -1)
    lo = np.minimum(flat.min(axis=-1), np.float32(0))
    hi = np.maximum(flat.max(axis=-1), np.float32(0))
    scale = np.where(hi == lo, np.float32(1), (hi - lo) / np.float32(255)).astype(np.float32)
    initial = np.float32(0) - lo / scale
    zp = np.rint(np.clip(initial, np.float32(0), np.float32(255))).astype(np.uint8)
    shaped = (1,) * ins[0].rank
    y = quantize(x, scale.reshape(*lead, *shaped), zp.reshape(*lead, *shaped), 2)
    return [y, scale, zp]


def _centered(x: Operand, zp: Operand | None, axis_of_zp: int) -> np.ndarray:
    """int32(x) - zero point; a 1-D zero point runs along `axis_of_zp` (-1: B's columns)."""
    v = x.data.astype(np.int32)
    if zp is None:
        return v
    z = zp.data.astype(np.int32)
    if zp.rank == 0:
        return v - z.reshape(z.shape[:2] + (1,) * x.rank)
    if axis_of_zp == -2:  # a per-row zero point of A: [M] -> [M, 1]
        z = z[..., None]
    return v - z.reshape(z.shape[:2] + (1,) * (x.rank - (z.ndim - 2)) + z.shape[2:])


def _int_matmul(a: Operand, a_zp: Operand | None, b: Operand, b_zp: Operand | None
                ) -> np.ndarray:
    rank = max(a.rank, b.rank)
    x = _centered(a, a_zp, -2)
    y = _centered(b, b_zp, -1)
    x = x.reshape(x.shape[:2] + (1,) * (rank - a.rank) + x.shape[2:])
    y = y.reshape(y.shape[:2] + (1,) * (rank - b.rank) + y.shape[2:])
    return np.matmul(x, y)


@kernel("MatMulInteger")
def matmul_integer(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    a, b = ins[0], ins[1]
    a_zp = ins[2] if len(ins) > 2 else None
    b_zp = ins[3] if len(ins) > 3 else None
    return [_int_matmul(a, a_zp, b, b_zp).astype(np.int32)]


def requantize(acc: np.ndarray, scale: np.ndarray, zp: np.ndarray, dtype) -> np.ndarray:
    """MLAS RequantizeOutput: float32(acc) * scale, clamped to the type's range less the zero
    point, rounded half to even, plus the zero point."""
    lo, hi = _INT_RANGE[np.dtype(dtype)]
    z = np.asarray(zp).astype(np.int32)
    v = acc.astype(np.float32) * _f32(scale)
    v = np.clip(v, (lo - z).astype(np.float32), (hi - z).astype(np.float32))
    return (np.rint(v).astype(np.int32) + z).astype(dtype)


def _scalar(p: Operand, rank: int) -> np.ndarray:
    """A per-tensor parameter, or a per-column (last axis) one, broadcast against rank dims."""
    d = p.data
    return d.reshape(d.shape[:2] + (1,) * rank) if p.rank == 0 else lift(p, rank)


@kernel("QLinearMatMul")
def qlinear_matmul(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = ins
    acc = _int_matmul(a, a_zp, b, b_zp)
    rank = acc.ndim - 2
    scale = _f32(_scalar(a_scale, rank)) * _f32(_scalar(b_scale, rank)) / _f32(
        _scalar(y_scale, rank))
    return [requantize(acc, scale, _scalar(y_zp, rank), y_zp.data.dtype)]


@kernel("QGemm")
def qgemm(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """com.microsoft QGemm: alpha (A' - a_zp)(B' - b_zp) + C (int32 bias), requantized to y's
    type when y's scale is given, else float32(acc) * alpha * a_scale * b_scale."""
    a, a_scale, a_zp, b, b_scale, b_zp = ins[:6]
    c = ins[6] if len(ins) > 6 else None
    y_scale = ins[7] if len(ins) > 7 else None
    y_zp = ins[8] if len(ins) > 8 else None
    if op.attr("transA", 0):
        a = Operand(np.swapaxes(a.data, -1, -2), a.spec, a.shape[::-1])
    if op.attr("transB", 0):
        b = Operand(np.swapaxes(b.data, -1, -2), b.spec, b.shape[::-1])
    acc = _int_matmul(a, a_zp, b, b_zp)
    if c is not None:
        acc = acc + lift(c, 2).astype(np.int32)
    alpha = np.float32(op.attr("alpha", 1.0))
    scale = alpha * _f32(_scalar(a_scale, 2)) * _f32(_scalar(b_scale, 2))
    if y_scale is None:
        return [acc.astype(np.float32) * scale]
    dtype = y_zp.data.dtype if y_zp is not None else np.uint8
    zp = _scalar(y_zp, 2) if y_zp is not None else np.zeros((), np.int32)
    return [requantize(acc, scale / _f32(_scalar(y_scale, 2)), zp, dtype)]


# --- issue 15 coverage (h-coverage): com.microsoft QLinearConcat and QLinearSigmoid ---------


def _requantized(x: Operand, scale: Operand, zp: Operand | None, y_scale: Operand,
                 y_zp: Operand | None, fn=None) -> np.ndarray:
    """ORT's QLinearLookupBase: dequantize x (per-tensor scale and zero point), apply fn in
    float32, quantize to y's scale and zero point (y's type: its zero point's, else uint8)."""
    v = dequantize(x.data, _scalar(scale, x.rank), None if zp is None else _scalar(zp, x.rank))
    if fn is not None:
        v = fn(v)
    to = {np.dtype(np.int8): 3}.get(y_zp.data.dtype, 2) if y_zp is not None else 2
    return quantize(v, _scalar(y_scale, x.rank),
                    None if y_zp is None else _scalar(y_zp, x.rank), to)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return (np.float32(1) / (np.float32(1) + np.exp(-v))).astype(np.float32)


@kernel("QLinearSigmoid")
def qlinear_sigmoid(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """ORT tabulates sigmoid over the 256 input values with MLAS's logistic; float32's
    1 / (1 + exp(-x)) gives the same 8-bit results (tests/test_quant.py checks every value)."""
    x, x_scale, x_zp, y_scale = ins[:4]
    y_zp = ins[4] if len(ins) > 4 else None
    return [_requantized(x, x_scale, x_zp, y_scale, y_zp, _sigmoid)]


@kernel("QLinearConcat")
def qlinear_concat(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """Inputs (y_scale, y_zero_point, then x, x_scale, x_zero_point per input): an input with
    y's scale and zero point is copied, any other requantized to them (ORT's lookup table of
    dequantize-then-quantize), then all are concatenated along `axis`."""
    y_scale, y_zp = ins[0], ins[1]
    parts = []
    for x, scale, zp in zip(ins[2::3], ins[3::3], ins[4::3], strict=True):
        same = np.array_equal(scale.data, y_scale.data) and np.array_equal(zp.data, y_zp.data)
        parts.append(x.data if same else _requantized(x, scale, zp, y_scale, y_zp))
    axis = int(op.attr("axis")) % ins[2].rank
    return [np.concatenate(parts, axis=axis + 2)]
