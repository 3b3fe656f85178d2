"""Fuzzing (issue 7, item 7): hypothesis mutations of small valid models (protobuf fields,
shapes, dtypes, deleted or rewired nodes and inputs, attribute values, opset numbers, external
data references, raw bytes) run through `compiler.cli.main` never end in an uncaught exception,
an internal error (exit 70), an error that is not one line, a partial OUT or a hang. The
mutation library and the benchmark of >= 1,000 cases are benchmarks/fuzz.py; here a few hundred
derandomized cases (the same ones every run), shrunk to a minimal one on failure."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz  # noqa: E402

from compiler.cli import main  # noqa: E402
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


# --- regressions: each internal error or hang the fuzzer found, as its smallest case ------------
# (also in tests/test_cli_bad_models.py: Shape without input, Cast to -3, a Reshape changing the
# element count, input dims of 2^40; in tests/test_cli_external_data.py: unknown external-data
# keys)


def _run(capsys, tmp_path, model: onnx.ModelProto | bytes, *argv: str) -> tuple[int, str]:
    path = tmp_path / "m.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    code = main(["-q", *(str(path) if a == "MODEL" else a for a in argv)])
    return code, capsys.readouterr().err


def test_batched_constant_matmul_weight_compiles_and_verifies(tmp_path, capsys):
    """A 3-D constant MatMul operand took the 2-D weight layout (zip() error in tiling)."""
    w = np.random.default_rng(0).standard_normal((2, 8, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "bmm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 3])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    code, err = _run(capsys, tmp_path, model, "compile", "MODEL", "-t", "mesh8x8", "-o",
                     str(tmp_path / "out"), "--verify")
    assert code == 0, err


def test_gather_of_a_scalars_shape_is_an_invalid_model(tmp_path, capsys):
    """onnxscript's Gather-of-Shape evaluator raised IndexError (exit 70)."""
    nodes = [helper.make_node("Cast", ["s"], ["c"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Shape", ["c"], ["sh"], name="shape"),
             helper.make_node("Gather", ["sh", "one"], ["n"], name="gather", axis=0),
             helper.make_node("Identity", ["x"], ["y"], name="id")]
    graph = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
        helper.make_tensor_value_info("s", TensorProto.INT64, [])], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
        helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [numpy_helper.from_array(np.array([1], np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    code, err = _run(capsys, tmp_path, model, "inspect", "MODEL")
    assert code == ExitCode.INVALID_INPUT, err
    assert err.startswith("error: node gather (Gather) cannot be evaluated on its constant "
                          "inputs (IndexError")


def test_strings_that_are_not_utf8(tmp_path, capsys):
    """protobuf hands proto2 strings over undecoded; onnx_ir failed serializing them."""
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="qq")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    data = model.SerializeToString().replace(b"qq", b"\xff\xfe")
    code, err = _run(capsys, tmp_path, data, "inspect", "MODEL")
    assert code == ExitCode.INVALID_INPUT
    assert err.rstrip().endswith("m.onnx: model.graph.node[0].name is not valid UTF-8 text; "
                                 "the file is corrupt")


def _limit_memory() -> None:
    limit = 4 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_huge_sequence_length_stays_within_memory():
    """ONNX data propagation materialised Range(0, seq): --seq-len 1e9 took 24 GB. The child
    runs under a 4 GB address-space limit, so a regression fails here instead of swapping.
    llama-tiny: its rotary positions come from Range(0, seq) and it has no position table
    (gpt2-tiny's 128-row table now refuses such a --seq-len up front)."""
    proc = subprocess.run([sys.executable, "-m", "compiler", "-q", "inspect", "llama-tiny",
                           "--seq-len", "1000000000"], capture_output=True, text=True,
                          timeout=300, preexec_fn=_limit_memory)
    assert proc.returncode == 0, proc.stderr
