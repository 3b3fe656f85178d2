"""Stage 1 of the CP-SAT placer: which option per block, and which wafer (residency).

One option per block and, with several wafers, one contiguous block range per wafer, under what
a wafer holds. Solved lexicographically: least off-chip bytes per token; then the pipeline
(slowest wafer's cycles plus the link cycles of inter-wafer bytes); then fewest total cycles;
then squarer shapes. Each optimum found is fixed as a constraint before the next. What a wafer
holds is its core area times a factor ("area": a relaxation at 1.0, so its off-chip minimum is
a floor for every placement) or, exactly, the width of its strips ("columns" / "rows":
geometry.strip_pack packs every choice that fits). stages.py decides which to try.

Instance (ResidencyInstance) -> variables (ResidencyVars) -> one add_* per constraint family ->
objective terms (residency_terms) -> solve_residency (hinted, lexicographic) -> Residency.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from compiler.placement.check import usable_options
from compiler.placement.cpsat.runner import SOLVE_CHARGE_S, Clock, Outcome, run
from compiler.placement.geometry import (
    StripClass,
    balanced_split,
    strip_class,
    strip_length,
    strips_fit,
)
from compiler.placement.greedy import (
    greedy_residency,
    greedy_strips,
    grouped_choices,
    spread_choices,
    strip_share,
)
from compiler.placement.problem import Option, Placement, PlacementProblem

TERM_WEIGHTS = {"off-chip": 2.0, "pipeline": 2.0, "cycles": 1.0, "shape": 1.0}
# The terms after off-chip stop within this relative gap of their bound (issue 18: cycles
# came within 0.1% of the bound at once on Llama 3 8B and then used all of their time)
SECONDARY_GAP = 0.01
SHARE_SCALE = 1_000
# The pipeline term's first try, of its time: a search no better than its hint by then stops
# (_solve_term). Qwen3-235B-A22B's and Llama 4 Maverick's ran their whole share (1.4 and 1.1
# s of the budget) and ended on their hint; Mixtral's and gpt-oss-120B's bettered it at once
PIPELINE_TRY = 0.25  # strip shares (fractions of a strip) as integers for balanced_split


# -- instance ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResidencyInstance:
    """Stage 1's view: usable options per block, wafers, what a wafer holds, link costs.

    Packing "area": a wafer holds `capacity` cores (a relaxation: the choice may not pack).
    Packing "columns" or "rows": a wafer holds strips of total width `capacity` (geometry.py's
    strip_class; exact: a choice that fits packs, by strip_pack)."""

    problem: PlacementProblem
    options: tuple[tuple[int, ...], ...]
    wafers: int
    capacity: int
    link_cycles: tuple[int, ...]  # per problem edge: cycles to send its bytes between wafers
    packing: str = "area"

    def option(self, b: int, o: int) -> Option:
        return self.problem.blocks[b].options[o]

    @property
    def edges(self) -> list[tuple[int, int, int]]:
        """(edge index, lower block, higher block) of edges between distinct blocks."""
        return [(e, min(d.src, d.dst), max(d.src, d.dst))
                for e, d in enumerate(self.problem.edges) if d.src != d.dst]


@functools.lru_cache(maxsize=4)
def residency_instance(
    problem: PlacementProblem, factor: float = 1.0, packing: str = "area"
) -> ResidencyInstance:
    """Stage 1's instance, once per problem, factor and packing (a solve builds the same one
    up to three times; finding the undominated options is most of the cost)."""
    options = tuple(_undominated(problem, b, packing) for b in range(len(problem.blocks)))
    capacity = (int(factor * problem.cores_per_wafer) if packing == "area"
                else strip_length(problem.rows, problem.cols, packing))
    return ResidencyInstance(problem, options, problem.wafers, capacity, _link_cycles(problem),
                             packing)


Key = tuple[tuple[int, ...], tuple[int, ...]]  # (must be equal, the less the better)


def _stage1_key(problem: PlacementProblem, o: Option, packing: str) -> Key:
    """What stage 1 sees of an option: cores (area) or strip class (strips, where only the
    same class is interchangeable), off-chip bytes, cycles, squareness."""
    rest = (o.offchip_bytes_per_token, o.cycles, abs(o.rows - o.cols))
    if packing == "area":
        return (), (o.cores, *rest)
    return strip_class(problem.rows, problem.cols, (o.rows, o.cols), packing), rest


def _undominated(problem: PlacementProblem, b: int, packing: str = "area") -> tuple[int, ...]:
    """Block b's usable options that no other is at least as good as in every respect stage 1
    sees (the first of equals is kept)."""
    usable = usable_options(problem, b)
    keys = {o: _stage1_key(problem, problem.blocks[b].options[o], packing) for o in usable}
    return tuple(o for o in usable if not any(_dominates(keys[p], p, keys[o], o) for p in usable))


def _dominates(a: Key, ia: int, b: Key, ib: int) -> bool:
    no_worse = a[0] == b[0] and all(x <= y for x, y in zip(a[1], b[1], strict=True))
    return no_worse and (a != b or ia < ib)


def as_kept(inst: ResidencyInstance, b: int, o: int) -> int:
    """Option o of block b, or a kept option at least as good in every respect stage 1 sees."""
    if o in inst.options[b]:
        return o
    key = _stage1_key(inst.problem, inst.option(b, o), inst.packing)
    better = [p for p in inst.options[b]
              if _dominates(_stage1_key(inst.problem, inst.option(b, p), inst.packing), p, key, o)]
    return better[0] if better else o


def _link_cycles(problem: PlacementProblem) -> tuple[int, ...]:
    rate = problem.wafer_link_bytes_per_s
    if rate <= 0:
        return tuple(e.bytes_per_token for e in problem.edges)  # unknown link: a byte a cycle
    return tuple(math.ceil(e.bytes_per_token * problem.clock_hz / rate) for e in problem.edges)


# -- variables ---------------------------------------------------------------------------------


@dataclass
class ResidencyVars:
    """Stage 1's variables. Wafer ranges are running sums: block b either continues the wafer of
    block b - 1 or opens the next (start[b]); load and busy accumulate cores and cycles."""

    x: dict[tuple[int, int], cp_model.IntVar]  # block b takes option o
    start: dict[int, cp_model.IntVar] = field(default_factory=dict)  # b >= 1 opens a wafer
    load: list[cp_model.IntVar] = field(default_factory=list)  # cores, wafer's first block..b
    strips: StripVars | None = None  # strip packings only
    busy: list[cp_model.IntVar] = field(default_factory=list)  # cycles, likewise
    cut: dict[int, cp_model.IntVar] = field(default_factory=dict)  # edge e crosses wafers
    slowest: cp_model.IntVar | None = None


def residency_variables(model: cp_model.CpModel, inst: ResidencyInstance) -> ResidencyVars:
    n = len(inst.options)
    v = ResidencyVars({(b, o): model.new_bool_var(f"x[{b},{o}]")
                       for b in range(n) for o in inst.options[b]})
    if inst.packing != "area":
        v.strips = strip_variables(model, inst)
    if inst.wafers == 1:
        return v
    most = sum(max(inst.option(b, o).cycles for o in inst.options[b]) for b in range(n))
    v.start = {b: model.new_bool_var(f"start[{b}]") for b in range(1, n)}
    if inst.packing == "area":
        v.load = [model.new_int_var(0, inst.capacity, f"load[{b}]") for b in range(n)]
    v.busy = [model.new_int_var(0, most, f"busy[{b}]") for b in range(n)]
    v.cut = {e: model.new_bool_var(f"cut[{e}:{i},{j}]") for e, i, j in inst.edges}
    v.slowest = model.new_int_var(0, most, "slowest")
    return v


def _per_block(inst: ResidencyInstance, v: ResidencyVars, b: int,
               value: Callable[[Option], int]) -> cp_model.LinearExprT:
    return sum(value(inst.option(b, o)) * v.x[b, o] for o in inst.options[b])


# -- constraints -------------------------------------------------------------------------------


def add_one_option(model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars) -> None:
    for b, opts in enumerate(inst.options):
        model.add_exactly_one(v.x[b, o] for o in opts)


def add_capacity(model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars) -> None:
    """Area: all cores within all wafers (the knapsack row), and each wafer's within its own.
    Strips: each wafer's strips within its width."""
    if v.strips is not None:
        add_strip_capacity(model, inst, v)
        return
    cores = [_per_block(inst, v, b, lambda o: o.cores) for b in range(len(inst.options))]
    model.add(sum(cores) <= inst.wafers * inst.capacity)
    if inst.wafers > 1:
        _add_running_sum(model, v.load, cores, v.start)


