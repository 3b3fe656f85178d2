"""Fault injection: seeded random mutations of valid schedules, and which detector catches each.

A mutation is one fault a compiler bug could make: drop a transfer, send to the wrong region,
put tiles on the wrong cores, run a consumer before its producer, overfill a core, corrupt a
weight tile, drop a reduce, run a compute step on the wrong region. Detectors, in order:

- executor: run_schedule raises ScheduleFault / MemoryOverflow (the message should name the
  step, and the tensor or region);
- verify: the outputs no longer match ONNX Runtime (compiler.verify.compare at fp32 tolerances).

A causal LM's prefill also writes the KV caches the decode step starts from (cache_write steps):
a mutation that leaves a cache missing, on another region or in another layout than the decode
schedule holds it is caught as the decode machine refuses it (executor: generate's `start`
raises a ScheduleFault; named here at the cache_write step), one that leaves other values in it
as verify --decode would (the first decode step's logits then differ from ONNX Runtime's).

A mutation that changes nothing physical (identical tiles swapped, a reduce along a mesh axis
one core wide, a relayout between specs that put the same tiles on the same cores) is a no-op:
it is reported with its reason and left out of the catch rate, whatever the detectors say.

Run: .venv/bin/python benchmarks/fault_injection.py  (writes the `fault_injection` section of
docs/performance.md). tests/test_faults.py imports this module.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from _harness import machine, table, write_section

from compiler import ir
from compiler.driver import CompileResult, compile_model
from compiler.executor import ScheduleFault, run_schedule
from compiler.schedule.build import FIXED, Schedule, Step, TensorRef, with_caches
from compiler.target import Target
from compiler.tiling.layouts import Spec, replicated
from compiler.tiling.tiles import gather, scatter, valid_mask
from compiler.verify import DEFAULT_TOLERANCES, compare, missing_check, random_inputs, run_reference
from compiler.vocab import Phase

CASES = (("gpt2-tiny", "mesh8x8"), ("llama-tiny", "mesh8x8"), ("gpt2-tiny", "mesh8x8-x2"))
ATOL, RTOL = DEFAULT_TOLERANCES["float32"]
EXECUTOR, VERIFY, MISSED, CRASH = "executor", "verify", "missed", "crash"
TRANSFERS = frozenset({"load", "send", "wafer_send", "store"})
CORRUPTION = 0.05  # std of the noise added to a corrupted tile


# --- cases and mutations -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A compiled model with seeded inputs and ONNX Runtime's outputs for them."""

    name: str
    result: CompileResult
    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    peak: dict[str, int]  # per region: the fullest core's peak bytes on the valid schedule
    caches: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # valid, whole

    @property
    def schedule(self) -> Schedule:
        return self.result.schedule

    @property
    def graph(self) -> ir.Graph:
        """The model's graph with the KV caches its prefill writes (cache_write steps)."""
        return with_caches(self.result.graph, self.result.schedule)

    @property
    def target(self) -> Target:
        return self.result.target


def load_case(model: str, target: str, seed: int = 0) -> Case:
    """Compile, and check that the valid schedule matches ORT (else no mutation means much)."""
    r = compile_model(model, target)
    inputs = random_inputs(r.graph, seed)
    reference = run_reference(model, inputs)
    run = run_schedule(r.schedule, r.graph, r.target, inputs)
    bad = [c.line() for c in _checks(r.graph, run.outputs, reference) if not c.passed]
    if bad:
        raise AssertionError(f"{model} on {target} fails before any mutation: {bad[0]}")
    return Case(f"{model}/{target}", r, inputs, reference, dict(run.peak_bytes),
                _whole_caches(with_caches(r.graph, r.schedule), run.caches))


def _whole_caches(g: ir.Graph, written) -> dict[str, np.ndarray]:
    return {name: gather(tiles, spec, g.tensor(name).shape)
            for name, (_, spec, tiles) in written.items()}


