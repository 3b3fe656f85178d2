"""Stage 2's neighbourhood search (LNS), deterministic with one worker.

`optimise` runs one whole-model solve from the hint (not on a wafer of MoE units), then,
unless that proved optimality, `improve` re-solves neighbourhoods (runs of consecutive blocks
and spatial clusters) with every other rectangle fixed, while that pays and time lasts.

The neighbourhoods stop early once the layout is good enough (issue 18): after a pass that
leaves it within TARGET_RATIO of the floor (layout_floor) and gained less than STALL of its cost
(a test on costs, not times, so the search stays deterministic). Where the bound says
little (a wafer of mixture-of-experts units: a router's many expert groups cannot all touch
it), they stop instead once PATIENCE solves in a row gained less than WINDOW_STALL of the
cost, and the neighbourhoods that hold a rectangle outside the run of units (the irregular
layers) or of its first or last unit (the seams) go first: the units are laid out as compact
boxes already (hubs.py), and on Qwen3-30B-A3B every gain came from the last four chain runs
(its last unit), after ~70 runs through the units that gained nothing, in hundreds of
neighbourhoods that were most of its placement time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from compiler.placement.cpsat.layout import (
    LayoutInstance,
    LayoutResult,
    layout_cost,
    layout_floor,
    solve_layout,
)
from compiler.placement.cpsat.runner import Clock
from compiler.placement.geometry import Position
from compiler.placement.hubs import unit_wafer

FULL_SHARE = 0.4  # of a layout's time, for one whole-model solve before the neighbourhoods
LNS_SIZES = (6, 10)  # rectangles freed per neighbourhood (block-order runs, clusters)
LNS_STEP = 0.5  # seconds at most per neighbourhood solve
TARGET_RATIO = 1.25  # byte-hops within this factor of the bound are good enough (issue 18)
STALL = 0.02  # a neighbourhood pass gaining less than this share of the cost has stalled
PATIENCE, WINDOW_STALL = 40, 0.005  # MoE units: solves in a row, and the gain they must make


def neighbourhood(
    inst: LayoutInstance, spots: Sequence[Position], free: frozenset[int]
) -> LayoutInstance:
    """`inst` with every rectangle outside `free` fixed at `spots`, hinted with `spots`."""
    rows = tuple(inst.row_range[i] if i in free else (r, r) for i, (r, _) in enumerate(spots))
    cols = tuple(inst.col_range[i] if i in free else (c, c) for i, (_, c) in enumerate(spots))
    return LayoutInstance(inst.rows, inst.cols, inst.dims, inst.edges, rows, cols, tuple(spots))


def _runs(n: int, size: int) -> list[frozenset[int]]:
    """Runs of `size` consecutive rectangles (block order), overlapping by half."""
    if n <= size:
        return [frozenset(range(n))]
    starts = [*range(0, n - size, max(1, size // 2)), n - size]
    return [frozenset(range(s, s + size)) for s in starts]


def _clusters(inst: LayoutInstance, spots: Sequence[Position], size: int) -> list[frozenset[int]]:
    """Each rectangle with its size - 1 nearest (by centre), duplicates dropped."""
    centre = [(2 * r + h, 2 * c + w) for (r, c), (h, w) in zip(spots, inst.dims, strict=True)]
    found: dict[frozenset[int], None] = {}
    for ra, ca in centre:
        near = sorted((abs(ra - rb) + abs(ca - cb), b) for b, (rb, cb) in enumerate(centre))
        found[frozenset(b for _, b in near[:size])] = None
    return list(found)


def neighbourhoods(
    inst: LayoutInstance, spots: Sequence[Position], units: bool = False
) -> list[frozenset[int]]:
    """One pass: chain runs and spatial clusters, small ones first; `units` (a wafer of MoE
    units, hubs.unit_wafer): those holding a rectangle outside the units or of the first or
    last unit (the seams) first."""
    out = [free for size in LNS_SIZES
           for free in _runs(len(inst.dims), size) + _clusters(inst, spots, size)]
    run = unit_wafer(inst.dims, inst.edges) if units else None
    if run is None:
        return out
    inner = set(run.members) - set(run.unit(0)) - set(run.unit(run.count - 1))
    return sorted(out, key=lambda free: free <= inner)  # stable: the others first


def improve(
    inst: LayoutInstance, spots: tuple[Position, ...], limit: float, clock: Clock,
    bound: float = 0.0, units: bool = False,
) -> tuple[tuple[Position, ...], str]:
    """Re-solve neighbourhoods with the other rectangles fixed, while that pays and time
    lasts, and until a pass stalls within TARGET_RATIO of the floor. CP-SAT's own
    neighbourhood search needs several workers; this one is deterministic with one. Progress
    reports the whole layout's cost against `bound` (the whole solve's). `units` (a wafer of
    MoE units): the irregular neighbourhoods first (`neighbourhoods`), and stop once PATIENCE
    solves in a row gained less than WINDOW_STALL of the cost."""
    left_before, cost, solves, gains, gained = clock.left, layout_cost(inst, spots), 0, 0, True
    stage, scale = f"{clock.stage} LNS" if clock.stage else None, clock.scale
    clock.enter(None, scale)  # a neighbourhood's own objective is not the layout's
    good, pass_start = TARGET_RATIO * layout_floor(inst), None
    window = (cost, 0)  # the cost when the last PATIENCE solves began, and how many ran
    while gained and not _stalled(pass_start, cost, good):
        gained, pass_start = False, cost
        for free in neighbourhoods(inst, spots, units):
            left = limit - (left_before - clock.left)
            if left <= 0.01 or clock.cut_by_deadline():
                return spots, f"{solves} neighbourhoods, {gains} better"
            res = solve_layout(_solved_part(neighbourhood(inst, spots, free), free, units),
                               min(left, LNS_STEP), clock)
            solves += 1
            new_cost = layout_cost(inst, res.spots) if res.spots is not None else cost
            if res.spots is not None and new_cost < cost:
                spots, cost, gains, gained = res.spots, new_cost, gains + 1, True
                clock.tell(cost, bound, stage)
            window = (window[0], window[1] + 1)
            if units and window[1] >= PATIENCE:
                if window[0] - cost < WINDOW_STALL * window[0]:
                    return spots, f"{solves} neighbourhoods, {gains} better, then stalled"
                window = (cost, 0)
    return spots, f"{solves} neighbourhoods, {gains} better"


def _solved_part(inst: LayoutInstance, free: frozenset[int], units: bool) -> LayoutInstance:
    """A wafer of MoE units: the neighbourhood without the edges between two fixed rectangles
    (constants; CP-SAT's presolve drops them, so the same layouts, but building them was a
    third of Qwen3-235B-A22B's neighbourhood time: ~100 edges, ~20 touching the free ones)."""
    if not units:
        return inst
    return dataclasses.replace(inst, edges=tuple(e for e in inst.edges
                                                 if e[0] in free or e[1] in free))


def _stalled(pass_start: int | None, cost: int, good: float) -> bool:
    """The last pass left the layout good enough and gained less than STALL of its cost."""
    return pass_start is not None and cost <= good and pass_start - cost < STALL * pass_start


def optimise(inst: LayoutInstance, limit: float, clock: Clock,
             units: bool = False) -> LayoutResult:
    """One whole-model solve from the hint, then neighbourhoods unless it proved optimality.
    A wafer of MoE units (`units`, see `improve`) goes straight to the neighbourhoods: on
    Mixtral and Qwen3-235B-A22B the whole solve gained 0-0.5% in FULL_SHARE of the wafer's
    time, and without it the same byte-hops or fewer came 2-4 CPU s sooner."""
    started, left_before = time.perf_counter(), clock.left
    if units and inst.hint is not None:
        res = LayoutResult(inst.hint, "FEASIBLE", layout_cost(inst, inst.hint), 0.0, 0.0, "")
    else:
        res = solve_layout(inst, limit * FULL_SHARE, clock)
    spots = res.spots or inst.hint
    if res.status == "OPTIMAL" or spots is None:
        return res
    spots, note = improve(inst, spots, limit - (left_before - clock.left), clock, res.bound,
                          units)
    return LayoutResult(spots, "FEASIBLE", layout_cost(inst, spots), res.bound,
                        time.perf_counter() - started, note)
