"""Number formatting for people: bytes in decimal units, counts with separators, times.

Every formatter writes a number one way: three significant digits in plain decimals with an SI
unit or prefix (`1.2 MB`, `80.5 M`, `999 ms`), or an exact count with thousands separators
(`12,345`). None writes exponent notation next to a prefix (`1.2e+03 k`): a value that rounds
to 1000 of one unit is written in the next (`999.7 KB` -> `1 MB`).
"""

from __future__ import annotations

import math

_BYTES = (("EB", 1e18), ("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3))
_PREFIXES = (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))
_TIMES = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))


def fixed(x: float, digits: int = 3) -> str:
    """`digits` significant digits in plain decimals (no exponent), thousands separated:
    0.00123, 1.23, 123, 12,346."""
    if not x:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{x:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(x: float, units: tuple[tuple[str, float], ...]) -> str | None:
    """x in the largest unit it reaches, three significant digits; None below the smallest.
    A mantissa that rounds up to 1000 moves to the next larger unit."""
    for i, (unit, size) in enumerate(units):
        if abs(x) < size:
            continue
        text = fixed(x / size)
        if i > 0 and abs(float(text.replace(",", ""))) >= 1000:
            bigger, bsize = units[i - 1]
            return f"{fixed(x / bsize)} {bigger}"
        return f"{text} {unit}"
    return None


def nbytes(n: float) -> str:
    scaled = _scaled(n, _BYTES)
    if scaled is not None:
        return scaled
    if abs(round(n)) >= 1000:  # 999.7 B
        return f"{fixed(n / 1e3)} KB"
    return f"{fixed(n)} B" if n and abs(n) < 10 and n != int(n) else f"{int(round(n))} B"


def count(n: float) -> str:
    return f"{int(round(n)):,}"


def sig(x: float | None, digits: int = 3) -> str:
    """A plain number: integers exact with separators, others to `digits` significant digits."""
    if x is None or not math.isfinite(x):
        return "-"
    if x == int(x) or abs(x) >= 10 ** (digits - 1):
        return f"{int(round(x)):,}"
    if x and abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"  # tiny values: mantissa and exponent, never a prefix
    return fixed(x, digits)


def seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    scaled = _scaled(s, _TIMES)
    if scaled is not None:
        return scaled
    return f"{fixed(s * 1e9)} ns"


def pct(x: float, digits: int = 1) -> str:
    """A percentage; small non-zero shares get the digits they need to show (0.0015%)."""
    while x and abs(100 * x) < 10 ** -digits and digits < 5:
        digits += 1
    return f"{100 * x:.{digits}f}%"


def rate(x: float | None) -> str:
    """A rate like tokens/s: thousands separated, no decimals above 100."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else sig(x)


def si(x: float | None) -> str:
    """Counts with an SI prefix from 10,000 up (80.5 M); smaller ones plainly (9,999)."""
    if x is None or not math.isfinite(x):
        return "-"
    if abs(x) >= 1e4:
        scaled = _scaled(x, _PREFIXES)
        if scaled is not None:
            return scaled
    return sig(x)
