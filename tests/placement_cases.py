"""Small hand-built placement problems shared by the placement tests."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ortools.sat.python import cp_model

from compiler.placement.problem import Block, Edge, Option, PlacementProblem, Residency

CAPACITY = 44_000
RES, STREAM = Residency.RESIDENT, Residency.STREAM_WEIGHTS


def opt(
    rows: int, cols: int, residency: Residency = RES, *, per_core: int = 30_000,
    offchip: int = 0, cycles: int = 1_000,
) -> Option:
    return Option(rows, cols, residency, per_core, offchip, cycles)


def square_block(name: str, side: int, *, stream_side: int = 0, stream_bytes: int = 0,
                 cycles: int = 1_000, shapes: bool = False) -> Block:
    """A resident side x side option (with `shapes`, also half-height and half-width ones of
    the same area), and a smaller streaming one when stream_side is given."""
    options = [opt(side, side, cycles=cycles)]
    if shapes and side % 2 == 0:
        options += [opt(side // 2, side * 2, cycles=cycles), opt(side * 2, side // 2,
                                                               cycles=cycles)]
    if stream_side:
        options.append(opt(stream_side, stream_side, STREAM, offchip=stream_bytes,
                           cycles=cycles * 2))
    return Block(name, "block", tuple(options), group="block")


def chain_edges(n: int, bytes_per_token: int = 1_000,
                skips: Sequence[tuple[int, int, int]] = ()) -> tuple[Edge, ...]:
    chain = [Edge(i, i + 1, bytes_per_token) for i in range(n - 1)]
    return tuple(chain + [Edge(i, j, b) for i, j, b in skips])


def problem(
    blocks: Sequence[Block], rows: int, cols: int, *, wafers: int = 1,
    edges: Sequence[Edge] | None = None, io: int = 0, name: str = "case",
) -> PlacementProblem:
    edges = chain_edges(len(blocks)) if edges is None else edges
    return PlacementProblem(name, tuple(blocks), tuple(edges), rows, cols, wafers, CAPACITY,
                            io_bytes_per_token=io)


def equal_chain(n: int, side: int, rows: int, cols: int, *, wafers: int = 1,
                bytes_per_token: int = 1_000, shapes: bool = False) -> PlacementProblem:
    """n identical square blocks in a chain (resident, plus a quarter-size streaming option)."""
    blocks = [square_block(f"block.{i}", side, stream_side=max(1, side // 2),
                           stream_bytes=10_000, shapes=shapes) for i in range(n)]
    return problem(blocks, rows, cols, wafers=wafers,
                   edges=chain_edges(n, bytes_per_token), name=f"chain{n}")


def strip_chain(n: int = 6, *, wafers: int = 2) -> PlacementProblem:
    """n alike blocks on 11 x 9 wafers where only strips of the wafer's height pack three a
    wafer (a 1x1 final norm fits under the last wafer's strips).

    Each block: a 10x3 strip (30 cores, slow), a 4x7 shape (28 cores, fast) and a streaming
    1x1. Area says three 4x7 fit a wafer (84 of 99 cores) and greedy placers take the fewest
    cores, but only two 4x7 fit (stacked: 3 rows and 2 columns left), and beside one there is
    no room for a strip: only three strips a wafer keep n = 3 x wafers blocks resident."""
    blocks = [Block(f"block.{i}", "block", (
        opt(10, 3, cycles=2_000), opt(4, 7),
        opt(1, 1, STREAM, offchip=10_000, cycles=5_000)), group="block") for i in range(n)]
    norm = Block("final_norm", "norm", (opt(1, 1, cycles=10),))
    return problem([*blocks, norm], 11, 9, wafers=wafers, name="strips")


def covering_model(n: int, rows: int) -> tuple[cp_model.CpModel, list[cp_model.IntVar]]:
    """A real CP-SAT model: `n` integers under `rows` random covering rows (seed 1), least
    sum; its presolve grows with `rows`."""
    rng = random.Random(1)
    model = cp_model.CpModel()
    x = [model.new_int_var(0, 1_000, f"x{i}") for i in range(n)]
    for _ in range(rows):
        model.add(sum(rng.randint(1, 9) * x[i] for i in rng.sample(range(n), 6))
                  >= rng.randint(500, 3_000))
    model.minimize(sum(x))
    return model, x
