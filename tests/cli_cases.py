"""What the tests of bad input through the command line share (test_cli_*.py): run `wafer -q`
in-process, assert a refusal (the exit code, one `error: ...` line, no OUT left behind), and a small
valid ONNX model to break."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.cli import main

ROOT = Path(__file__).resolve().parents[1]
WAFER = [sys.executable, "-m", "compiler"]
SPEC = (ROOT / "targets" / "mesh8x8.toml").read_text()


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning: ")]


def wafer(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `wafer -q ARGV` run in-process."""
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, tmp_path: Path, model: Path | str, code: int, pattern: str,
            *extra: str, target: str = "mesh8x8") -> str:
    """`wafer compile MODEL` fails with `code` and one error line matching `pattern`, leaving
    nothing in tmp_path/work (no OUT, no temporary directory)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    got, _, err = wafer(capsys, "compile", str(model), "-t", target, "-o", str(work / "out"),
                        *extra)
    lines = _lines(err)
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert list(work.iterdir()) == []
    return lines[0]


def mlp(*, opset: int = 18, ir_version: int = 9, nodes=None, inputs=None, inits=None,
        outputs=None, w: np.ndarray | None = None) -> onnx.ModelProto:
    """x[2,4] -> MatMul(W[4,4]) -> Relu -> y: small, valid, and easy to break."""
    nodes = nodes if nodes is not None else [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["y"], name="act")]
    inputs = inputs if inputs is not None else [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])]
    outputs = outputs if outputs is not None else [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])]
    weight = np.arange(16, dtype=np.float32).reshape(4, 4) / 16 if w is None else w
    inits = inits if inits is not None else [numpy_helper.from_array(weight, "W")]
    graph = helper.make_graph(nodes, "mlp", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=ir_version)


def save(tmp_path: Path, model: onnx.ModelProto | bytes, name: str = "m.onnx") -> Path:
    path = tmp_path / "model" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def _node(op: str, ins: list[str], outs: list[str], name: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, outs, name=name, **attrs)
