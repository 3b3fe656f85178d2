"""The schedule: an ordered, dependency-correct list of steps at region granularity.

A region is one layer's placed rectangle. Tensors live on regions as tiles split by a Spec
(compiler/tiling/layouts.py), possibly holding partial sums along one mesh axis. Steps:

- load: off-chip -> region (graph inputs every forward; weights once at setup, or every token
  when streamed; constant tables, evaluated on the host, once at setup);
- compute: one op on one region in its layout; statistics a normalization needs across a
  split axis are reduced inside the step (`fused`);
- collective: inside a region along one mesh axis: `reduce` (partial sums -> complete),
  `relayout` (re-split a tensor another way, e.g. gather a split dim), `retile` (an op that
  moves tiles across cores: split/slice/concat/index along a split dim);
- send: region -> region on one wafer along an XY route; wafer_send: across wafers;
- store: region -> off-chip (graph outputs);
- cache_write (causal LMs with a decode schedule): the prompt's K or V (positions 0..S-1)
  written into its layer's resident KV cache (`Schedule.caches`: at the context, in the layout
  the decode schedule reads it in, on the attention region's cores), right after the last
  step of the layer that reads the K or V; the decode machine starts from what it wrote.

Each step names what it reads and writes (tensor, spec, partial axis), so the executor can run
it and check that every operand is resident where the step runs. Step ids are a topological
order: every dependency has a smaller id. A step's `nbytes` is what it moves on the machine,
floats at the target's storage dtype (`Target.tensor_bytes`), as tiling, placement and the
executor's memory accounting count it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property

from compiler import ir
from compiler.placement.problem import Placement, PlacementProblem, Rect, Residency
from compiler.stages import at_layer
from compiler.target import Target
from compiler.tiling import collectives
from compiler.tiling.candidates import TiledGraph
from compiler.tiling.costs import op_flops, token_count
from compiler.tiling.layouts import OpLayout, Spec, base, parts, replicated
from compiler.tiling.tiles import reshape_is_local
from compiler.vocab import RESHAPE_OPS, CollectiveKind, Phase, StepKind

FIXED, TOKENS, ATTENTION = "fixed", "tokens", "attention"  # how a step's size scales


@dataclass(frozen=True)
class Region:
    name: str
    wafer: int
    row: int
    col: int
    rows: int
    cols: int

    @property
    def center(self) -> tuple[int, int]:
        return self.row + self.rows // 2, self.col + self.cols // 2


@dataclass(frozen=True)
class TensorRef:
    tensor: str
    spec: Spec
    partial: str | None = None  # mesh axis along which tiles hold partial sums


@dataclass(frozen=True)
class Step:
    id: int
    kind: StepKind
    region: str  # where it runs (a send's source)
    reads: tuple[TensorRef, ...] = ()
    writes: tuple[TensorRef, ...] = ()
    deps: tuple[int, ...] = ()
    op: str = ""  # ONNX node name (compute)
    op_kind: str = ""  # ONNX op type, or the collective's CollectiveKind (reduce, relayout, ...)
    axis: str | None = None  # collective axis
    fused: tuple[tuple[str, str], ...] = ()  # (kind, axis) reduced inside a compute step
    dst: str = ""  # send / wafer_send: destination region
    route: tuple[tuple[int, int], ...] = ()  # (row, col) waypoints: start, corner, end
    hops: int = 0
    lanes: int = 1  # parallel paths a send spreads over
    phase: Phase = Phase.TOKEN
    nbytes: int = 0  # moved (load, collective, send, store), at the target's storage size
    flops: int = 0  # computed
    scaling: str = TOKENS  # fixed, tokens, attention (tokens x context)
    algorithm: str = ""  # reduce: chain, twoway, treeK or 2d-rc:A,B (tiling/collectives.py)


@dataclass(frozen=True)
class KVCacheRef:
    """A resident KV cache the prefill writes and the decode step reads: `tensor` (not in the
    prefill graph: `source`'s shape with `axis` at the schedule's context) on region `layer`
    in `spec`, filled from the prompt's `source` (its K or V) at positions 0..S-1."""

    tensor: str
    source: str
    axis: int
    layer: str
    spec: Spec


@dataclass(frozen=True)
class Schedule:
    model: str
    target: str
    regions: tuple[Region, ...]
    steps: tuple[Step, ...]
    tokens: int  # per forward pass the step sizes describe (batch x seq)
    batch: int
    context: int
    residency: tuple[tuple[str, str], ...] = ()  # region -> residency mode
    caches: tuple[KVCacheRef, ...] = ()  # the KV caches its cache_write steps fill

    def region(self, name: str) -> Region:
        return self._regions[name]

    @cached_property
    def _regions(self) -> dict[str, Region]:
        return {r.name: r for r in self.regions}


