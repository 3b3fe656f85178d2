"""Model metadata the graph alone does not carry: mixture-of-experts roles and storage widths.

`wafer.moe` (`experts=E,active=k,shared=S,groups=G`, written by models/moe.py): the layers the
grouping made of `block.N` and its expert groups `block.N.experts.G` get an `ir.MoE` record
(the router's layer: E, k, S; group G: its experts [G E/G, (G + 1) E/G)).
`wafer.storage_bits` (`REGEX=BITS[;REGEX=BITS...]`): weights whose name the regex finds are
stored at BITS bits per element (MXFP4: 4.25), `ir.Tensor.storage_bits`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from compiler import ir
from compiler.errors import ModelError

MOE_KEY = "wafer.moe"
STORAGE_KEY = "wafer.storage_bits"
_GROUP_LAYER = re.compile(r"^block\.(\d+)\.experts\.(\d+)$")


def storage_widths(meta: Mapping[str, str], tensors: Sequence[ir.Tensor]) -> tuple[ir.Tensor, ...]:
    rules = _storage_rules(meta.get(STORAGE_KEY, ""))
    if not rules:
        return tuple(tensors)
    return tuple(_with_width(t, rules) for t in tensors)


def _with_width(t: ir.Tensor, rules: Sequence[tuple[re.Pattern[str], float]]) -> ir.Tensor:
    if t.kind is not ir.TensorKind.WEIGHT:
        return t
    bits = next((b for pattern, b in rules if pattern.search(t.name)), None)
    return t if bits is None else dataclasses.replace(t, storage_bits=bits)


def _storage_rules(text: str) -> tuple[tuple[re.Pattern[str], float], ...]:
    rules = []
    for rule in filter(None, (r.strip() for r in text.split(";"))):
        pattern, _, bits = rule.rpartition("=")
        try:
            value = float(bits)
            compiled = re.compile(pattern)
        except (ValueError, re.error):
            value, compiled = 0.0, None
        if compiled is None or not pattern or not 0 < value <= 64:
            raise ModelError(f"metadata {STORAGE_KEY}: bad rule {rule!r}; expected "
                             "REGEX=BITS with 0 < BITS <= 64, e.g. '\\.experts\\.=4.25'")
        rules.append((compiled, value))
    return tuple(rules)


def attach_moe(meta: Mapping[str, str], layers: Sequence[ir.Layer]) -> tuple[ir.Layer, ...]:
    text = meta.get(MOE_KEY, "")
    if not text:
        return tuple(layers)
    fields = _moe_fields(text)
    experts, groups = fields["experts"], fields["groups"]
    per_group = experts // groups
    router = {m.group(1) for m in map(_GROUP_LAYER.match, (x.name for x in layers)) if m}
    out = []
    for layer in layers:
        record = None
        m = _GROUP_LAYER.match(layer.name)
        if m:
            record = ir.MoE(experts, fields["active"], fields["shared"],
                            first=int(m.group(2)) * per_group, count=per_group)
        elif layer.index is not None and str(layer.index) in router and \
                layer.name == f"block.{layer.index}":
            read = sorted({n for op in layer.ops for n in op.inputs if n})
            record = ir.MoE(experts, fields["active"], fields["shared"],
                            router=tuple(n for n in read if ".mlp.router." in n),
                            shared_weights=tuple(n for n in read if ".mlp.shared_expert." in n))
        out.append(dataclasses.replace(layer, moe=record) if record else layer)
    return tuple(out)


def _moe_fields(text: str) -> dict[str, int]:
    try:
        fields = {k.strip(): int(v) for k, v in (p.split("=") for p in text.split(","))}
    except ValueError:
        fields = {}
    need = ("experts", "active", "shared", "groups")
    ok = all(k in fields for k in need) and fields["groups"] > 0 and \
        fields["experts"] % fields["groups"] == 0 and 0 < fields["active"] <= fields["experts"]
    if not ok:
        raise ModelError(f"metadata {MOE_KEY}: {text!r} is not experts=E,active=K,shared=S,"
                         "groups=G with G dividing E and 1 <= K <= E")
    return fields
