"""The decode step of a causal LM: a decode-step graph derived from the prefill graph, and its
schedule on the prefill placement's regions.

The decode graph is the model at one new token per sequence (the frontend's graph at seq 1,
`g1`) with every recognised attention core (two activation x activation MatMuls around a
Softmax) reading a **KV cache** instead of the step's own K and V:

- the scores MatMul's key operand and the P x V MatMul's value operand become resident cache
  tensors `kv_cache.<layer>.k|v`, shaped like the operand with its key axis at `context`;
  the step's own K / V (key axis 1) is appended in place at the absolute position t by an
  `append` step before the MatMul reads the cache;
- the ops between the two MatMuls (scale, mask, softmax, and a Reshape that keeps the keys the
  last axis, as BLOOM's baddbmm scores [B*H, q, k] -> [B, H, q, k]) take `context` keys;
- constants that follow the position (the tensors a non-constant op reads whose shape grows
  with the sequence: position-embedding rows, causal-mask rows, rotary-table rows) become
  per-step inputs (`PositionFeed`), fed with row t of the model's own table at `context`
  (their query axes at t, their key axes whole), so positions, masks and rotary tables follow
  t, not 0.

The decode schedule runs that graph on the prefill placement's regions with the same layout
rules (the cache takes the key-split layout of the MatMul reading it). A resident cache is
allocated by a setup step (written by prefill) and appended in place; a cache whose region
streams it stays off-chip, is written back at t and read in chunks every step
(compiler/schedule/decode_stream.py). Its steps are sized for one step at the full context
(attention over `context` keys): scaling `fixed`, so the performance model prices them as they
are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compiler import ir
from compiler.errors import CapacityError, UnsupportedOpsError, WaferError
from compiler.placement.problem import Residency
from compiler.schedule.build import (
    FIXED,
    KVCacheRef,
    Region,
    Schedule,
    Step,
    StepsMemo,
    TensorRef,
    _compute,
    _provide,
    _State,
    _store_outputs,
    with_algorithms,
)
from compiler.schedule.decode_mask import varying_axes
from compiler.schedule.decode_stream import (
    STREAMING,
    StreamChunk,
    apply_chunks,
    plan_chunks,
    streamed_regions,
)
from compiler.schedule.perf import (
    Estimate,
    PerfOptions,
    Timeline,
    estimate,
    offchip_cycles,
    timeline,
)
from compiler.target import Target
from compiler.tiling.candidates import DecodeStep
from compiler.tiling.layouts import OpLayout, Spec, _spec_back, graph_layouts, spreads
from compiler.vocab import Mode, Phase, StepKind

APPEND = StepKind.APPEND  # writes a step's own K/V into its cache at position t
_PATH_OPS = frozenset({"Div", "Mul", "Add", "Sub", "Where", "Softmax", "Cast", "Identity",
                       "Dropout", "Neg", "Max", "Min", "IsNaN", "Tanh"})
# between the scores and the P x V MatMul: a Reshape keeping the keys the last axis (BLOOM's
# baddbmm runs on [B*H, q, k] scores, its mask Add and Softmax on [B, H, q, k])
_VIEW_PATH_OPS = frozenset({"Reshape"})


class DecodeUnsupported(ValueError):
    """The graph has no decode step this compiler can derive (the reason is the message)."""


@dataclass(frozen=True)
class KVCache:
    layer: str
    name: str  # the resident cache tensor of the decode graph
    new: str  # the step's own K or V (key axis 1), appended at position t
    prefill: str  # the same operand in the prefill graph: what prefill writes into the cache
    axis: int  # the key axis


@dataclass(frozen=True)
class PositionFeed:
    name: str  # a tensor of the model that follows the position
    query_axes: tuple[int, ...]  # taken at t
    key_axes: tuple[int, ...]  # all `context` positions


@dataclass(frozen=True)
class DecodeGraph:
    graph: ir.Graph
    caches: tuple[KVCache, ...]
    feeds: tuple[PositionFeed, ...]
    context: int
    tokens: tuple[str, ...]  # the token-id inputs (one id per sequence)
    # per-step boolean masks made from t (not tables of the model): (feed name, left window or
    # -1), for the ONNX Attention op (compiler/schedule/decode_attention.py)
    masks: tuple[tuple[str, int], ...] = ()
    # GQA caches before the grouped-query repeat (KV heads) rather than after it (query heads)
    grouped: bool = False
    input_masks: tuple[str, ...] = ()  # attention-mask inputs: [batch, context] per step (host)
    # the chunks of the caches that stream from off-chip (compiler/schedule/decode_stream.py)
    streams: tuple[StreamChunk, ...] = ()
    # one-query attention spread over both mesh axes (heads whole, keys over this axis, "r" or
    # "c", and the head dim over the other: `layouts._spread`) rather than ("") heads over one
    # axis and keys over the other
    spread: str = ""

    @property
    def form(self) -> tuple[bool, str]:
        """Its decode form: (grouped, spread), what the tiling prices per candidate."""
        return self.grouped, self.spread


# --- the decode-step graph ----------------------------------------------------------------------


def decode_graph(prefill: ir.Graph, g1: ir.Graph, context: int,
                 grouped: bool = True) -> DecodeGraph:
    """`g1` (the model at seq 1) turned into one decode step over a `context`-long cache;
    `prefill` (the same model at its prompt length, >= 2) tells which dims follow the sequence.
    Raises DecodeUnsupported naming what does not fit the pattern."""
    masks = mask_inputs(g1)
    prefill, g1 = host_masks(prefill, masks), without_presents(host_masks(g1, masks))
    _check_pair(prefill, g1)
    cores = _attention_cores(g1)
    if not cores and _has_attention_op(g1):
        from compiler.schedule.decode_attention import attention_op_decode

        return attention_op_decode(prefill, g1, context)
    if not cores:
        raise DecodeUnsupported(f"{g1.name} has no attention core (MatMul, Softmax, MatMul)")
    shapes = {t.name: t.shape for t in g1.tensors}
    layer_of = {op.name: layer.name for layer in g1.layers for op in layer.ops}
    caches, renames = [], {}
    for scores, pv in cores:
        layer = layer_of[scores.name]
        for op, role in ((scores, "k"), (pv, "v")):
            reader, slot = _cache_point(prefill, g1, op) if grouped else (op, 1)
            new = reader.inputs[slot]
            grown = [i for i, (a, b) in enumerate(zip(prefill.tensor(new).shape, shapes[new],
                                                      strict=True)) if a != b]
            if len(grown) != 1:
                raise DecodeUnsupported(f"the {role} operand of {op.name} does not grow with "
                                        "the sequence along one axis")
            name = f"kv_cache.{layer}.{role}"
            cache_shape = list(shapes[new])
            cache_shape[grown[0]] = context
            shapes[name] = tuple(cache_shape)
            caches.append(KVCache(layer, name, new, new, grown[0]))
            renames[(reader.name, slot)] = name
    feeds = _position_feeds(prefill, g1, cores, context, shapes)
    _check_causal(prefill, g1, feeds)
    graph = _rebuild(prefill, g1, caches, feeds, renames, shapes)
    tokens = tuple(n for n in g1.inputs)
    grouped = any(c.new != op.inputs[1] for c, op in zip(caches, _readers(cores), strict=True))
    return DecodeGraph(graph, tuple(caches), feeds, context, tokens, input_masks=masks,
                       grouped=grouped)


def _readers(cores) -> list[ir.Op]:
    return [op for scores, pv in cores for op in (scores, pv)]


_REPEAT_OPS = frozenset({"Transpose", "Reshape", "Expand", "Unsqueeze"})


def _cache_point(prefill: ir.Graph, g: ir.Graph, op: ir.Op) -> tuple[ir.Op, int]:
    """(reader, input slot) of the tensor the cache replaces: the attention MatMul's K / V
    operand, or, under a grouped-query repeat (Unsqueeze, Expand, Reshape, Transpose from
    [.., H_kv, T, D] to H heads), the tensor before the repeat: the cache then holds K / V at
    the KV-head count and the repeat runs on the cache every step."""
    chain: list[ir.Op] = []
    name = op.inputs[1]
    while (p := g.producers.get(name)) is not None and p.kind in _REPEAT_OPS:
        acts = [n for n in p.inputs if n and n not in g.const_derived]
        if acts != [p.inputs[0]] or len(g.consumers.get(name, ())) != 1:
            break
        chain.append(p)
        name = p.inputs[0]
    kinds = [p.kind for p in chain]
    if "Expand" not in kinds:
        return op, 1
    first = kinds.index("Expand")
    if first + 1 < len(chain) and kinds[first + 1] == "Unsqueeze":
        first += 1
    reader = chain[first]
    if len(g.consumers.get(reader.inputs[0], ())) != 1:
        return op, 1
    return reader, 0


def _check_pair(prefill: ir.Graph, g1: ir.Graph) -> None:
    if _device_ops(prefill) != _device_ops(g1):  # constant subgraphs may fold differently
        raise DecodeUnsupported(f"{g1.name} has other ops at one token than at the prompt")
    seq = max((t.shape[-1] for t in (prefill.tensor(n) for n in prefill.inputs)), default=1)
    if seq < 2:
        raise DecodeUnsupported("the prompt has one token: compile with --seq-len >= 2")
    for name in g1.inputs:
        t = g1.tensor(name)
        if t.dtype.is_float or len(t.shape) != 2 or t.shape[-1] != 1 or name != g1.inputs[0]:
            raise DecodeUnsupported(f"input {name} is not a [batch, seq] token-id input "
                                    "(decode takes token ids and an attention mask)")


def _check_causal(prefill: ir.Graph, g1: ir.Graph, feeds: tuple[PositionFeed, ...]) -> None:
    """A causal LM masks its scores with a mask that follows both the query position and the
    keys (the rows of a causal mask); an encoder's (BERT's) attends to every position. A mask
    expanded to [.., S, S] that is the same for every query (a TorchScript BERT's
    bidirectional one) is not causal: its values, where the model holds them, tell."""
    both = [f for f in feeds if f.query_axes and f.key_axes]
    if not both:
        raise DecodeUnsupported(f"{g1.name} has no causal mask on its attention scores (an "
                                "encoder attends to every position): decode needs a causal LM")
    if not any(set(f.query_axes) & varying_axes(prefill, f.name) for f in both):
        raise DecodeUnsupported(f"{g1.name}'s attention mask {both[0].name} is the same for "
                                "every query position (an encoder's bidirectional mask, not a "
                                "causal one): decode needs a causal LM")


def _has_attention_op(g: ir.Graph) -> bool:
    return any(op.kind == "Attention" for op in g.ops)


def _device_ops(g: ir.Graph) -> list[tuple[str, str]]:
    return [(o.name, o.kind) for o in g.ops
            if not all(n in g.const_derived for n in o.inputs if n)]


def _attention_cores(g: ir.Graph) -> list[tuple[ir.Op, ir.Op]]:
    """(scores MatMul, P x V MatMul) around each Softmax whose both MatMuls read activations."""
    cores = []
    for sm in (op for op in g.ops if op.kind == "Softmax" and not _is_router(g, op)):
        scores = _back_to_matmul(g, sm.inputs[0])
        pv = _forward_to_matmul(g, sm.outputs[0])
        if scores is None or pv is None:
            raise DecodeUnsupported(f"Softmax {sm.name} is not between two activation MatMuls")
        cores.append((scores, pv))
    return cores


def _is_router(g: ir.Graph, sm: ir.Op) -> bool:
    """A mixture-of-experts router's Softmax: over the logits of a weight MatMul / Gemm (the
    gate), choosing experts (a TopK reads it) or weighting every expert group (the zoo's MoE
    builder slices it per group), not attention scores, which are activation x activation."""
    name = sm.inputs[0]
    for _ in range(4):  # through a Cast to fp32 (fp16 models) or a temperature
        made = g.producers.get(name)
        if made is None:
            return False
        if made.kind in ("MatMul", "Gemm"):
            return any(n in g.const_derived for n in made.inputs if n)
        acts = [n for n in made.inputs if n and n not in g.const_derived]
        if made.kind not in _ROUTER_PATH or len(acts) != 1:
            return False
        name = acts[0]
    return False


_ROUTER_PATH = frozenset({"Cast", "Identity", "Mul", "Div"})


def _is_act_matmul(g: ir.Graph, op: ir.Op) -> bool:
    return op.kind == "MatMul" and not any(n in g.const_derived for n in op.inputs)


def _back_to_matmul(g: ir.Graph, name: str) -> ir.Op | None:
    for _ in range(8):
        op = g.producers.get(name)
        if op is None:
            return None
        if _is_act_matmul(g, op):
            return op
        acts = [n for n in op.inputs if n and n not in g.const_derived]
        if op.kind not in _PATH_OPS | _VIEW_PATH_OPS or len(acts) != 1:
            return None
        if op.kind in _VIEW_PATH_OPS and acts[0] != op.inputs[0]:
            return None  # a shape computed on the device
        name = acts[0]
    return None


def _forward_to_matmul(g: ir.Graph, name: str) -> ir.Op | None:
    for _ in range(4):
        users = _nan_guarded(g, name) or g.consumers.get(name, ())
        if len(users) != 1:
            return None
        op = users[0]
        if _is_act_matmul(g, op) and op.inputs[0] == name:
            return op
        if op.kind not in _PATH_OPS | _VIEW_PATH_OPS or (
                op.kind in _VIEW_PATH_OPS and op.inputs[0] != name):
            return None
        name = op.outputs[0]
    return None


def _nan_guarded(g: ir.Graph, name: str) -> tuple[ir.Op, ...]:
    """HF's guard of fully masked rows, `Where(IsNaN(p), 0, p)` after the Softmax: (the Where,)
    when `name` is read by exactly that pair, else ()."""
    users = g.consumers.get(name, ())
    if len(users) != 2 or {u.kind for u in users} != {"IsNaN", "Where"}:
        return ()
    isnan = next(u for u in users if u.kind == "IsNaN")
    where = next(u for u in users if u.kind == "Where")
    return (where,) if where.inputs[0] == isnan.outputs[0] else ()


def _scores_path(g: ir.Graph, cores) -> dict[str, ir.Op]:
    """Ops from each scores MatMul up to (not including) its P x V MatMul: their last axis is
    the keys."""
    path = {}
    for scores, pv in cores:
        todo = [scores]
        while todo:
            op = todo.pop()
            if op is pv or op.name in path:
                continue
            path[op.name] = op
            todo += [u for o in op.outputs if o for u in g.consumers.get(o, ())]
    return path


def _position_feeds(prefill: ir.Graph, g1: ir.Graph, cores, context: int,
                    shapes: dict[str, tuple[int, ...]]) -> tuple[PositionFeed, ...]:
    """Constants read by non-constant ops whose shape grows with the sequence."""
    path = _scores_path(g1, cores)
    feeds: dict[str, PositionFeed] = {}
    for op in g1.ops:
        if all(n in g1.const_derived for n in op.inputs if n):
            continue
        for name in op.inputs:
            if not name or name not in g1.const_derived or name in feeds:
                continue
            small, big = g1.tensor(name).shape, prefill.tensor(name).shape
            if small == big:
                continue
            seq_axes = [i for i, (a, b) in enumerate(zip(small, big, strict=True)) if a != b]
            if any(small[i] != 1 for i in seq_axes):
                raise DecodeUnsupported(f"{name} (read by {op.name}) grows with the sequence "
                                        "along a dim that is not 1 at one token")
            keys = tuple(i for i in seq_axes if op.name in path and
                         i == len(small) - 1) if op.name in path else ()
            query = tuple(i for i in seq_axes if i not in keys)
            feeds[name] = PositionFeed(name, query, keys)
            shapes[name] = tuple(context if i in keys else d for i, d in enumerate(small))
    return tuple(feeds.values())


def _rebuild(prefill: ir.Graph, g1: ir.Graph, caches, feeds, renames, shapes) -> ir.Graph:
    fed = {f.name for f in feeds}
    cache_names = [c.name for c in caches]
    layers = []
    for layer in g1.layers:
        ops = []
        for op in layer.ops:
            if any(o in fed for o in op.outputs):
                continue  # now an input of the step
            ins = tuple(renames.get((op.name, i), n) for i, n in enumerate(op.inputs))
            ops.append(dataclasses.replace(op, inputs=ins))
        layers.append(dataclasses.replace(layer, ops=tuple(ops)))
    layers = _prune(layers, set(g1.outputs) | {c.new for c in caches})
    tensors = {t.name: t for t in g1.tensors}
    for name in fed:
        tensors[name] = ir.Tensor(name, shapes[name], tensors[name].dtype, ir.TensorKind.INPUT)
    for c in caches:
        tensors[c.name] = ir.Tensor(c.name, shapes[c.name], tensors[c.new].dtype,
                                    ir.TensorKind.INPUT)
    g = ir.Graph(g1.name, tuple(tensors.values()), (*g1.inputs, *sorted(fed), *cache_names),
                 g1.outputs, tuple(layers), g1.opset, g1.source, g1.shape_only, g1.dims,
                 g1.source_sha256)
    widened = {c.name for c in caches} | {f.name for f in feeds if f.key_axes}
    g = _reshape_path(g, widened, prefill)
    g = dataclasses.replace(g, layers=tuple(_sunk(g, la, set(cache_names)) for la in g.layers))
    used = {n for op in g.ops for n in (*op.inputs, *op.outputs) if n}
    used |= set(g.inputs) | set(g.outputs)
    g = dataclasses.replace(g, tensors=tuple(t for t in g.tensors if t.name in used))
    ir.check_graph(g)
    return g


def _sunk(g: ir.Graph, layer: ir.Layer, caches: set[str]) -> ir.Layer:
    """`layer` with each op of a grouped-query repeat of a cache (an op of `_REPEAT_OPS` reading
    only caches, constants and such ops) moved to just before the first op that reads it, so
    V's repeated cache is not alive while the scores are made (the export repeats K and V
    first): one repeated cache alive at a time, not two."""
    sink: dict[str, ir.Op] = {}  # output -> its repeat op, not yet placed
    for op in layer.ops:
        acts = [n for n in op.inputs if n and n not in g.const_derived]
        if op.kind in _REPEAT_OPS and acts and all(n in caches or n in sink for n in acts):
            sink.update((o, op) for o in op.outputs if o)
    if not sink:
        return layer
    ops: list[ir.Op] = []
    placed: set[str] = set()

    def place(op: ir.Op) -> None:
        for n in op.inputs:
            if n in sink and sink[n].name not in placed:
                place(sink[n])
        placed.add(op.name)
        ops.append(op)

    for op in layer.ops:
        if op.outputs[0] not in sink:
            place(op)
    ops += [op for op in layer.ops if op.name not in placed]  # read by no op of the layer
    return dataclasses.replace(layer, ops=tuple(ops))


def _prune(layers: list[ir.Layer], outputs: set[str]) -> list[ir.Layer]:
    """Drop ops nothing reads (constant subgraphs that fed what is now an input)."""
    while True:
        read = {n for la in layers for op in la.ops for n in op.inputs if n} | outputs
        keep = [dataclasses.replace(la, ops=tuple(op for op in la.ops
                                                  if any(o in read for o in op.outputs if o)))
                for la in layers]
        if sum(len(la.ops) for la in keep) == sum(len(la.ops) for la in layers):
            return keep
        layers = keep


def _reshape_path(g: ir.Graph, widened: set[str], prefill: ir.Graph) -> ir.Graph:
    """Shapes of the ops that read the cache or a key-long feed, in order: a grouped-query
    repeat's Unsqueeze / Expand / Reshape / Transpose (the key axis followed through it), MatMul
    and broadcasting elementwise ops; the P x V MatMul's output is back to the step's shape."""
    tensors = dict(g.tensor_map)
    changed = set(widened)
    prefill_ops = {op.name: op for op in prefill.ops}
    for op in g.ops:
        if not any(n in changed for n in op.inputs if n):
            continue
        ins = [tensors[n].shape for n in op.inputs if n]
        if op.kind == "Attention":  # reads whole caches and a key-long mask; out: the query's
            continue
        name = op.outputs[0]
        if op.kind == "MatMul":
            out = np.broadcast_shapes(ins[0][:-2], ins[1][:-2]) + (ins[0][-2], ins[1][-1])
        elif op.kind in _PATH_OPS:
            out = np.broadcast_shapes(*ins) if op.kind != "Softmax" else ins[0]
        elif op.kind in _VIEW_PATH_OPS and _keys_last(prefill_ops[op.name], g, prefill):
            out = (*tensors[name].shape[:-1], ins[0][-1])
        elif op.kind in _REPEAT_OPS and op.inputs[0] in changed:
            pop = prefill_ops[op.name]
            out = _repeat_shape(pop, ins[0], g.tensor(pop.inputs[0]).shape,
                                tensors[name].shape, prefill)
        else:
            raise DecodeUnsupported(f"{op.kind} {op.name} reads the KV cache's key axis; "
                                    "decode derives only a grouped-query repeat, scale, mask, "
                                    "softmax and a Reshape keeping the keys last there")
        if tuple(out) != tensors[name].shape:
            tensors[name] = dataclasses.replace(tensors[name], shape=tuple(out))
            changed.add(name)
    return dataclasses.replace(g, tensors=tuple(tensors[t.name] for t in g.tensors))


def _keys_last(op: ir.Op, g: ir.Graph, prefill: ir.Graph) -> bool:
    """A Reshape on the scores path that keeps the keys its last axis (it merges or splits the
    batch, head and query axes only): the last axis follows the sequence and is the output's
    last axis, at one token as at the prompt (`op` as the prefill graph has it)."""
    pin, pout = prefill.tensor(op.inputs[0]).shape, prefill.tensor(op.outputs[0]).shape
    sin, sout = g.tensor(op.inputs[0]).shape, g.tensor(op.outputs[0]).shape
    return (bool(pin) and bool(pout) and pin[-1] != sin[-1] and pin[-1] == pout[-1]
            and sin[-1] == sout[-1])


def _repeat_shape(op: ir.Op, new_in: tuple[int, ...], step_in: tuple[int, ...],
                  out: tuple[int, ...], prefill: ir.Graph) -> tuple[int, ...]:
    """The output of a shape op (`op` as the prefill graph has it) whose input (`step_in` at one
    token, `new_in` now) had its key axis grown from 1 to the context: that axis found in the
    prefill graph (the output axis of the same length with the same elements after it; a
    Transpose by its perm), set to the context."""
    pin, pout = prefill.tensor(op.inputs[0]).shape, prefill.tensor(op.outputs[0]).shape
    grown = [i for i, (a, b) in enumerate(zip(pin, step_in, strict=True)) if a != b]
    if len(grown) != 1:
        raise DecodeUnsupported(f"{op.kind} {op.name} moves the attention's key axis: decode "
                                "follows a grouped-query repeat and a Reshape keeping the "
                                "keys the last axis")
    a = grown[0]
    if op.kind == "Transpose":
        perm = op.attr("perm") or tuple(reversed(range(len(new_in))))
        return tuple(new_in[p] for p in perm)
    after = math.prod(pin[a + 1:])
    hits = [j for j in range(len(pout)) if pout[j] == pin[a] and math.prod(pout[j + 1:]) == after]
    if len(hits) != 1 or out[hits[0]] != 1:
        raise DecodeUnsupported(f"{op.kind} {op.name}: cannot follow the cache's key axis")
    return tuple(new_in[a] if j == hits[0] else d for j, d in enumerate(out))


# --- attention masks: a [batch, context] feed per step, expanded on the host -----------------


def mask_inputs(g: ir.Graph) -> tuple[str, ...]:
    """The attention-mask inputs: integer or bool [batch, seq] inputs named like a mask (HF's
    `attention_mask`), beside the token ids."""
    return tuple(n for n in g.inputs if "mask" in n.lower() and len(g.tensor(n).shape) == 2
                 and not g.tensor(n).dtype.is_float)


def host_masks(g: ir.Graph, masks: tuple[str, ...]) -> ir.Graph:
    """`g` with its mask inputs taken as host values: constants without data, so the model's
    own ops that read only masks and constants (the mask's expansion into the attention's mask
    rows) count as constant-derived, and what they hand to the device becomes a per-step feed
    (query axes at t, key axes over the context) like a position table."""
    if not masks:
        return g
    tensors = tuple(dataclasses.replace(t, kind=ir.TensorKind.CONSTANT) if t.name in masks
                    else t for t in g.tensors)
    return dataclasses.replace(g, tensors=tensors,
                               inputs=tuple(n for n in g.inputs if n not in masks))


def mask_dependent(big: ir.Graph, masks: tuple[str, ...]) -> frozenset[str]:
    """Tensors of `big` (the model with its mask inputs) computed from a mask and constants:
    the feeds among them are evaluated per step, from that step's mask."""
    fixed = set(big.const_derived)
    found = set(masks)
    for op in big.ops:
        ins = [n for n in op.inputs if n]
        if any(n in found for n in ins) and all(n in found or n in fixed for n in ins):
            found.update(o for o in op.outputs if o)
    return frozenset(found)


