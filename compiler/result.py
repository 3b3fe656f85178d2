"""CompileResult: what a compile produced, stage by stage. Its own module so that the writers of
OUT/ (compiler/outdir/) and the tools reading a result need not import the driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compiler import ir
    from compiler.driver import CompileOptions
    from compiler.placement.check import Metrics
    from compiler.placement.problem import Placement, PlacementProblem, Rect
    from compiler.schedule.build import Schedule
    from compiler.schedule.decode import DecodePlan
    from compiler.schedule.moe import MoEEstimate
    from compiler.schedule.perf import Estimate, Timeline
    from compiler.speculative import Speculative
    from compiler.target import Target
    from compiler.tiling.candidates import TiledGraph


@dataclass(frozen=True)
class CompileResult:
    graph: ir.Graph
    target: Target
    tiled: TiledGraph
    problem: PlacementProblem
    placement: Placement
    metrics: Metrics
    baseline: Metrics | None  # first-fit, for comparison (None when it found no placement)
    schedule: Schedule
    timelines: dict[str, Timeline]  # per mode: decode, prefill
    estimates: dict[str, Estimate]
    options: CompileOptions
    stage_times: tuple[tuple[str, float], ...]
    # first-fit shelves with this placement's own options and wafers: a like-for-like layout
    # baseline for byte-hops (None when shelves cannot pack those rectangles)
    baseline_same_options: Metrics | None = None
    decode: DecodePlan | None = None  # the decode step of a causal LM (schedule/decode.py)
    reused: tuple[str, ...] = ()  # stages taken from an earlier compile (driver.Reuse)
    moe: MoEEstimate | None = None  # MoE models: expected / worst-case decode (schedule/moe.py)
    no_decode: str = ""  # why there is no decode plan (decode is None), when the model tells
    speculative: Speculative | None = None  # --speculative: the draft and the round's rate
    # CompileOptions.reserve: the rectangle the placement kept free (for a speculative draft)
    reserved: Rect | None = None


def decode_steps(result: CompileResult) -> Schedule:
    """The schedule one decode token runs: the decode schedule of a causal LM, else the prefill
    schedule (priced per token by scaling)."""
    return result.decode.schedule if result.decode is not None else result.schedule
