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
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from compiler import __version__
from compiler.atomic import write_atomic
from compiler.driver import CompileOptions, compile_model
from compiler.errors import (
    CapacityError,
    InfeasiblePlacementError,
    TargetError,
    UsageError,
    WaferError,
)
from compiler.frontend import load_model
from compiler.sweep.pareto import frontier
from compiler.target import Target, load_target, override_keys
from compiler.vocab import PLACEMENT_METHODS, Mode

SCHEMA_VERSION = "1.0"
OK, DOES_NOT_FIT, INFEASIBLE, ERROR = "ok", "does-not-fit", "infeasible", "error"
STATUSES = (OK, DOES_NOT_FIT, INFEASIBLE, ERROR)
OPTION_KEYS = ("context", "batch", "seq-len", "prompt-resident", "method")
# Pareto frontiers: tokens/s (higher is better) against each of these costs (lower is better)
FRONTIER_COSTS = ("total_sram_bytes", "cores_used", "wafers_used")
MAX_POINTS = 10_000
MAX_DIM = 2**31 - 1


class SweepInterrupted(WaferError):
    """Ctrl-C during a sweep: the finished points are cached; running it again resumes."""

    exit_code = 130


# ---------------------------------------------------------------------------------------------
# Axes: what --vary asks for
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One `--vary KEY=V1,V2,...`: a target key path or a compile option, values as given."""

    key: str
    values: tuple[str, ...]

    @property
    def kind(self) -> str:
        return "option" if self.key in OPTION_KEYS else "target"


def vary_keys() -> list[str]:
    """Every key `--vary` accepts: compile options, then target key paths."""
    return [*OPTION_KEYS, *override_keys()]


def parse_vary(items: Sequence[str]) -> tuple[Axis, ...]:
    """`["core.sram_bytes=24KiB,48KiB", "context=2048,8192"]` -> axes; a bad key, an empty or
    repeated value, a repeated key or an option value that does not parse is a UsageError."""
    axes = [_parse_axis(item) for item in items]
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise UsageError(f"--vary {key} is given twice; put all its values in one --vary")
    return tuple(axes)


def _parse_axis(item: str) -> Axis:
    key, sep, rest = item.partition("=")
    key = key.strip()
    values = tuple(v.strip() for v in rest.split(","))
    if not sep or not key or not all(values):
        raise UsageError(f"--vary {item!r}: expected KEY=V1,V2,... with no empty value, e.g. "
                         "core.sram_bytes=24KiB,48KiB")
    _check_key(key)
    for v in values:
        if values.count(v) > 1:
            raise UsageError(f"--vary {key}: value {v!r} is given twice")
        if key in OPTION_KEYS:
            option_value(key, v)
    return Axis(key, values)


def _check_key(key: str) -> None:
    valid = vary_keys()
    if key in valid or key.startswith("core.flops_per_cycle."):
        return  # a dtype name after flops_per_cycle is checked when the target loads
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UsageError(f"--vary {key}: unknown key{hint} (valid keys: {', '.join(valid)})")


def option_value(key: str, text: str) -> int | bool | str:
    """A compile option's value from its text; UsageError naming the key when it is bad."""
    if key == "method":
        if text not in PLACEMENT_METHODS:
            raise UsageError(f"--vary method={text}: "
                             f"expected one of {', '.join(PLACEMENT_METHODS)}")
        return text
    if key == "prompt-resident":
        if text.lower() not in ("true", "false"):
            raise UsageError(f"--vary prompt-resident={text}: expected true or false")
        return text.lower() == "true"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_DIM:
        raise UsageError(f"--vary {key}={text}: expected a whole number in 1..{MAX_DIM:,}")
    return value


def with_option(options: CompileOptions, key: str, value: int | bool | str) -> CompileOptions:
    """`options` with one compile option (an OPTION_KEYS key) set."""
    fe, tiling, solver = options.frontend, options.tiling, options.solver
    if key == "context":
        return replace(options, tiling=replace(tiling, context=value))
    if key == "prompt-resident":
        return replace(options, tiling=replace(tiling, prompt_resident=value))
    if key == "method":
        return replace(options, solver=replace(solver, method=value))
    field_name = {"batch": "batch", "seq-len": "seq_len"}[key]
    dims = replace(fe.dims, **{field_name: value})
    return replace(options, frontend=replace(fe, dims=dims))


