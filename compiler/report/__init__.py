"""The compile report: OUT's documents -> a view-model of plain data (build.py) -> one
self-contained HTML page (render.py, jinja2) and the numbers behind it as CSV/JSON
(numbers.py). `wafer compile` writes it with the other artifacts; `wafer view OUT` rewrites it
from the files in OUT."""

from __future__ import annotations

import os
from pathlib import Path

from compiler.report.build import DATA_DIR, build_view, view_from_facts
from compiler.report.facts import gather
from compiler.report.numbers import data_files, view_json
from compiler.report.out import OutDocs, docs_from_texts, read_out
from compiler.report.render import render_html

REPORT = "report.html"

__all__ = ["DATA_DIR", "REPORT", "OutDocs", "build_view", "docs_from_texts", "read_out",
           "render_html", "report_files", "view_json", "write_report"]


def report_files(docs: OutDocs) -> dict[str, str]:
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
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return out / REPORT
