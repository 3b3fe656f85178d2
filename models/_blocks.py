"""Transformer pieces shared by the zoo builders, emitted as torch's exporter emits them.

Each function takes the GraphBuilder, the node-name scope (e.g. `/transformer/h.0/attn`) and
input tensor names, and returns the name of its result. Shape arithmetic (Shape -> Gather /
Slice -> Concat -> Reshape) is kept symbolic, as in a real export: the frontend folds it once the
`batch` and `seq` dims are bound.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, numpy_helper

from ._graph import GraphBuilder

INT64_MAX = np.iinfo(np.int64).max


def seq_len(b: GraphBuilder, scope: str, ids: str) -> str:
    """The run-time sequence length of a [batch, seq] input, as an int64 scalar."""
    shape = b.op(scope, "Shape", ids)
    return b.op(scope, "Gather", shape, b.int_scalar(scope, 1), axis=0)


def position_ids(b: GraphBuilder, scope: str, seq: str) -> str:
    """[1, seq] int64 positions 0..seq-1 (Range + Unsqueeze)."""
    positions = b.op(scope, "Range", b.int_scalar(scope, 0), seq, b.int_scalar(scope, 1))
    return b.op(scope, "Unsqueeze", positions, b.ints(scope, [0]))


def square_shape(b: GraphBuilder, scope: str, seq: str) -> str:
    """The 1-d shape [seq, seq], built from the scalar seq length."""
    dim = b.op(scope, "Unsqueeze", seq, b.ints(scope, [0]))
    return b.op(scope, "Concat", dim, dim, axis=0)


def causal_bool_mask(b: GraphBuilder, scope: str, seq: str) -> str:
    """[seq, seq] bool, True where key position <= query position (lower triangle)."""
    one = np.array([1], dtype=np.int64)
    ones = b.op(scope, "ConstantOfShape", square_shape(b, scope, seq),
                value=numpy_helper.from_array(one))
    lower = b.op(scope, "Trilu", ones, upper=0)
    return b.op(scope, "Cast", lower, to=TensorProto.BOOL)


def causal_additive_mask(b: GraphBuilder, scope: str, seq: str) -> str:
    """[seq, seq] of the model dtype: 0 on and below the diagonal, dtype-min above it."""
    fill = np.array([b.min_value], dtype=b.np_dtype)
    full = b.op(scope, "ConstantOfShape", square_shape(b, scope, seq),
                value=numpy_helper.from_array(fill))
    return b.op(scope, "Trilu", full, b.int_scalar(scope, 1), upper=1)


def linear(b: GraphBuilder, scope: str, x: str, prefix: str, n_in: int, n_out: int,
           bias: bool) -> str:
    """x @ W (+ bias). W is stored [n_in, n_out], as the exporter's constant folding leaves it."""
    y = b.op(scope, "MatMul", x, b.weight(f"{prefix}.weight", (n_in, n_out)))
    if not bias:
        return y
    return b.op(scope, "Add", b.weight(f"{prefix}.bias", (n_out,)), y)


def layer_norm(b: GraphBuilder, scope: str, x: str, prefix: str, size: int, eps: float) -> str:
    scale = b.weight(f"{prefix}.weight", (size,), init="ones")
    shift = b.weight(f"{prefix}.bias", (size,), init="zeros")
    return b.op(scope, "LayerNormalization", x, scale, shift, axis=-1, epsilon=eps)


def reshape_tail(b: GraphBuilder, scope: str, x: str, tail: list[int]) -> str:
    """Reshape [batch, seq, ...] to [batch, seq, *tail] via Shape -> Slice -> Concat."""
    shape = b.op(scope, "Shape", x)
    lead = b.op(scope, "Slice", shape, b.ints(scope, [0]), b.ints(scope, [2]), b.ints(scope, [0]))
    target = b.op(scope, "Concat", lead, b.ints(scope, tail), axis=0)
    return b.op(scope, "Reshape", x, target)


def split_heads(b: GraphBuilder, scope: str, x: str, heads: int, head_dim: int,
                perm: tuple[int, ...] = (0, 2, 1, 3)) -> str:
    """[batch, seq, heads*head_dim] -> [batch, heads, seq, head_dim] (or another `perm`)."""
    return b.op(scope, "Transpose", reshape_tail(b, scope, x, [heads, head_dim]), perm=perm)


def merge_heads(b: GraphBuilder, scope: str, x: str, hidden: int) -> str:
    """[batch, heads, seq, head_dim] -> [batch, seq, hidden]."""
    return reshape_tail(b, scope, b.op(scope, "Transpose", x, perm=(0, 2, 1, 3)), [hidden])


def softmax(b: GraphBuilder, scope: str, scores: str) -> str:
    """Softmax over keys; computed in float32 and cast back when the model is not float32."""
    if b.dtype == "float32":
        return b.op(scope, "Softmax", scores, axis=-1)
    up = b.op(scope, "Cast", scores, to=TensorProto.FLOAT)
    probs = b.op(scope, "Softmax", up, axis=-1)
    return b.op(scope, "Cast", probs, to=b.onnx_dtype)


def gelu_tanh(b: GraphBuilder, scope: str, x: str) -> str:
    """GPT-2's gelu_new: the `Gelu` op from opset 20, else its tanh decomposition."""
    if b.opset >= 20:
        return b.op(scope, "Gelu", x, approximate="tanh")
    half_x = b.op(scope, "Mul", b.scalar(scope, 0.5), x)
    cube = b.op(scope, "Pow", x, b.scalar(scope, 3.0))
    inner = b.op(scope, "Add", x, b.op(scope, "Mul", b.scalar(scope, 0.044715), cube))
    inner = b.op(scope, "Mul", b.scalar(scope, math.sqrt(2.0 / math.pi)), inner)
    one_plus = b.op(scope, "Add", b.scalar(scope, 1.0), b.op(scope, "Tanh", inner))
    return b.op(scope, "Mul", half_x, one_plus)


def gelu_erf(b: GraphBuilder, scope: str, x: str) -> str:
    """BERT's exact gelu: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    erf = b.op(scope, "Erf", b.op(scope, "Div", x, b.scalar(scope, math.sqrt(2.0))))
    one_plus = b.op(scope, "Add", erf, b.scalar(scope, 1.0))
    return b.op(scope, "Mul", b.op(scope, "Mul", x, one_plus), b.scalar(scope, 0.5))
