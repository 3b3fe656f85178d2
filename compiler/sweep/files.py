"""A sweep's result files: `sweep_doc` (sweep.json: inputs, one row per point, Pareto flags),
`sweep_csv` (a flat table) and `write_sweep` (sweep.json, sweep.csv and sweep.html)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compiler.atomic import write_atomic
from compiler.sweep.pareto import frontier
from compiler.sweep.plan import OPTION_KEYS, Plan, PointSpec, option_value
from compiler.sweep.point import OK, SCHEMA_VERSION, STATUSES, Outcome, tool_doc
from compiler.tiling.routing import Routing

# Pareto frontiers: tokens/s (higher is better) against each of these costs (lower is better)
FRONTIER_COSTS = ("total_sram_bytes", "cores_used", "wafers_used")


# ---------------------------------------------------------------------------------------------
# Results: rows with Pareto flags (sweep.json), a flat table (sweep.csv)
# ---------------------------------------------------------------------------------------------


def sweep_doc(plan: Plan, outcomes: Sequence[Outcome], run: Mapping[str, Any]) -> dict:
    """Everything an HTML page or a notebook needs, as plain data: the sweep's inputs, one row
    per point (failed points included) and the Pareto frontiers."""
    rows = [_row(o) for o in outcomes]
    fronts = {}
    for cost in FRONTIER_COSTS:
        flags = frontier([_ok_value(r, cost) for r in rows],
                         [_ok_value(r, "tokens_per_s") for r in rows])
        for r, flag in zip(rows, flags, strict=True):
            r["pareto"][cost] = flag
        fronts[cost] = {"cost": cost, "gain": "tokens_per_s",
                        "points": [r["index"] for r in rows if r["pareto"][cost]]}
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": tool_doc(),
        "model": {"name": plan.model_name, "source": plan.model, "sha256": plan.model_sha256,
                  "shape_only": plan.shape_only},
        "target": {"name": plan.target.name, "source": plan.target.source,
                   "sha256": plan.target.sha256, "spec": plan.target.to_dict()},
        "axes": [{"key": a.key, "kind": a.kind, "values": list(a.values)} for a in plan.axes],
        "options": _options_doc(plan),
        "run": {**run, **_counts(outcomes)},
        "frontiers": fronts,
        "points": rows,
    }


def _ok_value(row: Mapping[str, Any], name: str) -> float | None:
    return row[name] if row["status"] == OK else None


def _options_doc(plan: Plan) -> dict[str, Any]:
    o = plan.options
    return {"context": o.tiling.context, "batch": o.frontend.dims.batch,
            "seq_len": o.frontend.dims.seq_len, "prompt_resident": o.tiling.prompt_resident,
            "method": o.solver.method, "time_limit_s": o.solver.time_limit_s,
            "seed": o.solver.seed, "solver_workers": o.solver.workers,
            "deterministic": o.solver.deterministic, "verify": plan.verify,
            "routing": _routing_doc(o.routing)}


def _routing_doc(r: Routing) -> dict[str, Any]:
    """The MoE routing every point used: its source (`uniform` or the --routing file) and the
    frequencies read from it."""
    return {"source": r.source, "experts": list(r.experts),
            "layers": {name: list(freq) for name, freq in r.layers}}


def _counts(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {"points": len(outcomes),
            "computed": sum(not o.cached and o.spec.target is not None for o in outcomes),
            "cached": sum(o.cached for o in outcomes),
            "reused_placement": sum("placement" in o.result.reused for o in outcomes),
            "hinted": sum(o.result.hinted_by is not None for o in outcomes),
            "status": {s: sum(o.result.status == s for o in outcomes) for s in STATUSES}}


def _row(o: Outcome) -> dict[str, Any]:
    t, r = o.spec.target, o.result
    machine = {"sram_bytes_per_core": None, "total_cores": None, "wafers": None,
               "total_sram_bytes": None}
    if t is not None:
        machine = {"sram_bytes_per_core": t.core.sram_bytes, "total_cores": t.total_cores,
                   "wafers": t.wafers.count,
                   "total_sram_bytes": t.core.sram_bytes * t.total_cores}
    return {"index": o.spec.index, "key": o.spec.key,
            "overrides": dict(o.spec.overrides),
            "values": {k: _effective(o.spec, k, v) for k, v in o.spec.overrides},
            **machine, **dataclasses.asdict(r), "cached": o.cached, "pareto": {}}


def _effective(spec: PointSpec, key: str, text: str) -> Any:
    """The value a point ran with: a compile option parsed, a target field as the spec holds
    it (bytes as int, rates as float); None when the target is invalid."""
    if key in OPTION_KEYS:
        return option_value(key, text)
    if spec.target is None:
        return None
    if key.startswith("core.flops_per_cycle."):  # any spelling of the dtype
        return spec.target.core.flops(key.rsplit(".", 1)[1])
    section, name = key.split(".")
    return spec.target.to_dict()[section][name]


CSV_COLUMNS = ("status", "tokens_per_s", "ttft_s", "offchip_bytes_per_token", "cores_used",
               "total_cores", "wafers_used", "wafers", "sram_bytes_per_core",
               "total_sram_bytes", "decode_context", "decode_batch", "prompt_resident",
               "byte_hops", "solver_status", "verify", "verify_max_abs", "compile_s", "cached")


def sweep_csv(doc: Mapping[str, Any]) -> str:
    """One row per point: index, the varied keys (values as given), the results, the Pareto
    flags, the error message and the cache key."""
    keys = [a["key"] for a in doc["axes"]]
    header = ["index", *keys, *CSV_COLUMNS, *(f"pareto_{c}" for c in FRONTIER_COSTS),
              "error", "key"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in doc["points"]:
        w.writerow([row["index"], *(row["overrides"][k] for k in keys),
                    *(_cell(row[c]) for c in CSV_COLUMNS),
                    *(_cell(row["pareto"][c]) for c in FRONTIER_COSTS), row["error"], row["key"]])
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_sweep(sweep_dir: Path, doc: Mapping[str, Any]) -> None:
    """sweep.json, sweep.csv and sweep.html (the page drawn from the JSON text, as `wafer view
    SWEEPDIR` draws it), all made first, then each written atomically."""
    from compiler.report import SWEEP_HTML, sweep_html

    text = json.dumps(doc, indent=1) + "\n"
    files = {"sweep.json": text, "sweep.csv": sweep_csv(doc),
             SWEEP_HTML: sweep_html(json.loads(text))}
    for name, content in files.items():
        write_atomic(Path(sweep_dir) / name, content)