def without_presents(g1: ir.Graph) -> ir.Graph:
    """A with-past export's decode step outputs its logits only: its presents (the K / V with
    the step's own appended) are the resident caches themselves."""
    from compiler.frontend.past import is_present

    return dataclasses.replace(g1, outputs=tuple(o for o in g1.outputs if not is_present(o)))


def step_mask(prompt_mask: Sequence[int], position: int, context: int) -> np.ndarray:
    """The [1, context] mask of the decode step at `position`: the prompt's own mask over its
    positions (padding stays 0), 1 for every later position up to `position`, 0 after."""
    m = np.zeros((1, context), np.int64)
    m[0, :position + 1] = 1
    n = min(len(prompt_mask), position + 1)
    m[0, :n] = np.asarray(prompt_mask[:n], np.int64)
    return m


# --- feeds: the position-dependent tables ------------------------------------------------------


def position_values(dg: DecodeGraph, tables: Mapping[str, np.ndarray],
                    t: int) -> dict[str, np.ndarray]:
    """Each feed at absolute position t, from its table at `context` (the model's own tensor
    at seq = context): query axes at t, key axes whole."""
    out = {}
    for f in dg.feeds:
        value = np.asarray(tables[f.name])
        index = tuple(slice(t, t + 1) if i in f.query_axes else slice(None)
                      for i in range(value.ndim))
        out[f.name] = np.ascontiguousarray(value[index])
    return out


