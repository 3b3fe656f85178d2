"""The compile report: OUT's documents -> a view-model of plain data (build.py) -> one
self-contained HTML page (render.py, jinja2) and the numbers behind it as CSV/JSON
(numbers.py). `wafer compile` writes it with the other artifacts; `wafer view OUT` rewrites it
from the files in OUT.

The sweep page: SWEEPDIR/sweep.json -> a view-model (sweep.py) -> sweep.html, through the same
templates' base. `wafer sweep` writes it with sweep.json; `wafer view SWEEPDIR` rewrites it."""

from __future__ import annotations

from pathlib import Path

from compiler.atomic import write_atomic
from compiler.outdir.read import OutDir, docs_from_texts, read_out
from compiler.report.build import DATA_DIR, build_view, view_from_facts
from compiler.report.facts import gather
from compiler.report.numbers import data_files, view_json
from compiler.report.render import render_html, render_sweep_html
from compiler.report.sweep import SWEEP_HTML, is_sweep_dir, read_sweep, sweep_view

REPORT = "report.html"

__all__ = ["DATA_DIR", "REPORT", "SWEEP_HTML", "OutDir", "build_view", "docs_from_texts",
           "is_sweep_dir", "read_out", "read_sweep", "render_html", "report_files", "sweep_html",
           "sweep_view", "view_json", "write_report", "write_sweep_report"]


def report_files(docs: OutDir) -> dict[str, str]:
    """report.html and the data files, by path relative to OUT."""
    facts = gather(docs)
    view = view_from_facts(facts)
    return {REPORT: render_html(view), **data_files(facts, view)}


def write_report(out: str | Path) -> Path:
    """(Re)write OUT/report.html and OUT/report-data/ from OUT's documents; each file is
    replaced whole (written beside it, then renamed), so a reader never sees half a file."""
    out = Path(out)
    files = report_files(read_out(out))
    for name, text in files.items():
        write_atomic(out / name, text)
    return out / REPORT


def sweep_html(doc: dict) -> str:
    """The sweep page of a sweep.json document (as parsed from its text)."""
    return render_sweep_html(sweep_view(doc))


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """(Re)write SWEEPDIR/sweep.html from SWEEPDIR/sweep.json, replacing it whole."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_HTML
    write_atomic(path, sweep_html(read_sweep(sweep_dir)))
    return path
