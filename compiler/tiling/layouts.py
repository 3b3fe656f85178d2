"""Layouts: how each op of a layer is split over the layer's r x c core mesh.

A layer placed on an r x c rectangle is a small 2D device mesh with axes "r" (rows) and "c"
(columns). A tensor's Spec says, per dimension, which mesh axis splits it (or None: whole on
every core), as JAX's PartitionSpec does. A matmul with a weight W[K, N] splits K over the axis
that splits its input's last dim and N over the other axis, so partial sums are reduced along
the first axis and the output arrives split over the second: consecutive matmuls alternate
orientation and need no re-layout. Collectives (reduce, allreduce, relayout, gather) follow from
layout mismatches and split reductions. Specs are symbolic (independent of r and c), so a
layer's layouts are computed once per layer template.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from compiler import ir
from compiler.errors import UnsupportedOp, UnsupportedOpsError
from compiler.stages import at_layer
from compiler.tiling import alike
from compiler.vocab import RESHAPE_OPS, VIEW_OPS, CollectiveKind

R, C = "r", "c"
Spec = tuple[str | None, ...]
# A spec entry is a mesh axis ("r", "c") or, for query-blocked attention (issue 15), one factor
# of an axis shared by two dims: "c12" (the outer factor, min(12, cols) parts: the heads) and
# "c/12" (the inner factor, cols // min(12, cols) parts: blocks of query rows). Core column j
# then holds outer part j // inner and inner part j % inner (the cores past outer x inner hold
# padding). A tensor split by one factor only is the same on every core of the other's group.


def base(entry: str | None) -> str | None:
    """The mesh axis of a spec entry ("c12" and "c/12" are on "c")."""
    return entry[0] if entry else None


def factor(entry: str | None) -> tuple[int, bool] | None:
    """(n, inner) of a factored entry ("c12" -> (12, False), "c/12" -> (12, True)), else None."""
    if not entry or len(entry) == 1:
        return None
    return (int(entry[2:]), True) if entry[1] == "/" else (int(entry[1:]), False)


def factor_parts(n: int, size: int) -> tuple[int, int]:
    """(outer, inner) part counts of an axis of `size` cores factored for `n` outer parts."""
    outer = max(1, min(n, size))
    return outer, size // outer


def parts(entry: str | None, rows: int, cols: int) -> int:
    """How many parts a dim split by `entry` has on an r x c mesh (1 when whole)."""
    if not entry:
        return 1
    size = rows if entry[0] == R else cols
    f = factor(entry)
    if f is None:
        return size
    outer, inner = factor_parts(f[0], size)
    return inner if f[1] else outer


def plain(spec: Spec) -> Spec:
    """A spec with factored entries undone: the outer factor takes the whole axis, the inner
    one none of it."""
    return tuple(None if (f := factor(s)) and f[1] else base(s) for s in spec)


@dataclass(frozen=True)
class Collective:
    """Communication an op needs inside its layer's rectangle, along one mesh axis."""

    kind: CollectiveKind
    axis: str  # "r" or "c"
    tensor: str

    def __post_init__(self) -> None:  # a factored entry's collective runs along its axis
        object.__setattr__(self, "axis", base(self.axis))


@dataclass(frozen=True)
class OpLayout:
    op: str
    kind: str
    inputs: tuple[Spec | None, ...]  # None for omitted optional inputs
    outputs: tuple[Spec, ...]
    collectives: tuple[Collective, ...] = ()


def other(axis: str) -> str:
    return C if base(axis) == R else R


def replicated(rank: int) -> Spec:
    return (None,) * rank


