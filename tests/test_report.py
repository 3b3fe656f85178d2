"""The compile report: one self-contained HTML page plus the numbers behind it. Checked with
html.parser, a real headless Chromium (console messages, a screenshot that is not blank), the
CSV files against the compile's own metrics, and a golden view-model."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import Refs, check_golden

from compiler.cli import main
from compiler.errors import ExitCode
from compiler.outdir.trace import schedule_from_doc
from compiler.report import build_view, read_out, view_json
from compiler.report.browser import clipped_text, load_page, screenshot
from compiler.report.clear import _overlap, obstacles, place
from compiler.report.grid import MAX_BINS
from compiler.report.view import Arrow, LayerBox
from compiler.schedule.perf import PerfOptions, busiest_link, step_scale


def _compile(out: Path, capsys, *extra: str, model: str = "gpt2-tiny",
             target: str = "mesh8x8") -> Path:
    code = main(["-q", "compile", model, "-t", target, "-o", str(out), *extra])
    capsys.readouterr()
    assert code == 0
    return out


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory) -> Path:
    """gpt2-tiny compiled and verified on mesh8x8 (report written by compile)."""
    out = tmp_path_factory.mktemp("report") / "out"
    assert main(["-q", "compile", "gpt2-tiny", "-t", "mesh8x8", "-o", str(out), "--verify"]) == 0
    return out


def test_report_is_one_self_contained_page(tiny_out):
    html = (tiny_out / "report.html").read_text()
    parser = Refs.of(html)
    assert not parser.external, parser.external
    local = [r for r in parser.refs if not r.startswith("#")]
    assert local and all(r.startswith("report-data/") and (tiny_out / r).exists() for r in local)
    css_urls = re.findall(r"url\(\s*['\"]?([^)'\"]*)", html)
    assert css_urls and all(u.startswith("#") for u in css_urls), css_urls
    assert "<link" not in html and not re.search(r"<script[^>]+src=", html)
    assert "@import" not in html
    assert {"placement", "wafers", "offchip", "timeline", "layers", "summary"} <= parser.ids
    assert parser.tags.count("svg") >= 4 and "table" in parser.tags


def test_report_draws_every_layer_and_the_verify_result(tiny_out):
    placement = json.loads((tiny_out / "placement.json").read_text())
    html = (tiny_out / "report.html").read_text()
    n = len(placement["layers"])
    # each layer: a rectangle in the layer picture and in the memory picture, an outline in the
    # link picture, a row in the layer table
    assert len(re.findall(r'<rect class="layer"', html)) == 2 * n
    assert len(re.findall(r'<rect class="outline"', html)) == n
    for layer in placement["layers"]:
        assert f">{layer['name']}<" in html
    assert "PASSED" in html and "vs ONNX Runtime" in html
    assert placement["solver"]["status"] in html


def test_data_files_hold_the_numbers_behind_the_pictures(tiny_out):
    placement = json.loads((tiny_out / "placement.json").read_text())
    schedule = schedule_from_doc(json.loads((tiny_out / "schedule.json").read_text()))
    data = tiny_out / "report-data"

    def rows(name):
        with open(data / name, newline="") as fh:
            return list(csv.DictReader(fh))

    layers = rows("layers.csv")
    assert [r["name"] for r in layers] == [la["name"] for la in placement["layers"]]
    assert [int(r["flops_per_token"]) for r in layers] == [
        la["flops_per_token"] for la in placement["layers"]]
    cells = rows("cells.csv")
    assert sum(int(c["cores_used"]) for c in cells) == placement["metrics"]["cores_used"]
    assert sum(int(c["cores"]) for c in cells) == 64  # the 8 x 8 grid, each core in one cell
    links = rows("links.csv")
    top = busiest_link(schedule, PerfOptions("decode"))
    assert max(float(r["bytes_per_token"]) for r in links) == pytest.approx(top.nbytes)
    assert max(float(c["busiest_link_bytes_per_token"]) for c in cells) == pytest.approx(
        top.nbytes)
    transfers = rows("transfers.csv")
    assert {(t["src"], t["dst"]) for t in transfers} == {
        (s.region, s.dst) for s in schedule.steps if s.kind == "send"}
    timeline = rows("timeline.csv")
    decode = [r for r in timeline if r["mode"] == "decode"]
    assert max(int(r["end_cycles"]) for r in decode) == json.loads(
        (tiny_out / "placement.json").read_text())["performance"]["decode"]["cycles"]


def test_view_model_matches_golden(tiny_out):
    """The view-model of gpt2-tiny on mesh8x8, wall times zeroed; regenerate with
    WAFER_UPDATE_GOLDEN=1 and review the diff when a change to the report is meant."""
    docs = read_out(tiny_out)
    log = {"stage_seconds": dict.fromkeys(docs.log["stage_seconds"], 0.0),
           "solver_wall_time_s": 0.0}
    view = build_view(dataclasses.replace(docs, log=log, verify=_pinned(docs.verify)))
    check_golden("gpt2-tiny.mesh8x8.view.json", view_json(view))


# What ONNX Runtime's float arithmetic decides (it changes between ORT versions and CPUs): the
# golden view-model holds these canonical values, and the measured ones are checked for range.
PINNED = {"max_abs": 1e-06, "mean_abs": 1e-07, "max_rel": 1e-04, "pearson": 1.0, "min_atol": 0.0,
          "got": 1.0, "ref": 1.0, "where": [0, 0, 0]}


def _pinned(verify: dict) -> dict:
    outputs = []
    for o in verify["outputs"]:
        assert o["passed"] and o["max_abs"] < 1e-4 and o["pearson"] > 0.9999, o
        outputs.append({**o, **PINNED})
    return {**verify, "outputs": outputs}


def test_chromium_runs_the_page_without_console_messages(tiny_out, chromium, tmp_path):
    dom, console = load_page(tiny_out / "report.html")
    assert console == []
    assert 'data-ready="1"' in dom  # the page's script ran to its end
    # the check can fail: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text((tiny_out / "report.html").read_text().replace(
        "</body>", "<script>noSuchFunction();</script></body>"))
    _, console = load_page(broken)
    assert any("noSuchFunction" in m for m in console), console


def test_screenshot_is_not_blank(tiny_out, chromium, tmp_path):
    from PIL import Image

    png = screenshot(tiny_out / "report.html", tmp_path / "shot.png", (1200, 800))
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 800)
    colors = image.getcolors(maxcolors=1 << 20)
    assert len(colors) > 200  # kind colours, heat ramps, text anti-aliasing
    top = max(count for count, _ in colors)
    assert top < 0.8 * 1200 * 800  # no single colour fills the page


def test_view_writes_the_report_and_prints_its_path(tiny_out, capsys, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_out, out)
    (out / "report.html").unlink()
    shutil.rmtree(out / "report-data")
    code = main(["-q", "view", str(out)])
    printed = capsys.readouterr().out.strip()
    assert code == 0 and printed == str(out / "report.html")
    assert (out / "report.html").read_text() == (tiny_out / "report.html").read_text()
    assert (out / "report-data" / "cells.csv").exists()


def test_view_on_an_incomplete_or_old_out_says_recompile(tiny_out, capsys, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(tiny_out, out)
    (out / "compile_log.json").unlink()
    assert main(["view", str(out)]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "compile_log.json is missing" in err and "recompile" in err
    shutil.copy(tiny_out / "compile_log.json", out)
    doc = json.loads((out / "placement.json").read_text())
    del doc["performance"]  # as written before the report existed
    (out / "placement.json").write_text(json.dumps(doc))
    assert main(["view", str(out)]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "performance" in err and "recompile" in err
    assert main(["view", str(tmp_path / "nothing")]) == ExitCode.USAGE


def test_png_without_chromium_is_a_one_line_error(tiny_out, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no browser on this PATH
    code = main(["-q", "view", str(tiny_out), "--png", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == ExitCode.TOOL_MISSING and err.startswith("error: ") and "\n" not in err
    assert "chromium" in err.lower() and not (tmp_path / "x.png").exists()


def test_no_report_skips_it(tmp_path, capsys):
    out = _compile(tmp_path / "bare", capsys, "--no-report")
    assert (out / "placement.json").exists() and not (out / "report.html").exists()
    assert not (out / "report-data").exists()


def test_a_wafer_scale_grid_draws_aggregates_not_cores(tmp_path, capsys):
    """gpt2-tiny on a WSE-3 (893,064 cores): the pictures zoom to the used cores, heat cells are
    binned to at most MAX_BINS per side, and the page stays small."""
    out = _compile(tmp_path / "wse3", capsys, "--method", "first-fit", target="wse3")
    view = build_view(read_out(out))
    (panel,) = view.panels
    assert panel.window.zoomed and panel.rows * panel.cols == 893_064
    assert panel.window.rows * panel.window.cols < 893_064 // 100
    cells = (out / "report-data" / "cells.csv").read_text().splitlines()[1:]
    assert len(cells) <= MAX_BINS * MAX_BINS
    html = (out / "report.html").read_text()
    assert html.count("<rect") < 2000 and len(html) < 500_000


def test_decode_numbers_come_from_the_decode_schedule(tiny_out):
    """Per decode token the report's links, transfers, off-chip inputs and timeline are the
    decode schedule's (a causal LM has one), not the prefill scaled to a token."""
    from compiler.outdir.decode import decode_schedule_from_doc
    from compiler.report.facts import gather
    from compiler.schedule.perf import link_loads

    doc = json.loads((tiny_out / "schedule.json").read_text())
    dec = decode_schedule_from_doc(doc)
    f = gather(read_out(tiny_out))
    opts = PerfOptions("decode")
    assert f.links == pytest.approx({k: v / dec.batch for k, v in link_loads(dec, opts).items()})
    assert {(t.src, t.dst): t.bytes_per_token for t in f.transfers} == pytest.approx({
        (s.region, s.dst): sum(x.nbytes for x in dec.steps if x.kind == "send"
                               and (x.region, x.dst) == (s.region, s.dst))
        for s in dec.steps if s.kind == "send"})
    loads = {}  # the decode step loads its token and position feeds (a position row, a mask row)
    for s in dec.steps:
        if s.kind == "load" and s.phase == "token":
            loads[s.region] = loads.get(s.region, 0) + s.nbytes
    assert {la.name: la.io_in for la in f.layers if la.io_in} == pytest.approx(loads)
    assert len(loads) > 1  # more than the token ids: the prefill scaled had only those
    assert f.timing("decode") == doc["decode"]["timing"]["decode"]
    assert len(f.steps("decode")) == len(dec.steps)


