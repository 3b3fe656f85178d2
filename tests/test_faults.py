"""Fault injection (issue 5, item 4): mutations of valid schedules are caught, by the executor
with a message naming the step and the tensor or region, or by verify against ONNX Runtime;
mutations that change nothing physical are recognised as no-ops. The mutation library is
benchmarks/fault_injection.py (its benchmark runs hundreds of them)."""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fault_injection as fi  # noqa: E402

GPT2, LLAMA, TWO_WAFERS = ("gpt2-tiny", "mesh8x8"), ("llama-tiny", "mesh8x8"), \
    ("gpt2-tiny", "mesh8x8-x2")


@functools.cache
def case(model: str, target: str) -> fi.Case:
    return fi.load_case(model, target)


def _first(c: fi.Case, keep) -> int:
    return next(s.id for s in c.schedule.steps if keep(s))


def _load_of(c: fi.Case, tensor: str) -> int:
    return _first(c, lambda s: s.kind == "load" and s.writes[0].tensor == tensor)


def _moving_reduce(c: fi.Case) -> int:
    return _first(c, lambda s: s.op_kind == "reduce" and not fi.collective_noop(c, s))


def assert_executor_names(o: fi.Outcome, *patterns: str) -> None:
    """Caught by the executor; the message names a real step of the mutated schedule (with
    its region), the tensor or region the mutation touched, and matches `patterns`."""
    assert o.detector == fi.EXECUTOR, f"{o.mutation.detail}: {o.detector}: {o.message}"
    found = re.search(r"at step (\d+) \((.*?) on (\S+)\): ", o.message)
    assert found, o.message
    assert o.mutation.schedule.steps[int(found[1])].region == found[3], o.message
    touched = [x for x in (o.mutation.tensor, o.mutation.region) if x]
    assert not touched or any(x in o.message for x in touched), (touched, o.message)
    assert o.clear
    for p in patterns:
        assert re.search(p, o.message), (p, o.message)


def assert_verify_fails(o: fi.Outcome) -> None:
    assert o.detector == fi.VERIFY, f"{o.mutation.detail}: {o.detector}: {o.message}"
    assert o.message.startswith("FAILED logits"), o.message


# --- each kind, chosen by hand ---------------------------------------------------------------


def test_dropped_send_names_the_tensor_missing_at_its_destination():
    c = case(*GPT2)
    send = c.schedule.steps[_first(c, lambda s: s.kind == "send")]
    o = fi.detect(c, fi.drop_transfer(c, send.id))
    assert_executor_names(o, rf"tensor {re.escape(send.reads[0].tensor)} is not resident on "
                             rf"{re.escape(send.dst)}$")


def test_dropped_wafer_send_is_caught():
    c = case(*TWO_WAFERS)
    send = c.schedule.steps[_first(c, lambda s: s.kind == "wafer_send")]
    o = fi.detect(c, fi.drop_transfer(c, send.id))
    assert_executor_names(o, rf"is not resident on {re.escape(send.dst)}$")


def test_dropped_weight_load_is_caught():
    c = case(*LLAMA)
    name = "model.layers.0.self_attn.q_proj.weight"
    o = fi.detect(c, fi.drop_transfer(c, _load_of(c, name)))
    assert_executor_names(o, rf"MatMul .*tensor {re.escape(name)} is not resident on block\.0")


def test_dropped_store_loses_the_output():
    c = case(*GPT2)
    o = fi.detect(c, fi.drop_transfer(c, _first(c, lambda s: s.kind == "store")))
    assert_verify_fails(o)
    assert "the executor did not produce it" in o.message


@pytest.mark.parametrize("where", [GPT2, TWO_WAFERS], ids="/".join)
def test_send_to_the_wrong_region_is_missing_where_it_is_needed(where):
    c = case(*where)
    send = c.schedule.steps[_first(c, lambda s: s.kind in ("send", "wafer_send") and
                                   s.dst != "head")]
    o = fi.detect(c, fi.wrong_dst(c, send.id, "head"))
    assert_executor_names(o, rf"{re.escape(send.reads[0].tensor)} is not resident on "
                             rf"{re.escape(send.dst)}$")


