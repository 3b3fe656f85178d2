"""compile_model: the compiler as one straight line of named stages.

    graph = frontend(model) -> tiled = tiling(graph) -> problem = adapter(tiled)
    -> placement = place(problem) (validated) -> baseline = first_fit(problem) -> result

Each `with stage(name):` block is timed (compiler/stages.py); `on_stage(name, seconds)` lets
the CLI print stage lines as they finish, `on_start(name)` says a stage begins, and
`on_progress(stage, objective, bound, elapsed_s)` hears the CP-SAT placer's incumbents
(compiler/placement/problem.py ProgressHook). The hooks are plain callables: how progress is
shown is the caller's business. An unexpected exception in a stage becomes an InternalError
naming the stage (and layer); typed WaferErrors pass through. With CompileOptions.check (on in
tests) the tiled graph, the schedule and the timelines are checked in memory as they are made.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from compiler import ir
from compiler.errors import CapacityError, InfeasiblePlacementError, ModelError
from compiler.frontend import FrontendOptions, check_source, drop_kept, load_model
from compiler.placement import place
from compiler.placement.check import Metrics, metrics
from compiler.placement.problem import (
    Placement,
    PlacementProblem,
    ProgressHook,
    Rect,
    Residency,
)
from compiler.placement.warm import (
    HINT_SHARE,
    PlacementHint,
    keep_better,
    problem_sha256,
    translate,
)
from compiler.result import CompileResult
from compiler.schedule.build import KVCacheRef, Schedule, StepsMemo, build_schedule
from compiler.schedule.check import schedule_problems, timeline_problems
from compiler.schedule.decode import (
    DecodeGraph,
    DecodeMemo,
    DecodePlan,
    decode_forms,
    decode_plan_or_reason,
    decode_steps,
    one_token_graph,
    prefill_caches,
)
from compiler.schedule.memory import check_runnable
from compiler.schedule.moe import MoEEstimate, moe_estimate
from compiler.schedule.perf import (
    PerfOptions,
    Timeline,
    estimate,
    streamed_kv_cycles,
    timeline,
)
from compiler.speculative import (
    IDLE,
    RESERVED,
    Speculative,
    SpeculativeOptions,
    largest_idle,
    price,
    resident,
    split_reserve,
    strip_widths,
    sub_target,
    with_reserve,
)
from compiler.stages import StageHook, Stages, StartHook, check, spaced_collections
from compiler.target import Target, load_target
from compiler.tiling.candidates import (
    DecodeStep,
    TiledGraph,
    TilingOptions,
    context_length,
    tile_graph,
    to_problem,
)
from compiler.tiling.check import tiled_problems
from compiler.tiling.routing import (
    UNIFORM,
    Routing,
    group_loads,
    routed_candidates,
    routed_edges,
)
from compiler.vocab import Mode, PlacementMethod


@dataclass(frozen=True)
class SolverOptions:
    method: str = PlacementMethod.CPSAT
    time_limit_s: float = 30.0
    seed: int = 0
    workers: int = 1
    deterministic: bool = True

@dataclass(frozen=True)
class CompileOptions:
    frontend: FrontendOptions = field(default_factory=FrontendOptions)
    tiling: TilingOptions = field(default_factory=TilingOptions)
    solver: SolverOptions = field(default_factory=SolverOptions)
    # check the tiled graph, schedule and timelines in memory between stages (tests turn it on:
    # tests/conftest.py; the CLI with WAFER_CHECK=1); not in placement.json
    check: bool = False
    routing: Routing = UNIFORM  # MoE models: per-expert routing frequencies (--routing FILE)
    # a draft model beside the target on its wafers (--speculative; compiler/speculative.py)
    speculative: SpeculativeOptions | None = None
    # (rows, cols) the placement keeps free on the last wafer (a speculative draft's strip:
    # speculative.with_reserve); CompileResult.reserved says where
    reserve: tuple[int, int] | None = None

KEEP_PLACEMENTS = 16  # Reuse keeps this many placements (a problem of a giant is ~1 MB)
KEEP_FORMS = 4  # and this many contexts' decode forms of the last model (a sweep's context axis)

Forms = tuple[tuple[DecodeGraph, ...] | str, tuple[DecodeStep, ...]]
TilingKey = tuple[str, FrontendOptions, Target, TilingOptions, Routing, bool]


@dataclass
class Reuse:
    """What a run of compiles in one process (a sweep worker) shares: frontend graphs by
    (model, frontend options), the decode forms (the model at one token, bound from the
    model the frontend opened) and their decode steps by (model, frontend options, context),
    the last tiling by (model, frontend options, target, tiling options, routing, check),
    placements by (placement problem, solver options), the decode stage's streamed forms
    and schedule steps (`schedule.decode.DecodeMemo`: points along a link width schedule the
    same decode step on the same regions; only its reduce algorithms and timing differ) and
    the prefill schedule's steps alike (`schedule.build.StepsMemo`). A
    hit is what computing it again would give: the frontend, the decode forms and the tiling
    are functions of their keys, the decode memo's entries of theirs, and the placement of a
    deterministic solve of an equal problem (non-deterministic solves are never shared).
    `compile_model` names what it took from here in `CompileResult.reused`."""

    graphs: dict[tuple[str, FrontendOptions], ir.Graph] = field(default_factory=dict)
    # the model at one token (shape-only), for every context: bound once per model
    one_token: dict[tuple[str, FrontendOptions], ir.Graph | str] = field(default_factory=dict)
    forms: dict[tuple[str, FrontendOptions, int], Forms] = field(default_factory=dict)
    tilings: dict[TilingKey, tuple[TiledGraph, PlacementProblem]] = field(default_factory=dict)
    placements: dict[tuple[PlacementProblem, SolverOptions, Placement | None], Placement] = field(
        default_factory=dict)
    decode: DecodeMemo = field(default_factory=DecodeMemo)
    schedules: StepsMemo = field(default_factory=StepsMemo)  # the prefill's, alike

    def graph(self, model: str | Path, options: FrontendOptions, used: list[str]) -> ir.Graph:
        key = (str(model), options)
        if key in self.graphs:
            used.append("frontend")
        else:  # the last model only: memory
            self.graphs = {key: load_model(model, options, keep=True)}
            self.forms, self.tilings, self.one_token = {}, {}, {}
            self.decode, self.schedules = DecodeMemo(), StepsMemo()
        return self.graphs[key]

    def decode_forms(self, model: str | Path, options: FrontendOptions, graph: ir.Graph,
                     context: int, used: list[str]) -> Forms:
        key = (str(model), options, context)
        if key in self.forms:
            used.append("decode-forms")
            return self.forms[key]
        if len(self.forms) >= KEEP_FORMS:  # the oldest goes
            del self.forms[next(iter(self.forms))]
        g1_key = (str(model), options)
        if g1_key not in self.one_token:
            self.one_token[g1_key] = one_token_graph(str(model), graph)
        self.forms[key] = _decode_forms(model, graph, context, self.one_token[g1_key])
        return self.forms[key]

    def tiling(self, key: TilingKey, used: list[str],
               tile: Callable[[], tuple[TiledGraph, PlacementProblem]],
               ) -> tuple[TiledGraph, PlacementProblem]:
        if key in self.tilings:
            used.append("tiling")
        else:
            self.tilings = {key: tile()}  # the last one only: a giant's is large
        return self.tilings[key]

    def placement(self, problem: PlacementProblem, solver: SolverOptions, used: list[str],
                  place_it: Callable[[], Placement], warm: Placement | None = None) -> Placement:
        """The placement of an equal problem solved alike (from an equal warm start, if any),
        else `place_it()`'s."""
        key = (problem, solver, None if warm is None else _bare(warm))
        if key in self.placements:
            used.append("placement")
            return self.placements[key]
        placement = place_it()
        if solver.deterministic:
            if len(self.placements) >= KEEP_PLACEMENTS:  # the oldest goes
                del self.placements[next(iter(self.placements))]
            self.placements[key] = placement
        return placement


