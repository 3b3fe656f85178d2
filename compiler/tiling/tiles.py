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
from compiler.tiling.layouts import Spec, tile_shape

AXIS = {"r": 0, "c": 1}


def mesh_shape(spec: Spec, rows: int, cols: int) -> tuple[int, int]:
    return (rows if "r" in spec else 1), (cols if "c" in spec else 1)


def scatter(full: np.ndarray, spec: Spec, rows: int, cols: int) -> np.ndarray:
    """Whole tensor -> blocked array (R, C, *tile) for `spec` on an r x c mesh."""
    shape = full.shape
    tile = tile_shape(shape, spec, rows, cols)
    size = {"r": rows, "c": cols, None: 1}
    padded_shape = [t * size[s] for t, s in zip(tile, spec, strict=True)]
    if list(shape) != padded_shape:
        padded = np.zeros(padded_shape, dtype=full.dtype)
        padded[tuple(slice(0, d) for d in shape)] = full
        full = padded
    split = []
    for t, s in zip(tile, spec, strict=True):
        split += [size[s], t]
    arr = full.reshape(split) if split else full.reshape(())
    order = _order(spec)
    arr = arr.transpose(order) if split else arr
    r, c = mesh_shape(spec, rows, cols)
    return np.ascontiguousarray(arr).reshape((r, c, *tile))


def _order(spec: Spec) -> list[int]:
    """Axes of the interleaved (m0, t0, m1, t1, ...) array: row blocks, column blocks, tiles."""
    rank = len(spec)
    r = [2 * d for d in range(rank) if spec[d] == "r"]
    c = [2 * d for d in range(rank) if spec[d] == "c"]
    ones = [2 * d for d in range(rank) if spec[d] is None]
    return r + c + ones + [2 * d + 1 for d in range(rank)]


def gather(blocked: np.ndarray, spec: Spec, shape: Sequence[int]) -> np.ndarray:
    """Blocked array -> whole tensor (trimming padding); inverse of `scatter`."""
    rank = len(shape)
    tile = blocked.shape[2:]
    r_dims = [d for d in range(rank) if spec[d] == "r"]
    c_dims = [d for d in range(rank) if spec[d] == "c"]
    R = blocked.shape[0] if r_dims else 1
    C = blocked.shape[1] if c_dims else 1
    arr = blocked[:R, :C] if not r_dims or not c_dims else blocked
    if not r_dims:
        arr = arr[:1]
    if not c_dims:
        arr = arr[:, :1]
    # back to interleaved order: for each dim (m, t)
    sizes = {d: (R if d in r_dims else C if d in c_dims else 1) for d in range(rank)}
    lead = [sizes[d] for d in r_dims] + [sizes[d] for d in c_dims]
    ones = [1 for d in range(rank) if spec[d] is None]
    arr = arr.reshape((*lead, *ones, *tile))
    order = _order(spec)
    inverse = np.argsort(order)
    arr = arr.transpose(inverse).reshape([sizes[d] * tile[d] for d in range(rank)])
    return arr[tuple(slice(0, d) for d in shape)] if rank else arr.reshape(())


def valid_mask(shape: Sequence[int], spec: Spec, rows: int, cols: int) -> np.ndarray | None:
    """Where a blocked array holds real elements (None when no tile is ragged)."""
    tile = tile_shape(shape, spec, rows, cols)
    size = {"r": rows, "c": cols, None: 1}
    if all(t * size[s] == d for d, t, s in zip(shape, tile, spec, strict=True)):
        return None
    r, c = mesh_shape(spec, rows, cols)
    mask = np.ones((r, c, *([1] * len(tile))), dtype=bool)
    for d, (dim, t, s) in enumerate(zip(shape, tile, spec, strict=True)):
        if s is None:
            continue
        block = np.arange(size[s]).reshape((-1, 1) if s == "r" else (1, -1))
        index = block[..., None] * t + np.arange(t)  # global index per (block, offset)
        sel = [1, 1] + [1] * len(tile)
        sel[AXIS[s]] = size[s]
        sel[2 + d] = t
        mask = mask & (index < dim).reshape(sel)
    return mask


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
