"""Judge any placement without knowing how it was made: rules, costs and analytic lower bounds.

`validate` lists every broken rule as a sentence naming the blocks; `check_placement` raises it.
The cost functions (off-chip bytes, byte-hops, inter-wafer bytes, per-wafer cycles) and the lower
bounds are what every placer is measured with, in tests and at run time. Nothing here imports a
solver; greedy and CP-SAT placers share `usable_options` from here so all agree on what is legal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from compiler.errors import InvalidPlacementError
from compiler.placement.problem import Option, Placement, PlacementProblem, Rect

MAX_LISTED = 5  # violations quoted in an InvalidPlacementError message


# -- legality ----------------------------------------------------------------------------------


def option_fits(problem: PlacementProblem, option: Option) -> bool:
    """An option can appear in a valid placement: it fits per-core SRAM and the grid."""
    return (
        option.per_core_bytes <= problem.capacity_bytes
        and 0 < option.rows <= problem.rows
        and 0 < option.cols <= problem.cols
    )


def usable_options(problem: PlacementProblem, b: int) -> tuple[int, ...]:
    """Indices of block b's options that may appear in a valid placement."""
    block = problem.blocks[b]
    key = (id(block.options), problem.capacity_bytes, problem.rows, problem.cols)
    hit = _USABLE.get(key)
    if hit is not None and hit[0] is block.options:
        return hit[1]
    found = tuple(i for i, o in enumerate(block.options) if option_fits(problem, o))
    if len(_USABLE) >= USABLE_CACHE:
        _USABLE.clear()
    _USABLE[key] = (block.options, found)
    return found


# usable_options by options tuple and machine: stage 1's greedy hints ask tens of thousands of
# times on a giant (the entry keeps its tuple alive, so an id is never reused while cached)
USABLE_CACHE = 4096
_USABLE: dict[tuple[int, int, int, int], tuple[tuple[Option, ...], tuple[int, ...]]] = {}


def validate(problem: PlacementProblem, placement: Placement) -> tuple[str, ...]:
    """Every rule the placement breaks, as readable sentences (empty when it is valid)."""
    n = len(problem.blocks)
    if len(placement.options) != n or len(placement.rects) != n:
        return (
            f"placement has {len(placement.options)} options and {len(placement.rects)} rects "
            f"for {n} blocks",
        )
    found: list[str] = []
    for b in range(n):
        found.extend(_block_violations(problem, placement, b))
    found.extend(_overlaps(problem, placement.rects))
    found.extend(_wafer_order(problem, placement.rects))
    return tuple(found)


def check_placement(problem: PlacementProblem, placement: Placement) -> None:
    """Raise InvalidPlacementError quoting the first few violations, if there are any."""
    found = validate(problem, placement)
    if not found:
        return
    more = f" (and {len(found) - MAX_LISTED} more)" if len(found) > MAX_LISTED else ""
    raise InvalidPlacementError(
        f"placement by {placement.report.method} of {problem.name} breaks {len(found)} rule(s): "
        + "; ".join(found[:MAX_LISTED]) + more
        + ". This is a bug in the placer: please report it with the problem."
    )


def _block_violations(problem: PlacementProblem, placement: Placement, b: int) -> list[str]:
    block, rect, index = problem.blocks[b], placement.rects[b], placement.options[b]
    if not 0 <= index < len(block.options):
        return [f"block {block.name} has option {index} but only {len(block.options)} options"]
    opt = block.options[index]
    found = []
    if (rect.rows, rect.cols) != (opt.rows, opt.cols):
        found.append(
            f"block {block.name} rect is {rect.rows}x{rect.cols} but option {index} is "
            f"{opt.rows}x{opt.cols}"
        )
    if not 0 <= rect.wafer < problem.wafers:
        found.append(f"block {block.name} is on wafer {rect.wafer} of {problem.wafers}")
    if not _inside(problem, rect):
        found.append(
            f"block {block.name} at rows {_span(rect.row, rect.rows)}, cols "
            f"{_span(rect.col, rect.cols)} is outside the {problem.rows}x{problem.cols} grid"
        )
    if opt.per_core_bytes > problem.capacity_bytes:
        found.append(
            f"block {block.name} option {index} needs {opt.per_core_bytes:,} bytes per core but "
            f"cores hold {problem.capacity_bytes:,}"
        )
    return found


