"""compiler/vocab.py: the shared names match what the stages really produce and accept."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from compiler import vocab
from compiler.cli import build_parser
from compiler.frontend.ops import SUPPORTED_OPS
from compiler.outdir.trace import check_schedule_doc, schedule_from_doc
from compiler.vocab import CollectiveKind, DataType, Mode, Phase, PlacementMethod, StepKind

REPLAY = Path(__file__).parent / "golden" / "replay"
SCHEDULES = sorted(REPLAY.glob("*.schedule.json"))
CATEGORIES = ("RESHAPE_OPS", "VIEW_OPS", "ONE_BUFFER_OPS", "ZERO_COST_OPS", "PASS_THROUGH_OPS",
              "LAYOUT_OPS")


def _docs() -> list[dict]:
    assert SCHEDULES, f"no schedule.json under {REPLAY}"
    return [json.loads(p.read_text()) for p in SCHEDULES]


def test_every_step_kind_of_real_schedules_parses_back():
    """The replay set's schedule.json files (real compiles): each step's kind, phase and
    collective kind is a vocabulary member, and every StepKind occurs (none is dead)."""
    seen: set[StepKind] = set()
    for doc in _docs():
        assert check_schedule_doc(doc) == []
        for st in [*doc["steps"], *doc.get("decode", {}).get("steps", ())]:  # decode: appends
            seen.add(StepKind(st["kind"]))
            Phase(st.get("phase", Phase.TOKEN))
            if st["kind"] == StepKind.COLLECTIVE:
                CollectiveKind(st["op_kind"])
            for kind, _axis in st.get("fused", ()):
                assert kind == CollectiveKind.ALLREDUCE
        assert {Mode(m) for m in doc["timing"]} == set(Mode)
    assert seen == set(StepKind)


def test_read_schedule_holds_step_kinds_and_equals_its_strings():
    doc = _docs()[0]
    schedule = schedule_from_doc(doc)
    assert all(type(st.kind) is StepKind for st in schedule.steps)
    assert [st.kind for st in schedule.steps] == [st["kind"] for st in doc["steps"]]


def test_unknown_step_kind_is_reported():
    doc = _docs()[0]
    doc["steps"][0]["kind"] = "teleport"
    assert check_schedule_doc(doc) == ["step 0: unknown kind 'teleport'"]


def test_str_enums_serialize_as_their_strings():
    assert json.dumps({StepKind.WAFER_SEND: [Mode.DECODE, PlacementMethod.FIRST_FIT]}) == \
        '{"wafer_send": ["decode", "first-fit"]}'
    assert f"{StepKind.LOAD} {Phase.SETUP}" == "load setup"


@pytest.mark.parametrize("name", CATEGORIES)
def test_op_categories_name_supported_ops(name):
    """A misspelt op name in a category would silently never match."""
    ops = getattr(vocab, name)
    assert ops <= SUPPORTED_OPS, sorted(ops - SUPPORTED_OPS)


def test_categories_keep_their_documented_relations():
    assert vocab.RESHAPE_OPS < vocab.VIEW_OPS
    for wider in ("ONE_BUFFER_OPS", "ZERO_COST_OPS", "PASS_THROUGH_OPS", "LAYOUT_OPS"):
        assert getattr(vocab, wider) > vocab.VIEW_OPS
    assert "Dropout" in vocab.ZERO_COST_OPS and "Dropout" not in vocab.VIEW_OPS
    assert "Cast" in vocab.PASS_THROUGH_OPS and "Cast" not in vocab.ZERO_COST_OPS


def test_data_types_mirror_onnx():
    for member in DataType:
        assert onnx.TensorProto.DataType.Value(member.name) == member.value


def _choices(command: str, flag: str) -> tuple[str, ...]:
    sub = next(a for a in build_parser()._actions if a.choices and command in a.choices)
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return tuple(action.choices)


def test_cli_choices_are_the_vocabulary():
    assert _choices("compile", "--method") == vocab.PLACEMENT_METHODS
    assert _choices("sweep", "--method") == vocab.PLACEMENT_METHODS
    assert _choices("verify", "--precision") == vocab.PRECISIONS
    assert all(type(m) is str for m in vocab.PLACEMENT_METHODS + vocab.PRECISIONS)
