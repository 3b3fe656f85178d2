"""Placement benchmark (issue 3): `wafer compile` on the zoo's big models, per row the whole
compile's wall time and peak RSS, off-chip bytes per token against the analytic lower bound, and
NoC byte-hops against first-fit and against the separation bound. Targets: 8B on wse3 <= 20 s,
70B on 4 wafers <= 60 s, 405B <= 120 s; off-chip at the bound whenever the model fits;
byte-hops >= 30% below first-fit and within 1.25x of the bound.
Writes the `placement` section of docs/performance.md."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from _harness import WAFER, machine, run, table, write_section

CASES = [  # (model, target, extra flags)
    ("gpt2-small", "wse3", []),
    ("llama3-8b", "wse3", ["--context", "8192"]),
    ("llama3-8b", "wse3", ["--context", "131072"]),
    ("llama3-70b", "wse3-x4", []),
    ("llama3.1-405b", "wse3-x24", []),
]


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f}"


def bench(model: str, target: str, extra: list[str], out: Path) -> list[object]:
    seconds, rss, code, _ = run([*WAFER, "-q", "compile", model, "-t", target, "-o", str(out),
                                 "--force", *extra])
    label = f"{model} on {target} {' '.join(extra)}".strip()
    if code != 0:
        return [label, f"{seconds:.1f}", f"{rss:.0f}", f"exit {code}", "", "", "", "", "", ""]
    doc = json.loads((out / "placement.json").read_text())
    m, s = doc["metrics"], doc["solver"]
    ff, same = m["first_fit"], m.get("first_fit_same_options")
    vs_ff = f"{m['byte_hops'] / ff['byte_hops'] - 1:+.0%}" if ff and ff["byte_hops"] else "n/a"
    vs_same = (f"{m['byte_hops'] / same['byte_hops'] - 1:+.0%}" if same and same["byte_hops"]
               else "cannot shelve")
    return [label, f"{seconds:.1f}", f"{rss:.0f}",
            f"{_mb(m['offchip_bytes_per_token'])} / {_mb(m['offchip_lower_bound'])}",
            f"{m['byte_hops']:.4g}", vs_same, vs_ff, f"{m['byte_hops_ratio_to_bound']:.2f}x",
            f"{m['cores_used']:,} on {m['wafers_used']}", f"{s['status']}"]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (model, target, extra) in enumerate(CASES):
            row = bench(model, target, extra, Path(tmp) / f"out{i}")
            print(" | ".join(map(str, row)), flush=True)
            rows.append(row)
    header = ["model / target", "compile s", "peak RSS MB", "off-chip MB/token (got / bound)",
              "byte-hops/token", "vs first-fit, same rectangles", "vs first-fit's own choice",
              "vs bound", "cores on wafers", "solver"]
    body = (f"`wafer compile` with default options (deterministic CP-SAT, 1 worker; {machine()})."
            "\n\n" + table(header, rows))
    write_section("placement", body)


if __name__ == "__main__":
    sys.exit(main())