# --- the decode schedule ------------------------------------------------------------------------


def build_decode_schedule(dg: DecodeGraph, prefill: Schedule, target: Target,
                          memo: DecodeMemo | None = None) -> Schedule:
    """One decode step on the prefill schedule's regions: weights and the KV cache resident
    (setup), the step's own K/V appended at t, attention over the cache, the last logits.
    `memo`: steps of earlier schedules of `dg` on the same regions (`DecodeMemo`)."""
    key = (prefill.regions, prefill.residency, target.compute, target.storage)
    steps = memo.steps.get(dg, key) if memo is not None else None
    if steps is None:
        steps = _decode_steps(dg, prefill, target)
        if memo is not None:
            memo.steps.keep(dg, key, steps)
    regions = {r.name: r for r in prefill.regions}
    return Schedule(dg.graph.name, target.name, prefill.regions,
                    with_algorithms(list(steps), regions, target), prefill.batch, prefill.batch,
                    dg.context, prefill.residency)


def _decode_steps(dg: DecodeGraph, prefill: Schedule, target: Target) -> tuple[Step, ...]:
    """`build_decode_schedule`'s steps before their reduce algorithms: of the target they read
    only its byte rule (`Target.tensor_bytes`: `compute` and `storage`), never its links."""
    g = dg.graph
    layouts = decode_layouts(dg)
    regions = {r.name: r for r in prefill.regions}
    residency = dict(prefill.residency)
    by_tensor = {c.name: c for c in dg.caches}
    chunk_of = {ch.name: ch for ch in dg.streams}
    written: dict[str, int] = {}  # streamed cache -> its write-back step
    st = _State(g, target, scaling=FIXED)  # a decode step's sizes are exact
    for layer in g.layers:
        region = regions[layer.name]
        mode = residency.get(layer.name, Residency.RESIDENT.value)
        streamed = mode in (Residency.STREAM_WEIGHTS.value, Residency.STREAM_ALL.value)
        for op, lay in zip(layer.ops, layouts[layer.name], strict=True):
            if all(n in g.const_derived for n in op.inputs if n):
                continue
            for name, spec in zip(op.inputs, lay.inputs, strict=True):
                if (region.name, name) in st.at:
                    continue
                if name in chunk_of:
                    ch = chunk_of[name]
                    _stream(g, by_tensor[ch.cache], ch, spec, region, regions, written, st)
                elif name in by_tensor and mode in STREAMING:
                    ch = StreamChunk(name, name, by_tensor[name].axis, 0, dg.context)
                    _stream(g, by_tensor[name], ch, spec, region, regions, written, st)
                elif name in by_tensor:
                    _cache(g, by_tensor[name], spec, region, regions, st)
            deps = [_provide(g, name, spec, region, regions, streamed, st)
                    for name, spec in zip(op.inputs, lay.inputs, strict=True) if name]
            _compute(g, op, lay, region, deps, st)
    _store_outputs(g, st)
    return tuple(st.steps)


