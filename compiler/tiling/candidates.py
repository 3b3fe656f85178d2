"""Tiling: for each layer, its layouts and candidate rectangles of cores that hold it.

A candidate is an r x c rectangle and a residency mode (what stays in SRAM, what is streamed from
off-chip each token) such that the fullest core's tiles (weights, KV cache at the requested
context, activations of the prompt chunk) fit SRAM minus the runtime reserve. Fewer cores mean
more compute per core; more cores mean longer reductions: each candidate carries an estimate of
its cycles per decode token. Alike layers (transformer blocks) share one template, tiled once.
`to_problem` is the one adapter from here to the placer's PlacementProblem.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compiler import ir
from compiler.errors import CapacityError
from compiler.ir import storage_bytes
from compiler.placement.problem import Block, Edge, Option, PlacementProblem, Residency
from compiler.stages import at_layer
from compiler.target import Target
from compiler.tiling import collectives
from compiler.tiling.costs import batch_size, kv_cache_tensors, op_flops, token_count
from compiler.tiling.layouts import OpLayout, Spec, graph_layouts, tile_numel
from compiler.tiling.layouts import parts as layouts_parts
from compiler.vocab import ONE_BUFFER_OPS, VIEW_OPS, CollectiveKind

# Blocks per wafer up to which a denser exact wafer tiling is searched (`_densest`): with more,
# a lost slot is a small share of the wafer. Llama 3 70B's blocks at 2,048 (about 20 a wafer
# by area) need it: the frontier's tilings hold 18 a wafer, 117 x 381 holds 20 (off-chip
# 587 -> 445 MB/token). Before the decode step was priced per form, at 8 (the 70B's 1172 x 36
# strips then fitted resident), a denser shape only distracted the placer.
DENSE_TILING_MAX = 64

# Share of the machine's cores that latency shapes (`_latency_shapes`) divide among the layers:
# the rest is slack for rectangles that do not tile the wafer exactly. At 0.95 (idle cores
# for wider blocks) both Llama 3 8B compiles got 2-6% slower at the specs' 180 cycles: a
# block's phases and reduce stages do not shrink with more cores (issue 17, h-wse2).
LATENCY_SHARE = 0.8

# Share of the machine's cores the layers' smallest resident rectangles may fill when each is
# sized for the decode form that holds least (`_tile_with`); beyond it some layer will stream.
# 0.97 (was 0.95): Llama 3 70B's blocks in the spread decode form fill 95.9% of 4 WSE-3 and
# the placer's bound is then all-resident (587 -> 395 MB/token placed at 2,048; issue 17).
RESIDENT_FILL = 0.97

# Streamed weights or KV cache pass through a double buffer of this many bytes per core.
STREAM_BUFFER_BYTES = 2 * 2048


@dataclass(frozen=True)
class TilingOptions:
    context: int | None = None  # KV-cache context length; default: the bound sequence length
    max_candidates: int = 4  # per residency mode
    # Hold the whole prompt's live activations (what the schedule and the executor run), or
    # only one decode step's (the prompt streams through in steps: big shape-only models).
    # None: the whole prompt when the model has weights, so that it can be verified.
    prompt_resident: bool | None = None


@dataclass(frozen=True)
class DecodeStep:
    """One decode step of the model, derived before tiling (schedule/decode.py `decode_steps`):
    the model at one token with its KV caches at the context, the layouts the decode schedule
    gives it, and (cache, appended K/V) pairs. A layer's one-decode-step memory is then that
    step's live set as the decode schedule keeps it, not the prompt's scaled down."""

    graph: ir.Graph
    layouts: Mapping[str, tuple[OpLayout, ...]]
    appends: tuple[tuple[str, str], ...] = ()
    grouped: bool = False  # the cache before a grouped-query repeat (DecodeGraph.grouped)
    spread: str = ""  # attention spread over both mesh axes, keys over this one (DecodeGraph)

    @property
    def form(self) -> Form:
        return self.grouped, self.spread


# A decode form: (grouped, spread), as `DecodeGraph.form`.
Form = tuple[bool, str]


@dataclass(frozen=True)
class Candidate:
    rows: int
    cols: int
    residency: Residency
    weight_bytes: int  # per core
    kv_bytes: int  # per core
    act_bytes: int  # per core
    offchip_bytes_per_token: int
    cycles: int
    # per decode form (DecodeStep.form), the fullest core's bytes when the decode schedule
    # takes that form; the per-core bytes above are the least of them. Empty: no decode step
    # priced per form (an encoder, or a mode streaming the KV cache), any form counts alike.
    form_bytes: tuple[tuple[Form, int], ...] = ()

    @property
    def per_core_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.act_bytes

    def fits_form(self, form: Form, capacity: int) -> bool:
        """Whether the decode step in that form fits `capacity` bytes a core here."""
        return all(n <= capacity for f, n in self.form_bytes if f == form)


@dataclass(frozen=True)
class LayerTiling:
    layer: str
    kind: str
    template: str  # alike layers share it
    ops: tuple[OpLayout, ...]
    weight_bytes: int  # stored on chip when resident (all cores together)
    kv_bytes: int  # KV cache at the context length (all cores together)
    flops_per_token: int
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class TiledGraph:
    model: str
    layers: tuple[LayerTiling, ...]
    edges: tuple[Edge, ...]
    context: int
    batch: int
    io_bytes_per_token: int
    prompt_resident: bool = False  # SRAM holds the whole prompt's activations (verifiable)


# --- the memory and time model of one layer ------------------------------------------------------


@dataclass(frozen=True)
class _Tensors:
    """What a layer keeps per core, as (shape, spec, bytes per element) triples."""

    weights: tuple[tuple[tuple[int, ...], Spec, float], ...]
    acts_per_op: tuple[tuple[tuple[tuple[int, ...], Spec, int], ...], ...]  # whole prompt
    kv_elements_per_token: int
    score_heads: int  # attention-score rows per token (heads): one row of `context` each
    seq: int  # prompt length of the graph the shapes come from
    act_item: int
    live: tuple[tuple[tuple[tuple[int, ...], tuple[Spec, ...], int], ...], ...] = ()
    tables: tuple[tuple[tuple[int, ...], Spec, int], ...] = ()  # constant tables, held whole
    prompt_resident: bool = False
    decode: tuple[_StepTensors, ...] = ()  # per decode form, when the model has a decode step
    least_form: bool = True  # size for the decode form that holds least, else the largest


@dataclass(frozen=True)
class _StepTensors:
    """A layer in one decode step: weights and constant tables (held whole), KV caches
    (resident, the append writes them in place), and per op the activations alive while it
    runs (`_live_sets` of the decode graph, with each appended K/V alive up to its append)."""

    weights: tuple[tuple[tuple[int, ...], Spec, float], ...]
    tables: tuple[tuple[tuple[int, ...], Spec, int], ...]
    caches: tuple[tuple[tuple[int, ...], tuple[Spec, ...], int], ...]
    acts: tuple[tuple[tuple[int, ...], tuple[Spec, ...], int], ...]  # each activation once
    live: tuple[frozenset[int], ...]  # indices into `acts`: the maximal live sets only
    form: Form = (False, "")  # its decode form (DecodeStep.form)


def _param_derived(g: ir.Graph) -> frozenset[str]:
    """Source weights and what is computed from them alone (a transposed tied embedding).
    Other constants (masks, rotary tables) are per-position data, held like activations."""
    names = {t.name for t in g.tensors if t.kind is ir.TensorKind.WEIGHT}
    for op in g.ops:
        ins = [n for n in op.inputs if n]
        if ins and all(n in g.const_derived for n in ins) and any(n in names for n in ins):
            names.update(o for o in op.outputs if o)
    return frozenset(names)


def _layer_tensors(g: ir.Graph, layer: ir.Layer, layouts: Sequence[OpLayout], target: Target,
                   kv: dict[str, str], params: frozenset[str]) -> _Tensors:
    weights: dict[str, tuple] = {}
    acts = []
    for op, lay in zip(layer.ops, layouts, strict=True):
        feeds_activation = any(n and n not in g.const_derived for n in op.inputs)
        op_acts = []
        for name, spec in [*zip(op.inputs, lay.inputs, strict=True),
                           *zip(op.outputs, lay.outputs, strict=False)]:
            if not name or spec is None:
                continue
            t = g.tensor(name)
            entry = (t.shape, spec, target.element_bytes(t))
            if name in params:
                if feeds_activation:
                    weights.setdefault(name, entry)
            elif name not in g.const_derived or feeds_activation:  # incl. tables it reads
                op_acts.append(entry)
        if op.kind in ONE_BUFFER_OPS and op_acts:  # a view: one buffer, not two
            op_acts = [max(op_acts, key=lambda e: math.prod(e[0]))]
        acts.append(tuple(op_acts))
    tokens = max(token_count(g), 1)
    kv_elems = sum(g.tensor(n).numel for n, lay in kv.items() if lay == layer.name) // tokens
    heads = sum(g.tensor(op.outputs[0]).numel // (tokens * g.tensor(op.outputs[0]).shape[-1])
                for op in layer.ops if _is_scores(g, op))
    seq = max(1, tokens // batch_size(g))
    return _Tensors(tuple(weights.values()), tuple(dict.fromkeys(acts)), kv_elems, heads, seq,
                    target.compute.dtype.itemsize,
                    tuple(dict.fromkeys(_live_sets(g, layer, layouts, target))),
                    _tables(g, layer, layouts, target, params))


def _tables(g, layer, layouts, target, params) -> tuple:
    """Constant tables the layer reads (masks, rotary tables): loaded once, held whole."""
    seen: dict[str, tuple] = {}
    for op, lay in zip(layer.ops, layouts, strict=True):
        if all(n in g.const_derived for n in op.inputs if n):
            continue
        for name, spec in zip(op.inputs, lay.inputs, strict=True):
            if name and spec is not None and name in g.const_derived and name not in params:
                t = g.tensor(name)
                seen.setdefault(name, (t.shape, spec, target.element_bytes(t)))
    return tuple(seen.values())


def _live_sets(g: ir.Graph, layer: ir.Layer, layouts: Sequence[OpLayout], target: Target,
               appends: Sequence[tuple[str, str]] = ()):
    """Per op of the layer, the activations alive while it runs (whole prompt), each with every
    spec it takes here: a tensor lives from its first use or definition to its last use, and
    to the end of the layer when a later layer reads it. `appends` (a decode step's (cache,
    appended K/V) pairs): the K/V lives, in the cache's spec too, up to the first op reading
    its cache (the append runs just before it)."""
    entries, alive = _live_named(g, layer, layouts, target, appends)
    return tuple(tuple(entries[n] for n in names) for names in alive)


def _live_named(g: ir.Graph, layer: ir.Layer, layouts: Sequence[OpLayout], target: Target,
                appends: Sequence[tuple[str, str]] = ()):
    """`_live_sets` by name: ({name: (shape, specs, bytes per element)}, per op the names)."""
    first, last, specs = _uses(g, layer, layouts)
    for cache, new in appends:
        if cache in first and new in first:
            last[new] = max(last[new], first[cache])
            specs[new] = [*specs[new], *specs[cache]]
    inside = {op.name for op in layer.ops}
    for name in first:
        leaves = name in g.outputs or any(c.name not in inside for c in g.consumers.get(name, ()))
        if leaves and name in {o for op in layer.ops for o in op.outputs}:
            last[name] = len(layer.ops)
    entries = {n: (g.tensor(n).shape, tuple(dict.fromkeys(specs[n])),
                   target.element_bytes(g.tensor(n))) for n in first}
    return entries, tuple(tuple(n for n in first if first[n] <= k <= last[n])
                          for k in range(len(layer.ops)))


def _uses(g: ir.Graph, layer: ir.Layer, layouts: Sequence[OpLayout]):
    """(first use, last use, specs) of each activation of the layer, by op index."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    specs: dict[str, list[Spec]] = {}
    for k, (op, lay) in enumerate(zip(layer.ops, layouts, strict=True)):
        if all(n in g.const_derived for n in op.inputs if n):
            continue
        pairs = [*zip(op.inputs, lay.inputs, strict=True), *zip(op.outputs, lay.outputs,
                                                                 strict=False)]
        for name, spec in pairs:
            if name and spec is not None and name not in g.const_derived:
                first.setdefault(name, k)
                last[name] = k
                specs.setdefault(name, []).append(spec)
        if op.kind in VIEW_OPS:  # the output takes over the memory of an input dying here
            for name in op.inputs[:1]:
                if name in last and last[name] == k and first[name] < k:
                    last[name] = k - 1
    return first, last, specs


