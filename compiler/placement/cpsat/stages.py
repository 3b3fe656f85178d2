"""The CP-SAT placer's orchestration: stage order, time split, fallbacks, report.

Stage 1 (residency.py) by area at factor 1.0 first; when that choice does not pack at its floor,
again with exact strip packing (columns, then rows), then, if the area choice did not pack at
all, with the area times falling FACTORS while those may stream less. The area solve stops after
its off-chip term (the floor) when its later terms would lean to a choice that cannot pack
(residency.fastest_overfill: more blocks of the fastest shape than the wafers tile; the 70B
and 405B, whose area choices never packed), and goes to strips. The packed choice
streaming least is kept. Stage 2 (wafer.py) lays each wafer out from a complete greedy packing
hint (serpentine, else first-fit shelves, strips or a skyline; shapes may flex, or a short
CP-SAT packing rescues a few rectangles). Time: shares of the limit per try (STAGE1_SHARES,
RESCUE_*), the rest split over wafers by their edges; the clock (runner.py) keeps the deadline.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from compiler.errors import InfeasiblePlacementError
from compiler.placement.chain import chain_pack
from compiler.placement.check import byte_hops, offchip_lower_bound, usable_options
from compiler.placement.cpsat.layout import (
    LayoutInstance,
    layout_cost,
    layout_for,
    layout_lower_bound,
    solve_layout,
)
from compiler.placement.cpsat.residency import (
    Enough,
    NoSolution,
    Residency,
    ResidencyInstance,
    dense,
    fastest_overfill,
    label,
    offchip_of,
    pipeline_cost,
    residency_hints,
    residency_instance,
    solve_residency,
    strip_guess,
    wafer_members,
)
from compiler.placement.cpsat.runner import DET_SHARE, WALL_SHARE, Clock, SolveParams
from compiler.placement.cpsat.wafer import WaferLayout, place_wafer
from compiler.placement.geometry import STRIPS, Position, any_pack, skyline_shapes
from compiler.placement.greedy import alike, first_fit, serpentine, usable
from compiler.placement.hubs import hub_units, unit_wafer, whole_units
from compiler.placement.problem import (
    Placement,
    PlacementProblem,
    ProgressHook,
    Rect,
    SolverReport,
)
from compiler.placement.unit import MAX_RECTS, alike_key, arrangements

# Share of a wafer's cores stage 1 may fill, tried in turn while stage 2 cannot pack the choice.
# 1.0 first: when that packs, its off-chip minimum is proven for every placement.
FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
# Of the time limit, for stage 1's tries: area at 1.0; each strip packing and the factor 0.95;
# each lower factor.
STAGE1_SHARES = (0.1, 0.08, 0.05)
# CP-SAT packing when greedy packers fail: all rescues share RESCUE_SHARE of the limit, each
# gets at most RESCUE_STEP of it, and only wafers of at most RESCUE_MAX_BLOCKS blocks try.
RESCUE_SHARE, RESCUE_STEP, RESCUE_MAX_BLOCKS = 0.1, 0.03, 24
# A wafer holding mixture-of-experts units (hubs.hub_units) gets at most this share of the
# time limit per rectangle in stage 2. Its separation bound is loose (a router's expert groups
# cannot all touch it), so no stop rule ends its search near the bound, and its share by edges
# times the wafers sharing its layout ran to the end: Llama 4 Maverick's 10-rectangle wafer,
# laid out once for 21 wafers, took 7-8 of the 18 s budget (~5 CPU s) for the layout that 3 s
# of it found. At 0.7% (2.1 s of the budget there) Maverick's byte-hops are 0.01% above those
# at 1%, at 0.5% 0.4%. The other MoE wafers stop sooner (lns.PATIENCE) than this
MOE_RECT_SHARE = 0.007
# The chain packing is CP-SAT's stage-2 hint when it is within this factor of the separation
# bound and cheaper than the greedy packing (see _nearer).
CHAIN_NEAR = 2.0


# -- the whole solve ---------------------------------------------------------------------------


@dataclass
class _Run:
    """The solve in progress: problem, options, clock and what each stage said."""

    problem: PlacementProblem
    time_limit_s: float  # the wall-clock deadline of the whole solve
    clock: Clock
    budget_s: float = 0.0  # what the time shares divide (deterministic): the limit, or less
    started: float = field(default_factory=time.perf_counter)
    stages: list[tuple[str, str]] = field(default_factory=list)
    rescue_left: float = 0.0  # seconds left for CP-SAT packing rescues, over all attempts
    warm: Placement | None = None  # a valid placement of this problem to start from (warm.py)

    def __post_init__(self) -> None:
        self.budget_s = self.budget_s or self.time_limit_s
        self.rescue_left = RESCUE_SHARE * self.budget_s


def solve(
    problem: PlacementProblem,
    *,
    time_limit_s: float = 30.0,
    seed: int = 0,
    workers: int = 1,
    deterministic: bool = True,
    on_progress: ProgressHook | None = None,
    hint: Placement | None = None,
    budget_share: float = 1.0,
) -> Placement:
    """Place every block: CP-SAT stage 1 (residency, wafers), then stage 2 (layout per wafer).
    Every solve ends by `time_limit_s` wall seconds from now (module docstring); the solves
    share `budget_share` of it (deterministic time, or wall seconds when not deterministic):
    a warm start searches less, but its deadline stays the whole limit, so under load the
    deterministic budget, not the wall clock, still ends its searches. `hint`: a
    valid placement of this problem (a warm start, compiler/placement/warm.py): stage 1's hint
    when it streams no more than the greedy one, and each wafer's stage-2 hint when it has
    the same blocks and shapes there and costs less than the greedy packing."""
    for b in range(len(problem.blocks)):
        usable(problem, b)  # raises InfeasiblePlacementError naming a block with no option
    params = SolveParams(seed, max(1, workers), deterministic)
    share = DET_SHARE if deterministic else WALL_SHARE
    budget = budget_share * time_limit_s
    clock = Clock(params, share * budget, time.perf_counter() + time_limit_s, on_progress)
    r = _Run(problem, time_limit_s, clock, budget, warm=hint)
    if budget_share < 1.0:
        r.stages.append(("budget", f"{budget_share:.0%} of the limit for the searches "
                         f"({budget:g} s), the deadline at the whole {time_limit_s:g} s"))
    residency, layouts = _stages_1(r)
    if residency is None or layouts is None:
        return _greedy_fallback(r)
    placed = _place_wafers(r, layouts)
    return _assemble(r, residency, layouts, placed)


def _place_wafers(r: _Run, layouts: dict[int, LayoutInstance]) -> dict[int, WaferLayout]:
    """Stage 2 on each wafer. Wafers with the same instance (blocks, shapes, edges, hint: a
    model's repeating unit, e.g. 6 alike blocks on each of 20 wafers) are solved once, with the
    time all of them would have had, and share the layout."""
    placed: dict[int, WaferLayout] = {}
    first: dict[LayoutInstance, int] = {}
    for k, inst in sorted(layouts.items()):
        blocks = f"{len(inst.dims)} blocks; "
        if inst in first:
            placed[k] = placed[first[inst]]
            r.stages.append((f"wafer {k}", f"{blocks}the blocks, shapes and edges of wafer "
                             f"{first[inst]}: its layout"))
            continue
        first[inst] = k
        placed[k] = place_wafer(inst, _wafer_limit(r, layouts, k), r.clock, f"wafer {k}",
                                units=unit_wafer(inst.dims, inst.edges) is not None)
        r.stages.append((f"wafer {k}", blocks + placed[k].summary))
    return placed


def _wafer_limit(r: _Run, layouts: dict[int, LayoutInstance], k: int) -> float:
    """This wafer's time: its share (`_wafer_share`), at most MOE_RECT_SHARE of the budget per
    rectangle on a wafer of mixture-of-experts units (hubs.hub_units)."""
    inst = layouts[k]
    share = _wafer_share(r, layouts, k)
    if not hub_units(inst.dims, inst.edges):
        return share
    return min(share, MOE_RECT_SHARE * r.budget_s * len(inst.dims))


def _wafer_share(r: _Run, layouts: dict[int, LayoutInstance], k: int) -> float:
    """This wafer's part of the time left, by its edges among the wafers not yet solved
    (with the edges of the later wafers that will reuse its layout)."""
    weights = {j: len(inst.edges) for j, inst in layouts.items() if j >= k}
    mine = sum(w for j, w in weights.items() if layouts[j] == layouts[k])
    first = {inst: j for j, inst in sorted(layouts.items(), reverse=True)}  # lowest j wins
    total = sum(w for j, w in weights.items() if first[layouts[j]] >= k)
    return r.clock.left * mine / total if total else 0.0


def _note_deadline(r: _Run) -> None:
    """Say so when the wall-clock limit, not the deterministic budget, ended solves."""
    if r.clock.cut_short:
        r.stages.append(("time limit", (
            f"the wall clock ({r.time_limit_s:g} s limit, or a solve's fuse) stopped the search "
            f"{r.clock.cut_short} time(s) before its deterministic budget: this placement "
            "depends on the machine's speed; a larger --time-limit makes it reproducible")))


# -- stage 1 until its choice packs ------------------------------------------------------------


Packed = tuple[Residency, dict[int, LayoutInstance]]  # a choice and its packed layouts


def _stages_1(r: _Run) -> tuple[Residency | None, dict[int, LayoutInstance] | None]:
    """Stage 1 until stage 2's greedy hints can pack its choice. By area at factor 1.0 first
    (its off-chip minimum, or the analytic bound, is a floor for every placement); unless that
    packs at the floor, by strips (exact packings), then, if area did not pack, by area at
    falling factors while those may stream less. The packed choice streaming least (then
    with the least pipeline cost) is kept."""
    problem, hint = r.problem, _start_hint(r)
    first = _residency_or_hint(r, residency_instance(problem), STAGE1_SHARES[0], hint,
                               fastest_overfill)
    if first is None:
        raise _stage1_infeasible(problem)
    floor = max(first.offchip_bound, offchip_lower_bound(problem) - problem.io_bytes_per_token)
    area = _packed(r, first) if first.complete else _unpacked(r, first)
    found = [area] if area is not None else []
    if area is None and first.complete:
        found += _at_floor(r, first, hint, floor)
    if _least(r, found) > floor:
        found += _by_strips(r, hint, floor, _least(r, found))
    if area is None and _least(r, found) > floor:
        found += _by_falling_factors(r, hint, _least(r, found))
    if not found:
        return None, None
    inst = residency_instance(problem)
    best = min(found, key=lambda p: (offchip_of(problem, p[0].options),
                                     pipeline_cost(inst, (p[0].options, p[0].wafer_of))))
    if len(found) > 1:
        r.stages.append(("residency", f"kept {best[0].summary.split(':')[0]}"))
    return best


def _at_floor(r: _Run, area: Residency, hint: Placement | None, floor: float) -> list[Packed]:
    """When the area choice, every term solved, does not pack: the first choice at the
    off-chip floor that packs of the area solve's choices before its last terms (latest
    first: the cycles and shape terms may lean to a choice that does not pack) and
    the constructive ones (residency_hints: greedy by area, the greedy placement's; least
    pipeline cost first). Nothing streams less, so strips and lower factors, which only look
    for a choice streaming less than what packs, are not tried. Llama 4 Maverick: its area
    choice (cycles solved) overfills a wafer; by columns (UNKNOWN in its share) it packed a
    greedy choice streaming 786 MB a token, and at factor 0.95 (UNKNOWN) the greedy choice
    at the floor, ~2 units of the budget and ~1 CPU s of packings later. Its choice after
    the pipeline term packs (the same shapes, each wafer cut before the dense block that
    feeds a router instead of after the one its groups combine into; slowest wafer 159,591
    -> 148,445 cycles): byte-hops 4.2e8 -> 2.5e8 with the combines across the wafer link
    (inter-wafer bytes 246 -> 471 KB a token), decode 713 -> 724 tokens/s expected."""
    inst = residency_instance(r.problem)
    hints = sorted(residency_hints(inst, hint), key=lambda c: pipeline_cost(inst, c))
    tries = [(f"{label(inst)}: the choice after its {name} term", c) for name, c in area.earlier]
    tries += [(f"{label(inst)}: greedy choice at the off-chip floor", c) for c in hints]
    for summary, (options, wafer_of) in tries:
        if offchip_of(r.problem, options) > floor:
            continue
        res = Residency(tuple(options), tuple(wafer_of), False, summary, int(floor))
        packed = _packed(r, res)
        if packed is not None:
            return [packed]
    return []


def _unpacked(r: _Run, res: Residency) -> None:
    """Stage 1 by area stopped after off-chip: its choice is left unpacked (strips next)."""
    r.stages.append(("residency", res.summary + "; not packed: by strips"))


def _least(r: _Run, found: Sequence[Packed]) -> float:
    return min((offchip_of(r.problem, p[0].options) for p in found), default=math.inf)


def _packed(r: _Run, res: Residency) -> Packed | None:
    """The choice with its packing hints (stage recorded), or None if it does not pack. With
    its wafer cuts moved off mixture-of-experts units when that packs with no more cycles
    (a fuller wafer may pack only with slower shapes: Mixtral's groups at 12,394 cycles
    instead of 8,927). The choice as cut is packed too only when the moved one costs cycles
    (alike blocks dealt in runs, unit.py, change options, not cycles)."""
    whole = _whole_units(r.problem, res)
    packed = greedy_hints(r, whole) if whole is not None else None
    if packed is None or _all_cycles(r.problem, packed[0]) > _all_cycles(r.problem, res):
        as_cut = greedy_hints(r, res)
        if packed is None or (as_cut is not None and _all_cycles(r.problem, as_cut[0])
                              < _all_cycles(r.problem, packed[0])):
            packed = as_cut
    r.stages.append(("residency", res.summary + "; does not pack" if packed is None
                     else packed[0].summary))
    return packed


def _all_cycles(problem: PlacementProblem, res: Residency) -> int:
    return _cycles_of(problem, res.options, range(len(problem.blocks)))


def _whole_units(problem: PlacementProblem, res: Residency) -> Residency | None:
    """The choice with every wafer cut inside an MoE unit (a router and its expert groups,
    hubs.py) moved to the unit's nearer end, when each wafer still has the cores; else None."""
    dims = [(o.rows, o.cols) for o in (problem.blocks[b].options[i]
                                       for b, i in enumerate(res.options))]
    edges = [(e.src, e.dst, e.bytes_per_token) for e in problem.edges]
    wafer_of = whole_units(dims, edges, res.wafer_of, problem.cores_per_wafer)
    if wafer_of is None:
        return None
    moved = sum(a != b for a, b in zip(wafer_of, res.wafer_of, strict=True))
    return dataclasses.replace(res, wafer_of=wafer_of, optimal=False, summary=(
        res.summary + f"; {moved} block(s) moved to their MoE router's wafer"))