def test_two_wafers_show_the_traffic_between_them(tmp_path, capsys):
    out = _compile(tmp_path / "x2", capsys, target="mesh8x8-x2")
    view = build_view(read_out(out))
    assert len(view.panels) == 2
    placement = json.loads((out / "placement.json").read_text())
    crossing = placement["metrics"]["interwafer_bytes_per_token"]
    assert crossing > 0 and placement["metrics"]["wafers_used"] == 2
    (link,) = view.overview.links
    assert (link.src, link.dst) == (0, 1) and link.label.endswith("/token")
    # arrows carry the bytes the schedule moves (the performance model's sizes)
    schedule = schedule_from_doc(json.loads((out / "schedule.json").read_text()))
    moved = sum(s.nbytes * step_scale(s, schedule, PerfOptions("decode"))
                for s in schedule.steps if s.kind == "wafer_send")
    sent = view.wafer_table.header.index("to other wafers/token")
    assert [k[sent] for k in view.wafer_table.keys] == [pytest.approx(moved), 0]


def test_view_refuses_bad_screenshot_options(tiny_out, capsys, tmp_path):
    assert main(["-q", "view", str(tiny_out), "--png", str(tmp_path / "a.png"),
                 "--only", "nosuch"]) == ExitCode.USAGE
    assert "--only: unknown section 'nosuch'" in capsys.readouterr().err
    assert main(["-q", "view", str(tiny_out), "--png", str(tmp_path / "a.png"),
                 "--size", "big"]) == ExitCode.USAGE
    assert "--size" in capsys.readouterr().err and not (tmp_path / "a.png").exists()


