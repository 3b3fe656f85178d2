"""Greedy generation on the reference executor: prefill, then decode steps whose KV cache stays
in per-core SRAM between steps.

The decode machine runs the decode schedule's setup steps once (resident weights; each KV
cache is the one the prefill schedule's own `cache_write` steps filled, taken over tile for
tile on its region and in its layout, or zeros when the prompt runs through decode steps),
then its token steps once per new token with the machine's `position` at the token's absolute
position: the schedule's own `append` steps write each step's K/V into the resident cache,
and every tile counts against its core's memory as in `run_schedule` (an overflow is a
MemoryOverflow, an append past the cache a CacheOverflow). A KV cache that streams is held
off-chip (`_Machine.offchip`), seeded with the prompt's K/V: the schedule's write-back `store`
puts the step's K/V there at t and its chunk `load`s read it back, each chunk counted in SRAM
from its load to its MatMul.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from compiler import ir
from compiler.executor.kernels import KERNELS, Ctx
from compiler.executor.run import (
    _STEP,
    CacheOverflow,
    ExecResult,
    ScheduleFault,
    _as_dtype,
    _free_dead,
    _last_uses,
    _Machine,
    _put,
    _show,
    _whole,
    host_constants,
    run_schedule,
)
from compiler.schedule.build import Schedule
from compiler.schedule.decode import step_mask
from compiler.schedule.decode_attention import mask_row
from compiler.target import Target
from compiler.tiling.layouts import replicated
from compiler.vocab import Phase, StepKind

StepHook = Callable[[int, int, np.ndarray], None] | None  # (step, position, logits)


@dataclass(frozen=True)
class MaskTables:
    """The feeds that follow an attention mask: the model at seq = context (`big`) evaluated on
    the host from the step's [batch, context] masks and its constants (`consts`), by the
    model's own ops (the mask's expansion into the attention's mask rows)."""

    big: ir.Graph
    consts: Mapping[str, np.ndarray]
    names: frozenset[str]  # the feeds among them

    def __call__(self, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        g, found = self.big, set(masks)
        values = {**self.consts, **{n: _as_dtype(g, n, np.asarray(v)) for n, v in masks.items()}}
        ctx = Ctx(1, 1)
        for op in g.ops:
            ins = [n for n in op.inputs if n]
            if not (any(n in found for n in ins) and all(n in values for n in ins)):
                continue
            operands = [_whole(g, n, values) if n else None for n in op.inputs]
            outs = [o for o in op.outputs if o]
            shapes = [(g.tensor(o).shape, replicated(len(g.tensor(o).shape))) for o in outs]
            for name, arr in zip(outs, KERNELS[op.kind](op, operands, shapes, ctx), strict=True):
                values[name] = _as_dtype(g, name, np.asarray(arr)[0, 0])
            found.update(outs)
        return {n: values[n] for n in self.names}


@dataclass(frozen=True)
class DecodeProgram:
    """What generation runs: both schedules and graphs, which prefill tensors seed which
    caches (name in prefill graph, cache tensor, key axis), the position feeds' tables."""

    prefill: Schedule
    prefill_graph: ir.Graph
    decode: Schedule
    decode_graph: ir.Graph
    caches: tuple[tuple[str, str, int], ...]
    feeds: tuple[tuple[str, tuple[int, ...]], ...]  # (tensor, query axes)
    tables: Mapping[str, np.ndarray]
    token_input: str
    logits: str
    masks: tuple[str, ...] = ()  # attention-mask inputs ([batch, context] per step)
    mask_tables: MaskTables | None = None  # the mask-dependent feeds' tables from the masks
    # caches that stream from off-chip: (cache, chunk tensor, key axis, start, stop) per chunk
    streams: tuple[tuple[str, str, int, int, int], ...] = ()
    # Attention-op decode masks: (feed, left window or -1), a row computed from t each step
    row_masks: tuple[tuple[str, int], ...] = ()


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)  # greedy tokens, first from prefill
    logits: list[np.ndarray] = field(default_factory=list)  # [batch, vocab] per token
    positions: list[int] = field(default_factory=list)  # the position each logits row is at
    peak_bytes: dict[str, int] = field(default_factory=dict)  # decode machine, per region
    values: list[dict[str, np.ndarray]] = field(default_factory=list)  # `keep`, per token


