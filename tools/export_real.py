"""Offline exporter of the shapes real checkpoints ship in (issue 15), with seeded random weights.

* ``sentence``: a BERT encoder with a sentence-transformers mean-pooling tail,
  ``sum(hidden * mask.unsqueeze(-1).expand(...)) / clamp(mask.sum(1), 1e-9)``: int64 ids and
  mask in, one [batch, hidden] embedding out (TorchScript, opset 17, as sentence-transformers
  exports it). ``--layers/--hidden/--heads/--ffn/--vocab/--positions`` size it (BERT-base:
  12/768/12/3072/30522/512).
* ``roberta``: a tiny RoBERTa, whose position ids come from the runtime mask through CumSum
  (``(cumsum(mask) * mask) + padding_idx``, as OPT and XLM-R compute them).
* ``opt``: a tiny OPT decoder: positions ``(cumsum(mask) * mask) - 1``, offset 2 in the table.
* ``bf16``: a tiny BERT converted with ``.to(torch.bfloat16)``, fed bfloat16 embeddings ``x``
  (ONNX Runtime's CPU provider cannot run it as it is: not checked here, see wafer verify).

Run as a script::

    python tools/export_real.py sentence --out FILE.onnx [--layers 3 --hidden 384 ...]
    python tools/export_real.py roberta --out FILE.onnx
    python tools/export_real.py opt --out FILE.onnx
    python tools/export_real.py bf16 --out FILE.onnx

Dynamic ``batch``/``seq`` dims; onnxruntime is checked against torch before the file is kept.
torch and transformers are imported inside functions (the ``[hf]`` extra). A developer tool,
outside the installed ``compiler`` package; tests/fixtures/real/ is made with it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import export_hf as hf  # noqa: E402  (its seeded weights, shared)

SEED = 0
OPSET = 17
CHECK_SHAPE = (2, 16)  # (batch, seq) the export is traced and checked at
ATOL = 1e-4


def _hf() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise SystemExit("error: the exporter needs the hf extra: "
                         "pip install 'wafer-compiler[hf]'") from None
    transformers.logging.set_verbosity_error()
    return torch, transformers


def sentence_model(args: argparse.Namespace) -> Any:
    """BertModel + mean pooling, as sentence-transformers' Pooling(mode='mean') computes it."""
    torch, transformers = _hf()
    config = transformers.BertConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.ffn, vocab_size=args.vocab, max_position_embeddings=args.positions,
        use_cache=False, attn_implementation="eager")
    torch.manual_seed(SEED)
    bert = transformers.BertModel(config, add_pooling_layer=False)
    hf._randomize(bert)

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).expand(hidden.size()).float()
            summed = torch.sum(hidden * mask, 1)
            return summed / torch.clamp(mask.sum(1), min=1e-9)

    return SentenceEmbedding().eval(), ("sentence_embedding",)


def roberta_model(args: argparse.Namespace) -> Any:
    """A tiny RobertaModel: positions = cumsum(ids != pad) * (ids != pad) + pad."""
    torch, transformers = _hf()
    config = transformers.RobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=96, max_position_embeddings=80, pad_token_id=1, use_cache=False,
        attn_implementation="eager")
    torch.manual_seed(SEED)
    roberta = transformers.RobertaModel(config, add_pooling_layer=False)
    hf._randomize(roberta)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.roberta = roberta

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.roberta(input_ids=input_ids, attention_mask=attention_mask)[0]

    return Encoder().eval(), ("last_hidden_state",)


def opt_model(args: argparse.Namespace) -> Any:
    """A tiny OPTForCausalLM: positions = (cumsum(mask) * mask) - 1, looked up at + 2."""
    torch, transformers = _hf()
    config = transformers.OPTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, vocab_size=96,
        max_position_embeddings=64, word_embed_proj_dim=32, use_cache=False,
        attn_implementation="eager")
    torch.manual_seed(SEED)
    opt = transformers.OPTForCausalLM(config)
    hf._randomize(opt)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.opt = opt

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.opt(input_ids=input_ids, attention_mask=attention_mask).logits

    return Decoder().eval(), ("logits",)


def bf16_model(args: argparse.Namespace) -> Any:
    """A tiny BertModel in bfloat16 (`.to(torch.bfloat16)`), fed bfloat16 embeddings."""
    torch, transformers = _hf()
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=50, max_position_embeddings=40, use_cache=False, attn_implementation="eager")
    torch.manual_seed(SEED)
    bert = transformers.BertModel(config, add_pooling_layer=False)
    hf._randomize(bert)
    bert = bert.to(torch.bfloat16)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, x: Any, attention_mask: Any) -> Any:
            return self.bert(inputs_embeds=x, attention_mask=attention_mask)[0]

    return Encoder().eval(), ("last_hidden_state",)


def make_inputs(vocab: int, batch: int, seq: int) -> dict[str, Any]:
    """Seeded ids (never the pad id 1), a mask whose last row is right-padded by 3 tokens."""
    torch, _ = _hf()
    generator = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(2, vocab, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[-1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def export(model: Any, outputs: Sequence[str], vocab: int, path: Path) -> float:
    """TorchScript export (dynamic batch and seq), checked against torch with onnxruntime."""
    torch, _ = _hf()
    inputs = make_inputs(max(vocab, 3), *CHECK_SHAPE)
    if vocab == 0:  # bf16: embeddings in, as bfloat16
        generator = torch.Generator().manual_seed(SEED + 2)
        x = torch.randn(*CHECK_SHAPE, 32, generator=generator).to(torch.bfloat16)
        inputs = {"x": x, "attention_mask": inputs["attention_mask"]}
    dims = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(
            model, tuple(inputs.values()), str(path), dynamo=False, opset_version=OPSET,
            input_names=list(inputs), output_names=list(outputs),
            dynamic_axes={name: dims for name in inputs})
        want = model(**inputs).float().numpy()
    if vocab == 0:  # ORT's CPU provider has no bfloat16 kernels: checked by wafer verify
        return 0.0
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    return float(abs(got - want).max())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("sentence", "roberta", "opt", "bf16"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--positions", type=int, default=512)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    build = {"sentence": sentence_model, "roberta": roberta_model, "opt": opt_model,
             "bf16": bf16_model}
    model, outputs = build[args.kind](args)
    vocab = {"sentence": args.vocab, "roberta": 96, "opt": 96, "bf16": 0}[args.kind]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    err = export(model, outputs, vocab, args.out)
    if err > ATOL:
        args.out.unlink()
        print(f"error: onnxruntime differs from torch by {err:.2e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {args.out.stat().st_size:,} bytes, max |ort - torch| {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