# --- building -----------------------------------------------------------------------------------


@dataclass
class _State:
    """Where each tensor is, per region: (spec, partial, step that made it)."""

    g: ir.Graph
    target: Target  # sizes transfers (`bytes`)
    at: dict[tuple[str, str], tuple[Spec, str | None, int]] = field(default_factory=dict)
    home: dict[str, str] = field(default_factory=dict)  # tensor -> region that produced it
    steps: list[Step] = field(default_factory=list)
    scaling: str | None = None  # every step's, when set (a decode step's exact sizes: FIXED)

    def bytes(self, name: str) -> int:
        """A tensor's bytes on the machine: what a transfer of it moves."""
        return self.target.tensor_bytes(self.g.tensor(name))

    def add(self, **kw) -> Step:
        if self.scaling is not None:
            kw["scaling"] = self.scaling
        step = Step(id=len(self.steps), **kw)
        self.steps.append(step)
        return step


def build_schedule(g: ir.Graph, tiled: TiledGraph, problem: PlacementProblem,
                   placement: Placement, target: Target,
                   caches: tuple[KVCacheRef, ...] = (),
                   memo: StepsMemo | None = None) -> Schedule:
    """Steps for `placement`; every transfer's `nbytes` is the tensor's size on the machine
    (`Target.tensor_bytes`: floats at the storage dtype), as tiling and placement count it.
    `caches`: the KV caches the prompt fills (a `cache_write` step each). `memo`: the steps
    of earlier schedules of `g` (`StepsMemo`)."""
    regions = tuple(_region(lt.layer, r) for lt, r in zip(tiled.layers, placement.rects,
                                                          strict=True))
    by_name = {r.name: r for r in regions}
    residency = {b.name: placement.option(problem, i).residency
                 for i, b in enumerate(problem.blocks)}
    key = (tuple(lt.ops for lt in tiled.layers), regions, tuple(residency.items()), caches,
           target.compute, target.storage)
    steps = memo.get(g, key) if memo is not None else None
    if steps is None:
        steps = _steps(g, tiled, by_name, residency, target, caches)
        if memo is not None:
            memo.keep(g, key, steps)
    return Schedule(g.name, target.name, regions, with_algorithms(list(steps), by_name, target),
                    _tokens(g), tiled.batch, tiled.context,
                    tuple((k, v.value) for k, v in residency.items()), caches)


def _steps(g: ir.Graph, tiled: TiledGraph, by_name: dict[str, Region],
           residency: dict[str, Residency], target: Target,
           caches: tuple[KVCacheRef, ...]) -> tuple[Step, ...]:
    """`build_schedule`'s steps before their reduce algorithms: of the target they read only
    its byte rule (`Target.tensor_bytes`: `compute` and `storage`), never its links."""
    st = _State(g, target)
    for layer, lt in zip(g.layers, tiled.layers, strict=True):
        with at_layer(layer.name):  # an internal error names the layer
            _schedule_layer(g, layer, lt.ops, by_name[layer.name], by_name, residency[layer.name],
                            st, tuple(c for c in caches if c.layer == layer.name))
    _store_outputs(g, st)
    return tuple(st.steps)


@dataclass
class StepsMemo:
    """What was built from a graph, by the graph's identity and a key, the graph kept with it
    (so an identity stays its own): a prefill schedule's steps before their reduce algorithms
    by layer layouts, regions, residencies, KV caches and byte rule (`build_schedule`), and in
    `schedule.decode.DecodeMemo` a decode form's streamed variant and its decode steps. What a
    sweep worker's points along a link width share when their placements give the same
    regions (`driver.Reuse`). At most `most` entries (the oldest goes); a hit is what building
    it again gives; `hits` counts them."""

    most: int = 4
    entries: dict[tuple, tuple[object, object]] = field(default_factory=dict)
    hits: int = 0

    def get(self, owner: object, key: tuple):
        hit = self.entries.get((id(owner), *key))
        if hit is None or hit[0] is not owner:
            return None
        self.hits += 1
        return hit[1]

    def keep(self, owner: object, key: tuple, value: object) -> None:
        k = (id(owner), *key)
        if k not in self.entries and len(self.entries) >= self.most:
            del self.entries[next(iter(self.entries))]
        self.entries[k] = (owner, value)

    def __len__(self) -> int:
        return len(self.entries)