def _step_tensors(step: DecodeStep, name: str, target: Target,
                  params: frozenset[str]) -> _StepTensors | None:
    """Layer `name` in the decode step `step` (None when the step has no such layer)."""
    g = step.graph
    layer = next((la for la in g.layers if la.name == name), None)
    if layer is None or name not in step.layouts:
        return None
    layouts = step.layouts[name]
    try:
        s = _step_layer(step, layer, layouts, target, params)
        _StepMeasures.of(s)  # every spec fits its tensor's rank
    except (ValueError, KeyError, IndexError):  # a form whose decode schedule fails too
        return None
    return s


def _step_layer(step: DecodeStep, layer: ir.Layer, layouts, target: Target,
                params: frozenset[str]) -> _StepTensors:
    g = step.graph
    t = _layer_tensors(g, layer, layouts, target, {}, params)
    caches = {c for c, _ in step.appends}
    entries, alive = _live_named(g, layer, layouts, target, step.appends)
    names = [n for n in entries if n not in caches]
    index = {n: i for i, n in enumerate(names)}
    sets = {frozenset(index[n] for n in ops if n in index) for ops in alive}
    maximal = tuple(a for a in sets if not any(a < b for b in sets))  # a subset is never larger
    return _StepTensors(t.weights, t.tables, tuple(entries[n] for n in caches if n in entries),
                        tuple(entries[n] for n in names), maximal, step.form)


