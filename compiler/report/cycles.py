"""Where the cycles go: placement.json's `cycle_breakdown` (the performance model's critical
path per layer, schedule/perf.py `breakdown`) as one stacked bar of the categories' shares and
a table per layer, for decode (one token) and prefill. An OUT written before the breakdown
was recorded has none, and the report leaves the section out."""

from __future__ import annotations

from typing import Any

from compiler.report import fmt
from compiler.report.colors import STEP_COLORS
from compiler.report.facts import Facts
from compiler.report.view import Cycles, CycleShare, Table
from compiler.vocab import Mode, StepKind

BAR_WIDTH = 1000  # the bar's viewBox width
CATEGORIES = (  # key in the breakdown, label, colour (the timeline's for the same step kind)
    ("compute", "compute", STEP_COLORS[StepKind.COMPUTE]),
    ("collective", "collectives", STEP_COLORS[StepKind.COLLECTIVE]),
    ("send", "sends", STEP_COLORS[StepKind.SEND]),
    ("offchip", "off-chip", STEP_COLORS[StepKind.LOAD]),
    ("overhead", "runtime overhead", "#bab0ac"),
    ("wait", "waiting for a port or link", "#d4d8dd"),
)
_TITLES = {Mode.DECODE: "Decode: one token's critical path",
           Mode.PREFILL: "Prefill: the prompt's critical path"}
NOTE = ("Cycles of the performance model's critical path, charged to the layer whose step "
        "they are: compute (FLOPs at the cores' rate), collectives (hops, link "
        "serialization and the receiving cores' additions of a reduce, at its recorded "
        "algorithm), sends between layers or wafers, off-chip transfers, the runtime's "
        "overhead per dependent phase, and waiting for a shared port or link. The layers' "
        "totals add up to the mode's cycles.")


def cycles_views(f: Facts) -> tuple[Cycles, ...]:
    doc: dict[str, Any] = f.docs.placement.get("cycle_breakdown") or {}
    return tuple(_view(mode, doc[mode]) for mode in (Mode.DECODE, Mode.PREFILL)
                 if doc.get(mode))


def _view(mode: str, rows: list[dict[str, Any]]) -> Cycles:
    total = sum(r["total"] for r in rows) or 1
    shares, x = [], 0.0
    for key, label, color in CATEGORIES:
        cycles = sum(r[key] for r in rows)
        width = BAR_WIDTH * cycles / total
        shares.append(CycleShare(label, round(cycles / total, 6), color,
                                 f"{label} {fmt.pct(cycles / total)} "
                                 f"({fmt.count(cycles)} cycles)",
                                 round(x, 3), round(width, 3)))
        x += width
    return Cycles(_TITLES[Mode(mode)], NOTE, tuple(shares), _table(rows, total))


def _table(rows: list[dict[str, Any]], total: int) -> Table:
    header = ("layer", "cycles", "of the path", *(label for _, label, _ in CATEGORIES))
    cells, keys = [], []
    for r in rows:
        cells.append((r["layer"], fmt.count(r["total"]), fmt.pct(r["total"] / total),
                      *(fmt.count(r[k]) for k, _, _ in CATEGORIES)))
        keys.append((r["layer"], r["total"], r["total"] / total,
                     *(r[k] for k, _, _ in CATEGORIES)))
    numeric = tuple(h != "layer" for h in header)
    return Table("Cycles per layer", header, tuple(cells), tuple(keys), numeric)
