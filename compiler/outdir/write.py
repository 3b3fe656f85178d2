"""Artifacts: the compile result as files in OUT/, written atomically.

placement.json holds only what the inputs and options determine (byte-identical across runs in
deterministic mode); wall times live apart in compile_log.json. Everything is written into a
temporary directory beside OUT and renamed into place at the end, so an interrupted compile
leaves no partial OUT, and an existing OUT is replaced only with `force`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from compiler import __version__
from compiler.errors import UsageError
from compiler.outdir.trace import schedule_doc, trace_doc
from compiler.placement.idle import idle_cores
from compiler.result import CompileResult, decode_steps
from compiler.schedule.build import Schedule
from compiler.schedule.perf import Estimate, LayerCycles, PerfOptions, breakdown
from compiler.tiling.layouts import OpLayout
from compiler.vocab import Mode

PLACEMENT_SCHEMA_VERSION = "1.1"  # 1.1: performance


def placement_doc(result: CompileResult) -> dict[str, Any]:
    g, t = result.graph, result.target
    return {
        "schema_version": PLACEMENT_SCHEMA_VERSION,
        "tool": {"name": "wafer", "version": __version__},
        "model": {"name": g.name, "source": g.source, "sha256": g.source_sha256,
                  "opset": g.opset, "dims": dict(g.dims), "shape_only": g.shape_only},
        "target": {"name": t.name, "source": t.source, "sha256": t.sha256,
                   "grid": [t.grid.rows, t.grid.cols], "wafers": t.wafers.count,
                   "usable_bytes_per_core": t.usable_bytes_per_core},
        "options": _options(result),
        "layers": [_layer(result, i) for i in range(len(result.problem.blocks))],
        "edges": [asdict(e) for e in result.problem.edges],
        "metrics": _metrics(result),
        "solver": _solver(result),
        "performance": {mode: _estimate(e) for mode, e in result.estimates.items()},
        "cycle_breakdown": _breakdown_doc(result),
        **_moe(result),
        **_speculative(result),
    }


def _speculative(result: CompileResult) -> dict[str, Any]:
    """--speculative only: the draft, where it sits and the speculative decode rate."""
    spec = result.speculative
    return {} if spec is None else {"speculative": spec.doc()}


def _moe(result: CompileResult) -> dict[str, Any]:
    """MoE models only: expected / worst-case decode and each expert region's load."""
    moe = result.moe
    if moe is None:
        return {}
    doc = {k: v for k, v in asdict(moe).items() if k != "regions"}
    doc["max_imbalance"] = _round(moe.max_imbalance)
    doc["regions"] = [{k: _round(v) if isinstance(v, float) else v
                       for k, v in asdict(r).items()} for r in moe.regions]
    return {"moe": doc}


def _options(result: CompileResult) -> dict[str, Any]:
    o = result.options
    return {"context": result.tiled.context, "batch": result.tiled.batch,
            "prompt_resident": result.tiled.prompt_resident,
            "method": o.solver.method, "time_limit_s": o.solver.time_limit_s,
            "seed": o.solver.seed, "workers": o.solver.workers,
            "deterministic": o.solver.deterministic}


def _layer(result: CompileResult, i: int) -> dict[str, Any]:
    lt = result.tiled.layers[i]
    layer = result.graph.layers[i]
    rect = result.placement.rects[i]
    cand = lt.candidates[result.placement.options[i]]
    return {
        "name": lt.layer, "kind": lt.kind, "index": layer.index, "template": lt.template,
        "onnx_nodes": [op.name for op in layer.ops],
        "rect": {"wafer": rect.wafer, "row": rect.row, "col": rect.col, "rows": rect.rows,
                 "cols": rect.cols},
        "residency": cand.residency.value,
        "per_core_bytes": {"weights": cand.weight_bytes, "kv_cache": cand.kv_bytes,
                           "activations": cand.act_bytes, "total": cand.per_core_bytes},
        "weight_bytes": lt.weight_bytes, "kv_bytes": lt.kv_bytes,
        "flops_per_token": lt.flops_per_token,
        "offchip_bytes_per_token": cand.offchip_bytes_per_token,
        "cycles_per_token": cand.cycles,
        "layouts": [_layout(lay) for lay in lt.ops],
        **({"moe": asdict(layer.moe)} if layer.moe else {}),
    }


def _layout(lay: OpLayout) -> dict[str, Any]:
    def spec(s):
        return None if s is None else [a or "-" for a in s]

    return {"op": lay.op, "kind": lay.kind, "inputs": [spec(s) for s in lay.inputs],
            "outputs": [spec(s) for s in lay.outputs],
            "collectives": [asdict(c) for c in lay.collectives]}


