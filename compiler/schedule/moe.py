"""Decode speed of mixture-of-experts models: k of E experts per token, not all of them.

The schedule runs every expert group (each its own region) on every token, as a dense model
would; a real MoE token visits k experts. This module re-times the decode step
(`perf.timeline`) under routing scenarios, changing only the expert groups' steps:

- a group no token visits costs nothing (its dispatch send, compute, collectives and combine
  send become free steps);
- a visited group's compute and collectives scale by its busiest expert's tokens over the
  batch (the schedule's group computes every token on every expert; experts of one group sit
  on disjoint cores and run in parallel), its sends by the tokens that visit it;
- a group whose weights stream (residency per expert: SRAM was short and its experts are cold)
  loads only the experts the step's tokens visit: its weight loads scale by their share.

Expected: the mean over `samples` seeded draws of each token's k experts from the routing
distribution (uniform, or `--routing FILE`), one draw per MoE layer. Worst case: in every MoE
layer all tokens' experts land in the groups farthest from the router (streamed from off-chip
first, then other wafer, then NoC distance), the same k experts for every token (the busiest
expert gets every token): packed into as few groups as hold them, or one expert per group in
the k farthest groups,
whichever is slower (at batch 1 more visited groups mean more sends and more contention, so
usually the latter). Load imbalance per expert region: its expected experts per token over its
layer's mean.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from compiler.schedule.build import Region, Schedule, Step
from compiler.schedule.perf import PerfOptions, step_durations, timeline
from compiler.target import Target
from compiler.tiling.routing import GroupLoad
from compiler.vocab import Mode, Phase, StepKind

SAMPLES = 8


@dataclass(frozen=True)
class RegionLoad:
    """One expert region's expected load."""

    region: str
    router: str
    first: int
    count: int
    share: float  # of the layer's token-expert choices
    experts_per_token: float  # k x share
    hit: float  # chance a token visits it
    imbalance: float  # experts_per_token over the mean of its layer's groups
    residency: str = "resident"  # its region's mode: stream_weights when its experts stream
    streamed: float = 1.0  # expected share of its experts a decode step visits (and loads)

    @property
    def streams(self) -> bool:
        return self.residency in ("stream_weights", "stream_all")


@dataclass(frozen=True)
class MoEEstimate:
    routing: str  # "uniform" or the routing file
    batch: int
    samples: int
    all_experts_tokens_per_s: float  # the schedule as built: every expert on every token
    expected_tokens_per_s: float
    worst_tokens_per_s: float
    expected_cycles: int
    worst_cycles: int
    regions: tuple[RegionLoad, ...]

    @property
    def max_imbalance(self) -> float:
        return max((r.imbalance for r in self.regions), default=1.0)

    @property
    def streaming(self) -> tuple[RegionLoad, ...]:
        """The expert regions whose weights stream from off-chip (the cold experts)."""
        return tuple(r for r in self.regions if r.streams)


# group region -> (compute factor, send factor, share of its experts' weights loaded)
Scenario = dict[str, tuple[float, float, float]]


def moe_estimate(s: Schedule, target: Target, loads: dict[str, GroupLoad],
                 opts: PerfOptions | None = None, routing: str = "uniform",
                 shares: dict[str, tuple[float, ...]] | None = None,
                 samples: int = SAMPLES, seed: int = 0) -> MoEEstimate | None:
    """Expected and worst-case decode rates of an MoE schedule (None without expert groups).
    `shares`: per router layer, every expert's routing frequency (default: uniform)."""
    loads = {k: v for k, v in loads.items() if any(r.name == k for r in s.regions)}
    if not loads:
        return None
    opts = opts or PerfOptions(Mode.DECODE)
    batch = opts.batch or s.batch
    rng = np.random.default_rng(seed)
    shares = shares or {}
    draws = [_draw(loads, shares, batch, rng) for _ in range(samples)]
    base = step_durations(s, target, opts)  # each re-timing recomputes only the changed steps
    made: dict[tuple[int, str, float], Step] = {}  # scenarios share scaled steps
    sampled = [_cycles(s, target, opts, d, base, made) for d in draws]
    expected = float(np.mean(sampled))
    # the farthest groups are a heuristic worst case: never faster than a sampled draw (on
    # mesh16x16 a 5-row expert group four columns off the router timed faster than the mean)
    worst = max([*sampled, *(_cycles(s, target, opts, _worst(s, loads, spread), base, made)
                             for spread in (False, True))])
    dense = timeline(s, target, opts, cycles=base).makespan
    hz = target.core.clock_hz
    return MoEEstimate(
        routing=routing, batch=batch, samples=samples,
        all_experts_tokens_per_s=batch * hz / dense if dense else 0.0,
        expected_tokens_per_s=batch * hz / expected if expected else 0.0,
        worst_tokens_per_s=batch * hz / worst if worst else 0.0,
        expected_cycles=round(expected), worst_cycles=worst,
        regions=_regions(loads, dict(s.residency)))


def _regions(loads: dict[str, GroupLoad], residency: dict[str, str]) -> tuple[RegionLoad, ...]:
    by_router: dict[str, list[GroupLoad]] = {}
    for load in loads.values():
        by_router.setdefault(load.router, []).append(load)
    out = []
    for groups in by_router.values():
        mean = sum(g.experts_per_token for g in groups) / len(groups)
        out += [RegionLoad(g.layer, g.router, g.first, g.count, g.share, g.experts_per_token,
                           g.hit, g.experts_per_token / mean if mean else 1.0,
                           residency.get(g.layer, "resident"), g.streamed) for g in groups]
    return tuple(out)


