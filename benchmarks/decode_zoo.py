"""Decode benchmark (issue 14): prefill + 32 greedy decode steps of every causal zoo model with
weights, on wse3 and on a small mesh, each as one `wafer compile --verify --decode 32 --json`
process. Target: greedy tokens identical to ONNX Runtime's and per-step max abs error <= 1e-4
(fp32). Writes the `decode-zoo` section of docs/performance.md.

--moe: the tiny mixture-of-experts exports of tests/fixtures/moe/ (Mixtral, Qwen2-MoE with a
shared expert, OLMoE; input_ids + attention_mask and token-id-only forms) on wse3 and mesh8x8,
at their default dims (batch 1, prompt 8): the `decode-moe` section (issue 16, first target)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from _harness import WAFER, machine, run, table, write_section

STEPS = 32
MODELS = ["gpt2-tiny", "llama-tiny", "llama-tiny-opset23", "gpt2-small"]
TARGETS = ["mesh16x16", "wse3"]
MOE_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "moe"
MOE_MODELS = [f"{family}_batched_mm_dynamo{form}" for family in ("mixtral", "qwen2moe", "olmoe")
              for form in ("", "_ids")]
MOE_TARGETS = ["mesh8x8", "wse3"]
HEADER = ["model", "target", "exit", "tokens identical to ORT", "worst step max abs",
          "decode tokens/s (model)", "wall s", "peak RSS MB"]


def case(model: str, target: str, tmp: Path, source: str | None = None) -> list[object]:
    out = tmp / f"{model}-{target}"
    argv = [*WAFER, "-q", "compile", source or model, "-t", target, "-o", str(out), "--verify",
            "--decode", str(STEPS), "--json"]
    seconds, rss, code, stdout = run(argv)
    row: list[object] = [model, target, code]
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        return [*row, "-", "-", "-", f"{seconds:.1f}", f"{rss:.0f}"]
    dec = doc.get("decode") or {}
    steps = dec.get("steps", [])
    same = sum(s["token"] == s["reference_token"] for s in steps)
    worst = max((s["max_abs"] for s in steps), default=None)
    rate = doc.get("tokens_per_s")
    return [*row, f"{same} of {len(steps)}" if steps else "no decode run",
            f"{worst:.1e}" if worst is not None else "-",
            f"{rate:,.0f}" if rate else "-", f"{seconds:.1f}", f"{rss:.0f}"]


def main(argv: list[str]) -> int:
    if "--moe" in argv:
        return moe()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            for target in TARGETS:
                rows.append(case(model, target, Path(tmp)))
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    body = (f"`wafer compile MODEL -t TARGET --verify --decode {STEPS} --json` per row: prefill "
            f"at the zoo prompt length, then {STEPS} greedy decode steps run by the executor with "
            "the KV cache in per-core SRAM, each step's logits and token compared with ONNX "
            f"Runtime ({machine()}; load average {load:.1f} when it started). Exit 0 = every "
            "step passed; a model without a decode schedule verifies prefill only and says so."
            "\n\n" + table(HEADER, rows))
    write_section("decode-zoo", body)
    return 0


def moe() -> int:
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in MOE_MODELS:
            for target in MOE_TARGETS:
                rows.append(case(model, target, Path(tmp), str(MOE_DIR / f"{model}.onnx")))
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    body = (f"`wafer compile tests/fixtures/moe/EXPORT.onnx -t TARGET --verify --decode {STEPS} "
            "--json` per row, at the exports' default dims (batch 1, 8-token prompt; context "
            f"8 + {STEPS}): prefill, then {STEPS} greedy decode steps on the executor, each "
            "token routed by its own router to its k experts, every step's logits and token "
            f"compared with ONNX Runtime, fp32 ({machine()}; load average {load:.1f} when it "
            "started). Exit 0 = prefill and every decode step passed."
            "\n\n" + table(HEADER, rows))
    write_section("decode-moe", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
