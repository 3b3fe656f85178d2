"""The frontend on zoo models: layers, dim binding, unsupported ops, external data and the
structural grouping fallback. Parameter/FLOP/KV counts (compiler/tiling/costs.py) are in
test_costs.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from conftest import BIG_ZOO, TINY_ZOO, zoo_graph
from onnx import TensorProto, helper

from compiler import ir, zoo
from compiler.errors import ModelError, ShapeError, UnsupportedOpsError, UsageError
from compiler.frontend import DimRequest, FrontendOptions, load_model, parse_input_shapes
from compiler.tiling.costs import model_cost


def _cfg(name: str):
    return zoo.ZOO[name].config


@pytest.mark.parametrize("name", TINY_ZOO + BIG_ZOO)
def test_zoo_model_groups_into_one_layer_per_block(name):
    g = zoo_graph(name)
    ir.check_graph(g)
    assert [b.index for b in g.blocks()] == list(range(_cfg(name).layers))
    kinds = [layer.kind for layer in g.layers]
    assert kinds[0] is ir.LayerKind.EMBEDDING
    assert kinds[-1] is ir.LayerKind.HEAD
    assert all(isinstance(d, int) and d > 0 for t in g.tensors for d in t.shape) or any(
        t.shape == () for t in g.tensors)


def test_seq_len_and_batch_bind_dynamic_dims():
    g = zoo_graph("gpt2-tiny", batch=2, seq=32)
    assert dict(g.dims) == {"batch": 2, "seq": 32}
    assert g.tensor("logits").shape == (2, 32, 256)


def test_input_shapes_override_named_dims():
    opts = FrontendOptions(DimRequest(parse_input_shapes(["input_ids:[3,8]"])))
    g = load_model("llama-tiny", opts)
    assert g.tensor("input_ids").shape == (3, 8)
    assert g.tensor("logits").shape == (3, 8, 256)


@pytest.mark.parametrize("spec", ["input_ids", "input_ids:[1,x]", "input_ids:1,2"])
def test_bad_input_shapes_spec_is_a_usage_error(spec):
    with pytest.raises(UsageError, match="name:\\[d0,d1"):
        parse_input_shapes([spec])


def test_input_shapes_for_unknown_input_names_the_real_inputs():
    opts = FrontendOptions(DimRequest(parse_input_shapes(["tokens:[1,8]"])))
    with pytest.raises(UsageError, match="its inputs are: input_ids"):
        load_model("gpt2-tiny", opts)


def _dynamic_model(tmp_path, dim="seq"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Relu", ["x"], ["y"], name="/model/layers.0/act/Relu")
    model = helper.make_model(helper.make_graph([node], "dyn", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    return path


def test_unbound_dim_names_input_and_flag(tmp_path):
    with pytest.raises(ShapeError, match=r"input x dim 0 \(batch\).*--batch N"):
        load_model(_dynamic_model(tmp_path))


def test_unknown_dim_name_asks_for_input_shapes(tmp_path):
    path = _dynamic_model(tmp_path, dim="frames")
    with pytest.raises(ShapeError, match=r"dim 1 \(frames\).*--input-shapes x:\[N,N,4\]"):
        load_model(path, FrontendOptions(DimRequest(batch=1)))


def test_every_unsupported_op_is_listed_at_once(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Hardmax", ["a"], ["b"], name="first_bad"),
        helper.make_node("FusedThing", ["b"], ["c"], name="custom", domain="com.example"),
        helper.make_node("Celu", ["c"], ["y"], name="third_bad"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "bad", [x], [y]), opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedOpsError) as info:
        load_model(path)
    assert [o.node for o in info.value.ops] == ["first_bad", "custom", "third_bad"]
    msg = str(info.value)
    assert "com.example::FusedThing v1" in msg and "float32[2,4]" in msg
    assert "3 unsupported op(s)" in msg


def _external_model(tmp_path, location="w.bin"):
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    init = onnx.numpy_helper.from_array(w, "model.layers.0.w")
    node = helper.make_node("MatMul", ["x", "model.layers.0.w"], ["y"], name="mm")
    model = helper.make_model(helper.make_graph([node], "ext", [x], [y], [init]),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location=location,
              size_threshold=0, all_tensors_to_one_file=True)
    return path, w


def test_external_weights_are_read_from_the_model_directory(tmp_path):
    path, w = _external_model(tmp_path)
    g = load_model(path)
    assert not g.shape_only
    np.testing.assert_array_equal(g.tensor("model.layers.0.w").data, w)


def test_missing_external_file_switches_to_shapes_only(tmp_path):
    path, _ = _external_model(tmp_path)
    (tmp_path / "w.bin").unlink()
    g = load_model(path)
    assert g.shape_only and g.tensor("model.layers.0.w").data is None
    with pytest.raises(ModelError, match="data file not found; use --shapes-only"):
        load_model(path, FrontendOptions(shapes_only=False))


def test_external_location_outside_the_model_directory_is_refused(tmp_path):
    path, _ = _external_model(tmp_path)
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../w.bin"
    onnx.save(model, path)
    (tmp_path.parent / "w.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ModelError, match="contains '..'"):
        load_model(path, FrontendOptions(shapes_only=False))


def test_not_an_onnx_file_is_a_model_error(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(ModelError, match="is not an ONNX model"):
        load_model(path)


def test_unknown_model_name_lists_the_zoo():
    with pytest.raises(ModelError, match="gpt2-tiny"):
        load_model("no-such-model")


def _strip_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """No module path anywhere: nodes, weights and values get generic names."""
    g = model.graph
    keep = {v.name for v in [*g.input, *g.output]}
    names = [t.name for t in g.initializer] + [o for n in g.node for o in n.output]
    rename = {x: (x if x in keep else f"v{i}") for i, x in enumerate(names)}
    for t in g.initializer:
        t.name = rename[t.name]
    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        del node.metadata_props[:]
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    del g.value_info[:]
    return model


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "llama-tiny-opset23"])
def test_structural_fallback_finds_the_blocks_without_names(tmp_path, name):
    path = tmp_path / "anon.onnx"
    onnx.save(_strip_names(zoo.build(name)), path)
    g = load_model(path)
    assert len(g.blocks()) == _cfg(name).layers
    assert g.layers[-1].kind is ir.LayerKind.HEAD
    named = zoo_graph(name)
    assert model_cost(g).params == model_cost(named).params


def test_loading_is_deterministic():
    a = load_model("llama-tiny")
    b = load_model("llama-tiny")
    assert ir.format_graph(a) == ir.format_graph(b)
    assert a == b


def test_checker_rejects_use_before_definition(gpt2_tiny):
    block = gpt2_tiny.layers[1]
    swapped = dataclasses.replace(block, ops=block.ops[::-1])
    layers = (gpt2_tiny.layers[0], swapped, *gpt2_tiny.layers[2:])
    with pytest.raises(ir.GraphCheckError, match="used before it is defined"):
        ir.check_graph(dataclasses.replace(gpt2_tiny, layers=layers))


def test_input_shapes_and_seq_len_that_disagree_are_refused():
    shapes = parse_input_shapes(["input_ids:[1,32]"])
    with pytest.raises(ShapeError, match="'seq' is 32 by --input-shapes but --seq-len says 64"):
        load_model("bert-tiny", FrontendOptions(DimRequest(shapes, seq_len=64)))
    g = load_model("bert-tiny", FrontendOptions(DimRequest(shapes)))
    assert g.tensor("attention_mask").shape == (1, 32)  # the named dim binds the other inputs


def test_zoo_shape_only_models_never_read_a_stray_weight_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llama3-8b.weights.bin").write_bytes(b"\0" * 1024)
    g = load_model("llama3-8b", FrontendOptions(shapes_only=False))
    assert g.shape_only