KEEP_MEMO = 8  # entries of each kind a DecodeMemo keeps (the oldest goes)


@dataclass
class DecodeMemo:
    """What decode plans share across the compiles of one process (a sweep worker's
    `driver.Reuse`): points that differ only in link width schedule the same decode forms on,
    often, the same regions, and only a reduce's algorithm and the timeline read the links.
    `streamed`: each form with its streamed chunks (`with_streams`), by the form and the chunks
    (a function of the regions' shapes and the byte rule); `steps`: a decode schedule's steps
    before their algorithms (`_decode_steps`), by the form, the prefill regions and
    residencies and the byte rule. Both are `StepsMemo`s (by the form's identity)."""

    streamed: StepsMemo = dataclasses.field(default_factory=lambda: StepsMemo(KEEP_MEMO))
    steps: StepsMemo = dataclasses.field(default_factory=lambda: StepsMemo(KEEP_MEMO))

    @property
    def hits(self) -> int:
        return self.streamed.hits + self.steps.hits

    def streamed_of(self, dg: DecodeGraph, chunks: tuple[StreamChunk, ...]) -> DecodeGraph:
        out = self.streamed.get(dg, (chunks,))
        if out is None:
            out = dataclasses.replace(dg, graph=apply_chunks(dg.graph, chunks), streams=chunks)
            self.streamed.keep(dg, (chunks,), out)
        return out


