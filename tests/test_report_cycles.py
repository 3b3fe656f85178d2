"""The report's "where the cycles go" section: placement.json's cycle_breakdown drawn as a
stacked bar and a table per mode, checked against the compile's own numbers and in a real
headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.report import build_view, read_out
from compiler.report.browser import clipped_text, load_page
from compiler.report.cycles import BAR_WIDTH, CATEGORIES


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """llama-tiny on two 8x8 wafers: sends, wafer sends and reduces on its critical paths."""
    path = tmp_path_factory.mktemp("cycles") / "out"
    assert main(["-q", "compile", "llama-tiny", "-t", "mesh8x8-x2", "-o", str(path)]) == 0
    return path


def _placement(out: Path) -> dict:
    return json.loads((out / "placement.json").read_text())


def test_breakdown_is_recorded_and_adds_up_to_the_cycles(out):
    doc = _placement(out)
    for mode in ("decode", "prefill"):
        rows = doc["cycle_breakdown"][mode]
        assert rows and all(r["total"] == sum(r[k] for k, _, _ in CATEGORIES) for r in rows)
        assert sum(r["total"] for r in rows) == doc["performance"][mode]["cycles"]


def test_view_model_draws_each_mode(out):
    doc = _placement(out)
    view = build_view(read_out(out))
    assert [c.title.split(":")[0] for c in view.cycles] == ["Decode", "Prefill"]
    for c, mode in zip(view.cycles, ("decode", "prefill"), strict=True):
        rows = doc["cycle_breakdown"][mode]
        assert sum(s.fraction for s in c.shares) == pytest.approx(1.0, abs=1e-5)
        assert sum(s.width for s in c.shares) == pytest.approx(BAR_WIDTH, abs=0.01)
        for a, b in zip(c.shares, c.shares[1:], strict=False):
            assert b.x == pytest.approx(a.x + a.width, abs=0.01)  # stacked, no gaps
        assert [r[0] for r in c.table.rows] == [r["layer"] for r in rows]
        assert [k[1] for k in c.table.keys] == [r["total"] for r in rows]
        collective = next(s for s in c.shares if s.label == "collectives")
        assert collective.fraction == pytest.approx(
            sum(r["collective"] for r in rows) / sum(r["total"] for r in rows), abs=1e-5)


def test_chromium_shows_the_section(out, chromium):
    html = out / "report.html"
    dom, console = load_page(html)
    assert console == []
    section = re.search(r'<section id="cycles">(.*?)</section>', dom, re.S)
    assert section, "no cycles section in the rendered page"
    body = section.group(1)
    rows = _placement(out)["cycle_breakdown"]
    assert body.count("<tr") == len(rows["decode"]) + len(rows["prefill"]) + 2  # + headers
    assert body.count('<svg class="cyc"') == 2
    assert 'href="#cycles"' in dom
    assert clipped_text(html, (1400, 900)) == []


def test_an_out_without_a_breakdown_leaves_the_section_out(out, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(out, old)
    doc = _placement(old)
    del doc["cycle_breakdown"]  # as written before the breakdown was recorded
    (old / "placement.json").write_text(json.dumps(doc))
    assert main(["-q", "view", str(old)]) == 0
    capsys.readouterr()
    html = (old / "report.html").read_text()
    assert 'id="cycles"' not in html and 'href="#cycles"' not in html
    assert 'id="cycles"' in (out / "report.html").read_text()
