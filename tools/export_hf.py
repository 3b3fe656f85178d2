"""Offline exporter of tiny, real Hugging Face transformers models to ONNX.

Builds GPT-2, Llama and BERT from config objects with seeded random weights (no model hub, no
downloads), exports them with ``torch.onnx.export`` through both the dynamo exporter
(``dynamo=True``) and the legacy TorchScript exporter (``dynamo=False``) at several opsets, with a
static sequence length or with dynamic ``batch``/``seq`` dims, and checks every export: the opset
actually written, ``onnx.checker`` (full check), and onnxruntime against the torch outputs (also
at a second shape for dynamic exports).  Each export is one self-contained ``.onnx`` file.

Run as a script::

    python tools/export_hf.py --out DIR [--models gpt2,llama,bert]
        [--exporters dynamo,torchscript] [--opsets 17,18,20,23] [--seq static,dynamic]
        [--no-optimize] [--fixtures]

``--fixtures`` tries the whole selected matrix, keeps a curated subset (see ``FIXTURE_PICKS``)
and saves torch reference outputs next to it; this is how ``tests/fixtures/`` is made.  Every run
writes ``DIR/MANIFEST.json`` (the kept files, and every tried combination with its one-line
failure reason).  torch, transformers, onnx and onnxruntime are imported inside functions, so
importing this module needs none of them.  A developer tool: it sits in tools/, outside the
installed ``compiler`` package, and needs the ``[hf]`` extra only to export.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import platform
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx
    import torch

HF_EXTRA_ERROR = "error: the exporter needs the hf extra: pip install 'wafer-compiler[hf]'"

LEGACY_FAMILIES = ("gpt2", "llama", "bert")  # tests/fixtures/ (the default --models)
CAUSAL_FAMILIES = (  # tests/fixtures/hf/ (--models causal), each in both forms
    "mistral", "qwen2", "phi", "gpt_neox", "falcon", "gptj", "bloom", "gemma2", "stablelm", "opt",
)
# encoders beyond BERT (--models encoders; benchmarks/coverage.py exports them, no fixtures)
ENCODER_FAMILIES = ("roberta", "distilbert", "albert", "electra", "t5")
FAMILIES = LEGACY_FAMILIES + CAUSAL_FAMILIES + ENCODER_FAMILIES
FORMS = ("nocache", "withpast")  # use_cache=False; use_cache=True with past_key_values/present
EXPORTERS = ("dynamo", "torchscript")
OPSETS = (17, 18, 20, 23)
SEQ_MODES = ("static", "dynamic")
DIM_NAMES = ("batch", "seq")
PAST_DIM, TOTAL_DIM = "past_seq", "past_seq + seq"  # with-past: cached and attended lengths
SEED = 0
STATIC_SHAPE = (2, 16)  # (batch, seq) every export is traced and checked at
CHECK_SHAPE = (3, 9)  # a second (batch, seq) dynamic exports are checked at
PAST_TRACE = (2, 5, 3)  # with-past exports are traced at (batch, past_seq, seq)
# with-past exports are checked step by step against torch's full-sequence logits: (batch, the
# token counts fed per step, the first one with an empty past); the first is the saved reference
DECODE_CHECKS = ((2, (6, 1, 1, 1, 1)), (3, (2, 3, 1)))
ATOL = 1e-4
REFERENCE_LIMIT = 100_000  # bytes: larger torch references are not saved
RANDOM_WEIGHTS = "random, seeded: norm scales 1+0.1*N(0,1), all other parameters 0.1*N(0,1)"
SIGNIFICANT_NOTES = ("log ", "OnnxExporterWarning")  # notes MANIFEST's combinations keep
# node metadata dropped: absolute paths of the exporting machine; and (to keep fixtures small)
# the fx node and class hierarchy (the frontend reads name_scopes and namespace, which stay)
STRIPPED_METADATA = (
    "pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy",
)

# Tiny configs.  Within a family the dims are pairwise distinct (e.g. gpt2: hidden 32, fused qkv
# 96, ffn 128, vocab 160, positions 48) so a frontend test can tell them apart.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 128, "vocab_size": 160,
        "n_positions": 48, "bos_token_id": 0, "eos_token_id": 0,
    },
    "llama": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
        "max_position_embeddings": 96,
    },
    "bert": {
        "hidden_size": 32, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 144, "max_position_embeddings": 40,
    },
    # sliding window 8 < the traced 16 tokens, so the window shows in the masks
    "mistral": {
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
        "max_position_embeddings": 64, "sliding_window": 8,
    },
    "qwen2": {  # GQA 4:1, q/k/v biases
        "hidden_size": 32, "intermediate_size": 56, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 104,
        "max_position_embeddings": 64,
    },
    "phi": {  # partial rotary (half of each head), parallel attention + MLP, dense bias
        "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 108, "max_position_embeddings": 64,
        "partial_rotary_factor": 0.5,
    },
    "gpt_neox": {  # fused qkv, rotary on a quarter of each head, parallel residual
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 116, "max_position_embeddings": 64,
        "rotary_pct": 0.25, "use_parallel_residual": True,
    },
    "falcon": {  # multi-query attention (one kv head), parallel attention, no biases
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "ffn_hidden_size": 56, "vocab_size": 124, "max_position_embeddings": 64,
        "multi_query": True,
        "parallel_attn": True, "new_decoder_architecture": False, "alibi": False,
        "bias": False,
    },
    "gptj": {  # interleaved rotary on 4 of 8 head dims, parallel attention + MLP
        "n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4, "vocab_size": 132,
        "n_positions": 64, "n_inner": 40, "bos_token_id": 0, "eos_token_id": 0,
    },
    "bloom": {  # ALiBi positions, embedding LayerNorm, fused qkv
        "hidden_size": 32, "n_layer": 2, "n_head": 4, "vocab_size": 140,
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
    },
    "gemma2": {  # attention and final logit soft-capping, alternating sliding window 8
        "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "vocab_size": 148, "max_position_embeddings": 64, "sliding_window": 8,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "query_pre_attn_scalar": 8,
    },
    "stablelm": {  # partial rotary (a quarter), LayerNorm
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 156,
        "max_position_embeddings": 64, "partial_rotary_factor": 0.25,
    },
    "opt": {  # learned positions offset by 2, computed from the mask with CumSum
        "hidden_size": 32, "ffn_dim": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 164, "max_position_embeddings": 64, "word_embed_proj_dim": 32,
        "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2,
    },
    "roberta": {  # positions from the ids through CumSum, offset by the pad id (1) + 1
        "hidden_size": 32, "intermediate_size": 72, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 112, "max_position_embeddings": 50,
        "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    },
    "distilbert": {  # no token types, no pooler, LayerNorm'd learned positions
        "dim": 32, "hidden_dim": 88, "n_layers": 2, "n_heads": 4, "vocab_size": 120,
        "max_position_embeddings": 44,
    },
    "albert": {  # factorized embedding (16 -> 32), one layer's weights shared by both layers
        "embedding_size": 16, "hidden_size": 32, "intermediate_size": 76,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_hidden_groups": 1,
        "vocab_size": 132, "max_position_embeddings": 52,
    },
    "electra": {  # embedding 24 projected to hidden 32, no pooler
        "embedding_size": 24, "hidden_size": 32, "intermediate_size": 84,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 136,
        "max_position_embeddings": 56,
    },
    # encoder only: relative position bias (bucketed), RMS norm, no biases; eager attention
    # (transformers' sdpa path for T5 fails torch.export: a view of a transposed tensor)
    "t5": {
        "d_model": 32, "d_kv": 8, "d_ff": 92, "num_layers": 2, "num_heads": 4,
        "vocab_size": 152, "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 20, "attn_implementation": "eager",
    },
}
HF_CLASSES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "bert": ("BertConfig", "BertModel"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "phi": ("PhiConfig", "PhiForCausalLM"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "falcon": ("FalconConfig", "FalconForCausalLM"),
    "gptj": ("GPTJConfig", "GPTJForCausalLM"),
    "bloom": ("BloomConfig", "BloomForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM"),
    "opt": ("OPTConfig", "OPTForCausalLM"),
    "roberta": ("RobertaConfig", "RobertaModel"),
    "distilbert": ("DistilBertConfig", "DistilBertModel"),
    "albert": ("AlbertConfig", "AlbertModel"),
    "electra": ("ElectraConfig", "ElectraModel"),
    "t5": ("T5Config", "T5EncoderModel"),
}
ENCODER_OUTPUTS = ("last_hidden_state", "pooler_output")
# encoders whose config transformers also maps to a causal-LM class (e.g. BertLMHeadModel): a
# --config without `architectures` of these types is exported as its base model
ENCODER_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "electra", "ernie",
    "roformer", "megatron-bert", "data2vec-text", "xmod", "bert-generation", "rembert",
})


@dataclasses.dataclass(frozen=True)
class Spec:
    """One export combination."""

    family: str
    exporter: str
    opset: int
    seq: str
    optimize: bool = True  # the dynamo exporter's onnxscript optimizer (its default)
    form: str = "nocache"  # or "withpast": past_key_values.* inputs, present.* outputs

    @property
    def name(self) -> str:
        suffix = "" if self.optimize or self.exporter != "dynamo" else "_noopt"
        suffix += "_withpast" if self.form == "withpast" else ""
        return f"{self.family}_{self.exporter}_op{self.opset}_{self.seq}{suffix}"


@dataclasses.dataclass
class Result:
    """The outcome of one export: ok with its checks, or the one-line reason it failed."""

    spec: Spec
    path: Path | None = None
    reason: str | None = None
    max_abs_err: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None


# (family, exporter, opsets in order of preference, seq, optimize): the first opset that worked.
FIXTURE_PICKS: tuple[tuple[str, str, tuple[int, ...], str, bool], ...] = tuple(
    pick
    for family in LEGACY_FAMILIES
    for pick in (
        (family, "dynamo", (18,), "static", True),
        (family, "dynamo", (18,), "dynamic", True),
        (family, "dynamo", (23, 20), "static", True),
        (family, "dynamo", (23, 20), "dynamic", True),
        (family, "torchscript", (17,), "static", True),
        (family, "torchscript", (20,), "dynamic", True),
    )
) + (
    ("bert", "dynamo", (17,), "static", True),  # the one dynamo down-conversion to 17 that works
    ("llama", "dynamo", (23,), "dynamic", False),  # unoptimized: raw dynamo output
)
# The other causal families keep one file per form: dynamic batch/seq (and past_seq), the first
# (exporter, opset) of this list that worked.
CAUSAL_PICKS: tuple[tuple[str, int], ...] = (("dynamo", 18), ("torchscript", 18))


# --------------------------------------------------------------------------- models and inputs


def load_hf() -> tuple[Any, Any]:
    """Import torch and transformers, or exit with the one-line hint to install the hf extra."""
    try:
        import torch
        import transformers
    except ImportError:
        raise SystemExit(HF_EXTRA_ERROR) from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # from_pretrained's "Loading weights" bar
    return torch, transformers


def build_model(family: str, form: str = "nocache") -> torch.nn.Module:
    """A tiny seeded random-weight model of `family`, eval mode, export-ready in `form`."""
    _, transformers = load_hf()
    config_name, _ = HF_CLASSES[family]
    config = getattr(transformers, config_name)(**TINY_CONFIGS[family])
    return model_from_config(config, form, HF_CLASSES[family][1])


def model_from_config(config: Any, form: str, class_name: str | None = None) -> torch.nn.Module:
    """A seeded random-weight model for a transformers `config` (causal LM when it has one)."""
    torch, transformers = load_hf()
    config.use_cache = form == "withpast"
    torch.manual_seed(SEED)
    model = _model_class(config, class_name)(config)
    _randomize(model)
    return prepare(model, form)


def _model_class(config: Any, class_name: str | None) -> Any:
    """The named class; else the checkpoint's own (config.architectures[0]); else the causal-LM
    class for the config (not for ENCODER_TYPES, whose causal class is a side use); else its
    base model."""
    _, transformers = load_hf()
    architectures = getattr(config, "architectures", None) or []
    name = class_name or next((a for a in architectures[:1] if hasattr(transformers, a)), None)
    if name:
        return getattr(transformers, name)
    autos = (transformers.AutoModelForCausalLM, transformers.AutoModel)
    for auto in autos[1:] if config.model_type in ENCODER_TYPES else autos:
        with contextlib.suppress(ValueError, KeyError):
            return auto._model_mapping[type(config)]
    raise SystemExit(f"error: transformers has no model class for {type(config).__name__}")


def prepare(model: torch.nn.Module, form: str) -> torch.nn.Module:
    """`model` in eval mode with the positional forward of `form` (see _make_exportable)."""
    causal = hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None
    if form == "withpast" and not causal:
        raise ValueError(f"{type(model).__name__} has no language-model head: no with-past form")
    model.config.use_cache = form == "withpast"
    outputs = ("logits",) if causal else ENCODER_OUTPUTS
    if not causal and getattr(model, "pooler", None) is None:  # none, or no such module
        outputs = outputs[:1]
    _make_exportable(model, outputs, form)
    return model.eval()
def _randomize(model: torch.nn.Module) -> None:
    """Seeded non-trivial weights: HF init leaves zero biases and unit norms, which the dynamo
    optimizer folds away (e.g. RemoveOptionalBiasFromGemm), unlike a real checkpoint."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_scale = param.ndim == 1 and name.endswith("weight")
            param.copy_(1.0 + 0.1 * noise if is_scale else 0.1 * noise)


