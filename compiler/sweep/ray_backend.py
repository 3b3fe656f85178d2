"""The Ray backend of `wafer sweep`: the same points as Ray tasks, on an existing cluster
(`--ray-address`) or on a local Ray started for the run. The only module that imports ray
(an optional extra: `pip install 'wafer-compiler[ray]'`).

Each point is one task of one CPU running `compiler.sweep.point.run_task` (handed out in chain
order by `point.Queue`, with its warm start); results come back to the driver, which caches
them (so the cluster's nodes need wafer installed and the model reachable at the same path,
but no shared filesystem).
"""

from __future__ import annotations

import logging
from types import ModuleType

from compiler.errors import UsageError
from compiler.placement.warm import PlacementHint
from compiler.sweep.point import ERROR, Backend, OnResult, PointResult, Queue, run_task

INSTALL_HINT = "pip install 'wafer-compiler[ray]'"


def import_ray() -> ModuleType:
    """ray, or a one-line UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}"
                         ) from None
    return ray


def ray_backend(workers: int, address: str | None = None) -> Backend:
    """Run points as Ray tasks: on the cluster at `address`, or on a local Ray of `workers`
    CPUs started (and stopped) for the run."""
    ray = import_ray()

    def run(queue: Queue, on_result: OnResult) -> None:
        _init(ray, workers, address)
        task = ray.remote(num_cpus=1, max_retries=0)(run_task)
        pending = {}
        try:
            while True:
                pending |= {task.remote(spec, hint): spec for spec, hint in queue.take()}
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    on_result(pending.pop(ref), *_result(ray, ref))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            ray.shutdown()

    return run


def _init(ray: ModuleType, workers: int, address: str | None) -> None:
    quiet = {"include_dashboard": False, "log_to_driver": False,
             "logging_level": logging.ERROR}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:  # "local": a new instance even when another Ray runs on this machine
            ray.init(address="local", num_cpus=workers, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise UsageError(f"cannot start or reach {where}: {_first_line(exc)}") from None


def _result(ray: ModuleType, ref) -> tuple[PointResult, PlacementHint | None]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # the task's worker died, or it was cancelled
        return PointResult(ERROR, f"internal error: Ray task failed: {_first_line(exc)}",
                           internal=True), None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
