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
import contextlib
import dataclasses
import hashlib
import json
import logging
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

FAMILIES = ("gpt2", "llama", "bert")
EXPORTERS = ("dynamo", "torchscript")
OPSETS = (17, 18, 20, 23)
SEQ_MODES = ("static", "dynamic")
DIM_NAMES = ("batch", "seq")
SEED = 0
STATIC_SHAPE = (2, 16)  # (batch, seq) every export is traced and checked at
CHECK_SHAPE = (3, 9)  # a second (batch, seq) dynamic exports are checked at
ATOL = 1e-4
REFERENCE_LIMIT = 100_000  # bytes: larger torch references are not saved
SIGNIFICANT_NOTES = ("log ", "OnnxExporterWarning")  # notes MANIFEST's combinations keep
STRIPPED_METADATA = ("pkg.torch.onnx.stack_trace",)  # absolute paths of the exporting machine

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
}
HF_CLASSES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "bert": ("BertConfig", "BertModel"),
}
OUTPUTS = {
    "gpt2": ("logits",),
    "llama": ("logits",),
    "bert": ("last_hidden_state", "pooler_output"),
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One export combination."""

    family: str
    exporter: str
    opset: int
    seq: str
    optimize: bool = True  # the dynamo exporter's onnxscript optimizer (its default)

    @property
    def name(self) -> str:
        suffix = "" if self.optimize or self.exporter != "dynamo" else "_noopt"
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
    for family in FAMILIES
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


# --------------------------------------------------------------------------- models and inputs


def load_hf() -> tuple[Any, Any]:
    """Import torch and transformers, or exit with the one-line hint to install the hf extra."""
    try:
        import torch
        import transformers
    except ImportError:
        raise SystemExit(HF_EXTRA_ERROR) from None
    transformers.logging.set_verbosity_error()
    return torch, transformers


def build_model(family: str) -> torch.nn.Module:
    """A tiny seeded random-weight model of `family`, eval mode, no KV cache, export-ready."""
    torch, transformers = load_hf()
    config_name, model_name = HF_CLASSES[family]
    config = getattr(transformers, config_name)(use_cache=False, **TINY_CONFIGS[family])
    torch.manual_seed(SEED)
    model = getattr(transformers, model_name)(config)
    _randomize(model)
    _make_exportable(model, OUTPUTS[family])
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


def _make_exportable(model: torch.nn.Module, outputs: Sequence[str]) -> None:
    """Give `model` a positional tensor-only forward returning a tuple, in place.

    A subclass with the same name and module keeps the HF parameter names and makes the export
    metadata read as a plain export of the HF class (a wrapper module would prefix every name).
    """
    base = type(model)

    def forward(self: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = base.forward(self, input_ids=input_ids, attention_mask=attention_mask, **extra)
        return tuple(getattr(out, key) for key in outputs)

    names = {"__module__": base.__module__, "__qualname__": base.__qualname__}
    model.__class__ = type(base.__name__, (base,), {"forward": forward, **names})


def make_inputs(family: str, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """Seeded token ids, and a mask whose last row is right-padded by 3 tokens."""
    import torch

    generator = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, TINY_CONFIGS[family]["vocab_size"], (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[-1, seq - 3 :] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        types = torch.zeros(batch, seq, dtype=torch.int64)
        types[:, seq // 2 :] = 1
        inputs["token_type_ids"] = types
    return inputs


def torch_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[Any]:
    """The model's outputs as numpy arrays."""
    import torch

    with torch.no_grad():
        return [out.numpy() for out in model(*inputs.values())]


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
    outputs = OUTPUTS[spec.family]
    if spec.exporter == "dynamo":
        _export_dynamo(model, spec, inputs, outputs, path)
    else:
        _export_torchscript(model, spec, inputs, outputs, path)


def _export_dynamo(
    model: Any, spec: Spec, inputs: dict, outputs: Sequence[str], path: Path
) -> None:
    import torch

    dynamic_shapes = None
    if spec.seq == "dynamic":
        dims = {axis: torch.export.Dim(name) for axis, name in enumerate(DIM_NAMES)}
        dynamic_shapes = {name: dims for name in inputs}
    program = torch.onnx.export(
        model, tuple(inputs.values()), dynamo=True, opset_version=spec.opset,
        input_names=list(inputs), output_names=list(outputs), dynamic_shapes=dynamic_shapes,
        optimize=spec.optimize, verbose=False,
    )
    program.save(path, external_data=False)
    _strip_metadata(path)


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
    torch.onnx.export(
        model, tuple(inputs.values()), str(path), dynamo=False, opset_version=spec.opset,
        input_names=list(inputs), output_names=list(outputs), dynamic_axes=dynamic_axes,
    )


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
    """Run the file on CPU with graph optimizations disabled."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})


class OpsetMismatch(RuntimeError):
    """The exporter wrote another opset than the one asked for (a failed down-conversion)."""


def check_export(model: torch.nn.Module, spec: Spec, path: Path) -> float:
    """Raise on a wrong opset, a checker error or an onnxruntime mismatch; return the max error."""
    import numpy as np
    import onnx

    proto = onnx.load(str(path))
    if _default_opset(proto) != spec.opset:
        raise OpsetMismatch(f"exporter wrote opset {_default_opset(proto)}, not {spec.opset}")
    onnx.checker.check_model(proto, full_check=True)
    shapes = [STATIC_SHAPE, CHECK_SHAPE] if spec.seq == "dynamic" else [STATIC_SHAPE]
    worst = 0.0
    for batch, seq in shapes:
        inputs = make_inputs(spec.family, batch, seq)
        got = run_onnxruntime(path, inputs)
        for ours, ref in zip(got, torch_outputs(model, inputs), strict=True):
            worst = max(worst, float(np.max(np.abs(ours - ref))))
    if worst > ATOL:
        raise RuntimeError(f"max abs error {worst:.3g} vs torch exceeds {ATOL}")
    return worst


def run_spec(model: torch.nn.Module, spec: Spec, workdir: Path) -> Result:
    """Export and check one combination; a failure becomes the Result's one-line reason."""
    path = workdir / f"{spec.name}.onnx"
    result = Result(spec, path)
    stage = "export"
    try:
        with _diagnostics(result.notes):
            export(model, spec, make_inputs(spec.family, *STATIC_SHAPE), path)
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
    """The config fields a compiler cares about, under family-neutral names."""
    c = model.config
    hidden = c.hidden_size
    return {
        "hf_class": type(model).__name__, "layers": c.num_hidden_layers, "hidden": hidden,
        "heads": c.num_attention_heads,
        "kv_heads": getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        "head_dim": hidden // c.num_attention_heads, "vocab": c.vocab_size,
        "intermediate": getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None),
        "max_positions": c.max_position_embeddings,
        "attn_implementation": getattr(c, "_attn_implementation", None),
        "tie_word_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
    }


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
    """Save inputs and torch outputs (dynamic exports: at CHECK_SHAPE) if under the limit."""
    import numpy as np

    batch, seq = CHECK_SHAPE if spec.seq == "dynamic" else STATIC_SHAPE
    inputs = make_inputs(spec.family, batch, seq)
    arrays = {f"input.{k}": v.numpy() for k, v in inputs.items()}
    names = OUTPUTS[spec.family]
    arrays |= {f"output.{k}": v for k, v in zip(names, torch_outputs(model, inputs), strict=True)}
    if sum(a.nbytes for a in arrays.values()) > REFERENCE_LIMIT:
        return None
    path = out / f"{spec.name}.ref.npz"
    np.savez_compressed(path, **arrays)
    return {"file": path.name, "batch": batch, "seq": seq, "atol": ATOL}


