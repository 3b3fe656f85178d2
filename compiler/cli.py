"""The `wafer` command line: parse arguments into options, call the stages, map typed errors to
exit codes. Errors print as one line `error: ...` (a traceback only with -v)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from compiler import __version__, cli_decode, ir
from compiler.errors import ExitCode, UsageError, WaferError, WaferWarning
from compiler.target import Target, list_targets, load_target
from compiler.tiling.costs import model_cost
from compiler.tiling.fit import check_fit
from compiler.vocab import PLACEMENT_METHODS, PRECISIONS, Mode, PlacementMethod, Precision

if TYPE_CHECKING:
    from compiler.frontend import FrontendOptions


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, like every other error
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wafer", description="Compile ONNX models for wafer-scale chips.")
    p.add_argument("--version", action="version", version=f"wafer {__version__}")
    _global_args(p, False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_compile(sub)
    _add_inspect(sub)
    _add_check(sub)
    _add_verify(sub)
    _add_view(sub)
    _add_sweep(sub)
    cli_decode.add_generate(sub, _count)
    t = sub.add_parser("targets", help="list the built-in target specs")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(run=cmd_targets)
    for command in sub.choices.values():  # -v/-q also after the command: `wafer check ... -q`
        _global_args(command, argparse.SUPPRESS)
    return p


def _global_args(p: argparse.ArgumentParser, default: object) -> None:
    """-v and -q; a command's copies default to SUPPRESS so that they never reset the values
    given before the command."""
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="tracebacks and debug detail")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no stage lines on stderr")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help="an .onnx file or a zoo name (wafer inspect --list)")
    p.add_argument("--input-shapes", action="append", default=[], metavar="NAME:[D,...]",
                   help="static shape of an input, e.g. input_ids:[1,128] (repeatable)")
    p.add_argument("--batch", type=_count, help="bind dynamic batch dims")
    p.add_argument("--seq-len", type=_count, help="bind dynamic sequence dims")
    p.add_argument("--shapes-only", action="store_true", default=None,
                   help="do not read weights (default: automatic when weight files are absent)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="layers, ops, parameters, FLOPs and bytes of a model")
    _model_args(p)
    p.add_argument("--ir", action="store_true", help="print the whole IR")
    p.add_argument("--list", action="store_true", help="list the built-in zoo models")
    p.set_defaults(run=cmd_inspect)


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="is the model supported, does it fit, how many wafers")
    _model_args(p)
    p.add_argument("--target", "-t", required=True, help="a built-in target name or a .toml")
    p.add_argument("--context", type=_count, help="KV-cache context length (default: seq len)")
    p.set_defaults(run=cmd_check)


def _placement_args(p: argparse.ArgumentParser, limit_help: str) -> None:
    """--context, --method, --time-limit, --seed: shared by compile and sweep."""
    p.add_argument("--context", type=_count, help="KV-cache context length (default: seq len)")
    p.add_argument("--method", choices=PLACEMENT_METHODS, default=PlacementMethod.CPSAT,
                   help="placer (default: cpsat)")
    p.add_argument("--time-limit", type=_seconds, default=30.0, metavar="S", help=limit_help)
    p.add_argument("--seed", type=_seed, default=0, help="solver random seed (default 0)")


def _add_compile(sub) -> None:
    p = sub.add_parser("compile", help="place and schedule a model on a target; write OUT/")
    _model_args(p)
    p.add_argument("--target", "-t", required=True, help="a built-in target name or a .toml")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    _placement_args(p, "wall-clock limit on the placer in seconds (default 30)")
    p.add_argument("--workers", type=_workers, default=1, help="solver workers (default 1)")
    p.add_argument("--nondeterministic", action="store_true",
                   help="wall-clock time limit (with --workers N, several workers): "
                   "not reproducible")
    p.add_argument("--verify", action="store_true",
                   help="then run the schedule and compare with ONNX Runtime (wafer verify)")
    p.add_argument("--inputs", metavar="IN.npz",
                   help="with --verify: inputs by name (default: seeded random)")
    cli_decode.add_decode_arg(p, _count)
    _routing_arg(p, "placement's traffic and the decode rates")
    p.add_argument("--speculative", type=_speculative, metavar="draft=MODEL,accept=A[,k=K]",
                   help="speculative decoding: compile the draft MODEL beside the target (on "
                   "a strip its placement keeps free, or on the cores it leaves idle: the "
                   "faster) and price decode as k draft steps (default 4) and one "
                   "verification step over k + 1 tokens, each draft token accepted with "
                   "probability A")
    p.add_argument("--no-report", action="store_true",
                   help="do not write report.html and report-data/ (wafer view OUT does later)")
    p.set_defaults(run=cmd_compile)


def _routing_arg(p, what: str) -> None:
    p.add_argument("--routing", metavar="FILE",
                   help="MoE models: measured per-expert routing frequencies (JSON, "
                   f"docs/cli.md; default uniform) for {what}")


def _add_view(sub) -> None:
    p = sub.add_parser("view", help="write OUT/report.html (the compile, drawn) or "
                       "SWEEPDIR/sweep.html (the sweep's Pareto plots) and print its path")
    p.add_argument("out", metavar="OUT", help="an output directory of `wafer compile`, or a "
                   "SWEEPDIR of `wafer sweep` (it has sweep.json)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.add_argument("--png", metavar="FILE", help="save a screenshot (needs headless Chromium)")
    p.add_argument("--size", default="1400x900", metavar="WxH",
                   help="screenshot size in pixels (default 1400x900)")
    p.add_argument("--only", metavar="IDS", default="",
                   help="screenshot only these parts (comma-separated): sections placement, "
                   "wafers, offchip, timeline, cycles, layers, summary, data; pictures grid, "
                   "memory, "
                   "links; of a sweep: sections plots, points, failed, data; plots sram, cores, "
                   "wafers")
    p.set_defaults(run=cmd_view)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="run OUT's schedule and compare it with ONNX Runtime")
    p.add_argument("out", metavar="OUT", help="an output directory of `wafer compile`")
    p.add_argument("--inputs", metavar="IN.npz", help="inputs by name (default: seeded random)")
    p.add_argument("--seed", type=_seed, default=0, help="random inputs' seed (default 0)")
    p.add_argument("--atol", type=float, help="absolute tolerance (fp32 default 1e-4)")
    p.add_argument("--rtol", type=float, help="relative tolerance (fp32 default 1e-3)")
    p.add_argument("--tol", action="append", default=[], metavar="NAME:ATOL",
                   help="atol for one tensor, e.g. logits:1e-3 (repeatable)")
    p.add_argument("--per-layer", action="store_true",
                   help="compare every layer's output; name the first diverging layer and op")
    p.add_argument("--precision", choices=PRECISIONS, default=Precision.FP32,
                   help="executor precision: fp32, or the target's dtype emulated with constants "
                   "clamped to its finite range as fp16 conversion does (target) or rounded "
                   "as they are (target-strict)")
    p.add_argument("--allow-nan", action="store_true",
                   help="NaN on both sides passes (default: non-finite output fails)")
    p.add_argument("--load-outputs", metavar="FILE.npz",
                   help="also compare with these expected outputs, by output name")
    p.add_argument("--save-outputs", metavar="FILE.npz", help="save inputs and both outputs")
    p.add_argument("--report", metavar="FILE.json", help="report path (default OUT/verify.json)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed check")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    cli_decode.add_decode_arg(p, _count)
    p.set_defaults(run=cmd_verify)


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="compile a model for many target variants and options; "
                       "tables and Pareto frontiers (co-design)")
    _model_args(p)
    p.add_argument("--target", "-t", required=True, help="a built-in target name or a .toml")
    p.add_argument("--vary", action="append", required=True, metavar="KEY=V1,V2,...",
                   help="a target key path (core.sram_bytes=24KiB,48KiB) or a compile option "
                   "(context, batch, seq-len, prompt-resident, method) and its values "
                   "(repeatable: the cross product is swept)")
    p.add_argument("-o", "--output", required=True, metavar="SWEEPDIR",
                   help="sweep.csv, sweep.json, sweep.html (Pareto plots) and the cache of "
                   "finished points (a re-run computes only new points)")
    _placement_args(p, "solver time limit per point in seconds (default 30)")
    p.add_argument("--verify", action="store_true",
                   help="also run each point's schedule and compare with ONNX Runtime")
    p.add_argument("--workers", type=_workers, metavar="N",
                   help="points compiled at once (default: the CPU cores; one solver worker each)")
    p.add_argument("--no-hints", action="store_true",
                   help="solve every placement from scratch (default: a point starts from the "
                   "placement of the one before it along the last --vary)")
    _routing_arg(p, "every point's placement traffic and MoE decode rates")
    p.add_argument("--backend", choices=("pool", "ray"), default="pool",
                   help="a local process pool (default) or Ray tasks")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="an existing Ray cluster (default: a local Ray started for the run)")
    p.set_defaults(run=cmd_sweep)


INT32_MAX = (1 << 31) - 1
MAX_WORKERS = 256
MAX_SECONDS = 1e6


def _int_in(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is out of range {low}..{high:,}")
    return value


def _count(text: str) -> int:
    """A size (batch, sequence length, context): 1..2^31-1."""
    return _int_in(text, 1, INT32_MAX)


def _speculative(text: str):
    from compiler.speculative import parse_speculative

    try:
        return parse_speculative(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed(text: str) -> int:
    return _int_in(text, 0, INT32_MAX)


def _workers(text: str) -> int:
    return _int_in(text, 1, MAX_WORKERS)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_SECONDS:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is out of range (0, {MAX_SECONDS:g}] seconds")
    return value


# Set by a command whose process may end without freeing its heap (a plain compile: a giant's
# ~0.7 GB of objects took ~1 s to free one by one at exit); `entry` reads it.
_EXIT_NOW = threading.Event()


def entry() -> None:
    """The console script and `python -m compiler`: `main`, then exit; after a plain compile
    at once (`os._exit`, stdout and stderr flushed first: everything is written by then, no
    pool or temporary directory is left), else the usual way."""
    code = main()
    if _EXIT_NOW.is_set():
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a reader gone: nothing left to tell
                stream.flush()
        os._exit(code)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: `_run` with one-line warnings, library log records kept off stderr
    (unless -v) and SIGTERM (`timeout`, a batch scheduler) stopping it like Ctrl-C."""
    _EXIT_NOW.clear()
    with warnings.catch_warnings(), _sigterm_interrupts():
        warnings.simplefilter("always", WaferWarning)
        warnings.showwarning = _show_warning
        return _run(argv)


