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
from compiler.placement.hubs import unit_shapes, unit_wafer

Dims = tuple[int, int]
Edge = tuple[int, int, int]
MIN_BODY = 4  # alike rectangles in a row before the chain packing applies
MAX_BOXED = 48  # rectangles at most for the boxed fallback (not a hundred MoE expert groups)
FULL = np.iinfo(np.int64).max  # the cost of a taken spot


def chain_pack(rows: int, cols: int, dims: Sequence[Dims], edges: Sequence[Edge],
               beat: int | None = None) -> tuple[Position, ...] | None:
    """The cheapest chain packing found (doubled cost, see `cost`), or None (no body, or no
    candidate places every rectangle). `beat`: only a packing cheaper than that is wanted
    (None when the cheapest is not), so the layouts stop early; applied above MAX_BOXED
    rectangles, where no boxed fallback can follow. Cached: a model's alike wafers, and
    stage 1's tries, ask again for the same instance."""
    return _chain_pack(rows, cols, tuple(map(tuple, dims)), tuple(map(tuple, edges)),
                       beat if len(dims) > MAX_BOXED else None)


@functools.lru_cache(maxsize=64)
def _chain_pack(rows: int, cols: int, dims: tuple[Dims, ...], edges: tuple[Edge, ...],
                beat: int | None = None) -> tuple[Position, ...] | None:
    layouts = all_layouts(rows, cols, dims, edges)
    found = _nearest_rest(rows, cols, dims, edges, layouts, beat)
    if found is None and len(dims) <= MAX_BOXED:  # the boxed packing only when no nearest fits
        boxed = [(cost(dims, edges, full), k, full) for k, spots in enumerate(layouts)
                 if (full := _boxed_rest(rows, cols, dims, edges, spots)) is not None]
        found = min(boxed, default=None)
    return None if found is None else found[2]


def _nearest_rest(rows: int, cols: int, dims: tuple[Dims, ...], edges: tuple[Edge, ...],
                  layouts: list[dict[int, Position]], beat: int | None = None
                  ) -> tuple[int, int, tuple[Position, ...]] | None:
    """The cheapest `_place_rest` completion over the body layouts as (cost, layout index,
    spots), the first layout on a tie, if it costs less than `beat`. With non-negative
    weights each layout stops as soon as a lower bound on its cost reaches the best so far
    (most body layouts of an MoE wafer end there): the same answer as completing every
    layout."""
    prune = all(w >= 0 for _, _, w in edges)  # then a partial packing's cost only grows
    best: tuple[int, int, tuple[Position, ...]] | None = None
    for k, spots in enumerate(layouts):
        limit = best[0] if best is not None else beat
        full = _place_rest(rows, cols, dims, edges, spots, limit if prune else None)
        if full is not None and (limit is None or cost(dims, edges, full) < limit):
            best = (cost(dims, edges, full), k, full)
    return best


def _floor(dims: Sequence[Dims], edges: Sequence[Edge], placed: dict[int, Position]) -> int:
    """A lower bound on the cost of any completion of `placed` (non-negative weights): its
    edges between placed rectangles as they are, every other edge at least the distance of
    two rectangles that touch (`_apart`)."""
    return sum(w * (_distance(placed[i], dims[i], placed[j], dims[j])
                    if i in placed and j in placed else _apart(dims[i], dims[j]))
               for i, j, w in edges)


def _apart(a: Dims, b: Dims) -> int:
    """The least doubled centre distance of two rectangles that do not overlap."""
    return min(a[0] + b[0], a[1] + b[1])


def all_layouts(rows: int, cols: int, dims: Sequence[Dims], edges: Sequence[Edge]
                ) -> list[dict[int, Position]]:
    """The body layouts to complete: a run of mixture-of-experts units' first (hubs.py), then
    the longest run of alike rectangles'."""
    body = longest_run(dims)
    return [*_unit_layouts(rows, cols, dims, edges),
            *(_body_layouts(rows, cols, dims, body) if body is not None else ())]


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
    """Positions of the body's rectangles (dict index -> spot) for every serpentine
    (`_serpentines`) of them."""
    odd = [d for i, d in enumerate(dims) if i not in body]
    for spots in _serpentines(rows, cols, dims[body.start], len(body), odd):
        yield dict(zip(body, spots, strict=True))


