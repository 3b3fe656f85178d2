"""The report of a mixture-of-experts compile: expert regions coloured by expected load, the
routing traffic per expert region, the MoE decode rates; checked in the HTML, the view-model
and a real headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from compiler.cli import main
from compiler.report import build_view, read_out
from compiler.report.browser import load_page
from compiler.report.experts import LOAD
from compiler.zoo import MoEConfig, build_moe

CFG = MoEConfig(vocab=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, experts=8,
                active=2, expert_intermediate=16, expert_groups=4, shared=1, intermediate=48,
                moe_every=2, shape_only=False, dtype="float32", default_seq=8)


@pytest.fixture(scope="module")
def moe_out(tmp_path_factory) -> Path:
    """The small MoE compiled on mesh16x16 with skewed routing (experts 0 and 1 hot)."""
    tmp = tmp_path_factory.mktemp("report-moe")
    onnx.save(build_moe(CFG, name="moe-small"), tmp / "moe.onnx")
    (tmp / "routing.json").write_text(json.dumps({"experts": [10, 10, 1, 1, 1, 1, 1, 1]}))
    out = tmp / "out"
    code = main(["-q", "compile", str(tmp / "moe.onnx"), "-t", "mesh16x16", "--time-limit", "10",
                 "--routing", str(tmp / "routing.json"), "-o", str(out)])
    assert code == 0
    return out


def test_expert_regions_are_coloured_by_expected_load(moe_out):
    view = build_view(read_out(moe_out))
    boxes = {b.name: b for p in view.panels for b in p.layers}
    hot, cold = boxes["block.1.experts.0"], boxes["block.1.experts.3"]
    assert hot.fill == LOAD[-1]  # the busiest region takes the darkest colour
    assert cold.fill != hot.fill and cold.fill not in (boxes["block.0"].fill,)
    assert boxes["block.1"].fill == boxes["block.0"].fill or boxes["block.1"].fill.startswith("#")
    assert all(b.fill not in LOAD[1:] for n, b in boxes.items() if ".experts." not in n)


def test_routing_traffic_is_listed_per_expert_region(moe_out):
    placement = json.loads((moe_out / "placement.json").read_text())
    names = [x["name"] for x in placement["layers"]]
    view = build_view(read_out(moe_out))
    table = view.experts.table
    assert [row[0] for row in table.rows] == [f"block.1.experts.{i}" for i in range(4)]
    dispatch = {names[e["dst"]]: 0 for e in placement["edges"]}
    for e in placement["edges"]:
        dispatch[names[e["dst"]]] += e["bytes_per_token"]
    col = table.header.index("dispatch in per token")
    assert [key[col] for key in table.keys] == [dispatch[r[0]] for r in table.rows]
    assert table.keys[0][col] > table.keys[3][col]  # the hot region receives more
    assert any(k.label == "MoE decode" for k in view.kpis)


def test_the_page_shows_the_experts_in_chromium(moe_out, chromium):
    dom, console = load_page(moe_out / "report.html")
    assert console == []
    assert 'id="experts"' in dom and "Expert regions and routing traffic" in dom
    assert "expected experts per token" in dom and "block.1.experts.3" in dom