def test_tiles_split_over_the_wrong_mesh_axis_are_caught():
    c = case(*GPT2)
    name = "transformer.h.0.attn.c_attn.weight"
    o = fi.detect(c, fi.swap_mesh_axes(c, _load_of(c, name)))
    assert_executor_names(o, rf"tensor {re.escape(name)} is on block\.0 as \[r,c\] but the "
                             r"step reads \[c,r\]")


def test_two_cores_holding_each_others_weight_tiles_changes_the_output():
    c = case(*GPT2)
    m = fi.swap_core_tiles(c, _load_of(c, "transformer.h.0.attn.c_attn.weight"), 0, 3)
    assert not m.noop
    assert_verify_fails(fi.detect(c, m))


def test_consumer_before_its_producer_is_caught():
    c = case(*LLAMA)
    step = c.schedule.steps[_first(c, lambda s: s.kind == "compute" and s.deps and
                                   c.schedule.steps[max(s.deps)].kind == "compute")]
    o = fi.detect(c, fi.reorder(c, step.id, max(step.deps)))
    assert_executor_names(o, rf"at step {max(step.deps)} .* is not resident on "
                             rf"{re.escape(step.region)}$")


def test_shrunk_sram_overflows_naming_step_region_tensor_and_bytes():
    c = case(*GPT2)
    o = fi.detect(c, fi.shrink_sram(c, "block.0", 0.5))
    assert o.error == "MemoryOverflow"
    assert_executor_names(o, r"^memory overflow at step \d+ .*: a core of \S+ would hold "
                             r"[\d,]+ bytes \(writing \S+\) but has [\d,]+$")


def test_an_extra_whole_weight_overfills_the_core():
    c = case(*GPT2)
    # the embedding's core is the fullest (block.1 on 8 x 1 has room for any one weight)
    o = fi.detect(c, fi.extra_load(c, "transformer.h.0.mlp.c_fc.weight", "embedding", 0))
    assert not o.mutation.noop
    assert o.error == "MemoryOverflow"
    assert_executor_names(o, r"a core of embedding would hold [\d,]+ bytes .* but has 61,440")


def test_corrupted_weight_tile_fails_verification():
    c = case(*LLAMA)
    m = fi.corrupt_tile(c, _load_of(c, "model.layers.1.mlp.down_proj.weight"), 1, seed=7)
    assert_verify_fails(fi.detect(c, m))


def test_dropped_reduce_leaves_partial_sums():
    c = case(*GPT2)
    step = c.schedule.steps[_moving_reduce(c)]
    o = fi.detect(c, fi.drop_reduce(c, step.id))
    assert_executor_names(o, rf"{re.escape(step.reads[0].tensor)} is on \S+ as .* \(partial "
                             rf"sums along {step.axis}\) but the step reads")


def test_partial_sums_passed_off_as_complete_fail_verification():
    c = case(*GPT2)
    m = fi.drop_reduce(c, _moving_reduce(c), mark_complete=True)
    assert not m.noop
    assert_verify_fails(fi.detect(c, m))


def test_compute_on_the_wrong_region_is_caught():
    c = case(*LLAMA)
    step = c.schedule.steps[_first(c, lambda s: s.kind == "compute" and s.region == "block.0")]
    o = fi.detect(c, fi.wrong_region(c, step.id, "block.1"))
    assert_executor_names(o, rf"at step {step.id} .* is not resident on block\.1$")


# --- each kind and variant, seeded -----------------------------------------------------------


VARIANTS = [(k, v) for k, vs in fi.VARIANTS.items() for v in vs]


def _seeded(c: fi.Case, kind: str, variant: str) -> tuple[int, fi.Mutation]:
    """The first seed whose mutation is not a no-op."""
    for seed in range(20):
        m = fi.random_mutation(c, kind, np.random.default_rng(seed), variant)
        if not m.noop:
            return seed, m
    raise AssertionError(f"no seed below 20 gives a {kind}/{variant} that is not a no-op")


