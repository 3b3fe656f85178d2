"""Sweep benchmark (issues 8 and 18): a 64-point co-design sweep of the Llama 3 8B shapes on
WSE-3 variants (4 SRAM sizes x 4 context lengths x 4 link widths; the link width last, so each
chain of 4 points along it starts from the placement of the point before: warm starts), wall
and CPU time on the local process pool and on a local Ray, each into an empty SWEEPDIR; then
the pool's sweep again, all cached; with --cold also the pool with --no-hints (every placement
solved from scratch), compared point by point. Both backends must give the same table. Writes
the `sweep` section of docs/performance.md.

    python benchmarks/sweep.py [--time-limit S] [--workers N] [--cold] [--no-ray]
        [--vary KEY=V1,...]   (a smaller variant: replaces the axes)
        [--model MODEL TARGET]  (a smoke test: another model and target)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import WAFER, machine, table, write_section

AXES = ["--vary", "core.sram_bytes=40KiB,48KiB,64KiB,96KiB",
        "--vary", "context=2048,8192,32768,131072",
        "--vary", "links.bytes_per_cycle=2,4,8,16"]
MODEL = ["llama3-8b", "-t", "wse3"]
RUN_ONLY = ("compile_s", "verify_s", "cached", "reused")  # how, not what (per worker)


def run_cpu(argv: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the process and the children it waited for, exit code):
    a process pool's workers are counted, a local Ray's are not (Ray's own processes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return (time.perf_counter() - t0, usage.ru_utime + usage.ru_stime,
            os.waitstatus_to_exitcode(status))


def sweep(out: Path, axes: list[str], backend: str, workers: int, time_limit: float,
          *extra: str) -> dict:
    argv = [*WAFER, "-q", "sweep", *MODEL, *axes, "--time-limit",
            str(time_limit), "--workers", str(workers), "--backend", backend, "-o", str(out),
            *extra]
    load0 = os.getloadavg()[0]
    wall, cpu, code = run_cpu(argv)
    if code != 0:
        raise SystemExit(f"{backend}: wafer sweep exited {code}")
    doc = json.loads((out / "sweep.json").read_text())
    return {"wall": wall, "cpu": cpu, "load": (load0, os.getloadavg()[0]), "doc": doc}


def rows(doc: dict) -> list[dict]:
    return [{k: v for k, v in p.items() if k not in RUN_ONLY} for p in doc["points"]]


def _row(name: str, r: dict, workers: int, cpu: bool = True) -> list[object]:
    run, n = r["doc"]["run"], r["doc"]["run"]["points"]
    status = ", ".join(f"{v} {k}" for k, v in run["status"].items() if v)
    return [name, n, f"{r['wall']:.0f}" if r["wall"] >= 10 else f"{r['wall']:.1f}",
            f"{r['cpu']:.0f}" if cpu else "-", f"{r['wall'] * workers / n:.1f}",
            run["computed"], run["hinted"], run["reused_placement"], status,
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f}"]


def _stage_note(doc: dict) -> str:
    hinted = sorted(p["compile_s"] for p in doc["points"] if p["hinted_by"] is not None)
    cold = sorted(p["compile_s"] for p in doc["points"]
                  if p["hinted_by"] is None and p["status"] == "ok")
    parts = []
    for name, xs in (("from scratch", cold), ("warm-started", hinted)):
        if xs:
            parts.append(f"{name} ({len(xs)}): median {statistics.median(xs):.1f} s, range "
                         f"{xs[0]:.1f}-{xs[-1]:.1f} s")
    took = {what: sum(what in p["reused"] for p in doc["points"])
            for what in ("frontend", "decode-forms", "tiling", "decode-schedule", "schedule")}
    reused = ", ".join(f"{what} {n}" for what, n in took.items())
    return ("One point's compile in its worker (pool run): " + "; ".join(parts) + ". Points "
            f"that reused earlier work of their worker (`reused` in sweep.json): {reused}.")


def _quality(hinted: dict, cold: dict) -> str:
    pairs = [(h, c) for h, c in zip(hinted["points"], cold["points"], strict=True)
             if h["status"] == c["status"] == "ok" and h["hinted_by"] is not None]
    if not pairs:
        return ""
    hops = sorted(h["byte_hops"] / c["byte_hops"] for h, c in pairs if c["byte_hops"])
    rate = sorted(h["tokens_per_s"] / c["tokens_per_s"] for h, c in pairs)
    off = sum(h["offchip_bytes_per_token"] > c["offchip_bytes_per_token"] for h, c in pairs)
    same_status = sum(h["status"] == c["status"]
                      for h, c in zip(hinted["points"], cold["points"], strict=True))
    return (f"Warm-started against from scratch, the {len(pairs)} hinted points: byte-hops "
            f"ratio median {statistics.median(hops):.2f} (range {hops[0]:.2f}-{hops[-1]:.2f}; "
            f"below 1 is better), tokens/s ratio median {statistics.median(rate):.2f} (range "
            f"{rate[0]:.2f}-{rate[-1]:.2f}), more off-chip bytes at {off} point(s); same "
            f"status at {same_status} of {len(cold['points'])} points.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cold", action="store_true", help="also the pool with --no-hints")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    ap.add_argument("--vary", action="append", help="replace the axes (a smaller variant)")
    ap.add_argument("--model", nargs=2, metavar=("MODEL", "TARGET"), help="(a smoke test)")
    args = ap.parse_args()
    if args.model:
        MODEL[:] = [args.model[0], "-t", args.model[1]]
    axes = [a for v in args.vary for a in ("--vary", v)] if args.vary else AXES
    w, tl = args.workers, args.time_limit
    runs: dict[str, dict] = {}
    plan = [("pool", "pool", "pool"), ("cached", "pool", "pool")]
    plan += [("cold", "pool", "cold")] if args.cold else []
    plan += [] if args.no_ray else [("ray", "ray", "ray")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, backend, where in plan:  # the section is rewritten after each run
            extra = ("--no-hints",) if name == "cold" else ()
            runs[name] = sweep(Path(tmp) / where, axes, backend, w, tl, *extra)
            print(name, f"{runs[name]['wall']:.1f} s", flush=True)
            body = section(runs, axes, w, tl)
            write_section("sweep", body)
    print(body)
    return 0


def section(runs: dict[str, dict], axes: list[str], w: int, tl: float) -> str:
    names = {"pool": "pool, warm starts", "cold": "pool, --no-hints", "ray": "ray, warm starts",
             "cached": "pool, re-run (all cached)"}
    body_rows = [_row(label, runs[k], w, cpu=k != "ray") for k, label in names.items()
                 if k in runs]
    pool = runs["pool"]
    notes = [_stage_note(pool["doc"])]
    if "ray" in runs:
        ray = runs["ray"]["doc"]
        same = sum(a == b for a, b in zip(rows(pool["doc"]), rows(ray), strict=True))
        notes.append(f"Pool and Ray tables identical (every field but timings, the cached flag "
                     f"and what a worker reused): {same} of {len(rows(ray))} points.")
    if "cold" in runs:
        notes.append(_quality(pool["doc"], runs["cold"]["doc"]))
    return (
        f"`wafer sweep {' '.join(MODEL)} {' '.join(axes)} --time-limit {tl:g} "
        f"--workers {w}` as one process, into an empty SWEEPDIR ({machine()}; load average "
        f"at each run's start / end in the table). `--backend ray` starts a local Ray with "
        f"{w} CPUs for the run (included in its time; its workers' CPU is not counted). "
        f"CPU s: the sweep process and its pool workers.\n\n"
        + table(["run", "points", "wall s", "CPU s", "s per point per worker", "computed",
                 "hinted", "placement reused", "statuses", "load"], body_rows)
        + "\n\n" + " ".join(n for n in notes if n)
    )


if __name__ == "__main__":
    sys.exit(main())