def _run(argv: Sequence[str] | None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "run", None):
            raise UsageError("no command given; try `wafer --help`")
        if args.verbose:  # Python's own form, with file and line
            warnings.showwarning = _PYTHON_SHOWWARNING
        with _library_logs(args.verbose):
            return args.run(args)
    except WaferError as exc:
        return _fail(str(exc), exc.exit_code, args)
    except Terminated:
        return _fail("terminated (SIGTERM)", 128 + signal.SIGTERM, args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, args)
    except BrokenPipeError:  # `wafer ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except Exception as exc:  # a bug: say so, briefly, unless -v
        msg = f"internal error: {type(exc).__name__}: {exc} (rerun with -v and report it)"
        return _fail(msg, ExitCode.INTERNAL, args)


class Terminated(BaseException):
    """Raised by the SIGTERM handler so that cleanup (temporary OUT directories) runs."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _library_logs(verbose: bool) -> Iterator[None]:
    """onnx_ir/onnxscript log warnings about the model (e.g. external data not available);
    without -v they stay off stderr, which holds only stage lines, warnings and errors."""
    root = logging.getLogger()
    quiet = logging.NullHandler()
    if not verbose and not root.handlers:
        root.addHandler(quiet)
    try:
        yield
    finally:
        root.removeHandler(quiet)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """One line per warning; a library's warning says which category it is."""
    kind = "" if issubclass(category, WaferWarning) else f"{category.__name__}: "
    text = " ".join(str(message).split())
    print(f"warning: {kind}{text}", file=sys.stderr)


