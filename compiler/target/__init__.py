"""Target specs: the machine a model is compiled for, loaded and validated from TOML.

A `Target` is a frozen, hashable value: a 2D grid of cores (SRAM, clock, FLOP rates), the links
between neighbouring cores, the off-chip path, how many wafers (chips) there are and how they are
linked, the compute dtype and a per-step runtime overhead. Built-in specs live in `targets/*.toml`
(installed as the package `compiler.targets`); `load_target` reads a built-in name or a path,
applies overrides by key path (`core.sram_bytes=64KiB`) and validates. Every problem is a
one-line `TargetError` naming the file, the key path and what was expected. docs/targets.md
describes every field.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from compiler.errors import TargetError
from compiler.ir import DType, Tensor

OverrideValue = str | int | float

# ---------------------------------------------------------------------------------------------
# The value types
# ---------------------------------------------------------------------------------------------


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
        object.__setattr__(self, "flops_per_cycle", _freeze_flops(self.flops_per_cycle))

    @property
    def usable_bytes(self) -> int:
        return self.sram_bytes - self.reserve_bytes

    @property
    def flops_table(self) -> dict[str, int]:
        return dict(self.flops_per_cycle)

    def flops(self, dtype: DType | str) -> int:
        """FLOP per cycle for `dtype`; TargetError if the core has no rate for it."""
        name = _dtype_name(dtype)
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
    source: str = field(default="<memory>", compare=False)
    sha256: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        for key, message in _problems(self):
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
    def itemsize(self, dtype: DType) -> int:
        """Bytes one element of a `dtype` tensor takes on the machine (SRAM, NoC, inter-wafer
        links, off-chip): floats at the storage dtype `compute.dtype`, integers and bools at
        their own size. The one byte rule: tiling, placement, the schedule (and so the
        performance model and the report) and the executor's memory accounting count with it."""
        return self.compute.dtype.itemsize if dtype.is_float else dtype.itemsize

    def tensor_bytes(self, t: Tensor) -> int:
        """Bytes of a whole tensor on the machine: its elements x `itemsize(t.dtype)`."""
        return t.numel * self.itemsize(t.dtype)

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
        for section in _SECTIONS:
            out[section] = {k: _plain(v) for k, v in _fields(getattr(self, section)).items()}
        out["core"]["flops_per_cycle"] = self.core.flops_table
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


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_target(
    name_or_path: str | Path, overrides: Mapping[str, OverrideValue] | None = None
) -> Target:
    """Load a built-in target by name (`wse3`) or a spec file by path (`my.toml`), apply
    `overrides` by key path (`{"core.sram_bytes": "64KiB"}`) and validate."""
    text, label = _read_spec(str(name_or_path))
    raw = _parse_toml(text, label)
    if overrides:
        label = f"{label} (overrides: {_format_overrides(overrides)})"
        raw = apply_overrides(raw, overrides, label)
    return target_from_dict(raw, label)


def list_targets() -> list[Target]:
    """Every built-in target, sorted by name."""
    return sorted((load_target(name) for name in builtin_names()), key=lambda t: t.name)


def builtin_names() -> list[str]:
    """Names of the built-in targets (file stems in targets/), sorted."""
    return sorted(_builtin_files())


def target_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Target:
    """Build and validate a Target from spec-shaped data (parsed TOML or `Target.to_dict()`)."""
    _check_top_level(data, source)
    sections = {name: _parse_section(data, name, source) for name in _SECTIONS}
    return Target(
        name=_parse_value(data, "name", "str", source),
        description=_parse_value(data, "description", "str", source),
        grid=Grid(**sections["grid"]),
        core=Core(**sections["core"]),
        links=Links(**sections["links"]),
        offchip=OffChip(**sections["offchip"]),
        wafers=Wafers(**sections["wafers"]),
        compute=Compute(**sections["compute"]),
        runtime=Runtime(**sections["runtime"]),
        source=source,
    )


def override_keys() -> list[str]:
    """Every key path an override may set; `core.flops_per_cycle.<dtype>` for any dtype."""
    keys = [f"{s}.{k}" for s, fields_ in _SCHEMA.items() for k in fields_ if k != _FLOPS_KEY]
    return keys + [f"core.{_FLOPS_KEY}.<dtype>"]