def generate(p: DecodeProgram, target: Target, prompt: Sequence[int], new_tokens: int,
             precision: str = "fp32", hook: StepHook = None,
             keep: frozenset[str] = frozenset(),
             prompt_mask: Sequence[int] | None = None) -> Generation:
    """`new_tokens` greedy tokens after `prompt` (batch 1): the first from prefill (the prefill
    schedule when the prompt has its compiled length, else decode steps over the prompt), the
    rest from one decode step each. `keep`: decode-graph tensors whose whole values each token's
    decode step records (in `Generation.values`; none for a token the prefill schedule made).
    `prompt_mask`: the prompt's attention mask (default all ones); later positions are 1."""
    prompt = [int(x) for x in prompt]
    mask = [1] * len(prompt) if prompt_mask is None else [int(x) for x in prompt_mask]
    context = _context(p)
    if len(prompt) + new_tokens - 1 > context:
        raise CacheOverflow(f"a {len(prompt)}-token prompt and {new_tokens} new tokens need "
                            f"{len(prompt) + new_tokens - 1} cache positions but the KV cache "
                            f"holds {context} (--context); compile with --context >= "
                            f"{len(prompt) + new_tokens - 1}")
    out = Generation(prompt)
    prompt_len = p.prefill_graph.tensor(p.token_input).shape[-1]
    if len(prompt) == prompt_len:
        written, offchip, logits = _prefill(p, target, prompt, precision, mask)
        m = start(p, target, offchip, precision, keep, written)
        _record(out, logits, len(prompt) - 1, hook, {})
    else:
        m = start(p, target, {}, precision, keep)
        for pos, tok in enumerate(prompt):
            logits = step(p, m, tok, pos, mask)
        _record(out, logits, len(prompt) - 1, hook, m.result.values)
    for pos in range(len(prompt), len(prompt) + new_tokens - 1):
        _record(out, step(p, m, out.tokens[-1], pos, mask), pos, hook, m.result.values)
    out.peak_bytes = dict(m.peak)
    return out


def _context(p: DecodeProgram) -> int:
    return p.decode.context


def _record(out: Generation, logits: np.ndarray, pos: int, hook: StepHook,
            values: dict[str, np.ndarray]) -> None:
    out.values.append(dict(values))
    out.logits.append(logits)
    out.positions.append(pos)
    out.tokens.append(int(np.argmax(logits[0])))
    if hook:
        hook(len(out.tokens) - 1, pos, logits)


def _prefill(p: DecodeProgram, target: Target, prompt: list[int], precision: str,
             mask: list[int]) -> tuple[Written, dict[str, np.ndarray], np.ndarray]:
    """The prefill schedule on the prompt: the KV caches its cache_write steps filled (the
    prompt's K/V at 0..S-1, zeros after) as tiles on their regions, the streamed caches' whole
    off-chip values (the prompt's K/V, zeros after), and its last logits."""
    dtype = _int_dtype(p.prefill_graph, p.token_input)
    feed = {p.token_input: np.asarray([prompt], dtype)}
    feed.update({n: np.asarray([mask], _int_dtype(p.prefill_graph, n)) for n in p.masks})
    keep = frozenset(src for src, name, _ in p.caches if name in _streamed(p))
    run = run_schedule(p.prefill, p.prefill_graph, target, feed, precision, keep)
    offchip = {}
    for src, name, axis in p.caches:
        if name not in _streamed(p):
            continue
        value = run.values[src]
        cache = np.zeros(cache_shape(p, name), np.float32)
        cache[tuple(slice(0, value.shape[axis]) if i == axis else slice(None)
                    for i in range(cache.ndim))] = value
        offchip[name] = cache
    return run.caches, offchip, run.outputs[p.logits][:, -1]


Written = Mapping[str, tuple[str, tuple, np.ndarray]]  # cache -> (region, spec, tiles)


def _streamed(p: DecodeProgram) -> set[str]:
    return {cache for cache, *_ in p.streams}


def _int_dtype(g: ir.Graph, name: str) -> np.dtype:
    return np.dtype(g.tensor(name).dtype.value)


