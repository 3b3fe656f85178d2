"""Wafer pictures: one panel per wafer with the layers' rectangles (coloured by kind, labelled
where the label fits), their memory utilization, the NoC link load binned into at most
MAX_BINS x MAX_BINS heat cells, the transfers as arrows along their XY routes and the off-chip
streams. Only regions, aggregated cells and arrows are drawn, never one element per core, so a
900,000-core wafer costs as little as an 8 x 8 mesh."""

from __future__ import annotations

import math
from collections import defaultdict

from compiler.report import clear, colors, fmt
from compiler.report.facts import Facts, LayerFacts, Transfer
from compiler.report.tips import Tips
from compiler.report.view import Arrow, Cell, LayerBox, WaferPanel, Window
from compiler.vocab import StepKind

MAX_BINS = 100  # heat cells per side at most
PANEL_H = 540.0  # px: the tallest a wafer is drawn
SINGLE_W = 410.0  # px: one wafer, so layers, memory and links fit side by side
ROW_W = 1300.0  # px: several wafers side by side in one figure
PER_ROW = 6  # wafers per row of panels at most
ZOOM_BELOW = 0.4  # zoom to the used part when it covers less of the wafer than this
OFFCHIP_BAND = 22.0  # px above the wafer where off-chip streams start
AXIS_LEFT, AXIS_BOTTOM = 30.0, 14.0  # px for row and column numbers
LABEL_MIN, LABEL_MAX = 7.0, 13.0  # px
MIN_PX = 4.0  # a layer is drawn at least this wide and high


def panels(f: Facts, tips: Tips, layer_tips: list[int],
           fills: dict[int, str] | None = None) -> tuple[WaferPanel, ...]:
    """`fills`: layer index -> a fill other than its kind's (expert regions by load)."""
    fills = fills or {}
    windows = [window(f, w) for w in range(f.wafers)]
    per_row = min(f.wafers, PER_ROW)
    budget = SINGLE_W if f.wafers == 1 else (ROW_W - 14 * (per_row - 1)) / per_row
    scale = min(min((budget - AXIS_LEFT) / w.cols, PANEL_H / w.rows) for w in windows)
    sends = [t for t in f.transfers if t.kind == StepKind.SEND]
    top_send = max((t.bytes_per_token for t in sends), default=0.0)
    top_link = max(f.links.values(), default=0.0)
    streams = [max(la.io_in + la.offchip_streamed, la.io_out) for la in f.layers]
    top_stream = max(streams, default=0.0)
    out = []
    for w, win in enumerate(windows):
        mine = [la for la in f.layers if la.wafer == w]
        cells = _link_cells(f, w, win, top_link, tips)  # tips in this order: cells, arrows
        arrows = tuple(_arrow(t, top_send, scale, tips) for t in sends if t.src_wafer == w)
        offchip = _offchip(mine, win, scale, top_stream, tips)
        boxes = [_box(la, scale, layer_tips[la.index], fills.get(la.index)) for la in mine]
        out.append(WaferPanel(
            index=w, rows=f.rows, cols=f.cols, window=win, scale=_r(scale),
            width=_r(win.cols * scale + AXIS_LEFT),
            height=_r(win.rows * scale + OFFCHIP_BAND + AXIS_BOTTOM),
            layers=clear.place(boxes, arrows + offchip, scale),
            link_cells=cells,
            arrows=arrows, offchip=offchip,
            grid_lines=win.rows <= 64 and win.cols <= 64,
            caption=_caption(f, w, win, mine),
            view_box=(_r(win.col - AXIS_LEFT / scale), _r(win.row - OFFCHIP_BAND / scale),
                      _r(win.cols + AXIS_LEFT / scale),
                      _r(win.rows + (OFFCHIP_BAND + AXIS_BOTTOM) / scale)),
            row_ticks=_ticks(win.row, win.rows), col_ticks=_ticks(win.col, win.cols),
            band=_r(OFFCHIP_BAND / scale),
            band_label_x=clear.band_x(win.col, win.cols, offchip, scale)))
    return tuple(out)


