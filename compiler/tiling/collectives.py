"""Collective algorithms for completing partial sums along one mesh axis (a `reduce` step):
which cores combine which partials, in what order, and what that costs.

Every line of m cores along the axis holds one partial tile of `tile_bytes`; at the end every
core of the line holds the sum (an allreduce: reduce to a root, then the root's sum forwarded
back along the line by the routers). The physics, all from the target spec:

- a *stage* is one partial arriving at a core and combined into its own: the tile over one
  link (`tile_bytes / links.bytes_per_cycle`) plus the additions (`elements / adds per cycle`,
  one add per FMA lane: `core.flops(compute.dtype) / 2`); a core forwards its sum only once
  its combine is done (store and forward, no credit for streaming a combine wavelet by
  wavelet);
- a partial travelling d cores pays d x `links.hop_latency_cycles`;
- each dependent *phase* (a level of a tree: its cores must know their level is complete
  before sending on) pays the runtime's `runtime.step_overhead_cycles`.

Algorithms (the root is where the sum lands, before it goes back along the line):

- `chain`: core m-1 sends to m-2, which combines and sends on, ... to core 0; one phase, m - 1
  stages of one hop each;
- `twoway`: two chains from both ends meet at the middle core (WaferLLM's two-way reduce);
  one phase, about half the stages and hops;
- `treeK` (K >= 2 levels, WaferLLM MeshGEMV's K-tree): groups of g = ceil(m^(1/K))
  consecutive cores reduce into their middle core (which combines its g - 1 members' partials
  one after another; the farthest is about g / 2 cores away on either side), then those
  leaders, spaced g apart, the same way, K times, so the sum lands near the line's middle
  and goes back about m / 2 hops each way (a tree rooted at its first core pays m - 1 up
  and m - 1 back); K phases, K x (g - 1) stages, bounded hops per level.

A reduce whose partial sums lie over both axes of an r x c region (every core of it holds a
partial of the same tile: axis `rc`) takes the *2D form* (`Grid`, labelled `2d-rc:A,B` or
`2d-cr:A,B`): along the first axis with algorithm A on every line at once, then along the
other axis with B on the line that holds those sums, the result back the same way; one more
dependent phase than A and B have. Its hops are bounded by about r + c, where one line
snaking through the r x c cores pays r x c (`test_collectives.py` prices both). Rows first or
columns first cost the same here (each phase moves the same tile) but add in different
orders, which the label records; ties go to rows first. The layouts today split a
contraction over one axis only (a matmul's K), so every reduce the schedules hold is
one-axis; a 2D-split contraction would produce `rc` partials.

A chain is cheapest for 2 cores (every algorithm is one stage there, and a tree pays a second
phase); on a long line its m - 1 stages lose to the few levels of a tree, the more the bigger
the tile. The order is part of the numerics: the executor adds exactly in `combines` order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from compiler.target import Target

CHAIN, TWOWAY, TREE = "chain", "twoway", "tree"


@dataclass(frozen=True)
class Algorithm:
    kind: str = CHAIN
    levels: int = 1  # tree: K levels

    @property
    def label(self) -> str:
        return f"{TREE}{self.levels}" if self.kind == TREE else self.kind

    @property
    def phases(self) -> int:
        return self.levels if self.kind == TREE else 1


GRID = "2d"
BOTH = "rc"  # a partial over both mesh axes of a region


@dataclass(frozen=True)
class Grid:
    """The 2D form: along `first` ("r" or "c") with `along_first` on every line, then along
    the other axis with `along_second` on the line holding those sums."""

    first: str
    along_first: Algorithm
    along_second: Algorithm

    @property
    def second(self) -> str:
        return "c" if self.first == "r" else "r"

    @property
    def label(self) -> str:
        return f"{GRID}-{self.first}{self.second}:{self.along_first.label}," \
            f"{self.along_second.label}"

    @property
    def phases(self) -> int:
        return self.along_first.phases + self.along_second.phases


def parse(label: str) -> Algorithm | Grid:
    """`chain`, `twoway`, `treeK` (K >= 2) or `2d-rc:A,B` / `2d-cr:A,B` (A, B one of the
    others); empty means chain (schedules written before the choice existed)."""
    if label.startswith(f"{GRID}-"):
        order, _, algs = label[len(GRID) + 1:].partition(":")
        a, _, b = algs.partition(",")
        if order not in ("rc", "cr") or label.count(f"{GRID}-") != 1 or not a or not b:
            raise ValueError(f"unknown collective algorithm {label!r} (2d-rc:A,B or 2d-cr:A,B)")
        one, two = parse(a), parse(b)
        if not isinstance(one, Algorithm) or not isinstance(two, Algorithm):
            raise ValueError(f"unknown collective algorithm {label!r} (2d-rc:A,B or 2d-cr:A,B)")
        return Grid(order[0], one, two)
    if label in ("", CHAIN):
        return Algorithm()
    if label == TWOWAY:
        return Algorithm(TWOWAY)
    if label.startswith(TREE) and label[len(TREE):].isdigit() and int(label[len(TREE):]) >= 2:
        return Algorithm(TREE, int(label[len(TREE):]))
    raise ValueError(f"unknown collective algorithm {label!r} (chain, twoway, treeK with K >= 2, "
                     "or 2d-rc:A,B / 2d-cr:A,B)")


def group_size(m: int, levels: int) -> int:
    """The smallest g with g ** levels >= m."""
    g = max(2, math.ceil(m ** (1 / levels)))
    while (g - 1) ** levels >= m and g > 2:
        g -= 1
    while g ** levels < m:
        g += 1
    return g


def candidates(m: int) -> tuple[Algorithm, ...]:
    """Every algorithm worth pricing on a line of m cores, simplest first."""
    if m <= 2:
        return (Algorithm(),)
    deepest = max(2, math.ceil(math.log2(m)))
    return (Algorithm(), Algorithm(TWOWAY),
            *(Algorithm(TREE, k) for k in range(2, deepest + 1)))


def reduce_cycles(alg: Algorithm, m: int, tile_bytes: float, t: Target) -> float:
    """Cycles of one reduce of `tile_bytes` per line over m cores, every core ending with the
    sum; the runtime overhead of every phase after the first is included (the first is the
    step's own, which the caller adds)."""
    if m <= 1:
        return 0.0
    hop, bpc = t.links.hop_latency_cycles, t.links.bytes_per_cycle
    adds = max(t.core.flops(t.compute.dtype) / 2, 1.0)
    stage = tile_bytes / bpc + tile_bytes / t.itemsize(t.compute.dtype) / adds
    if alg.kind == TWOWAY:
        left = (m - 1) // 2
        far = max(left, m - 1 - left)
        up, span = far * (hop + stage) + (stage if left else 0.0), far
    elif alg.kind == TREE:
        _, root, levels = _tree(m, alg.levels)
        up = sum(stages * stage + far * hop for stages, far in levels)
        up += (alg.levels - 1) * t.runtime.step_overhead_cycles
        span = max(root, m - 1 - root)
    else:
        up, span = (m - 1) * (hop + stage), m - 1
    return up + span * hop + tile_bytes / bpc  # the sum back along the line


def choose(m: int, tile_bytes: float, t: Target) -> Algorithm:
    """The cheapest algorithm for a reduce of `tile_bytes` per line over m cores (ties: the
    simpler one, a chain first)."""
    return min(candidates(m), key=lambda a: reduce_cycles(a, m, tile_bytes, t))


def combines(alg: Algorithm, m: int) -> tuple[tuple[tuple[int, int], ...], int]:
    """The reduction as ordered (dst, src) pairs, `partial[dst] += partial[src]`, and the root
    that ends with the sum."""
    if m <= 1:
        return (), 0
    if alg.kind == TWOWAY:
        mid = (m - 1) // 2
        left = tuple((i, i - 1) for i in range(1, mid))
        right = tuple((i, i + 1) for i in range(m - 2, mid, -1))
        into = ((mid, mid - 1),) if mid else ()
        return left + right + into + ((mid, mid + 1),), mid
    if alg.kind == TREE:
        pairs, root, _ = _tree(m, alg.levels)
        return pairs, root
    return tuple((i, i + 1) for i in range(m - 2, -1, -1)), 0


@functools.lru_cache(maxsize=4096)
def _tree(m: int, levels: int) -> tuple[tuple[tuple[int, int], ...], int,
                                         tuple[tuple[int, int], ...]]:
    """A K-tree over m cores: its (dst, src) combines in order, the root, and per level
    (stages: the most partials one leader combines, far: the most cores a partial travels).
    Each group of g consecutive nodes reduces into the node nearest its span's middle (the
    fewest hops to its farthest member), members left to right."""
    g = group_size(m, levels)
    nodes, out, costs = list(range(m)), [], []
    for _ in range(levels):
        groups = [nodes[i:i + g] for i in range(0, len(nodes), g)]
        leaders = [min(grp, key=lambda n, grp=grp: (abs(2 * n - grp[0] - grp[-1]), n))
                   for grp in groups]
        out += [(lead, src) for grp, lead in zip(groups, leaders, strict=True)
                for src in grp if src != lead]
        costs.append((max(len(grp) for grp in groups) - 1,
                      max(abs(src - lead) for grp, lead in zip(groups, leaders, strict=True)
                          for src in grp)))
        nodes = leaders
    return tuple(out), nodes[0], tuple(costs)


# --- the 2D form: partial sums over both axes of a region ----------------------------------------


def grid_cycles(alg: Grid, rows: int, cols: int, tile_bytes: float, t: Target) -> float:
    """Cycles of a reduce of `tile_bytes` held as partials by every core of a rows x cols
    region, every core ending with the sum: the first axis's reduce on every line at once, a
    dependent phase, then the other axis's on the line that holds the sums (each with its
    sum back along its line: the same hops and tiles as going back in the reverse order)."""
    m1, m2 = (rows, cols) if alg.first == "r" else (cols, rows)
    if m1 * m2 <= 1:
        return 0.0
    second = reduce_cycles(alg.along_second, m2, tile_bytes, t)
    overhead = t.runtime.step_overhead_cycles if m1 > 1 and m2 > 1 else 0
    return reduce_cycles(alg.along_first, m1, tile_bytes, t) + overhead + second


def choose_grid(rows: int, cols: int, tile_bytes: float, t: Target) -> Grid:
    """The cheapest 2D form (each axis's algorithm the cheapest for its line; ties: rows
    first)."""
    forms = [Grid(first, choose(m1, tile_bytes, t), choose(m2, tile_bytes, t))
             for first, m1, m2 in (("r", rows, cols), ("c", cols, rows))]
    return min(forms, key=lambda g: grid_cycles(g, rows, cols, tile_bytes, t))


def grid_combines(alg: Grid, rows: int, cols: int) -> tuple[
        tuple[tuple[tuple[int, int], tuple[int, int]], ...], tuple[int, int]]:
    """The 2D reduction as ordered ((row, col) dst, (row, col) src) pairs, `partial[dst] +=
    partial[src]`, and the core that ends with the sum: every line along the first axis in
    its algorithm's order (line by line), then the line through their roots."""
    m1, m2 = (rows, cols) if alg.first == "r" else (cols, rows)
    first, root1 = combines(alg.along_first, m1)
    second, root2 = combines(alg.along_second, m2)

    def at(i: int, j: int) -> tuple[int, int]:  # i along the first axis, j along the second
        return (i, j) if alg.first == "r" else (j, i)

    pairs = [(at(d, line), at(s, line)) for line in range(m2) for d, s in first]
    pairs += [(at(root1, d), at(root1, s)) for d, s in second]
    return tuple(pairs), at(root1, root2)