def _metrics(result: CompileResult) -> dict[str, Any]:
    m, b = result.metrics, result.baseline
    out = {k: v for k, v in asdict(m).items()}
    out["byte_hops_ratio_to_bound"] = _round(m.byte_hops_ratio)
    out["first_fit"] = None if b is None else {
        "offchip_bytes_per_token": b.offchip_bytes_per_token, "byte_hops": b.byte_hops,
        "interwafer_bytes_per_token": b.interwafer_bytes_per_token}
    if b is not None and b.byte_hops:
        out["byte_hops_vs_first_fit"] = _round(m.byte_hops / b.byte_hops)
    same = result.baseline_same_options
    out["first_fit_same_options"] = None if same is None else {"byte_hops": same.byte_hops}
    if same is not None and same.byte_hops:
        out["byte_hops_vs_first_fit_same_options"] = _round(m.byte_hops / same.byte_hops)
    return out


def _estimate(e: Estimate) -> dict[str, Any]:
    """The performance model's estimate; an infinite rate (no time, no FLOPs) as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in asdict(e).items()}


def _solver(result: CompileResult) -> dict[str, Any]:
    r = result.placement.report
    doc = {k: v for k, v in asdict(r).items() if k != "wall_time_s"}
    doc["stages"] = [list(s) for s in r.stages]
    doc["gap"] = _gap(r.objective, r.bound)
    return doc


def _gap(objective: float | None, bound: float | None) -> float | None:
    if objective is None or bound is None:
        return None
    return _round(0.0 if objective == 0 else max(0.0, (objective - bound) / abs(objective)))


def _round(x: float) -> float:
    return round(float(x), 6)


def compile_log(result: CompileResult,
                stage_times: Sequence[tuple[str, float]] | None = None) -> dict[str, Any]:
    """What varies from run to run: wall times. `stage_times`: the compile's stages and then
    OUT's own (`artifacts`, `report`), when the caller has timed them."""
    stages = result.stage_times if stage_times is None else stage_times
    return {"stage_seconds": {k: round(v, 4) for k, v in stages},
            "solver_wall_time_s": round(result.placement.report.wall_time_s, 4)}


SUMMARY_SCHEMA_VERSION = "1.0"


def cycle_breakdown(result: CompileResult) -> dict[str, tuple[LayerCycles, ...]]:
    """Per mode, the critical path's cycles per layer ("where the cycles go"): decode from the
    decode step's schedule when the compile has one, else from the prefill schedule scaled."""
    out = {}
    for mode in (Mode.DECODE, Mode.PREFILL):
        s, tl = result.schedule, result.timelines[mode]
        if mode == Mode.DECODE and result.decode is not None:
            s, tl = result.decode.schedule, result.decode.timeline
        out[str(mode)] = breakdown(s, result.target, tl)
    return out


def _breakdown_doc(result: CompileResult) -> dict[str, list[dict[str, Any]]]:
    return {mode: [{**asdict(r), "total": r.total} for r in rows]
            for mode, rows in cycle_breakdown(result).items()}


def _idle(result: CompileResult) -> dict[str, Any]:
    idle = idle_cores(result.problem, result.placement)
    return {"cores": idle.cores, "faster_not_taken": idle.faster_not_taken,
            "reason": idle.reason}


def summary_doc(result: CompileResult, out: Path, stage_times: list[tuple[str, float]],
                verify: dict[str, Any] | None = None) -> dict[str, Any]:
    """`wafer compile --json`: the human summary as data (docs/cli.md lists the fields).
    metrics, solver (less wall_time_s) and performance are placement.json's; stage times are
    compile_log.json's plus artifacts and report; verify is verify.json's (None without it)."""
    from compiler.schedule.perf import busiest_link

    g, t, m = result.graph, result.target, result.metrics
    d, p = result.estimates["decode"], result.estimates["prefill"]
    link = busiest_link(decode_steps(result), PerfOptions("decode"))
    placed = placement_doc(result)
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "tool": {"name": "wafer", "version": __version__},
        "out": str(out),
        "model": {"name": g.name, "layers": len(g.layers), "blocks": len(g.blocks()),
                  "shape_only": g.shape_only},
        "target": {"name": t.name, "cores": t.total_cores, "peak_flops": t.total_peak_flops()},
        "cores_used": m.cores_used, "wafers_used": m.wafers_used,
        "idle_cores": _idle(result),
        "cycle_breakdown": placed["cycle_breakdown"],
        "tokens_per_s": (placed["speculative"]["tokens_per_s"] if result.speculative
                         else placed["performance"]["decode"]["tokens_per_s"]),
        "ttft_s": placed["performance"]["prefill"]["ttft_s"],
        "utilization": {"decode": d.utilization, "prefill": p.utilization},
        "busiest_link": None if link is None else {
            "wafer": link.wafer, "src": list(link.src), "dst": list(link.dst),
            "bytes_per_token": link.nbytes},
        "metrics": placed["metrics"],
        "solver": {**placed["solver"],
                   "wall_time_s": round(result.placement.report.wall_time_s, 4)},
        "performance": placed["performance"],
        "options": placed["options"],
        "stages": [{"name": k, "seconds": round(v, 4)} for k, v in stage_times],
        "total_s": round(sum(v for _, v in stage_times), 4),
        "verify": verify,
        **_speculative(result),
    }