def _is_scores(g: ir.Graph, op: ir.Op) -> bool:
    """Q x K^T: an activation x activation matmul whose output feeds a softmax."""
    if op.kind != "MatMul" or any(n in g.const_derived for n in op.inputs):
        return False
    return any(c.kind in ("Softmax", "Div", "Mul", "Add", "Where")
               for c in g.consumers.get(op.outputs[0], ()))


def _bytes(entries, rows: int, cols: int) -> int:
    return sum(storage_bytes(tile_numel(shape, spec, rows, cols), size * 8)
               for shape, spec, size in entries)


def _per_core(t: _Tensors, mode: Residency, rows: int, cols: int, kv_total: int,
              kv_item: int, batch: int,
              raw: Callable[[int, int], tuple[int, int]] | None = None,
              steps: Callable[[int, int], tuple[_StepRaw, ...]] | None = None,
              ) -> tuple[int, int, int]:
    """(weight, kv, activation) bytes on the fullest core of an r x c rectangle.

    Activations are one decode step's (the prompt streams through in steps of that size):
    the largest op's tiles for `batch` tokens, plus attention scores and probabilities over
    the whole context, heads over one axis and context positions over the other. `raw(r, c)`
    gives the mode-independent (weights whole, weights-side + activations) split and
    `steps(r, c)` each decode form's unstreamed bytes (`_step_raw`), both cached by the caller
    (the same shapes are asked for once per residency mode)."""
    w, kv, rest = _base(t, mode, rows, cols, kv_total, kv_item, batch, raw)
    if t.decode and mode not in _CHUNKED:  # what the decode schedule holds, as it runs
        each = steps(rows, cols) if steps else tuple(
            _step_raw(_StepMeasures.of(s), rows, cols) for s in t.decode)
        return _with_decode(t, mode, each, w + rest[0], kv, rest[1])
    if t.prompt_resident:  # tables count with the weights
        return w + rest[0], kv, rest[1]
    return w, kv, rest[1]


def _base(t: _Tensors, mode: Residency, rows: int, cols: int, kv_total: int, kv_item: int,
          batch: int, raw: Callable[[int, int], tuple[int, int]] | None
          ) -> tuple[int, int, tuple[int, int]]:
    """(weights as `mode` holds them, KV cache, (tables, activations)) before the decode step."""
    w, rest = (raw or functools.partial(_raw, t, _Measures.of(t), kv_total, batch))(rows, cols)
    if mode in (Residency.STREAM_WEIGHTS, Residency.STREAM_ALL):
        w = min(w, STREAM_BUFFER_BYTES)
    kv = math.ceil(kv_total / (rows * cols)) * kv_item
    if mode in (Residency.STREAM_KV, Residency.STREAM_ALL):
        kv = min(kv, STREAM_BUFFER_BYTES)
    return w, kv, rest


def _form_bytes(t: _Tensors, mode: Residency, rows: int, cols: int, kv_total: int,
                kv_item: int, batch: int, raw: Callable[[int, int], tuple[int, int]],
                steps: Callable[[int, int], tuple[_StepRaw, ...]]
                ) -> tuple[tuple[Form, int], ...]:
    """Per decode form, the fullest core's bytes when the decode schedule takes that form
    (`Candidate.form_bytes`; `_per_core` is the least of them)."""
    if not t.decode or mode in _CHUNKED:
        return ()
    w, kv, rest = _base(t, mode, rows, cols, kv_total, kv_item, batch, raw)
    return tuple((s.form, sum(_one_form(t, mode, e, w + rest[0], kv, rest[1])))
                 for s, e in zip(t.decode, steps(rows, cols), strict=True))


def _raw(t: _Tensors, m: _Measures, kv_total: int, batch: int, rows: int,
         cols: int) -> tuple[int, tuple[int, int]]:
    """(weight bytes unstreamed, (tables, activation bytes)) of the fullest core, any mode
    (`m`: `t` measured)."""
    w = m.weights(rows, cols)
    if t.prompt_resident:
        return w, (m.tables(rows, cols), m.live(rows, cols))
    prompt = m.acts(rows, cols)
    step = math.ceil(prompt / t.seq)  # each op with the tables it reads, one step's share
    context = kv_total // max(t.kv_elements_per_token * batch, 1) if t.kv_elements_per_token else 0
    scores = 2 * math.ceil(t.score_heads * batch / rows) * math.ceil(context / cols) * t.act_item
    return w, (0, step + scores)


# Modes whose KV cache streams: their decode step is modelled as attention over the cache in
# chunks through the stream buffer (the scores over the context, not the cache-long K/V); the
# decode schedule's chunked live set (schedule/decode_stream.py) is not gathered here, so they
# keep that model rather than the schedule's live set.
_CHUNKED = (Residency.STREAM_KV, Residency.STREAM_ALL)


def _with_decode(t: _Tensors, mode: Residency, each: Sequence[_StepRaw], held: int,
                 kv: int, live: int) -> tuple[int, int, int]:
    """(weight, kv, activation) bytes bounding the decode step's real per-core peak in the
    decode form that holds least (each form's weights, tables, caches and largest live set:
    `each`, one `_step_raw` per form), and with the whole prompt resident also the prefill's
    (weights, tables, the caches its cache writes fill, its live set). The decode schedule
    runs one form, never both, and refuses a form that does not fit its regions
    (`schedule.decode.decode_plan_or_reason`), so the form that fits is the one that counts:
    under grouped-query attention the cache before the repeat re-expands it over the whole
    context every step (Llama 3 70B at 2,048: 13 KB a core on 127 x 482 against 1.8 KB for
    the cache after the repeat)."""
    pick = min if t.least_form else max
    return pick((_one_form(t, mode, e, held, kv, live) for e in each), key=sum)


