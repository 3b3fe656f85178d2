"""Bad inputs through the command line (issue 7, item 8): for every class of docs/errors.md,
the documented exit code, one `error: ...` line naming the file, node, op or key, no traceback,
and after a failed `compile` no OUT and no temporary directory.

Classes: exit codes; broken and non-ONNX files; versions; graph structure; tensor data; NaN/Inf
weights (a warning); inputs; unsupported ops and control flow; onnx's node checks; external
data (the three onnx path-traversal CVEs and their relatives); target specs; OUT handling and
interrupts (a real SIGINT/SIGTERM to a child process); verify of a changed OUT; determinism
across processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.cli import main
from compiler.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
WAFER = [sys.executable, "-m", "compiler"]


# --- helpers -----------------------------------------------------------------------------------


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


# --- 1. exit codes: one documented code per class, one line each -------------------------------


def test_a_valid_model_compiles(tmp_path, capsys):
    code, out, err = wafer(capsys, "compile", str(save(tmp_path, mlp())), "-t", "mesh8x8",
                           "-o", str(tmp_path / "out"))
    assert code == 0 and "compiled m for mesh8x8" in out and _lines(err) == []


@pytest.mark.parametrize(("argv", "pattern"), [
    (["compile", "gpt2-tiny", "-t", "mesh8x8"], r"required: -o/--output"),
    (["frobnicate"], r"invalid choice: 'frobnicate'"),
    (["inspect", "gpt2-tiny", "--seq-len", "0"], r"--seq-len: 0 is out of range 1\.\."),
    (["compile", "gpt2-tiny", "-t", "mesh8x8", "-o", "x", "--seed", "99999999999"],
     r"--seed: 99999999999 is out of range"),
    (["compile", "gpt2-tiny", "-t", "mesh8x8", "-o", "x", "--time-limit", "nan"],
     r"--time-limit: nan is out of range"),
    (["compile", "gpt2-tiny", "-t", "mesh8x8", "-o", "x", "--workers", "0"],
     r"--workers: 0 is out of range 1\.\.256"),
])
def test_usage_errors(capsys, argv, pattern):
    code, _, err = wafer(capsys, *argv)
    assert code == ExitCode.USAGE and len(_lines(err)) == 1 and re.search(pattern, err), err


def test_does_not_fit(tmp_path, capsys):
    spec = (ROOT / "targets" / "mesh8x8.toml").read_text()
    spec = spec.replace("rows = 8", "rows = 1").replace("cols = 8", "cols = 1")
    path = tmp_path / "one-core.toml"
    path.write_text(spec.replace('sram_bytes = "64 KiB"', 'sram_bytes = "8 KiB"'))
    refused(capsys, tmp_path, "gpt2-tiny", ExitCode.DOES_NOT_FIT,
            r"layer \S+: a core needs [\d,]+ bytes but 4,096 are available", target=str(path))


def test_verify_mismatch_and_internal_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out))[0] == 0
    code, stdout, err = wafer(capsys, "verify", str(out), "--atol", "0", "--rtol", "0")
    assert code == ExitCode.MISMATCH and stdout.startswith("FAILED") and _lines(err) == []
    # a schedule.json edited so that a step runs where its operands are not: the executor
    # refuses it as a compiler bug would be refused (exit 70), in one line
    doc = json.loads((out / "schedule.json").read_text())
    step = next(s for s in doc["steps"] if s["kind"] == "compute" and s["region"] != "head")
    step["region"] = "head"
    (out / "schedule.json").write_text(json.dumps(doc))
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INTERNAL and len(_lines(err)) == 1
    assert re.match(r"error: schedule fault at step \d+ \(compute .* on head\)", err)


# --- 2. ONNX input hardening -------------------------------------------------------------------


def _gpt2_bytes() -> bytes:
    from compiler import zoo

    return zoo.build("gpt2-tiny").SerializeToString()


@pytest.mark.parametrize(("content", "pattern"), [
    (b"", r"m\.onnx is empty \(0 bytes\)"),
    (_gpt2_bytes()[:5000], r"m\.onnx is not an ONNX model: the protobuf data is corrupt or "
     "truncated"),
    (np.random.default_rng(0).bytes(4096), r"m\.onnx is not an ONNX model"),
    (b'{"graph": {"node": []}}\n', r"m\.onnx is not an ONNX model: it looks like JSON text"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), r"m\.onnx is not an ONNX model: it is a PNG image"),
    (b"ir_version: 8\ngraph { }\n", r"m\.onnx is not an ONNX model: it is text"),
])
def test_broken_or_foreign_files(tmp_path, capsys, content, pattern):
    refused(capsys, tmp_path, save(tmp_path, content), ExitCode.INVALID_INPUT, pattern)


def test_missing_file_and_directory(tmp_path, capsys):
    refused(capsys, tmp_path, tmp_path / "nope.onnx", ExitCode.INVALID_INPUT,
            r"model file \S+nope\.onnx does not exist")
    (tmp_path / "dir.onnx").mkdir()
    refused(capsys, tmp_path, tmp_path / "dir.onnx", ExitCode.INVALID_INPUT,
            r"dir\.onnx is not a regular file")


@pytest.mark.parametrize(("model", "pattern"), [
    (mlp(ir_version=onnx.IR_VERSION + 1), r"IR version \d+ is newer than the supported \d+"),
    (mlp(opset=onnx.defs.onnx_opset_version() + 1), r"opset \d+ is newer than the supported"),
])
def test_versions_newer_than_supported(tmp_path, capsys, model, pattern):
    refused(capsys, tmp_path, save(tmp_path, model), ExitCode.INVALID_INPUT, pattern)


def _node(op: str, ins: list[str], outs: list[str], name: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, outs, name=name, **attrs)


_W = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
_X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])


@pytest.mark.parametrize(("model", "pattern"), [
    (mlp(nodes=[_node("Add", ["x", "b"], ["a"], "n1"), _node("Relu", ["a"], ["b"], "n2"),
                _node("MatMul", ["a", "W"], ["y"], "mm")]),
     r"the graph has a cycle through n1 \(Add\), n2 \(Relu\)"),
    (mlp(nodes=[_node("Add", ["x", "ghost"], ["y"], "n1")]),
     r"node n1 \(Add\) input 'ghost' is not produced by any node, initializer or graph input"),
    (mlp(nodes=[_node("Relu", ["x"], ["a"], "n1"), _node("Relu", ["x"], ["a"], "n2"),
                _node("MatMul", ["a", "W"], ["y"], "mm")]),
     r"node n2 \(Relu\) output 'a' is already defined"),
    (mlp(inits=[_W, _W]), r"initializer name 'W' appears twice"),
    (mlp(inputs=[_X, _X]), r"graph input name 'x' appears twice"),
    (mlp(nodes=[], outputs=[]), r"the graph has no nodes"),
    (mlp(outputs=[]), r"the graph has no outputs"),
    (mlp(outputs=[helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])]),
     r"graph output 'z' is not produced"),
])
def test_graph_structure(tmp_path, capsys, model, pattern):
    refused(capsys, tmp_path, save(tmp_path, model), ExitCode.INVALID_INPUT, pattern)


def _short_raw() -> onnx.TensorProto:
    t = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    t.raw_data = t.raw_data[:20]
    return t


def _wrong_dims() -> onnx.TensorProto:
    t = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    t.dims[:] = [4, 8]
    return t


def _few_floats() -> onnx.TensorProto:
    t = helper.make_tensor("W", TensorProto.FLOAT, [4, 4], [1.0] * 16)
    del t.float_data[7:]
    return t


@pytest.mark.parametrize(("tensor", "pattern"), [
    (_short_raw(), r"initializer 'W' has 20 bytes of raw_data but shape \[4, 4\] \(FLOAT\) "
     r"needs 64"),
    (_wrong_dims(), r"initializer 'W' has 64 bytes of raw_data but shape \[4, 8\]"),
    (_few_floats(), r"initializer 'W' has 7 values in float_data but shape \[4, 4\]"),
    (helper.make_tensor("W", TensorProto.STRING, [1], [b"a"]),
     r"initializer 'W': element type STRING is not supported"),
])
def test_initializer_data_that_disagrees_with_its_shape(tmp_path, capsys, tensor, pattern):
    refused(capsys, tmp_path, save(tmp_path, mlp(inits=[tensor])), ExitCode.INVALID_INPUT,
            pattern)


def test_nan_and_inf_weights_are_flagged_not_refused(tmp_path, capsys):
    w = np.ones((4, 4), np.float32)
    w[1, 2], w[0, 0], w[3, 3] = np.nan, np.inf, -np.inf
    code, _, err = wafer(capsys, "compile", str(save(tmp_path, mlp(w=w))), "-t", "mesh8x8",
                         "-o", str(tmp_path / "out"))
    assert code == 0 and (tmp_path / "out" / "placement.json").is_file()
    assert err.splitlines() == [
        "warning: initializer W holds 1 NaN and 2 Inf of 16 values; outputs computed from it "
        "will not be finite (check the export or checkpoint)"]


def _input(dims, elem=TensorProto.FLOAT):
    return [helper.make_tensor_value_info("x", elem, dims)]


@pytest.mark.parametrize(("inputs", "code", "pattern"), [
    (_input([0, 4]), ExitCode.INVALID_INPUT,
     r"graph input 'x': dim 0 is 0; zero-sized and negative dims are not supported"),
    (_input([2, -4]), ExitCode.INVALID_INPUT, r"graph input 'x': dim 1 is -4"),
    (_input([2, 1 << 40]), ExitCode.INVALID_INPUT, r"dim 1 is 1,099,511,627,776; dims must be"),
    (_input(None), ExitCode.INVALID_INPUT,
     r"input x has no declared shape \(dynamic rank\); give it one with --input-shapes x:"),
    (_input(["n", 4]), ExitCode.INVALID_INPUT,
     r"input x dim 0 \(n\) is dynamic; bind it with --batch N or --input-shapes x:\[N,4\]"),
    (_input([2, 4], TensorProto.COMPLEX64), ExitCode.INVALID_INPUT,
     r"graph input 'x': element type COMPLEX64 is not supported"),
    ([helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT, [2, 4])],
     ExitCode.INVALID_INPUT, r"graph input 'x' is a sequence value, not a tensor"),
])
def test_inputs(tmp_path, capsys, inputs, code, pattern):
    refused(capsys, tmp_path, save(tmp_path, mlp(inputs=inputs)), code, pattern)


def test_several_unsupported_ops_and_control_flow_listed_at_once(tmp_path, capsys):
    then = helper.make_graph([_node("Identity", ["x"], ["t"], "ti")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4])])
    other = helper.make_graph([_node("Neg", ["x"], ["e"], "ei")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 4])])
    body = helper.make_graph(
        [_node("Identity", ["c"], ["co"], "bc"), _node("Identity", ["v"], ["vo"], "bv")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("co", TensorProto.BOOL, []),
         helper.make_tensor_value_info("vo", TensorProto.FLOAT, [2, 4])])
    scan = helper.make_graph(
        [_node("Add", ["s", "e"], ["so"], "sa"), _node("Identity", ["so"], ["eo"], "si")], "scan",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("s", "e")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("so", "eo")])
    inits = [_W, numpy_helper.from_array(np.array(True), "cond"),
             numpy_helper.from_array(np.array(2, np.int64), "trips")]
    nodes = [_node("If", ["cond"], ["a"], "branch", then_branch=then, else_branch=other),
             _node("Loop", ["trips", "cond", "a"], ["b"], "loop", body=body),
             _node("Scan", ["W", "W"], ["s1", "s2"], "scan", body=scan, num_scan_inputs=1),
             _node("TopK", ["b", "trips"], ["k", "ki"], "topk"),
             _node("MyGelu", ["k"], ["g"], "custom", domain="com.example"),
             _node("Concat", ["g", "s1", "s2"], ["y"], "cat", axis=0)]
    model = mlp(nodes=nodes, inits=inits)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    line = refused(capsys, tmp_path, save(tmp_path, model), ExitCode.UNSUPPORTED,
                   r"5 unsupported op\(s\)")
    for name in ("branch (ai.onnx::If (control flow)", "loop (ai.onnx::Loop (control flow)",
                 "scan (ai.onnx::Scan (control flow)", "topk (ai.onnx::TopK",
                 "custom (com.example::MyGelu"):
        assert name in line, line


@pytest.mark.parametrize(("nodes", "pattern"), [
    ([_node("Shape", [], ["s"], "sh"), _node("Relu", ["x"], ["y"], "act")],
     r"node sh \(Shape\): Node\(sh\) with schema\(::Shape:\d+\) has input size 0"),
    ([_node("Relu", ["x"], ["y"], "act", alpha=1)], r"node act \(Relu\): Unrecognized attribute"),
    ([_node("Softmax", ["x"], ["y"], "sm", axis=1.5)],
     r"node sm \(Softmax\): Mismatched attribute type .* axis"),
    ([_node("Cast", ["x"], ["y"], "c", to=-3)], r"node c \(Cast\): attribute to = -3 is not an "
     r"ONNX element type"),
])
def test_nodes_that_break_their_schema(tmp_path, capsys, nodes, pattern):
    refused(capsys, tmp_path, save(tmp_path, mlp(nodes=nodes, inits=[])),
            ExitCode.INVALID_INPUT, pattern)


def test_reshape_that_changes_the_element_count(tmp_path, capsys):
    shape = numpy_helper.from_array(np.array([8], np.int64), "shape")
    nodes = [_node("Reshape", ["x", "shape"], ["r"], "reshape"), _node("Relu", ["r"], ["y"], "a")]
    model = mlp(nodes=nodes, inits=[shape],
                outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 8  # x [2, 8]: 16 elements
    refused(capsys, tmp_path, save(tmp_path, model), ExitCode.INVALID_INPUT,
            r"node reshape \(Reshape\): input x has 16 elements \(\[2, 8\]\) but output shape "
            r"\[8\] holds 8; the model is invalid")


# --- 3. external data ---------------------------------------------------------------------------

SECRET = b"SECRET!!" * 8  # 64 bytes: W is 4 x 4 float32


def _external_model(location: str, *, offset=None, length=None, dims=(4, 4),
                    extra_keys=()) -> onnx.ModelProto:
    t = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=list(dims))
    t.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", offset), ("length", length), *extra_keys]
    for key, value in entries:
        if value is not None:
            t.external_data.add(key=key, value=str(value))
    return mlp(inits=[t])


def _attack_dir(tmp_path: Path) -> tuple[Path, Path]:
    """tmp_path/model (the model's directory) and a secret file outside it."""
    (tmp_path / "model").mkdir(exist_ok=True)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    return tmp_path / "model", secret


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | bytes):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one records only when asked


