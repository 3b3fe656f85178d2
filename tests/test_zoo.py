"""Tests for the built-in model zoo (`compiler.zoo`), against real onnx and onnxruntime.

Every entry builds, passes the checker and strict shape inference once `batch`/`seq` are bound,
and builds byte-identically twice. Parameter counts are checked against closed forms, the
runnable models run in onnxruntime (and the tiny decoders match numpy references), and the
shape-only models stay small with well-formed external-data references.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from compiler import zoo

RUNNABLE = ["gpt2-tiny", "gpt2-tiny-mask", "llama-tiny", "llama-tiny-opset23", "bert-tiny",
            "gpt2-small"]
SHAPE_ONLY = ["llama3-8b", "llama3.2-1b", "llama3-70b", "llama3.1-405b", "mixtral-8x7b",
              "qwen3-30b-a3b", "qwen3-235b-a22b", "gpt-oss-120b", "llama4-maverick"]
MOE = [n for n in zoo.names() if zoo.ZOO[n].family == "moe"]
WITH_PAST = ["gpt2-tiny-past", "llama-tiny-past", "gpt2-small-past"]  # run in test_decode.py
SEQ = 16


@cache
def built(name: str) -> onnx.ModelProto:
    """One build per name for the session (gpt2-small takes a second or two)."""
    return zoo.build(name)


@cache
def serialized(name: str) -> bytes:
    return built(name).SerializeToString()


@cache
def session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(serialized(name), options, providers=["CPUExecutionProvider"])


def bind(model: onnx.ModelProto, dims: dict[str, int]) -> onnx.ModelProto:
    """A copy with the named dynamic dims of the inputs and outputs set to sizes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in [*out.graph.input, *out.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in dims:
                dim.dim_value = dims[dim.dim_param]
    return out


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its weights (they become typed graph inputs): checkable without the
    external weights file, and cheap to copy even for gpt2-small."""
    g = model.graph
    weights = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
               for t in g.initializer]
    graph = onnx.helper.make_graph(g.node, g.name, [*g.input, *weights], g.output)
    return onnx.helper.make_model(graph, opset_imports=model.opset_import,
                                  ir_version=model.ir_version)


def param_count(model: onnx.ModelProto) -> int:
    """Initializers are exactly the parameters (other constants are Constant nodes)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def weights(name: str) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.float64)
            for t in built(name).graph.initializer}


def token_ids(vocab: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (1, SEQ), dtype=np.int64)