def compile_model(model: str | Path, target: str | Path | Target,
                  options: CompileOptions | None = None,
                  on_stage: StageHook | None = None, *, on_start: StartHook | None = None,
                  on_progress: ProgressHook | None = None,
                  reuse: Reuse | None = None, hint: PlacementHint | None = None) -> CompileResult:
    """Compile `model` for `target`. `reuse`: what earlier compiles in this process left
    (a sweep worker); `hint`: a placement solved with the same solver options for a nearby
    problem (a sweep point's neighbour): an equal problem takes it as it is, a problem it
    carries over to (warm.translate) warm-starts CP-SAT from it with HINT_SHARE of the
    deterministic budget (the wall-clock deadline stays the whole time limit) and keeps the
    better of the two. `CompileResult.reused` names what was taken
    ("placement" for an equal problem, "hint" for a warm start). The collector's full
    passes are spaced out meanwhile (stages.spaced_collections)."""
    with spaced_collections():
        return _compile(model, target, options or CompileOptions(), on_stage, on_start,
                        on_progress, reuse, hint)


def _compile(model: str | Path, target: str | Path | Target, options: CompileOptions,
             on_stage: StageHook | None, on_start: StartHook | None,
             on_progress: ProgressHook | None, reuse: Reuse | None,
             hint: PlacementHint | None) -> CompileResult:
    if options.speculative is not None:
        _check_draft(options.speculative.draft)
    used: list[str] = []
    stage = Stages(on_stage, on_start)
    if isinstance(target, Target):
        tgt = target
    else:
        with stage("target"):
            tgt = load_target(target)
    with stage("frontend"):
        graph = (reuse.graph(model, options.frontend, used) if reuse
                 else load_model(model, options.frontend, keep=True))
    with stage("tiling"):  # each layer's decode step priced as the decode schedule runs it
        context = context_length(graph, options.tiling)
        forms, steps = (reuse.decode_forms(model, options.frontend, graph, context, used)
                        if reuse else _decode_forms(model, graph, context))
        drop_kept()  # the model at one token was bound from the opened model (or not needed)
        tile = functools.partial(_tiling, graph, tgt, options, steps)
        key = (str(model), options.frontend, tgt, options.tiling, options.routing,
               options.check)
        tiled, problem = reuse.tiling(key, used, tile) if reuse else tile()
    with stage("placement"):
        reserved = None
        placer = problem if options.reserve is None else with_reserve(problem, *options.reserve)
        placement = _placement(placer, options.solver, used, on_progress, reuse, hint)
        if options.reserve is not None:
            placement, reserved = split_reserve(placement)
        placed = metrics(problem, placement)
    with stage("baseline"):
        baseline = _baseline(problem)
        same = _same_options_baseline(problem, placement)
    steps_memo = reuse.schedules if reuse else None
    built = steps_memo.hits if steps_memo else 0

    def prefill(caches: tuple[KVCacheRef, ...] = ()) -> Schedule:
        """The prompt's schedule (writing `caches`), checked."""
        s = build_schedule(graph, tiled, problem, placement, tgt, caches, steps_memo)
        if options.check:
            check(schedule_problems(s, tgt), "schedule")
        if options.tiling.prompt_resident:  # to be run (--verify): refused here, exit 5
            check_runnable(s, graph, tgt)
        return s

    with stage("schedule"):
        schedule = prefill()
    with stage("decode"):
        memo = reuse.decode if reuse else None
        hits = memo.hits if memo else 0
        decode = decode_plan_or_reason(str(model), graph, schedule, tgt, tiled.context, forms,
                                       _fitting_forms(tiled, placement, tgt), memo)
        if memo and memo.hits > hits:
            used.append("decode-schedule")
        no_decode = decode if isinstance(decode, str) else ""
        decode = decode if isinstance(decode, DecodePlan) else None
        if decode is not None:  # the prefill writes the KV caches the decode step reads
            schedule = prefill(prefill_caches(decode))
    if steps_memo and steps_memo.hits > built:
        used.append("schedule")
    with stage("performance"):
        timelines, estimates = _performance(schedule, tiled, tgt)
        if options.check:
            check(_timelines_problems(timelines, schedule), "timeline")
        if decode is not None:  # tokens/s from the decode schedule, not the prefill scaled
            estimates = {**estimates, Mode.DECODE: decode.estimate}
        moe = _moe(graph, schedule, decode, tgt, options.routing)
    result = CompileResult(graph, tgt, tiled, problem, placement, placed, baseline, schedule,
                           timelines, estimates, options, tuple(stage.times), same, decode,
                           tuple(used), moe, no_decode, reserved=reserved)
    if options.speculative is None:
        return result
    with stage("speculative"):  # the draft: on a reserved strip or the idle cores
        result = _speculative(model, result, options.speculative, on_progress, reuse)
    return dataclasses.replace(result, stage_times=tuple(stage.times))

