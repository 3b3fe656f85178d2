"""The schedule interpreter: runs every step on blocked tiles and checks the schedule as it goes.

Tiles move only through load, collective, send and store steps. A step may read only what is
resident on its own region, in the spec and partial-sum state it names; anything else is a
ScheduleFault naming the step and the tensor. Every core's resident bytes (tiles at the target's
storage size) are counted against SRAM minus the runtime reserve: an overflow names the step, the
region and the bytes. A tensor is freed on a region after the last step there that reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from compiler import ir
from compiler.errors import ExitCode, WaferError
from compiler.executor import kernels_quant  # noqa: F401  (registers the quantized kernels)
from compiler.executor.kernels import KERNELS, Ctx, KernelError, Operand
from compiler.schedule.build import Region, Schedule, Step, with_caches
from compiler.target import Target
from compiler.tiling import collectives
from compiler.tiling.layouts import Spec, replicated
from compiler.tiling.tiles import (
    AXIS,
    blocked_shape,
    gather,
    position_cells,
    scatter,
    tile_bytes,
    valid_mask,
)
from compiler.vocab import VIEW_OPS, CollectiveKind, Phase, Precision, StepKind

FP32, TARGET, TARGET_STRICT = Precision.FP32, Precision.TARGET, Precision.TARGET_STRICT
# the largest finite value and the smallest positive (subnormal) one of each 16-bit float:
# TARGET clamps constants into this range, as fp16 conversion does (onnxconverter-common's
# convert_np_to_float16, with ONNX Runtime's defaults min_positive_val=5.96e-08 and
# max_finite_val=65504)
_FINITE_RANGE = {ir.DType.FLOAT16: (65504.0, 2.0 ** -24),
                 ir.DType.BFLOAT16: (float(np.uint32(0x7F7F0000).view(np.float32)), 2.0 ** -133)}


class ScheduleFault(WaferError):
    """The schedule asks for something the machine cannot do (a compiler bug, or a mutation)."""

    exit_code = ExitCode.INTERNAL


class MemoryOverflow(ScheduleFault):
    pass


class CacheOverflow(ScheduleFault):
    """A decode step appends past the end of its KV cache (the compile's --context)."""


@dataclass
class _Resident:
    spec: Spec
    partial: str | None
    data: np.ndarray
    nbytes: int  # per core


@dataclass
class ExecResult:
    outputs: dict[str, np.ndarray]
    values: dict[str, np.ndarray]  # whole tensors seen crossing regions, and those asked for
    peak_bytes: dict[str, int]  # per region: the fullest core's peak
    steps_run: int = 0
    # the KV caches the schedule's cache_write steps filled, as held: name -> (region, tiles)
    caches: dict[str, tuple[str, Spec, np.ndarray]] = field(default_factory=dict)


@dataclass
class _Machine:
    g: ir.Graph
    s: Schedule
    target: Target
    precision: str
    host: dict[str, np.ndarray]
    keep: frozenset[str]
    ops: dict[str, ir.Op] = field(default_factory=dict)
    regions: dict[str, Region] = field(default_factory=dict)
    at: dict[tuple[str, str], _Resident] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    last_use: dict[tuple[str, str], int] = field(default_factory=dict)
    pinned: set[tuple[str, str]] = field(default_factory=set)  # resident weights: never freed
    # KV caches whose tiles this machine copied once and appends write in place
    owned: set[tuple[str, str]] = field(default_factory=set)
    position: int = 0  # a decode step's absolute position t (where `append` steps write)
    offchip: dict[str, np.ndarray] = field(default_factory=dict)  # KV caches that stream
    result: ExecResult = field(default_factory=lambda: ExecResult({}, {}, {}))


def run_schedule(schedule: Schedule, graph: ir.Graph, target: Target,
                 inputs: Mapping[str, np.ndarray], precision: str = FP32,
                 keep: frozenset[str] = frozenset()) -> ExecResult:
    """Run `schedule` for `graph` on `inputs`; returns the graph outputs (and `keep` values).
    Overflow to Inf and NaN are computed silently, as the machine would (no numpy warnings): a
    comparison (compiler.verify) reports them."""
    if graph.shape_only:
        raise ScheduleFault(f"{graph.name} was loaded shape-only: there are no weights to run")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _run(schedule, with_caches(graph, schedule), target, inputs, precision, keep)


def _run(schedule: Schedule, graph: ir.Graph, target: Target, inputs: Mapping[str, np.ndarray],
         precision: str, keep: frozenset[str]) -> ExecResult:
    m = _Machine(graph, schedule, target, precision, host_constants(graph, target, precision),
                 keep)
    m.ops = {op.name: op for op in graph.ops}
    m.regions = {r.name: r for r in schedule.regions}
    m.last_use = _last_uses(schedule)
    feed = {k: np.asarray(v) for k, v in inputs.items()}
    for step in schedule.steps:
        _STEP[step.kind](m, step, feed)
        _free_dead(m, step)
        m.result.steps_run += 1
    m.result.peak_bytes = dict(m.peak)
    declared = {c.tensor for c in schedule.caches}
    m.result.caches = {name: (region, res.spec, res.data) for (region, name), res in m.at.items()
                       if name in declared}
    return m.result


# --- constants evaluated on the host -----------------------------------------------------------


def host_constants(g: ir.Graph, target: Target, precision: str) -> dict[str, np.ndarray]:
    """Weights, and every tensor computed from constants alone, as whole arrays."""
    values = {t.name: _stored(_clamped(np.asarray(t.data), target, precision), target, precision)
              for t in g.tensors if t.is_const and t.data is not None}
    ctx = Ctx(1, 1)
    for op in g.ops:
        if op.outputs and all(n in g.const_derived for n in op.inputs if n):
            ins = [_whole(g, n, values) if n else None for n in op.inputs]
            outs = [(g.tensor(o).shape, replicated(len(g.tensor(o).shape))) for o in op.outputs
                    if o]
            results = KERNELS[op.kind](op, ins, outs, ctx)
            for name, arr in zip([o for o in op.outputs if o], results, strict=True):
                values[name] = _as_dtype(g, name, np.asarray(arr)[0, 0])
    return values


def _whole(g: ir.Graph, name: str, values: dict[str, np.ndarray]) -> Operand:
    v = values[name]
    return Operand(v[None, None], replicated(v.ndim), tuple(v.shape), v)


def _as_dtype(g: ir.Graph, name: str, arr: np.ndarray) -> np.ndarray:
    want = _numpy_dtype(g.tensor(name).dtype)
    return arr.astype(want, copy=False) if arr.dtype != want else arr


_HELD = {ir.DType.INT4: np.int8, ir.DType.UINT4: np.uint8, ir.DType.BOOL: np.bool_}


def _numpy_dtype(d: ir.DType):
    """What the executor holds a dtype in: floats (and float8) as float32, 4-bit as 8-bit."""
    if d.is_float or (d.is_quantized and d not in _HELD):
        return np.float32
    return _HELD.get(d, np.dtype(d.value))


def _clamped(arr: np.ndarray, target: Target, precision: str) -> np.ndarray:
    """A constant as a model converted to the target's dtype holds it (TARGET only): finite
    values clamped to the type's finite range and non-zero ones too small for it to its smallest
    positive value, keeping sign; NaN, 0 and +-inf unchanged. So an attention mask's finfo.min
    (-3.4e38) becomes -65504 in fp16, not -inf (whose 0 * -inf is NaN)."""
    limits = _FINITE_RANGE.get(target.compute.dtype)
    if precision != TARGET or limits is None or not np.issubdtype(arr.dtype, np.floating):
        return arr
    big, tiny = limits
    a = arr.astype(np.float32)
    with np.errstate(invalid="ignore"):  # NaN compares false: left as it is
        a = np.where(np.isfinite(a) & (np.abs(a) > big), np.copysign(big, a), a)
        a = np.where((a != 0) & (np.abs(a) < tiny), np.copysign(tiny, a), a)
    return a.astype(np.float32)


def _stored(arr: np.ndarray, target: Target, precision: str) -> np.ndarray:
    """Float data as the machine holds it: fp32 for reference runs, the target's storage dtype
    (fp16 or bf16, widened back to fp32 for arithmetic) when emulating the target. A value
    beyond the 16-bit range becomes +-inf, as on the machine (no warning)."""
    if not np.issubdtype(arr.dtype, np.floating):
        return arr
    arr = arr.astype(np.float32, copy=False)
    if precision == FP32:
        return arr
    if target.compute.dtype is ir.DType.BFLOAT16:
        bits = arr.view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return rounded.astype(np.uint32).view(np.float32)
    with np.errstate(over="ignore"):  # overflow to inf is the emulated behaviour
        return arr.astype(np.float16).astype(np.float32)


# --- bookkeeping -------------------------------------------------------------------------------


def _last_uses(s: Schedule) -> dict[tuple[str, str], int]:
    last: dict[tuple[str, str], int] = {}
    for step in s.steps:
        for ref in step.reads:
            last[(step.region, ref.tensor)] = step.id
    return last


def _where(step: Step) -> str:
    what = f"{step.kind} {step.op_kind} {step.op}".replace("  ", " ").strip()
    return f"step {step.id} ({what} on {step.region})"


def _fault(step: Step, message: str) -> ScheduleFault:
    return ScheduleFault(f"schedule fault at {_where(step)}: {message}")


def _put(m: _Machine, step: Step, region: str, name: str, spec: Spec, partial: str | None,
         data: np.ndarray) -> None:
    reg = m.regions[region]
    t = m.g.tensor(name)
    if len(spec) != len(t.shape):
        raise _fault(step, f"{name} has rank {len(t.shape)} but the step gives spec {spec}")
    nbytes = tile_bytes(t.shape, spec, reg.rows, reg.cols, m.target.element_bytes(t))
    old = m.at.pop((region, name), None)
    m.owned.discard((region, name))
    m.used[region] = m.used.get(region, 0) - (old.nbytes if old else 0) + nbytes
    capacity = m.target.usable_bytes_per_core
    if m.used[region] > capacity:
        raise MemoryOverflow(
            f"memory overflow at {_where(step)}: a core of {region} would hold "
            f"{m.used[region]:,} bytes (writing {name}) but has {capacity:,}")
    m.peak[region] = max(m.peak.get(region, 0), m.used[region])
    m.at[(region, name)] = _Resident(spec, partial, data, nbytes)
    if name in m.keep and partial is None:
        m.result.values[name] = gather(data, spec, t.shape)


def _get(m: _Machine, step: Step, region: str, name: str, spec: Spec,
         partial: str | None) -> _Resident:
    res = m.at.get((region, name))
    if res is None:
        raise _fault(step, f"tensor {name} is not resident on {region}")
    if res.spec != spec or res.partial != partial:
        raise _fault(step, f"tensor {name} is on {region} as {_show(res.spec, res.partial)} but "
                     f"the step reads {_show(spec, partial)}")
    return res


def _show(spec: Spec, partial: str | None) -> str:
    text = "[" + ",".join(a or "-" for a in spec) + "]"
    return text + (f" (partial sums along {partial})" if partial else "")


def _free_dead(m: _Machine, step: Step) -> None:
    for ref in step.reads:
        key = (step.region, ref.tensor)
        if m.last_use.get(key) == step.id and ref.tensor not in m.g.outputs and \
                key not in m.pinned:
            res = m.at.pop(key, None)
            if res is not None:
                m.used[step.region] -= res.nbytes


# --- steps -------------------------------------------------------------------------------------


def _load(m: _Machine, step: Step, feed: dict[str, np.ndarray]) -> None:
    reg = m.regions[step.region]
    for ref in step.writes:
        value = _source(m, step, ref.tensor, feed)
        _put(m, step, reg.name, ref.tensor, ref.spec, None,
             scatter(value, ref.spec, reg.rows, reg.cols))
        if step.phase == Phase.SETUP:  # loaded once, used by every forward: stays in SRAM
            m.pinned.add((reg.name, ref.tensor))


def _source(m: _Machine, step: Step, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    if name in m.host:
        return m.host[name]
    if name in feed:
        t = m.g.tensor(name)
        value = feed[name]
        if tuple(value.shape) != t.shape:
            raise _fault(step, f"input {name} has shape {list(value.shape)}, expected "
                         f"{list(t.shape)}")
        return _stored(_as_dtype(m.g, name, value), m.target, m.precision)
    raise _fault(step, f"nothing to load for {name}: not an input, weight or constant")


def _compute(m: _Machine, step: Step, feed: dict[str, np.ndarray]) -> None:
    op = m.ops.get(step.op)
    if op is None:
        raise _fault(step, f"unknown op {step.op!r}")
    reg = m.regions[step.region]
    refs = {r.tensor: r for r in step.reads}
    ins = [_operand(m, step, refs, name) if name else None for name in op.inputs]
    outs = [(m.g.tensor(w.tensor).shape, w.spec) for w in step.writes]
    partial = next((w.partial for w in step.writes if w.partial), None)
    try:
        results = KERNELS[op.kind](op, ins, outs, Ctx(reg.rows, reg.cols, partial))
    except (KernelError, ValueError, IndexError) as exc:
        names = ", ".join(w.tensor for w in step.writes)
        msg = f"{op.kind} cannot run on these tiles (writing {names}): {exc}"
        raise _fault(step, msg) from None
    if op.kind in VIEW_OPS:  # in place: a dying input's memory becomes the output's
        _free_dead(m, step)
    for w, data in _by_output(op, step, results):
        data = _finish(m, w.tensor, w.spec, reg, np.asarray(data), ins)
        _put(m, step, reg.name, w.tensor, w.spec, w.partial, data)


def _by_output(op: ir.Op, step: Step, results: list) -> list[tuple]:
    """Pair results with the step's writes: kernels return one result per write, or one per
    op output position (omitted optional outputs included)."""
    if len(results) == len(step.writes):
        return list(zip(step.writes, results, strict=True))
    named = {n: r for n, r in zip(op.outputs, results, strict=False) if n}
    missing = [w.tensor for w in step.writes if w.tensor not in named]
    if missing:
        raise _fault(step, f"{op.kind} produced no value for {', '.join(missing)}")
    return [(w, named[w.tensor]) for w in step.writes]


def _operand(m: _Machine, step: Step, refs, name: str) -> Operand:
    ref = refs.get(name)
    if ref is None:
        raise _fault(step, f"the step does not say how it reads {name}")
    res = _get(m, step, step.region, name, ref.spec, ref.partial)
    return Operand(res.data, res.spec, m.g.tensor(name).shape, m.host.get(name))


def _finish(m: _Machine, name: str, spec: Spec, reg: Region, data: np.ndarray,
            operands: Sequence[Operand | None] | None = None) -> np.ndarray:
    """Output dtype as the graph says, storage rounding, zero padding. With the `operands` a
    kernel read, an array of its own (sharing memory with none of them) is padded in place."""
    data = _stored(_as_dtype(m.g, name, data), m.target, m.precision)
    mask = valid_mask(m.g.tensor(name).shape, spec, reg.rows, reg.cols)
    if mask is None:
        return data
    if operands is not None and _own(data, operands) and \
            np.broadcast_shapes(mask.shape, data.shape) == data.shape:
        np.copyto(data, np.zeros((), data.dtype), where=~mask)
        return data
    return np.where(mask, data, np.zeros((), data.dtype))


def _own(data: np.ndarray, operands: Sequence[Operand | None]) -> bool:
    arrays = [a for x in operands if x is not None for a in (x.data, x.value) if a is not None]
    return data.base is None and data.flags.writeable and not any(
        np.may_share_memory(data, a) for a in arrays)


def _retile(m: _Machine, step: Step) -> None:
    """An op along a split dim: its tiles move across the region's cores (gathered along the
    axis, the op applied, the results split again as the step writes them)."""
    op = m.ops.get(step.op)
    if op is None:
        raise _fault(step, f"unknown op {step.op!r}")
    reg = m.regions[step.region]
    refs = {r.tensor: r for r in step.reads}
    ins = []
    for name in op.inputs:
        if not name:
            ins.append(None)
            continue
        res = _get(m, step, reg.name, name, refs[name].spec, refs[name].partial)
        full = gather(res.data, res.spec, m.g.tensor(name).shape)
        ins.append(Operand(full[None, None], replicated(full.ndim), full.shape, m.host.get(name)))
    outs = [(m.g.tensor(w.tensor).shape, replicated(len(m.g.tensor(w.tensor).shape)))
            for w in step.writes]
    results = KERNELS[op.kind](op, ins, outs, Ctx(1, 1))
    for w, data in _by_output(op, step, results):
        tiles = scatter(np.asarray(data)[0, 0], w.spec, reg.rows, reg.cols)
        _put(m, step, reg.name, w.tensor, w.spec, None, _finish(m, w.tensor, w.spec, reg, tiles))


def _collective(m: _Machine, step: Step, feed: dict[str, np.ndarray]) -> None:
    if step.op_kind == CollectiveKind.RETILE:
        return _retile(m, step)
    reg = m.regions[step.region]
    (read,), (write,) = step.reads, step.writes
    res = _get(m, step, reg.name, read.tensor, read.spec, read.partial)
    if step.op_kind == CollectiveKind.REDUCE:
        if res.partial != step.axis:
            raise _fault(step, f"{read.tensor} holds no partial sums along {step.axis}")
        data = (_reduce_grid(res.data, step) if step.axis == collectives.BOTH
                else _reduce_in_order(res.data, AXIS[step.axis], step))
    elif res.partial:
        raise _fault(step, f"cannot relayout {read.tensor}: it holds partial sums")
    else:
        full = gather(res.data, res.spec, m.g.tensor(read.tensor).shape)
        data = scatter(full, write.spec, reg.rows, reg.cols)
    _put(m, step, reg.name, write.tensor, write.spec, write.partial,
         _finish(m, write.tensor, write.spec, reg, data))


def _reduce_in_order(data: np.ndarray, axis: int, step: Step) -> np.ndarray:
    """The partial sums along `axis` added exactly as the step's collective algorithm combines
    them (`collectives.combines`: which core adds which partial, in what order)."""
    alg = _algorithm(step)
    if not isinstance(alg, collectives.Algorithm):
        raise _fault(step, f"a 2D algorithm ({step.algorithm}) on a reduce along one axis")
    lead = (slice(None),) * axis  # each part a view: only the sums make new arrays
    parts = [data[(*lead, slice(i, i + 1))] for i in range(data.shape[axis])]
    pairs, root = collectives.combines(alg, len(parts))
    for dst, src in pairs:
        parts[dst] = parts[dst] + parts[src]
    return parts[root]


def _reduce_grid(data: np.ndarray, step: Step) -> np.ndarray:
    """Partial sums over both axes (every core holds one: `data` is rows x cols x tile) added
    exactly as the step's 2D form combines them (`collectives.grid_combines`)."""
    alg = _algorithm(step)
    if not isinstance(alg, collectives.Grid):
        raise _fault(step, f"a reduce over both axes needs a 2D algorithm, not "
                           f"{step.algorithm or 'chain'}")
    rows, cols = data.shape[AXIS["r"]], data.shape[AXIS["c"]]
    parts = {(i, j): data[i:i + 1, j:j + 1] for i in range(rows) for j in range(cols)}
    pairs, root = collectives.grid_combines(alg, rows, cols)
    for dst, src in pairs:
        parts[dst] = parts[dst] + parts[src]
    return parts[root]


def _algorithm(step: Step) -> collectives.Algorithm | collectives.Grid:
    try:
        return collectives.parse(step.algorithm)
    except ValueError as exc:
        raise _fault(step, str(exc)) from None


def _send(m: _Machine, step: Step, feed: dict[str, np.ndarray]) -> None:
    (read,), (write,) = step.reads, step.writes
    res = _get(m, step, step.region, read.tensor, read.spec, read.partial)
    if res.partial:
        raise _fault(step, f"{read.tensor} still holds partial sums; reduce before sending")
    dst = m.regions.get(step.dst)
    if dst is None:
        raise _fault(step, f"unknown destination region {step.dst!r}")
    full = gather(res.data, res.spec, m.g.tensor(read.tensor).shape)
    m.result.values[read.tensor] = full
    _put(m, step, dst.name, write.tensor, write.spec, None,
         scatter(full, write.spec, dst.rows, dst.cols))


def _store(m: _Machine, step: Step, feed: dict[str, np.ndarray]) -> None:
    if step.writes:
        _write_back(m, step)
        return
    for ref in step.reads:
        res = _get(m, step, step.region, ref.tensor, ref.spec, ref.partial)
        full = gather(res.data, res.spec, m.g.tensor(ref.tensor).shape)
        m.result.outputs[ref.tensor] = full
        m.result.values[ref.tensor] = full


def _append(m: _Machine, step: Step, feed: dict[str, np.ndarray]) -> None:
    """A decode step's own K/V written into its KV cache at position t, in place: the cache
    keeps its tiles and bytes; the tile of the core holding position t changes."""
    (new_ref, cache_ref), (write,) = step.reads, step.writes
    if write.tensor != cache_ref.tensor or write.spec != cache_ref.spec:
        raise _fault(step, f"an append writes its cache in place, not {write.tensor}")
    reg = m.regions[step.region]
    new = _get(m, step, reg.name, new_ref.tensor, new_ref.spec, new_ref.partial)
    cache = _get(m, step, reg.name, cache_ref.tensor, cache_ref.spec, cache_ref.partial)
    if new.partial or cache.partial:
        raise _fault(step, "cannot append partial sums")
    shape, new_shape = m.g.tensor(cache_ref.tensor).shape, m.g.tensor(new_ref.tensor).shape
    axis = _key_axis(new_shape, shape)
    if axis is None:
        raise _fault(step, f"{new_ref.tensor} {list(new_shape)} is not one position of "
                     f"{cache_ref.tensor} {list(shape)}")
    if not 0 <= m.position < shape[axis]:
        raise CacheOverflow(
            f"KV cache overflow at {_where(step)}: position {m.position} is past the "
            f"{shape[axis]} positions of {cache_ref.tensor}; compile with a larger --context")
    value = _stored(_as_dtype(m.g, cache_ref.tensor, gather(new.data, new.spec, new_shape)),
                    m.target, m.precision)
    key = (reg.name, cache_ref.tensor)
    data = cache.data if key in m.owned else np.array(cache.data, order="C")
    cells, sources, starts = position_cells(shape, cache.spec, reg.rows, reg.cols, axis)
    if data.shape != blocked_shape(shape, cache.spec, reg.rows, reg.cols):
        raise _fault(step, f"{cache_ref.tensor} is held as {list(data.shape)} blocks, not as "
                     f"its layout {_show(cache.spec, None)} on {reg.name}")
    at = slice(starts[m.position], starts[m.position + 1])  # every copy of position t, only
    data.reshape(-1)[cells[at]] = value.reshape(-1)[sources[at]]
    _put(m, step, reg.name, cache_ref.tensor, cache_ref.spec, None, data)
    m.owned.add(key)  # the machine's own copy from now on: later appends write it in place


def _write_back(m: _Machine, step: Step) -> None:
    """A decode step's own K/V written into its off-chip KV cache at position t (a cache that
    streams: its chunks are loaded from there after this step)."""
    (new_ref,), (write,) = step.reads, step.writes
    cache = m.offchip.get(write.tensor)
    if cache is None:
        raise _fault(step, f"{write.tensor} is not a KV cache held off-chip")
    new = _get(m, step, step.region, new_ref.tensor, new_ref.spec, new_ref.partial)
    if new.partial:
        raise _fault(step, "cannot write back partial sums")
    new_shape = m.g.tensor(new_ref.tensor).shape
    axis = _key_axis(new_shape, cache.shape)
    if axis is None:
        raise _fault(step, f"{new_ref.tensor} {list(new_shape)} is not one position of "
                     f"{write.tensor} {list(cache.shape)}")
    if not 0 <= m.position < cache.shape[axis]:
        raise CacheOverflow(
            f"KV cache overflow at {_where(step)}: position {m.position} is past the "
            f"{cache.shape[axis]} positions of {write.tensor}; compile with a larger --context")
    index = tuple(slice(m.position, m.position + 1) if i == axis else slice(None)
                  for i in range(cache.ndim))
    cache[index] = gather(new.data, new.spec, new_shape)


def _cache_write(m: _Machine, step: Step, feed: dict[str, np.ndarray]) -> None:
    """The prompt's K or V into its resident KV cache at positions 0..S-1 (zeros after), in
    the cache's layout on this region: the decode machine starts from these tiles."""
    (src_ref,), (write,) = step.reads, step.writes
    cache = next((c for c in m.s.caches if c.tensor == write.tensor), None)
    if cache is None:
        raise _fault(step, f"{write.tensor} is not a KV cache of this schedule")
    reg = m.regions[step.region]
    src = _get(m, step, reg.name, src_ref.tensor, src_ref.spec, src_ref.partial)
    if src.partial:
        raise _fault(step, "cannot write partial sums into a KV cache")
    shape = m.g.tensor(write.tensor).shape
    value = gather(src.data, src.spec, m.g.tensor(src_ref.tensor).shape)
    if value.shape[cache.axis] > shape[cache.axis]:
        raise CacheOverflow(f"KV cache overflow at {_where(step)}: the prompt's "
                            f"{value.shape[cache.axis]} positions do not fit the "
                            f"{shape[cache.axis]} of {write.tensor}; compile with a larger "
                            "--context")
    whole = np.zeros(shape, np.float32)
    whole[tuple(slice(0, value.shape[cache.axis]) if i == cache.axis else slice(None)
                for i in range(len(shape)))] = value
    _put(m, step, reg.name, write.tensor, write.spec, None,
         _finish(m, write.tensor, write.spec, reg, scatter(whole, write.spec, reg.rows,
                                                            reg.cols)))


def _key_axis(new: tuple[int, ...], cache: tuple[int, ...]) -> int | None:
    if len(new) != len(cache):
        return None
    differ = [i for i, (a, b) in enumerate(zip(new, cache, strict=True)) if a != b]
    if len(differ) == 1 and new[differ[0]] == 1:
        return differ[0]
    ones = [i for i, (a, b) in enumerate(zip(new, cache, strict=True)) if a == b == 1]
    return ones[-1] if not differ and ones else None


_STEP = {StepKind.LOAD: _load, StepKind.COMPUTE: _compute, StepKind.COLLECTIVE: _collective,
         StepKind.SEND: _send, StepKind.WAFER_SEND: _send, StepKind.STORE: _store,
         StepKind.APPEND: _append, StepKind.CACHE_WRITE: _cache_write}
