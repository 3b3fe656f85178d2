"""Banded serpentine hints: the body of alike rectangles in bands of chosen sizes, the odd
rectangles at the grid's sides or beside their links (issue 18).

A dense transformer on a wafer is a chain: odd rectangles (embedding), a body of alike blocks,
odd rectangles again (final norm, head). chain.py snakes the body in bands of one size from a
corner; when odd rectangles span the whole grid (Llama 3 8B at 128k context: a 1172 x 1 norm
and a 1172 x 21 head beside 32 blocks of 293 x 69, four bands that fill the height) that leaves
the embedding far from the first block. Here the rectangles that span the grid's height (or,
turned, its width) go to its sides, the chain's nearest innermost; the body fills the rest in
bands whose first may be shorter (room for the leading odd rectangles before the first block),
each band starting under the end of the one before; the other odd rectangles go to the free
spot beside a placed link that costs least. Every band size, direction, side and vertical
offset is tried and the cheapest complete packing kept. Pure geometry, like geometry.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import product

from compiler.placement.chain import cost, longest_run
from compiler.placement.geometry import Position

Dims = tuple[int, int]
Edge = tuple[int, int, int]
Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)
MAX_ODD = 48  # rectangles outside the body at most (each variant places them one by one)


def band_pack(rows: int, cols: int, dims: Sequence[Dims], edges: Sequence[Edge]
              ) -> tuple[Position, ...] | None:
    """The cheapest banded packing (doubled cost, `cost`), or None when there is no body of
    chain.MIN_BODY alike rectangles, more than MAX_ODD others, or no variant places every
    rectangle. Tried as is and turned sideways (columns as bands)."""
    best: tuple[int, tuple[Position, ...]] | None = None
    for turned in (False, True):
        grid = (cols, rows) if turned else (rows, cols)
        local = [d[::-1] for d in dims] if turned else list(dims)
        for spots in _variants(*grid, local, edges):
            out = tuple((c, r) for r, c in spots) if turned else spots
            found = cost(dims, edges, out)
            if best is None or found < best[0]:
                best = (found, out)
    return None if best is None else best[1]


def _variants(rows: int, cols: int, dims: Sequence[Dims], edges: Sequence[Edge]
              ) -> Iterator[tuple[Position, ...]]:
    """Complete packings: full-height odd rectangles at the sides (leading ones left,
    trailing ones right, or the other way), the body in bands, the rest beside links."""
    body = longest_run(dims)
    if body is None or len(dims) - len(body) > MAX_ODD:
        return
    h, w = dims[body.start]
    if h > rows or w > cols:
        return
    full = [i for i in range(len(dims)) if i not in body and dims[i][0] == rows]
    gaps = _gaps(dims, full, body)
    for trailing_right, (gap_before, gap_after) in product((True, False), gaps):
        walls = _walls(cols, dims, full, body, trailing_right)
        if walls is None:
            continue
        placed, left, right = walls
        left, right = ((left + gap_before, right - gap_after) if trailing_right
                       else (left + gap_after, right - gap_before))
        per = (right - left) // w if right > left else 0
        if per < 1:
            continue
        for first, rtl in product(range(1, min(per, len(body)) + 1), (False, True)):
            for top in _tops(rows, h, len(body), per, first):
                spots = _body(body, (h, w), per, first, rtl, top, (left, right))
                if spots[body.stop - 1][0] + h > rows:
                    continue
                found = _rest(rows, cols, dims, edges, {**placed, **spots})
                if found is not None:
                    yield found


def _gaps(dims: Sequence[Dims], full: Sequence[int], body: range) -> list[tuple[int, int]]:
    """(before, after): columns left free between the body and the wall of full-height
    rectangles on each side, for the other odd rectangles the chain passes on its way there
    (gpt2-small's 586 x 9 norm between its last block and its 1172 x 17 head), or none."""
    wall_before = max((i for i in full if i < body.start), default=-1)
    wall_after = min((i for i in full if i >= body.stop), default=len(dims))
    before = sum(dims[i][1] for i in range(wall_before + 1, body.start)) if wall_before >= 0 \
        else 0
    after = sum(dims[i][1] for i in range(body.stop, wall_after)) if wall_after < len(dims) \
        else 0
    return sorted({(0, 0), (before, 0), (0, after), (before, after)})


def _walls(cols: int, dims: Sequence[Dims], full: Sequence[int], body: range,
           trailing_right: bool) -> tuple[dict[int, Position], int, int] | None:
    """Full-height rectangles at the sides, those after the body on one side (nearest the
    body first, innermost) and those before it on the other: their spots and the free
    columns [left, right) between."""
    before = [i for i in full if i < body.start]
    after = [i for i in full if i >= body.stop]
    near_side, far_side = (after, before[::-1]) if trailing_right else (before[::-1], after)
    placed: dict[int, Position] = {}
    width_right = sum(dims[i][1] for i in near_side)
    x = cols - width_right
    for i in near_side:  # the right wall, inner first: inner is leftmost
        placed[i] = (0, x)
        x += dims[i][1]
    right = cols - width_right
    width_left = sum(dims[i][1] for i in far_side)
    x = width_left
    for i in far_side:  # inner first: inner is rightmost
        x -= dims[i][1]
        placed[i] = (0, x)
    left = width_left
    if left >= right:
        return None
    return placed, left, right


def _tops(rows: int, h: int, n: int, per: int, first: int) -> tuple[int, ...]:
    """Row offsets of the body's first band: top, centred, bottom (room allowing)."""
    bands = 1 + -(-(n - first) // per)
    slack = max(0, rows - bands * h)
    return tuple(sorted({0, slack // 2, slack}))


def _body(body: range, size: Dims, per: int, first: int, rtl: bool, top: int,
          span: tuple[int, int]) -> dict[int, Position]:
    """The body's spots: a first band of `first` rectangles ending at the span's far side
    (its free start holds what leads into the body), then bands of `per`, boustrophedon,
    each starting under the end of the band before (moved in as far as its length needs)."""
    h, w = size
    left, right = span
    out: dict[int, Position] = {}
    k, band, count = 0, 0, first
    last = right - w if rtl else left  # a virtual end before the first band
    while k < len(body):
        count = min(count, len(body) - k)
        going_left = rtl == (band % 2 == 0)
        if band == 0:
            start = left + (count - 1) * w if going_left else right - count * w
        elif going_left:
            start = min(max(last, left + (count - 1) * w), right - w)
        else:
            start = max(min(last, right - count * w), left)
        step = -w if going_left else w
        for m in range(count):
            out[body.start + k + m] = (top + band * h, start + m * step)
        last = start + (count - 1) * step
        k, band, count = k + count, band + 1, per
    return out


def _rest(rows: int, cols: int, dims: Sequence[Dims], edges: Sequence[Edge],
          placed: dict[int, Position]) -> tuple[Position, ...] | None:
    """Each unplaced rectangle, nearest the body first along the chain, at the free spot
    beside its placed links that costs least; None if one finds no spot."""
    spots = dict(placed)
    links: dict[int, list[tuple[int, int]]] = {}
    for i, j, wt in edges:
        links.setdefault(i, []).append((j, wt))
        links.setdefault(j, []).append((i, wt))
    todo = [i for i in range(len(dims)) if i not in spots]
    while todo:
        ready = [i for i in todo if any(j in spots for j, _ in links.get(i, ()))] or todo[:1]
        i = ready[0]
        spot = _best_spot(rows, cols, dims, spots, i, links.get(i, []))
        if spot is None:
            return None
        spots[i] = spot
        todo.remove(i)
    return tuple(spots[i] for i in range(len(dims)))


def _best_spot(rows: int, cols: int, dims: Sequence[Dims], spots: dict[int, Position],
               i: int, links: Sequence[tuple[int, int]]) -> Position | None:
    """The free spot for rectangle i, touching a placed link (centred on it, or flush with
    an end of its side) or at a corner of the grid, that costs least with its placed links."""
    h, w = dims[i]
    boxes = [_box(spots[j], dims[j]) for j in spots]
    tries: list[Position] = [(0, 0), (0, cols - w), (rows - h, 0), (rows - h, cols - w)]
    for j, _ in links:
        if j in spots:
            tries.extend(_beside(_box(spots[j], dims[j]), h, w))
    best: tuple[int, Position] | None = None
    for r, c in tries:
        r, c = max(0, min(r, rows - h)), max(0, min(c, cols - w))
        mine = (r, c, r + h, c + w)
        if any(_overlap(mine, b) for b in boxes):
            continue
        price = sum(wt * (abs(2 * r + h - 2 * spots[j][0] - dims[j][0])
                          + abs(2 * c + w - 2 * spots[j][1] - dims[j][1]))
                    for j, wt in links if j in spots)
        if best is None or (price, (r, c)) < best:
            best = (price, (r, c))
    return None if best is None else best[1]


def _beside(b: Box, h: int, w: int) -> list[Position]:
    """Spots touching box b on each side: centred on it and flush with either end."""
    top, left, bottom, right = b
    mid_r, mid_c = (top + bottom - h) // 2, (left + right - w) // 2
    out = []
    for r in (mid_r, top, bottom - h):
        out += [(r, left - w), (r, right)]
    for c in (mid_c, left, right - w):
        out += [(top - h, c), (bottom, c)]
    return out


def _box(spot: Position, d: Dims) -> Box:
    return spot[0], spot[1], spot[0] + d[0], spot[1] + d[1]


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
