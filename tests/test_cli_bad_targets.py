"""Bad target specs through `wafer compile` (exit 3, one `error: ...` line naming the TOML key
and how to fix it, no OUT): syntax errors, unknown and missing keys, wrong types and ranges, and
a grid too large to be real, refused before any work."""

from __future__ import annotations

import pytest
from cli_cases import SPEC, refused

from compiler.errors import ExitCode


@pytest.mark.parametrize(("edit", "pattern"), [
    (("rows = 8", "rows = 8 x"), r"TOML syntax error: .* \(at line 8, column 10\)"),
    (("rows = 8", "rowz = 8"), r"grid\.rowz: unknown key; did you mean grid\.rows\?"),
    (("cols = 8\n", ""), r"grid\.cols: missing key \(expected an integer\)"),
    (("rows = 8", 'rows = "8"'), r'grid\.rows: expected an integer, got "8"'),
    (("count = 1", "count = 1.5"), r"wafers\.count: expected an integer, got 1\.5"),
    (("rows = 8", "rows = 10000000"), r"grid\.rows: expected a value in 1\.\.65,536, got "
     "10,000,000"),
    (('sram_bytes = "64 KiB"', "sram_bytes = 0"), r"core\.sram_bytes: expected a value in 1\.\."),
    (("rows = 8", "rows = -3"), r"grid\.rows: expected a value in 1\.\.65,536, got -3"),
    (('latency_s = "1 us"', 'latency_s = "-1 us"'), r"offchip\.latency_s: expected seconds"),
])
def test_target_spec_errors_name_the_key(tmp_path, capsys, edit, pattern):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.replace(*edit, 1))
    refused(capsys, tmp_path, "gpt2-tiny", ExitCode.INVALID_INPUT,
            r"spec\.toml: " + pattern, target=str(path))


def test_absurd_grid_refused_up_front(tmp_path, capsys):
    path = tmp_path / "huge.toml"
    path.write_text(SPEC.replace("rows = 8", "rows = 65536").replace("cols = 8", "cols = 65536"))
    refused(capsys, tmp_path, "gpt2-tiny", ExitCode.INVALID_INPUT,
            r"grid: 65,536 x 65,536 = 4,294,967,296 cores per wafer; at most 100,000,000",
            target=str(path))
