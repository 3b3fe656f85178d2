"""Binding dynamic input dimensions to concrete sizes.

Sources, strongest first: `--input-shapes name:[1,128]` (whole shapes by input name), then the
named dims `--batch` / `--seq-len` (matched by common dim names such as `batch`, `seq`,
`sequence_length`), then defaults a zoo model records in its metadata (`wafer.default_dims`).
An input dim left unbound is an error that names the input, the dim and the flag to set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import onnx_ir as ir

from compiler.errors import ShapeError, UsageError

BATCH_NAMES = frozenset({"batch", "batch_size", "batchsize", "bs", "b", "n", "batch_dim"})
SEQ_NAMES = frozenset({
    "seq", "seq_len", "seqlen", "seq_length", "sequence", "sequence_length", "s", "t",
    "tokens", "num_tokens", "length", "decoder_sequence_length", "encoder_sequence_length",
})
DEFAULT_DIMS_KEY = "wafer.default_dims"
MAX_DIM = 1 << 31


@dataclass(frozen=True)
class DimRequest:
    """What the user asked for: whole input shapes and/or named dims."""

    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    batch: int | None = None
    seq_len: int | None = None


def parse_input_shapes(specs: list[str]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """['input_ids:[1,128]', 'mask:[1,128]'] -> (('input_ids', (1, 128)), ...)."""
    out = []
    for spec in specs:
        for m_spec in re.findall(r"[^\s:,]+:\[[^\]]*\]", spec) or [spec]:
            m = re.fullmatch(r"([^\s:]+):\[\s*(\d+(?:\s*,\s*\d+)*)?\s*\]", m_spec.strip())
            if not m:
                raise UsageError(
                    f"--input-shapes: cannot parse {m_spec!r}; expected name:[d0,d1,...], "
                    "e.g. input_ids:[1,128]"
                )
            dims = tuple(int(d) for d in m.group(2).split(",")) if m.group(2) else ()
            out.append((m.group(1), dims))
    return tuple(out)


def bind_dims(model: ir.Model, request: DimRequest) -> tuple[tuple[str, int], ...]:
    """Give every graph input a static shape, in place; returns the dim bindings used."""
    given = dict(request.input_shapes)
    _check_given_names(model, given)
    defaults = _metadata_defaults(model)
    bound: dict[str, int] = {}
    sites: list[_Site] = []
    for value in model.graph.inputs:
        if value.name in given:
            shape = _whole_shape(value, given[value.name])
            _record_names(value, shape, bound)
        else:
            shape = _bind_value(value, request, defaults, bound)
        sites += _sites(value, shape)
        value.shape = ir.Shape(shape)
    _check_flags_used(request, sites, given)
    return tuple(sorted(bound.items()))


@dataclass(frozen=True)
class _Site:
    """One input dim that --batch or --seq-len would bind: its role, declared and final size."""

    input: str
    axis: int
    role: str
    declared: int | str  # an int when the model fixes it, else the dim's name (maybe "")
    size: int


def _sites(value: ir.Value, shape: tuple[int, ...]) -> list[_Site]:
    out = []
    for axis, (dim, size) in enumerate(zip(value.shape or (), shape, strict=False)):
        declared = dim if isinstance(dim, int) else str(dim.value or "")
        role = _role(declared.lower() if isinstance(declared, str) else "", axis, value)
        if role is not None:
            out.append(_Site(value.name, axis, role, declared, size))
    return out


def _check_flags_used(
    req: DimRequest, sites: list[_Site], given: Mapping[str, tuple[int, ...]]
) -> None:
    """--batch/--seq-len never silently ignored: some input dim takes the role, and none of
    them ends with another size (fixed by the model, or given by --input-shapes)."""
    for role, flag, option in (("batch", req.batch, "--batch"), ("seq", req.seq_len, "--seq-len")):
        if flag is None:
            continue
        mine = [s for s in sites if s.role == role]
        if not mine:
            raise ShapeError(
                f"{option} {flag}: the model has no {'batch' if role == 'batch' else 'sequence'} "
                f"dim to bind; leave out {option} (see `wafer inspect MODEL`)"
            )
        for s in mine:
            if s.size == flag:
                continue
            if isinstance(s.declared, int):
                raise ShapeError(
                    f"{option} {flag}: the model fixes input {s.input} dim {s.axis} to "
                    f"{s.declared}; leave out {option} or export the model with a dynamic dim"
                )
            by = "--input-shapes" if s.input in given else "the model"
            raise ShapeError(
                f"input {s.input} dim {s.axis} ({s.declared or 'unnamed'}) is {s.size} by {by} "
                f"but {option} says {flag}; give one or the other"
            )


def _check_given_names(model: ir.Model, given: Mapping[str, tuple[int, ...]]) -> None:
    names = [v.name for v in model.graph.inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UsageError(
            f"--input-shapes names {', '.join(unknown)}, which the model does not have; "
            f"its inputs are: {', '.join(names)}"
        )


def _whole_shape(value: ir.Value, dims: tuple[int, ...]) -> tuple[int, ...]:
    declared = value.shape
    if declared is not None and len(declared) != len(dims):
        raise ShapeError(
            f"--input-shapes gives {value.name} rank {len(dims)}, but the model declares rank "
            f"{len(declared)} ({_show(declared)})"
        )
    for i, d in enumerate(dims):
        fixed = declared[i] if declared is not None else None
        if isinstance(fixed, int) and fixed != d:
            raise ShapeError(
                f"--input-shapes gives {value.name} dim {i} = {d}, but the model fixes it to "
                f"{fixed}"
            )
        _check_size(f"{value.name} dim {i}", d)
    return dims


def _record_names(value: ir.Value, shape: tuple[int, ...], bound: dict[str, int]) -> None:
    for dim, size in zip(value.shape or (), shape, strict=False):
        if not isinstance(dim, int) and dim.value:
            bound.setdefault(str(dim.value), size)


def _bind_value(
    value: ir.Value, req: DimRequest, defaults: Mapping[str, int], bound: dict[str, int]
) -> tuple[int, ...]:
    if value.shape is None:
        raise ShapeError(
            f"input {value.name} has no declared shape (dynamic rank); give it one with "
            f"--input-shapes {value.name}:[d0,d1,...]"
        )
    dims = []
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int):
            dims.append(dim)
            continue
        size = _lookup(str(dim.value) if dim.value else "", axis, value, req, defaults, bound)
        dims.append(size)
    return tuple(dims)


def _lookup(
    name: str, axis: int, value: ir.Value, req: DimRequest, defaults: Mapping[str, int],
    bound: dict[str, int],
) -> int:
    key = name.lower()
    role = _role(key, axis, value)
    flag = {"batch": req.batch, "seq": req.seq_len}.get(role)
    if name in bound and flag is not None and flag != bound[name]:
        raise ShapeError(
            f"dim {name!r} is {bound[name]} by --input-shapes but "
            f"{'--batch' if role == 'batch' else '--seq-len'} says {flag}; give one or the other"
        )
    size = next((s for s in (bound.get(name), flag, defaults.get(key),
                             defaults.get(role or "")) if s is not None), None)
    if size is None:
        flag = {"batch": "--batch N", "seq": "--seq-len N"}.get(role or "", "")
        how = f"{flag} or " if flag else ""
        raise ShapeError(
            f"input {value.name} dim {axis} ({name or 'unnamed'}) is dynamic; bind it with "
            f"{how}--input-shapes {value.name}:[{_example(value, axis)}]"
        )
    _check_size(f"{value.name} dim {axis} ({name or 'unnamed'})", size)
    if name:
        bound[name] = size
    return size


def _role(key: str, axis: int, value: ir.Value) -> str | None:
    if key in BATCH_NAMES:
        return "batch"
    if key in SEQ_NAMES:
        return "seq"
    token_like = value.dtype in (ir.DataType.INT64, ir.DataType.INT32) and len(value.shape) == 2
    if token_like and not key.startswith(("past", "total", "kv")):
        return ("batch", "seq")[axis]
    return None


def _metadata_defaults(model: ir.Model) -> dict[str, int]:
    text = model.metadata_props.get(DEFAULT_DIMS_KEY, "")
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {k.strip().lower(): int(v) for k, v in pairs if v.strip().isdigit()}


def _check_size(what: str, size: int) -> None:
    if not 1 <= size < MAX_DIM:
        raise ShapeError(f"{what} = {size} is out of range; sizes must be in 1..{MAX_DIM - 1}")


def _example(value: ir.Value, axis: int) -> str:
    parts = [str(d) if isinstance(d, int) else "N" for d in value.shape]
    parts[axis] = "N"
    return ",".join(parts)


def _show(shape: ir.Shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
