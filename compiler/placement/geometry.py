"""Packing geometry on a bare rows x cols grid: shelves, skyline, strips, contiguous ranges.

Nothing here knows blocks or options: rectangles are (rows, cols) pairs and the answers are
top-left corners (row, col) in input order, or None when the rectangles do not fit. The greedy
placers (greedy.py) and CP-SAT's hints (cpsat/) build on these.

Shelf packing: rectangles in order into horizontal bands ("shelves"): a band's height is its
tallest rectangle, and a rectangle that does not fit the band's remaining width starts a new
band below. Row-major (first-fit) fills every band left to right; snake (serpentine) alternates
left to right and right to left (boustrophedon) and starts each band under the end of the last,
so consecutive rectangles touch.

Strip packing is the exact one stage 1 can count: rectangles of one class (width, and how many
stack in the grid's height) share full-height strips ("columns"; "rows" turned sideways), so a
wafer's rectangles pack whenever their classes' strips fit its width. Shapes that tile the wafer
(e.g. 1172 x 36 on a 1172 x 762 grid) pack this way without waste where area-first choices of
squarer shapes leave unusable gaps.

Contiguous ranges (`balanced_split`, `min_max_split`): items in order cut into at most `parts`
ranges, the one-dimensional packing of a block chain onto wafers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Position = tuple[int, int]  # (row, col) of a rectangle's top-left core
StripClass = tuple[int, int]  # (width, stack), see strip_class


# -- shelf packing -----------------------------------------------------------------------------


@dataclass
class Band:
    """One horizontal band: its top row, height (tallest member) and members' (rows, cols)."""

    top: int
    height: int
    dims: list[tuple[int, int]] = field(default_factory=list)

    @property
    def width(self) -> int:
        return sum(w for _, w in self.dims)


@dataclass
class Shelf:
    """Band packer on a rows x cols grid. `add` commits a rectangle to the current band or a new
    one below (False, and no change, if neither has room); `positions` lays the bands out."""

    rows: int
    cols: int
    bands: list[Band] = field(default_factory=list)

    def add(self, h: int, w: int) -> bool:
        band = self.bands[-1] if self.bands else None
        if band is not None and h <= self.rows - band.top and band.width + w <= self.cols:
            band.dims.append((h, w))
            band.height = max(band.height, h)
            return True
        top = band.top + band.height if band is not None else 0
        if top + h > self.rows or w > self.cols:
            return False
        self.bands.append(Band(top, h, [(h, w)]))
        return True

    def positions(self, *, snake: bool) -> list[Position]:
        """Top-left corners in the order added. Snake: bands alternate direction, and each band
        starts under the end of the band before, as near as the grid allows."""
        out: list[Position] = []
        left, right = 0, 0  # columns spanned by the band before
        for k, band in enumerate(self.bands):
            width = band.width
            if snake and k % 2 == 1:  # right to left, ending under the last rectangle
                right = min(self.cols, max(right, width))
                left = right - width
                out.extend(self._run(band, right, rtl=True))
            else:
                left = max(0, min(left, self.cols - width)) if snake else 0
                right = left + width
                out.extend(self._run(band, left, rtl=False))
        return out

    @staticmethod
    def _run(band: Band, edge: int, *, rtl: bool) -> list[Position]:
        spots, cursor = [], edge
        for _, w in band.dims:
            if rtl:
                cursor -= w
            spots.append((band.top, cursor))
            if not rtl:
                cursor += w
        return spots


def shelf_pack(
    rows: int, cols: int, dims: Sequence[tuple[int, int]], *, snake: bool
) -> tuple[Position, ...] | None:
    """Top-left corners for rectangles (rows, cols) packed in order, or None if they don't fit."""
    shelf = Shelf(rows, cols)
    if not all(shelf.add(h, w) for h, w in dims):
        return None
    return tuple(shelf.positions(snake=snake))


def skyline_pack(
    rows: int, cols: int, dims: Sequence[tuple[int, int]]
) -> tuple[Position, ...] | None:
    """Bottom-left skyline packing, tallest rectangles first (see skyline_shapes)."""
    found = skyline_shapes(rows, cols, [[d] for d in dims])
    return None if found is None else found[0]


def skyline_shapes(
    rows: int, cols: int, shapes: Sequence[Sequence[tuple[int, int]]]
) -> tuple[tuple[Position, ...], tuple[int, ...]] | None:
    """Skyline packing where each rectangle may take any of its shapes (rows, cols): tallest
    (then widest) first, each where its top ends lowest (then leftmost, then its earlier
    shape). Ignores block order (a packing of last resort, for hints). Positions and shape
    indices in input order, or None if some rectangle finds no room."""
    level = [0] * cols  # first free row under each column
    spots: dict[int, tuple[Position, int]] = {}
    for i in sorted(range(len(shapes)), key=lambda i: (*min((-h, -w) for h, w in shapes[i]), i)):
        fits = [(y + h, x, s, y) for s, (h, w) in enumerate(shapes[i])
                for x, y in _skyline_spots(level, w) if y + h <= rows]
        if not fits:
            return None
        top, x, s, y = min(fits)
        level[x:x + shapes[i][s][1]] = [top] * shapes[i][s][1]
        spots[i] = ((y, x), s)
    return (tuple(spots[i][0] for i in range(len(shapes))),
            tuple(spots[i][1] for i in range(len(shapes))))


def _skyline_spots(level: Sequence[int], w: int) -> list[tuple[int, int]]:
    """(col, row) where a w-wide rectangle can rest on the skyline, at each step of it."""
    starts = [x for x in range(len(level) - w + 1) if x == 0 or level[x] != level[x - 1]]
    return [(x, max(level[x:x + w])) for x in starts]