def _setup(kind: str, model_dir: Path, secret: Path) -> str:
    """Lay out one attack; returns the location the model gives."""
    if kind == "dotdot":  # CVE-2022-25882
        return "../secret.bin"
    if kind == "nested":  # CVE-2024-27318: traversal inside the path
        (model_dir / "sub").mkdir()
        return "sub/../../secret.bin"
    if kind == "absolute":
        return str(secret)
    if kind == "backslash":
        return "..\\secret.bin"
    if kind == "dir_symlink":  # CVE-2026-27489: a symlinked parent directory
        os.symlink(secret.parent, model_dir / "link")
        return "link/secret.bin"
    if kind == "file_symlink":
        os.symlink(secret, model_dir / "w.bin")
        return "w.bin"
    if kind == "hardlink":
        os.link(secret, model_dir / "w.bin")
        return "w.bin"
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "pattern"), [
    ("dotdot", r"'\.\./secret\.bin' contains '\.\.'"),
    ("nested", r"'sub/\.\./\.\./secret\.bin' contains '\.\.'"),
    ("absolute", r"'/\S+/secret\.bin' must be a relative path inside the model's directory"),
    ("backslash", r"'\.\.\\\\secret\.bin' contains '\.\.'"),
    ("dir_symlink", r"'link/secret\.bin' leads outside the model's directory"),
    ("file_symlink", r"'w\.bin' leads outside the model's directory"),
    ("hardlink", r"\(w\.bin\): the data file has 2 hard links"),
])
def test_external_data_never_leaves_the_model_directory(tmp_path, capsys, kind, pattern):
    global _OPENED
    model_dir, secret = _attack_dir(tmp_path)
    path = save(tmp_path, _external_model(_setup(kind, model_dir, secret)))
    _OPENED = []
    try:
        refused(capsys, tmp_path, path, ExitCode.INVALID_INPUT,
                r"m\.onnx: initializer W(: external data location)? " + pattern)
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert not [p for p in opened if Path(p).resolve() == secret.resolve()], opened


