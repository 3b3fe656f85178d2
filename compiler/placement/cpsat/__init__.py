"""CP-SAT placer (the only module that imports ortools): residency first, then rectangles.

Stage 1 (residency and wafer ranges): one option per block and, with several wafers, one
contiguous block range per wafer, under what a wafer holds. Solved lexicographically: least
off-chip bytes per token; then the pipeline (slowest wafer's cycles plus the link cycles of
inter-wafer bytes); then fewest total cycles; then squarer shapes. Each optimum found is fixed
as a constraint before the next. What a wafer holds is first its core area (factor 1.0: a
relaxation, so its off-chip minimum is a floor for every placement). When that choice does not
pack at the floor, stage 1 is solved again with exact strip packing (greedy.strip_pack: each
class of shapes in full-height columns, or full-width rows, of its own; shapes that tile the
wafer pack with no waste), then, if the area choice did not pack at all, with the area times
falling factors while those may stream less. The packed choice streaming least is kept.

Stage 2 (layout), per wafer with the options fixed: mandatory fixed-size rectangles under
NoOverlap2D, per-edge centre distances in doubled coordinates with the separation cut
dx + dy >= min(w_i + w_j, h_i + h_j) (without it the bound stays at 0, notes/placement.md), and
objective sum bytes x (dx + dy). It always starts from a complete greedy hint (serpentine, else
first-fit shelves, or a skyline), solves on a coarse grid first (at most MAX_CELLS cells a
side), then refines at full resolution inside a window around each coarse position. The answer
is never worse than the hint.

Time and determinism: `time_limit_s` is a wall-clock deadline on the whole solve (every CP-SAT
call stops at it). By default one worker, a fixed seed and a deterministic-time budget of
DET_SHARE of the limit decide when the search ends, so the same input gives the same placement
on any machine that keeps up with DET_PER_SECOND; the deadline stops only a machine that does
not (the report then says so: that result depends on the machine). `on_progress(stage,
objective, bound, elapsed_s)` hears each stage as it starts (objective and bound None) and each
improving incumbent; it does not change the search.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from compiler.errors import InfeasiblePlacementError
from compiler.placement.check import byte_hops, offchip_lower_bound, usable_options
from compiler.placement.greedy import (
    STRIPS,
    Position,
    StripClass,
    alike,
    any_pack,
    balanced_split,
    first_fit,
    greedy_residency,
    greedy_strips,
    grouped_choices,
    serpentine,
    skyline_shapes,
    spread_choices,
    strip_class,
    strip_length,
    strip_share,
    strips_fit,
    usable,
)
from compiler.placement.problem import (
    Option,
    Placement,
    PlacementProblem,
    ProgressHook,
    Rect,
    SolverReport,
)

# Share of a wafer's cores stage 1 may fill, tried in turn while stage 2 cannot pack the choice.
# 1.0 first: when that packs, its off-chip minimum is proven for every placement.
FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
MIN_CELLS, MAX_CELLS = 128, 200  # coarse grid: cells a side (when the grid is larger)
WINDOW_CELLS = 3  # fine refinement: each rectangle moves at most this many cells from coarse
# Of the time limit, for stage 1's tries: area at 1.0; each strip packing and the factor 0.95;
# each lower factor.
STAGE1_SHARES = (0.1, 0.08, 0.05)
# CP-SAT packing when greedy packers fail: all rescues share RESCUE_SHARE of the limit, each
# gets at most RESCUE_STEP of it, and only wafers of at most RESCUE_MAX_BLOCKS blocks try.
RESCUE_SHARE, RESCUE_STEP, RESCUE_MAX_BLOCKS = 0.1, 0.03, 24
SHARE_SCALE = 1_000  # strip shares (fractions of a strip) as integers for balanced_split
COARSE_SHARE = 0.6  # of a wafer's stage-2 time, for the coarse solve
FULL_SHARE = 0.4  # of a layout's time, for one whole-model solve before the neighbourhoods
LNS_SIZES = (6, 10)  # rectangles freed per neighbourhood (block-order runs, clusters)
LNS_STEP = 0.5  # seconds at most per neighbourhood solve
# CP-SAT deterministic time per wall second, measured for these models on the 2-core dev machine
# (0.3-0.45), and a charge per solve for what deterministic time leaves out (presolve, model
# building; 10-20 ms measured for small neighbourhood solves). Time limits are given in seconds
# and converted. In deterministic mode DET_SHARE of the limit goes to solves: headroom for a
# machine up to 1 / DET_SHARE times slower than the calibration (or busy) before the wall-clock
# deadline, at the limit, cuts a solve short (which makes that result depend on the machine).
# With --nondeterministic, WALL_SHARE of the limit goes to solves, the rest is left for Python.
# Either way a solve also stops at FUSE x its own limit.
DET_PER_SECOND = 0.35
SOLVE_CHARGE_S = 0.015
DET_SHARE = 0.6
WALL_SHARE = 0.9
FUSE = 3.0
TERM_WEIGHTS = {"off-chip": 2.0, "pipeline": 2.0, "cycles": 1.0, "shape": 1.0}
SOLVED = (cp_model.OPTIMAL, cp_model.FEASIBLE)


# -- running the solver ------------------------------------------------------------------------


@dataclass(frozen=True)
class SolveParams:
    seed: int
    workers: int
    deterministic: bool


@dataclass
class Clock:
    """Solver time left in seconds (wall seconds, or deterministic time / DET_PER_SECOND), the
    wall-clock deadline (time.perf_counter), and who hears of progress: `stage` names the solve
    running now (None: its incumbents are not reported)."""

    params: SolveParams
    left: float
    deadline: float = math.inf
    on_progress: ProgressHook | None = None
    started: float = field(default_factory=time.perf_counter)
    stage: str | None = None
    scale: float = 1.0  # reported objective and bound = the solve's times this
    cut_short: int = 0  # searches the deadline stopped before their deterministic limit

    def spend(self, solver: cp_model.CpSolver) -> None:
        if self.params.deterministic:
            used = solver.deterministic_time / DET_PER_SECOND + SOLVE_CHARGE_S
        else:
            used = solver.wall_time
        self.left = max(0.0, self.left - used)

    def wall_left(self) -> float:
        return self.deadline - time.perf_counter()

    def cut_by_deadline(self) -> bool:
        """Has the deadline passed (counted as a cut in deterministic mode)?"""
        expired = self.wall_left() <= 0.0
        self.cut_short += expired and self.params.deterministic
        return expired

    def enter(self, stage: str | None, scale: float = 1.0) -> None:
        """Name the solves that follow (and say so); None: do not report their incumbents.
        `scale` turns their objective into the reported unit (stage 2: byte-hops)."""
        self.stage, self.scale = stage, scale
        if stage is not None:
            self.tell(None, None)

    def tell(self, objective: float | None, bound: float | None, stage: str | None = None) -> None:
        """Report an incumbent, a bound (objective None) or, both None, a stage starting."""
        stage = stage or self.stage
        if self.on_progress is not None and stage is not None:
            objective = None if objective is None else objective * self.scale
            bound = None if bound is None else bound * self.scale
            self.on_progress(stage, objective, bound, time.perf_counter() - self.started)


class _Incumbents(cp_model.CpSolverSolutionCallback):
    """Reports each incumbent (objective, bound) of one solve to the clock's hook."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def on_solution_callback(self) -> None:
        self.clock.tell(self.objective_value, self.best_objective_bound)


