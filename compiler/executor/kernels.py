"""numpy kernels: the living spec of every op's semantics, on tiles of all cores at once.

A kernel gets its operands as blocked arrays (R, C, *tile) with their specs and global shapes,
and returns the blocked outputs. Tile axes are the op's axes shifted by two (the mesh axes lead).
When a dim an op reduces over is split across cores, the kernel reduces its own tile and then
combines across the mesh axis (`Ctx.allreduce`): that is the statistics exchange the schedule
fuses into the step. Anything else that would need another core's data is not a kernel's job:
the schedule gathers it first, and a kernel that meets a split it cannot honour raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from compiler.tiling.layouts import Spec, tile_shape
from compiler.tiling.tiles import AXIS, mesh_shape, valid_mask
from compiler.vocab import RESHAPE_OPS, DataType

ONNX_DTYPES = {DataType.FLOAT: np.float32, DataType.UINT8: np.uint8, DataType.INT8: np.int8,
               DataType.INT16: np.int16, DataType.INT32: np.int32, DataType.INT64: np.int64,
               DataType.BOOL: np.bool_, DataType.FLOAT16: np.float16, DataType.DOUBLE: np.float64,
               DataType.BFLOAT16: np.float32}


class KernelError(Exception):
    """A kernel met a layout it cannot run locally (a schedule bug)."""


@dataclass
class Operand:
    data: np.ndarray  # blocked (R, C, *tile)
    spec: Spec
    shape: tuple[int, ...]  # global shape
    value: np.ndarray | None = None  # the whole tensor, for constants known on the host

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass
class Ctx:
    rows: int
    cols: int
    partial: str | None = None  # the output holds partial sums along this mesh axis

    def first_along_partial(self) -> np.ndarray | float:
        """1 on the first core of each line along the partial-sum axis, else 0: a term added
        once (a bias) must not be summed once per core by the reduction."""
        if self.partial is None:
            return 1.0
        size = self.rows if self.partial == "r" else self.cols
        shape = (size, 1) if self.partial == "r" else (1, size)
        return (np.arange(size) == 0).reshape(shape)

    def allreduce(self, x: np.ndarray, axis: str | None, how: str = "sum") -> np.ndarray:
        if axis is None:
            return x
        fn = {"sum": np.sum, "max": np.max}[how]
        return fn(x, axis=AXIS[axis], keepdims=True)

    def mask(self, shape: Sequence[int], spec: Spec) -> np.ndarray | None:
        return valid_mask(shape, spec, self.rows, self.cols)


Kernel = Callable[[object, list, list, Ctx], list[np.ndarray]]
KERNELS: dict[str, Kernel] = {}


def kernel(*names: str):
    def register(fn):
        for n in names:
            KERNELS[n] = fn
        return fn

    return register


def lift(x: Operand, rank: int) -> np.ndarray:
    """Right-align x's tile dims to `rank` (numpy broadcasting, mesh axes kept in front)."""
    d = x.data
    extra = rank - (d.ndim - 2)
    return d.reshape(d.shape[:2] + (1,) * extra + d.shape[2:]) if extra > 0 else d


def _axis(a: int, rank: int) -> int:
    return a % rank + 2


def _const(x: Operand) -> np.ndarray:
    if x.value is None:
        raise KernelError("an input that must be a constant is computed at run time")
    return x.value


# --- elementwise ------------------------------------------------------------------------------

_UNARY = {
    "Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Neg": np.negative, "Exp": np.exp,
    "Log": np.log, "Abs": np.abs, "Cos": np.cos, "Sin": np.sin, "Tanh": np.tanh,
    "Not": np.logical_not, "IsNaN": np.isnan, "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "Relu": lambda x: np.maximum(x, 0), "Softplus": lambda x: np.logaddexp(0, x),
    "Identity": lambda x: x,
}
_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
    "And": np.logical_and, "Or": np.logical_or, "Equal": np.equal, "Less": np.less,
    "LessOrEqual": np.less_equal, "Greater": np.greater, "GreaterOrEqual": np.greater_equal,
}


def erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26 on float64), numpy has none."""
    z = np.abs(x.astype(np.float64))
    t = 1 / (1 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (
        -1.453152027 + t * 1.061405429))))
    return (np.sign(x) * (1 - poly * np.exp(-z * z))).astype(x.dtype)


def _args(ins: list, rank: int) -> list[np.ndarray]:
    return [lift(x, rank) for x in ins if x is not None]


@kernel(*_UNARY, *_BINARY, "Div", "Max", "Min", "Where", "Erf", "Gelu", "Cast", "CastLike",
        "Clip", "Mod", "IsInf")
def elementwise(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    rank = len(outs[0][0])
    a = _args(ins, rank)
    return [_ELEMENTWISE.get(op.kind, _table)(op, a, ins)]


def _table(op, a, ins):
    if op.kind in _UNARY:
        return _UNARY[op.kind](a[0])
    return _BINARY[op.kind](a[0], a[1])


def _div(op, a, ins):
    if np.issubdtype(a[0].dtype, np.integer):
        return np.trunc(a[0] / a[1]).astype(a[0].dtype)
    return a[0] / a[1]


def _gelu(op, a, ins):
    x = a[0]
    if op.attr("approximate", "none") == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _clip(op, a, ins):
    """Bounds from the inputs (opset 11+) or the min/max attributes (opset 6-10)."""
    lo = a[1] if len(ins) > 1 and ins[1] is not None else op.attr("min")
    hi = a[-1] if len(ins) > 2 and ins[2] is not None else op.attr("max")
    return np.clip(a[0], lo, hi)


def _cast(x: np.ndarray, to: int) -> np.ndarray:
    """astype; bfloat16 (no numpy dtype) is held as float32 rounded to bfloat16's precision
    (nearest, ties to even)."""
    if to != DataType.BFLOAT16:
        return x.astype(ONNX_DTYPES[to])
    x = x.astype(np.float32)
    bits = x.view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return np.where(np.isnan(x), x, rounded.astype(np.uint32).view(np.float32))


def _isinf(op, a, ins):
    x = a[0]
    pos = np.isposinf(x) if op.attr("detect_positive", 1) else np.zeros(x.shape, bool)
    return pos | np.isneginf(x) if op.attr("detect_negative", 1) else pos


@kernel("Dropout")
def dropout(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """Inference Dropout: the identity, and an all-true mask. Training mode draws random masks:
    rejected at compile time (layouts) unless its ratio is 0."""
    x = ins[0]
    training = len(ins) > 2 and ins[2] is not None and bool(_const(ins[2]).reshape(-1)[0])
    ratio = float(_const(ins[1]).reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else 0.5
    if training and ratio != 0:
        raise KernelError("Dropout in training mode draws random masks")
    results = [x.data]
    if len(outs) > 1:
        results.append(np.ones(x.data.shape, dtype=bool))
    return results


_ELEMENTWISE = {
    "Div": _div, "Gelu": _gelu, "Clip": _clip, "Erf": lambda op, a, i: erf(a[0]),
    "Max": lambda op, a, i: np.maximum.reduce(np.broadcast_arrays(*a)),
    "Min": lambda op, a, i: np.minimum.reduce(np.broadcast_arrays(*a)),
    "Where": lambda op, a, i: np.where(a[0], a[1], a[2]),
    "Cast": lambda op, a, i: _cast(a[0], int(op.attr("to"))),
    "CastLike": lambda op, a, i: a[0].astype(a[1].dtype),
    "IsInf": _isinf,
    "Mod": lambda op, a, i: np.fmod(a[0], a[1]) if op.attr("fmod", 0) else np.mod(a[0], a[1]),
}


# --- reductions and normalizations -----------------------------------------------------------


def _reduce_axes(op, x: Operand, ins: list) -> tuple[int, ...]:
    axes = op.attr("axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = tuple(int(v) for v in _const(ins[1]).reshape(-1))
    if axes is None or len(axes) == 0:
        return tuple(range(x.rank)) if not op.attr("noop_with_empty_axes", 0) else ()
    return tuple(sorted(a % x.rank for a in axes))


def _masked(x: Operand, ctx: Ctx, fill: float) -> np.ndarray:
    m = ctx.mask(x.shape, x.spec)
    return x.data if m is None else np.where(m, x.data, np.asarray(fill, x.data.dtype))


def _lowest(dtype: np.dtype):
    if dtype.kind == "f":
        return -np.inf
    return np.iinfo(dtype).min if dtype.kind in "iu" else False


def _split_axes(x: Operand, dims: Sequence[int]) -> list[str]:
    return [x.spec[d] for d in dims if x.spec[d]]


@kernel("ReduceSum", "ReduceMean", "ReduceMax")
def reduce(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x = ins[0]
    dims = _reduce_axes(op, x, ins)
    how = "max" if op.kind == "ReduceMax" else "sum"
    data = _masked(x, ctx, _lowest(x.data.dtype) if how == "max" else 0)
    tile_axes = tuple(d + 2 for d in dims)
    y = (np.max if how == "max" else np.sum)(data, axis=tile_axes, keepdims=True)
    for axis in _split_axes(x, dims):
        y = ctx.allreduce(y, axis, how)
    if op.kind == "ReduceMean":
        y = y / math.prod(x.shape[d] for d in dims)
    if not op.attr("keepdims", 1):
        y = y.reshape(y.shape[:2] + tuple(s for i, s in enumerate(y.shape[2:]) if i not in dims))
    return [y.astype(x.data.dtype)]


@kernel("ArgMax")
def argmax(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """Index of the largest element along `axis` (the first one, or the last with
    select_last_index); a split axis compares each core's best across the mesh."""
    x = ins[0]
    d = int(op.attr("axis", 0)) % x.rank
    ax, axis = d + 2, x.spec[d]
    last = bool(op.attr("select_last_index", 0))
    data = _masked(x, ctx, _lowest(x.data.dtype))
    n = data.shape[ax]
    flipped = np.flip(data, axis=ax) if last else data
    local = np.argmax(flipped, axis=ax, keepdims=True)
    local = n - 1 - local if last else local
    best = np.take_along_axis(data, local, axis=ax)
    index = local.astype(np.int64)
    if axis is not None:  # global index: the core's first element along the split axis
        size = data.shape[AXIS[axis]]
        shape = [1] * data.ndim
        shape[AXIS[axis]] = size
        index = index + (np.arange(size) * n).reshape(shape)
        top = ctx.allreduce(best, axis, "max")
        hit = best == top
        if last:
            index = np.max(np.where(hit, index, -1), axis=AXIS[axis], keepdims=True)
        else:
            index = np.min(np.where(hit, index, np.iinfo(np.int64).max), axis=AXIS[axis],
                           keepdims=True)
    if not op.attr("keepdims", 1):
        index = np.squeeze(index, axis=ax)
    return [index]