def _by_strips(r: _Run, hint: Placement | None, floor: float, beat: float) -> list[Packed]:
    """Stage 1 by columns, then rows, until one packs at the floor; a packing is solved only
    when its greedy choice exists and streams less than `beat` (what already packs)."""
    found: list[Packed] = []
    for packing in STRIPS:
        guess = strip_guess(r.problem, packing)
        if guess is None or offchip_of(r.problem, guess[0]) >= min(beat, _least(r, found)):
            r.stages.append(("residency", f"{packing}: " + (
                "the blocks do not fit" if guess is None else "greedy streams no less, skipped")))
            continue
        res = _residency_or_hint(r, residency_instance(r.problem, packing=packing),
                                 STAGE1_SHARES[1], hint)
        if res is None:
            r.stages.append(("residency", f"{packing}: the blocks do not fit"))
            continue
        packed = _packed(r, res)
        if packed is not None:
            found.append(packed)
            if _least(r, found) <= floor:
                break
    return found


def _by_falling_factors(r: _Run, hint: Placement | None, best: float) -> list[Packed]:
    """Stage 1 by area at factors below 1.0 until one packs or streams at least `best`."""
    for attempt, factor in enumerate(FACTORS[1:], start=1):
        share = STAGE1_SHARES[min(attempt, len(STAGE1_SHARES) - 1)]
        res = _residency_or_hint(r, residency_instance(r.problem, factor), share, hint)
        if res is None:
            r.stages.append(("residency", f"factor {factor:.2f}: infeasible"))
            return []
        if offchip_of(r.problem, res.options) >= best:
            r.stages.append(("residency", res.summary + "; streams no less: stop"))
            return []
        packed = _packed(r, res)
        if packed is not None:
            return [packed]
    return []


