"""Inputs for `wafer verify`: seeded random inputs valid for the model (token ids within the
vocabulary they index, masks all ones), or an --inputs .npz checked against the model's inputs;
expected outputs from a --load-outputs .npz."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from ml_dtypes import bfloat16

from compiler import ir
from compiler.errors import WaferError
from compiler.vocab import PASS_THROUGH_OPS

FALLBACK_VOCAB = 2  # integer inputs whose embedding table is not found: ids in [0, 2)


class InputsError(WaferError):
    """An --inputs file that is unreadable or does not match the model's inputs."""


def random_inputs(graph: ir.Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs valid for the model at the graph's bound shapes: token ids within the
    vocabulary of the table they index, masks all ones, token types zeros, positions arange,
    floats N(0, 1). Each input has its own stream (seed, name), so adding one changes no other."""
    out = {}
    for name in graph.inputs:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        out[name] = _random_input(graph, graph.tensor(name), rng)
    return out


def _random_input(graph: ir.Graph, t: ir.Tensor, rng: np.random.Generator) -> np.ndarray:
    dtype, key = _np_dtype(t), t.name.lower()
    if "mask" in key:
        return np.ones(t.shape, dtype)
    if t.dtype is ir.DType.BOOL:
        return rng.random(t.shape) < 0.5
    if t.dtype.is_float:
        return rng.standard_normal(t.shape).astype(dtype)
    if "token_type" in key or "segment" in key:
        return np.zeros(t.shape, dtype)
    extent = index_extent(graph, t.name)
    if "position" in key and t.shape:
        ids = np.broadcast_to(np.arange(t.shape[-1]), t.shape)
        return (ids % extent if extent else ids).astype(dtype)
    return rng.integers(0, extent or FALLBACK_VOCAB, t.shape).astype(dtype)


def index_extent(graph: ir.Graph, name: str) -> int | None:
    """The size of the table axis `name` indexes: the Gather whose indices are `name` (through
    casts and reshapes), e.g. the vocabulary of an embedding; None if there is none."""
    frontier, seen = [name], set()
    while frontier:
        t = frontier.pop(0)
        seen.add(t)
        for op in graph.consumers.get(t, ()):
            if op.kind == "Gather" and len(op.inputs) > 1 and op.inputs[1] == t:
                shape = graph.tensor(op.inputs[0]).shape
                return shape[int(op.attr("axis", 0) or 0) % len(shape)]
            if op.kind in PASS_THROUGH_OPS and op.inputs[0] == t:
                frontier += [o for o in op.outputs if o and o not in seen]
    return None


def _np_dtype(t: ir.Tensor) -> np.dtype:
    if t.dtype is ir.DType.BFLOAT16:  # ml_dtypes' numpy dtype, as onnx and ORT take it
        return np.dtype(bfloat16)
    return np.dtype(t.dtype.value)


def load_inputs(path: str | Path, graph: ir.Graph) -> dict[str, np.ndarray]:
    """Inputs from an .npz keyed by input name (or `input.NAME`, as --save-outputs writes
    them); `output.*` and `reference.*` entries and the model's output names are ignored (so one
    file can hold inputs and expected outputs). Shapes and dtypes must match."""
    arrays = _read_npz(Path(path))
    named = {k.removeprefix("input."): v for k, v in arrays.items()
             if not k.startswith(("output.", "reference.")) and k not in graph.outputs}
    unknown = sorted(set(named) - set(graph.inputs))
    missing = [n for n in graph.inputs if n not in named]
    if unknown or missing:
        what = f"has no {', '.join(missing)}" if missing else f"names {', '.join(unknown)}"
        raise InputsError(f"{path} {what}; the model's inputs are: {', '.join(graph.inputs)}")
    named = {n: _bfloat16_view(graph.tensor(n), named[n]) for n in graph.inputs}
    for name in graph.inputs:
        _check_input(path, graph.tensor(name), named[name])
    return {n: named[n] for n in graph.inputs}


def _bfloat16_view(t: ir.Tensor, a: np.ndarray) -> np.ndarray:
    """np.savez writes a bfloat16 array as 2-byte raw records ('V2'): read them back as it."""
    if t.dtype is ir.DType.BFLOAT16 and a.dtype == np.dtype("V2"):
        return a.view(bfloat16)
    return a


def load_expected(path: str | Path, graph: ir.Graph) -> dict[str, np.ndarray]:
    """Expected outputs from an .npz keyed by output name (or `reference.NAME`, so a
    --save-outputs file reads back as ORT's outputs of that run); `input.*` and `output.*`
    entries and the model's input names are ignored. Every other name must be an output."""
    arrays = _read_npz(Path(path), "outputs")
    named = {k.removeprefix("reference."): v for k, v in arrays.items()
             if not k.startswith(("input.", "output.")) and k not in graph.inputs}
    unknown = sorted(set(named) - set(graph.outputs))
    if unknown or not named:
        what = (f"names {', '.join(unknown)}, which is not an output of {graph.name}" if unknown
                else "holds no outputs")
        raise InputsError(f"{path} {what}; its outputs are: {', '.join(graph.outputs)}")
    return named


def _read_npz(path: Path, what: str = "inputs") -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise InputsError(f"{path}: no such {what} file") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise InputsError(f"{path}: not a readable .npz archive ({type(exc).__name__})") from None


def _check_input(path: str | Path, t: ir.Tensor, a: np.ndarray) -> None:
    if a.shape != t.shape:
        raise InputsError(
            f"{path}: {t.name} has shape {_dims(a.shape)} but the model was compiled for "
            f"{_dims(t.shape)}; compile again with --input-shapes {t.name}:{_dims(a.shape)}")
    if a.dtype != _np_dtype(t):
        raise InputsError(f"{path}: {t.name} is {a.dtype}, the model takes {t.dtype.value}")


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"

