"""The shape of a target spec: its top-level keys, its tables and, per key, the kind of value
(a parser in `units`). Loading, overrides and `Target.to_dict` all follow it."""

from __future__ import annotations

FLOPS_KEY = "flops_per_cycle"
SCHEMA: dict[str, dict[str, str]] = {
    "grid": {"rows": "int", "cols": "int"},
    "core": {
        "sram_bytes": "bytes",
        "reserve_bytes": "bytes",
        "clock_hz": "hz",
        FLOPS_KEY: "flops",
    },
    "links": {
        "bytes_per_cycle": "bytes",
        "hop_latency_cycles": "int",
        "turn_latency_cycles": "int",
    },
    "offchip": {"bandwidth_bytes_per_s": "bandwidth", "latency_s": "seconds"},
    "wafers": {
        "count": "int",
        "link_bandwidth_bytes_per_s": "bandwidth",
        "link_latency_s": "seconds",
    },
    "compute": {"dtype": "dtype", "accumulate": "dtype"},
    "runtime": {"step_overhead_cycles": "int"},
}
SECTIONS = tuple(SCHEMA)
# optional tables whose keys are each optional: [storage] gives a tensor kind a storage dtype
# other than its own (`weights = "int8"`: float weights are held and moved as 1-byte values)
OPTIONAL_SCHEMA: dict[str, dict[str, str]] = {"storage": {"weights": "dtype"}}
OPTIONAL_SECTIONS = tuple(OPTIONAL_SCHEMA)
TOP_KEYS = ("name", "description")
