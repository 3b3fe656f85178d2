"""Co-design sweeps: one model compiled for every point of a cross product of target-spec
overrides (`core.sram_bytes=24KiB,48KiB`) and compile options (`context=2048,8192`).

    plan = plan_sweep(model, target, vary, options)   # parse, validate, key every point
    outcomes = run_sweep(plan, sweep_dir, backend)     # cached points read back, the rest run
    doc = sweep_doc(plan, outcomes, run)               # rows + Pareto flags (sweep.json)
    write_sweep(sweep_dir, doc)                        # sweep.json, sweep.csv, sweep.html

`run_point` is the unit of work: a process-pool task here, or a Ray task
(compiler/sweep/ray_backend.py, the only module that imports ray). It returns a `PointResult`
whatever happens to the compile.
A point's key is a sha256 over the model's digest, the effective target's sha256 (after the
overrides), the compile options and the wafer version; the parent writes each finished point
atomically to SWEEPDIR/points/<key>.json, so a re-run computes only new points and an
interrupted sweep resumes where it stopped.

    plan.py         --vary axes, the plan of points, cache keys
    point.py        run_point / run_task -> PointResult (and the placement as the next point's
                    warm start), the point cache, the Queue of points in chain order, Backend
    pool.py         run_sweep, the process-pool backend, make_backend, ProgressPrinter
    ray_backend.py  the Ray backend (imports plan and point only)
    files.py        sweep.json, sweep.csv, sweep.html
    pareto.py       Pareto frontiers
"""

from compiler.sweep.files import CSV_COLUMNS, FRONTIER_COSTS, sweep_csv, sweep_doc, write_sweep
from compiler.sweep.plan import (
    MAX_DIM,
    MAX_POINTS,
    METHODS,
    OPTION_KEYS,
    Axis,
    Plan,
    PointSpec,
    code_sha256,
    option_value,
    parse_vary,
    plan_sweep,
    point_key,
    vary_keys,
    with_option,
)
from compiler.sweep.point import (
    DOES_NOT_FIT,
    ERROR,
    INFEASIBLE,
    OK,
    SCHEMA_VERSION,
    STATUSES,
    Backend,
    OnResult,
    Outcome,
    PointResult,
    Queue,
    cache_path,
    cached_hint,
    load_cached,
    run_point,
    run_task,
    store,
)
from compiler.sweep.pool import (
    Progress,
    ProgressPrinter,
    SweepInterrupted,
    check_sweep_dir,
    default_workers,
    describe,
    make_backend,
    pool_backend,
    run_sweep,
)

__all__ = [
    "CSV_COLUMNS", "DOES_NOT_FIT", "ERROR", "FRONTIER_COSTS", "INFEASIBLE", "MAX_DIM",
    "MAX_POINTS", "METHODS", "OK", "OPTION_KEYS", "SCHEMA_VERSION", "STATUSES", "Axis", "Backend",
    "OnResult", "Outcome", "Plan", "PointResult", "PointSpec", "Progress", "ProgressPrinter",
    "Queue", "SweepInterrupted", "cache_path", "cached_hint", "check_sweep_dir", "code_sha256",
    "default_workers", "describe", "load_cached", "make_backend", "option_value", "parse_vary",
    "plan_sweep", "point_key", "pool_backend", "run_point", "run_sweep", "run_task", "store",
    "sweep_csv", "sweep_doc", "vary_keys", "with_option", "write_sweep",
]