def tile_shape(shape: Sequence[int], spec: Spec, rows: int, cols: int) -> tuple[int, ...]:
    """The largest per-core tile of a tensor split by `spec` over an r x c mesh."""
    return tuple(-(-d // parts(s, rows, cols)) for d, s in zip(shape, spec, strict=True))


def tile_numel(shape: Sequence[int], spec: Spec, rows: int, cols: int) -> int:
    return math.prod(tile_shape(shape, spec, rows, cols))


def layer_layouts(g: ir.Graph, layer: ir.Layer, known: Mapping[str, Spec],
                  query_blocks: bool = False, spread: str = "") -> tuple[OpLayout, ...]:
    """Layouts of every op of `layer`, given the specs of tensors made before it; a narrowing
    relayout is hoisted into the op that moves the tiles anyway (`_hoisted`). With
    `query_blocks`, attention splits its query rows too (`_query_blocked`); with `spread` (a
    mesh axis), one-query attention puts its keys there and its head dim on the other axis
    (`_spread`)."""
    fixed: dict[str, Spec] = {}
    while True:
        layouts, specs = _forward(g, layer, known, fixed, query_blocks, spread)
        more = {k: v for k, v in _hoisted(g, layer, layouts, specs).items() if k not in fixed}
        if not more:
            return layouts
        fixed.update(more)


def _forward(g: ir.Graph, layer: ir.Layer, known: Mapping[str, Spec], fixed: Mapping[str, Spec],
             query_blocks: bool = False,
             spread: str = "") -> tuple[tuple[OpLayout, ...], dict[str, Spec]]:
    """The rules op by op; `fixed` names outputs of tile-moving ops written in another spec."""
    specs = dict(known)
    out = []
    for op in layer.ops:
        layout = op_layout(g, op, specs, query_blocks, spread)
        if any(o in fixed for o in op.outputs):
            layout = dataclasses.replace(layout, outputs=tuple(
                fixed.get(o, s) for o, s in zip(op.outputs, layout.outputs, strict=True)))
        if any(o in fixed for o in op.outputs) and (
                _is_broadcast(g, op) or _RULES.get(op.kind) is _elementwise):
            layout = _broadcast_into(g, op, specs, fixed[op.outputs[0]])
        specs.update(zip(op.outputs, layout.outputs, strict=False))
        out.append(layout)
    return tuple(out), specs


# --- hoisting narrowing relayouts ---------------------------------------------------------------


def _hoisted(g: ir.Graph, layer: ir.Layer, layouts: Sequence[OpLayout],
             specs: Mapping[str, Spec]) -> dict[str, Spec]:
    """Outputs of tile-moving ops to write directly in the spec a later consumer wants.

    A relayout that only adds splits (a narrowing: each core keeps a slice of what it holds)
    is traced back through views and elementwise ops with constant operands (each tensor read
    by that op only) to the op that made the tensor. When that op moves tiles anyway (a
    `retile`: Split/Slice/Concat/Gather along a split dim), it writes the narrower tiles
    directly and the ops between compute on them, so the wide tensor never exists on a core:
    e.g. attention's K and V, split by keys, straight out of the Split of a fused QKV
    projection."""
    ops = {op.name: (op, lay) for op, lay in zip(layer.ops, layouts, strict=True)}
    found: dict[str, Spec] = {}
    for op, lay in zip(layer.ops, layouts, strict=True):
        for c in lay.collectives:
            if c.kind != CollectiveKind.RELAYOUT or c.tensor not in specs:
                continue
            want = lay.inputs[op.inputs.index(c.tensor)]
            if want is not None and _narrows(specs[c.tensor], want):
                found.update(_trace_back(g, ops, specs, c.tensor, want))
    found.update(_broadcasts_hoisted(g, layer, layouts, specs, ops))
    return found


def _narrows(have: Spec, want: Spec) -> bool:
    """`want` splits everything `have` splits, the same way, and more (an axis's outer factor
    counts as the same way: query blocking, `_query_blocked`)."""
    return have != want and all(_keeps(h, w) for h, w in zip(have, want, strict=True))


def _keeps(have: str | None, want: str | None) -> bool:
    if have is None or have == want:
        return True
    f = factor(want)
    return factor(have) is None and f is not None and not f[1] and base(want) == have


def _trace_back(g: ir.Graph, ops, specs: Mapping[str, Spec], name: str,
                want: Spec) -> dict[str, Spec]:
    """Back to a retile, which writes `want` itself; else (issue 15) to the first elementwise
    op of the chain (a projection's bias Add), which reads its input narrowed (a relayout of
    that input alone) and writes `want`: the wide tensor then dies at that op instead of
    living on through the rest of the layer (attention's K and V beside a whole Q)."""
    first: dict[str, Spec] = {}
    while True:
        made = g.producers.get(name)
        if made is None or made.name not in ops or name in g.outputs or \
                len(g.consumers.get(name, ())) != 1:
            return first
        op, lay = ops[made.name]
        if any(c.kind == CollectiveKind.RETILE for c in lay.collectives):
            return {name: want}
        src = _chain_input(g, op)
        back = _spec_back(g, op, src, want) if src else None
        if back is None:
            return first
        first = {name: want} if _RULES.get(op.kind) is _elementwise else first
        name, want = src, back


def _chain_input(g: ir.Graph, op: ir.Op) -> str | None:
    """The one activation a view, or an elementwise op with constant operands (a scale, a
    cast), reads: its tiles can be computed in a narrower spec as they come."""
    if op.kind in VIEW_OPS:
        acts = list(op.inputs[:1])
    elif _RULES.get(op.kind) is _elementwise:
        acts = [n for n in op.inputs if n and not _is_const(g, n)]
    else:
        return None
    return acts[0] if len(acts) == 1 and not _is_const(g, acts[0]) else None


def _spec_back(g: ir.Graph, op: ir.Op, src: str, want: Spec) -> Spec | None:
    """The spec of `src` that makes `op` give `want` (None when there is none)."""
    shape = g.tensor(src).shape
    if op.kind == "Transpose":
        perm = op.attr("perm") or tuple(reversed(range(len(shape))))
        back: list[str | None] = [None] * len(shape)
        for i, p in enumerate(perm):
            back[p] = want[i]
    elif op.kind in RESHAPE_OPS:
        back = [None] * len(shape)
        for group_in, group_out in _factor_groups(shape, g.tensor(op.outputs[0]).shape):
            axis = next((want[j] for j in group_out if want[j]), None)
            target = next((i for i in group_in if shape[i] > 1), None)
            if axis and target is not None:
                back[target] = axis
    else:  # Identity, elementwise: the same split, right-aligned
        back = [a if d > 1 else None for a, d in zip(_align(want, len(shape)), shape,
                                                     strict=True)]
    spec = tuple(back)
    return spec if op_layout(g, op, {src: spec}).outputs[0] == want else None


# --- issue 15: broadcasts written split (h-real) ----------------------------------------------
# A whole (replicated) activation that a consumer reads narrower is traced back to the
# broadcast that made it (an Expand, or an elementwise op larger than its inputs, e.g. the
# attention mask's [S, 1] & [1, S] or a mean-pooling tail's mask expanded to [B, S, hidden]).
# The broadcast writes the narrower tiles itself from its small inputs (narrowed alike), so
# the wide tensor never exists whole on a core; without this a BERT's [1, 1, S, S] mask and
# its pooling tail's int64 [B, S, H] mask are held whole, and seq 128 does not fit a WSE-3.


def _broadcasts_hoisted(g: ir.Graph, layer: ir.Layer, layouts: Sequence[OpLayout],
                        specs: Mapping[str, Spec], ops) -> dict[str, Spec]:
    found: dict[str, Spec] = {}
    for op, lay in zip(layer.ops, layouts, strict=True):
        for name, want in zip(op.inputs, lay.inputs, strict=True):
            if not name or want is None or _is_const(g, name) or name not in specs:
                continue
            have = specs[name]
            if not any(have) and any(want) and len(have) == len(want):
                found.update(_trace_to_broadcast(g, ops, specs, name, want))
    return found


def _trace_to_broadcast(g: ir.Graph, ops, specs: Mapping[str, Spec], name: str,
                        want: Spec) -> dict[str, Spec]:
    """Through views and one-activation elementwise ops back to a broadcast whose inputs are
    whole on every core; other consumers of the tensors on the way read it re-laid-out."""
    while True:
        made = g.producers.get(name)
        if made is None or made.name not in ops or name in g.outputs or any(specs.get(name, ())):
            return {}
        op, _ = ops[made.name]
        if _is_broadcast(g, op) and _narrowable_inputs(g, op, specs, want):
            return {name: want}
        src = _chain_input(g, op)
        back = _spec_back(g, op, src, want) if src else None
        if back is None:
            return {}
        name, want = src, back


def _is_broadcast(g: ir.Graph, op: ir.Op) -> bool:
    """An Expand, or an elementwise op whose output is larger than each activation it reads."""
    if op.kind == "Expand":
        return True
    acts = [n for n in op.inputs if n and not _is_const(g, n)]
    if _RULES.get(op.kind) is not _elementwise or not acts or not op.outputs[0]:
        return False
    size = g.tensor(op.outputs[0]).numel
    return all(g.tensor(n).numel < size for n in acts)


def _narrowed(g: ir.Graph, name: str, want: Spec) -> Spec:
    shape = g.tensor(name).shape
    return tuple(s if d > 1 else None for s, d in zip(_align(want, len(shape)), shape,
                                                       strict=True))


def _narrowable_inputs(g: ir.Graph, op: ir.Op, specs: Mapping[str, Spec], want: Spec) -> bool:
    """Every activation input is whole on every core (so each core can take its own slice of
    it) or already split the way `want` splits it."""
    acts = [n for n in op.inputs[:1 if op.kind == "Expand" else None] if n and not _is_const(g, n)]
    for n in acts:
        have, need = _spec(g, n, specs), _narrowed(g, n, want)
        if any(have) and have != need:
            return False
    return bool(acts)


def _broadcast_into(g: ir.Graph, op: ir.Op, specs: Mapping[str, Spec], out: Spec) -> OpLayout:
    """A broadcast written in `out`: its inputs read in `out` right-aligned, size-1 dims whole
    (a narrowing of a whole input: each core keeps its own slice)."""
    data = op.inputs[:1] if op.kind == "Expand" else op.inputs
    ins = tuple(_narrowed(g, n, out) if n else None for n in data)
    if op.kind == "Expand":
        ins = (*ins, *(replicated(len(g.tensor(n).shape)) if n else None for n in op.inputs[1:]))
    coll = tuple(Collective(CollectiveKind.RELAYOUT, _first_axis(have, want), n)
                 for n, want in zip(op.inputs, ins, strict=True)
                 if n and want is not None and not _is_const(g, n)
                 and (have := _spec(g, n, specs)) != want and any(have))
    return OpLayout(op.name, op.kind, ins, (out,) * len(op.outputs), coll)


def graph_layouts(g: ir.Graph, inputs: Mapping[str, Spec] | None = None,
                  query_blocks: bool = False,
                  spread: str = "") -> dict[str, tuple[OpLayout, ...]]:
    """Every layer's op layouts; graph inputs are replicated unless `inputs` gives their spec
    (a decode step's KV cache: split as its attention MatMul reads it). `query_blocks`:
    attention's query rows split too (a long prompt's heads do not fit a core whole).
    `spread` (a mesh axis): one-query attention (a decode step) keeps heads whole and splits
    the keys over that axis and the head dim over the other (`_spread`)."""
    specs: dict[str, Spec] = {n: replicated(len(g.tensor(n).shape)) for n in g.inputs}
    specs.update(inputs or {})
    result, memo = {}, alike.Memo()  # alike layers (a model's blocks) laid out once
    for layer in g.layers:
        with at_layer(layer.name):  # an internal error names the layer
            layouts = memo.layouts(g, layer, specs, lambda layer=layer: layer_layouts(
                g, layer, specs, query_blocks, spread))
        for op, lay in zip(layer.ops, layouts, strict=True):
            specs.update(zip(op.outputs, lay.outputs, strict=False))
        result[layer.name] = layouts
    return result


# --- rules --------------------------------------------------------------------------------------


def op_layout(g: ir.Graph, op: ir.Op, specs: Mapping[str, Spec],
              query_blocks: bool = False, spread: str = "") -> OpLayout:
    _check_constant_inputs(g, op)
    rule = _RULES.get(op.kind, _fallback)
    if rule is _matmul and spread and spreads(g, op):
        layout = _spread(g, op, specs, spread)
    elif rule is _matmul:
        layout = _matmul(g, op, specs, query_blocks)
    else:
        if not _takes_factored(g, op, rule, specs):  # reads them as their plain specs
            specs = {**specs, **{n: plain(specs[n]) for n in op.inputs if n in specs}}
        layout = rule(g, op, specs) if rule is not _reshape else _reshape(g, op, specs, spread)
    _check_ranks(g, op, layout)
    return layout


def _check_ranks(g: ir.Graph, op: ir.Op, layout: OpLayout) -> None:
    """Every spec has its tensor's rank (a rule that loses a dim is a bug here, not an
    IndexError in a later rule or a failed zip in the schedule)."""
    pairs = [*zip(op.inputs, layout.inputs, strict=False),
             *zip(op.outputs, layout.outputs, strict=False)]
    for name, spec in pairs:
        if name and spec is not None and len(spec) != len(g.tensor(name).shape):
            raise AssertionError(f"layout of {op.kind} {op.name}: spec {spec} of {name} does "
                                 f"not have its rank {len(g.tensor(name).shape)}")


def _takes_factored(g: ir.Graph, op: ir.Op, rule, specs: Mapping[str, Spec]) -> bool:
    """Whether a rule keeps factored (query-blocked) specs: tile-local ops do; a reduction
    only over dims that are not factored (a softmax over split keys)."""
    if rule in (_elementwise, _transpose, _reshape, _unsqueeze, _dropout):
        return True
    if rule is not _reduction:
        return False
    x = _spec(g, op.inputs[0], specs)
    return not any(factor(x[a]) for a in _reduced_axes(g, op))


# Inputs a kernel reads as values known when compiling (axes, sizes, bounds): (index, what).
CONSTANT_INPUTS = {
    **{k: ((1, "axes"),) for k in ("ReduceSum", "ReduceMean", "ReduceMax")},
    "Trilu": ((1, "k"),), "Split": ((1, "split"),), "Tile": ((1, "repeats"),),
    "Slice": ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")),
    "Range": ((0, "start"), (1, "limit"), (2, "delta")), "ConstantOfShape": ((0, "shape"),),
}
# Mixture-of-experts routing: k and the one-hot depth fix output shapes.
CONSTANT_INPUTS |= {"TopK": ((1, "K"),), "OneHot": ((1, "depth"),)}


def _check_constant_inputs(g: ir.Graph, op: ir.Op) -> None:
    """An input the kernel needs as a constant but the model computes at run time is refused
    here, at compile time, rather than faulting when the schedule runs."""
    late = [what for i, what in CONSTANT_INPUTS.get(op.kind, ())
            if i < len(op.inputs) and op.inputs[i] and op.inputs[i] not in g.const_derived]
    if late:
        shapes = tuple(g.tensor(n).type_str() if n else "-" for n in op.inputs)
        raise UnsupportedOpsError([UnsupportedOp(
            op.name, f"{op.kind} ({', '.join(late)} computed at run time)", op.domain, g.opset,
            shapes)])


def _per_output(op: ir.Op, spec_of) -> tuple[Spec, ...]:
    """One spec per output position, as the schedule pairs them with op.outputs; an omitted
    optional output ("") gets the empty spec."""
    return tuple(spec_of(k, o) if o else () for k, o in enumerate(op.outputs))


def _spec(g: ir.Graph, name: str, specs: Mapping[str, Spec]) -> Spec:
    return specs.get(name, replicated(len(g.tensor(name).shape)))


def _is_const(g: ir.Graph, name: str) -> bool:
    """Constants and what is computed from constants alone (a transposed tied embedding)."""
    return bool(name) and name in g.const_derived


def _split_axis(spec: Spec, dim: int) -> str | None:
    return spec[dim] if spec else None


def _without(spec: Spec, axis: str) -> Spec:
    return tuple(None if s == axis else s for s in spec)


def _matmul(g: ir.Graph, op: ir.Op, specs: Mapping[str, Spec],
            query_blocks: bool = False) -> OpLayout:
    if any(len(g.tensor(n).shape) < 2 for n in op.inputs[:2]):  # a vector: whole tensors
        return _fallback(g, op, specs)
    if _is_const(g, op.inputs[1]) and len(g.tensor(op.inputs[1]).shape) == 2:
        return _matmul_weight(g, op, specs, trans_b=bool(op.attr("transB", 0)))
    # also a batched (3-D and up) constant: batch dims alike
    return _matmul_act(g, op, specs, query_blocks)


def _matmul_weight(g: ir.Graph, op: ir.Op, specs, trans_b: bool = False) -> OpLayout:
    """Activation x weight: K over the axis splitting the input's last dim (default r)."""
    a_spec = plain(_spec(g, op.inputs[0], specs))  # query blocks end at the projection
    # K: the axis splitting the input's last dim, else one its rows leave free (r first)
    k_axis = _split_axis(a_spec, -1) or next((a for a in (R, C) if a not in a_spec[:-1]), R)
    n_axis = other(k_axis)
    w_spec = (n_axis, k_axis) if trans_b else (k_axis, n_axis)
    # N takes n_axis and K k_axis: rows split on either are gathered first
    lead = _without(_without(a_spec[:-1], n_axis), k_axis)
    out = (*lead, n_axis)
    ins: list[Spec | None] = [(*lead, k_axis), w_spec]
    if len(op.inputs) > 2:  # Gemm bias: along N
        ins.append(_bias_spec(g, op.inputs[2], n_axis) if op.inputs[2] else None)
    return OpLayout(op.name, op.kind, tuple(ins), (out,),
                    (Collective(CollectiveKind.REDUCE, k_axis, op.outputs[0]),))


def _bias_spec(g: ir.Graph, name: str, axis: str) -> Spec:
    rank = len(g.tensor(name).shape)
    return (*replicated(rank - 1), axis) if rank else ()


def _matmul_act(g: ir.Graph, op: ir.Op, specs, query_blocks: bool = False) -> OpLayout:
    """Activation x activation (attention): batch dims (heads) split alike; the keys go over
    the axis the heads leave free. Q x K^T then splits its output's last dim (keys) over that
    axis with no reduction; P x V contracts over the split keys: partial sums, reduced there.
    With `query_blocks` the heads' axis is factored (`_query_blocked`): the heads over its
    outer factor, blocks of query rows over the inner one."""
    sa, sb = _spec(g, op.inputs[0], specs), _spec(g, op.inputs[1], specs)
    shape_a, shape_b = g.tensor(op.inputs[0]).shape, g.tensor(op.inputs[1]).shape
    lead = max(len(sa), len(sb)) - 2
    # batch dims split as A splits them, except where A broadcasts (size 1): those are whole
    batch = tuple(s if d > 1 else None for s, d in zip(
        _align(sa[:-2], lead), (*(1,) * (lead - len(shape_a) + 2), *shape_a[:-2]), strict=True))
    rows = None  # how A's row (query) dim is split
    if query_blocks and shape_a[-2] > 1:
        batch, rows = _query_blocked(batch, _align(shape_a[:-2], lead), sa[-2])
    used = {base(a) for a in batch if a}
    free = next((a for a in (C, R) if a not in used), None)
    k_axis = sa[-1] if sa[-1] and base(sa[-1]) not in used and not factor(sa[-1]) else None
    a_batch = _align(batch, len(sa) - 2)
    b_batch = tuple(s if d > 1 else None for s, d in zip(_align(batch, len(sb) - 2),
                                                         shape_b[:-2], strict=True))
    if k_axis:
        want_a, want_b, out = (*a_batch, rows, k_axis), (*b_batch, k_axis, None), None
    else:
        n_axis = free if shape_b[-1] > 1 else None
        want_a, want_b, out = (*a_batch, rows, None), (*b_batch, None, n_axis), n_axis
    coll = [Collective(CollectiveKind.RELAYOUT, _first_axis(have, want), name)
            for name, have, want in ((op.inputs[0], sa, want_a), (op.inputs[1], sb, want_b))
            if have != want and any(have)]
    if k_axis:
        coll.append(Collective(CollectiveKind.REDUCE, k_axis, op.outputs[0]))
    return OpLayout(op.name, op.kind, (want_a, want_b), ((*batch, rows, out),), tuple(coll))


def spreads(g: ir.Graph, op: ir.Op) -> bool:
    """Whether `op` is one-query attention that `_spread` lays out: an activation x
    activation MatMul of rank >= 4 ([batch, heads, query, ...]) over one query row."""
    if op.kind != "MatMul" or any(_is_const(g, n) for n in op.inputs[:2]):
        return False
    a, b = (g.tensor(n).shape for n in op.inputs[:2])
    return min(len(a), len(b)) >= 4 and a[-2] == 1


def _spread(g: ir.Graph, op: ir.Op, specs, keys: str) -> OpLayout:
    """One-query attention spread over both mesh axes (issue 17): heads whole, the
    contraction over one axis and B's last dim over the other, partial sums reduced along the
    first. Q x K^T contracts the head dim (K^T [.., D, T]: D over one axis, keys over the
    other); the softmax's keys stay on that other axis, so P x V contracts them there and its
    head dim lands on the first axis: V [.., T, D] is split as K^T, transposed, and a KV cache
    (keys x head dim per core, every head) spreads over the whole rectangle instead of one
    row per KV head (Llama 3 70B: 8 of a block's 117 rows held its cache). `keys`: the mesh
    axis the keys take (the longer side of a block holds fewer keys a core, and the scores
    and the repeated cache live over them: two forms, one per axis)."""
    sa, sb = _spec(g, op.inputs[0], specs), _spec(g, op.inputs[1], specs)
    k_axis = keys if _reads_probs(g, op.inputs[0]) else other(keys)  # P x V: keys; Q x K^T: D
    n_axis = other(k_axis)
    want_a = (*replicated(len(sa) - 1), k_axis)
    want_b = (*replicated(len(sb) - 2), k_axis, n_axis)
    out = (*replicated(len(g.tensor(op.outputs[0]).shape) - 1), n_axis)
    coll = [Collective(CollectiveKind.RELAYOUT, _first_axis(have, want), name)
            for name, have, want in ((op.inputs[0], sa, want_a), (op.inputs[1], sb, want_b))
            if have != want and any(have)]
    coll.append(Collective(CollectiveKind.REDUCE, k_axis, op.outputs[0]))
    return OpLayout(op.name, op.kind, (want_a, want_b), (out,), tuple(coll))


def _reads_probs(g: ir.Graph, name: str) -> bool:
    """Whether `name` is attention's probabilities (a Softmax's output, through casts and
    views): P x V, not Q x K^T (whose Q may hold its head dim on the keys' axis too, split
    over the axis its heads leave free: `_split_head_dim`)."""
    while (made := g.producers.get(name)) is not None and made.kind != "Softmax":
        if made.kind not in VIEW_OPS | {"Cast", "Dropout"}:
            return False
        name = made.inputs[0]
    return made is not None


def _query_blocked(batch: Spec, sizes: Sequence[int],
                   rows: str | None) -> tuple[Spec, str | None]:
    """Query blocking (issue 15): the batch dim split over an axis (the heads) takes the outer
    factor of that axis and A's rows (the queries) its inner factor ("c12", "c/12" for 12
    heads over the columns), so a core holds a block of query rows of its heads instead of all
    of them: a BERT-base head's Q at 512 tokens is 128 KiB in fp32, a WSE-3 core 48 KiB."""
    if rows and (f := factor(rows)) and f[1] and any(
            factor(a) == (f[0], False) and base(a) == base(rows) for a in batch):
        return batch, rows  # already blocked (P x V reads the blocked scores)
    split = [d for d, a in enumerate(batch) if a and not factor(a) and sizes[d] > 1]
    if not split:
        return batch, None
    d = split[-1]
    axis, n = batch[d], sizes[d]
    return (*batch[:d], f"{axis}{n}", *batch[d + 1:]), f"{axis}/{n}"


def _align(spec: Spec, rank: int) -> Spec:
    """Right-align a spec to `rank` dims (broadcasting)."""
    if len(spec) >= rank:
        return spec[len(spec) - rank:]
    return (*replicated(rank - len(spec)), *spec)


def _first_axis(a: Spec, b: Spec) -> str:
    for x, y in zip(a, b, strict=False):
        if x != y:
            return base(x or y) or R
    return R


def _elementwise(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    outs = [g.tensor(o).shape for o in op.outputs if o]
    rank = len(outs[0]) if outs else 0
    acts = [n for n in op.inputs if n and not _is_const(g, n)]
    lead = max(acts, key=lambda n: len(g.tensor(n).shape), default=None)
    out = _align(_spec(g, lead, specs), rank) if lead else replicated(rank)
    ins, coll = [], []
    for name in op.inputs:
        if not name:
            ins.append(None)
            continue
        want = _align(out, len(g.tensor(name).shape))
        want = tuple(s if d > 1 else None for s, d in zip(want, g.tensor(name).shape, strict=True))
        have = _spec(g, name, specs)
        if not _is_const(g, name) and have != want and any(have):
            coll.append(Collective(CollectiveKind.RELAYOUT, _first_axis(have, want), name))
        ins.append(want)
    return OpLayout(op.name, op.kind, tuple(ins), (out,) * len(op.outputs), tuple(coll))


def _normalize_axes(axes: Sequence[int], rank: int) -> tuple[int, ...]:
    return tuple(sorted(a % rank for a in axes)) if rank else ()


def _reduced_axes(g: ir.Graph, op: ir.Op) -> tuple[int, ...] | None:
    """The dims `op` reduces; None when its axes input has no data (a shape-only graph whose
    axes are not held: the shapes cannot tell which dim of size 1 went)."""
    rank = len(g.tensor(op.inputs[0]).shape)
    if op.kind in ("LayerNormalization", "RMSNormalization"):
        return tuple(range(int(op.attr("axis", -1)) % rank, rank))
    if op.kind in ("Softmax", "LogSoftmax", "ArgMax"):
        return (int(op.attr("axis", 0 if op.kind == "ArgMax" else -1)) % rank,)
    axes = op.attr("axes")
    if axes is None and len(op.inputs) > 1 and op.inputs[1]:
        data = g.tensor(op.inputs[1]).data
        if data is None:
            return None
        axes = tuple(int(a) for a in data.reshape(-1))
    return _normalize_axes(axes if axes is not None else range(rank), rank)


def _reduction(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """Reductions and normalizations: split reduced dims need an allreduce of statistics."""
    x = _spec(g, op.inputs[0], specs)
    _check_legacy_softmax(g, op, len(x))
    axes = _reduced_axes(g, op)
    if axes is None:
        return _fallback(g, op, specs)
    coll = tuple(Collective(CollectiveKind.ALLREDUCE, x[a], op.outputs[0]) for a in axes if x[a])
    out_rank = len(g.tensor(op.outputs[0]).shape)
    if out_rank == len(x):
        out = x if op.kind in _NORMALIZING else tuple(
            None if i in axes else s for i, s in enumerate(x))
    else:
        out = tuple(s for i, s in enumerate(x) if i not in axes)
    ins: list[Spec | None] = [x]
    for name in op.inputs[1:]:
        ins.append(_align(x, len(g.tensor(name).shape)) if name and op.kind in _NORMALIZING
                   else (replicated(len(g.tensor(name).shape)) if name else None))
    stats = tuple(None if i in axes else s for i, s in enumerate(x))  # Mean, InvStdDev
    outs = _per_output(op, lambda k, o: out if k == 0 else stats)
    return OpLayout(op.name, op.kind, tuple(ins), outs, coll)


def _check_legacy_softmax(g: ir.Graph, op: ir.Op, rank: int) -> None:
    """Before opset 13, (Log)Softmax flattens its input to 2-D at `axis` (default 1) and
    normalizes over all the trailing dims at once; that is the modern semantics only when
    `axis` is the last dim. The other cases are refused rather than computed otherwise."""
    if op.kind not in ("Softmax", "LogSoftmax") or g.opset >= 13 or not rank:
        return
    axis = int(op.attr("axis", 1)) % rank
    if axis != rank - 1:
        shapes = tuple(g.tensor(n).type_str() for n in op.inputs if n)
        raise UnsupportedOpsError([UnsupportedOp(
            op.name, f"{op.kind} (opset {g.opset} 2-D coercion at axis {axis} of rank {rank})",
            op.domain, g.opset, shapes)])


_NORMALIZING = frozenset({"LayerNormalization", "RMSNormalization", "Softmax", "LogSoftmax"})


def _transpose(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    x = _spec(g, op.inputs[0], specs)
    perm = op.attr("perm") or tuple(reversed(range(len(x))))
    return OpLayout(op.name, op.kind, (x,), (tuple(x[p] for p in perm),))


def _reshape(g: ir.Graph, op: ir.Op, specs, spread: str = "") -> OpLayout:
    """Map each split dim to the outermost non-unit output dim of its factor group (in a
    spread decode form, one token's head dim too: `_split_head_dim`)."""
    x = _spec(g, op.inputs[0], specs)
    src, dst = g.tensor(op.inputs[0]).shape, g.tensor(op.outputs[0]).shape
    out: list[str | None] = [None] * len(dst)
    for group_in, group_out in _factor_groups(src, dst):
        axis = next((x[i] for i in group_in if x[i]), None)
        target = next((j for j in group_out if dst[j] > 1), None)
        if axis and target is not None and axis not in out:
            out[target] = axis
            if spread:
                _split_head_dim(src, x, dst, group_out, target, out)
    ins = (x, *(replicated(len(g.tensor(n).shape)) if n else None for n in op.inputs[1:]))
    return OpLayout(op.name, op.kind, ins, (tuple(out),))


def _split_head_dim(src: Sequence[int], x: Spec, dst: Sequence[int], group_out: Sequence[int],
                    target: int, out: list[str | None]) -> None:
    """One token's projection [1, 1, H * D] split into heads [1, 1, H, D] (a spread decode
    form; the heads forms keep it whole: there the chunked streamed cache's live set, which
    the tiling does not price, grew past the tiling's estimate):
    the head dim goes over the mesh axis the heads leave free, so a core holds a slice of a
    head row, not a whole one (Llama 3.1 405B: 128 heads over a block's 586 rows gave every
    core a whole 128-wide row of each rotary tensor, 1.9 KB live; issue 18). The tiles move
    anyway (the heads do not line up with the projection's tiles: the schedule's retile)."""
    rest = [j for j in group_out if j > target and dst[j] > 1]
    free = other(out[target])
    if len(dst) >= 4 and len(rest) == 1 and math.prod(src) == src[-1] \
            and free not in {base(a) for a in (*x, *out)}:
        out[rest[0]] = free


def _factor_groups(src: Sequence[int], dst: Sequence[int]):
    """Pair runs of input and output dims whose products match: [1,16,64] -> [1,16,4,16]
    gives ([0],[0]), ([1],[1]), ([2],[2,3])."""
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj = [i] if i < len(src) else [], [j] if j < len(dst) else []
        pi = src[i] if i < len(src) else 1
        pj = dst[j] if j < len(dst) else 1
        i, j = i + 1, j + 1
        while pi != pj and (i < len(src) or j < len(dst)):
            if pi < pj and i < len(src):
                pi *= src[i]
                gi.append(i)
                i += 1
            elif j < len(dst):
                pj *= dst[j]
                gj.append(j)
                j += 1
            else:
                break
        yield gi, gj


def _unsqueeze(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    return _reshape(g, op, specs)


def _expand(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """The input's splits, and its largest broadcast dim (size 1 in, more out) split over the
    mesh axis the input leaves free: every core along that axis holds the same input tile,
    so it makes its own slice of the copies without moving data, instead of all of them
    (GQA's key/value repeat: the query groups go over the axis the key heads leave free)."""
    x = _spec(g, op.inputs[0], specs)
    shape = g.tensor(op.outputs[0]).shape
    rank = len(shape)
    out = [s if shape[i] > 1 else None for i, s in enumerate(_align(x, rank))]
    src = (1,) * (rank - len(x)) + tuple(g.tensor(op.inputs[0]).shape)
    free = [a for a in (R, C) if a not in out]
    broadcast = [i for i in range(rank) if src[i] == 1 and shape[i] > 1]
    if len(free) == 1 and broadcast:
        out[max(broadcast, key=lambda i: shape[i])] = free[0]
    ins = (x, *(replicated(len(g.tensor(n).shape)) if n else None for n in op.inputs[1:]))
    return OpLayout(op.name, op.kind, ins, (tuple(out),))


def _embedding(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """Gather from a weight table [V, H]: rows of V over r, H over c; the owner row's value
    is reduced along r."""
    if not _is_const(g, op.inputs[0]) or len(g.tensor(op.inputs[0]).shape) != 2:
        return _gather_data(g, op, specs)
    idx = _spec(g, op.inputs[1], specs)
    out = (*replicated(len(idx)), C)
    return OpLayout(op.name, op.kind, ((R, C), replicated(len(idx))), (out,),
                    (Collective(CollectiveKind.REDUCE, R, op.outputs[0]),))


def _gather_data(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    x = _spec(g, op.inputs[0], specs)
    axis = int(op.attr("axis", 0)) % max(len(x), 1)
    idx_rank = len(g.tensor(op.inputs[1]).shape)
    coll = (Collective(CollectiveKind.RETILE, x[axis], op.inputs[0]),) if x and x[axis] else ()
    kept = tuple(None if d == axis else a for d, a in enumerate(x))
    out = (*kept[:axis], *replicated(idx_rank), *kept[axis + 1:])
    return OpLayout(op.name, op.kind, (x, replicated(idx_rank)), (out,), coll)


def _along_axis(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """Split/Slice/Concat: outputs keep the input's split; splitting along a split dim
    re-tiles (a relayout along that axis)."""
    first = next(n for n in op.inputs if n)
    x = _spec(g, first, specs)
    dims = _axis_dims(g, op, len(x))
    moves = next((x[d] for d in dims if x[d]), None)
    if op.kind == "Concat":  # every piece split like the first
        ins = tuple((x if n not in g.const_derived else _spec(g, n, specs)) if n else None
                    for n in op.inputs)
    else:
        ins = tuple(_spec(g, n, specs) if n else None for n in op.inputs)
    outs = _per_output(op, lambda k, o: _align(x, len(g.tensor(o).shape)))
    coll = (Collective(CollectiveKind.RETILE, moves, first),) if moves else ()
    return OpLayout(op.name, op.kind, ins, outs, coll)


def _axis_dims(g: ir.Graph, op: ir.Op, rank: int) -> list[int]:
    """The dims a Split/Concat (its `axis`) or a Slice (its `axes` input) works along."""
    if op.kind != "Slice":
        return [int(op.attr("axis", 0)) % rank] if rank else []
    if len(op.inputs) < 2:  # opset 1-9: attributes
        starts = op.attr("starts", ())
        axes_attr = op.attr("axes", tuple(range(len(starts))))
        return sorted({int(a) % rank for a in axes_attr})
    axes = op.inputs[3] if len(op.inputs) > 3 and op.inputs[3] else ""
    data = g.tensor(axes).data if axes else None
    if data is None:
        starts = g.tensor(op.inputs[1]).shape
        return list(range(starts[0] if starts else rank)) if axes == "" else list(range(rank))
    return sorted({int(a) % rank for a in data.reshape(-1)})


def _attention(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """ONNX Attention: batch and heads stay where Q splits them; the sequence and head-size
    dims are gathered (the kernel needs every key of its heads). K, V, the past cache and
    the present outputs split their heads alike, except under grouped-query attention, where
    they are whole on every core (a core's query heads need not line up with a tile of key
    heads on every mesh size). The 3-D form [B, S, H * D] keeps the hidden dim whole: a split
    of it would cut through a head on most mesh sizes. Masks follow Q's batch and heads, and
    no size-1 (broadcast) dim is split."""
    q = _spec(g, op.inputs[0], specs)
    b, h = q[0], q[1] if len(q) == 4 else None
    grouped = len(q) == 4 and g.tensor(op.inputs[0]).shape[1] != g.tensor(op.inputs[1]).shape[1]
    kv_h = None if grouped else h

    def want(name: str, role: str) -> Spec:
        shape = g.tensor(name).shape
        if role == "nonpad":
            spec: Spec = (b,)
        elif len(shape) == 3 and role != "mask":  # [B, S, H * D]
            spec = (b, None, None)
        else:  # [B, H, S, D], and masks [..., S, L] right-aligned
            spec = _align((b, kv_h if role == "kv" else h, None, None), len(shape))
        return tuple(a if d > 1 else None for a, d in zip(spec, shape, strict=True))

    roles = {0: "q", 3: "mask", 6: "nonpad"}
    ins, coll = [], []
    for i, name in enumerate(op.inputs):
        if not name:
            ins.append(None)
            continue
        spec, have = want(name, roles.get(i, "kv")), _spec(g, name, specs)
        if have != spec and not _is_const(g, name) and any(have):
            coll.append(Collective(CollectiveKind.RELAYOUT, _first_axis(have, spec), name))
        ins.append(spec)
    outs = _per_output(op, lambda k, o: want(o, "kv" if k in (1, 2) else "q"))
    return OpLayout(op.name, op.kind, tuple(ins), outs, tuple(coll))


def _fallback(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """Anything else runs on whole tensors: split inputs are gathered first."""
    ins = tuple(_spec(g, n, specs) if n else None for n in op.inputs)
    coll = tuple(Collective(CollectiveKind.GATHER, next(s for s in spec if s), n)
                 for n, spec in zip(op.inputs, ins, strict=True) if spec and any(spec))
    outs = _per_output(op, lambda k, o: replicated(len(g.tensor(o).shape)))
    full_ins = tuple(replicated(len(s)) if s is not None else None for s in ins)
    return OpLayout(op.name, op.kind, full_ins, outs, coll)


def _dropout(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """Inference Dropout is the identity; training mode (random masks) is refused here, at
    compile time, unless its ratio is 0."""
    ratio = _const_scalar(g, op.inputs[1] if len(op.inputs) > 1 else "", 0.5)
    training = _const_scalar(g, op.inputs[2] if len(op.inputs) > 2 else "", 0.0)
    if g.opset < 7 and not op.attr("is_test", 0):  # opset 1-6: is_test=0 is training
        training = 1.0
    if g.opset < 12:  # opset 7-11: the ratio is an attribute
        ratio = float(op.attr("ratio", 0.5))
    if training is None or (training and ratio != 0):
        what = "training_mode computed at run time" if training is None else "training_mode=1"
        shapes = tuple(g.tensor(n).type_str() if n else "-" for n in op.inputs)
        raise UnsupportedOpsError([UnsupportedOp(op.name, f"Dropout ({what})", op.domain,
                                                 g.opset, shapes)])
    return _elementwise(g, op, specs)


def _const_scalar(g: ir.Graph, name: str, default: float) -> float | None:
    """A scalar input's constant value: `default` when omitted (or when a shape-only graph
    holds no values), None when it is computed at run time."""
    if not name:
        return default
    if name not in g.const_derived:
        return None
    data = g.tensor(name).data
    return float(data.reshape(-1)[0]) if data is not None and data.size else default


def _gemm(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    if op.attr("transA", 0) or not _is_const(g, op.inputs[1]):
        return _fallback(g, op, specs)
    return _matmul_weight(g, op, specs, trans_b=bool(op.attr("transB", 0)))


# --- quantized graphs (kernels in compiler/executor/kernels_quant.py) -------------------------


def _quant_elementwise(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """QuantizeLinear / DequantizeLinear: elementwise with a per-tensor scale and zero point;
    per axis or per block, whole tensors (the parameters run along one axis)."""
    per_tensor = all(len(g.tensor(n).shape) == 0 or g.tensor(n).numel == 1
                     for n in op.inputs[1:] if n)
    return _elementwise(g, op, specs) if per_tensor else _fallback(g, op, specs)


# integer matmuls, requantizing matmuls and DynamicQuantizeLinear (a range over the whole
# tensor) run on whole tensors: their zero points and requantization do not split over K
def _qlinear_softmax(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """com.microsoft QLinearSoftmax: the dims it normalizes over whole on every core (its row
    sums are float32 sums in order, which a split would change), the others split as X is."""
    x = _spec(g, op.inputs[0], specs)
    opset = int(op.attr("opset", 13))
    axis = int(op.attr("axis", -1)) % max(len(x), 1)
    dims = range(axis, len(x)) if opset < 13 else (axis,)
    want = tuple(None if d in dims else s for d, s in enumerate(x))
    coll = tuple(Collective(CollectiveKind.RELAYOUT, x[d], op.inputs[0]) for d in dims
                 if x[d])[:1]
    ins = (want, *((replicated(len(g.tensor(n).shape)) if n else None) for n in op.inputs[1:]))
    return OpLayout(op.name, op.kind, ins, (want,), coll)


QUANT_RULES = {"QuantizeLinear": _quant_elementwise, "DequantizeLinear": _quant_elementwise,
               **dict.fromkeys(("DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
                                "QGemm"), _fallback),
               # per-tensor parameters (ONNX Runtime refuses others): elementwise
               "QLinearAdd": _elementwise, "QLinearMul": _elementwise,
               "QLinearSoftmax": _qlinear_softmax, "QLinearConcat": _fallback,
               "QLinearSigmoid": _elementwise}


_RULES = {
    **QUANT_RULES,
    "MatMul": _matmul, "Gemm": _gemm,
    "Transpose": _transpose, "Reshape": _reshape, "Flatten": _reshape, "Squeeze": _unsqueeze,
    "Unsqueeze": _unsqueeze, "Expand": _expand, "Gather": _embedding,
    "Split": _along_axis, "Slice": _along_axis, "Concat": _along_axis,
    "Attention": _attention, "Dropout": _dropout,
    **{k: _reduction for k in ("ReduceMean", "ReduceSum", "ReduceMax", "ArgMax", "Softmax",
                                "LogSoftmax", "LayerNormalization", "RMSNormalization")},
    **{k: _elementwise for k in (
        "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Exp", "Log", "Abs",
        "Cos", "Sin", "Max", "Min", "Clip", "Mod", "Where", "IsNaN", "IsInf", "And", "Or", "Not",
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Erf", "Tanh", "Sigmoid",
        "Relu", "Softplus", "Gelu", "Cast", "CastLike", "Identity")},
}


# --- mixture-of-experts: per-token expert weights ---------------------------------------------


def _expert_gather(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """GatherND of each token's expert weights from stacked `[E, ..., K]` weights (the
    batched-expert form of an MoE export): the weights' last dim split over columns, so each
    core gathers its own K-slice of every selected expert and the batched MatMul that follows
    contracts over that split (partial sums, reduced along the columns). The indices (the
    router's choice) are whole on every core. Anything else runs on whole tensors."""
    data, index = op.inputs[0], op.inputs[1]
    shape, depth = g.tensor(data).shape, g.tensor(index).shape[-1]
    if not _is_const(g, data) or op.attr("batch_dims", 0) or len(shape) - depth < 2:
        return _fallback(g, op, specs)
    have = _spec(g, index, specs)
    coll = tuple(Collective(CollectiveKind.GATHER, s, index) for s in have if s)[:1]
    d_spec = (*replicated(len(shape) - 1), C)
    out = (*replicated(len(g.tensor(op.outputs[0]).shape) - 1), C)
    return OpLayout(op.name, op.kind, (d_spec, replicated(len(have))), (out,), coll)


_RULES["GatherND"] = _expert_gather
# --- issue 15, real checkpoints (h-real): CumSum --------------------------------------------


def _cumsum(g: ir.Graph, op: ir.Op, specs) -> OpLayout:
    """CumSum runs along one dim: that dim whole on every core (a split one is gathered along
    its axis first), the others split as the input is."""
    x = _spec(g, op.inputs[0], specs)
    data = g.tensor(op.inputs[1]).data if len(op.inputs) > 1 else None
    axis = int(data.reshape(-1)[0]) % len(x) if data is not None and x else None
    if axis is None:  # shape-only graph: nothing to run, whole tensors
        return _fallback(g, op, specs)
    want = tuple(None if d == axis else s for d, s in enumerate(x))
    coll = (Collective(CollectiveKind.RELAYOUT, x[axis], op.inputs[0]),) if x[axis] else ()
    return OpLayout(op.name, op.kind, (want, replicated(len(g.tensor(op.inputs[1]).shape))),
                    (want,), coll)


CONSTANT_INPUTS["CumSum"] = ((1, "axis"),)
_RULES["CumSum"] = _cumsum
# --- end issue 15 ---
