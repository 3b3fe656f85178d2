"""Alike layers laid out once: a transformer's blocks differ only in their names, so a layer
whose ops, tensors and incoming specs match an earlier one's up to names gets that layer's
layouts renamed instead of running the rules again (`graph_layouts`: the 405B's 126 blocks,
in every decode form, once each instead of 126 times).

The signature holds everything the layout rules read of a layer (compiler/tiling/layouts.py
reads the graph through `g.tensor`, `g.const_derived`, `g.consumers`, `g.producers`,
`g.outputs` and `g.opset`): per op its kind, attributes, domain and operands by position of
first appearance; per tensor its shape, dtype, kind, storage, constant values (digested), its
consumer count, whether it is constant-derived or a graph output, and the spec it arrives in.
Two layers with one signature run the same rules on the same facts, so the second's layouts
are the first's with the names substituted (tests/test_alike.py checks it against the rules
on the zoo's decode forms).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from compiler import ir

_LARGE = 1 << 16  # constants with more elements than this keep their identity in the key


def signature(g: ir.Graph, layer: ir.Layer,
              specs: Mapping[str, tuple[str | None, ...]]) -> tuple[tuple, tuple[str, ...]]:
    """(the layer's signature, its tensor names in order of first appearance)."""
    digest, names = _static(g, layer)
    return (digest, tuple(specs.get(n) for n in names)), names


# the static part of the last few graphs' signatures, by identity (the graph kept with it)
_STATIC: dict[int, tuple[ir.Graph, dict[str, tuple[tuple, tuple[str, ...]]]]] = {}
KEEP_GRAPHS = 8


def _static(g: ir.Graph, layer: ir.Layer) -> tuple[tuple, tuple[str, ...]]:
    hit = _STATIC.get(id(g))
    if hit is None or hit[0] is not g:
        if len(_STATIC) >= KEEP_GRAPHS:  # the oldest goes
            del _STATIC[next(iter(_STATIC))]
        hit = _STATIC[id(g)] = (g, {})
    by_layer = hit[1]
    if layer.name not in by_layer:
        by_layer[layer.name] = _digest(g, layer)
    return by_layer[layer.name]


def _digest(g: ir.Graph, layer: ir.Layer) -> tuple[tuple, tuple[str, ...]]:
    names: dict[str, int] = {}
    ops = []
    for op in layer.ops:
        operands = tuple(names.setdefault(n, len(names)) if n else -1
                         for n in (*op.inputs, *op.outputs))
        ops.append((op.kind, op.domain, repr(op.attrs), len(op.inputs), operands))
    derived, outputs, consumers = g.const_derived, set(g.outputs), g.consumers
    tensors = []
    for name in names:
        t = g.tensor(name)
        tensors.append((t.shape, t.dtype, t.kind, t.storage_bits, t.storage, name in derived,
                        name in outputs, len(consumers.get(name, ())), _data(t)))
    return (layer.kind, g.opset, tuple(ops), tuple(tensors)), tuple(names)


def _data(t: ir.Tensor) -> tuple:
    if t.data is None:
        return ()
    if t.data.size > _LARGE:
        return ("id", id(t.data))
    return (str(t.data.dtype), t.data.shape, hashlib.sha256(t.data.tobytes()).digest())


def renamed(layouts: tuple, ops: tuple[ir.Op, ...], was: tuple[str, ...],
            now: tuple[str, ...]) -> tuple:
    """`layouts` of an alike layer with its op and tensor names (`was`, in the signature's
    order) replaced by this layer's (`now`)."""
    to = dict(zip(was, now, strict=True))
    return tuple(type(lay)(op.name, lay.kind, lay.inputs, lay.outputs, tuple(
        type(c)(c.kind, c.axis, to[c.tensor]) for c in lay.collectives))
        for lay, op in zip(layouts, ops, strict=True))


class Memo:
    """Layouts by signature for one `graph_layouts` call."""

    def __init__(self) -> None:
        self.seen: dict[tuple, tuple[tuple, tuple[str, ...]]] = {}

    def layouts(self, g: ir.Graph, layer: ir.Layer, specs: Mapping[str, tuple[str | None, ...]],
                compute: Callable[[], tuple]) -> tuple:
        key, names = signature(g, layer, specs)
        hit = self.seen.get(key)
        if hit is not None:
            return renamed(hit[0], layer.ops, hit[1], names)
        out = compute()
        if all(c.tensor in names for lay in out for c in lay.collectives):
            self.seen[key] = (out, names)  # (else not shared: a name it could not rename)
        return out
