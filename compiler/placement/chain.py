"""A chain-aware packing hint: the repeating unit snaked, the odd rectangles beside their links.

A transformer on a wafer is a chain: embedding, N alike blocks, a norm, a head. Shelf packing
in block order breaks as soon as one odd rectangle (a 1172 x 1 norm strip, a wide embedding)
sets a band's height, and the order-blind skyline that then packs the wafer leaves the chain's
neighbours far apart. Here the longest run of alike rectangles (the body) is laid out first as a
serpentine of bands (rows or, turned, columns) in a corner of the grid, every band count and
corner tried; then each other rectangle, most-connected first, goes to the free spot nearest
(bytes x centre distance) to its placed neighbours: beside one of them, or at a corner point of
the free space. The cheapest complete packing is the hint; CP-SAT refines it (cpsat/wafer.py).

Pure geometry on (rows, cols) rectangles with weighted edges (i, j, weight), like geometry.py:
nothing here knows blocks or options.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import product

import numpy as np

from compiler.placement.geometry import Position, any_pack

Dims = tuple[int, int]
Edge = tuple[int, int, int]
MIN_BODY = 4  # alike rectangles in a row before the chain packing applies
MAX_BOXED = 48  # rectangles at most for the boxed fallback (not a hundred MoE expert groups)


def chain_pack(rows: int, cols: int, dims: Sequence[Dims],
               edges: Sequence[Edge]) -> tuple[Position, ...] | None:
    """The cheapest chain packing found (doubled cost, see `cost`), or None (no body, or no
    candidate places every rectangle). Cached: a model's alike wafers, and stage 1's tries,
    ask again for the same instance."""
    return _chain_pack(rows, cols, tuple(map(tuple, dims)), tuple(map(tuple, edges)))


@functools.lru_cache(maxsize=64)
def _chain_pack(rows: int, cols: int, dims: tuple[Dims, ...],
                edges: tuple[Edge, ...]) -> tuple[Position, ...] | None:
    body = longest_run(dims)
    if body is None:
        return None
    best: tuple[int, tuple[Position, ...]] | None = None
    layouts = list(_body_layouts(rows, cols, dims, body))
    tries = (_place_rest, _boxed_rest) if len(dims) <= MAX_BOXED else (_place_rest,)
    for rest in tries:  # the boxed packing only when no nearest one fits
        for spots in layouts:
            full = rest(rows, cols, dims, edges, spots)
            if full is None:
                continue
            c = cost(dims, edges, full)
            if best is None or c < best[0]:
                best = (c, full)
        if best is not None:
            break
    return None if best is None else best[1]


def longest_run(dims: Sequence[Dims]) -> range | None:
    """Indices of the longest run of consecutive equal dims, if at least MIN_BODY long."""
    best, start = range(0), 0
    for i in range(1, len(dims) + 1):
        if i == len(dims) or dims[i] != dims[start]:
            if i - start > len(best):
                best = range(start, i)
            start = i
    return best if len(best) >= MIN_BODY else None


def cost(dims: Sequence[Dims], edges: Sequence[Edge], spots: Sequence[Position]) -> int:
    """Sum of weight x doubled Manhattan distance between centres (also stage 2's
    `layout_cost`)."""
    total = 0
    for i, j, w in edges:
        (ri, ci), (hi, wi) = spots[i], dims[i]
        (rj, cj), (hj, wj) = spots[j], dims[j]
        total += w * (abs(2 * ri + hi - 2 * rj - hj) + abs(2 * ci + wi - 2 * cj - wj))
    return total


# -- the body: a serpentine of bands in a corner -----------------------------------------------


def _body_layouts(rows: int, cols: int, dims: Sequence[Dims], body: range):
    """Positions of the body's rectangles (dict index -> spot) for every band size, band
    direction (rows or columns), corner, starting end, margin before the first band and lead
    before the first member along it (room for odd rectangles beside the body's first or
    last member)."""
    h, w = dims[body.start]
    n = len(body)
    odd = [d for i, d in enumerate(dims) if i not in body]
    for turned in (False, True):
        along, across = (cols, rows) if not turned else (rows, cols)
        step, depth = (w, h) if not turned else (h, w)
        margins = sorted({0, *(d[0] if not turned else d[1] for d in odd)})
        for per_band in range(1, min(n, along // step) + 1):
            bands = -(-n // per_band)
            if per_band < n and bands > 1 and (per_band - 1) * step < along // 2:
                continue  # narrow bands: many turns, never the cheapest
            local = _snake(n, per_band, step, depth)  # (across, along) offsets
            # the body at the start of its bands, or at their end: the slack before its first
            # member then holds the odd rectangles that lead into it (a model's embedding)
            leads = sorted({0, along - per_band * step})
            for margin, lead, flip_a, flip_b in product(margins, leads, (False, True),
                                                        (False, True)):
                if margin + bands * depth > across:
                    continue
                shifted = [(a + margin, b + lead) for a, b in local]
                yield _in_grid((rows, cols), body, shifted, (depth, step), (flip_a, flip_b),
                               turned)


def _snake(n: int, per_band: int, step: int, depth: int) -> list[tuple[int, int]]:
    """Top-left (across, along) offsets of n rectangles in bands of per_band, boustrophedon."""
    out = []
    for k in range(n):
        band, pos = divmod(k, per_band)
        if band % 2:
            pos = per_band - 1 - pos
        out.append((band * depth, pos * step))
    return out


def _in_grid(grid: Dims, body: range, local: list[tuple[int, int]], size: Dims,
             flips: tuple[bool, bool], turned: bool) -> dict[int, Position]:
    """Body offsets mirrored as asked (a mirrored body sits in the far corner), as (row, col)."""
    grid_across, grid_along = grid if not turned else grid[::-1]
    depth, step = size
    spots = {}
    for i, (a, b) in zip(body, local, strict=True):
        a = grid_across - depth - a if flips[0] else a
        b = grid_along - step - b if flips[1] else b
        spots[i] = (a, b) if not turned else (b, a)
    return spots


# -- the rest: each beside its placed neighbours -----------------------------------------------


def _place_rest(rows: int, cols: int, dims: Sequence[Dims], edges: Sequence[Edge],
                placed: dict[int, Position]) -> tuple[Position, ...] | None:
    """Place every other rectangle, the one with most bytes to placed ones first, at its
    cheapest free spot; None when one finds no room."""
    spots = dict(placed)
    taken = np.array([_box(spots[i], dims[i]) for i in spots], dtype=np.int64).reshape(-1, 4)
    links: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(dims))}
    for i, j, w in edges:
        links[i].append((j, w))
        links[j].append((i, w))
    while len(spots) < len(dims):
        i = max((k for k in range(len(dims)) if k not in spots),
                key=lambda k: (sum(w for j, w in links[k] if j in spots), -k))
        spot = _cheapest_spot(rows, cols, dims, spots, taken, i, links[i])
        if spot is None:
            return None
        spots[i] = spot
        taken = np.vstack([taken, np.array(_box(spot, dims[i]), dtype=np.int64)])
    return tuple(spots[i] for i in range(len(dims)))


def _boxed_rest(rows: int, cols: int, dims: Sequence[Dims], edges: Sequence[Edge],
                placed: dict[int, Position]) -> tuple[Position, ...] | None:
    """Every other rectangle greedy-packed (geometry.any_pack, in block order) into the free
    band beside the body, when the body spans the grid's width or height: a wafer so full that
    placing each beside its links fragments the space (Llama 3 8B at 8k context, whose KV-
    streaming half-width blocks and odd layers fill the rows a stack of full-width blocks
    leaves)."""
    top = min(placed[i][0] for i in placed)
    left = min(placed[i][1] for i in placed)
    bottom = max(placed[i][0] + dims[i][0] for i in placed)
    right = max(placed[i][1] + dims[i][1] for i in placed)
    rest = [i for i in range(len(dims)) if i not in placed]
    if (left, right) == (0, cols):  # (origin, size) of the larger free band
        band = max(((0, 0), (top, cols)), ((bottom, 0), (rows - bottom, cols)),
                   key=lambda b: b[1][0])
    elif (top, bottom) == (0, rows):
        band = max(((0, 0), (rows, left)), ((0, right), (rows, cols - right)),
                   key=lambda b: b[1][1])
    else:
        return None
    (r0, c0), (h, w) = band
    packed = _band_pack(h, w, tuple(dims[i] for i in rest)) if h > 0 and w > 0 else None
    if packed is None:
        return None
    spots = dict(placed)
    spots.update({i: (r0 + r, c0 + c) for i, (r, c) in zip(rest, packed, strict=True)})
    return tuple(spots[i] for i in range(len(dims)))


@functools.lru_cache(maxsize=256)
def _band_pack(rows: int, cols: int, dims: tuple[Dims, ...]) -> tuple[Position, ...] | None:
    """any_pack, once per band: many body layouts leave the same free band."""
    return any_pack(rows, cols, dims)


def _box(spot: Position, d: Dims) -> tuple[int, int, int, int]:
    return (spot[0], spot[1], spot[0] + d[0], spot[1] + d[1])


def _cheapest_spot(rows: int, cols: int, dims: Sequence[Dims], spots: dict[int, Position],
                   taken: np.ndarray, i: int, links: list[tuple[int, int]]) -> Position | None:
    h, w = dims[i]
    near = [(2 * spots[j][0] + dims[j][0], 2 * spots[j][1] + dims[j][1])
            for j, _ in links if j in spots]
    cand = _candidates(rows, cols, h, w, taken, near)
    if len(cand) == 0:
        return None
    r, c = cand[:, 0], cand[:, 1]
    free = ~((r[:, None] < taken[None, :, 2]) & (taken[None, :, 0] < r[:, None] + h)
             & (c[:, None] < taken[None, :, 3]) & (taken[None, :, 1] < c[:, None] + w)).any(1)
    cand = cand[free]
    if len(cand) == 0:
        return None
    total = np.zeros(len(cand), dtype=np.int64)
    for j, wt in links:
        if j in spots:
            (rj, cj), (hj, wj) = spots[j], dims[j]
            total += wt * (np.abs(2 * cand[:, 0] + h - 2 * rj - hj)
                           + np.abs(2 * cand[:, 1] + w - 2 * cj - wj))
    k = int(np.lexsort((cand[:, 1], cand[:, 0], total))[0])
    return int(cand[k, 0]), int(cand[k, 1])


def _candidates(rows: int, cols: int, h: int, w: int, taken: np.ndarray,
                near: list[tuple[int, int]]) -> np.ndarray:
    """Top-left corners inside the grid where the rectangle's edges meet the grid's or a placed
    rectangle's edges (every maximal free spot has such a corner), or where its centre lines
    up with a placed neighbour's (`near`: doubled centres)."""
    centre_r = [(r2 - h) // 2 for r2, _ in near]
    centre_c = [(c2 - w) // 2 for _, c2 in near]
    rs = np.unique(np.clip(np.concatenate([[0, rows - h], taken[:, 2], taken[:, 0] - h,
                                           centre_r]), 0, rows - h)).astype(np.int64)
    cs = np.unique(np.clip(np.concatenate([[0, cols - w], taken[:, 3], taken[:, 1] - w,
                                           centre_c]), 0, cols - w)).astype(np.int64)
    if rows < h or cols < w:
        return np.zeros((0, 2), dtype=np.int64)
    grid = np.stack(np.meshgrid(rs, cs, indexing="ij"), -1).reshape(-1, 2)
    return grid.astype(np.int64)
