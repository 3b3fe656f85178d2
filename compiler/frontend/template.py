"""Shape-only zoo giants loaded from a template: alike layers recognised once.

A zoo decoder is N copies of one block (or of a period of blocks: Llama 4 Maverick alternates
dense and MoE layers). Its ir.Graph is a pure function of the layer count and the names: layer
i's ops, tensors and shapes are layer j's with every `layers.j` (and `block.j`) renamed, when i
and j are in the same place of the period and neither is at the ends (layer 0 has no combine
before it, the last layer's outputs feed the final norm). So the frontend loads the model with
`HEAD + PERIOD + TAIL` periods of layers (the ends as they are, one period as the template) and
writes the giant's graph from it: the template period renamed for every middle period, the
head as it is, the tail and the final layers shifted to the end. That is the same graph the
whole model gives, in the same order (`tests/test_frontend_template.py` compares both on
every zoo giant), at the cost of a five-period model: Qwen3-235B's frontend 6.2 -> ~0.5 CPU s.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from compiler import ir

HEAD, TAIL = 2, 2  # periods of layers kept as they are at each end of the template model
_INDEX = re.compile(r"((?:^|[./])layers\.|^block\.)(\d+)(?=[./]|$)")


@dataclass(frozen=True)
class Template:
    """The giant's `layers` and its period; the template model has `small` layers."""

    layers: int
    period: int

    @property
    def head(self) -> int:  # first layer of the template period
        return HEAD * self.period

    @property
    def small(self) -> int:
        return (HEAD + 1 + TAIL) * self.period

    @property
    def shift(self) -> int:  # tail layers move by this
        return self.layers - self.small

    def middle(self, i: int) -> int:
        """The template layer of the giant's middle layer i."""
        return self.head + (i - self.head) % self.period


def template_for(config: object, family: str) -> Template | None:
    """The template of a zoo decoder's config, or None when it is too short to gain (or not a
    decoder of alike layers)."""
    if family not in ("llama", "moe"):
        return None
    layers = getattr(config, "layers", 0)
    period = max(1, getattr(config, "moe_every", 1))
    t = Template(layers, period)
    return t if layers >= t.small + period else None


def expand(small: ir.Graph, t: Template) -> ir.Graph:
    """The giant's graph from the template model's."""
    layers = _expand_seq(small.layers, t, _layer_index, _renamed_layer)
    tensors = _expand_seq(small.tensors, t, _tensor_index, _renamed_tensor)
    return dataclasses.replace(small, layers=tuple(layers), tensors=tuple(tensors))


def _expand_seq(items, t: Template, index: Callable, rename: Callable) -> list:
    """Runs of items by their layer: the head's and the non-layer items as they are (non-layer
    ones renamed into the tail's indices), the template period's buffered and written out
    once per middle layer when the run leaves the period, the tail's shifted."""
    out: list = []
    buffer: dict[int, list] = {}
    for item in items:
        n = index(item)
        if n is not None and t.head <= n < t.head + t.period:
            buffer.setdefault(n, []).append(item)
            continue
        _flush(buffer, out, t, rename)
        out.append(rename(item, _ends(t)))
    _flush(buffer, out, t, rename)
    return out


def _flush(buffer: dict[int, list], out: list, t: Template, rename: Callable) -> None:
    if not buffer:
        return
    for i in range(t.head, t.layers - TAIL * t.period):
        shift = i - t.middle(i)
        out.extend(rename(item, lambda n, s=shift: n + s) for item in buffer.get(t.middle(i), ()))
    buffer.clear()


def _ends(t: Template) -> Callable[[int], int]:
    """Indices seen from the head (as they are) and from the tail and final layers (those of
    the last template layer on, shifted to the end)."""
    last = t.head + t.period - 1
    return lambda n: n + t.shift if n >= last else n


def _layer_index(layer: ir.Layer) -> int | None:
    return layer.index


def _tensor_index(tensor: ir.Tensor) -> int | None:
    found = {int(m.group(2)) for m in _INDEX.finditer(tensor.name)}
    return found.pop() if len(found) == 1 else None


def _name(name: str, f: Callable[[int], int]) -> str:
    return _INDEX.sub(lambda m: f"{m.group(1)}{f(int(m.group(2)))}", name)


def _names(names: tuple[str, ...], f: Callable[[int], int]) -> tuple[str, ...]:
    return tuple(_name(n, f) for n in names)


def _renamed_tensor(tensor: ir.Tensor, f: Callable[[int], int]) -> ir.Tensor:
    name = _name(tensor.name, f)
    return tensor if name == tensor.name else dataclasses.replace(tensor, name=name)


def _renamed_layer(layer: ir.Layer, f: Callable[[int], int]) -> ir.Layer:
    ops = tuple(dataclasses.replace(op, name=_name(op.name, f), inputs=_names(op.inputs, f),
                                    outputs=_names(op.outputs, f)) for op in layer.ops)
    moe = layer.moe
    if moe is not None:
        moe = dataclasses.replace(
            moe, router=_names(moe.router, f), stacked=_names(moe.stacked, f),
            shared_weights=_names(moe.shared_weights, f),
            expert_weights=tuple(_names(w, f) for w in moe.expert_weights))
    index = None if layer.index is None else f(layer.index)
    return dataclasses.replace(layer, name=_name(layer.name, f), index=index, ops=ops, moe=moe)
