"""`wafer compile` end to end on small models: placement.json, determinism, OUT handling."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from compiler.cli import main
from compiler.driver import compile_model
from compiler.errors import ExitCode
from compiler.outdir.trace import check_trace
from compiler.placement.check import validate

ROOT = Path(__file__).resolve().parents[1]


def _compile(tmp_path, capsys, *extra: str, name: str = "out", model: str = "llama-tiny",
             target: str = "mesh8x8") -> tuple[int, str]:
    code = main(["-q", "compile", model, "-t", target, "-o", str(tmp_path / name), *extra])
    return code, capsys.readouterr().out


def test_compile_writes_a_complete_placement(tmp_path, capsys):
    code, out = _compile(tmp_path, capsys)
    assert code == 0 and "compiled llama-tiny for mesh8x8" in out
    doc = json.loads((tmp_path / "out" / "placement.json").read_text())
    assert doc["schema_version"] and doc["tool"]["name"] == "wafer"
    assert len(doc["model"]["sha256"]) == 64 and len(doc["target"]["sha256"]) == 64
    assert [layer["name"] for layer in doc["layers"]] == [
        "embedding", "block.0", "block.1", "final_norm", "head"]
    block = doc["layers"][1]
    assert block["onnx_nodes"][0].startswith("/model/layers.0/")
    assert block["per_core_bytes"]["total"] <= doc["target"]["usable_bytes_per_core"]
    assert {"op", "kind", "inputs", "outputs", "collectives"} <= set(block["layouts"][0])
    m = doc["metrics"]
    assert m["offchip_bytes_per_token"] >= m["offchip_lower_bound"]
    assert m["byte_hops"] >= m["byte_hops_lower_bound"]
    assert doc["solver"]["status"] in ("OPTIMAL", "FEASIBLE", "HEURISTIC")
    assert {"seed", "workers", "bound", "objective", "gap"} <= set(doc["solver"])
    log = json.loads((tmp_path / "out" / "compile_log.json").read_text())["stage_seconds"]
    assert {"frontend", "tiling", "placement", "artifacts", "report"} <= set(log)
    stages_line = next(line for line in out.splitlines() if line.strip().startswith("stages"))
    assert "artifacts" in stages_line and "report" in stages_line and "write" in stages_line
    schedule = json.loads((tmp_path / "out" / "schedule.json").read_text())
    schema = json.loads((ROOT / "docs" / "schedule.schema.json").read_text())
    jsonschema.validate(schedule, schema)
    assert check_trace(json.loads((tmp_path / "out" / "trace.json").read_text())) == []
    assert "tokens/s at batch 1" in out and "TTFT" in out


def test_compile_is_deterministic(tmp_path, capsys):
    _compile(tmp_path, capsys, name="a", model="gpt2-tiny")
    _compile(tmp_path, capsys, name="b", model="gpt2-tiny")
    for name in ("placement.json", "schedule.json", "trace.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_existing_out_needs_force_and_is_left_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["compile", "gpt2-tiny", "-t", "mesh8x8", "-o", str(out)])
    assert code == ExitCode.USAGE and "--force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    code = main(["compile", "gpt2-tiny", "-t", "mesh8x8", "-o", str(out), "--force"])
    assert code == ExitCode.USAGE and "no placement.json" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"  # not an OUT of wafer: never replaced
    (out / "keep.txt").unlink()
    assert _compile(tmp_path, capsys, "--force", model="llama-tiny")[0] == 0  # empty: ok
    (out / "keep.txt").write_text("mine")
    assert _compile(tmp_path, capsys, "--force", model="gpt2-tiny")[0] == 0
    assert not (out / "keep.txt").exists() and (out / "placement.json").exists()


def _tiny_target(tmp_path):
    """mesh8x8 shrunk to one core of 8 KiB: nothing of a real layer fits, even streamed."""
    text = (ROOT / "targets" / "mesh8x8.toml").read_text()
    text = text.replace("rows = 8", "rows = 1").replace("cols = 8", "cols = 1")
    text = text.replace('sram_bytes = "64 KiB"', 'sram_bytes = "8 KiB"')
    path = tmp_path / "specs" / "one-core.toml"
    path.parent.mkdir()
    path.write_text(text)
    return path


def test_failed_compile_leaves_no_out(tmp_path, capsys):
    target = _tiny_target(tmp_path)
    code = main(["compile", "gpt2-tiny", "-t", str(target), "-o", str(tmp_path / "out")])
    assert code == ExitCode.DOES_NOT_FIT
    assert "bytes but 4,096 are available" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["specs"]  # no OUT, no temp dir


@pytest.mark.parametrize("method", ["cpsat", "first-fit", "serpentine"])
def test_every_method_gives_a_valid_placement_on_two_wafers(method):
    from compiler.driver import CompileOptions, SolverOptions

    result = compile_model("gpt2-tiny", "mesh8x8-x2",
                           CompileOptions(solver=SolverOptions(method=method, time_limit_s=5)))
    assert validate(result.problem, result.placement) == ()
    assert result.metrics.offchip_bytes_per_token >= result.metrics.offchip_lower_bound


def test_prompt_that_does_not_fit_compiles_streamed_and_verify_says_why(tmp_path, capsys):
    from compiler.verify import open_out

    # llama-tiny's prompt of 256 tokens does not fit mesh8x8 whole; one decode step does (it has
    # no position table: gpt2-tiny's holds 128 positions)
    code = main(["-q", "compile", "llama-tiny", "-t", "mesh8x8", "--seq-len", "256",
                 "-o", str(tmp_path / "out")])
    assert code == 0
    doc = json.loads((tmp_path / "out" / "placement.json").read_text())
    assert doc["options"]["prompt_resident"] is False
    with pytest.raises(Exception, match="prompt streamed through in decode steps"):
        open_out(tmp_path / "out")
    code = main(["-q", "compile", "llama-tiny", "-t", "mesh8x8", "--seq-len", "256", "--verify",
                 "-o", str(tmp_path / "v")])
    assert code == ExitCode.DOES_NOT_FIT and "shorter --seq-len" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("verify", [False, True])
def test_compile_json_is_the_whole_summary(tmp_path, capsys, verify):
    """--json: one document with the human summary's numbers, equal to OUT's files."""
    code, out = _compile(tmp_path, capsys, "--json", "--no-report", "--time-limit", "5",
                         *(["--verify"] if verify else []), model="gpt2-tiny")
    doc = json.loads(out)
    assert code == 0 and doc["schema_version"] == "1.0" and doc["out"] == str(tmp_path / "out")
    placed = json.loads((tmp_path / "out" / "placement.json").read_text())
    log = json.loads((tmp_path / "out" / "compile_log.json").read_text())
    assert doc["metrics"] == placed["metrics"] and doc["performance"] == placed["performance"]
    assert doc["options"] == placed["options"]
    solver = dict(doc["solver"])
    assert solver.pop("wall_time_s") == log["solver_wall_time_s"]
    assert solver == placed["solver"]
    assert {"status", "objective", "bound", "gap", "seed", "workers"} <= set(solver)
    assert doc["tokens_per_s"] == placed["performance"]["decode"]["tokens_per_s"] > 0
    assert doc["ttft_s"] == placed["performance"]["prefill"]["ttft_s"] > 0
    assert doc["utilization"] == {"decode": placed["performance"]["decode"]["utilization"],
                                  "prefill": placed["performance"]["prefill"]["utilization"]}
    assert doc["model"]["name"] == placed["model"]["name"] == "gpt2-tiny"
    assert doc["target"]["name"] == "mesh8x8" and doc["target"]["cores"] == 64
    assert doc["cores_used"] == placed["metrics"]["cores_used"]
    stages = {s["name"]: s["seconds"] for s in doc["stages"]}
    assert {k: stages[k] for k in log["stage_seconds"]} == log["stage_seconds"]
    assert "artifacts" in stages and doc["total_s"] >= sum(log["stage_seconds"].values())
    # OUT's own stages: building the files is in compile_log.json, writing them (after it is
    # built) only in the summary
    assert "artifacts" in log["stage_seconds"] and "write" in stages
    assert "write" not in log["stage_seconds"]
    if verify:
        checked = json.loads((tmp_path / "out" / "verify.json").read_text())
        assert doc["verify"] == checked and doc["verify"]["passed"] is True
        assert "onnxruntime" in stages and "executor" in stages
    else:
        assert doc["verify"] is None and not (tmp_path / "out" / "verify.json").exists()