def add_wafer_ranges(model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars) -> None:
    """At most wafers - 1 range starts; blocks on wafer k are those after the k-th start."""
    if inst.wafers > 1:
        model.add(sum(v.start.values()) <= inst.wafers - 1)


def add_pipeline(model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars) -> None:
    """slowest >= every wafer's cycles; cut[e] >= every range start between the edge's ends."""
    if v.slowest is None:
        return
    cycles = [_per_block(inst, v, b, lambda o: o.cycles) for b in range(len(inst.options))]
    _add_running_sum(model, v.busy, cycles, v.start)
    for busy in v.busy:
        model.add(v.slowest >= busy)
    for e, i, j in inst.edges:
        for m in range(i + 1, j + 1):
            model.add(v.cut[e] >= v.start[m])


def _add_running_sum(
    model: cp_model.CpModel, acc: Sequence[cp_model.IntVar] | dict[int, cp_model.IntVar],
    amounts: Sequence[cp_model.LinearExprT], start: dict[int, cp_model.IntVar],
    first: int = 0,
) -> None:
    """acc[b] = amounts[b] plus acc[b - 1] unless block b opens a wafer, for b >= first (the
    blocks before `first` add nothing). Without start variables (one wafer) it never resets."""
    model.add(acc[first] == amounts[first])
    for b in range(first + 1, len(amounts)):
        if b not in start:
            model.add(acc[b] == acc[b - 1] + amounts[b])
            continue
        model.add(acc[b] == acc[b - 1] + amounts[b]).only_enforce_if(~start[b])
        model.add(acc[b] == amounts[b]).only_enforce_if(start[b])


