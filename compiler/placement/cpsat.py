"""CP-SAT placer (the only module that imports ortools): residency first, then rectangles.

Stage 1 (residency and wafer ranges): one option per block and, with several wafers, one
contiguous block range per wafer, under each wafer's core area times a packing factor. Solved
lexicographically: least off-chip bytes per token; then the pipeline (slowest wafer's cycles
plus the link cycles of inter-wafer bytes); then fewest total cycles; then squarer shapes. Each
optimum found is fixed as a constraint before the next. The factor starts at 1.0 (then the
off-chip minimum is proven for every placement) and falls while stage 2 cannot pack the choice.

Stage 2 (layout), per wafer with the options fixed: mandatory fixed-size rectangles under
NoOverlap2D, per-edge centre distances in doubled coordinates with the separation cut
dx + dy >= min(w_i + w_j, h_i + h_j) (without it the bound stays at 0, notes/placement.md), and
objective sum bytes x (dx + dy). It always starts from a complete greedy hint (serpentine, else
first-fit shelves, or a skyline), solves on a coarse grid first (at most MAX_CELLS cells a
side), then refines at full resolution inside a window around each coarse position. The answer
is never worse than the hint.

Determinism: by default one worker, a fixed seed and a deterministic-time limit, so the same
input gives the same placement; a wall-clock fuse of FUSE x the limit guards against runaways.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from compiler.errors import InfeasiblePlacementError
from compiler.placement.check import byte_hops, usable_options
from compiler.placement.greedy import (
    Position,
    any_pack,
    balanced_split,
    first_fit,
    greedy_residency,
    serpentine,
    skyline_shapes,
    spread_choices,
    usable,
)
from compiler.placement.problem import Option, Placement, PlacementProblem, Rect, SolverReport

# Share of a wafer's cores stage 1 may fill, tried in turn while stage 2 cannot pack the choice.
# 1.0 first: when that packs, its off-chip minimum is proven for every placement.
FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
MIN_CELLS, MAX_CELLS = 128, 200  # coarse grid: cells a side (when the grid is larger)
WINDOW_CELLS = 3  # fine refinement: each rectangle moves at most this many cells from coarse
STAGE1_SHARES = (0.1, 0.08, 0.05)  # of the time limit, for stage 1's tries (the last repeats)
# CP-SAT packing when greedy packers fail: all rescues share RESCUE_SHARE of the limit, each
# gets at most RESCUE_STEP of it, and only wafers of at most RESCUE_MAX_BLOCKS blocks try.
RESCUE_SHARE, RESCUE_STEP, RESCUE_MAX_BLOCKS = 0.1, 0.03, 24
COARSE_SHARE = 0.6  # of a wafer's stage-2 time, for the coarse solve
FULL_SHARE = 0.4  # of a layout's time, for one whole-model solve before the neighbourhoods
LNS_SIZES = (6, 10)  # rectangles freed per neighbourhood (block-order runs, clusters)
LNS_STEP = 0.5  # seconds at most per neighbourhood solve
# CP-SAT deterministic time per wall second, measured for these models on the 2-core dev machine
# (0.3-0.45), and a charge per solve for what deterministic time leaves out (presolve, model
# building; 10-20 ms measured for small neighbourhood solves). Time limits are given in seconds
# and converted, so deterministic runs take about as long as asked here. SOLVER_SHARE of the
# limit goes to solves, the rest is left for Python. A wall-clock fuse of FUSE x a solve's
# limit stops runaways on a much slower or busier machine (a fuse that fires makes that result
# depend on the machine).
DET_PER_SECOND = 0.35
SOLVE_CHARGE_S = 0.015
SOLVER_SHARE = 0.9
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
    """Solver time left in seconds: wall seconds, or deterministic time / DET_PER_SECOND."""

    params: SolveParams
    left: float

    def spend(self, solver: cp_model.CpSolver) -> None:
        if self.params.deterministic:
            used = solver.deterministic_time / DET_PER_SECOND + SOLVE_CHARGE_S
        else:
            used = solver.wall_time
        self.left = max(0.0, self.left - used)


def run(model: cp_model.CpModel, limit: float, clock: Clock) -> tuple[cp_model.CpSolver, int]:
    """Solve under `limit` seconds of the clock's kind and charge the clock."""
    solver = cp_model.CpSolver()
    p = solver.parameters
    p.random_seed = clock.params.seed
    p.num_workers = clock.params.workers
    limit = max(limit, 0.01)
    if clock.params.deterministic:
        p.max_deterministic_time = limit * DET_PER_SECOND
        p.max_time_in_seconds = FUSE * limit + 1.0
        # Several workers are deterministic only interleaved; one worker is deterministic as it
        # is (interleaving one worker was measured NOT to be, ortools 9.15).
        p.interleave_search = clock.params.workers > 1
    else:
        p.max_time_in_seconds = limit
    status = solver.solve(model)
    clock.spend(solver)
    return solver, status