def run(name: str, ids: np.ndarray) -> list[np.ndarray]:
    feeds = {"input_ids": ids}
    if zoo.ZOO[name].family == "bert":
        feeds |= {"attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    if getattr(zoo.ZOO[name].config, "attention_mask", False):
        feeds["attention_mask"] = np.ones_like(ids)
    return session(name).run(None, feeds)


# -- closed-form parameter counts -----------------------------------------------------------

def gpt2_params(c: zoo.GPT2Config) -> int:
    h, i = c.hidden, c.intermediate
    block = 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + 2 * h + (h * i + i) + (i * h + h)
    head = 0 if c.tie_embeddings else h * c.vocab
    return c.vocab * h + c.max_positions * h + c.layers * block + 2 * h + head


def llama_params(c: zoo.LlamaConfig) -> int:
    h, kv = c.hidden, c.kv_heads * c.head_dim
    block = 2 * h * h + 2 * h * kv + 3 * h * c.intermediate + 2 * h
    head = 0 if c.tie_embeddings else h * c.vocab
    return c.vocab * h + c.layers * block + h + head


def bert_params(c: zoo.BertConfig) -> int:
    h, i = c.hidden, c.intermediate
    block = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    pooler = h * h + h if c.with_pooler else 0
    return (c.vocab + c.max_positions + c.type_vocab) * h + 2 * h + c.layers * block + pooler


def moe_params(c: zoo.MoEConfig) -> int:
    h, q, kv = c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim
    attention = 2 * h * q + 2 * h * kv + 2 * h
    moe = h * c.experts + 3 * h * c.expert_intermediate * (c.experts + c.shared)
    moe_layers = sum(c.is_moe(i) for i in range(c.layers))
    dense = 3 * h * c.intermediate * (c.layers - moe_layers)
    return 2 * c.vocab * h + c.layers * attention + moe_layers * moe + dense + h


FORMULAS = {"gpt2": gpt2_params, "llama": llama_params, "bert": bert_params, "moe": moe_params}
# Published totals (model cards): the shapes reproduce them to within 1%.
PUBLISHED = {"mixtral-8x7b": 46.7e9, "qwen3-30b-a3b": 30.5e9, "qwen3-235b-a22b": 235e9,
             "gpt-oss-120b": 117e9, "llama4-maverick": 400e9}
KNOWN_COUNTS = {
    "gpt2-small": 124_439_808,
    "llama3-8b": 8_030_261_248,
    "llama3.2-1b": 1_235_814_400,
    "llama3-70b": 70_553_706_496,
    "llama3.1-405b": 405_853_388_800,
}


# -- every entry ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", zoo.names())
def test_entry_builds_and_checks(name: str) -> None:
    entry, model = zoo.ZOO[name], built(name)
    assert entry.name == name and entry.shape_only == entry.config.shape_only
    assert entry.family in ("gpt2", "llama", "bert", "moe") and "\n" not in entry.description
    if entry.shape_only:
        onnx.checker.check_model(skeleton(model), full_check=False)
    else:
        onnx.checker.check_model(serialized(name), full_check=False)
    meta = {p.key: p.value for p in model.metadata_props}
    seq = SEQ if "-tiny" in name else 128
    extra = entry.config.metadata() if entry.family == "moe" else {}
    assert meta == {"wafer.zoo_name": name, "wafer.default_dims": f"batch=1,seq={seq}", **extra}


@pytest.mark.parametrize("name", zoo.names())
def test_strict_shape_inference_after_binding(name: str) -> None:
    model = built(name)
    if model.ByteSize() > 20 * 2**20:  # gpt2-small: infer on the weightless skeleton
        model = skeleton(model)
    bound = bind(model, {"batch": 1, "seq": SEQ, "past_seq": 3, "total_seq": SEQ + 3})
    inferred = onnx.shape_inference.infer_shapes(bound, strict_mode=True, data_prop=True)
    cfg = zoo.ZOO[name].config
    expected = {"logits": [1, SEQ, cfg.vocab], "last_hidden_state": [1, SEQ, cfg.hidden],
                "pooler_output": [1, cfg.hidden]}
    expected |= {f"present.{i}.{kv}": [1, getattr(cfg, "kv_heads", cfg.heads), SEQ + 3,
                                        cfg.hidden // cfg.heads]
                 for i in range(cfg.layers) for kv in ("key", "value")}
    for out in inferred.graph.output:
        assert [d.dim_value for d in out.type.tensor_type.shape.dim] == expected[out.name]


@pytest.mark.parametrize("name", zoo.names())
def test_build_is_deterministic(name: str) -> None:
    assert zoo.build(name).SerializeToString() == serialized(name)


@pytest.mark.parametrize("name", zoo.names())
def test_parameter_count_closed_form(name: str) -> None:
    entry = zoo.ZOO[name]
    count = param_count(built(name))
    assert count == FORMULAS[entry.family](entry.config)
    if name in KNOWN_COUNTS:
        assert count == KNOWN_COUNTS[name]
    if name in PUBLISHED:
        assert count == pytest.approx(PUBLISHED[name], rel=0.01)


@pytest.mark.parametrize("name", zoo.names())
def test_names_are_unique_and_exporter_like(name: str) -> None:
    g = built(name).graph
    node_names = [n.name for n in g.node]
    assert len(set(node_names)) == len(node_names) and all(n.startswith("/") for n in node_names)
    tensors = [*(i.name for i in g.input), *(t.name for t in g.initializer),
               *(o for n in g.node for o in n.output)]
    assert len(set(tensors)) == len(tensors)
    assert [d.dim_param for d in g.input[0].type.tensor_type.shape.dim] == ["batch", "seq"]
    expected = {
        "gpt2": ["/transformer/wte/Gather", "/transformer/h.0/ln_1/LayerNormalization",
                 "/transformer/h.0/attn/c_attn/MatMul", "/transformer/ln_f/LayerNormalization",
                 "/lm_head/MatMul"],
        "llama": ["/model/embed_tokens/Gather", "/model/layers.0/self_attn/q_proj/MatMul",
                  "/model/layers.0/mlp/down_proj/MatMul", "/lm_head/MatMul"],
        "bert": ["/bert/embeddings/word_embeddings/Gather", "/bert/pooler/dense/Gemm",
                 "/bert/encoder/layer.0/attention/self/query/MatMul"],
        "moe": ["/model/embed_tokens/Gather", "/model/layers.0/self_attn/q_proj/MatMul",
                "/model/layers.1/mlp/router/MatMul",
                "/model/layers.1/mlp/expert_groups.0/down_proj/MatMul", "/lm_head/MatMul"],
    }[zoo.ZOO[name].family]
    assert set(expected) <= set(node_names)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError) as err:
        zoo.build("gpt5-huge")
    assert "gpt5-huge" in str(err.value)
    assert all(name in str(err.value) for name in zoo.names())


def test_catalogue() -> None:
    assert zoo.names() == list(zoo.ZOO)
    assert set(RUNNABLE) | set(SHAPE_ONLY) | set(WITH_PAST) == set(zoo.names())
    assert all(zoo.ZOO[n].shape_only for n in SHAPE_ONLY)
    assert not any(zoo.ZOO[n].shape_only for n in RUNNABLE)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="dtype"):
        zoo.GPT2Config(dtype="int8")
    with pytest.raises(ValueError, match="kv_heads"):
        zoo.LlamaConfig(heads=32, kv_heads=5)


