"""Speculative decoding as an explicit compile option (`--speculative draft=MODEL,accept=A[,k=K]`).

A small draft model runs beside the target on the same wafers, in one of two places, and the
compile keeps the faster round:

- *reserved*: the draft is compiled first on full-height strips of one wafer, narrowest first
  from the cores its smallest resident rectangles need (`strip_widths`), until it is resident
  (nothing streamed: `resident`); the target's placement problem then gets one more block, that
  strip, last in the chain (`with_reserve`: the placer keeps it free on the last wafer, beside
  the head, like any other rectangle), and the draft sits where the placer put it
  (`split_reserve`);
- *idle*: the target placed alone, the draft on the largest rectangle of idle cores
  (`largest_idle`), resident or not (what fits there).

Either way the area becomes a one-wafer sub-target the draft is compiled and placed on, and its
rectangles are shifted back into the target's coordinates. A round is
k draft decode steps, then one target verification step over the k + 1 tokens (the k proposals
and the current token): a decode step with k + 1 query tokens, priced as such (`verify_cycles`:
token-proportional work and transfers x (k + 1), attention over the cache x (k + 1) rows,
resident weights and streamed weight and KV-cache reads once). With each proposal accepted
with probability a (independently), a round yields (1 - a^(k+1)) / (1 - a) tokens on average
(k + 1 at a = 1); decode tokens/s is that over the round's time. The draft and the target run
one after the other; the draft's k tokens reach the target as token ids (not priced beyond
each schedule's own token I/O).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from compiler.errors import UsageError
from compiler.placement.problem import Block, Option, Placement, PlacementProblem, Rect, Residency
from compiler.schedule.build import with_algorithms
from compiler.schedule.perf import PerfOptions, estimate, step_scale, streamed_kv_cycles
from compiler.vocab import CollectiveKind, Mode, StepKind

if TYPE_CHECKING:
    from compiler.result import CompileResult
    from compiler.schedule.build import Schedule
    from compiler.target import Target

DEFAULT_K = 4
# The reservation: its block's name in the target's placement problem, the strip widths tried
# for the draft (each STRIP_GROWTH wider than the last, at most STRIP_TRIES), and the share of
# the strip its smallest resident rectangles may fill at first (as tiling's RESIDENT_FILL).
RESERVE = "speculative-draft"
RESERVED, IDLE = "reserved", "idle"  # Speculative.placement
STRIP_TRIES, STRIP_GROWTH, STRIP_FILL = 6, 1.06, 0.97
_SYNTAX = "--speculative takes draft=MODEL,accept=A[,k=K] (e.g. draft=llama3.2-1b,accept=0.8)"


@dataclass(frozen=True)
class SpeculativeOptions:
    draft: str  # a zoo name or an ONNX file
    accept: float  # probability that the target accepts one draft token, in (0, 1]
    k: int = DEFAULT_K  # draft tokens proposed per round

    def __post_init__(self) -> None:
        if not 0.0 < self.accept <= 1.0 or math.isnan(self.accept):
            raise UsageError(f"--speculative accept={self.accept} is outside (0, 1]: give the "
                             "probability that the target accepts a draft token, e.g. 0.8")
        if self.k < 1:
            raise UsageError(f"--speculative k={self.k} must be at least 1 (draft tokens per "
                             "round, default 4)")


def parse_speculative(text: str) -> SpeculativeOptions:
    """`draft=MODEL,accept=A[,k=K]` -> options; UsageError (exit 2) naming what is wrong."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not value.strip() or key not in ("draft", "accept", "k") or key in fields:
            raise UsageError(f"bad --speculative item {part!r}: {_SYNTAX}")
        fields[key] = value.strip()
    if "draft" not in fields or "accept" not in fields:
        raise UsageError(f"--speculative needs draft= and accept=: {_SYNTAX}")
    try:
        accept = float(fields["accept"])
    except ValueError:
        raise UsageError(f"--speculative accept={fields['accept']!r} is not a number in "
                         "(0, 1]") from None
    try:
        k = int(fields.get("k", str(DEFAULT_K)))
    except ValueError:
        raise UsageError(f"--speculative k={fields['k']!r} is not a whole number >= 1") from None
    return SpeculativeOptions(fields["draft"], accept, k)


def expected_tokens(accept: float, k: int) -> float:
    """Expected tokens a round yields: accepted draft tokens plus the target's own one,
    sum_{i=0..k} a^i = (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023, eq. 1)."""
    if accept >= 1.0:
        return float(k + 1)
    return (1.0 - accept ** (k + 1)) / (1.0 - accept)


def speculative_tokens_per_s(draft_cycles: int, verify_cycles: int, accept: float, k: int,
                             clock_hz: float) -> float:
    """Decode tokens/s of one sequence: a round's expected tokens over its time (k draft
    decode steps, then the target's verification step over k + 1 tokens)."""
    seconds = (k * draft_cycles + verify_cycles) / clock_hz
    return expected_tokens(accept, k) / seconds if seconds else math.inf