@dataclass(frozen=True)
class Mutation:
    kind: str
    variant: str
    detail: str
    schedule: Schedule
    graph: ir.Graph
    target: Target
    tensor: str = ""  # what the mutation touched, as a message should name it
    region: str = ""
    noop: str = ""  # why the mutation changes nothing physical (then it is not counted)


def _mutation(case: Case, kind: str, variant: str, detail: str, **kw) -> Mutation:
    kw.setdefault("schedule", case.schedule)
    kw.setdefault("graph", case.graph)
    kw.setdefault("target", case.target)
    return Mutation(kind, variant, detail, **kw)


def with_steps(s: Schedule, steps: list[Step]) -> Schedule:
    """Steps renumbered by position; deps follow their steps, deps on dropped steps vanish."""
    ids = {st.id: i for i, st in enumerate(steps)}
    renumbered = [dataclasses.replace(st, id=i, deps=tuple(ids[d] for d in st.deps if d in ids))
                  for i, st in enumerate(steps)]
    return dataclasses.replace(s, steps=tuple(renumbered))


def _size(case: Case, region: str, axis: str) -> int:
    reg = case.schedule.region(region)
    return reg.rows if axis == "r" else reg.cols


def same_placement(shape: tuple[int, ...], a: Spec, b: Spec, rows: int, cols: int) -> bool:
    """Whether specs `a` and `b` put the same elements on every core of a rows x cols region."""
    index = np.arange(1, math.prod(shape) + 1).reshape(shape)
    ta, tb = scatter(index, a, rows, cols), scatter(index, b, rows, cols)
    if ta.shape[2:] != tb.shape[2:]:
        return False
    full = (rows, cols, *ta.shape[2:])
    return bool(np.array_equal(np.broadcast_to(ta, full), np.broadcast_to(tb, full)))


def collective_noop(case: Case, step: Step) -> str:
    """Why a reduce or relayout moves no data on its region ("" when it does)."""
    reg = case.schedule.region(step.region)
    if step.op_kind == "reduce" and _size(case, step.region, step.axis) == 1:
        return (f"step {step.id} reduces {step.reads[0].tensor} along {step.axis}, one core wide "
                f"on {reg.name} ({reg.rows}x{reg.cols}): the partial sums are already complete")
    if step.op_kind == "relayout":
        (read,), (write,) = step.reads, step.writes
        shape = case.graph.tensor(read.tensor).shape
        if not read.partial and same_placement(shape, read.spec, write.spec, reg.rows, reg.cols):
            return (f"step {step.id} relayouts {read.tensor} between specs that put the same "
                    f"tiles on the same cores of {reg.name} ({reg.rows}x{reg.cols})")
    return ""


# --- schedule mutations ------------------------------------------------------------------------


def drop_transfer(case: Case, step_id: int) -> Mutation:
    step = case.schedule.steps[step_id]
    steps = [s for s in case.schedule.steps if s.id != step_id]
    tensor = (step.writes or step.reads)[0].tensor
    noop = collective_noop(case, step) if step.kind == "collective" else ""
    return _mutation(case, "drop_transfer", step.kind if step.kind != "collective" else
                     step.op_kind, f"drop step {step_id} ({step.kind} {tensor})",
                     schedule=with_steps(case.schedule, steps), tensor=tensor,
                     region=step.dst or step.region, noop=noop)


def wrong_dst(case: Case, step_id: int, dst: str) -> Mutation:
    steps = list(case.schedule.steps)
    step = steps[step_id]
    steps[step_id] = dataclasses.replace(step, dst=dst)
    return _mutation(case, "wrong_dst", step.kind,
                     f"step {step_id} sends {step.reads[0].tensor} to {dst}, not {step.dst}",
                     schedule=with_steps(case.schedule, steps), tensor=step.reads[0].tensor,
                     region=step.dst)


