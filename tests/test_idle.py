"""compiler/placement/idle.py: idle cores are counted over every wafer, and the reason names
blocks that left a faster, wider option untaken."""

from __future__ import annotations

from compiler.placement.idle import idle_cores
from compiler.placement.problem import Block, Option, Placement, PlacementProblem, Rect, Residency

SMALL = Option(1, 1, Residency.RESIDENT, 100, 0, cycles=500)
WIDE = Option(2, 2, Residency.RESIDENT, 100, 0, cycles=200)


def _problem(options, wafers: int = 1) -> PlacementProblem:
    return PlacementProblem("p", (Block("b0", "block", options),), (), rows=4, cols=4,
                            wafers=wafers, capacity_bytes=1000)


def test_a_block_on_its_fastest_option_leaves_the_rest_idle_for_that_reason():
    problem = _problem((SMALL, WIDE), wafers=2)
    idle = idle_cores(problem, Placement((1,), (Rect(0, 0, 0, 2, 2),)))
    assert (idle.cores, idle.faster_not_taken) == (32 - 4, 0)
    assert "fastest" in idle.reason


def test_a_faster_option_not_taken_is_named():
    problem = _problem((SMALL, WIDE))
    idle = idle_cores(problem, Placement((0,), (Rect(0, 0, 0, 1, 1),)))
    assert (idle.cores, idle.faster_not_taken) == (15, 1)
    assert "b0" in idle.reason


def test_a_full_grid_has_no_idle_cores():
    full = Option(4, 4, Residency.RESIDENT, 100, 0, cycles=100)
    idle = idle_cores(_problem((full,)), Placement((0,), (Rect(0, 0, 0, 4, 4),)))
    assert idle.cores == 0 and idle.faster_not_taken == 0
