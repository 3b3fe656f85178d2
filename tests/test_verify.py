"""wafer verify: ONNX Runtime reference runs, tensor comparison statistics, inputs, the report,
and the CLI. Tests marked `executor` need compiler.executor; the others stub it with ORT's own
values, so the comparison and CLI paths are covered without it."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from compiler import ir
from compiler import verify as V
from compiler.cli import main
from compiler.errors import ExitCode, ModelError, UsageError
from compiler.frontend import DimRequest, FrontendOptions, export, load_model
from compiler.frontend.export import input_specs, reference_model_bytes
from compiler.verify import run as verify_run
from tests.conftest import FIXTURES, TINY_ZOO, zoo_graph

ALL_LAYERS = "all"


@functools.cache
def _out(tmp_root: Path, model: str, *extra: str) -> Path:
    out = tmp_root / f"{model}{''.join(extra)}"
    code = main(["-q", "compile", model, "-t", "mesh8x8", "-o", str(out), *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("verify")


def _fixture_graph(name: str) -> tuple[str, ir.Graph, Path]:
    path = FIXTURES / f"{name}.onnx"
    ref = FIXTURES / f"{name}.ref.npz"
    with np.load(ref) as z:
        shapes = tuple((k[len("input."):], z[k].shape) for k in z.files if k.startswith("input."))
    return str(path), load_model(path, FrontendOptions(DimRequest(shapes))), ref


# --- ONNX Runtime ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_ZOO)
def test_reference_runs_are_identical(name):
    g = zoo_graph(name)
    inputs = V.random_inputs(g, seed=3)
    a, b = V.run_reference(name, inputs), V.run_reference(name, inputs)
    assert set(a) == set(g.outputs) == set(b)
    for k in a:
        assert a[k].shape == g.tensor(k).shape and np.isfinite(a[k]).all()
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name", ["gpt2_dynamo_op18_dynamic", "llama_torchscript_op17_static",
                                  "bert_dynamo_op23_static"])
def test_reference_matches_the_fixture_goldens(name):
    source, g, ref = _fixture_graph(name)
    inputs = V.load_inputs(ref, g)  # input.NAME keys; output.* ignored
    got = V.run_reference(source, inputs)
    with np.load(ref) as z:
        for out in g.outputs:
            np.testing.assert_allclose(got[out], z[f"output.{out}"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", TINY_ZOO)
def test_extra_outputs_return_every_layer_output_at_its_ir_shape(name):
    g = zoo_graph(name)
    per_layer = V.layer_outputs(g)
    names = [n for layer in g.layers for n in per_layer[layer.name]]
    assert [layer.name for layer in g.layers] == list(per_layer) and len(names) >= len(g.layers)
    ref = V.run_reference(name, V.random_inputs(g), [*names, "no/such/tensor"])
    assert "no/such/tensor" not in ref
    for n in names:
        assert ref[n].shape == g.tensor(n).shape, n


def test_extra_outputs_can_be_any_activation():
    g = zoo_graph("llama-tiny")
    acts = [t.name for t in g.tensors if t.kind is ir.TensorKind.ACTIVATION]
    ref = V.run_reference("llama-tiny", V.random_inputs(g), acts)
    assert all(ref[n].shape == g.tensor(n).shape for n in acts)


def test_layer_outputs_are_what_later_layers_read():
    g = zoo_graph("gpt2-tiny")
    lo = V.layer_outputs(g)
    assert lo["embedding"] == ["/transformer/Add_output_0"]
    assert lo["block.0"] == ["/transformer/h.0/Add_1_output_0"]
    assert lo["head"] == ["logits"]


def test_input_specs_keep_dim_params():
    specs = input_specs(FIXTURES / "gpt2_dynamo_op18_dynamic.onnx")
    assert specs == [("input_ids", "int64", ("batch", "seq")),
                     ("attention_mask", "int64", ("batch", "seq"))]


def test_a_stored_file_goes_to_ort_as_its_own_bytes_plus_the_extra_outputs():
    """A plain file is not re-serialized (0.4 GB for BERT-base): its bytes with the extra
    outputs appended parse as the model with those outputs added, in order, each once."""
    path = FIXTURES / "gpt2_dynamo_op18_dynamic.onnx"
    names = ["add_17", "no/such/tensor", "logits", "add_17", "add_185"]
    data = reference_model_bytes(path, names)
    assert data.startswith(path.read_bytes())
    got, want = onnx.ModelProto(), onnx.load(path)
    got.ParseFromString(data)
    want.graph.output.extend(onnx.ValueInfoProto(name=n) for n in ("add_17", "add_185"))
    assert got == want
    assert reference_model_bytes(path) == path.read_bytes()


def test_a_file_spelling_the_standard_domain_ai_onnx_goes_respelled(tmp_path):
    """normalize_domains respells 'ai.onnx' as '': such a file is not handed over as its own
    bytes but as the respelled model, as before the stored-bytes path."""
    node = helper.make_node("Relu", ["x"], ["y"], name="relu", domain="ai.onnx")
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, tmp_path / "m.onnx")
    got = onnx.ModelProto()
    got.ParseFromString(reference_model_bytes(tmp_path / "m.onnx"))
    assert [n.domain for n in got.graph.node] == [""]


def test_external_weights_are_read_inline(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.bin", size_threshold=0)
    x = np.ones((2, 3), np.float32)
    got = V.run_reference(path, {"x": x}, ["h"])
    np.testing.assert_array_equal(got["h"], x @ w)
    np.testing.assert_array_equal(got["y"], np.maximum(x @ w, 0))


def test_models_over_2gb_are_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(export, "PROTOBUF_LIMIT", 1000)
    with pytest.raises(ModelError, match="protobuf limits to 2 GB"):
        reference_model_bytes("gpt2-tiny")  # in memory
    w = onnx.numpy_helper.from_array(np.zeros((40, 40), np.float32), "w")  # 6,400 B outside
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 40])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.bin",
              size_threshold=0)
    with pytest.raises(ModelError, match="protobuf limits to 2 GB"):
        reference_model_bytes(tmp_path / "ext.onnx")  # external data


# --- compare -----------------------------------------------------------------------------------


def test_compare_finds_a_planted_error():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 7)).astype(np.float32)
    got = ref.copy()
    got[1, 3, 4] += 0.25
    c = V.compare("logits", got, ref, atol=1e-4, rtol=1e-3)
    assert not c.passed and c.where == (1, 3, 4) and c.shape == (2, 5, 7)
    assert c.max_abs == pytest.approx(0.25, rel=1e-6)
    assert (c.got, c.ref) == (float(got[1, 3, 4]), float(ref[1, 3, 4]))
    assert c.min_atol == pytest.approx(0.25 - 1e-3 * abs(float(ref[1, 3, 4])), rel=1e-5)
    expected_pcc = np.corrcoef(got.ravel().astype(np.float64), ref.ravel().astype(np.float64))
    assert c.pearson == pytest.approx(expected_pcc[0, 1], abs=1e-12)
    assert c.nan == c.inf == c.nonfinite_mismatches == 0
    assert V.compare("logits", got, ref, atol=c.min_atol * 1.0001, rtol=1e-3).passed
    assert not V.compare("logits", got, ref, atol=c.min_atol * 0.999, rtol=1e-3).passed


def test_compare_line_format():
    ref = np.array([[0.0, 0.5], [0.25, 1.0]])
    got = ref + np.array([[1e-7, 2e-7], [3e-7, 0.0]])
    line = V.compare("logits", got, ref, 1e-4, 1e-3).line()
    assert line.startswith("PASSED logits: max abs 3e-07 (at [1, 0]: 0.2500003 vs 0.25), ")
    assert line.endswith("PCC 1.000000, passes at atol >= 1e-07")
    bad = V.compare("logits", got + 1, ref, 1e-4, 1e-3).line()
    assert bad.startswith("FAILED logits: max abs 1 (at [") and bad.endswith(
        "(atol 0.0001, rtol 0.001)")


def test_nan_or_inf_where_ort_has_none_fails():
    ref = np.ones((3, 3), np.float32)
    got = ref.copy()
    got[2, 1] = np.nan
    c = V.compare("y", got, ref, 1.0, 1.0)  # any finite error would pass
    assert not c.passed and c.nan == 1 and c.where == (2, 1) and math.isnan(c.got)
    assert c.min_atol == math.inf and "1 NaN, 0 Inf where ORT has none" in c.line()
    assert c.max_abs == math.inf  # a NaN where ORT has a number is no small error
    got[2, 1] = np.inf
    c = V.compare("y", got, ref, 1.0, 1.0)
    assert not c.passed and (c.nan, c.inf) == (0, 1)


def test_equal_infinities_match_and_nan_on_both_sides_needs_allow_nan():
    ref = np.array([np.nan, np.inf, -np.inf, 1.0])
    strict = V.compare("y", ref.copy(), ref, 0.0, 0.0)
    assert not strict.passed and strict.nan_both == strict.nonfinite_mismatches == 1
    assert "non-finite: 1 NaN on both sides (--allow-nan accepts them)" in strict.line()
    assert "max abs 0" not in strict.line()
    allowed = V.compare("y", ref.copy(), ref, 0.0, 0.0, allow_nan=True)
    assert allowed.passed and allowed.finite == 1
    assert allowed.line().endswith("; non-finite: 1 NaN on both sides, allowed by --allow-nan")
    infs = V.compare("y", ref[1:].copy(), ref[1:], 0.0, 0.0)
    assert infs.passed and infs.nan_both == 0
    for got in ([np.nan, -np.inf, -np.inf, 1.0], [0.0, np.inf, -np.inf, 1.0]):
        assert not V.compare("y", np.array(got), ref, 1e9, 0, allow_nan=True).passed
    mixed = V.compare("y", np.array([np.nan, np.nan]), np.array([np.nan, 1.0]), 0, 0,
                      allow_nan=True)
    assert not mixed.passed and mixed.nonfinite_mismatches == 1
    assert "1 NaN on both sides, allowed by --allow-nan" in mixed.line()


def test_all_nan_on_both_sides_never_reads_as_max_abs_0():
    nan = np.full((2, 3), np.nan)
    strict = V.compare("y", nan, nan, 1e-4, 1e-3)
    assert not strict.passed and "no finite elements" in strict.line()
    allowed = V.compare("y", nan, nan, 1e-4, 1e-3, allow_nan=True)
    assert allowed.line() == ("PASSED y: non-finite: 6 NaN on both sides, allowed by "
                              "--allow-nan; no finite elements")


def test_pcc_of_constants():
    same = V.compare("c", np.full((4, 4), 2.0), np.full((4, 4), 2.0), 1e-4, 1e-3)
    assert same.passed and same.pearson == 1.0
    differ = V.compare("c", np.full((4, 4), 3.0), np.full((4, 4), 2.0), 1e-4, 1e-3)
    assert not differ.passed and differ.pearson == 0.0


def test_shape_mismatch_and_empty_tensors():
    c = V.compare("y", np.zeros((2, 3)), np.zeros((3, 2)), 1e-4, 1e-3)
    assert not c.passed and "shape [2, 3], ONNX Runtime's is [3, 2]" in c.line()
    e = V.compare("y", np.zeros((0, 3)), np.zeros((0, 3)), 1e-4, 1e-3)
    assert e.passed and e.where is None and e.max_abs == 0.0


def test_integer_and_bool_tensors_compare_exactly():
    assert V.compare("ids", np.arange(5), np.arange(5), 0, 0).passed
    assert not V.compare("ids", np.arange(5), np.arange(5) + 1, 0, 0).passed
    assert V.compare("m", np.array([True, False]), np.array([True, False]), 0, 0).passed


_finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
       atol=st.floats(0, 1), rtol=st.floats(0, 0.5))
def test_passed_is_numpy_allclose(data, shape, atol, rtol):
    ref = data.draw(hnp.arrays(np.float64, shape, elements=_finite))
    got = data.draw(hnp.arrays(np.float64, shape, elements=_finite))
    c = V.compare("t", got, ref, atol, rtol)
    assert c.passed == np.allclose(got, ref, rtol=rtol, atol=atol, equal_nan=False)
    assert c.min_atol >= 0 and -1.0 <= c.pearson <= 1.0
    assert V.compare("t", got, ref, c.min_atol * (1 + 1e-9) + 1e-300, rtol).passed


# --- inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*TINY_ZOO, "fixture:bert_dynamo_op18_static",
                                  "fixture:gpt2_torchscript_op17_static"])
def test_random_inputs_are_valid_for_the_model(name):
    g = _fixture_graph(name.split(":")[1])[1] if name.startswith("fixture:") else zoo_graph(name)
    a, b = V.random_inputs(g, seed=5), V.random_inputs(g, seed=5)
    for n in g.inputs:
        t = g.tensor(n)
        assert a[n].shape == t.shape and a[n].dtype == np.dtype(t.dtype.value)
        np.testing.assert_array_equal(a[n], b[n])
    ids = a["input_ids"]
    vocab = V.index_extent(g, "input_ids")
    assert vocab is not None and vocab > 2
    assert ids.min() >= 0 and ids.max() < vocab and len(np.unique(ids)) > 2
    if "attention_mask" in a:
        assert (a["attention_mask"] == 1).all()
    if "token_type_ids" in a:
        assert (a["token_type_ids"] == 0).all()
    assert not np.array_equal(V.random_inputs(g, seed=6)["input_ids"], ids)


def test_load_inputs_checks_names_shapes_and_dtypes(tmp_path):
    g = zoo_graph("gpt2-tiny")
    ids = V.random_inputs(g)["input_ids"]
    ok = tmp_path / "ok.npz"
    np.savez(ok, **{"input.input_ids": ids, "output.logits": np.zeros(3)})
    np.testing.assert_array_equal(V.load_inputs(ok, g)["input_ids"], ids)
    cases = {
        "missing": ({"output.logits": np.zeros(3)}, "has no input_ids"),
        "unknown": ({"input_ids": ids, "mask": ids}, "names mask"),
        "shape": ({"input_ids": ids[:, :8]}, "has shape [1,8] but the model was compiled for "
                  "[1,16]; compile again with --input-shapes input_ids:[1,8]"),
        "dtype": ({"input_ids": ids.astype(np.int32)}, "is int32, the model takes int64"),
    }
    for case, (arrays, message) in cases.items():
        path = tmp_path / f"{case}.npz"
        np.savez(path, **arrays)
        with pytest.raises(V.InputsError, match=message.replace("[", r"\[").replace("]", r"\]")):
            V.load_inputs(path, g)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(V.InputsError, match="not a readable .npz"):
        V.load_inputs(tmp_path / "junk.npz", g)


# --- verify (pure) and the report ----------------------------------------------------------


def _ort_values(name: str, names=ALL_LAYERS, seed: int = 0) -> tuple[ir.Graph, dict, dict]:
    g = zoo_graph(name)
    inputs = V.random_inputs(g, seed)
    if names == ALL_LAYERS:
        names = [t.name for t in g.tensors if t.kind is ir.TensorKind.ACTIVATION]
    return g, inputs, V.run_reference(name, inputs, names)


def test_verify_names_the_first_diverging_layer_and_op():
    g, _, ref = _ort_values("gpt2-tiny")
    got = dict(ref)
    softmax = "/transformer/h.1/attn/Softmax_output_0"
    block_out = V.layer_outputs(g)["block.1"][0]
    got[softmax] = ref[softmax] + 1e-2
    got[block_out] = ref[block_out] + 1e-2
    got["logits"] = ref["logits"] + 1e-2
    report = V.verify(g, got, ref, V.layer_outputs(g), 1e-4, 1e-3, {})
    assert not report.passed
    assert [lc.layer for lc in report.layers] == ["embedding", "block.0", "block.1",
                                                 "final_norm", "head"]
    assert [lc.passed for lc in report.layers] == [True, True, False, True, False]
    assert [lc.check.passed for lc in report.layers] == [True, True, False, True, False]
    d = report.first_diverging
    assert (d.layer, d.op_kind, d.tensor) == ("block.1", "Add", block_out)
    inner = V.first_diverging_op(g, "block.1", got, ref, 1e-4, 1e-3)
    assert inner == V.Divergence("block.1", "/transformer/h.1/attn/Softmax", "Softmax", softmax)
    assert "first diverging layer block.1" in report.summary()
    assert "2 of 5 layer(s) differ from ONNX Runtime" in report.summary()


def test_a_failed_layer_fails_the_summary_even_when_outputs_match():
    g, _, ref = _ort_values("gpt2-tiny")
    block_out = V.layer_outputs(g)["block.0"][0]
    got = {**ref, block_out: ref[block_out] + 1e-2}
    report = V.verify(g, got, ref, V.layer_outputs(g), 1e-4, 1e-3, {})
    assert all(c.passed for c in report.outputs) and not report.passed
    assert report.summary().startswith("FAILED: 1 of 5 layer(s) of gpt2-tiny differ from ONNX "
                                       "Runtime")
    assert "PASSED:" not in report.summary()


def test_per_layer_lists_each_layer_once_with_its_node():
    """bert-tiny's block.0 hands on two tensors (the hidden state and the attention mask that
    block.1 reads): one line, both compared, named by the layer and the ONNX node."""
    g, _, ref = _ort_values("bert-tiny")
    per_layer = V.layer_outputs(g)
    assert len(per_layer["block.0"]) == 2
    report = V.verify(g, dict(ref), ref, per_layer, 1e-4, 1e-3, {})
    names = [lc.layer for lc in report.layers]
    assert names == [la.name for la in g.layers] and len(set(names)) == len(names)
    block0 = report.layers[1]
    assert block0.tensors == 2 and block0.failed == 0
    assert block0.op == g.producers[block0.check.name].name
    assert report.summary().endswith(f"all {len(g.layers)} layer(s) within tolerance")
    lines = [ln for ln in report.lines() if ln.startswith("layer ")]
    assert len(lines) == len(g.layers)
    assert lines[1].startswith(f"layer block.0 ({block0.op}, {block0.op_kind}): PASSED ")
    mask = per_layer["block.0"][0] if per_layer["block.0"][0] != block0.check.name \
        else per_layer["block.0"][1]
    bad = V.verify(g, {**ref, mask: ref[mask] + 1.0}, ref, per_layer, 1e-4, 1e-3, {})
    assert bad.layers[1].failed == 1 and bad.layers[1].check.name == mask
    assert bad.layers[1].line().endswith("[1 of 2 tensors failed]")


def test_verify_overrides_fail_fast_and_missing_outputs():
    g, _, ref = _ort_values("bert-tiny", names=())
    got = {k: v + 1e-3 for k, v in ref.items()}
    plain = V.verify(g, got, ref, None, 1e-4, 0.0, {})
    assert [c.passed for c in plain.outputs] == [False, False]
    fast = V.verify(g, got, ref, None, 1e-4, 0.0, {}, fail_fast=True)
    assert len(fast.outputs) == 1 and not fast.passed
    loose = V.verify(g, got, ref, None, 1e-4, 0.0, {n: 2e-3 for n in g.outputs})
    assert loose.passed and all(c.atol == 2e-3 for c in loose.outputs)
    missing = V.verify(g, {}, ref, None, 1e-4, 1e-3, {})
    assert not missing.passed and "the executor did not produce it" in missing.lines()[0]
    with pytest.raises(UsageError, match="--tol names nope"):
        V.verify(g, got, ref, None, 1e-4, 1e-3, {"nope": 1.0})


def test_report_json_and_lines():
    g = zoo_graph("gpt2-tiny")
    _, _, ref = _ort_values("gpt2-tiny", names=V.layer_outputs(g)["block.0"])
    got = dict(ref)
    got["logits"] = ref["logits"].copy()
    got["logits"][0, 0, 0] = np.nan
    report = V.verify(g, got, ref, V.layer_outputs(g), 1e-4, 1e-3, {}, seed=7)
    doc = json.loads(report.to_json())  # strict JSON: NaN and Inf as strings
    assert doc["schema_version"] == V.VERIFY_SCHEMA_VERSION and doc["seed"] == 7
    assert doc["outputs"][0]["min_atol"] == "inf" and doc["outputs"][0]["got"] == "nan"
    assert doc["unmatched"] == [n for names in V.layer_outputs(g).values() for n in names
                                if n not in ref]
    lines = report.lines()
    assert lines[-1].startswith("FAILED: 1 of 1 output(s) of gpt2-tiny differ from ONNX Runtime")
    assert "max abs error inf" in lines[-1]
    assert "non-finite values (NaN/Inf) fail 1 check(s)" in lines[-1]


# --- CLI without the executor (stubbed with ORT's values) -------------------------------------


def _stub_executor(perturb: dict[str, float] | None = None):
    def execute(art, inputs, precision, keep=()):
        names = [t.name for t in art.graph.tensors if t.kind is ir.TensorKind.ACTIVATION]
        values = V.run_reference(art.source, inputs, names)
        for name, delta in (perturb or {}).items():
            values[name] = values[name] + np.float32(delta)
        return SimpleNamespace(outputs={n: values[n] for n in art.graph.outputs},
                               values={n: values[n] for n in keep})
    return execute


def test_cli_refuses_shape_only_models(tmp_root, capsys):
    out = _out(tmp_root, "gpt2-tiny", "--shapes-only")
    capsys.readouterr()
    code = main(["verify", str(out)])
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE
    assert err.strip().splitlines()[-1] == (
        "error: gpt2-tiny was compiled shape-only (no weights): nothing to verify; compile a "
        "model with weights")


def test_cli_without_an_out_directory(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nowhere")]) == ExitCode.USAGE
    assert "placement.json not found" in capsys.readouterr().err


def test_cli_passes_and_writes_the_report(tmp_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(verify_run, "execute", _stub_executor())
    out = _out(tmp_root, "gpt2-tiny")
    capsys.readouterr()
    report, saved = tmp_path / "r.json", tmp_path / "s.npz"
    code = main(["-q", "verify", str(out), "--seed", "4", "--report", str(report),
                 "--save-outputs", str(saved)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0].startswith("PASSED logits: max abs 0 (at [")
    assert lines[-1].startswith("PASSED: 1 output(s) of gpt2-tiny match ONNX Runtime (fp32, "
                                "atol 0.0001, rtol 0.001, inputs random (seed 4))")
    doc = json.loads(report.read_text())
    assert doc["passed"] and doc["target"] == "mesh8x8" and doc["seed"] == 4
    with np.load(saved) as z:
        assert sorted(z.files) == ["input.input_ids", "output.logits", "reference.logits"]
    assert main(["-q", "verify", str(out), "--inputs", str(saved)]) == 0  # round trip
    assert "inputs " + str(saved) in capsys.readouterr().out


def test_cli_mismatch_exits_1_and_names_the_diverging_op(tmp_root, capsys, monkeypatch):
    softmax = "/transformer/h.1/attn/Softmax_output_0"
    block_out = "/transformer/h.1/Add_1_output_0"
    monkeypatch.setattr(verify_run, "execute", _stub_executor({softmax: 1e-2, block_out: 1e-2,
                                                       "logits": 1e-2}))
    out = _out(tmp_root, "gpt2-tiny")
    capsys.readouterr()
    code = main(["-q", "verify", str(out), "--per-layer", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == ExitCode.MISMATCH and not doc["passed"]
    assert doc["first_diverging"] == {"layer": "block.1", "op": "/transformer/h.1/attn/Softmax",
                                      "op_kind": "Softmax", "tensor": softmax}
    assert json.loads((out / "verify.json").read_text()) == doc
    assert main(["-q", "verify", str(out), "--tol", "logits:0.1"]) == 0
    capsys.readouterr()


def test_open_out_rebinds_the_recorded_dims(tmp_path, capsys):
    fixture = FIXTURES / "gpt2_dynamo_op18_dynamic.onnx"
    out = tmp_path / "out"
    assert main(["-q", "compile", str(fixture), "-t", "mesh8x8", "-o", str(out), "--batch", "3",
                 "--seq-len", "9"]) == 0
    art = V.open_out(out)
    assert dict(art.graph.dims) == {"batch": 3, "seq": 9}
    assert art.graph.tensor("input_ids").shape == (3, 9) and art.target.name == "mesh8x8"
    assert art.schedule.model == art.graph.name and art.source == str(fixture)
    doc = json.loads((out / "placement.json").read_text())
    doc["model"]["sha256"] = "0" * 64
    (out / "placement.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["-q", "verify", str(out)]) == ExitCode.INVALID_INPUT
    assert "changed since it was compiled" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--tol", "logits"], "--tol: cannot parse 'logits'"),
    (["--tol", "nosuch:1"], "--tol names nosuch"),
    (["--atol", "-1"], "--atol -1.0 must be a finite number >= 0"),
    (["--precision", "fp8"], "invalid choice"),
])
def test_cli_usage_errors(tmp_root, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(verify_run, "execute", _stub_executor())
    out = _out(tmp_root, "gpt2-tiny")
    assert main(["-q", "verify", str(out), *argv]) == ExitCode.USAGE
    assert message in capsys.readouterr().err


# --- with the real executor ----------------------------------------------------------------


@pytest.fixture
def executor():
    return pytest.importorskip("compiler.executor")


@pytest.mark.parametrize("name", TINY_ZOO)
def test_executor_matches_ort_in_fp32(executor, tmp_root, capsys, name):
    out = _out(tmp_root, name)
    capsys.readouterr()
    code = main(["-q", "verify", str(out), "--per-layer"])
    text = capsys.readouterr().out
    assert code == 0, text
    doc = json.loads((out / "verify.json").read_text())
    assert doc["first_diverging"] is None and doc["unmatched"] == []
    assert all(o["max_abs"] <= 1e-4 for o in doc["outputs"])


def test_compile_verify(executor, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["-q", "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out), "--verify"])
    text = capsys.readouterr().out
    assert code == 0 and "compiled llama-tiny" in text
    assert text.splitlines()[-1].startswith("PASSED: 1 output(s) of llama-tiny match")
    assert json.loads((out / "verify.json").read_text())["passed"]


def test_target_precision_uses_16_bit_tolerances(executor, tmp_root, capsys):
    out = _out(tmp_root, "gpt2-tiny")
    capsys.readouterr()
    code = main(["-q", "verify", str(out), "--precision", "target"])
    summary = capsys.readouterr().out.splitlines()[-1]
    assert code == 0 and "(float16 (target), atol 0.05, rtol 0.01" in summary


def test_fixture_goldens_as_inputs(executor, tmp_path, capsys):
    fixture = FIXTURES / "llama_dynamo_op18_dynamic.onnx"
    out = tmp_path / "out"
    assert main(["-q", "compile", str(fixture), "-t", "mesh8x8", "-o", str(out), "--batch", "3",
                 "--seq-len", "9"]) == 0
    ref = FIXTURES / "llama_dynamo_op18_dynamic.ref.npz"
    code = main(["-q", "verify", str(out), "--inputs", str(ref), "--per-layer"])
    text = capsys.readouterr().out
    assert code == 0, text


def _bert_inputs(tmp_path: Path, mask: int) -> Path:
    """bert-tiny's inputs with every attention-mask value `mask`: at 3, (1 - mask) * finfo.min
    overflows to +inf in fp32, on both sides, and the softmax makes NaN everywhere after it."""
    inputs = V.random_inputs(zoo_graph("bert-tiny"), seed=0)
    inputs["attention_mask"] = np.full_like(inputs["attention_mask"], mask)
    path = tmp_path / f"mask{mask}.npz"
    np.savez(path, **inputs)
    return path


def test_nan_on_both_sides_fails_unless_allow_nan(executor, tmp_root, tmp_path, capsys):
    out = _out(tmp_root, "bert-tiny")
    inputs = _bert_inputs(tmp_path, 3)
    capsys.readouterr()
    assert main(["-q", "verify", str(out), "--inputs", str(inputs)]) == ExitCode.MISMATCH
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FAILED last_hidden_state: non-finite: ")
    assert "NaN on both sides (--allow-nan accepts them)" in lines[0]
    assert lines[-1].startswith("FAILED: 2 of 2 output(s) of bert-tiny differ")
    assert main(["-q", "verify", str(out), "--inputs", str(inputs), "--allow-nan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("PASSED last_hidden_state: non-finite: ")
    assert "NaN on both sides in 2 output(s), allowed by --allow-nan" in lines[-1]


def test_load_outputs_compares_with_expected_outputs_too(executor, tmp_root, tmp_path, capsys):
    out = _out(tmp_root, "bert-tiny")
    saved = tmp_path / "saved.npz"
    assert main(["-q", "verify", str(out), "--save-outputs", str(saved)]) == 0
    capsys.readouterr()
    assert main(["-q", "verify", str(out), "--load-outputs", str(saved)]) == 0  # read back
    text = capsys.readouterr().out
    assert f"PASSED pooler_output vs {saved}: " in text
    assert f"2 output(s) of bert-tiny match ONNX Runtime and 2 match {saved}" in text
    with np.load(saved) as z:  # as torch's outputs would be saved: by output name
        torch_like = {"last_hidden_state": z["reference.last_hidden_state"],
                      "pooler_output": z["reference.pooler_output"] + np.float32(0.01)}
    perturbed = tmp_path / "expected.npz"
    np.savez(perturbed, **torch_like)
    code = main(["-q", "verify", str(out), "--load-outputs", str(perturbed)])
    lines = capsys.readouterr().out.splitlines()
    assert code == ExitCode.MISMATCH
    assert f"PASSED last_hidden_state vs {perturbed}: " in "\n".join(lines)
    assert any(ln.startswith(f"FAILED pooler_output vs {perturbed}: ") for ln in lines)
    assert lines[-1].startswith(f"FAILED: 1 of 2 output(s) of bert-tiny differ from {perturbed}")
    np.savez(perturbed, logits=torch_like["pooler_output"])
    assert main(["-q", "verify", str(out), "--load-outputs", str(perturbed)]) == \
        ExitCode.INVALID_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {perturbed} names logits, which is not an output of bert-tiny; its "
                   "outputs are: last_hidden_state, pooler_output"]


def test_compile_verify_with_inputs(executor, tmp_path, capsys):
    inputs = _bert_inputs(tmp_path, 1)
    out = tmp_path / "out"
    code = main(["-q", "compile", "bert-tiny", "-t", "mesh8x8", "-o", str(out), "--verify",
                 "--inputs", str(inputs)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert f"inputs {inputs})" in text.splitlines()[-1]
    assert json.loads((out / "verify.json").read_text())["inputs"] == str(inputs)
    nan = tmp_path / "out-nan"
    code = main(["-q", "compile", "bert-tiny", "-t", "mesh8x8", "-o", str(nan), "--verify",
                 "--inputs", str(_bert_inputs(tmp_path, 3))])
    assert code == ExitCode.MISMATCH and "NaN on both sides" in capsys.readouterr().out
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=np.zeros((1, 16), np.int64))
    bad_out = tmp_path / "out-bad"
    code = main(["-q", "compile", "bert-tiny", "-t", "mesh8x8", "-o", str(bad_out), "--verify",
                 "--inputs", str(bad)])
    assert code == ExitCode.INVALID_INPUT and not bad_out.exists()
    assert "has no attention_mask, token_type_ids" in capsys.readouterr().err
    code = main(["-q", "compile", "bert-tiny", "-t", "mesh8x8", "-o", str(bad_out), "--inputs",
                 str(inputs)])
    assert code == ExitCode.USAGE and not bad_out.exists()
    assert "--inputs is for --verify" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["mesh8x8", "tt-wormhole"])  # float16, bfloat16
def test_target_precision_clamps_the_attention_mask_constant(executor, tmp_root, capsys,
                                                             target):
    """bert-tiny's additive mask is (1 - mask) * finfo(float32).min: rounded as it is, that
    constant is -inf in 16 bits and 0 * -inf is NaN (target-strict); clamped to the type's
    finite range, as fp16 conversion does, the model passes (target)."""
    out = _out(tmp_root, "bert-tiny", *(() if target == "mesh8x8" else ("-t", target)))
    capsys.readouterr()
    code = main(["-q", "verify", str(out), "--precision", "target", "--per-layer"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "(target), atol" in text.splitlines()[-1]
    code = main(["-q", "verify", str(out), "--precision", "target-strict"])
    text = capsys.readouterr().out
    assert code == ExitCode.MISMATCH and "NaN, 0 Inf where ORT has none" in text
    assert "(target-strict), atol" in text.splitlines()[-1]


def test_target_precision_overflow_warns_nothing(executor, tmp_root):
    import warnings

    art = V.open_out(_out(tmp_root, "bert-tiny"))
    inputs = V.random_inputs(art.graph, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "overflow encountered in cast" would raise here
        for precision in (executor.TARGET, executor.TARGET_STRICT):
            executor.run_schedule(art.schedule, art.graph, art.target, inputs, precision)
