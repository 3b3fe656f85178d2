"""The repeating unit made regular: alike blocks' shapes arranged in runs along the chain.

Stage 1 chooses an option per block by totals (off-chip bytes, cycles, area), so on a wafer
that cannot hold every block in one shape it mixes shapes in whatever order the solver left,
e.g. Llama 3 8B at 8k context: 39 x 762 resident blocks with 31 x 381 KV-streaming ones
scattered among them. Alike blocks (the same options, cycles aside) are interchangeable: which
of them takes which option changes no off-chip byte and no core count. `arrangements` deals
the same options out again so equal shapes form runs along the chain (each run a serpentine
of one unit, chain.py), and the caller keeps the cheapest packing hint (stages.greedy_hints).

Pure data on a PlacementProblem: nothing here solves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import permutations

from compiler.placement.problem import Block, PlacementProblem

MAX_ORDERS = 6  # shape runs in every order when there are at most 3 shapes; else 2 orders
# Wafers of more rectangles are not searched for the fewest-cycles move (stages.py): each try
# costs a greedy packing, and a mixture-of-experts wafer holds a hundred or more expert groups
MAX_RECTS = 48
# Wafers of more rectangles are left as stage 1 dealt them. An MoE wafer is dealt: its runs
# of one shape are runs of alike units (a router and its groups, hubs.py) that chain.py lays
# out as boxes (Mixtral's three wafers 2.22e8 -> 1.35e8 hint byte-hops), and each deal's
# chain packing stops as soon as it cannot beat the best one (stages._in_runs)
MAX_DEALT = 256


def alike_key(block: Block) -> tuple:
    """What makes two blocks interchangeable: the same options, cycles aside."""
    return tuple((o.rows, o.cols, o.residency, o.per_core_bytes, o.offchip_bytes_per_token)
                 for o in block.options)


def arrangements(problem: PlacementProblem, options: Sequence[int],
                 members: Sequence[int]) -> list[tuple[int, ...]]:
    """Other option choices for the whole problem, the same as `options` outside `members`
    and, within each class of alike members, the same options dealt so that equal shapes
    are contiguous (runs in a few orders). Empty when no class mixes shapes, or the wafer
    holds more than MAX_DEALT blocks."""
    if len(members) > MAX_DEALT:
        return []
    classes: dict[tuple, list[int]] = {}
    for b in members:
        classes.setdefault(alike_key(problem.blocks[b]), []).append(b)
    mixed = [bs for bs in classes.values() if len({_shape(problem, b, options[b])
                                                   for b in bs}) > 1]
    if not mixed:
        return []
    found: dict[tuple[int, ...], None] = {}
    for k in range(MAX_ORDERS):
        choice = list(options)
        for bs in mixed:
            orders = _orders(problem, options, bs)
            for b, o in zip(bs, orders[k % len(orders)], strict=True):
                choice[b] = o
        found[tuple(choice)] = None
    found.pop(tuple(options), None)
    return list(found)


def _shape(problem: PlacementProblem, b: int, o: int) -> tuple[int, int]:
    opt = problem.blocks[b].options[o]
    return opt.rows, opt.cols


def _orders(problem: PlacementProblem, options: Sequence[int],
            bs: Sequence[int]) -> list[list[int]]:
    """The class's chosen options in runs of equal shape: every order of the runs when there
    are few, else the largest run first and last. Within a run, options keep their order."""
    runs: dict[tuple[int, int], list[int]] = {}
    for b in bs:
        runs.setdefault(_shape(problem, b, options[b]), []).append(options[b])
    counts = Counter({s: len(v) for s, v in runs.items()})
    ranked = [s for s, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if len(ranked) <= 3:
        shape_orders = [list(p) for p in permutations(ranked)]
    else:
        shape_orders = [ranked, ranked[::-1]]
    return [[o for s in order for o in runs[s]] for order in shape_orders]
