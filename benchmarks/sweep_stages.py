"""Where a sweep's time goes (issue 18): the 64 points of benchmarks/sweep.py compiled in one
process, in chain order, with one `Reuse` and the same warm starts as the sweep's chains along
the link width; prints each point's CPU seconds per stage (`process_time`, so the CP-SAT
threads count and other load does not) as a JSON line, then the totals. Not a docs section: it
explains the sweep row of docs/performance.md.

    python benchmarks/sweep_stages.py > stages.jsonl
"""

from __future__ import annotations

import json
import sys
import time

from compiler.driver import CompileOptions, Reuse, SolverOptions, compile_model
from compiler.placement.warm import PlacementHint
from compiler.target import load_target
from compiler.tiling.candidates import TilingOptions

SRAM = ("40KiB", "48KiB", "64KiB", "96KiB")
CONTEXT = (2048, 8192, 32768, 131072)
LINKS = ("2", "4", "8", "16")


class StageCpu:
    """on_start / on_stage hooks recording each stage's CPU seconds."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.cpu: dict[str, float] = {}

    def start(self, name: str) -> None:
        self.t0 = time.process_time()

    def stage(self, name: str, seconds: float) -> None:
        self.cpu[name] = round(time.process_time() - self.t0, 2)


def chain(reuse: Reuse, sram: str, context: int) -> list[dict]:
    opts = CompileOptions(tiling=TilingOptions(context=context),
                          solver=SolverOptions(time_limit_s=10))
    rows, hint = [], None
    for i, links in enumerate(LINKS):
        target = load_target("wse3", {"core.sram_bytes": sram, "links.bytes_per_cycle": links})
        hooks, c0 = StageCpu(), time.process_time()
        r = compile_model("llama3-8b", target, opts, hooks.stage, on_start=hooks.start,
                          reuse=reuse, hint=hint)
        kind = "head" if i == 0 else "warm" if "hint" in r.reused else "cold"
        rows.append({"sram": sram, "context": context, "links": links, "kind": kind,
                     "cpu": round(time.process_time() - c0, 2), **hooks.cpu})
        print(json.dumps(rows[-1]), flush=True)
        hint = PlacementHint.of(r.problem, r.placement)
    return rows


def main() -> int:
    reuse = Reuse()
    rows = [row for sram in SRAM for context in CONTEXT for row in chain(reuse, sram, context)]
    stages = [k for k in rows[0] if k not in ("sram", "context", "links", "kind", "cpu")]
    for label, keep in (("all", lambda r: True), ("heads", lambda r: r["kind"] == "head"),
                        ("warm", lambda r: r["kind"] == "warm"),
                        *((f"context {c}", lambda r, c=c: r["context"] == c) for c in CONTEXT)):
        mine = [r for r in rows if keep(r)]
        print(label, len(mine), "points", round(sum(r["cpu"] for r in mine), 1), "CPU s:",
              {s: round(sum(r.get(s, 0.0) for r in mine), 1) for s in stages})
    return 0


if __name__ == "__main__":
    sys.exit(main())
