"""Calibration of the performance model against published decode rates (hardware.md).

One free parameter, the runtime's per-step overhead (`runtime.step_overhead_cycles` in the
target specs), is fitted on ONE published number (FIT below) by bisection; the other cases are
predicted with the same value and their error reported. Never tuned per model. Writes the
`calibration` section of docs/performance.md.

Usage: python benchmarks/calibration.py [--fit NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from _harness import machine, table, write_section

from compiler.driver import CompileOptions, compile_model
from compiler.schedule.perf import PerfOptions, estimate, streamed_kv_cycles
from compiler.tiling.candidates import TilingOptions

CONTEXT = 2048
CASES = {  # name: (model, target, published decode tokens/s at batch 1, source)
    "cerebras-8b": ("llama3-8b", "wse3", 1800, "Cerebras Inference, Llama 3.1 8B, 1 WSE-3"),
    "cerebras-70b": ("llama3-70b", "wse3-x4", 450, "Cerebras Inference, Llama 3.1 70B, 4 WSE-3"),
    "waferllm-8b": ("llama3-8b", "wse2", 2700, "WaferLLM (OSDI 2025), Llama3-8B, 1 WSE-2"),
}
FIT = "cerebras-8b"


def _with_overhead(target, cycles: int):
    return dataclasses.replace(target, runtime=dataclasses.replace(
        target.runtime, step_overhead_cycles=cycles))


def predict(result, overhead: int) -> float:
    target = _with_overhead(result.target, overhead)
    kv = {lt.layer: lt.kv_bytes for lt in result.tiled.layers if lt.kv_bytes}
    reads = streamed_kv_cycles(result.schedule, target, kv)
    return estimate(result.schedule, target, PerfOptions("decode"), reads).tokens_per_s


def fit(result, published: float) -> int:
    lo, hi = 0, 20000  # tokens/s falls as the overhead grows
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if predict(result, mid) > published else (lo, mid)
    return lo


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit", default=FIT, choices=sorted(CASES))
    args = ap.parse_args()
    compiled = {}
    for name, (model, target, _, _) in CASES.items():
        opts = CompileOptions(tiling=TilingOptions(context=CONTEXT))
        compiled[name] = compile_model(model, target, opts)
        print(f"compiled {name}", file=sys.stderr, flush=True)
    overhead = fit(compiled[args.fit], CASES[args.fit][2])
    rows = []
    for name, (model, target, published, source) in CASES.items():
        got = predict(compiled[name], overhead)
        role = "fitted" if name == args.fit else "predicted"
        off = compiled[name].metrics.offchip_bytes_per_token
        rows.append([source, f"{model} on {target}", f"{published:,}", f"{got:,.0f}",
                     f"{got / published - 1:+.0%}", role, f"{off / 1e6:,.2f}"])
        print(rows[-1], flush=True)
    body = (f"Decode, batch 1, context {CONTEXT:,}, fp16. Free parameter: the per-step runtime "
            f"overhead, fitted on **{args.fit}** to **{overhead} cycles**; every other number "
            f"uses the same value ({machine()}).\n\n"
            + table(["published", "model / target", "published tokens/s", "predicted",
                     "error", "", "off-chip MB/token"], rows))
    write_section("calibration", body)
    print(f"step_overhead_cycles = {overhead}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
