"""Target specs: built-ins load, derived values are right, overrides re-validate, and every
class of bad spec is a one-line TargetError naming the file and key path."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.errors import TargetError
from compiler.ir import DType
from compiler.target import (
    Grid,
    Target,
    builtin_names,
    list_targets,
    load_target,
    override_keys,
    parse_override_args,
    target_from_dict,
)

BUILTINS = ["mesh16x16", "mesh8x8", "mesh8x8-x2", "tt-wormhole", "wse2", "wse3", "wse3-x12",
            "wse3-x16", "wse3-x2", "wse3-x24", "wse3-x3", "wse3-x32", "wse3-x4"]


def builtin_text(name: str) -> str:
    return (resources.files("compiler.targets") / f"{name}.toml").read_text(encoding="utf-8")


def write_spec(tmp_path: Path, text: str, name: str = "spec.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- built-ins --------------------------------------------------------------------------------


def test_builtin_names_and_sorted_list() -> None:
    assert builtin_names() == BUILTINS
    assert [t.name for t in list_targets()] == sorted(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_loads_validates_and_round_trips(name: str) -> None:
    t = load_target(name)
    assert t.name == name  # the file stem is the name
    assert t.source == f"targets/{name}.toml"
    assert re.fullmatch(r"[0-9a-f]{64}", t.sha256)
    assert hash(t) == hash(load_target(name))
    again = target_from_dict(t.to_dict())
    assert again == t and again.sha256 == t.sha256
    assert t.core.flops(t.compute.dtype) > 0
    assert "\n" not in t.summary()


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_every_value_has_a_comment(name: str) -> None:
    """Every table has a comment; every key line or the lines above it cite a source."""
    lines = builtin_text(name).splitlines()
    assert lines[0].startswith("#")
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#") and not line.startswith(("name", "desc")):
            nearby = lines[max(0, i - 6): i + 1]
            assert any("#" in x for x in nearby), f"{name}: line {i + 1} has no source comment"


def test_wse2_numbers() -> None:
    t = load_target("wse2")
    assert (t.grid.rows, t.grid.cols) == (996, 757)  # SDK --fabric-dims=757,996 is (x, y)
    assert t.cores_per_wafer == 753_972
    assert (t.core.sram_bytes, t.core.reserve_bytes) == (49_152, 4_176)
    assert t.usable_bytes_per_core == 44_976
    assert t.usable_bytes_per_wafer == 753_972 * 44_976
    assert t.core.clock_hz == 1.1e9
    assert t.core.flops_table == {"float16": 8, "float32": 2}
    assert t.peak_flops() == pytest.approx(753_972 * 8 * 1.1e9)
    assert t.peak_flops(DType.FLOAT32) == pytest.approx(t.peak_flops() / 4)
    assert t.links.bytes_per_cycle == 4
    assert t.link_bytes_per_s == pytest.approx(4.4e9)
    assert t.bisection_bytes_per_s == pytest.approx(757 * 4.4e9)
    assert t.offchip.bandwidth_bytes_per_s == pytest.approx(150e9)
    assert t.offchip.latency_s == pytest.approx(2e-6)
    assert (t.compute.dtype, t.compute.accumulate) == (DType.FLOAT16, DType.FLOAT32)
    assert t.cycles_to_seconds(1.1e9) == pytest.approx(1.0)


def test_wse3_and_clusters() -> None:
    wse3, x4, x24 = load_target("wse3"), load_target("wse3-x4"), load_target("wse3-x24")
    assert wse3.cores_per_wafer == 893_064
    assert wse3.peak_flops("fp16") == pytest.approx(893_064 * 16 * 1.1e9)  # ~15.7 PFLOP/s
    assert (x4.wafers.count, x24.wafers.count) == (4, 24)
    assert x4.total_cores == 4 * 893_064
    assert x4.total_usable_bytes == 4 * wse3.usable_bytes_per_wafer
    assert x4.total_usable_bytes > 141e9  # Llama 3.1 70B in fp16
    assert x24.total_usable_bytes > 810e9 * 1.15  # 405B in fp16, with headroom
    assert x4.wafers.link_bandwidth_bytes_per_s == pytest.approx(150e9)
    assert x4.total_peak_flops() == pytest.approx(4 * wse3.peak_flops())
    assert dataclasses.replace(x4, wafers=wse3.wafers, name="wse3").sha256 == wse3.sha256


@pytest.mark.parametrize("name", [n for n in BUILTINS if n.startswith("wse3-x")])
def test_wse3_clusters_are_wse3_but_for_the_wafers(name: str) -> None:
    """Everything but [wafers] as wse3.toml: the fitted runtime overhead included (a re-fit
    that missed a cluster spec priced its models with the old overhead)."""
    wse3, cluster = load_target("wse3"), load_target(name)
    same = dataclasses.replace(cluster, wafers=wse3.wafers, name="wse3",
                               description=wse3.description, source=wse3.source)
    assert same.runtime == wse3.runtime
    assert same.sha256 == wse3.sha256


def test_small_targets() -> None:
    tt, m8, m16, m8x2 = (load_target(n) for n in ("tt-wormhole", "mesh8x8", "mesh16x16",
                                                    "mesh8x8-x2"))
    assert tt.cores_per_wafer == 72 and tt.core.sram_bytes == 1_499_136
    assert tt.offchip.bandwidth_bytes_per_s == pytest.approx(288e9)
    assert m8.cores_per_wafer == 64 and m8.usable_bytes_per_core == 60 * 1024
    assert m16.cores_per_wafer == 256 and m16.core.sram_bytes == 256 * 1024
    assert m8x2.wafers.count == 2 and m8x2.total_cores == 128
    assert m8x2.total_usable_bytes == 2 * m8.usable_bytes_per_wafer


# -- units, hashing, replace ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "attr", "expected"),
    [
        ("core.sram_bytes", "48KiB", ("core", "sram_bytes"), 49_152),
        ("core.sram_bytes", "1.5 MB", ("core", "sram_bytes"), 1_500_000),
        ("core.sram_bytes", "4176 B", ("core", "sram_bytes"), 4_176),
        ("core.sram_bytes", 65536, ("core", "sram_bytes"), 65_536),
        ("offchip.bandwidth_bytes_per_s", "150 GB/s", ("offchip", "bandwidth_bytes_per_s"), 150e9),
        ("offchip.bandwidth_bytes_per_s", "1.2 Tb/s", ("offchip", "bandwidth_bytes_per_s"), 150e9),
        ("offchip.bandwidth_bytes_per_s", "1 GiB/s", ("offchip", "bandwidth_bytes_per_s"), 2**30),
        ("offchip.latency_s", "500 ns", ("offchip", "latency_s"), 5e-7),
        ("offchip.latency_s", "3µs", ("offchip", "latency_s"), 3e-6),
        ("core.clock_hz", "850 MHz", ("core", "clock_hz"), 8.5e8),
        ("core.clock_hz", "1.25e9", ("core", "clock_hz"), 1.25e9),
        ("grid.rows", "16", ("grid", "rows"), 16),
        ("compute.dtype", "fp32", ("compute", "dtype"), DType.FLOAT32),
    ],
)
def test_unit_forms(key: str, value: str | int, attr: tuple[str, str], expected: object) -> None:
    t = load_target("mesh8x8", {key: value, "core.reserve_bytes": 0})
    got = getattr(getattr(t, attr[0]), attr[1])
    assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected


def test_hash_tracks_content_not_formatting_or_place(tmp_path: Path) -> None:
    wse2 = load_target("wse2")
    text = builtin_text("wse2")
    same = text.replace('"48 KiB"', "49152").replace('"1.1 GHz"', "1.1e9")
    same = same.replace("Cerebras WSE-2 (CS-2): one wafer", "another description")
    copy = load_target(write_spec(tmp_path, same, "copy.toml"))
    assert copy.sha256 == wse2.sha256  # the description is not hashed ...
    assert copy != wse2 and dataclasses.replace(copy, description=wse2.description) == wse2
    assert copy.source != wse2.source
    assert load_target("wse2", {"runtime.step_overhead_cycles": 101}).sha256 != wse2.sha256


def test_replace_revalidates() -> None:
    t = load_target("mesh8x8")
    bigger = dataclasses.replace(t, grid=Grid(rows=16, cols=8))
    assert bigger.cores_per_wafer == 128 and bigger.sha256 != t.sha256
    with pytest.raises(TargetError, match=r"targets/mesh8x8.toml: grid.rows: .*1..65,536"):
        dataclasses.replace(t, grid=Grid(rows=10**7, cols=10**7))


def test_unknown_dtype_rate() -> None:
    with pytest.raises(TargetError, match=r"core.flops_per_cycle: no rate for int8"):
        load_target("wse2").peak_flops(DType.INT8)


# -- overrides --------------------------------------------------------------------------------


def test_overrides_apply_and_revalidate() -> None:
    t = load_target("wse3", {"core.sram_bytes": "64KiB", "links.bytes_per_cycle": 8,
                             "grid.rows": "100", "core.flops_per_cycle.fp16": "32",
                             "wafers.count": 2})
    assert t.core.sram_bytes == 65_536 and t.usable_bytes_per_core == 65_536 - 4_176
    assert t.links.bytes_per_cycle == 8 and t.grid.rows == 100 and t.grid.cols == 762
    assert t.core.flops_table == {"float16": 32, "float32": 4}
    assert t.total_cores == 2 * 100 * 762
    assert "overrides: core.sram_bytes=64KiB" in t.source
    with pytest.raises(TargetError, match=r"overrides: core.sram_bytes=4KiB\): "
                       r"core.reserve_bytes: expected 0 <= reserve < core.sram_bytes"):
        load_target("wse3", {"core.sram_bytes": "4KiB"})
    new_dtype = load_target("wse3", {"core.flops_per_cycle.bfloat16": 16,
                                     "compute.dtype": "bf16"})
    assert new_dtype.compute.dtype is DType.BFLOAT16


def test_unknown_override_key_lists_valid_keys() -> None:
    with pytest.raises(TargetError) as info:
        load_target("wse3", {"core.sram": 1})
    message = str(info.value)
    assert "core.sram: unknown override key; did you mean core.sram_bytes?" in message
    assert all(key in message for key in override_keys())
    assert "\n" not in message


def test_parse_override_args() -> None:
    assert parse_override_args(["core.sram_bytes=64KiB", " grid.rows = 16"]) == {
        "core.sram_bytes": "64KiB", "grid.rows": "16"}
    with pytest.raises(TargetError, match="expected KEY=VALUE"):
        parse_override_args(["grid.rows"])


# -- bad specs --------------------------------------------------------------------------------

BAD_SPECS = [
    # (what, replace this, with this, expected message after "<file>: ")
    ("syntax", "rows = 996", "rows = = 996", r"TOML syntax error: .*\(at line 12, column 8\)"),
    ("missing key", "hop_latency_cycles = 2\n", "",
     r"links.hop_latency_cycles: missing key \(expected an integer\)"),
    ("missing table", "[runtime]\n", "[runtime_x]\n",
     r"runtime_x: unknown table \[runtime_x\]; did you mean runtime\?"),
    ("unknown key", "sram_bytes =", "sram_byte =",
     r"core.sram_byte: unknown key; did you mean core.sram_bytes\? \(keys in \[core\]"),
    ("wrong type", "rows = 996", 'rows = "abc"', r'grid.rows: expected an integer, got "abc"'),
    ("float count", "\ncount = 1\n", "\ncount = 1.5\n",
     r"wafers.count: expected an integer, got 1.5"),
    ("absurd grid", "rows = 996\ncols = 757", "rows = 10000000\ncols = 10000000",
     r"grid.rows: expected a value in 1..65,536, got 10,000,000"),
    ("too many cores", "rows = 996\ncols = 757", "rows = 20000\ncols = 20000",
     r"grid: 20,000 x 20,000 = 400,000,000 cores per wafer; at most 100,000,000"),
    ("zero sram", 'sram_bytes = "48 KiB"', "sram_bytes = 0",
     r"core.sram_bytes: expected a value in 1..1,073,741,824 bytes"),
    ("huge sram", 'sram_bytes = "48 KiB"', 'sram_bytes = "2 GiB"',
     r"core.sram_bytes: expected a value in 1..1,073,741,824 bytes"),
    ("reserve >= sram", "reserve_bytes = 4176", 'reserve_bytes = "48 KiB"',
     r"core.reserve_bytes: expected 0 <= reserve < core.sram_bytes \(49,152\), got 49,152"),
    ("bad byte unit", 'sram_bytes = "48 KiB"', 'sram_bytes = "48 KB/s"',
     r'core.sram_bytes: expected an integer number of bytes or a string such as "48 KiB".*'
     r'got "48 KB/s"'),
    ("fractional bytes", 'sram_bytes = "48 KiB"', 'sram_bytes = "1.3 B"',
     r'core.sram_bytes: "1.3 B" is not a whole number of bytes'),
    ("absurd exponent", 'sram_bytes = "48 KiB"', 'sram_bytes = "1e999999999 B"',
     r'core.sram_bytes: expected an integer number of bytes .*got "1e999999999 B"'),
    ("bad bandwidth unit", 'bandwidth_bytes_per_s = "1.2 Tb/s"', 'bandwidth_bytes_per_s = "150 GB"',
     r'offchip.bandwidth_bytes_per_s: expected bytes per second .*"150 GB/s".*got "150 GB"'),
    ("zero clock", 'clock_hz = "1.1 GHz"', "clock_hz = 0",
     r"core.clock_hz: expected a finite value > 0 \(Hz\), got 0.0"),
    ("nan clock", 'clock_hz = "1.1 GHz"', "clock_hz = nan",
     r"core.clock_hz: expected a finite number, got nan"),
    ("zero bandwidth", 'bandwidth_bytes_per_s = "1.2 Tb/s"', "bandwidth_bytes_per_s = 0",
     r"offchip.bandwidth_bytes_per_s: expected a finite value > 0"),
    ("bad time unit", 'latency_s = "2 us"\n\n[wafers]', 'latency_s = "2 days"\n\n[wafers]',
     r'offchip.latency_s: expected seconds .*got "2 days"'),
    ("too many wafers", "\ncount = 1\n", "\ncount = 5000\n",
     r"wafers.count: expected a value in 1..4,096, got 5,000"),
    ("unknown dtype", 'dtype = "float16"', 'dtype = "float17"',
     r'compute.dtype: expected a dtype name: float32, .*got "float17"'),
    ("flops dtype", "float32 = 2", "float33 = 2",
     r"core.flops_per_cycle.float33: expected a dtype name"),
    ("flops twice", "float32 = 2", "fp16 = 2",
     r"core.flops_per_cycle.fp16: float16 is given twice"),
    ("no rate for compute dtype", 'dtype = "float16"', 'dtype = "bfloat16"',
     r"compute.dtype: bfloat16 has no rate in core.flops_per_cycle \(has float16, float32\)"),
    ("narrow accumulate", 'accumulate = "float32"', 'accumulate = "int8"',
     r"compute.accumulate: expected a float dtype at least as wide as compute.dtype"),
    ("missing name", 'name = "wse2"\n', "", r"name: missing key \(expected a string\)"),
    ("bad name", 'name = "wse2"', 'name = "my target"',
     r"name: expected letters, digits, '.', '_' or '-', got \"my target\""),
]


@pytest.mark.parametrize(("what", "old", "new", "expected"), BAD_SPECS,
                         ids=[case[0] for case in BAD_SPECS])
def test_bad_spec(tmp_path: Path, what: str, old: str, new: str, expected: str) -> None:
    text = builtin_text("wse2")
    assert old in text, f"test setup: {old!r} not in wse2.toml"
    path = write_spec(tmp_path, text.replace(old, new, 1))
    with pytest.raises(TargetError) as info:
        load_target(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert re.search(expected, message), message


def test_missing_table(tmp_path: Path) -> None:
    text = builtin_text("wse2")
    path = write_spec(tmp_path, text[: text.index("[runtime]")])
    with pytest.raises(TargetError, match=r"runtime: missing table \[runtime\] "
                       r"\(keys step_overhead_cycles\)"):
        load_target(path)


def test_section_not_a_table() -> None:
    data = load_target("wse2").to_dict() | {"links": 4}
    with pytest.raises(TargetError, match=r"^<dict>: links: expected a table, got 4$"):
        target_from_dict(data)


def test_unknown_builtin_name() -> None:
    with pytest.raises(TargetError) as info:
        load_target("wse4")
    message = str(info.value)
    assert "unknown target 'wse4' (did you mean 'wse3'?)" in message
    assert all(name in message for name in BUILTINS)
    assert "path to a .toml" in message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"nope.toml: no such target spec file"):
        load_target(str(tmp_path / "nope.toml"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'name = "\xe9"\n')
    with pytest.raises(TargetError, match=r"latin1.toml: not UTF-8"):
        load_target(str(bad))


def test_path_object_and_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_spec(tmp_path, builtin_text("mesh8x8"), "mine.toml")
    monkeypatch.chdir(tmp_path)
    assert load_target("mine.toml") == load_target(tmp_path / "mine.toml") == load_target("mesh8x8")


# -- property: any valid override gives consistent derived values -----------------------------


@st.composite
def valid_overrides(draw: st.DrawFn) -> dict[str, str | int | float]:
    rows = draw(st.integers(1, 65_536))
    cols = draw(st.integers(1, min(65_536, 10**8 // rows)))
    sram = draw(st.integers(1, 2**30))
    reserve = draw(st.integers(0, sram - 1))
    as_text = draw(st.booleans())
    return {
        "grid.rows": rows,
        "grid.cols": str(cols) if as_text else cols,
        "core.sram_bytes": f"{sram} B" if as_text else sram,
        "core.reserve_bytes": reserve,
        "core.clock_hz": draw(st.floats(1e3, 1e11)),
        "core.flops_per_cycle.float16": draw(st.integers(1, 2**20)),
        "links.bytes_per_cycle": draw(st.integers(1, 2**20)),
        "links.hop_latency_cycles": draw(st.integers(0, 10**9)),
        "offchip.bandwidth_bytes_per_s": draw(st.floats(1.0, 1e15)),
        "wafers.count": draw(st.integers(1, 4096)),
        "runtime.step_overhead_cycles": draw(st.integers(0, 10**9)),
    }


@settings(max_examples=60, deadline=None)
@given(valid_overrides())
def test_any_valid_override_is_consistent(overrides: dict[str, str | int | float]) -> None:
    t = load_target("mesh8x8", overrides)
    rows, cols = t.grid.rows, t.grid.cols
    assert (rows, cols) == (overrides["grid.rows"], int(overrides["grid.cols"]))
    assert t.cores_per_wafer == rows * cols <= 10**8
    assert t.usable_bytes_per_core == t.core.sram_bytes - t.core.reserve_bytes > 0
    assert t.usable_bytes_per_wafer == t.usable_bytes_per_core * rows * cols
    assert t.total_usable_bytes == t.usable_bytes_per_wafer * t.wafers.count
    assert t.total_cores == rows * cols * t.wafers.count
    rate = overrides["core.flops_per_cycle.float16"]
    assert t.peak_flops() == pytest.approx(rate * t.core.clock_hz * rows * cols)
    assert t.total_peak_flops() == pytest.approx(t.peak_flops() * t.wafers.count)
    assert t.link_bytes_per_s == pytest.approx(t.links.bytes_per_cycle * t.core.clock_hz)
    again = target_from_dict(t.to_dict())
    assert again == t and again.sha256 == t.sha256
    assert isinstance(t, Target) and load_target("mesh8x8", overrides).sha256 == t.sha256
