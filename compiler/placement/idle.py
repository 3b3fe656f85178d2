"""Idle cores of a placement and why they are idle (the compile summary says both).

A core no rectangle covers is idle. Either every block sits on its fastest option (a wider
rectangle would add more collective hops and per-phase overhead than the compute it saves; the
tiling offers wider shapes up to a share of the machine when they cut cycles), or some blocks
have a faster option the placer did not take: it costs off-chip bytes (which come first), or
it does not pack beside the other blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.placement.problem import Placement, PlacementProblem


@dataclass(frozen=True)
class Idle:
    cores: int  # cores no block's rectangle covers, all wafers
    faster_not_taken: int  # blocks with a faster option than the one placed
    reason: str  # one sentence


def idle_cores(problem: PlacementProblem, placement: Placement) -> Idle:
    total = problem.cores_per_wafer * problem.wafers
    used = sum(r.rows * r.cols for r in placement.rects)
    slower = []
    for i, block in enumerate(problem.blocks):
        chosen = placement.option(problem, i)
        if any(o.cycles < chosen.cycles for o in block.options):
            slower.append(block.name)
    idle = max(0, total - used)
    if not idle:
        reason = "every core holds a block"
    elif not slower:
        reason = ("every block is on its fastest candidate rectangle: a wider one would add "
                  "more collective hops and per-phase overhead than the compute it saves")
    else:
        reason = (f"{len(slower)} block(s) (first {slower[0]}) have a faster, wider option "
                  "that costs off-chip bytes or does not pack beside the others")
    return Idle(idle, len(slower), reason)
