"""GPT-2 as HF's `GPT2LMHeadModel` exports to ONNX (eager attention, no KV cache).

Learned position embeddings, pre-LayerNorm blocks with fused qkv (`c_attn`, Conv1D weights
[in, out]), a boolean causal mask applied with Where, gelu_new and an lm_head tied to `wte`
(MatMul with a Transpose of the one shared initializer, so parameters are counted once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from ._blocks import (
    causal_bool_mask,
    gelu_tanh,
    layer_norm,
    linear,
    merge_heads,
    position_ids,
    seq_len,
    softmax,
    split_heads,
)
from ._graph import GraphBuilder, check_common


@dataclass(frozen=True)
class GPT2Config:
    """Defaults are GPT-2 small (124M)."""

    vocab: int = 50257
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 1024
    eps: float = 1e-5
    tie_embeddings: bool = True
    dtype: str = "float32"
    opset: int = 17
    shape_only: bool = False
    default_seq: int = 128
    seed: int = 0
    init_std: float = 0.02  # HF `initializer_range`
    # Variants (zoo names tell them apart; out of repr, so a zoo digest, the entry's name and
    # config repr, is what it was before they existed):
    attention_mask: bool = field(default=False, repr=False)  # input [batch, seq], 0 = padding
    past: bool = field(default=False, repr=False)  # past_key_values.N.* in, present.N.* out

    def __post_init__(self) -> None:
        check_common(self.dtype, self.hidden, self.heads, self.opset)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def build_gpt2(cfg: GPT2Config, *, name: str = "gpt2") -> onnx.ModelProto:
    """input_ids int64 [batch, seq] (and attention_mask int64 [batch, seq]) -> logits
    [batch, seq, vocab]."""
    b = GraphBuilder(name, dtype=cfg.dtype, opset=cfg.opset, shape_only=cfg.shape_only,
                     seed=cfg.seed, init_std=cfg.init_std)
    ids = b.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    pasts = [_past_inputs(b, cfg, i) for i in range(cfg.layers)] if cfg.past else []
    x, mask = _embeddings(b, cfg, ids, pasts[0][0] if pasts else None)
    if cfg.attention_mask:  # with a past it spans past and new tokens, as HF's does
        mask = _padding_mask(b, mask, "past_seq + seq" if cfg.past else "seq")
    for i in range(cfg.layers):
        x = _block(b, cfg, i, x, mask, pasts[i] if pasts else None)
    x = layer_norm(b, "/transformer/ln_f", x, "transformer.ln_f", cfg.hidden, cfg.eps)
    _lm_head(b, cfg, x)
    b.output("logits", ["batch", "seq", cfg.vocab])
    for i in range(cfg.layers if cfg.past else 0):
        for kv in ("key", "value"):
            b.output(f"present.{i}.{kv}", ["batch", cfg.heads, "total_seq", cfg.head_dim])
    doc = f"GPT-2 ({cfg.layers} layers, hidden {cfg.hidden}), built by wafer.zoo"
    return b.model(doc=doc, metadata={"wafer.default_dims": f"batch=1,seq={cfg.default_seq}"})


def _embeddings(b: GraphBuilder, cfg: GPT2Config, ids: str,
                past: str | None) -> tuple[str, str]:
    """Token + position embeddings, and the [seq, seq] causal mask every block shares (with a
    past: positions past..past+seq-1 and the mask's rows past.. of [past+seq, past+seq])."""
    s = "/transformer"
    seq = seq_len(b, s, ids)
    wte = b.weight("transformer.wte.weight", (cfg.vocab, cfg.hidden))
    wpe = b.weight("transformer.wpe.weight", (cfg.max_positions, cfg.hidden))
    tokens = b.op(f"{s}/wte", "Gather", wte, ids)
    if past is None:
        positions = b.op(f"{s}/wpe", "Gather", wpe, position_ids(b, s, seq))
        return b.op(s, "Add", tokens, positions), causal_bool_mask(b, s, seq)
    start = b.op(s, "Gather", b.op(s, "Shape", past), b.int_scalar(s, 2), axis=0)
    total = b.op(s, "Add", start, seq)
    ids_ = b.op(s, "Range", start, total, b.int_scalar(s, 1))
    positions = b.op(f"{s}/wpe", "Gather", wpe, b.op(s, "Unsqueeze", ids_, b.ints(s, [0])))
    rows = b.op(s, "Unsqueeze", start, b.ints(s, [0]))
    mask = b.op(s, "Slice", causal_bool_mask(b, s, total), rows,
                b.op(s, "Unsqueeze", total, b.ints(s, [0])), b.ints(s, [0]))
    return b.op(s, "Add", tokens, positions), mask


def _past_inputs(b: GraphBuilder, cfg: GPT2Config, i: int) -> tuple[str, str]:
    dims = ["batch", cfg.heads, "past_seq", cfg.head_dim]
    return (b.input(f"past_key_values.{i}.key", b.onnx_dtype, dims),
            b.input(f"past_key_values.{i}.value", b.onnx_dtype, dims))


def _padding_mask(b: GraphBuilder, causal: str, keys: str) -> str:
    """The causal mask and'ed with `attention_mask` over the keys: [batch, 1, seq, keys] bool
    (HF's `_prepare_4d_causal_attention_mask` as a boolean)."""
    s = "/transformer"
    mask = b.input("attention_mask", TensorProto.INT64, ["batch", keys])
    keys = b.op(s, "Cast", b.op(s, "Unsqueeze", mask, b.ints(s, [1, 2])), to=TensorProto.BOOL)
    return b.op(s, "And", causal, keys)


def _block(b: GraphBuilder, cfg: GPT2Config, i: int, x: str, mask: str,
           past: tuple[str, str] | None) -> str:
    s, p = f"/transformer/h.{i}", f"transformer.h.{i}"
    h = layer_norm(b, f"{s}/ln_1", x, f"{p}.ln_1", cfg.hidden, cfg.eps)
    x = b.op(s, "Add", _attention(b, cfg, f"{s}/attn", f"{p}.attn", h, mask, past, i), x)
    h = layer_norm(b, f"{s}/ln_2", x, f"{p}.ln_2", cfg.hidden, cfg.eps)
    return b.op(s, "Add", x, _mlp(b, cfg, f"{s}/mlp", f"{p}.mlp", h))


def _attention(b: GraphBuilder, cfg: GPT2Config, s: str, p: str, x: str, mask: str,
               past: tuple[str, str] | None = None, i: int = 0) -> str:
    hid = cfg.hidden
    qkv = linear(b, f"{s}/c_attn", x, f"{p}.c_attn", hid, 3 * hid, bias=True)
    q, k, v = b.op_n(s, "Split", [qkv, b.ints(s, [hid] * 3)], 3, axis=2)
    q = split_heads(b, s, q, cfg.heads, cfg.head_dim)
    if past is None:
        k_t = split_heads(b, s, k, cfg.heads, cfg.head_dim, perm=(0, 2, 3, 1))
        v = split_heads(b, s, v, cfg.heads, cfg.head_dim)
    else:  # HF's layer_past: torch.cat((past_key, key), dim=-2), returned as present
        k = b.op(s, "Concat", past[0], split_heads(b, s, k, cfg.heads, cfg.head_dim), axis=2,
                 out=f"present.{i}.key")
        v = b.op(s, "Concat", past[1], split_heads(b, s, v, cfg.heads, cfg.head_dim), axis=2,
                 out=f"present.{i}.value")
        k_t = b.op(s, "Transpose", k, perm=(0, 1, 3, 2))
    scores = b.op(s, "MatMul", q, k_t)
    scores = b.op(s, "Div", scores, b.scalar(s, math.sqrt(cfg.head_dim)))
    scores = b.op(s, "Where", mask, scores, b.scalar(s, b.min_value))
    context = merge_heads(b, s, b.op(s, "MatMul", softmax(b, s, scores), v), hid)
    return linear(b, f"{s}/c_proj", context, f"{p}.c_proj", hid, hid, bias=True)


def _mlp(b: GraphBuilder, cfg: GPT2Config, s: str, p: str, x: str) -> str:
    h = linear(b, f"{s}/c_fc", x, f"{p}.c_fc", cfg.hidden, cfg.intermediate, bias=True)
    h = gelu_tanh(b, f"{s}/act", h)
    return linear(b, f"{s}/c_proj", h, f"{p}.c_proj", cfg.intermediate, cfg.hidden, bias=True)


def _lm_head(b: GraphBuilder, cfg: GPT2Config, x: str) -> None:
    if cfg.tie_embeddings:
        head = b.op("/lm_head", "Transpose", "transformer.wte.weight", perm=(1, 0))
    else:
        head = b.weight("lm_head.weight", (cfg.hidden, cfg.vocab))
    b.op("/lm_head", "MatMul", x, head, out="logits")
