"""The built-in model zoo (`compiler.zoo`): transformer models built directly as ONNX.

No torch and no downloads: each model is generated from a config dataclass by a builder that
emits the graph HF's TorchScript export would (node names such as
`/model/layers.0/self_attn/q_proj/MatMul`, HF initializer names, `batch`/`seq` dynamic dims).
Small models carry seeded random weights and run in onnxruntime; the big ones are shape-only,
their weights EXTERNAL-data references to a file that does not exist, so the proto stays small.

    >>> from compiler import zoo
    >>> model = zoo.build("gpt2-tiny")   # onnx.ModelProto, byte-identical on every build

Every model records `wafer.zoo_name` and `wafer.default_dims` (e.g. `batch=1,seq=128`) in its
metadata_props.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import onnx

from .bert import BertConfig, build_bert
from .gpt2 import GPT2Config, build_gpt2
from .llama import LlamaConfig, build_llama
from .moe import MoEConfig, build_moe

__all__ = [
    "ZOO", "BertConfig", "GPT2Config", "LlamaConfig", "MoEConfig", "ZooEntry", "build",
    "build_bert", "build_gpt2", "build_llama", "build_moe", "names",
]

Family = Literal["gpt2", "llama", "bert", "moe"]
Config = GPT2Config | LlamaConfig | BertConfig | MoEConfig


@dataclass(frozen=True)
class ZooEntry:
    """One named zoo model: its family, a one-line description and the config it builds from."""

    name: str
    family: Family
    description: str
    shape_only: bool
    config: Config


_BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "gpt2": build_gpt2, "llama": build_llama, "bert": build_bert, "moe": build_moe,
}
# Tiny models use weights ~N(0, 0.2) rather than HF's 0.02, so attention is peaked and the
# nonlinearities are exercised: numeric checks against them are meaningful.
_TINY = {"vocab": 256, "hidden": 64, "layers": 2, "heads": 4, "default_seq": 16, "init_std": 0.2}
_LLAMA_TINY = LlamaConfig(**_TINY, kv_heads=2, intermediate=128, max_positions=128,
                          rope_theta=10000.0)
_LLAMA3 = {"vocab": 128256, "dtype": "float16", "shape_only": True, "tie_embeddings": False,
           "kv_heads": 8}


def _entry(name: str, family: Family, description: str, config: Config) -> ZooEntry:
    return ZooEntry(name, family, description, config.shape_only, config)


_ENTRIES = (
    _entry("gpt2-tiny", "gpt2", "GPT-2 toy: 2 layers, hidden 64, 4 heads, vocab 256, fp32",
           GPT2Config(**_TINY, intermediate=256, max_positions=128)),
    _entry("gpt2-tiny-mask", "gpt2",
           "gpt2-tiny with an attention_mask input [batch, seq] (padding), as HF exports have",
           GPT2Config(**_TINY, intermediate=256, max_positions=128, attention_mask=True)),
    _entry("gpt2-tiny-past", "gpt2",
           "gpt2-tiny exported with past (use_cache): past_key_values.N.key|value in, "
           "present.N.key|value out", GPT2Config(**_TINY, intermediate=256, max_positions=128,
                                                 past=True)),
    _entry("llama-tiny", "llama",
           "LLaMA toy: 2 layers, hidden 64, 4 heads / 2 kv heads (GQA), vocab 256, fp32",
           _LLAMA_TINY),
    _entry("llama-tiny-past", "llama",
           "llama-tiny exported with past (use_cache): GQA caches at 2 kv heads, rotary and "
           "mask from the past length", replace(_LLAMA_TINY, past=True)),
    _entry("llama-tiny-opset23", "llama",
           "llama-tiny at opset 23, with the RMSNormalization and Attention ops",
           replace(_LLAMA_TINY, opset=23)),
    _entry("bert-tiny", "bert", "BERT toy: 2 layers, hidden 64, 4 heads, vocab 256, with pooler",
           BertConfig(**_TINY, intermediate=128, max_positions=64)),
    _entry("gpt2-small", "gpt2", "GPT-2 small (124M), tied lm_head, random N(0, 0.02) weights",
           GPT2Config()),
    _entry("gpt2-small-past", "gpt2", "gpt2-small exported with past (use_cache)",
           GPT2Config(past=True)),
    _entry("llama3-8b", "llama", "Llama 3 8B shapes, fp16, shape-only (external weights)",
           LlamaConfig(**_LLAMA3, hidden=4096, layers=32, heads=32, intermediate=14336)),
    # Llama 3.2 1B (HF config: tied embeddings, head_dim 64): the speculative draft of the
    # calibration's Llama 3.1 70B row (`--speculative draft=llama3.2-1b,...`)
    _entry("llama3.2-1b", "llama", "Llama 3.2 1B shapes, fp16, shape-only (external weights)",
           LlamaConfig(**{**_LLAMA3, "tie_embeddings": True}, hidden=2048, layers=16, heads=32,
                       intermediate=8192, max_positions=131072)),
    _entry("llama3-70b", "llama", "Llama 3 70B shapes, fp16, shape-only (external weights)",
           LlamaConfig(**_LLAMA3, hidden=8192, layers=80, heads=64, intermediate=28672)),
    _entry("llama3.1-405b", "llama",
           "Llama 3.1 405B shapes, fp16, shape-only (external weights)",
           LlamaConfig(**_LLAMA3, hidden=16384, layers=126, heads=128, intermediate=53248,
                       max_positions=131072)),
    # Mixture-of-experts giants, shape-only, at their published (HF config) shapes; experts in
    # groups of 16 (Mixtral: one expert per group), each group its own rectangle.
    _entry("mixtral-8x7b", "moe",
           "Mixtral 8x7B shapes (46.7B, 8 experts, top-2), fp16, shape-only",
           MoEConfig(vocab=32000, hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
                     experts=8, active=2, expert_intermediate=14336, expert_groups=8,
                     max_positions=32768, eps=1e-5)),
    _entry("qwen3-30b-a3b", "moe",
           "Qwen3-30B-A3B shapes (128 experts, top-8), fp16, shape-only",
           MoEConfig(vocab=151936, hidden=2048, layers=48, heads=32, kv_heads=4, head_dim=128,
                     experts=128, active=8, expert_intermediate=768, expert_groups=8,
                     max_positions=40960)),
    _entry("qwen3-235b-a22b", "moe",
           "Qwen3-235B-A22B shapes (128 experts, top-8), fp16, shape-only",
           MoEConfig(vocab=151936, hidden=4096, layers=94, heads=64, kv_heads=4, head_dim=128,
                     experts=128, active=8, expert_intermediate=1536, expert_groups=8,
                     max_positions=40960)),
    _entry("gpt-oss-120b", "moe",
           "gpt-oss-120B shapes (128 experts, top-4), MXFP4 experts (4.25 bits), shape-only",
           MoEConfig(vocab=201088, hidden=2880, layers=36, heads=64, kv_heads=8, head_dim=64,
                     experts=128, active=4, expert_intermediate=2880, expert_groups=8,
                     expert_storage_bits=4.25, rope_theta=150000.0, eps=1e-5)),
    _entry("llama4-maverick", "moe",
           "Llama 4 Maverick shapes (400B, 128 experts, top-1, 1 shared, MoE every other "
           "layer), fp16, shape-only",
           MoEConfig(vocab=202048, hidden=5120, layers=48, heads=40, kv_heads=8, head_dim=128,
                     experts=128, active=1, shared=1, expert_intermediate=8192,
                     expert_groups=8, intermediate=16384, moe_every=2, rope_theta=500000.0,
                     eps=1e-5)),
)
ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def names() -> list[str]:
    """The zoo's model names, in catalogue order."""
    return list(ZOO)


def build(name: str, shape_only: bool = False, layers: int | None = None) -> onnx.ModelProto:
    """Build the named zoo model; the same name always gives a byte-identical proto.
    `shape_only`: the same graph with its weights as references to an absent file (no random
    weights drawn: what a shape-only load needs). `layers`: the same model with that many
    layers (the frontend's template of a shape-only giant, compiler/frontend/template.py).
    Raises KeyError, listing the valid names, for an unknown one."""
    entry = ZOO.get(name)
    if entry is None:
        raise KeyError(f"unknown zoo model {name!r}; valid names: {', '.join(names())}")
    config = replace(entry.config, shape_only=True) if shape_only else entry.config
    if layers is not None:
        config = replace(config, layers=layers)
    model = _BUILDERS[entry.family](config, name=name)
    model.metadata_props.add(key="wafer.zoo_name", value=name)
    return model