def _inside(problem: PlacementProblem, r: Rect) -> bool:
    return (
        r.rows > 0 and r.cols > 0 and r.row >= 0 and r.col >= 0
        and r.row + r.rows <= problem.rows and r.col + r.cols <= problem.cols
    )


def _span(start: int, length: int) -> str:
    return f"{start}-{start + length - 1}"


def _overlaps(problem: PlacementProblem, rects: Sequence[Rect]) -> list[str]:
    found = []
    for i in range(len(rects)):
        for j in range(i + 1, len(rects)):
            a, b = rects[i], rects[j]
            if a.wafer != b.wafer:
                continue
            top, bottom = max(a.row, b.row), min(a.row + a.rows, b.row + b.rows)
            left, right = max(a.col, b.col), min(a.col + a.cols, b.col + b.cols)
            if top < bottom and left < right:
                found.append(
                    f"blocks {problem.blocks[i].name} and {problem.blocks[j].name} overlap on "
                    f"wafer {a.wafer} at rows {top}-{bottom - 1}, cols {left}-{right - 1}"
                )
    return found


def _wafer_order(problem: PlacementProblem, rects: Sequence[Rect]) -> list[str]:
    found = []
    for b in range(1, len(rects)):
        if rects[b].wafer < rects[b - 1].wafer:
            found.append(
                f"block {problem.blocks[b].name} is on wafer {rects[b].wafer} after block "
                f"{problem.blocks[b - 1].name} on wafer {rects[b - 1].wafer}: wafers must not "
                "decrease along block order (one contiguous layer range per wafer)"
            )
    return found


# -- costs -------------------------------------------------------------------------------------


def offchip_bytes_per_token(problem: PlacementProblem, placement: Placement) -> int:
    """Bytes streamed in from off-chip per decode token: I/O plus every streamed option."""
    streamed = sum(
        placement.option(problem, b).offchip_bytes_per_token for b in range(len(problem.blocks))
    )
    return problem.io_bytes_per_token + streamed


def edge_distance2(a: Rect, b: Rect) -> int:
    """Manhattan distance between rectangle centres, doubled (an integer)."""
    (ar, ac), (br, bc) = a.center2, b.center2
    return abs(ar - br) + abs(ac - bc)


def byte_hops(problem: PlacementProblem, placement: Placement) -> float:
    """Sum over same-wafer edges of bytes per token x centre-to-centre Manhattan distance."""
    rects = placement.rects
    doubled = sum(
        e.bytes_per_token * edge_distance2(rects[e.src], rects[e.dst])
        for e in problem.edges
        if rects[e.src].wafer == rects[e.dst].wafer
    )
    return doubled / 2


def interwafer_bytes(problem: PlacementProblem, placement: Placement) -> int:
    """Bytes per token crossing between wafers."""
    rects = placement.rects
    return sum(e.bytes_per_token for e in problem.edges if rects[e.src].wafer != rects[e.dst].wafer)


def wafer_cycles(problem: PlacementProblem, placement: Placement) -> tuple[int, ...]:
    """Sum of the chosen options' cycles on each wafer; the slowest bounds pipeline throughput."""
    totals = [0] * problem.wafers
    for b, rect in enumerate(placement.rects):
        totals[rect.wafer] += placement.option(problem, b).cycles
    return tuple(totals)


# -- lower bounds ------------------------------------------------------------------------------


