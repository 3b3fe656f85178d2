"""Does a mask follow the query position? The axes along which a constant-derived tensor may
vary, traced through the ops that make it (exact where a constant holds data, conservative
elsewhere: an axis is taken to vary unless the ops show it cannot).

A causal LM's mask rows differ from query to query (row t hides the keys after t); an
encoder's bidirectional mask, expanded to [.., S, S] (a TorchScript BERT's), is the same for
every query: it varies along the keys only. Both grow with the sequence along queries and
keys, so the shapes alone do not tell them apart (schedule/decode.py `_check_causal`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler import ir
from compiler.tiling.layouts import _factor_groups

Axes = frozenset[int]

_BROADCASTING = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Where", "And", "Or", "Xor", "Not",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Cast", "CastLike", "Identity",
    "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "IsNaN", "IsInf", "Clip", "Expand",
})
_VIEWS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def varying_axes(g: ir.Graph, name: str) -> Axes:
    """The axes of `name` along which its values may differ."""
    memo: dict[str, Axes] = {}
    return _axes(g, name, memo)


def _axes(g: ir.Graph, name: str, memo: dict[str, Axes]) -> Axes:
    if name not in memo:
        memo[name] = _compute(g, name, lambda n: _axes(g, n, memo))
    return memo[name]


def _compute(g: ir.Graph, name: str, of: Callable[[str], Axes]) -> Axes:
    t = g.tensor(name)
    if t.data is not None:
        return _from_data(np.asarray(t.data))
    op = g.producers.get(name)
    if op is None or name not in g.const_derived:
        return _every(t.shape)
    ins = [n for n in (op.inputs[:1] if op.kind == "Expand" else op.inputs) if n]
    if op.kind in _BROADCASTING:
        return _broadcast(t.shape, [(g.tensor(n).shape, of(n)) for n in ins])
    if op.kind in _VIEWS:
        return _viewed(g.tensor(op.inputs[0]).shape, t.shape, of(op.inputs[0]))
    if op.kind == "Transpose":
        perm = op.attr("perm") or tuple(reversed(range(len(t.shape))))
        return frozenset(i for i, p in enumerate(perm) if p in of(op.inputs[0]))
    if op.kind == "ConstantOfShape":
        return frozenset()
    return _every(t.shape)  # anything else: every dim of more than one element may vary


def _every(shape: tuple[int, ...]) -> Axes:
    return frozenset(i for i, d in enumerate(shape) if d > 1)


def _from_data(a: np.ndarray) -> Axes:
    return frozenset(i for i in range(a.ndim) if a.shape[i] > 1 and
                     not np.array_equal(a, np.broadcast_to(a.take([0], axis=i), a.shape)))


def _broadcast(shape: tuple[int, ...], ins: list[tuple[tuple[int, ...], Axes]]) -> Axes:
    out: set[int] = set()
    for in_shape, axes in ins:
        shift = len(shape) - len(in_shape)
        out.update(a + shift for a in axes if a + shift >= 0)
    return frozenset(a for a in out if shape[a] > 1)


def _viewed(src: tuple[int, ...], dst: tuple[int, ...], axes: Axes) -> Axes:
    out: set[int] = set()
    for group_in, group_out in _factor_groups(src, dst):
        if any(i in axes for i in group_in):
            out.update(j for j in group_out if dst[j] > 1)
    return frozenset(out)
