"""ONNX ModelProto (shapes inferred, shape arithmetic folded) -> IR tensors and ops.

Every tensor must have a static shape by now; one that does not is named in the error. Weights
are read (memory-mapped when external) unless the graph is converted shape-only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
from onnx import helper, numpy_helper

from compiler import ir
from compiler.errors import ModelError, ShapeError, WaferWarning
from compiler.frontend.external import ExternalRef, read_external
from compiler.frontend.quant import mark_stored_widths
from compiler.vocab import VIEW_OPS

_DTYPES = {
    onnx.TensorProto.FLOAT: ir.DType.FLOAT32, onnx.TensorProto.FLOAT16: ir.DType.FLOAT16,
    onnx.TensorProto.BFLOAT16: ir.DType.BFLOAT16, onnx.TensorProto.DOUBLE: ir.DType.FLOAT64,
    onnx.TensorProto.INT8: ir.DType.INT8, onnx.TensorProto.UINT8: ir.DType.UINT8,
    onnx.TensorProto.INT16: ir.DType.INT16, onnx.TensorProto.INT32: ir.DType.INT32,
    onnx.TensorProto.INT64: ir.DType.INT64, onnx.TensorProto.BOOL: ir.DType.BOOL,
    # quantized storage types (held by the executor as int8/uint8 and float32)
    onnx.TensorProto.INT4: ir.DType.INT4, onnx.TensorProto.UINT4: ir.DType.UINT4,
    onnx.TensorProto.FLOAT8E4M3FN: ir.DType.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ: ir.DType.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2: ir.DType.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ: ir.DType.FLOAT8E5M2FNUZ,
}
_ONNX_OF = {v: k for k, v in _DTYPES.items()}
# numpy holds quantized storage types widened (ml_dtypes arrays do not compute in numpy)
_HELD_AS = {"int4": np.int8, "uint4": np.uint8}


@dataclass(frozen=True)
class Converted:
    tensors: tuple[ir.Tensor, ...]
    ops: tuple[ir.Op, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scopes: tuple[tuple[str, ...], ...]  # per op: naming hints for layer grouping


def convert(
    model: onnx_ir.Model, typed: onnx.ModelProto, shapes_only: bool, source_weights: set[str]
) -> Converted:
    """`model` gives the weights, `typed` (its shape-inferred skeleton) the nodes and types;
    initializers not in `source_weights` were made by folding and become CONSTANTs."""
    tensors = {
        v.name: _weight(v, shapes_only, v.name in source_weights)
        for v in model.graph.initializers.values()
    }
    inputs = tuple(v.name for v in model.graph.inputs if v.name not in tensors)
    g = typed.graph
    types = {v.name: v for v in [*g.input, *g.value_info, *g.output]}
    for name in inputs:
        tensors[name] = _value(types.get(name), ir.TensorKind.INPUT, "graph input", name)
    ops = tuple(_op(n, i, types) for i, n in enumerate(g.node))
    for node, op in zip(g.node, ops, strict=True):
        for out in op.outputs:
            if out:
                tensors[out] = _value(types.get(out), ir.TensorKind.ACTIVATION, node, out)
                _check_storage_only(node, tensors[out])
    scopes = tuple(_scope_hints(n) for n in g.node)
    outputs = tuple(v.name for v in g.output)
    marked = mark_stored_widths(list(tensors.values()), ops)
    return Converted(tuple(marked), ops, inputs, outputs, scopes)


# ops that may write a quantized storage type (4-bit integers, float8): the quantizers, and views
_WRITES_STORAGE = frozenset({"QuantizeLinear"}) | VIEW_OPS


def _check_storage_only(node: onnx.NodeProto, t: ir.Tensor) -> None:
    """4-bit integers and float8 are storage types: held in weights and written by
    QuantizeLinear (and views of those), read by DequantizeLinear; any other op making one (a
    Cast to float8) is not supported."""
    if t.dtype.is_quantized and node.op_type not in _WRITES_STORAGE:
        name = onnx.TensorProto.DataType.Name(_ONNX_OF[t.dtype])
        raise ModelError(f"output {t.name} of node {node.name} ({node.op_type}): element type "
                         f"{name} is not supported (4-bit and 8-bit float values only as "
                         "QuantizeLinear outputs and DequantizeLinear inputs)")


def dtype_of(elem_type: int, where: str) -> ir.DType:
    try:
        return _DTYPES[elem_type]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(elem_type)
        raise ModelError(f"{where}: element type {name} is not supported") from None


def _weight(value: onnx_ir.Value, shapes_only: bool, from_source: bool) -> ir.Tensor:
    where = f"initializer {value.name}"
    tensor = value.const_value
    dtype = dtype_of(int(tensor.dtype), where)
    shape = tuple(int(d) for d in tensor.shape)
    keep = not shapes_only or _index_like(tensor, dtype, shape)
    data = _weight_data(value.name, tensor, shape) if keep else None
    if data is not None and from_source:
        warn_nonfinite(value.name, data)
    kind = ir.TensorKind.WEIGHT if from_source else ir.TensorKind.CONSTANT
    return ir.Tensor(value.name, shape, dtype, kind, data)


_INDEX_NUMEL = 64  # axes, shapes, k, depths: a few integers


def _index_like(tensor, dtype: ir.DType, shape: tuple[int, ...]) -> bool:
    """A small integer constant held in the model (axes, a shape, TopK's k): kept even in a
    shape-only graph, since layouts read it (which axes a ReduceSum reduces is not a matter of
    shapes when a dim is 1, as at one decode token)."""
    return (not dtype.is_float and math.prod(shape) <= _INDEX_NUMEL
            and not isinstance(tensor, onnx_ir.ExternalTensor))


def _weight_data(name: str, tensor, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(tensor, onnx_ir.ExternalTensor):
        ref = ExternalRef(name, tensor.location, tensor.offset or 0, tensor.length)
        np_dtype = helper.tensor_dtype_to_np_dtype(int(tensor.dtype))
        return read_external(Path(tensor.base_dir or "."), ref, np.dtype(np_dtype), shape)
    try:
        return held(tensor.numpy())
    except Exception as exc:  # onnx_ir raises several types for malformed tensors
        raise ModelError(f"initializer {name}: data does not match its shape ({exc})") from None


def held(arr: np.ndarray) -> np.ndarray:
    """An array as the executor holds it: 4-bit integers widened to int8/uint8, 8-bit floats
    to float32 (exact: every float8 value is a float32)."""
    name = arr.dtype.name
    if name in _HELD_AS:
        return arr.astype(_HELD_AS[name])
    if name.startswith("float8"):
        return arr.astype(np.float32)
    return arr


def check_element_counts(conv: Converted) -> None:
    """ONNX shape inference takes a constant Reshape shape as given; a shape whose element
    count differs from the input's is an invalid model (ONNX Runtime refuses it when it runs)."""
    shapes = {t.name: t.shape for t in conv.tensors}
    for op in conv.ops:
        if op.kind not in VIEW_OPS or not op.inputs or not op.outputs[0]:  # size-preserving
            continue
        src, dst = shapes[op.inputs[0]], shapes[op.outputs[0]]
        if math.prod(src) != math.prod(dst):
            raise ShapeError(
                f"node {op.name} ({op.kind}): input {op.inputs[0]} has {math.prod(src):,} "
                f"elements ({list(src)}) but output shape {list(dst)} holds "
                f"{math.prod(dst):,}; the model is invalid")


CHUNK = 1 << 22  # elements scanned at a time: a weight file is read in pieces, never mapped


def warn_nonfinite(name: str, data: np.ndarray) -> None:
    """A WaferWarning when a weight of the source model holds NaN or Inf: the compile goes on
    (masks in Constant nodes legitimately hold -inf and are not checked), but outputs that use
    the weight will not be finite."""
    if data.dtype.kind != "f" and "float" not in data.dtype.name:
        return
    nan = inf = 0
    for chunk in _chunks(data):
        bad = ~np.isfinite(chunk)
        if bad.any():
            n = int(np.isnan(chunk).sum())
            nan, inf = nan + n, inf + int(bad.sum()) - n
    if nan or inf:
        warnings.warn(f"initializer {name} holds {nan:,} NaN and {inf:,} Inf of {data.size:,} "
                      "values; outputs computed from it will not be finite (check the export or "
                      "checkpoint)", WaferWarning, stacklevel=2)


def _chunks(data: np.ndarray):
    """float32 pieces of `data`; a memory-mapped file is read with plain reads, so scanning it
    does not map the whole file into the process (peak memory stays one chunk)."""
    if isinstance(data, np.memmap) and data.filename:
        with open(data.filename, "rb") as f:
            f.seek(data.offset)
            for start in range(0, data.size, CHUNK):
                count = min(CHUNK, data.size - start)
                yield np.fromfile(f, data.dtype, count).astype(np.float32, copy=False)
        return
    flat = data.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        yield np.asarray(flat[start:start + CHUNK], dtype=np.float32)


def _value(vi: onnx.ValueInfoProto | None, kind: ir.TensorKind, node, name: str = "") -> ir.Tensor:
    where = (f"{node} {name}" if isinstance(node, str) else
             f"output {name} of node {node.name} ({node.op_type})")
    if vi is None or not vi.type.HasField("tensor_type"):
        raise ShapeError(f"{where}: shape inference found no tensor type")
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        raise ShapeError(f"{where}: rank unknown after shape inference")
    dims = []
    for i, d in enumerate(tt.shape.dim):
        if not d.HasField("dim_value"):
            raise ShapeError(f"{where}: dim {i} is unknown after binding the input dims and "
                             f"folding constants ({d.dim_param or 'no name'}): its size depends "
                             "on values known only at run time; wafer needs static shapes")
        dims.append(int(d.dim_value))
    return ir.Tensor(vi.name, tuple(dims), dtype_of(tt.elem_type, where), kind)


def _op(node: onnx.NodeProto, index: int, types: dict) -> ir.Op:
    name = node.name or f"{node.op_type}_{index}"
    attrs = tuple((a.name, _attr(node, a)) for a in node.attribute)
    if node.op_type == "QuantizeLinear" and not any(k == "output_dtype" for k, _ in attrs):
        # the element type it writes, explicit: int4 and float8 are held as int8 / float32
        vi = types.get(node.output[0])
        if vi is not None and vi.type.HasField("tensor_type"):
            attrs = (*attrs, ("output_dtype", int(vi.type.tensor_type.elem_type)))
    return ir.Op(name, node.op_type, tuple(node.input), tuple(node.output), attrs, node.domain)


def _attr(node: onnx.NodeProto, a: onnx.AttributeProto) -> ir.AttrValue:
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise ModelError(f"node {node.name} ({node.op_type}): subgraph attribute {a.name}")
    v = helper.get_attribute_value(a)
    if isinstance(v, onnx.TensorProto):
        arr = numpy_helper.to_array(v)
        return tuple(arr.reshape(-1).tolist()) if arr.size != 1 else arr.reshape(-1)[0].item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list):
        return tuple(x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v)
    return v


def _scope_hints(node: onnx.NodeProto) -> tuple[str, ...]:
    """Names that say where a node sits in the source module tree, most specific first."""
    meta = {p.key: p.value for p in node.metadata_props}
    hints = [meta[k] for k in ("pkg.torch.onnx.name_scopes", "namespace") if k in meta]
    return (*hints, node.name)
