"""Make the quantized fixtures in tests/fixtures/quant/ from the float export fixtures.

Each source (tests/fixtures/*.onnx, made by tools/export_hf.py) is quantized by onnxruntime's
own quantizer in the three forms users ship:

- `dyn`:  quantize_dynamic, int8 weights (DynamicQuantizeLinear + MatMulInteger + Cast/Mul)
- `qdq`:  quantize_static, QDQ form, per-channel int8 weights, uint8 activations
- `qop`:  quantize_static, QOperator form (QLinearMatMul, com.microsoft QGemm) of the matmuls
- `qopall`: (BERT only) quantize_static, QOperator form of every op the quantizer takes
  (its defaults: also com.microsoft QLinearAdd, QLinearMul, QLinearSoftmax)
- `qopact`: (Llama only) quantize_static, QOperator form of the matmuls, Concat and Sigmoid
  (com.microsoft QLinearConcat, QLinearSigmoid; no QLinearAdd / QLinearMul)
- `int4`, `f8`: (GPT-2 only) the source converted to opset 21, then quantize_static in QDQ form
  with int4 weights (uint8 activations), or float8 e4m3fn weights and activations (the
  Distribution calibration float8 needs)

Static quantization calibrates on seeded random token ids (a small CalibrationDataReader).
The attention-mask Add/Where are left in float: their -3.4e38 fill would give an infinite
activation scale. Run: .venv/bin/python tools/quantize_fixtures.py (needs only onnxruntime).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("gpt2_torchscript_op17_static", "bert_torchscript_op17_static",
           "llama_torchscript_op17_static")
SEED = 0
NARROW = ("gpt2_torchscript_op17_static",)  # sources also made in the int4 and float8 forms
ALL_QOP = ("bert_torchscript_op17_static",)  # sources also made with every op in QOperator form
ACTIVATIONS = ("llama_torchscript_op17_static",)  # sources also made in the qopact form


class RandomTokens(CalibrationDataReader):
    """A few batches of seeded random token ids (and an all-ones mask) in the model's shapes
    (a dynamic dim: its place in `shape`, e.g. (batch, seq))."""

    def __init__(self, model: onnx.ModelProto, vocab: int, batches: int = 4,
                 shape: tuple[int, ...] = (1, 16)) -> None:
        rng = np.random.default_rng(SEED)
        feeds = []
        for _ in range(batches):
            feed = {}
            for v in model.graph.input:
                dims = [d.dim_value or shape[i]
                        for i, d in enumerate(v.type.tensor_type.shape.dim)]
                if "mask" in v.name:
                    feed[v.name] = np.ones(dims, np.int64)
                elif "type" in v.name:
                    feed[v.name] = np.zeros(dims, np.int64)
                else:
                    feed[v.name] = rng.integers(0, vocab, dims).astype(np.int64)
            feeds.append(feed)
        self._it = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._it, None)


def _vocab(model: onnx.ModelProto) -> int:
    """Rows of the largest 2-D float initializer read by a Gather (the token table)."""
    inits = {t.name: t for t in model.graph.initializer}
    rows = [inits[n.input[0]].dims[0] for n in model.graph.node
            if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]
    return min(rows) if rows else 2


def _mask_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes around the attention mask (its finfo.min fill cannot be quantized), and the Softmax
    each feeds: quantizing a Softmax quantizes its input, whose range then spans finfo.min and
    overflows the scale to Inf (ORT's own QLinearSoftmax output is then undefined)."""
    masked = [n for n in model.graph.node
              if (n.op_type in ("Add", "Where", "Mul", "Sub") and "attn" in n.name.lower()
                  and "matmul" not in n.name.lower()) or n.op_type == "Where"]
    filled = {out for n in masked for out in n.output}
    softmax = [n.name for n in model.graph.node
               if n.op_type == "Softmax" and any(i in filled for i in n.input)]
    return [n.name for n in masked] + softmax


def make(src: Path, out_dir: Path) -> list[dict]:
    model = onnx.load(src)
    vocab = _vocab(model)
    exclude = _mask_nodes(model)
    stem = src.stem
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "src.onnx"
        onnx.save(model, pre)
        forms = {
            "dyn": lambda dst: quantize_dynamic(pre, dst, weight_type=QuantType.QInt8),
            "qdq": lambda dst: quantize_static(
                pre, dst, RandomTokens(model, vocab), quant_format=QuantFormat.QDQ,
                per_channel=True, weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8, nodes_to_exclude=exclude),
            "qop": lambda dst: quantize_static(
                pre, dst, RandomTokens(model, vocab), quant_format=QuantFormat.QOperator,
                op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=exclude),
        }
        if stem in NARROW:
            forms.update(_narrow_forms(model, vocab, exclude, Path(tmp)))
        if stem in ALL_QOP:
            forms["qopall"] = lambda dst: quantize_static(
                pre, dst, RandomTokens(model, vocab), quant_format=QuantFormat.QOperator,
                nodes_to_exclude=exclude)
        if stem in ACTIVATIONS:
            forms["qopact"] = lambda dst: quantize_static(
                pre, dst, RandomTokens(model, vocab), quant_format=QuantFormat.QOperator,
                op_types_to_quantize=["MatMul", "Gemm", "Concat", "Sigmoid"],
                nodes_to_exclude=exclude)
        for form, run in forms.items():
            dst = out_dir / f"{stem}_{form}.onnx"
            run(dst)
            made.append(_entry(dst, stem, form))
    return made


def _narrow_forms(model: onnx.ModelProto, vocab: int, exclude: list[str], tmp: Path) -> dict:
    """int4 and float8 QDQ (opset 21) of the matmuls."""
    pre = tmp / "src21.onnx"
    onnx.save(onnx.version_converter.convert_version(model, 21), pre)
    common = {"quant_format": QuantFormat.QDQ, "nodes_to_exclude": exclude,
              "op_types_to_quantize": ["MatMul", "Gemm"]}
    return {
        "int4": lambda dst: quantize_static(
            pre, dst, RandomTokens(model, vocab), weight_type=QuantType.QInt4,
            activation_type=QuantType.QUInt8, **common),
        "f8": lambda dst: quantize_static(
            pre, dst, RandomTokens(model, vocab), weight_type=QuantType.QFLOAT8E4M3FN,
            activation_type=QuantType.QFLOAT8E4M3FN,
            calibrate_method=CalibrationMethod.Distribution, **common),
    }


def _entry(path: Path, source: str, form: str) -> dict:
    m = onnx.load(path)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        key = f"{n.domain}::{n.op_type}" if n.domain else n.op_type
        ops[key] = ops.get(key, 0) + 1
    return {"file": path.name, "source": f"{source}.onnx", "form": form,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "op_histogram": dict(sorted(ops.items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/quant")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in SOURCES:
        entries += make(ROOT / "tests/fixtures" / f"{name}.onnx", args.out)
    import onnxruntime

    manifest = {"generator": "tools/quantize_fixtures.py", "seed": SEED,
                "onnxruntime": onnxruntime.__version__, "fixtures": entries}
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