def run(model: cp_model.CpModel, limit: float, clock: Clock) -> tuple[cp_model.CpSolver, int]:
    """Solve under `limit` seconds of the clock's kind and charge the clock."""
    solver = cp_model.CpSolver()
    p = solver.parameters
    p.random_seed = clock.params.seed
    p.num_workers = clock.params.workers
    limit = max(limit, 0.01)
    wall = max(min(clock.wall_left(), FUSE * limit + 1.0), 0.01)
    if clock.params.deterministic:
        p.max_deterministic_time = limit * DET_PER_SECOND
        p.max_time_in_seconds = wall
        # Several workers are deterministic only interleaved; one worker is deterministic as it
        # is (interleaving one worker was measured NOT to be, ortools 9.15).
        p.interleave_search = clock.params.workers > 1
    else:
        p.max_time_in_seconds = min(limit, wall)
    callback = None
    if clock.on_progress is not None and clock.stage is not None and model.has_objective():
        solver.best_bound_callback = functools.partial(_bound_improved, clock)
        callback = _Incumbents(clock)
    status = _interruptible_solve(solver, model, callback)
    clock.spend(solver)
    if (clock.params.deterministic and status not in (cp_model.OPTIMAL, cp_model.INFEASIBLE)
            and solver.wall_time >= wall * 0.99
            and solver.deterministic_time < p.max_deterministic_time * 0.99):
        clock.cut_short += 1
    return solver, status


def _bound_improved(clock: Clock, bound: float) -> None:
    clock.tell(None, bound)


def _interruptible_solve(solver: cp_model.CpSolver, model: cp_model.CpModel,
                         callback: cp_model.CpSolverSolutionCallback | None = None) -> int:
    """solver.solve in a worker thread, so Ctrl-C (or SIGTERM) reaches Python: the search is
    stopped and the interrupt propagates. CP-SAT's own SIGINT handler is off: it would end the
    search quietly and let the compile carry on with the best solution so far."""
    solver.parameters.catch_sigint_signal = False
    result: list = []

    def work() -> None:
        try:
            result.append(solver.solve(model, callback))
        except BaseException as exc:  # handed to the calling thread
            result.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)
    except BaseException:
        solver.stop_search()
        worker.join()
        raise
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


# -- stage 1: residency and wafer ranges -------------------------------------------------------


@dataclass(frozen=True)
class ResidencyInstance:
    """Stage 1's view: usable options per block, wafers, what a wafer holds, link costs.

    Packing "area": a wafer holds `capacity` cores (a relaxation: the choice may not pack).
    Packing "columns" or "rows": a wafer holds strips of total width `capacity` (greedy.py's
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


def residency_instance(
    problem: PlacementProblem, factor: float = 1.0, packing: str = "area"
) -> ResidencyInstance:
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


# -- stage 1 strip capacity --------------------------------------------------------------------


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

    def amounts(chosen: Callable[[StripClass], int]) -> list[cp_model.LinearExprT]:
        return [sum(chosen(strip_class_of(inst, b, o)) * v.x[b, o] for o in inst.options[b])
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


class _NoSolution(Exception):
    """Stage 1 ran out of time before its first solution."""


@dataclass(frozen=True)
class Residency:
    """Stage 1's answer: an option and a wafer per block."""

    options: tuple[int, ...]
    wafer_of: tuple[int, ...]
    optimal: bool
    summary: str
    offchip_bound: int = 0  # streamed bytes no choice under the instance's capacity beats


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