def verify_cycles(result: CompileResult, queries: int) -> int:
    """Cycles of the target's decode step over `queries` tokens of one sequence, on the same
    decode schedule the compile's tokens/s comes from (the prefill schedule scaled to the
    step when there is none), its reduces re-chosen for their `queries`-token tiles
    (`verify_schedule`). queries = 1 is the compile's own decode step."""
    t = result.target
    if result.decode is not None:
        opts = PerfOptions(Mode.DECODE, context=result.decode.graph.context, queries=queries)
        return estimate(verify_schedule(result.decode.schedule, t, opts), t, opts).cycles
    kv = {lt.layer: lt.kv_bytes for lt in result.tiled.layers if lt.kv_bytes}
    opts = PerfOptions(Mode.DECODE, queries=queries)
    s = verify_schedule(result.schedule, t, opts)
    return estimate(s, t, opts, streamed_kv_cycles(s, t, kv)).cycles


def verify_schedule(s: Schedule, target: Target, opts: PerfOptions) -> Schedule:
    """The decode schedule as a verification step over opts.queries tokens runs it: each
    reduce with the collective algorithm cheapest for the tile it then carries (queries times
    the one-token tile: a longer tile favours fewer stages, a deeper tree), as the compile
    chose them for one token (`schedule.build.with_algorithms`). The schedule itself when
    queries is 1."""
    if opts.queries == 1:
        return s
    regions = {r.name: r for r in s.regions}
    steps = []
    for step in s.steps:
        if step.kind == StepKind.COLLECTIVE and step.op_kind == CollectiveKind.REDUCE:
            sized = dataclasses.replace(step, nbytes=step.nbytes * step_scale(step, s, opts))
            step = dataclasses.replace(
                step, algorithm=with_algorithms([sized], regions, target)[0].algorithm)
        steps.append(step)
    return dataclasses.replace(s, steps=tuple(steps))


def largest_idle(rows: int, cols: int, wafers: int, rects: tuple[Rect, ...]) -> Rect | None:
    """The largest rectangle (by cores) that no rect covers, on any wafer (first wafer on a
    tie); None when every core is covered. Exact: cells between the rects' edges are wholly
    covered or wholly idle, and the largest idle rectangle of that compressed grid is found
    with per-row histograms."""
    best: tuple[int, Rect] | None = None
    for w in range(wafers):
        mine = [r for r in rects if r.wafer == w]
        found = _largest_on_wafer(rows, cols, w, mine)
        if found is not None and (best is None or found.rows * found.cols > best[0]):
            best = (found.rows * found.cols, found)
    return None if best is None else best[1]


def _largest_on_wafer(rows: int, cols: int, wafer: int, rects: list[Rect]) -> Rect | None:
    rs = sorted({0, rows, *(r.row for r in rects), *(r.row + r.rows for r in rects)})
    cs = sorted({0, cols, *(r.col for r in rects), *(r.col + r.cols for r in rects)})
    used = np.zeros((len(rs) - 1, len(cs) - 1), dtype=bool)
    for r in rects:
        used[rs.index(r.row):rs.index(r.row + r.rows), cs.index(r.col):cs.index(r.col + r.cols)] \
            = True
    heights = [0] * (len(cs) - 1)  # idle rows ending at the current compressed row, per column
    best: tuple[int, Rect] | None = None
    for i in range(len(rs) - 1):
        heights = [0 if used[i, j] else h + rs[i + 1] - rs[i] for j, h in enumerate(heights)]
        for area, top_rows, c0, c1 in _histogram(heights, cs):
            if area and (best is None or area > best[0]):
                best = (area, Rect(wafer, rs[i + 1] - top_rows, cs[c0], top_rows,
                                   cs[c1] - cs[c0]))
    return None if best is None else best[1]


def _histogram(heights: list[int], cs: list[int]):
    """Maximal rectangles under a histogram of columns with widths cs[j+1] - cs[j]: yields
    (area, height, first column, one past the last column)."""
    stack: list[tuple[int, int]] = []  # (start column, height)
    for j, h in enumerate([*heights, 0]):
        start = j
        while stack and stack[-1][1] >= h:
            start, top = stack.pop()
            yield top * (cs[j] - cs[start]), top, start, j
        stack.append((start, h))


def sub_target(target: Target, area: Rect) -> Target:
    """The target cut to one idle rectangle: a one-wafer grid of area.rows x area.cols."""
    return dataclasses.replace(
        target, name=f"{target.name}.idle-{area.rows}x{area.cols}-w{area.wafer}",
        grid=dataclasses.replace(target.grid, rows=area.rows, cols=area.cols),
        wafers=dataclasses.replace(target.wafers, count=1))