# decode_layouts of the last few decode graphs, by identity (hashing a graph costs more than
# its layouts): the tiling prices each decode form, then the decode stage schedules the same one
_LAYOUTS: dict[int, tuple[DecodeGraph, dict[str, tuple[OpLayout, ...]]]] = {}
KEEP_LAYOUTS = 8  # a model's forms and their streamed variants (a sweep's DecodeMemo)


def decode_layouts(dg: DecodeGraph) -> dict[str, tuple[OpLayout, ...]]:
    """The decode graph's layouts with each KV cache split as its attention MatMul reads it,
    traced back through a grouped-query repeat between them (else a cache read by the repeat
    would be replicated on every core of its region). Remembered for the last few graphs."""
    hit = _LAYOUTS.get(id(dg))
    if hit is not None and hit[0] is dg:
        return dict(hit[1])
    layouts = _decode_layouts(dg)
    if len(_LAYOUTS) >= KEEP_LAYOUTS:  # the oldest goes
        del _LAYOUTS[next(iter(_LAYOUTS))]
    _LAYOUTS[id(dg)] = (dg, layouts)  # the graph kept with it: its id stays its own
    return dict(layouts)


def _decode_layouts(dg: DecodeGraph, rules: Callable[..., dict[str, tuple[OpLayout, ...]]]
                    = graph_layouts) -> dict[str, tuple[OpLayout, ...]]:
    """decode_layouts, uncached; `rules(graph, known, spread=)` lays out a graph (tests pass the
    layout rules run on every layer, alike layers not shared)."""
    g = dg.graph
    layouts = rules(g, spread=dg.spread)
    by_op = {lay.op: lay for lays in layouts.values() for lay in lays}
    known = {}
    chunks = {c.name: [ch.name for ch in dg.streams if ch.cache == c.name] for c in dg.caches}
    for name in (n for c in dg.caches for n in chunks[c.name] or [c.name]):
        spec = _spec_through_repeat(g, name, by_op)
        if spec is not None and any(spec):
            known[name] = spec
    return rules(g, known, spread=dg.spread) if known else layouts