def _residency_or_hint(
    r: _Run, inst: ResidencyInstance, share: float, greedy: Placement | None,
    enough: Enough | None = None,
) -> Residency | None:
    """Stage 1's answer in `share` of the time limit, or a greedy choice when that streams
    less or time ran out (None: infeasible, or strips and nothing found). `enough`: see
    solve_residency."""
    limit = share * r.budget_s
    try:
        res = solve_residency(inst, limit, r.clock, greedy, enough)
    except NoSolution as err:
        hints = residency_hints(inst, greedy)
        if not hints and inst.packing != "area":
            return None
        if not hints:
            raise InfeasiblePlacementError(
                f"{r.problem.name}: stage 1 found no option choice in {limit:.1f} s ({err}); "
                "give the solver more time") from None
        best = min(hints, key=lambda c: offchip_of(r.problem, c[0]))
        return Residency(tuple(best[0]), tuple(best[1]), False,
                         f"{label(inst)}: {err}, greedy choice")
    if res is not None and greedy is not None and (
            offchip_of(r.problem, greedy.options) < offchip_of(r.problem, res.options)):
        return Residency(greedy.options, dense([rc.wafer for rc in greedy.rects]), False,
                         res.summary + f"; {greedy.report.method} streams less, its choice kept",
                         res.offchip_bound)
    return res


