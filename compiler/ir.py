"""The compiler's IR: immutable values for dtypes, tensors, ops, layers and the graph.

A Graph is a list of Layers (embedding, transformer block N, final norm, head, ...) in
topological order; each Layer holds its Ops in topological order. Tensors are described once in
the Graph, by name. Everything here is a frozen dataclass: stages build new values with
`dataclasses.replace`, never mutate. `check_graph` is the cheap verifier run between stages and
`format_graph` the stable text form used by golden tests.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

AttrValue = int | float | str | tuple[int, ...] | tuple[float, ...] | tuple[str, ...]


class DType(enum.Enum):
    """Element types the compiler knows, with their size in bytes."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT64 = "float64"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    # quantized storage (QuantizeLinear / DequantizeLinear data): packed 4-bit integers and
    # 8-bit floats; the executor holds 4-bit values as int8/uint8 and float8 as float32
    INT4 = "int4"
    UINT4 = "uint4"
    FLOAT8E4M3FN = "float8e4m3fn"
    FLOAT8E4M3FNUZ = "float8e4m3fnuz"
    FLOAT8E5M2 = "float8e5m2"
    FLOAT8E5M2FNUZ = "float8e5m2fnuz"

    @property
    def bits(self) -> int:
        """Stored width of one element in bits (4 for the packed 4-bit integers)."""
        return _BITS[self]

    @property
    def itemsize(self) -> int:
        """Whole bytes one element takes alone; packed 4-bit types round up to 1 (use
        `storage_bytes` for a tensor's size)."""
        return max(1, self.bits // 8)

    @property
    def is_float(self) -> bool:
        """A float the compute dtype holds (float8 storage types are `is_quantized`)."""
        return self in (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64)

    @property
    def is_quantized(self) -> bool:
        """A storage-only type of quantized graphs: 4-bit integers and 8-bit floats."""
        return self in _QUANTIZED

    @classmethod
    def parse(cls, name: str) -> DType:
        """'fp16', 'float16', 'bf16' ... -> DType; ValueError names the accepted spellings."""
        key = _ALIASES.get(name.lower(), name.lower())
        try:
            return cls(key)
        except ValueError:
            known = ", ".join(d.value for d in cls)
            raise ValueError(f"unknown dtype {name!r}; expected one of {known}") from None


_BITS = {
    DType.FLOAT32: 32, DType.FLOAT16: 16, DType.BFLOAT16: 16, DType.FLOAT64: 64, DType.INT8: 8,
    DType.UINT8: 8, DType.INT16: 16, DType.INT32: 32, DType.INT64: 64, DType.BOOL: 8,
    DType.INT4: 4, DType.UINT4: 4, DType.FLOAT8E4M3FN: 8, DType.FLOAT8E4M3FNUZ: 8,
    DType.FLOAT8E5M2: 8, DType.FLOAT8E5M2FNUZ: 8,
}
_QUANTIZED = frozenset({DType.INT4, DType.UINT4, DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ,
                        DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ})


def storage_bytes(numel: int, bits: float) -> int:
    """Bytes `numel` elements of `bits` each take, packed (rounded up to a whole byte): the one
    place a stored width becomes bytes (4-bit weights are half a byte each)."""
    return math.ceil(numel * bits / 8)
_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64",
            "half": "float16", "float": "float32", "double": "float64"}


class TensorKind(enum.Enum):
    INPUT = "input"  # a graph input (activations fed at run time)
    WEIGHT = "weight"  # an initializer of the source model (parameters, buffers)
    CONSTANT = "constant"  # a constant the frontend made (folded shape arithmetic, tables)
    ACTIVATION = "activation"  # produced by an op


@dataclass(frozen=True)
class Tensor:
    """A named tensor with a static shape. `data` is present for constants whose values are
    loaded (absent in shape-only mode); it is not part of equality."""

    name: str
    shape: tuple[int, ...]
    dtype: DType
    kind: TensorKind
    data: np.ndarray | None = field(default=None, compare=False, repr=False)
    # Bits per element as stored, when not the dtype's (block-quantized weights: MXFP4 = 4.25,
    # 4-bit values plus an 8-bit scale per 32); None: the dtype's (or the target's) width.
    storage_bits: float | None = None
    # a float tensor the machine holds at another width: a weight dequantized from int8 is
    # stored as its int8 source and dequantized where it is used (set by the frontend)
    storage: DType | None = None

    @property
    def is_const(self) -> bool:
        return self.kind in (TensorKind.WEIGHT, TensorKind.CONSTANT)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        bits = self.storage_bits if self.storage_bits is not None else self.dtype.bits
        return storage_bytes(self.numel, bits)

    def type_str(self) -> str:
        stored = f"@{self.storage_bits:g}b" if self.storage_bits is not None else ""
        return f"{self.dtype.value}{stored}[{','.join(map(str, self.shape))}]"