# -- stage 1: residency and wafer ranges -------------------------------------------------------


@dataclass(frozen=True)
class ResidencyInstance:
    """Stage 1's view: usable options per block, wafers, cores allowed per wafer, link costs."""

    problem: PlacementProblem
    options: tuple[tuple[int, ...], ...]
    wafers: int
    capacity: int
    link_cycles: tuple[int, ...]  # per problem edge: cycles to send its bytes between wafers

    def option(self, b: int, o: int) -> Option:
        return self.problem.blocks[b].options[o]

    @property
    def edges(self) -> list[tuple[int, int, int]]:
        """(edge index, lower block, higher block) of edges between distinct blocks."""
        return [(e, min(d.src, d.dst), max(d.src, d.dst))
                for e, d in enumerate(self.problem.edges) if d.src != d.dst]


def residency_instance(problem: PlacementProblem, factor: float) -> ResidencyInstance:
    options = tuple(_undominated(problem, b) for b in range(len(problem.blocks)))
    return ResidencyInstance(problem, options, problem.wafers,
                             int(factor * problem.cores_per_wafer), _link_cycles(problem))


def _stage1_key(o: Option) -> tuple[int, int, int, int]:
    """What stage 1 sees of an option: cores, off-chip bytes, cycles, squareness."""
    return o.cores, o.offchip_bytes_per_token, o.cycles, abs(o.rows - o.cols)


def _undominated(problem: PlacementProblem, b: int) -> tuple[int, ...]:
    """Block b's usable options that no other is at least as good as in every respect stage 1
    sees (the first of equals is kept)."""
    usable = usable_options(problem, b)
    keys = {o: _stage1_key(problem.blocks[b].options[o]) for o in usable}
    return tuple(o for o in usable if not any(_dominates(keys[p], p, keys[o], o) for p in usable))


def _dominates(a: tuple[int, ...], ia: int, b: tuple[int, ...], ib: int) -> bool:
    no_worse = all(x <= y for x, y in zip(a, b, strict=True))
    return no_worse and (a != b or ia < ib)


def as_kept(inst: ResidencyInstance, b: int, o: int) -> int:
    """Option o of block b, or a kept option at least as good in every respect stage 1 sees."""
    if o in inst.options[b]:
        return o
    key = _stage1_key(inst.option(b, o))
    better = [p for p in inst.options[b] if _dominates(_stage1_key(inst.option(b, p)), p, key, o)]
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
    busy: list[cp_model.IntVar] = field(default_factory=list)  # cycles, likewise
    cut: dict[int, cp_model.IntVar] = field(default_factory=dict)  # edge e crosses wafers
    slowest: cp_model.IntVar | None = None


def residency_variables(model: cp_model.CpModel, inst: ResidencyInstance) -> ResidencyVars:
    n = len(inst.options)
    v = ResidencyVars({(b, o): model.new_bool_var(f"x[{b},{o}]")
                       for b in range(n) for o in inst.options[b]})
    if inst.wafers == 1:
        return v
    most = sum(max(inst.option(b, o).cycles for o in inst.options[b]) for b in range(n))
    v.start = {b: model.new_bool_var(f"start[{b}]") for b in range(1, n)}
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
    """All cores within all wafers (the knapsack row), and each wafer's within its own."""
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
    model: cp_model.CpModel, acc: Sequence[cp_model.IntVar],
    amounts: Sequence[cp_model.LinearExprT], start: dict[int, cp_model.IntVar],
) -> None:
    model.add(acc[0] == amounts[0])
    for b in range(1, len(acc)):
        model.add(acc[b] == acc[b - 1] + amounts[b]).only_enforce_if(~start[b])
        model.add(acc[b] == amounts[b]).only_enforce_if(start[b])


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


Choice = tuple[Sequence[int], Sequence[int]]  # (option per block, wafer per block)


