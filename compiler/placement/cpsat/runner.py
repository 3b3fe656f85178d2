"""Running CP-SAT: the only code that talks to the solver object.

`run(model, limit, clock)` solves one CpModel under a limit with the clock's seed and workers,
charges the clock and returns an `Outcome` (status, objective, bound, values). Nothing else in
the placer builds a CpSolver.

Time and determinism: `time_limit_s` is a wall-clock deadline on the whole solve (every CP-SAT
call stops at it). By default one worker, a fixed seed and a deterministic-time budget of
DET_SHARE of the limit (of a share of it for a warm start: stages.solve's budget_share; the
deadline stays the whole limit) decide when the search ends, so the same input gives the same
placement on any machine that keeps up with DET_PER_SECOND; the deadline stops only a machine
that does not (the report then says so: that result depends on the machine). `on_progress(stage,
objective, bound, elapsed_s)` hears each stage as it starts (objective and bound None) and each
improving incumbent; it does not change the search.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from compiler.placement.problem import ProgressHook

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
SOLVED = (cp_model.OPTIMAL, cp_model.FEASIBLE)


# -- the clock: time left, deadline, progress --------------------------------------------------


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

    def charge(self, seconds: float, solves: int = 1) -> None:
        """Deterministic mode: take off what `solves` skipped solves would have used up to
        their limits (`seconds` in all), as `spend` would have, so that the later solves'
        shares (and results) stay as they were: skipping a solve that cannot succeed saves
        its wall time, not the budget it had. Wall-clock mode: nothing (the time is left)."""
        if self.params.deterministic:
            self.left = max(0.0, self.left - seconds - solves * SOLVE_CHARGE_S)

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


# -- one solve ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One solve's answer, read off the solver: status, objective, bound, values."""

    solver: cp_model.CpSolver
    status: int

    @property
    def name(self) -> str:
        """OPTIMAL, FEASIBLE, INFEASIBLE, UNKNOWN or MODEL_INVALID (a search a gap limit ended
        short of its bound is FEASIBLE, though CP-SAT calls it OPTIMAL)."""
        if self.status == cp_model.OPTIMAL and not self.optimal:
            return "FEASIBLE"
        return self.solver.status_name(self.status)

    @property
    def solved(self) -> bool:
        """A solution was found (proven optimal or not)."""
        return self.status in SOLVED

    @property
    def optimal(self) -> bool:
        """Proven optimal: OPTIMAL with the bound reached (not only within a gap limit)."""
        return self.status == cp_model.OPTIMAL and (
            self.solver.parameters.relative_gap_limit == 0
            or self.solver.objective_value <= self.solver.best_objective_bound + 1e-6)

    @property
    def infeasible(self) -> bool:
        return self.status == cp_model.INFEASIBLE

    @property
    def objective(self) -> float:
        return self.solver.objective_value

    @property
    def bound(self) -> float:
        return self.solver.best_objective_bound

    @property
    def wall_time(self) -> float:
        return self.solver.wall_time

    def value(self, expr: cp_model.LinearExprT) -> int:
        return int(self.solver.value(expr))

    def is_true(self, var: cp_model.IntVar) -> bool:
        return self.solver.boolean_value(var)


def run(model: cp_model.CpModel, limit: float, clock: Clock, gap: float = 0.0) -> Outcome:
    """Solve under `limit` seconds of the clock's kind and charge the clock; `gap` > 0 ends
    the search at an incumbent within that relative gap of the bound (CP-SAT's
    relative_gap_limit, checked on each solution: deterministic)."""
    limit = max(limit, 0.01)
    wall = max(min(clock.wall_left(), FUSE * limit + 1.0), 0.01)
    solver = _solver(clock.params, limit, wall)
    solver.parameters.relative_gap_limit = gap
    callback = None
    if clock.on_progress is not None and clock.stage is not None and model.has_objective():
        solver.best_bound_callback = functools.partial(_bound_improved, clock)
        callback = _Incumbents(clock)
    status = _interruptible_solve(solver, model, callback)
    clock.spend(solver)
    clock.cut_short += _cut_by_wall(solver, status, wall, clock.params)
    return Outcome(solver, status)


def _solver(params: SolveParams, limit: float, wall: float) -> cp_model.CpSolver:
    """A solver with the seed, workers and limits: deterministic time and the wall as a fuse,
    or (non-deterministic) wall time only."""
    solver = cp_model.CpSolver()
    p = solver.parameters
    p.random_seed = params.seed
    p.num_workers = params.workers
    if params.deterministic:
        p.max_deterministic_time = limit * DET_PER_SECOND
        p.max_time_in_seconds = wall
        # Several workers are deterministic only interleaved; one worker is deterministic as it
        # is (interleaving one worker was measured NOT to be, ortools 9.15).
        p.interleave_search = params.workers > 1
    else:
        p.max_time_in_seconds = min(limit, wall)
    return solver


def _cut_by_wall(solver: cp_model.CpSolver, status: int, wall: float, params: SolveParams) -> bool:
    """Deterministic mode: did the wall clock, not the deterministic budget, end this search?"""
    return (params.deterministic and status not in (cp_model.OPTIMAL, cp_model.INFEASIBLE)
            and solver.wall_time >= wall * 0.99
            and solver.deterministic_time < solver.parameters.max_deterministic_time * 0.99)


class _Incumbents(cp_model.CpSolverSolutionCallback):
    """Reports each incumbent (objective, bound) of one solve to the clock's hook."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def on_solution_callback(self) -> None:
        self.clock.tell(self.objective_value, self.best_objective_bound)


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