@dataclass(frozen=True)
class Op:
    """One operator: an ONNX op type (`kind`) with the ONNX node name it came from."""

    name: str
    kind: str
    inputs: tuple[str, ...]  # "" marks an omitted optional input
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, AttrValue], ...] = ()
    domain: str = ""

    def attr(self, key: str, default: AttrValue | None = None) -> AttrValue | None:
        for k, v in self.attrs:
            if k == key:
                return v
        return default


class LayerKind(enum.Enum):
    EMBEDDING = "embedding"
    BLOCK = "block"  # a transformer block (attention + MLP)
    NORM = "norm"  # the final normalization
    HEAD = "head"  # LM head, pooler or classifier
    OTHER = "other"


@dataclass(frozen=True)
class MoE:
    """The mixture-of-experts MLP of a layer: `experts` routed experts, `active` (k) of them
    per token, `shared` experts every token goes through.

    Weights are named so each expert's can be placed on its own: `expert_weights[i]` holds the
    weights only routed expert i reads (per-expert Linear weights, e.g. Mixtral's
    `experts.i.w1`); `stacked` the weights holding every expert at once along axis 0 (a
    batched-expert MatMul's `[E, K, N]`), expert i's share being `w[i]`. `router` is the gate
    (the weight whose logits pick the experts), `shared_weights` the shared expert(s)' weights
    and their gate. Empty tuples mean "not identified" (a shape-only builder may leave them).
    """

    experts: int
    active: int
    shared: int = 0
    router: tuple[str, ...] = ()
    expert_weights: tuple[tuple[str, ...], ...] = ()
    stacked: tuple[str, ...] = ()
    shared_weights: tuple[str, ...] = ()
    # A layer of its own holding experts [first, first + count) of the E (the shape-only zoo's
    # expert groups, `block.N.experts.G`: one placed rectangle each); count 0: the whole MoE
    # MLP or its router's layer.
    first: int = 0
    count: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.active <= self.experts:
            raise ValueError(f"MoE: active {self.active} not in 1..experts {self.experts}")
        if self.shared < 0:
            raise ValueError(f"MoE: shared {self.shared} < 0")
        if self.expert_weights and len(self.expert_weights) != self.experts:
            raise ValueError(
                f"MoE: {len(self.expert_weights)} expert weight groups for {self.experts} experts"
            )

    @property
    def weights(self) -> tuple[str, ...]:
        """Every weight named here: router, routed experts, stacked, shared."""
        routed = tuple(w for group in self.expert_weights for w in group)
        return self.router + routed + self.stacked + self.shared_weights

    @property
    def is_group(self) -> bool:
        return self.count > 0

    def describe(self) -> str:
        shared = f", {self.shared} shared" if self.shared else ""
        group = f" (experts {self.first}..{self.first + self.count - 1})" if self.is_group else ""
        return f"moe {self.experts} experts{group}, top-{self.active}{shared}"


@dataclass(frozen=True)
class Layer:
    """A named group of ops placed as one unit: embedding, block N, final norm, head.

    `moe` is set on a block whose MLP is a mixture of experts (frontend/layers.py recognises it);
    `None` on dense layers."""

    name: str
    kind: LayerKind
    index: int | None
    ops: tuple[Op, ...]
    moe: MoE | None = None