def _check_draft(draft: str) -> None:
    try:
        check_source(draft)
    except ModelError as exc:
        raise ModelError(f"--speculative draft: {exc}") from None

def _speculative(model: str | Path, plain: CompileResult, spec: SpeculativeOptions,
                 on_progress: ProgressHook | None, reuse: Reuse | None) -> CompileResult:
    """The draft beside the target, both ways (compiler/speculative.py): the target placed
    beside a strip reserved for the resident draft, and the target placed alone with the
    draft on its largest idle rectangle; the faster round is kept (exit 5 when neither
    fits)."""
    opts = dataclasses.replace(plain.options, speculative=None, reserve=None,
                               tiling=dataclasses.replace(plain.options.tiling,
                                                          context=plain.tiled.context))
    p = plain.problem
    area = largest_idle(p.rows, p.cols, p.wafers, plain.placement.rects)
    drafts = Reuse()  # the draft's compiles (the idle area, the strips) share its frontend
    idle = _draft_on(plain, area, spec, opts, on_progress, drafts)
    beside = _draft_beside(model, plain, spec, opts, on_progress, reuse, drafts)
    if isinstance(beside, str):
        if idle is None:
            raise _draft_does_not_fit(plain, spec, area, opts)
        return dataclasses.replace(plain, speculative=dataclasses.replace(idle, fallback=beside))
    target, reserved = beside
    if idle is not None and idle.tokens_per_s > reserved.tokens_per_s:
        a = reserved.area
        why = (f"beside a reserved {a.rows} x {a.cols} strip the round gives "
               f"{reserved.tokens_per_s:,.0f} tokens/s, on the idle cores "
               f"{idle.tokens_per_s:,.0f}")
        return dataclasses.replace(plain, speculative=dataclasses.replace(idle, fallback=why))
    alone = plain.estimates[Mode.DECODE].tokens_per_s  # the target without the draft
    return dataclasses.replace(target, speculative=dataclasses.replace(
        reserved, plain_tokens_per_s=alone))