def _unit_layouts(rows: int, cols: int, dims: Sequence[Dims], edges: Sequence[Edge]):
    """Positions of a run of mixture-of-experts units (hubs.py: a router and its expert
    groups) for every compact unit shape and every serpentine of its boxes."""
    run = unit_wafer(dims, edges)
    if run is None:
        return
    odd = [d for i, d in enumerate(dims) if i not in run.members]
    first = run.unit(0)
    for shape in unit_shapes(dims[first.start], dims[first.start + 1], len(first) - 1):
        for boxes in _serpentines(rows, cols, shape.box, run.count, odd):
            yield {i: (r + dr, c + dc) for k, (r, c) in enumerate(boxes)
                   for i, (dr, dc) in zip(run.unit(k), shape.offsets, strict=True)}


def _serpentines(rows: int, cols: int, size: Dims, n: int, odd: Sequence[Dims]):
    """Top-left spots of n alike rectangles of `size`, in order, for every band size, band
    direction (rows or columns), corner, starting end, margin before the first band (an
    `odd` rectangle's side) and lead before the first member along it (room for odd
    rectangles beside the body's first or last member)."""
    h, w = size
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
                yield _in_grid((rows, cols), shifted, (depth, step), (flip_a, flip_b), turned)


def _snake(n: int, per_band: int, step: int, depth: int) -> list[tuple[int, int]]:
    """Top-left (across, along) offsets of n rectangles in bands of per_band, boustrophedon."""
    out = []
    for k in range(n):
        band, pos = divmod(k, per_band)
        if band % 2:
            pos = per_band - 1 - pos
        out.append((band * depth, pos * step))
    return out


def _in_grid(grid: Dims, local: list[tuple[int, int]], size: Dims,
             flips: tuple[bool, bool], turned: bool) -> list[Position]:
    """Body offsets mirrored as asked (a mirrored body sits in the far corner), as (row, col)."""
    grid_across, grid_along = grid if not turned else grid[::-1]
    depth, step = size
    spots = []
    for a, b in local:
        a = grid_across - depth - a if flips[0] else a
        b = grid_along - step - b if flips[1] else b
        spots.append((a, b) if not turned else (b, a))
    return spots


# -- the rest: each beside its placed neighbours -----------------------------------------------


def _place_rest(rows: int, cols: int, dims: Sequence[Dims], edges: Sequence[Edge],
                placed: dict[int, Position], beat: int | None = None
                ) -> tuple[Position, ...] | None:
    """Place every other rectangle, the one with most bytes to placed ones first, at its
    cheapest free spot; None when one finds no room, or (`beat`: non-negative weights) as
    soon as a lower bound on the whole packing (`_floor`: the edges between placed rectangles
    as they are, the others at their least) reaches `beat` (the packing cannot be cheaper
    than one already found: most body layouts of an MoE wafer end there)."""
    spots = dict(placed)
    so_far = _floor(dims, edges, spots)  # placed edges as they are, the others at `_apart`
    if beat is not None and so_far >= beat:
        return None
    boxes = np.zeros((len(dims), 4), dtype=np.int64)  # the placed ones first, in order
    for k, i in enumerate(spots):
        boxes[k] = _box(spots[i], dims[i])
    links = _links(len(dims), tuple(edges))
    # bytes from each unplaced rectangle to the placed ones, kept as rectangles are placed
    # (in index order: `max` keeps the first of equals, the lowest index)
    pull = {k: sum(w for j, w in links[k] if j in spots)
            for k in range(len(dims)) if k not in spots}
    while pull:
        i = max(pull, key=pull.__getitem__)
        found = _cheapest_spot(rows, cols, dims, spots, boxes[:len(spots)], i, links[i])
        if found is None:
            return None
        spot, added = found
        so_far += added - sum(w * _apart(dims[i], dims[j]) for j, w in links[i] if j in spots)
        if beat is not None and so_far >= beat:
            return None
        boxes[len(spots)] = _box(spot, dims[i])
        spots[i] = spot
        del pull[i]
        for j, w in links[i]:
            if j in pull:
                pull[j] += w
    return tuple(spots[i] for i in range(len(dims)))


@functools.lru_cache(maxsize=16)
def _links(n: int, edges: tuple[Edge, ...]) -> dict[int, list[tuple[int, int]]]:
    """Each rectangle's (other end, weight) of every edge, once per instance."""
    links: dict[int, list[tuple[int, int]]] = {i: [] for i in range(n)}
    for i, j, w in edges:
        links[i].append((j, w))
        links[j].append((i, w))
    return links


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


