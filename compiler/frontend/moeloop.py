"""The per-expert loop form of a mixture-of-experts block, rewritten into the batched form.

HF's eager MoE forward loops over the experts its tokens hit:

    mask = one_hot(topk_index).permute(2, 1, 0)            # [E(+1), k, T]
    for e in nonzero(mask.sum((-1, -2)) > 0):               # the experts hit
        pos, tok = where(mask[e])                           # the (slot, token) pairs routed to e
        y = expert_e(x[tok]) * topk_weight[tok, pos, None]  # [n_e, H]
        out.index_add_(0, tok, y)

TorchScript unrolls that loop once per expert the trace hit, with `NonZero` giving `n_e` rows
(data-dependent shapes) and `ScatterElements` adding them back. `rewrite_moe_loops` replaces it,
in the onnx_ir model after folding, by what the batched (`batched_mm`) exports already compute
and the rest of the compiler handles: every (token, slot) pair, T*k rows, gathers its expert's
weights from the stacked `[E, ...]` tensors (`GatherND` by the TopK's index), runs the unrolled
body of the first iteration once on those rows (the body is row-wise: its weight `Gather` +
`Transpose` + `MatMul` become the `GatherND` + batched `MatMul`), weighs each row by its routing
weight and sums the k slots of each token (`ReduceSum`). Same rows, same expert, same weight:
each token's sum has its k expert outputs, as the loop's, whose other experts add exact zeros.

The rewrite is all or nothing per block: a loop whose parts do not match (another body, a
non-zero initial sum, ...) is left alone and its `NonZero` stays refused by `check_supported`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir


@dataclass(frozen=True)
class _Loop:
    """One unrolled per-expert loop: its first iteration's handles and the loop's ends."""

    scope: str  # the node-name prefix of the loop (`/model/layers.0/mlp/experts/`)
    index: ir.Value  # TopK's expert indices [T, k]
    weights: ir.Value  # the routing weights [T, k]
    x: ir.Value  # the tokens' hidden states [T, H]
    x_gather: ir.Node  # Gather(x, tok) of the first iteration
    expert: ir.Value  # the first iteration's expert index (a scalar)
    weighted: ir.Node  # Mul(expert output, the gathered routing weight)
    route_weight: ir.Value  # that Mul's routing-weight input [n, 1]
    updates: ir.Value  # what the first ScatterElements adds ([n, H], before its Expand)
    total: ir.Value  # the sum after the last iteration [T, H]


def rewrite_moe_loops(model: ir.Model) -> int:
    """Rewrite every recognised per-expert loop; returns how many (0: model unchanged)."""
    loops = [loop for hot in _one_hots(model.graph) if (loop := _match(hot)) is not None]
    for n, loop in enumerate(loops):
        _rewrite(model.graph, loop, n)
    return len(loops)


def _one_hots(graph: ir.Graph) -> list[ir.Node]:
    """OneHot nodes fed by a TopK's indices: where a loop's expert mask starts."""
    return [n for n in graph if n.op_type == "OneHot" and n.inputs[0] is not None
            and _made_by(n.inputs[0], "TopK") and n.inputs[0].index() == 1]


def _made_by(v: ir.Value | None, *kinds: str) -> ir.Node | None:
    node = v.producer() if v is not None else None
    return node if node is not None and node.op_type in kinds else None


def _users(v: ir.Value, kind: str, slot: int | None = None) -> list[ir.Node]:
    return [n for n, i in v.uses() if n.op_type == kind and (slot is None or i == slot)]


def _match(hot: ir.Node) -> _Loop | None:
    topk = hot.inputs[0].producer()
    masks = [t for t in _users(hot.outputs[0], "Transpose")
             if list(t.attributes.get_ints("perm", [])) == [2, 1, 0]]
    if len(masks) != 1:
        return None
    picks = _users(masks[0].outputs[0], "Gather", 0)  # mask[e], one per iteration
    if not picks:
        return None
    first = picks[0]
    pos_tok = _where(first.outputs[0])
    if pos_tok is None:
        return None
    return _match_body(hot, topk, first.inputs[1], *pos_tok)


def _where(mask_e: ir.Value) -> tuple[ir.Value, ir.Value] | None:
    """mask[e] -> Cast -> NonZero -> Transpose -> Split -> Squeeze x2: (pos, tok)."""
    casts = _users(mask_e, "Cast")
    nz = _users(casts[0].outputs[0], "NonZero") if len(casts) == 1 else []
    tr = _users(nz[0].outputs[0], "Transpose") if len(nz) == 1 else []
    split = _users(tr[0].outputs[0], "Split") if len(tr) == 1 else []
    if len(split) != 1 or len(split[0].outputs) != 2:
        return None
    out = []
    for v in split[0].outputs:
        sq = _users(v, "Squeeze")
        if len(sq) != 1:
            return None
        out.append(sq[0].outputs[0])
    return out[0], out[1]


def _match_body(hot: ir.Node, topk: ir.Node, expert: ir.Value, pos: ir.Value,
                tok: ir.Value) -> _Loop | None:
    x_gathers = [n for n in _users(tok, "Gather", 1) if not _from_weights(n.inputs[0])]
    routed = _routing_gather(pos)
    if len(x_gathers) != 1 or routed is None:
        return None
    weights = _routing_weights(routed)
    weighted = _weighting_mul(routed)
    scatters = [n for n in _near(tok, 3) if n.op_type == "ScatterElements"]
    if weights is None or weighted is None or len(scatters) != 1:
        return None
    updates = _before_expand(scatters[0].inputs[2])
    total = _total(scatters[0])
    if updates is None or total is None or _made_by(weighted.outputs[0], "Mul") is None:
        return None
    route_weight = next(v for v in weighted.inputs if v is not None and v.producer() is not None
                        and v.producer().op_type == "Reshape")
    if not _static_shapes(topk.outputs[1], x_gathers[0].inputs[0], total) or not all(
            _batchable(g) for g in _users(expert, "Gather", 1) if _from_weights(g.inputs[0])):
        return None
    scope = hot.name.rsplit("/", 1)[0] + "/" if hot.name and "/" in hot.name else ""
    return _Loop(scope, topk.outputs[1], weights, x_gathers[0].inputs[0], x_gathers[0], expert,
                 weighted, route_weight, updates, total)


def _from_weights(v: ir.Value | None) -> bool:
    return v is not None and v.const_value is not None


def _routing_gather(pos: ir.Value) -> ir.Node | None:
    """The Gather of `topk_weight[tok, pos]`: its index is computed from `pos`."""
    found = [n for n in _near(pos, 2) if n.op_type == "Gather"
             and n.inputs[1] is not None and n.inputs[1].producer() is not None
             and n.inputs[1].producer().op_type == "Add"]
    return found[0] if len(found) == 1 else None


def _routing_weights(gather: ir.Node) -> ir.Value | None:
    """Flatten(Unsqueeze(w, 2), axis=2) -> w [T, k]."""
    flat = _made_by(gather.inputs[0], "Flatten")
    unsq = _made_by(flat.inputs[0], "Unsqueeze") if flat is not None else None
    if unsq is None or flat.attributes.get_int("axis", 1) != 2:
        return None
    return unsq.inputs[0]


def _weighting_mul(gather: ir.Node) -> ir.Node | None:
    v = gather.outputs[0]
    for _ in range(4):
        nxt = [n for n, _ in v.uses()]
        if len(nxt) != 1:
            return None
        if nxt[0].op_type == "Mul":
            return nxt[0]
        if nxt[0].op_type != "Reshape":
            return None
        v = nxt[0].outputs[0]
    return None


def _before_expand(v: ir.Value | None) -> ir.Value | None:
    node = _made_by(v, "Expand")
    return node.inputs[0] if node is not None else v


def _total(scatter: ir.Node) -> ir.Value | None:
    """The running sum: zeros + scatter_0, then + scatter_i per iteration; the last sum."""
    adds = _users(scatter.outputs[0], "Add")
    if len(adds) != 1:
        return None
    other = next(v for v in adds[0].inputs if v is not scatter.outputs[0])
    if other.const_value is None or np.any(other.const_value.numpy()):
        return None
    total = adds[0].outputs[0]
    while True:
        nxt = [n for n in _users(total, "Add")
               if any(_made_by(v, "ScatterElements") for v in n.inputs)]
        if len(nxt) != 1:
            return total
        total = nxt[0].outputs[0]


def _near(v: ir.Value, hops: int) -> list[ir.Node]:
    """The nodes at most `hops` edges downstream of `v`, nearest first."""
    seen: dict[int, ir.Node] = {}
    frontier = [n for n, _ in v.uses()]
    for _ in range(hops):
        nxt = []
        for n in frontier:
            if id(n) not in seen:
                seen[id(n)] = n
                nxt += [c for out in n.outputs for c, _ in out.uses()]
        frontier = nxt
    return list(seen.values())


# --- the rewrite -------------------------------------------------------------------------------


class _Builder:
    """Nodes and constants appended to the graph under the loop's scope."""

    def __init__(self, graph: ir.Graph, scope: str, tag: str) -> None:
        self.graph, self.scope, self.tag, self.count = graph, scope, tag, 0

    def const(self, values: Iterable[int]) -> ir.Value:
        self.count += 1
        name = f"{self.scope}{self.tag}/shape_{self.count}"
        v = ir.Value(name=name, const_value=ir.tensor(np.array(list(values), np.int64),
                                                      name=name))
        self.graph.register_initializer(v)
        return v

    def op(self, kind: str, inputs: list[ir.Value | None], **attrs) -> ir.Value:
        self.count += 1
        name = f"{self.scope}{self.tag}/{kind}_{self.count}"
        node = ir.node(kind, inputs, attrs or None, name=name)
        node.outputs[0].name = f"{name}_output_0"
        self.graph.append(node)
        return node.outputs[0]


