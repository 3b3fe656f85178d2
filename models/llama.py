"""LLaMA as HF's `LlamaForCausalLM` exports to ONNX (eager attention, no KV cache).

RMSNorm (decomposed below opset 23, the `RMSNormalization` op from 23), rotary position
embeddings (cos/sin from Range positions x inv_freq), grouped-query attention (repeat_kv via
Unsqueeze/Expand/Reshape below opset 23, the `Attention` op with is_causal from 23), an additive
causal mask, a SwiGLU MLP and no biases. Linear weights are stored [in, out].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from ._blocks import (
    INT64_MAX,
    causal_additive_mask,
    linear,
    merge_heads,
    position_ids,
    seq_len,
    softmax,
    split_heads,
)
from ._graph import GraphBuilder, check_common


@dataclass(frozen=True)
class LlamaConfig:
    """Defaults are Llama 3 8B's shapes."""

    vocab: int = 128256
    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    intermediate: int = 14336
    max_positions: int = 8192
    rope_theta: float = 500000.0
    eps: float = 1e-5
    tie_embeddings: bool = False
    dtype: str = "float32"
    opset: int = 17
    shape_only: bool = False
    default_seq: int = 128
    seed: int = 0
    init_std: float = 0.02  # HF `initializer_range`
    # with past (out of repr, as GPT2Config's variants): past_key_values.N.* in, present.N.* out
    past: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        check_common(self.dtype, self.hidden, self.heads, self.opset)
        if self.kv_heads <= 0 or self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def native_ops(self) -> bool:
        """Use opset 23's RMSNormalization and Attention instead of decompositions."""
        return self.opset >= 23


def build_llama(cfg: LlamaConfig, *, name: str = "llama") -> onnx.ModelProto:
    """input_ids int64 [batch, seq] -> logits [batch, seq, vocab]."""
    b = GraphBuilder(name, dtype=cfg.dtype, opset=cfg.opset, shape_only=cfg.shape_only,
                     seed=cfg.seed, init_std=cfg.init_std)
    ids = b.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    pasts = [_past_inputs(b, cfg, i) for i in range(cfg.layers)] if cfg.past else []
    embed = b.weight("model.embed_tokens.weight", (cfg.vocab, cfg.hidden))
    x = b.op("/model/embed_tokens", "Gather", embed, ids)
    seq = seq_len(b, "/model", ids)
    if pasts:
        positions, mask = _past_positions(b, cfg, seq, pasts[0][0])
    else:
        positions = position_ids(b, "/model", seq)
        mask = None if cfg.native_ops else causal_additive_mask(b, "/model", seq)
    cos, sin = _rotary(b, cfg, positions)
    for i in range(cfg.layers):
        x = _layer(b, cfg, i, x, (cos, sin), mask, pasts[i] if pasts else None)
    x = _rms_norm(b, cfg, "/model/norm", x, "model.norm")
    head = (b.op("/lm_head", "Transpose", embed, perm=(1, 0)) if cfg.tie_embeddings
            else b.weight("lm_head.weight", (cfg.hidden, cfg.vocab)))
    b.op("/lm_head", "MatMul", x, head, out="logits")
    b.output("logits", ["batch", "seq", cfg.vocab])
    for i in range(cfg.layers if cfg.past else 0):
        for kv in ("key", "value"):
            b.output(f"present.{i}.{kv}", ["batch", cfg.kv_heads, "total_seq", cfg.head_dim])
    doc = f"LLaMA ({cfg.layers} layers, hidden {cfg.hidden}, GQA {cfg.heads}/{cfg.kv_heads})"
    return b.model(doc=f"{doc}, built by wafer.zoo",
                   metadata={"wafer.default_dims": f"batch=1,seq={cfg.default_seq}"})


def _past_inputs(b: GraphBuilder, cfg: LlamaConfig, i: int) -> tuple[str, str]:
    dims = ["batch", cfg.kv_heads, "past_seq", cfg.head_dim]
    return (b.input(f"past_key_values.{i}.key", b.onnx_dtype, dims),
            b.input(f"past_key_values.{i}.value", b.onnx_dtype, dims))