def swap_mesh_axes(case: Case, step_id: int, write: int = 0) -> Mutation:
    """Tiles on the wrong cores: a step writes a tensor split over the other mesh axis."""
    steps = list(case.schedule.steps)
    step = steps[step_id]
    ref = step.writes[write]
    spec = tuple({"r": "c", "c": "r"}.get(a) if a else a for a in ref.spec)
    writes = list(step.writes)
    writes[write] = dataclasses.replace(ref, spec=spec)
    steps[step_id] = dataclasses.replace(step, writes=tuple(writes))
    reg = case.schedule.region(step.dst or step.region)
    shape = case.graph.tensor(ref.tensor).shape
    same = same_placement(shape, ref.spec, spec, reg.rows, reg.cols)
    noop = (f"{_spec(ref.spec)} and {_spec(spec)} put the same tiles on the same cores of "
            f"{reg.name} ({reg.rows}x{reg.cols})") if same else ""
    return _mutation(case, "swap_tiles", "mesh_axes",
                     f"step {step_id} writes {ref.tensor} as {_spec(spec)}, not {_spec(ref.spec)}",
                     schedule=with_steps(case.schedule, steps), tensor=ref.tensor,
                     region=reg.name, noop=noop)


def reorder(case: Case, step_id: int, dep: int) -> Mutation:
    """Move step `step_id` to just before `dep`, one of its producers."""
    steps = list(case.schedule.steps)
    step = steps[step_id]
    order = steps[:dep] + [step] + [s for s in steps[dep:] if s.id != step_id]
    skipped = [steps[d] for d in step.deps if d >= dep]
    reasons = [collective_noop(case, s) if s.kind == "collective" else "" for s in skipped]
    noop = "; ".join(reasons) if all(reasons) else ""
    made = {w.tensor for s in skipped for w in s.writes}
    read = next((r.tensor for r in step.reads if r.tensor in made), step.reads[0].tensor)
    return _mutation(case, "reorder", "before_producer",
                     f"step {step_id} ({_what(step)}) moved before its producer step {dep} "
                     f"({_what(steps[dep])})",
                     schedule=with_steps(case.schedule, order), tensor=read,
                     region=step.region, noop=noop)


def drop_reduce(case: Case, step_id: int, mark_complete: bool = False) -> Mutation:
    """Partial sums never reduced: the reduce step is dropped; with `mark_complete` its
    producer also claims to write complete values (so no bookkeeping can notice)."""
    step = case.schedule.steps[step_id]
    tensor = step.reads[0].tensor
    steps = [s for s in case.schedule.steps if s.id != step_id]
    if mark_complete:
        steps = [_complete(s, tensor) if s.id in step.deps else s for s in steps]
    return _mutation(case, "drop_reduce", "mark_complete" if mark_complete else "drop",
                     f"drop step {step_id} (reduce {tensor} along {step.axis})" +
                     (", producer marked complete" if mark_complete else ""),
                     schedule=with_steps(case.schedule, steps), tensor=tensor,
                     region=step.region, noop=collective_noop(case, step))


def _complete(step: Step, tensor: str) -> Step:
    writes = tuple(dataclasses.replace(w, partial=None) if w.tensor == tensor else w
                   for w in step.writes)
    return dataclasses.replace(step, writes=writes)


def wrong_region(case: Case, step_id: int, region: str) -> Mutation:
    steps = list(case.schedule.steps)
    step = steps[step_id]
    steps[step_id] = dataclasses.replace(step, region=region)
    return _mutation(case, "wrong_region", "compute",
                     f"step {step_id} ({step.op_kind}) runs on {region}, not {step.region}",
                     schedule=with_steps(case.schedule, steps),
                     tensor=step.writes[0].tensor, region=region)


# --- memory ------------------------------------------------------------------------------------


def shrink_sram(case: Case, region: str, fraction: float) -> Mutation:
    """The schedule was made for a bigger core: usable SRAM cut below `region`'s peak."""
    usable = max(1, int(case.peak[region] * fraction))
    core = dataclasses.replace(case.target.core, sram_bytes=case.target.core.reserve_bytes +
                               usable)
    return _mutation(case, "overfill", "shrink_sram",
                     f"usable SRAM {usable:,} B per core, {region} peaks at "
                     f"{case.peak[region]:,} B",
                     target=dataclasses.replace(case.target, core=core))


