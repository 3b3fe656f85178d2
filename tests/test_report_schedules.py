"""A compile's report takes the Schedules the compile wrote instead of rebuilding them from
schedule.json's text (outdir/read.py `docs_from_texts(schedules=)`), and schedule.json's text
without its step lists (outdir/write.py `report_texts`): the rebuilt Schedules are equal, and
so is every file of the report."""

from __future__ import annotations

import json

import pytest

from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.outdir.decode import decode_schedule_from_doc
from compiler.outdir.trace import schedule_from_doc
from compiler.outdir.write import artifact_files, report_texts, written_schedules
from compiler.report import docs_from_texts, report_files
from compiler.zoo import MoEConfig, build_moe


@pytest.fixture(scope="module")
def moe_small(tmp_path_factory):
    import onnx

    cfg = MoEConfig(vocab=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, experts=8,
                    active=2, expert_intermediate=16, expert_groups=4, shared=1,
                    intermediate=48, moe_every=2, shape_only=False, dtype="float32",
                    default_seq=8)
    path = tmp_path_factory.mktemp("moe") / "moe-small.onnx"
    onnx.save(build_moe(cfg, name="moe-small"), path)
    return path


@pytest.mark.parametrize("model", ["llama-tiny", "moe"])
def test_the_report_from_the_compiles_schedules_is_the_report_from_the_text(model, moe_small):
    source = moe_small if model == "moe" else model
    r = compile_model(source, "mesh16x16", CompileOptions(solver=SolverOptions(time_limit_s=5)))
    assert r.decode is not None, r.no_decode
    files = artifact_files(r, report=False)
    doc = json.loads(files["schedule.json"])
    prefill, decode = written_schedules(r)
    assert schedule_from_doc(doc) == prefill
    assert decode_schedule_from_doc(doc) == decode
    slow = report_files(docs_from_texts(files))
    fast = report_files(docs_from_texts(files, schedules=(prefill, decode)))
    assert fast == slow
    assert report_texts(files, r) == slow  # schedule.json's text without the steps
    assert artifact_files(r) == {**files, **slow}
    assert any(name.endswith(".html") for name in fast)
