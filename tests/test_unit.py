"""The repeating unit made regular (compiler/placement/unit.py, stages._in_runs) and stage 2's
time spent by what is left to gain (wafer.gain_share, lns early stops): alike blocks' shapes
dealt in runs keep every byte and core, pack validly and never cost more than the serpentine
of the choice as stage 1 left it."""

from __future__ import annotations

from collections import Counter

from placement_cases import chain_edges, opt, problem

from compiler.placement import place
from compiler.placement.check import (
    byte_hops,
    byte_hops_lower_bound,
    offchip_bytes_per_token,
    validate,
)
from compiler.placement.cpsat.layout import (
    LayoutInstance,
    full_ranges,
    layout_cost,
    layout_for,
    layout_lower_bound,
)
from compiler.placement.cpsat.lns import TARGET_RATIO
from compiler.placement.cpsat.runner import Clock, SolveParams
from compiler.placement.cpsat.stages import _in_runs
from compiler.placement.cpsat.wafer import MIN_GAIN_SHARE, gain_share, place_wafer
from compiler.placement.geometry import any_pack
from compiler.placement.greedy import serpentine
from compiler.placement.problem import Block, Residency

# A block of a 30 x 24 wafer: resident as a full-width 3 x 24 strip, or streaming its KV cache
# as a half-width 2 x 12 one (the same bytes in either of its shapes)
KV = Residency.STREAM_KV
OPTIONS = (opt(3, 24), opt(2, 12, KV, offchip=1_000), opt(4, 6, KV, offchip=1_000))


def mixed_chain(n: int = 10, pattern: tuple[int, ...] = (0, 1), rows: int = 30) -> tuple:
    """n alike blocks between an odd embedding and head, stage 1's choice cycling `pattern`
    (shapes scattered along the chain, as a solver by totals leaves them)."""
    blocks = [Block("embedding", "embedding", (opt(2, 5),))]
    blocks += [Block(f"block.{i}", "block", OPTIONS, group="block") for i in range(n)]
    blocks += [Block("head", "head", (opt(2, 7),))]
    p = problem(blocks, rows, 24, edges=chain_edges(len(blocks), 4_096))
    choice = [0] + [pattern[i % len(pattern)] for i in range(n)] + [0]
    return p, choice


def shapes(p, choice, members) -> list[tuple[int, int]]:
    return [(p.blocks[b].options[choice[b]].rows, p.blocks[b].options[choice[b]].cols)
            for b in members]


def test_runs_keep_bytes_and_cores_and_make_shapes_contiguous() -> None:
    from compiler.placement.unit import arrangements

    p, choice = mixed_chain()
    members = list(range(len(p.blocks)))
    alts = arrangements(p, choice, members)
    assert alts and tuple(choice) not in alts
    for alt in alts:
        assert Counter(alt[1:-1]) == Counter(choice[1:-1])  # the same options, dealt again
        assert (alt[0], alt[-1]) == (choice[0], choice[-1])  # odd blocks untouched
        body = shapes(p, alt, members[1:-1])
        runs = [s for k, s in enumerate(body) if k == 0 or body[k - 1] != s]
        assert len(runs) == len(set(body))  # each shape one run
    assert arrangements(p, [0] * len(choice), members) == []  # one shape: nothing to deal


def test_dealt_in_runs_packs_validly_and_no_worse_than_the_serpentine() -> None:
    p, choice = mixed_chain()
    members = list(range(len(p.blocks)))
    inst = layout_for(p, choice, members)
    spots = any_pack(inst.rows, inst.cols, inst.dims)
    assert spots is not None
    options = list(choice)
    better, hint, changed = _in_runs(p, options, members, inst, spots)
    assert changed > 0 and hint is not None
    rects = [(r, c, r + h, c + w) for (r, c), (h, w) in zip(hint, better.dims, strict=True)]
    assert all(r >= 0 and c >= 0 and r2 <= 30 and c2 <= 24 for r, c, r2, c2 in rects)
    assert all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
               for k, a in enumerate(rects) for b in rects[k + 1:])
    plain = serpentine(p, choice, [0] * len(choice))
    assert layout_cost(better, hint) <= 2 * byte_hops(p, plain)
    assert layout_cost(better, hint) < layout_cost(inst, spots)


