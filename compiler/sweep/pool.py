"""Running a sweep: `run_sweep` reads cached points back and runs the rest on a backend
(`pool_backend`: a spawned local process pool; `make_backend` also gives the Ray one, imported
only when asked for) in chain order (point.Queue), caching each point as it arrives;
`ProgressPrinter` shows progress."""

from __future__ import annotations

import atexit
import gc
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TextIO

from compiler.errors import UsageError, WaferError
from compiler.placement.warm import PlacementHint
from compiler.sweep.plan import Plan, PointSpec
from compiler.sweep.point import (
    ERROR,
    OK,
    Backend,
    OnResult,
    Outcome,
    PointResult,
    Queue,
    cached_hint,
    load_cached,
    run_task,
    store,
)


class SweepInterrupted(WaferError):
    """Ctrl-C during a sweep: the finished points are cached; running it again resumes."""

    exit_code = 130


# (outcome, points finished, points in all); outcome None once, when computing starts
Progress = Callable[[Outcome | None, int, int], None]


def run_sweep(plan: Plan, sweep_dir: Path, backend: Backend,
              progress: Progress | None = None) -> list[Outcome]:
    """Every point's outcome, in plan order: from the cache when it holds the point's key,
    else computed on `backend` (a point after another in its chain once that one is done, from
    its placement); each computed point is cached as soon as it arrives."""
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

    queue = Queue(todo, {s.index: cached_hint(sweep_dir, plan.points[s.after].key)
                         for s in todo if s.after is not None and s.after in done})

    def finished(spec: PointSpec, result: PointResult, placed: PlacementHint | None) -> None:
        if result.cacheable:
            store(sweep_dir, spec, result, placed)
        queue.done(spec, placed)
        done[spec.index] = Outcome(spec, result, cached=False)
        if progress:
            progress(done[spec.index], len(done), total)

    try:
        if todo:
            backend(queue, finished)
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


# a pool worker's garbage collector: its young generation 50,000 objects (not 700) and a full
# pass every 100 (not 10) middle ones. A worker's Reuse holds a model's graphs, decode forms,
# tilings and decode schedules, so the default full passes walked that heap again and again
# for little garbage (a 128k-context chain of 4 points: 1.6 of 12.5 CPU s in the collector,
# 0.3 with these)
WORKER_GC = (50_000, 20, 100)


def _quiet_worker() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them, collect less often, and
    end without tearing down their heap (`_exit_now`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.set_threshold(*WORKER_GC)
    atexit.register(_exit_now)


def _exit_now() -> None:
    """A worker's last act: its `Reuse` holds a model's graphs, tilings and schedules (~0.5 GB
    of small objects), and freeing them one by one at interpreter shutdown took 1.8 s a worker,
    each one the parent waited for at the end of a sweep. Its results went back before this
    (the pool's queues) and multiprocessing has flushed its standard streams; end at once."""
    os._exit(0)


def pool_backend(workers: int) -> Backend:
    """Points as tasks of a local pool of `workers` processes (spawned: a clean interpreter
    each, no forked solver threads), one point at a time each: a worker that finished a point
    runs the point after it in its chain when that is ready (its `Reuse` holds what the two
    share), else the longest ready point (`Queue.hand_out`), so a chain stays on one worker."""

    def run(queue: Queue, on_result: OnResult) -> None:
        ctx = multiprocessing.get_context("spawn")
        n = max(1, min(workers, len(queue.ready)))
        pools = [_one_worker(ctx) for _ in range(n)]
        futures: dict[Future, tuple[int, PointSpec]] = {}
        last: list[int | None] = [None] * n  # the point each worker ran last
        try:
            while True:
                busy = {w for w, _ in futures.values()}
                for w, task in queue.hand_out({w: last[w] for w in range(n) if w not in busy}):
                    futures[pools[w].submit(run_task, *task)] = (w, task[0])
                if not futures:
                    break
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    w, spec = futures.pop(future)
                    last[w] = spec.index
                    if isinstance(future.exception(), BrokenProcessPool):  # it died: anew
                        pools[w].shutdown(wait=False)
                        pools[w], last[w] = _one_worker(ctx), None
                    on_result(spec, *_pool_result(future))
        except BaseException:
            for pool in pools:
                _stop(pool)
            raise
        for pool in pools:  # every worker told to end before any is waited for
            pool.shutdown(wait=False)
        for pool in pools:
            pool.shutdown()

    return run


def _one_worker(ctx) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(1, mp_context=ctx, initializer=_quiet_worker)


def _pool_result(future: Future) -> tuple[PointResult, PlacementHint | None]:
    try:
        return future.result()
    except Exception as exc:  # the worker process died (killed, out of memory)
        return PointResult(ERROR, f"internal error: worker failed: {type(exc).__name__}: {exc}",
                           internal=True), None


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
