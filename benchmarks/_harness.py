"""Shared benchmark plumbing: run a command as a child process and measure its wall time and
peak RSS (os.wait4 gives that child's own rusage), and rewrite one marked section of
docs/performance.md with a results table."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERF_DOC = ROOT / "docs" / "performance.md"
WAFER = [sys.executable, "-m", "compiler"]


def run(argv: list[str]) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in MB, exit code, stdout) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode, out


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace the text between <!-- name:start --> and <!-- name:end --> in performance.md."""
    text = PERF_DOC.read_text() if PERF_DOC.exists() else "# Performance\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    PERF_DOC.write_text(text)


def best_of(fn, repeat: int = 3) -> float:
    """The fastest of `repeat` calls of fn(), in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
