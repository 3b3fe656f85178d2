"""Offline exporter of tiny, real Hugging Face mixture-of-experts models to ONNX.

Three families, built from config objects with seeded random weights (no model hub):

- ``mixtral``: Mixtral-style top-2 of 4 experts in every block (softmax over all router
  logits, top-k, renormalised);
- ``qwen2moe``: Qwen2-MoE-style top-2 of 4 experts plus a shared expert behind a sigmoid
  gate, with block 0 a dense MLP (``mlp_only_layers``), so dense and MoE blocks interleave;
- ``olmoe``: OLMoE-style top-2 of 4 experts without renormalising the top-k probabilities,
  and q/k norms in attention.

transformers 5 stores the experts of a block as stacked ``[E, ...]`` parameters and picks the
forward by ``config._experts_implementation``. Two forms export:

- ``batched_mm`` through the dynamo exporter: static shapes; the router is ``Gemm`` ->
  ``Softmax`` -> ``TopK`` (then a ``ReduceSum``/``Div`` renormalisation), and each token's
  k experts' weights are fetched with ``GatherND`` from the stacked tensors and applied with a
  batched ``MatMul``: every token is computed by its k experts only, never densely;
- ``eager`` (HF's default per-expert loop) only through the TorchScript exporter, which unrolls
  the loop over the experts hit while tracing and emits ``OneHot``, ``NonZero`` and
  ``ScatterElements`` (index_add): the number of tokens an expert gets is data-dependent, so
  its tensors have no static shape (dynamo refuses to export it at all). The export fixes the
  trace shape, and ONNX Runtime runs it only on inputs whose tokens hit every expert (the
  unrolled loop splits the experts hit into as many pieces as the trace hit). wafer's frontend
  rewrites the loop into the batched form (``compiler/frontend/moeloop.py``); Mixtral and
  Qwen2-MoE are kept as fixtures (OLMoE exports and verifies the same way).

Run as a script (torch and transformers needed, e.g. the ``[hf]`` extra)::

    python tools/export_moe.py --out tests/fixtures/moe

Each kept file gets a torch reference (``NAME.ref.npz``: inputs and logits at REFERENCE_SHAPE)
and an entry in ``DIR/MANIFEST.json``. Helpers (seeded weights, exportable forward, checks) come
from ``tools/export_hf.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).parent))
import export_hf as hf  # noqa: E402

if TYPE_CHECKING:
    import torch

SEED = 0
OPSET = 18
ATOL = 1e-4
DIM_NAMES = ("batch", "seq")
TRACE_SHAPE = (2, 16)  # (batch, seq) the export is traced at
REFERENCE_SHAPE = (2, 12)  # another (batch, seq): dims stay dynamic
DEFAULT_DIMS = (1, 8)  # (batch, seq) recorded as the model's wafer.default_dims
EXPERTS, ACTIVE = 4, 2

# Tiny configs; within a family the dims are pairwise distinct so a test can tell them apart.
_ATTENTION = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "use_cache": False}
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {
        "hidden_size": 32, "intermediate_size": 24, "vocab_size": 112,
        "num_local_experts": EXPERTS, "num_experts_per_tok": ACTIVE, **_ATTENTION}),
    "qwen2moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {
        "hidden_size": 32, "intermediate_size": 56, "moe_intermediate_size": 24,
        "shared_expert_intermediate_size": 40, "vocab_size": 120, "num_experts": EXPERTS,
        "num_experts_per_tok": ACTIVE, "norm_topk_prob": False, "decoder_sparse_step": 1,
        "mlp_only_layers": [0], **_ATTENTION}),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", {
        "hidden_size": 32, "intermediate_size": 24, "vocab_size": 136, "num_experts": EXPERTS,
        "num_experts_per_tok": ACTIVE, "norm_topk_prob": False, **_ATTENTION}),
}
# (family, experts implementation, exporter, inputs): what is exported and kept. "ids" exports
# take the token ids alone (the causal mask is built inside), the form `--decode` accepts.
PICKS = (
    ("mixtral", "batched_mm", "dynamo", "ids+mask"),
    ("qwen2moe", "batched_mm", "dynamo", "ids+mask"),
    ("olmoe", "batched_mm", "dynamo", "ids+mask"),
    ("mixtral", "batched_mm", "dynamo", "ids"),
    ("qwen2moe", "batched_mm", "dynamo", "ids"),
    ("olmoe", "batched_mm", "dynamo", "ids"),
    ("mixtral", "eager", "torchscript", "ids+mask"),
    ("qwen2moe", "eager", "torchscript", "ids+mask"),
)


def fixture_name(family: str, impl: str, exporter: str, inputs: str = "ids+mask") -> str:
    return f"{family}_{impl}_{exporter}" + ("_ids" if inputs == "ids" else "")


def build_model(family: str, impl: str, inputs: str = "ids+mask") -> torch.nn.Module:
    """A tiny seeded random-weight MoE model of `family` with the experts forward `impl`."""
    torch, transformers = hf.load_hf()
    config_name, model_name, kwargs = FAMILIES[family]
    config = getattr(transformers, config_name)(**kwargs)
    config._experts_implementation = impl
    torch.manual_seed(SEED)
    model = getattr(transformers, model_name)(config)
    hf._randomize(model)
    hf._make_exportable(model, ("logits",), "nopast")
    if inputs == "ids":
        _ids_only(model)
    return model.eval()


def _ids_only(model: torch.nn.Module) -> None:
    """Give `model` a forward of the token ids alone (no attention mask input), in place."""
    base = type(model)

    def forward(self: Any, input_ids: Any) -> Any:
        return base.forward(self, input_ids, None)

    names = {"__module__": base.__module__, "__qualname__": base.__qualname__}
    model.__class__ = type(base.__name__, (base,), {"forward": forward, **names})


def make_inputs(family: str, batch: int, seq: int, inputs: str = "ids+mask") -> dict:
    """Seeded token ids and (unless `inputs` is "ids") an all-ones mask (no padding)."""
    import torch

    vocab = FAMILIES[family][2]["vocab_size"]
    generator = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    if inputs == "ids":
        return {"input_ids": ids}
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.int64)}


def export(model: torch.nn.Module, family: str, exporter: str, path: Path,
           kind: str = "ids+mask") -> None:
    """Dynamo with dynamic (batch, seq) dims, or TorchScript at TRACE_SHAPE."""
    import torch

    inputs = make_inputs(family, *TRACE_SHAPE, kind)
    names = {"input_names": list(inputs), "output_names": ["logits"]}
    if exporter == "dynamo":
        dims = {axis: torch.export.Dim(name) for axis, name in enumerate(DIM_NAMES)}
        program = torch.onnx.export(
            model, tuple(inputs.values()), dynamo=True, opset_version=OPSET, optimize=True,
            dynamic_shapes={name: dims for name in inputs}, verbose=False, **names)
        program.save(path, external_data=False)
        hf._strip_metadata(path)
        _default_dims(path)
    else:
        torch.onnx.export(model, tuple(inputs.values()), str(path), dynamo=False,
                          opset_version=OPSET, **names)


def _default_dims(path: Path) -> None:
    """Record DEFAULT_DIMS as `wafer.default_dims`, so `wafer compile FILE` needs no dim flags."""
    import onnx

    model = onnx.load(str(path))
    dims = ",".join(f"{k}={v}" for k, v in zip(DIM_NAMES, DEFAULT_DIMS, strict=True))
    onnx.helper.set_model_props(model, {"wafer.default_dims": dims})
    onnx.save(model, str(path))


def check(model: torch.nn.Module, family: str, exporter: str, path: Path,
          kind: str = "ids+mask") -> float:
    """onnxruntime against torch at the trace shape (and REFERENCE_SHAPE when dynamic)."""
    import numpy as np

    shapes = [TRACE_SHAPE] + ([REFERENCE_SHAPE] if exporter == "dynamo" else [])
    worst = 0.0
    for batch, seq in shapes:
        inputs = make_inputs(family, batch, seq, kind)
        got = hf.run_onnxruntime(path, inputs)[0]
        worst = max(worst, float(np.max(np.abs(got - hf.torch_outputs(model, inputs)[0]))))
    if worst > ATOL:
        raise RuntimeError(f"max abs error {worst:.3g} vs torch exceeds {ATOL}")
    return worst


def save_reference(model: torch.nn.Module, family: str, exporter: str, path: Path,
                   kind: str = "ids+mask") -> dict:
    import numpy as np

    batch, seq = REFERENCE_SHAPE if exporter == "dynamo" else TRACE_SHAPE
    inputs = make_inputs(family, batch, seq, kind)
    arrays = {f"input.{k}": v.numpy() for k, v in inputs.items()}
    arrays["output.logits"] = hf.torch_outputs(model, inputs)[0]
    ref = path.with_suffix(".ref.npz")
    np.savez_compressed(ref, **arrays)
    return {"file": ref.name, "batch": batch, "seq": seq, "atol": ATOL}


def export_one(family: str, impl: str, exporter: str, kind: str, out: Path) -> dict[str, Any]:
    """Export, check and describe one pick; a failure is recorded as its one-line reason."""
    model = build_model(family, impl, kind)
    path = out / f"{fixture_name(family, impl, exporter, kind)}.onnx"
    entry: dict[str, Any] = {"name": path.stem, "family": family, "experts_implementation": impl,
                             "exporter": exporter, "inputs": kind, "opset_requested": OPSET}
    notes: list[str] = []
    try:
        with hf._diagnostics(notes):
            export(model, family, exporter, path, kind)
            entry["max_abs_err"] = check(model, family, exporter, path, kind)
    except Exception as error:  # noqa: BLE001 - any exporter or runtime error is a finding
        path.unlink(missing_ok=True)
        return entry | {"failed": f"{type(error).__name__}: {hf._first_line(str(error))}"}
    entry |= hf.describe_file(path)
    entry |= {"config": _moe_config(model), "parameters": hf.describe_parameters(model)}
    entry["reference"] = save_reference(model, family, exporter, path, kind)
    return entry


def _moe_config(model: torch.nn.Module) -> dict[str, Any]:
    c = model.config
    described = hf.describe_config(model)
    experts = getattr(c, "num_local_experts", None) or c.num_experts
    shared = getattr(c, "shared_expert_intermediate_size", 0) or 0
    return described | {"experts": experts, "active": c.num_experts_per_tok,
                        "shared_experts": 1 if shared else 0,
                        "dense_layers": list(getattr(c, "mlp_only_layers", []) or [])}


def run(out: Path, picks: Sequence[tuple[str, str, str, str]]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    entries = [export_one(*pick, out) for pick in picks]
    for entry in entries:
        status = entry.get("failed") or f"ok, max abs err {entry['max_abs_err']:.2g}"
        print(f"{entry['name']}: {status}")
    manifest = {"generator": "tools/export_moe.py", "seed": SEED, "trace_shape": TRACE_SHAPE,
                "versions": hf.versions(), "fixtures": entries}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated subset of " + ", ".join(FAMILIES))
    args = parser.parse_args(argv)
    wanted = set(args.families.split(","))
    unknown = wanted - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    manifest = run(args.out, [p for p in PICKS if p[0] in wanted])
    return 1 if any("failed" in e for e in manifest["fixtures"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
