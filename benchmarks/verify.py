"""Verification benchmark (issue 5): compile + verify wall time per model, and the executor's
time against ONNX Runtime's for the same forward pass. Targets: GPT-2 small at seq 128 on wse3
compile + verify <= 30 s; executor <= 5x ORT; tiny models <= 2 s; fp32 max abs error <= 1e-4.
Writes the `verify` section of docs/performance.md."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from _harness import WAFER, best_of, machine, run, table, write_section

from compiler.driver import CompileOptions, compile_model
from compiler.executor import run_schedule
from compiler.frontend import DimRequest, FrontendOptions
from compiler.frontend.export import reference_model_bytes
from compiler.verify import random_inputs, run_reference

CASES = [("gpt2-tiny", "mesh8x8", None), ("llama-tiny", "mesh8x8", None),
         ("bert-tiny", "mesh16x16", None), ("llama-tiny-opset23", "mesh8x8", None),
         ("gpt2-small", "wse3", 64), ("gpt2-small", "wse3", 128)]


def forward_times(model: str, target: str, seq: int | None) -> tuple[float, float, float]:
    """(executor s, ORT s, max abs error) for one forward pass on the same inputs."""
    opts = CompileOptions(frontend=FrontendOptions(DimRequest(seq_len=seq)))
    r = compile_model(model, target, opts)
    inputs = random_inputs(r.graph, 0)
    reference_model_bytes(model)  # warm the zoo build out of the timing
    ex = best_of(lambda: run_schedule(r.schedule, r.graph, r.target, inputs))
    ort = best_of(lambda: run_reference(model, inputs))
    got = run_schedule(r.schedule, r.graph, r.target, inputs).outputs
    ref = run_reference(model, inputs)
    err = max(float(abs(got[k] - v).max()) for k, v in ref.items())
    return ex, ort, err


def main() -> int:
    load = os.getloadavg()[0]  # other jobs on the machine slow every column
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, target, seq in CASES:
            flags = ["--seq-len", str(seq)] if seq else []
            out = Path(tmp) / f"{model}-{seq}"
            seconds, rss, code, _ = run([*WAFER, "-q", "compile", model, "-t", target, "-o",
                                         str(out), "--verify", *flags])
            label = f"{model} on {target}" + (f", seq {seq}" if seq else "")
            if code != 0:
                rows.append([label, f"{seconds:.1f}", f"{rss:.0f}", f"exit {code}", "", "", ""])
            else:
                ex, ort, err = forward_times(model, target, seq)
                rows.append([label, f"{seconds:.1f}", f"{rss:.0f}", f"{err:.1e}", f"{ex:.3f}",
                             f"{ort:.3f}", f"{ex / ort:.1f}x"])
            print(" | ".join(rows[-1]), flush=True)
    body = (f"`wafer compile MODEL -t TARGET --verify` as one process (wall time, peak RSS), then "
            f"one forward pass timed in-process, best of 3 ({machine()}; load average "
            f"{load:.1f} when it started).\n\n" + table(
                ["model", "compile + verify s", "peak RSS MB", "max abs error (fp32)",
                 "executor s", "ORT s", "executor / ORT"], rows))
    write_section("verify", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