def _draft_beside(model: str | Path, plain: CompileResult, spec: SpeculativeOptions,
                  opts: CompileOptions, on_progress: ProgressHook | None,
                  reuse: Reuse | None, drafts: Reuse) -> tuple[CompileResult, Speculative] | str:
    """The draft compiled first on full-height strips of one wafer, narrowest first, until it is
    resident; the target compiled again with that strip kept free (CompileOptions.reserve);
    the round priced there. Or why not, in words."""
    tgt, rows = plain.target, plain.target.grid.rows
    need = _draft_min_cores(spec, tgt, opts, resident_only=True)
    if need is None:
        return "the draft has no resident rectangle on one wafer"
    widths = strip_widths(need, rows, tgt.grid.cols)
    draft = None
    for width in widths:
        strip = Rect(0, 0, 0, rows, width)
        try:
            draft = compile_model(spec.draft, sub_target(tgt, strip), opts,
                                  on_progress=on_progress, reuse=drafts)
        except (InfeasiblePlacementError, CapacityError):
            continue
        if resident(draft):
            break
    if draft is None or not resident(draft):
        return (f"the draft is resident on no strip of {rows} x "
                f"{'/'.join(map(str, widths)) or tgt.grid.cols} cores")
    beside = dataclasses.replace(plain.options, speculative=None, reserve=(rows, width))
    try:
        target = compile_model(model, tgt, beside, on_progress=on_progress, reuse=reuse)
    except (InfeasiblePlacementError, CapacityError):
        return f"the target does not fit beside a {rows} x {width} strip for the draft"
    if target.reserved is None:  # not reached: a reserve always comes back placed
        return "the placement kept no strip free"
    return target, price(target, draft, spec, target.reserved, RESERVED)


