"""Target specs: the machine a model is compiled for, loaded and validated from TOML.

A `Target` is a frozen, hashable value: a 2D grid of cores (SRAM, clock, FLOP rates), the links
between neighbouring cores, the off-chip path, how many wafers (chips) there are and how they are
linked, the compute dtype and a per-step runtime overhead. Built-in specs live in `targets/*.toml`
(installed as the package `compiler.targets`); `load_target` reads a built-in name or a path,
applies overrides by key path (`core.sram_bytes=64KiB`) and validates. Every problem is a
one-line `TargetError` naming the file, the key path and what was expected. docs/targets.md
describes every field.

    spec.py       the values: Grid, Core, Links, OffChip, Wafers, Compute, Runtime, Target
    schema.py     the spec's shape: section -> key -> kind of value
    units.py      reading values: bytes, bandwidth, Hz, seconds, dtypes
    load.py       built-in names and paths, TOML, target_from_dict (structure checks)
    overrides.py  override keys, `--set` parsing, applying overrides to raw spec data
    validate.py   range checks run by Target's constructor
"""

from compiler.target.load import builtin_names, list_targets, load_target, target_from_dict
from compiler.target.overrides import (
    OverrideValue,
    apply_overrides,
    override_keys,
    parse_override_args,
)
from compiler.target.spec import Compute, Core, Grid, Links, OffChip, Runtime, Target, Wafers
from compiler.target.validate import (
    MAX_CLOCK_HZ,
    MAX_CORES_PER_WAFER,
    MAX_CYCLES,
    MAX_GRID_SIDE,
    MAX_LATENCY_S,
    MAX_RATE,
    MAX_SRAM_BYTES,
    MAX_WAFERS,
)

__all__ = [
    "MAX_CLOCK_HZ",
    "MAX_CORES_PER_WAFER",
    "MAX_CYCLES",
    "MAX_GRID_SIDE",
    "MAX_LATENCY_S",
    "MAX_RATE",
    "MAX_SRAM_BYTES",
    "MAX_WAFERS",
    "Compute",
    "Core",
    "Grid",
    "Links",
    "OffChip",
    "OverrideValue",
    "Runtime",
    "Target",
    "Wafers",
    "apply_overrides",
    "builtin_names",
    "list_targets",
    "load_target",
    "override_keys",
    "parse_override_args",
    "target_from_dict",
]