def test_the_page_cuts_no_text_off_at_1400x900(tiny_out, chromium, tmp_path):
    """Every table column, colour scale tick and label lies inside its container and, sideways,
    the window (the layer table's last column was cut off); the check finds a table wider than
    its scroll box."""
    assert clipped_text(tiny_out / "report.html", (1400, 900)) == []
    html = (tiny_out / "report.html").read_text()
    narrow = tiny_out / "narrow.html"  # beside report.html, so its links still resolve
    narrow.write_text(html.replace("</style>", ".scroll { max-width: 300px; }</style>", 1))
    try:
        clipped = clipped_text(narrow, (1400, 900))
    finally:
        narrow.unlink()
    assert any("cut off by div.scroll" in c for c in clipped), clipped


def test_labels_and_the_off_chip_band_stay_clear_of_arrows(tiny_out):
    report = build_view(read_out(tiny_out))
    for panel in report.panels:
        arrows = obstacles(panel.arrows + panel.offchip, panel.scale)
        for b in panel.layers:
            assert b.col <= b.label_x <= b.col + b.cols and b.row <= b.label_y <= b.row + b.rows
        band = (panel.band_label_x, 0.0, panel.band_label_x + 40 / panel.scale, 1.0)
        assert not any(_overlap(band, (r[0], 0.0, r[2], 1.0)) for r in
                       obstacles(panel.offchip, panel.scale))
        assert arrows  # the tiny model has transfers and off-chip streams