def _data(model_dir: Path, size: int = 64) -> None:
    (model_dir / "w.bin").write_bytes(np.ones(size // 4, np.float32).tobytes())


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"offset": 32}, r"bytes 32\.\.96 lie past the end of the 64-byte file"),
    ({"length": 1 << 60}, r"declares 1,152,921,504,606,846,976 bytes but its shape needs 64"),
    ({"dims": (1 << 20, 1 << 20)}, r"bytes 0\.\.4,398,046,511,104 lie past the end of the "
     "64-byte file"),
    ({"dims": (1 << 40, 1 << 40)}, r"has [\d,]+ elements, more than any real model"),
    ({"length": -5}, r"negative external offset or length"),
    ({"offset": "12abc"}, r"external offset/length are not integers"),
    ({"extra_keys": [("basepath2", "x")]}, r"unknown external data key\(s\) 'basepath2'"),
])
def test_external_offsets_and_lengths_are_checked_before_reading(tmp_path, capsys, kw,
                                                                 pattern):
    (tmp_path / "model").mkdir()
    _data(tmp_path / "model")
    path = save(tmp_path, _external_model("w.bin", **kw))
    refused(capsys, tmp_path, path, ExitCode.INVALID_INPUT, pattern)


def test_external_data_only_for_initializers(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    _data(tmp_path / "model")
    t = _external_model("w.bin").graph.initializer[0]
    nodes = [_node("Constant", [], ["W"], "const", value=t),
             _node("MatMul", ["x", "W"], ["h"], "mm"), _node("Relu", ["h"], ["y"], "act")]
    refused(capsys, tmp_path, save(tmp_path, mlp(nodes=nodes, inits=[])),
            ExitCode.INVALID_INPUT, r"node const \(Constant\) attribute value: external data is "
            "accepted only for graph initializers")


def test_external_weights_inside_the_directory_are_read(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    _data(tmp_path / "model")
    path = save(tmp_path, _external_model("w.bin"))
    code, out, err = wafer(capsys, "inspect", str(path), "--json")
    assert code == 0 and json.loads(out)["shape_only"] is False and _lines(err) == []


# --- 4. target specs ---------------------------------------------------------------------------

SPEC = (ROOT / "targets" / "mesh8x8.toml").read_text()


@pytest.mark.parametrize(("edit", "pattern"), [
    (("rows = 8", "rows = 8 x"), r"TOML syntax error: .* \(at line 8, column 10\)"),
    (("rows = 8", "rowz = 8"), r"grid\.rowz: unknown key; did you mean grid\.rows\?"),
    (("cols = 8\n", ""), r"grid\.cols: missing key \(expected an integer\)"),
    (("rows = 8", 'rows = "8"'), r'grid\.rows: expected an integer, got "8"'),
    (("count = 1", "count = 1.5"), r"wafers\.count: expected an integer, got 1\.5"),
    (("rows = 8", "rows = 10000000"), r"grid\.rows: expected a value in 1\.\.65,536, got "
     "10,000,000"),
    (('sram_bytes = "64 KiB"', "sram_bytes = 0"), r"core\.sram_bytes: expected a value in 1\.\."),
    (("rows = 8", "rows = -3"), r"grid\.rows: expected a value in 1\.\.65,536, got -3"),
    (('latency_s = "1 us"', 'latency_s = "-1 us"'), r"offchip\.latency_s: expected seconds"),
])
def test_target_spec_errors_name_the_key(tmp_path, capsys, edit, pattern):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.replace(*edit, 1))
    refused(capsys, tmp_path, "gpt2-tiny", ExitCode.INVALID_INPUT,
            r"spec\.toml: " + pattern, target=str(path))


def test_absurd_grid_refused_up_front(tmp_path, capsys):
    path = tmp_path / "huge.toml"
    path.write_text(SPEC.replace("rows = 8", "rows = 65536").replace("cols = 8", "cols = 65536"))
    refused(capsys, tmp_path, "gpt2-tiny", ExitCode.INVALID_INPUT,
            r"grid: 65,536 x 65,536 = 4,294,967,296 cores per wafer; at most 100,000,000",
            target=str(path))


# --- 5. OUT handling, interrupts, verify of a changed OUT --------------------------------------


def _contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_existing_out_is_never_corrupted(tmp_path, capsys):
    out = tmp_path / "out"
    assert wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out))[0] == 0
    before = _contents(out)
    code, _, err = wafer(capsys, "compile", "gpt2-tiny", "-t", "mesh8x8", "-o", str(out))
    assert code == ExitCode.USAGE and "already exists; pass --force" in err
    # --force with a compile that fails: the old OUT stays whole, nothing else is left
    bad = save(tmp_path, b"")
    code, _, err = wafer(capsys, "compile", str(bad), "-t", "mesh8x8", "-o", str(out), "--force")
    assert code == ExitCode.INVALID_INPUT
    assert _contents(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]
    # --force never replaces a directory wafer did not write
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(mine),
                         "--force")
    assert code == ExitCode.USAGE and "not an output of `wafer compile`" in err
    assert (mine / "notes.txt").read_text() == "keep"


