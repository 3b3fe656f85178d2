"""The schedule as a timeline per region (decode and prefill): a row per layer with its compute
and collective steps, then rows for each wafer's NoC sends, inter-wafer sends and off-chip
loads and stores. Steps closer than a pixel merge into one bar, so a long schedule draws at
most about a bar per pixel per row."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from compiler.report import colors, fmt
from compiler.report.facts import Facts
from compiler.report.tips import Tips
from compiler.report.view import Bar, Timeline, TimelineRow
from compiler.schedule.build import Step
from compiler.vocab import REGION_KINDS, TRANSFER_KINDS, Mode, Phase, StepKind

WIDTH = 1000.0  # px of the time axis
MERGE_PX = 0.75
NARROW_PX = 1.5  # narrower bars merge with their neighbours whatever their kind
TRANSFER_ROWS = ((StepKind.SEND, "NoC sends"), (StepKind.WAFER_SEND, "to other wafers"),
                 (StepKind.LOAD, "off-chip"), (StepKind.STORE, "off-chip"))
TITLES = {Mode.DECODE: "Decode: one token", Mode.PREFILL: "Prefill: the whole prompt (TTFT)"}


def timelines(f: Facts, tips: Tips, layer_tips: list[int]) -> tuple[Timeline, ...]:
    return tuple(_timeline(f, mode, tips, layer_tips) for mode in (Mode.DECODE, Mode.PREFILL)
                 if mode in f.docs.timing)


def _timeline(f: Facts, mode: str, tips: Tips, layer_tips: list[int]) -> Timeline:
    timing = f.timing(mode)
    starts, ends, span = timing["starts"], timing["ends"], max(timing["cycles"], 1)
    critical = set(timing["critical_path"])
    groups: dict[tuple, list[Step]] = defaultdict(list)
    for st in f.steps(mode):
        if st.phase != Phase.SETUP and ends[st.id] > starts[st.id]:
            groups[_row_key(st, f)].append(st)
    px = WIDTH / span
    rows = []
    for la in f.layers:
        bars = _bars(groups.get(("region", la.name), []), starts, ends, critical, px, f, tips)
        rows.append(TimelineRow(la.name, colors.kind_color(la.kind, la.block), bars,
                                layer_tips[la.index]))
    for key in sorted(k for k in groups if k[0] == "wafer"):
        _, wafer, label = key
        bars = _bars(groups[key], starts, ends, critical, px, f, tips)
        tip = tips.add(f"wafer {wafer}: {label}", [("steps", str(len(groups[key])))])
        rows.append(TimelineRow(f"w{wafer} {label}", "#adb5bd", bars, tip))
    us = span / f.clock_hz * 1e6
    note = (f"{fmt.count(span)} cycles = {fmt.seconds(span / f.clock_hz)} at "
            f"{f.clock_hz / 1e9:.3g} GHz; {len(critical)} step(s) on the critical path "
            "(outlined); setup steps (resident weights, loaded once) are not drawn")
    return Timeline(mode, TITLES.get(mode, mode), WIDTH, tuple(rows), _ticks(us), note)


def _row_key(st: Step, f: Facts) -> tuple:
    if st.kind in REGION_KINDS:
        return ("region", st.region)
    label = dict(TRANSFER_ROWS)[st.kind]
    return ("wafer", f.schedule.region(st.region).wafer, label)


def _bars(steps: list[Step], starts, ends, critical: set[int], px: float, f: Facts,
          tips: Tips) -> tuple[Bar, ...]:
    """Consecutive steps of one kind within a pixel of each other draw as one bar; so do steps
    of any kind while the bar or the step is too narrow to see (the bar takes the kind that
    holds most of its time)."""
    runs: list[list[Step]] = []
    lo = hi = 0.0
    for st in sorted(steps, key=lambda s: (starts[s.id], s.id)):
        x0, x1 = starts[st.id] * px, ends[st.id] * px
        if runs and x0 <= hi + MERGE_PX and (runs[-1][0].kind == st.kind or x1 - x0 < NARROW_PX
                                              or hi - lo < NARROW_PX):
            runs[-1].append(st)
            hi = max(hi, x1)
        else:
            runs.append([st])
            lo, hi = x0, x1
    return tuple(_bar(run, starts, ends, critical, px, f, tips) for run in runs)


def _bar(run: list[Step], starts, ends, critical: set[int], px: float, f: Facts,
         tips: Tips) -> Bar:
    t0, t1 = min(starts[s.id] for s in run), max(ends[s.id] for s in run)
    cycles: Counter[str] = Counter()
    for s in run:
        cycles[s.kind] += ends[s.id] - starts[s.id]
    kind = cycles.most_common(1)[0][0]
    crit = any(s.id in critical for s in run)
    what = Counter(s.op_kind or s.kind for s in run).most_common(5)
    rows = [("time", f"{_us(t0, f)} - {_us(t1, f)} ({fmt.count(t1 - t0)} cycles)"),
            ("steps", ", ".join(f"{k} x{n}" for k, n in what)
             + (" ..." if len(what) == 5 else "")),
            ("ids", f"#{run[0].id}" if len(run) == 1 else f"#{run[0].id} ... #{run[-1].id}")]
    if len(run) == 1:
        rows.append(("step", _describe(run[0])))
    if crit:
        rows.append(("critical path", "yes"))
    tip = tips.add(f"{kind.replace('_', ' ')} on {run[0].region}", rows)
    x = round(t0 * px, 2)
    return Bar(x, round(max(t1 * px - x, MERGE_PX), 2), kind, crit, tip)


def _describe(st: Step) -> str:
    if st.kind in TRANSFER_KINDS:
        return f"#{st.id} -> {st.dst}, {fmt.nbytes(st.nbytes)}"
    name = st.op or (st.reads[0].tensor if st.reads else st.writes[0].tensor if st.writes else "")
    return f"#{st.id} {st.op_kind or st.kind} {name}"


def _us(cycles: int, f: Facts) -> str:
    return fmt.seconds(cycles / f.clock_hz)


def _ticks(total_us: float) -> tuple[tuple[float, str], ...]:
    if total_us <= 0:
        return ((0.0, "0"),)
    step = _nice(total_us / 8)
    n = int(total_us // step)
    return tuple((round(i * step / total_us * WIDTH, 2), fmt.seconds(i * step * 1e-6) if i else "0")
                 for i in range(n + 1))


def _nice(x: float) -> float:
    exp = 10 ** math.floor(math.log10(x))
    return next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= x)
