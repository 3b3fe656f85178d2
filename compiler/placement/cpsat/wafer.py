"""Stage 2 per wafer: from a complete greedy hint, coarse grid first, then fine windows.

Solves on a coarse grid first (at most MAX_CELLS cells a side), then refines at full resolution
inside a window around each coarse position (lns.optimise at each step). The answer is never
worse than the hint, which is the banded packing (bands.py) when that costs less than the hint
given (not on a wafer of MoE units). A wafer gets the share of its time that what is left to
gain is worth (`gain_share`: the hint's distance from the floor, `layout_floor`: the separation
bound raised on chains of alike blocks); a hint within TARGET_RATIO of the floor is refined in
windows around itself, without the coarse solve, and lns.py stops its neighbourhoods once the
layout is good enough, so a near-optimal hint (a serpentine of the repeating unit) costs
little solver time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from compiler.placement.bands import band_pack
from compiler.placement.cpsat.layout import (
    LayoutInstance,
    LayoutResult,
    full_ranges,
    layout_cost,
    layout_floor,
)
from compiler.placement.cpsat.lns import TARGET_RATIO, optimise
from compiler.placement.cpsat.runner import Clock
from compiler.placement.geometry import Position, any_pack

MIN_CELLS, MAX_CELLS = 128, 200  # coarse grid: cells a side (when the grid is larger)
WINDOW_CELLS = 3  # fine refinement: each rectangle moves at most this many cells from coarse
COARSE_SHARE = 0.6  # of a wafer's stage-2 time, for the coarse solve
# A hint within this relative gap of the floor (layout_floor) is kept without solving (CP-SAT's
# relative_gap_limit, applied before the first solve: the bound is already known)
GAP_DONE = 0.01
# A hint FULL_GAIN times the floor or further gets all of its wafer's time; nearer,
# the share falls with what is left to gain, (hint / bound - 1) / (FULL_GAIN - 1), but not
# below MIN_GAIN_SHARE
FULL_GAIN, MIN_GAIN_SHARE = 2.0, 0.1


@dataclass(frozen=True)
class WaferLayout:
    spots: tuple[Position, ...]
    cost: int  # doubled byte-hops (weights are bytes)
    bound: float  # a lower bound on the doubled cost for these shapes (separation or solver)
    optimal: bool
    summary: str


def cell_size(inst: LayoutInstance) -> int:
    """Cores per coarse cell side: the grid gets MIN_CELLS to MAX_CELLS cells a side, and of
    those sizes the one that rounds the rectangles up the least (then the larger)."""
    side = max(inst.rows, inst.cols)
    lo = max(1, math.ceil(side / MAX_CELLS))
    hi = max(lo, math.ceil(side / MIN_CELLS))

    def waste(cell: int) -> int:
        return sum(-(-h // cell) * -(-w // cell) * cell * cell - h * w for h, w in inst.dims)

    return min(range(lo, hi + 1), key=lambda cell: (waste(cell), -cell))


def coarse_instance(fine: LayoutInstance, cell: int) -> LayoutInstance | None:
    """Rectangles rounded up to whole cells on the floor(grid / cell) grid, greedy-hinted."""
    rows, cols = fine.rows // cell, fine.cols // cell
    dims = tuple((-(-h // cell), -(-w // cell)) for h, w in fine.dims)
    hint = any_pack(rows, cols, dims)
    if hint is None:
        return None
    return LayoutInstance(rows, cols, dims, fine.edges, hint=hint,
                          **full_ranges(rows, cols, dims))


def window_instance(fine: LayoutInstance, start: Sequence[Position], cell: int) -> LayoutInstance:
    """Fine grid, each rectangle within WINDOW_CELLS cells of `start`, hinted with `start`."""
    reach = WINDOW_CELLS * cell
    rows = tuple((max(0, r - reach), min(fine.rows - h, r + reach))
                 for (r, _), (h, _) in zip(start, fine.dims, strict=True))
    cols = tuple((max(0, c - reach), min(fine.cols - w, c + reach))
                 for (_, c), (_, w) in zip(start, fine.dims, strict=True))
    return LayoutInstance(fine.rows, fine.cols, fine.dims, fine.edges, rows, cols, tuple(start))


def place_wafer(fine: LayoutInstance, limit: float, clock: Clock,
                name: str = "layout", units: bool = False) -> WaferLayout:
    """Best of the hint, and CP-SAT coarse-then-windowed (or full when the grid is small).
    `units`: the hint lays out mixture-of-experts units (hubs.py), which the coarse solve's
    order-blind start never beats: refine it where it is, in the fine share of the time, until
    its neighbourhoods stall (lns.improve)."""
    assert fine.hint is not None
    hint_cost = layout_cost(fine, fine.hint)
    if not fine.edges or hint_cost == 0:
        return WaferLayout(fine.hint, hint_cost, hint_cost, True,
                           "no edges to shorten: greedy kept")
    notes: list[str] = []
    if not units:
        fine, hint_cost = _banded(fine, hint_cost, notes)
    floor = layout_floor(fine)
    if hint_cost <= (1 + GAP_DONE) * floor:
        notes.append(f"hint within {GAP_DONE:.0%} of the bound: kept "
                     f"({hint_cost / 2:,.0f} byte-hops)")
        return WaferLayout(fine.hint, hint_cost, floor, hint_cost == floor, "; ".join(notes))
    limit *= gain_share(hint_cost, floor)
    cell, left_before = cell_size(fine), clock.left
    if hint_cost <= TARGET_RATIO * floor and cell > 1:  # near: refine it where it is
        refine, full_grid = window_instance(fine, fine.hint, cell), False
        notes.append(f"hint within {TARGET_RATIO:g}x of the bound: no coarse solve")
    elif units and cell > 1:
        refine, full_grid = window_instance(fine, fine.hint, cell), False
        limit *= 1 - COARSE_SHARE
        notes.append("MoE units: no coarse solve")
    else:
        refine, full_grid = _coarse(fine, cell, hint_cost, limit * COARSE_SHARE, clock, name,
                                    notes)
    clock.enter(f"stage 2 {name} fine", 0.5)  # doubled coordinates: byte-hops
    res = optimise(refine, limit - (left_before - clock.left), clock, units)
    notes.append(f"fine{'' if full_grid else f' window +-{WINDOW_CELLS * cell}'}: "
                 + _describe(res))
    return _best_of(fine, res, hint_cost, full_grid, notes)


def _banded(fine: LayoutInstance, hint_cost: int, notes: list[str]
            ) -> tuple[LayoutInstance, int]:
    """`fine` hinted with the banded packing (bands.py) when that costs less than its hint."""
    spots = band_pack(fine.rows, fine.cols, fine.dims, fine.edges)
    cost = hint_cost if spots is None else layout_cost(fine, spots)
    if spots is None or cost >= hint_cost:
        return fine, hint_cost
    notes.append(f"banded hint ({hint_cost / 2:,.0f} -> {cost / 2:,.0f} byte-hops)")
    return dataclasses.replace(fine, hint=spots), cost


def gain_share(hint_cost: float, floor: float) -> float:
    """Share of a wafer's time worth spending on a hint this far from the bound."""
    if floor <= 0:
        return 1.0
    return min(1.0, max(MIN_GAIN_SHARE, (hint_cost / floor - 1) / (FULL_GAIN - 1)))