def shifted(rects: tuple[Rect, ...], area: Rect) -> tuple[Rect, ...]:
    """A sub-target's rectangles in the full target's coordinates."""
    return tuple(Rect(area.wafer, r.row + area.row, r.col + area.col, r.rows, r.cols)
                 for r in rects)


def strip_widths(min_cores: int, rows: int, cols: int) -> tuple[int, ...]:
    """Columns of the full-height strips the draft is tried on, narrowest first: from the
    width its smallest resident rectangles (`min_cores` in all) fill to STRIP_FILL, each
    STRIP_GROWTH wider, at most STRIP_TRIES, never wider than the wafer."""
    width = max(1, math.ceil(min_cores / STRIP_FILL / rows))
    out: list[int] = []
    while len(out) < STRIP_TRIES and width <= cols:
        out.append(width)
        width = max(width + 1, math.ceil(width * STRIP_GROWTH))
    return tuple(out)


def price(target: CompileResult, draft: CompileResult, spec: SpeculativeOptions, area: Rect,
          placement: str) -> Speculative:
    """A round of `spec` with `draft` compiled on `area` (a sub-target) beside `target`."""
    k, step = spec.k, target.estimates[Mode.DECODE]
    draft_cycles = draft.estimates[Mode.DECODE].cycles
    verify = verify_cycles(target, k + 1)
    rate = speculative_tokens_per_s(draft_cycles, verify, spec.accept, k,
                                    target.target.core.clock_hz)
    return Speculative(draft.graph.name, str(spec.draft), spec.accept, k, area,
                       shifted(draft.placement.rects, area), draft_cycles, verify, step.cycles,
                       expected_tokens(spec.accept, k), rate, step.tokens_per_s, draft,
                       placement, resident(draft))


def resident(result: CompileResult) -> bool:
    """A compile streams nothing from off-chip but its token I/O: every layer resident."""
    return result.metrics.offchip_bytes_per_token <= result.problem.io_bytes_per_token


def with_reserve(problem: PlacementProblem, rows: int, cols: int) -> PlacementProblem:
    """The target's placement problem with a rows x cols rectangle kept free for the draft: one
    more block (RESERVE), last in the chain, so the placer puts it on the last wafer beside the
    head; it has no edges, holds no bytes, streams nothing and costs no cycles."""
    block = Block(RESERVE, RESERVE, (Option(rows, cols, Residency.RESIDENT, 0, 0, 0),))
    return dataclasses.replace(problem, blocks=(*problem.blocks, block))


def split_reserve(placement: Placement) -> tuple[Placement, Rect]:
    """A placement of `with_reserve`'s problem -> the target's own placement and the reserved
    rectangle."""
    return dataclasses.replace(placement, options=placement.options[:-1],
                               rects=placement.rects[:-1]), placement.rects[-1]


@dataclass(frozen=True)
class Speculative:
    """What `--speculative` adds to a compile: where the draft sits, the two step prices and the
    resulting decode rate."""

    draft: str  # the draft's model name
    draft_source: str
    accept: float
    k: int
    area: Rect  # the idle rectangle the draft was compiled on
    draft_rects: tuple[Rect, ...]  # its blocks, in the target's coordinates
    draft_cycles: int  # one draft decode step
    verify_cycles: int  # the target's decode step over k + 1 tokens
    target_cycles: int  # the target's decode step over one token (the plain rate's)
    expected_tokens: float  # per round
    tokens_per_s: float
    plain_tokens_per_s: float  # the target compiled alone (no draft, no reserved strip)
    draft_result: CompileResult | None = field(default=None, compare=False, repr=False)
    # RESERVED: the target placed beside a strip kept for the draft; IDLE: the target placed
    # alone, the draft on its largest idle rectangle
    placement: str = IDLE
    draft_resident: bool = False  # the draft streams nothing but its token I/O
    fallback: str = ""  # why the draft is not on a reserved strip (placement IDLE), if tried

    @property
    def draft_cores(self) -> int:
        return sum(r.rows * r.cols for r in self.draft_rects)

    def doc(self) -> dict[str, object]:
        """placement.json / schedule.json / the summary: `speculative`."""
        a = self.area
        return {
            "draft": self.draft, "draft_source": self.draft_source, "accept": self.accept,
            "k": self.k,
            "idle_area": {"wafer": a.wafer, "row": a.row, "col": a.col, "rows": a.rows,
                          "cols": a.cols},
            "draft_cores": self.draft_cores,
            "draft_rects": [[r.wafer, r.row, r.col, r.rows, r.cols] for r in self.draft_rects],
            "draft_step_cycles": self.draft_cycles,
            "verify_step_cycles": self.verify_cycles,
            "target_step_cycles": self.target_cycles,
            "expected_tokens_per_round": round(self.expected_tokens, 6),
            "tokens_per_s": round(self.tokens_per_s, 6),
            "plain_tokens_per_s": round(self.plain_tokens_per_s, 6),
            "placement": self.placement, "draft_resident": self.draft_resident,
            "fallback": self.fallback,
        }