# -- strip capacity ----------------------------------------------------------------------------


@dataclass
class StripVars:
    """Strip capacity as running sums over each wafer's blocks. Blocks whose class has strips
    to itself (stack 1, or no other block can take the class) add their width to `width`;
    a shared class counts its blocks in `count` and needs `strips` >= count / stack strips."""

    shared: dict[StripClass, int]  # shared class -> first block that can take it
    width: list[cp_model.IntVar]
    count: dict[StripClass, dict[int, cp_model.IntVar]] = field(default_factory=dict)
    strips: dict[StripClass, dict[int, cp_model.IntVar]] = field(default_factory=dict)


def strip_class_of(inst: ResidencyInstance, b: int, o: int) -> StripClass:
    opt = inst.option(b, o)
    return strip_class(inst.problem.rows, inst.problem.cols, (opt.rows, opt.cols), inst.packing)


def _shared_classes(inst: ResidencyInstance) -> dict[StripClass, int]:
    """Classes with a stack above 1 that two or more blocks can take: first block of each."""
    takers: dict[StripClass, list[int]] = {}
    for b, opts in enumerate(inst.options):
        for c in dict.fromkeys(strip_class_of(inst, b, o) for o in opts):
            takers.setdefault(c, []).append(b)
    return {c: bs[0] for c, bs in takers.items() if c[1] > 1 and len(bs) > 1}