def extra_load(case: Case, tensor: str, region: str, position: int) -> Mutation:
    """A setup load of a whole (replicated) weight onto `region`, before its first step."""
    t = case.graph.tensor(tensor)
    spec = replicated(len(t.shape))
    step = Step(id=-1, kind="load", region=region, writes=(TensorRef(tensor, spec),),
                phase=Phase.SETUP, nbytes=case.target.tensor_bytes(t), scaling=FIXED)
    steps = list(case.schedule.steps)
    steps.insert(position, step)
    extra = case.target.tensor_bytes(t)
    headroom = case.target.usable_bytes_per_core - case.peak[region]
    noop = (f"the extra {extra:,} B fit in {region}'s {headroom:,} B of headroom"
            if extra <= headroom else "")
    return _mutation(case, "overfill", "extra_load",
                     f"load all of {tensor} ({extra:,} B) onto every core of {region} "
                     f"(headroom {headroom:,} B)", schedule=with_steps(case.schedule, steps),
                     tensor=tensor, region=region, noop=noop)


# --- data: tiles of one weight as one region holds them ----------------------------------------


def _tiles(case: Case, step_id: int) -> tuple[ir.Tensor, Spec, int, int, np.ndarray]:
    step = case.schedule.steps[step_id]
    ref = step.writes[0]
    t = case.graph.tensor(ref.tensor)
    reg = case.schedule.region(step.region)
    return t, ref.spec, reg.rows, reg.cols, scatter(np.asarray(t.data), ref.spec, reg.rows,
                                                     reg.cols)


def _with_data(graph: ir.Graph, name: str, data: np.ndarray) -> ir.Graph:
    """The graph with new data for one weight: every region loading it sees the change (a tied
    weight, e.g. GPT-2's embedding reused by the LM head, changes in both places)."""
    tensors = tuple(dataclasses.replace(t, data=data) if t.name == name else t
                    for t in graph.tensors)
    return dataclasses.replace(graph, tensors=tensors)


def swap_core_tiles(case: Case, step_id: int, a: int, b: int) -> Mutation:
    """Tiles on the wrong cores: the weight a load brings lands with cores a and b (flat
    indices into the region's blocked array) holding each other's tiles."""
    t, spec, rows, cols, blocked = _tiles(case, step_id)
    flat = blocked.reshape(-1, *blocked.shape[2:]).copy()
    flat[[a, b]] = flat[[b, a]]
    data = gather(flat.reshape(blocked.shape), spec, t.shape)
    noop = "" if not np.array_equal(data, t.data) else (
        f"tiles {a} and {b} of {t.name} hold identical data")
    region = case.schedule.steps[step_id].region
    return _mutation(case, "swap_tiles", "core_tiles",
                     f"{t.name} on {region} ({rows}x{cols}, {_spec(spec)}): tiles {a} <-> {b}",
                     graph=_with_data(case.graph, t.name, data), tensor=t.name, region=region,
                     noop=noop)


def corrupt_tile(case: Case, step_id: int, tile: int, seed: int) -> Mutation:
    """Noise on every element of one core's tile of the weight a load brings."""
    t, spec, rows, cols, blocked = _tiles(case, step_id)
    flat = blocked.reshape(-1, *blocked.shape[2:]).copy()
    mask = valid_mask(t.shape, spec, rows, cols)
    valid = (np.ones(flat.shape[1:], bool) if mask is None else
             np.broadcast_to(mask, blocked.shape).reshape(flat.shape)[tile])
    noise = np.random.default_rng(seed).normal(0.0, CORRUPTION, flat.shape[1:])
    flat[tile] += np.where(valid, noise, 0.0).astype(flat.dtype)
    data = gather(flat.reshape(blocked.shape), spec, t.shape)
    noop = "" if valid.any() else f"tile {tile} of {t.name} is all padding"
    region = case.schedule.steps[step_id].region
    return _mutation(case, "corrupt_weight", "tile",
                     f"{t.name} on {region} ({rows}x{cols}, {_spec(spec)}): noise on tile {tile}",
                     graph=_with_data(case.graph, t.name, data), tensor=t.name, region=region,
                     noop=noop)


