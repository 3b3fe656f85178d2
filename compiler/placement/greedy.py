"""Deterministic greedy placers: tt-buda-style first-fit and a serpentine; also CP-SAT's hints.

Both walk the blocks in order and shelf-pack their rectangles (geometry.py): first-fit fills
every band left to right; serpentine alternates direction and starts each band under the end of
the last, so consecutive blocks touch.

Option rule when none are given: each block's RESIDENT option with the fewest cores. When a
wafer is full, a new epoch begins, as in tt-buda: the remaining blocks cannot keep their weights
on chip and switch to their smallest streaming option; when even that does not fit, the next
wafer (if any) starts, resident again. Serpentine on several wafers first tries contiguous block
ranges with the least largest core count, and falls back to that sequential fill. Both accept
fixed `options` and `wafer_of` (how CP-SAT gets its hints).

Stage-1 hints for CP-SAT: `greedy_residency` and `greedy_strips` (options and wafer ranges by
cores or by strips), `spread_choices` / `grouped_choices` (alike blocks' choices re-dealt).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from compiler.errors import InfeasiblePlacementError
from compiler.placement.check import usable_options
from compiler.placement.geometry import (
    Shelf,
    StripClass,
    min_max_split,
    shelf_pack,
    strip_class,
    strip_length,
)
from compiler.placement.problem import (
    Option,
    Placement,
    PlacementProblem,
    Rect,
    Residency,
    SolverReport,
)

# -- option rules ------------------------------------------------------------------------------


def usable(problem: PlacementProblem, b: int) -> list[tuple[int, Option]]:
    """Block b's usable (index, option) pairs; InfeasiblePlacementError if there are none."""
    found = [(i, problem.blocks[b].options[i]) for i in usable_options(problem, b)]
    if not found:
        block = problem.blocks[b]
        least = min((o.per_core_bytes for o in block.options), default=0)
        raise InfeasiblePlacementError(
            f"block {block.name} has no usable option: the smallest needs {least:,} bytes per "
            f"core (cores hold {problem.capacity_bytes:,}) or none fits the "
            f"{problem.rows}x{problem.cols} grid"
        )
    return found


def resident_choice(problem: PlacementProblem, b: int) -> int:
    """The RESIDENT option with the fewest cores (else the one streaming least, then smallest)."""
    found = usable(problem, b)
    resident = [(o.cores, o.offchip_bytes_per_token, i) for i, o in found
                if o.residency is Residency.RESIDENT]
    if resident:
        return min(resident)[2]
    return min((o.offchip_bytes_per_token, o.cores, i) for i, o in found)[2]


def streaming_choice(problem: PlacementProblem, b: int) -> int:
    """The option with the smallest footprint (fewest cores, then least streamed)."""
    return min((o.cores, o.offchip_bytes_per_token, i) for i, o in usable(problem, b))[2]


# -- placers -----------------------------------------------------------------------------------


def first_fit(
    problem: PlacementProblem,
    options: Sequence[int] | None = None,
    wafer_of: Sequence[int] | None = None,
) -> Placement:
    """tt-buda-style row-major shelf packing in block order."""
    return _greedy(problem, options, wafer_of, snake=False)


def serpentine(
    problem: PlacementProblem,
    options: Sequence[int] | None = None,
    wafer_of: Sequence[int] | None = None,
) -> Placement:
    """Boustrophedon shelf packing in block order: consecutive blocks are neighbours."""
    return _greedy(problem, options, wafer_of, snake=True)


def _greedy(
    problem: PlacementProblem,
    options: Sequence[int] | None,
    wafer_of: Sequence[int] | None,
    *,
    snake: bool,
) -> Placement:
    start = time.perf_counter()
    if wafer_of is not None:
        chosen = list(options) if options is not None else _resident_all(problem)
        rects = _pack_assigned(problem, chosen, wafer_of, snake)
    else:
        packed = _balanced(problem, options, snake) if snake and problem.wafers > 1 else None
        chosen, rects = packed or _sequential(problem, options, snake)
    method = "greedy-serpentine" if snake else "greedy-first-fit"
    report = SolverReport(method=method, status="HEURISTIC",
                          wall_time_s=time.perf_counter() - start)
    return Placement(tuple(chosen), tuple(rects), report)


def _resident_all(problem: PlacementProblem) -> list[int]:
    return [resident_choice(problem, b) for b in range(len(problem.blocks))]


def _dims(problem: PlacementProblem, b: int, option: int) -> tuple[int, int]:
    opt = problem.blocks[b].options[option]
    return opt.rows, opt.cols