_PYTHON_SHOWWARNING = warnings.showwarning


def _fail(message: str, code: int, args: argparse.Namespace | None) -> int:
    if args is not None and getattr(args, "verbose", False):
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code


# --- stages with timing lines -----------------------------------------------------------------


def _stage(args, label: str, fn: Callable, *a, **kw):
    t0 = time.perf_counter()
    result = fn(*a, **kw)
    if not args.quiet:
        print(f"[{label}] {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return result


def _checks_on() -> bool:
    """WAFER_CHECK=1 (tests set it): check each stage's result in memory (CompileOptions.check)."""
    return os.environ.get("WAFER_CHECK") == "1"


def _frontend_options(args) -> FrontendOptions:
    from compiler.frontend import DimRequest, FrontendOptions, check_source, parse_input_shapes

    if not args.model:
        raise UsageError("give a MODEL: an .onnx file or a zoo name (wafer inspect --list)")
    dims = DimRequest(parse_input_shapes(args.input_shapes), args.batch, args.seq_len)
    check_source(args.model)  # exists, readable, or a zoo name: before any work
    return FrontendOptions(dims, args.shapes_only)


def _load(args) -> ir.Graph:
    from compiler.frontend import load_model

    options = _frontend_options(args)
    return _stage(args, f"frontend: {args.model}", load_model, args.model, options)


# --- commands --------------------------------------------------------------------------------


def cmd_inspect(args) -> int:
    if args.list:
        return _list_zoo()
    g = _load(args)
    cost = model_cost(g)
    hist = Counter(op.kind for op in g.ops)
    if args.json:
        data = {"model": g.name, "source": g.source, "opset": g.opset, "dims": dict(g.dims),
                "shape_only": g.shape_only, "op_histogram": dict(sorted(hist.items())),
                **{k: v for k, v in asdict(cost).items() if k != "layers"},
                "layers": [asdict(lc) for lc in cost.layers]}
        print(json.dumps(data, indent=2))
        return 0
    print(ir.format_graph(g) if args.ir else _inspect_text(g, cost, hist))
    return 0


def _inspect_text(g: ir.Graph, cost, hist: Counter) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in g.dims) or "static"
    head = [
        f"model      {g.name}  (opset {g.opset}, {dims}"
        f"{', shape-only: weights not read' if g.shape_only else ''})",
        f"params     {cost.params:,}  ({_bytes(cost.weight_bytes)} of weights as stored)",
        f"FLOPs      {cost.flops_per_token:,} per token  ({cost.flops:,} per forward of "
        f"{cost.tokens} tokens)",
        f"KV cache   {_bytes(cost.kv_bytes_per_token)} per token",
        f"layers     {len(g.layers)}  ({len(g.blocks())} blocks)",
        "",
    ]
    rows = [(lc.name, lc.kind, lc.ops, f"{lc.params:,}", _bytes(lc.weight_bytes),
             f"{lc.flops / max(cost.tokens, 1) / 1e6:,.2f}", _bytes(lc.kv_bytes_per_token))
            for lc in cost.layers]
    table = _table(("layer", "kind", "ops", "params", "weights", "MFLOP/token", "KV/token"),
                   _elide(rows))
    ops = "ops        " + ", ".join(f"{k} {v}" for k, v in hist.most_common())
    return "\n".join([*head, table, "", ops])