def _start_hint(r: _Run) -> Placement | None:
    """Stage 1's hint: the greedy placement, or the warm start when it streams no more."""
    greedy = _greedy_hint(r.problem)
    if r.warm is None or (greedy is not None and offchip_of(r.problem, greedy.options)
                          < offchip_of(r.problem, r.warm.options)):
        return greedy
    return r.warm


def _greedy_hint(problem: PlacementProblem) -> Placement | None:
    for placer in (serpentine, first_fit):
        try:
            return placer(problem)
        except InfeasiblePlacementError:
            continue
    return None


def _stage1_infeasible(problem: PlacementProblem) -> InfeasiblePlacementError:
    need = sum(min(o.cores for _, o in usable(problem, b)) for b in range(len(problem.blocks)))
    have = problem.wafers * problem.cores_per_wafer
    why = ("" if need > have else
           f"; no split of the blocks into {problem.wafers} contiguous wafer range(s) of at most "
           f"{problem.cores_per_wafer:,} cores each exists")
    return InfeasiblePlacementError(
        f"{problem.name}: the blocks need at least {need:,} cores with their smallest usable "
        f"options, and {problem.wafers} wafer(s) x {problem.cores_per_wafer:,} = {have:,} cores "
        f"are available{why}; use more wafers or options with fewer cores"
    )