def _draft_on(target: CompileResult, area: Rect | None, spec: SpeculativeOptions,
              opts: CompileOptions, on_progress: ProgressHook | None,
              drafts: Reuse) -> Speculative | None:
    """The draft compiled on `area`, idle cores of `target`'s wafers, and a round priced; None
    when it does not fit there."""
    if area is None:
        return None
    try:
        draft = compile_model(spec.draft, sub_target(target.target, area), opts,
                              on_progress=on_progress, reuse=drafts)
    except (InfeasiblePlacementError, CapacityError):
        return None
    return price(target, draft, spec, area, IDLE)

def _draft_min_cores(spec: SpeculativeOptions, tgt: Target, opts: CompileOptions,
                     resident_only: bool = False) -> int | None:
    """Cores the draft needs at least: its layers' smallest rectangles (resident ones only, if
    asked), tiled for one wafer of the target; None when it does not tile there."""
    one = dataclasses.replace(tgt, wafers=dataclasses.replace(tgt.wafers, count=1))
    try:
        graph = load_model(spec.draft, opts.frontend)
        forms = decode_forms(str(spec.draft), graph, context_length(graph, opts.tiling))
        problem = to_problem(tile_graph(graph, one, opts.tiling, decode_steps(forms)), one)
    except (InfeasiblePlacementError, CapacityError):
        return None
    least = [min((o.cores for o in b.options
                  if not resident_only or o.residency == Residency.RESIDENT), default=None)
             for b in problem.blocks]
    return None if None in least else sum(c for c in least if c is not None)

def _draft_does_not_fit(result: CompileResult, spec: SpeculativeOptions, area: Rect | None,
                        opts: CompileOptions) -> InfeasiblePlacementError:
    """Exit 5 naming the cores the draft needs (its smallest rectangles, tiled for one wafer of
    the target) against the idle cores the target leaves."""
    tgt = result.target
    cores = _draft_min_cores(spec, tgt, opts)
    need = "more cores than one wafer has" if cores is None else (
        f"{cores:,} cores (the smallest rectangle each of its layers is offered on a wafer)")
    idle = result.problem.cores_per_wafer * result.problem.wafers - result.metrics.cores_used
    largest = "none" if area is None else (
        f"{area.rows} x {area.cols} = {area.rows * area.cols:,} cores on wafer {area.wafer}")
    return InfeasiblePlacementError(
        f"the speculative draft {spec.draft} does not fit on the cores {result.graph.name} "
        f"leaves idle on {tgt.name}, nor beside it on a reserved strip: it needs {need}, "
        f"inside one rectangle, and the largest idle one is {largest} ({idle:,} cores idle "
        "in all); use a smaller draft or a target with more wafers")

def _decode_forms(model: str | Path, graph: ir.Graph, context: int,
                  g1: ir.Graph | str | None = None) -> Forms:
    """The decode forms of `model` at `context` and their decode steps (what the tiling
    prices; `decode_plan_or_reason` schedules the forms); `g1`: the model at one token when
    already loaded."""
    forms = decode_forms(str(model), graph, context, g1)
    return forms, decode_steps(forms)


def _fitting_forms(tiled: TiledGraph, placement: Placement,
                   target: Target) -> frozenset[tuple[bool, str]]:
    """The decode forms (by `DecodeGraph.form`) whose decode step fits SRAM on every
    placed layer, as the tiling priced them (`Candidate.fits_form`)."""
    chosen = [lt.candidates[o] for lt, o in zip(tiled.layers, placement.options, strict=True)]
    forms = {f for c in chosen for f, _ in c.form_bytes}
    return frozenset(f for f in forms
                     if all(c.fits_form(f, target.usable_bytes_per_core) for c in chosen))