def cmd_compile(args) -> int:
    from compiler.progress import stage_display

    display = stage_display(args.quiet)
    try:
        return _compile(args, display)
    finally:
        display.close()


def _compile(args, display) -> int:
    """Compile (stages shown on `display`), write OUT, verify with --verify; print the summary,
    or with --json the same as one document (docs/cli.md)."""
    from compiler.driver import CompileOptions, SolverOptions, compile_model
    from compiler.outdir.write import (
        artifact_files,
        check_out,
        compile_log,
        dumps,
        report_texts,
        summary_doc,
        write_outputs,
    )
    from compiler.stages import spaced_collections
    from compiler.tiling.candidates import TilingOptions

    out = Path(args.output)
    frontend = _frontend_options(args)  # the inputs first: an error names the real problem
    load_target(args.target)
    if args.inputs and not args.verify:
        raise UsageError("--inputs is for --verify: add --verify, or drop --inputs")
    check_out(out, args.force)  # then OUT, before the work, and again when writing
    solver = SolverOptions(args.method, args.time_limit, args.seed, args.workers,
                           deterministic=not args.nondeterministic)
    resident = True if args.verify else None  # verifying runs the whole prompt at once
    if args.decode and not args.verify:
        raise UsageError("--decode N checks decode steps after --verify; add --verify")
    tiling = TilingOptions(context=cli_decode.decode_context(args), prompt_resident=resident)
    options = CompileOptions(frontend, tiling, solver, check=_checks_on(),
                             routing=_routing(args.routing), speculative=args.speculative)
    result = compile_model(args.model, args.target, options, on_stage=display.done,
                           on_start=display.start, on_progress=display.solver)
    if args.verify and result.graph.shape_only:
        raise UsageError(f"{result.graph.name} is shape-only (no weights): nothing to verify; "
                         "compile it without --verify")
    if args.inputs:  # a bad inputs file leaves no OUT
        from compiler.verify import load_inputs

        load_inputs(args.inputs, result.graph)
    if args.decode:
        cli_decode.require_plan(result, args.decode)  # refuse before writing OUT
    stages = list(result.stage_times)
    with spaced_collections():  # OUT's documents only grow, like the compile's objects
        files = _shown(display, stages, "artifacts", artifact_files, result, report=False)
        if not args.no_report:
            files.update(_shown(display, stages, "report", report_texts, files, result))
        files["compile_log.json"] = dumps(compile_log(result, stages))  # with OUT's stages
        _shown(display, stages, "write", write_outputs, out, files, force=args.force)
    with display.paused():
        _warn_time_limit(result.placement.report)
    if args.verify:
        return _compile_verify(args, display, result, out, stages)
    text = dumps(summary_doc(result, out, stages)) if args.json else \
        _compile_summary(result, out, stages) + "\n"
    with display.paused():
        print(text, end="")
    _EXIT_NOW.set()
    return 0


