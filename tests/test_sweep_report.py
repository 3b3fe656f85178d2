"""The sweep page (SWEEPDIR/sweep.html): one self-contained page drawn from sweep.json alone,
with Pareto plots and a table where failed points appear as such. Checked with html.parser, real
headless Chromium (console messages, a screenshot that is not blank), a golden view-model of a
real sweep, and the plots' scales and frontiers against sweep.json."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
from conftest import Refs, check_golden
from hypothesis import assume, given
from hypothesis import strategies as st

from compiler.cli import main
from compiler.errors import ExitCode, UsageError
from compiler.report import read_sweep, sweep_html, sweep_view, view_json
from compiler.report.browser import clipped_text, load_page, screenshot
from compiler.report.scatter import LOG_SPAN, scale, staircase, ticks
from compiler.sweep import FRONTIER_COSTS
from compiler.sweep.pareto import frontier

PLOTS = dict(zip(FRONTIER_COSTS, ("sram", "cores", "wafers"), strict=True))


def test_the_sweep_writes_its_page_from_sweep_json(pool_sweep):
    out, doc, _ = pool_sweep
    html = (out / "sweep.html").read_text()
    assert html == sweep_html(json.loads((out / "sweep.json").read_text()))
    assert not list(out.glob(".*.tmp"))  # written beside, then renamed


def test_the_page_is_self_contained(pool_sweep):
    out, doc, _ = pool_sweep
    html = (out / "sweep.html").read_text()
    parser = Refs.of(html)
    assert not parser.external, parser.external
    local = [r for r in parser.refs if not r.startswith("#")]
    assert sorted(local) == ["sweep.csv", "sweep.json"] and all((out / r).exists() for r in local)
    css_urls = re.findall(r"url\(\s*['\"]?([^)'\"]*)", html)
    assert all(u.startswith("#") for u in css_urls), css_urls
    assert "<link" not in html and not re.search(r"<script[^>]+src=", html)
    assert "@import" not in html
    assert {"plots", "points", "failed", "data", "sram", "cores", "wafers"} <= parser.ids
    assert parser.tags.count("svg") == 3 and parser.tags.count("table") == 2


def test_every_point_is_drawn_and_every_failure_is_listed(pool_sweep):
    out, doc, _ = pool_sweep
    html = (out / "sweep.html").read_text()
    ok = [p for p in doc["points"] if p["status"] == "ok"]
    failed = [p for p in doc["points"] if p["status"] != "ok"]
    assert ok and {p["status"] for p in failed} >= {"infeasible", "error"}
    assert len(re.findall(r'<circle class="pt', html)) == 3 * len(ok)
    with_sram = [p for p in failed if p["total_sram_bytes"] is not None]
    assert len(re.findall(r'<g class="miss ', html)) == 2 * len(failed) + len(with_sram)
    for p in failed:  # a row with its status and its message, escaped as HTML escapes it
        message = p["error"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert re.search(rf'<tr class="{p["status"]}"[^>]*data-l="{p["index"]}"', html)
        assert f"<td>{message}</td>" in html


def test_failed_points_are_in_the_view_model(pool_sweep):
    _, doc, _ = pool_sweep
    view = sweep_view(doc)
    failed = {p["index"]: p for p in doc["points"] if p["status"] != "ok"}
    for plot in view.plots:
        cost = next(c for c, pid in PLOTS.items() if pid == plot.id)
        drawn = {m.index: m.status for m in plot.misses}
        expected = {i: p["status"] for i, p in failed.items() if cost != "total_sram_bytes"
                    or p[cost] is not None}
        assert drawn == expected
        assert not {d.index for d in plot.dots} & failed.keys()
        assert plot.strip[3] > 0 and all(plot.strip[0] <= m.x <= plot.strip[0] + plot.strip[2]
                                         for m in plot.misses)
    status = view.point_table.header.index("status")
    assert [row[status] for row in view.point_table.rows] == [p["status"] for p in doc["points"]]
    assert [(int(r[0]), r[2], r[3]) for r in view.failed_table.rows] == [
        (i, p["status"], p["error"]) for i, p in failed.items()]
    for i, p in failed.items():
        assert ("why", p["error"]) in view.tips[i].rows


def test_a_sweep_where_nothing_compiled_still_shows_every_point(pool_sweep):
    _, doc, _ = pool_sweep
    failed = [p for p in doc["points"] if p["status"] != "ok"]
    fronts = {c: {**f, "points": []} for c, f in doc["frontiers"].items()}
    view = sweep_view({**doc, "points": failed, "frontiers": fronts})
    for plot in view.plots:
        assert not plot.dots and not plot.frontier and not plot.y_ticks
        assert len(plot.misses) == len([p for p in failed if plot.id != "sram"
                                        or p["total_sram_bytes"] is not None])
        assert bool(plot.x_ticks) == (plot.id == "sram")  # no made-up cores or wafers axis
    assert len(view.point_table.rows) == len(view.failed_table.rows) == len(failed)
    assert view.kpis[0].value == "0 ok" and view.kpis[0].state == "bad"


def test_the_plots_follow_sweep_json(pool_sweep):
    """Dots sit where their numbers put them: more tokens/s higher, more cost further right;
    the ringed dots are sweep.json's Pareto flags."""
    _, doc, _ = pool_sweep
    view = sweep_view(doc)
    points = doc["points"]
    for plot in view.plots:
        cost = next(c for c, pid in PLOTS.items() if pid == plot.id)
        assert {d.index for d in plot.dots if d.frontier} == set(
            doc["frontiers"][cost]["points"])
        x0, y0, w, h = plot.plot
        for a in plot.dots:
            assert x0 <= a.x <= x0 + w and y0 <= a.y <= y0 + h
            for b in plot.dots:
                pa, pb = points[a.index], points[b.index]
                if pa["tokens_per_s"] > pb["tokens_per_s"]:
                    assert a.y < b.y
                if pa[cost] > pb[cost]:
                    assert a.x > b.x
        # the staircase starts at the cheapest frontier point and ends at the fastest
        on = sorted((d for d in plot.dots if d.frontier), key=lambda d: d.x)
        assert plot.frontier.startswith(f"M{on[0].x:.2f},{on[0].y:.2f}")
        assert plot.frontier.endswith(f"{on[-1].y:.2f}")


