"""Does a model fit a target? Capacity arithmetic only, no solving (`wafer check`).

Bytes are counted as stored on the target (`Target.tensor_bytes`, the rule every stage uses):
floats (weights, KV cache, activations) in the compute dtype, integer tensors as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compiler import ir
from compiler.target import Target
from compiler.tiling.costs import batch_size, model_cost


@dataclass(frozen=True)
class FitReport:
    model: str
    target: str
    params: int
    weight_bytes: int
    kv_bytes: int
    context: int
    batch: int
    activation_bytes: int
    total_bytes: int
    usable_bytes_per_wafer: int
    wafers_available: int
    wafers_needed: int
    largest_layer: str
    largest_layer_bytes: int
    cores_min: int  # cores whose usable SRAM holds everything, at least

    @property
    def fits(self) -> bool:
        return self.wafers_needed <= self.wafers_available

    def verdict(self) -> str:
        need = f"needs at least {self.wafers_needed} wafer(s) of {self.target}"
        if self.fits:
            return f"fits: {need}, the target has {self.wafers_available}"
        return f"does not fit: {need}, the target has {self.wafers_available}"


def check_fit(g: ir.Graph, target: Target, context: int | None = None) -> FitReport:
    cost = model_cost(g)
    batch = batch_size(g)
    context = context or max(1, cost.tokens // batch)
    weights = sum(target.tensor_bytes(t) for t in g.weights)
    kv = cost.kv_elements_per_token * context * batch * target.compute.dtype.itemsize
    act = _peak_activation(g, target)
    total = weights + kv + act
    per_wafer = target.usable_bytes_per_wafer
    largest = max(cost.layers, key=lambda lc: lc.weight_bytes, default=None)
    return FitReport(
        model=g.name, target=target.name, params=cost.params, weight_bytes=weights,
        kv_bytes=kv, context=context, batch=batch, activation_bytes=act, total_bytes=total,
        usable_bytes_per_wafer=per_wafer, wafers_available=target.wafers.count,
        wafers_needed=max(1, math.ceil(total / per_wafer)),
        largest_layer=largest.name if largest else "",
        largest_layer_bytes=_layer_bytes(g, largest.name, target) if largest else 0,
        cores_min=math.ceil(total / target.usable_bytes_per_core),
    )




def _peak_activation(g: ir.Graph, target: Target) -> int:
    """Every tensor the largest layer produces, at the target's size (an upper bound on its
    live set; small beside weights for the models we place)."""
    return max((sum(target.tensor_bytes(g.tensor(n)) for op in layer.ops for n in op.outputs if n)
                for layer in g.layers), default=0)


def _layer_bytes(g: ir.Graph, name: str, target: Target) -> int:
    layer = next(layer for layer in g.layers if layer.name == name)
    seen = {n for op in layer.ops for n in op.inputs if n and g.tensor(n).is_const}
    return sum(target.tensor_bytes(g.tensor(n)) for n in seen)
