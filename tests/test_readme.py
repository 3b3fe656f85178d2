"""The README's "Use" block runs top to bottom as written (issue 12, item 4): every command line
of it, in order, with the real `wafer` console script, in a fresh directory that holds what a
fresh clone has (tests/fixtures), each exiting 0 and writing what the README says it writes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def use_block() -> list[list[str]]:
    """The commands of the README's first code block under `## Use`: comments dropped,
    backslash continuations joined, one argv per command."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Use\n+```\n(.*?)^```", text, re.S | re.M)
    assert match, "README.md has no code block under '## Use'"
    joined = match.group(1).replace("\\\n", " ")
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _wafer() -> list[str]:
    script = Path(sys.executable).with_name("wafer")  # the console script pip installed
    return [str(script)] if script.exists() else [sys.executable, "-m", "compiler"]


def test_the_block_is_what_this_test_expects():
    """Every line is a wafer command, and the block shows each verb the README describes."""
    commands = use_block()
    assert all(argv[0] == "wafer" for argv in commands)
    verbs = [argv[1] for argv in commands]
    assert {"targets", "inspect", "check", "compile", "verify", "view", "sweep"} <= set(verbs)


def test_the_use_block_runs_top_to_bottom(tmp_path, chromium):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "fixtures").symlink_to(ROOT / "tests" / "fixtures")
    env = {**os.environ, "BROWSER": "true"}  # `view --open`: a browser that opens nothing
    for argv in use_block():
        proc = subprocess.run([*_wafer(), *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # a hang guard
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stderr}"
        assert "error:" not in proc.stderr, f"{shlex.join(argv)}\n{proc.stderr}"
    for written in ("out-8b/placement.json", "out-8b/schedule.json", "out-8b/trace.json",
                    "out/verify.json", "out/report.html", "out-tiny/verify-decode.json",
                    "shot.png", "sweep/sweep.csv",
                    "sweep/sweep.json", "sweep/sweep.html", "sweep.png"):
        assert (tmp_path / written).stat().st_size > 0, written


@pytest.mark.parametrize("line", range(len(use_block())))
def test_each_line_parses(line):
    """Each line is accepted by the parser as written (a fast check that names the bad line)."""
    from compiler.cli import build_parser

    build_parser().parse_args(use_block()[line][1:])