def _rewrite(graph: ir.Graph, loop: _Loop, n: int) -> None:
    tokens, hidden = _static(loop.x.shape)
    k = _static(loop.index.shape)[1]
    b = _Builder(graph, loop.scope, f"moe_loop_{n}")
    idx = b.op("Reshape", [loop.index, b.const([tokens * k, 1])])
    x3 = b.op("Expand", [b.op("Unsqueeze", [loop.x, b.const([1])]), b.const([1, k, 1])])
    rows = b.op("Reshape", [x3, b.const([tokens * k, hidden])])
    loop.x_gather.outputs[0].replace_all_uses_with(rows)
    for gather in _users(loop.expert, "Gather", 1):
        if _from_weights(gather.inputs[0]):
            _batch_weight(b, gather, idx)
    loop.weighted.replace_input_with(
        list(loop.weighted.inputs).index(loop.route_weight),
        b.op("Reshape", [loop.weights, b.const([tokens * k, 1])]))
    out = _static(loop.total.shape)[-1]
    per_slot = b.op("Reshape", [loop.updates, b.const([tokens, k, out])])
    summed = b.op("ReduceSum", [per_slot, b.const([1])], keepdims=0)
    loop.total.replace_all_uses_with(summed)


def _batch_weight(b: _Builder, gather: ir.Node, idx: ir.Value) -> None:
    """w[e] -> GatherND(w, idx): each row's own expert. `w[e].T` read by a MatMul becomes the
    batched MatMul of the batched export: [R, O, I] @ [R, I, 1] -> [R, O]."""
    picked = b.op("GatherND", [gather.inputs[0], idx], batch_dims=0)
    t = _transposed_matrix(gather)
    assert t is not None  # _batchable
    for mm, _ in list(t.outputs[0].uses()):
        col = b.op("Unsqueeze", [mm.inputs[0], b.const([-1])])
        prod = b.op("MatMul", [picked, col])
        mm.outputs[0].replace_all_uses_with(b.op("Squeeze", [prod, b.const([-1])]))


def _transposed_matrix(gather: ir.Node) -> ir.Node | None:
    """The Transpose of `w[e]` when the body reads it as `x @ w[e].T`."""
    users = [n for n, _ in gather.outputs[0].uses()]
    if len(users) == 1 and users[0].op_type == "Transpose" and list(
            users[0].attributes.get_ints("perm", [])) == [1, 0]:
        return users[0]
    return None


def _batchable(gather: ir.Node) -> bool:
    """`w[e].T` read as a MatMul's right operand only (HF's `nn.functional.linear(x, w[e])`).
    Anything else (a per-expert bias, `x @ w[e]` without the transpose as gpt-oss stores its
    experts) is not matched: no export of such a loop to test it on."""
    t = _transposed_matrix(gather)
    return t is not None and all(
        n.op_type == "MatMul" and slot == 1 for n, slot in t.outputs[0].uses())


def _static_shapes(*values: ir.Value) -> bool:
    return all(v.shape is not None and all(isinstance(d, int) for d in v.shape)
               and len(v.shape) == 2 for v in values)


def _static(shape: ir.Shape | None) -> tuple[int, ...]:
    assert shape is not None
    return tuple(int(d) for d in shape)
