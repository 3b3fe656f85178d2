"""The decode step of a model whose attention is the ONNX `Attention` op (opset 23+).

Each causal `Attention(Q, K, V)` of the model at one token becomes
`Attention(Q, kv_cache.<layer>.k, kv_cache.<layer>.v, decode_mask.<layer>)`:

- K and V (one position) are appended in place into the resident caches at position t, and
  the op reads the whole `context`-long caches (their key axis: 2 of [B, H, S, D], 1 of
  [B, S, H * D]);
- `is_causal` and the sliding window (`left_window_size`) cannot follow t inside the op (with
  no past input its causal frontier is the top-left one, query 0 sees key 0 only), so they
  become a boolean mask fed per step: the row of position t (`mask_row`, computed from t on
  the host each step, never a [context, context] table) that allows key j when j <= t and,
  with a window w, t - j <= w. Keys past t (empty cache rows) are masked by the same row.

Anything else (an explicit mask input, a past cache, present outputs, right windows) is refused
with a DecodeUnsupported naming the node.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from compiler import ir
from compiler.schedule.decode import (
    DecodeGraph,
    DecodeUnsupported,
    KVCache,
    PositionFeed,
    _position_feeds,
    _rebuild,
)

MASK_PREFIX = "decode_mask."
_WINDOW_ATTRS = ("is_causal", "left_window_size", "right_window_size")


def attention_ops(g: ir.Graph) -> list[ir.Op]:
    """The Attention ops that read activations (not a constant subgraph)."""
    return [op for op in g.ops if op.kind == "Attention"
            and not all(n in g.const_derived for n in op.inputs if n)]


def attention_op_decode(prefill: ir.Graph, g1: ir.Graph, context: int) -> DecodeGraph:
    """`g1` (the model at one token) as one decode step over `context`-long caches read by
    its Attention ops."""
    layer_of = {op.name: layer.name for layer in g1.layers for op in layer.ops}
    shapes = {t.name: t.shape for t in g1.tensors}
    feeds = _position_feeds(prefill, g1, [], context, shapes)  # rotary / position tables
    caches, renames, masks, new_ops = [], {}, [], {}
    extra: list[ir.Tensor] = []
    for op in attention_ops(g1):
        _check(op, prefill, g1)
        layer = layer_of[op.name]
        for i, role in ((1, "k"), (2, "v")):
            new = op.inputs[i]
            axis = 2 if len(shapes[new]) == 4 else 1
            name = f"kv_cache.{layer}.{role}"
            cache_shape = list(shapes[new])
            cache_shape[axis] = context
            shapes[name] = tuple(cache_shape)
            caches.append(KVCache(layer, name, new, new, axis))
            renames[(op.name, i)] = name
        mask = f"{MASK_PREFIX}{layer}"
        shapes[mask] = (1, 1, 1, context)
        extra.append(ir.Tensor(mask, (1, 1, 1, 1), ir.DType.BOOL, ir.TensorKind.CONSTANT))
        masks.append((mask, int(op.attr("left_window_size", -1) or -1)))
        attrs = tuple((k, v) for k, v in op.attrs if k not in _WINDOW_ATTRS)
        new_ops[op.name] = dataclasses.replace(op, inputs=(*op.inputs[:3], mask), attrs=attrs)
    g1 = _with_ops(g1, new_ops, extra)
    feeds += tuple(PositionFeed(name, (2,), (3,)) for name, _ in masks)
    graph = _rebuild(prefill, g1, caches, feeds, renames, shapes)
    return DecodeGraph(graph, tuple(caches), feeds, context, tuple(g1.inputs), tuple(masks))


def _check(op: ir.Op, prefill: ir.Graph, g1: ir.Graph) -> None:
    ins, outs = op.inputs, op.outputs
    if any(ins[3:]) or any(outs[1:]):
        raise DecodeUnsupported(f"Attention {op.name} has a mask, past cache or present output; "
                                "decode derives only causal Attention(Q, K, V)")
    if not op.attr("is_causal", 0):
        raise DecodeUnsupported(f"Attention {op.name} is not causal (is_causal=0): not a "
                                "decoder's attention")
    if int(op.attr("right_window_size", -1) or -1) >= 0:
        raise DecodeUnsupported(f"Attention {op.name} has a right window: decode cannot see "
                                "future tokens")
    for name in ins[1:3]:
        if prefill.tensor(name).shape == g1.tensor(name).shape:
            raise DecodeUnsupported(f"the key/value operand {name} of {op.name} does not grow "
                                    "with the sequence")


def _with_ops(g: ir.Graph, new_ops: dict[str, ir.Op], extra: list[ir.Tensor]) -> ir.Graph:
    layers = tuple(dataclasses.replace(la, ops=tuple(new_ops.get(op.name, op) for op in la.ops))
                   for la in g.layers)
    return dataclasses.replace(g, layers=layers, tensors=(*g.tensors, *extra))


def mask_row(context: int, left_window: int, t: int) -> np.ndarray:
    """[1, 1, 1, context] bool, the decode mask of the step at position t: key j allowed when
    j <= t (and t - j <= window). Computed per step: no [context, context] table on the host."""
    j = np.arange(context)
    allowed = j <= t
    if left_window >= 0:
        allowed &= t - j <= left_window
    return allowed.reshape(1, 1, 1, context)