def _spec_through_repeat(g: ir.Graph, name: str, by_op: dict[str, OpLayout]) -> Spec | None:
    chain: list[tuple[ir.Op, str]] = []
    while True:
        users = g.consumers.get(name, ())
        if len(users) != 1:
            return None
        op = users[0]
        if op.kind not in _REPEAT_OPS:
            break
        chain.append((op, name))
        name = op.outputs[0]
    if not chain:
        return None
    want = by_op[op.name].inputs[op.inputs.index(name)]
    for op, src in reversed(chain):
        want = _spec_back(g, op, src, want) if want is not None else None
    return want


def _cache(g: ir.Graph, cache: KVCache, spec: Spec | None, region: Region,
           regions: dict[str, Region], st: _State) -> None:
    """The resident cache on the region in the layout its reader wants (allocated at setup,
    written by prefill), then the append of the step's own K/V at t."""
    spec = spec if spec is not None else (None,) * len(g.tensor(cache.name).shape)
    load = st.add(kind=StepKind.LOAD, region=region.name, writes=(TensorRef(cache.name, spec),),
                  phase=Phase.SETUP, nbytes=st.bytes(cache.name), scaling=FIXED)
    st.at[(region.name, cache.name)] = (spec, None, load.id)
    new_dep = _provide(g, cache.new, spec, region, regions, False, st)
    step = st.add(kind=APPEND, region=region.name,
                  reads=(TensorRef(cache.new, spec), TensorRef(cache.name, spec)),
                  writes=(TensorRef(cache.name, spec),), deps=tuple(sorted({new_dep, load.id})),
                  op_kind=APPEND, axis=_split_of(spec, cache.axis), nbytes=st.bytes(cache.new))
    st.at[(region.name, cache.name)] = (spec, None, step.id)


def _stream(g: ir.Graph, cache: KVCache, chunk: StreamChunk, spec: Spec | None, region: Region,
            regions: dict[str, Region], written: dict[str, int], st: _State) -> None:
    """A chunk of a cache that streams: before its first chunk, the step's own K/V written back
    to the off-chip cache at t (a `store`, op_kind `append`); then the chunk loaded from
    off-chip (holding row t when it covers it), every step."""
    spec = spec if spec is not None else (None,) * len(g.tensor(chunk.name).shape)
    if cache.name not in written:
        new_dep = _provide(g, cache.new, spec, region, regions, False, st)
        back = st.add(kind=StepKind.STORE, region=region.name,
                      reads=(TensorRef(cache.new, spec),), writes=(TensorRef(cache.name, spec),),
                      deps=(new_dep,), op_kind=APPEND, axis=_split_of(spec, cache.axis),
                      nbytes=st.bytes(cache.new), scaling=FIXED)
        written[cache.name] = back.id
    load = st.add(kind=StepKind.LOAD, region=region.name, writes=(TensorRef(chunk.name, spec),),
                  deps=(written[cache.name],), nbytes=st.bytes(chunk.name), scaling=FIXED)
    st.at[(region.name, chunk.name)] = (spec, None, load.id)


def with_streams(dg: DecodeGraph, s: Schedule, target: Target,
                 memo: DecodeMemo | None = None) -> DecodeGraph:
    """`dg` reading the caches of `s`'s streaming regions in chunks from off-chip (a no-op
    when no region streams its KV cache, or `dg` already has its chunks); `memo`: the same
    chunks of `dg` made earlier (`DecodeMemo`)."""
    streamed = streamed_regions(s)
    if dg.streams or not any(c.layer in streamed for c in dg.caches):
        return dg
    specs: dict[str, Spec] = {}
    by_name = {op.name: op for op in dg.graph.ops}
    caches = {c.name for c in dg.caches}
    for lays in decode_layouts(dg).values():
        for lay in lays:
            for name, spec in zip(by_name[lay.op].inputs, lay.inputs, strict=True):
                if name in caches and spec is not None:
                    specs.setdefault(name, spec)
    chunks = plan_chunks(dg.graph, dg.caches, specs, s, target)
    if not chunks:
        return dg
    if memo is not None:
        return memo.streamed_of(dg, chunks)
    return dataclasses.replace(dg, graph=apply_chunks(dg.graph, chunks), streams=chunks)


def offchip_bytes(s: Schedule) -> int:
    """Off-chip bytes of one forward of `s` (a decode step): every token-phase load and store,
    streamed caches' chunks and write-backs among them."""
    return sum(st.nbytes for st in s.steps if st.phase == Phase.TOKEN
               and st.kind in (StepKind.LOAD, StepKind.STORE))


def _split_of(spec: Spec, axis: int) -> str | None:
    return spec[axis] if axis < len(spec) else None


def load_decode_graph(source: str, prefill: ir.Graph, context: int,
                      shapes_only: bool = False, grouped: bool = False) -> DecodeGraph:
    """The model again at one token per sequence (weights as the prefill graph has them, or
    none with `shapes_only`: enough to schedule it), turned into its decode step over a
    `context`-long cache (GQA caches at the KV heads with `grouped`)."""
    return decode_graph(prefill, _load_g1(source, prefill, shapes_only), context, grouped)


def _load_g1(source: str, prefill: ir.Graph, shapes_only: bool) -> ir.Graph:
    _precheck(prefill)  # before loading the model again
    batch = dict(prefill.dims).get("batch")
    return _quiet_load(source, batch, 1, shapes_only or prefill.shape_only)


