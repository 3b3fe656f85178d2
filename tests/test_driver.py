"""The driver's named stages (compiler/stages.py) and the in-memory checks between them
(compiler/tiling/check.py, compiler/schedule/check.py): stage order and hooks; an unexpected
exception is an internal error (exit 70) naming the stage and layer; typed errors keep their exit
codes; broken tiled graphs, schedules and timelines are caught naming the layer or step."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from conftest import TINY_ZOO

import compiler.driver as driver
import compiler.schedule.build as build
import compiler.tiling.candidates as candidates
import compiler.tiling.layouts as layouts
from compiler.cli import main
from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.errors import CapacityError, ExitCode, InternalError
from compiler.placement.problem import Edge
from compiler.schedule.check import schedule_problems, timeline_problems
from compiler.stages import (
    FULL_EVERY,
    CheckError,
    Stages,
    at_layer,
    check,
    layer_of,
    spaced_collections,
)
from compiler.sweep.plan import plan_sweep
from compiler.sweep.point import ERROR, run_point
from compiler.tiling.check import tiled_problems
from compiler.vocab import Mode, Phase, StepKind

FIRST_FIT = SolverOptions(method="first-fit")
TARGETS = Path(__file__).resolve().parents[1] / "compiler" / "targets"
STAGES = ["target", "frontend", "tiling", "placement", "baseline", "schedule", "decode",
          "performance"]


@pytest.fixture(scope="module")
def compiled():
    return compile_model("gpt2-tiny", "mesh8x8-x2", CompileOptions(solver=FIRST_FIT))


def _cli(capsys, tmp_path, *extra: str, target: str = "mesh8x8") -> tuple[int, list[str]]:
    code = main(["-q", "compile", "gpt2-tiny", "-t", target, "-o", str(tmp_path / "out"),
                 "--method", "first-fit", *extra])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line]


# --- stages -------------------------------------------------------------------------------------


def test_stages_run_in_order_with_their_hooks():
    events = []
    result = compile_model("gpt2-tiny", "mesh8x8", CompileOptions(solver=FIRST_FIT),
                           on_stage=lambda name, s: events.append(("done", name)),
                           on_start=lambda name: events.append(("start", name)))
    assert events == [(kind, name) for name in STAGES for kind in ("start", "done")]
    assert [name for name, _ in result.stage_times] == STAGES
    assert all(seconds >= 0 for _, seconds in result.stage_times)


def test_a_failed_stage_is_not_reported_done_and_interrupts_pass_through():
    done = []
    stage = Stages(on_stage=lambda name, s: done.append(name))
    with stage("a"):
        pass
    with pytest.raises(KeyboardInterrupt), stage("b"):
        raise KeyboardInterrupt
    with pytest.raises(InternalError, match=r"^internal error in stage c: ValueError: bad "
                       r"\(rerun with -v and report it\)$"), stage("c"):
        raise ValueError("bad\nsecond line")
    with pytest.raises(InternalError, match=r"^internal error in stage d: AssertionError "
                       r"\(rerun"), stage("d"):
        raise AssertionError
    assert done == ["a"] and [name for name, _ in stage.times] == ["a"]


def test_a_compile_spaces_out_full_collections_and_restores_the_thresholds():
    import gc

    before = gc.get_threshold()
    seen = []
    compile_model("gpt2-tiny", "mesh8x8", CompileOptions(solver=FIRST_FIT),
                  on_stage=lambda name, s: seen.append(gc.get_threshold()))
    assert seen and all(t == (*before[:2], max(before[2], FULL_EVERY)) for t in seen)
    assert gc.get_threshold() == before
    with pytest.raises(KeyError), spaced_collections():
        raise KeyError("x")
    assert gc.get_threshold() == before


def test_the_innermost_layer_names_an_exception_and_typed_errors_get_no_note():
    with pytest.raises(KeyError) as info, at_layer("outer"), at_layer("inner"):
        raise KeyError("x")
    assert layer_of(info.value) == "inner"
    with pytest.raises(CapacityError) as typed, at_layer("block.0"):
        raise CapacityError("a core", 2, 1)
    assert layer_of(typed.value) is None and not getattr(typed.value, "__notes__", None)


# --- an unexpected exception is an internal error naming stage and layer ------------------------


def _raise_key_error(*args, **kwargs):
    raise KeyError("x")


def test_a_key_error_in_a_stage_exits_70_naming_the_stage(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "build_schedule", _raise_key_error)
    code, lines = _cli(capsys, tmp_path)
    assert code == ExitCode.INTERNAL
    assert lines == ["error: internal error in stage schedule: KeyError: 'x' "
                     "(rerun with -v and report it)"]
    assert not (tmp_path / "out").exists()
    code = main(["-v", "compile", "gpt2-tiny", "-t", "mesh8x8", "-o", str(tmp_path / "out"),
                 "--method", "first-fit"])
    err = capsys.readouterr().err
    assert code == ExitCode.INTERNAL and "Traceback" in err and "_raise_key_error" in err


def _fail_in(layer: str, real):
    def wrapper(g, lay, *rest):
        if lay.name == layer:
            raise KeyError("x")
        return real(g, lay, *rest)
    return wrapper


@pytest.mark.parametrize(("module", "name", "layer", "stage"), [
    (layouts, "layer_layouts", "final_norm", "tiling"),  # the layout rules
    (candidates, "_template", "block.1", "tiling"),  # a layer's candidates
    (build, "_schedule_layer", "block.0", "schedule"),
])
def test_an_internal_error_names_the_layer(capsys, tmp_path, monkeypatch, module, name, layer,
                                           stage):
    monkeypatch.setattr(module, name, _fail_in(layer, getattr(module, name)))
    code, lines = _cli(capsys, tmp_path)
    assert code == ExitCode.INTERNAL and len(lines) == 1
    assert lines[0].startswith(f"error: internal error in stage {stage}, layer {layer}: "
                               "KeyError: 'x'"), lines


def test_an_internal_error_in_a_sweep_point_is_not_cached(monkeypatch):
    plan = plan_sweep("gpt2-tiny", "mesh8x8", [], CompileOptions(solver=FIRST_FIT))
    monkeypatch.setattr(driver, "build_schedule", _raise_key_error)
    result = run_point(plan.points[0])
    assert result.status == ERROR and result.internal and not result.cacheable
    assert result.error.startswith("internal error in stage schedule: KeyError")


# --- typed errors pass through ------------------------------------------------------------------


def test_a_capacity_error_passes_through_unchanged(capsys, tmp_path, monkeypatch):
    error = CapacityError("layer block.0: a core", 2048, 1024)
    monkeypatch.setattr(driver, "tile_graph", lambda *a: (_ for _ in ()).throw(error))
    with pytest.raises(CapacityError) as info:
        compile_model("gpt2-tiny", "mesh8x8", CompileOptions(solver=FIRST_FIT))
    assert info.value is error
    code, lines = _cli(capsys, tmp_path)
    assert code == ExitCode.DOES_NOT_FIT and lines == [f"error: {error}"]


def test_a_target_too_small_still_exits_5(capsys, tmp_path):
    spec = (TARGETS / "mesh8x8.toml").read_text()
    spec = spec.replace("rows = 8", "rows = 1").replace("cols = 8", "cols = 1")
    path = tmp_path / "one-core.toml"
    path.write_text(spec.replace('sram_bytes = "64 KiB"', 'sram_bytes = "8 KiB"'))
    code, lines = _cli(capsys, tmp_path, target=str(path))
    assert code == ExitCode.DOES_NOT_FIT and len(lines) == 1
    assert re.fullmatch(r"error: layer \S+: a core needs [\d,]+ bytes but 4,096 are available.*",
                        lines[0])


# --- real compiles pass the checks --------------------------------------------------------------


@pytest.mark.parametrize("target", ["mesh8x8", "mesh8x8-x2"])
@pytest.mark.parametrize("model", TINY_ZOO)
def test_real_compiles_pass_the_checks(model, target):
    r = compile_model(model, target, CompileOptions(solver=FIRST_FIT, check=True))
    assert tiled_problems(r.graph, r.tiled, r.target) == []
    assert schedule_problems(r.schedule, r.target) == []
    assert all(timeline_problems(m, tl, len(r.schedule.steps)) == []
               for m, tl in r.timelines.items())


# --- a broken tiled graph is caught -------------------------------------------------------------


def _layer(tiled, name: str, **changes):
    layers = tuple(dataclasses.replace(lt, **changes) if lt.layer == name else lt
                   for lt in tiled.layers)
    return dataclasses.replace(tiled, layers=layers)


def _candidate(tiled, name: str, **changes):
    lt = next(lt for lt in tiled.layers if lt.layer == name)
    first = dataclasses.replace(lt.candidates[0], **changes)
    return _layer(tiled, name, candidates=(first, *lt.candidates[1:]))


def _no_ops(tiled):
    return _layer(tiled, "head", ops=tiled.layers[-1].ops[:-1])


def _bad_spec(tiled):
    lt = tiled.layers[1]
    op = dataclasses.replace(lt.ops[0], outputs=((None,) * 9,))
    return _layer(tiled, "block.0", ops=(op, *lt.ops[1:]))


BROKEN_TILINGS = [
    (lambda t: _layer(t, "block.0", candidates=()), r"^layer block\.0: no candidate rectangle$"),
    (lambda t: _candidate(t, "block.1", rows=9),
     r"^layer block\.1: candidate 0 \(9 x \d+, \w+\) is not inside the 8 x 8 grid$"),
    (lambda t: _candidate(t, "head", weight_bytes=10**6),
     r"^layer head: candidate 0 \(.*\) needs [\d,]+ bytes per core, 61,440 are usable$"),
    (lambda t: _layer(t, "block.1", layer="block.0"), r"^layer block\.0: tiled 2 times$"),
    (lambda t: dataclasses.replace(t, layers=t.layers[:-1]),
     r"^4 layers tiled, the graph has 5$"),
    (_no_ops, r"^layer head: \d+ op layouts for \d+ ops$"),
    (_bad_spec, r"^layer block\.0: op \S+: spec \(None, .*\) of \S+ for rank \d$"),
    (lambda t: dataclasses.replace(t, edges=(*t.edges, Edge(3, 1, 4, 64))),
     r"^edge 3 -> 1: not from an earlier layer to a later one of 5$"),
]


@pytest.mark.parametrize(("breaks", "pattern"), BROKEN_TILINGS)
def test_a_broken_tiled_graph_is_caught_naming_the_layer(compiled, breaks, pattern):
    problems = tiled_problems(compiled.graph, breaks(compiled.tiled), compiled.target)
    assert problems and re.search(pattern, problems[0]), problems


def test_the_driver_checks_the_tiled_graph(capsys, tmp_path, monkeypatch):
    real = driver.tile_graph
    monkeypatch.setattr(driver, "tile_graph",
                        lambda *a: _layer(real(*a), "block.0", candidates=()))
    with pytest.raises(InternalError, match=r"^internal error in stage tiling: CheckError: "
                       r"tiled graph: layer block\.0: no candidate rectangle .*\(rerun"):
        compile_model("gpt2-tiny", "mesh8x8", CompileOptions(solver=FIRST_FIT, check=True))
    monkeypatch.setenv("WAFER_CHECK", "1")  # the CLI turns the checks on (tests/conftest.py)
    code, lines = _cli(capsys, tmp_path)
    assert code == ExitCode.INTERNAL and len(lines) == 1 and "layer block.0" in lines[0]


# --- a broken schedule or timeline is caught ----------------------------------------------------


def _step(schedule, i: int, **changes):
    steps = list(schedule.steps)
    steps[i] = dataclasses.replace(steps[i], **changes)
    return dataclasses.replace(schedule, steps=tuple(steps))


def _first(schedule, kind: StepKind, phase: Phase | None = None) -> int:
    return next(s.id for s in schedule.steps
                if s.kind == kind and (phase is None or s.phase == phase))


def _token_dep_in_setup(s):
    compute = _first(s, StepKind.COMPUTE)
    setup = next(st.id for st in s.steps if st.phase == Phase.SETUP and st.id > compute)
    return _step(s, setup, deps=(compute,))


def _wafer_send_on_one_wafer(s):
    i = _first(s, StepKind.SEND)
    return _step(s, i, kind=StepKind.WAFER_SEND)


def _off_grid(s):
    regions = (dataclasses.replace(s.regions[0], row=7, rows=4), *s.regions[1:])
    return dataclasses.replace(s, regions=regions)


STEP = r"step \d+ \(\w+ ?\S* on [\w.]+\)"
BROKEN_SCHEDULES = [
    (lambda s: _step(s, 5, deps=(9,)), r"^step 5 \(\w+ ?\S* on [\w.]+\): dependency 9 is not "
     r"an earlier step$"),
    (lambda s: _step(s, 3, region="nowhere"), r"^step 3 \(.* on nowhere\): unknown region "
     r"'nowhere'$"),
    (lambda s: _step(s, 2, id=7), r"^step 2 \(.*\): id 7, expected 2$"),
    (lambda s: _step(s, 4, phase="sometimes"), r"^step 4 \(.*\): unknown phase 'sometimes'$"),
    (lambda s: _step(s, _first(s, StepKind.SEND), dst="nowhere"),
     STEP + r": unknown destination region 'nowhere'$"),
    (lambda s: _step(s, _first(s, StepKind.SEND), dst=s.steps[_first(s, StepKind.SEND)].region),
     STEP + r": a send from region [\w.]+ to itself$"),
    (_wafer_send_on_one_wafer, STEP + r": a wafer_send from wafer 0 to wafer 0$"),
    (lambda s: _step(s, _first(s, StepKind.COMPUTE), dst="head"),
     STEP + r": destination 'head' on a compute step$"),
    (_token_dep_in_setup, STEP + r": a setup step depends on step \d+, a token step$"),
    (_off_grid, r"^region embedding: 4 x \d+ at \(7, \d+\) on wafer 0 is not inside 2 "
     r"wafer\(s\) of 8 x 8 cores$"),
    (lambda s: dataclasses.replace(s, regions=(*s.regions, s.regions[0])),
     r"^region embedding: defined 2 times$"),
    (lambda s: dataclasses.replace(s, residency=(*s.residency, ("nowhere", "resident"))),
     r"^residency of unknown region 'nowhere'$"),
]


@pytest.mark.parametrize(("breaks", "pattern"), BROKEN_SCHEDULES)
def test_a_broken_schedule_is_caught_naming_the_step(compiled, breaks, pattern):
    problems = schedule_problems(breaks(compiled.schedule), compiled.target)
    assert problems and re.search(pattern, problems[0]), problems


def test_a_broken_timeline_is_caught(compiled):
    tl = compiled.timelines[Mode.DECODE]
    n = len(compiled.schedule.steps)
    assert timeline_problems("decode", tl, n) == []
    short = dataclasses.replace(tl, starts=tl.starts[:-1])
    assert timeline_problems("decode", short, n) == [
        f"decode timeline: {n - 1} starts for {n} steps"]
    late = dataclasses.replace(tl, makespan=tl.makespan + 1, critical_path=(n,))
    assert timeline_problems("decode", late, n) == [
        f"decode timeline: critical path through unknown step {n}",
        f"decode timeline: makespan {tl.makespan + 1} is not the last end"]


def test_the_driver_checks_the_schedule(monkeypatch):
    real = driver.build_schedule
    monkeypatch.setattr(driver, "build_schedule", lambda *a: _step(real(*a), 5, deps=(9,)))
    with pytest.raises(InternalError, match=r"^internal error in stage schedule: CheckError: "
                       r"schedule: step 5 \(.*\): dependency 9 is not an earlier step"):
        compile_model("gpt2-tiny", "mesh8x8", CompileOptions(solver=FIRST_FIT, check=True))
    compile_model("gpt2-tiny", "mesh8x8", CompileOptions(solver=FIRST_FIT))  # unchecked


def test_check_names_the_first_problem_and_counts_the_rest():
    with pytest.raises(CheckError, match=r"^schedule: a \(and 2 more\)$"):
        check(["a", "b", "c"], "schedule")
    check([], "schedule")


def test_reuse_shares_the_frontend_and_an_equal_problems_placement():
    """A sweep worker's Reuse: a second compile of the same model takes the frontend's graph,
    and the placement when its placement problem is equal (a target change the placer never
    sees: off-chip latency); a change the tiling sees (SRAM) solves again. What is shared is
    what a fresh compile gives."""
    from compiler.target import load_target

    base = load_target("mesh8x8")
    slow = dataclasses.replace(base, offchip=dataclasses.replace(base.offchip, latency_s=1e-3))
    small = dataclasses.replace(base, core=dataclasses.replace(base.core, sram_bytes=48 * 1024))
    opts = driver.CompileOptions(solver=driver.SolverOptions(time_limit_s=10))
    reuse = driver.Reuse()
    first = driver.compile_model("gpt2-tiny", base, opts, reuse=reuse)
    again = driver.compile_model("gpt2-tiny", slow, opts, reuse=reuse)
    other = driver.compile_model("gpt2-tiny", small, opts, reuse=reuse)
    fresh = driver.compile_model("gpt2-tiny", slow, opts)
    assert first.reused == () and fresh.reused == ()
    # the same regions: the decode and prefill schedules' steps too (only their algorithms
    # priced again; the smaller SRAM's placement gives gpt2-tiny the same regions as well)
    assert again.reused == ("frontend", "decode-forms", "placement", "decode-schedule",
                            "schedule")
    assert other.reused == ("frontend", "decode-forms", "decode-schedule", "schedule")
    assert again.problem == fresh.problem
    assert again.placement.rects == fresh.placement.rects
    assert again.placement.options == fresh.placement.options
    assert again.placement.report.stages == fresh.placement.report.stages
    assert again.estimates == fresh.estimates  # priced with its own target
    assert again.estimates["prefill"].seconds != first.estimates["prefill"].seconds
    assert other.decode == driver.compile_model("gpt2-tiny", small, opts).decode


def test_reuse_shares_the_tiling_of_an_equal_target_and_the_decode_forms_of_a_context():
    """The decode forms (the model again at one token) are shared by points at the same
    context, the tiling by points with the same target and options too; another context
    derives its own. What is shared is what a fresh compile gives."""
    from compiler.target import load_target
    from compiler.tiling.candidates import TilingOptions

    base = load_target("mesh8x8")
    opts = driver.CompileOptions(solver=driver.SolverOptions(time_limit_s=10))
    longer = dataclasses.replace(opts, tiling=TilingOptions(context=64))
    reuse = driver.Reuse()
    first = driver.compile_model("gpt2-tiny", base, opts, reuse=reuse)
    same = driver.compile_model("gpt2-tiny", base, opts, reuse=reuse)
    other = driver.compile_model("gpt2-tiny", base, longer, reuse=reuse)
    fresh = driver.compile_model("gpt2-tiny", base, longer)
    assert same.reused == ("frontend", "decode-forms", "tiling", "placement", "decode-schedule",
                           "schedule")
    # the prompt's steps do not depend on the context: on the same regions they are shared
    assert other.reused == ("frontend", "schedule")
    assert other.schedule == fresh.schedule
    assert same.tiled == first.tiled and same.decode == first.decode
    assert other.tiled == fresh.tiled and other.problem == fresh.problem
    assert other.decode.graph == fresh.decode.graph
    assert other.estimates == fresh.estimates


@pytest.mark.parametrize("model, dims", [
    ("gpt2-tiny", None), ("tests/fixtures/hf/mistral_dynamo_op18_dynamic.onnx", (1, 8))])
def test_a_compile_opens_its_model_once(monkeypatch, model, dims):
    """The decode step's model at one token is bound from the model the frontend opened (one
    parse, check and inline per compile, issue 18), and its decode step is the one a second
    open of the model gives."""
    import compiler.frontend.load as frontend_load
    from compiler.frontend import DimRequest, FrontendOptions, load_model
    from compiler.schedule.decode import decode_forms

    root = Path(__file__).resolve().parents[1]
    source = str(root / model) if model.endswith(".onnx") else model
    front = FrontendOptions(DimRequest(batch=dims[0], seq_len=dims[1]) if dims else DimRequest())
    opened: list[str] = []
    real = frontend_load.open_model
    monkeypatch.setattr(frontend_load, "open_model",
                        lambda src, *a: opened.append(str(src)) or real(src, *a))
    r = compile_model(source, "mesh16x16", CompileOptions(front, solver=FIRST_FIT))
    assert opened == [source] and r.decode is not None
    assert frontend_load._KEPT == []  # let go once the decode forms are derived
    forms = decode_forms(source, load_model(source, front), r.tiled.context)  # opens twice
    assert len(opened) == 3
    again = next(f for f in forms if f.grouped == r.decode.graph.grouped)
    assert r.decode.graph == again


def test_a_model_with_nodes_out_of_order_compiles_without_a_kept_copy(tmp_path):
    """onnx_ir cannot clone a graph whose nodes are out of order (the frontend sorts them
    before folding): the compile then keeps no copy and binds the one-token model from a
    second open, rather than failing (found by the CLI fuzzer: exit 70)."""
    import onnx

    import compiler.frontend.load as frontend_load
    from compiler import zoo

    proto = zoo.build("bert-tiny")
    nodes = proto.graph.node
    first, sixth = onnx.NodeProto(), onnx.NodeProto()
    first.CopyFrom(nodes[0])
    sixth.CopyFrom(nodes[5])
    nodes[0].CopyFrom(sixth)
    nodes[5].CopyFrom(first)
    path = tmp_path / "swapped.onnx"
    onnx.save(proto, path)
    graph = frontend_load.load_model(path, keep=True)
    assert frontend_load._KEPT == []
    assert graph.layers
    r = compile_model(path, "mesh8x8", CompileOptions(solver=FIRST_FIT))
    assert r.metrics.cores_used > 0