def hint_residency(
    model: cp_model.CpModel, inst: ResidencyInstance, v: ResidencyVars, choice: Choice
) -> None:
    """A complete hint: every variable's value for this choice."""
    options, wafer_of = choice
    model.clear_hints()
    for (b, o), x in v.x.items():
        model.add_hint(x, int(options[b] == o))
    if v.slowest is None:
        return
    load = busy = 0
    for b, o in enumerate(options):
        opened = b > 0 and wafer_of[b] != wafer_of[b - 1]
        if b > 0:
            model.add_hint(v.start[b], int(opened))
        load = (0 if opened else load) + inst.option(b, o).cores
        busy = (0 if opened else busy) + inst.option(b, o).cycles
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
    guess = greedy_residency(inst.problem, inst.capacity)
    if guess is not None:
        found.append(guess)
    if greedy is not None:
        options = tuple(as_kept(inst, b, o) for b, o in enumerate(greedy.options))
        found.append((options, _dense([r.wafer for r in greedy.rects])))
    return [c for c in found if _within(inst, c)]


def _dense(wafer_of: Sequence[int]) -> tuple[int, ...]:
    """Wafer indices renumbered 0, 1, ... in order of use (empty wafers dropped)."""
    order = {k: i for i, k in enumerate(sorted(set(wafer_of)))}
    return tuple(order[k] for k in wafer_of)


def _within(inst: ResidencyInstance, choice: Choice) -> bool:
    options, wafer_of = choice
    loads = [0] * inst.wafers
    for b, (o, k) in enumerate(zip(options, wafer_of, strict=True)):
        if o not in inst.options[b]:
            return False
        loads[k] += inst.option(b, o).cores
    return max(loads) <= inst.capacity


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
    left_before, best, optimal, lines = clock.left, None, True, []
    for t, (name, expr) in enumerate(terms):
        left = limit - (left_before - clock.left)
        if name == "pipeline" and best is not None:
            hint_residency(model, inst, v, _rebalanced(inst, best))
        model.minimize(expr)
        solver, status = run(model, left * weights[t] / sum(weights[t:]), clock)
        if status == cp_model.INFEASIBLE and best is None:
            return None
        if status not in SOLVED:
            if best is None:
                raise _NoSolution(f"{name} {solver.status_name(status)}")
            lines.append(f"{name} {solver.status_name(status)}, kept")
            optimal = False
            continue
        value = int(solver.value(expr))
        best = _extract_residency(solver, inst, v)
        optimal &= status == cp_model.OPTIMAL
        lines.append(f"{name} {value:,} {solver.status_name(status)} "
                     f"(bound {solver.best_objective_bound:,.0f})")
        model.add(expr <= value)
        hint_residency(model, inst, v, best)
    assert best is not None
    factor = inst.capacity / inst.problem.cores_per_wafer
    summary = f"factor {factor:.2f}: " + "; ".join(lines)
    return Residency(best[0], best[1], optimal and factor >= 1.0, summary)


def _rebalanced(inst: ResidencyInstance, choice: Choice) -> Choice:
    """A hint for the pipeline solve: the same option choices, as they are or spread evenly
    within groups of alike blocks, split into wafer ranges of the least slowest wafer (under
    capacity); the best pipeline of these and `choice` itself."""
    found = [choice]
    for options in (choice[0], spread_choices(inst.problem, choice[0])):
        split = balanced_split([inst.option(b, o).cycles for b, o in enumerate(options)],
                               [inst.option(b, o).cores for b, o in enumerate(options)],
                               inst.wafers, inst.capacity)
        if split is not None:
            found.append((options, split))
    return min(found, key=lambda c: pipeline_cost(inst, c))


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
    inst: LayoutInstance, spots: tuple[Position, ...], limit: float, clock: Clock
) -> tuple[tuple[Position, ...], str]:
    """Re-solve neighbourhoods with the other rectangles fixed, while that pays and time
    lasts. CP-SAT's own neighbourhood search needs several workers; this one is deterministic
    with one."""
    left_before, cost, solves, gains, gained = clock.left, layout_cost(inst, spots), 0, 0, True
    while gained:
        gained = False
        for free in neighbourhoods(inst, spots):
            left = limit - (left_before - clock.left)
            if left <= 0.01:
                return spots, f"{solves} neighbourhoods, {gains} better"
            res = solve_layout(neighbourhood(inst, spots, free), min(left, LNS_STEP), clock)
            solves += 1
            new_cost = layout_cost(inst, res.spots) if res.spots is not None else cost
            if res.spots is not None and new_cost < cost:
                spots, cost, gains, gained = res.spots, new_cost, gains + 1, True
    return spots, f"{solves} neighbourhoods, {gains} better"


def optimise(inst: LayoutInstance, limit: float, clock: Clock) -> LayoutResult:
    """One whole-model solve from the hint, then neighbourhoods unless it proved optimality."""
    started, left_before = time.perf_counter(), clock.left
    res = solve_layout(inst, limit * FULL_SHARE, clock)
    spots = res.spots or inst.hint
    if res.status == "OPTIMAL" or spots is None:
        return res
    spots, note = improve(inst, spots, limit - (left_before - clock.left), clock)
    return LayoutResult(spots, "FEASIBLE", layout_cost(inst, spots), res.bound,
                        time.perf_counter() - started, note)