def manifest_entry(model: torch.nn.Module, result: Result, out: Path) -> dict[str, Any]:
    """Everything MANIFEST.json records about one kept file."""
    spec = result.spec
    entry: dict[str, Any] = {"name": spec.name, "family": spec.family, "exporter": spec.exporter}
    entry |= {"opset_requested": spec.opset, "seq": spec.seq, "optimize": spec.optimize}
    entry |= describe_file(out / f"{spec.name}.onnx")
    entry |= {"config": describe_config(model), "parameters": describe_parameters(model)}
    entry |= {"reference": save_reference(model, spec, out), "max_abs_err": result.max_abs_err}
    entry |= {"exporter_notes": result.notes, "versions": versions()}
    return entry


# --------------------------------------------------------------------------- driver


def select_fixtures(results: Sequence[Result]) -> list[Result]:
    """The FIXTURE_PICKS that worked: per pick, the first opset of its preference list."""
    ok = {r.spec: r for r in results if r.ok}
    chosen = []
    for family, exporter, opsets, seq, optimize in FIXTURE_PICKS:
        specs = (Spec(family, exporter, opset, seq, optimize) for opset in opsets)
        found = next((ok[s] for s in specs if s in ok), None)
        if found is not None and found not in chosen:
            chosen.append(found)
    return chosen


def plan(args: argparse.Namespace) -> list[Spec]:
    """The matrix to try (plus the fixture picks' extra combinations in --fixtures mode)."""
    specs = [
        Spec(f, e, o, s, args.optimize or e != "dynamo")
        for f in args.models for e in args.exporters for o in args.opsets for s in args.seq
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_previous(out)
    models = {family: build_model(family) for family in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for spec in plan(args):
            results.append(run_spec(models[spec.family], spec, Path(tmp)))
            _print_result(results[-1])
        kept = select_fixtures(results) if args.fixtures else [r for r in results if r.ok]
        for result in kept:
            shutil.copyfile(result.path, out / result.path.name)
        entries = [manifest_entry(models[r.spec.family], r, out) for r in kept]
    manifest = _manifest(args, entries, results)
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


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
        "weights": "random, seeded: norm scales 1+0.1*N(0,1), all other parameters 0.1*N(0,1)",
        "stripped_node_metadata": list(STRIPPED_METADATA),
        "versions": versions(), "fixtures": entries, "combinations": combos,
    }


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; lists are comma separated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the .onnx files and manifest")
    parser.add_argument("--models", type=_csv(str, FAMILIES), default=list(FAMILIES))
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: export, check, and print one line per combination."""
    args = parse_args(argv)
    manifest = run(args)
    failed = sum(not c["ok"] for c in manifest["combinations"])
    print(f"kept {len(manifest['fixtures'])} files in {args.out}; {failed} combinations failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
