"""The view-model -> one self-contained HTML page (jinja2; the only module importing it).
CSS and JS are inlined from the templates directory; the page loads nothing else."""

from __future__ import annotations

import functools

import jinja2

from compiler.report.view import Report, SweepReport


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("compiler.report", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined)


def render_html(view: Report) -> str:
    data = {"tips": [[t.title, [list(r) for r in t.rows]] for t in view.tips],
            "nodes": [list(n) for n in view.nodes],
            "layers": [row[1] for row in view.layer_table.rows]}
    return _env().get_template("report.html.j2").render(r=view, data=data)


def render_sweep_html(view: SweepReport) -> str:
    data = {"tips": [[t.title, [list(r) for r in t.rows]] for t in view.tips]}
    return _env().get_template("sweep.html.j2").render(r=view, data=data)