def with_algorithms(steps: list[Step], regions: dict[str, Region],
                    target: Target) -> tuple[Step, ...]:
    """Every reduce with its collective algorithm, the cheapest for its line of cores and its
    tile at the schedule's own sizes (`collectives.choose`; partial sums over both axes, `rc`:
    the cheapest 2D form, `collectives.choose_grid`); the executor adds in its order."""
    out = []
    for step in steps:
        if step.kind == StepKind.COLLECTIVE and step.op_kind == CollectiveKind.REDUCE:
            step = dataclasses.replace(step, algorithm=_algorithm(step, regions[step.region],
                                                                  target))
        out.append(step)
    return tuple(out)


def _algorithm(step: Step, region: Region, target: Target) -> str:
    if step.axis == collectives.BOTH:  # every core a partial of the whole tile
        return collectives.choose_grid(region.rows, region.cols, step.nbytes, target).label
    m = region.rows if step.axis == "r" else region.cols
    tile = step.nbytes * m / (region.rows * region.cols)
    return collectives.choose(m, tile, target).label


def _region(name: str, r: Rect) -> Region:
    return Region(name, r.wafer, r.row, r.col, r.rows, r.cols)


def _tokens(g: ir.Graph) -> int:
    return max(token_count(g), 1)


def _schedule_layer(g: ir.Graph, layer: ir.Layer, layouts: tuple[OpLayout, ...], region: Region,
                    regions: dict[str, Region], residency: Residency, st: _State,
                    caches: tuple[KVCacheRef, ...] = ()) -> None:
    streamed = residency in (Residency.STREAM_WEIGHTS, Residency.STREAM_ALL)
    after = _write_points(g, layer, caches)
    for k, (op, lay) in enumerate(zip(layer.ops, layouts, strict=True)):
        if all(n in g.const_derived for n in op.inputs if n):
            continue  # a constant subgraph: evaluated on the host, loaded where it is read
        deps = [_provide(g, name, spec, region, regions, streamed, st)
                for name, spec in zip(op.inputs, lay.inputs, strict=True) if name]
        _compute(g, op, lay, region, deps, st)
        for cache in after.get(k, ()):
            _write_cache(g, cache, region, regions, st)


def _write_points(g: ir.Graph, layer: ir.Layer,
                  caches: tuple[KVCacheRef, ...]) -> dict[int, list[KVCacheRef]]:
    """Per op index of the layer, the caches written right after it: after the last op that
    reads or makes the cache's K / V (it is freed there, not kept for a later write)."""
    points: dict[int, list[KVCacheRef]] = {}
    for cache in caches:
        uses = [k for k, op in enumerate(layer.ops) if cache.source in (*op.inputs, *op.outputs)]
        if not uses:
            raise ValueError(f"KV cache {cache.tensor}: no op of {layer.name} makes or reads "
                             f"{cache.source}")
        points.setdefault(uses[-1], []).append(cache)
    return points


def _write_cache(g: ir.Graph, cache: KVCacheRef, region: Region, regions: dict[str, Region],
                 st: _State) -> None:
    """The prompt's K or V, in the cache's layout, into the resident cache at 0..S-1."""
    dep = _provide(g, cache.source, cache.spec, region, regions, False, st)
    split = cache.spec[cache.axis] if cache.axis < len(cache.spec) else None
    step = st.add(kind=StepKind.CACHE_WRITE, region=region.name,
                  reads=(TensorRef(cache.source, cache.spec),),
                  writes=(TensorRef(cache.tensor, cache.spec),), deps=(dep,),
                  op_kind=StepKind.CACHE_WRITE, axis=split, nbytes=st.bytes(cache.source))
    st.at[(region.name, cache.tensor)] = (cache.spec, None, step.id)


def with_caches(g: ir.Graph, s: Schedule) -> ir.Graph:
    """`g` with the KV caches `s` writes as tensors (`source`'s shape, `axis` at the context),
    so that the executor and the memory replay can size them; `g` itself when it has none."""
    missing = [c for c in s.caches if c.tensor not in g.tensor_map]
    if not missing:
        return g
    extra = []
    for c in missing:
        src = g.tensor(c.source)
        shape = tuple(s.context if i == c.axis else d for i, d in enumerate(src.shape))
        extra.append(ir.Tensor(c.tensor, shape, src.dtype, ir.TensorKind.ACTIVATION))
    return dataclasses.replace(g, tensors=(*g.tensors, *extra))


