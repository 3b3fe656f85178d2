"""Kernels of quantized graphs, reproducing ONNX Runtime's CPU integer arithmetic exactly.

The QDQ form (QuantizeLinear / DequantizeLinear, per tensor or per axis; int8, uint8, int4,
uint4 and the float8 types), the dynamic form (DynamicQuantizeLinear + MatMulInteger) and the
QOperator ops (QLinearMatMul, com.microsoft QGemm, QLinearAdd, QLinearMul, QLinearSoftmax,
QLinearConcat, QLinearSigmoid: those five at the end of the file). ORT's rules, step by step:

- quantize: x / scale in float32, clamped to the type's range shifted by the zero point (NaN
  to its minimum), rounded half to even, plus the zero point (MLAS QuantizeLinear); float8:
  x / scale rounded to nearest even, saturated to the largest finite value unless `saturate=0`;
- dequantize: (int32(x) - zero_point) converted to float32, times the scale;
- integer matmuls accumulate (a - a_zp) x (b - b_zp) in int32; a quantized output is
  requantized as float32(acc) x (a_scale x b_scale / y_scale), clamped, rounded half to even,
  plus y's zero point (MLAS RequantizeOutput).

The layouts keep every operand whole on each core (compiler/tiling/layouts.py), except per-
tensor QuantizeLinear / DequantizeLinear, QLinearAdd and QLinearMul, which are elementwise, and
QLinearSoftmax, whose normalized dims are whole (its float32 row sums run in order).
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
    # MLAS clamps with max/min instructions that return the bound for NaN (x / inf of an
    # infinite x, an infinite scale): NaN becomes the type's minimum
    q = np.where(np.isnan(q), (lo - z).astype(np.float32), q)
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


# --- QOperator elementwise and softmax (com.microsoft QLinearAdd, QLinearMul, QLinearSoftmax) --
# Per-tensor scales and zero points only (ORT enforces it). MLAS's x86-64 paths (an AVX2 + FMA
# CPU; others take other paths), step by step:
# - QLinearAdd (AVX2): ratios a_scale / c_scale and b_scale / c_scale in float32, a fixed part
#   c_zp - fma(a_zp, r_a, r_b * b_zp), then fused multiply-adds (b first, then a), rounded half
#   to even and saturated; a per-span scalar side (ORT hands it to MLAS as B) is folded into
#   the fixed part with a fused multiply-add too (as the compiler emits it).
# - QLinearMul (SSE2): (a - a_zp) x (b - b_zp) in integers, times a_scale x b_scale / c_scale
#   in float32, plus c_zp, rounded half to even and saturated.
# - QLinearSoftmax: a 256-entry float32 table of exp((i - 255 + shift) x_scale), the row's
#   entries at x - max + 255 summed in float32 in order, each times floor(1 / y_scale) over
#   the sum, rounded half to even, plus y_zp, saturated.


def _value(p: Operand | None, default: float = 0.0) -> float:
    """A per-tensor parameter's value (the same on every core)."""
    if p is None:
        return default
    data = p.value if p.value is not None else p.data[(0, 0)]
    return np.asarray(data).reshape(-1)[0].item()


def _fma32(x: np.ndarray, y, z) -> np.ndarray:
    """float32 fused multiply-add: x * y + z rounded once (exact in float64 for 8-bit x)."""
    return (np.asarray(x, np.float64) * np.float64(np.float32(y)) +
            np.asarray(z, np.float32).astype(np.float64)).astype(np.float32)


def _saturate(v: np.ndarray, dtype) -> np.ndarray:
    """cvtps_epi32 (half to even; NaN and anything past int32 become INT_MIN), then the packs'
    saturation: so NaN and huge values of either sign give the type's minimum."""
    lo, hi = _INT_RANGE[np.dtype(dtype)]
    with np.errstate(invalid="ignore"):
        fits = np.abs(v) < np.float32(2 ** 31)
    return np.where(fits, np.clip(np.rint(np.where(fits, v, 0)), lo, hi), lo).astype(dtype)


def _scalar_side(a: Operand, b: Operand) -> str | None:
    """Which input ORT's broadcaster treats as one value per span: the innermost dim the
    output has beyond 1 is 1 in that input (None: both run along it)."""
    rank = max(a.rank, b.rank)
    sa = (1,) * (rank - a.rank) + tuple(a.shape)
    sb = (1,) * (rank - b.rank) + tuple(b.shape)
    for da, db in zip(reversed(sa), reversed(sb), strict=True):
        if max(da, db) > 1:
            return "a" if da == 1 else "b" if db == 1 else None
    return None


