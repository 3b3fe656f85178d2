"""Mixture-of-experts decoders (Mixtral, Qwen3-MoE, gpt-oss, Llama 4), shape-only giants.

A LLaMA-style decoder (RMSNorm, rotary GQA attention, SwiGLU) whose MLP is, in MoE layers, a
router and E experts. The experts are emitted in `expert_groups` groups, one scope per group
(`/model/layers.3/mlp/expert_groups.2/...`) with its own weights
(`model.layers.3.mlp.expert_groups.2.gate_proj.weight` [hidden, n x I], experts-major: expert
`first + j` owns columns [j I, (j + 1) I)), so the frontend makes each group its own layer and
the placer its own rectangle. Each group reads the normalized hidden state and the router's
probabilities (dispatch); the groups' outputs are added to the residual stream at the start of
the next layer (combine, `/model/layers.{i+1}/moe_combine`) or before the final norm.

The graph computes every expert weighted by its softmax probability (no TopK: these models are
shape-only, never run); which k experts a token really visits is metadata the compiler prices:
`wafer.moe` (`experts=E,active=k,shared=S,groups=G`). Per-tensor storage widths (gpt-oss's
MXFP4 experts: 4.25 bits per weight) are `wafer.storage_bits` (`REGEX=BITS`, matched against
weight names). Dense layers interleave when `moe_every` > 1 (Llama 4 Maverick: every other).
Simplifications, none of which changes a weight's shape: gpt-oss's attention sinks, sliding
window, biases and clamped SwiGLU, Qwen3's q/k norms and Llama 4's chunked attention are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from ._blocks import causal_additive_mask, linear, position_ids, reshape_tail, seq_len, softmax
from ._graph import GraphBuilder, check_common
from .llama import _attention, _rms_norm, _rotary

EXPERT_WEIGHTS = r"\.expert_groups\.\d+\.(gate|up|down)_proj\.weight$"


@dataclass(frozen=True)
class MoEConfig:
    """Shapes of an MoE decoder; `intermediate` is the dense layers' MLP width."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    active: int
    expert_intermediate: int
    expert_groups: int
    shared: int = 0  # shared experts (always active), each expert_intermediate wide
    intermediate: int = 0  # dense layers' MLP width (moe_every > 1)
    moe_every: int = 1  # layer i is MoE when (i + 1) % moe_every == 0
    expert_storage_bits: float | None = None  # e.g. 4.25 for MXFP4 experts
    max_positions: int = 131072
    rope_theta: float = 1000000.0
    eps: float = 1e-6
    tie_embeddings: bool = False
    dtype: str = "float16"
    opset: int = 17
    shape_only: bool = True
    default_seq: int = 128
    seed: int = 0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_common(self.dtype, self.heads * self.head_dim, self.heads, self.opset)
        if self.kv_heads <= 0 or self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        if not 0 < self.active <= self.experts:
            raise ValueError(f"active {self.active} must be in 1..experts ({self.experts})")
        if self.expert_groups <= 0 or self.experts % self.expert_groups:
            raise ValueError(f"experts {self.experts} is not a multiple of expert_groups "
                             f"{self.expert_groups}")
        if self.moe_every > 1 and self.intermediate <= 0:
            raise ValueError("dense layers interleave (moe_every > 1): set intermediate")

    @property
    def native_ops(self) -> bool:
        return self.opset >= 23

    @property
    def per_group(self) -> int:
        return self.experts // self.expert_groups

    def is_moe(self, i: int) -> bool:
        return (i + 1) % self.moe_every == 0

    def metadata(self) -> dict[str, str]:
        meta = {"wafer.default_dims": f"batch=1,seq={self.default_seq}",
                "wafer.moe": f"experts={self.experts},active={self.active},"
                             f"shared={self.shared},groups={self.expert_groups}"}
        if self.expert_storage_bits is not None:
            meta["wafer.storage_bits"] = f"{EXPERT_WEIGHTS}={self.expert_storage_bits}"
        return meta


def build_moe(cfg: MoEConfig, *, name: str = "moe") -> onnx.ModelProto:
    """input_ids int64 [batch, seq] -> logits [batch, seq, vocab]."""
    b = GraphBuilder(name, dtype=cfg.dtype, opset=cfg.opset, shape_only=cfg.shape_only,
                     seed=cfg.seed, init_std=cfg.init_std)
    ids = b.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    embed = b.weight("model.embed_tokens.weight", (cfg.vocab, cfg.hidden))
    x = b.op("/model/embed_tokens", "Gather", embed, ids)
    seq = seq_len(b, "/model", ids)
    rope = _rotary(b, cfg, position_ids(b, "/model", seq))  # type: ignore[arg-type]
    mask = None if cfg.native_ops else causal_additive_mask(b, "/model", seq)
    pending: list[str] = []
    for i in range(cfg.layers):
        x, pending = _layer(b, cfg, i, x, rope, mask, pending)
    x = _combine(b, "/model/norm/moe_combine", x, pending)
    x = _rms_norm(b, cfg, "/model/norm", x, "model.norm")  # type: ignore[arg-type]
    head = b.weight("lm_head.weight", (cfg.hidden, cfg.vocab))
    b.op("/lm_head", "MatMul", x, head, out="logits")
    b.output("logits", ["batch", "seq", cfg.vocab])
    doc = (f"MoE decoder ({cfg.layers} layers, hidden {cfg.hidden}, {cfg.experts} experts, "
           f"top-{cfg.active}, {cfg.shared} shared)")
    return b.model(doc=f"{doc}, built by wafer.zoo", metadata=cfg.metadata())


