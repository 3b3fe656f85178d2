"""build_view: OUT's documents -> the Report view-model (headline numbers, wafer panels,
multi-wafer overview, timelines, tables). Plain data only; render.py prints it."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from compiler.outdir.read import OutDir
from compiler.report import colors, experts, fmt, grid, tables, timeline
from compiler.report.cycles import cycles_views
from compiler.report.facts import Facts, LayerFacts, gather
from compiler.report.tips import Tips
from compiler.report.view import (
    Kpi,
    Overview,
    Ramp,
    Report,
    Swatch,
    WaferBox,
    WaferLink,
)
from compiler.vocab import Mode, StepKind

DATA_DIR = "report-data"
DATA_FILES = ("layers.csv", "cells.csv", "links.csv", "transfers.csv", "timeline.csv",
              "wafers.csv")


def build_view(docs: OutDir) -> Report:
    f = gather(docs)
    return view_from_facts(f)


def view_from_facts(f: Facts) -> Report:
    p = f.docs.placement
    tips = Tips()
    layer_tips = [tips.add(*_layer_tip(f, la)) for la in f.layers]
    panels = grid.panels(f, tips, layer_tips, experts.fills(f))
    moe = experts.experts_view(f)
    overview = _overview(f, tips)
    lines = timeline.timelines(f, tips, layer_tips)
    return Report(
        title=f"{p['model']['name']} on {p['target']['name']}",
        subtitle=_subtitle(f),
        kpis=_kpis(f) + ((moe.kpi,) if moe else ()) + _speculative_kpi(f),
        kinds=_kind_legend(f),
        steps=tuple(Swatch(k.replace("_", " "), c) for k, c in colors.STEP_COLORS.items()),
        panels=panels,
        mem_ramp=Ramp("SRAM used per core (fullest core of each layer)", colors.VIRIDIS,
                      tuple((t, fmt.pct(t, 0)) for t in (0, 0.25, 0.5, 0.75, 1.0))),
        link_ramp=_link_ramp(f),
        overview=overview,
        wafer_table=tables.wafers(f),
        offchip_table=tables.offchip(f),
        timelines=lines,
        layer_table=tables.layers(f, layer_tips),
        metric_table=tables.metrics(f),
        solver_table=tables.solver(f),
        verify_summary=tables.verify_summary(f.docs.verify),
        verify_passed=None if f.docs.verify is None else bool(f.docs.verify.get("passed")),
        verify_table=tables.verify(f.docs.verify),
        stage_table=tables.stages(f),
        nodes=tuple(la.nodes for la in f.layers),
        tips=tuple(tips.items),
        files=tuple(f"{DATA_DIR}/{name}" for name in DATA_FILES),
        experts=moe,
        cycles=cycles_views(f),
    )


def _subtitle(f: Facts) -> str:
    p = f.docs.placement
    m, o, t = p["model"], p["options"], p["target"]
    dims = ", ".join(f"{k}={v}" for k, v in m["dims"].items()) or "static"
    weights = "shape-only (no weights)" if m["shape_only"] else "with weights"
    return (f"opset {m['opset']}, {dims}, KV context {o['context']}, {weights} | "
            f"{t['wafers']} x {t['grid'][0]}x{t['grid'][1]} cores, "
            f"{fmt.nbytes(t['usable_bytes_per_core'])} usable SRAM per core | "
            f"placed by {p['solver']['method']} (seed {o['seed']}, {o['workers']} worker(s)) | "
            f"{p['tool']['name']} {p['tool']['version']}")


def _kpis(f: Facts) -> tuple[Kpi, ...]:
    p = f.docs.placement
    d, pre = p["performance"][Mode.DECODE], p["performance"][Mode.PREFILL]
    m, s = p["metrics"], p["solver"]
    total = f.rows * f.cols * f.wafers
    at_bound = m["offchip_bytes_per_token"] <= m["offchip_lower_bound"]
    ratio = m["byte_hops_ratio_to_bound"]
    ff = m.get("byte_hops_vs_first_fit_same_options") or m.get("byte_hops_vs_first_fit")
    vs_ff = f", {ff - 1:+.0%} vs first-fit" if ff else ""
    return (
        Kpi("decode", f"{fmt.rate(d['tokens_per_s'])} tok/s",
            f"batch {d['batch']}, context {d['context']}; {fmt.count(d['cycles'])} cycles/token"),
        Kpi("time to first token", fmt.seconds(pre["ttft_s"]),
            f"prefill of {f.schedule.tokens} tokens"),
        Kpi("off-chip", f"{fmt.nbytes(m['offchip_bytes_per_token'])}/token",
            "at the lower bound" if at_bound else
            f"bound {fmt.nbytes(m['offchip_lower_bound'])}", "good" if at_bound else "warn"),
        Kpi("byte-hops", f"{fmt.si(m['byte_hops'])}/token",
            f"{ratio:.2f}x the bound{vs_ff}", "good" if ratio <= 1.1 else
            ("warn" if ratio <= 2 else "bad")),
        Kpi("cores used", fmt.count(m["cores_used"]),
            f"{fmt.pct(m['cores_used'] / total)} of {fmt.count(total)} on "
            f"{m['wafers_used']} of {f.wafers} wafer(s)"),
        Kpi("utilization", fmt.pct(d["utilization"], 3),
            f"of peak in decode; {fmt.pct(pre['utilization'], 3)} in prefill"),
        Kpi("solver", s["status"], _solver_note(f),
            "good" if s["status"] in ("OPTIMAL", "HEURISTIC") else
            ("warn" if s["status"] == "FEASIBLE" else "bad")),
        _verify_kpi(f.docs.verify),
    )


def _speculative_kpi(f: Facts) -> tuple[Kpi, ...]:
    """--speculative: the decode rate with the draft, which draft, where and how often
    accepted (compiler/speculative.py)."""
    spec = f.docs.placement.get("speculative")
    if not spec:
        return ()
    a = spec["idle_area"]
    where = "a strip kept for it" if spec.get("placement") == "reserved" else "the idle ones"
    held = "resident" if spec.get("draft_resident") else "streaming"
    return (Kpi("speculative decoding", f"{fmt.rate(spec['tokens_per_s'])} tok/s",
                f"draft {spec['draft']} on {fmt.count(spec['draft_cores'])} cores of {where} "
                f"(wafer {a['wafer']}, {held}), accept {spec['accept']:g}, k {spec['k']}: "
                f"{spec['expected_tokens_per_round']:.2f} tokens/round; "
                f"{fmt.rate(spec['plain_tokens_per_s'])} tok/s without"),)


def _solver_note(f: Facts) -> str:
    s = f.docs.placement["solver"]
    gap = "" if s.get("gap") is None else f", gap {fmt.pct(s['gap'])}"
    wall = f.docs.log.get("solver_wall_time_s")
    return f"{s['method']}{gap}" + ("" if wall is None else f", {wall:.1f} s")


def _verify_kpi(v: dict[str, Any] | None) -> Kpi:
    if v is None:
        return Kpi("verify", "not run", "wafer verify OUT, or compile --verify")
    worst = max((o.get("max_abs", 0.0) for o in v.get("outputs", ())
                 if isinstance(o.get("max_abs"), float)), default=0.0)
    return Kpi("verify", "PASSED" if v.get("passed") else "FAILED",
               f"vs ONNX Runtime, max abs error {worst:.2g}",
               "good" if v.get("passed") else "bad")


def _kind_legend(f: Facts) -> tuple[Swatch, ...]:
    seen: dict[str, str] = {}
    for la in f.layers:
        label = "block (even / odd)" if la.kind == "block" else la.kind
        seen.setdefault(label, colors.kind_color(la.kind, 0))
    return tuple(Swatch(k, c) for k, c in seen.items())


def _link_ramp(f: Facts) -> Ramp:
    top = max(f.links.values(), default=0.0)
    ticks = tuple((1 - i / 3, fmt.nbytes(top / 10**i)) for i in range(3, -1, -1)) if top else \
        ((0.0, "no on-wafer sends"),)
    return Ramp("busiest NoC link in each cell, bytes per token (log scale)", colors.HEAT,
                ticks)


def _layer_tip(f: Facts, la: LayerFacts) -> tuple[str, list[tuple[str, str]]]:
    pc = la.per_core
    ops = ", ".join(f"{k} x{n}" for k, n in la.ops[:6]) + (" ..." if len(la.ops) > 6 else "")
    nodes = la.nodes[0] if len(la.nodes) == 1 else \
        f"{la.nodes[0]} ... {la.nodes[-1]}" if la.nodes else "-"
    busy = la.busy.get(Mode.DECODE, 0)
    return f"{la.name} ({la.kind})", [
        ("cores", f"{la.rows} x {la.cols} = {fmt.count(la.cores)} on wafer {la.wafer}, "
                  f"rows {la.row}-{la.row + la.rows - 1}, cols {la.col}-{la.col + la.cols - 1}"),
        ("ONNX nodes", f"{len(la.nodes)}: {ops}"),
        ("nodes", nodes),
        ("SRAM/core", f"{fmt.nbytes(pc['total'])} ({fmt.pct(la.util)}): weights "
                      f"{fmt.nbytes(pc['weights'])}, KV {fmt.nbytes(pc['kv_cache'])}, "
                      f"activations {fmt.nbytes(pc['activations'])}"),
        ("bytes", f"weights {fmt.nbytes(la.weight_bytes)}, KV cache {fmt.nbytes(la.kv_bytes)}"),
        ("FLOPs", f"{fmt.count(la.flops_per_token)} per token"),
        ("time", f"decode {fmt.seconds(busy / f.clock_hz)} busy ({fmt.count(busy)} cycles); "
                 f"placer's estimate {fmt.count(la.est_cycles)} cycles/token"),
        ("residency", la.residency + ("" if not la.offchip_streamed else
                                      f", {fmt.nbytes(la.offchip_streamed)}/token streamed")),
    ]


# --- the multi-wafer overview --------------------------------------------------------------


BOX_W, BOX_H, BOX_GAP, MARGIN = 190.0, 100.0, 120.0, 30.0


def _overview(f: Facts, tips: Tips) -> Overview:
    m = f.docs.placement["metrics"]
    per_row = min(f.wafers, 6)
    boxes = []
    for w in range(f.wafers):
        mine = [la for la in f.layers if la.wafer == w]
        used = sum(la.cores for la in mine) / (f.rows * f.cols)
        x = MARGIN + (w % per_row) * (BOX_W + BOX_GAP)
        y = MARGIN + (w // per_row) * (BOX_H + 2 * MARGIN)
        cycles = m["wafer_cycles"][w] if w < len(m.get("wafer_cycles", ())) else 0
        span = f"{mine[0].name} ... {mine[-1].name}" if len(mine) > 1 else \
            (mine[0].name if mine else "unused")
        lines = (f"wafer {w}", span, f"{fmt.pct(used)} of cores",
                 f"{fmt.count(cycles)} cycles/token")
        tip = tips.add(f"wafer {w}", [("layers", f"{len(mine)}: {span}"),
                                      ("cores used", fmt.pct(used)),
                                      ("placer's cycles/token", fmt.count(cycles))])
        boxes.append(WaferBox(w, x, y, BOX_W, BOX_H, round(used, 4), lines, tip))
    links = _wafer_links(f, boxes, tips)
    rows = math.ceil(f.wafers / per_row)
    return Overview(2 * MARGIN + per_row * BOX_W + (per_row - 1) * BOX_GAP,
                    rows * (BOX_H + 2 * MARGIN), tuple(boxes), links)


def _wafer_links(f: Facts, boxes: list[WaferBox], tips: Tips) -> tuple[WaferLink, ...]:
    flows: dict[tuple[int, int], list] = defaultdict(lambda: [0.0, []])
    for t in f.transfers:
        if t.kind == StepKind.WAFER_SEND:
            flows[(t.src_wafer, t.dst_wafer)][0] += t.bytes_per_token
            flows[(t.src_wafer, t.dst_wafer)][1].append(f"{t.src} -> {t.dst}")
    top = max((v[0] for v in flows.values()), default=0.0)
    out = []
    for (a, b), (nbytes, pairs) in sorted(flows.items()):
        path, lx, ly = _link_path(boxes[a], boxes[b])
        tip = tips.add(f"wafer {a} -> wafer {b}", [
            ("bytes", f"{fmt.nbytes(nbytes)}/token"), ("sends", "; ".join(pairs[:4]))])
        width = round(1.5 + 4.5 * math.sqrt(nbytes / top), 2) if top else 1.5
        out.append(WaferLink(a, b, path, width, f"{fmt.nbytes(nbytes)}/token", lx, ly, tip))
    return tuple(out)


def _link_path(a: WaferBox, b: WaferBox) -> tuple[str, float, float]:
    """A straight arrow between neighbours in a row, an arc over the boxes otherwise."""
    forward = b.x > a.x or b.y > a.y
    dy = -14 if forward else 14
    ya, yb = a.y + a.height / 2 + dy, b.y + b.height / 2 + dy
    xa = a.x + a.width if b.x > a.x else a.x
    xb = b.x if b.x > a.x else b.x + b.width
    if a.y == b.y and abs(b.index - a.index) == 1:
        return f"M{xa:.1f},{ya:.1f} L{xb - 2:.1f},{yb:.1f}", (xa + xb) / 2, ya - 9
    top = min(a.y, b.y) - 24
    xa, xb = a.x + a.width / 2, b.x + b.width / 2
    return (f"M{xa:.1f},{a.y:.1f} C{xa:.1f},{top:.1f} {xb:.1f},{top:.1f} {xb:.1f},{b.y:.1f}",
            (xa + xb) / 2, top + 2)
