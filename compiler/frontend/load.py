"""The frontend as one straight line: open -> inline -> bind dims -> fold -> batch MoE loops ->
check table lookups -> check ops -> infer shapes -> convert -> group layers -> check the IR."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir
from google.protobuf.message import DecodeError
from onnx_ir.passes.common import (
    InlinePass,
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
    TopologicalSortPass,
)

# call_onnx_api runs an onnx C API (here: shape inference) on a copy without large initializer
# data; private to onnx_ir, so an onnx_ir upgrade is tested by tests/test_frontend.py.
from onnx_ir.passes.common._c_api_utils import call_onnx_api
from onnxscript.optimizer import fold_constants

from compiler import ir
from compiler.errors import ModelError, ShapeError
from compiler.frontend.convert import check_element_counts, convert
from compiler.frontend.dims import DimRequest, bind_dims
from compiler.frontend.external import ExternalRef, data_available
from compiler.frontend.layers import group_layers, mark_moe
from compiler.frontend.moe import attach_moe, storage_widths
from compiler.frontend.moeloop import rewrite_moe_loops
from compiler.frontend.ops import check_control_flow, check_supported
from compiler.frontend.past import bind_past, strip_past
from compiler.frontend.quant import fold_through_contrib, infer_with_contrib
from compiler.frontend.tables import check_table_lookups
from compiler.frontend.template import Template, expand, template_for
from compiler.frontend.validate import check_model, normalize_domains, read_model


@dataclass(frozen=True)
class FrontendOptions:
    dims: DimRequest = field(default_factory=DimRequest)
    shapes_only: bool | None = None  # None: read weights when their data files exist


def load_model(source: str | Path, options: FrontendOptions | None = None, *,
               keep: bool = False) -> ir.Graph:
    """A model file path or a zoo name -> ir.Graph with static shapes, grouped into layers.
    `keep`: keep the opened model (parsed, checked and inlined, its dims not yet bound) for
    the next load of the same source, which binds a copy of it instead of opening the model
    again (a compile's decode step: the model again at one token); `drop_kept` lets it go."""
    options = options or FrontendOptions()
    check_source(source)  # before the digest reads it
    digest = source_digest(source)
    template = _template(source)
    if template is not None:  # a shape-only zoo giant: from its template model (template.py)
        small = _load(source, options, keep, f"{digest}:layers={template.small}",
                      template.small)
        return _checked(dataclasses.replace(expand(small, template), source_sha256=digest))
    return _checked(_load(source, options, keep, digest))


def _checked(graph: ir.Graph) -> ir.Graph:
    ir.check_graph(graph)
    return graph


def _template(source: str | Path) -> Template | None:
    if not zoo_shape_only(source):
        return None
    from compiler import zoo

    entry = zoo.ZOO[str(source)]
    return template_for(entry.config, entry.family)


def _load(source: str | Path, options: FrontendOptions, keep: bool, digest: str,
          layers: int | None = None) -> ir.Graph:
    """The frontend's line (the module docstring); `layers`: a zoo model built with that
    many layers (a giant's template)."""
    model, name = _opened(source, options.shapes_only is True, digest, keep, layers)
    pasts = {v.name: v for v in model.graph.inputs}
    past_axes = strip_past(model)  # a with-past export: its graph at past length 0
    dims = bind_dims(model, options.dims)
    bind_past(model, past_axes, pasts, dict(dims))
    source_weights = set(model.graph.initializers)
    fold = functools.partial(_fold, source_weights=source_weights)
    fold_through_contrib(model, fold, _INFER)
    if rewrite_moe_loops(model):  # the per-expert loop form of an MoE export, batched
        fold_through_contrib(model, fold, _INFER)
    check_table_lookups(model, dims)  # a --seq-len beyond a position table, before ORT sees it
    check_supported(model)
    typed = _infer_shapes(model, name)
    shapes_only = _shapes_only(model, options.shapes_only, zoo_shape_only(source))
    conv = convert(model, typed, shapes_only, source_weights)
    check_element_counts(conv)
    weights = {t.name for t in conv.tensors if t.is_const}
    shapes = {t.name: t.shape for t in conv.tensors}
    meta = dict(model.metadata_props)
    layers = attach_moe(meta, group_layers(conv.ops, conv.scopes, weights, shapes))
    graph = ir.Graph(
        name=name, tensors=storage_widths(meta, conv.tensors), inputs=conv.inputs,
        outputs=conv.outputs,
        layers=layers, opset=_opset(model), source=str(source), shape_only=shapes_only,
        dims=dims, source_sha256=digest,
    )
    return mark_moe(graph)


@dataclass(frozen=True)
class _Kept:
    """An opened, inlined model kept for the next load of its source (`load_model(keep=)`)."""

    source: str
    digest: str
    shapes_only: bool  # opened without weights: serves only shape-only loads
    model: onnx_ir.Model
    name: str


_KEPT: list[_Kept] = []  # at most one: the last kept model


def drop_kept() -> None:
    """Let the kept model go (a compile calls it once its decode forms are derived)."""
    _KEPT.clear()


def _opened(source: str | Path, shapes_only: bool, digest: str,
            keep: bool, layers: int | None = None) -> tuple[onnx_ir.Model, str]:
    """The model opened, its control flow checked and its functions inlined: the kept one
    when it is this source's and serves this load (taken: it is bound in place), else
    opened; with `keep`, a copy (sharing its tensors) is kept for the next load."""
    kept = _KEPT.pop() if _KEPT else None
    if (kept is not None and (kept.source, kept.digest) == (str(source), digest)
            and (shapes_only or not kept.shapes_only)):
        return kept.model, kept.name
    model, name = open_model(source, shapes_only, layers)
    check_control_flow(model)
    InlinePass()(model)
    copy = _copy(model) if keep else None
    if copy is not None:
        _KEPT.append(_Kept(str(source), digest, shapes_only, copy, name))
    return model, name


def _copy(model: onnx_ir.Model) -> onnx_ir.Model | None:
    """A copy sharing the tensors, or None when onnx_ir cannot clone the graph (its nodes out
    of order, say: the load sorts them before folding; the next load then opens again)."""
    try:
        return model.clone()
    except RuntimeError:
        return None


def check_source(source: str | Path) -> None:
    """The cheap checks, before any work (and before `compile` looks at OUT): a model file
    exists, is a regular file and can be opened; a zoo name is one (else: did you mean)."""
    path = Path(source)
    if path.suffix == ".onnx" or path.exists():
        _check_file(path)
        return
    from compiler import zoo

    if str(source) not in zoo.ZOO:
        close = difflib.get_close_matches(str(source), zoo.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelError(
            f"model {str(source)!r} is neither a file nor a zoo name{hint}; zoo models: "
            f"{', '.join(zoo.names())} (see `wafer inspect --list`)"
        )


def open_model(source: str | Path, shapes_only: bool = False,
               layers: int | None = None) -> tuple[onnx_ir.Model, str]:
    """Open a path (weights stay on disk, read lazily) or build a zoo model by name (without
    drawing its weights when `shapes_only`: they would not be read; `layers`: a shape-only
    zoo model built with that many layers, a giant's template)."""
    check_source(source)
    path = Path(source)
    if path.suffix == ".onnx" or path.exists():
        return _open_file(path), path.stem
    from compiler import zoo

    if shapes_only or zoo_shape_only(source):  # no weights: small, kept for the next load
        proto = _shape_only_zoo_proto(str(source), layers)
    else:
        proto = zoo.build(str(source))
        check_model(proto, str(source), None)
    return _deserialize(proto, None, str(source)), str(source)


@functools.lru_cache(maxsize=1)
def _shape_only_zoo_proto(name: str, layers: int | None = None) -> onnx.ModelProto:
    """A zoo model built shape-only and checked, kept: a compile loads it twice (at the prompt,
    then at one token for the decode step; 2.8 MB for Llama 3.1 405B). Never mutated: each
    load deserializes it into its own onnx_ir model."""
    from compiler import zoo

    proto = zoo.build(name, shape_only=True, layers=layers)
    check_model(proto, name, None)
    return proto


def source_digest(source: str | Path) -> str:
    """sha256 of the model file, or of a zoo entry's name and config (zoo builds are
    deterministic, so the config identifies the model)."""
    path = Path(source)
    if path.is_file():
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    from compiler import zoo

    entry = zoo.ZOO[str(source)]
    return hashlib.sha256(f"zoo:{entry.name}:{entry.config!r}".encode()).hexdigest()


def _open_file(path: Path) -> onnx_ir.Model:
    """Parse and check the file (validate.py) before onnx_ir sees it; external data stays on
    disk, its references already checked."""
    proto = read_model(path)
    normalize_domains(proto)
    check_model(proto, str(path), path.parent)
    return _deserialize(proto, path.parent, str(path))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelError(f"model {path} is not a regular file; give an .onnx file")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc.strerror})") from None