# -- stage 2's packing hints -------------------------------------------------------------------


def greedy_hints(r: _Run, res: Residency) -> tuple[Residency, dict[int, LayoutInstance]] | None:
    """Per wafer, the layout instance with a complete packing hint (None if one cannot pack).
    A wafer whose shapes do not pack may switch blocks to other shapes that stream the same
    bytes (the returned Residency says so)."""
    problem, out, options, flexed = r.problem, {}, list(res.options), 0
    for k, members in sorted(wafer_members(res.wafer_of).items()):
        inst = layout_for(problem, options, members)
        spots = any_pack(inst.rows, inst.cols, inst.dims)
        if spots is None:  # the skyline's shapes, or one run moved if that costs fewer cycles
            moved, flexible = list(options), list(options)
            found = _fewest_cycles(problem, moved, members)
            flex = _flex_shapes(problem, flexible, members)
            if flex is not None:  # new shapes; serpentine on them may pack now, and closer
                cheaper = found is not None and (_cycles_of(problem, moved, members)
                                                 < _cycles_of(problem, flexible, members))
                options[:] = moved if cheaper else flexible
                flexed += sum(options[b] != res.options[b] for b in members)
                inst = layout_for(problem, options, members)
                spots = found if cheaper else any_pack(inst.rows, inst.cols, inst.dims) or flex
        inst, spots, dealt = _in_runs(problem, options, members, inst, spots)
        flexed += dealt
        spots = spots or _nearer(inst, _rescue(r, inst))
        spots = _warm_spots(r, options, members, inst, spots)
        if spots is None:
            return None
        out[k] = dataclasses.replace(inst, hint=spots)
    if flexed:
        res = dataclasses.replace(res, options=tuple(options), optimal=False, summary=(
            res.summary + f"; {flexed} block(s) changed shape to pack"))
    return res, out