def _interrupt(tmp_path: Path, sig: int, *extra: str) -> tuple[int, str]:
    """Start a compile whose placement takes seconds, send `sig` while CP-SAT runs."""
    proc = subprocess.Popen([*WAFER, "compile", "llama3-8b", "-t", "wse3", "-o", "out",
                             "--time-limit", "60", *extra], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # stage lines arrive as the stages finish
        lines.append(line)
        if line.startswith("[tiling]"):
            break
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=120)  # a hang guard, not a timing assertion
    return proc.returncode, "".join(lines) + rest


@pytest.mark.parametrize(("sig", "code", "message"), [
    (signal.SIGINT, 130, "error: interrupted"),
    (signal.SIGTERM, 143, "error: terminated (SIGTERM)"),
])
def test_interrupted_compile_leaves_no_partial_out(tmp_path, sig, code, message):
    got, err = _interrupt(tmp_path, sig)
    assert got == code and err.rstrip().endswith(message), err
    assert "[placement]" not in err  # it stopped inside the solver, not after it
    assert list(tmp_path.iterdir()) == []  # no OUT, no temporary directory


def test_interrupted_forced_compile_keeps_the_old_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "placement.json").write_text("{}")
    got, err = _interrupt(tmp_path, signal.SIGINT, "--force")
    assert got == 130, err
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["placement.json"]


