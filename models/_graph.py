"""A small ONNX graph builder shared by the zoo models.

`GraphBuilder` names nodes the way the TorchScript exporter does (`{scope}/{OpType}`, then
`_1`, `_2` ... for repeats in one scope; outputs `{node}_output_{i}`), keeps nodes in
topological order and makes weights. Convention: initializers are exactly the model's parameters
(so summing them counts parameters); every other constant is a `Constant` node, as the exporter
emits them. In shape-only mode weights are EXTERNAL-data TensorProtos pointing back to back into
`<name>.weights.bin`, a file that does not exist, so the proto stays small and builds fast.
Random weights are seeded per tensor name, so a build is deterministic and independent of the
order in which weights are created.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}
Dims = Sequence[int | str]


def check_common(dtype: str, hidden: int, heads: int, opset: int) -> None:
    """Validation every config shares; ValueError names the bad field."""
    if dtype not in ONNX_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(ONNX_DTYPES)}")
    if heads <= 0 or hidden % heads:
        raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
    if opset < 17:
        raise ValueError(f"opset {opset}: the zoo needs opset >= 17 (LayerNormalization)")


class GraphBuilder:
    """Accumulates nodes, weights and graph inputs/outputs, then assembles a ModelProto."""

    def __init__(self, name: str, *, dtype: str, opset: int, shape_only: bool, seed: int = 0,
                 init_std: float = 0.02):
        self.name = name
        self.dtype = dtype
        self.np_dtype = np.dtype(dtype)
        self.onnx_dtype = ONNX_DTYPES[dtype]
        self.opset = opset
        self.shape_only = shape_only
        self.seed = seed
        self.init_std = init_std
        self._model = onnx.ModelProto()  # filled in place: weights are copied only once
        self.graph = self._model.graph
        self._name_counts: dict[str, int] = {}
        self._offset = 0

    @property
    def weight_file(self) -> str:
        return f"{self.name}.weights.bin"

    @property
    def min_value(self) -> float:
        """The most negative finite value of the model dtype (HF's mask fill)."""
        return float(np.finfo(self.np_dtype).min)

    # -- nodes ------------------------------------------------------------------------------

    def op(self, scope: str, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        """Add one single-output node; returns its output name (or `out` if given)."""
        return self.op_n(scope, op_type, inputs, 1, outs=[out] if out else None, **attrs)[0]

    def op_n(self, scope: str, op_type: str, inputs: Sequence[str], n: int,
             outs: list[str] | None = None, **attrs) -> list[str]:
        """Add a node with `n` outputs; returns the output names."""
        name = self._unique(f"{scope}/{op_type}")
        outs = outs or [f"{name}_output_{i}" for i in range(n)]
        self.graph.node.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs

    def _unique(self, base: str) -> str:
        count = self._name_counts.get(base, 0)
        self._name_counts[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    # -- constants (Constant nodes) ---------------------------------------------------------

    def const(self, scope: str, value: np.ndarray) -> str:
        return self.op(scope, "Constant", value=numpy_helper.from_array(value))

    def scalar(self, scope: str, value: float) -> str:
        """A 0-d constant of the model dtype."""
        return self.const(scope, np.array(value, dtype=self.np_dtype))

    def ints(self, scope: str, values: Sequence[int]) -> str:
        """A 1-d int64 constant."""
        return self.const(scope, np.array(values, dtype=np.int64))

    def int_scalar(self, scope: str, value: int) -> str:
        return self.const(scope, np.array(value, dtype=np.int64))

    # -- weights (initializers) -------------------------------------------------------------

    def weight(self, name: str, shape: Sequence[int], init: str = "normal") -> str:
        """Add a parameter: `init` is "normal" (N(0, init_std)), "ones" or "zeros"."""
        tensor = self.graph.initializer.add(name=name, data_type=self.onnx_dtype, dims=shape)
        if self.shape_only:
            self._make_external(tensor)
        else:
            little_endian = self.np_dtype.newbyteorder("<")
            values = self._values(name, tuple(shape), init)
            tensor.raw_data = values.astype(little_endian, copy=False).tobytes()
        return name

    def _values(self, name: str, shape: tuple[int, ...], init: str) -> np.ndarray:
        if init == "ones":
            return np.ones(shape, self.np_dtype)
        if init == "zeros":
            return np.zeros(shape, self.np_dtype)
        if init != "normal":
            raise ValueError(f"weight {name}: unknown init {init!r}")
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(self.init_std)
        return values.astype(self.np_dtype, copy=False)

    def _make_external(self, tensor: TensorProto) -> None:
        """Point `tensor` at the next `length` bytes of the (absent) weights file."""
        length = math.prod(tensor.dims) * self.np_dtype.itemsize
        tensor.data_location = TensorProto.EXTERNAL
        entries = {"location": self.weight_file, "offset": str(self._offset),
                   "length": str(length)}
        for key, value in entries.items():
            tensor.external_data.add(key=key, value=value)
        self._offset += length

    # -- graph interface --------------------------------------------------------------------

    def input(self, name: str, elem_type: int, dims: Dims) -> str:
        self.graph.input.append(helper.make_tensor_value_info(name, elem_type, list(dims)))
        return name

    def output(self, name: str, dims: Dims, elem_type: int | None = None) -> None:
        elem = self.onnx_dtype if elem_type is None else elem_type
        self.graph.output.append(helper.make_tensor_value_info(name, elem, list(dims)))

    def model(self, *, doc: str, metadata: dict[str, str]) -> onnx.ModelProto:
        """Finish and return the ModelProto (IR version: the lowest that carries the opset).
        The builder must not be used afterwards."""
        opsets = [helper.make_opsetid("", self.opset)]
        model = self._model
        model.ir_version = helper.find_min_ir_version_for(opsets)
        model.producer_name, model.producer_version = "wafer.zoo", "0.1.0"
        model.doc_string = doc
        model.opset_import.extend(opsets)
        self.graph.name = self.name
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        return model