def _tiling(graph: ir.Graph, target: Target, options: CompileOptions,
            steps: tuple[DecodeStep, ...]) -> tuple[TiledGraph, PlacementProblem]:
    """The tiled graph (MoE edges and candidates by the routing), checked with
    options.check, and its placement problem."""
    tiled = tile_graph(graph, target, options.tiling, steps)
    tiled = dataclasses.replace(tiled, edges=routed_edges(graph, tiled.edges, options.routing))
    tiled = routed_candidates(graph, tiled, options.routing)
    if options.check:
        check(tiled_problems(graph, tiled, target), "tiled graph")
    return tiled, to_problem(tiled, target)


def _moe(graph: ir.Graph, schedule: Schedule, decode: DecodePlan | None, target: Target,
         routing: Routing) -> MoEEstimate | None:
    """Expected and worst-case decode of an MoE model, on the decode schedule when there is
    one (else the prefill schedule scaled to one token, as the dense estimate is)."""
    loads = group_loads(graph, routing, schedule.batch)
    if not loads:
        return None
    shares = {load.router: routing.shares(load.router, load.experts) for load in loads.values()}
    if decode is not None:
        return moe_estimate(decode.schedule, target, loads,
                            PerfOptions(Mode.DECODE, context=decode.graph.context),
                            routing.source, shares)
    return moe_estimate(schedule, target, loads, PerfOptions(Mode.DECODE), routing.source,
                        shares)

def _timelines_problems(timelines: dict[str, Timeline], schedule: Schedule) -> list[str]:
    return [p for mode, tl in timelines.items()
            for p in timeline_problems(mode, tl, len(schedule.steps))]

def _performance(schedule: Schedule, tiled: TiledGraph, target: Target):
    kv = {lt.layer: lt.kv_bytes for lt in tiled.layers if lt.kv_bytes}
    timelines, estimates = {}, {}
    for mode in (Mode.DECODE, Mode.PREFILL):
        extra = streamed_kv_cycles(schedule, target, dict(kv)) if mode == Mode.DECODE else {}
        opts = PerfOptions(mode)
        timelines[mode] = timeline(schedule, target, opts, extra)
        estimates[mode] = estimate(schedule, target, opts, extra, timelines[mode])
    return timelines, estimates

def _placement(problem: PlacementProblem, solver: SolverOptions, used: list[str],
               on_progress: ProgressHook | None, reuse: Reuse | None,
               hint: PlacementHint | None) -> Placement:
    """The placement stage: from the hint (see compile_model), from `reuse`, or solved."""
    warm = None
    if hint is not None and solver.method == PlacementMethod.CPSAT:
        if hint.problem_sha256 == problem_sha256(problem):
            used.append("placement")
            return hint.placement
        warm = translate(problem, hint)
    if warm is not None:
        used.append("hint")
    place_it = functools.partial(_place, problem, solver, on_progress, warm)
    return (reuse.placement(problem, solver, used, place_it, warm) if reuse else place_it())


def _bare(p: Placement) -> Placement:
    """Options and rectangles only: a warm start's identity, whatever its report says."""
    return Placement(p.options, p.rects)


def _place(problem: PlacementProblem, solver: SolverOptions,
           on_progress: ProgressHook | None = None, warm: Placement | None = None) -> Placement:
    if solver.method != PlacementMethod.CPSAT:
        return place(problem, solver.method)
    share = 1.0 if warm is None else HINT_SHARE  # of the budget: the deadline stays the limit
    solved = place(problem, PlacementMethod.CPSAT, time_limit_s=solver.time_limit_s,
                   seed=solver.seed, workers=solver.workers, deterministic=solver.deterministic,
                   on_progress=on_progress, hint=warm, budget_share=share)
    return solved if warm is None else keep_better(problem, solved, warm)

def _baseline(problem: PlacementProblem) -> Metrics | None:
    try:
        return metrics(problem, place(problem, PlacementMethod.FIRST_FIT))
    except InfeasiblePlacementError:
        return None

def _same_options_baseline(problem: PlacementProblem, placement: Placement) -> Metrics | None:
    from compiler.placement.check import validate
    from compiler.placement.greedy import first_fit

    try:
        ff = first_fit(problem, placement.options, [r.wafer for r in placement.rects])
    except InfeasiblePlacementError:
        return None
    if validate(problem, ff) or list(ff.options) != list(placement.options):
        return None
    return metrics(problem, ff)