def _past_positions(b: GraphBuilder, cfg: LlamaConfig, seq: str,
                    past: str) -> tuple[str, str | None]:
    """Positions past..past+seq-1 ([1, seq]) and the additive causal mask's rows past.. of
    [past+seq, past+seq] (HF's cache_position)."""
    s = "/model"
    start = b.op(s, "Gather", b.op(s, "Shape", past), b.int_scalar(s, 2), axis=0)
    total = b.op(s, "Add", start, seq)
    positions = b.op(s, "Unsqueeze", b.op(s, "Range", start, total, b.int_scalar(s, 1)),
                     b.ints(s, [0]))
    if cfg.native_ops:
        return positions, None
    rows = b.op(s, "Unsqueeze", start, b.ints(s, [0]))
    mask = b.op(s, "Slice", causal_additive_mask(b, s, total), rows,
                b.op(s, "Unsqueeze", total, b.ints(s, [0])), b.ints(s, [0]))
    return positions, mask


def _rotary(b: GraphBuilder, cfg: LlamaConfig, positions: str) -> tuple[str, str]:
    """cos, sin [1, seq, head_dim] of the model dtype (computed in float32, as HF does)."""
    s = "/model/rotary_emb"
    exponents = np.arange(0, cfg.head_dim, 2, dtype=np.float32) / cfg.head_dim
    inv_freq = (1.0 / cfg.rope_theta**exponents).astype(np.float32).reshape(1, -1, 1)
    pos = b.op(s, "Cast", b.op(s, "Unsqueeze", positions, b.ints(s, [1])), to=TensorProto.FLOAT)
    freqs = b.op(s, "Transpose", b.op(s, "MatMul", b.const(s, inv_freq), pos), perm=(0, 2, 1))
    emb = b.op(s, "Concat", freqs, freqs, axis=-1)
    cos, sin = b.op(s, "Cos", emb), b.op(s, "Sin", emb)
    if b.dtype != "float32":
        cos, sin = (b.op(s, "Cast", t, to=b.onnx_dtype) for t in (cos, sin))
    return cos, sin


def _layer(b: GraphBuilder, cfg: LlamaConfig, i: int, x: str, rope: tuple[str, str],
           mask: str | None, past: tuple[str, str] | None = None) -> str:
    s, p = f"/model/layers.{i}", f"model.layers.{i}"
    h = _rms_norm(b, cfg, f"{s}/input_layernorm", x, f"{p}.input_layernorm")
    x = b.op(s, "Add", x, _attention(b, cfg, f"{s}/self_attn", f"{p}.self_attn", h, rope, mask,
                                     past, i))
    h = _rms_norm(b, cfg, f"{s}/post_attention_layernorm", x, f"{p}.post_attention_layernorm")
    return b.op(s, "Add", x, _mlp(b, cfg, f"{s}/mlp", f"{p}.mlp", h))


def _rms_norm(b: GraphBuilder, cfg: LlamaConfig, s: str, x: str, prefix: str) -> str:
    """weight * x / sqrt(mean(x^2) + eps), the statistics in float32."""
    weight = b.weight(f"{prefix}.weight", (cfg.hidden,), init="ones")
    if cfg.native_ops:
        return b.op(s, "RMSNormalization", x, weight, axis=-1, epsilon=cfg.eps, stash_type=1)
    h = x if b.dtype == "float32" else b.op(s, "Cast", x, to=TensorProto.FLOAT)
    two, eps = (b.const(s, np.array(v, np.float32)) for v in (2.0, cfg.eps))
    mean = _reduce_mean(b, s, b.op(s, "Pow", h, two))
    h = b.op(s, "Mul", h, b.op(s, "Reciprocal", b.op(s, "Sqrt", b.op(s, "Add", mean, eps))))
    if b.dtype != "float32":
        h = b.op(s, "Cast", h, to=b.onnx_dtype)
    return b.op(s, "Mul", weight, h)


def _reduce_mean(b: GraphBuilder, s: str, x: str) -> str:
    """Mean over the last axis, keepdims; axes became an input in opset 18."""
    if b.opset >= 18:
        return b.op(s, "ReduceMean", x, b.ints(s, [-1]), keepdims=1)
    return b.op(s, "ReduceMean", x, axes=[-1], keepdims=1)