def offchip_lower_bound(problem: PlacementProblem) -> int:
    """Off-chip bytes per token no valid placement can beat.

    The LP relaxation of choosing one option per block under the total core area of all wafers
    (a fractional multiple-choice knapsack, solved exactly on each block's lower convex hull of
    (cores, off-chip bytes)), rounded up. Blocks with no usable option are left out.
    """
    base_cost, base_cores, steps = 0, 0, []
    for b in range(len(problem.blocks)):
        hull = _lower_hull(problem, b)
        if not hull:
            continue
        base_cores, base_cost = base_cores + hull[0][0], base_cost + hull[0][1]
        steps.extend((c1 - c0, k0 - k1) for (c0, k0), (c1, k1) in zip(hull, hull[1:], strict=False))
    room = problem.wafers * problem.cores_per_wafer - base_cores
    saved = Fraction(0)
    for cores, saving in sorted(steps, key=lambda s: Fraction(s[1], s[0]), reverse=True):
        if room <= 0:
            break
        take = min(cores, room)
        saved += Fraction(saving * take, cores)
        room -= take
    return problem.io_bytes_per_token + math.ceil(base_cost - saved)


def _lower_hull(problem: PlacementProblem, b: int) -> list[tuple[int, int]]:
    """Block b's (cores, off-chip) points on the lower-left convex hull, fewest cores first."""
    opts = problem.blocks[b].options
    points = sorted({(opts[i].cores, opts[i].offchip_bytes_per_token)
                     for i in usable_options(problem, b)})
    hull: list[tuple[int, int]] = []
    for p in points:
        if hull and p[1] >= hull[-1][1]:
            continue  # more cores, no fewer bytes: never worth it
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def pair_separation2(a: Option, b: Option) -> int:
    """Least doubled centre distance of two non-overlapping rectangles of these shapes."""
    return min(a.rows + b.rows, a.cols + b.cols)


def byte_hops_lower_bound(
    problem: PlacementProblem, options: Sequence[int], wafers: Sequence[int] | None = None
) -> float:
    """Byte-hops no placement with these options (and wafer assignment) can beat: per wafer,
    `separation_bound2` of its rectangles and edges (parallel edges merged). `wafers=None`
    counts every edge (all blocks on one wafer)."""
    on = list(wafers) if wafers is not None else [0] * len(problem.blocks)
    total = 0
    for k in sorted(set(on)):
        members = [b for b in range(len(problem.blocks)) if on[b] == k]
        local = {b: i for i, b in enumerate(members)}
        dims = [(problem.blocks[b].options[options[b]].rows,
                 problem.blocks[b].options[options[b]].cols) for b in members]
        merged: dict[tuple[int, int], int] = {}
        for e in problem.edges:
            if e.src in local and e.dst in local and e.src != e.dst:
                key = (min(local[e.src], local[e.dst]), max(local[e.src], local[e.dst]))
                merged[key] = merged.get(key, 0) + e.bytes_per_token
        edges = [(i, j, w) for (i, j), w in sorted(merged.items())]
        total += separation_bound2(problem.rows, problem.cols, dims, edges)
    return total / 2


def separation_bound2(
    rows: int, cols: int, dims: Sequence[tuple[int, int]], edges: Sequence[tuple[int, int, int]]
) -> int:
    """Doubled byte-hops no packing of these rectangles (rows, cols) on a rows x cols grid can
    beat, for edges (i, j, weight) with i != j and at most one edge a pair.

    Per edge: weight x min(h_i + h_j, w_i + w_j), the centres of two rectangles that do not
    overlap being at least that far apart (doubled). Raised on every chain of alike
    rectangles (`chains`): by `chain_excess2`, what the grid's width and height add to
    the chain's separations. Edges of non-negative weight."""
    base = sum(w * min(dims[i][0] + dims[j][0], dims[i][1] + dims[j][1]) for i, j, w in edges)
    return base + sum(w * chain_excess2(rows, cols, dims, first, n)
                      for first, n, w in chains(dims, edges))