def with_weights(dg: DecodeGraph, source: str, prefill: ir.Graph) -> DecodeGraph:
    """A decode graph that can run: `dg` itself when it has weights, else the model loaded
    again at one token with its weights (a compile's plan holds a shape-only decode graph)."""
    if not dg.graph.shape_only or prefill.shape_only:
        return dg
    loaded = dataclasses.replace(load_decode_graph(source, prefill, dg.context,
                                                   grouped=dg.grouped), spread=dg.spread)
    if not dg.streams:
        return loaded
    return dataclasses.replace(loaded, graph=apply_chunks(loaded.graph, dg.streams),
                               streams=dg.streams)


def _precheck(g: ir.Graph) -> None:
    """What the prefill graph already tells: one token-id input beside masks (an encoder's
    token types are not: BERT needs no second load), an attention core."""
    masks = mask_inputs(g)
    for name in g.inputs:
        t = g.tensor(name)
        if t.dtype.is_float or len(t.shape) != 2:
            raise DecodeUnsupported(f"input {name} is not a [batch, seq] token-id input "
                                    "(decode takes token ids and an attention mask)")
    g = host_masks(g, masks)
    if len(g.inputs) > 1:  # as _check_pair finds at one token: one token-id input only
        raise DecodeUnsupported(f"input {g.inputs[1]} is not a [batch, seq] token-id input "
                                "(decode takes token ids and an attention mask)")
    if not _attention_cores(g) and not _has_attention_op(g):
        raise DecodeUnsupported(f"{g.name} has no attention core (MatMul, Softmax, MatMul, or "
                                "an Attention op)")


