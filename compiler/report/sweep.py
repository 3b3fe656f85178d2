"""The sweep page: SWEEPDIR/sweep.json -> a SweepReport view-model (plain data) -> sweep.html.

Built from sweep.json alone (`wafer sweep` renders the document it is about to write, `wafer view
SWEEPDIR` reads it back), so both draw the same page. Three Pareto plots (tokens/s against the
machine's total SRAM, against cores used and against wafers used, the frontier highlighted), a
table of every point and one of the failed points: a point that did not compile is drawn on a
strip under each plot and listed with its status and message, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compiler.errors import UsageError, WaferError
from compiler.report import fmt
from compiler.report.scatter import (
    CHAR_W,
    LABEL_H,
    Scale,
    crowd,
    dodge,
    place_labels,
    scale,
    staircase,
    ticks,
)
from compiler.report.tips import Tips
from compiler.report.view import (
    Dot,
    Kpi,
    Label,
    Miss,
    Scatter,
    Swatch,
    SweepReport,
    Table,
)

SWEEP_JSON, SWEEP_HTML = "sweep.json", "sweep.html"
NEEDED = ("schema_version", "tool", "model", "target", "axes", "options", "run", "frontiers",
          "points")
POINT_KEYS = ("index", "overrides", "values", "status", "error", "tokens_per_s", "ttft_s",
              "offchip_bytes_per_token", "cores_used", "total_cores", "wafers_used", "wafers",
              "sram_bytes_per_core", "total_sram_bytes", "pareto")
OK = "ok"
STATUS_COLORS = {"does-not-fit": "#e8590c", "infeasible": "#c92a2a", "error": "#5f6b7a"}
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#9d755d",
           "#eeca3b", "#ff9da6", "#79706e")
# (sweep.json cost, plot id, what it is, its label formatter, whole numbers only)
COSTS = (("total_sram_bytes", "sram", "total SRAM of the machine", fmt.nbytes, False),
         ("cores_used", "cores", "cores used", fmt.si, True),
         ("wafers_used", "wafers", "wafers used", lambda v: f"{v:g}", True))
# plot geometry, px
WIDTH = 414.0
LEFT, TOP, RIGHT = 60.0, 12.0, 12.0
PLOT_H = 250.0
STRIP_GAP, STRIP_H = 8.0, 20.0
CROWD_RADIUS, CROWD_GAP, CROWD_SPAN = 6.0, 11.0, 66.0  # dots closer than this are set apart
MAX_LABELLED = 40  # with more points, only frontier points get a label


# --- reading SWEEPDIR ----------------------------------------------------------------------


def is_sweep_dir(path: str | Path) -> bool:
    """A directory `wafer sweep` wrote into: it has sweep.json, or at least its cache of points
    (a sweep that did not finish)."""
    path = Path(path)
    return (path / SWEEP_JSON).is_file() or (path / "points").is_dir()


def read_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """SWEEPDIR/sweep.json, checked for what the page reads; one-line errors otherwise."""
    path = Path(sweep_dir) / SWEEP_JSON
    rerun = f"run the sweep again (`wafer sweep ... -o {sweep_dir}`: cached points are reused)"
    if not path.is_file():
        raise UsageError(f"{path} is missing (the sweep did not finish?): {rerun}")
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise WaferError(f"{path} is not valid JSON: {rerun}") from None
    if not isinstance(doc, dict):
        raise WaferError(f"{path} is not a JSON object: {rerun}")
    missing = [k for k in NEEDED if k not in doc]
    if not missing and doc["points"] and isinstance(doc["points"], list):
        missing = [k for k in POINT_KEYS if k not in doc["points"][0]]
    if missing:
        raise UsageError(f"{path} has no {', '.join(missing)} (written by an older wafer?): "
                         f"{rerun}")
    return doc


# --- the view-model ------------------------------------------------------------------------


def sweep_view(doc: Mapping[str, Any]) -> SweepReport:
    points = doc["points"]
    tips = Tips()
    for p in points:
        tips.add(*_tip(p))
    keys = [a["key"] for a in doc["axes"]]
    color_by, colors = _coloring(doc["axes"])
    look = {p["index"]: (colors.get(p["overrides"].get(color_by), PALETTE[0]),
                         _label(p, doc["axes"], color_by)) for p in points}
    y = scale([p["tokens_per_s"] for p in points if p["status"] == OK], TOP + PLOT_H, TOP)
    plots = tuple(_scatter(points, cost, y, look) for cost in COSTS)
    failed = {p["status"] for p in points if p["status"] != OK}
    return SweepReport(
        title=f"{doc['model']['name']} on {doc['target']['name']}: sweep of {len(points)} "
              f"point{'s' if len(points) != 1 else ''}",
        subtitle=_subtitle(doc),
        kpis=_kpis(doc),
        color_by=color_by,
        colors=tuple(Swatch(v, c) for v, c in colors.items()),
        statuses=tuple(Swatch(s, c) for s, c in STATUS_COLORS.items() if s in failed),
        plots=plots,
        point_table=_point_table(points, keys),
        point_status=tuple(p["status"] for p in points),
        failed_table=_failed_table(points),
        tips=tuple(tips.items),
        files=("sweep.csv", SWEEP_JSON),
    )


def _coloring(axes: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, str]]:
    """Colour the dots by the last --vary with more than one value (the one that changes
    fastest); its values in the order given."""
    varied = [a for a in axes if len(a["values"]) > 1]
    if not varied:
        return "", {}
    axis = varied[-1]
    n = len(axis["values"])
    return axis["key"], {v: PALETTE[i % len(PALETTE)] if n <= len(PALETTE) else
                         _ramp(i / (n - 1)) for i, v in enumerate(axis["values"])}


def _label(p: Mapping[str, Any], axes: Sequence[Mapping[str, Any]], color_by: str) -> str:
    """What tells a point apart besides its colour: the other varied values, as given."""
    varied = [a["key"] for a in axes if len(a["values"]) > 1]
    keys = [k for k in varied if k != color_by] or varied
    return " ".join(p["overrides"][k] for k in keys)


def _ramp(t: float) -> str:
    from compiler.report.colors import VIRIDIS, ramp

    return ramp(VIRIDIS[:9], t)  # the yellow end is too light on white


def _scatter(points: Sequence[Mapping[str, Any]], cost: tuple, y: Scale,
             look: Mapping[int, tuple[str, str]]) -> Scatter:
    key, pid, what, label, integer = cost
    ok = [p for p in points if p["status"] == OK]
    failed = [p for p in points if p["status"] != OK]
    sram = key == "total_sram_bytes"
    # a failed point's machine has a known SRAM (unless its spec is invalid): on the scale;
    # it has no cores or wafers used: spread along the strip
    shown = [p for p in failed if p[key] is not None] if sram else failed
    on_scale = [p[key] for p in ok + (shown if sram else [])]
    x = scale(on_scale, LEFT, WIDTH - RIGHT, integer)
    at = [(x(p[key]), y(p["tokens_per_s"])) for p in ok]
    spread, crowds = crowd(at, CROWD_RADIUS, CROWD_GAP, CROWD_SPAN)
    dots = sorted((Dot(p["index"], px, py, look[p["index"]][0], bool(p["pareto"].get(key)),
                       p["index"], n) for p, (px, py, n) in zip(ok, spread, strict=True)),
                  key=lambda d: d.frontier)
    on = sorted((d for d in dots if d.frontier), key=lambda d: d.x)
    box = (LEFT, TOP, WIDTH - RIGHT - LEFT, PLOT_H)
    counts = tuple(Label(round(cx, 2), round(cy - 9, 2), f"x{n}", "middle")
                   for cx, cy, n in crowds)
    strip = (LEFT, TOP + PLOT_H + STRIP_GAP, WIDTH - RIGHT - LEFT, STRIP_H if shown else 0.0)
    below = strip[1] + strip[3]
    return Scatter(
        id=pid, title=f"tokens/s against {what}",
        x_label=what + (" (log scale)" if x.log else ""),
        y_label="tokens/s, decode" + (" (log scale)" if y.log else ""),
        width=WIDTH, height=below + 40, plot=box,
        x_ticks=ticks(x, label) if on_scale else (),
        y_ticks=ticks(y, fmt.si) if ok else (),
        dots=tuple(dots), frontier=staircase([(d.x, d.y) for d in on]),
        labels=place_labels([(d.x, d.y, look[d.index][1]) for d in _labelled(on, dots)], box,
                            [_text_box(c) for c in counts]),
        crowds=counts,
        strip=strip, misses=_misses(shown, key if sram else "", x, strip),
        note=_note(key, what, ok, failed, len(shown)))


def _text_box(label: Label) -> tuple[float, float, float, float]:
    """The rectangle a centred label covers (px)."""
    w = CHAR_W * len(label.text)
    return (label.x - w / 2, label.y - LABEL_H + 2, label.x + w / 2, label.y + 2)


def _labelled(on: Sequence[Dot], dots: Sequence[Dot]) -> list[Dot]:
    """The dots to label, frontier first: all of them when there are few, else the frontier."""
    rest = sorted((d for d in dots if not d.frontier), key=lambda d: d.index)
    return [*on, *rest] if len(dots) <= MAX_LABELLED else list(on)


def _misses(failed: Sequence[Mapping[str, Any]], key: str, x: Scale,
            strip: tuple[float, float, float, float]) -> tuple[Miss, ...]:
    """Failed points on the strip: at their cost when `key` is given, else spread along it in
    sweep order; marks at one spot are set side by side."""
    sx, sy, sw, sh = strip
    at = [x(p[key]) if key else round(sx + sw * (i + 0.5) / len(failed), 2)
          for i, p in enumerate(failed)]
    return tuple(Miss(p["index"], px, sy + sh / 2, p["status"],
                      STATUS_COLORS.get(p["status"], STATUS_COLORS["error"]), p["index"])
                 for p, px in zip(failed, dodge(at, 9.0), strict=True))


def _note(key: str, what: str, ok: list, failed: list, shown: int) -> str:
    front = sum(bool(p["pareto"].get(key)) for p in ok)
    parts = [f"{front} of {len(ok)} compiled point(s) on the frontier (ringed, joined by the "
             "step line): no other point has as many tokens/s for as little."] if ok else \
        ["No point compiled: nothing to plot."]
    if failed and key == "total_sram_bytes":
        parts.append(f"{shown} failed point(s) marked on the strip below at their machine's "
                     "SRAM" + (f"; {len(failed) - shown} with an invalid target spec have no "
                               "machine (listed under Failed points)" if shown < len(failed)
                               else "") + ".")
    elif failed:
        parts.append(f"{len(failed)} failed point(s) on the strip below, in sweep order (they "
                     f"have no {what}).")
    return " ".join(parts)


def _subtitle(doc: Mapping[str, Any]) -> str:
    axes = " x ".join(f"{a['key']} ({_values(a['values'])})" for a in doc["axes"])
    o, m, r = doc["options"], doc["model"], doc["run"]
    varied = {a["key"] for a in doc["axes"]}
    fixed = [f"{name} {o[k] if o.get(k) is not None else default}"
             for name, k, default in (("context", "context", "= seq len"),
                                      ("batch", "batch", ""), ("seq-len", "seq_len", ""))
             if name not in varied and (o.get(k) is not None or default)]
    method = "" if "method" in varied else f"{o['method']} "
    solver = f"{method}({o['time_limit_s']:g} s limit, seed {o['seed']})"
    weights = "shape-only" if m.get("shape_only") else "with weights"
    verify = ", verified" if o.get("verify") else ""
    return (f"varied: {axes} | fixed: {', '.join([*fixed, solver])}, {weights}{verify} | "
            f"base target {doc['target']['name']} | run on {r['backend']} "
            f"({r['workers']} workers) in {r['wall_s']:.1f} s, {r['computed']} computed, "
            f"{r['cached']} cached | {doc['tool']['name']} {doc['tool']['version']}")


def _values(values: Sequence[str]) -> str:
    shown = values if len(values) <= 6 else [*values[:3], "...", *values[-2:]]
    return ", ".join(shown)


def _kpis(doc: Mapping[str, Any]) -> tuple[Kpi, ...]:
    points = doc["points"]
    ok = [p for p in points if p["status"] == OK]
    failed = [p for p in points if p["status"] != OK]
    by = ", ".join(f"{n} {s}" for s, n in doc["run"]["status"].items() if n and s != OK)
    kpis = [Kpi("points", f"{len(ok)} ok", f"of {len(points)}; " + (
        f"{len(failed)} failed: {by}" if failed else "none failed"),
        "good" if not failed else ("warn" if ok else "bad"))]
    for label, key, best, show in (
            ("fastest", "tokens_per_s", max, lambda p: f"{fmt.rate(p['tokens_per_s'])} tok/s"),
            ("fewest cores", "cores_used", min, lambda p: fmt.count(p["cores_used"])),
            ("smallest machine", "total_sram_bytes", min,
             lambda p: f"{fmt.nbytes(p['total_sram_bytes'])} SRAM")):
        if not ok:
            kpis.append(Kpi(label, "-", "no point compiled"))
            continue
        p = best(ok, key=lambda p, k=key, b=best: (p[k], -p["tokens_per_s"] if b is min else 0))
        rate = "" if key == "tokens_per_s" else f": {fmt.rate(p['tokens_per_s'])} tok/s"
        kpis.append(Kpi(label, show(p), f"#{p['index']} {_where(p)}{rate}"))
    fronts = [len(doc["frontiers"][c[0]]["points"]) for c in COSTS]
    kpis.append(Kpi("on the frontier", " / ".join(map(str, fronts)),
                    "points vs total SRAM / cores / wafers"))
    return tuple(kpis)


def _where(p: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in p["overrides"].items()) or "the base target"


def _tip(p: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    title = f"#{p['index']} {_where(p)}"
    if p["status"] != OK:
        rows = [("status", p["status"]), ("why", p["error"])]
        if p["total_sram_bytes"] is not None:
            rows.append(("machine", _machine(p)))
        return title, rows
    fronts = [what for key, _, what, _, _ in COSTS if p["pareto"].get(key)]
    rows = [("status", "ok" + (f", solver {p['solver_status']}" if p.get("solver_status")
                               else "")),
            ("tokens/s", f"{fmt.rate(p['tokens_per_s'])} (decode" + (
                f", batch {p['decode_batch']}, context {p['decode_context']})"
                if p.get("decode_context") else ")")),
            ("TTFT", fmt.seconds(p["ttft_s"])),
            ("off-chip", f"{fmt.nbytes(p['offchip_bytes_per_token'])}/token"),
            ("cores used", f"{fmt.count(p['cores_used'])} of {fmt.count(p['total_cores'])}"),
            ("wafers used", f"{p['wafers_used']} of {p['wafers']}"),
            ("machine", _machine(p)),
            ("Pareto", "on the frontier vs " + ", ".join(fronts) if fronts else "dominated")]
    if p.get("verify"):
        rows.append(("verify", f"{p['verify']}, max abs error {p['verify_max_abs']:.2g}"))
    if "compile_s" in p:
        rows.append(("compile", f"{p['compile_s']:.1f} s" + (" (cached)" if p.get("cached")
                                                            else "")))
    return title, rows


def _machine(p: Mapping[str, Any]) -> str:
    return (f"{fmt.nbytes(p['sram_bytes_per_core'])}/core x {fmt.count(p['total_cores'])} cores"
            f" = {fmt.nbytes(p['total_sram_bytes'])} SRAM")


def _point_table(points: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Table:
    header = ("#", *keys, "status", "tokens/s", "TTFT", "off-chip/token", "cores used",
              "SRAM (machine)", "wafers used", "Pareto")
    rows, sort_keys = [], []
    for p in points:
        ok = p["status"] == OK
        front = " ".join(m for (c, *_), m in zip(COSTS, "SCW", strict=True)
                         if p["pareto"].get(c))
        cells = [
            (str(p["index"]), p["index"]),
            *((p["overrides"][k], _key(p["values"].get(k))) for k in keys),
            (p["status"], p["status"]),
            (fmt.rate(p["tokens_per_s"]) if ok else "", p["tokens_per_s"]),
            (fmt.seconds(p["ttft_s"]) if ok else "", p["ttft_s"]),
            (fmt.nbytes(p["offchip_bytes_per_token"]) if ok else "",
             p["offchip_bytes_per_token"]),
            (fmt.count(p["cores_used"]) if ok else "", p["cores_used"]),
            (fmt.nbytes(p["total_sram_bytes"]) if p["total_sram_bytes"] is not None else "",
             p["total_sram_bytes"]),
            (str(p["wafers_used"]) if ok else "", p["wafers_used"]),
            (front, front or None),
        ]
        rows.append(tuple(c for c, _ in cells))
        sort_keys.append(tuple(k for _, k in cells))
    numeric = (True, *(False for _ in keys), False, *(True,) * 6, False)
    return Table("Points", header, tuple(rows), tuple(sort_keys), numeric,
                 tuple(p["index"] for p in points))


def _key(value: Any) -> float | str | None:
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    return value


def _failed_table(points: Sequence[Mapping[str, Any]]) -> Table:
    failed = [p for p in points if p["status"] != OK]
    rows = tuple((str(p["index"]), _where(p), p["status"], p["error"]) for p in failed)
    return Table(f"Failed points ({len(failed)})", ("#", "point", "status", "message"), rows,
                 row_tips=tuple(p["index"] for p in failed))