@dataclass(frozen=True)
class Graph:
    """A whole model with static shapes, its ops grouped into layers in topological order."""

    name: str
    tensors: tuple[Tensor, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    layers: tuple[Layer, ...]
    opset: int = 0
    source: str = ""
    shape_only: bool = False
    dims: tuple[tuple[str, int], ...] = ()  # dynamic input dims as bound, e.g. (("seq", 128),)
    source_sha256: str = ""  # of the model file (or of the zoo entry's config)

    @cached_property
    def tensor_map(self) -> dict[str, Tensor]:
        return {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> Tensor:
        return self.tensor_map[name]

    @property
    def ops(self) -> Iterator[Op]:
        for layer in self.layers:
            yield from layer.ops

    @cached_property
    def producers(self) -> dict[str, Op]:
        return {out: op for op in self.ops for out in op.outputs if out}

    @cached_property
    def consumers(self) -> dict[str, tuple[Op, ...]]:
        found: dict[str, list[Op]] = {}
        for op in self.ops:
            for name in dict.fromkeys(i for i in op.inputs if i):
                found.setdefault(name, []).append(op)
        return {k: tuple(v) for k, v in found.items()}

    @cached_property
    def const_derived(self) -> frozenset[str]:
        """Constants and every tensor computed from constants alone (no graph input)."""
        names = {t.name for t in self.tensors if t.is_const}
        for op in self.ops:
            if all(n in names for n in op.inputs if n):
                names.update(o for o in op.outputs if o)
        return frozenset(names)

    @property
    def weights(self) -> Iterator[Tensor]:
        """Every constant tensor: source weights and folded constants."""
        return (t for t in self.tensors if t.is_const)

    def blocks(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.kind is LayerKind.BLOCK)


class GraphCheckError(ValueError):
    """The IR broke one of its invariants: a bug in the stage that built it."""


def check_graph(g: Graph) -> None:
    """Cheap verifier run between stages: names unique, every op input defined before use,
    outputs produced, layers in order. Raises GraphCheckError naming the first problem."""
    defined = set(g.inputs) | {t.name for t in g.weights}
    if len(g.tensor_map) != len(g.tensors):
        raise GraphCheckError(f"graph {g.name}: duplicate tensor names")
    seen_ops: set[str] = set()
    for layer in g.layers:
        for op in layer.ops:
            _check_op(g, layer, op, defined, seen_ops)
    for layer in g.layers:
        _check_moe(g, layer)
    missing = [o for o in g.outputs if o not in defined]
    if missing:
        raise GraphCheckError(f"graph {g.name}: outputs never produced: {missing}")


def _check_moe(g: Graph, layer: Layer) -> None:
    if layer.moe is None:
        return
    read = {name for op in layer.ops for name in op.inputs}
    for name in layer.moe.weights:
        if name not in read:
            raise GraphCheckError(f"layer {layer.name}: MoE weight {name!r} is not read there")
    for name in layer.moe.stacked:
        shape = g.tensor(name).shape
        if not shape or shape[0] != layer.moe.experts:
            raise GraphCheckError(
                f"layer {layer.name}: stacked expert weight {name!r} has shape {shape}, "
                f"not {layer.moe.experts} experts along axis 0"
            )


def _check_op(g: Graph, layer: Layer, op: Op, defined: set[str], seen: set[str]) -> None:
    where = f"layer {layer.name}, op {op.name} ({op.kind})"
    if op.name in seen:
        raise GraphCheckError(f"{where}: duplicate op name")
    seen.add(op.name)
    for name in op.inputs:
        if name and name not in defined:
            raise GraphCheckError(f"{where}: input {name!r} is used before it is defined")
    for name in op.outputs:
        if not name:  # an omitted optional output
            continue
        if name not in g.tensor_map:
            raise GraphCheckError(f"{where}: output {name!r} has no tensor description")
        if name in defined:
            raise GraphCheckError(f"{where}: output {name!r} is defined twice")
        defined.add(name)


def format_graph(g: Graph, *, with_ops: bool = True) -> str:
    """Stable text form of a graph, for golden tests and `wafer inspect --ir`."""
    dims = "".join(f", {k}={v}" for k, v in g.dims)
    lines = [f"graph {g.name} (opset {g.opset}{dims}{', shape-only' if g.shape_only else ''})"]
    lines += [f"  input {n}: {g.tensor(n).type_str()}" for n in g.inputs]
    lines += [f"  output {n}: {g.tensor(n).type_str()}" for n in g.outputs]
    for layer in g.layers:
        moe = f", {layer.moe.describe()}" if layer.moe else ""
        lines.append(f"layer {layer.name} ({layer.kind.value}, {len(layer.ops)} ops{moe})")
        if with_ops:
            lines += [f"  {_format_op(g, op)}" for op in layer.ops]
    return "\n".join(lines) + "\n"


def _format_op(g: Graph, op: Op) -> str:
    outs = ", ".join(f"{o}: {g.tensor(o).type_str()}" for o in op.outputs if o)
    attrs = ", ".join(f"{k}={v}" for k, v in op.attrs)
    attrs = f" {{{attrs}}}" if attrs else ""
    return f"{outs} = {op.kind}({', '.join(op.inputs)}){attrs}  # {op.name}"

