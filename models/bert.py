"""BERT as HF's `BertModel` exports to ONNX (eager attention).

Word + position + token-type embeddings, post-LayerNorm encoder layers with an additive
extended attention mask ((1 - mask) * dtype-min), exact Erf gelu, and the pooler (Gemm on the
first token, then Tanh; its weight keeps torch's [out, in] layout with transB=1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ._blocks import gelu_erf, layer_norm, linear, merge_heads, seq_len, softmax, split_heads
from ._graph import GraphBuilder, check_common


@dataclass(frozen=True)
class BertConfig:
    """Defaults are bert-base-uncased."""

    vocab: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12
    with_pooler: bool = True
    dtype: str = "float32"
    opset: int = 17
    shape_only: bool = False
    default_seq: int = 128
    seed: int = 0
    init_std: float = 0.02  # HF `initializer_range`

    def __post_init__(self) -> None:
        check_common(self.dtype, self.hidden, self.heads, self.opset)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def build_bert(cfg: BertConfig, *, name: str = "bert") -> onnx.ModelProto:
    """input_ids, attention_mask, token_type_ids int64 [batch, seq] -> last_hidden_state
    [batch, seq, hidden] (and pooler_output [batch, hidden] when `with_pooler`)."""
    b = GraphBuilder(name, dtype=cfg.dtype, opset=cfg.opset, shape_only=cfg.shape_only,
                     seed=cfg.seed, init_std=cfg.init_std)
    ids, attn_mask, types = (b.input(n, TensorProto.INT64, ["batch", "seq"])
                             for n in ("input_ids", "attention_mask", "token_type_ids"))
    x = _embeddings(b, cfg, ids, types)
    mask = _extended_mask(b, attn_mask)
    for i in range(cfg.layers):
        last = i == cfg.layers - 1
        x = _layer(b, cfg, i, x, mask, out="last_hidden_state" if last else None)
    b.output("last_hidden_state", ["batch", "seq", cfg.hidden])
    if cfg.with_pooler:
        _pooler(b, cfg, x)
        b.output("pooler_output", ["batch", cfg.hidden])
    doc = f"BERT ({cfg.layers} layers, hidden {cfg.hidden}), built by wafer.zoo"
    return b.model(doc=doc, metadata={"wafer.default_dims": f"batch=1,seq={cfg.default_seq}"})


def _embeddings(b: GraphBuilder, cfg: BertConfig, ids: str, types: str) -> str:
    s, p = "/bert/embeddings", "bert.embeddings"
    words = b.weight(f"{p}.word_embeddings.weight", (cfg.vocab, cfg.hidden))
    positions = b.weight(f"{p}.position_embeddings.weight", (cfg.max_positions, cfg.hidden))
    token_types = b.weight(f"{p}.token_type_embeddings.weight", (cfg.type_vocab, cfg.hidden))
    # HF slices its registered `position_ids` buffer [1, max_positions] to the sequence length.
    buffer = b.const(s, np.arange(cfg.max_positions, dtype=np.int64).reshape(1, -1))
    end = b.op(s, "Unsqueeze", seq_len(b, s, ids), b.ints(s, [0]))
    pos_ids = b.op(s, "Slice", buffer, b.ints(s, [0]), end, b.ints(s, [1]))
    x = b.op(s, "Add", b.op(f"{s}/word_embeddings", "Gather", words, ids),
             b.op(f"{s}/token_type_embeddings", "Gather", token_types, types))
    x = b.op(s, "Add", x, b.op(f"{s}/position_embeddings", "Gather", positions, pos_ids))
    return layer_norm(b, f"{s}/LayerNorm", x, f"{p}.LayerNorm", cfg.hidden, cfg.eps)


def _extended_mask(b: GraphBuilder, attn_mask: str) -> str:
    """[batch, 1, 1, seq]: 0 where attended, dtype-min where padded."""
    s = "/bert"
    mask = b.op(s, "Unsqueeze", attn_mask, b.ints(s, [1, 2]))
    mask = b.op(s, "Cast", mask, to=b.onnx_dtype)
    inverted = b.op(s, "Sub", b.scalar(s, 1.0), mask)
    return b.op(s, "Mul", inverted, b.scalar(s, b.min_value))


def _layer(b: GraphBuilder, cfg: BertConfig, i: int, x: str, mask: str,
           out: str | None) -> str:
    s, p = f"/bert/encoder/layer.{i}", f"bert.encoder.layer.{i}"
    hid, inter = cfg.hidden, cfg.intermediate
    h = _self_attention(b, cfg, f"{s}/attention/self", f"{p}.attention.self", x, mask)
    h = linear(b, f"{s}/attention/output/dense", h, f"{p}.attention.output.dense", hid, hid, True)
    x = _add_norm(b, cfg, f"{s}/attention/output", f"{p}.attention.output", h, x)
    h = linear(b, f"{s}/intermediate/dense", x, f"{p}.intermediate.dense", hid, inter, True)
    h = gelu_erf(b, f"{s}/intermediate/intermediate_act_fn", h)
    h = linear(b, f"{s}/output/dense", h, f"{p}.output.dense", inter, hid, True)
    return _add_norm(b, cfg, f"{s}/output", f"{p}.output", h, x, out=out)


def _add_norm(b: GraphBuilder, cfg: BertConfig, s: str, p: str, h: str, residual: str,
              out: str | None = None) -> str:
    """LayerNorm(h + residual), named `{s}/LayerNorm/LayerNormalization`."""
    x = b.op(s, "Add", h, residual)
    scale = b.weight(f"{p}.LayerNorm.weight", (cfg.hidden,), init="ones")
    shift = b.weight(f"{p}.LayerNorm.bias", (cfg.hidden,), init="zeros")
    return b.op(f"{s}/LayerNorm", "LayerNormalization", x, scale, shift, axis=-1,
                epsilon=cfg.eps, out=out)


def _self_attention(b: GraphBuilder, cfg: BertConfig, s: str, p: str, x: str,
                    mask: str) -> str:
    hid, heads, hd = cfg.hidden, cfg.heads, cfg.head_dim
    q, k, v = (linear(b, f"{s}/{n}", x, f"{p}.{n}", hid, hid, bias=True)
               for n in ("query", "key", "value"))
    q, v = split_heads(b, s, q, heads, hd), split_heads(b, s, v, heads, hd)
    k_t = split_heads(b, s, k, heads, hd, perm=(0, 2, 3, 1))
    scores = b.op(s, "Div", b.op(s, "MatMul", q, k_t), b.scalar(s, math.sqrt(hd)))
    scores = b.op(s, "Add", scores, mask)
    return merge_heads(b, s, b.op(s, "MatMul", softmax(b, s, scores), v), hid)


def _pooler(b: GraphBuilder, cfg: BertConfig, x: str) -> None:
    s, p = "/bert/pooler", "bert.pooler.dense"
    first = b.op(s, "Gather", x, b.int_scalar(s, 0), axis=1)
    weight = b.weight(f"{p}.weight", (cfg.hidden, cfg.hidden))
    bias = b.weight(f"{p}.bias", (cfg.hidden,))
    dense = b.op(f"{s}/dense", "Gemm", first, weight, bias, transB=1)
    b.op(f"{s}/activation", "Tanh", dense, out="pooler_output")