# ---------------------------------------------------------------------------------------------
# The plan: every point with its target, options and cache key
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointSpec:
    """Everything a worker needs to compile one point (picklable: it travels to workers)."""

    index: int
    overrides: tuple[tuple[str, str], ...]  # (key, value as given), in --vary order
    key: str  # cache key; "" when the overrides make an invalid target
    model: str
    target: Target | None  # the effective target; None when the overrides are invalid
    options: CompileOptions
    verify: bool
    target_error: str = ""


@dataclass(frozen=True)
class Plan:
    model: str
    model_name: str
    model_sha256: str
    shape_only: bool
    target: Target  # before overrides
    axes: tuple[Axis, ...]
    options: CompileOptions  # before options are varied
    verify: bool
    points: tuple[PointSpec, ...]


def plan_sweep(model: str, target: str, vary: Sequence[str], options: CompileOptions,
               verify: bool = False) -> Plan:
    """Parse and check the axes, load the model once (a bad or unsupported model stops here),
    and build every point of the cross product with its effective target and cache key."""
    base = load_target(target)
    axes = parse_vary(vary)
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_POINTS:
        raise UsageError(f"--vary gives {count:,} points; at most {MAX_POINTS:,} per sweep")
    _check_verify(axes, verify)
    graph = load_model(model, options.frontend)
    if verify and graph.shape_only:
        raise UsageError(f"{graph.name} is shape-only (no weights): nothing to verify; "
                         "sweep it without --verify")
    combos = itertools.product(*[[(a.key, v) for v in a.values] for a in axes])
    where = _model_ref(model)
    points = tuple(_point(i, combo, where, target, base, options, verify, graph.source_sha256)
                   for i, combo in enumerate(combos))
    _check_target_values(axes, points)
    return Plan(model, graph.name, graph.source_sha256, graph.shape_only, base, axes, options,
                verify, points)


def _model_ref(model: str) -> str:
    """A model file as an absolute path (workers may run in another directory), or a zoo name."""
    path = Path(model)
    return str(path.resolve()) if path.is_file() else model


def _check_verify(axes: Sequence[Axis], verify: bool) -> None:
    streamed = any(a.key == "prompt-resident" and "false" in map(str.lower, a.values)
                   for a in axes)
    if verify and streamed:
        raise UsageError("--verify needs the whole prompt resident; drop prompt-resident=false "
                         "or --verify")


def _point(index: int, combo: Sequence[tuple[str, str]], model: str, target: str, base: Target,
           options: CompileOptions, verify: bool, model_sha256: str) -> PointSpec:
    for key, text in combo:
        if key in OPTION_KEYS:
            options = with_option(options, key, option_value(key, text))
    overrides = {k: v for k, v in combo if k not in OPTION_KEYS}
    combo = tuple(combo)
    try:
        tgt = load_target(target, overrides) if overrides else base
    except TargetError as exc:
        return PointSpec(index, combo, "", model, None, options, verify, str(exc))
    key = point_key(model_sha256, tgt, options, verify)
    return PointSpec(index, combo, key, model, tgt, options, verify)


def _check_target_values(axes: Sequence[Axis], points: Sequence[PointSpec]) -> None:
    """A target value that makes an invalid spec in every point it is part of is a bad value
    (a typo, out of range); one invalid only with some other values is a failed point."""
    for axis in (a for a in axes if a.kind == "target"):
        for value in axis.values:
            mine = [p for p in points if (axis.key, value) in p.overrides]
            if all(p.target is None for p in mine):
                raise UsageError(f"--vary {axis.key}={value}: {mine[0].target_error}")


def point_key(model_sha256: str, target: Target, options: CompileOptions, verify: bool) -> str:
    """The cache key of one point: what its result depends on, hashed."""
    doc = {"wafer": __version__, "code": code_sha256(), "model": model_sha256,
           "target": target.sha256,
           "options": dataclasses.asdict(options), "verify": verify}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.cache