def _warm_spots(r: _Run, options: Sequence[int], members: Sequence[int], inst: LayoutInstance,
                spots: tuple[Position, ...] | None) -> tuple[Position, ...] | None:
    """`spots`, or the warm start's positions of these blocks when it has exactly them on one
    wafer with these options and they cost less (or nothing else packs)."""
    warm = r.warm
    if warm is None or any(warm.options[b] != options[b] for b in members):
        return spots
    wafers = {warm.rects[b].wafer for b in members}
    together = [b for b, rc in enumerate(warm.rects) if rc.wafer in wafers]
    if len(wafers) != 1 or together != list(members):
        return spots
    mine = tuple((warm.rects[b].row, warm.rects[b].col) for b in members)
    if spots is None or layout_cost(inst, mine) < layout_cost(inst, spots):
        return mine
    return spots


def _nearer(inst: LayoutInstance, spots: tuple[Position, ...] | None,
            beat: float = math.inf) -> tuple[Position, ...] | None:
    """`spots`, or the chain packing (chain.py) when that packs, costs less and is within
    CHAIN_NEAR of the separation bound. A far chain packing (a wafer so full that the odd
    rectangles land far from their links) is a worse start for CP-SAT than the skyline's
    mixed packing, even at a lower cost: Llama 3 8B at 128k context, from a chain hint 6.4x
    the bound, ended 2.2x further from it than from the skyline's. CP-SAT from the greedy
    hints ends 2.1-2.6x the bound on the giants measured, so a chain hint within 2x is kept.
    A wafer of mixture-of-experts units (hubs.py) keeps it at any distance from the bound
    (a router's many expert groups cannot all touch it, so the bound is loose there): the
    units laid out as boxes, each router amid its groups, are what stage 2 cannot find.
    `beat`: the chain packing is wanted only when cheaper than that (the search stops early
    on layouts that cannot be)."""
    if spots is not None:
        beat = min(beat, layout_cost(inst, spots))
    chained = chain_pack(inst.rows, inst.cols, inst.dims, inst.edges,
                         None if math.isinf(beat) else int(beat))
    if chained is None or (layout_cost(inst, chained) > CHAIN_NEAR * layout_lower_bound(inst)
                           and unit_wafer(inst.dims, inst.edges) is None):
        return spots
    if spots is None or layout_cost(inst, chained) < layout_cost(inst, spots):
        return chained
    return spots


