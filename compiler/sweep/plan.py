"""Planning a sweep: `--vary` axes (`parse_vary` -> `Axis`), compile options set by key, and
`plan_sweep` -> `Plan`, every point of the cross product as a `PointSpec` with its effective
target, options and cache key (`point_key`: the model's digest, the target's sha256, the
options, the wafer version and a hash of wafer's own source, `code_sha256`)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from compiler import __version__
from compiler.driver import CompileOptions
from compiler.errors import TargetError, UsageError
from compiler.frontend import load_model
from compiler.target import Target, load_target, override_keys
from compiler.tiling.routing import group_loads
from compiler.vocab import PLACEMENT_METHODS, PlacementMethod

OPTION_KEYS = ("context", "batch", "seq-len", "prompt-resident", "method")
METHODS = PLACEMENT_METHODS  # --vary method=...
MAX_POINTS = 10_000
MAX_DIM = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Axes: what --vary asks for
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One `--vary KEY=V1,V2,...`: a target key path or a compile option, values as given."""

    key: str
    values: tuple[str, ...]

    @property
    def kind(self) -> str:
        return "option" if self.key in OPTION_KEYS else "target"


def vary_keys() -> list[str]:
    """Every key `--vary` accepts: compile options, then target key paths."""
    return [*OPTION_KEYS, *override_keys()]


def parse_vary(items: Sequence[str]) -> tuple[Axis, ...]:
    """`["core.sram_bytes=24KiB,48KiB", "context=2048,8192"]` -> axes; a bad key, an empty or
    repeated value, a repeated key or an option value that does not parse is a UsageError."""
    axes = [_parse_axis(item) for item in items]
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise UsageError(f"--vary {key} is given twice; put all its values in one --vary")
    return tuple(axes)


def _parse_axis(item: str) -> Axis:
    key, sep, rest = item.partition("=")
    key = key.strip()
    values = tuple(v.strip() for v in rest.split(","))
    if not sep or not key or not all(values):
        raise UsageError(f"--vary {item!r}: expected KEY=V1,V2,... with no empty value, e.g. "
                         "core.sram_bytes=24KiB,48KiB")
    _check_key(key)
    for v in values:
        if values.count(v) > 1:
            raise UsageError(f"--vary {key}: value {v!r} is given twice")
        if key in OPTION_KEYS:
            option_value(key, v)
    return Axis(key, values)


def _check_key(key: str) -> None:
    valid = vary_keys()
    if key in valid or key.startswith("core.flops_per_cycle."):
        return  # a dtype name after flops_per_cycle is checked when the target loads
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UsageError(f"--vary {key}: unknown key{hint} (valid keys: {', '.join(valid)})")


def option_value(key: str, text: str) -> int | bool | str:
    """A compile option's value from its text; UsageError naming the key when it is bad."""
    if key == "method":
        if text not in METHODS:
            raise UsageError(f"--vary method={text}: "
                             f"expected one of {', '.join(METHODS)}")
        return text
    if key == "prompt-resident":
        if text.lower() not in ("true", "false"):
            raise UsageError(f"--vary prompt-resident={text}: expected true or false")
        return text.lower() == "true"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_DIM:
        raise UsageError(f"--vary {key}={text}: expected a whole number in 1..{MAX_DIM:,}")
    return value


def with_option(options: CompileOptions, key: str, value: int | bool | str) -> CompileOptions:
    """`options` with one compile option (an OPTION_KEYS key) set."""
    fe, tiling, solver = options.frontend, options.tiling, options.solver
    if key == "context":
        return replace(options, tiling=replace(tiling, context=value))
    if key == "prompt-resident":
        return replace(options, tiling=replace(tiling, prompt_resident=value))
    if key == "method":
        return replace(options, solver=replace(solver, method=value))
    field_name = {"batch": "batch", "seq-len": "seq_len"}[key]
    dims = replace(fe.dims, **{field_name: value})
    return replace(options, frontend=replace(fe, dims=dims))


# ---------------------------------------------------------------------------------------------
# The plan: every point with its target, options and cache key
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointSpec:
    """Everything a worker needs to compile one point (picklable: it travels to workers)."""

    index: int
    overrides: tuple[tuple[str, str], ...]  # (key, value as given), in --vary order
    key: str  # cache key; "" when the overrides make an invalid target
    model: str
    target: Target | None  # the effective target; None when the overrides are invalid
    options: CompileOptions
    verify: bool
    target_error: str = ""
    # the point before this one along the last --vary axis (the same values on every other
    # axis, and the same solver options): its placement is this point's warm start
    after: int | None = None


