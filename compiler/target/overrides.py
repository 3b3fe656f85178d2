"""Overrides: a spec's values set by key path (`core.sram_bytes=64KiB`, a CLI's `--set`, a sweep
axis) on the raw, spec-shaped data before it is validated."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from compiler.errors import TargetError
from compiler.ir import DType
from compiler.target.schema import FLOPS_KEY, OPTIONAL_SCHEMA, SCHEMA
from compiler.target.units import BadValue, as_dtype, did_you_mean, dtype_name

OverrideValue = str | int | float


def override_keys() -> list[str]:
    """Every key path an override may set; `core.flops_per_cycle.<dtype>` for any dtype."""
    keys = [f"{s}.{k}" for s, fields_ in (SCHEMA | OPTIONAL_SCHEMA).items() for k in fields_
            if k != FLOPS_KEY]
    return keys + [f"core.{FLOPS_KEY}.<dtype>"]


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
        if name.startswith(f"{FLOPS_KEY}."):
            _override_flops(table, name.split(".", 1)[1], value)
        else:
            table[name] = _coerce_override(value)
    return out


def _split_override_key(key: str, source: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    fixed = [k for k in override_keys() if not k.endswith("<dtype>")]
    if key in fixed:
        return section, name
    prefix = f"core.{FLOPS_KEY}."
    if key.startswith(prefix):
        try:
            as_dtype(key.removeprefix(prefix))
        except BadValue as exc:
            raise TargetError(f"{source}: {key}: unknown override key: {exc}") from None
        return section, name
    raise TargetError(
        f"{source}: {key}: unknown override key{did_you_mean(key, fixed)} "
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
    old = core.get(FLOPS_KEY)
    rates = dict(old) if isinstance(old, Mapping) else {}
    for key in [k for k in rates if dtype_name(k) == name]:
        del rates[key]
    rates[name] = _coerce_override(value)
    core[FLOPS_KEY] = rates


def format_overrides(overrides: Mapping[str, OverrideValue]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())