def _compile_verify(args, display, result, out: Path, stages: list[tuple[str, float]]) -> int:
    """compile --verify after OUT is written: the summary, the verify run, verify.json, the
    report again; with --json one document at the end."""
    from compiler.outdir.write import dumps, summary_doc
    from compiler.verify import Artifact, VerifyOptions

    art = Artifact(args.model, result.graph, result.target, result.schedule)
    if not args.json:
        with display.paused():
            print(_compile_summary(result, out, stages), flush=True)

    def verify_stage(name: str, seconds: float) -> None:
        stages.append((name, seconds))
        display.done(name, seconds)

    opts = VerifyOptions(Path(args.inputs) if args.inputs else None)
    ready = cli_decode.prepare(args, art, out, result.decode) if args.decode else None
    v = _verified(args, art, opts, out / "verify.json", on_stage=verify_stage)
    if not args.no_report:  # the report shows the verify result too
        from compiler.report import write_report

        _shown(display, stages, "report", write_report, out)
    code = ExitCode.OK if v.report.passed else ExitCode.MISMATCH
    if not args.json:
        with display.paused():
            print("\n".join(v.report.lines()) + "\n", end="")
    decode = None
    if ready:  # then prefill + N decode steps (OUT/verify-decode.json)
        with display.paused():
            decoded, decode = cli_decode.verify_decode(args, art, opts, out, ready, not args.json)
        code = max(code, decoded)
    if args.json:  # one document: the summary, verify's and decode's reports
        doc = summary_doc(result, out, stages, v.report.to_dict())
        print(dumps({**doc, "decode": decode.doc()} if decode else doc), end="")
    return code


def _shown(display, stages: list[tuple[str, float]], name: str, fn: Callable, *a, **kw):
    """Run one of compile's own stages on the display and add its time to `stages`."""
    display.start(name)
    t0 = time.perf_counter()
    result = fn(*a, **kw)
    stages.append((name, time.perf_counter() - t0))
    display.done(name, stages[-1][1])
    return result


def _warn_time_limit(report) -> None:
    for name, text in report.stages:
        if name == "time limit":
            warnings.warn(f"placement: {text}", WaferWarning, stacklevel=2)


def cmd_view(args) -> int:
    from compiler.report import is_sweep_dir, write_report, write_sweep_report

    sweep = is_sweep_dir(args.out)
    sections = SWEEP_SECTIONS if sweep else SECTIONS
    only, size = _sections(args.only, sections), _size(args.size)  # checked before writing
    write = write_sweep_report if sweep else write_report
    html = _stage(args, f"{'sweep page' if sweep else 'report'}: {args.out}", write, args.out)
    print(html)
    if args.png:
        from compiler.report.browser import screenshot

        png = _stage(args, "screenshot", screenshot, html, Path(args.png), size, only)
        print(png)
    if args.open:
        from compiler.report.browser import open_in_browser

        if not open_in_browser(html):
            print(f"no browser found here: open {html} on a machine with one",
                  file=sys.stderr)
    return 0


# sections of the page, and the three pictures of the placement section
SECTIONS = ("placement", "wafers", "offchip", "timeline", "cycles", "layers", "summary", "data",
            "grid", "memory", "links")
# the sweep page's sections, and its three plots
SWEEP_SECTIONS = ("plots", "points", "failed", "data", "sram", "cores", "wafers")


def _sections(text: str, sections: Sequence[str]) -> str:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in sections]
    if unknown:
        raise UsageError(f"--only: unknown section {unknown[0]!r}; sections: "
                         f"{', '.join(sections)}")
    return ",".join(names)


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit() and 100 <= int(w) <= 10000 and 100 <= int(h) <= 20000):
        raise UsageError(f"--size: cannot parse {text!r}; expected WxH in pixels, e.g. 1400x900")
    return int(w), int(h)


def cmd_verify(args) -> int:
    from compiler.verify import VerifyOptions, open_out

    art = _stage(args, f"open: {args.out}", open_out, args.out)
    opts = VerifyOptions(Path(args.inputs) if args.inputs else None, args.seed, args.atol,
                         args.rtol, _tolerances(args.tol), args.per_layer, args.precision,
                         args.fail_fast, args.allow_nan,
                         Path(args.load_outputs) if args.load_outputs else None)
    report = Path(args.report or Path(args.out) / "verify.json")
    if args.decode:
        return cli_decode.verify_with_decode(args, art, opts, report, _verified)
    return _verify(args, art, opts, report, args.save_outputs)


def _tolerances(specs: list[str]) -> tuple[tuple[str, float], ...]:
    out = []
    for spec in specs:
        name, _, value = spec.rpartition(":")
        try:
            atol = float(value)
        except ValueError:
            atol = float("nan")
        if not name or not 0 <= atol < float("inf"):
            raise UsageError(f"--tol: cannot parse {spec!r}; expected NAME:ATOL with ATOL >= 0, "
                             "e.g. logits:1e-3")
        out.append((name, atol))
    return tuple(out)


def _verify(args, art, opts, report: Path, save: str | None = None) -> int:
    v = _verified(args, art, opts, report, save)
    text = v.report.to_json() if args.json else "\n".join(v.report.lines()) + "\n"
    print(text, end="")
    return ExitCode.OK if v.report.passed else ExitCode.MISMATCH