def _one_form(t: _Tensors, mode: Residency, each: _StepRaw, held: int, kv: int,
              live: int) -> tuple[int, int, int]:
    """`_with_decode` of one decode form."""
    dw, dkv, dact = _step_mode(each, mode)
    if not t.prompt_resident:
        return dw, dkv, dact
    kv = max(kv, dkv)
    return held, kv, max(live, dw + dkv + dact - held - kv)


# A decode form's bytes on the fullest core of one shape, before any streaming:
# (weights, constant tables, KV caches, largest live set of activations).
_StepRaw = tuple[int, int, int, int]


def _step_raw(m: _StepMeasures, rows: int, cols: int) -> _StepRaw:
    return m.weights(rows, cols), m.tables(rows, cols), m.caches(rows, cols), m.live(rows, cols)


def _step_mode(raw: _StepRaw, mode: Residency) -> tuple[int, int, int]:
    """A decode form's (weight + tables, kv, live) bytes in residency `mode`."""
    w, tables, kv, live = raw
    if mode in (Residency.STREAM_WEIGHTS, Residency.STREAM_ALL):
        w = min(w, STREAM_BUFFER_BYTES)
    if mode in (Residency.STREAM_KV, Residency.STREAM_ALL):
        kv = min(kv, STREAM_BUFFER_BYTES)
    return w + tables, kv, live


def _live_bytes(live, rows: int, cols: int) -> int:
    return sum(storage_bytes(max(tile_numel(shape, s, rows, cols) for s in specs), size * 8)
               for shape, specs, size in live)


