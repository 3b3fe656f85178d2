"""Report benchmark (issue 6): how long `wafer view OUT` takes and how big report.html is, for
GPT-2 small on a WSE-3 and Llama 3 70B on four. Targets: the 70B report in well under a few
seconds, its HTML under 2 MB. Writes the `report` section of docs/performance.md.

    .venv/bin/python benchmarks/report.py [--keep DIR]   # DIR keeps the compiled OUTs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _harness import WAFER, best_of, machine, run, table, write_section

from compiler.report import read_out, report_files

CASES = [("gpt2-small", "wse3", ["--seq-len", "64"]), ("llama3-70b", "wse3-x4", [])]


def measure(out: Path) -> list[str]:
    seconds, rss, code, _ = run([*WAFER, "-q", "view", str(out)])
    if code != 0:
        return [f"exit {code}"] + [""] * 6
    html = (out / "report.html").read_text()
    data = sum(p.stat().st_size for p in (out / "report-data").iterdir())
    inproc = best_of(lambda: report_files(read_out(out)))
    shot, _, code, _ = run([*WAFER, "-q", "view", str(out), "--png", str(out / "shot.png")])
    return [f"{seconds:.2f}", f"{inproc:.2f}", f"{rss:.0f}", f"{len(html) / 1e6:.2f}",
            str(html.count("<rect")), f"{data / 1e6:.1f}",
            f"{shot:.1f}" if code == 0 else f"exit {code}"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path, help="compile into (and reuse) OUTs under this dir")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for model, target, flags in CASES:
            out = root / f"{model}-{target}"
            if not (out / "placement.json").exists():
                _, _, code, _ = run([*WAFER, "-q", "compile", model, "-t", target, "-o",
                                     str(out), "--force", "--no-report", *flags])
                if code != 0:
                    rows.append([f"{model} on {target}", f"compile exit {code}"] + [""] * 6)
                    continue
            rows.append([f"{model} on {target}", *measure(out)])
            print(" | ".join(rows[-1]), flush=True)
    body = (f"`wafer view OUT` as one process (wall time including start-up, peak RSS); the "
            f"report built in-process from OUT's files (`report_files(read_out(OUT))`, best of "
            f"3); `wafer view OUT --png` with headless Chromium at 1400x900 ({machine()}).\n\n"
            + table(["compile", "view s", "in-process s", "peak RSS MB", "report.html MB",
                     "SVG rects", "report-data MB", "view --png s"], rows))
    write_section("report", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
