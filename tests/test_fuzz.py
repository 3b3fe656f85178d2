"""Fuzzing (issue 7, item 7): hypothesis mutations of small valid models (protobuf fields,
shapes, dtypes, deleted or rewired nodes and inputs, attribute values, opset numbers, external
data references, raw bytes) run through `compiler.cli.main` never end in an uncaught exception,
an internal error (exit 70), an error that is not one line, a partial OUT or a hang. The
mutation library and the benchmark of >= 1,000 cases are benchmarks/fuzz.py; here a few hundred
derandomized cases (the same ones every run), shrunk to a minimal one on failure."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz  # noqa: E402

from compiler.errors import ExitCode  # noqa: E402

CASES = 500


def test_mutated_models_never_crash_the_cli():
    outcomes: list[fuzz.Outcome] = []

    def check(outcome: fuzz.Outcome) -> None:
        assert not outcome.bug, f"{outcome.describe()}: {'; '.join(outcome.problems)}"
        outcomes.append(outcome)

    fuzz.fuzz(CASES, None, check, derandomize=True)
    assert len(outcomes) >= CASES * 0.9
    # the cases reach past the file checks: some compile, some fail later in the pipeline
    codes = Counter((o.case.argv[0], o.code) for o in outcomes)
    for command in ("inspect", "check", "compile"):
        assert codes[command, 0] > 0, codes
    assert codes["inspect", ExitCode.INVALID_INPUT] > 0, codes
    later = [o for o in outcomes if "shape inference" in o.stderr or "unknown after" in o.stderr]
    assert later, "no case got as far as shape inference"


def _case(command: str = "inspect") -> fuzz.Case:
    extra = {"inspect": (), "check": ("-t", "mesh8x8"),
             "compile": ("-t", "mesh8x8", "-o", "OUT", "--method", "first-fit")}[command]
    return fuzz.Case("mlp", (), (command, "MODEL", *extra), fuzz.seeds()["mlp"])


def test_an_unmutated_seed_passes_every_command():
    for command in ("inspect", "check", "compile"):
        outcome = fuzz.run_case(_case(command))
        assert outcome.code == 0 and not outcome.bug, outcome.stderr


def test_the_guard_reports_a_hang():
    outcome = fuzz.run_case(_case("compile"), guard_s=0.001)
    assert outcome.code is None and outcome.problems[0].startswith("hang:")


def test_the_detector_flags_what_the_issue_forbids(tmp_path):
    case = _case("compile")
    assert fuzz._problems(case, 70, "error: internal error: KeyError: 'x'\n", "", tmp_path)
    assert fuzz._problems(case, 9, "error: what\n", "", tmp_path)  # undocumented code
    assert fuzz._problems(case, 3, "Traceback (most recent call last):\nerror: x\n", "",
                          tmp_path)
    assert fuzz._problems(case, 3, "some noise\nerror: x\n", "", tmp_path)
    (tmp_path / ".out.abc").mkdir()  # a temporary directory left by a failed compile
    assert fuzz._problems(case, 3, "error: x\n", "", tmp_path)
    (tmp_path / ".out.abc").rmdir()
    assert not fuzz._problems(case, 3, "warning: w\nerror: x\n", "", tmp_path)
