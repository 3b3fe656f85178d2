"""A KV cache that streams: the decode step of a region whose residency streams its KV cache
(`stream_kv`, `stream_all`) keeps the cache off-chip and reads it in chunks along the key axis.

The tiling priced such a region with the cache passing through a per-core double buffer of
`STREAM_BUFFER_BYTES`, so a chunk is as many keys as fill one half of it on the fullest core
(a whole number of the key axis' split, at most `MAX_CHUNKS` chunks per cache). Each step:

1. the step's own K / V is written back to the off-chip cache at position t (a `store` step
   with `op_kind` `append`, writing the cache), then
2. every chunk of the cache is loaded (a `load` step of the chunk tensor `<cache>.chunk<i>`,
   after the write-back: it holds row t), read by its attention MatMul and freed after it.

The decode graph reads the chunks by its own ops: a scores MatMul `Q x K` (keys on the output's
last axis) becomes one MatMul per chunk and a Concat of their scores; a `P x V` MatMul (keys the
contraction) a Split of P, one MatMul per chunk and the sum of their products (Adds). A cache
behind a grouped-query repeat has the repeat run once per chunk. A cache read any other way (by
an `Attention` op) streams as one chunk: the whole per-core tile passes through SRAM at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from compiler import ir
from compiler.placement.problem import Residency
from compiler.schedule.build import Region, Schedule
from compiler.target import Target
from compiler.tiling.candidates import STREAM_BUFFER_BYTES
from compiler.tiling.layouts import Spec
from compiler.tiling.tiles import tile_bytes

CHUNK_BYTES = STREAM_BUFFER_BYTES // 2  # one half of the double buffer: the chunk in use
MAX_CHUNKS = 64  # per cache: beyond that a chunk is larger than the buffer's half
STREAMING = frozenset({Residency.STREAM_KV.value, Residency.STREAM_ALL.value})


@dataclass(frozen=True)
class StreamChunk:
    cache: str  # the off-chip KV cache
    name: str  # the tensor the decode graph reads (the cache itself when it is one chunk)
    axis: int  # the key axis
    start: int  # key positions [start, stop) of the cache
    stop: int


def streamed_regions(s: Schedule) -> frozenset[str]:
    return frozenset(r for r, mode in s.residency if mode in STREAMING)


def plan_chunks(g: ir.Graph, caches, specs: Mapping[str, Spec], s: Schedule,
                target: Target) -> tuple[StreamChunk, ...]:
    """The chunks of every cache whose region streams it (`caches`: the DecodeGraph's KVCache
    values; `specs`: each cache's layout as its reader wants it)."""
    streamed = streamed_regions(s)
    out: list[StreamChunk] = []
    for c in caches:
        if c.layer not in streamed:
            continue
        t = g.tensor(c.name)
        keys = _chunk_keys(t, c.axis, specs.get(c.name), s.region(c.layer), target)
        if keys >= t.shape[c.axis] or _reader(g, c.name, c.axis) is None:
            out.append(StreamChunk(c.name, c.name, c.axis, 0, t.shape[c.axis]))
            continue
        out += [StreamChunk(c.name, f"{c.name}.chunk{i}", c.axis, a, min(a + keys,
                                                                          t.shape[c.axis]))
                for i, a in enumerate(range(0, t.shape[c.axis], keys))]
    return tuple(out)


def _chunk_keys(t: ir.Tensor, axis: int, spec: Spec | None, region: Region,
                target: Target) -> int:
    """Keys per chunk: a whole number of the key axis' split whose fullest core's tile fills at
    most half the stream buffer (at least one key per core; at most MAX_CHUNKS chunks)."""
    spec = spec if spec is not None else (None,) * len(t.shape)
    unit = {"r": region.rows, "c": region.cols}.get(spec[axis] or "", 1)
    shape = tuple(unit if i == axis else d for i, d in enumerate(t.shape))
    per_unit = tile_bytes(shape, spec, region.rows, region.cols, target.element_bytes(t))
    keys = unit * max(1, CHUNK_BYTES // max(per_unit, 1))
    return max(keys, math.ceil(t.shape[axis] / MAX_CHUNKS))


_REPEAT_OPS = frozenset({"Transpose", "Reshape", "Expand", "Unsqueeze"})


@dataclass(frozen=True)
class _Path:
    """How a cache reaches its attention MatMul: through a grouped-query repeat (`chain`, each
    op's output with its key axis) or directly (no chain)."""

    chain: tuple[tuple[ir.Op, int], ...]
    matmul: ir.Op
    operand: str  # what the MatMul reads (the cache, or the repeat's output)


def _reader(g: ir.Graph, cache: str, axis: int) -> _Path | None:
    """The MatMul reading `cache` (directly, or through a grouped-query repeat) as its second
    operand with the keys on its last axis (scores) or its contraction axis (P x V); None for
    any other reader."""
    keys = g.tensor(cache).shape[axis]
    chain: list[tuple[ir.Op, int]] = []
    name = cache
    while True:
        users = g.consumers.get(name, ())
        if len(users) != 1:
            return None
        op = users[0]
        if op.kind == "MatMul":
            break
        if op.kind not in _REPEAT_OPS or op.inputs[0] != name:
            return None
        name = op.outputs[0]
        at = [i for i, d in enumerate(g.tensor(name).shape) if d == keys]
        if len(at) != 1:
            return None
        chain.append((op, at[0]))
    rank = len(g.tensor(name).shape)
    key = chain[-1][1] if chain else axis
    if op.inputs[1] != name or rank < 2 or key not in (rank - 1, rank - 2):
        return None
    return _Path(tuple(chain), op, name)


def apply_chunks(g: ir.Graph, chunks: tuple[StreamChunk, ...]) -> ir.Graph:
    """`g` reading each chunked cache by chunks (see the module's docstring)."""
    by_cache: dict[str, list[StreamChunk]] = {}
    for ch in chunks:
        if ch.name != ch.cache:
            by_cache.setdefault(ch.cache, []).append(ch)
    if not by_cache:
        return g
    tensors = dict(g.tensor_map)
    replace: dict[str, list[ir.Op]] = {}
    for cache, parts in by_cache.items():
        path = _reader(g, cache, parts[0].axis)
        if path is None:
            raise ValueError(f"{cache} is not read by a MatMul along its key axis")
        replace.update(_chunked(path, tensors, cache, parts))
        del tensors[cache]
    layers = tuple(dataclasses.replace(la, ops=tuple(
        new for op in la.ops for new in replace.get(op.name, [op]))) for la in g.layers)
    inputs = tuple(n for name in g.inputs for n in (
        [ch.name for ch in by_cache[name]] if name in by_cache else [name]))
    used = {n for la in layers for op in la.ops for n in (*op.inputs, *op.outputs) if n}
    kept = tuple(t for name, t in tensors.items() if name in used or name in inputs
                 or name in g.outputs)
    out = dataclasses.replace(g, layers=layers, inputs=inputs, tensors=kept)
    ir.check_graph(out)
    return out


def _chunked(path: _Path, tensors: dict[str, ir.Tensor], cache: str,
             parts: list[StreamChunk]) -> dict[str, list[ir.Op]]:
    """Replacement ops, all where the MatMul was (its repeat's ops, if any, go there): per
    chunk the repeat and the chunk's MatMul, so one chunk is live at a time."""
    whole = tensors[cache]
    per_chunk: list[list[ir.Op]] = []
    operands = []
    for i, ch in enumerate(parts):
        n = ch.stop - ch.start
        tensors[ch.name] = ir.Tensor(ch.name, _with(whole.shape, ch.axis, n), whole.dtype,
                                     ir.TensorKind.INPUT)
        name, ops = ch.name, []
        for op, key in path.chain:
            out = tensors[op.outputs[0]]
            new = f"{out.name}.chunk{i}"
            tensors[new] = dataclasses.replace(out, name=new, shape=_with(out.shape, key, n))
            ops.append(dataclasses.replace(op, name=f"{op.name}.chunk{i}",
                                           inputs=(name, *op.inputs[1:]), outputs=(new,)))
            name = new
        per_chunk.append(ops)
        operands.append(name)
    mm, y = path.matmul, tensors[path.matmul.outputs[0]]
    rank = len(tensors[path.operand].shape)
    key = path.chain[-1][1] if path.chain else parts[0].axis
    sizes = [ch.stop - ch.start for ch in parts]
    build = _scores if key == rank - 1 else _values
    out: dict[str, list[ir.Op]] = {op.name: [] for op, _ in path.chain}
    out[mm.name] = build(mm, mm.inputs[0], y, tensors, operands, sizes, per_chunk)
    for op, _ in path.chain:
        del tensors[op.outputs[0]]
    return out


def _with(shape: tuple[int, ...], axis: int, n: int) -> tuple[int, ...]:
    return tuple(n if i == axis else d for i, d in enumerate(shape))


def _scores(op: ir.Op, q: str, y: ir.Tensor, tensors, operands: list[str],
            sizes: list[int], before: list[list[ir.Op]]) -> list[ir.Op]:
    """Q x K over chunks of K's keys: one MatMul per chunk, their scores concatenated."""
    ops, outs = [], []
    last = len(y.shape) - 1
    for i, (k, n) in enumerate(zip(operands, sizes, strict=True)):
        name = f"{y.name}.chunk{i}"
        tensors[name] = ir.Tensor(name, _with(y.shape, last, n), y.dtype,
                                  ir.TensorKind.ACTIVATION)
        ops += [*before[i], ir.Op(f"{op.name}.chunk{i}", "MatMul", (q, k), (name,))]
        outs.append(name)
    return [*ops, ir.Op(f"{op.name}.concat", "Concat", tuple(outs), (y.name,), (("axis", last),))]


def _values(op: ir.Op, p: str, y: ir.Tensor, tensors, operands: list[str],
            sizes: list[int], before: list[list[ir.Op]]) -> list[ir.Op]:
    """P x V over chunks of V's keys: P split along its keys, one MatMul per chunk, the partial
    products added up."""
    pt = tensors[p]
    split = f"{op.name}.chunk_sizes"
    tensors[split] = ir.Tensor(split, (len(sizes),), ir.DType.INT64, ir.TensorKind.CONSTANT,
                               np.asarray(sizes, np.int64))
    pieces = []
    for i, n in enumerate(sizes):
        name = f"{p}.chunk{i}"
        tensors[name] = ir.Tensor(name, _with(pt.shape, len(pt.shape) - 1, n), pt.dtype,
                                  ir.TensorKind.ACTIVATION)
        pieces.append(name)
    ops = [ir.Op(f"{op.name}.split", "Split", (p, split), tuple(pieces),
                 (("axis", len(pt.shape) - 1),))]
    acc = ""
    for i, v in enumerate(operands):
        name = f"{y.name}.chunk{i}"
        tensors[name] = dataclasses.replace(y, name=name)
        ops += [*before[i], ir.Op(f"{op.name}.chunk{i}", "MatMul", (pieces[i], v), (name,))]
        if i:
            out = y.name if i == len(operands) - 1 else f"{y.name}.sum{i}"
            if out != y.name:
                tensors[out] = dataclasses.replace(y, name=out)
            ops.append(ir.Op(f"{op.name}.add{i}", "Add", (acc, name), (out,)))
            name = out
        acc = name
    return ops
