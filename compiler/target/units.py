"""Values as a target spec writes them: quantities with units (bytes, bandwidth, Hz, seconds),
dtypes and plain ints and strings, each read by a parser that says what it accepts.

A parser raises `BadValue` ("expected ..., got ..."); the caller adds the file and key path.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from compiler.ir import DType

_BYTE_UNITS = {"B": 1, "KB": 10**3, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_PREFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_HZ_UNITS = {"Hz": 1, "kHz": 10**3, "KHz": 10**3, "MHz": 10**6, "GHz": 10**9}
_TIME_UNITS = {"s": Fraction(1), "ms": Fraction(1, 10**3), "us": Fraction(1, 10**6),
               "µs": Fraction(1, 10**6), "ns": Fraction(1, 10**9)}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*(\S*)\s*$")

EXPECTS = {
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


class BadValue(ValueError):
    """A value could not be read; the caller adds the file and key path."""


def expected(kind: str, value: object) -> BadValue:
    return BadValue(f"expected {EXPECTS[kind]}, got {show(value)}")


def show(value: object) -> str:
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


def as_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise expected("int", value)


def as_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise expected("str", value)


def _as_number(value: object, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise expected(kind, value)
    if not math.isfinite(value):
        raise BadValue(f"expected a finite number, got {value!r}")
    return float(value)


def _quantity(text: str, kind: str) -> tuple[Fraction, str]:
    """'1.5 MB' -> (Fraction(3, 2), 'MB'), exact; BadValue naming the accepted forms."""
    match = _QUANTITY.match(text)
    if not match:
        raise expected(kind, text)
    number, exponent, unit = match.groups()
    if exponent and abs(int(exponent)) > 30:
        raise expected(kind, text)
    scale = Fraction(10) ** int(exponent) if exponent else Fraction(1)
    return Fraction(number) * scale, unit


def _as_bytes(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise expected("bytes", value)
    number, unit = _quantity(value, "bytes")
    if unit not in _BYTE_UNITS and unit:
        raise expected("bytes", value)
    amount = number * _BYTE_UNITS.get(unit, 1)
    if amount.denominator != 1:
        raise BadValue(f"{show(value)} is not a whole number of bytes")
    return int(amount)


def _as_bandwidth(value: object) -> float:
    if not isinstance(value, str):
        return _as_number(value, "bandwidth")
    number, unit = _quantity(value, "bandwidth")
    match = re.fullmatch(r"(Ki|Mi|Gi|Ti|k|K|M|G|T)?([Bb])/s", unit)
    if not match:
        raise expected("bandwidth", value)
    prefix, b = match.groups()
    factor = Fraction(_PREFIX[prefix or ""]) / (8 if b == "b" else 1)
    return float(number * factor)


def _scaled(value: object, kind: str, units: dict) -> float:
    """A plain number, or a quantity string whose unit is one of `units` (name -> factor)."""
    if not isinstance(value, str):
        return _as_number(value, kind)
    number, unit = _quantity(value, kind)
    if unit not in units:
        raise expected(kind, value)
    return float(number * units[unit])


def _as_hz(value: object) -> float:
    return _scaled(value, "hz", _HZ_UNITS)


def _as_seconds(value: object) -> float:
    return _scaled(value, "seconds", _TIME_UNITS)


def as_dtype(value: object) -> DType:
    if not isinstance(value, str):
        raise expected("dtype", value)
    try:
        return DType.parse(value)
    except ValueError:
        raise expected("dtype", value) from None


PARSERS: dict[str, Callable[[object], Any]] = {
    "int": as_int,
    "str": as_str,
    "bytes": _as_bytes,
    "bandwidth": _as_bandwidth,
    "hz": _as_hz,
    "seconds": _as_seconds,
    "dtype": as_dtype,
}


def freeze_flops(
    rates: Mapping[str, int] | tuple[tuple[str, int], ...],
) -> tuple[tuple[str, int], ...]:
    items = rates.items() if isinstance(rates, Mapping) else rates
    return tuple(sorted((dtype_name(k), v) for k, v in items))


def dtype_name(dtype: DType | str) -> str:
    if isinstance(dtype, DType):
        return dtype.value
    try:
        return DType.parse(dtype).value
    except ValueError:
        return dtype


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]}?" if close else ""
