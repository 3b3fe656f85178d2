"""Mixture-of-experts placement and speed (compiler/tiling/routing.py, compiler/schedule/moe.py).

A small MoE decoder built by models/moe.py (8 experts in 4 groups, top-2, one shared expert,
dense and MoE layers interleaved) is compiled for real (frontend, CP-SAT, schedule): each
expert group gets its own rectangle, no two overlap, dispatch and combine edges carry the
expected routed bytes, and the decode estimate prices k of E experts.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import onnx
import pytest

from compiler.cli import main
from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.errors import UsageError
from compiler.placement.check import validate
from compiler.tiling.routing import Routing, group_loads, load_routing, visited_share
from compiler.zoo import MoEConfig, build_moe

CFG = MoEConfig(vocab=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, experts=8,
                active=2, expert_intermediate=16, expert_groups=4, shared=1, intermediate=48,
                moe_every=2, shape_only=False, dtype="float32", default_seq=8)
SKEWED = Routing(experts=(10.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), source="skewed")


@cache
def model_path(tmp: Path) -> Path:
    path = tmp / "moe-small.onnx"
    onnx.save(build_moe(CFG, name="moe-small"), path)
    return path


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> Path:
    return model_path(tmp_path_factory.mktemp("moe"))


@cache
def compiled(path: Path, routing: Routing | None = None):
    options = CompileOptions(solver=SolverOptions(time_limit_s=10.0), check=True,
                             routing=routing or Routing())
    return compile_model(path, "mesh16x16", options)


def test_expert_groups_are_layers_with_moe_records(path):
    g = compiled(path).graph
    groups = [x for x in g.layers if x.moe and x.moe.is_group]
    assert [x.name for x in groups] == [f"block.1.experts.{i}" for i in range(4)]
    assert [(x.moe.first, x.moe.count) for x in groups] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    router = next(x for x in g.layers if x.name == "block.1")
    assert router.moe is not None and not router.moe.is_group and router.moe.shared == 1
    assert next(x for x in g.layers if x.name == "block.0").moe is None  # the dense layer


def test_experts_do_not_overlap_and_the_placement_is_valid(path):
    r = compiled(path)
    validate(r.problem, r.placement)  # raises on any overlap, capacity or shape problem
    names = [b.name for b in r.problem.blocks]
    rects = [r.placement.rects[names.index(f"block.1.experts.{i}")] for i in range(4)]
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            apart = a.wafer != b.wafer or a.row + a.rows <= b.row or b.row + b.rows <= a.row \
                or a.col + a.cols <= b.col or b.col + b.cols <= a.col
            assert apart, (a, b)


def _routed(r, group: str) -> tuple[int, int]:
    """(dispatch bytes into `group`, combine bytes out of it) per decode token."""
    names = [b.name for b in r.problem.blocks]
    i = names.index(group)
    into = sum(e.bytes_per_token for e in r.problem.edges if e.dst == i)
    out = sum(e.bytes_per_token for e in r.problem.edges if e.src == i)
    return into, out


def test_routing_traffic_is_counted_at_the_hit_rate(path):
    uniform, skewed = compiled(path), compiled(path, SKEWED)
    hit = 1 - (1 - 2 / 8) ** 2  # 2 of 8 experts per group, top-2, uniform
    item = uniform.target.compute.dtype.itemsize  # floats at the target's storage width
    dense_in = (CFG.hidden + CFG.experts) * item  # h and the router's probabilities
    assert _routed(uniform, "block.1.experts.0") == (math.ceil(dense_in * hit),
                                                     math.ceil(CFG.hidden * item * hit))
    hot, cold = _routed(skewed, "block.1.experts.0"), _routed(skewed, "block.1.experts.3")
    assert hot[0] > _routed(uniform, "block.1.experts.0")[0] > cold[0]
    assert skewed.metrics.byte_hops > 0  # the routed edges are in the objective's byte-hops


def test_decode_estimate_prices_k_of_e_experts(path):
    r = compiled(path)
    moe = r.moe
    assert moe is not None and moe.routing == "uniform" and len(moe.regions) == 4
    assert all(x.imbalance == pytest.approx(1.0) for x in moe.regions)
    assert moe.expected_tokens_per_s > 0 and moe.worst_tokens_per_s > 0
    # the schedule runs every expert: skipping the unvisited groups can only be faster
    assert moe.expected_tokens_per_s >= moe.all_experts_tokens_per_s
    skewed = compiled(path, SKEWED).moe
    assert skewed.max_imbalance == pytest.approx((20 / 26) / (1 / 4))  # experts 0-1: 20 of 26


def test_group_loads_follow_the_routing_file(path, tmp_path):
    f = tmp_path / "routing.json"
    f.write_text(json.dumps({"experts": [10, 10, 1, 1, 1, 1, 1, 1]}))
    loads = group_loads(compiled(path).graph, load_routing(f))
    assert loads["block.1.experts.0"].share == pytest.approx(20 / 26)
    assert loads["block.1.experts.0"].experts_per_token == pytest.approx(2 * 20 / 26)


@pytest.mark.parametrize("text", ["[1, 2]", "{\"experts\": [1, -1]}", "{\"experts\": [0, 0]}",
                                  "{\"layers\": [1]}", "not json"])
def test_bad_routing_files_are_usage_errors(tmp_path, text):
    f = tmp_path / "r.json"
    f.write_text(text)
    with pytest.raises(UsageError, match="--routing"):
        load_routing(f)


def test_a_routing_file_of_the_wrong_length_fails_the_compile(path, tmp_path, capsys):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"experts": [1, 2, 3]}))
    out = tmp_path / "out"
    code = main(["compile", str(path), "-t", "mesh16x16", "--routing", str(f), "-o", str(out)])
    assert code == 2 and not out.exists()
    assert "3 frequencies for layer block.1, which has 8 experts" in capsys.readouterr().err


# -- residency per expert: cold experts stream when SRAM is short --------------------------------

# 8 experts, one per group (Mixtral's grouping), each 147 KB of fp16 weights: 3 cores of
# mesh8x8 resident. On 3 x 8 cores not every expert holds resident.
SQUEEZED = MoEConfig(vocab=64, hidden=64, layers=1, heads=4, kv_heads=2, head_dim=16, experts=8,
                     active=2, expert_intermediate=384, expert_groups=8, default_seq=8)
HOT_TO_COLD = [40, 20, 10, 8, 6, 4, 2, 1]


@pytest.fixture(scope="module")
def squeeze(tmp_path_factory) -> Path:
    """The 8-expert model, mesh8x8 cut to 3 rows, routing hot to cold by expert index."""
    tmp = tmp_path_factory.mktemp("squeezed")
    onnx.save(build_moe(SQUEEZED, name="moe8"), tmp / "moe8.onnx")
    target = Path(__file__).parents[1] / "targets" / "mesh8x8.toml"
    text = target.read_text().replace("rows = 8", "rows = 3").replace('"mesh8x8"', '"mesh3x8"')
    (tmp / "mesh3x8.toml").write_text(text)
    (tmp / "routing.json").write_text(json.dumps({"experts": HOT_TO_COLD}))
    return tmp


@pytest.fixture(scope="module")
def squeezed(squeeze):
    """The 8-expert model compiled on 3 x 8 cores: its placement.json."""
    tmp = squeeze
    out = tmp / "out"
    code = main(["compile", str(tmp / "moe8.onnx"), "-t", str(tmp / "mesh3x8.toml"),
                 "--routing", str(tmp / "routing.json"), "--time-limit", "10", "-o", str(out)])
    assert code == 0
    return json.loads((out / "placement.json").read_text())


def test_cold_experts_stream_and_hot_ones_stay_resident(squeezed):
    layers = {x["name"]: x for x in squeezed["layers"]}
    modes = [layers[f"block.0.experts.{e}"]["residency"] for e in range(8)]
    streams = [m == "stream_weights" for m in modes]
    assert any(streams) and not all(streams), modes  # squeezed: some, not all
    # the resident experts are the hottest ones: no streamed expert is hotter than a resident
    assert streams == sorted(streams), modes
    regions = {r["region"]: r for r in squeezed["moe"]["regions"]}
    assert [regions[f"block.0.experts.{e}"]["residency"] for e in range(8)] == modes


def test_a_streamed_expert_is_priced_at_its_expected_load(squeezed):
    total = sum(HOT_TO_COLD)
    for e, freq in enumerate(HOT_TO_COLD):
        layer = next(x for x in squeezed["layers"] if x["name"] == f"block.0.experts.{e}")
        if layer["residency"] != "stream_weights":
            assert layer["offchip_bytes_per_token"] == 0
            continue
        visited = min(1.0, SQUEEZED.active * freq / total)  # batch 1: one token's chance
        assert layer["offchip_bytes_per_token"] == math.ceil(layer["weight_bytes"] * visited)
        assert layer["offchip_bytes_per_token"] < layer["weight_bytes"]
    moe = squeezed["moe"]
    # streaming every expert on every token (the schedule as built) is far slower
    assert moe["expected_tokens_per_s"] > moe["all_experts_tokens_per_s"]


def test_visited_share_counts_experts_any_token_of_the_batch_visits():
    assert visited_share((0.25, 0.25), 2, 1) == pytest.approx(0.5)
    assert visited_share((0.25, 0.25), 2, 2) == pytest.approx(0.75)
    assert visited_share((0.9,), 2, 1) == 1.0  # a certain visit


def test_sweep_takes_routing_and_records_it(squeeze, capsys):
    out = squeeze / "sweep"
    code = main(["sweep", str(squeeze / "moe8.onnx"), "-t", str(squeeze / "mesh3x8.toml"),
                 "--vary", "grid.rows=3,8", "--routing", str(squeeze / "routing.json"),
                 "--time-limit", "10", "--workers", "1", "-q", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "sweep.json").read_text())
    routing = doc["options"]["routing"]
    assert routing["source"] == str(squeeze / "routing.json")
    assert routing["experts"] == HOT_TO_COLD
    squeezed_point, roomy = doc["points"]
    assert squeezed_point["status"] == roomy["status"] == "ok"
    assert 0 < squeezed_point["streamed_expert_regions"] < SQUEEZED.experts
    assert roomy["streamed_expert_regions"] == 0  # 8 rows hold every expert
    assert squeezed_point["moe_expected_tokens_per_s"] > 0


def test_sweep_refuses_a_routing_file_that_does_not_fit_the_model(squeeze, tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"experts": [1, 2, 3]}))
    out = tmp_path / "sweep"
    code = main(["sweep", str(squeeze / "moe8.onnx"), "-t", "mesh8x8", "--vary",
                 "grid.rows=3,8", "--routing", str(bad), "-o", str(out)])
    assert code == 2 and not out.exists()
    assert "3 frequencies for layer block.0, which has 8 experts" in capsys.readouterr().err