def _verified(args, art, opts, report: Path, save: str | None = None, on_stage=None):
    """Run the verification, write its report (and outputs); stage lines on `on_stage`."""
    from compiler.verify import run_verification, save_outputs

    for path in (report, save):
        _check_parent(path)  # before the run, not after it
    v = run_verification(art, opts, on_stage or (None if args.quiet else _stage_line))
    _write(report, lambda p: p.write_text(v.report.to_json()))
    if save:
        _write(Path(save), lambda p: save_outputs(p, v))
    return v


def _check_parent(path: Path | str | None) -> None:
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise UsageError(f"cannot write {path}: its directory does not exist")


def _write(path: Path, write: Callable[[Path], None]) -> None:
    try:
        write(path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def _stage_line(name: str, seconds: float) -> None:
    print(f"[{name}] {seconds:.2f} s", file=sys.stderr)


def _compile_summary(result, out: Path, stage_times: list[tuple[str, float]]) -> str:
    """The human summary; `stage_times`: the compile's stages, then writing OUT's."""
    m, b, t, g = result.metrics, result.baseline, result.target, result.graph
    r = result.placement.report
    total = sum(s for _, s in stage_times)
    cores = t.total_cores
    off_note = "at the bound" if m.offchip_bytes_per_token <= m.offchip_lower_bound else \
        f"bound {_bytes(m.offchip_lower_bound)}"
    same = result.baseline_same_options
    vs_ff = (f"first-fit on the same rectangles {m.byte_hops / same.byte_hops - 1:+.0%}"
             if same and same.byte_hops else "first-fit cannot shelve these rectangles")
    if b and b.byte_hops:
        vs_ff += f", first-fit's own choice {m.byte_hops / b.byte_hops - 1:+.0%}"
    gap = "" if r.objective is None or r.bound is None or not r.objective else \
        f", gap {max(0.0, (r.objective - r.bound) / abs(r.objective)):.1%}"
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in stage_times)
    return "\n".join([
        f"compiled {g.name} for {t.name} in {total:.1f} s -> {out}/",
        f"  layers       {len(g.layers)} ({len(g.blocks())} blocks) on {m.wafers_used} wafer(s),"
        f" {m.cores_used:,} of {cores:,} cores ({m.cores_used / cores:.0%})",
        _idle_line(result),
        f"  off-chip     {_bytes(m.offchip_bytes_per_token)}/token ({off_note}; token I/O "
        f"{_bytes(result.problem.io_bytes_per_token)})",
        f"  byte-hops    {m.byte_hops:.4g} per token ({vs_ff}; {m.byte_hops_ratio:.2f}x the "
        f"bound {m.byte_hops_lower_bound:.4g})",
        f"  inter-wafer  {_bytes(m.interwafer_bytes_per_token)}/token; slowest wafer "
        f"{m.slowest_wafer_cycles:,} cycles/token",
        f"  solver       {r.method} {r.status}{gap}, {r.wall_time_s:.1f} s, seed {r.seed}, "
        f"{r.workers} worker(s)",
        *_perf_lines(result),
        *_breakdown_lines(result),
        f"  stages       {stages}",
    ])


def _routing(path: str | None):
    from compiler.tiling.routing import UNIFORM, load_routing

    return UNIFORM if path is None else load_routing(path)


def _moe_lines(result) -> list[str]:
    moe = result.moe
    if moe is None:
        return []
    return [
        f"  moe decode   {moe.expected_tokens_per_s:,.0f} tokens/s expected ({moe.routing} "
        f"routing, {moe.samples} draws), {moe.worst_tokens_per_s:,.0f} worst case (every token "
        f"to the same far experts), {moe.all_experts_tokens_per_s:,.0f} with every expert run",
        f"  expert load  {len(moe.regions)} expert regions; imbalance up to "
        f"{moe.max_imbalance:.2f}x its layer's mean (expected experts per token)",
        _streaming_line(moe),
    ]


STREAMING_LISTED = 6  # streamed expert regions named in the summary line


def _streaming_line(moe) -> str:
    """Which experts stream their weights from off-chip (SRAM short: the cold ones)."""
    cold = moe.streaming
    if not cold:
        return "  experts      all resident in SRAM"
    named = ", ".join(f"{r.region} (experts {r.first}-{r.first + r.count - 1}, "
                      f"{r.experts_per_token:.2g}/token)" for r in cold[:STREAMING_LISTED])
    more = f", and {len(cold) - STREAMING_LISTED} more" if len(cold) > STREAMING_LISTED else ""
    return (f"  experts      {len(cold)} of {len(moe.regions)} expert regions stream their "
            f"weights (the cold ones, loaded only when a token visits): {named}{more}")