def parse_override_args(items: list[str]) -> dict[str, str]:
    """`["core.sram_bytes=64KiB", "grid.rows=16"]` (a CLI's `--set`) -> a dict of overrides."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TargetError(f"override {item!r}: expected KEY=VALUE, e.g. core.sram_bytes=64KiB")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(
    raw: Mapping[str, Any], overrides: Mapping[str, OverrideValue], source: str = "<overrides>"
) -> dict[str, Any]:
    """A copy of spec-shaped `raw` with each key path set; unknown keys are an error."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for key, value in overrides.items():
        section, name = _split_override_key(key, source)
        table = out.setdefault(section, {})
        if not isinstance(table, dict):
            continue  # the section is not a table: validation reports it
        if name.startswith(f"{_FLOPS_KEY}."):
            _override_flops(table, name.split(".", 1)[1], value)
        else:
            table[name] = _coerce_override(value)
    return out


# ---------------------------------------------------------------------------------------------
# Schema: section -> key -> kind. A kind names a parser and says what it accepts.
# ---------------------------------------------------------------------------------------------

_FLOPS_KEY = "flops_per_cycle"
_SCHEMA: dict[str, dict[str, str]] = {
    "grid": {"rows": "int", "cols": "int"},
    "core": {
        "sram_bytes": "bytes",
        "reserve_bytes": "bytes",
        "clock_hz": "hz",
        _FLOPS_KEY: "flops",
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
_SECTIONS = tuple(_SCHEMA)
_TOP_KEYS = ("name", "description")

_BYTE_UNITS = {"B": 1, "KB": 10**3, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_PREFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_HZ_UNITS = {"Hz": 1, "kHz": 10**3, "KHz": 10**3, "MHz": 10**6, "GHz": 10**9}
_TIME_UNITS = {"s": Fraction(1), "ms": Fraction(1, 10**3), "us": Fraction(1, 10**6),
               "µs": Fraction(1, 10**6), "ns": Fraction(1, 10**9)}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*(\S*)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_EXPECTS = {
    "int": "an integer",
    "str": "a string",
    "bytes": 'an integer number of bytes or a string such as "48 KiB", "1.5 MB", "4176 B" '
    "(units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)",
    "bandwidth": 'bytes per second as a number or a string such as "150 GB/s" or "1.2 Tb/s" '
    "(B/s or b/s for bits, with prefix k, M, G, T, Ki, Mi, Gi, Ti)",
    "hz": 'a frequency in Hz as a number or a string such as "1.1 GHz" (Hz, kHz, MHz, GHz)',
    "seconds": 'seconds as a number or a string such as "2 us" (s, ms, us, µs, ns)',
    "dtype": "a dtype name: " + ", ".join(d.value for d in DType),
    "flops": 'a table of dtype = FLOP per cycle, e.g. { float16 = 8, float32 = 2 }',
}


class _Bad(ValueError):
    """A value could not be read; the caller adds the file and key path."""


def _expected(kind: str, value: object) -> _Bad:
    return _Bad(f"expected {_EXPECTS[kind]}, got {_show(value)}")


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


# -- value parsers ------------------------------------------------------------------------------


def _as_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _expected("int", value)


def _as_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise _expected("str", value)


def _as_number(value: object, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expected(kind, value)
    if not math.isfinite(value):
        raise _Bad(f"expected a finite number, got {value!r}")
    return float(value)


def _quantity(text: str, kind: str) -> tuple[Fraction, str]:
    """'1.5 MB' -> (Fraction(3, 2), 'MB'), exact; _Bad naming the accepted forms."""
    match = _QUANTITY.match(text)
    if not match:
        raise _expected(kind, text)
    number, exponent, unit = match.groups()
    if exponent and abs(int(exponent)) > 30:
        raise _expected(kind, text)
    scale = Fraction(10) ** int(exponent) if exponent else Fraction(1)
    return Fraction(number) * scale, unit


def _as_bytes(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise _expected("bytes", value)
    number, unit = _quantity(value, "bytes")
    if unit not in _BYTE_UNITS and unit:
        raise _expected("bytes", value)
    amount = number * _BYTE_UNITS.get(unit, 1)
    if amount.denominator != 1:
        raise _Bad(f"{_show(value)} is not a whole number of bytes")
    return int(amount)


def _as_bandwidth(value: object) -> float:
    if not isinstance(value, str):
        return _as_number(value, "bandwidth")
    number, unit = _quantity(value, "bandwidth")
    match = re.fullmatch(r"(Ki|Mi|Gi|Ti|k|K|M|G|T)?([Bb])/s", unit)
    if not match:
        raise _expected("bandwidth", value)
    prefix, b = match.groups()
    factor = Fraction(_PREFIX[prefix or ""]) / (8 if b == "b" else 1)
    return float(number * factor)


def _as_hz(value: object) -> float:
    if not isinstance(value, str):
        return _as_number(value, "hz")
    number, unit = _quantity(value, "hz")
    if unit not in _HZ_UNITS:
        raise _expected("hz", value)
    return float(number * _HZ_UNITS[unit])


def _as_seconds(value: object) -> float:
    if not isinstance(value, str):
        return _as_number(value, "seconds")
    number, unit = _quantity(value, "seconds")
    if unit not in _TIME_UNITS:
        raise _expected("seconds", value)
    return float(number * _TIME_UNITS[unit])


def _as_dtype(value: object) -> DType:
    if not isinstance(value, str):
        raise _expected("dtype", value)
    try:
        return DType.parse(value)
    except ValueError:
        raise _expected("dtype", value) from None


_PARSERS: dict[str, Callable[[object], Any]] = {
    "int": _as_int,
    "str": _as_str,
    "bytes": _as_bytes,
    "bandwidth": _as_bandwidth,
    "hz": _as_hz,
    "seconds": _as_seconds,
    "dtype": _as_dtype,
}


# -- reading a spec -----------------------------------------------------------------------------


def _builtin_files() -> dict[str, Traversable]:
    root = _builtin_root()
    return {
        entry.name.removesuffix(".toml"): entry
        for entry in root.iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    }


def _builtin_root() -> Traversable:
    """The installed package `compiler.targets`; in a bare source checkout, ../targets."""
    try:
        return resources.files("compiler.targets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "targets"


def _looks_like_path(text: str) -> bool:
    return text.endswith(".toml") or "/" in text or "\\" in text


def _read_spec(name_or_path: str) -> tuple[str, str]:
    """(TOML text, label for messages) of a built-in name or a path."""
    if _looks_like_path(name_or_path):
        return _read_file(Path(name_or_path)), name_or_path
    files = _builtin_files()
    if name_or_path not in files:
        raise TargetError(_unknown_target_message(name_or_path, sorted(files)))
    entry = files[name_or_path]
    return entry.read_text(encoding="utf-8"), f"targets/{entry.name}"


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TargetError(f"{path}: no such target spec file") from None
    except UnicodeDecodeError as exc:
        raise TargetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise TargetError(f"{path}: cannot read target spec: {exc.strerror}") from None


def _unknown_target_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown target {name!r}{hint}; built-in targets: {', '.join(known)}; "
        "or give a path to a .toml spec (see docs/targets.md)"
    )


def _parse_toml(text: str, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{label}: TOML syntax error: {exc}") from None


# -- structure checks ---------------------------------------------------------------------------


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _check_top_level(data: Mapping[str, Any], source: str) -> None:
    allowed = [*_TOP_KEYS, *_SECTIONS]
    for key, value in data.items():
        if key not in allowed:
            what = f"unknown table [{key}]" if isinstance(value, Mapping) else "unknown key"
            raise TargetError(
                f"{source}: {key}: {what}{_did_you_mean(key, allowed)} "
                f"(top-level keys: {', '.join(_TOP_KEYS)}; tables: {', '.join(_SECTIONS)})"
            )
    for key in _TOP_KEYS:
        if key not in data:
            raise TargetError(f"{source}: {key}: missing key (expected {_EXPECTS['str']})")
    for section in _SECTIONS:
        if section not in data:
            keys = ", ".join(_SCHEMA[section])
            raise TargetError(f"{source}: {section}: missing table [{section}] (keys {keys})")


def _parse_section(data: Mapping[str, Any], section: str, source: str) -> dict[str, Any]:
    table = data[section]
    if not isinstance(table, Mapping):
        raise TargetError(f"{source}: {section}: expected a table, got {_show(table)}")
    schema = _SCHEMA[section]
    for key in table:
        if key not in schema:
            valid = [f"{section}.{k}" for k in schema]
            suggestion = _did_you_mean(f"{section}.{key}", valid)
            raise TargetError(
                f"{source}: {section}.{key}: unknown key{suggestion} "
                f"(keys in [{section}]: {', '.join(valid)})"
            )
    return {key: _parse_value(table, key, kind, source, section) for key, kind in schema.items()}


def _parse_value(
    table: Mapping[str, Any], key: str, kind: str, source: str, section: str = ""
) -> Any:
    path = f"{section}.{key}" if section else key
    if key not in table:
        raise TargetError(f"{source}: {path}: missing key (expected {_EXPECTS[kind]})")
    if kind == "flops":
        return _parse_flops(table[key], path, source)
    try:
        return _PARSERS[kind](table[key])
    except _Bad as exc:
        raise TargetError(f"{source}: {path}: {exc}") from None


def _parse_flops(value: object, path: str, source: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, Mapping):
        raise TargetError(f"{source}: {path}: expected {_EXPECTS['flops']}, got {_show(value)}")
    rates: dict[str, int] = {}
    for key, rate in value.items():
        try:
            name = _as_dtype(key).value
            if name in rates:
                raise _Bad(f"{name} is given twice (under two spellings)")
            rates[name] = _as_int(rate)
        except _Bad as exc:
            raise TargetError(f"{source}: {path}.{key}: {exc}") from None
    return _freeze_flops(rates)


def _freeze_flops(
    rates: Mapping[str, int] | tuple[tuple[str, int], ...],
) -> tuple[tuple[str, int], ...]:
    items = rates.items() if isinstance(rates, Mapping) else rates
    return tuple(sorted((_dtype_name(k), v) for k, v in items))


def _dtype_name(dtype: DType | str) -> str:
    if isinstance(dtype, DType):
        return dtype.value
    try:
        return DType.parse(dtype).value
    except ValueError:
        return dtype


# -- overrides ----------------------------------------------------------------------------------


def _split_override_key(key: str, source: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    fixed = [k for k in override_keys() if not k.endswith("<dtype>")]
    if key in fixed:
        return section, name
    prefix = f"core.{_FLOPS_KEY}."
    if key.startswith(prefix):
        try:
            _as_dtype(key.removeprefix(prefix))
        except _Bad as exc:
            raise TargetError(f"{source}: {key}: unknown override key: {exc}") from None
        return section, name
    raise TargetError(
        f"{source}: {key}: unknown override key{_did_you_mean(key, fixed)} "
        f"(valid keys: {', '.join(override_keys())})"
    )


def _coerce_override(value: OverrideValue) -> object:
    """Strings from a command line read as TOML values where they are ('16', '1.1e9',
    '"abc"'); anything else ('64KiB', 'float16') stays a string for the field's parser."""
    if not isinstance(value, str):
        return value
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _override_flops(core: dict[str, Any], dtype: str, value: OverrideValue) -> None:
    name = DType.parse(dtype).value
    old = core.get(_FLOPS_KEY)
    rates = dict(old) if isinstance(old, Mapping) else {}
    for key in [k for k in rates if _dtype_name(k) == name]:
        del rates[key]
    rates[name] = _coerce_override(value)
    core[_FLOPS_KEY] = rates


def _format_overrides(overrides: Mapping[str, OverrideValue]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


# ---------------------------------------------------------------------------------------------
# Range checks: (key path, message) for each value outside what a real machine could have
# ---------------------------------------------------------------------------------------------

MAX_GRID_SIDE = 65_536
MAX_CORES_PER_WAFER = 10**8
MAX_SRAM_BYTES = 2**30
MAX_WAFERS = 4096
MAX_CLOCK_HZ = 1e11
MAX_LATENCY_S = 1.0
MAX_CYCLES = 10**9
MAX_RATE = 2**20  # FLOP/cycle per core and link bytes/cycle

Problems = Iterator[tuple[str, str]]


def _problems(t: Target) -> Problems:
    yield from _name_problems(t)
    yield from _grid_problems(t.grid)
    yield from _core_problems(t.core)
    yield from _link_problems(t.links)
    yield from _io_problems(t)
    yield from _compute_problems(t)


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
        yield "name", f"expected letters, digits, '.', '_' or '-', got {_show(t.name)}"


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
        yield f"core.{_FLOPS_KEY}", "expected at least one dtype = FLOP per cycle"
    for name, rate in c.flops_per_cycle:
        yield from _in_range(f"core.{_FLOPS_KEY}.{name}", rate, 1, MAX_RATE)


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
            f"{dtype.value} has no rate in core.{_FLOPS_KEY} (has {', '.join(rates) or 'none'})"
        )
    if acc.itemsize < dtype.itemsize or acc.is_float != dtype.is_float:
        yield "compute.accumulate", (
            f"expected a {'float' if dtype.is_float else 'integer'} dtype at least as wide as "
            f"compute.dtype ({dtype.value}), got {acc.value}"
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
