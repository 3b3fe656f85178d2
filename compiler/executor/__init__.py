"""The reference executor: runs a schedule step by step on blocked tiles, per core, with per-core
memory enforced; the numpy kernels in kernels.py are the living spec of op semantics."""

from compiler.executor import kernels_moe  # noqa: F401 (registers the MoE routing kernels)
from compiler.executor.run import (
    FP32,
    TARGET,
    TARGET_STRICT,
    ExecResult,
    MemoryOverflow,
    ScheduleFault,
    host_constants,
    run_schedule,
)
from compiler.vocab import PRECISIONS

__all__ = ["FP32", "PRECISIONS", "TARGET", "TARGET_STRICT", "ExecResult", "MemoryOverflow",
           "ScheduleFault", "host_constants", "run_schedule"]