def _distance(a: Position, da: Dims, b: Position, db: Dims) -> int:
    """Doubled Manhattan distance between two rectangles' centres."""
    return abs(2 * a[0] + da[0] - 2 * b[0] - db[0]) + abs(2 * a[1] + da[1] - 2 * b[1] - db[1])


def _box(spot: Position, d: Dims) -> tuple[int, int, int, int]:
    return (spot[0], spot[1], spot[0] + d[0], spot[1] + d[1])


def _cheapest_spot(rows: int, cols: int, dims: Sequence[Dims], spots: dict[int, Position],
                   taken: np.ndarray, i: int, links: list[tuple[int, int]]
                   ) -> tuple[Position, int] | None:
    """The free candidate spot (`_candidates`) with the least bytes x distance to the placed
    neighbours, then the topmost, then the leftmost, and that cost (doubled, as `cost`)."""
    h, w = dims[i]
    near = [(2 * spots[j][0] + dims[j][0], 2 * spots[j][1] + dims[j][1], wt)
            for j, wt in links if j in spots]
    rs, cs = _candidates(rows, cols, h, w, taken, near)
    if len(rs) == 0 or len(cs) == 0:
        return None
    # the cost is a row part plus a column part; the flattened grid is in (row, col) order
    to = np.array(near, dtype=np.int64).reshape(-1, 3)
    along_r = np.abs(2 * rs[:, None] + h - to[None, :, 0]) @ to[:, 2]
    along_c = np.abs(2 * cs[:, None] + w - to[None, :, 1]) @ to[:, 2]
    total = along_r[:, None] + along_c[None, :]
    hit = _taken_spots(rs, cs, h, w, taken)
    total[hit] = FULL
    k = int(np.argmin(total))  # the first least: ties in grid order
    if hit.flat[k]:
        return None
    return (int(rs[k // len(cs)]), int(cs[k % len(cs)])), int(total.flat[k])


def _taken_spots(rs: np.ndarray, cs: np.ndarray, h: int, w: int, taken: np.ndarray
                 ) -> np.ndarray:
    """(rows x cols) mask of the candidate top-left spots (sorted `rs`, `cs`) where an h x w
    rectangle overlaps a placed box. The spots a box rules out are a block of consecutive
    candidate rows and columns: each box adds one to its block in a difference grid, whose
    running sums count the boxes over each spot."""
    r0 = np.searchsorted(rs, taken[:, 0] - h, side="right")
    r1 = np.searchsorted(rs, taken[:, 2], side="left")
    c0 = np.searchsorted(cs, taken[:, 1] - w, side="right")
    c1 = np.searchsorted(cs, taken[:, 3], side="left")
    width = len(cs) + 1
    corners = np.concatenate([r0 * width + c0, r1 * width + c1, r0 * width + c1,
                              r1 * width + c0])
    signs = np.repeat(np.array([1, 1, -1, -1], dtype=np.int64), len(r0))
    diff = np.bincount(corners, signs, minlength=(len(rs) + 1) * width)
    count = diff.reshape(len(rs) + 1, width).cumsum(0).cumsum(1)
    return count[:-1, :-1] > 0


def _candidates(rows: int, cols: int, h: int, w: int, taken: np.ndarray,
                near: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Top rows and left columns (sorted) whose grid holds the candidate top-left corners:
    inside the grid where the rectangle's edges meet the grid's or a placed rectangle's edges
    (every maximal free spot has such a corner), or where its centre lines up with a placed
    neighbour's (`near`: doubled centres)."""
    if rows < h or cols < w:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    centres = np.array(near, dtype=np.int64).reshape(-1, 3)
    return (_coords(rows - h, taken[:, 2], taken[:, 0] - h, (centres[:, 0] - h) // 2),
            _coords(cols - w, taken[:, 3], taken[:, 1] - w, (centres[:, 1] - w) // 2))


def _coords(last: int, *at: np.ndarray) -> np.ndarray:
    """The distinct values of `at` and the two ends, clipped to 0..last, sorted."""
    x = np.concatenate([np.array([0, last], dtype=np.int64), *at])
    np.clip(x, 0, last, out=x)
    x.sort()
    return x[np.concatenate(([True], x[1:] != x[:-1]))]
