"""Greedy generation on the reference executor: prefill, then decode steps whose KV cache stays
in per-core SRAM between steps.

The decode machine runs the decode schedule's setup steps once (resident weights and the KV
cache, loaded with what prefill wrote), then its token steps once per new token with the
machine's `position` at the token's absolute position: the schedule's own `append` steps
write each step's K/V into the resident cache, and every tile counts against its core's
memory as in `run_schedule` (an overflow is a MemoryOverflow, an append past the cache a
CacheOverflow).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from compiler import ir
from compiler.executor.run import (
    _STEP,
    CacheOverflow,
    ExecResult,
    ScheduleFault,
    _free_dead,
    _last_uses,
    _Machine,
    host_constants,
    run_schedule,
)
from compiler.schedule.build import Schedule
from compiler.target import Target
from compiler.vocab import Phase, StepKind

StepHook = Callable[[int, int, np.ndarray], None] | None  # (step, position, logits)


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
             keep: frozenset[str] = frozenset()) -> Generation:
    """`new_tokens` greedy tokens after `prompt` (batch 1): the first from prefill (the prefill
    schedule when the prompt has its compiled length, else decode steps over the prompt), the
    rest from one decode step each. `keep`: decode-graph tensors whose whole values each token's
    decode step records (in `Generation.values`; none for a token the prefill schedule made)."""
    prompt = [int(x) for x in prompt]
    context = _context(p)
    if len(prompt) + new_tokens - 1 > context:
        raise CacheOverflow(f"a {len(prompt)}-token prompt and {new_tokens} new tokens need "
                            f"{len(prompt) + new_tokens - 1} cache positions but the KV cache "
                            f"holds {context} (--context); compile with --context >= "
                            f"{len(prompt) + new_tokens - 1}")
    out = Generation(prompt)
    prompt_len = p.prefill_graph.tensor(p.token_input).shape[-1]
    if len(prompt) == prompt_len:
        caches, logits = _prefill(p, target, prompt, precision)
        m = start(p, target, caches, precision, keep)
        _record(out, logits, len(prompt) - 1, hook, {})
    else:
        m = start(p, target, {}, precision, keep)
        for pos, tok in enumerate(prompt):
            logits = step(p, m, tok, pos)
        _record(out, logits, len(prompt) - 1, hook, m.result.values)
    for pos in range(len(prompt), len(prompt) + new_tokens - 1):
        _record(out, step(p, m, out.tokens[-1], pos), pos, hook, m.result.values)
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


def _prefill(p: DecodeProgram, target: Target, prompt: list[int],
             precision: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The prefill schedule on the prompt: its last logits, and every cache's content (the
    K/V the prompt wrote, zero past it)."""
    dtype = _int_dtype(p.prefill_graph, p.token_input)
    ids = np.asarray([prompt], dtype)
    keep = frozenset(src for src, _, _ in p.caches)
    run = run_schedule(p.prefill, p.prefill_graph, target, {p.token_input: ids}, precision,
                       keep)
    caches = {}
    for src, name, axis in p.caches:
        value = run.values[src]
        cache = np.zeros(p.decode_graph.tensor(name).shape, np.float32)
        index = tuple(slice(0, value.shape[axis]) if i == axis else slice(None)
                      for i in range(cache.ndim))
        cache[index] = value
        caches[name] = cache
    return caches, run.outputs[p.logits][:, -1]


def _int_dtype(g: ir.Graph, name: str) -> np.dtype:
    return np.dtype(g.tensor(name).dtype.value)


def start(p: DecodeProgram, target: Target, caches: Mapping[str, np.ndarray],
          precision: str, keep: frozenset[str] = frozenset()) -> _Machine:
    """The decode machine after its setup steps: weights resident, each KV cache resident with
    `caches`' content (zeros where none is given)."""
    g, s = p.decode_graph, p.decode
    streamed = [st for st in s.steps if st.kind == StepKind.LOAD and st.phase != Phase.SETUP
                and any(w.tensor in _cache_names(p) for w in st.writes)]
    if streamed:
        raise ScheduleFault(f"{s.model}: the KV cache of {streamed[0].region} streams from "
                            "off-chip; the executor holds a KV cache in SRAM only")
    m = _Machine(g, s, target, precision, host_constants(g, target, precision), keep)
    m.ops = {op.name: op for op in g.ops}
    m.regions = {r.name: r for r in s.regions}
    m.last_use = _last_uses(s)
    feed = {name: np.asarray(caches.get(name, np.zeros(g.tensor(name).shape, np.float32)))
            for name in _cache_names(p)}
    for st in s.steps:
        if st.phase == Phase.SETUP:
            _STEP[st.kind](m, st, feed)
            _free_dead(m, st)
    return m


def _cache_names(p: DecodeProgram) -> list[str]:
    return [name for _, name, _ in p.caches]


def step(p: DecodeProgram, m: _Machine, token: int, position: int) -> np.ndarray:
    """One decode step of `token` at absolute `position` on the decode machine: the logits
    [batch, vocab]."""
    g = p.decode_graph
    if not 0 <= position < p.decode.context:
        raise CacheOverflow(f"KV cache overflow: a decode step at position {position} is past "
                            f"the {p.decode.context} positions of the KV cache; compile with a "
                            "larger --context")
    m.position = position
    feed = {p.token_input: np.asarray([[token]], _int_dtype(g, p.token_input))}
    for name, query_axes in p.feeds:
        table = np.asarray(p.tables[name])
        index = tuple(slice(position, position + 1) if i in query_axes else slice(None)
                      for i in range(table.ndim))
        feed[name] = np.ascontiguousarray(table[index])
    m.result = ExecResult({}, {}, {})
    with np.errstate(all="ignore"):
        for st in p.decode.steps:
            if st.phase == Phase.SETUP:
                continue
            _STEP[st.kind](m, st, feed)
            _free_dead(m, st)
    return m.result.outputs[p.logits][:, -1]
