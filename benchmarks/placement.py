"""Placement benchmark (issue 3): `wafer compile` on the zoo's big models, per row the whole
compile's wall time and peak RSS, off-chip bytes per token against the analytic lower bound, and
NoC byte-hops against first-fit and against the separation bound. Targets: 8B on wse3 <= 20 s,
70B on 4 wafers <= 60 s, 405B <= 120 s; off-chip at the bound whenever the model fits;
byte-hops >= 30% below first-fit and within 1.25x of the bound. MoE giants (issue 16): each
<= 60 s, with its expected / worst-case decode rates. `--moe` runs only those.
Writes the `placement` and `placement_moe` sections of docs/performance.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import PERF_DOC, WAFER, machine, table, write_section

CASES = [  # (model, target, extra flags)
    ("gpt2-small", "wse3", []),
    ("llama3-8b", "wse3", ["--context", "8192"]),
    ("llama3-8b", "wse3", ["--context", "131072"]),
    ("llama3-70b", "wse3-x4", []),
    ("llama3.1-405b", "wse3-x24", []),
]


# MoE giants (issue 16), each on the smallest WSE-3 cluster that holds it: the first target of
# its list that compiles with every layer resident (off-chip bytes at the bound); exit 5 ("does
# not fit") or a placement that streams weights moves on to the next.
MOE_CASES = [
    ("mixtral-8x7b", ["wse3-x3", "wse3-x4"]),  # `wafer check`: >= 3 wafers
    ("qwen3-30b-a3b", ["wse3-x2", "wse3-x3"]),  # >= 2
    # `wafer check`: >= 2 (MXFP4 experts; 7 in fp16), but on 2 the rectangles do not all fit
    # and some stream their weights (13 tokens/s); 3 hold it
    ("gpt-oss-120b", ["wse3-x3", "wse3-x4"]),
    ("qwen3-235b-a22b", ["wse3-x12", "wse3-x16"]),
    ("llama4-maverick", ["wse3-x24", "wse3-x32"]),  # >= 20; resident on 24 since the 60-cycle specs
]


STAGES = ("frontend", "tiling", "placement", "schedule", "performance")  # wall, compile_log.json
DENSE_STAGES = ("frontend", "tiling", "placement", "decode")  # the dense table's


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f}"


def bench(model: str, target: str, extra: list[str], out: Path) -> list[object]:
    seconds, cpu, rss, code = _run_cpu([*WAFER, "-q", "compile", model, "-t", target, "-o",
                                        str(out), "--force", *extra])
    label = f"{model} on {target} {' '.join(extra)}".strip()
    if code != 0:
        return [label, f"{seconds:.1f}", f"{cpu:.1f}", "", f"{rss:.0f}", f"exit {code}",
                *[""] * 7]
    doc = json.loads((out / "placement.json").read_text())
    times = json.loads((out / "compile_log.json").read_text())["stage_seconds"]
    stages = " / ".join(f"{times.get(k, 0.0):.1f}" for k in DENSE_STAGES)
    m, s = doc["metrics"], doc["solver"]
    ff, same = m["first_fit"], m.get("first_fit_same_options")
    vs_ff = f"{m['byte_hops'] / ff['byte_hops'] - 1:+.0%}" if ff and ff["byte_hops"] else "n/a"
    vs_same = (f"{m['byte_hops'] / same['byte_hops'] - 1:+.0%}" if same and same["byte_hops"]
               else "cannot shelve")
    return [label, f"{seconds:.1f}", f"{cpu:.1f}", stages, f"{rss:.0f}",
            f"{_mb(m['offchip_bytes_per_token'])} / {_mb(m['offchip_lower_bound'])}",
            f"{m['byte_hops']:.4g}", vs_same, vs_ff, f"{m['byte_hops_ratio_to_bound']:.2f}x",
            f"{m['cores_used']:,} on {m['wafers_used']}", f"{s['status']}",
            f"{doc['performance']['decode']['tokens_per_s']:,.0f}"]


def _run_cpu(argv: list[str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds (user + sys), peak RSS MB, exit code) of one child; a
    failing child's error line is printed (the table keeps only its exit code)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            lines = [line for line in err.read().splitlines() if line.startswith("error:")]
            print(f"{' '.join(argv[3:])}: exit {code}: {lines[-1] if lines else '?'}",
                  file=sys.stderr, flush=True)
    return (time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
            code)


def bench_moe(model: str, targets: list[str], out: Path) -> list[object]:
    """Compile on the first target that holds the model; the row adds the MoE decode rates."""
    for target in targets:
        wall, cpu, rss, code = _run_cpu([*WAFER, "-q", "compile", model, "-t", target, "-o",
                                         str(out), "--force"])
        if code not in (0, 5):
            break
        if code == 0:
            m = json.loads((out / "placement.json").read_text())["metrics"]
            if m["offchip_bytes_per_token"] <= m["offchip_lower_bound"]:
                break
    label = f"{model} on {target}"
    if code != 0:
        return [label, f"{wall:.1f}", f"{cpu:.1f}", "", f"{rss:.0f}", f"exit {code}", *[""] * 7]
    doc = json.loads((out / "placement.json").read_text())
    m, s, moe = doc["metrics"], doc["solver"], doc["moe"]
    dense = doc["performance"]["decode"]["tokens_per_s"]
    times = json.loads((out / "compile_log.json").read_text())["stage_seconds"]
    stages = " / ".join(f"{times.get(k, 0.0):.1f}" for k in STAGES)
    streamed = sum(r["residency"] != "resident" for r in moe["regions"])
    return [label, f"{wall:.1f}", f"{cpu:.1f}", stages, f"{rss:.0f}", f"{m['byte_hops']:.4g}",
            f"{m['byte_hops_ratio_to_bound']:.2f}x", f"{m['cores_used']:,} on {m['wafers_used']}",
            s["status"], f"{streamed} of {len(moe['regions'])}",
            f"{moe['expected_tokens_per_s']:,.0f}", f"{moe['worst_tokens_per_s']:,.0f}",
            f"{dense:,.0f}"]


def main() -> None:
    """No flag: every table. `--dense`: only the dense models. `--moe`: only the MoE giants.
    `--moe MODEL ...`: only those giants, their rows replaced in the section as it stands (the
    others kept)."""
    args = sys.argv[1:]
    moe_only, dense_only = "--moe" in args, "--dense" in args
    names = [a for a in args if a not in ("--moe", "--dense")]
    with tempfile.TemporaryDirectory() as tmp:
        if not moe_only:
            _dense(Path(tmp))
        if not dense_only:
            _moe(Path(tmp), names)


def _dense(tmp: Path) -> None:
    load = os.getloadavg()[0]
    rows = []
    for i, (model, target, extra) in enumerate(CASES):
        row = bench(model, target, extra, tmp / f"out{i}")
        print(" | ".join(map(str, row)), flush=True)
        rows.append(row)
    header = ["model / target", "compile s", "CPU s",
              f"stage s ({' / '.join(DENSE_STAGES)})", "peak RSS MB",
              "off-chip MB/token (got / bound)",
              "byte-hops/token", "vs first-fit, same rectangles", "vs first-fit's own choice",
              "vs bound", "cores on wafers", "solver", "decode tokens/s"]
    body = (f"`wafer compile` with default options (deterministic CP-SAT, 1 worker; {machine()}; "
            f"load average {load:.1f} when it started, {os.getloadavg()[0]:.1f} when it ended, "
            "`uptime`; compile s: the whole `wafer compile` process, wall; CPU s: its user + "
            "system seconds; stage s: compile_log.json's wall seconds)."
            "\n\n" + table(header, rows))
    write_section("placement", body)


def _moe(tmp: Path, names: list[str]) -> None:
    load = os.getloadavg()[0]
    kept = _kept_rows() if names else {}
    rows = []
    for i, (model, targets) in enumerate(MOE_CASES):
        if names and model not in names:
            rows.append(kept[model])
            continue
        row = bench_moe(model, targets, tmp / f"moe{i}")
        print(" | ".join(map(str, row)), flush=True)
        rows.append(row)
    header = ["model / target", "compile s (wall)", "CPU s",
              "stages s (" + ", ".join(STAGES) + ")", "peak RSS MB", "byte-hops/token",
              "vs bound", "cores on wafers", "solver", "expert regions streamed",
              "decode tokens/s expected", "worst case", "every expert run"]
    body = (f"MoE giants, shape-only, each on the smallest WSE-3 cluster that holds it: `wafer "
            f"compile` with default options (deterministic CP-SAT, 1 worker, 30 s limit; "
            f"{machine()}; load average {load:.1f} when it started, "
            f"{os.getloadavg()[0]:.1f} when it ended, `uptime`"
            f"{'; re-run alone: ' + ', '.join(names) if names else ''}). Decode at batch "
            "1: expected over uniform routing, worst case (every token to the same k experts "
            "in the groups farthest from the router), and the schedule as built (every expert "
            "on every token)."
            "\n\n" + table(header, rows))
    write_section("placement_moe", body)


def _kept_rows() -> dict[str, list[str]]:
    """The MoE table's rows as docs/performance.md has them, by model."""
    text = PERF_DOC.read_text()
    section = text[text.index("<!-- placement_moe:start -->"):text.index("<!-- placement_moe:end")]
    rows = [line.strip("|").split(" | ") for line in section.splitlines()
            if line.startswith("| ") and " on wse3" in line]
    return {row[0].strip().split(" on ")[0]: [c.strip() for c in row] for row in rows}


if __name__ == "__main__":
    sys.exit(main())
