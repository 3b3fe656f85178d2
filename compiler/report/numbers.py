"""The numbers behind every picture, as files next to report.html (in report-data/): per layer,
per heat cell, per NoC link, per transfer, per timeline step and per wafer.
`view_json` dumps the whole view-model (the golden test compares it)."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json

import numpy as np

from compiler.report import grid
from compiler.report.build import DATA_DIR
from compiler.report.facts import MODES, Facts
from compiler.report.view import Report, SweepReport, WaferPanel
from compiler.vocab import Mode, Phase


def data_files(f: Facts, view: Report) -> dict[str, str]:
    return {f"{DATA_DIR}/{name}": text for name, text in (
        ("layers.csv", _layers(f)), ("cells.csv", _cells(f, view.panels)),
        ("links.csv", _links(f)), ("transfers.csv", _transfers(f)),
        ("timeline.csv", _timeline(f)), ("wafers.csv", _wafers(f)))}


def view_json(view: Report | SweepReport) -> str:
    doc = dataclasses.asdict(view)
    if doc.get("experts", False) is None:  # a dense model: no experts section
        del doc["experts"]
    return json.dumps(doc, indent=1) + "\n"


def _csv(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _layers(f: Facts) -> str:
    header = ["index", "name", "kind", "wafer", "row", "col", "rows", "cols", "cores",
              "residency", "sram_per_core_bytes", "weights_per_core_bytes",
              "kv_per_core_bytes", "activations_per_core_bytes", "sram_utilization",
              "weight_bytes", "kv_bytes", "flops_per_token", "offchip_streamed_bytes_per_token",
              "input_bytes_per_token", "output_bytes_per_token", "placer_cycles_per_token",
              *[f"{m}_{k}_cycles" for m in MODES for k in ("busy", "start", "end")],
              "onnx_nodes"]
    rows = [[la.index, la.name, la.kind, la.wafer, la.row, la.col, la.rows, la.cols, la.cores,
             la.residency, la.per_core["total"], la.per_core["weights"],
             la.per_core["kv_cache"], la.per_core["activations"], round(la.util, 6),
             la.weight_bytes, la.kv_bytes, la.flops_per_token, la.offchip_streamed,
             _n(la.io_in), _n(la.io_out), la.est_cycles,
             *[v for m in MODES for v in (la.busy.get(m, 0), *la.span.get(m, (0, 0)))],
             " ".join(la.nodes)]
            for la in f.layers]
    return _csv(header, rows)


def _cells(f: Facts, panels: tuple[WaferPanel, ...]) -> str:
    """The heat cells of each wafer panel: cores used, SRAM utilization (mean over the cell's
    cores, free ones counting as 0; and the fullest layer's), link load."""
    header = ["wafer", "row", "col", "rows", "cols", "cores", "cores_used",
              "sram_utilization_mean", "sram_utilization_max", "busiest_link_bytes_per_token",
              "all_links_bytes_per_token", "loaded_links"]
    # one panel's rows at a time: a 22-wafer giant has 220,000 cells (~65 MB as lists)
    return _csv(header, itertools.chain.from_iterable(_panel_cells(f, p) for p in panels))


def _panel_cells(f: Facts, p: WaferPanel) -> list[list]:
    win = p.window
    bh, bw = grid.bin_size(win)
    r_edges = np.minimum(np.arange(win.row, win.row + win.rows + bh, bh), win.row + win.rows)
    c_edges = np.minimum(np.arange(win.col, win.col + win.cols + bw, bw), win.col + win.cols)
    r_edges, c_edges = np.unique(r_edges), np.unique(c_edges)
    shape = (len(r_edges) - 1, len(c_edges) - 1)
    used, mem, peak = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for la in f.layers:
        if la.wafer != p.index:
            continue
        rr = _overlap(r_edges, la.row, la.row + la.rows)
        cc = _overlap(c_edges, la.col, la.col + la.cols)
        area = np.outer(rr, cc)
        used += area
        mem += area * la.util
        peak = np.where(area > 0, np.maximum(peak, la.util), peak)
    top, total, n = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=int)
    for (i, j), (peak_load, all_load, count, _) in grid.link_bins(f, p.index, win).items():
        top[i, j], total[i, j], n[i, j] = peak_load, all_load, count
    rr, cc = np.meshgrid(r_edges[:-1], c_edges[:-1], indexing="ij")
    hh, ww = np.meshgrid(np.diff(r_edges), np.diff(c_edges), indexing="ij")
    cores = hh * ww
    cols = [np.full(cores.size, p.index), rr, cc, hh, ww, cores, used.astype(int),
            np.round(mem / cores, 6), np.round(peak, 6), np.round(top, 4), np.round(total, 4), n]
    return [list(row) for row in zip(*(c.ravel().tolist() for c in cols), strict=True)]


def _overlap(edges: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)


def _links(f: Facts) -> str:
    header = ["wafer", "src_row", "src_col", "dst_row", "dst_col", "bytes_per_token"]
    rows = [[w, a[0], a[1], b[0], b[1], _n(v)] for (w, a, b), v in sorted(f.links.items())]
    return _csv(header, rows)


def _transfers(f: Facts) -> str:
    header = ["src", "dst", "src_wafer", "dst_wafer", "kind", "bytes_per_token", "sends",
              "hops", "lanes", "route"]
    rows = [[t.src, t.dst, t.src_wafer, t.dst_wafer, t.kind, _n(t.bytes_per_token), t.sends,
             t.hops, t.lanes, " ".join(f"{r}:{c}" for r, c in t.route)] for t in f.transfers]
    return _csv(header, rows)


def _timeline(f: Facts) -> str:
    header = ["mode", "step", "kind", "op_kind", "region", "op", "start_cycles", "end_cycles",
              "critical"]
    rows = []
    for mode in MODES:
        if mode not in f.docs.timing:
            continue
        t = f.timing(mode)
        crit = set(t["critical_path"])
        rows += [[mode, st.id, st.kind, st.op_kind, st.region, st.op, t["starts"][st.id],
                  t["ends"][st.id], int(st.id in crit)]
                 for st in f.steps(mode) if st.phase != Phase.SETUP]
    return _csv(header, rows)


def _wafers(f: Facts) -> str:
    m = f.docs.placement["metrics"]
    header = ["wafer", "layers", "cores_used", "cores", "sram_bytes_used",
              "placer_cycles_per_token", "offchip_bytes_per_token", "decode_busy_cycles"]
    rows = []
    for w in range(f.wafers):
        mine = [la for la in f.layers if la.wafer == w]
        cycles = m["wafer_cycles"][w] if w < len(m.get("wafer_cycles", ())) else 0
        rows.append([w, len(mine), sum(la.cores for la in mine), f.rows * f.cols,
                     sum(la.per_core["total"] * la.cores for la in mine), cycles,
                     _n(sum(la.offchip_streamed + la.io_in + la.io_out for la in mine)),
                     sum(la.busy.get(Mode.DECODE, 0) for la in mine)])
    return _csv(header, rows)


def _n(x: float) -> float | int:
    """Integral floats as ints; others to 4 decimals (bytes per token: plenty)."""
    return int(x) if x == int(x) else round(x, 4)