def artifact_files(result: CompileResult, report: bool = True) -> dict[str, str]:
    """Every file a compile writes into OUT/, by path relative to OUT; with `report`, also
    report.html and report-data/ (built from these very files, as `wafer view` would). Each
    document is dropped once it is text (a giant's trace is ~10^6 objects)."""
    files = {
        "placement.json": dumps(placement_doc(result)),
        "schedule.json": dumps(full_schedule_doc(result)),
        "trace.json": json.dumps(_trace(result)) + "\n",
        "compile_log.json": dumps(compile_log(result)),
    }
    if report:
        files.update(report_texts(files, result))
    return files


def full_schedule_doc(result: CompileResult, steps: bool = True) -> dict[str, Any]:
    """schedule.json's document: the prefill schedule with both timelines, the decode step's
    schedule (outdir/decode.py), the draft with --speculative; without `steps`, every step
    list left out (what the report reads when handed the Schedules)."""
    sched = schedule_doc(result.schedule, result.target, result.timelines, steps)
    if result.decode is not None:
        from compiler.outdir.decode import decode_doc

        sched["decode"] = decode_doc(result.decode, steps)
    sched.update(_speculative(result))
    return sched


def _trace(result: CompileResult) -> dict[str, Any]:
    """trace.json: the decode step and the prefill when the compile scheduled decode, else
    the prefill schedule's decode timeline."""
    if result.decode is not None:
        from compiler.outdir.decode import two_schedule_trace

        return two_schedule_trace(result.schedule, result.timelines[Mode.PREFILL],
                                  result.decode, result.target)
    return trace_doc(result.schedule, result.target, result.timelines[Mode.DECODE],
                     PerfOptions(Mode.DECODE))


def report_texts(files: dict[str, str], result: CompileResult) -> dict[str, str]:
    """The report's files from the artifacts' texts, handed the Schedules schedule.json was
    written from (not rebuilt from its text) and, for schedule.json, its text without the step
    lists (what parsing the whole text would give, less the steps the Schedules hold)."""
    from compiler.report import docs_from_texts, report_files

    texts = {**files, "schedule.json": dumps(full_schedule_doc(result, steps=False))}
    return report_files(docs_from_texts(texts, schedules=written_schedules(result)))


def written_schedules(result: CompileResult) -> tuple[Schedule, Schedule | None]:
    """The prefill and decode Schedules `artifact_files` writes into schedule.json."""
    return result.schedule, None if result.decode is None else result.decode.schedule


# --- writing ----------------------------------------------------------------------------------


def dumps(doc: Any) -> str:
    """JSON for people and tools alike: objects open one key a line (three levels deep), a list
    of objects or lists one element a line, everything inside an element on its line.
    json.dumps(indent=...) runs the pure-Python encoder (5 s of a 405B compile's artifacts);
    every element here goes through the C one."""
    return _pretty(doc, 0) + "\n"


PRETTY_DEPTH = 3  # objects this deep or deeper are written on one line


def _pretty(value: Any, depth: int) -> str:
    pad = " " * (depth + 1)
    if isinstance(value, dict) and value and depth < PRETTY_DEPTH:
        items = (f"{pad}{json.dumps(str(k))}: {_pretty(v, depth + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(pad + json.dumps(v) for v in value) + "\n" + " " * depth + "]"
    return json.dumps(value)


def verify_text(doc: dict[str, Any]) -> str:
    """verify.json's text, from the verify report's document (compiler/verify/report.py; its
    non-finite floats already strings)."""
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


Writer = Callable[[Path], None]


def write_outputs(out: Path, files: dict[str, str | Writer], force: bool = False) -> Path:
    """Write `files` (name -> text, or a function writing into the directory) into `out`
    atomically: a temporary sibling directory, renamed into place when complete."""
    out = Path(out)
    check_out(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror}; choose another OUT") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; OUT is an ordinary directory
    try:
        for name, content in files.items():
            if callable(content):
                content(tmp)
            else:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_text(content)
        _swap(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_out(out: Path, force: bool) -> None:
    """OUT may be new; an existing one is replaced only with `force`, and only when it is a
    directory that `wafer compile` wrote (or an empty one), never the working directory."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise UsageError(f"{out} already exists; pass --force to replace it")
    if out.is_symlink() or not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory; choose another OUT")
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise UsageError(f"{out} is the working directory or contains it; choose another OUT")
    if any(out.iterdir()) and not (out / "placement.json").is_file():
        raise UsageError(f"{out} is not an output of `wafer compile` (no placement.json); "
                         "--force replaces only those: remove it yourself or choose another OUT")


def _swap(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out is moved aside first and removed after. Ctrl-C and
    SIGTERM wait until the swap is done, so they never leave OUT missing or an old copy behind;
    a failed rename puts the old OUT back."""
    with _signals_deferred():
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:
                old.rename(out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Block SIGINT and SIGTERM (delivered when the block ends) where the OS allows it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    mask = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