def _attention(b: GraphBuilder, cfg: LlamaConfig, s: str, p: str, x: str,
               rope: tuple[str, str], mask: str | None, past: tuple[str, str] | None = None,
               i: int = 0) -> str:
    hid, hd, kv_dim = cfg.hidden, cfg.head_dim, cfg.kv_heads * cfg.head_dim
    q_dim = cfg.heads * hd  # = hidden for Llama; wider for Qwen3's explicit head_dim
    q = split_heads(b, s, linear(b, f"{s}/q_proj", x, f"{p}.q_proj", hid, q_dim, False), -1, hd)
    k = split_heads(b, s, linear(b, f"{s}/k_proj", x, f"{p}.k_proj", hid, kv_dim, False), -1, hd)
    v = split_heads(b, s, linear(b, f"{s}/v_proj", x, f"{p}.v_proj", hid, kv_dim, False), -1, hd)
    cos, sin = (b.op(s, "Unsqueeze", t, b.ints(s, [1])) for t in rope)
    q, k = _apply_rotary(b, cfg, s, q, cos, sin), _apply_rotary(b, cfg, s, k, cos, sin)
    if past is not None:  # DynamicCache.update: cat((past, new), dim=-2), at the KV-head count
        k = b.op(s, "Concat", past[0], k, axis=2, out=f"present.{i}.key")
        v = b.op(s, "Concat", past[1], v, axis=2, out=f"present.{i}.value")
    if cfg.native_ops:
        context = b.op(s, "Attention", q, k, v, is_causal=1, scale=1.0 / math.sqrt(hd))
    else:
        context = _eager_attention(b, cfg, s, q, k, v, mask)
    return linear(b, f"{s}/o_proj", merge_heads(b, s, context, q_dim), f"{p}.o_proj", q_dim,
                  hid, False)


def _eager_attention(b: GraphBuilder, cfg: LlamaConfig, s: str, q: str, k: str, v: str,
                     mask: str | None) -> str:
    """softmax(q k^T * scale + mask) v with k, v repeated to all query heads."""
    k, v = _repeat_kv(b, cfg, s, k), _repeat_kv(b, cfg, s, v)
    scores = b.op(s, "MatMul", q, b.op(s, "Transpose", k, perm=(0, 1, 3, 2)))
    scores = b.op(s, "Mul", scores, b.scalar(s, 1.0 / math.sqrt(cfg.head_dim)))
    if mask is not None:
        scores = b.op(s, "Add", scores, mask)
    return b.op(s, "MatMul", softmax(b, s, scores), v)


def _apply_rotary(b: GraphBuilder, cfg: LlamaConfig, s: str, x: str, cos: str, sin: str) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x2, x1)."""
    half = cfg.head_dim // 2
    x1 = b.op(s, "Slice", x, b.ints(s, [0]), b.ints(s, [half]), b.ints(s, [3]))
    x2 = b.op(s, "Slice", x, b.ints(s, [half]), b.ints(s, [INT64_MAX]), b.ints(s, [3]))
    rotated = b.op(s, "Concat", b.op(s, "Neg", x2), x1, axis=-1)
    return b.op(s, "Add", b.op(s, "Mul", x, cos), b.op(s, "Mul", rotated, sin))


def _repeat_kv(b: GraphBuilder, cfg: LlamaConfig, s: str, x: str) -> str:
    """[batch, kv_heads, seq, hd] -> [batch, heads, seq, hd] (HF repeat_kv)."""
    n_rep = cfg.heads // cfg.kv_heads
    if n_rep == 1:
        return x
    x = b.op(s, "Unsqueeze", x, b.ints(s, [2]))
    x = b.op(s, "Expand", x, b.ints(s, [1, 1, n_rep, 1, 1]))
    return b.op(s, "Reshape", x, b.ints(s, [0, cfg.heads, -1, cfg.head_dim]))


def _mlp(b: GraphBuilder, cfg: LlamaConfig, s: str, p: str, x: str) -> str:
    """down_proj(silu(gate_proj(x)) * up_proj(x)), silu as Sigmoid * x."""
    hid, inter = cfg.hidden, cfg.intermediate
    gate = linear(b, f"{s}/gate_proj", x, f"{p}.gate_proj", hid, inter, bias=False)
    gate = b.op(f"{s}/act_fn", "Mul", gate, b.op(f"{s}/act_fn", "Sigmoid", gate))
    up = linear(b, f"{s}/up_proj", x, f"{p}.up_proj", hid, inter, bias=False)
    return linear(b, f"{s}/down_proj", b.op(s, "Mul", gate, up), f"{p}.down_proj", inter, hid,
                  bias=False)