def _pack_assigned(
    problem: PlacementProblem, options: Sequence[int], wafer_of: Sequence[int], snake: bool
) -> list[Rect]:
    """Pack each wafer's blocks (given options and wafers); InfeasiblePlacementError if not."""
    rects: list[Rect | None] = [None] * len(problem.blocks)
    for k in sorted(set(wafer_of)):
        members = [b for b in range(len(problem.blocks)) if wafer_of[b] == k]
        dims = [_dims(problem, b, options[b]) for b in members]
        spots = shelf_pack(problem.rows, problem.cols, dims, snake=snake)
        if spots is None:
            cores = sum(h * w for h, w in dims)
            raise InfeasiblePlacementError(
                f"blocks {problem.blocks[members[0]].name}..{problem.blocks[members[-1]].name} "
                f"({cores:,} cores) do not shelf-pack on wafer {k} of "
                f"{problem.cores_per_wafer:,} cores"
            )
        for b, (row, col), (h, w) in zip(members, spots, dims, strict=True):
            rects[b] = Rect(k, row, col, h, w)
    return [r for r in rects if r is not None]


def _balanced(
    problem: PlacementProblem, options: Sequence[int] | None, snake: bool
) -> tuple[list[int], list[Rect]] | None:
    """Contiguous ranges with the least max cores per wafer, or None if a range does not pack."""
    chosen = list(options) if options is not None else _resident_all(problem)
    cores = [problem.blocks[b].options[o].cores for b, o in enumerate(chosen)]
    try:
        return chosen, _pack_assigned(problem, chosen, min_max_split(cores, problem.wafers), snake)
    except InfeasiblePlacementError:
        return None


@dataclass
class _Fill:
    """State of the sequential fill: current wafer, its shelf, and the epoch (resident or not)."""

    problem: PlacementProblem
    wafer: int = 0
    streaming: bool = False
    shelves: list[Shelf] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shelves.append(Shelf(self.problem.rows, self.problem.cols))

    def add(self, b: int, option: int) -> bool:
        return self.shelves[-1].add(*_dims(self.problem, b, option))

    def next_wafer(self) -> bool:
        if self.wafer + 1 >= self.problem.wafers:
            return False
        self.wafer, self.streaming = self.wafer + 1, False
        self.shelves.append(Shelf(self.problem.rows, self.problem.cols))
        return True


def _sequential(
    problem: PlacementProblem, options: Sequence[int] | None, snake: bool
) -> tuple[list[int], list[Rect]]:
    """Fill wafers in order; with free options, switch to streaming when a wafer is full."""
    fill = _Fill(problem)
    chosen, wafer_of = [], []
    for b in range(len(problem.blocks)):
        chosen.append(_place_one(fill, options, b))
        wafer_of.append(fill.wafer)
    spots = [pos for shelf in fill.shelves for pos in shelf.positions(snake=snake)]
    rects = [Rect(k, row, col, *_dims(problem, b, o))
             for b, (k, o, (row, col)) in enumerate(zip(wafer_of, chosen, spots, strict=True))]
    return chosen, rects


def _pick(fill: _Fill, options: Sequence[int] | None, b: int) -> int:
    if options is not None:
        return options[b]
    if fill.streaming:
        return streaming_choice(fill.problem, b)
    return resident_choice(fill.problem, b)


def _place_one(fill: _Fill, options: Sequence[int] | None, b: int) -> int:
    """Add block b: this wafer, then (free options) streaming, then the next wafers."""
    while True:
        option = _pick(fill, options, b)
        if fill.add(b, option):
            return option
        if options is None and not fill.streaming:
            fill.streaming = True
            option = _pick(fill, options, b)
            if fill.add(b, option):
                return option
        if not fill.next_wafer():
            raise _full_error(fill.problem, b, option, fill.wafer)


def _full_error(
    problem: PlacementProblem, b: int, option: int, wafer: int
) -> InfeasiblePlacementError:
    need = sum(problem.blocks[i].options[streaming_choice(problem, i)].cores
               for i in range(b, len(problem.blocks)))
    opt = problem.blocks[b].options[option]
    return InfeasiblePlacementError(
        f"block {problem.blocks[b].name} ({opt.rows}x{opt.cols} = {opt.cores:,} cores) does not "
        f"fit on wafer {wafer}, the last of {problem.wafers}: blocks from it on need at least "
        f"{need:,} cores, a wafer has {problem.cores_per_wafer:,}; use more wafers or options "
        "with fewer cores"
    )


# -- stage-1 hints for CP-SAT ------------------------------------------------------------------


