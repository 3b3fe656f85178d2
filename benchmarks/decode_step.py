"""Decode benchmark (issue 14): the executor's time per decode step against ONNX Runtime's
with-past step for GPT-2 small (target: executor <= 5x ORT). gpt2-small is compiled for a WSE-3
with a 128-token prompt and context 160, then prefill + 32 greedy decode steps run on the
executor (KV cache in per-core SRAM, checked against ORT as `verify --decode` does); ORT then
runs `gpt2-small-past` (the same seeded weights, exported with past_key_values / present) on
the executor's tokens one step at a time, presents fed back as pasts, its greedy tokens checked
against the executor's. (gpt2-small-past itself does not compile with its whole prompt resident
on a WSE-3 core budget: its presents are extra outputs.) Writes the `decode` section of
docs/performance.md, with the machine's load (`uptime`) before and after."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import numpy as np
from _harness import machine, table, write_section

from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.tiling.candidates import TilingOptions
from compiler.verify import Artifact, VerifyOptions
from compiler.verify.decode import _Reference, verify_decode

MODEL, PAST, TARGET, PROMPT, STEPS = "gpt2-small", "gpt2-small-past", "wse3", 128, 32


def with_past_steps(prompt: list[int], tokens: list[int]) -> tuple[list[tuple[float, float]],
                                                                   int]:
    """ORT's with-past graph over prompt + tokens: (wall, CPU) seconds of the prompt (step 0,
    at past length 0) and of each decode step, and how many of its greedy tokens are the
    executor's."""
    ref = _Reference(PAST, "input_ids")
    seq, seconds, same = list(prompt), [], 0
    for tok in tokens:
        t0, c0 = time.perf_counter(), time.process_time()
        logits = ref.last_logits(seq, None, "logits")
        seconds.append((time.perf_counter() - t0, time.process_time() - c0))
        same += int(np.argmax(logits[0])) == tok
        seq.append(tok)
    return seconds, same


class CpuClock:
    """verify_decode's per-token hook: the process's CPU seconds between generated tokens (the
    first: prefill), and the wall seconds its own clock measured."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.walls: list[float] = []
        self.t0 = time.process_time()

    def __call__(self, label: str, wall: float) -> None:
        if label.startswith("executor"):
            now = time.process_time()
            self.seconds.append(now - self.t0)
            self.walls.append(wall)
            self.t0 = time.process_time()


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.1f} ms"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    before = uptime()
    t0, c0 = time.perf_counter(), time.process_time()
    opts = CompileOptions(tiling=TilingOptions(context=PROMPT + STEPS, prompt_resident=True),
                          solver=SolverOptions(time_limit_s=10))
    r = compile_model(MODEL, TARGET, opts)
    compile_s, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
    art = Artifact(MODEL, r.graph, r.target, r.schedule)
    cpu = CpuClock()
    rep = verify_decode(art, r.decode.graph, r.decode.schedule, STEPS, VerifyOptions(), cpu)
    tokens = [s.token for s in rep.steps]
    past, same = with_past_steps(list(rep.prompt), tokens)
    after = uptime()
    ex, ort = statistics.median(rep.executor_s), statistics.median(w for w, _ in past[1:])
    ex_cpu, ort_cpu = statistics.median(cpu.seconds[1:]), statistics.median(
        c for _, c in past[1:])
    worst = max(s.check.max_abs for s in rep.steps)
    rows = [
        ["greedy tokens, prefill + 32 decode steps, vs ORT's no-cache model",
         f"{sum(s.token == s.ref_token for s in rep.steps)} of {len(rep.steps)} identical"],
        ["the same vs ORT's with-past graph (gpt2-small-past)",
         f"{same} of {len(tokens)} identical"],
        ["worst logits max abs error (fp32)", f"{worst:.1e}"],
        ["executor per decode step, wall (median of 32; mean)",
         f"{ex * 1e3:.1f} ms; {statistics.mean(rep.executor_s) * 1e3:.1f} ms"],
        ["ONNX Runtime with-past step, wall (median of 32)", f"{ort * 1e3:.1f} ms"],
        ["executor / ORT per decode step, wall (target <= 5x)", f"{ex / ort:.2f}x"],
        ["executor per decode step, CPU (median of 32)", ms(cpu.seconds[1:])],
        ["ONNX Runtime with-past step, CPU (median of 32; all its threads)",
         ms([c for _, c in past[1:]])],
        ["executor / ORT per decode step, CPU", f"{ex_cpu / ort_cpu:.2f}x"],
        ["ONNX Runtime no-cache model on the growing sequence, wall (median)",
         f"{statistics.median(rep.reference_s) * 1e3:.1f} ms"],
        ["prefill (128 tokens): executor, wall; CPU",
         f"{cpu.walls[0]:.2f} s; {cpu.seconds[0]:.2f} s"],
        ["prefill (128 tokens): ORT with-past graph at past length 0, wall; CPU",
         f"{past[0][0]:.2f} s; {past[0][1]:.2f} s"],
        ["decode step, performance model", f"{r.decode.estimate.cycles:,.0f} cycles"],
        ["compile (in-process, incl. the decode stage), wall; CPU",
         f"{compile_s:.0f} s; {compile_cpu:.0f} s"],
    ]
    for row in rows:
        print(" | ".join(row), flush=True)
    body = (f"`python benchmarks/decode_step.py`: {MODEL} on {TARGET}, {PROMPT}-token prompt, "
            f"context {PROMPT + STEPS}, prefill + {STEPS} decode steps on the executor, and ONNX "
            f"Runtime's with-past graph ({PAST}, same weights) on the same tokens, each timed "
            f"per step in one process ({machine()}). Wall and CPU seconds (`time.process_time`: "
            "the whole process, ORT's intra-op threads included) are both given: the machine "
            "is shared.\n\n"
            f"Machine load: `{before}` before, `{after}` after.\n\n"
            + table([f"{MODEL} on {TARGET}", "value"], rows))
    write_section("decode", body)
    return 0 if rep.passed and same == len(tokens) else 1


if __name__ == "__main__":
    sys.exit(main())