def _ticks(start: int, size: int) -> tuple[tuple[float, str], ...]:
    """About five round core indices across [start, start + size), at core centres."""
    step = next(m * 10**e for e in range(8) for m in (1, 2, 5) if m * 10**e * 5 >= size)
    first = -(-start // step) * step
    return tuple((_r(i + 0.5), str(i)) for i in range(first, start + size, step))


def window(f: Facts, wafer: int) -> Window:
    """The used part of a wafer (padded) when it is small on a large grid, else all of it."""
    mine = [la for la in f.layers if la.wafer == wafer]
    if not mine or f.rows * f.cols <= 64 * 64:
        return Window(0, 0, f.rows, f.cols, False)
    r0, c0 = min(la.row for la in mine), min(la.col for la in mine)
    r1 = max(la.row + la.rows for la in mine)
    c1 = max(la.col + la.cols for la in mine)
    if (r1 - r0) * (c1 - c0) >= ZOOM_BELOW * f.rows * f.cols:
        return Window(0, 0, f.rows, f.cols, False)
    pad = max(2, round(0.05 * max(r1 - r0, c1 - c0)))
    rows = _span(r0 - pad, r1 + pad, 0.5 * (c1 - c0 + 2 * pad), f.rows)
    cols = _span(c0 - pad, c1 + pad, 0.5 * (r1 - r0 + 2 * pad), f.cols)
    return Window(rows[0], cols[0], rows[1] - rows[0], cols[1] - cols[0], True)


def _span(lo: int, hi: int, at_least: float, size: int) -> tuple[int, int]:
    """[lo, hi) grown to at least `at_least` (so a window is never a sliver), inside the grid."""
    grow = max(0, math.ceil(at_least) - (hi - lo))
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > size:
        lo, hi = max(0, lo - (hi - size)), size
    return lo, hi


def _box(la: LayerFacts, scale: float, tip: int, fill: str | None = None) -> LayerBox:
    label, size, vertical = _label(la.name, la.cols * scale, la.rows * scale)
    return LayerBox(
        index=la.index, name=la.name, kind=la.kind, wafer=la.wafer, row=la.row, col=la.col,
        rows=la.rows, cols=la.cols, fill=fill or colors.kind_color(la.kind, la.block),
        mem_fill=colors.ramp(colors.VIRIDIS, la.util), mark=_mark(la, scale), label=label,
        label_size=_r(size / scale), vertical=vertical, streamed=la.residency != "resident",
        tip=tip, label_x=_r(la.col + la.cols / 2), label_y=_r(la.row + la.rows / 2))


def _mark(la: LayerFacts, scale: float) -> tuple[float, float, float, float]:
    """The rectangle as drawn: a layer smaller than MIN_PX on screen grows about its centre so
    that it stays visible (and hoverable); its numbers stay exact."""
    w, h = max(la.cols, MIN_PX / scale), max(la.rows, MIN_PX / scale)
    x, y = la.col + (la.cols - w) / 2, la.row + (la.rows - h) / 2
    return _r(x), _r(y), _r(w), _r(h)


def _label(name: str, w_px: float, h_px: float) -> tuple[str, float, bool]:
    """The label's text, size in px and orientation: across if it fits, else along a tall
    rectangle, else none."""
    for text in (name, name.replace("block.", "")):
        across = min(LABEL_MAX, 0.7 * h_px, 0.95 * w_px / (0.6 * len(text)))
        along = min(LABEL_MAX, 0.7 * w_px, 0.95 * h_px / (0.6 * len(text)))
        if across >= LABEL_MIN or along >= LABEL_MIN:
            return (text, across, False) if across >= along else (text, along, True)
    return "", 0.0, False


def bin_size(win: Window) -> tuple[int, int]:
    """Rows and columns of cores per heat cell: at most MAX_BINS cells per side."""
    return math.ceil(win.rows / MAX_BINS), math.ceil(win.cols / MAX_BINS)


def link_bins(f: Facts, wafer: int, win: Window) -> dict[tuple[int, int], list]:
    """Per heat cell (i, j) of the window: [busiest link's bytes, all links' bytes, loaded
    links, the busiest link (src, dst)]; a link belongs to the cell of its source core.
    Binned once per wafer and window (f.bins_memo); read-only."""
    key = (wafer, win)
    if key not in f.bins_memo:
        f.bins_memo[key] = _link_bins(f, wafer, win)
    return f.bins_memo[key]


def _link_bins(f: Facts, wafer: int, win: Window) -> dict[tuple[int, int], list]:
    bh, bw = bin_size(win)
    cells: dict[tuple[int, int], list] = defaultdict(lambda: [0.0, 0.0, 0, None])
    for a, b, load in f.links_by_wafer.get(wafer, ()):
        r, c = a
        if not (0 <= r - win.row < win.rows and 0 <= c - win.col < win.cols):
            continue
        acc = cells[((r - win.row) // bh, (c - win.col) // bw)]
        if load > acc[0] or (load == acc[0] and (a, b) < acc[3]):  # ties: the first link
            acc[0], acc[3] = load, (a, b)
        acc[1] += load
        acc[2] += 1
    return dict(cells)


def _link_cells(f: Facts, wafer: int, win: Window, top: float, tips: Tips) -> tuple[Cell, ...]:
    bh, bw = bin_size(win)
    cells = link_bins(f, wafer, win)
    out = []
    for (i, j), (peak, total, n, (a, b)) in sorted(cells.items()):
        r, c = win.row + i * bh, win.col + j * bw
        rows, cols = min(bh, win.row + win.rows - r), min(bw, win.col + win.cols - c)
        tip = tips.add(f"NoC links, wafer {wafer}", [
            ("cores", f"rows {r}-{r + rows - 1}, cols {c}-{c + cols - 1}"),
            ("busiest link", f"{fmt.nbytes(peak)}/token {a} -> {b}"),
            ("loaded links", f"{n}"), ("all links", f"{fmt.nbytes(total)}/token")])
        fill = colors.ramp(colors.HEAT, colors.log_position(peak, top))
        out.append(Cell(r, c, rows, cols, fill, tip))
    return tuple(out)


def _arrow(t: Transfer, top: float, scale: float, tips: Tips) -> Arrow:
    points = tuple((c + 0.5, r + 0.5) for r, c in t.route)
    tip = tips.add(f"{t.src} -> {t.dst}", [
        ("bytes", f"{fmt.nbytes(t.bytes_per_token)}/token ({t.sends} send(s))"),
        ("route", f"{t.hops} hops, XY, over {t.lanes} lane(s)"),
        ("byte-hops", f"{fmt.si(t.bytes_per_token * t.hops)}/token")])
    return _headed(points, _width(t.bytes_per_token, top), scale, "send", tip)


def _headed(points, width: float, scale: float, kind: str, tip: int) -> Arrow:
    """An arrow whose line stops at the base of a head sized in pixels (SVG markers would
    scale with the wafer's core units)."""
    (x0, y0), (x1, y1) = points[-2], points[-1]
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    head = min((5 + 1.6 * width) / scale, 0.6 * length)
    half = (2.5 + 1.1 * width) / scale
    bx, by = x1 - ux * head, y1 - uy * head
    tri = ((x1, y1), (bx - uy * half, by + ux * half), (bx + uy * half, by - ux * half))
    line = (*points[:-1], (bx, by))
    return Arrow(tuple((_r(x), _r(y)) for x, y in line), tuple((_r(x), _r(y)) for x, y in tri),
                 width, kind, tip)


def _width(value: float, top: float) -> float:
    return _r(1.2 + 4.8 * math.sqrt(value / top)) if top > 0 else 1.2


def _offchip(mine: list[LayerFacts], win: Window, scale: float, top: float,
             tips: Tips) -> tuple[Arrow, ...]:
    """Per-token off-chip traffic of each region: an arrow from the band above the wafer into
    the region (inputs, streamed weights and KV cache) or out of it (outputs)."""
    y0 = win.row - 0.8 * OFFCHIP_BAND / scale
    out = []
    for la in mine:
        x = _r(la.col + la.cols / 2)
        y1 = _r(la.row + min(la.rows / 2, 40 / scale))
        if la.io_in + la.offchip_streamed > 0:
            x_in = _r(x - 4 / scale) if la.io_out else x
            nbytes = la.io_in + la.offchip_streamed
            tip = tips.add(f"off-chip -> {la.name}", [
                ("per token", fmt.nbytes(nbytes) + "/token"),
                ("graph inputs", fmt.nbytes(la.io_in)),
                ("streamed weights / KV", fmt.nbytes(la.offchip_streamed)),
                ("residency", la.residency)])
            out.append(_headed(((x_in, y0), (x_in, y1)), _width(nbytes, top), scale,
                               "offchip-in", tip))
        if la.io_out > 0:
            x_out = _r(x + 4 / scale) if la.io_in + la.offchip_streamed else x
            tip = tips.add(f"{la.name} -> off-chip", [
                ("per token", fmt.nbytes(la.io_out) + "/token"), ("what", "graph outputs")])
            out.append(_headed(((x_out, y1), (x_out, y0)), _width(la.io_out, top), scale,
                               "offchip-out", tip))
    return tuple(out)


def _caption(f: Facts, wafer: int, win: Window, mine: list[LayerFacts]) -> str:
    used = sum(la.cores for la in mine)
    text = (f"wafer {wafer}: {len(mine)} layer(s), {fmt.count(used)} of "
            f"{fmt.count(f.rows * f.cols)} cores ({fmt.pct(used / (f.rows * f.cols))})")
    if win.zoomed:
        text += (f"; showing rows {win.row}-{win.row + win.rows - 1}, cols "
                 f"{win.col}-{win.col + win.cols - 1} of {f.rows}x{f.cols}")
    return text


def _r(x: float) -> float:
    return round(float(x), 3)
