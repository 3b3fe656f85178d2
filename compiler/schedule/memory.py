"""Per-core SRAM of a schedule as the executor will hold it, counted without running it.

The executor (compiler/executor/run.py) puts every tile a step writes on its region (a tensor
rewritten in place replaces its old tiles), frees a tensor on a region after the last step there
that reads it (never a graph output, never a tile loaded at setup), and fails with a
MemoryOverflow (exit 70) when a core would hold more than SRAM minus the runtime reserve. This
module replays that bookkeeping over the steps alone, so that a compile whose prompt is meant to
run (compile --verify) is refused with exit 5 before it writes an OUT it cannot run (issue 15).
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler import ir
from compiler.errors import CapacityError
from compiler.schedule.build import Schedule, Step, with_caches
from compiler.target import Target
from compiler.tiling.layouts import tile_numel
from compiler.vocab import VIEW_OPS, Phase, StepKind


@dataclass(frozen=True)
class Overflow:
    step: int
    region: str
    tensor: str
    needed: int  # bytes on the fullest core after the write
    available: int


def first_overflow(schedule: Schedule, g: ir.Graph, target: Target) -> Overflow | None:
    """The first write that would take a core of its region past usable SRAM, or None."""
    return simulate(schedule, g, target)[1]


def simulate(schedule: Schedule, g: ir.Graph, target: Target
             ) -> tuple[dict[str, int], Overflow | None]:
    """Per region, the fullest core's peak bytes (as ExecResult.peak_bytes counts them) up to
    the first overflow, and that overflow (None when the whole schedule fits)."""
    g = with_caches(g, schedule)
    regions = {r.name: r for r in schedule.regions}
    last = {(st.region, ref.tensor): st.id for st in schedule.steps for ref in st.reads}
    held: dict[tuple[str, str], int] = {}
    used: dict[str, int] = {}
    peak: dict[str, int] = {}
    pinned: set[tuple[str, str]] = set()
    cap = target.usable_bytes_per_core

    def free_dead(st: Step) -> None:
        for ref in st.reads:
            key = (st.region, ref.tensor)
            if last.get(key) == st.id and ref.tensor not in g.outputs and key not in pinned:
                used[st.region] -= held.pop(key, 0)

    for st in schedule.steps:
        if st.kind is StepKind.COMPUTE and st.op_kind in VIEW_OPS:
            free_dead(st)
        where = st.dst if st.kind in (StepKind.SEND, StepKind.WAFER_SEND) else st.region
        if st.kind is not StepKind.STORE:
            reg = regions[where]
            for ref in st.writes:
                t = g.tensor(ref.tensor)
                nbytes = tile_numel(t.shape, ref.spec, reg.rows, reg.cols) * \
                    target.itemsize(t.dtype)
                key = (where, ref.tensor)
                used[where] = used.get(where, 0) - held.get(key, 0) + nbytes
                held[key] = nbytes
                if used[where] > cap:
                    return peak, Overflow(st.id, where, ref.tensor, used[where], cap)
                peak[where] = max(peak.get(where, 0), used[where])
                if st.kind is StepKind.LOAD and st.phase == Phase.SETUP:
                    pinned.add(key)
        free_dead(st)
    return peak, None


HINT_COMPILE = ("use a shorter --seq-len or a target with more SRAM per core, or compile "
                "without --verify (the prompt then streams through in decode steps)")
HINT_VERIFY = ("compile it again with --verify (a tiling the executor can run, or exit 5 "
               "saying why there is none)")


def check_runnable(schedule: Schedule, g: ir.Graph, target: Target,
                   hint: str = HINT_COMPILE) -> None:
    """Raise CapacityError (exit 5) when the executor could not hold the schedule's tiles."""
    over = first_overflow(schedule, g, target)
    if over is not None:
        step = schedule.steps[over.step]
        raise CapacityError(
            f"layer {over.region}: a core holding {over.tensor} at step {over.step} ({step.kind}"
            f"{' ' + step.op_kind if step.op_kind else ''}) of the whole-prompt schedule",
            over.needed, over.available, hint)
