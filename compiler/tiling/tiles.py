"""Blocked arrays: one tensor's tiles on every core of a region as one numpy array.

A tensor of shape S split by spec P over an r x c mesh is held as an array of shape
(R, C, *tile), R = r if some dim is split over rows else 1 (and C likewise): core (i, j)'s tile is
`blocked[i, j]` (a size-1 mesh axis means every core along it holds the same tile, which numpy
broadcasting makes free). Ragged last tiles are zero-padded; kernels keep the padding at zero.
`scatter` and `gather` are used only by transfer steps (loads, sends, relayouts, stores): compute
kernels see tiles, never whole tensors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from compiler.ir import storage_bytes
from compiler.tiling.layouts import Spec, base, factor, factor_parts, parts, tile_shape

AXIS = {"r": 0, "c": 1}


def mesh_shape(spec: Spec, rows: int, cols: int) -> tuple[int, int]:
    axes = {base(s) for s in spec}
    return (rows if "r" in axes else 1), (cols if "c" in axes else 1)


def _dims(spec: Spec, axis: str) -> list[int]:
    """The dims split along `axis`, a factored axis's outer factor first."""
    dims = [d for d, s in enumerate(spec) if base(s) == axis]
    return sorted(dims, key=lambda d: bool((f := factor(spec[d])) and f[1]))


