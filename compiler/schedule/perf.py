"""Performance model: cycles per step from the target, then the critical path through the step
graph with regions, links and the off-chip port as serialized resources.

Step costs (cycles): compute = FLOPs / (cores x FLOP/cycle) plus, for statistics reduced inside
the step, (m - 1) hops along the axis; a reduce of partial sums along an axis of m cores = its
recorded algorithm's cost (chain, two-way or K-tree: stages of one tile over a link plus its
additions on the receiving core, hops, and one runtime overhead per tree level;
tiling/collectives.py), then the sum back along the line; partial sums over both axes, the
2D form's (one axis's lines, then the other's);
a relayout = (m - 1) x (hop latency + tile bytes / link bytes per cycle); a send = hops x hop
latency + a turn + bytes / (lanes x link bytes per cycle); off-chip and inter-wafer transfers =
latency + bytes / bandwidth. The target's runtime overhead is paid once per dependent phase:
by every transfer and collective, and by a compute step that waits on one (compute fed only by
compute runs fused). A collective along an axis of one core moves nothing: it is free and
counts as compute for the fusing (`_local`); what was loaded at setup (resident weights,
tables) is there before the token starts and opens no phase. Batch-1 decode is therefore
bound by hop latencies and overheads of dependent phases, not bandwidth.

Modes: decode (one token per sequence per step at a context length: token-proportional sizes
scale by batch / tokens, attention additionally by context / sequence) and prefill (the prompt
as the graph describes it: time to first token). Setup steps (resident weights) cost nothing
per token; streamed weights and KV cache are loaded every step, and every off-chip transfer of
a wafer (loads, stores, streamed KV reads) queues on that wafer's one off-chip port, prefetched
as soon as the port is free: a decode step never beats its off-chip bytes / bandwidth.
Inter-wafer sends queue on the sender's outgoing and the receiver's incoming port.
"""

from __future__ import annotations

import math
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from compiler.schedule.build import ATTENTION, FIXED, Schedule, Step
from compiler.target import Target
from compiler.tiling import collectives
from compiler.vocab import (
    OFFCHIP_KINDS,
    REGION_KINDS,
    ZERO_COST_OPS,
    CollectiveKind,
    Mode,
    Phase,
    StepKind,
)


@dataclass(frozen=True)
class PerfOptions:
    mode: Mode = Mode.DECODE
    batch: int | None = None  # sequences per decode step (default: the graph's batch)
    context: int | None = None  # KV length for decode attention (default: the schedule's)
    # query tokens per sequence in one decode step: 1, or k + 1 for a speculative decoding
    # verification step (compiler/speculative.py). Work, activations moved, K/V appended and
    # logits stored scale by it (attention: it x the context); resident weights and off-chip
    # reads (streamed weights, streamed KV caches) do not
    queries: int = 1


@dataclass(frozen=True)
class Timeline:
    starts: tuple[int, ...]  # cycles, per step id (setup steps: 0, 0)
    ends: tuple[int, ...]
    makespan: int
    critical_path: tuple[int, ...]  # step ids, first to last


@dataclass(frozen=True)
class Estimate:
    mode: str
    batch: int
    context: int
    cycles: int  # one decode step, or the whole prefill
    seconds: float
    tokens_per_s: float  # decode: tokens per second; prefill: prompt tokens per second
    ttft_s: float | None  # prefill only
    utilization: float  # achieved FLOP/s over the target's peak
    flops: int
    critical_path_steps: int
    compute_bound_tokens_per_s: float  # roofline: peak FLOP/s / FLOPs per token


# What grows with the query tokens of a decode step (PerfOptions.queries): the work and the
# activations it moves, the K/V appended and the logits stored; off-chip loads (streamed
# weights, the token ids) do not
_PER_QUERY = frozenset({StepKind.COMPUTE, StepKind.COLLECTIVE, StepKind.SEND,
                        StepKind.WAFER_SEND, StepKind.APPEND, StepKind.STORE})


