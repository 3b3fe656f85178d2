"""HF family coverage: `wafer compile FIXTURE -t TARGET -o OUT --verify` on every export in
tests/fixtures/hf/ (ten causal-LM families, no-cache and with-past forms, made by
tools/export_hf.py), on a small mesh and on WSE-3. Each cell is the verify result or the exact
refusal (exit code and the error line). Writes the `hf-families` section of docs/performance.md.

No-cache files are compiled at batch 1, seq 16 (`--batch 1 --seq-len 16`). With-past files are
compiled as one decode step: one new token after PAST cached ones (every input's shape given with
`--input-shapes`), which is what a with-past export means; wafer's decode from with-past exports
is issue 14's work, so today's answer is recorded, not required.

    python benchmarks/hf_families.py [--targets mesh8x8,wse3] [--families mistral,...]
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
SEQ, PAST = 16, 15


def shape_flags(entry: dict[str, Any]) -> list[str]:
    """--batch/--seq-len for a no-cache file; every input's shape for a with-past decode step."""
    if entry["form"] == "nocache":
        return ["--batch", "1", "--seq-len", str(SEQ)]
    shapes = {"input_ids": [1, 1], "attention_mask": [1, PAST + 1]}
    for value in entry["inputs"][2:]:
        shapes[value["name"]] = [1, value["shape"][1], PAST, value["shape"][3]]
    text = ",".join(f"{name}:[{','.join(map(str, dims))}]" for name, dims in shapes.items())
    return ["--input-shapes", text]


def compile_cell(entry: dict[str, Any], target: str) -> tuple[str, float]:
    """(the table cell, seconds) for one compile --verify."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [*WAFER, "-q", "compile", str(HF / entry["file"]), "-t", target,
                "-o", str(Path(tmp) / "out"), "--verify", "--json", "--no-report",
                *shape_flags(entry)]
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if done.returncode == 0:
        verify = json.loads(done.stdout)["verify"]
        worst = max(o["max_abs"] for o in verify["outputs"])
        return f"verified (max abs err {worst:.1e})", seconds
    error = next((ln for ln in done.stderr.splitlines() if ln.startswith("error:")), "")
    error = error.replace("|", "\\|")
    if len(error) > 400:
        error = error[:397] + "..."
    return f"exit {done.returncode}: `{error}`", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--families", default="")
    args = parser.parse_args()
    manifest = json.loads((HF / "MANIFEST.json").read_text())
    families = set(filter(None, args.families.split(",")))
    entries = [e for e in manifest["fixtures"] if not families or e["family"] in families]
    rows, total = [], 0.0
    for entry in entries:
        for target in args.targets.split(","):
            cell, seconds = compile_cell(entry, target)
            total += seconds
            label = f"{entry['exporter']} op{entry['opset']}"
            rows.append([entry["family"], entry["form"], label, target, cell, f"{seconds:.0f}"])
            print(f"{entry['name']:44s} {target:8s} {seconds:5.0f} s {cell}", flush=True)
    body = (
        "`wafer compile FIXTURE -t TARGET -o OUT --verify` on every file of tests/fixtures/hf/ "
        "(`python benchmarks/hf_families.py`; no-cache at `--batch 1 --seq-len 16`, with-past "
        f"as one decode step: 1 new token after {PAST} cached, shapes from `--input-shapes`). "
        f"Whole processes, {total:.0f} s in all, on a shared machine ({machine()}).\n\n"
        + table(["family", "form", "export", "target", "result", "s"], rows)
    )
    write_section("hf-families", body)


if __name__ == "__main__":
    main()