def _what(step: Step) -> str:
    return f"{step.kind} {step.op_kind or (step.writes or step.reads)[0].tensor}"


def _spec(spec: Spec) -> str:
    return "[" + ",".join(a or "-" for a in spec) + "]"


# --- random choices ----------------------------------------------------------------------------


def _ids(case: Case, keep: Callable[[Step], bool]) -> list[int]:
    return [s.id for s in case.schedule.steps if keep(s)]


def _other_region(case: Case, rng: np.random.Generator, *exclude: str) -> str:
    names = [r.name for r in case.schedule.regions if r.name not in exclude]
    return str(rng.choice(names))


def _weight_loads(case: Case, min_tiles: int = 1) -> list[int]:
    weights = {t.name for t in _float_weights(case)}

    def keep(s: Step) -> bool:
        if s.kind != "load" or s.writes[0].tensor not in weights:
            return False
        blocked = _tiles(case, s.id)[4]
        return blocked.shape[0] * blocked.shape[1] >= min_tiles
    return _ids(case, keep)


def _random_drop(case: Case, rng: np.random.Generator) -> Mutation:
    ids = _ids(case, lambda s: s.kind in TRANSFERS or s.op_kind == "relayout")
    return drop_transfer(case, int(rng.choice(ids)))


def _random_wrong_dst(case: Case, rng: np.random.Generator) -> Mutation:
    i = int(rng.choice(_ids(case, lambda s: s.kind in ("send", "wafer_send"))))
    step = case.schedule.steps[i]
    return wrong_dst(case, i, _other_region(case, rng, step.region, step.dst))


def _random_mesh_axes(case: Case, rng: np.random.Generator) -> Mutation:
    refs = [(s.id, k) for s in case.schedule.steps for k, w in enumerate(s.writes)
            if any(w.spec)]
    i, k = refs[int(rng.integers(len(refs)))]
    return swap_mesh_axes(case, i, k)


def _random_core_tiles(case: Case, rng: np.random.Generator) -> Mutation:
    i = int(rng.choice(_weight_loads(case, min_tiles=2)))
    blocked = _tiles(case, i)[4]
    a, b = rng.choice(blocked.shape[0] * blocked.shape[1], size=2, replace=False)
    return swap_core_tiles(case, i, int(a), int(b))


def _random_reorder(case: Case, rng: np.random.Generator) -> Mutation:
    i = int(rng.choice(_ids(case, lambda s: bool(s.deps))))
    return reorder(case, i, int(rng.choice(case.schedule.steps[i].deps)))


def _random_shrink(case: Case, rng: np.random.Generator) -> Mutation:
    return shrink_sram(case, _other_region(case, rng), float(rng.uniform(0.3, 0.95)))


def _random_extra_load(case: Case, rng: np.random.Generator) -> Mutation:
    """A weight too big for the headroom of a region that does not hold it (the largest
    weight, recognised as a no-op, when no region has one)."""
    options = _overfills(case)
    if options:
        region, names = options[int(rng.integers(len(options)))]
        tensor = str(rng.choice(names))
    else:
        region = _other_region(case, rng)
        tensor = max(_float_weights(case), key=lambda t: t.numel).name
    first = next(s.id for s in case.schedule.steps if s.region == region)
    return extra_load(case, tensor, region, int(rng.integers(first + 1)))


def _float_weights(case: Case) -> list[ir.Tensor]:
    return [t for t in case.graph.tensors if t.kind is ir.TensorKind.WEIGHT and t.dtype.is_float]


