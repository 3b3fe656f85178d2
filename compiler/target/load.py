"""Loading target specs: built-in names (targets/*.toml, installed as `compiler.targets`) or
paths, TOML reading, overrides, and `target_from_dict` checking the structure (unknown keys with
a did-you-mean, missing keys, wrong kinds) before `Target` checks the ranges."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from compiler.errors import TargetError
from compiler.target.overrides import OverrideValue, apply_overrides, format_overrides
from compiler.target.schema import (
    OPTIONAL_SCHEMA,
    OPTIONAL_SECTIONS,
    SCHEMA,
    SECTIONS,
    TOP_KEYS,
)
from compiler.target.spec import (
    Compute,
    Core,
    Grid,
    Links,
    OffChip,
    Runtime,
    Storage,
    Target,
    Wafers,
)
from compiler.target.units import (
    EXPECTS,
    PARSERS,
    BadValue,
    as_dtype,
    as_int,
    did_you_mean,
    freeze_flops,
    show,
)


def load_target(
    name_or_path: str | Path, overrides: Mapping[str, OverrideValue] | None = None
) -> Target:
    """Load a built-in target by name (`wse3`) or a spec file by path (`my.toml`), apply
    `overrides` by key path (`{"core.sram_bytes": "64KiB"}`) and validate."""
    text, label = _read_spec(str(name_or_path))
    raw = _parse_toml(text, label)
    if overrides:
        label = f"{label} (overrides: {format_overrides(overrides)})"
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
    sections = {name: _parse_section(data, name, source) for name in SECTIONS}
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
        storage=Storage(**_parse_optional(data, "storage", source)),
        source=source,
    )


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
        return Path(__file__).resolve().parents[2] / "targets"


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


def _check_top_level(data: Mapping[str, Any], source: str) -> None:
    allowed = [*TOP_KEYS, *SECTIONS, *OPTIONAL_SECTIONS]
    for key, value in data.items():
        if key not in allowed:
            what = f"unknown table [{key}]" if isinstance(value, Mapping) else "unknown key"
            raise TargetError(
                f"{source}: {key}: {what}{did_you_mean(key, allowed)} "
                f"(top-level keys: {', '.join(TOP_KEYS)}; tables: "
                f"{', '.join([*SECTIONS, *OPTIONAL_SECTIONS])})"
            )
    for key in TOP_KEYS:
        if key not in data:
            raise TargetError(f"{source}: {key}: missing key (expected {EXPECTS['str']})")
    for section in SECTIONS:
        if section not in data:
            keys = ", ".join(SCHEMA[section])
            raise TargetError(f"{source}: {section}: missing table [{section}] (keys {keys})")


def _parse_optional(data: Mapping[str, Any], section: str, source: str) -> dict[str, Any]:
    """An optional table: absent is empty, and each of its keys may be left out."""
    if section not in data:
        return {}
    table = _table(data, section, source, OPTIONAL_SCHEMA[section])
    return {key: _parse_value(table, key, kind, source, section)
            for key, kind in OPTIONAL_SCHEMA[section].items() if key in table}


def _parse_section(data: Mapping[str, Any], section: str, source: str) -> dict[str, Any]:
    schema = SCHEMA[section]
    table = _table(data, section, source, schema)
    return {key: _parse_value(table, key, kind, source, section) for key, kind in schema.items()}


def _table(data: Mapping[str, Any], section: str, source: str,
           schema: Mapping[str, str]) -> Mapping[str, Any]:
    table = data[section]
    if not isinstance(table, Mapping):
        raise TargetError(f"{source}: {section}: expected a table, got {show(table)}")
    for key in table:
        if key not in schema:
            valid = [f"{section}.{k}" for k in schema]
            suggestion = did_you_mean(f"{section}.{key}", valid)
            raise TargetError(
                f"{source}: {section}.{key}: unknown key{suggestion} "
                f"(keys in [{section}]: {', '.join(valid)})"
            )
    return table


def _parse_value(
    table: Mapping[str, Any], key: str, kind: str, source: str, section: str = ""
) -> Any:
    path = f"{section}.{key}" if section else key
    if key not in table:
        raise TargetError(f"{source}: {path}: missing key (expected {EXPECTS[kind]})")
    if kind == "flops":
        return _parse_flops(table[key], path, source)
    try:
        return PARSERS[kind](table[key])
    except BadValue as exc:
        raise TargetError(f"{source}: {path}: {exc}") from None


def _parse_flops(value: object, path: str, source: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, Mapping):
        raise TargetError(f"{source}: {path}: expected {EXPECTS['flops']}, got {show(value)}")
    rates: dict[str, int] = {}
    for key, rate in value.items():
        try:
            name = as_dtype(key).value
            if name in rates:
                raise BadValue(f"{name} is given twice (under two spellings)")
            rates[name] = as_int(rate)
        except BadValue as exc:
            raise TargetError(f"{source}: {path}.{key}: {exc}") from None
    return freeze_flops(rates)

