"""Quantized graphs in the frontend: shape inference through the com.microsoft ops onnx does
not know, and the stored width of dequantized weights.

onnx's shape inference skips ops of other domains, leaving everything after them untyped. It
runs here on a copy in which each com.microsoft node is replaced by standard ops that give its
outputs the same types and shapes; the types found are then put on the original graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx
import onnx_ir
from onnx import helper
from onnx_ir.passes.common._c_api_utils import call_onnx_api

from compiler import ir
from compiler.frontend.ops import MICROSOFT
from compiler.vocab import VIEW_OPS

Infer = Callable[[onnx.ModelProto], onnx.ModelProto]


def infer_with_contrib(proto: onnx.ModelProto, infer: Infer) -> onnx.ModelProto:
    """`infer` (onnx shape inference) on `proto`, through its com.microsoft nodes."""
    if not any(n.domain == MICROSOFT for n in proto.graph.node):
        return infer(proto)
    stand_in = onnx.ModelProto()
    stand_in.CopyFrom(proto)
    del stand_in.graph.node[:]
    for i, node in enumerate(proto.graph.node):
        stand_in.graph.node.extend(_stand_in(node, i) if node.domain == MICROSOFT else [node])
    typed = infer(stand_in)
    known = {o for n in proto.graph.node for o in n.output}
    keep = [v for v in typed.graph.value_info if v.name in known]
    del typed.graph.value_info[:]
    typed.graph.value_info.extend(keep)
    del typed.graph.node[:]
    typed.graph.node.extend(proto.graph.node)
    return typed


FOLD_ROUNDS = 16  # shape arithmetic behind this many com.microsoft nodes in a row folds


def fold_through_contrib(model: onnx_ir.Model, fold: Callable[[onnx_ir.Model], None],
                         infer: Infer) -> None:
    """`fold` (constant folding) on `model`, then, while it holds com.microsoft nodes, the
    shapes their stand-ins give put on their outputs and `fold` again: the folder's own shape
    inference skips those nodes, so a Shape of a tensor after a QLinearAdd (a quantized
    model's positions, its attention's Reshape targets) would stay unfolded."""
    fold(model)
    for _ in range(FOLD_ROUNDS):
        if not any(n.domain == MICROSOFT for n in model.graph) or not _merge_shapes(
                model, call_onnx_api(lambda p: infer_with_contrib(p, infer), model)):
            return
        fold(model)


def _merge_shapes(model: onnx_ir.Model, typed: onnx.ModelProto) -> bool:
    """Static shapes `typed` found put on the values of `model` that lack one; whether any."""
    found = {}
    for info in typed.graph.value_info:
        dims = info.type.tensor_type.shape.dim if info.type.HasField("tensor_type") else None
        if dims is not None and info.type.tensor_type.HasField("shape") and \
                all(d.HasField("dim_value") for d in dims):
            found[info.name] = [d.dim_value for d in dims]
    changed = False
    for node in model.graph:
        for value in node.outputs:
            shape = found.get(value.name)
            if shape is None or (value.shape is not None and value.shape.is_static()):
                continue
            value.shape = onnx_ir.Shape(shape)
            changed = True
    return changed


def _stand_in(node: onnx.NodeProto, index: int) -> list[onnx.NodeProto]:
    """Standard nodes writing `node`'s outputs with its types and shapes."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return [helper.make_node(node.op_type, list(node.input), list(node.output),
                                 **{k: v for k, v in attrs.items() if k == "axis"})]
    if node.op_type == "QGemm":
        return _qgemm_stand_in(node, attrs, f"_wafer_stand_in_{index}")
    if node.op_type in ("QLinearAdd", "QLinearMul"):  # A's type, A and B broadcast
        tmp = f"_wafer_stand_in_{index}"
        return [helper.make_node("Cast", [node.input[0]], [f"{tmp}_a"], to=onnx.TensorProto.FLOAT),
                helper.make_node("Cast", [node.input[3]], [f"{tmp}_b"], to=onnx.TensorProto.FLOAT),
                helper.make_node(node.op_type[len("QLinear"):], [f"{tmp}_a", f"{tmp}_b"],
                                 [f"{tmp}_y"]),
                helper.make_node("CastLike", [f"{tmp}_y", node.input[0]], [node.output[0]])]
    if node.op_type == "QLinearConcat":
        return [helper.make_node("Concat", list(node.input[2::3]), [node.output[0]],
                                 axis=attrs.get("axis", 0))]
    if node.op_type in ("QLinearSoftmax", "QLinearSigmoid"):
        return [helper.make_node("Identity", [node.input[0]], [node.output[0]])]
    return [node]  # refused later with every unsupported op listed


def _qgemm_stand_in(node: onnx.NodeProto, attrs: dict, tmp: str) -> list[onnx.NodeProto]:
    a, b = node.input[0], node.input[3]
    nodes = []
    if attrs.get("transA", 0):
        nodes.append(helper.make_node("Transpose", [a], [f"{tmp}_a"], perm=[1, 0]))
        a = f"{tmp}_a"
    if attrs.get("transB", 0):
        nodes.append(helper.make_node("Transpose", [b], [f"{tmp}_b"], perm=[1, 0]))
        b = f"{tmp}_b"
    nodes.append(helper.make_node("MatMulInteger", [a, b], [f"{tmp}_acc"]))
    quantized = len(node.input) > 8 and node.input[8]
    if quantized:  # the output takes y_zero_point's type: cast like it
        nodes.append(helper.make_node("CastLike", [f"{tmp}_acc", node.input[8]],
                                      [node.output[0]]))
    else:
        nodes.append(helper.make_node("Cast", [f"{tmp}_acc"], [node.output[0]],
                                      to=onnx.TensorProto.FLOAT))
    return nodes


# --- stored widths ---------------------------------------------------------------------------


def mark_stored_widths(tensors: list[ir.Tensor], ops: tuple[ir.Op, ...]) -> list[ir.Tensor]:
    """A DequantizeLinear of a quantized weight makes a float weight the machine keeps at the
    weight's stored width (dequantized where it is used); so do views of it. Those float
    tensors get `storage` = the quantized dtype, which the byte rule counts."""
    by_name = {t.name: t for t in tensors}
    stored: dict[str, ir.DType] = {}
    for op in ops:
        src = by_name.get(op.inputs[0]) if op.inputs else None
        if src is None or not op.outputs or not op.outputs[0]:
            continue
        if op.kind == "DequantizeLinear" and src.kind is ir.TensorKind.WEIGHT \
                and not src.dtype.is_float:
            stored[op.outputs[0]] = src.dtype
        elif op.kind in VIEW_OPS and src.name in stored:
            stored[op.outputs[0]] = stored[src.name]
    return [dataclasses.replace(t, storage=stored[t.name]) if t.name in stored else t
            for t in tensors]
