"""The ONNX ops the compiler accepts, and the check that lists every unsupported one at once.

The set covers what torch's dynamo and TorchScript exporters emit for GPT-2, LLaMA and BERT at
opsets 17-23 after shape arithmetic is folded. Adding an op here means adding its kernel to the
executor and its cost to compiler/tiling/costs.py.
"""

from __future__ import annotations

import onnx_ir as ir

from compiler.errors import UnsupportedOp, UnsupportedOpsError

SUPPORTED_OPS = frozenset({
    # linear algebra and attention
    "MatMul", "Gemm", "Attention",
    # normalization and activations
    "LayerNormalization", "RMSNormalization", "Softmax", "LogSoftmax", "Gelu", "Erf", "Tanh",
    "Sigmoid", "Relu", "Softplus",
    # elementwise arithmetic
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Exp", "Log", "Abs",
    "Cos", "Sin", "Max", "Min", "Clip", "Mod",
    # comparison and logic
    "Where", "IsNaN", "IsInf", "And", "Or", "Not", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual",
    # reductions
    "ReduceMean", "ReduceSum", "ReduceMax", "ArgMax",
    # indexing and data movement
    "Gather", "GatherElements", "GatherND", "ScatterND", "Split", "Slice", "Concat", "Reshape",
    "Transpose", "Expand", "Unsqueeze", "Squeeze", "Flatten", "Tile", "Cast", "CastLike",
    "Identity", "Dropout", "Trilu", "Range", "Shape", "Size", "ConstantOfShape", "Constant",
})
# Mixture-of-experts routing (kernels in executor/kernels_moe.py). NonZero stays unsupported
# (data-dependent shapes): the per-expert loop form it comes with is rewritten into the batched
# form before this check (moeloop.py); a NonZero left over is refused.
MOE_OPS = frozenset({"TopK", "OneHot", "ScatterElements"})
SUPPORTED_OPS = SUPPORTED_OPS | MOE_OPS
# --- issue 15, real checkpoints (h-real): positions computed from the runtime mask ---
SUPPORTED_OPS = SUPPORTED_OPS | frozenset({"CumSum"})
# --- end issue 15 ---
# --- quantized graphs (QDQ, dynamic and QOperator forms; kernels in executor/kernels_quant.py)
QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "QLinearMatMul",
})
MICROSOFT = "com.microsoft"
# com.microsoft contrib ops that onnxruntime's quantizer emits and wafer implements; any other
# op of that domain is refused
MICROSOFT_OPS = frozenset({"QGemm", "QuantizeLinear", "DequantizeLinear", "QLinearAdd",
                           "QLinearMul", "QLinearSoftmax", "QLinearConcat", "QLinearSigmoid"})
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_DTYPE_NAMES = {ir.DataType.FLOAT: "float32", ir.DataType.FLOAT16: "float16",
                ir.DataType.DOUBLE: "float64", ir.DataType.BFLOAT16: "bfloat16"}


def check_supported(model: ir.Model) -> None:
    """Raise UnsupportedOpsError listing every unsupported node (with its shapes) at once."""
    bad = [_describe(model, node) for node in model.graph if not is_supported(node)]
    if bad:
        raise UnsupportedOpsError(bad)


def check_control_flow(model: ir.Model) -> None:
    """Before folding: a model with control flow (a node with a subgraph) is refused with every
    unsupported node listed, not partly folded (folding would inline a constant If's branch)."""
    if any(_has_subgraph(node) for node in model.graph):
        check_supported(model)


def _has_subgraph(node: ir.Node) -> bool:
    graphs = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
    return node.op_type in CONTROL_FLOW or any(a.type in graphs for a in node.attributes.values())


def is_supported(node: ir.Node) -> bool:
    if node.domain == MICROSOFT:
        return node.op_type in MICROSOFT_OPS
    return node.domain in STANDARD_DOMAINS and node.op_type in SUPPORTED_OPS | QUANT_OPS


def _describe(model: ir.Model, node: ir.Node) -> UnsupportedOp:
    opset = model.opset_imports.get(node.domain, model.opset_imports.get("", 0))
    shapes = tuple(_shape_str(v) for v in node.inputs)
    kind = node.op_type + (" (control flow)" if node.op_type in CONTROL_FLOW else "")
    return UnsupportedOp(node.name or "", kind, node.domain, int(opset), shapes)


def _shape_str(value: ir.Value | None) -> str:
    if value is None:
        return "-"
    dtype = _DTYPE_NAMES.get(value.dtype, str(value.dtype).lower()) if value.dtype else "?"
    dims = "?" if value.shape is None else ",".join(str(d) for d in value.shape)
    return f"{dtype}[{dims}]"