def _in_runs(problem: PlacementProblem, options: list[int], members: Sequence[int],
             inst: LayoutInstance, spots: tuple[Position, ...] | None
             ) -> tuple[LayoutInstance, tuple[Position, ...] | None, int]:
    """The wafer's hint (`_nearer` of `spots`, its greedy packing, None if it has none), or
    the wafer with its alike blocks' options dealt in runs of one shape (unit.py) when that
    packs closer (or the choice as it is does not pack); `options` is updated in place.
    Returns the instance, its hint and how many blocks changed option. The deals are
    tried first, each chain packing wanted only when it beats the best so far, then the
    choice as it is (it wins a tie): the answer of trying it first, for less search."""
    best = (math.inf if spots is None else layout_cost(inst, spots), inst, None, None)
    for choice in arrangements(problem, options, members):
        alt = layout_for(problem, choice, members)
        found = (_nearer(alt, any_pack(alt.rows, alt.cols, alt.dims), best[0])
                 or chain_pack(alt.rows, alt.cols, alt.dims, alt.edges,
                               None if math.isinf(best[0]) else int(best[0])))
        if found is not None and layout_cost(alt, found) < best[0]:
            best = (layout_cost(alt, found), alt, found, choice)
    mine = _nearer(inst, spots, best[0] + 1)
    if best[3] is None or (mine is not None and layout_cost(inst, mine) <= best[0]):
        return inst, mine, 0
    changed = sum(options[b] != best[3][b] for b in members)
    options[:] = best[3]
    return best[1], best[2], changed


def _cycles_of(problem: PlacementProblem, options: Sequence[int], members: Sequence[int]
               ) -> int:
    return sum(problem.blocks[b].options[options[b]].cycles for b in members)


def _fewest_cycles(problem: PlacementProblem, options: list[int], members: Sequence[int]
                   ) -> tuple[Position, ...] | None:
    """When the chosen shapes do not pack: the one move of a run of alike blocks in one mode
    (unit.alike_key; a single layer is a run of one) to another shape streaming the same bytes
    that packs (any_pack) for the fewest added cycles. Stage 1 chose by cycles; the skyline of
    `_flex_shapes` takes the flattest shapes whatever they cost (Llama 3 8B's blocks on
    19 x 762 strips at twice the cycles of what stage 1 chose; gpt2-tiny on mesh8x8 with its
    embedding on a 1 x 8 row across the blocks' 8 x 1 columns: every block went to 1 x 1 or
    1 x 4, where moving the embedding to 1 x 1 costs 7 cycles). greedy_hints keeps it when
    it costs fewer cycles than the skyline's shapes. On success `options` is updated in
    place. Wafers of more than unit.MAX_RECTS rectangles are left to the skyline."""
    if len(members) > MAX_RECTS:
        return None
    runs: dict[tuple, list[int]] = {}
    for b in members:
        now = problem.blocks[b].options[options[b]]
        key = (alike_key(problem.blocks[b]), now.residency, now.offchip_bytes_per_token)
        runs.setdefault(key, []).append(b)
    moves = []
    for run in runs.values():
        first = problem.blocks[run[0]]
        now = first.options[options[run[0]]]
        before = sum(problem.blocks[b].options[options[b]].cycles for b in run)
        for o in usable_options(problem, run[0]):
            if alike(first.options[o], now) and any(options[b] != o for b in run):
                added = sum(problem.blocks[b].options[o].cycles for b in run) - before
                moves.append((added, first.options[o].cores * len(run), run[0], o, run))
    for *_, o, run in sorted(moves, key=lambda mv: mv[:4]):
        trial = list(options)
        for b in run:
            trial[b] = o
        inst = layout_for(problem, trial, members)
        spots = any_pack(inst.rows, inst.cols, inst.dims)
        if spots is not None:
            options[:] = trial
            return spots
    return None