def test_verify_detects_a_changed_model_or_target(tmp_path, capsys):
    model = save(tmp_path, mlp())
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    assert wafer(capsys, "compile", str(model), "-t", str(spec), "-o", str(out))[0] == 0
    assert wafer(capsys, "verify", str(out))[0] == 0
    spec.write_text(SPEC.replace("step_overhead_cycles = 100", "step_overhead_cycles = 101"))
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INVALID_INPUT and len(_lines(err)) == 1
    assert "target mesh8x8 (" in err and "changed since the compile (sha256 differs)" in err
    spec.write_text(SPEC)
    model.write_bytes(mlp(w=np.zeros((4, 4), np.float32)).SerializeToString())
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INVALID_INPUT and "changed since it was compiled" in err
    shutil.rmtree(model.parent)
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INVALID_INPUT and "is not found" in err


@pytest.mark.parametrize(("file", "content", "pattern"), [
    ("placement.json", "[]", r"placement\.json: expected a JSON object"),
    ("placement.json", '{"model": "x"}', r"placement\.json: model is not an object"),
    ("placement.json", "{not json", r"placement\.json: not readable JSON"),
    ("schedule.json", "{}", r"schedule\.json: malformed \(KeyError: 'regions'\)"),
])
def test_verify_of_a_damaged_out(tmp_path, capsys, file, content, pattern):
    out = tmp_path / "out"
    assert wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out))[0] == 0
    (out / file).write_text(content)
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INVALID_INPUT and len(_lines(err)) == 1 and re.search(pattern, err)


