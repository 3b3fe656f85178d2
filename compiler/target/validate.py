"""Range checks of a `Target`: (key path, message) for each value outside what a real machine
could have. `Target.__post_init__` raises the first as a one-line TargetError."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from compiler.target.schema import FLOPS_KEY
from compiler.target.units import show

if TYPE_CHECKING:
    from compiler.target.spec import Core, Grid, Links, Target

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

MAX_GRID_SIDE = 65_536
MAX_CORES_PER_WAFER = 10**8
MAX_SRAM_BYTES = 2**30
MAX_WAFERS = 4096
MAX_CLOCK_HZ = 1e11
MAX_LATENCY_S = 1.0
MAX_CYCLES = 10**9
MAX_RATE = 2**20  # FLOP/cycle per core and link bytes/cycle

Problems = Iterator[tuple[str, str]]


def problems(t: Target) -> Problems:
    yield from _name_problems(t)
    yield from _grid_problems(t.grid)
    yield from _core_problems(t.core)
    yield from _link_problems(t.links)
    yield from _io_problems(t)
    yield from _compute_problems(t)
    yield from _storage_problems(t)


def _num(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,g}"


def _in_range(key: str, value: float, low: float, high: float, unit: str = "") -> Problems:
    if not low <= value <= high:
        yield key, f"expected a value in {_num(low)}..{_num(high)}{unit}, got {_num(value)}"


def _positive(key: str, value: float, high: float, unit: str) -> Problems:
    if not (value > 0 and math.isfinite(value)):
        yield key, f"expected a finite value > 0 ({unit}), got {value!r}"
    elif value > high:
        yield key, f"expected at most {_num(high)} {unit}, got {_num(value)}"


def _name_problems(t: Target) -> Problems:
    if not _NAME.match(t.name):
        yield "name", f"expected letters, digits, '.', '_' or '-', got {show(t.name)}"


def _grid_problems(g: Grid) -> Problems:
    yield from _in_range("grid.rows", g.rows, 1, MAX_GRID_SIDE)
    yield from _in_range("grid.cols", g.cols, 1, MAX_GRID_SIDE)
    if g.cores > MAX_CORES_PER_WAFER:
        yield "grid", (
            f"{g.rows:,} x {g.cols:,} = {g.cores:,} cores per wafer; at most "
            f"{MAX_CORES_PER_WAFER:,} are accepted"
        )


def _core_problems(c: Core) -> Problems:
    yield from _in_range("core.sram_bytes", c.sram_bytes, 1, MAX_SRAM_BYTES, " bytes (1 GiB)")
    if not 0 <= c.reserve_bytes < c.sram_bytes:
        yield "core.reserve_bytes", (
            f"expected 0 <= reserve < core.sram_bytes ({c.sram_bytes:,}), got {c.reserve_bytes:,}"
        )
    yield from _positive("core.clock_hz", c.clock_hz, MAX_CLOCK_HZ, "Hz")
    if not c.flops_per_cycle:
        yield f"core.{FLOPS_KEY}", "expected at least one dtype = FLOP per cycle"
    for name, rate in c.flops_per_cycle:
        yield from _in_range(f"core.{FLOPS_KEY}.{name}", rate, 1, MAX_RATE)


def _link_problems(links: Links) -> Problems:
    yield from _in_range("links.bytes_per_cycle", links.bytes_per_cycle, 1, MAX_RATE)
    yield from _in_range("links.hop_latency_cycles", links.hop_latency_cycles, 0, MAX_CYCLES)
    yield from _in_range("links.turn_latency_cycles", links.turn_latency_cycles, 0, MAX_CYCLES)


def _io_problems(t: Target) -> Problems:
    yield from _positive("offchip.bandwidth_bytes_per_s", t.offchip.bandwidth_bytes_per_s,
                         1e18, "bytes/s")
    yield from _in_range("offchip.latency_s", t.offchip.latency_s, 0, MAX_LATENCY_S, " s")
    yield from _in_range("wafers.count", t.wafers.count, 1, MAX_WAFERS)
    yield from _positive("wafers.link_bandwidth_bytes_per_s",
                         t.wafers.link_bandwidth_bytes_per_s, 1e18, "bytes/s")
    yield from _in_range("wafers.link_latency_s", t.wafers.link_latency_s, 0, MAX_LATENCY_S, " s")
    yield from _in_range("runtime.step_overhead_cycles", t.runtime.step_overhead_cycles, 0,
                         MAX_CYCLES)


def _compute_problems(t: Target) -> Problems:
    dtype, acc = t.compute.dtype, t.compute.accumulate
    rates = t.core.flops_table
    if dtype.value not in rates:
        yield "compute.dtype", (
            f"{dtype.value} has no rate in core.{FLOPS_KEY} (has {', '.join(rates) or 'none'})"
        )
    if acc.itemsize < dtype.itemsize or acc.is_float != dtype.is_float:
        yield "compute.accumulate", (
            f"expected a {'float' if dtype.is_float else 'integer'} dtype at least as wide as "
            f"compute.dtype ({dtype.value}), got {acc.value}"
        )



def _storage_problems(t: Target) -> Problems:
    w = t.storage.weights
    if w is not None and (w.value in ("bool", "int64", "int32", "int16", "float64")
                          or w.bits > t.compute.dtype.bits):
        yield "storage.weights", (
            "expected a float, int8/uint8, int4/uint4 or float8 dtype no wider than "
            f"compute.dtype ({t.compute.dtype.value}), got {w.value}")
