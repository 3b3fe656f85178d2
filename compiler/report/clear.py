"""Labels clear of arrows on a wafer panel: a layer's label moves inside its rectangle, and the
band's "off-chip" along the band, to the first place no arrow (line or head) crosses, nearest
the middle first; where every place is crossed, the least crossed one. All in core units."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from compiler.report.view import Arrow, LayerBox

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1
CHAR_EM = 0.6  # a character's width per font size
STEPS = (0.0, -1 / 3, 1 / 3, -2 / 3, 2 / 3, -1.0, 1.0)  # offsets from the middle, by preference
BAND_TEXT, BAND_PX, BAND_PAD_PX = "off-chip", 10.0, 4.0


def obstacles(arrows: Sequence[Arrow], scale: float) -> list[Rect]:
    """Every arrow's line segments (widened by half its stroke and a pixel) and head."""
    out: list[Rect] = []
    for a in arrows:
        half = (a.width / 2 + 1) / scale
        for (x0, y0), (x1, y1) in zip(a.points, a.points[1:], strict=False):
            out.append((min(x0, x1) - half, min(y0, y1) - half,
                        max(x0, x1) + half, max(y0, y1) + half))
        xs, ys = [x for x, _ in a.head], [y for _, y in a.head]
        out.append((min(xs), min(ys), max(xs), max(ys)))
    return out


def place(boxes: Sequence[LayerBox], arrows: Sequence[Arrow],
          scale: float) -> tuple[LayerBox, ...]:
    """The boxes with each label's middle (label_x, label_y) clear of the arrows."""
    rects = obstacles(arrows, scale)
    return tuple(_placed(b, rects) if b.label else b for b in boxes)


def _placed(b: LayerBox, rects: Sequence[Rect]) -> LayerBox:
    along = CHAR_EM * len(b.label) * b.label_size
    w, h = (b.label_size, along) if b.vertical else (along, b.label_size)
    cx, cy = b.col + b.cols / 2, b.row + b.rows / 2
    mine = [r for r in rects if _overlap(r, (b.col, b.row, b.col + b.cols, b.row + b.rows))]
    spare_x, spare_y = max(0.0, (b.cols - w) / 2), max(0.0, (b.rows - h) / 2)
    spots = sorted(((cx + i * spare_x, cy + j * spare_y) for i in STEPS for j in STEPS),
                   key=lambda p: (abs(p[0] - cx) / (b.cols or 1)) + abs(p[1] - cy) / (b.rows or 1))
    x, y = _least_crossed(spots, w, h, mine)
    return dataclasses.replace(b, label_x=round(x, 3), label_y=round(y, 3))


def _least_crossed(spots: list[tuple[float, float]], w: float, h: float,
                   rects: Sequence[Rect]) -> tuple[float, float]:
    """The first spot whose w x h label the rectangles cross least (`_crossed` at every spot
    at once: the same sums, added in the same order)."""
    xy = np.array(spots)
    x0, y0 = xy[:, 0] - w / 2, xy[:, 1] - h / 2
    x1, y1 = xy[:, 0] + w / 2, xy[:, 1] + h / 2
    crossed = np.zeros(len(spots))
    for r in rects:
        crossed = crossed + (np.maximum(0.0, np.minimum(x1, r[2]) - np.maximum(x0, r[0]))
                             * np.maximum(0.0, np.minimum(y1, r[3]) - np.maximum(y0, r[1])))
    return spots[int(np.argmin(crossed))]


def band_x(col: int, cols: int, offchip: Sequence[Arrow], scale: float) -> float:
    """Where the band's "off-chip" starts: the leftmost place along the band that no off-chip
    arrow crosses (the left end when every place is crossed)."""
    w = (CHAR_EM * len(BAND_TEXT) * BAND_PX + 2 * BAND_PAD_PX) / scale
    rects = [(r[0], 0.0, r[2], 1.0) for r in obstacles(offchip, scale)]
    lo, hi = col, max(col, col + cols - w)
    starts = sorted({lo, hi, *(r[2] for r in rects if lo < r[2] < hi)})
    free = [x for x in starts if _crossed((x, 0.0, x + w, 1.0), rects) == 0]
    return round((free[0] if free else lo) + BAND_PAD_PX / scale, 3)


def _crossed(rect: Rect, rects: Sequence[Rect]) -> float:
    """The area of `rect` the others cover (counted once per other)."""
    return sum(max(0.0, min(rect[2], r[2]) - max(rect[0], r[0])) *
               max(0.0, min(rect[3], r[3]) - max(rect[1], r[1])) for r in rects)


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