def _wafer_sums(inst: ResidencyInstance, choice: Choice) -> list[int]:
    sums = [0] * inst.wafers
    for b, (o, k) in enumerate(zip(*choice, strict=True)):
        sums[k] += inst.option(b, o).cycles
    return sums


def residency_hints(inst: ResidencyInstance, greedy: Placement | None) -> list[Choice]:
    """Candidate hints: the greedy residency guess and a greedy placement's choice, if usable."""
    found: list[Choice] = []
    guess = (greedy_residency(inst.problem, inst.capacity) if inst.packing == "area"
             else strip_guess(inst.problem, inst.packing))
    if guess is not None:
        found.append((tuple(as_kept(inst, b, o) for b, o in enumerate(guess[0])), guess[1]))
    if greedy is not None:
        options = tuple(as_kept(inst, b, o) for b, o in enumerate(greedy.options))
        found.append((options, _dense([r.wafer for r in greedy.rects])))
    return [c for c in found if _within(inst, c)]


@functools.lru_cache(maxsize=4)
def strip_guess(problem: PlacementProblem, packing: str) -> Choice | None:
    """greedy_strips, once per problem and packing (it is both a hint and a gate)."""
    return greedy_strips(problem, packing)


def _dense(wafer_of: Sequence[int]) -> tuple[int, ...]:
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
               for bs in _wafer_members(wafer_of).values())


def _holds(inst: ResidencyInstance, chosen: Sequence[Option]) -> bool:
    """One wafer holds these options: by cores (area) or by strips."""
    if inst.packing == "area":
        return sum(o.cores for o in chosen) <= inst.capacity
    p = inst.problem
    return strips_fit(p.rows, p.cols, [(o.rows, o.cols) for o in chosen], inst.packing)


def solve_residency(
    inst: ResidencyInstance, limit: float, clock: Clock, greedy: Placement | None
) -> Residency | None:
    """Stage 1, lexicographic. None if infeasible; _NoSolution if time ran out empty-handed."""
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
    return _lexicographic(model, inst, v, limit, clock)


def _lexicographic(
    model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars, limit: float, clock: Clock
) -> Residency | None:
    terms = residency_terms(inst, v) or [("feasibility", cp_model.LinearExpr.constant(0))]
    weights = [TERM_WEIGHTS.get(name, 1.0) for name, _ in terms]
    left_before, lex = clock.left, _Lex()
    for t, (name, expr) in enumerate(terms):
        left = limit - (left_before - clock.left)
        if name == "pipeline" and lex.best is not None:
            hint_residency(model, inst, v, _rebalanced(inst, lex.best))
        model.minimize(expr)
        clock.enter(f"stage 1 {_label(inst)}: {name}")
        solver, status = run(model, left * weights[t] / sum(weights[t:]), clock)
        if status == cp_model.INFEASIBLE and lex.best is None:
            return None
        lex.take(model, inst, v, (name, expr), solver, status)
    return lex.residency(inst, all(name != "off-chip" for name, _ in terms))


@dataclass
class _Lex:
    """The lexicographic solve so far: best choice, whether every term was proven, lines."""

    best: Choice | None = None
    optimal: bool = True
    lines: list[str] = field(default_factory=list)
    offchip_bound: int = 0

    def take(self, model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars,
             term: tuple[str, cp_model.LinearExprT], solver: cp_model.CpSolver,
             status: int) -> None:
        """Record one term's solve and fix its value for the terms after it."""
        name, expr = term
        if status not in SOLVED:
            if self.best is None:
                raise _NoSolution(f"{name} {solver.status_name(status)}")
            self.lines.append(f"{name} {solver.status_name(status)}, kept")
            self.optimal = False
            return
        value = int(solver.value(expr))
        self.best = _extract_residency(solver, inst, v)
        self.optimal &= status == cp_model.OPTIMAL
        if name == "off-chip":
            self.offchip_bound = math.ceil(solver.best_objective_bound - 1e-6)
        self.lines.append(f"{name} {value:,} {solver.status_name(status)} "
                          f"(bound {solver.best_objective_bound:,.0f})")
        model.add(expr <= value)
        hint_residency(model, inst, v, self.best)

    def residency(self, inst: ResidencyInstance, offchip_fixed: bool) -> Residency:
        """The answer; strip answers have alike blocks' equal choices side by side."""
        assert self.best is not None
        options, wafer_of = self.best
        bound = _offchip(inst.problem, options) if offchip_fixed else self.offchip_bound
        strips = inst.packing != "area"  # strips are one way to pack: never proven optimal
        if strips:
            options = grouped_choices(inst.problem, options, wafer_of)
        optimal = self.optimal and not strips and inst.capacity >= inst.problem.cores_per_wafer
        return Residency(tuple(options), tuple(wafer_of), optimal,
                         f"{_label(inst)}: " + "; ".join(self.lines), bound)


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


def pipeline_cost(inst: ResidencyInstance, choice: Choice) -> int:
    """The pipeline objective of a choice: slowest wafer's cycles plus cut edges' link cycles."""
    wafer_of = choice[1]
    cuts = sum(inst.link_cycles[e] for e, i, j in inst.edges if wafer_of[i] != wafer_of[j])
    return max(_wafer_sums(inst, choice)) + cuts


