"""compile_model: the compiler as one straight line over its stages.

    graph = frontend(model) -> tiled = tiling(graph) -> problem = adapter(tiled)
    -> placement = place(problem) (validated) -> baseline = first_fit(problem) -> result

Each stage is timed; `on_stage(name, seconds)` lets the CLI print stage lines as they finish,
`on_start(name)` says a stage begins, and `on_progress(stage, objective, bound, elapsed_s)`
hears the CP-SAT placer's incumbents (compiler/placement/problem.py ProgressHook). The hooks
are plain callables: how progress is shown is the caller's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from compiler.errors import InfeasiblePlacementError
from compiler.frontend import FrontendOptions, load_model
from compiler.placement import place
from compiler.placement.check import Metrics, metrics
from compiler.placement.problem import Placement, PlacementProblem, ProgressHook
from compiler.result import CompileResult
from compiler.schedule.build import Schedule, build_schedule
from compiler.schedule.decode import decode_plan
from compiler.schedule.perf import (
    PerfOptions,
    estimate,
    streamed_kv_cycles,
    timeline,
)
from compiler.target import Target, load_target
from compiler.tiling.candidates import TiledGraph, TilingOptions, tile_graph, to_problem
from compiler.vocab import Mode, PlacementMethod

StageHook = Callable[[str, float], None]
StartHook = Callable[[str], None]


@dataclass(frozen=True)
class SolverOptions:
    method: str = PlacementMethod.CPSAT
    time_limit_s: float = 30.0
    seed: int = 0
    workers: int = 1
    deterministic: bool = True


@dataclass(frozen=True)
class CompileOptions:
    frontend: FrontendOptions = field(default_factory=FrontendOptions)
    tiling: TilingOptions = field(default_factory=TilingOptions)
    solver: SolverOptions = field(default_factory=SolverOptions)


def compile_model(model: str | Path, target: str | Path | Target,
                  options: CompileOptions | None = None,
                  on_stage: StageHook | None = None, *, on_start: StartHook | None = None,
                  on_progress: ProgressHook | None = None) -> CompileResult:
    options = options or CompileOptions()
    timer = _Timer(on_stage, on_start)
    tgt = target if isinstance(target, Target) else timer("target", load_target, target)
    graph = timer("frontend", load_model, model, options.frontend)
    tiled = timer("tiling", tile_graph, graph, tgt, options.tiling)
    problem = to_problem(tiled, tgt)
    placement = timer("placement", _place, problem, options.solver, on_progress)
    baseline = timer("baseline", _baseline, problem)
    same = _same_options_baseline(problem, placement)
    schedule = timer("schedule", build_schedule, graph, tiled, problem, placement, tgt)
    decode = timer("decode", decode_plan, str(model), graph, schedule, tgt, tiled.context)
    timelines, estimates = timer("performance", _performance, schedule, tiled, tgt)
    if decode is not None:  # tokens/s from the decode schedule, not the prefill scaled
        estimates = {**estimates, Mode.DECODE: decode.estimate}
    return CompileResult(graph, tgt, tiled, problem, placement, metrics(problem, placement),
                         baseline, schedule, timelines, estimates, options, tuple(timer.times),
                         same, decode)


def _performance(schedule: Schedule, tiled: TiledGraph, target: Target):
    kv = {lt.layer: lt.kv_bytes for lt in tiled.layers if lt.kv_bytes}
    timelines, estimates = {}, {}
    for mode in (Mode.DECODE, Mode.PREFILL):
        extra = streamed_kv_cycles(schedule, target, dict(kv)) if mode == Mode.DECODE else {}
        opts = PerfOptions(mode)
        timelines[mode] = timeline(schedule, target, opts, extra)
        estimates[mode] = estimate(schedule, target, opts, extra)
    return timelines, estimates


def _place(problem: PlacementProblem, solver: SolverOptions,
           on_progress: ProgressHook | None = None) -> Placement:
    if solver.method != PlacementMethod.CPSAT:
        return place(problem, solver.method)
    return place(problem, PlacementMethod.CPSAT, time_limit_s=solver.time_limit_s, seed=solver.seed,
                 workers=solver.workers, deterministic=solver.deterministic,
                 on_progress=on_progress)


def _baseline(problem: PlacementProblem) -> Metrics | None:
    try:
        return metrics(problem, place(problem, PlacementMethod.FIRST_FIT))
    except InfeasiblePlacementError:
        return None


def _same_options_baseline(problem: PlacementProblem, placement: Placement) -> Metrics | None:
    from compiler.placement.check import validate
    from compiler.placement.greedy import first_fit

    try:
        ff = first_fit(problem, placement.options, [r.wafer for r in placement.rects])
    except InfeasiblePlacementError:
        return None
    if validate(problem, ff) or list(ff.options) != list(placement.options):
        return None
    return metrics(problem, ff)


class _Timer:
    def __init__(self, hook: StageHook | None, start: StartHook | None = None):
        self.hook, self.start = hook, start
        self.times: list[tuple[str, float]] = []

    def __call__(self, name: str, fn, *args):
        if self.start:
            self.start(name)
        t0 = time.perf_counter()
        result = fn(*args)
        seconds = time.perf_counter() - t0
        self.times.append((name, seconds))
        if self.hook:
            self.hook(name, seconds)
        return result
