"""`wafer compile --speculative draft=MODEL,accept=A[,k=K]` (compiler/speculative.py): option
parsing and its errors, the expected-tokens formula, the verification step priced over k + 1
query tokens, and the draft placed by real OR-Tools on cores the target leaves idle or on a
strip the target's placement keeps free for it."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from pathlib import Path

import jsonschema
import pytest

from compiler.cli import main
from compiler.driver import CompileOptions, compile_model
from compiler.errors import ExitCode, UsageError
from compiler.placement import place
from compiler.placement.check import validate
from compiler.placement.problem import Rect
from compiler.schedule.perf import PerfOptions, estimate, step_cycles, step_scale
from compiler.speculative import (
    IDLE,
    RESERVED,
    SpeculativeOptions,
    expected_tokens,
    largest_idle,
    parse_speculative,
    resident,
    speculative_tokens_per_s,
    split_reserve,
    strip_widths,
    verify_cycles,
    verify_schedule,
    with_reserve,
)
from compiler.tiling import collectives
from compiler.vocab import CollectiveKind, Mode, Phase, StepKind

MESH_20K = Path(__file__).parent / "targets" / "mesh8x8-20k.toml"


@pytest.fixture(scope="module")
def spec_result():
    """llama-tiny with itself as the draft on mesh8x8 (33 of 64 cores used by the target)."""
    return compile_model("llama-tiny", "mesh8x8",
                         CompileOptions(speculative=SpeculativeOptions("llama-tiny", 0.8, 3)))


def _narrow(tmp_path: Path, cols: int) -> Path:
    """mesh8x8-20k cut to 8 x cols."""
    path = tmp_path / f"mesh8x{cols}.toml"
    path.write_text(MESH_20K.read_text().replace('name = "mesh8x8-20k"', f'name = "mesh8x{cols}"')
                    .replace("cols = 8", f"cols = {cols}"))
    return path


@pytest.fixture(scope="module")
def reserved_result(tmp_path_factory):
    """llama-tiny and its draft on 8 x 6 cores: the draft does not fit the cores the target
    leaves idle, so the target is placed beside a strip kept for it."""
    target = _narrow(tmp_path_factory.mktemp("mesh"), 6)
    return compile_model("llama-tiny", str(target),
                         CompileOptions(speculative=SpeculativeOptions("llama-tiny", 0.8, 4)))


# -- parsing ---------------------------------------------------------------------------------

def test_parse_reads_draft_accept_and_k():
    assert parse_speculative("draft=llama3.2-1b,accept=0.8") == \
        SpeculativeOptions("llama3.2-1b", 0.8, 4)
    assert parse_speculative("accept=1,k=7,draft=m.onnx") == SpeculativeOptions("m.onnx", 1.0, 7)


@pytest.mark.parametrize("text", [
    "draft=x,accept=0", "draft=x,accept=1.01", "draft=x,accept=-1", "draft=x,accept=nan",
    "draft=x,accept=a", "draft=x,accept=0.5,k=0", "draft=x,accept=0.5,k=1.5", "draft=x",
    "accept=0.5", "draft=x,accept=0.5,j=2", "draft=x,draft=y,accept=0.5", "x"])
def test_bad_values_are_usage_errors(text):
    with pytest.raises(UsageError, match="--speculative"):
        parse_speculative(text)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(("spec", "code", "says"), [
    ("draft=llama-tiny,accept=1.5", ExitCode.USAGE, "outside (0, 1]"),
    ("draft=llama-tiny,accept=0.8,k=0", ExitCode.USAGE, "k=0"),
    ("draft=no-such-model,accept=0.8", ExitCode.INVALID_INPUT, "--speculative draft"),
])
def test_cli_errors_are_one_line_and_leave_no_out(spec, code, says, tmp_path, capsys):
    out = tmp_path / "o"
    got = main(["compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out), "--speculative", spec])
    assert got == code and says in _one_line(capsys.readouterr().err)
    assert not out.exists()


# -- the formula -----------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "k"), [(0.5, 1), (0.8, 4), (0.3, 7), (0.999, 3)])
def test_expected_tokens_is_the_sum_of_acceptance_powers(a, k):
    # the round's tokens: the i-th draft token counts when the first i are all accepted
    assert expected_tokens(a, k) == pytest.approx(sum(a ** i for i in range(k + 1)))


def test_every_token_accepted_gives_k_plus_one():
    assert expected_tokens(1.0, 4) == 5.0
    assert speculative_tokens_per_s(100, 300, 1.0, 4, 1e9) == pytest.approx(5 / 700e-9)


def test_rate_is_tokens_per_round_over_the_round_time():
    rate = speculative_tokens_per_s(1000, 5000, 0.8, 4, 1e9)
    assert rate == pytest.approx(expected_tokens(0.8, 4) / ((4 * 1000 + 5000) / 1e9))
    assert speculative_tokens_per_s(1000, 5000, 0.9, 4, 1e9) > rate  # more accepted, faster


# -- the verification step -------------------------------------------------------------------

def test_verify_over_one_token_is_the_plain_decode_step(spec_result):
    assert verify_cycles(spec_result, 1) == spec_result.estimates[Mode.DECODE].cycles


def test_verify_step_scales_work_not_weight_or_cache_reads(spec_result):
    s, t = spec_result.decode.schedule, spec_result.target
    one, five = PerfOptions(Mode.DECODE, queries=1), PerfOptions(Mode.DECODE, queries=5)
    token_steps = [st for st in s.steps if st.phase != Phase.SETUP]
    for st in token_steps:
        expected = 1.0 if st.kind == StepKind.LOAD else 5.0
        assert step_scale(st, s, five) == expected * step_scale(st, s, one), st
    loads = [st for st in token_steps if st.kind == StepKind.LOAD]
    assert loads and all(step_cycles(st, s, t, step_scale(st, s, five)) ==
                         step_cycles(st, s, t, step_scale(st, s, one)) for st in loads)
    flops = [st for st in token_steps if st.kind == StepKind.COMPUTE and st.flops]
    def compute(opts: PerfOptions) -> list[int]:
        return [step_cycles(st, s, t, step_scale(st, s, opts)) for st in flops]

    assert all(b >= a for a, b in zip(compute(one), compute(five), strict=True))
    assert sum(compute(five)) > sum(compute(one))
    plain, verify = verify_cycles(spec_result, 1), verify_cycles(spec_result, 5)
    assert plain < verify < 5 * plain  # more compute, the same phases and reads


@pytest.mark.parametrize("queries", [5, 9])
def test_verify_step_reduces_take_the_algorithm_cheapest_for_their_longer_tile(spec_result,
                                                                              queries):
    # the one-token step's reduce algorithms, scaled to k + 1 tokens (the old pricing), cost
    # more than each reduce chosen again for its k + 1-token tile: hops and phases are paid
    # once, the stages' tiles k + 1 times, so a longer tile favours fewer stages
    s, t = spec_result.decode.schedule, spec_result.target
    opts = PerfOptions(Mode.DECODE, context=s.context, queries=queries)
    rechosen = verify_schedule(s, t, opts)
    old = estimate(s, t, opts).cycles
    assert verify_cycles(spec_result, queries) == estimate(rechosen, t, opts).cycles < old
    changed = 0
    for before, after in zip(s.steps, rechosen.steps, strict=True):
        assert dataclasses.replace(before, algorithm=after.algorithm) == after
        if before.kind == StepKind.COLLECTIVE and before.op_kind == CollectiveKind.REDUCE:
            region = s.region(before.region)
            m = region.rows if before.axis == "r" else region.cols
            tile = before.nbytes * queries * m / (region.rows * region.cols)
            assert after.algorithm == collectives.choose(m, tile, t).label
            changed += before.algorithm != after.algorithm
    assert changed
    assert verify_schedule(s, t, PerfOptions(Mode.DECODE, context=s.context)) is s


# -- placement -------------------------------------------------------------------------------

def _overlap(a: Rect, b: Rect) -> bool:
    return a.wafer == b.wafer and a.row < b.row + b.rows and b.row < a.row + a.rows and \
        a.col < b.col + b.cols and b.col < a.col + a.cols


def test_draft_sits_on_idle_cores_placed_by_cpsat(spec_result):
    spec, p = spec_result.speculative, spec_result.problem
    assert spec.draft_result.placement.report.method == "cpsat"
    assert spec.draft_result.placement.report.status in ("OPTIMAL", "FEASIBLE")
    target = spec_result.placement.rects
    for r in spec.draft_rects:
        assert r.row >= 0 and r.row + r.rows <= p.rows and r.col >= 0 and r.col + r.cols <= p.cols
        assert not _overlap(r, spec.area) or (  # inside the idle area
            spec.area.row <= r.row and r.row + r.rows <= spec.area.row + spec.area.rows and
            spec.area.col <= r.col and r.col + r.cols <= spec.area.col + spec.area.cols)
        assert not any(_overlap(r, t) for t in target), r
    assert not any(_overlap(a, b) for a, b in itertools.combinations(spec.draft_rects, 2))
    assert spec.draft_cores == spec.draft_result.metrics.cores_used


def test_rate_comes_from_both_decode_schedules(spec_result):
    spec = spec_result.speculative
    assert spec.draft_cycles == spec.draft_result.estimates[Mode.DECODE].cycles
    assert spec.verify_cycles == verify_cycles(spec_result, spec.k + 1)
    assert spec.tokens_per_s == pytest.approx(speculative_tokens_per_s(
        spec.draft_cycles, spec.verify_cycles, 0.8, 3, spec_result.target.core.clock_hz))
    assert spec.target_cycles == spec_result.estimates[Mode.DECODE].cycles


def test_the_faster_place_is_kept_and_the_other_named(spec_result):
    # on mesh8x8 the draft fits the idle cores; the reserved strip was priced and lost
    spec = spec_result.speculative
    assert spec.placement == IDLE and spec.draft_resident and resident(spec.draft_result)
    assert spec_result.reserved is None
    assert spec.fallback.startswith("beside a reserved 8 x ")
    other = float(spec.fallback.split(" gives ")[1].split(" tokens/s")[0].replace(",", ""))
    assert other <= round(spec.tokens_per_s)
    assert spec.plain_tokens_per_s == spec_result.estimates[Mode.DECODE].tokens_per_s


# -- the reserved strip ----------------------------------------------------------------------

def test_strip_widths_start_where_the_smallest_rectangles_fit_and_grow():
    assert strip_widths(78_000, 1172, 762) == (69, 74, 79, 84, 90, 96)
    assert strip_widths(11, 8, 6) == (2, 3, 4, 5, 6)  # never wider than the wafer
    assert strip_widths(100, 8, 6) == ()


def test_a_reserve_is_kept_free_by_the_placer_and_split_off(spec_result):
    problem = spec_result.problem
    both = with_reserve(problem, 8, 2)
    assert both.blocks[:-1] == problem.blocks and both.edges == problem.edges
    placement = place(both, "cpsat", time_limit_s=10)
    own, kept = split_reserve(placement)
    assert (kept.rows, kept.cols) == (8, 2) and not validate(problem, own)
    assert not any(_overlap(kept, r) for r in own.rects)


def test_a_draft_without_idle_room_sits_on_a_reserved_strip(reserved_result):
    result, spec = reserved_result, reserved_result.speculative
    assert spec.placement == RESERVED and spec.fallback == "" and spec.draft_resident
    assert spec.area == result.reserved and spec.area.rows == result.problem.rows
    assert len(result.placement.rects) == len(result.problem.blocks)  # the reserve split off
    assert not validate(result.problem, result.placement)
    for r in spec.draft_rects:  # inside the strip, on no core of the target
        assert spec.area.row <= r.row and r.row + r.rows <= spec.area.row + spec.area.rows
        assert spec.area.col <= r.col and r.col + r.cols <= spec.area.col + spec.area.cols
        assert not any(_overlap(r, t) for t in result.placement.rects)
    assert spec.target_cycles == result.estimates[Mode.DECODE].cycles
    alone = compile_model("llama-tiny", result.target)  # the target without the draft
    assert spec.plain_tokens_per_s == alone.estimates[Mode.DECODE].tokens_per_s


def test_artifacts_and_summary_say_speculative(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out), "--json",
                 "--speculative", "draft=llama-tiny,accept=0.7,k=2"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    spec = doc["speculative"]
    assert (spec["draft"], spec["accept"], spec["k"]) == ("llama-tiny", 0.7, 2)
    assert doc["tokens_per_s"] == spec["tokens_per_s"] != spec["plain_tokens_per_s"]
    for name in ("placement.json", "schedule.json"):
        assert json.loads((out / name).read_text())["speculative"] == spec
    schema = json.loads((Path(__file__).parent.parent / "docs" / "schedule.schema.json")
                        .read_text())
    jsonschema.validate(json.loads((out / "schedule.json").read_text()), schema)
    html = (out / "report.html").read_text()
    assert "speculative decoding" in html and "cores of the idle ones (wafer 0, resident)" in html
    main(["compile", "llama-tiny", "-t", "mesh8x8", "-o", str(tmp_path / "p"),
          "--speculative", "draft=llama-tiny,accept=0.7,k=2"])
    text = capsys.readouterr().out
    assert "speculative" in text and "with draft llama-tiny (accept 0.7, k 2" in text


def test_a_draft_without_room_is_exit_5_naming_the_cores(tmp_path, capsys):
    # on 8 x 5 cores neither the idle cores nor a strip beside llama-tiny hold the draft
    code = main(["compile", "llama-tiny", "-t", str(_narrow(tmp_path, 5)), "-o",
                 str(tmp_path / "o"), "--speculative", "draft=llama-tiny,accept=0.8"])
    line = _one_line(capsys.readouterr().err)
    assert code == ExitCode.DOES_NOT_FIT, line
    assert "does not fit on the cores llama-tiny leaves idle" in line
    assert "nor beside it on a reserved strip" in line
    assert " cores (the smallest rectangle" in line and "the largest idle one is" in line
    assert not (tmp_path / "o").exists()


# -- the largest idle rectangle --------------------------------------------------------------

def _brute(rows: int, cols: int, rects: list[Rect]) -> int:
    used = {(r.row + i, r.col + j) for r in rects for i in range(r.rows) for j in range(r.cols)}
    best = 0
    for r0, c0 in itertools.product(range(rows), range(cols)):
        for r1, c1 in itertools.product(range(r0 + 1, rows + 1), range(c0 + 1, cols + 1)):
            if (r1 - r0) * (c1 - c0) > best and not any(
                    (i, j) in used for i in range(r0, r1) for j in range(c0, c1)):
                best = (r1 - r0) * (c1 - c0)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_largest_idle_matches_brute_force(seed):
    rng = random.Random(seed)
    rows, cols = rng.randint(2, 7), rng.randint(2, 7)
    rects: list[Rect] = []
    for _ in range(rng.randint(0, 5)):
        h, w = rng.randint(1, rows), rng.randint(1, cols)
        cand = Rect(0, rng.randint(0, rows - h), rng.randint(0, cols - w), h, w)
        if not any(_overlap(cand, r) for r in rects):
            rects.append(cand)
    area = largest_idle(rows, cols, 1, tuple(rects))
    best = _brute(rows, cols, rects)
    if best == 0:
        assert area is None
        return
    assert area.rows * area.cols == best and not any(_overlap(area, r) for r in rects)
    assert area.row + area.rows <= rows and area.col + area.cols <= cols


def test_largest_idle_looks_at_every_wafer():
    full0 = Rect(0, 0, 0, 4, 4)
    area = largest_idle(4, 4, 2, (full0, Rect(1, 0, 0, 1, 4)))
    assert area == Rect(1, 1, 0, 3, 4)
