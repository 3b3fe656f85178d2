"""Per-op and per-layer FLOPs and bytes: weights, activations and the per-token KV cache.

Conventions: a multiply-add is 2 FLOPs; elementwise ops count one FLOP per output element (a
fixed few for transcendental and normalization ops); data movement (Reshape, Transpose, Gather,
Slice, ...) is free. Parameters are the float weights of the source model, and the integer ones
a quantized model reads as data (folded constants such as rotary tables and masks are not
parameters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compiler import ir
from compiler.vocab import LAYOUT_OPS

_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Max", "Min", "Clip",
    "Mod", "Where", "Relu", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And",
    "Or", "Not", "IsNaN", "IsInf",
})
_TRANSCENDENTAL = frozenset({"Exp", "Log", "Erf", "Tanh", "Sigmoid", "Cos", "Sin", "Softplus"})
_PER_ELEMENT = {"Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "RMSNormalization": 5,
                "Gelu": 8}
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ArgMax"})
# Mixture-of-experts routing, per input element: TopK compares each logit with the running
# k best, OneHot compares each index with each class (counted per output element), and
# ScatterElements adds or writes each update.
_ROUTING = {"TopK": 2, "ScatterElements": 1}
# --- issue 15, real checkpoints (h-real): one add per output element ---
_ELEMENTWISE = _ELEMENTWISE | {"CumSum"}
# --- end issue 15 ---


# quantized graphs: integer matmuls count 2 ops per multiply-add like float ones; quantize,
# dequantize and requantize a few per element
_QUANT_MATMULS = frozenset({"MatMulInteger", "QLinearMatMul", "QGemm"})
_QUANT_PER_ELEMENT = {"QuantizeLinear": 3, "DequantizeLinear": 2, "DynamicQuantizeLinear": 5,
                      "QLinearSigmoid": 9}  # dequantize, sigmoid, quantize
# input positions holding quantized data (not scales or zero points), per op
QUANT_DATA_INPUTS = {"DequantizeLinear": (0,), "MatMulInteger": (0, 1),
                     "QLinearMatMul": (0, 3), "QGemm": (0, 3)}


def _quant_flops(g: ir.Graph, op: ir.Op, out: int) -> int | None:
    if op.kind in _QUANT_MATMULS:
        a = g.tensor(op.inputs[0]).shape
        k = a[0] if op.attr("transA", 0) else a[-1]
        return 2 * out * k + (out if op.kind != "MatMulInteger" else 0)
    if op.kind == "QLinearConcat":  # each element requantized to y's scale
        return 5 * out
    if op.kind in _QUANT_PER_ELEMENT:
        return _QUANT_PER_ELEMENT[op.kind] * g.tensor(op.inputs[0]).numel
    return None


def op_flops(g: ir.Graph, op: ir.Op) -> int:
    out = g.tensor(op.outputs[0]).numel if op.outputs and op.outputs[0] else 0
    quant = _quant_flops(g, op, out)
    if quant is not None:
        return quant
    if op.kind == "MatMul":
        return 2 * out * g.tensor(op.inputs[0]).shape[-1]
    if op.kind == "Gemm":
        return _gemm_flops(g, op, out)
    if op.kind == "Attention":
        return _attention_flops(g, op)
    if op.kind in _ELEMENTWISE:
        return out
    if op.kind in _TRANSCENDENTAL:
        return 4 * out
    if op.kind in _PER_ELEMENT:
        return _PER_ELEMENT[op.kind] * out
    if op.kind in _REDUCE:
        return g.tensor(op.inputs[0]).numel
    if op.kind in _ROUTING:
        counted = op.inputs[-1 if op.kind == "ScatterElements" else 0]  # updates or logits
        return _ROUTING[op.kind] * g.tensor(counted).numel
    if op.kind == "OneHot":
        return out
    return 0


def _gemm_flops(g: ir.Graph, op: ir.Op, out: int) -> int:
    a = g.tensor(op.inputs[0]).shape
    k = a[0] if op.attr("transA", 0) else a[1]
    bias = out if len(op.inputs) > 2 and op.inputs[2] else 0
    return 2 * out * k + bias


def _attention_flops(g: ir.Graph, op: ir.Op) -> int:
    """ONNX Attention (opset 23): Q K^T, softmax, P V over all heads."""
    q, k, v = (g.tensor(n).shape for n in op.inputs[:3])
    q_heads = op.attr("q_num_heads") or (q[1] if len(q) == 4 else 1)
    batch, q_len, kv_len = q[0], q[-2], k[-2]
    head_dim = q[-1] if len(q) == 4 else q[-1] // int(q_heads)
    v_dim = v[-1] if len(v) == 4 else v[-1] // int(op.attr("kv_num_heads") or 1)
    scores = batch * int(q_heads) * q_len * kv_len
    return 2 * scores * head_dim + 2 * scores * v_dim + 5 * scores


def is_parameter(t: ir.Tensor, quantized: frozenset[str] = frozenset()) -> bool:
    """A float weight of the source model with more than one element (scalars are
    hyper-parameters such as eps; folded constants are not parameters), or an integer one a
    quantized op reads as data (`quantized_weights`), not as a zero point."""
    if t.kind is not ir.TensorKind.WEIGHT or t.numel <= 1:
        return False
    return t.dtype.is_float or t.name in quantized


def quantized_weights(g: ir.Graph) -> frozenset[str]:
    """Integer (and float8) weights read as the data of a quantized op, and 8-bit or narrower
    tables a Gather reads (a quantized embedding): the parameters of a quantized model, which
    count like float ones."""
    names = set()
    for op in g.ops:
        for i in QUANT_DATA_INPUTS.get(op.kind, ()):
            if i < len(op.inputs) and op.inputs[i]:
                names.add(op.inputs[i])
        if op.kind == "Gather" and g.tensor(op.inputs[0]).dtype.bits <= 8:
            names.add(op.inputs[0])
    return frozenset(n for n in names if not g.tensor(n).dtype.is_float
                     and g.tensor(n).dtype is not ir.DType.BOOL)


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    ops: int
    flops: int
    params: int
    weight_bytes: int
    activation_bytes: int  # bytes of every tensor the layer produces (upper bound on live set)
    output_bytes: int  # bytes leaving the layer (its boundary tensors)
    kv_elements_per_token: int  # K and V cache elements per token (decoder layers)
    kv_bytes_per_token: int  # the same in the model's dtype


def layer_costs(g: ir.Graph) -> tuple[LayerCost, ...]:
    kv = kv_cache_tensors(g)
    owner = _weight_owner(g)
    return tuple(_layer_cost(g, layer, kv, owner) for layer in g.layers)


def _layer_cost(g: ir.Graph, layer: ir.Layer, kv: dict[str, str], owner: dict[str, str]):
    produced = {n for op in layer.ops for n in op.outputs if n}
    mine = [g.tensor(n) for n, lay in owner.items() if lay == layer.name]
    leaving = {n for n in produced if n in g.outputs or _read_outside(g, n, layer)}
    tokens = max(token_count(g), 1)
    kv_t = [g.tensor(n) for n, lay in kv.items() if lay == layer.name]
    return LayerCost(
        name=layer.name, kind=layer.kind.value, ops=len(layer.ops),
        flops=sum(op_flops(g, op) for op in layer.ops),
        params=sum(t.numel for t in mine if is_parameter(t, quantized_weights(g))),
        weight_bytes=sum(t.nbytes for t in mine),
        activation_bytes=sum(g.tensor(n).nbytes for n in produced),
        output_bytes=sum(g.tensor(n).nbytes for n in leaving),
        kv_elements_per_token=sum(t.numel for t in kv_t) // tokens,
        kv_bytes_per_token=sum(t.nbytes for t in kv_t) // tokens,
    )


def _read_outside(g: ir.Graph, name: str, layer: ir.Layer) -> bool:
    inside = {op.name for op in layer.ops}
    return any(c.name not in inside for c in g.consumers.get(name, ()))


def _weight_owner(g: ir.Graph) -> dict[str, str]:
    """Each weight belongs to the first layer that reads it (a tied embedding to embedding)."""
    owner: dict[str, str] = {}
    for layer in g.layers:
        for op in layer.ops:
            for n in op.inputs:
                if n and g.tensor(n).is_const:
                    owner.setdefault(n, layer.name)
    return owner


def batch_size(g: ir.Graph) -> int:
    """Sequences per forward pass: the first dim of the first rank>=2 integer input."""
    for name in g.inputs:
        t = g.tensor(name)
        if not t.dtype.is_float and len(t.shape) >= 2:
            return t.shape[0]
    return 1


def token_count(g: ir.Graph) -> int:
    """Tokens per forward pass: batch x sequence of the first rank>=2 integer input."""
    for name in g.inputs:
        t = g.tensor(name)
        if not t.dtype.is_float and len(t.shape) >= 2:
            return t.shape[0] * t.shape[1]
    first = g.tensor(g.inputs[0]) if g.inputs else None
    return math.prod(first.shape[:-1]) if first and len(first.shape) > 1 else 1


def kv_cache_tensors(g: ir.Graph) -> dict[str, str]:
    """Tensors an incremental decoder would cache (K and V per attention), by layer name.

    Found from the attention cores: the key and value operands of an `Attention` op, or of the
    two activation x activation MatMuls around a Softmax, followed back through layout ops
    (transposes, reshapes, GQA expansion) to the tensor that is computed once per token.
    """
    layer_of = {op.name: layer.name for layer in g.layers for op in layer.ops}
    found: dict[str, str] = {}
    for op in g.ops:
        for operand in _kv_operands(g, op):
            src = _through_layout(g, operand)
            found.setdefault(src, layer_of[g.producers[src].name] if src in g.producers else "")
    return found


def _kv_operands(g: ir.Graph, op: ir.Op) -> list[str]:
    if op.kind == "Attention":
        return [n for n in op.inputs[1:3] if n]
    if op.kind != "MatMul" or any(g.tensor(n).is_const for n in op.inputs):
        return []
    a_from_softmax = _reaches_softmax(g, op.inputs[0])
    feeds_softmax = any(c.kind == "Softmax" for c in _downstream(g, op.outputs[0], depth=4))
    return [op.inputs[1]] if a_from_softmax or feeds_softmax else []


def _through_layout(g: ir.Graph, name: str) -> str:
    while name in g.producers and g.producers[name].kind in LAYOUT_OPS | {"Mul", "Div"}:
        op = g.producers[name]
        acts = [n for n in op.inputs if n and not g.tensor(n).is_const]
        if len(acts) != 1:
            break
        name = acts[0]
    return name


def _reaches_softmax(g: ir.Graph, name: str, depth: int = 4) -> bool:
    for _ in range(depth):
        op = g.producers.get(name)
        if op is None:
            return False
        if op.kind == "Softmax":
            return True
        acts = [n for n in op.inputs if n and not g.tensor(n).is_const]
        if not acts:
            return False
        name = acts[0]
    return False


def _downstream(g: ir.Graph, name: str, depth: int) -> list[ir.Op]:
    frontier, seen = [name], []
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for c in g.consumers.get(n, ()):
                seen.append(c)
                nxt.extend(o for o in c.outputs if o)
        frontier = nxt
    return seen


@dataclass(frozen=True)
class ModelCost:
    tokens: int
    params: int
    weight_bytes: int
    flops: int  # per forward pass over `tokens` tokens
    flops_per_token: int
    matmul_flops: int
    kv_elements_per_token: int
    kv_bytes_per_token: int
    layers: tuple[LayerCost, ...]


def model_cost(g: ir.Graph) -> ModelCost:
    layers = layer_costs(g)
    tokens = token_count(g)
    flops = sum(lc.flops for lc in layers)
    return ModelCost(
        tokens=tokens,
        params=sum(t.numel for t in g.weights if is_parameter(t, quantized_weights(g))),
        weight_bytes=sum(t.nbytes for t in g.weights),
        flops=flops,
        flops_per_token=flops // tokens if tokens else flops,
        matmul_flops=sum(op_flops(g, op) for op in g.ops if op.kind in ("MatMul", "Gemm")),
        kv_elements_per_token=sum(lc.kv_elements_per_token for lc in layers),
        kv_bytes_per_token=sum(lc.kv_bytes_per_token for lc in layers),
        layers=layers,
    )