def _extract_residency(
    solver: cp_model.CpSolver, inst: ResidencyInstance, v: ResidencyVars
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    options = tuple(next(o for o in opts if solver.boolean_value(v.x[b, o]))
                    for b, opts in enumerate(inst.options))
    wafer, wafers = 0, []
    for b in range(len(options)):
        wafer += int(b in v.start and solver.boolean_value(v.start[b]))
        wafers.append(wafer)
    return options, tuple(wafers)


# -- stage 2: rectangles on one wafer ----------------------------------------------------------


@dataclass(frozen=True)
class LayoutInstance:
    """Rectangles of fixed size on a rows x cols grid (cells or cores), with weighted edges."""

    rows: int
    cols: int
    dims: tuple[tuple[int, int], ...]  # (rows, cols) per rectangle
    edges: tuple[tuple[int, int, int], ...]  # (i, j, weight) between local rectangles, i != j
    row_range: tuple[tuple[int, int], ...]  # allowed top rows [lo, hi] per rectangle
    col_range: tuple[tuple[int, int], ...]
    hint: tuple[Position, ...] | None


def full_ranges(rows: int, cols: int, dims: Sequence[tuple[int, int]]) -> dict:
    return {"row_range": tuple((0, rows - h) for h, _ in dims),
            "col_range": tuple((0, cols - w) for _, w in dims)}


def layout_lower_bound(inst: LayoutInstance) -> int:
    """Separation bound on the doubled cost: non-overlapping centres are this far apart."""
    return sum(w * min(inst.dims[i][0] + inst.dims[j][0], inst.dims[i][1] + inst.dims[j][1])
               for i, j, w in inst.edges)


def layout_cost(inst: LayoutInstance, spots: Sequence[Position]) -> int:
    """Sum of weight x doubled Manhattan distance between centres."""
    total = 0
    for i, j, weight in inst.edges:
        (ri, ci), (hi, wi) = spots[i], inst.dims[i]
        (rj, cj), (hj, wj) = spots[j], inst.dims[j]
        total += weight * (abs(2 * ri + hi - 2 * rj - hj) + abs(2 * ci + wi - 2 * cj - wj))
    return total


@dataclass
class LayoutVars:
    row: list[cp_model.IntVar]
    col: list[cp_model.IntVar]
    row_iv: list[cp_model.IntervalVar]
    col_iv: list[cp_model.IntervalVar]
    drow: list[cp_model.IntVar] = field(default_factory=list)  # doubled, per edge
    dcol: list[cp_model.IntVar] = field(default_factory=list)


def layout_variables(model: cp_model.CpModel, inst: LayoutInstance) -> LayoutVars:
    row = [model.new_int_var(lo, hi, f"row[{i}]") for i, (lo, hi) in enumerate(inst.row_range)]
    col = [model.new_int_var(lo, hi, f"col[{i}]") for i, (lo, hi) in enumerate(inst.col_range)]
    row_iv = [model.new_fixed_size_interval_var(row[i], h, f"rows[{i}]")
              for i, (h, _) in enumerate(inst.dims)]
    col_iv = [model.new_fixed_size_interval_var(col[i], w, f"cols[{i}]")
              for i, (_, w) in enumerate(inst.dims)]
    v = LayoutVars(row, col, row_iv, col_iv)
    for e, (i, j, _) in enumerate(inst.edges):
        v.drow.append(model.new_int_var(0, 2 * inst.rows, f"drow[{e}:{i},{j}]"))
        v.dcol.append(model.new_int_var(0, 2 * inst.cols, f"dcol[{e}:{i},{j}]"))
    return v


def add_no_overlap(model: cp_model.CpModel, inst: LayoutInstance, v: LayoutVars) -> None:
    model.add_no_overlap_2d(v.col_iv, v.row_iv)


def add_edge_distances(model: cp_model.CpModel, inst: LayoutInstance, v: LayoutVars) -> None:
    """d >= |centre difference| (doubled) both ways, and the separation cut on dr + dc."""
    for e, (i, j, _) in enumerate(inst.edges):
        (hi, wi), (hj, wj) = inst.dims[i], inst.dims[j]
        row_diff = 2 * v.row[i] + hi - 2 * v.row[j] - hj
        col_diff = 2 * v.col[i] + wi - 2 * v.col[j] - wj
        model.add(v.drow[e] >= row_diff)
        model.add(v.drow[e] >= -row_diff)
        model.add(v.dcol[e] >= col_diff)
        model.add(v.dcol[e] >= -col_diff)
        model.add(v.drow[e] + v.dcol[e] >= min(hi + hj, wi + wj))


def layout_objective(inst: LayoutInstance, v: LayoutVars) -> cp_model.LinearExprT:
    return sum(w * (v.drow[e] + v.dcol[e]) for e, (_, _, w) in enumerate(inst.edges))


def add_objective_floor(model: cp_model.CpModel, inst: LayoutInstance, v: LayoutVars) -> None:
    """The separation bound as one row, so reaching it proves optimality at once."""
    model.add(layout_objective(inst, v) >= layout_lower_bound(inst))


def hint_layout(model: cp_model.CpModel, inst: LayoutInstance, v: LayoutVars) -> None:
    """A complete hint: positions and the distances they imply."""
    if inst.hint is None:
        return
    for i, (r, c) in enumerate(inst.hint):
        model.add_hint(v.row[i], r)
        model.add_hint(v.col[i], c)
    for e, (i, j, _) in enumerate(inst.edges):
        (ri, ci), (hi, wi) = inst.hint[i], inst.dims[i]
        (rj, cj), (hj, wj) = inst.hint[j], inst.dims[j]
        model.add_hint(v.drow[e], abs(2 * ri + hi - 2 * rj - hj))
        model.add_hint(v.dcol[e], abs(2 * ci + wi - 2 * cj - wj))


@dataclass(frozen=True)
class LayoutResult:
    spots: tuple[Position, ...] | None
    status: str
    objective: int | None
    bound: float
    wall_time_s: float
    note: str = ""


def solve_layout(
    inst: LayoutInstance, limit: float, clock: Clock, *, minimize: bool = True
) -> LayoutResult:
    """Solve one layout; `minimize=False` only looks for a packing."""
    model = cp_model.CpModel()
    v = layout_variables(model, inst)
    add_no_overlap(model, inst, v)
    add_edge_distances(model, inst, v)
    if minimize:
        add_objective_floor(model, inst, v)
        model.minimize(layout_objective(inst, v))
    hint_layout(model, inst, v)
    solver, status = run(model, limit, clock)
    name = solver.status_name(status)
    if status not in SOLVED:
        return LayoutResult(None, name, None, 0.0, solver.wall_time)
    spots = tuple((int(solver.value(r)), int(solver.value(c))) for r, c in zip(v.row, v.col,
                                                                              strict=True))
    if not minimize:
        return LayoutResult(spots, name, None, 0.0, solver.wall_time)
    return LayoutResult(spots, name, int(solver.objective_value),
                        solver.best_objective_bound, solver.wall_time)


# -- stage 2 per wafer: instances ------------------------------------------------------------


@dataclass(frozen=True)
class WaferLayout:
    spots: tuple[Position, ...]
    cost: int  # doubled byte-hops (weights are bytes)
    bound: float  # a lower bound on the doubled cost for these shapes (separation or solver)
    optimal: bool
    summary: str


def wafer_edges(problem: PlacementProblem, members: Sequence[int]) -> tuple[tuple[int, int, int],
                                                                             ...]:
    """Edges inside one wafer in local indices, parallel edges merged."""
    local = {b: i for i, b in enumerate(members)}
    merged: dict[tuple[int, int], int] = {}
    for e in problem.edges:
        if e.src in local and e.dst in local and e.src != e.dst:
            key = (min(local[e.src], local[e.dst]), max(local[e.src], local[e.dst]))
            merged[key] = merged.get(key, 0) + e.bytes_per_token
    return tuple((i, j, w) for (i, j), w in sorted(merged.items()) if w > 0)


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


# -- stage 2 improvement: large neighbourhoods, deterministic ----------------------------------


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
    inst: LayoutInstance, spots: Sequence[Position]
) -> list[frozenset[int]]:
    """One pass: chain runs and spatial clusters, small ones first."""
    return [free for size in LNS_SIZES
            for free in _runs(len(inst.dims), size) + _clusters(inst, spots, size)]