def _overfills(case: Case) -> list[tuple[str, list[str]]]:
    """Per region, the weights it does not hold whose whole size exceeds its headroom."""
    out = []
    for r in case.schedule.regions:
        headroom = case.target.usable_bytes_per_core - case.peak[r.name]
        held = {w.tensor for s in case.schedule.steps if s.region == r.name for w in s.writes}
        names = [t.name for t in _float_weights(case)
                 if t.name not in held and case.target.tensor_bytes(t) > headroom]
        if names:
            out.append((r.name, names))
    return out


def _random_corrupt(case: Case, rng: np.random.Generator) -> Mutation:
    i = int(rng.choice(_weight_loads(case)))
    blocked = _tiles(case, i)[4]
    tile = int(rng.integers(blocked.shape[0] * blocked.shape[1]))
    return corrupt_tile(case, i, tile, int(rng.integers(2**31)))


def _random_reduce(mark: bool) -> Callable[[Case, np.random.Generator], Mutation]:
    def make(case: Case, rng: np.random.Generator) -> Mutation:
        i = int(rng.choice(_ids(case, lambda s: s.op_kind == "reduce")))
        return drop_reduce(case, i, mark_complete=mark)
    return make


def _random_region(case: Case, rng: np.random.Generator) -> Mutation:
    i = int(rng.choice(_ids(case, lambda s: s.kind == "compute")))
    return wrong_region(case, i, _other_region(case, rng, case.schedule.steps[i].region))


RandomMutator = Callable[[Case, np.random.Generator], Mutation]
VARIANTS: dict[str, dict[str, RandomMutator]] = {
    "drop_transfer": {"step": _random_drop},
    "wrong_dst": {"send": _random_wrong_dst},
    "swap_tiles": {"mesh_axes": _random_mesh_axes, "core_tiles": _random_core_tiles},
    "reorder": {"before_producer": _random_reorder},
    "overfill": {"shrink_sram": _random_shrink, "extra_load": _random_extra_load},
    "corrupt_weight": {"tile": _random_corrupt},
    "drop_reduce": {"drop": _random_reduce(False), "mark_complete": _random_reduce(True)},
    "wrong_region": {"compute": _random_region},
}
KINDS = tuple(VARIANTS)


def random_mutation(case: Case, kind: str, rng: np.random.Generator,
                    variant: str | None = None) -> Mutation:
    variants = VARIANTS[kind]
    name = variant or str(rng.choice(sorted(variants)))
    return variants[name](case, rng)


# --- detection ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    case: str
    mutation: Mutation
    detector: str  # executor | verify | missed | crash
    message: str
    clear: bool  # an executor message names a real step of the mutated schedule, its region
    names_tensor: bool = False  # ... and, after that, a tensor of the graph
    error: str = ""  # the exception the executor raised (ScheduleFault, MemoryOverflow, ...)

    @property
    def counted(self) -> bool:
        return not self.mutation.noop

    @property
    def caught(self) -> bool:
        return self.counted and self.detector in (EXECUTOR, VERIFY)


_AT_STEP = re.compile(r"at step (\d+) \((.*?) on (\S+)\): (.*)", re.S)


def names_step(message: str, m: Mutation) -> tuple[bool, bool]:
    """Whether the message names a step of the mutated schedule with that step's region, and
    whether what it says of the step names a tensor of the graph."""
    found = _AT_STEP.search(message)
    if not found or int(found[1]) >= len(m.schedule.steps):
        return False, False
    if m.schedule.steps[int(found[1])].region != found[3]:
        return False, False
    return True, any(t.name in found[4] for t in m.graph.tensors)


def _checks(graph: ir.Graph, got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]):
    for name in graph.outputs:
        if name not in got:
            yield missing_check(name, graph.tensor(name).shape, ATOL, RTOL,
                                "the executor did not produce it")
        else:
            yield compare(name, got[name], ref[name], ATOL, RTOL)


