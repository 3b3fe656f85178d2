"""Bad model files through `wafer compile` (exit 3 or 4, one `error: ...` line naming the file,
node, op or tensor, no traceback, no OUT): broken and non-ONNX files, versions newer than
supported, graph structure, initializer data that disagrees with its shape, NaN/Inf weights (a
warning, not a refusal), graph inputs, unsupported ops and control flow, onnx's node checks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cli_cases import _node, mlp, refused, save, wafer
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import ExitCode


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
             _node("NonZero", ["b"], ["k"], "nonzero"),
             _node("MyGelu", ["k"], ["g"], "custom", domain="com.example"),
             _node("Concat", ["g", "s1", "s2"], ["y"], "cat", axis=0)]
    model = mlp(nodes=nodes, inits=inits)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    line = refused(capsys, tmp_path, save(tmp_path, model), ExitCode.UNSUPPORTED,
                   r"5 unsupported op\(s\)")
    for name in ("branch (ai.onnx::If (control flow)", "loop (ai.onnx::Loop (control flow)",
                 "scan (ai.onnx::Scan (control flow)", "nonzero (ai.onnx::NonZero",
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
