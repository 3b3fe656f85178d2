"""A bfloat16 model as ONNX Runtime's CPU provider can run it, for the reference run (issue 15).

ORT's CPU provider has bfloat16 kernels for little more than Cast: a model exported in bfloat16
(`model.to(torch.bfloat16)`) does not load there (`Could not find an implementation for Add(14)
node ...`). The reference then runs the same graph with every bfloat16 tensor held as float32,
which is what wafer's executor does (bfloat16 values held in float32, ops computed in float32):
bfloat16 initializers, constants, inputs, outputs and intermediate types become float32 (their
values unchanged: bfloat16 -> float32 is exact), and each `Cast(to=bfloat16)` becomes a Cast to
bfloat16 followed by a Cast back to float32, so its rounding stays where the model put it.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

BF16, F32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT


def has_bfloat16(model: onnx.ModelProto) -> bool:
    g = model.graph
    values = [*g.input, *g.output, *g.value_info]
    return any(v.type.tensor_type.elem_type == BF16 for v in values) or \
        any(t.data_type == BF16 for t in g.initializer) or \
        any(_casts_to_bf16(n) for n in g.node)


def upcast_bfloat16(model: onnx.ModelProto) -> bool:
    """Hold the model's bfloat16 as float32 (above), in place; False when it has none."""
    if not has_bfloat16(model):
        return False
    g = model.graph
    for v in [*g.input, *g.output, *g.value_info]:
        if v.type.tensor_type.elem_type == BF16:
            v.type.tensor_type.elem_type = F32
    for k, t in enumerate(g.initializer):
        if t.data_type == BF16:
            g.initializer[k].CopyFrom(_widened(t))
    nodes = []
    for node in g.node:
        nodes.extend(_upcast_node(node))
    del g.node[:]
    g.node.extend(nodes)
    return True


def _widened(t: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name)


def _casts_to_bf16(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == BF16 for a in node.attribute)


def _upcast_node(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == BF16:
            a.t.CopyFrom(_widened(a.t))
    if not _casts_to_bf16(node):
        return [node]
    rounded = f"{node.output[0]}__bfloat16"
    first = helper.make_node("Cast", list(node.input), [rounded], name=f"{node.name}__round",
                             to=BF16)
    back = helper.make_node("Cast", [rounded], list(node.output), name=node.name, to=F32)
    return [first, back]