# -- shape-only models ----------------------------------------------------------------------

@pytest.mark.parametrize("name", SHAPE_ONLY)
def test_shape_only_is_small_fast_and_external(name: str) -> None:
    start = time.perf_counter()
    model = zoo.build(name)
    assert time.perf_counter() - start < 5.0  # typically ~0.2 s, even for 405B
    assert model.ByteSize() < 20 * 2**20
    offset = 0
    for t in model.graph.initializer:
        assert t.data_location == onnx.TensorProto.EXTERNAL
        assert t.data_type == onnx.TensorProto.FLOAT16
        assert not (t.raw_data or t.float_data or t.int32_data)
        entries = {e.key: e.value for e in t.external_data}
        length = math.prod(t.dims) * 2
        assert entries == {"location": f"{name}.weights.bin", "offset": str(offset),
                           "length": str(length)}
        offset += length
    assert offset == 2 * FORMULAS[zoo.ZOO[name].family](zoo.ZOO[name].config)


# -- running in onnxruntime -----------------------------------------------------------------

@pytest.mark.parametrize("name", RUNNABLE)
def test_runs_in_onnxruntime(name: str) -> None:
    cfg = zoo.ZOO[name].config
    outputs = run(name, token_ids(cfg.vocab))
    expected = ([(1, SEQ, cfg.hidden), (1, cfg.hidden)] if zoo.ZOO[name].family == "bert"
                else [(1, SEQ, cfg.vocab)])
    assert [o.shape for o in outputs] == expected
    assert all(np.isfinite(o).all() for o in outputs)


def test_padding_mask_matches_gpt2_tiny() -> None:
    """gpt2-tiny-mask is gpt2-tiny (same weights) with all-ones masks; a padded key is ignored
    by every later query."""
    ids = token_ids(256)
    ones = np.ones_like(ids)
    np.testing.assert_allclose(run("gpt2-tiny-mask", ids)[0], run("gpt2-tiny", ids)[0],
                               atol=1e-6)
    padded = ones.copy()
    padded[0, 0] = 0
    changed = ids.copy()
    changed[0, 0] = (changed[0, 0] + 7) % 256
    a, b = (session("gpt2-tiny-mask").run(None, {"input_ids": i, "attention_mask": padded})[0]
            for i in (ids, changed))
    np.testing.assert_allclose(a[0, 1:], b[0, 1:], atol=1e-6)


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "llama-tiny-opset23"])
def test_causal_masking(name: str) -> None:
    t = SEQ // 2
    ids = token_ids(256)
    changed = ids.copy()
    changed[0, t + 1:] = (changed[0, t + 1:] + 7) % 256
    before, after = run(name, ids)[0], run(name, changed)[0]
    np.testing.assert_allclose(after[0, : t + 1], before[0, : t + 1], atol=1e-6)
    assert np.abs(after[0, t + 1:] - before[0, t + 1:]).max() > 1e-3