def detect(case: Case, m: Mutation) -> Outcome:
    try:
        with np.errstate(all="ignore"):
            run = run_schedule(m.schedule, m.graph, m.target, case.inputs)
    except ScheduleFault as exc:  # MemoryOverflow too
        return Outcome(case.name, m, EXECUTOR, str(exc), *names_step(str(exc), m),
                       error=type(exc).__name__)
    except Exception as exc:  # a mutation the executor does not report cleanly
        return Outcome(case.name, m, CRASH, str(exc), False, error=type(exc).__name__)
    failed = [c for c in _checks(case.graph, run.outputs, case.reference) if not c.passed]
    if failed:
        return Outcome(case.name, m, VERIFY, failed[0].line(), True)
    return _cache_outcome(case, m, run.caches) or Outcome(
        case.name, m, MISSED, "outputs match ONNX Runtime", False)


def _cache_outcome(case: Case, m: Mutation, written) -> Outcome | None:
    """What decode does with the caches the mutated prefill left (it starts from them)."""
    dec = case.result.decode
    if dec is None:
        return None
    held = {w.tensor: (st.region, w.spec) for st in dec.schedule.steps
            if st.kind == "load" for w in st.writes if w.tensor in case.caches}
    for name, (region, spec) in held.items():
        writer = next((st for st in m.schedule.steps if st.kind == "cache_write"
                       and any(w.tensor == name for w in st.writes)), None)
        where = f" at step {writer.id} (cache_write on {writer.region})" if writer else ""
        got = written.get(name)
        if got is None or got[:2] != (region, spec):
            left = "nothing" if got is None else f"it on {got[0]} as {list(got[1])}"
            msg = (f"schedule fault{where}: the decode schedule holds KV cache {name} on "
                   f"{region} as {list(spec)} but the prefill left {left}")
            return Outcome(case.name, m, EXECUTOR, msg, *names_step(msg, m))
        whole = gather(got[2], got[1], case.caches[name].shape)
        if not np.allclose(whole, case.caches[name], atol=ATOL, rtol=RTOL):
            return Outcome(case.name, m, VERIFY, f"KV cache {name} holds other values than "
                           "the valid prefill's: the first decode step's logits differ", True)
    return None


def run_batch(cases: list[Case], count: int, seed: int) -> list[Outcome]:
    """`count` mutations: kinds in turn (equal shares), case and everything else at random."""
    rng = np.random.default_rng(seed)
    outcomes = []
    for i in range(count):
        case = cases[int(rng.integers(len(cases)))]
        outcomes.append(detect(case, random_mutation(case, KINDS[i % len(KINDS)], rng)))
    return outcomes


# --- report ------------------------------------------------------------------------------------


@dataclass
class Tally:
    total: int = 0
    noop: int = 0
    executor: int = 0
    verify: int = 0
    missed: int = 0
    crash: int = 0
    unclear: int = 0  # executor messages naming no step (with its region)
    no_tensor: int = 0  # executor messages naming the step and region but no tensor

    def add(self, o: Outcome) -> None:
        self.total += 1
        if not o.counted:
            self.noop += 1
            return
        setattr(self, o.detector, getattr(self, o.detector) + 1)
        if o.detector == EXECUTOR:
            self.unclear += not o.clear
            self.no_tensor += o.clear and not o.names_tensor

    @property
    def counted(self) -> int:
        return self.total - self.noop

    @property
    def caught(self) -> int:
        return self.executor + self.verify

    def rate(self) -> str:
        return f"{100 * self.caught / self.counted:.0f}%" if self.counted else "-"


def tally(outcomes: list[Outcome]) -> dict[str, Tally]:
    """Per kind (in KINDS order), then "all"."""
    out = {k: Tally() for k in (*KINDS, "all")}
    for o in outcomes:
        out[o.mutation.kind].add(o)
        out["all"].add(o)
    return {k: v for k, v in out.items() if v.total}


def _rows(t: dict[str, Tally]) -> list[list[object]]:
    return [[k, v.total, v.noop, v.counted, v.executor, v.verify, v.missed + v.crash, v.rate()]
            for k, v in t.items()]


