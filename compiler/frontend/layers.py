"""Grouping ops into layers: embedding, block N, final norm, head.

Names first: exporters leave the module path in node names (`/transformer/h.3/attn/MatMul`),
in dynamo's `pkg.torch.onnx.name_scopes` metadata (`model.layers.3.self_attn`), or in the
names of the weights an op reads (`encoder.layer.3.attention.self.query.weight`). Ops with no
name of their own go with their producers (or, failing that, their first consumer). When a graph
carries no names at all, a structural fallback counts residual additions along the hidden state:
two per transformer block. A block that routes tokens with a TopK is marked a
mixture-of-experts block (`mark_moe`: experts, k, router, each expert's weights).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from compiler import ir

_BLOCK = re.compile(
    r"(?:^|[/._\s'\[,])(?:h|layers?|blocks?|decoder_layers?|encoder_layers?)[._/](\d+)"
    r"(?=$|[/._\s'\],])"
)
# A group of experts in its own scope (models/moe.py): its own layer, `block.N.experts.G`.
_EXPERT_GROUP = re.compile(r"(?:^|[/._])expert_groups[._/](\d+)(?=$|[/._])")
_EMBED = re.compile(r"embed|(?:^|[/._])(?:wte|wpe)(?:$|[/._])")
_NORM = re.compile(r"(?:^|[/.])(?:ln_f|norm|norm_f|final_norm|final_layer_?norm)(?:$|[/.])")
_HEAD = re.compile(r"lm_head|pooler|classifier|(?:^|[/.])(?:cls|score|qa_outputs)(?:$|[/.])")

EMBEDDING, BLOCK, NORM, HEAD = 0, 1, 2, 3
_KIND = {EMBEDDING: ir.LayerKind.EMBEDDING, BLOCK: ir.LayerKind.BLOCK, NORM: ir.LayerKind.NORM,
         HEAD: ir.LayerKind.HEAD}
_NAME = {EMBEDDING: "embedding", NORM: "final_norm", HEAD: "head"}

Key = tuple[int, ...]  # (rank, block index[, 1 + expert group]); compares in model order
Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class _Net:
    """Producer/consumer indices over a flat, topologically ordered op list."""

    ops: Sequence[ir.Op]
    producers: tuple[tuple[int, ...], ...]
    consumers: tuple[tuple[int, ...], ...]


def group_layers(
    ops: Sequence[ir.Op], scopes: Sequence[Sequence[str]], weights: set[str], shapes: Shapes
) -> tuple[ir.Layer, ...]:
    """Layers in model order; `scopes` are each op's naming hints, `shapes` every tensor's."""
    net = _net(ops)
    named = zip(ops, scopes, strict=True)
    keys: list[Key | None] = [_key_from_names(op, s, weights) for op, s in named]
    if not any(k and k[0] == BLOCK for k in keys):
        keys = _structural_keys(net, weights, shapes)
    return _build_layers(ops, _propagate(net, keys))


def _net(ops: Sequence[ir.Op]) -> _Net:
    made = {out: i for i, op in enumerate(ops) for out in op.outputs if out}
    prods = tuple(tuple(sorted({made[x] for x in op.inputs if x in made})) for op in ops)
    cons: list[list[int]] = [[] for _ in ops]
    for i, ps in enumerate(prods):
        for p in ps:
            cons[p].append(i)
    return _Net(ops, prods, tuple(tuple(c) for c in cons))


def key_from_text(text: str) -> Key | None:
    """The layer a module path names, if any: 'model.layers.3.mlp' -> (BLOCK, 3)."""
    blocks = _BLOCK.findall(text)
    if blocks:
        group = _EXPERT_GROUP.search(text)
        if group:
            return (BLOCK, int(blocks[-1]), 1 + int(group.group(1)))
        return (BLOCK, int(blocks[-1]))
    for rank, pattern in ((HEAD, _HEAD), (NORM, _NORM), (EMBEDDING, _EMBED)):
        if pattern.search(text):
            return (rank, 0)
    return None


def _key_from_names(op: ir.Op, scopes: Sequence[str], weights: set[str]) -> Key | None:
    for text in scopes:
        key = key_from_text(text)
        if key:
            return key
    for name in op.inputs:
        if name in weights:
            key = key_from_text(name)
            if key:
                return key
    return None


def _propagate(net: _Net, keys: list[Key | None]) -> list[Key]:
    """Unnamed ops join their latest producer's layer (else their first consumer's); no op
    may sit in an earlier layer than what it reads, which keeps layers in topological order."""
    out: list[Key | None] = list(keys)
    for i in range(len(out)):
        before = [out[p] for p in net.producers[i] if out[p] is not None]
        if before:
            latest = max(before)
            out[i] = latest if out[i] is None else max(out[i], latest)
    for i in reversed(range(len(out))):
        if out[i] is None:
            after = [out[c] for c in net.consumers[i] if out[c] is not None]
            out[i] = min(after) if after else None
    first = min((k for k in out if k is not None), default=(BLOCK, 0))
    return [k if k is not None else first for k in out]


def _build_layers(ops: Sequence[ir.Op], keys: list[Key]) -> tuple[ir.Layer, ...]:
    groups: dict[Key, list[ir.Op]] = {}
    for op, key in sorted(zip(ops, keys, strict=True), key=lambda pair: pair[1]):
        groups.setdefault(key, []).append(op)
    return tuple(
        ir.Layer(_layer_name(key), _KIND[key[0]], key[1] if key[0] == BLOCK else None,
                 tuple(members))
        for key, members in groups.items()
    )


def _layer_name(key: Key) -> str:
    if key[0] != BLOCK:
        return _NAME[key[0]]
    return f"block.{key[1]}" if len(key) == 2 else f"block.{key[1]}.experts.{key[2] - 1}"


# --- structural fallback ---------------------------------------------------------------------

_WEIGHT_OPS = frozenset({"MatMul", "Gemm"})
_NOT_EMBEDDING = frozenset({"LayerNormalization", "RMSNormalization", "Pow", "ReduceMean",
                            "MatMul", "Gemm", "Softmax", "Attention"})


def _structural_keys(net: _Net, weights: set[str], shapes: Shapes) -> list[Key | None]:
    ops = net.ops
    weights = _constant_derived(ops, weights)
    matmuls = [i for i, op in enumerate(ops) if op.kind in _WEIGHT_OPS
               and any(x in weights for x in op.inputs)]
    if not matmuls:
        return [None] * len(ops)
    residual = _residual_adds(net, matmuls, weights, shapes)
    rank = _residual_rank(net, residual)
    blocks = (len(residual) + 1) // 2
    embedding = _embedding_ops(net, weights)
    keys: list[Key | None] = []
    for i in range(len(ops)):
        blk = (rank[i] - (1 if i in residual else 0)) // 2
        keys.append((EMBEDDING, 0) if i in embedding else (BLOCK, blk) if blk < blocks else None)
    _mark_tail(net, keys, matmuls)
    return keys


def _constant_derived(ops: Sequence[ir.Op], weights: set[str]) -> set[str]:
    """Weights and what ops compute from weights alone (a transposed tied embedding)."""
    derived = set(weights)
    for op in ops:
        if all(x in derived for x in op.inputs if x):
            derived.update(o for o in op.outputs if o)
    return derived


def _residual_adds(net: _Net, matmuls: list[int], weights: set[str], shapes: Shapes) -> set[int]:
    """Adds of two activations shaped like the hidden state (the input of the first weight
    matmul), downstream of a weight matmul: the residual stream."""
    first = net.ops[matmuls[0]]
    hidden = shapes[next(x for x in first.inputs if x not in weights)]
    adds = set()
    for i in _descendants(net, matmuls[:1]):
        op = net.ops[i]
        if op.kind != "Add" or any(x in weights for x in op.inputs) or len(op.inputs) != 2:
            continue
        out = shapes[op.outputs[0]]
        if math.prod(out) == math.prod(hidden) and out[-1:] == hidden[-1:]:
            adds.add(i)
    return adds


def _residual_rank(net: _Net, residual: set[int]) -> list[int]:
    rank = [0] * len(net.ops)
    for i in range(len(net.ops)):
        up = max((rank[p] for p in net.producers[i]), default=0)
        rank[i] = up + (1 if i in residual else 0)
    return rank


def _embedding_ops(net: _Net, weights: set[str]) -> set[int]:
    emb: set[int] = set()
    for i, op in enumerate(net.ops):
        if op.kind in _NOT_EMBEDDING:
            continue
        table = op.kind == "Gather" and op.inputs[0] in weights
        if table or (net.producers[i] and all(p in emb for p in net.producers[i])):
            emb.add(i)
    return emb


def _mark_tail(net: _Net, keys: list[Key | None], matmuls: list[int]) -> None:
    """Ops past the last block: the last weight matmul and what follows is the head, the rest
    is the final norm."""
    tail = [i for i, k in enumerate(keys) if k is None]
    head_start = max((m for m in matmuls if m in tail), default=None)
    head = _descendants(net, [head_start]) | {head_start} if head_start is not None else set()
    for i in tail:
        keys[i] = (HEAD, 0) if i in head else (NORM, 0)


def _descendants(net: _Net, starts: Sequence[int]) -> set[int]:
    seen: set[int] = set()
    stack = list(starts)
    while stack:
        for c in net.consumers[stack.pop()]:
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


# --- mixture-of-experts blocks ---------------------------------------------------------------

_EXPERT = re.compile(r"(?:^|[/._])experts?[._/](\d+)(?=$|[/._])")
_SHARED = re.compile(r"shared_experts?(?:[._/](\d+))?(?=$|[/._])")
_ROUTER_PATH = frozenset({"Softmax", "Sigmoid", "Cast", "Reshape", "Flatten", "Squeeze",
                          "Unsqueeze", "Add", "Identity", "LogSoftmax"})


def mark_moe(g: ir.Graph) -> ir.Graph:
    """Each block whose ops route tokens with a TopK gets its `ir.MoE` record: E experts (the
    TopK's input along its axis), k active (its output there), the router weight (the weight
    matmul the TopK's scores come from), the routed experts' weights (stacked `[E, ...]`
    weights the block gathers from, or per-expert weights named `experts.N`) and the shared
    experts' (named `shared_expert`). Dense blocks keep `moe=None`."""
    layers = tuple(_with_moe(g, layer) for layer in g.layers)
    return g if layers == g.layers else dataclasses.replace(g, layers=layers)


def _with_moe(g: ir.Graph, layer: ir.Layer) -> ir.Layer:
    topk = next((op for op in layer.ops if op.kind == "TopK"), None)
    if topk is None or layer.kind is not ir.LayerKind.BLOCK:
        return layer
    axis = int(topk.attr("axis", -1)) % len(g.tensor(topk.inputs[0]).shape)
    experts = g.tensor(topk.inputs[0]).shape[axis]
    active = g.tensor(topk.outputs[0]).shape[axis]
    read = [name for op in layer.ops for name in op.inputs if name and _is_param(g, name)]
    read = list(dict.fromkeys(read))
    stacked = tuple(n for n in read if _stacked(g, layer, n, experts))
    per_expert = _per_expert(read, experts)
    shared = _shared_weights(layer, read)
    moe = ir.MoE(experts=experts, active=active, shared=_shared_count(shared),
                 router=_router(g, topk), expert_weights=per_expert, stacked=stacked,
                 shared_weights=shared)
    return dataclasses.replace(layer, moe=moe)


def _is_param(g: ir.Graph, name: str) -> bool:
    t = g.tensor(name)
    return t.kind is ir.TensorKind.WEIGHT and len(t.shape) >= 1 and t.numel > 1


def _stacked(g: ir.Graph, layer: ir.Layer, name: str, experts: int) -> bool:
    """A weight holding every expert along axis 0 that the block indexes (Gather, GatherND)."""
    shape = g.tensor(name).shape
    if len(shape) < 3 or shape[0] != experts:
        return False
    return any(op.kind in ("Gather", "GatherND") and op.inputs[0] == name for op in layer.ops)


def _per_expert(read: Sequence[str], experts: int) -> tuple[tuple[str, ...], ...]:
    groups: dict[int, list[str]] = {}
    for name in read:
        found = _EXPERT.findall(name)
        if found and not _SHARED.search(name):
            groups.setdefault(int(found[-1]), []).append(name)
    if sorted(groups) != list(range(experts)):
        return ()
    return tuple(tuple(groups[i]) for i in range(experts))


def _shared_weights(layer: ir.Layer, read: Sequence[str]) -> tuple[str, ...]:
    """Weights named `shared_expert(s)`, or read by an op of that scope (TorchScript gives a
    transposed Linear weight a name of its own, `onnx::MatMul_N`; its op keeps the scope)."""
    scoped = {name for op in layer.ops if _SHARED.search(op.name) for name in op.inputs}
    return tuple(n for n in read if _SHARED.search(n) or n in scoped)


def _shared_count(names: Sequence[str]) -> int:
    if not names:
        return 0
    indexed = {m.group(1) for n in names for m in [_SHARED.search(n)] if m and m.group(1)}
    return len(indexed) or 1


def _router(g: ir.Graph, topk: ir.Op) -> tuple[str, ...]:
    """The weights of the matmul whose scores reach the TopK through element-wise and layout
    ops (softmax, sigmoid, bias, reshapes)."""
    name = topk.inputs[0]
    for _ in range(8):
        op = g.producers.get(name)
        if op is None:
            return ()
        if op.kind in ("MatMul", "Gemm"):
            return tuple(n for n in op.inputs if n and _is_param(g, n))
        if op.kind not in _ROUTER_PATH:
            return ()
        acts = [n for n in op.inputs if n and n not in g.const_derived]
        if len(acts) != 1:
            return ()
        name = acts[0]
    return ()
