"""The report's view-model: plain, frozen data that a template only has to print.

Wafer pictures are in core units (x = column, y = row; the template's SVG viewBox scales them),
timelines in pixels. Anything a reader can hover carries `tip`, an index into `Report.tips`
(a title and (label, value) rows). Colours are decided here, not in the template, so the
legend and the pictures cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Rows = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Tip:
    title: str
    rows: Rows


@dataclass(frozen=True)
class Kpi:
    label: str
    value: str
    note: str
    state: str = ""  # "good", "warn", "bad" or "" (neutral)


@dataclass(frozen=True)
class Swatch:
    label: str
    color: str


@dataclass(frozen=True)
class LayerBox:
    """One layer's rectangle on its wafer, with its label placed to fit."""

    index: int
    name: str
    kind: str
    wafer: int
    row: int
    col: int
    rows: int
    cols: int
    fill: str  # by kind
    mem_fill: str  # by per-core memory utilization
    mark: tuple[float, float, float, float]  # x, y, w, h drawn: at least MIN_PX wide and high
    label: str  # "" when it does not fit
    label_size: float  # core units
    vertical: bool
    streamed: bool  # some of it streams from off-chip every token
    tip: int
    label_x: float  # the label's middle, core units: inside the rectangle, clear of arrows
    label_y: float


@dataclass(frozen=True)
class Cell:
    """An aggregated heat cell: a block of cores on one wafer."""

    row: int
    col: int
    rows: int
    cols: int
    fill: str
    tip: int


@dataclass(frozen=True)
class Arrow:
    """A transfer along its route, or an off-chip stream into (or out of) a region."""

    points: tuple[tuple[float, float], ...]  # (x, y) in core units, ending at the head's base
    head: tuple[tuple[float, float], ...]  # the arrowhead's triangle, core units
    width: float  # px
    kind: str  # "send", "offchip-in", "offchip-out"
    tip: int


@dataclass(frozen=True)
class Window:
    """The part of a wafer a panel shows: all of it, or the used part when that is small."""

    row: int
    col: int
    rows: int
    cols: int
    zoomed: bool


@dataclass(frozen=True)
class WaferPanel:
    index: int
    rows: int  # the wafer's grid
    cols: int
    window: Window
    scale: float  # px per core
    width: float  # px
    height: float
    layers: tuple[LayerBox, ...]
    link_cells: tuple[Cell, ...]
    arrows: tuple[Arrow, ...]
    offchip: tuple[Arrow, ...]
    grid_lines: bool  # small grids show every core
    caption: str
    view_box: tuple[float, float, float, float]  # x, y, w, h: the window plus band and axes
    row_ticks: tuple[tuple[float, str], ...]  # (y, label), core units
    col_ticks: tuple[tuple[float, str], ...]  # (x, label)
    band: float  # height of the off-chip band above the window, core units
    band_label_x: float  # where the band's "off-chip" starts, clear of off-chip arrows


@dataclass(frozen=True)
class Ramp:
    """A colour scale's legend: stops and labelled ticks (0..1 positions)."""

    title: str
    stops: tuple[str, ...]
    ticks: tuple[tuple[float, str], ...]


@dataclass(frozen=True)
class WaferBox:
    """The multi-wafer overview: one box per wafer, links between them."""

    index: int
    x: float
    y: float
    width: float
    height: float
    fill_fraction: float  # of cores used
    lines: tuple[str, ...]
    tip: int


@dataclass(frozen=True)
class WaferLink:
    src: int
    dst: int
    path: str  # SVG path data, px
    width: float
    label: str
    label_x: float
    label_y: float
    tip: int


@dataclass(frozen=True)
class Overview:
    width: float
    height: float
    boxes: tuple[WaferBox, ...]
    links: tuple[WaferLink, ...]


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    kind: str  # compute | collective | send | wafer_send | load | store
    critical: bool
    tip: int


@dataclass(frozen=True)
class TimelineRow:
    label: str
    color: str  # the layer's kind colour, or grey for transfer rows
    bars: tuple[Bar, ...]
    tip: int


@dataclass(frozen=True)
class Timeline:
    mode: str
    title: str
    width: float  # px of the time axis
    rows: tuple[TimelineRow, ...]
    ticks: tuple[tuple[float, str], ...]  # (px, label)
    note: str