def _flex_shapes(
    problem: PlacementProblem, options: list[int], members: Sequence[int]
) -> tuple[Position, ...] | None:
    """Skyline-pack these blocks letting each take any shape streaming the same bytes in the
    same mode; on success, update `options` in place."""
    alternatives = []
    for b in members:
        now = problem.blocks[b].options[options[b]]
        same = [o for o in usable_options(problem, b) if o != options[b] and alike(
            problem.blocks[b].options[o], now)]
        alternatives.append([options[b], *same])
    found = skyline_shapes(problem.rows, problem.cols, [
        [(problem.blocks[b].options[o].rows, problem.blocks[b].options[o].cols) for o in alts]
        for b, alts in zip(members, alternatives, strict=True)])
    if found is None:
        return None
    for b, alts, s in zip(members, alternatives, found[1], strict=True):
        options[b] = alts[s]
    return found[0]


def _rescue(r: _Run, inst: LayoutInstance) -> tuple[Position, ...] | None:
    """CP-SAT packing with no hint, for a few rectangles that greedy packers cannot fit."""
    if len(inst.dims) > RESCUE_MAX_BLOCKS or r.rescue_left <= 0.05:
        return None
    left_before, stage = r.clock.left, r.clock.stage
    r.clock.enter("packing rescue")
    found = solve_layout(inst, min(r.rescue_left, RESCUE_STEP * r.budget_s), r.clock,
                         minimize=False).spots
    r.rescue_left -= left_before - r.clock.left
    r.clock.stage = stage
    return found


# -- answers -----------------------------------------------------------------------------------


def _greedy_fallback(r: _Run) -> Placement:
    """Stage 1 could not give a packable choice: the better greedy placement, else infeasible."""
    found = []
    for placer in (serpentine, first_fit):
        try:
            found.append(placer(r.problem))
        except InfeasiblePlacementError as err:
            r.stages.append((placer.__name__, str(err)))
    if not found:
        raise InfeasiblePlacementError(
            f"{r.problem.name}: no packing found; " + "; ".join(s for _, s in r.stages))
    best = min(found, key=lambda p: (offchip_of(r.problem, p.options), byte_hops(r.problem, p)))
    r.stages.append(("fallback", f"stage 1's choices did not pack: {best.report.method} kept"))
    return Placement(best.options, best.rects, _report(r, "FEASIBLE", best, None))


def _assemble(
    r: _Run, res: Residency, layouts: dict[int, LayoutInstance], placed: dict[int, WaferLayout]
) -> Placement:
    rects: list[Rect | None] = [None] * len(r.problem.blocks)
    for k, members in wafer_members(res.wafer_of).items():
        for b, (row, col), (h, w) in zip(members, placed[k].spots, layouts[k].dims, strict=True):
            rects[b] = Rect(k, row, col, h, w)
    placement = Placement(res.options, tuple(rc for rc in rects if rc is not None))
    bound = sum(lay.bound for lay in placed.values()) / 2
    optimal = res.optimal and all(lay.optimal for lay in placed.values())
    report = _report(r, "OPTIMAL" if optimal else "FEASIBLE", placement, bound)
    return Placement(placement.options, placement.rects, report)


def _report(r: _Run, status: str, placement: Placement, bound: float | None) -> SolverReport:
    params = r.clock.params
    _note_deadline(r)
    return SolverReport(
        method="cpsat", status=status, objective=byte_hops(r.problem, placement), bound=bound,
        wall_time_s=time.perf_counter() - r.started, seed=params.seed, workers=params.workers,
        time_limit_s=r.time_limit_s, deterministic=params.deterministic, stages=tuple(r.stages),
    )
