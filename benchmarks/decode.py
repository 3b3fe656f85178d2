"""Decode benchmark, section `decode-giants`: the decode schedule of shape-only Llama 3 8B on one
WSE-3 at 8k and 128k context (issue 14's giant targets). Per context: the decode schedule's
steps, cycles per decode step and tokens/s (the estimate the summary shows), the KV cache
(all layers, and the fullest core's share, from the caches' tiles in the decode schedule's
layout) and compile seconds (in process: every stage, the decode stage apart). Writes the
`decode-giants` section of docs/performance.md; says the machine's load average."""

from __future__ import annotations

import math
import os
import time
from collections import Counter, defaultdict

from _harness import machine, table, write_section

from compiler.driver import CompileOptions, compile_model
from compiler.tiling.candidates import TilingOptions
from compiler.tiling.layouts import tile_numel

MODEL, TARGET = "llama3-8b", "wse3"
CONTEXTS = (8192, 131072)


def _kv(result) -> tuple[int, int]:
    """(KV-cache bytes of all layers, the fullest core's KV-cache bytes)."""
    plan = result.decode
    g, s = plan.graph.graph, plan.schedule
    total, per_core = 0, defaultdict(int)
    for c in plan.graph.caches:
        t = g.tensor(c.name)
        size = result.target.itemsize(t.dtype)
        total += math.prod(t.shape) * size
        load = next(st for st in s.steps if st.kind == "load" and st.writes[0].tensor == c.name)
        r = s.region(load.region)
        per_core[load.region] += tile_numel(t.shape, load.writes[0].spec, r.rows, r.cols) * size
    return total, max(per_core.values())


def _row(context: int) -> list[object]:
    t0 = time.perf_counter()
    r = compile_model(MODEL, TARGET, CompileOptions(tiling=TilingOptions(context=context)))
    wall = time.perf_counter() - t0
    stages = dict(r.stage_times)
    if r.decode is None:
        return [f"{context:,}", "no decode schedule", "", "", "", "", f"{wall:.1f}", ""]
    s, est = r.decode.schedule, r.decode.estimate
    kinds = Counter(st.kind for st in s.steps)
    total, core = _kv(r)
    print(f"context {context}: {len(s.steps)} steps, {est.cycles} cycles, "
          f"{est.tokens_per_s:.0f} tokens/s, KV {total / 2**30:.2f} GiB, {core} B/core, "
          f"compile {wall:.1f} s (decode stage {stages['decode']:.1f} s)", flush=True)
    return [f"{context:,}", f"{len(s.steps):,} ({kinds['append']} append)", f"{est.cycles:,}",
            f"{est.tokens_per_s:,.1f}", f"{total / 2**30:.2f} GiB", f"{core:,}",
            f"{wall:.1f}", f"{stages['decode']:.1f} (frontend {stages['frontend']:.1f})"]


def main() -> None:
    load = os.getloadavg()
    rows = [_row(c) for c in CONTEXTS]
    after = os.getloadavg()
    body = (
        f"`compile_model('{MODEL}', '{TARGET}', context=C)` in process (CP-SAT, 30 s limit, "
        f"1 worker); {machine()}; load average {load[0]:.1f} before, {after[0]:.1f} after (the "
        "machine is shared: seconds are wall time under that load).\n\n"
        + table(["context", "decode schedule steps", "cycles / decode step", "tokens/s",
                 "KV cache (all layers)", "KV cache, fullest core (B)", "compile (s)",
                 "decode stage (s)"], rows))
    write_section("decode-giants", body)


if __name__ == "__main__":
    main()
