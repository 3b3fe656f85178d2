"""With-past exports (`use_cache=True`): `past_key_values.N.key|value` inputs and
`present.N.key|value` outputs, as the torch exporter and optimum write them.

The compiler's graph of such a model is the same graph with **past length 0**: each past input
becomes an empty constant (its past axis 0, the other dims as bound), and each past is dropped
from the `Concat(past, new)` that makes its present, so the present is the step's own K / V and
the graph is the no-cache model (positions, masks and rotary tables start at 0). That is the
prefill; the decode step (`compiler.schedule.decode`) takes the same graph at one token and
turns what read the present into the resident KV cache, appended at t: the cache is the
Concat's result. A past input that no Concat along one axis reads cannot be mapped: a
`ModelError` naming it and its reader.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir

from compiler.errors import ModelError, ShapeError

PAST = re.compile(r"^past_key_values[._](\d+)[._](key|value)$|^past[._](\d+)[._](key|value)$")


def is_past(name: str) -> bool:
    return PAST.match(name) is not None


def is_present(name: str) -> bool:
    return re.match(r"^present[._](\d+)[._](key|value)$", name) is not None


def strip_past(model: onnx_ir.Model) -> dict[str, int]:
    """Take the past inputs out of the graph's inputs and out of the Concats that read them, in
    place; returns each past input's past axis (bound to 0 by `bind_past` once the other dims
    are bound). A model without past inputs is left as it is."""
    g = model.graph
    pasts = [v for v in g.inputs if is_past(v.name or "")]
    axes = {}
    for value in pasts:
        axes[value.name] = _drop_from_concat(value)
    for value in pasts:
        g.inputs.remove(value)
    _total_dims(model, {_dim_name(v, axes[v.name]) for v in pasts} - {""})
    return axes


def _dim_name(value: onnx_ir.Value, axis: int) -> str:
    dim = value.shape[axis] if value.shape is not None and axis < len(value.shape) else None
    return "" if dim is None or isinstance(dim, int) else str(dim.value or "")


def _total_dims(model: onnx_ir.Model, past_dims: set[str]) -> None:
    """Dims spanning the past and the new tokens (an attention mask's `past_seq + seq`) are the
    new tokens' at past length 0: `seq`."""
    for value in model.graph.inputs:
        if value.shape is None:
            continue
        dims = list(value.shape)
        for i, d in enumerate(dims):
            terms = [] if isinstance(d, int) else [t.strip() for t in str(d.value).split("+")]
            if len(terms) == 2 and any(t in past_dims for t in terms):
                dims[i] = next((t for t in terms if t not in past_dims), terms[0])
        value.shape = onnx_ir.Shape(dims)


def _drop_from_concat(value: onnx_ir.Value) -> int:
    concats = [u for u, _ in value.uses() if u.op_type == "Concat"]
    other = [u for u, _ in value.uses() if u.op_type not in ("Concat", "Shape")]
    if len(concats) != 1 or other:
        node = (other or concats or [None])[0]
        what = f"{node.op_type} {node.name}" if node is not None else "no Concat"
        raise ModelError(f"past input {value.name} is read by {what}: a with-past export maps "
                         "onto the KV cache only when its past feeds one Concat(past, new) "
                         "(and Shape)")
    node = concats[0]
    axis = int(node.attributes["axis"].as_int())
    rank = len(value.shape) if value.shape is not None else 0
    if node.inputs[0] is not value or len(node.inputs) != 2:
        raise ModelError(f"past input {value.name}: Concat {node.name} is not Concat(past, new)")
    _rewire(node, node.inputs[1])
    return axis % rank if rank else axis


def _rewire(node: onnx_ir.Node, new: onnx_ir.Value) -> None:
    """Concat(past, new) -> Identity(new): its output (the present) is the new K / V."""
    out, graph = node.outputs[0], node.graph
    ident = onnx_ir.Node("", "Identity", [new], name=f"{node.name}/past0")
    graph.insert_after(node, ident)
    out.replace_all_uses_with(ident.outputs[0], replace_graph_outputs=True)
    graph.remove(node, safe=True)
    ident.outputs[0].name = out.name
    ident.outputs[0].shape, ident.outputs[0].type = out.shape, out.type


def bind_past(model: onnx_ir.Model, axes: dict[str, int], values: dict[str, onnx_ir.Value],
              dims: dict[str, int]) -> None:
    """Each past input as an empty constant (past axis 0) for what still reads its shape."""
    for name, axis in axes.items():
        value = values[name]
        if not value.uses():
            continue
        shape = []
        for i, d in enumerate(value.shape or ()):
            if i == axis:
                shape.append(0)
            elif isinstance(d, int):
                shape.append(d)
            elif str(d.value) in dims:
                shape.append(dims[str(d.value)])
            else:
                raise ShapeError(f"past input {name} dim {i} ({d.value}) is not bound by any "
                                 "other input; bind it with --input-shapes")
        dtype = value.dtype.numpy() if value.dtype is not None else np.float32
        value.const_value = onnx_ir.tensor(np.zeros(shape, dtype), name=name)
        value.shape = onnx_ir.Shape(shape)
        model.graph.register_initializer(value)