def improve(
    inst: LayoutInstance, spots: tuple[Position, ...], limit: float, clock: Clock,
    bound: float = 0.0,
) -> tuple[tuple[Position, ...], str]:
    """Re-solve neighbourhoods with the other rectangles fixed, while that pays and time
    lasts. CP-SAT's own neighbourhood search needs several workers; this one is deterministic
    with one. Progress reports the whole layout's cost against `bound` (the whole solve's)."""
    left_before, cost, solves, gains, gained = clock.left, layout_cost(inst, spots), 0, 0, True
    stage, scale = f"{clock.stage} LNS" if clock.stage else None, clock.scale
    clock.enter(None, scale)  # a neighbourhood's own objective is not the layout's
    while gained:
        gained = False
        for free in neighbourhoods(inst, spots):
            left = limit - (left_before - clock.left)
            if left <= 0.01 or clock.cut_by_deadline():
                return spots, f"{solves} neighbourhoods, {gains} better"
            res = solve_layout(neighbourhood(inst, spots, free), min(left, LNS_STEP), clock)
            solves += 1
            new_cost = layout_cost(inst, res.spots) if res.spots is not None else cost
            if res.spots is not None and new_cost < cost:
                spots, cost, gains, gained = res.spots, new_cost, gains + 1, True
                clock.tell(cost, bound, stage)
    return spots, f"{solves} neighbourhoods, {gains} better"


def optimise(inst: LayoutInstance, limit: float, clock: Clock) -> LayoutResult:
    """One whole-model solve from the hint, then neighbourhoods unless it proved optimality."""
    started, left_before = time.perf_counter(), clock.left
    res = solve_layout(inst, limit * FULL_SHARE, clock)
    spots = res.spots or inst.hint
    if res.status == "OPTIMAL" or spots is None:
        return res
    spots, note = improve(inst, spots, limit - (left_before - clock.left), clock, res.bound)
    return LayoutResult(spots, "FEASIBLE", layout_cost(inst, spots), res.bound,
                        time.perf_counter() - started, note)


# -- stage 2 per wafer: hint, coarse, fine -----------------------------------------------------