def _mesh_index(spec: Spec, axis: str, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per core along a factored `axis`: the flat index of the part it holds (over the dims
    split along it, outer first) and whether it holds one (None when the axis is not
    factored: core k holds part k)."""
    fs = [factor(spec[d]) for d in _dims(spec, axis)]
    if not fs or any(f is None for f in fs):
        return None
    outer, inner = factor_parts(fs[0][0], size)
    j = np.arange(size)
    flat = np.zeros(size, dtype=np.int64)
    for _, is_inner in fs:
        flat = flat * (inner if is_inner else outer) + (j % inner if is_inner else j // inner)
    return flat, j < outer * inner


def _part_index(spec: Spec, d: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per core along dim d's axis: which of d's parts it holds, and whether it holds one."""
    j = np.arange(size)
    f = factor(spec[d])
    if f is None:
        return j, np.ones(size, dtype=bool)
    outer, inner = factor_parts(f[0], size)
    return (j % inner if f[1] else j // inner), j < outer * inner


def scatter(full: np.ndarray, spec: Spec, rows: int, cols: int) -> np.ndarray:
    """Whole tensor -> blocked array (R, C, *tile) for `spec` on an r x c mesh."""
    shape = full.shape
    tile = tile_shape(shape, spec, rows, cols)
    n = [parts(s, rows, cols) for s in spec]
    padded_shape = [t * k for t, k in zip(tile, n, strict=True)]
    if list(shape) != padded_shape:
        padded = np.zeros(padded_shape, dtype=full.dtype)
        padded[tuple(slice(0, d) for d in shape)] = full
        full = padded
    split = []
    for t, k in zip(tile, n, strict=True):
        split += [k, t]
    arr = full.reshape(split) if split else full.reshape(())
    r_dims, c_dims = _dims(spec, "r"), _dims(spec, "c")
    if split:
        arr = arr.transpose(_order(spec, r_dims, c_dims))
    lead = (math.prod(n[d] for d in r_dims), math.prod(n[d] for d in c_dims))
    arr = arr.reshape((*lead, *tile))
    for ax, axis, size in ((0, "r", rows), (1, "c", cols)):
        index = _mesh_index(spec, axis, size)
        if index is not None:
            flat, held = index
            arr = np.take(arr, np.where(held, flat, 0), axis=ax)
            if not held.all():
                keep = [1] * arr.ndim
                keep[ax] = size
                arr = np.where(held.reshape(keep), arr, np.zeros((), arr.dtype))
    return np.ascontiguousarray(arr)


def blocked_shape(shape: Sequence[int], spec: Spec, rows: int, cols: int) -> tuple[int, ...]:
    """The shape `scatter` gives a tensor of `shape` laid out as `spec` on an r x c mesh."""
    return (*mesh_shape(spec, rows, cols), *tile_shape(shape, spec, rows, cols))


def _order(spec: Spec, r_dims: list[int], c_dims: list[int]) -> list[int]:
    """Axes of the interleaved (m0, t0, m1, t1, ...) array: row blocks, column blocks, tiles."""
    rank = len(spec)
    ones = [2 * d for d in range(rank) if spec[d] is None]
    return [2 * d for d in r_dims] + [2 * d for d in c_dims] + ones + \
        [2 * d + 1 for d in range(rank)]


def gather(blocked: np.ndarray, spec: Spec, shape: Sequence[int]) -> np.ndarray:
    """Blocked array -> whole tensor (trimming padding); inverse of `scatter`."""
    rank = len(shape)
    tile = blocked.shape[2:]
    r_dims, c_dims = _dims(spec, "r"), _dims(spec, "c")
    arr = blocked if r_dims else blocked[:1]
    arr = arr if c_dims else arr[:, :1]
    sizes = {d: 1 for d in range(rank)}
    for ax, axis, dims in ((0, "r", r_dims), (1, "c", c_dims)):
        size = arr.shape[ax]
        for d in dims:
            sizes[d] = parts(spec[d], size, size)
        index = _mesh_index(spec, axis, size)
        if index is not None:  # one core per part: the first that holds it
            flat, held = index
            _, first = np.unique(np.where(held, flat, -1), return_index=True)
            arr = np.take(arr, first[1:] if (~held).any() else first, axis=ax)
    lead = [sizes[d] for d in r_dims] + [sizes[d] for d in c_dims]
    ones = [1 for d in range(rank) if spec[d] is None]
    arr = arr.reshape((*lead, *ones, *tile))
    inverse = np.argsort(_order(spec, r_dims, c_dims))
    arr = arr.transpose(inverse).reshape([sizes[d] * tile[d] for d in range(rank)])
    return arr[tuple(slice(0, d) for d in shape)] if rank else arr.reshape(())


def valid_mask(shape: Sequence[int], spec: Spec, rows: int, cols: int) -> np.ndarray | None:
    """Where a blocked array holds real elements (None when no tile is ragged); read-only,
    computed once per shape, spec and mesh."""
    return _valid_mask(tuple(shape), tuple(spec), rows, cols)


@functools.lru_cache(maxsize=4096)
def _valid_mask(shape: tuple[int, ...], spec: Spec, rows: int, cols: int) -> np.ndarray | None:
    tile = tile_shape(shape, spec, rows, cols)
    exact = all(t * parts(s, rows, cols) == d for d, t, s in zip(shape, tile, spec, strict=True))
    spare = any(factor(s) and math.prod(factor_parts(factor(s)[0], rows if base(s) == "r"
                                                     else cols)) < (rows if base(s) == "r"
                                                                    else cols) for s in spec)
    if exact and not spare:
        return None
    r, c = mesh_shape(spec, rows, cols)
    mask = np.ones((r, c, *([1] * len(tile))), dtype=bool)
    for d, (dim, t, s) in enumerate(zip(shape, tile, spec, strict=True)):
        if s is None:
            continue
        size = rows if base(s) == "r" else cols
        block, held = _part_index(spec, d, size)
        index = block[:, None] * t + np.arange(t)  # global index per (core, offset)
        sel = [1, 1] + [1] * len(tile)
        sel[AXIS[base(s)]] = size
        sel[2 + d] = t
        mask = mask & ((index < dim) & held[:, None]).reshape(sel)
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=64)
def position_cells(shape: tuple[int, ...], spec: Spec, rows: int, cols: int,
                   axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each position along `axis` of a tensor is held in its blocked array (every core
    holding a copy included): (cells, sources, starts), position p's elements being the flat
    blocked indices cells[starts[p]:starts[p + 1]], filled from the flat indices sources[...]
    of a one-position slice (the shape with `axis` of size 1). Computed once per layout, on
    an index array, so an append touches only the cells of its position."""
    count = math.prod(shape)
    index = scatter(np.arange(1, count + 1, dtype=np.int64).reshape(shape), spec, rows, cols)
    flat = index.reshape(-1)
    cells = np.flatnonzero(flat)  # 0 marks padding
    whole = flat[cells] - 1
    inner, size = math.prod(shape[axis + 1:]), shape[axis]
    position = (whole // inner) % size
    sources = (whole // (inner * size)) * inner + whole % inner
    order = np.argsort(position, kind="stable")
    starts = np.searchsorted(position[order], np.arange(size + 1))
    for arr in (cells, sources, starts):
        arr.flags.writeable = False
    return cells[order], sources[order], starts


def tile_bytes(shape: Sequence[int], spec: Spec, rows: int, cols: int, itemsize: float) -> int:
    """Bytes of one core's tile; `itemsize` may be fractional (4-bit: 0.5), packed."""
    return storage_bytes(math.prod(tile_shape(shape, spec, rows, cols)), itemsize * 8)


@functools.cache
def reshape_is_local(src: tuple[int, ...], src_spec: Spec, dst: tuple[int, ...],
                     dst_spec: Spec, rows: int, cols: int) -> bool:
    """Whether reshaping every core's tiles in place gives the tiles `dst_spec` asks for:
    checked exactly, on an index array (cached per shapes, specs and mesh)."""
    src_tile = tile_shape(src, src_spec, rows, cols)
    dst_tile = tile_shape(dst, dst_spec, rows, cols)
    if math.prod(src_tile) != math.prod(dst_tile):
        return False
    index = np.arange(math.prod(src), dtype=np.int64).reshape(src) + 1  # 0 marks padding
    blocked = scatter(index, src_spec, rows, cols)
    want = scatter(index.reshape(dst), dst_spec, rows, cols)
    moved = blocked.reshape(blocked.shape[:2] + tuple(dst_tile))
    return moved.shape == want.shape and bool(np.array_equal(moved, want))
