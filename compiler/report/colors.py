"""Colours: a fixed hue per layer kind and per step kind, and two sequential ramps (memory
utilization on viridis, link load on a yellow-to-red ramp) sampled by value."""

from __future__ import annotations

import math

from compiler.vocab import StepKind

KIND_COLORS = {"embedding": "#2a9d8f", "block": "#4c78a8", "norm": "#e0a030",
               "head": "#b0609f", "other": "#8c8c8c"}
BLOCK_ALT = "#7aa2d0"  # odd blocks, so neighbours stay apart
STEP_COLORS = {StepKind.COMPUTE: "#4c78a8", StepKind.COLLECTIVE: "#f28e2b",
               StepKind.SEND: "#59a14f", StepKind.WAFER_SEND: "#e15759", StepKind.LOAD: "#9467bd",
               StepKind.STORE: "#8c564b",
               StepKind.APPEND: "#edc948",  # a decode step's K/V into its KV cache
               StepKind.CACHE_WRITE: "#b07aa1"}  # the prefill's K/V into its KV cache
EMPTY = "#e9ecef"  # cores nobody uses

VIRIDIS = ("#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884",
           "#44bf70", "#7ad151", "#bddf26", "#fde725")
HEAT = ("#fff3b0", "#fed976", "#feb24c", "#fd8d3c", "#f03b20", "#bd0026", "#67000d")


def kind_color(kind: str, index: int | None) -> str:
    if kind == "block" and index is not None and index % 2:
        return BLOCK_ALT
    return KIND_COLORS.get(kind, KIND_COLORS["other"])


def ramp(stops: tuple[str, ...], t: float) -> str:
    """The colour at t in [0, 1] along `stops`, linearly interpolated in RGB."""
    t = min(1.0, max(0.0, t))
    pos = t * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    a, b = _rgb(stops[i]), _rgb(stops[i + 1])
    f = pos - i
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b, strict=True))


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def log_position(value: float, top: float, decades: float = 3.0) -> float:
    """Where `value` sits on a log scale spanning `decades` below `top` (0..1)."""
    if value <= 0 or top <= 0:
        return 0.0
    return max(0.0, 1.0 + math.log10(value / top) / decades)
