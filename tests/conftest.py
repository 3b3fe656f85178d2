"""Shared fixtures: zoo graphs are loaded once per process (they are immutable values);
headless Chromium and an HTML reference collector for the report pages. Compiles through the
CLI check their stages' results (WAFER_CHECK=1)."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from compiler import ir
from compiler.frontend import DimRequest, FrontendOptions, load_model
from compiler.report.browser import find_chromium

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
# gpt2-tiny on mesh8x8: 8 KiB cores are too small (a failed point), a 16 KiB reserve does not
# fit in an 8 KiB core (an invalid spec, recorded as an error point), the rest compile.
SMALL = ["gpt2-tiny", "-t", "mesh8x8", "--vary", "core.sram_bytes=8KiB,32KiB,64KiB",
         "--vary", "core.reserve_bytes=4KiB,16KiB", "--vary", "context=16,64"]
TINY_ZOO = ("gpt2-tiny", "llama-tiny", "llama-tiny-opset23", "bert-tiny")
BIG_ZOO = ("llama3-8b", "llama3-70b", "llama3.1-405b")
# Every `wafer compile` and `wafer sweep` a test runs (in process or not) checks its tiled graph,
# schedule and timelines in memory between stages (CompileOptions.check; compiler/stages.py).
os.environ.setdefault("WAFER_CHECK", "1")


@functools.cache
def default_sigint() -> None:
    """Popen preexec_fn for tests that interrupt a child with SIGINT: a shell that starts the
    suite in the background (no job control) ignores SIGINT, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@functools.cache
def zoo_graph(name: str, batch: int | None = None, seq: int | None = None) -> ir.Graph:
    """The zoo model as loaded once per process (an ir.Graph is an immutable value): the big
    zoo's shape-only graphs take seconds each and several test files ask for the same ones."""
    return load_model(name, FrontendOptions(DimRequest(batch=batch, seq_len=seq)))


def manifest() -> dict:
    path = FIXTURES / "MANIFEST.json"
    return json.loads(path.read_text()) if path.exists() else {}


def fixture_entries() -> list[dict]:
    data = manifest()
    entries = data.get("fixtures", data) if isinstance(data, dict) else data
    return list(entries.values()) if isinstance(entries, dict) else list(entries)


@pytest.fixture
def gpt2_tiny() -> ir.Graph:
    return zoo_graph("gpt2-tiny")


@pytest.fixture(scope="session")
def pool_sweep(tmp_path_factory) -> tuple[Path, dict, str]:
    """SMALL swept on a process pool of 2: SWEEPDIR, sweep.json parsed, sweep.csv's text."""
    from compiler.cli import main

    out = tmp_path_factory.mktemp("pool") / "sweep"
    code = main(["-q", "sweep", *SMALL, "--workers", "2", "-o", str(out)])
    assert code == 0
    return out, json.loads((out / "sweep.json").read_text()), (out / "sweep.csv").read_text()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> str:
    """Headless Chromium, installed with apt-get when missing and we may (root, Debian)."""
    exe = find_chromium()
    if exe is None and shutil.which("apt-get") and os.geteuid() == 0:
        # pytest-xdist workers share their base temp's parent: the first installs, the others
        # wait for it (two apt-gets at once fail on dpkg's lock) and then find it installed
        lock = tmp_path_factory.getbasetemp().parent / "chromium-install.lock"
        with lock.open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            exe = find_chromium() or _apt_install_chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed and `apt-get install chromium` was not "
                    "possible here (needs root and a Debian package archive)")
    return exe


def _apt_install_chromium() -> str | None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False,
                   timeout=900)
    return find_chromium()


class Refs(HTMLParser):
    """Every tag, and every attribute that can make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []
        self.ids: set[str] = set()

    @classmethod
    def of(cls, html: str) -> Refs:
        parser = cls()
        parser.feed(html)
        parser.close()
        return parser

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "poster", "data") and value:
                self.refs.append(value)
            if name == "id":
                self.ids.add(value)

    @property
    def external(self) -> list[str]:
        """References that leave the page's folder: URLs, file: and inline documents."""
        return [r for r in self.refs if re.match(r"^\s*(https?:)?//", r, re.I)
                or r.startswith(("file:", "data:text/html"))]


def check_golden(name: str, text: str) -> None:
    """`text` equals tests/golden/NAME; WAFER_UPDATE_GOLDEN=1 rewrites it (review the diff)."""
    path = GOLDEN / name
    if os.environ.get("WAFER_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}; run with WAFER_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text()