def _quiet_load(source: str, batch: int | None, seq: int, shape_only: bool) -> ir.Graph:
    """The model again at another sequence length; its warnings were given at the first load."""
    import warnings

    from compiler.frontend import DimRequest, FrontendOptions, load_model

    opts = FrontendOptions(DimRequest(batch=batch, seq_len=seq), shapes_only=shape_only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(source, opts)


def load_tables(source: str, dg: DecodeGraph, batch: int | None) -> ir.Graph:
    """The model at seq = context: its position-dependent tables hold every position."""
    return _quiet_load(source, batch, dg.context, False)


def cache_of(dg: DecodeGraph) -> dict[str, KVCache]:
    return {c.name: c for c in dg.caches}


def append_step_ids(s: Schedule) -> tuple[int, ...]:
    return tuple(st.id for st in s.steps if st.kind == APPEND)


def steps_of(s: Schedule, kind: str) -> tuple[Step, ...]:
    return tuple(st for st in s.steps if st.kind == kind)


# --- the plan a compile carries ------------------------------------------------------------------


@dataclass(frozen=True)
class DecodePlan:
    """A compile's decode step: its graph, schedule, timeline and estimate (one step at the
    full context: attention over `context` cached keys, the cache append, the logits)."""

    graph: DecodeGraph
    schedule: Schedule
    timeline: Timeline
    estimate: Estimate


def decode_forms(source: str, prefill_graph: ir.Graph, context: int,
                 g1: ir.Graph | str | None = None) -> tuple[DecodeGraph, ...] | str:
    """The decode graphs `decode_plan_or_reason` chooses from (shape-only): the cache after the
    grouped-query repeat and, under one, before it; for anything that is not a causal LM (no
    attention core, not only token-id inputs, a one-token prompt, an encoder's mask) why not.
    The tiling prices each one's decode step before placement (`decode_steps`). `g1`:
    `one_token_graph`'s answer when already loaded (it does not depend on the context)."""
    if g1 is None:
        g1 = one_token_graph(source, prefill_graph)
    if isinstance(g1, str):
        return g1
    try:
        forms = [decode_graph(prefill_graph, g1, context, grouped=False)]
    except (DecodeUnsupported, WaferError) as exc:
        return str(exc)
    try:
        grouped = decode_graph(prefill_graph, g1, context, grouped=True)
        forms += [grouped] if grouped.grouped else []
    except DecodeUnsupported:
        pass
    if any(spreads(forms[-1].graph, op) for op in forms[-1].graph.ops):
        forms += [dataclasses.replace(forms[-1], spread=axis) for axis in ("c", "r")]
    return tuple(forms)


def one_token_graph(source: str, prefill_graph: ir.Graph) -> ir.Graph | str:
    """The model bound again at one token per sequence, shape-only, from the model the
    prefill load kept opened when it did (`load_model(keep=True)`; what the decode forms are
    derived from, at any context), or why there is no decode step (said from the prefill graph
    alone when it can, before loading anything)."""
    try:  # the decode step is extra: never fail a compile
        return _load_g1(source, prefill_graph, shapes_only=True)
    except DecodeUnsupported as exc:
        return str(exc)
    except WaferError as exc:
        return f"the model does not load at one token per sequence ({exc})"


def decode_steps(forms: Sequence[DecodeGraph] | str) -> tuple[DecodeStep, ...]:
    """What the tiling needs of each decode form to count its decode step's per-core memory:
    the graph, its layouts as the decode schedule takes them, and each cache's appended K/V.
    A form whose layouts fail is left out: its schedule would fail too (`_try_plan`)."""
    steps = []
    for dg in () if isinstance(forms, str) else forms:
        try:
            layouts = decode_layouts(dg)
        except (ValueError, KeyError, IndexError, WaferError):
            continue
        steps.append(DecodeStep(dg.graph, layouts, tuple((c.name, c.new) for c in dg.caches),
                                dg.grouped, dg.spread))
    return tuple(steps)


def decode_plan(source: str, prefill_graph: ir.Graph, prefill: Schedule, target: Target,
                context: int) -> DecodePlan | None:
    """The decode plan of a causal LM (`decode_plan_or_reason`), None for anything else."""
    plan = decode_plan_or_reason(source, prefill_graph, prefill, target, context)
    return plan if isinstance(plan, DecodePlan) else None


def decode_plan_or_reason(source: str, prefill_graph: ir.Graph, prefill: Schedule,
                          target: Target, context: int,
                          forms: Sequence[DecodeGraph] | str | None = None,
                          fits: Collection[bool] | None = None,
                          memo: DecodeMemo | None = None) -> DecodePlan | str:
    """The decode plan of a causal LM, with weights or shape-only; for anything else why not
    (`decode_forms`). Its graph is shape-only (the model at one token loaded without weights: a
    schedule needs shapes only), so running it (`--decode`) loads the decode graph with weights
    again (verify.decode.open_decode).
    Under grouped-query attention both cache forms are scheduled — after the repeat (query
    heads: more bytes, no repeat per step) and before it (KV heads: a quarter of the bytes,
    the repeat runs on the cache every step) — and the faster decode step is kept; schedule.json
    records which (`kv_cache`), so verify derives the same graph. A graph that derives is
    scheduled: a failure there is a bug and surfaces as one (not as "no decode schedule").
    A spread form (`DecodeGraph.spread`: one-query attention keeps heads whole and spreads
    the cache's keys and head dim over both mesh axes, `layouts._spread`) is a third form.
    `forms`: `decode_forms`' answer when already derived. `fits`: the forms (by
    `DecodeGraph.form`) whose decode step the tiling found fits every placed region
    (`Candidate.fits_form`; the tiling sizes a region for the form that holds least): only
    those are scheduled and the faster kept (all of them, if none fits or none schedules).
    `memo`: what earlier plans in this process left (`DecodeMemo`; the same answer)."""
    if forms is None:
        forms = decode_forms(source, prefill_graph, context)
    if isinstance(forms, str):
        return forms
    first = [dg for dg in forms if fits is None or dg.form in fits] or list(forms)
    plans = _bounded_plans(first, prefill, target, memo)  # forms that do not fit: unplanned
    if not any(isinstance(p, DecodePlan) for p in plans):
        plans += [_try_plan(dg, prefill, target, memo) for dg in forms
                  if all(dg is not f for f in first)]
    kept = [p for p in plans if isinstance(p, DecodePlan)]
    if not kept:
        return str(plans[0])
    return max(kept, key=lambda p: p.estimate.tokens_per_s or 0.0)


def _bounded_plans(forms: Sequence[DecodeGraph], prefill: Schedule, target: Target,
                   memo: DecodeMemo | None = None) -> list[DecodePlan | str]:
    """`_try_plan` of each form, in order, except a form whose off-chip floor
    (`offchip_floor`: cycles its decode step cannot beat) exceeds the makespan of a form
    already scheduled: it is strictly slower, so the choice is the same as scheduling it
    (the floors first, cheapest form first; its entry says why it was not scheduled)."""
    streamed = [with_streams(dg, prefill, target, memo) for dg in forms]
    floors = [offchip_floor(dg, prefill, target) for dg in streamed]
    plans: list[DecodePlan | str | None] = [None] * len(forms)
    best: int | None = None
    for i in sorted(range(len(forms)), key=lambda i: floors[i]):
        if best is not None and floors[i] > best:
            plans[i] = f"slower than a scheduled form (off-chip floor {floors[i]:,} > {best:,})"
            continue
        plans[i] = plan = _try_plan(streamed[i], prefill, target, memo)
        if isinstance(plan, DecodePlan):
            best = min(best, plan.estimate.cycles) if best is not None else plan.estimate.cycles
    return [p for p in plans if p is not None]


def offchip_floor(dg: DecodeGraph, prefill: Schedule, target: Target) -> int:
    """Cycles the decode step of `dg` (with its streamed chunks, `with_streams`) cannot beat:
    per wafer, its streamed caches' chunk loads and write-backs and its streamed weights'
    loads, which all hold the wafer's one off-chip port in turn (`perf.timeline`), each at
    least its transfer time (as `build_decode_schedule` makes them)."""
    g, regions = dg.graph, {r.name: r for r in prefill.regions}
    per_wafer = _weight_floor(dg, prefill, target)
    if not dg.streams:
        return max(per_wafer.values(), default=0)
    layer_of = {op.name: la.name for la in g.layers for op in la.ops}
    written: set[str] = set()
    for ch in dg.streams:
        readers = g.consumers.get(ch.name, ())
        if not readers:
            continue
        wafer = regions[layer_of[readers[0].name]].wafer
        moved = [ch.name] + ([cache_of(dg)[ch.cache].new] if ch.cache not in written else [])
        written.add(ch.cache)
        per_wafer[wafer] = per_wafer.get(wafer, 0) + sum(
            math.ceil(offchip_cycles(target, target.tensor_bytes(g.tensor(n)))) for n in moved)
    return max(per_wafer.values(), default=0)


def _weight_floor(dg: DecodeGraph, prefill: Schedule, target: Target) -> dict[int, int]:
    """Per wafer, the off-chip cycles of the weights its streamed regions load every step
    (once per region and weight read by an op that is not all constant)."""
    g, modes = dg.graph, dict(prefill.residency)
    wafer = {r.name: r.wafer for r in prefill.regions}
    out: dict[int, int] = {}
    for layer in g.layers:
        if modes.get(layer.name) not in (Residency.STREAM_WEIGHTS.value,
                                          Residency.STREAM_ALL.value):
            continue
        names = {n for op in layer.ops if not all(i in g.const_derived for i in op.inputs if i)
                 for n in op.inputs if n and n in g.const_derived
                 and g.tensor(n).kind is ir.TensorKind.WEIGHT}
        w = wafer[layer.name]
        out[w] = out.get(w, 0) + sum(
            math.ceil(offchip_cycles(target, target.tensor_bytes(g.tensor(n)))) for n in names)
    return out


def _try_plan(dg: DecodeGraph, prefill: Schedule, target: Target,
              memo: DecodeMemo | None = None) -> DecodePlan | str:
    """The plan of one decode form, or why the model's ops have no decode schedule (an op
    refused at one token, a step that does not fit). Anything else raised is a bug."""
    try:
        return plan_for(dg, prefill, target, memo)
    except (UnsupportedOpsError, CapacityError) as exc:
        return str(exc)


def plan_for(dg: DecodeGraph, prefill: Schedule, target: Target,
             memo: DecodeMemo | None = None) -> DecodePlan:
    dg = with_streams(dg, prefill, target, memo)
    s = build_decode_schedule(dg, prefill, target, memo)
    opts = PerfOptions(Mode.DECODE, context=dg.context)
    tl = timeline(s, target, opts)
    return DecodePlan(dg, s, tl, estimate(s, target, opts, tl=tl))


def prefill_caches(plan: DecodePlan) -> tuple[KVCacheRef, ...]:
    """The KV caches the prefill schedule fills for `plan` (`build_schedule(..., caches)`):
    each on its attention region in the layout the decode schedule allocates it in. A cache
    that streams is not resident (`with_streams`): the executor hands it over off-chip."""
    spec = {w.tensor: w.spec for st in plan.schedule.steps if st.kind == StepKind.LOAD
            for w in st.writes}
    streamed = {ch.cache for ch in plan.graph.streams}
    return tuple(KVCacheRef(c.name, c.prefill, c.axis, c.layer, spec[c.name])
                 for c in plan.graph.caches if c.name not in streamed)