@pytest.mark.parametrize(("name", "change"), [
    ("gpt2-tiny", {"opset": 20}), ("gpt2-tiny", {"dtype": "float16", "tie_embeddings": False}),
    ("llama-tiny", {"opset": 18, "tie_embeddings": True}), ("llama-tiny", {"dtype": "float16"}),
    ("llama-tiny-opset23", {"dtype": "float16", "kv_heads": 4}),
    ("bert-tiny", {"dtype": "float16"}), ("bert-tiny", {"with_pooler": False, "opset": 21}),
])
def test_config_variants_run(name: str, change: dict) -> None:
    entry = zoo.ZOO[name]
    builder = {"gpt2": zoo.build_gpt2, "llama": zoo.build_llama, "bert": zoo.build_bert}
    model = builder[entry.family](dataclasses.replace(entry.config, **change))
    onnx.checker.check_model(model, full_check=True)
    if change.get("opset") == 20:
        assert "Gelu" in {n.op_type for n in model.graph.node}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    ids = token_ids(256)
    feeds = {i.name: ids if i.name == "input_ids" else np.ones_like(ids) for i in sess.get_inputs()}
    outputs = sess.run(None, feeds)
    assert len(outputs) == len(model.graph.output)
    assert all(o.dtype == np.dtype(change.get("dtype", "float32")) for o in outputs)
    assert all(np.isfinite(o).all() for o in outputs)


def test_bert_padding_is_masked() -> None:
    ids, t = token_ids(256), SEQ // 2
    mask = (np.arange(SEQ) < t).astype(np.int64)[None]
    types = np.zeros_like(ids)
    changed = ids.copy()
    changed[0, t:] = (changed[0, t:] + 7) % 256
    s = session("bert-tiny")
    a = s.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    b = s.run(None, {"input_ids": changed, "attention_mask": mask, "token_type_ids": types})
    np.testing.assert_allclose(b[0][0, :t], a[0][0, :t], atol=1e-6)
    np.testing.assert_allclose(b[1], a[1], atol=1e-6)


def test_opset23_matches_decomposed_llama() -> None:
    ops = {n.op_type for n in built("llama-tiny-opset23").graph.node}
    assert {"RMSNormalization", "Attention"} <= ops and not {"Softmax", "ReduceMean"} & ops
    ids = token_ids(256)
    np.testing.assert_allclose(run("llama-tiny-opset23", ids)[0], run("llama-tiny", ids)[0],
                               atol=1e-4)


# -- numpy references (float64) for the tiny models ----------------------------------------

def _heads(x: np.ndarray, n: int) -> np.ndarray:
    batch, seq, _ = x.shape
    return x.reshape(batch, seq, n, -1).transpose(0, 2, 1, 3)


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """q [b, h, s, d], k/v [b, kv, s, d] (kv head j serves query heads j*rep .. j*rep+rep-1);
    `bias` is added to the scores. Returns [b, s, h*d]."""
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1]) + bias
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    out = probs / probs.sum(-1, keepdims=True) @ v
    return out.transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], -1)


def _causal(seq: int) -> np.ndarray:
    return np.where(np.tril(np.ones((seq, seq), bool)), 0.0, -np.inf)


def _ln(x: np.ndarray, w: dict[str, np.ndarray], p: str, eps: float) -> np.ndarray:
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return x * w[f"{p}.weight"] + w[f"{p}.bias"]


def _lin(x: np.ndarray, w: dict[str, np.ndarray], p: str) -> np.ndarray:
    return x @ w[f"{p}.weight"] + w[f"{p}.bias"]


def gpt2_reference(w: dict[str, np.ndarray], c: zoo.GPT2Config, ids: np.ndarray) -> np.ndarray:
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][: ids.shape[1]]
    for i in range(c.layers):
        p = f"transformer.h.{i}"
        q, k, v = np.split(_lin(_ln(x, w, f"{p}.ln_1", c.eps), w, f"{p}.attn.c_attn"), 3, -1)
        attn = _attention(*(_heads(t, c.heads) for t in (q, k, v)), _causal(ids.shape[1]))
        x = x + _lin(attn, w, f"{p}.attn.c_proj")
        h = _lin(_ln(x, w, f"{p}.ln_2", c.eps), w, f"{p}.mlp.c_fc")
        h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        x = x + _lin(h, w, f"{p}.mlp.c_proj")
    return _ln(x, w, "transformer.ln_f", c.eps) @ w["transformer.wte.weight"].T


