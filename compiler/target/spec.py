"""The target values: frozen, hashable dataclasses for the grid, a core, the links, the off-chip
path, the wafers, the compute dtypes and the runtime, and `Target` with its derived sizes and
rates and the byte rule (`itemsize`, `tensor_bytes`). Constructing a `Target` validates it
(compiler/target/validate.py) and computes its `sha256`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from compiler.errors import TargetError
from compiler.ir import DType, Tensor, TensorKind, storage_bytes
from compiler.target.schema import SECTIONS
from compiler.target.units import dtype_name, freeze_flops
from compiler.target.validate import problems


@dataclass(frozen=True)
class Grid:
    """The usable core grid of one wafer (chip): `rows` x `cols` cores on a 2D mesh."""

    rows: int
    cols: int

    @property
    def cores(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class Core:
    """One core: SRAM (bytes), bytes the runtime keeps, clock (Hz), FLOP per cycle per dtype.

    `flops_per_cycle` is a sorted tuple of (dtype name, FLOP/cycle) pairs so the value stays
    hashable; a mapping passed in is frozen into that form."""

    sram_bytes: int
    reserve_bytes: int
    clock_hz: float
    flops_per_cycle: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "flops_per_cycle", freeze_flops(self.flops_per_cycle))

    @property
    def usable_bytes(self) -> int:
        return self.sram_bytes - self.reserve_bytes

    @property
    def flops_table(self) -> dict[str, int]:
        return dict(self.flops_per_cycle)

    def flops(self, dtype: DType | str) -> int:
        """FLOP per cycle for `dtype`; TargetError if the core has no rate for it."""
        name = dtype_name(dtype)
        table = self.flops_table
        if name not in table:
            raise TargetError(
                f"core.flops_per_cycle: no rate for {name}; the target has "
                f"{', '.join(table) or 'none'}"
            )
        return table[name]


@dataclass(frozen=True)
class Links:
    """Core-to-core links: bytes per cycle per link per direction, latency per hop and per turn
    (extra cycles when a route changes direction)."""

    bytes_per_cycle: int
    hop_latency_cycles: int
    turn_latency_cycles: int


@dataclass(frozen=True)
class OffChip:
    """The path between a wafer and external memory or the host: bytes/s and seconds."""

    bandwidth_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True)
class Wafers:
    """How many wafers (chips) the system has and the link between two of them (per wafer)."""

    count: int
    link_bandwidth_bytes_per_s: float
    link_latency_s: float


@dataclass(frozen=True)
class Compute:
    """The dtype tensors are stored and multiplied in, and the dtype sums accumulate in."""

    dtype: DType
    accumulate: DType


@dataclass(frozen=True)
class Runtime:
    """Software costs: cycles of overhead per dependent schedule step (task switch, setup)."""

    step_overhead_cycles: int


@dataclass(frozen=True)
class Storage:
    """Optional storage dtypes per tensor kind ([storage] in a spec): `weights` holds float
    weights of the source model at that width (e.g. int8: 1 byte each) in SRAM, on links and
    off-chip. None keeps the default byte rule (`Target.element_bytes`)."""

    weights: DType | None = None

    def to_dict(self) -> dict[str, str]:
        return {k: v.value for k, v in _fields(self).items() if v is not None}


@dataclass(frozen=True)
class Target:
    """A validated machine description. Construction checks every range (also after
    `dataclasses.replace`) and computes `sha256` over the canonical content."""

    name: str
    description: str
    grid: Grid
    core: Core
    links: Links
    offchip: OffChip
    wafers: Wafers
    compute: Compute
    runtime: Runtime
    storage: Storage = Storage()
    source: str = field(default="<memory>", compare=False)
    sha256: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        for key, message in problems(self):
            raise TargetError(f"{self.source}: {key}: {message}")
        canonical = json.dumps(self.canonical_dict(), sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "sha256", hashlib.sha256(canonical.encode()).hexdigest())

    # -- sizes ------------------------------------------------------------------------------
    @property
    def cores_per_wafer(self) -> int:
        return self.grid.cores

    @property
    def total_cores(self) -> int:
        return self.cores_per_wafer * self.wafers.count

    @property
    def usable_bytes_per_core(self) -> int:
        """SRAM per core minus the runtime reserve: what placement may fill."""
        return self.core.usable_bytes

    @property
    def sram_bytes_per_wafer(self) -> int:
        return self.core.sram_bytes * self.cores_per_wafer

    @property
    def usable_bytes_per_wafer(self) -> int:
        return self.usable_bytes_per_core * self.cores_per_wafer

    @property
    def total_usable_bytes(self) -> int:
        return self.usable_bytes_per_wafer * self.wafers.count

    # -- bytes on the chip --------------------------------------------------------------------
    def itemsize(self, dtype: DType) -> float:
        """Bytes one element of a `dtype` tensor takes on the machine (SRAM, NoC, inter-wafer
        links, off-chip): floats at the storage dtype `compute.dtype`, integers, bools and
        quantized types at their own width (0.5 for 4-bit)."""
        return (self.compute.dtype.bits if dtype.is_float else dtype.bits) / 8

    def element_bytes(self, t: Tensor) -> float:
        """Bytes one element of tensor `t` takes on the machine. The one byte rule: tiling,
        placement, the schedule (and so the performance model and the report) and the
        executor's memory accounting count with it. A tensor with its own storage width
        (`t.storage_bits`, e.g. MXFP4 weights at 4.25 bits) counts at it; a float weight
        dequantized from integers (`t.storage`, set by the frontend) at its stored dtype; a
        float source weight at [storage] weights when the target sets it; anything else at
        `itemsize(t.dtype)`."""
        if t.storage_bits is not None:
            return t.storage_bits / 8
        if t.storage is not None:
            return t.storage.bits / 8
        weights = self.storage.weights
        if weights is not None and t.kind is TensorKind.WEIGHT and t.dtype.is_float:
            return weights.bits / 8
        return self.itemsize(t.dtype)

    def tensor_bytes(self, t: Tensor) -> int:
        """Bytes of a whole tensor on the machine: its elements at `element_bytes(t)`, packed."""
        return storage_bytes(t.numel, self.element_bytes(t) * 8)

    # -- rates ------------------------------------------------------------------------------
    def peak_flops(self, dtype: DType | str | None = None) -> float:
        """Peak FLOP/s of one wafer in `dtype` (default: the compute dtype)."""
        rate = self.core.flops(dtype if dtype is not None else self.compute.dtype)
        return rate * self.core.clock_hz * self.cores_per_wafer

    def total_peak_flops(self, dtype: DType | str | None = None) -> float:
        """Peak FLOP/s of all wafers together."""
        return self.peak_flops(dtype) * self.wafers.count

    @property
    def link_bytes_per_s(self) -> float:
        """One core-to-core link, one direction."""
        return self.links.bytes_per_cycle * self.core.clock_hz

    @property
    def bisection_bytes_per_s(self) -> float:
        """One direction across the narrowest cut that halves a wafer: min(rows, cols) links."""
        return min(self.grid.rows, self.grid.cols) * self.link_bytes_per_s

    def cycles_to_seconds(self, cycles: float) -> float:
        return cycles / self.core.clock_hz

    def seconds_to_cycles(self, seconds: float) -> float:
        return seconds * self.core.clock_hz

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data in spec form (bytes as int, rates as float); `target_from_dict` reads it."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        for section in SECTIONS:
            out[section] = {k: _plain(v) for k, v in _fields(getattr(self, section)).items()}
        out["core"]["flops_per_cycle"] = self.core.flops_table
        if self.storage.to_dict():  # optional: absent leaves a spec's hash as it was
            out["storage"] = self.storage.to_dict()
        return out

    def canonical_dict(self) -> dict[str, Any]:
        """What `sha256` covers: everything except `description` and `source`."""
        data = self.to_dict()
        del data["description"]
        return data

    def summary(self) -> str:
        """One line for listings: grid, SRAM, wafers, capacity and peak rate."""
        wafers = f"{self.wafers.count} x " if self.wafers.count > 1 else ""
        return (
            f"{self.name}: {wafers}{self.grid.rows} x {self.grid.cols} cores, "
            f"{self.core.sram_bytes:,} B SRAM/core ({self.usable_bytes_per_core:,} usable), "
            f"{_si(self.total_usable_bytes, 'B')} usable, "
            f"{_si(self.total_peak_flops(), 'FLOP/s')} {self.compute.dtype.value}"
        )



# -- helpers for to_dict ------------------------------------------------------------------------


def _fields(obj: object) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


def _si(value: float, unit: str) -> str:
    """1.57e16, 'FLOP/s' -> '15.7 PFLOP/s' (decimal prefixes)."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6),
                          ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _plain(value: object) -> object:
    return value.value if isinstance(value, DType) else value
