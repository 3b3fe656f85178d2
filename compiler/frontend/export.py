"""The original model as ONNX Runtime gets it, for `wafer verify` (compiler/verify/reference.py).

ONNX Runtime runs the *source* model, not our IR: shape arithmetic unfolded, dims dynamic.
Intermediate tensors it should return as well (`extra_outputs`, IR tensor names) are added as
untyped graph outputs; ORT infers their types. Local functions are inlined first, with the same
pass the frontend uses, so inlined value names match the IR's.

External weights are read through compiler/frontend/external.py (path containment and bounds
checks, never onnx's own loader) and serialized inline: the model is handed to ORT in memory,
so the total is limited by protobuf's 2 GB. A file with nothing to inline, widen or respell
goes as its own bytes with the extra outputs appended as a second serialized message (protobuf
merges them), so a 0.4 GB model is not parsed and serialized again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
from google.protobuf.message import EncodeError
from onnx import helper
from onnx_ir.passes.common import InlinePass

from compiler.errors import ModelError, UsageError
from compiler.frontend.external import external_ref, read_external, resolve_location
from compiler.frontend.upcast import has_bfloat16, upcast_bfloat16
from compiler.frontend.validate import (
    check_model,
    normalize_domains,
    parse_model,
    read_model_bytes,
)

PROTOBUF_LIMIT = (1 << 31) - 1  # bytes: the largest message protobuf serializes

InputSpec = tuple[str, str, tuple[int | str, ...]]  # name, element dtype, dims (params as str)


def reference_model_bytes(source: str | Path, extra_outputs: Sequence[str] = ()) -> bytes:
    """The model at `source` (a path or a zoo name), serialized for ONNX Runtime, with every
    name of `extra_outputs` that a node of the main graph computes added as a graph output.
    Names the source graph does not compute (tensors the frontend made) are left out: the
    caller sees them missing from ORT's results. Models over 2 GB raise ModelError. bfloat16
    is held as float32 (frontend/upcast.py): feed bfloat16 inputs widened to float32."""
    model, base_dir, stored = _open_proto(source)
    if stored is not None and not (model.functions or _external(model) or has_bfloat16(model)):
        data = stored + _outputs_delta(model.graph, extra_outputs)  # issue 15: not serialized
        _check_size(len(data), str(source))
        return data
    if model.functions:
        model = _inlined(model)
    external = sum(_external_bytes(t, base_dir) for t in _external(model))
    if external:  # before reading it: the skeleton's size is cheap to take
        _check_size(model.ByteSize() + external, str(source))
    if base_dir is not None:
        _inline_external(model, base_dir)
    _add_outputs(model.graph, _new_outputs(model.graph, extra_outputs))
    upcast_bfloat16(model)  # issue 15: ORT's CPU provider has almost no bfloat16 kernels
    try:  # an in-memory model is measured by serializing it, which it is anyway
        data = model.SerializeToString()
    except (ValueError, EncodeError):  # over protobuf's limit
        _check_size(PROTOBUF_LIMIT + 1, str(source))
        raise
    _check_size(len(data), str(source))
    return data


def input_specs(source: str | Path) -> list[InputSpec]:
    """(name, element dtype name, dims) of each graph input that is not an initializer; a
    dynamic dim is its dim_param (or "?" when unnamed)."""
    model, _, _ = _open_proto(source)
    weights = {t.name for t in model.graph.initializer}
    return [(v.name, _elem_name(v), _dims(v)) for v in model.graph.input if v.name not in weights]


def _open_proto(source: str | Path) -> tuple[onnx.ModelProto, Path | None, bytes | None]:
    """The model proto (external data not loaded), the directory its data lives in, and the
    file's bytes when they hold exactly that proto (None for a built-in model or a respelled
    domain)."""
    path = Path(source)
    if path.suffix == ".onnx" or path.exists():
        proto, data = _load_file(path)
        return proto, path.parent, data
    from compiler import zoo

    if str(source) in zoo.ZOO:
        return zoo.build(str(source)), None, None
    raise UsageError(f"model {str(source)!r} is neither a file nor a zoo name")


def _load_file(path: Path) -> tuple[onnx.ModelProto, bytes | None]:
    """Parsed and checked exactly as the frontend does (validate.py), external data unread;
    with the file's bytes unless normalize_domains respelled the proto."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    data = read_model_bytes(path)
    proto = parse_model(path, data)
    respelled = normalize_domains(proto)
    check_model(proto, str(path), path.parent)
    return proto, None if respelled else data


def _inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline local functions exactly as the frontend does (same value names)."""
    m = onnx_ir.from_proto(model)
    InlinePass()(m)
    return onnx_ir.to_proto(m)


def _check_size(total: int, name: str) -> None:
    if total > PROTOBUF_LIMIT:
        raise ModelError(
            f"{name}: the model is {total / 1e9:.2f} GB; verify hands ONNX Runtime the model in "
            f"memory, which protobuf limits to 2 GB: verify a smaller configuration of it"
        )


def _external(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


def _external_bytes(t: onnx.TensorProto, base_dir: Path | None) -> int:
    ref = external_ref(t)
    if ref is None:
        return 0
    if ref.length is not None:
        return ref.length
    if base_dir is None:
        return 0
    path = resolve_location(base_dir, ref)
    return max(path.stat().st_size - ref.offset, 0) if path.is_file() else 0


def _inline_external(model: onnx.ModelProto, base_dir: Path) -> None:
    """Replace every external-data reference by the bytes it points to (checked reads)."""
    for t in _external(model):
        ref = external_ref(t)
        assert ref is not None
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        data = read_external(base_dir, ref, dtype, tuple(t.dims))
        t.raw_data = np.ascontiguousarray(data).tobytes()
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _outputs_delta(graph: onnx.GraphProto, names: Sequence[str]) -> bytes:
    """A serialized ModelProto holding only the graph outputs `_add_outputs` would add:
    protobuf merges concatenated messages (repeated fields append), so file bytes + this is
    the model with those outputs, without parsing and re-serializing the weights."""
    delta = onnx.ModelProto()
    _add_outputs(delta.graph, _new_outputs(graph, names))
    return delta.SerializeToString() if delta.graph.output else b""


def _new_outputs(graph: onnx.GraphProto, names: Sequence[str]) -> list[str]:
    """Names of `names` (deduplicated, in order) a node computes that are not outputs yet."""
    computed = {o for node in graph.node for o in node.output if o}
    present = {o.name for o in graph.output}
    return [n for n in dict.fromkeys(names) if n in computed and n not in present]


def _add_outputs(graph: onnx.GraphProto, names: Sequence[str]) -> None:
    graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)  # untyped: ORT infers it


def _elem_name(v: onnx.ValueInfoProto) -> str:
    elem = v.type.tensor_type.elem_type
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name if elem else "undefined"


def _dims(v: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in v.type.tensor_type.shape.dim)