def place_wafer(fine: LayoutInstance, limit: float, clock: Clock,
                name: str = "layout") -> WaferLayout:
    """Best of the hint, and CP-SAT coarse-then-windowed (or full when the grid is small)."""
    assert fine.hint is not None
    hint_cost = layout_cost(fine, fine.hint)
    if not fine.edges or hint_cost == 0:
        return WaferLayout(fine.hint, hint_cost, hint_cost, True,
                           "no edges to shorten: greedy kept")
    cell, left_before, notes = cell_size(fine), clock.left, []
    coarse = coarse_instance(fine, cell) if cell > 1 else None
    refine, full_grid = fine, True
    if coarse is not None:
        clock.enter(f"stage 2 {name} coarse", cell / 2)  # about byte-hops
        res = optimise(coarse, limit * COARSE_SHARE, clock)
        notes.append(f"coarse {cell}x{cell} cells {coarse.rows}x{coarse.cols}: "
                     + _describe(res))
        if res.spots is not None:
            start = [(r * cell, c * cell) for r, c in res.spots]
            if layout_cost(fine, start) > hint_cost:  # rounding lost more than coarse won
                start, notes[-1] = list(fine.hint), notes[-1] + ", refining the hint instead"
            refine, full_grid = window_instance(fine, start, cell), False
    elif cell > 1:
        notes.append("coarse rounding does not pack: fine on the full grid")
    clock.enter(f"stage 2 {name} fine", 0.5)  # doubled coordinates: byte-hops
    res = optimise(refine, limit - (left_before - clock.left), clock)
    notes.append(f"fine{'' if full_grid else f' window +-{WINDOW_CELLS * cell}'}: "
                 + _describe(res))
    return _best_of(fine, res, hint_cost, full_grid, notes)


def _describe(res: LayoutResult) -> str:
    """Status and neighbourhood counts; no wall times, so summaries repeat run to run."""
    return res.status + (f" ({res.note})" if res.note else "")


def _best_of(
    fine: LayoutInstance, res: LayoutResult, hint_cost: int, full_grid: bool, notes: list[str]
) -> WaferLayout:
    assert fine.hint is not None
    bound = max(layout_lower_bound(fine),
                res.bound if full_grid and res.spots is not None else 0.0)
    if res.spots is None or res.objective is None or res.objective >= hint_cost:
        notes.append(f"greedy hint kept ({hint_cost / 2:,.0f} byte-hops)")
        optimal = full_grid and res.status == "OPTIMAL"  # then the hint is an optimum too
        return WaferLayout(fine.hint, hint_cost, bound, optimal, "; ".join(notes))
    optimal = full_grid and res.status == "OPTIMAL"
    notes.append(f"{hint_cost / 2:,.0f} -> {res.objective / 2:,.0f} byte-hops")
    return WaferLayout(res.spots, res.objective, bound, optimal, "; ".join(notes))


# -- the whole solve ---------------------------------------------------------------------------


@dataclass
class _Run:
    """The solve in progress: problem, options, clock and what each stage said."""

    problem: PlacementProblem
    time_limit_s: float
    clock: Clock
    started: float = field(default_factory=time.perf_counter)
    stages: list[tuple[str, str]] = field(default_factory=list)
    rescue_left: float = 0.0  # seconds left for CP-SAT packing rescues, over all attempts

    def __post_init__(self) -> None:
        self.rescue_left = RESCUE_SHARE * self.time_limit_s


def _wafer_members(wafer_of: Sequence[int]) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {}
    for b, k in enumerate(wafer_of):
        members.setdefault(k, []).append(b)
    return members


def _layout_for(
    problem: PlacementProblem, options: Sequence[int], members: Sequence[int]
) -> LayoutInstance:
    dims = tuple((problem.blocks[b].options[options[b]].rows,
                  problem.blocks[b].options[options[b]].cols) for b in members)
    return LayoutInstance(problem.rows, problem.cols, dims, wafer_edges(problem, members),
                          hint=None, **full_ranges(problem.rows, problem.cols, dims))


def greedy_hints(r: _Run, res: Residency) -> tuple[Residency, dict[int, LayoutInstance]] | None:
    """Per wafer, the layout instance with a complete packing hint (None if one cannot pack).
    A wafer whose shapes do not pack may switch blocks to other shapes that stream the same
    bytes (the returned Residency says so)."""
    problem, out, options, flexed = r.problem, {}, list(res.options), 0
    for k, members in sorted(_wafer_members(res.wafer_of).items()):
        inst = _layout_for(problem, options, members)
        spots = any_pack(inst.rows, inst.cols, inst.dims)
        if spots is None:
            flex = _flex_shapes(problem, options, members)
            if flex is not None:  # new shapes; serpentine on them may pack now, and closer
                flexed += sum(options[b] != res.options[b] for b in members)
                inst = _layout_for(problem, options, members)
                spots = any_pack(inst.rows, inst.cols, inst.dims) or flex
        spots = spots or _rescue(r, inst)
        if spots is None:
            return None
        out[k] = dataclasses.replace(inst, hint=spots)
    if flexed:
        res = dataclasses.replace(res, options=tuple(options), optimal=False, summary=(
            res.summary + f"; {flexed} block(s) changed shape to pack"))
    return res, out


def _flex_shapes(
    problem: PlacementProblem, options: list[int], members: Sequence[int]
) -> tuple[Position, ...] | None:
    """Skyline-pack these blocks letting each take any shape streaming the same bytes in the
    same mode; on success, update `options` in place."""
    alternatives = []
    for b in members:
        now = problem.blocks[b].options[options[b]]
        same = [o for o in usable_options(problem, b) if o != options[b] and alike(
            problem.blocks[b].options[o], now)]
        alternatives.append([options[b], *same])
    found = skyline_shapes(problem.rows, problem.cols, [
        [(problem.blocks[b].options[o].rows, problem.blocks[b].options[o].cols) for o in alts]
        for b, alts in zip(members, alternatives, strict=True)])
    if found is None:
        return None
    for b, alts, s in zip(members, alternatives, found[1], strict=True):
        options[b] = alts[s]
    return found[0]


