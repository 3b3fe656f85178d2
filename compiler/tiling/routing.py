"""Routing of mixture-of-experts layers: which experts tokens visit, and what that moves.

A `Routing` holds per-expert frequencies (uniform by default; `--routing FILE` gives measured
ones). From it each expert-group layer (`ir.MoE` with `count` > 0) gets its expected load: its
share of the token-expert choices, the experts a token visits there (k x share) and the chance
a token visits it at all (`hit`, k independent draws: 1 - (1 - share)^k). `routed_edges` prices
dispatch (router layer -> group) and combine (group -> the next layer) at the hit rate: a token
goes to a group only when one of its k experts lives there, once, and comes back once.

Residency per expert: a group whose weights stream from off-chip (SRAM short) loads, per decode
step, only the experts some token of the batch visits. Expert e is picked by a token with chance
min(1, k x share_e) (its expected load), so by one of B tokens with 1 - (1 - min(1, k share_e))^B;
`routed_candidates` prices a streaming group's off-chip bytes per token at that expected share of
its weights (`GroupLoad.streamed`), so the placer's least-off-chip objective keeps the hot
experts' groups resident and streams the cold ones (Mixtral: one expert per group).

File format (JSON): `{"experts": [f0, f1, ...]}` for every MoE layer, optionally with
`"layers": {"block.3": [...], ...}` per layer; frequencies are non-negative counts or shares
(normalised here), one per expert.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from compiler import ir
from compiler.errors import UsageError
from compiler.placement.problem import Edge, Residency

if TYPE_CHECKING:
    from compiler.tiling.candidates import LayerTiling, TiledGraph


@dataclass(frozen=True)
class Routing:
    experts: tuple[float, ...] = ()  # empty: uniform
    layers: tuple[tuple[str, tuple[float, ...]], ...] = ()
    source: str = "uniform"

    def shares(self, layer: str, experts: int) -> tuple[float, ...]:
        """Normalised frequency of each of the `experts` experts of MoE layer `layer`."""
        freq = dict(self.layers).get(layer, self.experts)
        if not freq:
            return (1.0 / experts,) * experts
        if len(freq) != experts:
            raise UsageError(f"routing {self.source}: {len(freq)} frequencies for layer {layer}, "
                             f"which has {experts} experts; give one per expert")
        total = sum(freq)
        return tuple(f / total for f in freq)


UNIFORM = Routing()


def load_routing(path: str | Path) -> Routing:
    """Read a routing file; UsageError (exit 2) names what is wrong with it."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise UsageError(f"--routing {p}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--routing {p}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(doc, dict) or not ({"experts", "layers"} & doc.keys()):
        raise UsageError(f"--routing {p}: expected an object with \"experts\": [frequency per "
                         "expert] and/or \"layers\": {layer: [...]}")
    layers = doc.get("layers", {})
    if not isinstance(layers, dict):
        raise UsageError(f"--routing {p}: \"layers\" must map layer names to lists")
    return Routing(_freqs(p, "experts", doc.get("experts", [])),
                   tuple((str(k), _freqs(p, k, v)) for k, v in sorted(layers.items())), str(p))


def _freqs(p: Path, what: str, values: object) -> tuple[float, ...]:
    ok = isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in values) and (not values or sum(values) > 0)
    if not ok:
        raise UsageError(f"--routing {p}: {what} must be a list of non-negative numbers, not "
                         "all zero")
    return tuple(float(v) for v in values)  # type: ignore[union-attr]


@dataclass(frozen=True)
class GroupLoad:
    """Expected routing load of one expert-group layer."""

    layer: str  # the group's layer, e.g. block.3.experts.2
    router: str  # its router's layer, e.g. block.3
    first: int
    count: int
    experts: int  # E of its MoE layer
    active: int  # k
    share: float  # of the layer's token-expert choices
    hit: float  # chance a token visits the group
    streamed: float = 1.0  # expected share of its experts one decode step (batch) loads

    @property
    def experts_per_token(self) -> float:
        return self.active * self.share