def test_view_model_matches_golden(pool_sweep):
    """The view-model of the SMALL sweep, run times zeroed; regenerate with
    WAFER_UPDATE_GOLDEN=1 and review the diff when a change to the page is meant."""
    _, doc, _ = pool_sweep
    run = {**doc["run"], "wall_s": 0.0}
    points = [{**p, "compile_s": 0.0, "verify_s": 0.0} for p in doc["points"]]
    text = view_json(sweep_view({**doc, "run": run, "points": points}))
    check_golden("gpt2-tiny.mesh8x8.sweep.view.json", text)


def test_chromium_runs_the_page_without_console_messages(pool_sweep, chromium, tmp_path):
    from PIL import Image

    out, _, _ = pool_sweep
    dom, console = load_page(out / "sweep.html")
    assert console == []
    assert 'data-ready="1"' in dom  # the page's script ran to its end
    png = screenshot(out / "sweep.html", tmp_path / "shot.png", (1200, 800))
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 800)
    colors = image.getcolors(maxcolors=1 << 20)
    assert len(colors) > 200  # dots, strips, text anti-aliasing
    assert max(count for count, _ in colors) < 0.8 * 1200 * 800


def test_view_rewrites_the_page_of_a_sweep_dir(pool_sweep, capsys, tmp_path, chromium):
    src, _, _ = pool_sweep
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    (out / "sweep.html").unlink()
    png = tmp_path / "sweep.png"
    code = main(["-q", "view", str(out), "--png", str(png), "--only", "plots",
                 "--size", "1300x700"])
    printed = capsys.readouterr().out.split()
    assert code == 0 and printed == [str(out / "sweep.html"), str(png)]
    assert (out / "sweep.html").read_text() == (src / "sweep.html").read_text()
    assert png.stat().st_size > 0
    assert main(["-q", "view", str(out), "--only", "timeline"]) == ExitCode.USAGE
    assert "sections: plots, points, failed" in capsys.readouterr().err