def _coarse(fine: LayoutInstance, cell: int, hint_cost: int, limit: float, clock: Clock,
            name: str, notes: list[str]) -> tuple[LayoutInstance, bool]:
    """What the fine solve refines, and whether that is the full grid: windows around the
    coarse solve's positions (around the hint's when rounding lost more than coarse won), else
    the whole fine grid. Appends what happened to `notes`."""
    assert fine.hint is not None
    coarse = coarse_instance(fine, cell) if cell > 1 else None
    if coarse is None:
        if cell > 1:
            notes.append("coarse rounding does not pack: fine on the full grid")
        return fine, True
    clock.enter(f"stage 2 {name} coarse", cell / 2)  # about byte-hops
    res = optimise(coarse, limit, clock)
    notes.append(f"coarse {cell}x{cell} cells {coarse.rows}x{coarse.cols}: " + _describe(res))
    if res.spots is None:
        return fine, True
    start = [(r * cell, c * cell) for r, c in res.spots]
    if layout_cost(fine, start) > hint_cost:  # rounding lost more than coarse won
        start, notes[-1] = list(fine.hint), notes[-1] + ", refining the hint instead"
    return window_instance(fine, start, cell), False


def _describe(res: LayoutResult) -> str:
    """Status and neighbourhood counts; no wall times, so summaries repeat run to run."""
    return res.status + (f" ({res.note})" if res.note else "")


def _best_of(
    fine: LayoutInstance, res: LayoutResult, hint_cost: int, full_grid: bool, notes: list[str]
) -> WaferLayout:
    assert fine.hint is not None
    bound = max(layout_floor(fine),
                res.bound if full_grid and res.spots is not None else 0.0)
    if res.spots is None or res.objective is None or res.objective >= hint_cost:
        notes.append(f"greedy hint kept ({hint_cost / 2:,.0f} byte-hops)")
        optimal = full_grid and res.status == "OPTIMAL"  # then the hint is an optimum too
        return WaferLayout(fine.hint, hint_cost, bound, optimal, "; ".join(notes))
    optimal = full_grid and res.status == "OPTIMAL"
    notes.append(f"{hint_cost / 2:,.0f} -> {res.objective / 2:,.0f} byte-hops")
    return WaferLayout(res.spots, res.objective, bound, optimal, "; ".join(notes))