def step_scale(step: Step, s: Schedule, opts: PerfOptions) -> float:
    """Factor from the schedule's sizes (one forward of s.tokens tokens) to this mode's."""
    if step.scaling == FIXED:  # a decode schedule's exact one-token sizes, or setup loads
        return float(opts.queries) if step.kind in _PER_QUERY else 1.0
    if opts.mode == Mode.PREFILL:
        return 1.0
    batch = opts.batch or s.batch
    per_step = batch * opts.queries / s.tokens
    if step.scaling == ATTENTION:
        seq = max(1, s.tokens // max(s.batch, 1))
        per_step *= (opts.context or s.context) / seq
    return per_step


def step_cycles(step: Step, s: Schedule, t: Target, scale: float) -> int:
    """Cycles of one step in isolation (without waiting for resources).

    The runtime overhead is paid once per dependent phase: by every transfer and collective,
    and by a compute step that waits on one; a compute step fed only by compute steps runs
    fused into the same kernel (elementwise chains do on a wafer)."""
    if step.phase == Phase.SETUP or (step.kind == StepKind.COMPUTE
                                     and step.op_kind in ZERO_COST_OPS):
        return 0
    region = s.region(step.region)
    overhead = t.runtime.step_overhead_cycles if _starts_phase(step, s) else 0
    if _local(step, s) and step.kind != StepKind.COMPUTE:
        return overhead  # a collective along a one-core axis moves nothing between cores
    nbytes = step.nbytes * scale
    cost = {StepKind.COMPUTE: _compute, StepKind.COLLECTIVE: _collective, StepKind.SEND: _send,
            StepKind.WAFER_SEND: _wafer, StepKind.LOAD: _offchip,
            StepKind.STORE: _offchip, StepKind.APPEND: _append,
            StepKind.CACHE_WRITE: _append}[step.kind]
    return int(math.ceil(cost(step, region, t, nbytes, step.flops * scale))) + overhead


def _starts_phase(step: Step, s: Schedule) -> bool:
    if not _local(step, s):
        return True
    deps = [s.steps[d] for d in step.deps if s.steps[d].phase != Phase.SETUP]
    return not deps or any(not _local(d, s) or d.region != step.region for d in deps)


def _phases(step: Step, s: Schedule) -> int:
    """Runtime phases a step opens: none when it runs fused into the compute before it, one,
    or a tree reduce's levels (each waits for the one below)."""
    if not _starts_phase(step, s):
        return 0
    if step.kind == StepKind.COLLECTIVE and step.op_kind == CollectiveKind.REDUCE and \
            not _local(step, s):
        return collectives.parse(step.algorithm).phases
    return 1


def _local(step: Step, s: Schedule) -> bool:
    """Work that stays inside each core: a compute step, or a collective whose axis spans one
    core (a 1 x 1 region's reduce, a relayout along a region's single row): it runs fused with
    the compute around it, like an elementwise chain."""
    if step.kind == StepKind.COMPUTE:
        return True
    if step.kind != StepKind.COLLECTIVE:
        return False
    region = s.region(step.region)
    return region.rows * region.cols == 1 or (
        step.axis is not None and _axis_size(region, step.axis) == 1)


def _axis_size(region, axis: str | None) -> int:
    """Cores along a collective's axis: rows, columns, or the whole region (`rc`: partial
    sums over both axes, reduced in the 2D form)."""
    return {"r": region.rows, "c": region.cols,
            collectives.BOTH: region.rows * region.cols}.get(axis or "", 1)


def _compute(step, region, t: Target, nbytes: float, flops: float) -> float:
    cores = region.rows * region.cols
    cycles = flops / (cores * t.core.flops(t.compute.dtype))
    hop = t.links.hop_latency_cycles
    return cycles + sum((_axis_size(region, axis) - 1) * hop for _, axis in step.fused)


def _collective(step, region, t: Target, nbytes: float, flops: float) -> float:
    m = _axis_size(region, step.axis)
    lines = region.rows * region.cols / max(m, 1)
    tile = nbytes / max(lines, 1)  # bytes each line of m cores works on
    hop, bpc = t.links.hop_latency_cycles, t.links.bytes_per_cycle
    if step.op_kind == CollectiveKind.REDUCE:
        alg = collectives.parse(step.algorithm)
        if isinstance(alg, collectives.Grid):
            return collectives.grid_cycles(alg, region.rows, region.cols, tile, t)
        return collectives.reduce_cycles(alg, m, tile, t)
    return (m - 1) * (hop + tile / max(m, 1) / bpc)


def _append(step, region, t: Target, nbytes: float, flops: float) -> float:
    """A decode step's K/V into its KV cache at position t: to the core holding t along the
    cache's split axis (at worst across it), then written there. The K/V is split over the
    region's other axis like the cache (heads or head dim), so each line along the split
    axis carries its own slice, all lines at once (like a collective's tile,
    `_collective`). A prefill's cache write (the prompt's K/V, positions 0..S-1, in the
    cache's layout) is priced alike."""
    m = _axis_size(region, step.axis)
    tile = nbytes / _append_lines(step, region)
    return (m - 1) * t.links.hop_latency_cycles + tile / t.links.bytes_per_cycle


def _append_lines(step, region) -> int:
    """Lines of cores along an append's axis that its K/V spreads over: the size of each
    other mesh axis its layout splits (1 when the K/V is whole on the line)."""
    spec = step.reads[0].spec if step.reads else ()
    axes = {e[0] for e in spec if e} - {step.axis}
    return max(1, math.prod(_axis_size(region, a) for a in axes))


def _send(step, region, t: Target, nbytes: float, flops: float) -> float:
    turn = t.links.turn_latency_cycles if len(step.route) > 2 else 0
    return step.hops * t.links.hop_latency_cycles + turn + \
        nbytes / (max(step.lanes, 1) * t.links.bytes_per_cycle)


def _wafer(step, region, t: Target, nbytes: float, flops: float) -> float:
    w = t.wafers
    return (w.link_latency_s + nbytes / w.link_bandwidth_bytes_per_s) * t.core.clock_hz


def _offchip(step, region, t: Target, nbytes: float, flops: float) -> float:
    return offchip_cycles(t, nbytes)


def offchip_cycles(t: Target, nbytes: float) -> float:
    """Cycles of one off-chip load or store of `nbytes`: the port's latency, then its
    bandwidth."""
    o = t.offchip
    return (o.latency_s + nbytes / o.bandwidth_bytes_per_s) * t.core.clock_hz


# --- list scheduling ------------------------------------------------------------------------------


def timeline(s: Schedule, t: Target, opts: PerfOptions | None = None,
             kv_reads: dict[int, int] | None = None,
             cycles: Sequence[int] | None = None) -> Timeline:
    """Start and end of every step: after its dependencies and once its region (compute and
    collectives), its links (sends sharing a row or column segment), its wafers' inter-wafer
    ports (a wafer_send holds the sender's outgoing and the receiver's incoming port) or its
    wafer's off-chip port (loads and stores) are free.

    `kv_reads` (step id -> cycles, from `streamed_kv_cycles`): an off-chip read that must end
    before the step starts. It holds the wafer's off-chip port like a load and, like a
    streamed weight load, depends on nothing else: the runtime prefetches it as soon as the
    port is free, overlapping other regions' compute. So all off-chip traffic of a wafer
    serializes on its port, and a decode step is never shorter than its off-chip bytes /
    off-chip bandwidth.

    `cycles`: every step's `step_cycles` when the caller has them (`step_durations`, the MoE
    re-timings share the unchanged steps'); the same timeline, without computing them."""
    opts = opts or PerfOptions()
    kv_reads = kv_reads or {}
    cycles = cycles if cycles is not None else step_durations(s, t, opts)
    starts, ends, why = [0] * len(s.steps), [0] * len(s.steps), [-1] * len(s.steps)
    free: dict[object, tuple[int, int]] = defaultdict(lambda: (0, -1))  # resource -> (t, step)
    for step in s.steps:
        if step.phase == Phase.SETUP:
            continue
        dur = cycles[step.id]
        ready, cause = max([(ends[d], d) for d in step.deps]) if step.deps else (0, -1)
        if step.id in kv_reads:
            ready, cause = max((ready, cause), _read(free, s, step, kv_reads[step.id]))
        held = _resources(step, s)
        for res in held:
            if free[res][0] > ready:
                ready, cause = free[res]
        starts[step.id], ends[step.id], why[step.id] = ready, ready + dur, cause
        for res in held:
            free[res] = (ends[step.id], step.id)
    makespan = max(ends, default=0)
    return Timeline(tuple(starts), tuple(ends), makespan, _critical(ends, why, makespan))


def step_durations(s: Schedule, t: Target, opts: PerfOptions | None = None,
                   base: Schedule | None = None,
                   base_cycles: Sequence[int] | None = None) -> list[int]:
    """Every step's `step_cycles` (0 for setup steps), as `timeline` computes them. With
    `base` (a schedule of the same regions and dependencies, only some steps replaced) and
    its `base_cycles`: a step that is `base`'s own object, and whose dependencies are too,
    keeps its cycles (a step's cycles read only itself, its region and its dependencies)."""
    opts = opts or PerfOptions()
    out = []
    kept = [False] * len(s.steps)  # the step is base's own object
    if base is not None and base_cycles is not None:
        kept = [a is b for a, b in zip(s.steps, base.steps, strict=True)]
    for step in s.steps:
        if kept[step.id] and all(kept[d] for d in step.deps):
            out.append(base_cycles[step.id])
        elif step.phase == Phase.SETUP:
            out.append(0)
        else:
            out.append(step_cycles(step, s, t, step_scale(step, s, opts)))
    return out


def _read(free: dict[object, tuple[int, int]], s: Schedule, step: Step,
          cycles: int) -> tuple[int, int]:
    """Book an off-chip read for `step` on its wafer's port, as early as the port is free;
    returns (end, the step that held the port before it: the critical path's way back)."""
    port = ("offchip", s.region(step.region).wafer)
    start, before = free[port]
    free[port] = (start + cycles, before)
    return start + cycles, before


def _resources(step: Step, s: Schedule) -> list[object]:
    if step.kind in REGION_KINDS:
        return [("region", step.region)]
    if step.kind in OFFCHIP_KINDS:
        return [("offchip", s.region(step.region).wafer)]
    if step.kind == StepKind.WAFER_SEND:
        return [("wafer-out", s.region(step.region).wafer),
                ("wafer-in", s.region(step.dst).wafer)]
    return _route_links(step, s.region(step.region).wafer)


def _route_links(step: Step, wafer: int) -> list[object]:
    """A send holds the row and column segments of its XY route (coarsely: per 16 cores)."""
    out: list[object] = []
    for (r0, c0), (r1, c1) in zip(step.route, step.route[1:], strict=False):
        if r0 == r1:
            out += [("h", wafer, r0 // 16, c // 16) for c in range(min(c0, c1), max(c0, c1), 16)]
        else:
            out += [("v", wafer, c0 // 16, r // 16) for r in range(min(r0, r1), max(r0, r1), 16)]
    return out


def _critical(ends: list[int], why: list[int], makespan: int) -> tuple[int, ...]:
    if not ends:
        return ()
    node = max(range(len(ends)), key=lambda i: (ends[i], -i))
    path = []
    while node >= 0:
        path.append(node)
        node = why[node]
    return tuple(reversed(path))


def streamed_kv_cycles(s: Schedule, t: Target, kv_bytes: dict[str, int]) -> dict[int, int]:
    """Off-chip reads (step id -> cycles) for regions whose KV cache streams from off-chip: the
    cache (at the schedule's context, bytes per region) is read in before the region's first
    attention step; `timeline` books each read on the wafer's off-chip port."""
    extra: dict[int, int] = {}
    streamed = {r for r, mode in s.residency if mode in ("stream_kv", "stream_all")}
    for step in s.steps:
        if step.region in streamed and step.scaling == ATTENTION and step.region in kv_bytes:
            nbytes = kv_bytes.pop(step.region)
            extra[step.id] = math.ceil(_offchip(step, None, t, nbytes, 0))
    return extra


@dataclass(frozen=True)
class LinkLoad:
    """Bytes per forward (or per decode step, scaled like the steps) over one directed link."""

    wafer: int
    src: tuple[int, int]  # (row, col)
    dst: tuple[int, int]
    nbytes: float


# The last schedule's link loads (by identity, not kept alive): a compile's summary and its
# report both ask for the decode schedule's (a giant's ~0.4 s each).
_LAST_LOADS: list[tuple[weakref.ref, PerfOptions, dict[tuple, float]]] = []


def link_loads(s: Schedule, opts: PerfOptions | None = None) -> dict[tuple, float]:
    """Per directed NoC link, the bytes every send routes over it: a send spreads its bytes
    over `lanes` parallel XY paths, so each link of its route carries bytes / lanes."""
    opts = opts or PerfOptions()
    if _LAST_LOADS and _LAST_LOADS[0][0]() is s and _LAST_LOADS[0][1] == opts:
        return dict(_LAST_LOADS[0][2])
    loads = _link_loads(s, opts)
    _LAST_LOADS[:] = [(weakref.ref(s), opts, loads)]
    return dict(loads)


def _link_loads(s: Schedule, opts: PerfOptions) -> dict[tuple, float]:
    loads: dict[tuple, float] = defaultdict(float)
    for step in s.steps:
        if step.kind != StepKind.SEND:
            continue
        share = step.nbytes * step_scale(step, s, opts) / max(step.lanes, 1)
        wafer = s.region(step.region).wafer
        for a, b in zip(step.route, step.route[1:], strict=False):
            for link in _links(a, b):
                loads[(wafer, *link)] += share
    return dict(loads)


def _links(a: tuple[int, int], b: tuple[int, int]):
    (r0, c0), (r1, c1) = a, b
    if r0 == r1:
        d = 1 if c1 > c0 else -1
        return [((r0, c), (r0, c + d)) for c in range(c0, c1, d)]
    d = 1 if r1 > r0 else -1
    return [((r, c0), (r + d, c0)) for r in range(r0, r1, d)]


def busiest_link(s: Schedule, opts: PerfOptions | None = None) -> LinkLoad | None:
    loads = link_loads(s, opts)
    if not loads:
        return None
    (wafer, src, dst), nbytes = max(loads.items(), key=lambda kv: (kv[1], kv[0]))
    return LinkLoad(wafer, src, dst, nbytes)


# --- estimates ----------------------------------------------------------------------------------


def estimate(s: Schedule, t: Target, opts: PerfOptions | None = None,
             kv_reads: dict[int, int] | None = None, tl: Timeline | None = None) -> Estimate:
    """`tl`: `timeline(s, t, opts, kv_reads)` when the caller has it already."""
    opts = opts or PerfOptions()
    tl = tl or timeline(s, t, opts, kv_reads)
    batch = opts.batch or s.batch
    context = opts.context or s.context
    flops = int(sum(st.flops * step_scale(st, s, opts) for st in s.steps
                    if st.kind == StepKind.COMPUTE))
    seconds = tl.makespan / t.core.clock_hz
    tokens = batch if opts.mode == Mode.DECODE else s.tokens
    peak = t.total_peak_flops()
    per_token = flops / max(tokens, 1)
    return Estimate(
        mode=opts.mode, batch=batch, context=context, cycles=tl.makespan, seconds=seconds,
        tokens_per_s=tokens / seconds if seconds else math.inf,
        ttft_s=seconds if opts.mode == Mode.PREFILL else None,
        utilization=flops / seconds / peak if seconds else 0.0, flops=flops,
        critical_path_steps=len(tl.critical_path),
        compute_bound_tokens_per_s=peak / per_token if per_token else math.inf,
    )


# --- where the cycles go --------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCycles:
    """Cycles of the critical path charged to one layer (region), by physics: compute (FLOPs
    at the cores' rate), hops and serialization of collectives, sends between regions or
    wafers, off-chip transfers, the runtime's per-phase overhead, and waiting for a shared
    resource (a port, a link) that no step of the path explains."""

    layer: str
    compute: int
    collective: int
    send: int
    offchip: int
    overhead: int
    wait: int

    @property
    def total(self) -> int:
        return self.compute + self.collective + self.send + self.offchip + self.overhead + \
            self.wait


_CATEGORY = {StepKind.COMPUTE: "compute", StepKind.COLLECTIVE: "collective",
             StepKind.APPEND: "collective", StepKind.CACHE_WRITE: "collective",
             StepKind.SEND: "send", StepKind.WAFER_SEND: "send",
             StepKind.LOAD: "offchip", StepKind.STORE: "offchip"}


def breakdown(s: Schedule, t: Target, tl: Timeline) -> tuple[LayerCycles, ...]:
    """The critical path's cycles per layer, in layer order; they add up to the makespan."""
    acc: dict[str, dict[str, int]] = {}
    prev_end = 0
    for i in tl.critical_path:
        step = s.steps[i]
        row = acc.setdefault(step.region, defaultdict(int))
        dur = tl.ends[i] - tl.starts[i]
        over = min(dur, _phases(step, s) * t.runtime.step_overhead_cycles) if dur else 0
        row["overhead"] += over
        row[_CATEGORY[step.kind]] += dur - over
        row["wait"] += max(0, tl.starts[i] - prev_end)
        prev_end = tl.ends[i]
    order = {r.name: k for k, r in enumerate(s.regions)}
    return tuple(LayerCycles(name, *(row[k] for k in ("compute", "collective", "send",
                                                       "offchip", "overhead", "wait")))
                 for name, row in sorted(acc.items(), key=lambda kv: order.get(kv[0], 0)))


def shares(rows: tuple[LayerCycles, ...]) -> dict[str, float]:
    """Each category's share of the critical path (the rows' totals)."""
    keys = ("compute", "collective", "send", "offchip", "overhead", "wait")
    total = sum(r.total for r in rows) or 1
    return {k: sum(getattr(r, k) for r in rows) / total for k in keys}