def llama_reference(w: dict[str, np.ndarray], c: zoo.LlamaConfig, ids: np.ndarray) -> np.ndarray:
    def rms(x: np.ndarray, p: str) -> np.ndarray:
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + c.eps) * w[f"{p}.weight"]

    half = c.head_dim // 2
    angles = np.arange(ids.shape[1])[:, None] / c.rope_theta ** (np.arange(half) / half)
    angles = np.concatenate([angles, angles], axis=-1)

    def rope(x: np.ndarray) -> np.ndarray:
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * np.cos(angles) + rotated * np.sin(angles)

    x = w["model.embed_tokens.weight"][ids]
    for i in range(c.layers):
        p = f"model.layers.{i}"
        h = rms(x, f"{p}.input_layernorm")
        q, k, v = (h @ w[f"{p}.self_attn.{n}_proj.weight"] for n in "qkv")
        attn = _attention(rope(_heads(q, c.heads)), rope(_heads(k, c.kv_heads)),
                          _heads(v, c.kv_heads), _causal(ids.shape[1]))
        x = x + attn @ w[f"{p}.self_attn.o_proj.weight"]
        h = rms(x, f"{p}.post_attention_layernorm")
        gate = h @ w[f"{p}.mlp.gate_proj.weight"]
        up = h @ w[f"{p}.mlp.up_proj.weight"]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[f"{p}.mlp.down_proj.weight"]
    return rms(x, "model.norm") @ w["lm_head.weight"]


def bert_reference(w: dict[str, np.ndarray], c: zoo.BertConfig, ids: np.ndarray,
                   mask: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e, erf = "bert.embeddings", np.vectorize(math.erf)
    x = (w[f"{e}.word_embeddings.weight"][ids] + w[f"{e}.token_type_embeddings.weight"][types]
         + w[f"{e}.position_embeddings.weight"][: ids.shape[1]])
    x = _ln(x, w, f"{e}.LayerNorm", c.eps)
    bias = (1.0 - mask[:, None, None, :]) * -1e30
    for i in range(c.layers):
        p = f"bert.encoder.layer.{i}"
        q, k, v = (_heads(_lin(x, w, f"{p}.attention.self.{n}"), c.heads)
                   for n in ("query", "key", "value"))
        h = _lin(_attention(q, k, v, bias), w, f"{p}.attention.output.dense")
        x = _ln(h + x, w, f"{p}.attention.output.LayerNorm", c.eps)
        h = _lin(x, w, f"{p}.intermediate.dense")
        h = _lin(h * 0.5 * (1 + erf(h / math.sqrt(2))), w, f"{p}.output.dense")
        x = _ln(h + x, w, f"{p}.output.LayerNorm", c.eps)
    pooled = np.tanh(x[:, 0] @ w["bert.pooler.dense.weight"].T + w["bert.pooler.dense.bias"])
    return x, pooled


@pytest.mark.parametrize(("name", "reference"), [
    ("gpt2-tiny", gpt2_reference), ("llama-tiny", llama_reference),
    ("llama-tiny-opset23", llama_reference),
])
def test_decoder_matches_numpy_reference(name: str, reference) -> None:
    ids = token_ids(256, seed=3)
    expected = reference(weights(name), zoo.ZOO[name].config, ids)
    np.testing.assert_allclose(run(name, ids)[0], expected, atol=1e-4, rtol=1e-3)


def test_bert_matches_numpy_reference() -> None:
    ids = token_ids(256, seed=4)
    mask = (np.arange(SEQ) < SEQ - 4).astype(np.int64)[None]
    types = (np.arange(SEQ) >= SEQ // 2).astype(np.int64)[None]
    got = session("bert-tiny").run(
        None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    expected = bert_reference(weights("bert-tiny"), zoo.ZOO["bert-tiny"].config, ids, mask, types)
    for actual, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(actual, want, atol=1e-4, rtol=1e-3)