def test_view_of_an_unfinished_or_old_sweep_says_run_it_again(pool_sweep, capsys, tmp_path):
    src, doc, _ = pool_sweep
    out = tmp_path / "old"
    shutil.copytree(src, out)
    (out / "sweep.json").unlink()  # as after an interrupted first run: only points/
    assert main(["view", str(out)]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sweep.json is missing" in err and "run the sweep again" in err
    (out / "sweep.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "axes"}))
    assert main(["view", str(out)]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no axes" in err
    with pytest.raises(UsageError, match="has no axes"):
        read_sweep(out)


# --- the plots' scales -----------------------------------------------------------------------

values = st.lists(st.floats(1e-3, 1e15), min_size=1, max_size=30)


@given(values, st.booleans())
def test_a_scale_holds_its_values_and_goes_log_over_a_decade(vs, integer):
    if integer:
        vs = [max(1.0, round(v)) for v in vs]
    assume(max(vs) == min(vs) or max(vs) - min(vs) > 1e-6 * max(vs))  # beyond float precision
    s = scale(vs, 60.0, 400.0, integer)
    assert s.log == (max(vs) / min(vs) >= LOG_SPAN)
    assert all(60.0 <= s(v) <= 400.0 for v in vs)
    marks = ticks(s, str)
    assert all(60.0 - 0.01 <= px <= 400.0 + 0.01 for px, _ in marks)
    assert [px for px, _ in marks] == sorted({px for px, _ in marks})
    if s.log or max(vs) > min(vs):
        assert len(marks) >= 2 or integer  # a readable axis
    if integer:
        assert all(float(label) == int(float(label)) for _, label in marks)


@given(st.lists(st.tuples(st.floats(0, 1e9), st.floats(1, 1e9)), min_size=1, max_size=30))
def test_the_staircase_goes_through_every_frontier_point(pts):
    on = frontier([c for c, _ in pts], [g for _, g in pts])
    xs = scale([c for c, _ in pts], 0.0, 400.0)
    ys = scale([g for _, g in pts], 300.0, 0.0)
    front = [(xs(c), ys(g)) for (c, g), f in zip(pts, on, strict=True) if f]
    path = staircase(front)
    corners = re.findall(r"[MHV]([-\d.]+)(?:,([-\d.]+))?", path)
    assert path.startswith("M") and len(corners) == 1 + 2 * (len(front) - 1)
    # walking the path visits each frontier point (to the path's 2 decimals)
    x, y = float(corners[0][0]), float(corners[0][1])
    visited = {(x, y)}
    for i, (v, _) in enumerate(corners[1:]):
        x, y = (float(v), y) if i % 2 == 0 else (x, float(v))
        visited.add((x, y))
    assert all(any(math.isclose(px, vx, abs_tol=0.006) and math.isclose(py, vy, abs_tol=0.006)
                   for vx, vy in visited) for px, py in front)



def test_no_doubled_slash_when_sweepdir_ends_in_one(pool_sweep):
    from compiler.cli import _sweep_summary

    out, doc, _ = pool_sweep
    summary = _sweep_summary(doc, f"{out}/")
    assert f"-> {out / 'sweep.csv'}, sweep.json" in summary and "//" not in summary
    hrefs = Refs.of((out / "sweep.html").read_text()).refs
    assert "sweep.csv" in hrefs and not [h for h in hrefs if "//" in h]


def test_points_on_one_spot_are_set_apart_and_counted(pool_sweep):
    _, doc, _ = pool_sweep
    ok = next(p for p in doc["points"] if p["status"] == "ok")
    twins = [{**ok, "index": len(doc["points"]) + k} for k in range(2)]  # same numbers
    view = sweep_view({**doc, "points": [*doc["points"], *twins]})
    before = {plot.title: next(d.crowd for d in plot.dots if d.index == ok["index"])
              for plot in sweep_view(doc).plots}  # points of the sweep already on its spot
    indexes = {ok["index"], *(t["index"] for t in twins)}
    for plot in view.plots:
        crowd = before[plot.title] + 2
        mine = [d for d in plot.dots if d.index in indexes]
        assert [d.crowd for d in mine] == [crowd] * 3
        assert len({(d.x, d.y) for d in mine}) == 3  # side by side, not on top of each other
        xs = sorted(d.x for d in mine)
        assert all(b - a >= 9 for a, b in zip(xs, xs[1:], strict=False))  # dot diameter
        assert any(c.text == f"x{crowd}" for c in plot.crowds)
        assert sum(d.crowd > 1 for d in plot.dots) == sum(int(c.text[1:]) for c in plot.crowds)


def test_the_page_cuts_no_text_off_at_1400x900(pool_sweep, chromium):
    out, _, _ = pool_sweep
    assert clipped_text(out / "sweep.html", (1400, 900)) == []