# -- stage 2 per wafer: hint, coarse, fine -----------------------------------------------------


def place_wafer(fine: LayoutInstance, limit: float, clock: Clock) -> WaferLayout:
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
        same = [o for o in usable_options(problem, b) if o != options[b] and _alike(
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


def _alike(a: Option, b: Option) -> bool:
    return (a.residency, a.offchip_bytes_per_token) == (b.residency, b.offchip_bytes_per_token)


def _rescue(r: _Run, inst: LayoutInstance) -> tuple[Position, ...] | None:
    """CP-SAT packing with no hint, for a few rectangles that greedy packers cannot fit."""
    if len(inst.dims) > RESCUE_MAX_BLOCKS or r.rescue_left <= 0.05:
        return None
    left_before = r.clock.left
    found = solve_layout(inst, min(r.rescue_left, RESCUE_STEP * r.time_limit_s), r.clock,
                         minimize=False).spots
    r.rescue_left -= left_before - r.clock.left
    return found


def solve(
    problem: PlacementProblem,
    *,
    time_limit_s: float = 30.0,
    seed: int = 0,
    workers: int = 1,
    deterministic: bool = True,
) -> Placement:
    """Place every block: CP-SAT stage 1 (residency, wafers), then stage 2 (layout per wafer)."""
    for b in range(len(problem.blocks)):
        usable(problem, b)  # raises InfeasiblePlacementError naming a block with no option
    params = SolveParams(seed, max(1, workers), deterministic)
    r = _Run(problem, time_limit_s, Clock(params, SOLVER_SHARE * time_limit_s))
    residency, layouts = _stages_1(r)
    if residency is None or layouts is None:
        return _greedy_fallback(r)
    placed = {k: place_wafer(inst, _wafer_share(r, layouts, k), r.clock)
              for k, inst in sorted(layouts.items())}
    for k, lay in placed.items():
        r.stages.append((f"wafer {k}", f"{len(layouts[k].dims)} blocks; {lay.summary}"))
    return _assemble(r, residency, layouts, placed)


def _stages_1(r: _Run) -> tuple[Residency | None, dict[int, LayoutInstance] | None]:
    """Stage 1 at falling packing factors until stage 2's greedy hints can pack its choice."""
    hint = _greedy_hint(r.problem)
    for attempt, factor in enumerate(FACTORS):
        share = STAGE1_SHARES[min(attempt, len(STAGE1_SHARES) - 1)]
        res = _residency_or_hint(r, factor, share * r.time_limit_s, hint)
        if res is None and attempt == 0:
            raise _stage1_infeasible(r.problem)
        if res is None:
            r.stages.append(("residency", f"factor {factor:.2f}: infeasible"))
            return None, None
        packed = greedy_hints(r, res)
        if packed is None:
            r.stages.append(("residency", res.summary + "; does not pack"))
            continue
        r.stages.append(("residency", packed[0].summary))
        return packed
    return None, None


def _residency_or_hint(
    r: _Run, factor: float, limit: float, greedy: Placement | None
) -> Residency | None:
    """Stage 1's answer, or a greedy choice when that streams less or time ran out."""
    inst = residency_instance(r.problem, factor)
    try:
        res = solve_residency(inst, limit, r.clock, greedy)
    except _NoSolution as err:
        hints = residency_hints(inst, greedy)
        if not hints:
            raise InfeasiblePlacementError(
                f"{r.problem.name}: stage 1 found no option choice in {limit:.1f} s ({err}); "
                "give the solver more time") from None
        best = min(hints, key=lambda c: _offchip(r.problem, c[0]))
        return Residency(tuple(best[0]), tuple(best[1]), False,
                         f"factor {factor:.2f}: {err}, greedy choice")
    if res is not None and greedy is not None and (
            _offchip(r.problem, greedy.options) < _offchip(r.problem, res.options)):
        return Residency(greedy.options, _dense([rc.wafer for rc in greedy.rects]), False,
                         res.summary + f"; {greedy.report.method} streams less, its choice kept")
    return res


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
    return SolverReport(
        method="cpsat", status=status, objective=byte_hops(r.problem, placement), bound=bound,
        wall_time_s=time.perf_counter() - r.started, seed=params.seed, workers=params.workers,
        time_limit_s=r.time_limit_s, deterministic=params.deterministic, stages=tuple(r.stages),
    )