@dataclass(frozen=True)
class Table:
    """A table; `keys` give each cell's sort value (numbers sort as numbers)."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    keys: tuple[tuple[float | str, ...], ...] = ()
    numeric: tuple[bool, ...] = ()  # right-align these columns
    row_tips: tuple[int, ...] = ()


@dataclass(frozen=True)
class CycleShare:
    """One category's share of a critical path, drawn as a piece of a stacked bar."""

    label: str
    fraction: float
    color: str
    text: str  # "compute 12% (3,456 cycles)"
    x: float  # bar units (0..1000)
    width: float


@dataclass(frozen=True)
class Cycles:
    """Where the cycles go in one mode: the categories' shares and the cycles per layer."""

    title: str
    note: str
    shares: tuple[CycleShare, ...]
    table: Table


@dataclass(frozen=True)
class Report:
    title: str
    subtitle: str
    kpis: tuple[Kpi, ...]
    kinds: tuple[Swatch, ...]
    steps: tuple[Swatch, ...]  # timeline bar colours
    panels: tuple[WaferPanel, ...]
    mem_ramp: Ramp
    link_ramp: Ramp
    overview: Overview
    wafer_table: Table
    offchip_table: Table
    timelines: tuple[Timeline, ...]
    layer_table: Table
    metric_table: Table
    solver_table: Table
    verify_summary: str  # "" when OUT has no verify.json
    verify_passed: bool | None
    verify_table: Table | None
    stage_table: Table
    nodes: tuple[tuple[str, ...], ...]  # ONNX node names per layer (the details panel)
    tips: tuple[Tip, ...]
    files: tuple[str, ...]  # the numbers behind the pictures, relative to the HTML
    experts: Any = None  # report/experts.py ExpertsView: MoE models only
    cycles: tuple[Cycles, ...] = ()  # report/cycles.py: decode, prefill (none in an old OUT)


# --- the sweep page (sweep.html): Pareto plots and the table of points ---------------------


@dataclass(frozen=True)
class Dot:
    """A point that compiled, in a scatter plot (px)."""

    index: int  # the sweep point
    x: float
    y: float
    color: str  # by the value of the colouring axis
    frontier: bool  # on this plot's Pareto frontier
    tip: int
    crowd: int = 1  # points drawn at this spot (this one included): >1 when they would overlap


@dataclass(frozen=True)
class Miss:
    """A failed point, marked on the strip under a plot (px)."""

    index: int
    x: float
    y: float
    status: str  # does-not-fit | infeasible | error
    color: str  # by status
    tip: int


@dataclass(frozen=True)
class Label:
    """A frontier point's values, written beside it (px; anchor "start" or "end")."""

    x: float
    y: float
    text: str
    anchor: str


@dataclass(frozen=True)
class Scatter:
    """tokens/s against one cost; the frontier as a staircase through its points."""

    id: str
    title: str
    x_label: str  # says "log scale" when it is one
    y_label: str
    width: float  # the SVG, px
    height: float
    plot: tuple[float, float, float, float]  # the plotting area: x, y, w, h (px)
    x_ticks: tuple[tuple[float, str], ...]  # (px, label)
    y_ticks: tuple[tuple[float, str], ...]
    dots: tuple[Dot, ...]  # frontier points last, so they are drawn on top
    frontier: str  # SVG path data, px; "" when no point compiled
    labels: tuple[Label, ...]  # beside frontier points, where they do not overlap
    crowds: tuple[Label, ...]  # "x3" above dots that sit on one spot (set side by side)
    strip: tuple[float, float, float, float]  # failed points' strip: x, y, w, h; h 0 if none
    misses: tuple[Miss, ...]
    note: str


@dataclass(frozen=True)
class SweepReport:
    title: str
    subtitle: str
    kpis: tuple[Kpi, ...]
    color_by: str  # the --vary key whose values colour the dots ("" when none varies)
    colors: tuple[Swatch, ...]  # its values
    statuses: tuple[Swatch, ...]  # the failed points' marks
    plots: tuple[Scatter, ...]
    point_table: Table
    point_status: tuple[str, ...]  # per row of point_table: its status
    failed_table: Table
    tips: tuple[Tip, ...]  # tip i is sweep point i
    files: tuple[str, ...]