def test_cpsat_on_scattered_shapes_is_valid_and_beats_the_serpentine() -> None:
    p, choice = mixed_chain(12, (0, 1, 0), rows=36)
    placed = place(p, "cpsat", time_limit_s=4.0)  # the validator runs inside place()
    assert validate(p, placed) == ()
    for options in (placed.options, choice):  # its own choice, or the scattered one, snaked
        plain = serpentine(p, options, [0] * len(choice))
        assert offchip_bytes_per_token(p, placed) <= offchip_bytes_per_token(p, plain)
        assert byte_hops(p, placed) <= byte_hops(p, plain)


def test_gain_share_falls_with_what_is_left_to_gain() -> None:
    assert gain_share(300, 100) == 1.0  # 3x the bound: all of the wafer's time
    assert gain_share(150, 100) == 0.5
    assert gain_share(101, 100) == MIN_GAIN_SHARE
    assert gain_share(5, 0) == 1.0  # no bound to judge by


def test_a_hint_within_the_target_spends_a_small_share_of_the_limit() -> None:
    # 12 blocks of 2x2 on a 4 x 24 grid: 11 in a row, the last diagonally below the 11th
    dims = ((2, 2),) * 12
    edges = tuple((i, i + 1, 7) for i in range(11))
    hint = tuple((0, 2 * i) for i in range(11)) + ((2, 18),)
    inst = LayoutInstance(4, 24, dims, edges, hint=hint, **full_ranges(4, 24, dims))
    floor = layout_lower_bound(inst)
    assert floor < layout_cost(inst, hint) <= TARGET_RATIO * floor
    clock = Clock(SolveParams(seed=0, workers=1, deterministic=True), left=20.0)
    placed = place_wafer(inst, 20.0, clock)
    assert placed.cost <= layout_cost(inst, hint)
    assert 20.0 - clock.left <= 20.0 * gain_share(layout_cost(inst, hint), floor) + 1.0
    assert 20.0 - clock.left < 10.0  # well under the half a full search could take


def test_byte_hops_bound_holds_for_dealt_choices() -> None:
    p, choice = mixed_chain()
    placed = place(p, "cpsat", time_limit_s=4.0)
    assert byte_hops(p, placed) >= byte_hops_lower_bound(p, placed.options)


def test_a_choice_that_does_not_pack_moves_the_run_that_costs_least() -> None:
    """Issue 17 (h-dec): stage 1 chooses by cycles under an area bound, so its shapes may not
    pack: here (gpt2-tiny on mesh8x8 in miniature) the embedding's fastest shape is a 1 x 8
    row across the 8 x 1 columns every other layer takes. The packer moves the one run whose
    move packs for the fewest added cycles (the embedding to 1 x 1, +8 cycles), not every
    layer to the flattest shape that packs (the blocks on 1 x 4 at twice their cycles)."""
    def layer(name: str, *shapes: tuple[int, int, int], group: str = "") -> Block:
        return Block(name, name.split(".")[0], tuple(
            opt(r, c, cycles=cyc) for r, c, cyc in shapes), group=group or name)

    blocks = [layer("embedding", (1, 8, 100), (1, 1, 108))]
    blocks += [layer(f"block.{i}", (8, 1, 2_764), (1, 4, 5_474), (1, 1, 13_524), group="block")
               for i in range(4)]
    blocks += [layer("final_norm", (8, 1, 108), (1, 1, 164)),
               layer("head", (8, 1, 612), (1, 1, 4_196))]
    p = problem(blocks, 8, 8)
    placed = place(p, "cpsat", time_limit_s=4.0)
    chosen = [p.blocks[b].options[o] for b, o in enumerate(placed.options)]
    assert [(o.rows, o.cols) for o in chosen] == [(1, 1)] + [(8, 1)] * 6
    assert sum(o.cycles for o in chosen) == 108 + 4 * 2_764 + 108 + 612


def test_a_wafer_of_more_than_48_blocks_is_dealt_too() -> None:
    """A mixture-of-experts wafer holds a hundred or more rectangles: its alike blocks are
    dealt in runs as well (unit.MAX_DEALT), which makes runs of alike units."""
    from compiler.placement.unit import MAX_RECTS, arrangements

    p, choice = mixed_chain(n=60, rows=200)
    members = list(range(len(p.blocks)))
    assert len(members) > MAX_RECTS
    alts = arrangements(p, choice, members)
    assert alts
    for alt in alts:
        body = shapes(p, alt, members[1:-1])
        assert len([s for k, s in enumerate(body) if k == 0 or body[k - 1] != s]) == 2