@kernel("QLinearAdd")
def qlinear_add(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    a, a_s, a_zp, b, b_s, b_zp, c_s = ins[:7]
    c_zp = ins[7] if len(ins) > 7 else None
    rank = len(outs[0][0]) if outs else max(a.rank, b.rank)
    c = np.float32(_value(c_s))
    side = _scalar_side(a, b)
    (v, v_s, v_zp), (s, s_s, s_zp) = ((b, b_s, b_zp), (a, a_s, a_zp)) if side == "a" else \
        ((a, a_s, a_zp), (b, b_s, b_zp))
    r_v, r_s = np.float32(np.float32(_value(v_s)) / c), np.float32(np.float32(_value(s_s)) / c)
    fixed = np.float32(np.float32(_value(c_zp)) - np.float32(
        _fma32(np.float32(_value(v_zp)), r_v, np.float32(r_s * np.float32(_value(s_zp))))))
    x = lift(v, rank).astype(np.float32)
    y = lift(s, rank).astype(np.float32)
    if side is None:  # MLAS: fma(b, r_b, fixed), then fma(a, r_a, that)
        t = _fma32(x, r_v, _fma32(y, r_s, fixed))
    else:
        t = _fma32(x, r_v, _fma32(y, r_s, fixed))  # the compiler fuses the fold too
    return [_saturate(t, a.data.dtype)]


@kernel("QLinearMul")
def qlinear_mul(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    a, a_s, a_zp, b, b_s, b_zp, c_s = ins[:7]
    c_zp = ins[7] if len(ins) > 7 else None
    rank = len(outs[0][0]) if outs else max(a.rank, b.rank)
    ratio = np.float32(np.float32(np.float32(_value(a_s)) * np.float32(_value(b_s))) /
                       np.float32(_value(c_s)))
    x = lift(a, rank).astype(np.int32) - int(_value(a_zp))
    y = lift(b, rank).astype(np.int32) - int(_value(b_zp))
    v = (x * y).astype(np.float32) * ratio + np.float32(_value(c_zp))
    return [_saturate(v.astype(np.float32), a.data.dtype)]


def softmax_table(x_scale: float, reduce_len: int) -> np.ndarray:
    """ORT's lookup table: exp((i - 255 + shift) * x_scale), shift keeping the row sum of
    float32 entries finite (log(FLT_MAX / n) less 5 bits, in units of x_scale)."""
    import math

    top = float(np.float32(np.finfo(np.float32).max) / np.float32(reduce_len))
    shift = max(0.0, math.log(top) - 5.0) / float(np.float32(x_scale))
    scale = float(np.float32(x_scale))
    return np.array([math.exp((i - 255 + shift) * scale) for i in range(256)], np.float32)


def softmax_axes(op, rank: int) -> tuple[int, ...]:
    """The dims QLinearSoftmax normalizes over: from `axis` (default -1, at every `opset`) to
    the end when its `opset` attribute (the graph opset the quantizer saw) is below 13, the
    Softmax 2-D coercion; the one `axis` from 13 on."""
    opset = int(op.attr("opset", 13))
    axis = int(op.attr("axis", -1)) % max(rank, 1)  # the schema's default, at every opset
    return tuple(range(axis, rank)) if opset < 13 else (axis,)


@kernel("QLinearSoftmax")
def qlinear_softmax(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x, x_s = ins[0], ins[1]
    y_s, y_zp = ins[3], (ins[4] if len(ins) > 4 else None)
    dims = softmax_axes(op, x.rank)
    if any(x.spec[d] for d in dims):
        raise KernelError("QLinearSoftmax over a split dim")
    n = int(np.prod([x.shape[d] for d in dims]))
    table = softmax_table(_value(x_s), n)
    data = np.moveaxis(x.data, [d + 2 for d in dims], list(range(x.data.ndim - len(dims),
                                                                 x.data.ndim)))
    moved = data.shape
    rows = data.reshape(moved[:x.data.ndim - len(dims)] + (n,)).astype(np.int32)
    index = rows - rows.max(axis=-1, keepdims=True) + 255
    vals = table[index]
    total = np.add.accumulate(vals, axis=-1, dtype=np.float32)[..., -1:]
    y_scale = np.float32(np.floor(np.float32(1.0) / np.float32(_value(y_s))))
    q = np.rint((vals * y_scale).astype(np.float32) / total).astype(np.int64) + int(_value(y_zp))
    lo, hi = _INT_RANGE[np.dtype(x.data.dtype)]
    y = np.clip(q, lo, hi).astype(x.data.dtype).reshape(moved)
    return [np.moveaxis(y, list(range(x.data.ndim - len(dims), x.data.ndim)),
                        [d + 2 for d in dims])]


@kernel("QLinearConcat")
def qlinear_concat(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """com.microsoft QLinearConcat(Y_scale, Y_zp, (X, X_scale, X_zp)...): each input whose
    scale or zero point differs from Y's goes through ORT's 256-entry table (dequantize, then
    quantize to Y: MLAS's arithmetic), the others are copied; then a Concat along `axis`."""
    y_s, y_zp = ins[0], ins[1]
    to = {np.dtype(np.int8): 3, np.dtype(np.uint8): 2}[np.dtype(y_zp.data.dtype)]
    parts = []
    for x, s, z in zip(ins[2::3], ins[3::3], ins[4::3], strict=True):
        data = x.data
        if _value(s) != _value(y_s) or _value(z) != _value(y_zp):
            lo = np.iinfo(data.dtype).min
            values = np.arange(lo, lo + 256).astype(data.dtype)
            table = quantize(dequantize(values, np.float32(_value(s)), z.data.dtype.type(
                _value(z))), np.float32(_value(y_s)), y_zp.data.dtype.type(_value(y_zp)), to)
            data = table[data.astype(np.int32) - lo]
        parts.append(data)
    rank = x.rank
    mesh = np.broadcast_shapes(*(p.shape[:2] for p in parts))
    parts = [np.broadcast_to(p, mesh + p.shape[2:]) for p in parts]
    return [np.concatenate(parts, axis=int(op.attr("axis", 0)) % rank + 2)]


# MLAS's logistic (Eigen's rational approximation; on x86-64 its FMA3 kernel), float32
_LOGISTIC = {k: np.float32(v) for k, v in {
    "a9": 4.37031012579801e-11, "a7": 1.15627324459942e-07, "a5": 6.08574864600143e-05,
    "a3": 8.51377133304701e-03, "a1": 2.48287947061529e-01, "b10": 6.10247389755681e-13,
    "b8": 5.76102136993427e-09, "b6": 6.29106785017040e-06, "b4": 1.70198817374094e-03,
    "b2": 1.16817656904453e-01, "b0": 9.93151921023180e-01}.items()}


def mlas_logistic(x: np.ndarray) -> np.ndarray:
    """x clamped to [-18, 18]; p = x (((a9 x^2 + a7) x^2 + a5) x^2 + a3) x^2 + a1), q likewise
    from b10 to b0, each step a fused multiply-add; p / q + 0.5 clamped to [0, 1]."""
    c = _LOGISTIC
    v = np.clip(_f32(x), np.float32(-18), np.float32(18))
    v2 = v * v
    p = _fma_f(v2, c["a9"], c["a7"])
    for k in ("a5", "a3", "a1"):
        p = _fma_f(p, v2, c[k])
    p = p * v
    q = _fma_f(v2, c["b10"], c["b8"])
    for k in ("b6", "b4", "b2", "b0"):
        q = _fma_f(q, v2, c[k])
    return np.clip(p / q + np.float32(0.5), np.float32(0), np.float32(1)).astype(np.float32)


def _fma_f(x: np.ndarray, y, z) -> np.ndarray:
    """float32 fma of float32 values (their product exact in float64, one rounding)."""
    return (np.asarray(x, np.float64) * np.asarray(y, np.float64) + np.float64(z)).astype(
        np.float32)


@kernel("QLinearSigmoid")
def qlinear_sigmoid(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """com.microsoft QLinearSigmoid: ORT's 256-entry table, each value dequantized
    (x_scale * (x - x_zp) in float32), through MLAS's logistic, quantized to Y (MLAS)."""
    x, x_s, x_zp, y_s = ins[:4]
    y_zp = ins[4] if len(ins) > 4 else None
    dtype = x.data.dtype
    lo = np.iinfo(dtype).min
    values = np.arange(lo, lo + 256)
    deq = (values - int(_value(x_zp))).astype(np.float32) * np.float32(_value(x_s))
    to = {np.dtype(np.int8): 3, np.dtype(np.uint8): 2}[np.dtype(dtype)]
    table = quantize(mlas_logistic(deq), np.float32(_value(y_s)),
                     np.asarray(int(_value(y_zp)), dtype), to)
    return [table[x.data.astype(np.int32) - lo]]