def any_pack(rows: int, cols: int, dims: Sequence[tuple[int, int]]) -> tuple[Position, ...] | None:
    """Serpentine, else first-fit, else strips (columns, rows), else skyline: the first greedy
    packing that fits."""
    return (shelf_pack(rows, cols, dims, snake=True)
            or shelf_pack(rows, cols, dims, snake=False)
            or strip_pack(rows, cols, dims, "columns")
            or strip_pack(rows, cols, dims, "rows")
            or skyline_pack(rows, cols, dims))


# -- strip packing: exact, so stage 1 can count it ---------------------------------------------


STRIPS = ("columns", "rows")


def strip_class(rows: int, cols: int, dims: tuple[int, int], packing: str) -> tuple[int, int]:
    """(width, stack) of a rectangle in strip packing: "columns" are full-height strips as wide
    as the rectangle, holding `stack` rectangles of its class one above the other; "rows" are
    the same turned sideways (full-width strips). Stack 0: it does not fit the strip at all."""
    h, w = dims if packing == "columns" else dims[::-1]
    return w, (rows if packing == "columns" else cols) // h


def strip_length(rows: int, cols: int, packing: str) -> int:
    """How much width the strips of one wafer may take: the grid's cols (columns) or rows."""
    return cols if packing == "columns" else rows


def strip_width(rows: int, cols: int, dims: Sequence[tuple[int, int]], packing: str) -> int:
    """Total width of the strips holding these rectangles, each class in strips of its own."""
    counts: dict[tuple[int, int], int] = {}
    for d in dims:
        key = strip_class(rows, cols, d, packing)
        counts[key] = counts.get(key, 0) + 1
    if any(stack == 0 for _, stack in counts):
        return strip_length(rows, cols, packing) + 1
    return sum(-(-n // stack) * width for (width, stack), n in counts.items())


def strips_fit(rows: int, cols: int, dims: Sequence[tuple[int, int]], packing: str) -> bool:
    return strip_width(rows, cols, dims, packing) <= strip_length(rows, cols, packing)


def strip_pack(
    rows: int, cols: int, dims: Sequence[tuple[int, int]], packing: str
) -> tuple[Position, ...] | None:
    """Strip packing (see strip_class), or None if the strips are too wide: classes in order of
    first appearance, strips left to right (top to bottom for rows), each filled in input
    order alternately down and up, so consecutive rectangles of a class touch."""
    if not strips_fit(rows, cols, dims, packing):
        return None
    if packing == "rows":
        found = strip_pack(cols, rows, [(w, h) for h, w in dims], "columns")
        return None if found is None else tuple((c, r) for r, c in found)
    classes: dict[tuple[int, int], list[int]] = {}
    for i, d in enumerate(dims):
        classes.setdefault(strip_class(rows, cols, d, packing), []).append(i)
    spots: dict[int, Position] = {}
    x = strip = 0
    for (width, stack), members in classes.items():
        for first in range(0, len(members), stack):
            spots.update(_stack(rows, dims, members[first:first + stack], x, up=strip % 2 == 1))
            x, strip = x + width, strip + 1
    return tuple(spots[i] for i in range(len(dims)))


def _stack(
    rows: int, dims: Sequence[tuple[int, int]], members: Sequence[int], x: int, *, up: bool
) -> dict[int, Position]:
    """Rectangles one above the other in a column at x: from the top, or (up) from the bottom."""
    out, cursor = {}, rows if up else 0
    for i in members:
        h = dims[i][0]
        if up:
            cursor -= h
        out[i] = (cursor, x)
        if not up:
            cursor += h
    return out


# -- contiguous ranges -------------------------------------------------------------------------


def min_max_split(sizes: Sequence[int], parts: int) -> tuple[int, ...]:
    """Part index per item: contiguous ranges, at most `parts`, with the least largest sum."""
    found = balanced_split(sizes, [0] * len(sizes), parts, 0)
    assert found is not None  # without a capacity, one range per item always works
    return found


def balanced_split(
    loads: Sequence[int], sizes: Sequence[int], parts: int, capacity: int
) -> tuple[int, ...] | None:
    """Part index per item: contiguous ranges, at most `parts`, each with sizes summing to at
    most `capacity`, and the least largest sum of loads (None if the capacity cannot be met).
    Filling ranges greedily meets a limit with the fewest ranges, so a binary search on the
    limit finds the least one."""
    if not loads:
        return ()
    if capacity and max(sizes) > capacity:
        return None
    lo, hi = max(loads), sum(loads)
    if _fill(loads, hi, sizes, capacity)[-1] >= parts:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if _fill(loads, mid, sizes, capacity)[-1] < parts:
            hi = mid
        else:
            lo = mid + 1
    return _fill(loads, lo, sizes, capacity)


def _fill(
    loads: Sequence[int], limit: int, sizes: Sequence[int], capacity: int
) -> tuple[int, ...]:
    """Greedy ranges: extend while loads stay within `limit` and sizes within `capacity` (no
    capacity when it is 0); an item too big for any range gets a range of its own."""
    out, part, load, size, empty = [], 0, 0, 0, True
    for item_load, item_size in zip(loads, sizes, strict=True):
        over = load + item_load > limit or (capacity and size + item_size > capacity)
        if over and not empty:
            part, load, size = part + 1, 0, 0
        out.append(part)
        load, size, empty = load + item_load, size + item_size, False
    return tuple(out)
