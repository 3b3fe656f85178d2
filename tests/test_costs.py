"""compiler/tiling/costs.py: model_cost counts parameters, matmul FLOPs and KV-cache bytes per token
as their closed forms and the published counts say, on zoo models and on real exports."""

from __future__ import annotations

import pytest
from conftest import BIG_ZOO, FIXTURES, TINY_ZOO, fixture_entries, zoo_graph

from compiler import ir, zoo
from compiler.frontend import DimRequest, FrontendOptions, load_model
from compiler.tiling.costs import model_cost


def _cfg(name: str):
    return zoo.ZOO[name].config


def _llama_params(c) -> int:
    hd = c.hidden // c.heads
    attn = c.hidden * (c.heads * hd) * 2 + c.hidden * (c.kv_heads * hd) * 2
    mlp = 3 * c.hidden * c.intermediate
    block = attn + mlp + 2 * c.hidden
    head = 0 if c.tie_embeddings else c.vocab * c.hidden
    return c.vocab * c.hidden + c.layers * block + c.hidden + head


def _gpt2_params(c) -> int:
    h, i = c.hidden, c.intermediate
    block = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h)
    return c.vocab * h + c.max_positions * h + c.layers * block + 2 * h


def _bert_params(c) -> int:
    h, i = c.hidden, c.intermediate
    emb = (c.vocab + c.max_positions + c.type_vocab) * h + 2 * h
    block = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return emb + c.layers * block + (h * h + h if c.with_pooler else 0)


_PARAMS = {"llama": _llama_params, "gpt2": _gpt2_params, "bert": _bert_params}


@pytest.mark.parametrize("name", TINY_ZOO + BIG_ZOO)
def test_parameter_count_matches_closed_form(name):
    entry = zoo.ZOO[name]
    assert model_cost(zoo_graph(name)).params == _PARAMS[entry.family](entry.config)


def test_published_llama_parameter_counts():
    counts = {n: model_cost(zoo_graph(n)).params for n in BIG_ZOO}
    assert counts == {"llama3-8b": 8_030_261_248, "llama3-70b": 70_553_706_496,
                      "llama3.1-405b": 405_853_388_800}


@pytest.mark.parametrize("name", ["llama-tiny", "llama3-8b", "gpt2-tiny"])
def test_matmul_flops_match_closed_form(name):
    g, c = zoo_graph(name), _cfg(name)
    tokens = model_cost(g).tokens
    seq = dict(g.dims)["seq"]
    hd = c.hidden // c.heads
    linear = sum(t.numel for t in g.weights if len(t.shape) == 2 and t.kind is ir.TensorKind.WEIGHT
                 and "wpe" not in t.name and "embed_tokens" not in t.name)
    # (GPT-2's tied wte is counted once: as the lm_head matrix; its lookup costs no FLOPs)
    attention = 2 * 2 * c.layers * c.heads * seq * seq * hd  # Q K^T and P V, batch 1
    assert model_cost(g).matmul_flops == 2 * linear * tokens + attention


@pytest.mark.parametrize("name", ["llama-tiny", "llama-tiny-opset23", "llama3-70b", "gpt2-tiny"])
def test_kv_cache_bytes_per_token(name):
    c = _cfg(name)
    kv_heads = getattr(c, "kv_heads", c.heads)
    itemsize = 2 if c.dtype == "float16" else 4
    expected = c.layers * 2 * kv_heads * (c.hidden // c.heads) * itemsize
    assert model_cost(zoo_graph(name)).kv_bytes_per_token == expected


# --- real exports (tests/fixtures/MANIFEST.json holds each one's torch counts) -------------

ENTRIES = fixture_entries()


def _load(entry: dict) -> ir.Graph:
    # a static export fixes its dims: --batch/--seq-len there would be an error
    dims = DimRequest(batch=2, seq_len=8) if entry["seq"] == "dynamic" else DimRequest()
    return load_model(FIXTURES / entry["file"], FrontendOptions(dims))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["name"])
def test_fixture_parameter_count_matches_torch(entry):
    params = model_cost(_load(entry)).params
    torch_count = entry["parameters"]["count_if_untied"]  # tied weights are stored twice
    if entry["exporter"] == "dynamo" and entry["seq"] == "static":
        # dynamo's optimizer folds static lookups (positions, rotary tables) into constants
        # that replace tables of the source model: the file holds a different set of weights
        assert abs(params - torch_count) < 0.05 * torch_count
    else:
        assert params == torch_count


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["name"])
def test_fixture_kv_cache_per_token(entry):
    c = entry["config"]
    kv_heads = c.get("kv_heads") or c["heads"]
    expected = c["layers"] * 2 * kv_heads * (c["hidden"] // c["heads"]) * 4
    assert model_cost(_load(entry)).kv_bytes_per_token == expected