def test_a_label_moves_off_an_arrow_through_its_middle():
    box = LayerBox(index=0, name="block.0", kind="block", wafer=0, row=0, col=0, rows=10, cols=2,
                   fill="#000", mem_fill="#000", mark=(0, 0, 2, 10), label="block.0",
                   label_size=0.8, vertical=True, streamed=False, tip=0, label_x=1.0,
                   label_y=5.0)
    across = Arrow(((-1.0, 5.0), (3.0, 5.0)), ((3.0, 5.0), (2.8, 4.9), (2.8, 5.1)), 2.0, "send", 0)
    (moved,) = place([box], [across], scale=20.0)
    half = 0.6 * len("block.0") * 0.8 / 2
    assert moved.label_x == 1.0 and abs(moved.label_y - 5.0) > half  # clear of the line
    assert half <= moved.label_y <= 10 - half  # still inside its rectangle
    (kept,) = place([box], [], scale=20.0)
    assert (kept.label_x, kept.label_y) == (1.0, 5.0)  # nothing in the way: the middle


def test_the_least_crossed_spot_is_the_first_of_the_least_crossed():
    import random

    from compiler.report.clear import _crossed, _least_crossed

    rng = random.Random(7)
    for _ in range(300):
        rects = [(x, y, x + rng.uniform(0, 3), y + rng.uniform(0, 3))
                 for x, y in ((rng.uniform(0, 8), rng.uniform(0, 8))
                              for _ in range(rng.randrange(6)))]
        spots = [(float(rng.randrange(9)), float(rng.randrange(9))) for _ in range(12)]
        w, h = rng.uniform(0.5, 3), rng.uniform(0.5, 3)
        slow = min(spots, key=lambda p: _crossed((p[0] - w / 2, p[1] - h / 2, p[0] + w / 2,
                                                  p[1] + h / 2), rects))
        assert _least_crossed(spots, w, h, rects) == slow