def _rescue(r: _Run, inst: LayoutInstance) -> tuple[Position, ...] | None:
    """CP-SAT packing with no hint, for a few rectangles that greedy packers cannot fit."""
    if len(inst.dims) > RESCUE_MAX_BLOCKS or r.rescue_left <= 0.05:
        return None
    left_before, stage = r.clock.left, r.clock.stage
    r.clock.enter("packing rescue")
    found = solve_layout(inst, min(r.rescue_left, RESCUE_STEP * r.time_limit_s), r.clock,
                         minimize=False).spots
    r.rescue_left -= left_before - r.clock.left
    r.clock.stage = stage
    return found


def solve(
    problem: PlacementProblem,
    *,
    time_limit_s: float = 30.0,
    seed: int = 0,
    workers: int = 1,
    deterministic: bool = True,
    on_progress: ProgressHook | None = None,
) -> Placement:
    """Place every block: CP-SAT stage 1 (residency, wafers), then stage 2 (layout per wafer).
    Every solve ends by `time_limit_s` wall seconds from now (module docstring)."""
    for b in range(len(problem.blocks)):
        usable(problem, b)  # raises InfeasiblePlacementError naming a block with no option
    params = SolveParams(seed, max(1, workers), deterministic)
    share = DET_SHARE if deterministic else WALL_SHARE
    clock = Clock(params, share * time_limit_s, time.perf_counter() + time_limit_s, on_progress)
    r = _Run(problem, time_limit_s, clock)
    residency, layouts = _stages_1(r)
    if residency is None or layouts is None:
        return _greedy_fallback(r)
    placed = {k: place_wafer(inst, _wafer_share(r, layouts, k), r.clock, f"wafer {k}")
              for k, inst in sorted(layouts.items())}
    for k, lay in placed.items():
        r.stages.append((f"wafer {k}", f"{len(layouts[k].dims)} blocks; {lay.summary}"))
    return _assemble(r, residency, layouts, placed)


def _note_deadline(r: _Run) -> None:
    """Say so when the wall-clock limit, not the deterministic budget, ended solves."""
    if r.clock.cut_short:
        r.stages.append(("time limit", (
            f"the wall clock ({r.time_limit_s:g} s limit, or a solve's fuse) stopped the search "
            f"{r.clock.cut_short} time(s) before its deterministic budget: this placement "
            "depends on the machine's speed; a larger --time-limit makes it reproducible")))


Packed = tuple[Residency, dict[int, LayoutInstance]]  # a choice and its packed layouts


def _stages_1(r: _Run) -> tuple[Residency | None, dict[int, LayoutInstance] | None]:
    """Stage 1 until stage 2's greedy hints can pack its choice. By area at factor 1.0 first
    (its off-chip minimum, or the analytic bound, is a floor for every placement); unless that
    packs at the floor, by strips (exact packings), then, if area did not pack, by area at
    falling factors while those may stream less. The packed choice streaming least (then
    with the least pipeline cost) is kept."""
    problem, hint = r.problem, _greedy_hint(r.problem)
    first = _residency_or_hint(r, residency_instance(problem), STAGE1_SHARES[0], hint)
    if first is None:
        raise _stage1_infeasible(problem)
    floor = max(first.offchip_bound, offchip_lower_bound(problem) - problem.io_bytes_per_token)
    area = _packed(r, first)
    found = [area] if area is not None else []
    if _least(r, found) > floor:
        found += _by_strips(r, hint, floor, _least(r, found))
    if area is None and _least(r, found) > floor:
        found += _by_falling_factors(r, hint, _least(r, found))
    if not found:
        return None, None
    inst = residency_instance(problem)
    best = min(found, key=lambda p: (_offchip(problem, p[0].options),
                                     pipeline_cost(inst, (p[0].options, p[0].wafer_of))))
    if len(found) > 1:
        r.stages.append(("residency", f"kept {best[0].summary.split(':')[0]}"))
    return best


def _least(r: _Run, found: Sequence[Packed]) -> float:
    return min((_offchip(r.problem, p[0].options) for p in found), default=math.inf)


def _packed(r: _Run, res: Residency) -> Packed | None:
    """The choice with its packing hints (stage recorded), or None if it does not pack."""
    packed = greedy_hints(r, res)
    r.stages.append(("residency", res.summary + "; does not pack" if packed is None
                     else packed[0].summary))
    return packed


def _by_strips(r: _Run, hint: Placement | None, floor: float, beat: float) -> list[Packed]:
    """Stage 1 by columns, then rows, until one packs at the floor; a packing is solved only
    when its greedy choice exists and streams less than `beat` (what already packs)."""
    found: list[Packed] = []
    for packing in STRIPS:
        guess = strip_guess(r.problem, packing)
        if guess is None or _offchip(r.problem, guess[0]) >= min(beat, _least(r, found)):
            r.stages.append(("residency", f"{packing}: " + (
                "the blocks do not fit" if guess is None else "greedy streams no less, skipped")))
            continue
        res = _residency_or_hint(r, residency_instance(r.problem, packing=packing),
                                 STAGE1_SHARES[1], hint)
        if res is None:
            r.stages.append(("residency", f"{packing}: the blocks do not fit"))
            continue
        packed = _packed(r, res)
        if packed is not None:
            found.append(packed)
            if _least(r, found) <= floor:
                break
    return found


