"""Coverage benchmark (issue 15): tiny seeded exports of 18 transformer families, decoders and
encoders, each in the dynamo (opset 18) and TorchScript (opset 17) forms, plus onnxruntime-
quantized versions of three of them (quantize_dynamic; quantize_static in QDQ and QOperator
form), every file compiled with `wafer compile FILE -t TARGET --verify --batch 1 --seq-len 16`
on a small mesh and on WSE-3. Each cell is the verify result, or the refusal (exit code and the
one-line error: an unsupported model lists every unsupported op). Writes the `coverage` section
of docs/performance.md.

The exports are made by tools/export_hf.py (`--models gpt2,llama,bert,causal,encoders --seq
dynamic`) with a Python that has torch and transformers (the [hf] extra): this one if it can
import them, else $WAFER_TORCH_PYTHON; without one the benchmark says so and exits 0 without
writing. They go to `--cache DIR` (kept, and reused when there) or a temporary directory, never
into the repository. Quantization runs here (onnxruntime.quantization, tools/quantize_fixtures.py's
calibration reader: seeded random token ids at [1, 16]).

    python benchmarks/hf_coverage.py [--cache DIR] [--targets mesh8x8,wse3] [--families bert,...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import PERF_DOC, ROOT, WAFER, machine, table, write_section
from bert_base import run, torch_python

TARGETS = ("mesh8x8", "wse3")
SEQ = 16
LIMIT = 240  # characters of an error line in the table (the node list of exit 4 is long)
EXPORTS = (("dynamo", 18), ("torchscript", 17))  # (exporter, opset)
QUANT_FAMILIES = ("bert", "opt", "mistral")  # quantized from their TorchScript export
QUANT_FORMS = {
    "dyn": "ORT quantize_dynamic (int8 weights)",
    "qdq": "ORT quantize_static QDQ (per-channel int8 weights, uint8 activations)",
    "qop": "ORT quantize_static QOperator (every op ORT quantizes but the attention mask's "
           "nodes and the Softmax they feed: their finfo.min fill overflows a scale to Inf)",
}
# (family, the quirks it brings), in table order
FAMILIES: tuple[tuple[str, str], ...] = (
    ("gpt2", "learned positions, fused QKV (Conv1D)"),
    ("llama", "RoPE, RMSNorm, GQA 2:1, SwiGLU"),
    ("mistral", "sliding window 8, GQA 2:1"),
    ("qwen2", "GQA 4:1, q/k/v biases"),
    ("phi", "partial rotary 1/2, parallel attention + MLP"),
    ("gpt_neox", "fused QKV, rotary 1/4, parallel residual"),
    ("falcon", "multi-query, parallel attention"),
    ("gptj", "interleaved rotary 4 of 8 dims, parallel residual"),
    ("bloom", "ALiBi, fused QKV, embedding LayerNorm"),
    ("gemma2", "attention + final logit soft-capping, alternating sliding window"),
    ("stablelm", "partial rotary 1/4, LayerNorm"),
    ("opt", "learned positions offset 2, from the mask's CumSum"),
    ("bert", "encoder: token types, pooler (Tanh), padding mask"),
    ("roberta", "encoder: positions from the ids' CumSum, offset by the pad id"),
    ("distilbert", "encoder: no token types, no pooler"),
    ("albert", "encoder: factorized embedding 16 -> 32, weights shared across layers"),
    ("electra", "encoder: embedding 24 projected to 32"),
    ("t5", "T5 encoder: bucketed relative position bias, RMS norm, eager attention"),
)


def export_all(python: str, cache: Path, families: list[str]) -> dict[str, dict[str, Any]]:
    """{exporter: MANIFEST.json} of tools/export_hf.py's run per exporter (made unless cached)."""
    manifests = {}
    for exporter, opset in EXPORTS:
        out = cache / exporter
        if not (out / "MANIFEST.json").exists():
            subprocess.run([
                python, str(ROOT / "tools" / "export_hf.py"), "--out", str(out), "--models",
                ",".join(families), "--exporters", exporter, "--opsets", str(opset),
                "--seq", "dynamic"], check=True)
        manifests[exporter] = json.loads((out / "MANIFEST.json").read_text())
    return manifests


