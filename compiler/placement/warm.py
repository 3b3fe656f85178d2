"""Warm starts: a placement solved for one problem as the start of a nearby problem's solve
(a sweep point from its neighbour's, compiler/sweep/).

`PlacementHint.of(problem, placement)` keeps what a hint needs away from its problem: each
block's rectangle shape and residency, the rectangles, and a digest of the problem (an equal
problem takes the placement outright). `translate(problem, hint)` maps it onto another
problem: each block takes the option with the same shape and residency; None when the blocks
differ, a shape or residency is gone, or the independent validator refuses the result (a
block no longer fits its cores, say). The CP-SAT placer starts from a translated hint
(cpsat/stages.py) and `keep_better` never lets the answer be worse than it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from compiler.placement.check import byte_hops, offchip_bytes_per_token, validate
from compiler.placement.problem import Placement, PlacementProblem, Rect, SolverReport

# a warm-started solve gets this share of the time limit as its search budget (deterministic
# time; its wall-clock deadline stays the whole limit, so load does not cut it where it would
# not cut a full solve): it starts where a full search of a nearby problem ended, and its answer
# is never worse than that start (keep_better)
HINT_SHARE = 0.25


@dataclass(frozen=True)
class PlacementHint:
    """A solved placement, problem-independent: per block (name, rows, cols, residency)."""

    problem_sha256: str
    blocks: tuple[tuple[str, int, int, str], ...]
    rects: tuple[Rect, ...]
    placement: Placement  # as solved, for an equal problem

    @classmethod
    def of(cls, problem: PlacementProblem, placement: Placement) -> PlacementHint:
        blocks = tuple((b.name, o.rows, o.cols, o.residency.value) for b, o in zip(
            problem.blocks, (placement.option(problem, i) for i in range(len(problem.blocks))),
            strict=True))
        return cls(problem_sha256(problem), blocks, placement.rects, placement)


def problem_sha256(problem: PlacementProblem) -> str:
    """A digest of everything a placer sees (stable across processes, unlike hash())."""
    return hashlib.sha256(repr(problem).encode()).hexdigest()


def translate(problem: PlacementProblem, hint: PlacementHint) -> Placement | None:
    """The hint as a placement of `problem` (same shapes, residencies and rectangles), or None
    when it does not carry over or does not validate."""
    if len(hint.blocks) != len(problem.blocks):
        return None
    options = []
    for block, (name, rows, cols, residency) in zip(problem.blocks, hint.blocks, strict=True):
        same = [i for i, o in enumerate(block.options)
                if (o.rows, o.cols, o.residency.value) == (rows, cols, residency)]
        if block.name != name or not same:
            return None
        options.append(same[0])
    placement = Placement(tuple(options), hint.rects, SolverReport("hint", "FEASIBLE"))
    return None if validate(problem, placement) else placement


def cost(problem: PlacementProblem, placement: Placement) -> tuple[int, float]:
    """What the placers minimise, in order: off-chip bytes per token, then byte-hops."""
    return offchip_bytes_per_token(problem, placement), byte_hops(problem, placement)


def keep_better(problem: PlacementProblem, solved: Placement, start: Placement) -> Placement:
    """`solved`, or the start it was warm-started from when that costs less (then reported as
    the solve's answer, with a stage saying so)."""
    if cost(problem, start) >= cost(problem, solved):
        return solved
    report = solved.report
    note = ("hint", f"the warm start costs less than the search's answer: kept "
            f"({byte_hops(problem, start):,.0f} byte-hops)")
    return Placement(start.options, start.rects, replace(
        report, status="FEASIBLE", objective=byte_hops(problem, start),
        stages=(*report.stages, note)))
