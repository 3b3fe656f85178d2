"""Sweep benchmark (issue 8): a 64-point co-design sweep of the Llama 3 8B shapes on WSE-3
variants (4 SRAM sizes x 4 link widths x 4 context lengths), wall time on the local process
pool and on a local Ray, each into an empty SWEEPDIR; then the same sweep again, all cached.
Both backends must give the same table. Writes the `sweep` section of docs/performance.md.

    python benchmarks/sweep.py [--time-limit S] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _harness import WAFER, machine, run, table, write_section

AXES = ["--vary", "core.sram_bytes=40KiB,48KiB,64KiB,96KiB",
        "--vary", "links.bytes_per_cycle=2,4,8,16",
        "--vary", "context=2048,8192,32768,131072"]
RUN_ONLY = ("compile_s", "verify_s", "cached", "reused")  # how, not what (per worker)


def sweep(out: Path, backend: str, workers: int, time_limit: float) -> tuple[float, dict]:
    argv = [*WAFER, "-q", "sweep", "llama3-8b", "-t", "wse3", *AXES, "--time-limit",
            str(time_limit), "--workers", str(workers), "--backend", backend, "-o", str(out)]
    seconds, _, code, _ = run(argv)
    if code != 0:
        raise SystemExit(f"{backend}: wafer sweep exited {code}")
    return seconds, json.loads((out / "sweep.json").read_text())


def rows(doc: dict) -> list[dict]:
    return [{k: v for k, v in p.items() if k not in RUN_ONLY} for p in doc["points"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("pool", "ray"):
            results[backend] = sweep(Path(tmp) / backend, backend, args.workers,
                                     args.time_limit)
            print(backend, f"{results[backend][0]:.1f} s", flush=True)
        cached_s, cached = sweep(Path(tmp) / "pool", "pool", args.workers, args.time_limit)
    pool, ray = results["pool"][1], results["ray"][1]
    same = sum(a == b for a, b in zip(rows(pool), rows(ray), strict=True))
    n = pool["run"]["points"]
    status = ", ".join(f"{v} {k}" for k, v in pool["run"]["status"].items() if v)
    point_s = sorted(p["compile_s"] for p in pool["points"])
    body_rows = [
        [backend, n, f"{s:.0f}", f"{s * args.workers / n:.1f}", doc["run"]["computed"], status]
        for backend, (s, doc) in results.items()
    ] + [["pool, re-run (all cached)", n, f"{cached_s:.1f}", "-", cached["run"]["computed"],
          status]]
    body = (
        f"`wafer sweep llama3-8b -t wse3 {' '.join(AXES)} --time-limit {args.time_limit:g} "
        f"--workers {args.workers}` as one process, into an empty SWEEPDIR ({machine()}; "
        f"load average {load:.1f} when it started). `--backend ray` starts a local Ray with "
        f"{args.workers} CPUs for the run (included in its time).\n\n"
        + table(["backend", "points", "wall s", "s per point per worker", "computed",
                 "statuses"], body_rows)
        + f"\n\nOne point's compile in its worker: median {point_s[n // 2]:.1f} s, range "
        f"{point_s[0]:.1f}-{point_s[-1]:.1f} s (pool run). Pool and Ray tables identical "
        f"(every field but timings and the cached flag): {same} of {n} points."
    )
    write_section("sweep", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