def spread_choices(problem: PlacementProblem, options: Sequence[int]) -> tuple[int, ...]:
    """The same option choices, re-dealt within each group of alike blocks (same group, same
    options) so that every choice is spread evenly along the chain: off-chip bytes, cycles and
    cores stay the same in total, and contiguous wafer ranges can balance (e.g. the streamed
    blocks of a chain no longer sit together on one wafer)."""
    groups: dict[tuple[str, tuple[Option, ...]], list[int]] = {}
    for b, block in enumerate(problem.blocks):
        if block.group:
            groups.setdefault((block.group, block.options), []).append(b)
    out = list(options)
    for members in groups.values():
        for b, o in zip(members, _even_deal([options[b] for b in members]), strict=True):
            out[b] = o
    return tuple(out)


def _even_deal(choices: Sequence[int]) -> list[int]:
    """Reorder `choices` so each value's share so far tracks its overall share."""
    total = {c: choices.count(c) for c in sorted(set(choices))}
    used = dict.fromkeys(total, 0)
    out = []
    for pos in range(1, len(choices) + 1):
        pick = max(total, key=lambda c: (total[c] * pos / len(choices) - used[c], -c))
        used[pick] += 1
        out.append(pick)
    return out


def greedy_residency(
    problem: PlacementProblem, capacity: int
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Options and contiguous wafer ranges under `capacity` cores per wafer (None if not found).

    Every block starts on its least-streaming option (fewest cores among those); while the
    balanced split leaves a wafer over capacity, the block there whose smaller option streams
    the fewest extra bytes per core saved shrinks. A hint for CP-SAT, not an optimum.
    """
    choice = [min((o.offchip_bytes_per_token, o.cores, i) for i, o in usable(problem, b))[2]
              for b in range(len(problem.blocks))]
    while True:
        cores = [problem.blocks[b].options[o].cores for b, o in enumerate(choice)]
        wafer_of = min_max_split(cores, problem.wafers)
        loads = [0] * problem.wafers
        for b, k in enumerate(wafer_of):
            loads[k] += cores[b]
        if max(loads) <= capacity:
            return tuple(choice), wafer_of
        shrink = _cheapest_shrink(problem, choice, [loads[k] > capacity for k in wafer_of],
                                  lambda b, i: problem.blocks[b].options[i].cores)
        if shrink is None:
            return None
        choice[shrink[0]] = shrink[1]


def _cheapest_shrink(
    problem: PlacementProblem, choice: Sequence[int], crowded: Sequence[bool],
    size: Callable[[int, int], float],
) -> tuple[int, int] | None:
    """(block, option): the smaller option (by `size` of block and option index) adding the
    fewest streamed bytes per unit of size saved, among crowded blocks."""
    best: tuple[float, int, int] | None = None
    for b, o in enumerate(choice):
        if not crowded[b]:
            continue
        now = problem.blocks[b].options[o]
        for i, alt in usable(problem, b):
            if size(b, i) < size(b, o):
                rate = (alt.offchip_bytes_per_token - now.offchip_bytes_per_token) / (
                    size(b, o) - size(b, i))
                if best is None or (rate, b, i) < best:
                    best = (rate, b, i)
    return None if best is None else (best[1], best[2])


def strip_share(problem: PlacementProblem, o: Option, packing: str) -> float:
    """The width of a strip an option takes up, per rectangle, when its class fills strips."""
    width, stack = strip_class(problem.rows, problem.cols, (o.rows, o.cols), packing)
    return width / stack


def greedy_strips(
    problem: PlacementProblem, packing: str
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Options and contiguous wafer ranges whose strips fit every wafer (None if not found).

    Every block starts on its least-streaming options; wafers are filled in block order, each
    block taking the shape among those alike (same mode and bytes) that lets its wafer hold
    the most (StripFill), with alike blocks' choices spread evenly (spread_choices). While
    that needs too many wafers, the block whose option of a smaller least strip share adds
    the fewest streamed bytes per share saved switches to it.
    """
    shares = [{i: min(strip_share(problem, a, packing) for a in _alike_options(problem, b, o))
               for i, o in usable(problem, b)} for b in range(len(problem.blocks))]
    choice = [min(usable(problem, b), key=lambda io, b=b: (
        io[1].offchip_bytes_per_token, shares[b][io[0]], io[1].cycles, io[0]))[0]
        for b in range(len(problem.blocks))]
    fill = StripFill(problem, packing)
    while True:
        found = fill.run(spread_choices(problem, choice))
        if found is not None:
            return found
        shrink = _cheapest_shrink(problem, choice, [True] * len(choice),
                                  lambda b, i: shares[b][i])
        if shrink is None:
            return None
        choice[shrink[0]] = shrink[1]


def alike(a: Option, b: Option) -> bool:
    """Two options keep the same things on chip: same mode, same bytes streamed."""
    return (a.residency, a.offchip_bytes_per_token) == (b.residency, b.offchip_bytes_per_token)


def _alike_options(problem: PlacementProblem, b: int, o: Option) -> list[Option]:
    """Block b's usable options alike o (o included)."""
    return [a for _, a in usable(problem, b) if alike(a, o)]


@dataclass
class StripFill:
    """Fill wafers with blocks in order, each block free to take any shape alike its chosen
    option. Blocks with the same set of strip classes share a table: the least strip width
    holding j of them (columns of any of their classes, the last maybe part full)."""

    problem: PlacementProblem
    packing: str
    tables: dict[tuple[StripClass, ...], list[tuple[int, StripClass | None]]] = field(
        default_factory=dict)  # per class set: (least width, last column's class) per count

    def classes(self, b: int, o: Option) -> tuple[StripClass, ...]:
        p = self.problem
        return tuple(sorted({strip_class(p.rows, p.cols, (a.rows, a.cols), self.packing)
                             for a in _alike_options(p, b, o)}))

    def width(self, key: tuple[StripClass, ...], count: int) -> int:
        """Least total width of strips of the classes in `key` holding `count` blocks."""
        table = self.tables.setdefault(key, [(0, None)])
        while len(table) <= count:
            j = len(table)
            table.append(min((table[max(0, j - k)][0] + w, (w, k)) for w, k in key))
        return table[count][0]

    def columns(self, key: tuple[StripClass, ...], count: int) -> list[StripClass]:
        """The classes of the strips behind width(key, count), widest stacks first."""
        out, j = [], count
        while j > 0:
            self.width(key, j)
            c = self.tables[key][j][1]
            assert c is not None
            out.append(c)
            j = max(0, j - c[1])
        return sorted(out, key=lambda c: (-c[1], c))

    def run(self, choice: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Options and wafers, or None if the blocks need more wafers than there are."""
        p, length = self.problem, strip_length(self.problem.rows, self.problem.cols, self.packing)
        keys = [self.classes(b, p.blocks[b].options[o]) for b, o in enumerate(choice)]
        wafer_of, counts, wafer = [], {}, 0
        for key in keys:
            trial = {**counts, key: counts.get(key, 0) + 1}
            if counts and sum(self.width(k, n) for k, n in trial.items()) > length:
                wafer, trial = wafer + 1, {key: 1}
            counts = trial
            wafer_of.append(wafer)
        if wafer >= p.wafers:
            return None
        return self._shaped(choice, keys, wafer_of), tuple(wafer_of)

    def _shaped(self, choice: Sequence[int], keys: Sequence[tuple[StripClass, ...]],
                wafer_of: Sequence[int]) -> tuple[int, ...]:
        """Each block's option: of the class its wafer's strips give it, alike its choice,
        fewest cycles."""
        runs: dict[tuple[int, tuple[StripClass, ...]], list[int]] = {}
        for b, (key, k) in enumerate(zip(keys, wafer_of, strict=True)):
            runs.setdefault((k, key), []).append(b)
        out = list(choice)
        for (_, key), blocks in runs.items():
            slots = [c for c in self.columns(key, len(blocks)) for _ in range(c[1])]
            for b, c in zip(blocks, slots, strict=False):
                out[b] = self._option_of_class(b, choice[b], c)
        return tuple(out)

    def _option_of_class(self, b: int, o: int, c: StripClass) -> int:
        p, now = self.problem, self.problem.blocks[b].options[o]
        return min((a.cycles, i) for i, a in usable(p, b) if alike(a, now) and strip_class(
            p.rows, p.cols, (a.rows, a.cols), self.packing) == c)[1]


def grouped_choices(
    problem: PlacementProblem, options: Sequence[int], wafer_of: Sequence[int]
) -> tuple[int, ...]:
    """The same option choices, re-dealt within each wafer's groups of alike blocks so that
    equal choices sit together in block order (strip packing then keeps chain neighbours side
    by side). Per wafer, off-chip bytes, cycles, cores and strip classes stay the same."""
    groups: dict[tuple[int, str, tuple[Option, ...]], list[int]] = {}
    for b, block in enumerate(problem.blocks):
        if block.group:
            groups.setdefault((wafer_of[b], block.group, block.options), []).append(b)
    out = list(options)
    for members in groups.values():
        chosen = [options[b] for b in members]
        order = {o: chosen.index(o) for o in chosen}
        for b, o in zip(members, sorted(chosen, key=order.__getitem__), strict=True):
            out[b] = o
    return tuple(out)