def _by_falling_factors(r: _Run, hint: Placement | None, best: float) -> list[Packed]:
    """Stage 1 by area at factors below 1.0 until one packs or streams at least `best`."""
    for attempt, factor in enumerate(FACTORS[1:], start=1):
        share = STAGE1_SHARES[min(attempt, len(STAGE1_SHARES) - 1)]
        res = _residency_or_hint(r, residency_instance(r.problem, factor), share, hint)
        if res is None:
            r.stages.append(("residency", f"factor {factor:.2f}: infeasible"))
            return []
        if _offchip(r.problem, res.options) >= best:
            r.stages.append(("residency", res.summary + "; streams no less: stop"))
            return []
        packed = _packed(r, res)
        if packed is not None:
            return [packed]
    return []


def _residency_or_hint(
    r: _Run, inst: ResidencyInstance, share: float, greedy: Placement | None
) -> Residency | None:
    """Stage 1's answer in `share` of the time limit, or a greedy choice when that streams
    less or time ran out (None: infeasible, or strips and nothing found)."""
    limit = share * r.time_limit_s
    try:
        res = solve_residency(inst, limit, r.clock, greedy)
    except _NoSolution as err:
        hints = residency_hints(inst, greedy)
        if not hints and inst.packing != "area":
            return None
        if not hints:
            raise InfeasiblePlacementError(
                f"{r.problem.name}: stage 1 found no option choice in {limit:.1f} s ({err}); "
                "give the solver more time") from None
        best = min(hints, key=lambda c: _offchip(r.problem, c[0]))
        return Residency(tuple(best[0]), tuple(best[1]), False,
                         f"{_label(inst)}: {err}, greedy choice")
    if res is not None and greedy is not None and (
            _offchip(r.problem, greedy.options) < _offchip(r.problem, res.options)):
        return Residency(greedy.options, _dense([rc.wafer for rc in greedy.rects]), False,
                         res.summary + f"; {greedy.report.method} streams less, its choice kept",
                         res.offchip_bound)
    return res


def _label(inst: ResidencyInstance) -> str:
    if inst.packing != "area":
        return inst.packing
    return f"factor {inst.capacity / inst.problem.cores_per_wafer:.2f}"


def _greedy_hint(problem: PlacementProblem) -> Placement | None:
    for placer in (serpentine, first_fit):
        try:
            return placer(problem)
        except InfeasiblePlacementError:
            continue
    return None


def _stage1_infeasible(problem: PlacementProblem) -> InfeasiblePlacementError:
    need = sum(min(o.cores for _, o in usable(problem, b)) for b in range(len(problem.blocks)))
    have = problem.wafers * problem.cores_per_wafer
    why = ("" if need > have else
           f"; no split of the blocks into {problem.wafers} contiguous wafer range(s) of at most "
           f"{problem.cores_per_wafer:,} cores each exists")
    return InfeasiblePlacementError(
        f"{problem.name}: the blocks need at least {need:,} cores with their smallest usable "
        f"options, and {problem.wafers} wafer(s) x {problem.cores_per_wafer:,} = {have:,} cores "
        f"are available{why}; use more wafers or options with fewer cores"
    )


def _wafer_share(r: _Run, layouts: dict[int, LayoutInstance], k: int) -> float:
    """This wafer's part of the time left, by its edges among the wafers not yet solved."""
    weights = {j: len(inst.edges) for j, inst in layouts.items() if j >= k}
    total = sum(weights.values())
    return r.clock.left * weights[k] / total if total else 0.0


def _greedy_fallback(r: _Run) -> Placement:
    """Stage 1 could not give a packable choice: the better greedy placement, else infeasible."""
    found = []
    for placer in (serpentine, first_fit):
        try:
            found.append(placer(r.problem))
        except InfeasiblePlacementError as err:
            r.stages.append((placer.__name__, str(err)))
    if not found:
        raise InfeasiblePlacementError(
            f"{r.problem.name}: no packing found; " + "; ".join(s for _, s in r.stages))
    best = min(found, key=lambda p: (_offchip(r.problem, p.options), byte_hops(r.problem, p)))
    r.stages.append(("fallback", f"stage 1's choices did not pack: {best.report.method} kept"))
    return Placement(best.options, best.rects, _report(r, "FEASIBLE", best, None))


def _offchip(problem: PlacementProblem, options: Sequence[int]) -> int:
    """Streamed bytes per token of these options (without token I/O)."""
    return sum(problem.blocks[b].options[o].offchip_bytes_per_token for b, o in enumerate(options))


def _assemble(
    r: _Run, res: Residency, layouts: dict[int, LayoutInstance], placed: dict[int, WaferLayout]
) -> Placement:
    rects: list[Rect | None] = [None] * len(r.problem.blocks)
    for k, members in _wafer_members(res.wafer_of).items():
        for b, (row, col), (h, w) in zip(members, placed[k].spots, layouts[k].dims, strict=True):
            rects[b] = Rect(k, row, col, h, w)
    placement = Placement(res.options, tuple(rc for rc in rects if rc is not None))
    bound = sum(lay.bound for lay in placed.values()) / 2
    optimal = res.optimal and all(lay.optimal for lay in placed.values())
    report = _report(r, "OPTIMAL" if optimal else "FEASIBLE", placement, bound)
    return Placement(placement.options, placement.rects, report)


def _report(r: _Run, status: str, placement: Placement, bound: float | None) -> SolverReport:
    params = r.clock.params
    _note_deadline(r)
    return SolverReport(
        method="cpsat", status=status, objective=byte_hops(r.problem, placement), bound=bound,
        wall_time_s=time.perf_counter() - r.started, seed=params.seed, workers=params.workers,
        time_limit_s=r.time_limit_s, deterministic=params.deterministic, stages=tuple(r.stages),
    )
