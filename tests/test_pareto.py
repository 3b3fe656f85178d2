"""The Pareto frontier against its definition (lower cost, higher gain)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler.sweep.pareto import frontier


def _dominated(i: int, costs, gains) -> bool:
    return any(costs[j] <= costs[i] and gains[j] >= gains[i]
               and (costs[j] < costs[i] or gains[j] > gains[i])
               for j in range(len(costs)) if j != i and _ok(costs[j], gains[j]))


def _ok(c, g) -> bool:
    return c is not None and g is not None and math.isfinite(c) and math.isfinite(g)


values = st.one_of(st.integers(0, 6).map(float), st.none(), st.just(math.nan),
                   st.just(math.inf))


@given(st.lists(st.tuples(values, values), max_size=30))
def test_frontier_matches_the_definition(points):
    costs, gains = [c for c, _ in points], [g for _, g in points]
    got = frontier(costs, gains)
    want = [_ok(c, g) and not _dominated(i, costs, gains) for i, (c, g) in enumerate(points)]
    assert got == want


def test_frontier_of_a_small_set():
    # (cost, gain): (1, 1) and (2, 5) and (4, 9) trade off; (3, 4) is beaten by (2, 5);
    # (2, 5) appears twice (both kept); (4, 2) is beaten by every cheaper point with more gain;
    # a failed point (None) is never on the frontier.
    costs = [1, 2, 3, 4, 2, 4, None]
    gains = [1, 5, 4, 9, 5, 2, 100]
    assert frontier(costs, gains) == [True, True, False, True, True, False, False]


def test_frontier_needs_equal_lengths():
    with pytest.raises(ValueError, match="1 costs but 0 gains"):
        frontier([1.0], [])