HEADER = ["kind", "mutations", "no-ops", "counted", "executor", "verify", "missed", "caught"]


def _examples(outcomes: list[Outcome]) -> list[str]:
    seen, lines = set(), []
    for o in outcomes:
        key = (o.mutation.kind, o.mutation.variant)
        if key not in seen and o.caught:
            seen.add(key)
            lines.append(f"- {key[0]}/{key[1]} ({o.detector}): {o.mutation.detail} -> "
                         f"`{_short(o.message)}`")
    return lines


def _short(text: str, n: int = 170) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= n else text[:n - 3] + "..."


def _noops(outcomes: list[Outcome]) -> list[str]:
    """One line per variant: how many, how many the executor flags anyway, an example."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        if not o.counted:
            groups.setdefault((o.mutation.kind, o.mutation.variant), []).append(o)
    return [f"- {kind}/{variant}: {len(group)} (the executor flags "
            f"{sum(o.detector == EXECUTOR for o in group)} anyway), e.g. on {group[0].case}: "
            f"{group[0].mutation.noop}" for (kind, variant), group in groups.items()]


def _missed(outcomes: list[Outcome]) -> list[str]:
    return [f"- {o.mutation.kind}/{o.mutation.variant} on {o.case}: {o.mutation.detail} "
            f"({o.detector}: {o.error + ': ' if o.error else ''}{_short(o.message)})"
            for o in outcomes if o.counted and not o.caught]


def main(count: int = 240, seed: int = 0) -> None:
    t0 = time.perf_counter()
    cases = [load_case(m, t) for m, t in CASES]
    outcomes = run_batch(cases, count, seed)
    seconds = time.perf_counter() - t0
    for o in outcomes:
        flag = "no-op" if not o.counted else o.detector
        print(f"{o.case:22s} {o.mutation.kind:15s} {flag:8s} {_short(o.mutation.detail, 90)}")
    t = tally(outcomes)
    print(table(HEADER, _rows(t)))
    print(f"catch rate {t['all'].rate()} of {t['all'].counted} counted mutations "
          f"({t['all'].noop} no-ops excluded), {seconds:.1f} s")
    write_section("fault_injection", _section(cases, outcomes, t, seed, seconds))


def _section(cases: list[Case], outcomes: list[Outcome], t: dict[str, Tally], seed: int,
             seconds: float) -> str:
    a = t["all"]
    parts = [
        f"{a.total} seeded random mutations (seed {seed}; kinds in turn, case and the rest at "
        f"random) of valid schedules of {', '.join(c.name for c in cases)}. Detectors: the "
        f"executor (ScheduleFault / MemoryOverflow) or verify (outputs differ from ONNX Runtime "
        f"at atol {ATOL:g}, rtol {RTOL:g}). **Catch rate {a.rate()}** ({a.caught} of "
        f"{a.counted} counted mutations; {a.noop} no-ops excluded). Executor messages: "
        f"{a.executor - a.unclear} of {a.executor} name the step and its region, "
        f"{a.executor - a.unclear - a.no_tensor} also the tensor. {seconds:.1f} s "
        f"({machine()}); `.venv/bin/python benchmarks/fault_injection.py`.",
        table(HEADER, _rows(t)), "One caught example per variant:", "\n".join(_examples(outcomes)),
    ]
    for title, lines in (("Executor messages naming no tensor:", _vague(outcomes)),
                         ("No-ops (nothing physical changes; not counted):", _noops(outcomes)),
                         ("Not caught:", _missed(outcomes))):
        parts += [title, "\n".join(lines)] if lines else []
    if not a.missed + a.crash:
        parts.append("Not caught: none.")
    return "\n\n".join(parts)


def _vague(outcomes: list[Outcome]) -> list[str]:
    return [f"- {o.mutation.kind}/{o.mutation.variant} on {o.case}: `{_short(o.message)}`"
            for o in outcomes if o.counted and o.detector == EXECUTOR and not o.names_tensor]


if __name__ == "__main__":
    main()
