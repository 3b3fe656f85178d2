"""The report's tables: layers (sortable), wafers, off-chip traffic, metrics beside their
bounds and the first-fit baseline, solver, verification and compile stage times."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from compiler.report import fmt
from compiler.report.facts import Facts
from compiler.report.view import Table
from compiler.vocab import Mode, StepKind

Row = tuple[tuple[str, ...], tuple[float | str, ...]]


def _table(title: str, header: tuple[str, ...], rows: list[Row], numeric: tuple[bool, ...],
           row_tips: tuple[int, ...] = ()) -> Table:
    return Table(title, header, tuple(r[0] for r in rows), tuple(r[1] for r in rows), numeric,
                 row_tips)


def layers(f: Facts, layer_tips: list[int]) -> Table:
    header = ("#", "layer", "kind", "wafer", "origin", "shape", "cores", "residency",
              "SRAM per core", "used", "weights", "KV cache", "MFLOP per token",
              "off-chip per token", "decode busy", "est. cycles", "ONNX nodes")
    rows = []
    for la in f.layers:
        busy = la.busy.get(Mode.DECODE, 0)
        off = la.offchip_streamed + la.io_in + la.io_out
        rows.append((
            (str(la.index), la.name, la.kind, str(la.wafer), f"({la.row}, {la.col})",
             f"{la.rows} x {la.cols}", fmt.count(la.cores), la.residency,
             fmt.nbytes(la.per_core["total"]), fmt.pct(la.util), fmt.nbytes(la.weight_bytes),
             fmt.nbytes(la.kv_bytes), f"{la.flops_per_token / 1e6:,.2f}", fmt.nbytes(off),
             fmt.seconds(busy / f.clock_hz) if busy else "-", fmt.count(la.est_cycles),
             str(len(la.nodes))),
            (la.index, la.name, la.kind, la.wafer, la.row * f.cols + la.col, la.rows * la.cols,
             la.cores, la.residency, la.per_core["total"], la.util, la.weight_bytes,
             la.kv_bytes, la.flops_per_token, off, busy, la.est_cycles, len(la.nodes))))
    numeric = tuple(h not in ("layer", "kind", "residency", "origin", "shape") for h in header)
    return _table("Layers", header, rows, numeric, tuple(layer_tips))


def wafers(f: Facts) -> Table:
    m = f.docs.placement["metrics"]
    out_b: dict[int, float] = defaultdict(float)
    in_b: dict[int, float] = defaultdict(float)
    for t in f.transfers:
        if t.kind == StepKind.WAFER_SEND:
            out_b[t.src_wafer] += t.bytes_per_token
            in_b[t.dst_wafer] += t.bytes_per_token
    rows = []
    for w in range(f.wafers):
        mine = [la for la in f.layers if la.wafer == w]
        cores = sum(la.cores for la in mine)
        mem = sum(la.per_core["total"] * la.cores for la in mine)
        off = sum(la.offchip_streamed + la.io_in + la.io_out for la in mine)
        cycles = m["wafer_cycles"][w] if w < len(m.get("wafer_cycles", ())) else 0
        span = f"{mine[0].name} ... {mine[-1].name}" if len(mine) > 1 else \
            (mine[0].name if mine else "-")
        rows.append(((str(w), str(len(mine)), span, fmt.count(cores),
                      fmt.pct(cores / (f.rows * f.cols)), fmt.nbytes(mem),
                      fmt.pct(mem / max(1, cores * f.capacity)) if cores else "-",
                      fmt.count(cycles), fmt.nbytes(off), fmt.nbytes(out_b[w]),
                      fmt.nbytes(in_b[w])),
                     (w, len(mine), span, cores, cores, mem, mem / max(1, cores * f.capacity),
                      cycles, off, out_b[w], in_b[w])))
    header = ("wafer", "layers", "which", "cores used", "of wafer", "SRAM used",
              "of used cores' SRAM", "placer's cycles/token", "off-chip/token",
              "to other wafers/token", "from other wafers/token")
    return _table("Wafers", header, rows, tuple(h != "which" for h in header))


def offchip(f: Facts) -> Table:
    m = f.docs.placement["metrics"]
    rows = []
    for la in f.layers:
        total = la.offchip_streamed + la.io_in + la.io_out
        if total:
            rows.append(((la.name, str(la.wafer), la.residency, fmt.nbytes(la.io_in),
                          fmt.nbytes(la.offchip_streamed), fmt.nbytes(la.io_out),
                          fmt.nbytes(total)),
                         (la.name, la.wafer, la.residency, la.io_in, la.offchip_streamed,
                          la.io_out, total)))
    total = sum(r[1][-1] for r in rows)
    rows.append((("all, as scheduled", "",
                  f"placer: {fmt.nbytes(m['offchip_bytes_per_token'])}, bound "
                  f"{fmt.nbytes(m['offchip_lower_bound'])}",
                  fmt.nbytes(sum(r[1][3] for r in rows)), fmt.nbytes(sum(r[1][4] for r in rows)),
                  fmt.nbytes(sum(r[1][5] for r in rows)), fmt.nbytes(total)),
                 ("~", "", "", 0, 0, 0, total)))
    header = ("layer", "wafer", "residency", "inputs in", "streamed in (weights, KV)",
              "outputs out", "total per token")
    return _table("Off-chip traffic per decode token", header, rows,
                  (False, True, False, True, True, True, True))


def metrics(f: Facts) -> Table:
    p = f.docs.placement
    m, perf = p["metrics"], p["performance"]
    ff, same = m.get("first_fit") or {}, m.get("first_fit_same_options") or {}
    d, pre = perf[Mode.DECODE], perf[Mode.PREFILL]

    def ratio(value: float, ref: float | None) -> str:
        return "-" if not ref else f"{value / ref:.2f}x"

    rows = [
        ("off-chip bytes per token", fmt.nbytes(m["offchip_bytes_per_token"]),
         fmt.nbytes(m["offchip_lower_bound"]), "-", _get(ff, "offchip_bytes_per_token",
                                                         fmt.nbytes),
         ratio(m["offchip_bytes_per_token"], m["offchip_lower_bound"])),
        ("byte-hops per token", fmt.si(m["byte_hops"]), fmt.si(m["byte_hops_lower_bound"]),
         _get(same, "byte_hops", fmt.si), _get(ff, "byte_hops", fmt.si),
         ratio(m["byte_hops"], m["byte_hops_lower_bound"])),
        ("inter-wafer bytes per token", fmt.nbytes(m["interwafer_bytes_per_token"]), "-", "-",
         _get(ff, "interwafer_bytes_per_token", fmt.nbytes), "-"),
        ("slowest wafer, placer's cycles/token", fmt.count(max(m["wafer_cycles"], default=0)),
         "-", "-", "-", "-"),
        ("cores used", fmt.count(m["cores_used"]), "-", "-", "-", "-"),
        ("decode tokens/s", fmt.rate(d["tokens_per_s"]),
         f"roofline {fmt.rate(d['compute_bound_tokens_per_s'])}", "-", "-",
         _frac(d["tokens_per_s"], d["compute_bound_tokens_per_s"])),
        ("decode cycles per token", fmt.count(d["cycles"]), "-", "-", "-", "-"),
        ("time to first token", fmt.seconds(pre["ttft_s"]), "-", "-", "-", "-"),
        ("utilization, decode / prefill",
         f"{fmt.pct(d['utilization'], 3)} / {fmt.pct(pre['utilization'], 3)}",
         "-", "-", "-", "-"),
    ]
    header = ("metric", "this placement", "lower bound", "first-fit, same rectangles",
              "first-fit, own choice", "vs bound")
    return Table("Metrics, their bounds and the first-fit baseline", header, tuple(rows),
                 (), (False, True, True, True, True, True))


def _get(doc: dict[str, Any], key: str, f) -> str:
    return "-" if doc.get(key) is None else f(doc[key])


def _frac(value: float | None, ref: float | None) -> str:
    if not value or not ref or not math.isfinite(ref):
        return "-"
    return f"{fmt.pct(value / ref, 2)} of it"


def solver(f: Facts) -> Table:
    s = f.docs.placement["solver"]
    wall = f.docs.log.get("solver_wall_time_s")
    rows = [("method", s["method"]), ("status", s["status"]),
            ("objective (byte-hops)", fmt.sig(s.get("objective"), 6)),
            ("bound", fmt.sig(s.get("bound"), 6)),
            ("gap", "-" if s.get("gap") is None else fmt.pct(s["gap"], 2)),
            ("seed, workers", f"{s['seed']}, {s['workers']}"),
            ("time limit", "-" if s.get("time_limit_s") is None else f"{s['time_limit_s']:g} s"
             + (" (deterministic)" if s.get("deterministic") else " (wall clock)")),
            ("wall time", "-" if wall is None else f"{wall:.2f} s")]
    rows += [(name, text) for name, text in s.get("stages", ())]
    return Table("Solver", ("", ""), tuple(rows))


def stages(f: Facts) -> Table:
    times = f.docs.log.get("stage_seconds", {})
    rows = tuple((k, f"{v:.2f} s") for k, v in times.items())
    rows += (("total", f"{sum(times.values()):.2f} s"),)
    return Table("Compile stages (wall time)", ("stage", "time"), rows, (), (False, True))


def verify_summary(v: dict[str, Any] | None) -> str:
    if v is None:
        return ""
    outs = v.get("outputs", [])
    how = (f"{v.get('precision', '?')}, atol {v.get('atol', 0):g}, rtol {v.get('rtol', 0):g}, "
           f"inputs {v.get('inputs', '?')}")
    head = "PASSED" if v.get("passed") else "FAILED"
    text = f"{head}: {len(outs)} output(s) of {v.get('model', '?')} vs ONNX Runtime ({how})"
    d = v.get("first_diverging")
    if d:
        text += f"; first diverging layer {d.get('layer')}: {d.get('op')} -> {d.get('tensor')}"
    elif v.get("layers"):
        text += f"; all {len(v['layers'])} layer output(s) within tolerance"
    return text


def verify(v: dict[str, Any] | None) -> Table | None:
    if v is None:
        return None
    rows = tuple((o.get("name", "?"), "x".join(map(str, o.get("shape", []))),
                  _e(o.get("max_abs")), _e(o.get("max_rel")), _e(o.get("pearson"), 6),
                  _e(o.get("min_atol")), f"{o.get('atol', 0):g} / {o.get('rtol', 0):g}",
                  "pass" if o.get("passed") else "FAIL") for o in v.get("outputs", []))
    header = ("output", "shape", "max abs", "max rel", "PCC", "passes at atol", "atol / rtol",
              "result")
    return Table("Verification against ONNX Runtime", header, rows, (),
                 (False, False, True, True, True, True, True, False))


def _e(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}g}" if isinstance(x, int | float) else str(x)