def strip_variables(model: cp_model.CpModel, inst: ResidencyInstance) -> StripVars:
    n, length = len(inst.options), inst.capacity
    v = StripVars(_shared_classes(inst),
                  [model.new_int_var(0, length, f"width[{b}]") for b in range(n)])
    for (w, k), first in v.shared.items():
        v.count[w, k] = {b: model.new_int_var(0, b - first + 1, f"count[{w}x{k},{b}]")
                         for b in range(first, n)}
        v.strips[w, k] = {b: model.new_int_var(0, length // w, f"strips[{w}x{k},{b}]")
                          for b in range(first, n)}
    return v


def add_strip_capacity(model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars) -> None:
    """Per block b: the strips of its wafer's blocks up to b fit the wafer's width."""
    sv, n = v.strips, len(inst.options)
    assert sv is not None

    classes = {(b, o): strip_class_of(inst, b, o) for b in range(n) for o in inst.options[b]}

    def amounts(chosen: Callable[[StripClass], int]) -> list[cp_model.LinearExprT]:
        return [sum(chosen(classes[b, o]) * v.x[b, o] for o in inst.options[b])
                for b in range(n)]

    _add_running_sum(model, sv.width, amounts(lambda c: 0 if c in sv.shared else c[0]), v.start)
    for (w, k), first in sv.shared.items():
        _add_running_sum(model, sv.count[w, k], amounts(lambda c, key=(w, k): int(c == key)),
                         v.start, first)
        for b in range(first, n):
            model.add(k * sv.strips[w, k][b] >= sv.count[w, k][b])
    for b in range(n):
        model.add(sv.width[b] + sum(w * sv.strips[w, k][b] for (w, k), first in sv.shared.items()
                                    if first <= b) <= inst.capacity)


def hint_strips(
    model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars, choice: Choice
) -> None:
    """Values of the strip variables for this choice."""
    sv = v.strips
    if sv is None:
        return
    options, wafer_of = choice
    width, count = 0, dict.fromkeys(sv.shared, 0)
    for b, o in enumerate(options):
        if b > 0 and wafer_of[b] != wafer_of[b - 1]:
            width, count = 0, dict.fromkeys(sv.shared, 0)
        c = strip_class_of(inst, b, o)
        if c in sv.shared:
            count[c] += 1
        else:
            width += c[0]
        model.add_hint(sv.width[b], width)
        for (w, k), first in sv.shared.items():
            if b >= first:
                model.add_hint(sv.count[w, k][b], count[w, k])
                model.add_hint(sv.strips[w, k][b], -(-count[w, k] // k))


# -- objective ---------------------------------------------------------------------------------


def residency_terms(
    inst: ResidencyInstance, v: ResidencyVars
) -> list[tuple[str, cp_model.LinearExprT]]:
    """The lexicographic objectives, most important first; constant ones are left out."""
    terms: list[tuple[str, cp_model.LinearExprT]] = []
    for name, value in (("off-chip", lambda o: o.offchip_bytes_per_token),
                        ("cycles", lambda o: o.cycles),
                        ("shape", lambda o: abs(o.rows - o.cols))):
        if any(len({value(inst.option(b, o)) for o in opts}) > 1
               for b, opts in enumerate(inst.options)):
            terms.append((name, sum(_per_block(inst, v, b, value)
                                    for b in range(len(inst.options)))))
    if v.slowest is not None:
        cut_cycles = sum(inst.link_cycles[e] * c for e, c in v.cut.items())
        at = 1 if terms and terms[0][0] == "off-chip" else 0
        terms.insert(at, ("pipeline", v.slowest + cut_cycles))
    return terms


def pipeline_cost(inst: ResidencyInstance, choice: Choice) -> int:
    """The pipeline objective of a choice: slowest wafer's cycles plus cut edges' link cycles."""
    wafer_of = choice[1]
    cuts = sum(inst.link_cycles[e] for e, i, j in inst.edges if wafer_of[i] != wafer_of[j])
    return max(_wafer_sums(inst, choice)) + cuts


def _wafer_sums(inst: ResidencyInstance, choice: Choice) -> list[int]:
    sums = [0] * inst.wafers
    for b, (o, k) in enumerate(zip(*choice, strict=True)):
        sums[k] += inst.option(b, o).cycles
    return sums


def offchip_of(problem: PlacementProblem, options: Sequence[int]) -> int:
    """Streamed bytes per token of these options (without token I/O)."""
    return sum(problem.blocks[b].options[o].offchip_bytes_per_token for b, o in enumerate(options))


# -- hints -------------------------------------------------------------------------------------


Choice = tuple[Sequence[int], Sequence[int]]  # (option per block, wafer per block)


def hint_residency(
    model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars, choice: Choice
) -> None:
    """A complete hint: every variable's value for this choice."""
    options, wafer_of = choice
    model.clear_hints()
    for (b, o), x in v.x.items():
        model.add_hint(x, int(options[b] == o))
    hint_strips(model, inst, v, choice)
    if v.slowest is None:
        return
    load = busy = 0
    for b, o in enumerate(options):
        opened = b > 0 and wafer_of[b] != wafer_of[b - 1]
        if b > 0:
            model.add_hint(v.start[b], int(opened))
        load = (0 if opened else load) + inst.option(b, o).cores
        busy = (0 if opened else busy) + inst.option(b, o).cycles
        if v.load:
            model.add_hint(v.load[b], load)
        model.add_hint(v.busy[b], busy)
    for e, i, j in inst.edges:
        model.add_hint(v.cut[e], int(wafer_of[i] != wafer_of[j]))
    model.add_hint(v.slowest, max(_wafer_sums(inst, choice)))


def residency_hints(inst: ResidencyInstance, greedy: Placement | None) -> list[Choice]:
    """Candidate hints: the greedy residency guess and a greedy placement's choice, if usable."""
    found: list[Choice] = []
    guess = (greedy_residency(inst.problem, inst.capacity) if inst.packing == "area"
             else strip_guess(inst.problem, inst.packing))
    if guess is not None:
        found.append((tuple(as_kept(inst, b, o) for b, o in enumerate(guess[0])), guess[1]))
    if greedy is not None:
        options = tuple(as_kept(inst, b, o) for b, o in enumerate(greedy.options))
        found.append((options, dense([r.wafer for r in greedy.rects])))
    return [c for c in found if _within(inst, c)]


@functools.lru_cache(maxsize=4)
def strip_guess(problem: PlacementProblem, packing: str) -> Choice | None:
    """greedy_strips, once per problem and packing (it is both a hint and a gate)."""
    return greedy_strips(problem, packing)


def dense(wafer_of: Sequence[int]) -> tuple[int, ...]:
    """Wafer indices renumbered 0, 1, ... in order of use (empty wafers dropped)."""
    order = {k: i for i, k in enumerate(sorted(set(wafer_of)))}
    return tuple(order[k] for k in wafer_of)


def _within(inst: ResidencyInstance, choice: Choice) -> bool:
    """The choice uses kept options and each wafer holds its blocks (cores or strips)."""
    options, wafer_of = choice
    if any(o not in inst.options[b] for b, o in enumerate(options)) or max(
            wafer_of, default=0) >= inst.wafers:
        return False
    return all(_holds(inst, [inst.option(b, options[b]) for b in bs])
               for bs in wafer_members(wafer_of).values())


def _holds(inst: ResidencyInstance, chosen: Sequence[Option]) -> bool:
    """One wafer holds these options: by cores (area) or by strips."""
    if inst.packing == "area":
        return sum(o.cores for o in chosen) <= inst.capacity
    p = inst.problem
    return strips_fit(p.rows, p.cols, [(o.rows, o.cols) for o in chosen], inst.packing)


def wafer_members(wafer_of: Sequence[int]) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {}
    for b, k in enumerate(wafer_of):
        members.setdefault(k, []).append(b)
    return members


def _rebalanced(inst: ResidencyInstance, choice: Choice) -> Choice:
    """A hint for the pipeline solve: the same option choices, as they are or spread evenly
    within groups of alike blocks, split into wafer ranges of the least slowest wafer (under
    capacity); the best pipeline of these and `choice` itself."""
    found = [choice]
    for options in (choice[0], spread_choices(inst.problem, choice[0])):
        split = balanced_split([inst.option(b, o).cycles for b, o in enumerate(options)],
                               *_sizes(inst, options))
        if split is not None and _within(inst, (options, split)):
            found.append((options, split))
    return min(found, key=lambda c: pipeline_cost(inst, c))


def _sizes(inst: ResidencyInstance, options: Sequence[int]) -> tuple[list[int], int, int]:
    """Sizes, wafers and capacity for balanced_split: cores, or scaled strip shares (which
    round, so strip splits are checked after)."""
    if inst.packing == "area":
        return [inst.option(b, o).cores for b, o in enumerate(options)], inst.wafers, \
            inst.capacity
    sizes = [math.ceil(SHARE_SCALE * strip_share(inst.problem, inst.option(b, o), inst.packing))
             for b, o in enumerate(options)]
    return sizes, inst.wafers, SHARE_SCALE * inst.capacity


# -- solve and extract -------------------------------------------------------------------------


def fastest_overfill(inst: ResidencyInstance, choice: Choice) -> str | None:
    """Why the choice the terms after off-chip would make cannot pack, if a cheap count
    shows it (a prediction, not a proof): when the off-chip term left every block at its
    least streaming, and those blocks' fastest options (then the squarest) fit the wafers'
    cores, the cycles term leans to them; if more blocks take one shape h x w than the wafers
    hold side by side (rows // h x cols // w each: every such rectangle covers one point of
    that lattice), that choice overfills its wafers. Llama 3 70B: 80 blocks of 304 x 137,
    at most 15 a wafer on 4 wafers; 405B: 126 of 724 x 208, 3 a wafer on 24."""
    p, least, cores, shapes = inst.problem, 0, 0, {}
    for b, opts in enumerate(inst.options):
        least += min(inst.option(b, o).offchip_bytes_per_token for o in opts)
        best = inst.option(b, min(opts, key=lambda o, b=b: _fastest_key(inst.option(b, o), o)))
        cores += best.cores
        shapes[best.rows, best.cols] = shapes.get((best.rows, best.cols), 0) + 1
    if offchip_of(p, choice[0]) != least or cores > inst.wafers * inst.capacity:
        return None
    for (h, w), n in sorted(shapes.items(), key=lambda kv: (-kv[1], kv[0])):
        side_by_side = inst.wafers * (p.rows // h) * (p.cols // w)
        if n > side_by_side:
            return (f"the fastest choice puts {n} blocks on {h} x {w}, {inst.wafers} wafer(s) "
                    f"hold {side_by_side}: stopped there")
    return None


def _fastest_key(o: Option, index: int) -> tuple[int, int, int, int]:
    return o.offchip_bytes_per_token, o.cycles, abs(o.rows - o.cols), index


class NoSolution(Exception):
    """Stage 1 ran out of time before its first solution."""


@dataclass(frozen=True)
class Residency:
    """Stage 1's answer: an option and a wafer per block."""

    options: tuple[int, ...]
    wafer_of: tuple[int, ...]
    optimal: bool
    summary: str
    offchip_bound: int = 0  # streamed bytes no choice under the instance's capacity beats
    complete: bool = True  # every term was solved (solve_residency's `enough` did not stop it)
    # the choice after each term solved before the last, latest first: what the later terms
    # changed (stages._at_floor packs these when the answer does not pack)
    earlier: tuple[tuple[str, Choice], ...] = ()


Enough = Callable[[ResidencyInstance, Choice], str | None]  # why to stop after off-chip, if so


def solve_residency(
    inst: ResidencyInstance, limit: float, clock: Clock, greedy: Placement | None,
    enough: Enough | None = None,
) -> Residency | None:
    """Stage 1, lexicographic. None if infeasible; NoSolution if time ran out empty-handed.
    `enough`: asked after the off-chip term; a reason ends the solve there (the later terms
    are not solved, the answer is not optimal, the reason is in its summary)."""
    model = cp_model.CpModel()
    v = residency_variables(model, inst)
    add_one_option(model, inst, v)
    add_capacity(model, inst, v)
    add_wafer_ranges(model, inst, v)
    add_pipeline(model, inst, v)
    hints = residency_hints(inst, greedy)
    if hints:
        offchip = [sum(inst.option(b, o).offchip_bytes_per_token for b, o in enumerate(c[0]))
                   for c in hints]
        hint_residency(model, inst, v, hints[offchip.index(min(offchip))])
    return _lexicographic(model, inst, v, limit, clock, enough)


def _lexicographic(
    model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars, limit: float,
    clock: Clock, enough: Enough | None = None,
) -> Residency | None:
    terms = residency_terms(inst, v) or [("feasibility", cp_model.LinearExpr.constant(0))]
    weights = [TERM_WEIGHTS.get(name, 1.0) for name, _ in terms]
    left_before, lex = clock.left, _Lex()
    for t, (name, expr) in enumerate(terms):
        left = limit - (left_before - clock.left)
        start = None
        if name == "pipeline" and lex.best is not None:
            start = _rebalanced(inst, lex.best)
            hint_residency(model, inst, v, start)
        model.minimize(expr)
        clock.enter(f"stage 1 {label(inst)}: {name}")
        out = _solve_term(model, left * weights[t] / sum(weights[t:]), clock,
                          0.0 if name == "off-chip" else SECONDARY_GAP,
                          None if start is None else pipeline_cost(inst, start))
        if out.infeasible and lex.best is None:
            return None
        lex.take(model, inst, v, (name, expr), out)
        why = (enough(inst, lex.best) if enough is not None and lex.best is not None
               and name == "off-chip" and t + 1 < len(terms) else None)
        if why is not None:
            lex.lines.append(why)
            lex.optimal = lex.complete = False
            break
        if t + 1 < len(terms) and hopeless(out, limit - (left_before - clock.left),
                                            weights[t + 1:], left * weights[t] / sum(weights[t:])):
            rest = len(terms) - t - 1
            lex.lines.append(f"{', '.join(n for n, _ in terms[t + 1:])} not solved "
                             "(as much time or less on the same model), kept")
            clock.charge(limit - (left_before - clock.left), rest)
            break
    return lex.residency(inst, all(name != "off-chip" for name, _ in terms))


def _solve_term(model: cp_model.CpModel, share: float, clock: Clock, gap: float,
                start_cost: int | None) -> Outcome:
    """One term's solve in `share`. The pipeline term (`start_cost`: its hint's, the balanced
    split of the off-chip choice) runs PIPELINE_TRY of its share first; a search that has not
    bettered its hint by then stops with it, and the clock is charged the whole share, so the
    later solves get the time (and give the answers) they had when it ran on. Otherwise the
    search runs again from the start with the whole share (the first try refunded): the
    answer of one solve in the share, as before."""
    if start_cost is None:
        return run(model, share, clock, gap)
    before = clock.left
    out = run(model, PIPELINE_TRY * share, clock, gap)
    if out.status in (cp_model.OPTIMAL, cp_model.INFEASIBLE):  # the whole share's answer too
        return out
    if out.solved and out.objective >= start_cost:
        clock.charge(max(0.0, share - (before - clock.left) + SOLVE_CHARGE_S), 0)
        return out
    clock.left = before
    return run(model, share, clock, gap)


def hopeless(out: Outcome, left: float, weights: Sequence[float], had: float) -> bool:
    """A term's solve found no solution in its time (`had`, not infeasible) and the next
    term, on the same model with one more constraint, would have no more (Qwen3-235B's
    cycles and shape terms: UNKNOWN both, 0.65 s of the budget each)."""
    return out.name == "UNKNOWN" and left * weights[0] / sum(weights) <= had


@dataclass
class _Lex:
    """The lexicographic solve so far: best choice, whether every term was proven, lines."""

    best: Choice | None = None
    optimal: bool = True
    lines: list[str] = field(default_factory=list)
    offchip_bound: int = 0
    complete: bool = True
    steps: list[tuple[str, Choice]] = field(default_factory=list)  # each term's choice

    def take(self, model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars,
             term: tuple[str, cp_model.LinearExprT], out: Outcome) -> None:
        """Record one term's solve and fix its value for the terms after it."""
        name, expr = term
        if not out.solved:
            if self.best is None:
                raise NoSolution(f"{name} {out.name}")
            self.lines.append(f"{name} {out.name}, kept")
            self.optimal = False
            return
        value = out.value(expr)
        self.best = _extract_residency(out, inst, v)
        self.steps.append((name, self.best))
        self.optimal &= out.optimal
        if name == "off-chip":
            self.offchip_bound = math.ceil(out.bound - 1e-6)
        self.lines.append(f"{name} {value:,} {out.name} (bound {out.bound:,.0f})")
        model.add(expr <= value)
        hint_residency(model, inst, v, self.best)

    def residency(self, inst: ResidencyInstance, offchip_fixed: bool) -> Residency:
        """The answer; strip answers have alike blocks' equal choices side by side."""
        assert self.best is not None
        options, wafer_of = self.best
        bound = offchip_of(inst.problem, options) if offchip_fixed else self.offchip_bound
        strips = inst.packing != "area"  # strips are one way to pack: never proven optimal
        if strips:
            options = grouped_choices(inst.problem, options, wafer_of)
        optimal = self.optimal and not strips and inst.capacity >= inst.problem.cores_per_wafer
        earlier = tuple((name, c) for name, c in reversed(self.steps[:-1])
                        if tuple(c[0]) != tuple(self.best[0]) or tuple(c[1]) != tuple(
                            self.best[1]))
        return Residency(tuple(options), tuple(wafer_of), optimal,
                         f"{label(inst)}: " + "; ".join(self.lines), bound, self.complete,
                         earlier)


def _extract_residency(
    out: Outcome, inst: ResidencyInstance, v: ResidencyVars
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    options = tuple(next(o for o in opts if out.is_true(v.x[b, o]))
                    for b, opts in enumerate(inst.options))
    wafer, wafers = 0, []
    for b in range(len(options)):
        wafer += int(b in v.start and out.is_true(v.start[b]))
        wafers.append(wafer)
    return options, tuple(wafers)


def label(inst: ResidencyInstance) -> str:
    if inst.packing != "area":
        return inst.packing
    return f"factor {inst.capacity / inst.problem.cores_per_wafer:.2f}"
