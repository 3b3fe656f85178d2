"""A cheap consistency check of an in-memory Schedule and its Timelines, without serialising.

`schedule_problems(schedule, target)` checks what `outdir.trace.check_schedule_doc` checks on
schedule.json (regions inside the grid, ids in order, known kinds, dependencies on earlier
steps, known regions), and more that the builder guarantees and the performance model and the
executor rely on: region names unique; residency for known regions with known modes; valid
phases, and setup steps depending on setup steps only; transfers between two existing regions
(a send on one wafer, a wafer_send across wafers), other steps with no destination; sizes >= 0.
`timeline_problems(mode, timeline, steps)` checks a timeline's sizes, order and critical path.
The driver runs both when CompileOptions.check is on (in tests). Each problem names its step
(id, kind, op, region) or region.
"""

from __future__ import annotations

from compiler.placement.problem import Residency
from compiler.schedule.build import ATTENTION, FIXED, TOKENS, Region, Schedule, Step
from compiler.schedule.perf import Timeline
from compiler.target import Target
from compiler.tiling import collectives
from compiler.vocab import TRANSFER_KINDS, CollectiveKind, Phase, StepKind

_KINDS, _PHASES = tuple(StepKind), tuple(Phase)
_MODES = tuple(r.value for r in Residency)
_SCALINGS = (FIXED, TOKENS, ATTENTION)


def schedule_problems(schedule: Schedule, target: Target) -> list[str]:
    regions = {r.name: r for r in schedule.regions}
    problems = _regions(schedule.regions, target)
    problems += [f"residency of unknown region {name!r}" for name, _ in schedule.residency
                 if name not in regions]
    problems += [f"region {name}: unknown residency {mode!r}" for name, mode in schedule.residency
                 if mode not in _MODES]
    phases: list[str] = []
    for i, st in enumerate(schedule.steps):
        problems += [f"{_name(i, st)}: {p}" for p in _step(i, st, regions, phases)]
        phases.append(st.phase)
    return problems


def _name(i: int, st: Step) -> str:
    what = " ".join(x for x in (str(st.kind), st.op) if x)
    return f"step {i} ({what} on {st.region})"


def _regions(regions: tuple[Region, ...], target: Target) -> list[str]:
    """Every region a rectangle of at least one core inside a wafer of the grid, named once."""
    rows, cols, wafers = target.grid.rows, target.grid.cols, target.wafers.count
    names = [r.name for r in regions]
    problems = [f"region {name}: defined {names.count(name)} times"
                for name in dict.fromkeys(names) if names.count(name) > 1]
    return problems + [
        f"region {r.name}: {r.rows} x {r.cols} at ({r.row}, {r.col}) on wafer {r.wafer} is not "
        f"inside {wafers} wafer(s) of {rows} x {cols} cores"
        for r in regions
        if not (r.rows >= 1 and r.cols >= 1 and r.row >= 0 and r.col >= 0
                and r.row + r.rows <= rows and r.col + r.cols <= cols and 0 <= r.wafer < wafers)]


def _step(i: int, st: Step, regions: dict[str, Region], phases: list[str]) -> list[str]:
    problems = [] if st.id == i else [f"id {st.id}, expected {i}"]
    if st.kind not in _KINDS:
        problems.append(f"unknown kind {st.kind!r}")
    if st.phase not in _PHASES:
        problems.append(f"unknown phase {st.phase!r}")
    if st.scaling not in _SCALINGS:
        problems.append(f"unknown scaling {st.scaling!r}")
    if st.region not in regions:
        problems.append(f"unknown region {st.region!r}")
    problems += [f"dependency {d} is not an earlier step" for d in st.deps if not 0 <= d < i]
    if st.phase == Phase.SETUP:
        problems += [f"a setup step depends on step {d}, a {phases[d]} step" for d in st.deps
                     if 0 <= d < i and phases[d] != Phase.SETUP]
    if min(st.nbytes, st.flops, st.hops) < 0 or st.lanes < 1:
        problems.append("a negative size, or no lane")
    problems += _algorithm(st)
    return problems + _transfer(st, regions)


def _algorithm(st: Step) -> list[str]:
    """A collective algorithm only on a reduce, and one the executor knows."""
    if not st.algorithm:
        return []
    if st.kind != StepKind.COLLECTIVE or st.op_kind != CollectiveKind.REDUCE:
        return [f"a collective algorithm ({st.algorithm}) on a step that is not a reduce"]
    try:
        alg = collectives.parse(st.algorithm)
    except ValueError as exc:
        return [str(exc)]
    if isinstance(alg, collectives.Grid) != (st.axis == collectives.BOTH):
        return [f"collective algorithm {st.algorithm} on a reduce along {st.axis}: the 2D form "
                "goes with partial sums over both axes (rc), and only it"]
    return []


def _transfer(st: Step, regions: dict[str, Region]) -> list[str]:
    if st.kind not in TRANSFER_KINDS:
        return [f"destination {st.dst!r} on a {st.kind} step"] if st.dst else []
    dst, src = regions.get(st.dst), regions.get(st.region)
    if dst is None:
        return [f"unknown destination region {st.dst!r}"]
    if src is None:
        return []  # reported as an unknown region
    if dst.name == src.name:
        return [f"a {st.kind} from region {src.name} to itself"]
    across = src.wafer != dst.wafer
    if across != (st.kind == StepKind.WAFER_SEND):
        return [f"a {st.kind} from wafer {src.wafer} to wafer {dst.wafer}"]
    return []


def timeline_problems(mode: str, tl: Timeline, steps: int) -> list[str]:
    """What `check_schedule_doc` checks of schedule.json's timing.MODE, on the Timeline."""
    problems = [f"{mode} timeline: {len(v)} {k} for {steps} steps"
                for k, v in (("starts", tl.starts), ("ends", tl.ends)) if len(v) != steps]
    if problems:
        return problems
    problems += [f"{mode} timeline: step {i} ends before it starts"
                 for i, (a, b) in enumerate(zip(tl.starts, tl.ends, strict=True)) if b < a]
    problems += [f"{mode} timeline: critical path through unknown step {i}"
                 for i in tl.critical_path if not 0 <= i < steps]
    if tl.ends and max(tl.ends) != tl.makespan:
        problems.append(f"{mode} timeline: makespan {tl.makespan} is not the last end")
    return problems