def code_sha256() -> str:
    """A hash of wafer's own source (the compiler and zoo modules), so that a point cached by
    other code is computed again even when the version number did not change."""
    import compiler
    import compiler.zoo

    h = hashlib.sha256()
    for pkg in (compiler, compiler.zoo):
        root = Path(pkg.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(f"{pkg.__name__}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# One point
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointResult:
    """What one compile gave: a status (ok, does-not-fit, infeasible, error) and its numbers.
    `internal` marks an unexpected failure (a bug, a dead worker): it is not cached."""

    status: str
    error: str = ""
    internal: bool = False
    tokens_per_s: float | None = None  # decode, at the point's batch and context
    ttft_s: float | None = None  # prefill: one forward over the prompt
    offchip_bytes_per_token: int | None = None
    byte_hops: float | None = None
    cores_used: int | None = None
    wafers_used: int | None = None
    decode_context: int | None = None  # the KV-cache length the decode rate is for
    decode_batch: int | None = None
    prompt_resident: bool | None = None
    solver_status: str = ""
    verify: str = ""  # "", "passed" or "failed"
    verify_max_abs: float | None = None
    compile_s: float = 0.0
    verify_s: float = 0.0

    @property
    def cacheable(self) -> bool:
        return not self.internal


def run_point(spec: PointSpec) -> PointResult:
    """Compile one point (and verify it when asked); never raises for a failed compile."""
    t0 = time.perf_counter()
    try:
        result = _compile(spec)
    except CapacityError as exc:
        return PointResult(DOES_NOT_FIT, str(exc), compile_s=_since(t0))
    except InfeasiblePlacementError as exc:
        return PointResult(INFEASIBLE, str(exc), compile_s=_since(t0))
    except WaferError as exc:
        return PointResult(ERROR, str(exc), compile_s=_since(t0))
    except Exception as exc:  # a bug: recorded, not cached, so a re-run tries again
        msg = f"internal error: {type(exc).__name__}: {exc}"
        return PointResult(ERROR, msg, internal=True, compile_s=_since(t0))
    return result


def _compile(spec: PointSpec) -> PointResult:
    if spec.target is None:
        raise TargetError(spec.target_error)
    t0 = time.perf_counter()
    r = compile_model(spec.model, spec.target, spec.options)
    compiled = _since(t0)
    d, p = r.estimates[Mode.DECODE], r.estimates[Mode.PREFILL]
    out = PointResult(
        OK, tokens_per_s=d.tokens_per_s, ttft_s=p.ttft_s if p.ttft_s is not None else p.seconds,
        offchip_bytes_per_token=r.metrics.offchip_bytes_per_token, byte_hops=r.metrics.byte_hops,
        cores_used=r.metrics.cores_used, wafers_used=r.metrics.wafers_used,
        decode_context=r.tiled.context, decode_batch=r.tiled.batch,
        prompt_resident=r.tiled.prompt_resident,
        solver_status=r.placement.report.status, compile_s=compiled)
    return _verify(spec, r, out) if spec.verify else out


def _verify(spec: PointSpec, r, out: PointResult) -> PointResult:
    from compiler.verify import Artifact, VerifyOptions, run_verification

    t0 = time.perf_counter()
    v = run_verification(Artifact(spec.model, r.graph, r.target, r.schedule), VerifyOptions())
    worst = max((c.max_abs for c in v.report.outputs), default=0.0)
    return replace(out, verify="passed" if v.report.passed else "failed",
                   verify_max_abs=worst, verify_s=_since(t0))


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


# ---------------------------------------------------------------------------------------------
# The cache: SWEEPDIR/points/<key>.json, written atomically by the parent
# ---------------------------------------------------------------------------------------------


def cache_path(sweep_dir: Path, key: str) -> Path:
    return Path(sweep_dir) / "points" / f"{key}.json"


def load_cached(sweep_dir: Path, spec: PointSpec) -> PointResult | None:
    """The cached result of `spec`, or None (absent, unreadable, or from another schema)."""
    if not spec.key:
        return None
    try:
        doc = json.loads(cache_path(sweep_dir, spec.key).read_text())
        if doc.get("schema_version") != SCHEMA_VERSION or doc.get("key") != spec.key:
            return None
        return PointResult(**doc["result"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def store(sweep_dir: Path, spec: PointSpec, result: PointResult) -> None:
    """Write one finished point's result (with what it was computed from) atomically."""
    assert spec.target is not None
    doc = {"schema_version": SCHEMA_VERSION, "key": spec.key, "tool": _tool(),
           "overrides": dict(spec.overrides), "target": spec.target.to_dict(),
           "target_sha256": spec.target.sha256,
           "options": dataclasses.asdict(spec.options), "verify": spec.verify,
           "result": dataclasses.asdict(result)}
    write_atomic(cache_path(sweep_dir, spec.key), json.dumps(doc, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Running: cached points first, the rest on a backend
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    spec: PointSpec
    result: PointResult
    cached: bool


OnResult = Callable[[PointSpec, PointResult], None]
Backend = Callable[[Sequence[PointSpec], OnResult], None]
# (outcome, points finished, points in all); outcome None once, when computing starts
Progress = Callable[[Outcome | None, int, int], None]


def run_sweep(plan: Plan, sweep_dir: Path, backend: Backend,
              progress: Progress | None = None) -> list[Outcome]:
    """Every point's outcome, in plan order: from the cache when it holds the point's key,
    else computed on `backend`; each computed point is cached as soon as it arrives."""
    sweep_dir = check_sweep_dir(Path(sweep_dir))
    done: dict[int, Outcome] = {}
    todo = []
    for spec in plan.points:
        hit = _known(sweep_dir, spec)
        if hit is None:
            todo.append(spec)
        else:
            done[spec.index] = hit
    total = len(plan.points)
    if progress:
        for n, outcome in enumerate(list(done.values()), 1):
            progress(outcome, n, total)
        progress(None, len(done), total)

    def finished(spec: PointSpec, result: PointResult) -> None:
        if result.cacheable:
            store(sweep_dir, spec, result)
        done[spec.index] = Outcome(spec, result, cached=False)
        if progress:
            progress(done[spec.index], len(done), total)

    try:
        if todo:
            backend(todo, finished)
    except KeyboardInterrupt:
        raise SweepInterrupted(
            f"interrupted after {len(done)} of {total} points; the finished ones are cached "
            f"in {sweep_dir / 'points'}: run the same command again to resume") from None
    return [done[i] for i in range(total)]


def _known(sweep_dir: Path, spec: PointSpec) -> Outcome | None:
    if spec.target is None:  # an invalid spec: nothing to compile
        return Outcome(spec, PointResult(ERROR, spec.target_error), cached=False)
    hit = load_cached(sweep_dir, spec)
    return None if hit is None else Outcome(spec, hit, cached=True)


def check_sweep_dir(sweep_dir: Path) -> Path:
    """SWEEPDIR may be new, empty, or an earlier sweep's (its cache is reused); anything else
    is refused so that no unrelated directory gets written into."""
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UsageError(f"{sweep_dir} exists and is not a directory")
    ours = (sweep_dir / "points").is_dir() or (sweep_dir / "sweep.json").is_file()
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()) and not ours:
        raise UsageError(f"{sweep_dir} exists and is not a sweep directory (no points/ or "
                             "sweep.json); give a new or empty directory")
    return sweep_dir


def _quiet_worker() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def pool_backend(workers: int) -> Backend:
    """Points as tasks of a local process pool of `workers` processes (spawned: a clean
    interpreter each, no forked solver threads)."""

    def run(specs: Sequence[PointSpec], on_result: OnResult) -> None:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(min(workers, len(specs)), mp_context=ctx,
                                   initializer=_quiet_worker)
        try:
            futures = {pool.submit(run_point, s): s for s in specs}
            for future in as_completed(futures):
                on_result(futures[future], _pool_result(future))
        except BaseException:
            _stop(pool)
            raise
        pool.shutdown()

    return run


def _pool_result(future: Future) -> PointResult:
    try:
        return future.result()
    except Exception as exc:  # the worker process died (killed, out of memory)
        return PointResult(ERROR, f"internal error: worker failed: {type(exc).__name__}: {exc}",
                           internal=True)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now, not after their current point."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API for this
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join()


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_backend(name: str, workers: int, address: str | None = None) -> Backend:
    """`pool` (default) or `ray`; Ray missing is a one-line UsageError saying how to get it."""
    if name == "ray":
        from compiler.sweep.ray_backend import ray_backend

        return ray_backend(workers, address)
    return pool_backend(workers)


# ---------------------------------------------------------------------------------------------
# Results: rows with Pareto flags (sweep.json), a flat table (sweep.csv)
# ---------------------------------------------------------------------------------------------


def sweep_doc(plan: Plan, outcomes: Sequence[Outcome], run: Mapping[str, Any]) -> dict:
    """Everything an HTML page or a notebook needs, as plain data: the sweep's inputs, one row
    per point (failed points included) and the Pareto frontiers."""
    rows = [_row(o) for o in outcomes]
    fronts = {}
    for cost in FRONTIER_COSTS:
        flags = frontier([_ok_value(r, cost) for r in rows],
                         [_ok_value(r, "tokens_per_s") for r in rows])
        for r, flag in zip(rows, flags, strict=True):
            r["pareto"][cost] = flag
        fronts[cost] = {"cost": cost, "gain": "tokens_per_s",
                        "points": [r["index"] for r in rows if r["pareto"][cost]]}
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": _tool(),
        "model": {"name": plan.model_name, "source": plan.model, "sha256": plan.model_sha256,
                  "shape_only": plan.shape_only},
        "target": {"name": plan.target.name, "source": plan.target.source,
                   "sha256": plan.target.sha256, "spec": plan.target.to_dict()},
        "axes": [{"key": a.key, "kind": a.kind, "values": list(a.values)} for a in plan.axes],
        "options": _options_doc(plan),
        "run": {**run, **_counts(outcomes)},
        "frontiers": fronts,
        "points": rows,
    }


def _ok_value(row: Mapping[str, Any], name: str) -> float | None:
    return row[name] if row["status"] == OK else None


def _options_doc(plan: Plan) -> dict[str, Any]:
    o = plan.options
    return {"context": o.tiling.context, "batch": o.frontend.dims.batch,
            "seq_len": o.frontend.dims.seq_len, "prompt_resident": o.tiling.prompt_resident,
            "method": o.solver.method, "time_limit_s": o.solver.time_limit_s,
            "seed": o.solver.seed, "solver_workers": o.solver.workers,
            "deterministic": o.solver.deterministic, "verify": plan.verify}


def _counts(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {"points": len(outcomes),
            "computed": sum(not o.cached and o.spec.target is not None for o in outcomes),
            "cached": sum(o.cached for o in outcomes),
            "status": {s: sum(o.result.status == s for o in outcomes) for s in STATUSES}}


def _row(o: Outcome) -> dict[str, Any]:
    t, r = o.spec.target, o.result
    machine = {"sram_bytes_per_core": None, "total_cores": None, "wafers": None,
               "total_sram_bytes": None}
    if t is not None:
        machine = {"sram_bytes_per_core": t.core.sram_bytes, "total_cores": t.total_cores,
                   "wafers": t.wafers.count,
                   "total_sram_bytes": t.core.sram_bytes * t.total_cores}
    return {"index": o.spec.index, "key": o.spec.key,
            "overrides": dict(o.spec.overrides),
            "values": {k: _effective(o.spec, k, v) for k, v in o.spec.overrides},
            **machine, **dataclasses.asdict(r), "cached": o.cached, "pareto": {}}


def _effective(spec: PointSpec, key: str, text: str) -> Any:
    """The value a point ran with: a compile option parsed, a target field as the spec holds
    it (bytes as int, rates as float); None when the target is invalid."""
    if key in OPTION_KEYS:
        return option_value(key, text)
    if spec.target is None:
        return None
    if key.startswith("core.flops_per_cycle."):  # any spelling of the dtype
        return spec.target.core.flops(key.rsplit(".", 1)[1])
    section, name = key.split(".")
    return spec.target.to_dict()[section][name]


CSV_COLUMNS = ("status", "tokens_per_s", "ttft_s", "offchip_bytes_per_token", "cores_used",
               "total_cores", "wafers_used", "wafers", "sram_bytes_per_core",
               "total_sram_bytes", "decode_context", "decode_batch", "prompt_resident",
               "byte_hops", "solver_status", "verify", "verify_max_abs", "compile_s", "cached")


def sweep_csv(doc: Mapping[str, Any]) -> str:
    """One row per point: index, the varied keys (values as given), the results, the Pareto
    flags, the error message and the cache key."""
    keys = [a["key"] for a in doc["axes"]]
    header = ["index", *keys, *CSV_COLUMNS, *(f"pareto_{c}" for c in FRONTIER_COSTS),
              "error", "key"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in doc["points"]:
        w.writerow([row["index"], *(row["overrides"][k] for k in keys),
                    *(_cell(row[c]) for c in CSV_COLUMNS),
                    *(_cell(row["pareto"][c]) for c in FRONTIER_COSTS), row["error"], row["key"]])
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_sweep(sweep_dir: Path, doc: Mapping[str, Any]) -> None:
    """sweep.json, sweep.csv and sweep.html (the page drawn from the JSON text, as `wafer view
    SWEEPDIR` draws it), all made first, then each written atomically."""
    from compiler.report import SWEEP_HTML, sweep_html

    text = json.dumps(doc, indent=1) + "\n"
    files = {"sweep.json": text, "sweep.csv": sweep_csv(doc),
             SWEEP_HTML: sweep_html(json.loads(text))}
    for name, content in files.items():
        write_atomic(Path(sweep_dir) / name, content)


def _tool() -> dict[str, str]:
    return {"name": "wafer", "version": __version__}


# ---------------------------------------------------------------------------------------------
# Progress: a line that rewrites itself on a terminal, one line per point otherwise
# ---------------------------------------------------------------------------------------------


class ProgressPrinter:
    """Progress of a sweep on `stream` (stderr). On a terminal: one `\\r`-updated line with a
    bar; elsewhere (a log, CI): a first line with the cached count, then one line per point."""

    def __init__(self, stream: TextIO = sys.stderr, tty: bool | None = None):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.t0 = time.perf_counter()
        self.failed = self.cached = 0
        self.started = False  # outcomes before the start are known ones: counted, not listed

    def __call__(self, outcome: Outcome | None, finished: int, total: int) -> None:
        if outcome is not None:
            self.failed += outcome.result.status != OK
            self.cached += outcome.cached
        if self.tty:
            if outcome is not None or finished < total:
                self._bar(finished, total)
        elif outcome is None:
            invalid = finished - self.cached
            bad = f", {invalid} with an invalid target spec" if invalid else ""
            self.stream.write(f"[sweep] {total} points: {self.cached} cached{bad}, "
                              f"{total - finished} to compile\n")
        elif self.started:
            self.stream.write(f"[sweep] {finished}/{total} {describe(outcome)}\n")
        self.started = self.started or outcome is None
        self.stream.flush()

    def _bar(self, finished: int, total: int) -> None:
        width = 24
        fill = round(width * finished / max(total, 1))
        elapsed = time.perf_counter() - self.t0
        end = "\n" if finished == total else ""
        self.stream.write(f"\r[sweep] [{'#' * fill}{'.' * (width - fill)}] {finished}/{total} "
                          f"points ({self.cached} cached, {self.failed} failed) "
                          f"{elapsed:.0f} s{end}")


def describe(o: Outcome) -> str:
    """`#3 core.sram_bytes=24KiB context=2048: ok, 1,797 tokens/s (6.7 s)`."""
    where = " ".join(f"{k}={v}" for k, v in o.spec.overrides)
    r = o.result
    what = f"ok, {r.tokens_per_s:,.0f} tokens/s" if r.status == OK else r.status
    return f"#{o.spec.index} {where}: {what} ({r.compile_s:.1f} s)"
