"""Frontend benchmark: `wafer inspect` on zoo models, wall time and peak RSS per run.
Targets (issue 2): the shape-only 8B model answers in under 5 s and under 1 GB RSS.
Writes the `frontend` section of docs/performance.md."""

from __future__ import annotations

from _harness import WAFER, machine, run, table, write_section

MODELS = ["gpt2-tiny", "gpt2-small", "llama3-8b", "llama3-70b", "llama3.1-405b"]


def main() -> None:
    rows = []
    for name in MODELS:
        best = min((run([*WAFER, "-q", "inspect", name]) for _ in range(2)), key=lambda r: r[0])
        seconds, rss, code, _ = best
        rows.append([name, f"{seconds:.2f}", f"{rss:.0f}", "ok" if code == 0 else f"exit {code}"])
        print(f"{name:16s} {seconds:6.2f} s {rss:7.0f} MB exit {code}", flush=True)
    body = (f"`wafer inspect MODEL` (best of 2, whole process incl. Python start-up; {machine()})."
            "\n\n" + table(["model", "seconds", "peak RSS (MB)", "status"], rows))
    write_section("frontend", body)


if __name__ == "__main__":
    main()
