"""BERT-base sentence-embedding benchmark (issue 15): a 12-layer, hidden-768 BERT exported as
sentence-transformers does (TorchScript, opset 17, mean-pooling tail, int64 ids and mask; seeded
random weights), compiled and verified on WSE-3 at seq 128 and 512. Target: compile + verify
<= 30 s at seq 128. Writes the `bert-base` section of docs/performance.md.

The ~440 MB model is exported into a temporary directory by tools/export_real.py, run with a
Python that has torch and transformers (the [hf] extra): this one if it can import them, else
$WAFER_TORCH_PYTHON; without one the benchmark says so and exits 0 without writing.
`--model FILE` reuses an export made before (`tools/export_real.py sentence` with the sizes
below).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import ROOT, WAFER, machine, table, write_section

SEQS = (128, 512)
BERT_BASE = ["--layers", "12", "--hidden", "768", "--heads", "12", "--ffn", "3072",
             "--vocab", "30522", "--positions", "512"]


def torch_python() -> str | None:
    if all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        return sys.executable
    other = os.environ.get("WAFER_TORCH_PYTHON")
    return other if other and Path(other).exists() else None


def export(python: str, path: Path) -> None:
    subprocess.run([python, str(ROOT / "tools" / "export_real.py"), "sentence", "--out",
                    str(path), *BERT_BASE], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def run(argv: list[str]) -> tuple[float, float, float, int, str, str]:
    """(wall s, CPU s (user + sys), peak RSS MB, exit code, stdout, last stderr line) of one
    child process (os.wait4: its own rusage); on a shared machine CPU time says more than wall
    time."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        err.seek(0)
        last = (err.read().strip().splitlines() or [""])[-1]
    code = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code, out, last


def measure(model: Path, seq: int, out: Path) -> list[str]:
    seconds, cpu, rss, code, stdout, err = run([
        *WAFER, "-q", "compile", str(model), "-t", "wse3", "--batch", "1", "--seq-len", str(seq),
        "-o", str(out), "--verify", "--json"])
    label = f"seq {seq}"
    if code != 0:
        return [label, f"{seconds:.1f}", f"{cpu:.1f}", f"{rss:.0f}", f"exit {code}: {err}", "",
                ""]
    doc = json.loads(stdout)
    stages: dict[str, float] = {}
    for st in doc["stages"]:  # [{name, seconds}], report twice
        stages[st["name"]] = stages.get(st["name"], 0.0) + st["seconds"]
    slow = ", ".join(f"{k} {v:.1f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])[:4])
    error = max(o["max_abs"] for o in doc["verify"]["outputs"])
    return [label, f"{seconds:.1f}", f"{cpu:.1f}", f"{rss:.0f}",
            "PASSED" if doc["verify"]["passed"] else "FAILED", f"{error:.1e}", slow]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        help="an export tools/export_real.py made with these sizes (else made "
                             "here into a temporary directory)")
    args = parser.parse_args()
    python = torch_python()
    if python is None and args.model is None:
        print("bert_base: no Python with torch and transformers (set WAFER_TORCH_PYTHON): skipped")
        return 0
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "bert_base_sentence.onnx"
        if args.model is None:
            export(python, model)
        size = model.stat().st_size
        for seq in SEQS:
            rows.append(measure(model, seq, Path(tmp) / f"out-{seq}"))
            print(" | ".join(rows[-1]), flush=True)
    body = (
        "A BERT-base sentence-embedding model (12 layers, hidden 768, 12 heads, FFN 3072, vocab "
        f"30,522; {size / 1e6:.0f} MB fp32; TorchScript, opset 17, mean-pooling tail, int64 ids "
        "and mask; seeded random weights, tools/export_real.py) compiled and verified on wse3 as "
        "one process: `wafer -q compile MODEL -t wse3 --batch 1 --seq-len S -o OUT --verify "
        f"--json` ({machine()}; `uptime` load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} when it started). Target: <= 30 s at seq 128.\n\n" + table(
            ["prompt", "compile + verify s", "CPU s (user + sys)", "peak RSS MB",
             "verify", "max abs error", "slowest stages (s)"], rows))
    write_section("bert-base", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