def _provide(g: ir.Graph, name: str, spec: Spec | None, region: Region,
             regions: dict[str, Region], streamed: bool, st: _State) -> int:
    """Make `name` resident on `region` in `spec`; returns the step that did."""
    spec = spec if spec is not None else replicated(len(g.tensor(name).shape))
    key = (region.name, name)
    if key not in st.at:
        _bring(g, name, spec, region, regions, streamed, st)
    have, partial, last = st.at[key]
    if have != spec or partial:
        return _relayout(g, name, have, partial, spec, region.name, last, st)
    return last


def _bring(g, name: str, spec: Spec, region: Region, regions, streamed: bool, st: _State) -> None:
    t = g.tensor(name)
    if name in g.const_derived:
        phase = Phase.TOKEN if streamed and t.kind is ir.TensorKind.WEIGHT else Phase.SETUP
        step = st.add(kind=StepKind.LOAD, region=region.name, writes=(TensorRef(name, spec),),
                      phase=phase, nbytes=st.bytes(name), scaling=FIXED)
    elif name in g.inputs:
        step = st.add(kind=StepKind.LOAD, region=region.name, writes=(TensorRef(name, spec),),
                      nbytes=st.bytes(name))
    else:
        step = _send(g, name, spec, regions[st.home[name]], region, st)
    st.at[(region.name, name)] = (spec, None, step.id)


def _send(g: ir.Graph, name: str, spec: Spec, src: Region, dst: Region, st: _State) -> Step:
    have, partial, last = st.at[(src.name, name)]
    if partial:  # never ship partial sums: complete them at home first
        last = _relayout(g, name, have, partial, have, src.name, last, st)
    nbytes = st.bytes(name)
    read, write = TensorRef(name, have), TensorRef(name, spec)
    if src.wafer != dst.wafer:
        return st.add(kind=StepKind.WAFER_SEND, region=src.name, dst=dst.name, reads=(read,),
                      writes=(write,), deps=(last,), nbytes=nbytes)
    route, hops = xy_route(src, dst)
    lanes = max(1, min(src.rows, dst.rows) if route[0][0] == route[-1][0] else
                min(src.cols, dst.cols))
    return st.add(kind=StepKind.SEND, region=src.name, dst=dst.name, reads=(read,), writes=(write,),
                  deps=(last,), route=route, hops=hops, lanes=lanes, nbytes=nbytes)


def xy_route(src: Region, dst: Region) -> tuple[tuple[tuple[int, int], ...], int]:
    """Dimension-order route between region centres: along the row (x) first, then the column.
    Returns the waypoints (start, corner, end, duplicates dropped) and the hop count, which is
    the Manhattan distance."""
    (r0, c0), (r1, c1) = src.center, dst.center
    points = [(r0, c0), (r0, c1), (r1, c1)]
    route = tuple(p for i, p in enumerate(points) if i == 0 or p != points[i - 1])
    return route, abs(r1 - r0) + abs(c1 - c0)


def _relayout(g: ir.Graph, name: str, have: Spec, partial: str | None, want: Spec,
              region: str, last: int, st: _State) -> int:
    """Complete partial sums (`reduce`) and/or re-split (`relayout`) inside a region."""
    nbytes = st.bytes(name)
    if partial:
        step = st.add(kind=StepKind.COLLECTIVE, region=region, op_kind=CollectiveKind.REDUCE,
                      axis=partial, reads=(TensorRef(name, have, partial),),
                      writes=(TensorRef(name, have),), deps=(last,), nbytes=nbytes)
        last = step.id
    if have != want:
        axis = base(next((a or b for a, b in zip(have, want, strict=True) if a != b), None))
        step = st.add(kind=StepKind.COLLECTIVE, region=region, op_kind=CollectiveKind.RELAYOUT,
                      axis=axis, reads=(TensorRef(name, have),), writes=(TensorRef(name, want),),
                      deps=(last,), nbytes=nbytes)
        last = step.id
    st.at[(region, name)] = (want, None, last)
    return last


