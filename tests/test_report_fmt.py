"""The report's number formatting: three significant digits with one SI unit or prefix, or
exact counts with thousands separators; never exponent notation next to a prefix."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler.cli import _bytes
from compiler.report import fmt

# a formatted quantity: plain decimals (thousands separated), a space, a unit
QUANTITY = re.compile(r"-?\d{1,3}(,\d{3})*(\.\d+)? [A-Za-zµ]+")


@pytest.mark.parametrize(("value", "text"), [
    (0, "0 B"), (5, "5 B"), (999, "999 B"), (999.7, "1 KB"), (1234, "1.23 KB"),
    (999_700, "1 MB"), (1_200_000, "1.2 MB"), (123_456_789, "123 MB"), (5e15, "5 PB")])
def test_nbytes(value, text):
    assert fmt.nbytes(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (9_999, "9,999"), (12_345, "12.3 k"), (999_600, "1 M"), (1_200_000, "1.2 M"),
    (80_500_000, "80.5 M"), (None, "-")])
def test_si(value, text):
    assert fmt.si(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (0, "0 ns"), (2e-10, "0.2 ns"), (1.5e-6, "1.5 µs"), (0.0123, "12.3 ms"), (0.99996, "1 s"),
    (1234.4, "1,234 s"), (None, "-")])
def test_seconds(value, text):
    assert fmt.seconds(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (12_345_678, "12,345,678"), (1.23456, "1.23"), (0.000123, "1.23e-04"), (1234.6, "1,235")])
def test_sig_writes_big_numbers_with_separators(value, text):
    assert fmt.sig(value) == text


@given(st.floats(min_value=1e-9, max_value=1e20, allow_nan=False))
def test_no_formatter_mixes_exponents_and_prefixes(x):
    # the old formatters wrote 1.2e+03 k for 1.2 million
    for text in (fmt.nbytes(x), fmt.si(x) if x >= 1e4 else "1 k", fmt.seconds(x), _bytes(x)):
        assert "e+" not in text and QUANTITY.fullmatch(text), text
        assert float(text.split()[0].replace(",", "")) < 1000 or text.endswith(
            ("EB", "E", " s", "TB")), text