def _edit_layer(doc: dict) -> None:
    doc["layers"][0]["rect"] = "x"


@pytest.mark.parametrize(("file", "edit", "pattern"), [
    ("placement.json", _edit_layer, r"placement\.json: layers\[0\]: rect is missing or not an "
     "object"),
    ("schedule.json", lambda d: d.update(regions=1), r"schedule\.json: malformed \(TypeError"),
])
def test_view_of_a_damaged_out(tmp_path, capsys, file, edit, pattern):
    out = tmp_path / "out"
    assert wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out),
                 "--no-report")[0] == 0
    doc = json.loads((out / file).read_text())
    edit(doc)
    (out / file).write_text(json.dumps(doc))
    code, _, err = wafer(capsys, "view", str(out))
    assert code == ExitCode.INVALID_INPUT and len(_lines(err)) == 1 and re.search(pattern, err)


# --- 6. determinism across processes ------------------------------------------------------------


def test_two_processes_write_byte_identical_placement_and_schedule(tmp_path):
    for run, seed in (("a", "1"), ("b", "2")):  # different hash seeds: set order may differ
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([*WAFER, "-q", "compile", "gpt2-tiny", "-t", "mesh8x8-x2", "-o", run],
                       cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    for name in ("placement.json", "schedule.json", "trace.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    log = json.loads((tmp_path / "a" / "compile_log.json").read_text())
    assert set(log) == {"stage_seconds", "solver_wall_time_s"}  # timings live only here
    assert "wall_time" not in (tmp_path / "a" / "placement.json").read_text()


# --- 7. mistakes caught before ONNX Runtime or OUT (issue 12, items 4 and 5) --------------------


@pytest.mark.parametrize(("model", "table", "node"), [
    ("gpt2-tiny", "transformer.wpe.weight", "/transformer/wpe/Gather"),  # Gather(Range(seq))
    # HF BERT slices a [0, max_positions) buffer to seq: Slice clamps, Add would fail later
    ("bert-tiny", "bert.embeddings.position_embeddings.weight",
     "/bert/embeddings/position_embeddings/Gather"),
])
def test_a_seq_len_beyond_the_position_table_is_refused_before_out(tmp_path, capsys, model,
                                                                   table, node):
    from compiler import zoo

    rows = zoo.ZOO[model].config.max_positions
    line = refused(capsys, tmp_path, model, ExitCode.INVALID_INPUT,
                   rf"needs row {4 * rows - 1} of {re.escape(table)}, a table of {rows} "
                   rf"rows .*use --seq-len {rows} or less", "--seq-len", str(4 * rows), "--verify")
    assert f"node {node} (Gather)" in line
    # one past the table is refused, the table's own length is not
    assert wafer(capsys, "inspect", model, "--seq-len", str(rows + 1))[0] == 3
    assert wafer(capsys, "inspect", model, "--seq-len", str(rows))[0] == 0


def test_a_real_export_past_its_position_table_is_refused(tmp_path, capsys):
    """The torch export ONNX Runtime failed on ('indices element out of data bounds')."""
    fixture = ROOT / "tests" / "fixtures" / "gpt2_torchscript_op20_dynamic.onnx"
    table = onnx.load(str(fixture)).graph.initializer
    rows = next(t.dims[0] for t in table if t.name == "transformer.wpe.weight")
    refused(capsys, tmp_path, fixture, ExitCode.INVALID_INPUT,
            rf"transformer\.wpe\.weight, a table of {rows} rows", "--batch", "1", "--seq-len",
            str(rows + 16), "--verify")


STATIC = ROOT / "tests" / "fixtures" / "gpt2_torchscript_op17_static.onnx"  # input_ids [2, 16]


@pytest.mark.parametrize(("model", "flags", "pattern"), [
    (STATIC, ["--seq-len", "8"],
     r"--seq-len 8: the model fixes input input_ids dim 1 to 16; leave out --seq-len"),
    (STATIC, ["--batch", "1"], r"--batch 1: the model fixes input input_ids dim 0 to 2"),
    ("mlp", ["--batch", "2"], r"--batch 2: the model has no batch dim to bind"),
    ("mlp", ["--seq-len", "4"], r"--seq-len 4: the model has no sequence dim to bind"),
    ("gpt2-tiny", ["--input-shapes", "input_ids:[1,32]", "--seq-len", "64"],
     r"input input_ids dim 1 \(seq\) is 32 by --input-shapes but --seq-len says 64"),
])
def test_batch_or_seq_len_is_never_silently_ignored(tmp_path, capsys, model, flags, pattern):
    path = save(tmp_path, mlp()) if model == "mlp" else model
    refused(capsys, tmp_path, path, ExitCode.INVALID_INPUT, pattern, *flags)


def test_batch_and_seq_len_that_agree_with_fixed_dims_are_accepted(capsys):
    code, out, _ = wafer(capsys, "inspect", str(STATIC), "--batch", "2", "--seq-len", "16")
    assert code == 0 and "batch" not in out.splitlines()[0]  # static: nothing was bound
    code, out, _ = wafer(capsys, "inspect", "gpt2-tiny", "--input-shapes", "input_ids:[1,32]",
                         "--seq-len", "32")
    assert code == 0 and "seq=32" in out


def test_a_misspelt_zoo_name_gets_did_you_mean_like_a_misspelt_target(tmp_path, capsys):
    model = refused(capsys, tmp_path, "gpt2-tinny", ExitCode.INVALID_INPUT,
                    r"model 'gpt2-tinny' is neither a file nor a zoo name \(did you mean "
                    r"'gpt2-tiny'\?\); zoo models: gpt2-tiny, ")
    target = refused(capsys, tmp_path, "gpt2-tiny", ExitCode.INVALID_INPUT,
                     r"unknown target 'mesh8z8' \(did you mean 'mesh8x8'\?\)", target="mesh8z8")
    assert model and target
    assert wafer(capsys, "inspect", "no-such-model")[0] == ExitCode.INVALID_INPUT  # no close one


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_go_before_or_after_the_command(capsys, where):
    def run(flag: str, *argv: str) -> tuple[int, str, str]:
        code = main([flag, *argv] if where == "before" else [*argv, flag])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("-q", "check", "gpt2-tiny", "-t", "mesh8x8")
    assert code == 0 and "verdict" in out and err == ""
    code, _, err = run("-v", "inspect", "gpt2-tiny", "--input-shapes", "input_ids:[1,2,3]")
    assert code == ExitCode.INVALID_INPUT and "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith("error: --input-shapes gives input_ids rank")
    code, _, err = run("-q", "inspect", "gpt2-tiny", "--input-shapes", "input_ids:[1,2,3]")
    assert code == ExitCode.INVALID_INPUT and "Traceback" not in err


def test_both_places_at_once_and_either_alone_keep_their_meaning(capsys):
    from compiler.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["-q", "targets"]).quiet and not parse(["-q", "targets"]).verbose
    assert parse(["targets", "-v"]).verbose and not parse(["targets", "-v"]).quiet
    both = parse(["-v", "check", "gpt2-tiny", "-t", "wse3", "-q"])
    assert both.verbose and both.quiet
    assert not parse(["targets"]).quiet and not parse(["targets"]).verbose


@pytest.mark.parametrize(("argv", "code", "pattern"), [
    (["nosuch.onnx", "-t", "mesh8x8"], ExitCode.INVALID_INPUT,
     r"model file nosuch\.onnx does not exist"),
    (["gpt2-tiny", "-t", "mesh8z8"], ExitCode.INVALID_INPUT, r"unknown target 'mesh8z8'"),
    (["gpt2-tiny", "-t", "mesh8x8", "--input-shapes", "input_ids=1,2"], ExitCode.USAGE,
     r"--input-shapes: cannot parse"),
])
def test_compile_checks_its_inputs_before_refusing_an_existing_out(tmp_path, capsys, argv,
                                                                    code, pattern):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    got, _, err = wafer(capsys, "compile", *argv, "-o", str(out))
    assert got == code and re.search(pattern, err) and "already exists" not in err, err
    assert (out / "notes.txt").read_text() == "keep"