def _compute(g: ir.Graph, op: ir.Op, lay: OpLayout, region: Region, deps: list[int],
             st: _State) -> None:
    reduce_axis = next((c.axis for c in lay.collectives if c.kind == CollectiveKind.REDUCE), None)
    reads = tuple(TensorRef(n, s) for n, s in zip(op.inputs, lay.inputs, strict=True)
                  if n and s is not None)
    outs = [(n, s) for n, s in zip(op.outputs, lay.outputs, strict=False) if n]
    writes = tuple(TensorRef(n, s, reduce_axis) for n, s in outs)
    fused = tuple((c.kind, c.axis) for c in lay.collectives if c.kind == CollectiveKind.ALLREDUCE)
    attention = op.kind in ("MatMul", "Attention") and not any(
        n in g.const_derived for n in op.inputs[1:2])
    retile = next((c.axis for c in lay.collectives if c.kind == CollectiveKind.RETILE), None)
    if retile is None and op.kind in RESHAPE_OPS and not _reshape_local(g, op, lay, region):
        retile = base(next((a for a in lay.inputs[0] or () if a), None) or next(
            (a for a in lay.outputs[0] if a), None))
    if retile:  # the op moves tiles across cores: a collective that computes the op
        step = st.add(kind=StepKind.COLLECTIVE, region=region.name, reads=reads, writes=writes,
                      deps=tuple(sorted(set(deps))), op=op.name, op_kind=CollectiveKind.RETILE,
                      axis=retile, nbytes=sum(st.bytes(n) for n, _ in outs))
    else:
        step = st.add(kind=StepKind.COMPUTE, region=region.name, reads=reads, writes=writes,
                      deps=tuple(sorted(set(deps))), op=op.name, op_kind=op.kind,
                      fused=fused, flops=op_flops(g, op),
                      scaling=ATTENTION if attention else TOKENS)
    for n, s in outs:
        st.at[(region.name, n)] = (s, reduce_axis, step.id)
        st.home.setdefault(n, region.name)


def _reshape_local(g: ir.Graph, op: ir.Op, lay: OpLayout, region: Region) -> bool:
    """A reshape whose split dims do not line up with the tiles on this mesh moves data."""
    src, dst = g.tensor(op.inputs[0]), g.tensor(op.outputs[0])
    if not any(lay.inputs[0] or ()) and not any(lay.outputs[0]):
        return True
    a, b = _shrunk(src.shape, lay.inputs[0], dst.shape, lay.outputs[0], region)
    rows = _mesh_cut(a, lay.inputs[0], b, lay.outputs[0], "r", region.rows)
    cols = _mesh_cut(a, lay.inputs[0], b, lay.outputs[0], "c", region.cols)
    return reshape_is_local(a, lay.inputs[0], b, lay.outputs[0], rows, cols)


def _mesh_cut(src: tuple[int, ...], src_spec: Spec, dst: tuple[int, ...], dst_spec: Spec,
              axis: str, size: int) -> int:
    """The mesh extent along `axis` the exact check may use instead of `size`: when each side
    splits at most one dim over it, unfactored, and every such dim is shorter than the axis,
    core k holds element k of it (tile 1) and every core past the longest holds only padding
    on both sides, so one such core stands for all (the same answer; the index arrays of a
    decode step's grouped-query repeat on a 1,172-row region would take ~0.7 GB)."""
    split = [d for shape, spec in ((src, src_spec), (dst, dst_spec))
             for d, s in zip(shape, spec, strict=True) if base(s) == axis]
    per_side = [sum(base(s) == axis for s in spec) for spec in (src_spec, dst_spec)]
    unfactored = all(s == axis for spec in (src_spec, dst_spec) for s in spec if base(s) == axis)
    if not split or max(per_side) > 1 or not unfactored or max(split) >= size:
        return size
    return max(split) + 1


def _shrunk(src: tuple[int, ...], src_spec, dst: tuple[int, ...], dst_spec,
            region: Region) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes with every dim the reshape keeps as it is (same size, same product before it,
    same split) cut to the mesh extent it is split over (1 when whole): whether tiles reshape
    in place depends only on the dims it regroups, and the exact check builds an index array
    of the whole tensor (a decode step's repeat of a 128k-key cache would take gigabytes)."""
    src, dst = list(src), list(dst)
    pre_src = [math.prod(src[:i]) for i in range(len(src))]
    pre_dst = [math.prod(dst[:j]) for j in range(len(dst))]
    for i, j in ((i, j) for i in range(len(src)) for j in range(len(dst))):
        if pre_src[i] == pre_dst[j] and src[i] == dst[j] and src_spec[i] == dst_spec[j]:
            small = min(src[i], parts(src_spec[i], region.rows, region.cols))
            src[i] = dst[j] = small
            pre_src = [math.prod(src[:k]) for k in range(len(src))]
            pre_dst = [math.prod(dst[:k]) for k in range(len(dst))]
    return tuple(src), tuple(dst)


def _store_outputs(g: ir.Graph, st: _State) -> None:
    for name in g.outputs:
        home = st.home.get(name)
        if home is None:
            continue
        have, partial, last = st.at[(home, name)]
        if partial:
            last = _relayout(g, name, have, partial, have, home, last, st)
            have = st.at[(home, name)][0]
        st.add(kind=StepKind.STORE, region=home, reads=(TensorRef(name, have),), deps=(last,),
               nbytes=st.bytes(name))
