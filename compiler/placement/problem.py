"""PlacementProblem: the narrow, plain-data view the placers see (never the graph).

A problem is a chain-like list of blocks (the model's layers in order), each with a few options
for holding it on chip (a rectangle shape and a residency mode with its per-core bytes, its
off-chip bytes per token and its estimated time), the edges between blocks with the bytes they
carry, and the machine: grid, wafers, per-core capacity. `Placement` is the answer: one option
and one rectangle (on one wafer) per block. Both are frozen values; placers are functions
`PlacementProblem -> Placement`, and compiler/placement/check.py judges any answer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

# on_progress(stage, objective, bound, elapsed_s): a placer's live progress. A stage starting
# has objective and bound None; an improved bound alone has objective None.
ProgressHook = Callable[[str, float | None, float | None, float], None]


class Residency(enum.Enum):
    """What of a block lives in SRAM; the rest is streamed from off-chip every token."""

    RESIDENT = "resident"  # weights and KV cache on chip
    STREAM_KV = "stream_kv"  # weights on chip, KV cache streamed
    STREAM_WEIGHTS = "stream_weights"  # KV cache on chip, weights streamed
    STREAM_ALL = "stream_all"  # both streamed; only working buffers on chip


@dataclass(frozen=True)
class Option:
    """One way to hold a block: an r x c rectangle of cores in a residency mode."""

    rows: int
    cols: int
    residency: Residency
    per_core_bytes: int  # the fullest core's bytes in this option (must fit the capacity)
    offchip_bytes_per_token: int  # bytes streamed in from off-chip each decode token
    cycles: int  # estimated cycles of the block per decode token (compute + collectives)

    @property
    def cores(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class Block:
    """A placement unit: one layer of the model (embedding, block N, final norm, head)."""

    name: str
    kind: str
    options: tuple[Option, ...]
    group: str = ""  # blocks with the same group are alike (same template, same options)


@dataclass(frozen=True)
class Edge:
    """Activations flowing from block `src` to block `dst` (indices into problem.blocks)."""

    src: int
    dst: int
    bytes_per_token: int  # decode: bytes per generated token
    bytes_prefill: int = 0  # prefill: bytes per forward pass of the prompt


@dataclass(frozen=True)
class PlacementProblem:
    name: str
    blocks: tuple[Block, ...]
    edges: tuple[Edge, ...]
    rows: int  # core grid of one wafer
    cols: int
    wafers: int
    capacity_bytes: int  # usable SRAM per core
    io_bytes_per_token: int = 0  # token ids in and logits out: off-chip on every placement
    wafer_link_bytes_per_s: float = 0.0
    clock_hz: float = 1e9

    @property
    def cores_per_wafer(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class Rect:
    """A rectangle of cores on one wafer: rows [row, row + rows), cols [col, col + cols)."""

    wafer: int
    row: int
    col: int
    rows: int
    cols: int

    @property
    def center2(self) -> tuple[int, int]:
        """Doubled centre coordinates (integers): (2 row + rows, 2 col + cols)."""
        return 2 * self.row + self.rows, 2 * self.col + self.cols


@dataclass(frozen=True)
class SolverReport:
    """What a solver says about its answer; every artifact records it."""

    method: str  # "cpsat", "greedy-first-fit", "greedy-serpentine", ...
    status: str  # OPTIMAL, FEASIBLE, INFEASIBLE, UNKNOWN, MODEL_INVALID, or HEURISTIC
    objective: float | None = None
    bound: float | None = None  # the solver's own bound on the objective
    wall_time_s: float = 0.0
    seed: int = 0
    workers: int = 1
    time_limit_s: float | None = None
    deterministic: bool = True
    stages: tuple[tuple[str, str], ...] = ()  # per solve stage: (name, one-line summary)


@dataclass(frozen=True)
class Placement:
    """One option and one rectangle per block, in problem.blocks order."""

    options: tuple[int, ...]  # index into blocks[i].options
    rects: tuple[Rect, ...]
    report: SolverReport = field(default_factory=lambda: SolverReport("none", "UNKNOWN"))

    def option(self, problem: PlacementProblem, i: int) -> Option:
        return problem.blocks[i].options[self.options[i]]