@kernel("Softmax", "LogSoftmax")
def softmax(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x = ins[0]
    d = int(op.attr("axis", -1)) % x.rank
    ax, axis = d + 2, x.spec[d]
    top = ctx.allreduce(np.max(_masked(x, ctx, -np.inf), axis=ax, keepdims=True), axis, "max")
    with np.errstate(invalid="ignore", divide="ignore"):  # padding rows: zeroed afterwards
        shifted = x.data - top
        e = np.exp(shifted)
        m = ctx.mask(x.shape, x.spec)
        e = e if m is None else np.where(m, e, 0)
        total = ctx.allreduce(np.sum(e, axis=ax, keepdims=True), axis)
        return [shifted - np.log(total) if op.kind == "LogSoftmax" else e / total]


def _norm_dims(op, x: Operand) -> tuple[int, ...]:
    return tuple(range(int(op.attr("axis", -1)) % x.rank, x.rank))


def _mean_over(x: np.ndarray, src: Operand, dims, ctx: Ctx) -> np.ndarray:
    s = np.sum(x, axis=tuple(d + 2 for d in dims), keepdims=True)
    for axis in _split_axes(src, dims):
        s = ctx.allreduce(s, axis)
    return s / math.prod(src.shape[d] for d in dims)


@kernel("LayerNormalization")
def layer_norm(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """Y, and the optional Mean and InvStdDev outputs (shaped like X with the normalized dims
    kept as 1s)."""
    x = ins[0]
    dims = _norm_dims(op, x)
    data = x.data.astype(np.float32)
    mean = _mean_over(data, x, dims, ctx)
    centred = data - mean
    m = ctx.mask(x.shape, x.spec)
    centred = centred if m is None else np.where(m, centred, 0)
    var = _mean_over(centred * centred, x, dims, ctx)
    inv = 1 / np.sqrt(var + float(op.attr("epsilon", 1e-5)))
    y = centred * inv * lift(ins[1], x.rank)
    if len(ins) > 2 and ins[2] is not None:
        y = y + lift(ins[2], x.rank)
    return [r for name, r in zip(op.outputs, [y.astype(x.data.dtype), mean, inv],
                                 strict=False) if name]


@kernel("RMSNormalization")
def rms_norm(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x = ins[0]
    data = x.data.astype(np.float32)
    ms = _mean_over(data * data, x, _norm_dims(op, x), ctx)
    y = data / np.sqrt(ms + float(op.attr("epsilon", 1e-5))) * lift(ins[1], x.rank)
    return [y.astype(x.data.dtype)]


# --- linear algebra ---------------------------------------------------------------------------


@kernel("MatMul")
def matmul(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """numpy matmul semantics; a 1-D operand is a row (left) or column (right) vector whose
    added dim is dropped from the result (the layout keeps 1-D operands whole)."""
    a, b = ins
    if a.rank >= 2 and b.rank >= 2:
        rank = max(a.rank, b.rank)
        return [np.matmul(lift(a, rank), lift(b, rank))]
    if any(a.spec) or any(b.spec):
        raise KernelError("MatMul with a split 1-D operand")
    x = a.data[..., None, :] if a.rank == 1 else a.data
    y = b.data[..., :, None] if b.rank == 1 else b.data
    rank = max(x.ndim, y.ndim) - 2
    x = x.reshape(x.shape[:2] + (1,) * (rank - x.ndim + 2) + x.shape[2:])
    y = y.reshape(y.shape[:2] + (1,) * (rank - y.ndim + 2) + y.shape[2:])
    z = np.matmul(x, y)
    if b.rank == 1:
        z = z[..., 0]
    if a.rank == 1:
        z = z[..., 0, :] if b.rank != 1 else z[..., 0]
    return [z]


@kernel("Gemm")
def gemm(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    a, b = ins[0].data, ins[1].data
    a = np.swapaxes(a, -1, -2) if op.attr("transA", 0) else a
    b = np.swapaxes(b, -1, -2) if op.attr("transB", 0) else b
    y = float(op.attr("alpha", 1.0)) * np.matmul(a, b)
    if len(ins) > 2 and ins[2] is not None:
        once = ctx.first_along_partial()
        once = once if isinstance(once, float) else once[..., None, None]
        y = y + float(op.attr("beta", 1.0)) * lift(ins[2], 2) * once
    return [y.astype(ins[0].data.dtype)]


@kernel("Attention")
def attention(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """ONNX Attention (opsets 23-25) on local heads: 4-D [B, H, S, D] or 3-D [B, S, H * D].

    Keys and values extend a past cache; grouped key/value heads are repeated for the query
    heads they serve; softcap comes before the bias; the bias sums the mask (boolean or
    additive, padded to the keys), the causal frontier (top-left without a cache, after the
    cache, or per batch from nonpad_kv_seqlen), the sliding window and the key padding. A
    query row with no key left gets zeros. The sequence dims must be whole on every core."""
    q, k, v = ins[:3]
    mask, past_k, past_v, nonpad = (ins[i] if len(ins) > i else None for i in range(3, 7))
    for x, dim in ((q, -2 if q.rank == 4 else 1), (k, -2 if k.rank == 4 else 1)):
        if x.spec[dim]:
            raise KernelError("Attention with a split sequence dim")
    Q = _to_heads(q, _heads(op, q, "q_num_heads"))
    K = _to_heads(k, _heads(op, k, "kv_num_heads"))
    V = _to_heads(v, _heads(op, v, "kv_num_heads"))
    cached = 0
    if past_k is not None and past_v is not None:
        cached = past_k.shape[2]
        K, V = _concat_keys(past_k.data, K), _concat_keys(past_v.data, V)
    present = [K, V]
    if _heads_total(op, q, "q_num_heads") != _heads_total(op, k, "kv_num_heads"):
        K, V = _group_heads(op, q, k, Q, K, ctx), _group_heads(op, q, k, Q, V, ctx)
    scale = op.attr("scale") or 1 / math.sqrt(Q.shape[-1])
    s = np.matmul(Q.astype(np.float32), np.swapaxes(K, -1, -2)) * np.float32(scale)
    cap = float(op.attr("softcap", 0.0) or 0.0)
    if cap > 0:
        s = cap * np.tanh(s / cap)
    qk = s
    bias = _attention_bias(op, mask, nonpad, s.shape[-2], s.shape[-1], cached)
    s = s + bias
    mode = int(op.attr("qk_matmul_output_mode", 0) or 0)
    if mode == 2:
        qk = s
    with np.errstate(invalid="ignore", over="ignore"):
        top = np.max(s, axis=-1, keepdims=True)
        e = np.exp(s - np.where(np.isfinite(top), top, 0))
        total = np.sum(e, axis=-1, keepdims=True)
        p = e / np.where(total == 0, 1, total)
    dead = np.isneginf(np.max(np.broadcast_to(bias, s.shape), axis=-1, keepdims=True))
    p = np.where(dead, np.float32(0), p)  # no key to attend: the row is zeros
    if mode == 3:
        qk = p
    y = np.matmul(p.astype(np.float32), V.astype(np.float32))
    results = [_from_heads(y, q), *present, qk]
    return [r for name, r in zip(op.outputs, results, strict=False) if name]


def _concat_keys(past: np.ndarray, new: np.ndarray) -> np.ndarray:
    mesh = np.broadcast_shapes(past.shape[:2], new.shape[:2])
    return np.concatenate([np.broadcast_to(past, mesh + past.shape[2:]),
                           np.broadcast_to(new, mesh + new.shape[2:])], axis=4)


def _group_heads(op, q: Operand, k: Operand, Q: np.ndarray, K: np.ndarray,
                 ctx: Ctx) -> np.ndarray:
    """K (or V) with the key/value head of each local query head: global query head g reads
    key head g // rep. Split query heads read from key heads held whole on every core, or
    from a split that lines up with theirs."""
    rep = _heads_total(op, q, "q_num_heads") // _heads_total(op, k, "kv_num_heads")
    tq = Q.shape[3]
    axis = q.spec[1] if q.rank == 4 else q.spec[2]
    if axis is None or (k.rank == 4 and k.spec[1] == axis):  # whole, or aligned tiles
        if tq != rep * K.shape[3]:
            raise KernelError(f"a core's {tq} query heads do not line up with its "
                              f"{K.shape[3]} key/value heads (groups of {rep})")
        return np.repeat(K, rep, axis=3)
    if k.rank == 4 and k.spec[1]:
        raise KernelError("query and key heads are split over different mesh axes")
    size = ctx.rows if axis == "r" else ctx.cols
    first = (np.arange(size) * tq).reshape((size, 1) if axis == "r" else (1, size))
    index = np.minimum((first[..., None] + np.arange(tq)) // rep, K.shape[3] - 1)
    index = index.reshape(index.shape[:2] + (1, tq, 1, 1))
    mesh = np.broadcast_shapes(K.shape[:2], index.shape[:2])
    K = np.broadcast_to(K, mesh + K.shape[2:])
    index = np.broadcast_to(index, mesh + (K.shape[2], tq) + K.shape[4:])
    return np.take_along_axis(K, index, axis=3)


def _heads_total(op, x: Operand, attr: str) -> int:
    return x.shape[1] if x.rank == 4 else int(op.attr(attr) or 0)


def _heads(op, x: Operand, attr: str) -> int:
    if x.rank == 4:
        return x.data.shape[3]
    total = int(op.attr(attr) or 0)
    per = x.shape[-1] // total
    if x.data.shape[-1] % per:
        raise KernelError("a core's slice of the hidden dim cuts through a head")
    return x.data.shape[-1] // per


def _to_heads(x: Operand, heads: int) -> np.ndarray:
    d = x.data
    if x.rank == 4:
        return d
    R, C, B, S, HD = d.shape
    return d.reshape(R, C, B, S, heads, HD // heads).transpose(0, 1, 2, 4, 3, 5)


def _from_heads(y: np.ndarray, q: Operand) -> np.ndarray:
    if q.rank == 4:
        return y
    R, C, B, H, S, D = y.shape
    return y.transpose(0, 1, 2, 4, 3, 5).reshape(R, C, B, S, H * D)


def _attention_bias(op, mask: Operand | None, nonpad: Operand | None, S: int, L: int,
                    cached: int) -> np.ndarray:
    """The additive bias (0 or -inf, plus an additive mask), broadcastable to (R, C, B, H,
    S, L)."""
    bias = np.zeros((1, 1, 1, 1, 1, 1), np.float32)
    if mask is not None:
        m = lift(mask, 4)
        if m.shape[-1] < L:  # a mask shorter than the keys: the rest is masked
            pad = [(0, 0)] * (m.ndim - 1) + [(0, L - m.shape[-1])]
            m = np.pad(m, pad, constant_values=False if m.dtype == np.bool_ else -np.inf)
        m = np.where(m, 0, -np.inf) if m.dtype == np.bool_ else m
        bias = bias + m.astype(np.float32)
    i = np.arange(S).reshape(S, 1)
    j = np.arange(L).reshape(1, L)
    offset: np.ndarray | int = cached
    valid = None
    if nonpad is not None:
        lengths = nonpad.data.reshape(nonpad.data.shape[:2] + (-1, 1, 1, 1))
        valid = j < lengths
        if not cached:
            offset = lengths - S
    allowed = np.ones((1, 1), bool)
    if op.attr("is_causal", 0):
        allowed = allowed & (j <= i + offset)
    left, right = int(op.attr("left_window_size", -1)), int(op.attr("right_window_size", -1))
    if left >= 0:
        allowed = allowed & (i + offset - j <= left)
    if right >= 0:
        allowed = allowed & (j - (i + offset) <= right)
    if valid is not None:
        allowed = allowed & valid
    return bias + np.where(allowed, np.float32(0), np.float32(-np.inf))


# --- indexing and data movement ---------------------------------------------------------------


@kernel("Gather")
def gather(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    data, idx = ins
    axis = int(op.attr("axis", 0)) % data.rank
    index = idx.value if idx.value is not None else _replicated(idx)
    index = np.where(index < 0, index + data.shape[axis], index)
    if data.spec[axis] is None:
        return [np.take(data.data, index, axis=axis + 2)]
    if axis != 0 or data.rank != 2:
        raise KernelError("Gather along a split dim other than an embedding table's rows")
    return [_table_lookup(data, index, ctx)]


def _table_lookup(table: Operand, index: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Each core looks up the rows it holds; the others contribute zeros (summed by a reduce)."""
    t = table.data  # (R, C, rows_per_core, cols_per_core)
    rows = t.shape[2]
    first = (np.arange(t.shape[0]) * rows).reshape(-1, 1, 1)  # (R, 1, 1)
    local = index.reshape(1, 1, -1) - first  # (R, 1, n)
    hit = (local >= 0) & (local < rows)
    picked = np.take_along_axis(t, np.clip(local, 0, rows - 1)[..., None], axis=2)
    out = np.where(hit[..., None], picked, 0)  # (R, C, n, cols)
    return out.reshape(out.shape[:2] + index.shape + t.shape[3:])


def _replicated(x: Operand) -> np.ndarray:
    if any(x.spec):
        raise KernelError("indices must be whole on every core")
    return x.data[0, 0]


@kernel("GatherElements")
def gather_elements(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    data, idx = ins
    axis = int(op.attr("axis", 0)) % data.rank
    index = lift(idx, data.rank)
    index = np.where(index < 0, index + data.shape[axis], index)
    shape = np.broadcast_shapes(data.data.shape[:2], index.shape[:2])
    return [np.take_along_axis(np.broadcast_to(data.data, shape + data.data.shape[2:]),
                               np.broadcast_to(index, shape + index.shape[2:]), axis=axis + 2)]


def _whole_or_fail(x: Operand) -> np.ndarray:
    if any(x.spec):
        raise KernelError(f"needs the whole tensor but it is split {x.spec}")
    return x.data


@kernel("GatherND")
def gather_nd(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """ONNX GatherND with batch_dims. The indices and the dims they index are whole; the
    data's trailing dims may be split (each core gathers its own slices: MoE expert weights)."""
    b = int(op.attr("batch_dims", 0))
    depth = ins[1].shape[-1]
    if any(ins[0].spec[:b + depth]):
        raise KernelError(f"GatherND indexes dims split {ins[0].spec[:b + depth]}")
    data, index = ins[0].data, _whole_or_fail(ins[1])
    mesh = np.broadcast_shapes(data.shape[:2], index.shape[:2])
    data = np.broadcast_to(data, mesh + data.shape[2:])
    index = np.broadcast_to(index, mesh + index.shape[2:])
    lead = mesh + data.shape[2:2 + b]
    flat_d = data.reshape((-1,) + data.shape[2 + b:])
    flat_i = index.reshape((-1,) + index.shape[2 + b:])
    k = flat_i.shape[-1]
    picked = [d[tuple(np.moveaxis(i, -1, 0))] if k else d for d, i in zip(flat_d, flat_i,
                                                                          strict=True)]
    out = np.stack(picked)
    return [out.reshape(lead + out.shape[1:])]


_SCATTER = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


@kernel("ScatterND")
def scatter_nd(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """Updates written at index tuples (or combined with `reduction`: add, mul, max, min,
    applied once per index even when indices repeat)."""
    data, index, updates = (_whole_or_fail(x) for x in ins)
    how = str(op.attr("reduction", "none"))
    if how != "none" and how not in _SCATTER:
        raise KernelError(f"ScatterND reduction {how!r}")
    mesh = np.broadcast_shapes(data.shape[:2], index.shape[:2], updates.shape[:2])
    out = np.broadcast_to(data, mesh + data.shape[2:]).copy()
    for i in np.ndindex(*mesh):
        idx, upd = index[i if index.shape[:2] == mesh else (0, 0)], updates[
            i if updates.shape[:2] == mesh else (0, 0)]
        where = tuple(np.moveaxis(idx, -1, 0))
        if how == "none":
            out[i][where] = upd
        else:
            _SCATTER[how].at(out[i], where, upd)
    return [out]


@kernel("Split")
def split(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x = ins[0]
    axis = int(op.attr("axis", 0)) % x.rank
    if len(ins) > 1 and ins[1] is not None:
        sizes = [int(v) for v in _const(ins[1]).reshape(-1)]
    else:
        sizes = [shape[axis] for shape, _ in outs]
    return np.split(x.data, np.cumsum(sizes)[:-1], axis=axis + 2)


@kernel("Slice")
def slice_(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """Slice by the starts/ends/axes/steps inputs (opset 10+) or attributes (opset 1-9)."""
    x = ins[0]
    starts, ends = (_const(ins[i]).reshape(-1) if len(ins) > i else np.asarray(op.attr(key))
                    for i, key in ((1, "starts"), (2, "ends")))
    axes = _const(ins[3]).reshape(-1) if len(ins) > 3 and ins[3] is not None else op.attr(
        "axes", range(len(starts)))
    steps = _const(ins[4]).reshape(-1) if len(ins) > 4 and ins[4] is not None else [1] * len(
        starts)
    index = [slice(None)] * x.data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
        index[int(a) % x.rank + 2] = slice(*slice(int(s), int(e), int(st)).indices(
            x.shape[int(a) % x.rank]))
    return [x.data[tuple(index)]]


@kernel("Concat")
def concat(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    rank = len(outs[0][0])
    parts = [lift(x, rank) for x in ins if x is not None]
    mesh = np.broadcast_shapes(*(p.shape[:2] for p in parts))
    parts = [np.broadcast_to(p, mesh + p.shape[2:]) for p in parts]
    return [np.concatenate(parts, axis=int(op.attr("axis", 0)) % rank + 2)]


@kernel(*RESHAPE_OPS)
def reshape(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x = ins[0]
    shape, spec = outs[0]
    tile = tile_shape(shape, spec, ctx.rows, ctx.cols)
    if math.prod(tile) != math.prod(x.data.shape[2:]):
        raise KernelError(f"tiles of {list(x.shape)} do not reshape locally to {list(shape)}")
    return [x.data.reshape(x.data.shape[:2] + tuple(tile))]


@kernel("Transpose")
def transpose(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x = ins[0]
    perm = op.attr("perm") or tuple(reversed(range(x.rank)))
    return [x.data.transpose((0, 1, *(p + 2 for p in perm)))]


@kernel("Expand")
def expand(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """Each core repeats its own input tile; a broadcast dim the output splits (the input
    holds it as size 1) needs no data from another core: every core makes its slice."""
    shape, spec = outs[0]
    tile = tile_shape(shape, spec, ctx.rows, ctx.cols)
    x = lift(ins[0], len(shape))
    held = (None,) * (len(shape) - ins[0].rank) + tuple(ins[0].spec)
    if any(s and s != h and d != 1 for s, h, d in zip(spec, held, x.shape[2:], strict=True)):
        raise KernelError(f"Expand to {spec} splits a dim its input {ins[0].spec} holds whole")
    mesh = np.broadcast_shapes(x.shape[:2], mesh_shape(spec, ctx.rows, ctx.cols))
    return [np.broadcast_to(x, mesh + tuple(tile)).copy()]


@kernel("Trilu")
def trilu(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    x = ins[0]
    if x.spec[-1] or x.spec[-2]:
        raise KernelError("Trilu over split matrix dims")
    k = int(_const(ins[1]).reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else 0
    return [np.triu(x.data, k) if op.attr("upper", 1) else np.tril(x.data, k)]


@kernel("Range")
def range_(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    start, limit, delta = (_const(x).reshape(()) for x in ins)
    return [np.arange(start, limit, delta).astype(start.dtype)[None, None]]


@kernel("ConstantOfShape")
def constant_of_shape(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    shape = tuple(int(v) for v in _const(ins[0]).reshape(-1))
    value = op.attr("value", 0.0)
    dtype = np.asarray(value).dtype if not isinstance(value, float) else np.float32
    return [np.full(shape, value, dtype=dtype)[None, None]]


@kernel("Constant")
def constant(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """A Constant node the frontend kept (a folded Shape or Size): its value attribute."""
    shape = outs[0][0]
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        value = op.attr(key)
        if value is not None:
            return [np.asarray(value).reshape(shape)[None, None]]
    raise KernelError(f"Constant {op.name} has no numeric value attribute")


@kernel("Shape", "Size")
def shape_of(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    shape = np.asarray(ins[0].shape, dtype=np.int64)
    if op.kind == "Size":
        return [np.asarray(math.prod(ins[0].shape), dtype=np.int64)[None, None]]
    start, end = op.attr("start", 0), op.attr("end")
    return [shape[start:end][None, None]]


@kernel("Tile")
def tile(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    reps = tuple(int(v) for v in _const(ins[1]).reshape(-1))
    if any(ins[0].spec):
        raise KernelError("Tile of a split tensor")
    return [np.tile(ins[0].data, (1, 1, *reps))]


# --- issue 15, real checkpoints (h-real): CumSum --------------------------------------------


@kernel("CumSum")
def cumsum(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """ONNX CumSum along the constant `axis` (held whole on every core), as ONNX Runtime
    computes it: the running sum in the input's dtype, `exclusive` shifts it by one (the first
    element 0), `reverse` sums from the end."""
    x = ins[0]
    dim = int(_const(ins[1]).reshape(-1)[0]) % x.rank
    if x.spec[dim]:
        raise KernelError(f"CumSum along dim {dim}, which {x.spec} splits")
    axis = dim + 2
    data = np.flip(x.data, axis) if op.attr("reverse", 0) else x.data
    total = np.cumsum(data, axis=axis, dtype=data.dtype)
    if op.attr("exclusive", 0):
        total = np.concatenate([np.zeros_like(np.take(total, [0], axis=axis)),
                                np.delete(total, -1, axis=axis)], axis=axis)
    return [np.flip(total, axis) if op.attr("reverse", 0) else total]
# --- end issue 15 ---
