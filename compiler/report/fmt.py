"""Number formatting for people: bytes in decimal units, counts with separators, times."""

from __future__ import annotations

import math


def nbytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} B" if n and abs(n) < 10 and n != int(n) else f"{int(round(n))} B"


def count(n: float) -> str:
    return f"{int(round(n)):,}"


def sig(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x and (abs(x) >= 1e7 or abs(x) < 1e-3):
        return f"{x:.{digits}g}"
    if x == int(x):
        return f"{int(x):,}"
    return f"{x:,.{max(0, digits - 1 - int(math.floor(math.log10(abs(x))))) if x else 0}f}"


def seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(s) >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def pct(x: float, digits: int = 1) -> str:
    """A percentage; small non-zero shares get the digits they need to show (0.0015%)."""
    while x and abs(100 * x) < 10 ** -digits and digits < 5:
        digits += 1
    return f"{100 * x:.{digits}f}%"


def rate(x: float | None) -> str:
    """A rate like tokens/s: thousands separated, no decimals above 100."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def si(x: float | None) -> str:
    """Large counts with an SI suffix: 80.5 M; small ones as they are."""
    if x is None or not math.isfinite(x):
        return "-"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= 10 * size:
            return f"{x / size:.3g} {unit}"
    return sig(x)