class _Peak:
    """The largest over `groups` of the sum of their tensors' bytes on the fullest core (one
    group: the sum), for any r x c rectangle at once over all tensors (numpy): what `_bytes`
    and `_live_bytes` count, for the many shapes the candidate search asks about. A tensor is
    (shape, specs, bytes per element), its tile the largest of its specs'."""

    def __init__(self, groups: Sequence[Sequence[tuple]]):
        tensors = list(dict.fromkeys(e for grp in groups for e in grp))
        index = {e: i for i, e in enumerate(tensors)}
        self.counts = np.zeros((len(groups), len(tensors)), dtype=np.int64)
        for i, grp in enumerate(groups):
            for e in grp:
                self.counts[i, index[e]] += 1
        rows = [(shape, spec) for shape, specs, _ in tensors for spec in specs]
        for shape, spec in rows:
            if len(spec) != len(shape):
                raise ValueError(f"spec {spec} does not fit shape {shape}")
        self.axes = list(dict.fromkeys([None, *(a for _, spec in rows for a in spec)]))
        rank = max((len(shape) for shape, _ in rows), default=0)
        code = {a: i for i, a in enumerate(self.axes)}
        self.dims = np.array([[*shape, *[1] * (rank - len(shape))] for shape, _ in rows],
                             dtype=np.int64).reshape(len(rows), rank)
        self.codes = np.array([[code[a] for a in spec] + [0] * (rank - len(spec))
                               for _, spec in rows], dtype=np.intp).reshape(len(rows), rank)
        self.starts = np.cumsum([0, *(len(specs) for _, specs, _ in tensors[:-1])])
        self.bits = np.array([size * 8 for _, _, size in tensors], dtype=np.float64)

    def __call__(self, rows: int, cols: int) -> int:
        if not self.counts.size:
            return 0
        parts = np.array([layouts_parts(a, rows, cols) for a in self.axes], dtype=np.int64)
        numel = (-(-self.dims // parts[self.codes])).prod(axis=1)
        largest = np.maximum.reduceat(numel, self.starts)  # a tensor's largest spec
        nbytes = np.ceil(largest * self.bits / 8).astype(np.int64)
        return int((self.counts @ nbytes).max())


def _whole(entries) -> tuple[tuple, ...]:
    """(shape, spec, size) entries as (shape, (spec,), size): one group for `_Peak`."""
    return tuple((shape, (spec,), size) for shape, spec, size in entries)


@dataclass(frozen=True, eq=False)
class _Measures:
    """A layer's `_Tensors` ready to measure on any rectangle (`_raw`)."""

    weights: _Peak
    tables: _Peak
    live: _Peak  # the largest live set (the whole prompt resident)
    acts: _Peak  # the largest op's tiles with the tables it reads

    @classmethod
    def of(cls, t: _Tensors) -> _Measures:
        return cls(_Peak([_whole(t.weights)]), _Peak([_whole(t.tables)]), _Peak(t.live),
                   _Peak([_whole(entries) for entries in t.acts_per_op]))


@dataclass(frozen=True, eq=False)
class _StepMeasures:
    """A layer's `_StepTensors` ready to measure on any rectangle (`_step_raw`)."""

    weights: _Peak
    tables: _Peak
    caches: _Peak
    live: _Peak  # the largest of the maximal live sets

    @classmethod
    def of(cls, s: _StepTensors) -> _StepMeasures:
        return cls(_Peak([_whole(s.weights)]), _Peak([_whole(s.tables)]), _Peak([s.caches]),
                   _Peak([[s.acts[i] for i in sorted(ops)] for ops in s.live]))


# --- candidates ---------------------------------------------------------------------------------


def _row_counts(limit: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 11, 16, ... up to `limit`: about 4 values per doubling."""
    values, x = set(), 1.0
    while x <= limit:
        values.add(int(x))
        x *= 2 ** 0.25 if x >= 4 else 2 ** 0.5
    values.add(limit)
    return sorted(v for v in values if v <= limit)


def _tiling_counts(limit: int) -> list[int]:
    """limit // i for every i: the lengths that split `limit` cores into i equal parts."""
    return sorted({limit // i for i in range(1, limit + 1)})


def _min_cols(fits: Callable[[int, int], bool], rows: int, max_cols: int) -> int | None:
    if not fits(rows, max_cols):
        return None
    lo, hi = 1, max_cols
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(rows, mid) else (mid + 1, hi)
    return lo


def _frontier(fits: Callable[[int, int], bool], max_rows: int, max_cols: int):
    points = []
    for r in _row_counts(max_rows):
        c = _min_cols(fits, r, max_cols)
        if c is not None:
            points.append((r, c))
    return points


def _pick(points: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """The smallest rectangles, preferring ones near aspect 1, 2 and 1/2."""
    if not points:
        return []
    least = min(r * c for r, c in points)
    near = [p for p in points if p[0] * p[1] <= 1.25 * least] or points
    chosen: list[tuple[int, int]] = []
    for aspect in (1.0, 2.0, 0.5, 4.0, 0.25):
        best = min(near, key=lambda p: (abs(math.log(p[0] / p[1] / aspect)), p[0] * p[1]))
        if best not in chosen:
            chosen.append(best)
    chosen.sort(key=lambda p: (p[0] * p[1], abs(p[0] - p[1])))
    return chosen[:k]


def _grid_tiling(points: list[tuple[int, int]], fits: Callable[[int, int], bool],
                 target: Target, k: int = 2):
    """Shapes that tile the wafer exactly (rows // i x cols // j), grown from frontier points:
    alike blocks then pack without waste, which matters when they fill most of the wafer.
    When the area allows more per wafer than those pack, and a wafer holds few such blocks
    (<= DENSE_TILING_MAX, so that a lost slot wastes a large share of it), one i x j split
    into that many (`_densest`) is added: a frontier point's own rows or columns may not
    divide the wafer where a shape of about the same area does (llama3.1-405b's blocks:
    586 x 254, 6 a wafer, where the frontier's shapes tile 5)."""
    rows, cols = target.grid.rows, target.grid.cols
    tiled = set()
    for r, c in points:
        i, j = rows // r, cols // c
        if i and j:
            tiled.add((rows // i, cols // j))
    if not points:
        return []
    least = min(r * c for r, c in points)
    if not (tiled and least):
        return []
    packed = max((rows // r) * (cols // c) for r, c in tiled)
    most = (rows * cols) // least + 1  # the frontier samples rows: a shape may be smaller
    chosen = sorted(tiled, key=lambda p: (p[0] * p[1], p))[:k]
    if most > DENSE_TILING_MAX:
        return chosen
    dense = _densest(fits, rows, cols, most, packed)[:1]
    if dense:
        dense += [_compact(fits, p, rows, cols) for p in dense]
    else:  # no split packs more: the split of `packed` that leaves the widest strip free
        dense = _roomiest(fits, rows, cols, _densest(fits, rows, cols, packed, packed - 1))
    return chosen + [p for p in dict.fromkeys(dense) if p not in chosen]


def _roomiest(fits: Callable[[int, int], bool], rows: int, cols: int,
              shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Of the splits `shapes` (rows // i x cols // j, all packing as many), the one whose
    compaction (`_compact`) leaves the most cores beside its blocks: the embedding or the
    head then fits on a strip of the same wafer (Llama 3 70B at 2,048: 1172 x 38 packs 20 a
    wafer and leaves 1172 x 2; 276 x 152, also 20, leaves 68 x 762 for a 49,530-core
    embedding; 21 a wafer fits no split)."""
    if not shapes:
        return []
    least = {p: _compact(fits, p, rows, cols) for p in shapes}
    best = min(shapes, key=lambda p: (least[p][0] * least[p][1], p))
    return [least[best]]


def _compact(fits: Callable[[int, int], bool], shape: tuple[int, int], rows: int,
             cols: int) -> tuple[int, int]:
    """`shape` (rows // i x cols // j) cut to the fewest columns (or rows) that still fit,
    whichever frees more cores: its i x j alike blocks then leave a strip of the wafer whole
    for the layers beside them (Llama 3 70B: 293 x 152 packs 20 a wafer and leaves a
    1172 x 2 strip, too narrow for the embedding or the head beside them)."""
    h, w = shape

    def least(hi: int, ok: Callable[[int], bool]) -> int:  # bisection: fitting is monotone
        lo = 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
        return hi

    narrow = least(w, lambda x: fits(h, x))
    short = least(h, lambda x: fits(x, w))
    if (w - narrow) * (cols // w) * rows >= (h - short) * (rows // h) * cols:
        return h, narrow
    return short, w


def _densest(fits: Callable[[int, int], bool], rows: int, cols: int, most: int,
             packed: int) -> list[tuple[int, int]]:
    """Fitting shapes rows // i x cols // j with i x j = n, for the largest n of the few just
    under `most` (blocks per wafer by area) that has one and packs more than `packed`."""
    for n in range(most, max(packed, most - 4), -1):
        shapes = [(rows // i, cols // (n // i)) for i in range(1, min(n, rows) + 1)
                  if n % i == 0 and n // i <= cols]
        found = [p for p in shapes if fits(*p)]
        if found:
            return found
    return []


# --- putting a layer together -------------------------------------------------------------------


@dataclass(frozen=True)
class _LayerModel:
    tensors: _Tensors
    kv_total: int  # elements at the context length
    weight_bytes: int
    flops_per_token: int
    collectives: tuple[tuple[str, str, int], ...]  # (kind, axis, bytes per token)
    steps: int


def tile_graph(g: ir.Graph, target: Target, options: TilingOptions | None = None,
               steps: Sequence[DecodeStep] = ()) -> TiledGraph:
    """Layouts and candidates for every layer. With prompt_resident left open, a model with
    weights is tiled to hold its whole prompt (so that it can be verified) when that fits, and
    otherwise, like the shape-only giants, one decode step at a time. `steps`: the model's
    decode step(s) at the context (one per cache form the decode schedule may take), whose
    live sets each layer's per-core bytes then bound (else one decode step is the largest op
    scaled to a token plus the scores over the context)."""
    options = options or TilingOptions()
    run = functools.partial(_tile, steps=tuple(steps))
    if options.prompt_resident:
        try:
            return run(g, target, options, True)
        except CapacityError as exc:
            raise CapacityError(exc.what + " with its whole prompt in SRAM (needed to run and "
                                "verify it)", exc.needed, exc.available,
                                "use a shorter --seq-len, or compile without --verify (the "
                                "prompt then streams through in decode steps)") from None
    if options.prompt_resident is not None:
        return run(g, target, options, False)
    if g.shape_only:
        return run(g, target, options, False)
    try:
        return run(g, target, options, True)
    except CapacityError:
        return run(g, target, options, False)


def context_length(g: ir.Graph, options: TilingOptions) -> int:
    """The KV cache's context: the option, or the bound sequence length."""
    return options.context or max(1, token_count(g) // batch_size(g))


def _tile(g: ir.Graph, target: Target, options: TilingOptions, resident: bool,
          steps: tuple[DecodeStep, ...] = ()) -> TiledGraph:
    """With the whole prompt in SRAM, attention is query-blocked (`layouts._query_blocked`)
    when its heads do not fit a core whole: a long prompt (BERT-base at 512 tokens)."""
    layouts = graph_layouts(g)
    try:
        return _tile_with(g, target, options, resident, layouts, steps)
    except CapacityError:
        blocked = graph_layouts(g, query_blocks=True) if resident else layouts
        if blocked == layouts:
            raise
        return _tile_with(g, target, options, resident, blocked, steps)


def _tile_with(g: ir.Graph, target: Target, options: TilingOptions, resident: bool,
               layouts: dict[str, tuple[OpLayout, ...]],
               steps: tuple[DecodeStep, ...]) -> TiledGraph:
    """Every layer sized for the decode form that holds least (`_with_decode`), unless then
    the layers' smallest resident rectangles do not fit RESIDENT_FILL of the machine: some
    will stream their KV cache, priced (`_offchip`) and streamed by the decode schedule as
    the cache before a grouped-query repeat, so every resident layer must hold that form too
    and each is sized for the largest form (`least_form` False). The spread forms (one-query
    attention over both mesh axes, `DecodeStep.spread`) count only when without them the
    layers do not fit that share: their extra reduce makes a decode step slower where the
    heads forms fit (Llama 3 8B on WSE-2: 1,114 -> 812 tokens/s on the smaller blocks they
    allow), and they are what lets Llama 3 70B's blocks hold their caches on 4 WSE-3."""
    plain = tuple(s for s in steps if not s.spread)
    tiled = _tile_forms(g, target, options, resident, layouts, plain, True)
    fits = _fits_resident(tiled, target)
    if fits and (len(plain) == len(steps) or _packs(tiled, target)):
        return tiled
    if len(plain) < len(steps):
        spread = _tile_forms(g, target, options, resident, layouts, steps, True)
        if _fits_resident(spread, target):
            return spread
    if len(plain) < 2 or fits:
        return tiled
    return _tile_forms(g, target, options, resident, layouts, plain, False)


def _packs(tiled: TiledGraph, target: Target) -> bool:
    """Whether the most repeated layer template (the transformer blocks) has a resident shape
    that packs all its layers on the machine: as many a wafer as the shape tiles it, less the
    slots the other layers' smallest resident rectangles take (Llama 3.1 405B at 128 tokens:
    its blocks' resident shapes tile 5 a wafer, 120 of 126 on 24 wafers, so 108 of them
    streamed their caches on 586 x 254, 6 a wafer, where the spread form holds them)."""
    rows, cols, wafers = target.grid.rows, target.grid.cols, target.wafers.count
    count = Counter(lt.template for lt in tiled.layers)
    template, n = count.most_common(1)[0]
    block = next(lt for lt in tiled.layers if lt.template == template)
    others = sum(min((c.rows * c.cols for c in lt.candidates
                      if c.residency is Residency.RESIDENT), default=rows * cols)
                 for lt in tiled.layers if lt.template != template)
    return any((rows // c.rows) * (cols // c.cols) * wafers - math.ceil(others / (c.rows * c.cols))
               >= n for c in block.candidates if c.residency is Residency.RESIDENT)


def _fits_resident(tiled: TiledGraph, target: Target) -> bool:
    cores = target.grid.rows * target.grid.cols * target.wafers.count
    least = [min((c.rows * c.cols for c in lt.candidates if c.residency is Residency.RESIDENT),
                 default=None) for lt in tiled.layers]
    return None not in least and sum(least) <= RESIDENT_FILL * cores


def _tile_forms(g: ir.Graph, target: Target, options: TilingOptions, resident: bool,
                layouts: dict[str, tuple[OpLayout, ...]], steps: tuple[DecodeStep, ...],
                least_form: bool) -> TiledGraph:
    kv = kv_cache_tensors(g)
    batch = batch_size(g)
    context = context_length(g, options)
    params = _param_derived(g)
    step_params = [_param_derived(st.graph) for st in steps]
    cache: dict[str, tuple[Candidate, ...]] = {}
    layers = []
    for layer in g.layers:
        with at_layer(layer.name):  # an internal error names the layer
            model = _layer_model(g, layer, layouts[layer.name], target, kv, context, batch, params)
            template = _template(g, layer)
            if template not in cache:  # alike layers: alike decode steps too
                decode = tuple(s for s in (_step_tensors(st, layer.name, target, p)
                                           for st, p in zip(steps, step_params, strict=True))
                               if s is not None)
                model = dataclasses.replace(model, tensors=dataclasses.replace(
                    model.tensors, prompt_resident=resident, decode=decode,
                    least_form=least_form))
                cache[template] = _candidates(layer.name, model, target, batch, options,
                                              _share(g, target))
            layers.append(LayerTiling(
                layer.name, layer.kind.value, template, layouts[layer.name], model.weight_bytes,
                model.kv_total * target.compute.dtype.itemsize, model.flops_per_token,
                cache[template]))
    return TiledGraph(g.name, tuple(layers), _edges(g, target), context, batch,
                      _io_bytes_per_token(g, target), resident)




def _layer_model(g, layer, layouts, target, kv, context, batch, params) -> _LayerModel:
    t = _layer_tensors(g, layer, layouts, target, kv, params)
    tokens = max(token_count(g), 1)
    seq = max(1, tokens // batch)
    flops = 0
    for op in layer.ops:
        f = op_flops(g, op)
        act_x_act = op.kind in ("MatMul", "Attention") and not any(
            n in g.const_derived for n in op.inputs[1:2])
        flops += f * context // seq if act_x_act else f
    coll = tuple((c.kind, c.axis, target.tensor_bytes(g.tensor(c.tensor)) // tokens)
                 for lay in layouts for c in lay.collectives)
    return _LayerModel(t, t.kv_elements_per_token * context * batch,
                       _bytes(t.weights, 1, 1), flops // tokens, coll, len(layer.ops))


def _template(g: ir.Graph, layer: ir.Layer) -> str:
    """Alike layers (same ops, same shapes, same kind) share one signature."""
    h = hashlib.sha256(layer.kind.value.encode())
    for op in layer.ops:
        shapes = [g.tensor(n).shape if n else () for n in (*op.inputs, *op.outputs)]
        h.update(f"{op.kind}{op.attrs}{shapes}".encode())
    return h.hexdigest()[:16]


def _modes(model: _LayerModel) -> list[Residency]:
    modes = [Residency.RESIDENT]
    if model.kv_total:
        modes.append(Residency.STREAM_KV)
    if model.weight_bytes:
        modes.append(Residency.STREAM_WEIGHTS)
    if model.kv_total and model.weight_bytes:
        modes.append(Residency.STREAM_ALL)
    return modes


def _runnable(mode: Residency) -> bool:
    """A tiling asked to hold the whole prompt (compile --verify) offers only what the schedule
    and the executor run: they load a layer's weight tiles whole, so a table or matrix that
    fits SRAM only when streamed through a small buffer is refused here (exit 5), not found at
    step 0 of a run (issue 15: an embedding 'streamed' on 2 cores overflowed one core's SRAM,
    exit 70). A default compile keeps them (its decode streams them); `wafer verify` of such an
    OUT is refused before it runs (schedule/memory.py)."""
    return mode not in (Residency.STREAM_WEIGHTS, Residency.STREAM_ALL)


def _share(g: ir.Graph, target: Target) -> int:
    """Cores a layer may take when every layer gets the same share of the machine (a bound for
    `_latency_shapes`: wider shapes beyond it could not all be placed)."""
    cores = target.grid.rows * target.grid.cols * target.wafers.count
    return max(1, int(LATENCY_SHARE * cores) // max(len(g.layers), 1))


def _latency_shapes(fits: Callable[[int, int], bool], cycles: Callable[[int, int], int],
                    floor: Callable[[int, int], float], target: Target, share: int,
                    have: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The wider or squarer shape of at most `share` cores (idle cores otherwise) with the
    fewest decode cycles (`cycles(r, c)`: the layer's `_cycles`, `flops` per token), when it
    has fewer than every smallest shape in `have`: more cores cut the compute, longer axes add
    hops, so it is a real trade-off (not always the largest); `floor(r, c)` bounds `cycles`
    from below (`_cycles_floor`) and prunes the shapes that cannot beat it. Only shapes that
    tile the wafer (rows // i x cols // j) are searched: alike blocks in such a shape pack
    i x j to a wafer without waste, so the placer can give every block the shape it chose for
    its cycles (a shape that does not tile, e.g. 76 x 255 on 1172 x 762, packs 30 where the
    area allows 46, and Llama 3 8B's 32 blocks fell back to 19 x 762 strips of twice the
    cycles)."""
    if not have:
        return []
    best = min(cycles(r, c) for r, c in have)
    rows, cols = target.grid.rows, target.grid.cols
    bounded = [b for b in _by_floor(floor, rows, cols, share) if (b[1], b[2]) not in have]
    found: tuple[int, int, int, int, int] | None = None  # (cycles, cores, |r - c|, r, c)
    for low, r, c in bounded:  # fewest cycles first by their floor: stop past the best
        if low >= (best if found is None else found[0] + 1):
            break
        key = (cycles(r, c), r * c, abs(r - c), r, c)
        if key[0] < best and (found is None or key < found) and fits(r, c):
            found = key
    return [] if found is None else [(found[3], found[4])]


def _candidates(name: str, model: _LayerModel, target: Target, batch: int,
                options: TilingOptions, share: int = 1) -> tuple[Candidate, ...]:
    cap = target.usable_bytes_per_core
    kv_item = target.compute.dtype.itemsize
    out: list[Candidate] = []
    resident_shapes: list[tuple[int, int]] = []
    modes = _modes(model)
    if options.prompt_resident:  # issue 15 (h-real): see _runnable
        modes = [m for m in modes if _runnable(m)]
    raw, steps = _measured(model.tensors, model.kv_total, batch)
    cycles, floor = _priced(model, target)
    for mode in modes:
        def fits(r: int, c: int, mode=mode) -> bool:
            return sum(_per_core(model.tensors, mode, r, c, model.kv_total, kv_item, batch,
                                 raw, steps)) <= cap

        frontier = _frontier(fits, target.grid.rows, target.grid.cols)
        shapes = _pick(frontier, options.max_candidates)
        shapes += [p for p in _grid_tiling(frontier, fits, target) if p not in shapes]
        shapes += _latency_shapes(fits, cycles, floor, target, share, shapes)
        if mode is Residency.RESIDENT:
            resident_shapes = shapes[:2]
        else:  # streaming frees SRAM; keeping the resident shape keeps the compute parallel
            shapes += [s for s in resident_shapes if s not in shapes]
        for r, c in shapes:
            w, kv, act = _per_core(model.tensors, mode, r, c, model.kv_total, kv_item, batch,
                                   raw, steps)
            out.append(Candidate(r, c, mode, w, kv, act, _offchip(model, mode, batch, kv_item),
                                 cycles(r, c), _form_bytes(model.tensors, mode, r, c,
                                                           model.kv_total, kv_item, batch, raw,
                                                           steps)))
    if not out:
        rows, cols = target.grid.rows, target.grid.cols
        mode = modes[-1]  # the most streaming mode offered: the least SRAM it can take
        need = sum(_per_core(model.tensors, mode, rows, cols, model.kv_total, kv_item, batch))
        raise CapacityError(
            f"layer {name}: a core", need, cap,
            f"even spread over a whole {rows} x {cols} wafer and streamed, its largest tiles "
            "cannot be split further; use a target with more SRAM per core")
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _by_floor(floor: Callable[[int, int], float], rows: int, cols: int,
              share: int) -> tuple[tuple[float, int, int], ...]:
    """Every shape rows // i x cols // j of at most `share` cores as (floor, r, c), fewest
    floor cycles first (`floor`: one of `_priced`'s, so the same layer asks once)."""
    return tuple(sorted((floor(r, c), r, c) for r in _tiling_counts(rows)
                        for c in _tiling_counts(cols) if r * c <= share))


# `_priced` of the last few layers: a layer's cycles are a function of its model less its
# tensors and of the target, so the tilings of one point (a tiling per set of decode forms)
# and its re-runs price each shape once
_PRICED: dict[tuple, tuple[Callable[[int, int], int], Callable[[int, int], float]]] = {}
KEEP_PRICED = 32


def _priced(model: _LayerModel, target: Target) -> tuple[Callable[[int, int], int],
                                                          Callable[[int, int], float]]:
    """The layer's `_cycles` (remembered per shape) and `_cycles_floor` on `target`."""
    key = (tuple(getattr(model, f.name) for f in dataclasses.fields(model)
                 if f.name != "tensors"), target)
    if key not in _PRICED:
        if len(_PRICED) >= KEEP_PRICED:  # the oldest goes
            del _PRICED[next(iter(_PRICED))]
        _PRICED[key] = (functools.cache(functools.partial(_cycles, model, target=target,
                                                          memo={})),
                        _cycles_floor(model, target))
    return _PRICED[key]


# `_measured` of the last few layers: the bytes of a shape do not depend on the links, so the
# points of a sweep along a link width (compiler/sweep/) measure each shape once
_MEASURED: dict[tuple[_Tensors, int, int], tuple[Callable, Callable]] = {}
KEEP_MEASURED = 16


def _measured(t: _Tensors, kv_total: int, batch: int) -> tuple[
        Callable[[int, int], tuple[int, tuple[int, int]]],
        Callable[[int, int], tuple[_StepRaw, ...]]]:
    """Per shape, what no residency mode changes (`_raw`) and each decode form's bytes
    (`_step_raw`), each asked for once whatever the modes, and remembered by value for the
    next tiling of the same layer (a function of these values alone)."""
    key = (t, kv_total, batch)
    if key not in _MEASURED:
        if len(_MEASURED) >= KEEP_MEASURED:  # the oldest goes
            del _MEASURED[next(iter(_MEASURED))]
        forms = [_StepMeasures.of(s) for s in t.decode]
        _MEASURED[key] = (
            functools.cache(functools.partial(_raw, t, _Measures.of(t), kv_total, batch)),
            functools.cache(lambda r, c: tuple(_step_raw(m, r, c) for m in forms)))
    return _MEASURED[key]


def _offchip(model: _LayerModel, mode: Residency, batch: int, kv_item: int) -> int:
    streamed = 0
    if mode in (Residency.STREAM_WEIGHTS, Residency.STREAM_ALL):
        streamed += model.weight_bytes // max(batch, 1)
    if mode in (Residency.STREAM_KV, Residency.STREAM_ALL):
        streamed += model.kv_total * kv_item // max(batch, 1)
    return streamed


def _cycles_floor(model: _LayerModel, target: Target) -> Callable[[int, int], float]:
    """A lower bound of `_cycles(model, r, c)`, cheap enough to prune the shapes
    `_latency_shapes` prices: the compute, one runtime overhead per phase, and per collective
    along an axis of m > 1 cores (m - 1) hops and its tile over one link; a reduce adds one
    stage (every algorithm of `collectives.reduce_cycles` spans the line and combines once)."""
    rate = target.core.flops(target.compute.dtype)
    overhead = target.runtime.step_overhead_cycles
    hop, bpc = target.links.hop_latency_cycles, target.links.bytes_per_cycle
    per_byte = 1 / bpc + 1 / target.itemsize(target.compute.dtype) / max(rate / 2, 1.0)
    colls = [(axis, nbytes, kind == CollectiveKind.REDUCE)
             for kind, axis, nbytes in model.collectives]

    def floor(rows: int, cols: int) -> float:
        total = model.flops_per_token / (rows * cols * rate) + overhead
        if rows * cols == 1:
            return total
        size = {"r": rows, "c": cols}
        for axis, nbytes, reduce in colls:
            m = size[axis]
            if m > 1:
                tile = nbytes / size["c" if axis == "r" else "r"]
                total += overhead + (m - 1) * hop + tile / bpc + (tile * per_byte if reduce
                                                                  else 0.0)
        return total

    return floor


def _cycles(model: _LayerModel, rows: int, cols: int, target: Target,
            memo: dict[tuple[int, float], float] | None = None) -> int:
    """Decode cycles per token: compute spread over the cores, then each collective's hops
    along its axis, its bytes over one link, and the runtime's per-step overhead; a reduce of
    partial sums at its cheapest algorithm (chain, two-way or K-tree, `collectives.py`, as the
    schedule records and schedule/perf.py prices it). A collective along an axis of one core
    moves nothing and runs fused with the compute: no hops, no bytes, no overhead. `memo`
    keeps each reduce's cycles by (cores, tile bytes) for the next call on `target`."""
    memo = {} if memo is None else memo
    rate = target.core.flops(target.compute.dtype)
    compute = model.flops_per_token / (rows * cols * rate)
    size = {"r": rows, "c": cols}
    comm = 0.0
    phases = 1
    for kind, axis, nbytes in model.collectives:
        m = size[axis]
        if m == 1 or rows * cols == 1:
            continue
        tile = nbytes / size["c" if axis == "r" else "r"]
        if kind == CollectiveKind.REDUCE:
            if (m, tile) not in memo:
                memo[(m, tile)] = collectives.reduce_cycles(collectives.choose(m, tile, target),
                                                            m, tile, target)
            comm += memo[(m, tile)]
        else:
            comm += (m - 1) * target.links.hop_latency_cycles + tile / \
                target.links.bytes_per_cycle
        phases += 1
    overhead = phases * target.runtime.step_overhead_cycles
    return int(math.ceil(compute + comm + overhead))


# --- edges and the adapter ----------------------------------------------------------------------


def _edges(g: ir.Graph, target: Target) -> tuple[Edge, ...]:
    """Activations leaving a layer for a later one (constant subgraphs are recomputed where
    they are used, so they are not edges)."""
    index = {op.name: i for i, layer in enumerate(g.layers) for op in layer.ops}
    tokens = max(token_count(g), 1)
    flows: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(g.layers):
        for op in layer.ops:
            for name in op.outputs:
                if not name or name in g.const_derived:
                    continue
                nbytes = target.tensor_bytes(g.tensor(name))
                for j in sorted({index[c.name] for c in g.consumers.get(name, ())} - {i}):
                    flows[(i, j)] = flows.get((i, j), 0) + nbytes
    return tuple(Edge(i, j, max(1, b // tokens), b) for (i, j), b in sorted(flows.items()))


def _io_bytes_per_token(g: ir.Graph, target: Target) -> int:
    tokens = max(token_count(g), 1)
    names = [*g.inputs, *g.outputs]
    return sum(target.tensor_bytes(g.tensor(n)) for n in names) // tokens


def to_problem(tiled: TiledGraph, target: Target) -> PlacementProblem:
    blocks = tuple(
        Block(lt.layer, lt.kind, tuple(
            Option(c.rows, c.cols, c.residency, c.per_core_bytes, c.offchip_bytes_per_token,
                   c.cycles) for c in lt.candidates), lt.template)
        for lt in tiled.layers)
    return PlacementProblem(
        name=tiled.model, blocks=blocks, edges=tiled.edges, rows=target.grid.rows,
        cols=target.grid.cols, wafers=target.wafers.count,
        capacity_bytes=target.usable_bytes_per_core, io_bytes_per_token=tiled.io_bytes_per_token,
        wafer_link_bytes_per_s=target.wafers.link_bandwidth_bytes_per_s,
        clock_hz=target.core.clock_hz)