def chains(dims: Sequence[tuple[int, int]], edges: Sequence[tuple[int, int, int]]
           ) -> list[tuple[int, int, int]]:
    """(first, count, weight): maximal runs of `count` >= 3 consecutive rectangles first,
    first + 1, ... of one shape, each linked to the next by an edge of the same weight (the
    alike blocks of a transformer on a wafer). Paths that share no edge (edges (i, i + 1)
    with i < j as given; other edges are left to the separation term)."""
    weight = {(i, j): w for i, j, w in edges if j == i + 1 and w > 0}
    out, first = [], 0
    for i in range(1, len(dims) + 1):
        linked = (i < len(dims) and dims[i] == dims[i - 1] and (i - 1, i) in weight
                  and (i - 1 == first or weight[(i - 1, i)] == weight[(i - 2, i - 1)]))
        if not linked:
            if i - first >= 3:
                out.append((first, i - first, weight[(first, first + 1)]))
            # a new weight starts a run at the rectangle before (runs share no edge)
            first = i - 1 if i < len(dims) and dims[i] == dims[i - 1] and (
                i - 1, i) in weight else i
    return out


def chain_excess2(rows: int, cols: int, dims: Sequence[tuple[int, int]], first: int, n: int
                  ) -> int:
    """What a path of n alike h x w rectangles (first, first + 1, ...) costs beyond its
    separations (doubled, per unit of weight), on a rows x cols grid also holding `dims`'
    other rectangles. Proof (rows; columns the same turned sideways): rectangles crossing
    one grid row do not overlap, so at most k_r = (cols - W) // w of the path's cross a row,
    W the width of the other rectangles that span every row (height = rows). A rectangle of
    height h holds exactly one row of any h-periodic set of rows; if the path's top rows span
    S, its rectangles lie in S + h consecutive rows, where some residue class mod h has
    floor((S + h) / h) rows, crossed by at most k_r rectangles each, so n <= k_r x that:
    S >= (ceil(n / k_r) - 1) x h. Along the path, the row moves of its m = n - 1 edges sum to
    at least S, and the column moves to the columns' span; each edge moves >= h in rows or
    >= w in columns (no overlap). With v edges of the first kind the path costs at least
    max(v h, S_rows) + max((m - v) w, S_cols): the least over v, minus m x min(h, w)."""
    h, w = dims[first]
    run = range(first, first + n)
    others = [d for i, d in enumerate(dims) if i not in run]
    k_rows = (cols - sum(c for r, c in others if r == rows)) // w
    k_cols = (rows - sum(r for r, c in others if c == cols)) // h
    if k_rows < 1 or k_cols < 1:
        return 0  # the path does not fit: no placement to bound
    span_r = 2 * (-(-n // k_rows) - 1) * h  # doubled
    span_c = 2 * (-(-n // k_cols) - 1) * w
    m = n - 1
    least = min(max(2 * v * h, span_r) + max(2 * (m - v) * w, span_c) for v in range(m + 1))
    return least - m * min(2 * h, 2 * w)


# -- all of it at once -------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """Costs of one placement and the lower bounds to judge them against."""

    offchip_bytes_per_token: int
    offchip_lower_bound: int
    byte_hops: float
    byte_hops_lower_bound: float  # for this placement's options and wafers
    interwafer_bytes_per_token: int
    wafer_cycles: tuple[int, ...]
    cores_used: int
    wafers_used: int

    @property
    def slowest_wafer_cycles(self) -> int:
        return max(self.wafer_cycles, default=0)

    @property
    def byte_hops_ratio(self) -> float:
        """Byte-hops over their lower bound (1.0 is provably optimal for these options)."""
        if self.byte_hops_lower_bound == 0:
            return 1.0 if self.byte_hops == 0 else math.inf
        return self.byte_hops / self.byte_hops_lower_bound


def metrics(problem: PlacementProblem, placement: Placement) -> Metrics:
    """Every cost and bound of a (valid) placement."""
    wafers = [r.wafer for r in placement.rects]
    return Metrics(
        offchip_bytes_per_token=offchip_bytes_per_token(problem, placement),
        offchip_lower_bound=offchip_lower_bound(problem),
        byte_hops=byte_hops(problem, placement),
        byte_hops_lower_bound=byte_hops_lower_bound(problem, placement.options, wafers),
        interwafer_bytes_per_token=interwafer_bytes(problem, placement),
        wafer_cycles=wafer_cycles(problem, placement),
        cores_used=sum(r.rows * r.cols for r in placement.rects),
        wafers_used=len(set(wafers)),
    )
