"""Scale check for the placers on synthetic transformer chains (not a test).

Builds chains shaped like Llama 3 8B / 70B / 405B decoders (32, 80, 126 layers plus embedding,
final norm and head) on WSE-3 wafers (1172 x 762 cores), blocks of roughly equal area filling
about 75-80% of the wafers, each with three resident shapes (square, 1:2, 2:1) and a
quarter-size weight-streaming option. Prints, per method: wall time, off-chip bytes per token,
byte-hops, and byte-hops against first-fit and against the analytic lower bound; for CP-SAT also
greedy packings of its own options and wafers (what the layout stage alone won).

    .venv/bin/python benchmarks/placement_synthetic.py [--only 35] [--stages]
"""

from __future__ import annotations

import argparse
import math
import random
import time

from compiler.errors import InfeasiblePlacementError
from compiler.placement import place
from compiler.placement.check import byte_hops, metrics
from compiler.placement.greedy import first_fit, serpentine
from compiler.placement.problem import (
    Block,
    Edge,
    Option,
    Placement,
    PlacementProblem,
    Residency,
)

ROWS, COLS, CAPACITY = 1172, 762, 48 * 1024 - 4176
HIDDEN_BYTES = 8192 * 2  # one fp16 activation row per token
CASES = {35: (1, 15.0, 0.8), 83: (4, 45.0, 0.8), 129: (24, 90.0, 0.75)}  # wafers, limit, fill


def shapes(area: float) -> list[tuple[int, int]]:
    """Square, tall and wide rectangles of about `area` cores, clipped to the grid."""
    side = math.sqrt(area)
    tall = (round(side * math.sqrt(2)), round(side / math.sqrt(2)))
    out = [(round(side), round(side)), tall, (tall[1], tall[0])]
    return [(min(r, ROWS), min(c, COLS)) for r, c in out]


def block(name: str, kind: str, area: float, cycles: int) -> Block:
    resident = [Option(r, c, Residency.RESIDENT, 40_000, 0, cycles) for r, c in shapes(area)]
    side = round(math.sqrt(area / 4))
    weights = round(area * 36_000)  # the weight bytes that no longer stay on chip
    stream = Option(side, side, Residency.STREAM_WEIGHTS, 30_000, weights, 3 * cycles)
    return Block(name, kind, (*resident, stream), group=kind)


def synthetic(n_blocks: int, wafers: int, fill: float, seed: int = 0) -> PlacementProblem:
    rng = random.Random(seed)
    layers = n_blocks - 3
    rel = [1.0] + [rng.uniform(0.9, 1.1) for _ in range(layers)] + [0.05, 1.0]
    unit = wafers * ROWS * COLS * fill / sum(rel)
    names = ["embedding"] + [f"block.{i}" for i in range(layers)] + ["final_norm", "head"]
    kinds = ["embedding"] + ["decoder"] * layers + ["norm", "head"]
    blocks = tuple(block(nm, kd, r * unit, round(2_000_000 * r)) for nm, kd, r
                   in zip(names, kinds, rel, strict=True))
    edges = [Edge(i, i + 1, HIDDEN_BYTES) for i in range(n_blocks - 1)]
    edges += [Edge(i, i + 2, HIDDEN_BYTES // 4) for i in range(1, layers, 16)]  # a few skips
    edges.append(Edge(0, n_blocks - 1, HIDDEN_BYTES // 4))
    return PlacementProblem(f"synthetic-{n_blocks}x{wafers}", blocks, tuple(edges), ROWS, COLS,
                            wafers, CAPACITY, io_bytes_per_token=128_256 * 2,
                            wafer_link_bytes_per_s=150e9, clock_hz=1.1e9)


def run_case(n_blocks: int, show_stages: bool) -> None:
    wafers, limit, fill = CASES[n_blocks]
    problem = synthetic(n_blocks, wafers, fill)
    print(f"\n{problem.name}: {n_blocks} blocks on {wafers} wafer(s), fill {fill:.0%}, "
          f"cpsat limit {limit:.0f} s")
    baseline = None
    for method, opts in (("first-fit", {}), ("serpentine", {}),
                         ("cpsat", {"time_limit_s": limit})):
        start = time.perf_counter()
        try:
            placement = place(problem, method, **opts)
        except InfeasiblePlacementError as err:
            print(f"  {method:<11} infeasible: {err}")
            continue
        wall = time.perf_counter() - start
        m = metrics(problem, placement)
        baseline = baseline or m.byte_hops
        print(f"  {method:<11} {wall:6.1f} s  off-chip {m.offchip_bytes_per_token / 1e6:9.2f} MB"
              f" (bound {m.offchip_lower_bound / 1e6:.2f})  byte-hops {m.byte_hops / 1e6:8.2f} M"
              f"  vs first-fit {m.byte_hops / baseline:5.2f}  vs bound {m.byte_hops_ratio:5.2f}"
              f"  inter-wafer {m.interwafer_bytes_per_token:,} B  slowest wafer "
              f"{m.slowest_wafer_cycles:,} cyc  [{placement.report.status}]")
        if method == "cpsat":
            _same_options(problem, placement)
        if show_stages:
            for name, line in placement.report.stages:
                print(f"      {name}: {line}")


def _same_options(problem: PlacementProblem, placement: Placement) -> None:
    """Greedy packings of CP-SAT's own options and wafers: what the layout stage alone won."""
    wafers = [r.wafer for r in placement.rects]
    cp = byte_hops(problem, placement)
    for name, placer in (("first-fit", first_fit), ("serpentine", serpentine)):
        try:
            other = byte_hops(problem, placer(problem, placement.options, wafers))
        except InfeasiblePlacementError:
            print(f"      same options, {name}: does not pack")
            continue
        print(f"      same options and wafers, {name}: byte-hops {other / 1e6:8.2f} M "
              f"(cpsat {cp / other:5.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, choices=sorted(CASES), action="append")
    parser.add_argument("--stages", action="store_true", help="print CP-SAT's stage summaries")
    args = parser.parse_args()
    for n in args.only or sorted(CASES):
        run_case(n, args.stages)


if __name__ == "__main__":
    main()
