"""A cheap consistency check of a TiledGraph against the graph and target it was made for.

`tiled_problems(graph, tiled, target)` lists what later stages take for granted and would
otherwise fail on far from the cause: one LayerTiling per graph layer, in order, names unique;
one OpLayout per op, with a spec per input and output of the tensor's rank; at least one
candidate per layer, each a rectangle of at least one core inside the grid whose per-core bytes
fit SRAM minus the reserve; alike layers (one template) with the same candidates; edges from an
earlier layer to a later one. The driver runs it after tiling when CompileOptions.check is on
(in tests). Each problem names its layer.
"""

from __future__ import annotations

from compiler import ir
from compiler.target import Target
from compiler.tiling.candidates import Candidate, LayerTiling, TiledGraph


def tiled_problems(graph: ir.Graph, tiled: TiledGraph, target: Target) -> list[str]:
    problems = _layer_names(graph, tiled)
    templates: dict[str, tuple[str, tuple[Candidate, ...]]] = {}
    for layer, lt in zip(graph.layers, tiled.layers, strict=False):
        problems += _layouts(graph, layer, lt)
        problems += _candidates(lt, target)
        first = templates.setdefault(lt.template, (lt.layer, lt.candidates))
        if first[1] != lt.candidates:
            problems.append(f"layer {lt.layer}: template {lt.template} shared with layer "
                            f"{first[0]} but its candidates differ")
    n = len(tiled.layers)
    problems += [f"edge {e.src} -> {e.dst}: not from an earlier layer to a later one of {n}"
                 for e in tiled.edges if not 0 <= e.src < e.dst < n]
    if tiled.context < 1 or tiled.batch < 1:
        problems.append(f"context {tiled.context}, batch {tiled.batch}: expected >= 1")
    return problems


def _layer_names(graph: ir.Graph, tiled: TiledGraph) -> list[str]:
    names = [lt.layer for lt in tiled.layers]
    problems = [f"layer {name}: tiled {names.count(name)} times"
                for name in dict.fromkeys(names) if names.count(name) > 1]
    problems += [f"layer {i}: tiled as {lt.layer!r}, the graph's is {layer.name!r}"
                 for i, (layer, lt) in enumerate(zip(graph.layers, tiled.layers, strict=False))
                 if layer.name != lt.layer]
    if len(names) != len(graph.layers):
        problems.append(f"{len(names)} layers tiled, the graph has {len(graph.layers)}")
    return problems


def _layouts(graph: ir.Graph, layer: ir.Layer, lt: LayerTiling) -> list[str]:
    if len(lt.ops) != len(layer.ops):
        return [f"layer {lt.layer}: {len(lt.ops)} op layouts for {len(layer.ops)} ops"]
    problems = []
    for op, lay in zip(layer.ops, lt.ops, strict=True):
        if lay.op != op.name or len(lay.inputs) != len(op.inputs) \
                or len(lay.outputs) > len(op.outputs):
            problems.append(f"layer {lt.layer}: layout of {lay.op} does not match op {op.name} "
                            f"({len(op.inputs)} inputs, {len(op.outputs)} outputs)")
            continue
        named = [*zip(op.inputs, lay.inputs, strict=True),
                 *zip(op.outputs, lay.outputs, strict=False)]
        problems += [f"layer {lt.layer}: op {op.name}: spec {spec} of {name} for rank "
                     f"{len(graph.tensor(name).shape)}"
                     for name, spec in named
                     if name and spec is not None and len(spec) != len(graph.tensor(name).shape)]
    return problems


def _candidates(lt: LayerTiling, target: Target) -> list[str]:
    if not lt.candidates:
        return [f"layer {lt.layer}: no candidate rectangle"]
    rows, cols, cap = target.grid.rows, target.grid.cols, target.usable_bytes_per_core
    problems = []
    for k, c in enumerate(lt.candidates):
        where = f"layer {lt.layer}: candidate {k} ({c.rows} x {c.cols}, {c.residency.value})"
        if not (1 <= c.rows <= rows and 1 <= c.cols <= cols):
            problems.append(f"{where} is not inside the {rows} x {cols} grid")
        if min(c.weight_bytes, c.kv_bytes, c.act_bytes, c.offchip_bytes_per_token, c.cycles) < 0:
            problems.append(f"{where} has a negative size or time")
        if c.per_core_bytes > cap:
            problems.append(f"{where} needs {c.per_core_bytes:,} bytes per core, "
                            f"{cap:,} are usable")
    return problems