def quantize(src: Path, form: str, dst: Path) -> str:
    """Write `form` of src to dst; '' or the one-line reason the quantizer failed."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if dst.exists():
        return ""
    sys.path.insert(0, str(ROOT))  # tools/ is a package at the root
    from tools import quantize_fixtures as tool
    model = onnx.load(src)
    reader = tool.RandomTokens(model, tool._vocab(model), shape=(1, SEQ))
    exclude = tool._mask_nodes(model)
    try:
        if form == "dyn":
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        elif form == "qdq":
            quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            nodes_to_exclude=exclude)
        else:
            quantize_static(src, dst, reader, quant_format=QuantFormat.QOperator,
                            nodes_to_exclude=exclude)
    except Exception as error:  # noqa: BLE001  (the quantizer's own failure goes in the table)
        dst.unlink(missing_ok=True)
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
    return ""


def compile_cell(path: Path, target: str) -> tuple[str, float, bool]:
    """(the table cell, wall seconds, verified) of one `wafer compile --verify` process; the
    cell gives its CPU seconds (user + sys: on a shared machine the wall time is the load's)."""
    with tempfile.TemporaryDirectory() as tmp:
        seconds, cpu, _, code, stdout, last = run([
            *WAFER, "-q", "compile", str(path), "-t", target, "-o", str(Path(tmp) / "out"),
            "--verify", "--json", "--no-report", "--batch", "1", "--seq-len", str(SEQ)])
    if code == 0:
        worst = max(o["max_abs"] for o in json.loads(stdout)["verify"]["outputs"])
        return f"verified ({worst:.1e}; {cpu:.1f} s)", seconds, True
    short = last.replace("|", "\\|")  # an unsupported model's op kinds come first
    short = short[:LIMIT] + " ..." if len(short) > LIMIT else short
    if code == 1 and stdout.strip():  # a verify mismatch: its worst error, then the last line
        worst = max(o["max_abs"] for o in json.loads(stdout)["verify"]["outputs"])
        return (f"exit 1, verify FAILED (max abs {worst:.2g}; {cpu:.1f} s): `{short}`", seconds,
                False)
    return f"exit {code} ({cpu:.1f} s): `{short}`", seconds, False


def _files(manifests: dict[str, dict[str, Any]], cache: Path, family: str) -> list:
    """[(form label, path or None, export failure)] of a family's exports."""
    rows = []
    for exporter, opset in EXPORTS:
        label = f"{exporter} op{opset}"
        manifest = manifests[exporter]
        entry = next((e for e in manifest["fixtures"] if e["family"] == family), None)
        if entry is not None:
            rows.append((label, cache / exporter / entry["file"], ""))
            continue
        combo = next((c for c in manifest["combinations"] if c["name"].startswith(family + "_")),
                     {"reason": "not exported"})
        reason = re.sub(r"\x1b\[[0-9;]*m", "", combo["reason"] or "").replace("|", "\\|")
        rows.append((label, None, f"export failed: `{reason}`"))
    return rows


def _quant_files(manifests: dict[str, dict[str, Any]], cache: Path, family: str) -> list:
    src = next((p for label, p, _ in _files(manifests, cache, family)
                if p is not None and label.startswith("torchscript")), None)
    if src is None:
        return []
    out = cache / "quant"
    out.mkdir(exist_ok=True)
    rows = []
    for form in QUANT_FORMS:
        dst = out / f"{src.stem}_{form}.onnx"
        reason = quantize(src, form, dst)
        rows.append((f"torchscript op17, {form}", dst if not reason else None,
                     f"quantizer failed: {reason}" if reason else ""))
    return rows


def measure(manifests: dict, cache: Path, families: list[str], targets: list[str]) -> list:
    rows = []
    quirks = dict(FAMILIES)
    for family in families:
        files = _files(manifests, cache, family)
        if family in QUANT_FAMILIES:
            files += _quant_files(manifests, cache, family)
        for label, path, failure in files:
            cells = [compile_cell(path, t) if path else (failure, 0.0, False) for t in targets]
            rows.append((family, quirks[family], label, cells))
            print(f"{family:10s} {label:24s} " + " | ".join(c[0] for c in cells), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="keep (and reuse) the exports here")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--families", default=",".join(f for f, _ in FAMILIES))
    parser.add_argument("--merge", action="store_true",
                        help="replace only these families' rows of the table in the doc")
    args = parser.parse_args()
    python = torch_python()
    if python is None:
        print("coverage: no Python with torch and transformers (set WAFER_TORCH_PYTHON): skipped")
        return 0
    families, targets = args.families.split(","), args.targets.split(",")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        manifests = export_all(python, cache, [f for f, _ in FAMILIES])
        rows = measure(manifests, cache, families, targets)
        total = time.perf_counter() - t0
    if args.merge:
        rows = _merged(rows, targets)
    write_section("coverage", _body(rows, targets, manifests, total, load, families))
    return 0


def _merged(rows: list, targets: list[str]) -> list:
    """The doc's table rows of the families not in `rows`, and `rows`, in FAMILIES order."""
    text = PERF_DOC.read_text()
    section = re.search(r"<!-- coverage:start -->(.*?)<!-- coverage:end -->", text, re.S)
    ran = {r[0] for r in rows}
    kept = []
    for line in (section.group(1) if section else "").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 3 + len(targets) or cells[0] in ran or cells[0] == "family" \
                or set(cells[0]) == {"-"}:
            continue
        kept.append((*cells[:3], [(c, 0.0, c.startswith("verified")) for c in cells[3:]]))
    order = {f: i for i, (f, _) in enumerate(FAMILIES)}
    return sorted(kept + rows, key=lambda r: order[r[0]])  # stable: forms keep their order


def _body(rows: list, targets: list[str], manifests: dict, total: float, load: tuple,
          families: list[str]) -> str:
    cells = [c for *_, cs in rows for c in cs]
    verified = sum(c[2] for c in cells)
    versions = next(iter(manifests.values()))["versions"]
    head = (
        f"`wafer compile FILE -t TARGET -o OUT --verify --batch 1 --seq-len {SEQ}` on "
        f"{len({r[0] for r in rows})} families' tiny exports (2 layers, hidden 32, seeded random "
        "weights; `tools/export_hf.py --seq dynamic`, dynamo at opset 18 and TorchScript at "
        f"opset 17, torch {versions['torch']}, transformers {versions['transformers']}) and "
        f"ONNX Runtime {versions['onnxruntime']}'s quantized versions of "
        f"{', '.join(QUANT_FAMILIES)} (`dyn`: {QUANT_FORMS['dyn']}; `qdq`: {QUANT_FORMS['qdq']}; "
        f"`qop`: {QUANT_FORMS['qop']}). `python benchmarks/hf_coverage.py`; "
        f"**{verified} of {len(cells)} verify**; each of the rest gives its exit code and error "
        "(exit 4: refused, every unsupported op listed; exit 1: verify found a mismatch, its "
        "worst error and the last warning shown). Cells: the max abs error against ONNX "
        "Runtime and the CPU seconds (user + sys) of the whole process. "
        f"{total:.0f} s of wall time for the last run's "
        f"{len(families)} families (exports included unless --cache held them) "
        f"({machine()}; load average {load[0]:.1f} when it started).\n\n")
    body = [[f, q, label, *(c[0] for c in cs)] for f, q, label, cs in rows]
    return head + table(["family", "quirks", "form", *targets], body)


if __name__ == "__main__":
    sys.exit(main())
