"""Layer placement on the core grid: problem, solvers, baselines and validator.

`place(problem, method)` runs one placer and then the independent validator on its answer, so a
placement that leaves this package has passed `check.check_placement`. Methods: "cpsat" (the
default; the package compiler/placement/cpsat/, the only OR-Tools importer, loaded on first
use), "first-fit" and "serpentine" (compiler/placement/greedy.py, on the packing geometry of
geometry.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compiler.errors import UsageError
from compiler.placement.check import check_placement
from compiler.placement.greedy import first_fit, serpentine
from compiler.placement.problem import Placement, PlacementProblem
from compiler.vocab import PLACEMENT_METHODS, PlacementMethod


def _cpsat(problem: PlacementProblem, **options: Any) -> Placement:
    from compiler.placement import cpsat  # OR-Tools loads only when it is asked for

    return cpsat.solve(problem, **options)


_PLACERS: dict[str, Callable[..., Placement]] = {
    PlacementMethod.CPSAT: _cpsat,
    PlacementMethod.FIRST_FIT: first_fit,
    PlacementMethod.SERPENTINE: serpentine,
}


def place(problem: PlacementProblem, method: str = PlacementMethod.CPSAT,
          **solver_options: Any) -> Placement:
    """Place `problem` with `method` and validate the answer (InvalidPlacementError if broken).

    solver_options go to the placer: for "cpsat" time_limit_s, seed, workers, deterministic,
    on_progress (problem.ProgressHook); for the greedy methods options and wafer_of (fixed
    choices).
    """
    placer = _PLACERS.get(method)
    if placer is None:
        raise UsageError(f"unknown placement method {method!r}; "
                         f"choose one of {', '.join(PLACEMENT_METHODS)}")
    placement = placer(problem, **solver_options)
    check_placement(problem, placement)
    return placement