@pytest.mark.parametrize(("kind", "variant"), VARIANTS, ids=[f"{k}/{v}" for k, v in VARIANTS])
def test_seeded_mutation_is_caught_with_a_clear_message(kind, variant):
    c = case(*GPT2)
    seed, m = _seeded(c, kind, variant)
    assert m.kind == kind
    o = fi.detect(c, m)
    assert o.caught, f"seed {seed}: {m.detail}: {o.detector}: {o.message}"
    if o.detector == fi.EXECUTOR:
        assert_executor_names(o)
    else:
        assert_verify_fails(o)


# --- no-ops are recognised, not counted ------------------------------------------------------


def test_reduce_along_a_one_core_axis_is_a_noop():
    c = case(*GPT2)
    step = c.schedule.steps[_first(c, lambda s: s.op_kind == "reduce" and
                                   fi._size(c, s.region, s.axis) == 1)]
    for mark in (False, True):
        o = fi.detect(c, fi.drop_reduce(c, step.id, mark_complete=mark))
        assert "already complete" in o.mutation.noop
        assert not o.counted and not o.caught
        assert o.detector == (fi.MISSED if mark else fi.EXECUTOR)  # numbers are unchanged


def test_relayout_between_identical_placements_is_a_noop():
    c = case(*LLAMA)  # K^T [-,r,-,-] -> [-,r,-,c] on an Nx1 region: the column axis is one core
    step = _first(c, lambda s: s.op_kind == "relayout")  # wide
    region = c.schedule.region(c.schedule.steps[step].region)
    assert region.cols == 1
    o = fi.detect(c, fi.drop_transfer(c, step))
    assert (f"put the same tiles on the same cores of block.0 ({region.rows}x1)"
            in o.mutation.noop)
    assert not o.counted
    assert o.detector == fi.EXECUTOR  # the executor's spec check flags it anyway


def test_axes_swapped_on_a_single_core_is_a_noop():
    c = case(*GPT2)  # the embedding region is 1x1: [r,c] and [c,r] are the same tile
    m = fi.swap_mesh_axes(c, _load_of(c, "transformer.wte.weight"))
    assert "same tiles on the same cores of embedding (1x1)" in m.noop


def test_swapping_identical_tiles_is_a_noop():
    c = case(*GPT2)
    name = "transformer.h.0.mlp.c_fc.bias"  # split over block.0's 8 rows
    flat = dataclasses.replace(c.result, graph=fi._with_data(
        c.graph, name, np.full(c.graph.tensor(name).shape, 0.5, np.float32)))
    m = fi.swap_core_tiles(dataclasses.replace(c, result=flat), _load_of(c, name), 0, 1)
    assert m.noop == f"tiles 0 and 1 of {name} hold identical data"


def test_an_extra_load_that_fits_is_a_noop():
    c = case(*GPT2)
    m = fi.extra_load(c, "transformer.h.0.ln_1.weight", "head", 0)
    assert "fit in head's" in m.noop
    assert fi.detect(c, m).detector == fi.MISSED


def test_tally_leaves_noops_out_of_the_rate():
    c = case(*GPT2)
    step = _first(c, lambda s: s.op_kind == "reduce" and fi.collective_noop(c, s))
    outcomes = [fi.detect(c, fi.drop_reduce(c, step, mark_complete=True)),
                fi.detect(c, fi.drop_reduce(c, _moving_reduce(c)))]
    t = fi.tally(outcomes)["all"]
    assert (t.total, t.noop, t.counted, t.caught, t.missed) == (2, 1, 1, 1, 0)
    assert t.rate() == "100%"


# --- a random batch --------------------------------------------------------------------------


def test_random_batch_is_caught_completely():
    cases = [case(*where) for where in (GPT2, LLAMA, TWO_WAFERS)]
    outcomes = fi.run_batch(cases, 24, seed=5)
    t = fi.tally(outcomes)
    assert {o.mutation.kind for o in outcomes} == set(fi.KINDS)
    assert t["all"].counted >= 16
    bad = [f"{o.case} {o.mutation.detail}: {o.detector}: {o.message}"
           for o in outcomes if o.counted and not o.caught]
    assert not bad
    assert t["all"].unclear == 0