def _deserialize(proto: onnx.ModelProto, base_dir: Path | None, label: str) -> onnx_ir.Model:
    try:
        model = onnx_ir.serde.deserialize_model(proto)
    except (DecodeError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{label} is not a readable ONNX model ({type(exc).__name__}: {exc})"
                         ) from None
    if base_dir is not None:
        onnx_ir.external_data.set_base_dir(model.graph, base_dir)
    return model


def _opset(model: onnx_ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))


def _fold(model: onnx_ir.Model, source_weights: set[str]) -> None:
    """Fold the (now static) shape arithmetic; never fold weights kept in external files."""
    TopologicalSortPass()(model)  # the folder takes nodes in order
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    try:
        fold_constants(model, onnx_shape_inference=True, should_fold=_fold_policy(source_weights))
    except RuntimeError as exc:
        error = _folding_error(exc)
        if error is None:
            raise
        raise error from None
    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)


def _folding_error(exc: RuntimeError) -> ModelError | None:
    """onnxscript's partial evaluators (Gather of a Shape, Slice of a Shape, ...) assume a
    valid model and fail on one whose constant inputs are out of range for the op; the folder
    wraps that as 'Error during constant folding for node ...'. That names a node of the
    model: a ModelError. Any other RuntimeError is ours and stays what it is."""
    match = re.match(r"Error during constant folding for node '(.*)' \((.*)::(.*)\)$", str(exc))
    if match is None or exc.__cause__ is None:
        return None
    node, op, cause = match.group(1), match.group(3), exc.__cause__
    return ModelError(f"node {node} ({op}) cannot be evaluated on its constant inputs "
                      f"({type(cause).__name__}: {cause}); the model is invalid")


