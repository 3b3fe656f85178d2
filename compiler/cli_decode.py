"""The command line of decode: `wafer generate` and the `--decode N` of `verify` / `compile
--verify` (kept out of cli.py, which only registers and calls them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compiler.errors import ExitCode, UsageError


def add_generate(sub, count) -> None:
    p = sub.add_parser("generate", help="greedy token ids after a prompt: OUT's prefill and "
                       "decode schedules on the reference executor")
    p.add_argument("out", metavar="OUT", help="an output directory of `wafer compile`")
    p.add_argument("--prompt-ids", required=True, metavar="IDS",
                   help="the prompt's token ids, comma-separated, e.g. 1,2,3")
    p.add_argument("-n", "--new-tokens", type=count, default=8, metavar="N",
                   help="new tokens to generate (default 8)")
    p.add_argument("--precision", choices=("fp32", "target"), default="fp32",
                   help="executor precision: fp32, or the target's dtype emulated")
    p.add_argument("--json", action="store_true", help="print {prompt, tokens} as JSON")
    p.set_defaults(run=cmd_generate)


def add_decode_arg(p: argparse.ArgumentParser, count) -> None:
    p.add_argument("--decode", type=count, metavar="N",
                   help="then prefill + N greedy decode steps with the KV cache on the wafer, "
                   "each step's logits and token compared with ONNX Runtime "
                   "(OUT/verify-decode.json)")


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise UsageError(f"--prompt-ids {text!r}: expected integers separated by commas, "
                         "e.g. 1,2,3") from None
    if not ids:
        raise UsageError("--prompt-ids: give at least one token id, e.g. 1,2,3")
    return ids


def cmd_generate(args) -> int:
    from compiler.verify import open_out
    from compiler.verify.decode import open_decode, run_generate

    prompt = parse_ids(args.prompt_ids)
    art = open_out(args.out)
    dg, schedule = open_decode(args.out, art)
    tokens = run_generate(art, dg, schedule, prompt, args.new_tokens, args.precision)
    if args.json:
        print(json.dumps({"prompt": prompt, "tokens": tokens}))
    else:
        print(",".join(map(str, tokens)))
    return ExitCode.OK


def prepare(args, art, out: Path, plan=None):
    """(decode graph, decode schedule) for --decode, refused early when the cache has no room:
    `plan` is the compile's DecodePlan (its decode graph loaded again with weights), else OUT's
    is read."""
    from compiler.verify.decode import check_room, open_decode

    if plan is not None:
        from compiler.schedule.decode import with_weights

        dg, schedule = with_weights(plan.graph, art.source, art.graph), plan.schedule
    else:
        dg, schedule = open_decode(out, art)
    prompt = art.graph.tensor(art.graph.inputs[0]).shape[-1]
    check_room(prompt, args.decode, dg.context)
    return dg, schedule


def verify_decode(args, art, opts, out: Path, prepared, show: bool = True):
    """Prefill + args.decode steps against ONNX Runtime; writes OUT/verify-decode.json and
    (with `show`) prints a line per step, or the report as JSON with --json. Returns (exit
    code, report)."""
    from compiler.cli import _stage_line
    from compiler.verify.decode import verify_decode

    dg, schedule = prepared
    hook = None if args.quiet else _stage_line
    report = verify_decode(art, dg, schedule, args.decode, opts, hook)
    path = out / "verify-decode.json"
    path.write_text(report.to_json())
    if show:
        print(report.to_json() if args.json else "\n".join(report.lines()) + "\n", end="")
    return (ExitCode.OK if report.passed else ExitCode.MISMATCH), report


def verify_with_decode(args, art, opts, report: Path, verified) -> int:
    """wafer verify OUT --decode N: the forward pass (`verified`: cli's run-and-write), then
    prefill + N decode steps; with --json one document (verify's report plus `decode`)."""
    from compiler.outdir.write import dumps

    ready = prepare(args, art, Path(args.out))
    v = verified(args, art, opts, report, args.save_outputs)
    code = ExitCode.OK if v.report.passed else ExitCode.MISMATCH
    if not args.json:
        print("\n".join(v.report.lines()) + "\n", end="")
    decoded, decode = verify_decode(args, art, opts, Path(args.out), ready, not args.json)
    if args.json:
        print(dumps({**v.report.to_dict(), "decode": decode.doc()}), end="")
    return max(code, decoded)


def require_plan(result, steps: int) -> None:
    """compile --verify --decode N: refused before OUT is written when there is no decode
    schedule or its KV cache has no room for the prompt and N steps."""
    from compiler.verify.decode import NoDecodeSchedule, check_room

    if result.decode is None:
        why = result.no_decode or ("--decode needs a causal LM whose inputs are token ids "
                                   "(and an attention mask), with weights")
        raise NoDecodeSchedule(f"{result.graph.name} has no decode schedule: {why}")
    g = result.graph
    check_room(g.tensor(g.inputs[0]).shape[-1], steps, result.decode.graph.context)


def decode_context(args) -> int | None:
    """compile --verify --decode N without --context: the prompt plus N positions."""
    if not getattr(args, "decode", None) or args.context is not None:
        return args.context
    from compiler.cli import _frontend_options
    from compiler.frontend import load_model

    g = load_model(args.model, _frontend_options(args))
    seq = max(g.tensor(n).shape[-1] for n in g.inputs)
    return seq + args.decode
