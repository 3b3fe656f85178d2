"""numpy kernels of the mixture-of-experts routing ops, with ONNX Runtime's semantics.

`TopK` picks each token's experts from the router's logits, `OneHot` builds expert masks and
`ScatterElements` (index_add) combines expert outputs per token (the exporters' per-expert loop
form itself never reaches the executor: the frontend rewrites it into the batched form). They
register in `kernels.KERNELS` like every other kernel (the package imports this module); their
layouts keep the axis they work along whole on every core.
"""

from __future__ import annotations

import numpy as np

from compiler.executor.kernels import Ctx, KernelError, Operand, kernel, lift


def _const(x: Operand | None, what: str) -> np.ndarray:
    if x is None:
        raise KernelError(f"{what} is missing")
    if x.value is not None:
        return x.value
    if any(x.spec):
        raise KernelError(f"{what} must be whole on every core")
    return x.data[0, 0]


def _whole_axis(x: Operand, axis: int, op: str) -> None:
    if x.spec[axis]:
        raise KernelError(f"{op} along dim {axis}, which is split over {x.spec[axis]!r}")


# --- TopK -------------------------------------------------------------------------------------


@kernel("TopK")
def topk(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """The k largest (or smallest) elements along `axis` and their indices. Ties go to the
    lower index first, as ONNX specifies and ONNX Runtime does; `sorted=0` returns them in the
    same order (ONNX leaves it unspecified)."""
    x = ins[0]
    d = int(op.attr("axis", -1)) % x.rank
    _whole_axis(x, d, "TopK")
    k = int(_const(ins[1], "TopK's K").reshape(-1)[0])
    if not 0 <= k <= x.shape[d]:
        raise KernelError(f"TopK k={k} outside 0..{x.shape[d]}")
    order = stable_order(x.data, d + 2, largest=bool(op.attr("largest", 1)))
    index = np.take(order, np.arange(k), axis=d + 2)
    return [np.take_along_axis(x.data, index, axis=d + 2), index.astype(np.int64)]


def stable_order(data: np.ndarray, axis: int, *, largest: bool) -> np.ndarray:
    """Indices that sort `data` along `axis`, descending when `largest`, equal elements in
    index order (a stable sort of the negated values; integers negated in int64)."""
    if not largest:
        return np.argsort(data, axis=axis, kind="stable")
    wide = data.astype(np.float64 if data.dtype.kind == "f" else np.int64)
    return np.argsort(-wide, axis=axis, kind="stable")


# --- OneHot -----------------------------------------------------------------------------------


@kernel("OneHot")
def one_hot(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """indices [...] -> [..., depth, ...] (the new axis at `axis`): `on` where the index (a
    negative one counting from depth) hits, `off` elsewhere and for indices out of range."""
    idx, depth_in, values_in = ins
    depth = int(np.asarray(_const(depth_in, "OneHot's depth")).reshape(-1)[0])
    off, on = np.asarray(_const(values_in, "OneHot's values")).reshape(-1)[:2]
    rank = idx.rank + 1
    axis = int(op.attr("axis", -1)) % rank
    if idx.spec and any(idx.spec):
        raise KernelError("OneHot needs its indices whole on every core")
    i = idx.data.astype(np.int64)
    i = np.where(i < 0, i + depth, i)  # (R, C, *idx)
    hot = i[..., None] == np.arange(depth)  # (R, C, *idx, depth)
    hot = np.moveaxis(hot, -1, axis + 2)
    dtype = values_in.data.dtype if values_in.value is None else values_in.value.dtype
    return [np.where(hot, np.asarray(on, dtype), np.asarray(off, dtype))]


# --- ScatterElements --------------------------------------------------------------------------

_REDUCE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


@kernel("ScatterElements")
def scatter_elements(op, ins: list, outs: list, ctx: Ctx) -> list[np.ndarray]:
    """data with `updates` written (or combined by `reduction`) at `indices` along `axis`; on
    whole tensors. Repeated indices: the last update wins (`none`, ONNX Runtime's order) or
    each is combined once."""
    data, index, updates = ins
    for x in ins:
        if any(x.spec):
            raise KernelError(f"ScatterElements needs whole tensors, one is split {x.spec}")
    axis = int(op.attr("axis", 0)) % data.rank
    how = str(op.attr("reduction", "none"))
    if how != "none" and how not in _REDUCE:
        raise KernelError(f"ScatterElements reduction {how!r}")
    idx = lift(index, data.rank)
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    mesh = np.broadcast_shapes(data.data.shape[:2], idx.shape[:2], updates.data.shape[:2])
    out = np.broadcast_to(data.data, mesh + data.data.shape[2:]).copy()
    upd = np.broadcast_to(updates.data, mesh + updates.data.shape[2:])
    idx = np.broadcast_to(idx, mesh + idx.shape[2:])
    for cell in np.ndindex(*mesh):
        _scatter_one(out[cell], idx[cell], upd[cell], axis, how)
    return [out]


def _scatter_one(out: np.ndarray, idx: np.ndarray, upd: np.ndarray, axis: int,
                 how: str) -> None:
    where = list(np.indices(idx.shape, sparse=True))
    where[axis] = idx
    if how == "none":
        out[tuple(where)] = upd
    else:
        _REDUCE[how].at(out, tuple(where), upd)
