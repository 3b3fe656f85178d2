"""The numbers behind the report, derived from OUT's documents: per layer (placement, memory,
time per mode), per transfer (sends aggregated per pair of regions, with decode bytes), per
NoC link (perf.link_loads, the same model the compile summary's busiest link comes from) and the
off-chip I/O per token. Everything per decode token comes from the decode schedule when OUT has
one (a causal LM), else from the prefill schedule scaled to one token. Pictures (build.py) and
CSV files (numbers.py) both read these."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from compiler.outdir.read import OutDir
from compiler.schedule.build import Schedule
from compiler.schedule.perf import PerfOptions, link_loads, step_scale
from compiler.vocab import OFFCHIP_KINDS, REGION_KINDS, TRANSFER_KINDS, Mode, Phase, StepKind

MODES = tuple(Mode)


@dataclass(frozen=True)
class LayerFacts:
    index: int
    name: str
    kind: str
    block: int | None
    wafer: int
    row: int
    col: int
    rows: int
    cols: int
    residency: str
    per_core: dict[str, int]  # weights, kv_cache, activations, total (the fullest core)
    util: float  # per_core total / usable bytes per core
    weight_bytes: int
    kv_bytes: int
    flops_per_token: int
    offchip_streamed: int  # weights / KV streamed per token (the placer's figure)
    io_in: float  # per token: graph inputs loaded here
    io_out: float  # per token: graph outputs stored from here
    est_cycles: int  # the placer's estimate per token
    busy: dict[str, int]  # per mode: cycles of its compute and collectives
    span: dict[str, tuple[int, int]]  # per mode: first start, last end (0, 0 if none)
    nodes: tuple[str, ...]
    ops: tuple[tuple[str, int], ...]  # op kind histogram, most common first

    @property
    def cores(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class Transfer:
    src: str
    dst: str
    src_wafer: int
    dst_wafer: int
    kind: str  # send | wafer_send
    bytes_per_token: float
    sends: int
    hops: int
    lanes: int
    route: tuple[tuple[int, int], ...]  # (row, col) waypoints


@dataclass(frozen=True)
class Facts:
    docs: OutDir
    schedule: Schedule
    rows: int
    cols: int
    wafers: int
    capacity: int
    clock_hz: float
    layers: tuple[LayerFacts, ...]
    transfers: tuple[Transfer, ...]
    links: dict[tuple, float]  # (wafer, (r, c), (r', c')) -> bytes per token

    def timing(self, mode: str) -> dict[str, Any]:
        return mode_timing(self.docs, mode)

    @cached_property
    def links_by_wafer(self) -> dict[int, list[tuple[tuple, tuple, float]]]:
        """wafer -> [(src core, dst core, bytes per token)]: each wafer's panels read only
        its own links (a 16-wafer giant has ~10^5 links)."""
        out: dict[int, list[tuple[tuple, tuple, float]]] = defaultdict(list)
        for (w, a, b), load in self.links.items():
            out[w].append((a, b, load))
        return dict(out)

    @cached_property
    def bins_memo(self) -> dict[tuple, dict[tuple[int, int], list]]:
        """grid.link_bins by (wafer, window): the panels and cells.csv bin the same links."""
        return {}

    def steps(self, mode: str):
        """The steps a mode's timing indexes: the decode schedule's when there is one."""
        return mode_schedule(self.docs, mode).steps


def mode_timing(docs: OutDir, mode: str) -> dict[str, Any]:
    """A mode's timeline: decode's from the decode schedule when OUT has one."""
    if mode == Mode.DECODE and docs.decode_timing is not None:
        return docs.decode_timing
    return docs.timing[mode]


def mode_schedule(docs: OutDir, mode: str) -> Schedule:
    return docs.decode if mode == Mode.DECODE and docs.decode is not None else docs.schedule


def gather(docs: OutDir) -> Facts:
    p, schedule = docs.placement, docs.schedule
    rows, cols = p["target"]["grid"]
    decode = PerfOptions(Mode.DECODE)
    step = mode_schedule(docs, Mode.DECODE)  # per token: the decode schedule's, when OUT has one
    io = _io_per_token(step, decode)
    busy = {m: _busy(mode_schedule(docs, m), mode_timing(docs, m))
            for m in MODES if m in docs.timing}
    cap = p["target"]["usable_bytes_per_core"]
    layers = tuple(_layer(i, doc, cap, io, busy) for i, doc in enumerate(p["layers"]))
    per_token = max(step.batch, 1)
    links = {k: v / per_token for k, v in link_loads(step, decode).items()}
    return Facts(docs, schedule, rows, cols, p["target"]["wafers"], cap,
                 docs.clock_hz, layers, _transfers(step, decode), links)


def _layer(i: int, doc: dict[str, Any], cap: int, io, busy) -> LayerFacts:
    r = doc["rect"]
    name = doc["name"]
    per_core = dict(doc["per_core_bytes"])
    ops = Counter(lay["kind"] for lay in doc.get("layouts", ()))
    return LayerFacts(
        index=i, name=name, kind=doc["kind"], block=doc.get("index"), wafer=r["wafer"],
        row=r["row"], col=r["col"], rows=r["rows"], cols=r["cols"],
        residency=doc["residency"], per_core=per_core, util=per_core["total"] / max(cap, 1),
        weight_bytes=doc["weight_bytes"], kv_bytes=doc["kv_bytes"],
        flops_per_token=doc["flops_per_token"],
        offchip_streamed=doc["offchip_bytes_per_token"],
        io_in=io[0].get(name, 0.0), io_out=io[1].get(name, 0.0),
        est_cycles=doc["cycles_per_token"],
        busy={m: b[0].get(name, 0) for m, b in busy.items()},
        span={m: b[1].get(name, (0, 0)) for m, b in busy.items()},
        nodes=tuple(doc["onnx_nodes"]),
        ops=tuple(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))))


def _io_per_token(s: Schedule, opts: PerfOptions) -> tuple[dict[str, float], dict[str, float]]:
    """Per region, off-chip bytes per decode token of token-phase loads and of stores."""
    loads: dict[str, float] = defaultdict(float)
    stores: dict[str, float] = defaultdict(float)
    for st in s.steps:
        if st.phase == Phase.SETUP or st.kind not in OFFCHIP_KINDS:
            continue
        per_token = st.nbytes * step_scale(st, s, opts) / max(opts.batch or s.batch, 1)
        (loads if st.kind == StepKind.LOAD else stores)[st.region] += per_token
    return dict(loads), dict(stores)


def _busy(s: Schedule, timing: dict[str, Any]):
    """Per region: cycles busy with its own steps, and (first start, last end)."""
    starts, ends = timing["starts"], timing["ends"]
    busy: dict[str, int] = defaultdict(int)
    span: dict[str, tuple[int, int]] = {}
    for st in s.steps:
        if st.phase == Phase.SETUP or st.kind not in REGION_KINDS:
            continue
        a, b = starts[st.id], ends[st.id]
        busy[st.region] += b - a
        lo, hi = span.get(st.region, (a, b))
        span[st.region] = (min(lo, a), max(hi, b))
    return dict(busy), span


def _transfers(s: Schedule, opts: PerfOptions) -> tuple[Transfer, ...]:
    """Sends and wafer sends per (source, destination) region, bytes per decode token."""
    acc: dict[tuple[str, str], list] = {}
    per_step = max(opts.batch or s.batch, 1)
    for st in s.steps:
        if st.kind not in TRANSFER_KINDS:
            continue
        nbytes = st.nbytes * step_scale(st, s, opts) / per_step
        entry = acc.setdefault((st.region, st.dst), [st, 0.0, 0])
        entry[1] += nbytes
        entry[2] += 1
    out = []
    for (src, dst), (st, nbytes, count) in acc.items():
        sw, dw = s.region(src).wafer, s.region(dst).wafer
        out.append(Transfer(src, dst, sw, dw, st.kind, nbytes, count, st.hops, st.lanes,
                            st.route))
    return tuple(out)
