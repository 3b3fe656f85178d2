"""Lookups into constant tables, checked once the dims are bound and folded.

A learned position table (GPT-2's `wpe`, BERT's `position_embeddings`) has one row per position
the model was trained for. Its Gather reads rows 0..seq-1, indices that after binding the dims
are constants (a folded Range) or a Range not folded because it is large. A sequence longer than
the table would only fail later in ONNX Runtime's Gather; here it is an error naming the table,
its length and the dim to shorten.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_ir

from compiler.errors import ShapeError
from compiler.frontend.dims import SEQ_NAMES

# ops that pass index values through unchanged (only their layout changes)
_PASS_THROUGH = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Expand", "Flatten", "Identity",
                           "Cast"})


def check_table_lookups(model: onnx_ir.Model, dims: Sequence[tuple[str, int]]) -> None:
    """Every Gather from a constant table with indices known now stays inside the table."""
    for node in model.graph:
        if node.op_type != "Gather" or len(node.inputs) < 2:
            continue
        data, indices = node.inputs[0], node.inputs[1]
        rows = _table_rows(data, node)
        span = _index_span(indices) if rows is not None and indices is not None else None
        if rows is None or span is None or data is None:
            continue
        low, high = span
        if high >= rows or low < -rows:
            raise ShapeError(_message(node, data.name, rows, high if high >= rows else low, dims))
        longer = _clamped_positions(indices, rows, dims)
        if longer:  # BERT slices a [0..rows) buffer to seq: clamped, it would fail later
            raise ShapeError(_message(node, data.name, rows, longer[1] - 1, dims))


def _clamped_positions(indices: onnx_ir.Value, rows: int,
                       dims: Sequence[tuple[str, int]]) -> tuple[str, int] | None:
    """A constant lookup of every row 0..rows-1 in order, while a sequence dim is longer than
    that: a slice of a position buffer that ONNX's Slice clamped to the buffer's length."""
    longer = [(k, v) for k, v in dims if k.lower() in SEQ_NAMES and v > rows]
    t = indices.const_value
    if not longer or t is None:
        return None
    array = t.numpy()
    whole = np.issubdtype(array.dtype, np.integer) and array.shape[-1:] == (rows,)
    return longer[0] if whole and bool((array.reshape(-1, rows) == np.arange(rows)).all()) \
        else None


def _table_rows(data: onnx_ir.Value | None, node: onnx_ir.Node) -> int | None:
    """Rows along the gathered axis of a constant (initializer) table, else None."""
    if data is None or not data.is_initializer() or data.shape is None:
        return None
    attr = node.attributes.get("axis")
    axis = attr.as_int() if attr is not None else 0
    shape = data.shape
    if not -len(shape) <= axis < len(shape):
        return None
    size = shape[axis]
    return size if isinstance(size, int) else None


def _index_span(value: onnx_ir.Value) -> tuple[int, int] | None:
    """(smallest, largest) index value when known now, else None."""
    for _ in range(16):  # a short chain of layout ops back to a constant or a Range
        if value.const_value is not None:
            return _const_span(value.const_value)
        node = value.producer()
        if node is None:
            return None
        if node.op_type == "Range":
            return _range_span(node)
        if node.op_type not in _PASS_THROUGH or not node.inputs or node.inputs[0] is None:
            return None
        value = node.inputs[0]
    return None


def _const_span(tensor: onnx_ir.TensorProtocol) -> tuple[int, int] | None:
    array = tensor.numpy()
    if array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        return None
    return int(array.min()), int(array.max())


def _range_span(node: onnx_ir.Node) -> tuple[int, int] | None:
    consts = [v.const_value if v is not None else None for v in node.inputs[:3]]
    if len(consts) != 3 or any(c is None or c.size != 1 for c in consts):
        return None
    start, limit, delta = (c.numpy().reshape(()).item() for c in consts)  # type: ignore[union-attr]
    if not all(isinstance(x, int) for x in (start, limit, delta)) or delta == 0:
        return None
    count = max(math.ceil((limit - start) / delta), 0)
    if count == 0:
        return None
    last = start + (count - 1) * delta
    return min(start, last), max(start, last)


def _message(node: onnx_ir.Node, table: str, rows: int, index: int,
             dims: Sequence[tuple[str, int]]) -> str:
    bound = ", ".join(f"{k}={v}" for k, v in dims) or "static"
    msg = (f"node {node.name or '<unnamed>'} (Gather) needs row {index} of {table}, a table of "
           f"{rows} rows (dims {bound})")
    longer = [k for k, v in dims if v >= index + 1 and v > rows]
    if longer:
        how = f"--seq-len {rows} or less" if longer[0].lower() in SEQ_NAMES else \
            f"--input-shapes with {longer[0]} at most {rows}"
        return (f"{msg}: {longer[0]}={index + 1} is longer than the table; the model handles at "
                f"most {rows} positions: use {how}")
    return f"{msg}: the index is out of range; the model is invalid for these dims"