def start(p: DecodeProgram, target: Target, caches: Mapping[str, np.ndarray],
          precision: str, keep: frozenset[str] = frozenset(),
          written: Written | None = None) -> _Machine:
    """The decode machine after its setup steps: weights resident, each resident KV cache with
    `caches`' content (zeros where none is given) or, with `written` (what the prefill
    schedule's cache_write steps filled), those very tiles, which must be on the region and in
    the layout the decode schedule holds the cache in (else a ScheduleFault); each streamed
    cache off-chip with `caches`' content."""
    g, s = p.decode_graph, p.decode
    m = _Machine(g, s, target, precision, host_constants(g, target, precision), keep)
    m.ops = {op.name: op for op in g.ops}
    m.regions = {r.name: r for r in s.regions}
    m.last_use = _last_uses(s)
    streamed = _streamed(p)
    m.offchip = {name: np.array(caches.get(name, np.zeros(cache_shape(p, name), np.float32)),
                                np.float32) for name in _cache_names(p) if name in streamed}
    feed = {name: np.asarray(caches.get(name, np.zeros(g.tensor(name).shape, np.float32)))
            for name in _cache_names(p) if name not in streamed}
    names = set(_cache_names(p)) - streamed
    for st in s.steps:
        if st.phase != Phase.SETUP:
            continue
        if written is not None and st.kind == StepKind.LOAD and st.writes[0].tensor in names:
            _take_cache(m, st, written)
        else:
            _STEP[st.kind](m, st, feed)
        _free_dead(m, st)
    return m


def cache_shape(p: DecodeProgram, name: str) -> tuple[int, ...]:
    """A KV cache's shape (a chunked cache is not a tensor of the decode graph: its chunks are)."""
    if name in p.decode_graph.tensor_map:
        return p.decode_graph.tensor(name).shape
    _, chunk, axis, _, _ = next(ch for ch in p.streams if ch[0] == name)
    shape = list(p.decode_graph.tensor(chunk).shape)
    shape[axis] = p.decode.context
    return tuple(shape)


def _take_cache(m: _Machine, st, written: Written) -> None:
    """The decode schedule's cache allocation `st` takes over the tiles the prefill wrote."""
    (ref,) = st.writes
    if ref.tensor not in written:
        raise ScheduleFault(f"schedule fault at decode step {st.id} (load on {st.region}): the "
                            f"prefill schedule wrote no KV cache {ref.tensor} (no cache_write "
                            "step filled it), so decode would read an empty cache")
    region, spec, tiles = written[ref.tensor]
    if region != st.region or spec != ref.spec:
        raise ScheduleFault(f"schedule fault at decode step {st.id} (load on {st.region}): the "
                            f"prefill wrote KV cache {ref.tensor} on {region} as "
                            f"{_show(spec, None)} but the decode schedule holds it on "
                            f"{st.region} as {_show(ref.spec, None)}")
    _put(m, st, region, ref.tensor, spec, None, tiles)
    m.pinned.add((region, ref.tensor))


def _cache_names(p: DecodeProgram) -> list[str]:
    return [name for _, name, _ in p.caches]


def _chunk_feed(p: DecodeProgram, m: _Machine) -> dict[str, np.ndarray]:
    """The streamed caches' chunks as views of the off-chip caches: a load reads the cache as
    it is then (after the step's write-back)."""
    out = {}
    for cache, chunk, axis, a, b in p.streams:
        whole = m.offchip[cache]
        out[chunk] = whole[tuple(slice(a, b) if i == axis else slice(None)
                                 for i in range(whole.ndim))]
    return out


def step(p: DecodeProgram, m: _Machine, token: int, position: int,
         prompt_mask: Sequence[int] = ()) -> np.ndarray:
    """One decode step of `token` at absolute `position` on the decode machine: the logits
    [batch, vocab]. With attention-mask inputs, the step's mask is `prompt_mask` over the
    prompt's positions and 1 up to `position`."""
    g = p.decode_graph
    if not 0 <= position < p.decode.context:
        raise CacheOverflow(f"KV cache overflow: a decode step at position {position} is past "
                            f"the {p.decode.context} positions of the KV cache; compile with a "
                            "larger --context")
    m.position = position
    feed = {p.token_input: np.asarray([[token]], _int_dtype(g, p.token_input))}
    tables = p.tables
    if p.mask_tables is not None:
        mask = step_mask(prompt_mask, position, p.decode.context)
        tables = {**tables, **p.mask_tables({n: mask for n in p.masks})}
    rows = dict(p.row_masks)
    for name, query_axes in p.feeds:
        if name in rows:
            feed[name] = mask_row(p.decode.context, rows[name], position)
            continue
        table = np.asarray(tables[name])
        index = tuple(slice(position, position + 1) if i in query_axes else slice(None)
                      for i in range(table.ndim))
        feed[name] = np.ascontiguousarray(table[index])
    feed.update(_chunk_feed(p, m))
    m.result = ExecResult({}, {}, {})
    with np.errstate(all="ignore"):
        for st in p.decode.steps:
            if st.phase == Phase.SETUP:
                continue
            _STEP[st.kind](m, st, feed)
            _free_dead(m, st)
    return m.result.outputs[p.logits][:, -1]