def _breakdown_lines(result) -> list[str]:
    from compiler.outdir.write import cycle_breakdown
    from compiler.schedule.perf import shares

    lines = []
    for mode, rows in cycle_breakdown(result).items():
        if not rows:
            continue
        split = ", ".join(f"{k} {v:.0%}" for k, v in shares(rows).items() if v >= 0.005)
        top = max(rows, key=lambda r: r.total)
        lines.append(f"  {mode + ' path':<12} {split}; most in {top.layer} "
                     f"({top.total:,} of {sum(r.total for r in rows):,} cycles)")
    return lines


def _idle_line(result) -> str:
    from compiler.placement.idle import idle_cores

    idle = idle_cores(result.problem, result.placement)
    return f"  idle cores   {idle.cores:,}: {idle.reason}"


def _perf_lines(result) -> list[str]:
    from compiler.result import decode_steps
    from compiler.schedule.perf import PerfOptions, busiest_link

    d, p = result.estimates[Mode.DECODE], result.estimates[Mode.PREFILL]
    peak = result.target.total_peak_flops()
    link = busiest_link(decode_steps(result), PerfOptions(Mode.DECODE))
    link_line = "no on-wafer sends" if link is None else (
        f"{_bytes(link.nbytes)}/token on wafer {link.wafer} {link.src} -> {link.dst}")
    return [
        f"  busiest link {link_line}",
        f"  decode       {d.tokens_per_s:,.0f} tokens/s at batch {d.batch}, context "
        f"{d.context:,} ({d.cycles:,} cycles/token; compute roofline "
        f"{d.compute_bound_tokens_per_s:,.0f} tokens/s)",
        f"  prefill      TTFT {p.seconds * 1e3:,.2f} ms for {result.schedule.tokens:,} tokens",
        f"  utilization  {d.utilization:.3%} of {peak / 1e15:.3g} PFLOP/s in decode, "
        f"{p.utilization:.3%} in prefill",
        *_moe_lines(result),
        *_speculative_lines(result),
    ]


def _speculative_lines(result) -> list[str]:
    spec = result.speculative
    if spec is None:
        return []
    a = spec.area
    return [
        f"  speculative  {spec.tokens_per_s:,.0f} tokens/s with draft {spec.draft} "
        f"(accept {spec.accept:g}, k {spec.k}: {spec.expected_tokens:.2f} tokens per round; "
        f"{spec.plain_tokens_per_s:,.0f} without)",
        f"  draft        {spec.draft_cores:,} cores in the {spec.placement} {a.rows} x {a.cols} "
        f"at ({a.row}, {a.col}) on wafer {a.wafer}, "
        f"{'resident' if spec.draft_resident else 'streaming'}; round = {spec.k} x "
        f"{spec.draft_cycles:,} draft + {spec.verify_cycles:,} verify cycles (one token: "
        f"{spec.target_cycles:,})",
        *([f"  draft        not on a reserved strip: {spec.fallback}"] if spec.fallback else []),
    ]


def cmd_sweep(args) -> int:
    from compiler import sweep
    from compiler.driver import CompileOptions, SolverOptions
    from compiler.tiling.candidates import TilingOptions

    workers = args.workers or sweep.default_workers()
    if workers < 1:
        raise UsageError(f"--workers {workers}: expected at least 1")
    if args.ray_address and args.backend != "ray":
        raise UsageError("--ray-address needs --backend ray")
    backend = sweep.make_backend(args.backend, workers, args.ray_address)
    solver = SolverOptions(args.method, args.time_limit, args.seed, workers=1)
    tiling = TilingOptions(context=args.context, prompt_resident=True if args.verify else None)
    options = CompileOptions(_frontend_options(args), tiling, solver, check=_checks_on(),
                             routing=_routing(args.routing))
    plan = sweep.plan_sweep(args.model, args.target, args.vary, options, args.verify,
                            hints=not args.no_hints)
    t0 = time.perf_counter()
    progress = None if args.quiet else sweep.ProgressPrinter(sys.stderr)
    with _term_as_interrupt():  # `kill` stops a sweep as Ctrl-C does: finished points kept
        outcomes = sweep.run_sweep(plan, Path(args.output), backend, progress)
    run = {"backend": args.backend, "workers": workers, "ray_address": args.ray_address,
           "hints": not args.no_hints, "wall_s": round(time.perf_counter() - t0, 2)}
    doc = sweep.sweep_doc(plan, outcomes, run)
    sweep.write_sweep(Path(args.output), doc)
    print(json.dumps(doc, indent=1) if args.json else _sweep_summary(doc, args.output))
    return 0


