"""Scatter-plot geometry in pixels: an axis scale (logarithmic when the values span a decade or
more), readable ticks, and the Pareto frontier as a staircase. Plain functions; the sweep page
(sweep.py) builds its plots with them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from compiler.report.view import Label

LOG_SPAN = 10.0  # values whose max / min reaches this get a log scale
PAD = 0.06  # share of the range left free at each end


@dataclass(frozen=True)
class Scale:
    """Maps values in [lo, hi] (log10 of them when `log`) to pixels [px0, px1]."""

    lo: float
    hi: float
    log: bool
    px0: float
    px1: float
    integer: bool = False  # ticks only at whole numbers

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        t = (v - self.lo) / (self.hi - self.lo)
        return round(self.px0 + t * (self.px1 - self.px0), 2)


def scale(values: Sequence[float], px0: float, px1: float, integer: bool = False) -> Scale:
    """A scale holding `values` with some room at both ends; log when they span a decade."""
    vs = [v for v in values if v is not None and math.isfinite(v)]
    if not vs:
        return Scale(0.0, 1.0, False, px0, px1, integer)
    lo, hi = min(vs), max(vs)
    if lo > 0 and hi / lo >= LOG_SPAN:
        a, b = math.log10(lo), math.log10(hi)
        pad = PAD * (b - a)
        return Scale(a - pad, b + pad, True, px0, px1, integer)
    pad = PAD * (hi - lo) if hi > lo else max(abs(lo) * 0.1, 0.5)
    low = max(lo - pad, 0.0) if lo >= 0 else lo - pad  # no negative costs on the axis
    return Scale(low, hi + pad, False, px0, px1, integer)


def ticks(s: Scale, label: Callable[[float], str], want: int = 5) -> tuple[tuple[float, str], ...]:
    """(px, label) at round values inside the scale: 1-2-5 steps, or powers of ten (with 2 and
    5 between them when fewer than three decades show)."""
    values = _log_ticks(s) if s.log else _linear_ticks(s, want)
    return tuple((s(v), label(v)) for v in values)


def _linear_ticks(s: Scale, want: int) -> list[float]:
    raw = (s.hi - s.lo) / want
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if s.integer:
        step = max(1, round(step))
    first = math.ceil(s.lo / step - 1e-9)
    last = math.floor(s.hi / step + 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def _log_ticks(s: Scale) -> list[float]:
    decades = range(math.floor(s.lo), math.ceil(s.hi) + 1)
    mults = (1,) if s.hi - s.lo >= 2.5 else (1, 2, 5)
    out = [m * 10.0**d for d in decades for m in mults]
    return [v for v in out if s.lo - 1e-9 <= math.log10(v) <= s.hi + 1e-9
            and (not s.integer or v >= 1)]


def staircase(points: Sequence[tuple[float, float]]) -> str:
    """SVG path data through frontier points (px): from each point across to the next one's
    x, then up (or down) to it; the region below and right of the line is dominated."""
    pts = sorted(points, key=lambda p: (p[0], -p[1]))
    if not pts:
        return ""
    x0, y0 = pts[0]
    return f"M{x0:.2f},{y0:.2f}" + "".join(f"H{x:.2f}V{y:.2f}" for x, y in pts[1:])


def dodge(xs: Sequence[float], gap: float) -> list[float]:
    """Spread marks that share an x so they do not hide each other: centred, `gap` apart."""
    out = list(xs)
    groups: dict[float, list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(round(x, 1), []).append(i)
    for members in groups.values():
        for k, i in enumerate(members):
            out[i] = round(xs[i] + gap * (k - (len(members) - 1) / 2), 2)
    return out


def crowd(xy: Sequence[tuple[float, float]], radius: float, gap: float,
          span: float) -> tuple[list[tuple[float, float, int]], list[tuple[float, float, int]]]:
    """Points closer than `radius` to the first of a group would hide each other: set each
    group side by side, `gap` apart (closer when the row would be wider than `span`) and
    centred on that first point's x; each keeps its own y. Returns every point's (x, y, size
    of its group), in order, and (x, y, size) of every group of more than one, at its first
    point."""
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(xy):
        home = next((g for g in groups if math.dist(xy[g[0]], (x, y)) < radius), None)
        if home is None:
            groups.append([i])
        else:
            home.append(i)
    out = [(x, y, 1) for x, y in xy]
    crowds = []
    for g in groups:
        if len(g) == 1:
            continue
        x0, y0 = xy[g[0]]
        step = min(gap, span / (len(g) - 1))
        for k, i in enumerate(g):
            out[i] = (round(x0 + step * (k - (len(g) - 1) / 2), 2), xy[i][1], len(g))
        crowds.append((x0, y0, len(g)))
    return out, crowds


CHAR_W, LABEL_H = 5.6, 11.0  # a label's size at the page's 10 px font, px


def place_labels(points: Sequence[tuple[float, float, str]],
                 box: tuple[float, float, float, float],
                 avoid: Sequence[tuple[float, float, float, float]] = ()) -> tuple[Label, ...]:
    """Labels for (x, y, text) points, in order of priority: above right of the point, above
    left, below right or below left, whichever stays in the box and clear of the points and of
    the labels placed before (and of the `avoid` rectangles: x0, y0, x1, y1); a label with no
    such place, or with the text of a labelled point at the same spot, is left out."""
    bx, by, bw, bh = box
    taken = [(x - 5, y - 5, x + 5, y + 5) for x, y, _ in points] + list(avoid)
    out: list[Label] = []
    done: list[tuple[float, float, str]] = []
    for x, y, text in points:
        if any(t == text and abs(x - u) < 6 and abs(y - v) < 6 for u, v, t in done):
            continue
        w = CHAR_W * len(text)
        for anchor, dy in (("start", -1), ("end", -1), ("start", 1), ("end", 1)):
            x0 = x + 6 if anchor == "start" else x - 6 - w
            y0 = y - 6 - LABEL_H if dy < 0 else y + 6
            rect = (x0, y0, x0 + w, y0 + LABEL_H)
            inside = bx <= rect[0] and rect[2] <= bx + bw and by <= rect[1] and rect[3] <= by + bh
            if inside and not any(_overlap(rect, t) for t in taken):
                taken.append(rect)
                out.append(Label(round(x + 6 if anchor == "start" else x - 6, 2),
                                 round(y0 + LABEL_H - 2, 2), text, anchor))
                done.append((x, y, text))
                break
    return tuple(out)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