def _layer(b: GraphBuilder, cfg: MoEConfig, i: int, x: str, rope: tuple[str, str],
           mask: str | None, pending: list[str]) -> tuple[str, list[str]]:
    """One decoder layer; returns the residual stream and the expert outputs still to add."""
    s, p = f"/model/layers.{i}", f"model.layers.{i}"
    x = _combine(b, f"{s}/moe_combine", x, pending)
    h = _rms_norm(b, cfg, f"{s}/input_layernorm", x, f"{p}.input_layernorm")  # type: ignore[arg-type]
    attn = _attention(b, cfg, f"{s}/self_attn", f"{p}.self_attn", h, rope, mask)  # type: ignore[arg-type]
    x = b.op(s, "Add", x, attn)
    h = _rms_norm(b, cfg, f"{s}/post_attention_layernorm", x,  # type: ignore[arg-type]
                  f"{p}.post_attention_layernorm")
    if not cfg.is_moe(i):
        return b.op(s, "Add", x, _swiglu(b, f"{s}/mlp", f"{p}.mlp", h, cfg.hidden,
                                         cfg.intermediate)), []
    logits = linear(b, f"{s}/mlp/router", h, f"{p}.mlp.router", cfg.hidden, cfg.experts, False)
    probs = softmax(b, f"{s}/mlp/router", logits)  # [batch, seq, experts]
    if cfg.shared:
        shared = _swiglu(b, f"{s}/mlp/shared_expert", f"{p}.mlp.shared_expert", h, cfg.hidden,
                         cfg.shared * cfg.expert_intermediate)
        x = b.op(s, "Add", x, shared)
    return x, [_group(b, cfg, i, g, h, probs) for g in range(cfg.expert_groups)]


def _combine(b: GraphBuilder, scope: str, x: str, outputs: list[str]) -> str:
    for y in outputs:
        x = b.op(scope, "Add", x, y)
    return x


def _swiglu(b: GraphBuilder, s: str, p: str, x: str, hid: int, inter: int) -> str:
    """down_proj(silu(gate_proj(x)) * up_proj(x))."""
    gate = linear(b, f"{s}/gate_proj", x, f"{p}.gate_proj", hid, inter, bias=False)
    gate = b.op(f"{s}/act_fn", "Mul", gate, b.op(f"{s}/act_fn", "Sigmoid", gate))
    up = linear(b, f"{s}/up_proj", x, f"{p}.up_proj", hid, inter, bias=False)
    return linear(b, f"{s}/down_proj", b.op(s, "Mul", gate, up), f"{p}.down_proj", inter, hid,
                  bias=False)


def _group(b: GraphBuilder, cfg: MoEConfig, i: int, g: int, h: str, probs: str) -> str:
    """Experts [g n, (g + 1) n) of layer i, each weighted by its router probability."""
    s, p = f"/model/layers.{i}/mlp/expert_groups.{g}", f"model.layers.{i}.mlp.expert_groups.{g}"
    n, inter = cfg.per_group, cfg.expert_intermediate
    gate = linear(b, f"{s}/gate_proj", h, f"{p}.gate_proj", cfg.hidden, n * inter, bias=False)
    gate = b.op(f"{s}/act_fn", "Mul", gate, b.op(f"{s}/act_fn", "Sigmoid", gate))
    up = linear(b, f"{s}/up_proj", h, f"{p}.up_proj", cfg.hidden, n * inter, bias=False)
    weight = b.op(s, "Slice", probs, b.ints(s, [g * n]), b.ints(s, [(g + 1) * n]),
                  b.ints(s, [2]))  # (B, T, n)
    # each expert's probability repeated over its I columns, (B, T, n, 1) -> (B, T, n, I)
    # -> (B, T, n I), so the activations keep their n I split (a (B, T, n, I) view of them
    # would split only the n experts over a mesh axis, holding all I on every core)
    weight = b.op(s, "Expand", b.op(s, "Unsqueeze", weight, b.ints(s, [3])),
                  b.ints(s, [1, 1, 1, inter]))
    act = b.op(s, "Mul", b.op(s, "Mul", gate, up), reshape_tail(b, s, weight, [n * inter]))
    return linear(b, f"{s}/down_proj", act, f"{p}.down_proj", n * inter, cfg.hidden, bias=False)
