"""Mixture-of-experts in the report: expert regions coloured by expected load, the routing
traffic (dispatch into and combine out of each expert region, as the placer priced it) and the
decode rates with k of E experts per token. All from placement.json's `moe` section and its
routed edges; nothing for a dense model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compiler.report import colors, fmt
from compiler.report.facts import Facts
from compiler.report.view import Kpi, Ramp, Table

LOAD = ("#fff5eb", "#fdd0a2", "#fd8d3c", "#d94801", "#7f2704")  # light: cold, dark: hot


@dataclass(frozen=True)
class ExpertsView:
    ramp: Ramp
    table: Table
    kpi: Kpi
    note: str


def regions(f: Facts) -> dict[str, dict[str, Any]]:
    """placement.json's expert regions by layer name (empty for a dense model)."""
    moe = f.docs.placement.get("moe") or {}
    return {r["region"]: r for r in moe.get("regions", ())}


def fills(f: Facts) -> dict[int, str]:
    """Layer index -> its fill by expected experts per token (darker: more load)."""
    loads = regions(f)
    top = max((r["experts_per_token"] for r in loads.values()), default=0.0)
    return {la.index: colors.ramp(LOAD, loads[la.name]["experts_per_token"] / top)
            for la in f.layers if la.name in loads and top}


def experts_view(f: Facts) -> ExpertsView | None:
    moe = f.docs.placement.get("moe")
    if not moe:
        return None
    loads = regions(f)
    top = max(r["experts_per_token"] for r in loads.values())
    ramp = Ramp("expert regions: expected experts per token (routing: "
                f"{moe['routing']})", LOAD,
                tuple((t, f"{top * t:.2f}") for t in (0, 0.25, 0.5, 0.75, 1.0)))
    kpi = Kpi("MoE decode", f"{fmt.rate(moe['expected_tokens_per_s'])} tok/s",
              f"expected; worst case {fmt.rate(moe['worst_tokens_per_s'])}, every expert "
              f"run {fmt.rate(moe['all_experts_tokens_per_s'])}",
              "warn" if moe["max_imbalance"] > 1.5 else "")
    note = (f"{len(loads)} expert regions. Dispatch: the router's layer sends a token to an "
            "expert region only when one of its k experts lives there (bytes x the hit rate); "
            "combine: the region's output back. Load imbalance: expected experts per token "
            f"over the mean of the layer's regions (up to {moe['max_imbalance']:.2f}x)."
            + _streaming_note(loads))
    return ExpertsView(ramp, _table(f, loads), kpi, note)


def _streaming_note(loads: dict[str, dict[str, Any]]) -> str:
    cold = [n for n, r in loads.items()
            if r.get("residency") in ("stream_weights", "stream_all")]
    if not cold:
        return " Every expert region holds its weights resident."
    return (f" {len(cold)} of {len(loads)} expert regions stream their weights from off-chip "
            "(SRAM short: the placer keeps the hot experts resident; a streamed region loads "
            f"only the experts a token visits): {', '.join(cold[:8])}"
            + (", ..." if len(cold) > 8 else "") + ".")


def _table(f: Facts, loads: dict[str, dict[str, Any]]) -> Table:
    p = f.docs.placement
    names = [doc["name"] for doc in p["layers"]]
    into: dict[str, int] = {}
    out: dict[str, int] = {}
    for e in p["edges"]:
        into[names[e["dst"]]] = into.get(names[e["dst"]], 0) + e["bytes_per_token"]
        out[names[e["src"]]] = out.get(names[e["src"]], 0) + e["bytes_per_token"]
    by_name = {la.name: la for la in f.layers}
    rows, keys = [], []
    for name, r in loads.items():
        la = by_name[name]
        experts = f"{r['first']}-{r['first'] + r['count'] - 1}"
        mode = r.get("residency", "resident")
        rows.append((name, r["router"], experts, str(la.wafer), fmt.count(la.cores), mode,
                     fmt.pct(r["share"]), f"{r['experts_per_token']:.3f}", fmt.pct(r["hit"]),
                     f"{r['imbalance']:.2f}x", fmt.nbytes(into.get(name, 0)),
                     fmt.nbytes(out.get(name, 0))))
        keys.append((name, r["router"], r["first"], la.wafer, la.cores, mode, r["share"],
                     r["experts_per_token"], r["hit"], r["imbalance"], into.get(name, 0),
                     out.get(name, 0)))
    header = ("region", "router", "experts", "wafer", "cores", "residency", "share of choices",
              "experts per token", "hit rate", "imbalance", "dispatch in per token",
              "combine out per token")
    numeric = (False, False, False, True, True, False, True, True, True, True, True, True)
    return Table("Expert regions and routing traffic", header, tuple(rows), tuple(keys),
                 numeric)
