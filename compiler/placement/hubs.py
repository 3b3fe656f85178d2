"""Mixture-of-experts units: a router (the hub) laid out with its expert groups (the spokes).

An MoE layer is placed as a router block followed by its expert groups, each group a rectangle
of its own, with the router dispatching to every group and every group combining into the
next layer. Packed one rectangle at a time, the groups land wherever the wafer has room, on
average ~750 hops from their router on Qwen3-235B-A22B. Here a run of alike units (hub, then
at least MIN_SPOKES alike spokes it links to, repeated) is found in a wafer's rectangles, and
each unit is laid out as one compact box: the spokes in bands (rows of spokes side by side)
with the hub in a band between them, or inline between two halves of one band. chain.py snakes
those boxes like a run of alike blocks and keeps the cheapest complete packing.

Pure geometry on (rows, cols) rectangles with weighted edges (i, j, weight), like chain.py:
nothing here knows blocks, options or names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Dims = tuple[int, int]
Position = tuple[int, int]
Edge = tuple[int, int, int]
MIN_SPOKES = 3  # spokes a hub links to before its run is a unit (an MoE layer's groups)
MIN_UNITS = 2  # alike units in a row before they are laid out as boxes
MAX_BANDS = 4  # spoke bands in a unit at most
# Share of a wafer's rectangles its run of units must hold for the wafer to be laid out as
# units: just under half, so that a wafer dealt into two runs of one shape each (gpt-oss-120B's
# last wafer: 6 units of each group shape, 54 of 119 rectangles in the longer run) still is
# (its byte-hops 289 -> 155 M, the model's 4.13e8 -> 3.31e8, for ~2.5 CPU s more)
UNIT_SHARE = 0.45


@dataclass(frozen=True)
class UnitRun:
    """`count` alike units from `start`, each `size` rectangles: a hub, then its spokes."""

    start: int
    size: int
    count: int

    @property
    def members(self) -> range:
        return range(self.start, self.start + self.size * self.count)

    def unit(self, k: int) -> range:
        return range(self.start + k * self.size, self.start + (k + 1) * self.size)


@dataclass(frozen=True)
class UnitShape:
    """One unit's box and each member's offset in it (the hub first, then the spokes)."""

    box: Dims
    offsets: tuple[Position, ...]


def unit_run(dims: Sequence[Dims], edges: Sequence[Edge]) -> UnitRun | None:
    """The longest run of alike hub units (same dims, same spoke count, consecutive), at
    least MIN_UNITS long; None when the rectangles hold no such run."""
    units = hub_units(dims, edges)
    best: UnitRun | None = None
    k = 0
    while k < len(units):
        n = 1
        while (k + n < len(units) and units[k + n].start == units[k + n - 1].stop
               and _alike(dims, units[k], units[k + n])):
            n += 1
        if best is None or n > best.count:
            best = UnitRun(units[k].start, len(units[k]), n)
        k += n
    return best if best is not None and best.count >= MIN_UNITS else None


def unit_wafer(dims: Sequence[Dims], edges: Sequence[Edge]) -> UnitRun | None:
    """The run of alike units when it holds at least UNIT_SHARE of the rectangles (the wafer
    is laid out as units: chain.py, stage 2), else None. A short run (alike blocks whose
    shapes stage 1 mixed, e.g. Mixtral's groups on 181 x 45 and 127 x 64, before they were
    dealt in runs: unit.py) leaves most rectangles to be placed one by one for every unit
    layout: seconds a wafer for little gain."""
    run = unit_run(dims, edges)
    return run if run is not None and len(run.members) >= UNIT_SHARE * len(dims) else None


def hub_units(dims: Sequence[Dims], edges: Sequence[Edge]) -> list[range]:
    """Every unit: a hub with the MIN_SPOKES or more alike rectangles right after it that it
    links to (an MoE router and its expert groups), in order."""
    linked: dict[int, set[int]] = {}
    for i, j, w in edges:
        if w > 0:
            linked.setdefault(min(i, j), set()).add(max(i, j))
    return [u for h in range(len(dims)) if (u := _unit_at(dims, linked, h)) is not None]


def whole_units(dims: Sequence[Dims], edges: Sequence[Edge], wafer_of: Sequence[int],
                cores: int) -> tuple[int, ...] | None:
    """`wafer_of` (contiguous wafer ranges) with every cut that splits a unit moved to the
    unit's nearer end, so a router and its expert groups share a wafer (a dispatch or combine
    across wafers pays the wafer link), where each wafer's rectangles still total at most
    `cores`; None when no cut splits a unit or a moved cut does not fit."""
    cuts = [b for b in range(1, len(wafer_of)) if wafer_of[b] != wafer_of[b - 1]]
    inside = {b: u for u in hub_units(dims, edges) for b in range(u.start + 1, u.stop)}
    if not any(c in inside for c in cuts):
        return None
    moved, last = [], 0
    for c in cuts:
        u = inside.get(c)
        ends = [c] if u is None else sorted((u.start, u.stop), key=lambda e: abs(e - c))
        ok = [e for e in ends if last < e < len(wafer_of)]
        if not ok:
            return None
        moved.append(ok[0])
        last = ok[0]
    out = tuple(sum(b >= c for c in moved) for b in range(len(wafer_of)))
    areas: dict[int, int] = {}
    for b, k in enumerate(out):
        areas[k] = areas.get(k, 0) + dims[b][0] * dims[b][1]
    return out if max(areas.values()) <= cores else None


def _unit_at(dims: Sequence[Dims], linked: dict[int, set[int]], h: int) -> range | None:
    """Hub h with the alike rectangles right after it that it links to, if MIN_SPOKES or more."""
    out = linked.get(h, set())
    n = 0
    while h + 1 + n < len(dims) and h + 1 + n in out and dims[h + 1 + n] == dims[h + 1]:
        n += 1
    return range(h, h + 1 + n) if n >= MIN_SPOKES and dims[h] != dims[h + 1] else None


def _alike(dims: Sequence[Dims], a: range, b: range) -> bool:
    return len(a) == len(b) and all(dims[i] == dims[j] for i, j in zip(a, b, strict=True))


def unit_shapes(hub: Dims, spoke: Dims, spokes: int) -> list[UnitShape]:
    """Compact layouts of one unit: spokes in 1..MAX_BANDS bands with the hub's band before,
    between or after them, or the hub inline between the halves of one band; each also turned
    (bands as columns). Distinct boxes and offsets only."""
    found: dict[UnitShape, None] = {}
    for turned in (False, True):
        h, s = (hub, spoke) if not turned else (hub[::-1], spoke[::-1])
        shapes = [_inline(h, s, spokes)]
        for bands in range(1, min(MAX_BANDS, spokes) + 1):
            if (bands - 1) * -(-spokes // bands) < spokes:  # no empty band
                shapes += [_banded(h, s, spokes, bands, at) for at in range(bands + 1)]
        for shape in shapes:
            found[_turn(shape) if turned else shape] = None
    return list(found)


def _banded(hub: Dims, spoke: Dims, n: int, bands: int, at: int) -> UnitShape:
    """Spokes in `bands` rows of ceil(n / bands), the hub's own row before band `at`; each
    row centred in the box's width."""
    per = -(-n // bands)
    width = max(per * spoke[1], hub[1])
    hub_row = at * spoke[0]
    offsets: list[Position] = [(hub_row, (width - hub[1]) // 2)]
    for band in range(bands):
        in_band = min(per, n - band * per)
        row = band * spoke[0] + (hub[0] if band >= at else 0)
        left = (width - in_band * spoke[1]) // 2
        offsets += [(row, left + k * spoke[1]) for k in range(in_band)]
    return UnitShape((bands * spoke[0] + hub[0], width), tuple(offsets))


def _inline(hub: Dims, spoke: Dims, n: int) -> UnitShape:
    """One row: half the spokes, the hub, the other half; the shorter vertically centred."""
    height = max(hub[0], spoke[0])
    left = n // 2
    offsets: list[Position] = [((height - hub[0]) // 2, left * spoke[1])]
    for k in range(n):
        col = k * spoke[1] + (hub[1] if k >= left else 0)
        offsets.append(((height - spoke[0]) // 2, col))
    return UnitShape((height, n * spoke[1] + hub[1]), tuple(offsets))


def _turn(shape: UnitShape) -> UnitShape:
    return UnitShape(shape.box[::-1], tuple((c, r) for r, c in shape.offsets))