@dataclass(frozen=True)
class Plan:
    model: str
    model_name: str
    model_sha256: str
    shape_only: bool
    target: Target  # before overrides
    axes: tuple[Axis, ...]
    options: CompileOptions  # before options are varied
    verify: bool
    points: tuple[PointSpec, ...]


def plan_sweep(model: str, target: str, vary: Sequence[str], options: CompileOptions,
               verify: bool = False, hints: bool = True) -> Plan:
    """Parse and check the axes, load the model once (a bad or unsupported model stops here),
    and build every point of the cross product with its effective target and cache key (and,
    with `hints`, the point whose placement warm-starts it: `chained`)."""
    base = load_target(target)
    axes = parse_vary(vary)
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_POINTS:
        raise UsageError(f"--vary gives {count:,} points; at most {MAX_POINTS:,} per sweep")
    _check_verify(axes, verify)
    graph = load_model(model, options.frontend)
    group_loads(graph, options.routing)  # a --routing file that does not fit: exit 2, here
    if verify and graph.shape_only:
        raise UsageError(f"{graph.name} is shape-only (no weights): nothing to verify; "
                         "sweep it without --verify")
    combos = itertools.product(*[[(a.key, v) for v in a.values] for a in axes])
    where = _model_ref(model)
    points = tuple(_point(i, combo, where, target, base, options, verify, graph.source_sha256)
                   for i, combo in enumerate(combos))
    _check_target_values(axes, points)
    if hints and axes:
        points = chained(points, len(axes[-1].values))
    return Plan(model, graph.name, graph.source_sha256, graph.shape_only, base, axes, options,
                verify, points)


def chained(points: Sequence[PointSpec], run: int) -> tuple[PointSpec, ...]:
    """Each point after the previous one along the last axis (`run` values: the last axis
    changes fastest), when both have a target and the same solver options (placed with
    CP-SAT): a chain of nearby placement problems, each started from the one before."""
    out = list(points)
    for i, p in enumerate(points):
        prev = points[i - 1] if i % run else None
        if (prev is not None and p.target is not None and prev.target is not None
                and p.options.solver == prev.options.solver
                and p.options.solver.method == PlacementMethod.CPSAT):
            out[i] = replace(p, after=prev.index)
    return tuple(out)


def _model_ref(model: str) -> str:
    """A model file as an absolute path (workers may run in another directory), or a zoo name."""
    path = Path(model)
    return str(path.resolve()) if path.is_file() else model


def _check_verify(axes: Sequence[Axis], verify: bool) -> None:
    streamed = any(a.key == "prompt-resident" and "false" in map(str.lower, a.values)
                   for a in axes)
    if verify and streamed:
        raise UsageError("--verify needs the whole prompt resident; drop prompt-resident=false "
                         "or --verify")


def _point(index: int, combo: Sequence[tuple[str, str]], model: str, target: str, base: Target,
           options: CompileOptions, verify: bool, model_sha256: str) -> PointSpec:
    for key, text in combo:
        if key in OPTION_KEYS:
            options = with_option(options, key, option_value(key, text))
    overrides = {k: v for k, v in combo if k not in OPTION_KEYS}
    combo = tuple(combo)
    try:
        tgt = load_target(target, overrides) if overrides else base
    except TargetError as exc:
        return PointSpec(index, combo, "", model, None, options, verify, str(exc))
    key = point_key(model_sha256, tgt, options, verify)
    return PointSpec(index, combo, key, model, tgt, options, verify)


def _check_target_values(axes: Sequence[Axis], points: Sequence[PointSpec]) -> None:
    """A target value that makes an invalid spec in every point it is part of is a bad value
    (a typo, out of range); one invalid only with some other values is a failed point."""
    for axis in (a for a in axes if a.kind == "target"):
        for value in axis.values:
            mine = [p for p in points if (axis.key, value) in p.overrides]
            if all(p.target is None for p in mine):
                raise UsageError(f"--vary {axis.key}={value}: {mine[0].target_error}")


def point_key(model_sha256: str, target: Target, options: CompileOptions, verify: bool) -> str:
    """The cache key of one point: what its result depends on, hashed."""
    doc = {"wafer": __version__, "code": code_sha256(), "model": model_sha256,
           "target": target.sha256,
           "options": dataclasses.asdict(options), "verify": verify}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.cache
def code_sha256() -> str:
    """A hash of wafer's own source (the compiler and zoo modules), so that a point cached by
    other code is computed again even when the version number did not change."""
    import compiler
    import compiler.zoo

    h = hashlib.sha256()
    for pkg in (compiler, compiler.zoo):
        root = Path(pkg.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(f"{pkg.__name__}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()