def group_loads(g: ir.Graph, routing: Routing = UNIFORM,
                batch: int = 1) -> dict[str, GroupLoad]:
    """Every expert-group layer's expected load, by layer name (empty for a dense model), with
    `batch` tokens per decode step."""
    loads = {}
    for layer in g.layers:
        m = layer.moe
        if m is None or not m.is_group:
            continue
        router = f"block.{layer.index}"
        mine = routing.shares(router, m.experts)[m.first:m.first + m.count]
        share = sum(mine)
        hit = 1.0 - (1.0 - min(share, 1.0)) ** m.active
        loads[layer.name] = GroupLoad(layer.name, router, m.first, m.count, m.experts, m.active,
                                      share, hit, visited_share(mine, m.active, batch))
    return loads


def visited_share(shares: tuple[float, ...], active: int, batch: int = 1) -> float:
    """Expected share of these experts that at least one of `batch` tokens visits, each token
    picking expert e with chance min(1, active x share_e)."""
    if not shares:
        return 0.0
    return sum(1.0 - (1.0 - min(1.0, active * s)) ** max(batch, 1) for s in shares) / len(shares)


def routed_candidates(g: ir.Graph, tiled: TiledGraph, routing: Routing = UNIFORM) -> TiledGraph:
    """Expert groups' streaming candidates at the off-chip bytes their expected load streams:
    a decode step loads only the experts its tokens visit (`GroupLoad.streamed` of the group's
    weights). Groups of one template whose loads differ get the load in their template name
    (alike layers share candidates)."""
    loads = group_loads(g, routing, tiled.batch)
    if not loads:
        return tiled
    layers = []
    for lt in tiled.layers:
        load = loads.get(lt.layer)
        if load is None or load.streamed >= 1.0:
            layers.append(lt)
            continue
        weights = lt.weight_bytes // max(tiled.batch, 1)
        candidates = tuple(
            dataclasses.replace(c, offchip_bytes_per_token=c.offchip_bytes_per_token - weights
                                + math.ceil(weights * load.streamed))
            if c.residency in (Residency.STREAM_WEIGHTS, Residency.STREAM_ALL) else c
            for c in lt.candidates)
        layers.append(dataclasses.replace(lt, candidates=candidates))
    return dataclasses.replace(tiled, layers=_split_templates(tuple(layers)))


def _split_templates(layers: tuple[LayerTiling, ...]) -> tuple[LayerTiling, ...]:
    """Layers of one template whose candidates now differ: each distinct set its own template
    (`TEMPLATE~N`, N counting the sets in layer order); alike ones keep theirs."""
    seen: dict[str, list[tuple[object, ...]]] = {}
    for lt in layers:
        sets = seen.setdefault(lt.template, [])
        if lt.candidates not in sets:
            sets.append(lt.candidates)
    return tuple(lt if len(seen[lt.template]) == 1 else dataclasses.replace(
        lt, template=f"{lt.template}~{seen[lt.template].index(lt.candidates)}")
        for lt in layers)


def routed_edges(g: ir.Graph, edges: tuple[Edge, ...],
                 routing: Routing = UNIFORM) -> tuple[Edge, ...]:
    """Edges into and out of expert groups at their expected bytes (x the group's hit rate)."""
    loads = group_loads(g, routing)
    if not loads:
        return edges
    names = [layer.name for layer in g.layers]
    out = []
    for e in edges:
        load = loads.get(names[e.dst]) or loads.get(names[e.src])
        if load is None:
            out.append(e)
            continue
        out.append(dataclasses.replace(
            e, bytes_per_token=max(1, math.ceil(e.bytes_per_token * load.hit)),
            bytes_prefill=math.ceil(e.bytes_prefill * load.hit)))
    return tuple(out)