def _make_exportable(model: torch.nn.Module, outputs: Sequence[str], form: str) -> None:
    """Give `model` a positional tensor-only forward returning a tuple, in place.

    A subclass with the same name and module keeps the HF parameter names and makes the export
    metadata read as a plain export of the HF class (a wrapper module would prefix every name).
    The with-past forward takes the cache as flat (key, value) tensors per layer, [batch,
    kv_heads, past_seq, head_dim], and returns the logits and the grown cache the same way.
    """
    base = type(model)

    def forward(self: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = base.forward(self, input_ids=input_ids, attention_mask=attention_mask, **extra)
        return tuple(getattr(out, key) for key in outputs)

    def forward_with_past(self: Any, input_ids: Any, attention_mask: Any, *past: Any) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache(list(zip(past[::2], past[1::2], strict=True)))
        out = base.forward(
            self, input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
            use_cache=True,
        )
        return (out.logits, *_flat_cache(out.past_key_values))

    names = {"__module__": base.__module__, "__qualname__": base.__qualname__}
    methods = {"forward": forward_with_past if form == "withpast" else forward}
    attrs = {"export_outputs": tuple(outputs), "export_form": form, "hf_base": base}
    model.__class__ = type(base.__name__, (base,), {**methods, **attrs, **names})


def _flat_cache(cache: Any) -> list[Any]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def output_names(model: Any) -> list[str]:
    """logits (or the encoder outputs), then with-past's present.{layer}.{key,value}."""
    names = list(model.export_outputs)
    if model.export_form == "withpast":
        layers = model.config.num_hidden_layers
        names += [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return names


def past_names(model: Any) -> list[str]:
    """with-past's cache inputs, past_key_values.{layer}.{key,value}."""
    layers = model.config.num_hidden_layers
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def token_ids(model: Any, batch: int, seq: int) -> torch.Tensor:
    """Seeded token ids below the model's vocabulary size."""
    import torch

    generator = torch.Generator().manual_seed(SEED + 1)
    return torch.randint(0, model.config.vocab_size, (batch, seq), generator=generator)


def make_inputs(model: Any, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """Seeded token ids, and a mask whose last row is right-padded by 3 tokens (no-cache form);
    with-past: `seq` new tokens after a cache of PAST_TRACE's past_seq from torch's prefill."""
    import torch

    if model.export_form == "withpast":
        past = PAST_TRACE[1]
        return past_inputs(model, token_ids(model, batch, past + seq), past)
    ids = token_ids(model, batch, seq)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[-1, seq - 3 :] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if getattr(model.config, "type_vocab_size", 0) > 1:
        types = torch.zeros(batch, seq, dtype=torch.int64)
        types[:, seq // 2 :] = 1
        inputs["token_type_ids"] = types
    return inputs


def past_inputs(model: Any, ids: torch.Tensor, past: int) -> dict[str, torch.Tensor]:
    """The with-past inputs for ids[:, past:] after torch's cache of ids[:, :past]."""
    import torch

    with torch.no_grad():
        out = model.hf_base.forward(model, input_ids=ids[:, :past], use_cache=True)
    inputs = {"input_ids": ids[:, past:], "attention_mask": torch.ones_like(ids)}
    return inputs | dict(zip(past_names(model), _flat_cache(out.past_key_values), strict=True))


def full_logits(model: Any, ids: torch.Tensor) -> Any:
    """torch's logits for the whole sequence in one no-cache pass (what decode must match)."""
    import torch

    with torch.no_grad():
        return model.hf_base.forward(model, input_ids=ids, use_cache=False).logits.numpy()


def torch_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[Any]:
    """The model's outputs as numpy arrays."""
    import torch

    with torch.no_grad():
        return [out.numpy() for out in model(*inputs.values())]


# --------------------------------------------------------------------------- your own model


def _fail(message: str) -> SystemExit:
    """Print the one-line error and return the exit (code 3, invalid input) to raise."""
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(3)


def read_config(args: argparse.Namespace) -> Any:
    """The transformers config of --checkpoint DIR or --config FILE (local files only)."""
    _, transformers = load_hf()
    if args.checkpoint:
        if not (args.checkpoint / "config.json").is_file():
            raise _fail(
                f"--checkpoint {args.checkpoint}: no config.json there; give a Hugging Face "
                "checkpoint directory (config.json and *.safetensors, as save_pretrained writes)"
            )
        return transformers.AutoConfig.from_pretrained(args.checkpoint, local_files_only=True)
    try:
        data = json.loads(args.config.read_text())
    except (OSError, ValueError) as error:
        raise _fail(f"--config {args.config}: {_first_line(str(error))}") from None
    model_type = data.pop("model_type", None) if isinstance(data, dict) else None
    if model_type not in transformers.CONFIG_MAPPING:
        raise _fail(
            f"--config {args.config}: model_type {model_type!r} is not a transformers model "
            "type; give a config.json with a known model_type (e.g. llama, mistral, gpt2)"
        )
    return transformers.AutoConfig.for_model(model_type, **data)


def resolve_source(args: argparse.Namespace) -> None:
    """Set args.models (one label: the config's model_type) and args.causal (the families that
    get a with-past form) for --checkpoint/--config; the built-in families otherwise."""
    args.causal = set(FAMILIES) - {"bert", *ENCODER_FAMILIES}
    if not (args.checkpoint or args.config):
        return
    config = read_config(args)
    args.source_config = config
    args.models = [config.model_type]
    _, transformers = load_hf()
    mapping = transformers.AutoModelForCausalLM._model_mapping
    causal = type(config) in mapping and mapping[type(config)] is _model_class(config, None)
    args.causal = {config.model_type} if causal else set()


def _builder(args: argparse.Namespace) -> Any:
    """(family, form) -> export-ready model: the tiny families, or --checkpoint/--config's."""
    if args.checkpoint:
        return lambda _family, form: load_checkpoint(args.checkpoint, args.source_config, form)
    if args.config:
        return lambda _family, form: model_from_config(copy.deepcopy(args.source_config), form)
    return build_model


def load_checkpoint(directory: Path, config: Any, form: str) -> torch.nn.Module:
    """The checkpoint's weights (safetensors or torch files, read locally) as float32."""
    torch, _ = load_hf()
    config = copy.deepcopy(config)
    config.use_cache = form == "withpast"
    try:
        model = _model_class(config, None).from_pretrained(
            directory, config=config, local_files_only=True, dtype=torch.float32
        )
    except OSError as error:
        raise _fail(f"--checkpoint {directory}: {_first_line(str(error))}") from None
    return prepare(model, form)


# --------------------------------------------------------------------------- exporting


@contextlib.contextmanager
def _diagnostics(notes: list[str]) -> Iterator[None]:
    """Collect into `notes` (and keep off the console) the exporters' warnings and log records."""

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if record.levelno < logging.WARNING or "torchvision" in message:
                return
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                message += f" [{type(error).__name__}: {_first_line(str(error))}]"
            notes.append(f"log {record.name}: {_first_line(message, 480)}")

    handler = _Collect()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    saved = [(lg.handlers, lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
        lg.setLevel(logging.WARNING)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate, lg.level = handlers, propagate, level
        notes.extend(
            f"{w.category.__name__} ({Path(w.filename).name}:{w.lineno}): "
            f"{_first_line(str(w.message))}"
            for w in caught
        )
        notes[:] = list(dict.fromkeys(notes))


def _first_line(text: str, limit: int = 320) -> str:
    line = next((s.strip() for s in text.strip().splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def export(model: torch.nn.Module, spec: Spec, inputs: dict, path: Path) -> None:
    """Export `model` per `spec`, traced at `inputs`, to the single self-contained file `path`."""
    outputs = output_names(model)
    if spec.exporter == "dynamo":
        _export_dynamo(model, spec, inputs, outputs, path)
    else:
        _export_torchscript(model, spec, inputs, outputs, path)


def _export_dynamo(
    model: Any, spec: Spec, inputs: dict, outputs: Sequence[str], path: Path
) -> None:
    import torch

    dynamic_shapes: dict[str, Any] | None = None
    if spec.seq == "dynamic":
        batch, seq, past = (torch.export.Dim(n) for n in (*DIM_NAMES, PAST_DIM))
        dynamic_shapes = {name: {0: batch, 1: seq} for name in inputs}
        if spec.form == "withpast":  # the mask spans past_seq + seq: left for export to relate
            dynamic_shapes = {"input_ids": {0: batch, 1: seq}}
            dynamic_shapes["attention_mask"] = {0: batch, 1: torch.export.Dim.DYNAMIC}
            dynamic_shapes["past"] = tuple({0: batch, 2: past} for _ in past_names(model))
    program = torch.onnx.export(
        model, tuple(inputs.values()), dynamo=True, opset_version=spec.opset,
        input_names=list(inputs), output_names=list(outputs), dynamic_shapes=dynamic_shapes,
        optimize=spec.optimize, verbose=False,
    )
    program.save(path, external_data=False)
    _strip_metadata(path)
    if spec.form == "withpast" and spec.seq == "dynamic":
        _name_mask_length(path)


def _export_torchscript(
    model: Any, spec: Spec, inputs: dict, outputs: Sequence[str], path: Path
) -> None:
    import torch

    dynamic_axes = None
    if spec.seq == "dynamic":
        ranks = [out.ndim for out in torch_outputs(model, inputs)]
        dynamic_axes = {name: dict(enumerate(DIM_NAMES)) for name in inputs}
        for name, rank in zip(outputs, ranks, strict=True):
            dynamic_axes[name] = dict(enumerate(DIM_NAMES[: rank - 1]))
        if spec.form == "withpast":
            dynamic_axes["attention_mask"] = {0: DIM_NAMES[0], 1: TOTAL_DIM}
            dynamic_axes |= {name: {0: DIM_NAMES[0], 2: PAST_DIM} for name in past_names(model)}
            dynamic_axes |= {name: {0: DIM_NAMES[0], 2: TOTAL_DIM} for name in outputs[1:]}
    torch.onnx.export(
        model, tuple(inputs.values()), str(path), dynamo=False, opset_version=spec.opset,
        input_names=list(inputs), output_names=list(outputs), dynamic_axes=dynamic_axes,
    )


def _name_mask_length(path: Path) -> None:
    """Rename the with-past mask's length symbol (torch.export's sNN) to TOTAL_DIM everywhere."""
    import onnx

    model = onnx.load(str(path))
    mask = next(v for v in model.graph.input if v.name == "attention_mask")
    symbol = mask.type.tensor_type.shape.dim[1].dim_param
    if not symbol or symbol == TOTAL_DIM:
        return
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = TOTAL_DIM
    onnx.save(model, str(path))


def _strip_metadata(path: Path) -> None:
    """Drop STRIPPED_METADATA keys from every node and re-save as one self-contained file."""
    import onnx

    model = onnx.load(str(path))
    for node in _all_nodes(model):
        kept = [p for p in node.metadata_props if p.key not in STRIPPED_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


# --------------------------------------------------------------------------- checking


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: the main graph, its subgraphs (If/Loop/Scan bodies) and local functions."""
    graphs = [model.graph]
    for function in model.functions:
        yield from function.node
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            yield node
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else attr.graphs)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """op_type -> count over all nodes; ops outside the default domain are `domain::op_type`."""
    counts = Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        for n in _all_nodes(model)
    )
    return dict(sorted(counts.items()))


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def run_onnxruntime(path: Path, inputs: dict[str, Any]) -> list[Any]:
    """Run the file on CPU with graph optimizations disabled (inputs: torch or numpy)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in inputs.items()}
    return session.run(None, feeds)


def decode_onnxruntime(path: Path, ids: Any, chunks: Sequence[int]) -> Any:
    """Feed numpy `ids` [batch, total] to a with-past file chunk by chunk, each step's present.*
    the next step's past (the first step's past empty); return the logits of every position."""
    import numpy as np
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    past = {
        v.name: np.zeros(
            [ids.shape[0], *[d.dim_value for d in v.type.tensor_type.shape.dim[1:]]], np.float32
        )
        for v in proto.graph.input if v.name.startswith("past_key_values.")
    }
    logits, start = [], 0
    for size in chunks:
        feeds = {"input_ids": ids[:, start : start + size]}
        feeds["attention_mask"] = np.ones((ids.shape[0], start + size), np.int64)
        out = run_onnxruntime(path, feeds | past)
        logits.append(out[0])
        past = dict(zip(past, out[1:], strict=True))
        start += size
    return np.concatenate(logits, axis=1)


class OpsetMismatch(RuntimeError):
    """The exporter wrote another opset than the one asked for (a failed down-conversion)."""


def trace_inputs(model: Any, spec: Spec) -> dict[str, Any]:
    """The inputs `spec` is exported at: STATIC_SHAPE, or PAST_TRACE with past."""
    if spec.form == "withpast":
        return make_inputs(model, PAST_TRACE[0], PAST_TRACE[2])
    return make_inputs(model, *STATIC_SHAPE)


def check_export(model: torch.nn.Module, spec: Spec, path: Path) -> float:
    """Raise on a wrong opset, a checker error or an onnxruntime mismatch; return the max error."""
    import onnx

    proto = onnx.load(str(path))
    if _default_opset(proto) != spec.opset:
        raise OpsetMismatch(f"exporter wrote opset {_default_opset(proto)}, not {spec.opset}")
    onnx.checker.check_model(proto, full_check=True)
    decode = spec.form == "withpast"
    worst = _check_decode(model, path) if decode else _check_once(model, spec, path)
    if worst > ATOL:
        raise RuntimeError(f"max abs error {worst:.3g} vs torch exceeds {ATOL}")
    return worst


def _check_once(model: Any, spec: Spec, path: Path) -> float:
    import numpy as np

    shapes = [STATIC_SHAPE, CHECK_SHAPE] if spec.seq == "dynamic" else [STATIC_SHAPE]
    worst = 0.0
    for batch, seq in shapes:
        inputs = make_inputs(model, batch, seq)
        got = run_onnxruntime(path, inputs)
        for ours, ref in zip(got, torch_outputs(model, inputs), strict=True):
            worst = max(worst, float(np.max(np.abs(ours - ref))))
    return worst


def _check_decode(model: Any, path: Path) -> float:
    """Every DECODE_CHECKS run, step by step in onnxruntime, against torch's full pass."""
    import numpy as np

    worst = 0.0
    for batch, chunks in DECODE_CHECKS:
        ids = token_ids(model, batch, sum(chunks))
        got = decode_onnxruntime(path, ids.numpy(), chunks)
        worst = max(worst, float(np.max(np.abs(got - full_logits(model, ids)))))
    return worst


def run_spec(model: torch.nn.Module, spec: Spec, workdir: Path) -> Result:
    """Export and check one combination; a failure becomes the Result's one-line reason."""
    path = workdir / f"{spec.name}.onnx"
    result = Result(spec, path)
    stage = "export"
    try:
        with _diagnostics(result.notes):
            export(model, spec, trace_inputs(model, spec), path)
            stage = "check"
            result.max_abs_err = check_export(model, spec, path)
    except Exception as error:  # noqa: BLE001 - any exporter or runtime error is a finding
        result.reason = f"{stage}: {type(error).__name__}: {_first_line(str(error))}"
        logged = [n for n in result.notes if n.startswith("log ")]
        if logged:
            result.reason += f" (last exporter log: {logged[-1][4:]})"
    return result


# --------------------------------------------------------------------------- manifest


def versions() -> dict[str, str]:
    """Versions of everything that shaped the exports."""
    import onnx
    import onnxruntime
    import onnxscript

    torch, transformers = load_hf()
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__,
    }


def describe_config(model: torch.nn.Module) -> dict[str, Any]:
    """The config fields a compiler cares about, under family-neutral names (a causal model's
    kv heads and head dim as its cache holds them: Falcon's multi-query config says otherwise)."""
    c = model.config
    hidden = c.hidden_size
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or hidden // c.num_attention_heads
    if "logits" in model.export_outputs:
        _, kv_heads, _, head_dim = kv_shape(model)
    intermediate = next(
        (getattr(c, k) for k in ("intermediate_size", "n_inner", "ffn_dim") if getattr(c, k, 0)),
        None,
    )
    return {
        "hf_class": type(model).__name__, "model_type": c.model_type,
        "layers": c.num_hidden_layers, "hidden": hidden, "heads": c.num_attention_heads,
        "kv_heads": kv_heads, "head_dim": head_dim, "vocab": c.vocab_size,
        "intermediate": intermediate,
        "max_positions": getattr(c, "max_position_embeddings", None),
        "sliding_window": getattr(c, "sliding_window", None),
        "attn_implementation": getattr(c, "_attn_implementation", None),
        "tie_word_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
    }


def kv_shape(model: Any) -> tuple[int, ...]:
    """[batch, kv_heads, seq, head_dim] of layer 0's cached keys after a one-token prefill."""
    import torch

    with torch.no_grad():
        out = model.hf_base.forward(model, input_ids=token_ids(model, 1, 1), use_cache=True)
    cache = getattr(out, "past_key_values", None)
    if cache is None:  # a model without a cache: what its config says
        c = model.config
        heads = c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        return (1, kv_heads, 1, getattr(c, "head_dim", None) or c.hidden_size // heads)
    return tuple(cache.layers[0].keys.shape)


def describe_parameters(model: torch.nn.Module) -> dict[str, Any]:
    """Parameter counts as torch computes them (tied tensors once) and the tied groups."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    return {
        "count": sum(p.numel() for p in model.parameters()),
        "count_if_untied": with_duplicates,
        "tied": [names for names in groups.values() if len(names) > 1],
    }


def _value_infos(values: Sequence[Any]) -> list[dict[str, Any]]:
    import onnx

    return [
        {
            "name": v.name,
            "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
        }
        for v in values
    ]


def describe_file(path: Path) -> dict[str, Any]:
    """What a reader of the .onnx file sees: opset, io, op histogram, sizes."""
    import onnx

    proto = onnx.load(str(path))
    data = path.read_bytes()
    return {
        "file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "opset": _default_opset(proto), "ir_version": proto.ir_version,
        "opset_imports": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": _value_infos(proto.graph.input), "outputs": _value_infos(proto.graph.output),
        "nodes": sum(op_histogram(proto).values()), "functions": len(proto.functions),
        "initializers": len(proto.graph.initializer), "op_histogram": op_histogram(proto),
    }


def save_reference(model: torch.nn.Module, spec: Spec, out: Path) -> dict[str, Any] | None:
    """Save inputs and torch outputs (dynamic exports: at CHECK_SHAPE) if under the limit.
    With-past: DECODE_CHECKS[0]'s token ids and torch's full-sequence logits, to be fed in its
    chunks (the first with an empty past)."""
    import numpy as np

    if spec.form == "withpast":
        batch, chunks = DECODE_CHECKS[0]
        ids = token_ids(model, batch, sum(chunks))
        arrays = {"input.input_ids": ids.numpy(), "output.logits": full_logits(model, ids)}
        info: dict[str, Any] = {"batch": batch, "seq": sum(chunks), "chunks": list(chunks)}
    else:
        batch, seq = CHECK_SHAPE if spec.seq == "dynamic" else STATIC_SHAPE
        inputs = make_inputs(model, batch, seq)
        arrays = {f"input.{k}": v.numpy() for k, v in inputs.items()}
        outputs = zip(model.export_outputs, torch_outputs(model, inputs), strict=True)
        arrays |= {f"output.{k}": v for k, v in outputs}
        info = {"batch": batch, "seq": seq}
    if sum(a.nbytes for a in arrays.values()) > REFERENCE_LIMIT:
        return None
    path = out / f"{spec.name}.ref.npz"
    np.savez_compressed(path, **arrays)
    return {"file": path.name, **info, "atol": ATOL}


def manifest_entry(model: torch.nn.Module, result: Result, out: Path) -> dict[str, Any]:
    """Everything MANIFEST.json records about one kept file."""
    spec = result.spec
    entry: dict[str, Any] = {"name": spec.name, "family": spec.family, "exporter": spec.exporter}
    entry |= {"opset_requested": spec.opset, "seq": spec.seq, "optimize": spec.optimize}
    entry |= {"form": spec.form} if spec.form != "nocache" or spec.family in CAUSAL_FAMILIES else {}
    entry |= describe_file(out / f"{spec.name}.onnx")
    entry |= {"config": describe_config(model), "parameters": describe_parameters(model)}
    entry |= {"reference": save_reference(model, spec, out), "max_abs_err": result.max_abs_err}
    entry |= {"exporter_notes": result.notes, "versions": versions()}
    return entry


# --------------------------------------------------------------------------- driver


def select_fixtures(results: Sequence[Result]) -> list[Result]:
    """The FIXTURE_PICKS that worked: per pick, the first opset of its preference list; for a
    CAUSAL_FAMILIES family, per form the first of CAUSAL_PICKS that worked (dynamic)."""
    ok = {r.spec: r for r in results if r.ok}
    chosen = []
    for family, exporter, opsets, seq, optimize in FIXTURE_PICKS:
        specs = (Spec(family, exporter, opset, seq, optimize) for opset in opsets)
        found = next((ok[s] for s in specs if s in ok), None)
        if found is not None and found not in chosen:
            chosen.append(found)
    for family in dict.fromkeys(r.spec.family for r in results):
        for form in FORMS:
            specs = (Spec(family, e, o, "dynamic", True, form) for e, o in CAUSAL_PICKS)
            found = next((ok[s] for s in specs if s in ok), None)
            if family in CAUSAL_FAMILIES and found is not None:
                chosen.append(found)
    return chosen


def plan(args: argparse.Namespace) -> list[Spec]:
    """The matrix to try (plus the fixture picks' extra combinations in --fixtures mode); the
    with-past form only for causal models and dynamic shapes."""
    specs = [
        Spec(f, e, o, s, args.optimize or e != "dynamo", form)
        for f in args.models for form in args.forms for e in args.exporters for o in args.opsets
        for s in args.seq
        if form == "nocache" or (s == "dynamic" and f in args.causal)
    ]
    if args.fixtures:
        extra = (Spec(f, e, o, s, opt) for f, e, opsets, s, opt in FIXTURE_PICKS for o in opsets)
        specs += [s for s in extra if s not in specs and s.family in args.models]
    return specs


def _clean_previous(out: Path) -> None:
    """Remove the files an earlier MANIFEST.json in `out` listed (and only those)."""
    manifest = out / "MANIFEST.json"
    if not manifest.exists():
        return
    for entry in json.loads(manifest.read_text()).get("fixtures", []):
        for name in (entry["file"], (entry.get("reference") or {}).get("file")):
            if name:
                (out / name).unlink(missing_ok=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Try the planned matrix, keep the selected files in args.out, write MANIFEST.json."""
    load_hf()
    specs = plan(args)
    build = _builder(args)
    models = {(s.family, s.form): build(s.family, s.form) for s in specs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_previous(out)
    with tempfile.TemporaryDirectory() as tmp:
        results = _run_specs(args, models, specs, Path(tmp))
        kept = select_fixtures(results) if args.fixtures else [r for r in results if r.ok]
        for result in kept:
            shutil.copyfile(result.path, out / result.path.name)
        entries = [manifest_entry(models[r.spec.family, r.spec.form], r, out) for r in kept]
    manifest = _manifest(args, entries, results)
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _run_specs(args: argparse.Namespace, models: dict, specs: list[Spec], tmp: Path) -> list:
    """Every spec's Result, in `specs` order; with --jobs N > 1 one (family, form) per worker
    process (each rebuilds its model: seeded, so the same weights)."""
    if args.jobs <= 1 or args.checkpoint:
        results = []
        for spec in specs:
            results.append(run_spec(models[spec.family, spec.form], spec, tmp))
            _print_result(results[-1])
        return results
    groups: dict[tuple[str, str], list[Spec]] = {}
    for spec in specs:
        groups.setdefault((spec.family, spec.form), []).append(spec)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        jobs = [pool.submit(_run_group, args.config, group, tmp) for group in groups.values()]
        done = [result for job in jobs for result in job.result()]
    by_spec = {r.spec: r for r in done}
    return [by_spec[spec] for spec in specs]


def _run_group(config_path: Path | None, specs: list[Spec], tmp: Path) -> list[Result]:
    """A worker: build the (family, form) model of `specs` and run them."""
    family, form = specs[0].family, specs[0].form
    if config_path:
        args = argparse.Namespace(checkpoint=None, config=config_path)
        model = model_from_config(read_config(args), form)
    else:
        model = build_model(family, form)
    results = []
    for spec in specs:
        results.append(run_spec(model, spec, tmp))
        _print_result(results[-1])
    return results


def _manifest(args: argparse.Namespace, entries: list, results: Sequence[Result]) -> dict:
    combos = [
        {
            "name": r.spec.name, "ok": r.ok, "reason": r.reason, "max_abs_err": r.max_abs_err,
            "notes": [n for n in r.notes if n.startswith(SIGNIFICANT_NOTES)],
        }
        for r in results
    ]
    return {
        "generator": "tools/export_hf.py", "argv": sys.argv[1:], "seed": SEED,
        "static_shape": dict(zip(DIM_NAMES, STATIC_SHAPE, strict=True)),
        "dynamic_check_shape": dict(zip(DIM_NAMES, CHECK_SHAPE, strict=True)),
        "with_past_trace_shape": dict(
            zip((DIM_NAMES[0], PAST_DIM, DIM_NAMES[1]), PAST_TRACE, strict=True)
        ),
        "with_past_checks": [{"batch": b, "chunks": list(c)} for b, c in DECODE_CHECKS],
        "source": _source(args),
        "weights": "from the checkpoint, as float32" if args.checkpoint else RANDOM_WEIGHTS,
        "stripped_node_metadata": list(STRIPPED_METADATA),
        "versions": versions(), "fixtures": entries, "combinations": combos,
    }


def _source(args: argparse.Namespace) -> dict[str, str]:
    if args.checkpoint:
        return {"checkpoint": str(args.checkpoint)}
    return {"config": str(args.config)} if args.config else {"tiny_configs": "TINY_CONFIGS"}


def _print_result(result: Result) -> None:
    status = f"ok (max abs err {result.max_abs_err:.1e})" if result.ok else "FAILED"
    status += f" {result.reason}" if result.reason else ""
    print(f"{result.spec.name:40s} {status}", flush=True)


def _csv(kind: type, allowed: Sequence[Any]) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(v) for v in text.split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
        return values

    return parse


def _models(text: str) -> list[str]:
    groups = {"causal": CAUSAL_FAMILIES, "encoders": ENCODER_FAMILIES}
    names = [n for v in text.split(",") for n in groups.get(v, [v])]
    return _csv(str, FAMILIES)(",".join(names))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; lists are comma separated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the .onnx files and manifest")
    parser.add_argument(
        "--models", type=_models, default=list(LEGACY_FAMILIES),
        help=f"families, or 'causal' for {','.join(CAUSAL_FAMILIES)}, 'encoders' for "
        f"{','.join(ENCODER_FAMILIES)} (default gpt2,llama,bert)",
    )
    parser.add_argument(
        "--forms", type=_csv(str, FORMS), default=["nocache"],
        help="nocache (use_cache=False) and/or withpast (past_key_values.* in, present.* out)",
    )
    parser.add_argument("--exporters", type=_csv(str, EXPORTERS), default=list(EXPORTERS))
    parser.add_argument("--opsets", type=_csv(int, OPSETS), default=list(OPSETS))
    parser.add_argument("--seq", type=_csv(str, SEQ_MODES), default=list(SEQ_MODES))
    parser.add_argument(
        "--no-optimize", dest="optimize", action="store_false",
        help="skip the dynamo exporter's onnxscript optimizer (fusions, constant folding)",
    )
    parser.add_argument(
        "--fixtures", action="store_true",
        help="keep only the curated FIXTURE_PICKS and save torch reference outputs",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="export in N worker processes, one (family, form) each (default 1)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint", type=Path, metavar="DIR",
        help="export a local Hugging Face checkpoint (config.json + *.safetensors; no hub)",
    )
    source.add_argument(
        "--config", type=Path, metavar="FILE",
        help="export any transformers config.json (with model_type) with seeded random weights",
    )
    args = parser.parse_args(argv)
    if (args.checkpoint or args.config) and args.fixtures:
        parser.error("--fixtures makes the curated tiny families; not with --checkpoint/--config")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: export, check, and print one line per combination."""
    args = parse_args(argv)
    resolve_source(args)
    manifest = run(args)
    failed = sum(not c["ok"] for c in manifest["combinations"])
    print(f"kept {len(manifest['fixtures'])} files in {args.out}; {failed} combinations failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