@contextlib.contextmanager
def _term_as_interrupt():
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _sweep_summary(doc: dict, out: str) -> str:
    keys = [a["key"] for a in doc["axes"]]
    marks = {"total_sram_bytes": "S", "cores_used": "C", "wafers_used": "W"}
    rows = []
    for p in doc["points"]:
        ok = p["status"] == "ok"
        front = "".join(m for c, m in marks.items() if p["pareto"].get(c))
        rows.append((p["index"], *(p["overrides"][k] for k in keys), p["status"],
                     f"{p['tokens_per_s']:,.0f}" if ok else "",
                     f"{p['ttft_s'] * 1e3:,.2f}" if ok else "",
                     _bytes(p["offchip_bytes_per_token"]) if ok else "",
                     f"{p['cores_used']:,}" if ok else "",
                     _bytes(p["total_sram_bytes"]) if p["total_sram_bytes"] else "",
                     p["wafers_used"] if ok else "", f"{p['compile_s']:.1f}",
                     "yes" if p["cached"] else "", front))
    table = _table(("#", *keys, "status", "tokens/s", "TTFT ms", "off-chip/token", "cores",
                    "SRAM", "wafers", "s", "cached", "Pareto"), rows)
    failed = [f"  #{p['index']} {p['status']}: {p['error']}" for p in doc["points"]
              if p["status"] != "ok"]
    r = doc["run"]
    counts = ", ".join(f"{n} {s}" for s, n in r["status"].items() if n)
    return "\n".join([
        table, *(["", "failed points:", *failed] if failed else []), "",
        f"{r['points']} points ({counts}); {r['computed']} computed, {r['cached']} cached; "
        f"{r['wall_s']:.1f} s on {r['backend']} ({r['workers']} workers) -> "
        f"{Path(out) / 'sweep.csv'}, sweep.json, sweep.html",
        "Pareto: on the frontier of tokens/s against S total SRAM, C cores used, W wafers used",
    ])


def _list_zoo() -> int:
    from compiler import zoo

    rows = [(e.name, e.family, "shape-only" if e.shape_only else "weights", e.description)
            for e in zoo.ZOO.values()]
    print(_table(("name", "family", "data", "description"), rows))
    return 0


def cmd_check(args) -> int:
    target = _stage(args, f"target: {args.target}", load_target, args.target)
    g = _load(args)
    report = check_fit(g, target, args.context)
    if args.json:
        print(json.dumps({"supported": True, "fits": report.fits, **asdict(report)}, indent=2))
    else:
        print(_check_text(report, target))
    return ExitCode.OK if report.fits else ExitCode.DOES_NOT_FIT


def _check_text(r, target: Target) -> str:
    return "\n".join([
        f"model      {r.model}: supported (every op has a kernel)",
        f"target     {target.summary()}",
        f"weights    {_bytes(r.weight_bytes)}  ({r.params:,} params in "
        f"{target.compute.dtype.value})",
        f"KV cache   {_bytes(r.kv_bytes)}  (context {r.context:,}, batch {r.batch})",
        f"activ.     {_bytes(r.activation_bytes)}  (largest layer)",
        f"total      {_bytes(r.total_bytes)} vs {_bytes(r.usable_bytes_per_wafer)} usable per "
        f"wafer; at least {r.cores_min:,} cores",
        f"largest    {r.largest_layer}: {_bytes(r.largest_layer_bytes)} of weights",
        f"verdict    {r.verdict()}",
    ])


def cmd_targets(args) -> int:
    targets = list_targets()
    if args.json:
        print(json.dumps([{**t.to_dict(), "sha256": t.sha256} for t in targets], indent=2))
        return 0
    rows = [(t.name, t.wafers.count, f"{t.grid.rows}x{t.grid.cols}", f"{t.total_cores:,}",
             _bytes(t.core.sram_bytes), _bytes(t.total_usable_bytes),
             f"{t.total_peak_flops() / 1e15:.3g}", t.description) for t in targets]
    print(_table(("name", "wafers", "grid", "cores", "SRAM/core", "usable", "PFLOP/s",
                  "description"), rows))
    return 0


# --- formatting ------------------------------------------------------------------------------


def _bytes(n: float) -> str:
    """Three significant digits in the largest unit reached, never in exponent notation
    (999.7 KB is 1 MB, not 1e+03 KB)."""
    units = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3))
    for i, (unit, size) in enumerate(units):
        if abs(n) >= size:
            value = float(f"{n / size:.3g}")
            if value >= 1000 and i:
                unit, value = units[i - 1][0], float(f"{n / units[i - 1][1]:.3g}")
            return f"{round(n / size):,} {unit}" if value >= 1000 else f"{value:g} {unit}"
    return f"{int(n)} B"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _elide(rows: list[tuple], keep: int = 6) -> list[tuple]:
    """Long block lists print their first and last few rows."""
    if len(rows) <= 2 * keep + 1:
        return rows
    gap = (f"... {len(rows) - 2 * keep} more",) + ("",) * (len(rows[0]) - 1)
    return [*rows[:keep], gap, *rows[-keep:]]