SMALL_CONSTANT = 1 << 16  # elements: ConstantOfShape outputs up to this size are folded


def _fold_policy(source_weights: set[str]):
    """onnxscript's should_fold hook: fold shape arithmetic, masks and rotary tables; never
    an op on a weight matrix or table of the source model (a Transpose of a Linear weight, an
    embedding lookup: parameters stay parameters), nor one that reads external data."""

    def policy(node: onnx_ir.Node) -> bool | None:
        for v in node.inputs:
            t = v.const_value if v is not None else None
            if isinstance(t, onnx_ir.ExternalTensor):
                return False
            if (t is not None and v.name in source_weights and _parameter_dtype(t.dtype)
                    and (len(t.shape) >= 2 or node.op_type == "Gather")):
                return False
        if node.op_type == "ConstantOfShape" and node.inputs[0] is not None:
            shape = node.inputs[0].const_value
            if shape is not None and math.prod(shape.numpy().tolist()) <= SMALL_CONSTANT:
                return True  # onnxscript keeps ConstantOfShape by default; masks need it folded
        return None

    return policy


# integer and float8 types a quantized model stores its weights in: a DequantizeLinear of such
# a weight stays an op (the weight keeps its stored width), it is not folded into a float table
_QUANTIZED_WEIGHT_TYPES = frozenset({
    onnx_ir.DataType.INT8, onnx_ir.DataType.UINT8, onnx_ir.DataType.INT4, onnx_ir.DataType.UINT4,
    onnx_ir.DataType.FLOAT8E4M3FN, onnx_ir.DataType.FLOAT8E4M3FNUZ, onnx_ir.DataType.FLOAT8E5M2,
    onnx_ir.DataType.FLOAT8E5M2FNUZ,
})


def _parameter_dtype(dtype: onnx_ir.DataType) -> bool:
    return dtype.is_floating_point() or dtype in _QUANTIZED_WEIGHT_TYPES


_INFER = functools.partial(
    onnx.shape_inference.infer_shapes, check_type=True, strict_mode=True, data_prop=False
)


def _infer_shapes(model: onnx_ir.Model, name: str) -> onnx.ModelProto:
    """ONNX's own shape inference, strict, on a copy without the large weights."""
    try:
        return call_onnx_api(functools.partial(infer_with_contrib, infer=_INFER), model)
    except onnx.shape_inference.InferenceError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ShapeError(f"{name}: shape inference failed: {first}") from None


def _external_tensors(model: onnx_ir.Model) -> list[tuple[str, onnx_ir.ExternalTensor]]:
    return [(v.name, v.const_value) for v in model.graph.initializers.values()
            if isinstance(v.const_value, onnx_ir.ExternalTensor)]


def _ref(name: str, t: onnx_ir.ExternalTensor) -> ExternalRef:
    return ExternalRef(name, t.location, t.offset or 0, t.length)


def zoo_shape_only(source: str | Path) -> bool:
    """Zoo entries built without weights: their external files never exist, wherever we are."""
    if Path(source).exists():
        return False
    from compiler import zoo

    entry = zoo.ZOO.get(str(source))
    return bool(entry and entry.shape_only)


def _shapes_only(model: onnx_ir.Model, requested: bool | None, zoo_shapes: bool) -> bool:
    if zoo_shapes:
        return True
    if requested is not None:
        return requested
    return any(not data_available(Path(t.base_dir or "."), _ref(name, t))
               for name, t in _external_tensors(model))
