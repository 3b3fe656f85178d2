"""Pareto frontiers of two-objective point sets: plain functions over numbers, no I/O.

A sweep asks "which configurations give the most tokens/s for the least SRAM (cores, wafers)?":
one cost to minimise and one gain to maximise. `frontier` marks the points that no other point
beats on both at once (weakly on one, strictly on the other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby


def frontier(costs: Sequence[float | None], gains: Sequence[float | None]) -> list[bool]:
    """For each point (cost, gain): True when it is on the Pareto frontier of "lower cost,
    higher gain". A point is dominated when another has cost <= and gain >= with one of them
    strict; equal points are both on the frontier. Points with a missing or non-finite value
    (a failed compile) are never on it and do not dominate others."""
    if len(costs) != len(gains):
        raise ValueError(f"{len(costs)} costs but {len(gains)} gains")
    valid = [i for i in range(len(costs)) if _finite(costs[i]) and _finite(gains[i])]
    on = [False] * len(costs)
    best = -math.inf  # highest gain among points of strictly lower cost
    by_cost = sorted(valid, key=lambda i: costs[i])
    for _, group in groupby(by_cost, key=lambda i: costs[i]):
        members = list(group)
        top = max(gains[i] for i in members)
        if top > best:
            for i in members:
                on[i] = gains[i] == top
            best = top
    return on


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
