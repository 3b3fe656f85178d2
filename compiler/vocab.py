"""The compiler's shared names, defined once: op categories, step and collective kinds, phases,
performance modes, placement methods, executor precisions and ONNX's tensor data type numbers.

Stdlib only and imports nothing of the compiler, so every stage can use it. The string enums
are `enum.StrEnum`: a member equals, hashes and JSON-encodes as its string, so artifacts and
comparisons with strings read from OUT/ are unchanged.

Op categories differ on purpose; each set says what its users rely on:

- `RESHAPE_OPS` rearrange the elements of one input into a new shape, in the same order;
- `VIEW_OPS` (reshapes, Transpose, Identity) reinterpret their input's tiles in place: the
  output holds exactly the input's elements, and can take over a dying input's memory;
- `ONE_BUFFER_OPS` (views and Expand) hold one activation buffer, not an input and an output,
  in tiling's per-core memory estimate;
- `ZERO_COST_OPS` (views, inference Dropout, Expand: a broadcast read, not a copy, on the
  machine) take no time in the performance model;
- `PASS_THROUGH_OPS` (views, Cast, Expand) carry token ids unchanged to the Gather that indexes
  a table with them (verify sizes random ids by that table);
- `LAYOUT_OPS` only move, select or view data (views, Cast, Expand, Tile, Concat, Slice,
  Gather): K and V keep their identity through them (tiling's KV-cache detection).
"""

from __future__ import annotations

import enum

RESHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
VIEW_OPS = RESHAPE_OPS | {"Transpose", "Identity"}
ONE_BUFFER_OPS = VIEW_OPS | {"Expand"}
ZERO_COST_OPS = VIEW_OPS | {"Dropout", "Expand"}
PASS_THROUGH_OPS = VIEW_OPS | {"Cast", "Expand"}
LAYOUT_OPS = VIEW_OPS | {"Cast", "Expand", "Tile", "Concat", "Slice", "Gather"}


class StepKind(enum.StrEnum):
    """What a schedule step does (compiler/schedule/build.py describes each)."""

    LOAD = "load"  # off-chip -> region
    COMPUTE = "compute"  # one op on one region
    COLLECTIVE = "collective"  # inside a region along one mesh axis (its op_kind: CollectiveKind)
    SEND = "send"  # region -> region on one wafer
    WAFER_SEND = "wafer_send"  # region -> region across wafers
    STORE = "store"  # region -> off-chip
    APPEND = "append"  # decode: a step's own K/V into its resident KV cache at position t
    CACHE_WRITE = "cache_write"  # prefill: the prompt's K/V into its resident KV cache (0..S-1)


TRANSFER_KINDS = (StepKind.SEND, StepKind.WAFER_SEND)  # region -> region
OFFCHIP_KINDS = (StepKind.LOAD, StepKind.STORE)  # between a region and off-chip memory
REGION_KINDS = (StepKind.COMPUTE, StepKind.COLLECTIVE,  # serialized per region by the model
                StepKind.APPEND, StepKind.CACHE_WRITE)


class CollectiveKind(enum.StrEnum):
    """Data movement inside a region an op's layout needs (tiling.layouts.Collective.kind); a
    collective step's op_kind is one of REDUCE, RELAYOUT, RETILE."""

    REDUCE = "reduce"  # partial sums -> complete
    ALLREDUCE = "allreduce"  # statistics of a split axis, fused into the compute step
    RELAYOUT = "relayout"  # re-split a tensor another way
    GATHER = "gather"  # a table gathered whole along an axis
    RETILE = "retile"  # the op itself moves tiles: split/slice/concat/index along a split dim


class Phase(enum.StrEnum):
    """When a step runs."""

    SETUP = "setup"  # once, before the first forward
    TOKEN = "token"  # every forward


class Mode(enum.StrEnum):
    """What the performance model times."""

    DECODE = "decode"  # one token
    PREFILL = "prefill"  # the whole prompt


class PlacementMethod(enum.StrEnum):
    """`--method`: the placer (compiler/placement/)."""

    CPSAT = "cpsat"
    FIRST_FIT = "first-fit"
    SERPENTINE = "serpentine"


PLACEMENT_METHODS = tuple(m.value for m in PlacementMethod)  # plain strings: argparse choices


class Precision(enum.StrEnum):
    """`--precision`: what the executor computes in."""

    FP32 = "fp32"
    TARGET = "target"  # the target's dtype, constants clamped to its finite range (as fp16 export)
    TARGET_STRICT = "target-strict"  # the target's dtype, constants rounded as is (may be inf)


PRECISIONS = tuple(p.value for p in Precision)  # plain strings: argparse choices


class DataType(enum.IntEnum):
    """ONNX's tensor element types (the numbers of onnx.TensorProto.DataType), for attributes
    such as Cast's `to` that hold them."""

    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
