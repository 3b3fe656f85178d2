"""HF family coverage: `wafer compile FIXTURE -t TARGET -o OUT --verify` on every export in
tests/fixtures/hf/ (ten causal-LM families, no-cache and with-past forms, made by
tools/export_hf.py), on a small mesh and on WSE-3. Each cell is the verify result or the exact
refusal (exit code and the error line). Writes the `hf-families` section of docs/performance.md.

Both forms are compiled at batch 1, seq 16 (`--batch 1 --seq-len 16`; a with-past file at past
length 0, its past/present mapped onto the resident KV cache) with `--decode 32`: prefill
verified, then 32 greedy decode steps against ONNX Runtime. Every family decodes; one that did
not would show its refusal (exit 4, "no decode schedule") in its cell.

    python benchmarks/hf_families.py [--targets mesh8x8,wse3] [--families mistral,...] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import ROOT, WAFER, machine, table, write_section

HF = ROOT / "tests" / "fixtures" / "hf"
TARGETS = ("mesh8x8", "wse3")
SEQ = 16
STEPS = 32


def compile_cell(entry: dict[str, Any], target: str, steps: int) -> tuple[str, float]:
    """(the table cell, seconds) for one compile --verify --decode STEPS: the verify results,
    or the exit code and error line."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [*WAFER, "-q", "compile", str(HF / entry["file"]), "-t", target,
                "-o", str(Path(tmp) / "out"), "--verify", "--json", "--no-report",
                "--batch", "1", "--seq-len", str(SEQ), "--decode", str(steps)]
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    error = next((ln for ln in done.stderr.splitlines() if ln.startswith("error:")), "")
    if done.returncode == 0:
        doc = json.loads(done.stdout)
        worst = max(o["max_abs"] for o in doc["verify"]["outputs"])
        cell = f"verified (max abs err {worst:.1e})"
        if doc.get("decode"):
            steps = doc["decode"]["steps"]
            same = sum(st["token"] == st["reference_token"] for st in steps)
            cell += (f"; decode {len(steps) - 1} steps: {same} of {len(steps)} tokens as ORT, "
                     f"max abs {max(st['max_abs'] for st in steps):.1e}")
        return cell, seconds
    short = error.replace("|", "\\|")
    short = short[:397] + "..." if len(short) > 400 else short
    return f"exit {done.returncode}: `{short}`", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--families", default="")
    parser.add_argument("--steps", type=int, default=STEPS, help="decode steps (--decode N)")
    args = parser.parse_args()
    manifest = json.loads((HF / "MANIFEST.json").read_text())
    families = set(filter(None, args.families.split(",")))
    entries = [e for e in manifest["fixtures"] if not families or e["family"] in families]
    rows, total = [], 0.0
    for entry in entries:
        for target in args.targets.split(","):
            cell, seconds = compile_cell(entry, target, args.steps)
            total += seconds
            label = f"{entry['exporter']} op{entry['opset']}"
            rows.append([entry["family"], entry["form"], label, target, cell, f"{seconds:.0f}"])
            print(f"{entry['name']:44s} {target:8s} {seconds:5.0f} s {cell}", flush=True)
    body = (
        f"`wafer compile FIXTURE -t TARGET -o OUT --verify --decode {args.steps} --batch 1 "
        f"--seq-len {SEQ}` on every file of tests/fixtures/hf/ (`python "
        "benchmarks/hf_families.py`; a with-past file at past length 0, its caches resident). "
        "Whole processes, "
        f"{total:.0f} s in all, on a shared machine ({machine()}).\n\n"
        + table(["family", "form", "export", "target", "result", "s"], rows)
    )
    write_section("hf-families", body)


if __name__ == "__main__":
    main()