def _draw(loads: dict[str, GroupLoad], shares: dict[str, tuple[float, ...]], batch: int,
          rng: np.random.Generator) -> Scenario:
    """Each token's k experts per MoE layer -> (busiest expert's tokens, visiting tokens) / batch
    per group."""
    scenario: Scenario = {}
    routers: dict[str, list[GroupLoad]] = {}
    for load in loads.values():
        routers.setdefault(load.router, []).append(load)
    for router, groups in sorted(routers.items()):
        experts = groups[0].experts
        p = np.asarray(shares.get(router) or [1.0 / experts] * experts, dtype=np.float64)
        picks = [rng.choice(experts, size=groups[0].active, replace=False, p=p / p.sum())
                 for _ in range(batch)]
        per_expert = np.bincount(np.concatenate(picks), minlength=experts)
        for g in groups:
            busiest = int(per_expert[g.first:g.first + g.count].max())
            visiting = sum(bool(((pk >= g.first) & (pk < g.first + g.count)).any())
                           for pk in picks)
            loaded = int((per_expert[g.first:g.first + g.count] > 0).sum())
            scenario[g.layer] = (busiest / batch, visiting / batch, loaded / g.count)
    return scenario


def _worst(s: Schedule, loads: dict[str, GroupLoad], spread: bool) -> Scenario:
    """Every layer: all tokens pick the same k experts, in the groups farthest from the router
    (a group whose weights stream is farthest: off-chip): packed into as few groups as hold k
    (`spread` False) or one per group, k groups (True)."""
    regions = {r.name: r for r in s.regions}
    streamed = {r for r, mode in s.residency if mode in ("stream_weights", "stream_all")}
    scenario: Scenario = {name: (0.0, 0.0, 0.0) for name in loads}
    routers: dict[str, list[str]] = {}
    for name, load in loads.items():
        routers.setdefault(load.router, []).append(name)
    for router, names in routers.items():
        far = sorted(sorted(names), key=lambda n: (n in streamed, *_distance(
            regions.get(router), regions[n])), reverse=True)
        first = loads[far[0]]
        used = first.active if spread else math.ceil(first.active / first.count)
        loaded = 1 if spread else min(first.active, first.count)
        for name in far[:used]:
            scenario[name] = (1.0, 1.0, loaded / first.count)
    return scenario


def _distance(a: Region | None, b: Region) -> tuple[int, int]:
    if a is None:
        return (0, 0)
    (ra, ca), (rb, cb) = a.center, b.center
    return (int(a.wafer != b.wafer), abs(ra - rb) + abs(ca - cb))


def _cycles(s: Schedule, target: Target, opts: PerfOptions, scenario: Scenario,
            base: list[int] | None = None,
            made: dict[tuple[int, str, float], Step] | None = None) -> int:
    """The decode step's makespan under `scenario`; `base`: `s`'s step durations, reused for
    the steps the scenario leaves alone (the same makespan, `perf.step_durations`); `made`:
    steps scaled by earlier scenarios of `s` (by step id and factors), taken again."""
    made = {} if made is None else made
    scaled = dataclasses.replace(s, steps=tuple(_scaled(st, scenario, made) for st in s.steps))
    cycles = None if base is None else step_durations(scaled, target, opts, s, base)
    return timeline(scaled, target, opts, cycles=cycles).makespan


def _scaled(st: Step, scenario: Scenario, made: dict[tuple[int, str, float], Step] | None = None
            ) -> Step:
    """`st` under `scenario`: `st` itself where its factor is 1 (an equal step, and the same
    object, so the re-timing keeps its cycles)."""
    if st.phase == Phase.SETUP:
        return st
    into = scenario.get(st.dst) if st.dst else None
    own = scenario.get(st.region)
    if own is None and into is None:
        return st
    if st.kind in (StepKind.SEND, StepKind.WAFER_SEND):
        factor = (into or own or (1.0, 1.0, 1.0))[1]
        if own is not None and into is not None:
            factor = min(own[1], into[1])
        key = (st.id, "send", factor)
    elif st.kind == StepKind.LOAD and own is not None and own[0] != 0:
        key = (st.id, "load", own[2])  # a streamed expert group's weights
    else:
        key = (st.id, "compute", own[0] if own is not None else 1.0)
    if key[2] == 1.0:
        return st
    if made is None:
        return _scaled_by(st, key[1], key[2])
    if key not in made:
        made[key] = _scaled_by(st, key[1], key[2])
    return made[key]


def _scaled_by(st: Step, how: str, factor: float) -> Step:
    """A send's bytes, a streamed group's weight loads or a step's FLOPs and bytes times
    `factor`; a send or a step at 0 is free."""
    if how == "load":
        return dataclasses.replace(st, nbytes=round(st.nbytes * factor))
    if factor == 0:
        return _free(st)
    if how == "send":
        return dataclasses.replace(st, nbytes=round(st.nbytes * factor))
    return dataclasses.replace(st, flops=round(st.flops * factor),
                               nbytes=round(st.nbytes * factor))


def _free(st: Step) -> Step:
    """A step that costs nothing and holds nothing but keeps its place in the graph."""
    return dataclasses.replace(st, kind=StepKind.COMPUTE, op_kind="Identity", flops=0, nbytes=0,
                               hops=0, route=(), dst="", axis=None, fused=())
