"""CP-SAT placer (the only package that imports ortools): residency first, then rectangles.

`solve(problem, time_limit_s=..., seed=..., workers=..., deterministic=..., on_progress=...)`
places every block. Its parts, in the order a solve uses them:

- stages.py: orchestration: stage order, how the time limit is shared, fallbacks, the report.
- residency.py: stage 1: an option per block (off-chip bytes, cycles, shape) and contiguous
  wafer ranges, lexicographic, by core area or by exact strip packing.
- wafer.py: stage 2 per wafer: from a complete greedy hint, a coarse grid, then fine windows.
- layout.py: stage 2's model: fixed-size rectangles under NoOverlap2D, byte-weighted distances.
- lns.py: stage 2's deterministic neighbourhood search.
- runner.py: the one place that runs CP-SAT: limits, seed, workers, the wall-clock deadline,
  progress callbacks, status and bound (DET_PER_SECOND and the time shares live there).

Each model follows the same steps: prepared instance -> variable container -> one function per
constraint family -> objective -> hint -> solve -> extract.
"""

from __future__ import annotations

from compiler.placement.cpsat.stages import solve

__all__ = ["solve"]
