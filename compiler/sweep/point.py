"""One point of a sweep: `run_point` compiles (and verifies) a `PointSpec` into a `PointResult`
whatever happens to the compile; `run_task` also returns the point's placement as a warm start
for the next point of its chain (`PointSpec.after`). A `Backend` runs the tasks a `Queue` hands
out (a point once the point it starts from is done) and hands each result to an `OnResult`.
The parent caches each finished point atomically in SWEEPDIR/points/<key>.json (`store`,
`load_cached`, `cached_hint`)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from compiler import __version__
from compiler.atomic import write_atomic
from compiler.driver import Reuse, compile_model
from compiler.errors import (
    CapacityError,
    InfeasiblePlacementError,
    InternalError,
    TargetError,
    WaferError,
)
from compiler.placement.problem import Placement, Rect, SolverReport
from compiler.placement.warm import PlacementHint
from compiler.sweep.plan import PointSpec
from compiler.vocab import Mode

SCHEMA_VERSION = "1.0"
OK, DOES_NOT_FIT, INFEASIBLE, ERROR = "ok", "does-not-fit", "infeasible", "error"
STATUSES = (OK, DOES_NOT_FIT, INFEASIBLE, ERROR)


@dataclass(frozen=True)
class PointResult:
    """What one compile gave: a status (ok, does-not-fit, infeasible, error) and its numbers.
    `internal` marks an unexpected failure (a bug, a dead worker): it is not cached."""

    status: str
    error: str = ""
    internal: bool = False
    tokens_per_s: float | None = None  # decode, at the point's batch and context
    ttft_s: float | None = None  # prefill: one forward over the prompt
    offchip_bytes_per_token: int | None = None
    byte_hops: float | None = None
    cores_used: int | None = None
    wafers_used: int | None = None
    decode_context: int | None = None  # the KV-cache length the decode rate is for
    decode_batch: int | None = None
    prompt_resident: bool | None = None
    solver_status: str = ""
    verify: str = ""  # "", "passed" or "failed"
    verify_max_abs: float | None = None
    compile_s: float = 0.0
    verify_s: float = 0.0
    # work taken from an earlier point in the same worker (driver.Reuse): "frontend" (same
    # model and frontend options), "decode-forms" (and context), "tiling" (and target and
    # options), "placement" (an equal placement problem and solver options), "decode-schedule"
    # (the decode step's schedule on the same regions: driver.Reuse.decode), "schedule" (the
    # prompt's schedule on the same regions: driver.Reuse.schedules)
    reused: tuple[str, ...] = ()
    # mixture-of-experts models (expert-group layers): decode with k of E experts under the
    # sweep's routing (--routing), and how many expert regions stream their weights
    moe_expected_tokens_per_s: float | None = None
    moe_worst_tokens_per_s: float | None = None
    streamed_expert_regions: int | None = None
    # the point whose placement this one started from (PointSpec.after), when it carried over:
    # `reused` then names "hint" (CP-SAT warm-started from it) or "placement" (an equal
    # problem: taken as it is)
    hinted_by: int | None = None

    @property
    def cacheable(self) -> bool:
        return not self.internal


_REUSE = Reuse()  # per process: a worker's points share their frontend and placements


Done = tuple[PointResult, PlacementHint | None]  # a result, and its placement as a warm start


def run_point(spec: PointSpec, hint: PlacementHint | None = None) -> PointResult:
    """Compile one point (and verify it when asked); never raises for a failed compile."""
    return run_task(spec, hint)[0]


def run_task(spec: PointSpec, hint: PlacementHint | None = None) -> Done:
    """`run_point`, with the point's placement as the next point's warm start (None when it
    failed). `hint`: the placement of the point it comes after (`spec.after`), if known."""
    t0 = time.perf_counter()
    try:
        return _compile(spec, hint)
    except CapacityError as exc:
        return PointResult(DOES_NOT_FIT, str(exc), compile_s=_since(t0)), None
    except InfeasiblePlacementError as exc:
        return PointResult(INFEASIBLE, str(exc), compile_s=_since(t0)), None
    except InternalError as exc:  # a bug a stage named: not cached either
        return PointResult(ERROR, str(exc), internal=True, compile_s=_since(t0)), None
    except WaferError as exc:
        return PointResult(ERROR, str(exc), compile_s=_since(t0)), None
    except Exception as exc:  # a bug: recorded, not cached, so a re-run tries again
        msg = f"internal error: {type(exc).__name__}: {exc}"
        return PointResult(ERROR, msg, internal=True, compile_s=_since(t0)), None


def _compile(spec: PointSpec, hint: PlacementHint | None) -> Done:
    if spec.target is None:
        raise TargetError(spec.target_error)
    t0 = time.perf_counter()
    r = compile_model(spec.model, spec.target, spec.options, reuse=_REUSE, hint=hint)
    compiled = _since(t0)
    took = hint is not None and bool({"hint", "placement"} & set(r.reused))
    d, p = r.estimates[Mode.DECODE], r.estimates[Mode.PREFILL]
    out = PointResult(
        OK, tokens_per_s=d.tokens_per_s, ttft_s=p.ttft_s if p.ttft_s is not None else p.seconds,
        offchip_bytes_per_token=r.metrics.offchip_bytes_per_token, byte_hops=r.metrics.byte_hops,
        cores_used=r.metrics.cores_used, wafers_used=r.metrics.wafers_used,
        decode_context=r.tiled.context, decode_batch=r.tiled.batch,
        prompt_resident=r.tiled.prompt_resident,
        solver_status=r.placement.report.status, compile_s=compiled, reused=r.reused,
        hinted_by=spec.after if took else None)
    if r.moe is not None:
        out = replace(out, moe_expected_tokens_per_s=r.moe.expected_tokens_per_s,
                      moe_worst_tokens_per_s=r.moe.worst_tokens_per_s,
                      streamed_expert_regions=len(r.moe.streaming))
    placed = PlacementHint.of(r.problem, r.placement)
    return (_verify(spec, r, out) if spec.verify else out), placed


def _verify(spec: PointSpec, r, out: PointResult) -> PointResult:
    from compiler.verify import Artifact, VerifyOptions, run_verification

    t0 = time.perf_counter()
    v = run_verification(Artifact(spec.model, r.graph, r.target, r.schedule), VerifyOptions())
    worst = max((c.max_abs for c in v.report.outputs), default=0.0)
    return replace(out, verify="passed" if v.report.passed else "failed",
                   verify_max_abs=worst, verify_s=_since(t0))


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


# ---------------------------------------------------------------------------------------------
# The cache: SWEEPDIR/points/<key>.json, written atomically by the parent
# ---------------------------------------------------------------------------------------------


def cache_path(sweep_dir: Path, key: str) -> Path:
    return Path(sweep_dir) / "points" / f"{key}.json"


def load_cached(sweep_dir: Path, spec: PointSpec) -> PointResult | None:
    """The cached result of `spec`, or None (absent, unreadable, or from another schema)."""
    if not spec.key:
        return None
    try:
        doc = json.loads(cache_path(sweep_dir, spec.key).read_text())
        if doc.get("schema_version") != SCHEMA_VERSION or doc.get("key") != spec.key:
            return None
        result = doc["result"]
        return PointResult(**{**result, "reused": tuple(result.get("reused", ()))})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def store(sweep_dir: Path, spec: PointSpec, result: PointResult,
          placed: PlacementHint | None = None) -> None:
    """Write one finished point's result (with what it was computed from, and its placement
    as a warm start for the point after it) atomically."""
    assert spec.target is not None
    doc = {"schema_version": SCHEMA_VERSION, "key": spec.key, "tool": tool_doc(),
           "overrides": dict(spec.overrides), "target": spec.target.to_dict(),
           "target_sha256": spec.target.sha256,
           "options": dataclasses.asdict(spec.options), "verify": spec.verify,
           "result": dataclasses.asdict(result),
           "placement_hint": None if placed is None else _hint_doc(placed)}
    write_atomic(cache_path(sweep_dir, spec.key), json.dumps(doc, indent=1) + "\n")


def cached_hint(sweep_dir: Path, key: str) -> PlacementHint | None:
    """The placement the cached point `key` left for the point after it, or None."""
    try:
        doc = json.loads(cache_path(sweep_dir, key).read_text())
        h = doc["placement_hint"]
        if doc.get("key") != key or h is None:
            return None
        rects = tuple(Rect(*r) for r in h["rects"])
        report = SolverReport(**{**h["report"],
                                 "stages": tuple(tuple(s) for s in h["report"]["stages"])})
        return PlacementHint(h["problem_sha256"], tuple(tuple(b) for b in h["blocks"]), rects,
                             Placement(tuple(h["options"]), rects, report))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _hint_doc(h: PlacementHint) -> dict:
    return {"problem_sha256": h.problem_sha256, "blocks": [list(b) for b in h.blocks],
            "rects": [[r.wafer, r.row, r.col, r.rows, r.cols] for r in h.rects],
            "options": list(h.placement.options),
            "report": dataclasses.asdict(h.placement.report)}


def tool_doc() -> dict[str, str]:
    """What wrote a cached point or sweep.json: wafer and its version."""
    return {"name": "wafer", "version": __version__}


# ---------------------------------------------------------------------------------------------
# What backends run and return
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    spec: PointSpec
    result: PointResult
    cached: bool


class Queue:
    """The points to compute, handed out in chain order: a point whose warm start is a point
    still to compute waits for it and then gets its placement (`done`); every other point is
    ready at once, with the cached placement of the point it comes after (`hints`). Ready
    points go out longest first (`weight`: the chain that starts there, at the longest context
    first), so that the workers finish together; `take_for` keeps a chain on the worker that
    ran its previous point (what that worker's `Reuse` holds is for it)."""

    def __init__(self, specs: Sequence[PointSpec],
                 hints: dict[int, PlacementHint | None] | None = None) -> None:
        todo = {s.index for s in specs}
        self.waiting: dict[int, list[PointSpec]] = {}
        self.ready: list[tuple[PointSpec, PlacementHint | None]] = []
        for s in specs:
            if s.after is not None and s.after in todo:
                self.waiting.setdefault(s.after, []).append(s)
            else:
                self.ready.append((s, (hints or {}).get(s.index)))

    def take(self) -> list[tuple[PointSpec, PlacementHint | None]]:
        """The points ready now (each handed out once), longest first."""
        out = sorted(self.ready, key=lambda t: self.weight(t[0]), reverse=True)
        self.ready = []
        return out

    def take_for(self, prev: int | None) -> tuple[PointSpec, PlacementHint | None] | None:
        """One ready point for a worker that last ran point `prev`: the point after it when
        ready, else the longest ready one; None when none is ready."""
        if not self.ready:
            return None
        mine = [i for i, (s, _) in enumerate(self.ready) if prev is not None and s.after == prev]
        i = mine[0] if mine else max(range(len(self.ready)),
                                     key=lambda i: (self.weight(self.ready[i][0]), -i))
        return self.ready.pop(i)

    def hand_out(self, last: dict[int, int | None]) -> list[tuple[int, tuple[PointSpec,
                                                                      PlacementHint | None]]]:
        """Ready points for the idle workers `last` (worker -> the point it ran last): first
        each worker whose chain's next point is ready gets it, then the others the longest
        ready points, so an idle worker never takes a point another worker's chain leads to."""
        after = {s.after for s, _ in self.ready}
        order = sorted(last, key=lambda w: (last[w] is None or last[w] not in after, w))
        out = [(w, self.take_for(last[w])) for w in order]
        return [(w, task) for w, task in out if task is not None]

    def weight(self, spec: PointSpec) -> tuple[int, int]:
        """How long the work starting at `spec` is expected to take: its context (the longest
        points are the long-context ones), then the length of its chain."""
        return _context(spec), self._chain(spec.index)

    def _chain(self, index: int) -> int:
        return 1 + sum(self._chain(s.index) for s in self.waiting.get(index, ()))

    def done(self, spec: PointSpec, placed: PlacementHint | None) -> None:
        """`spec` finished: the points after it are ready, with its placement."""
        self.ready += [(s, placed) for s in self.waiting.pop(spec.index, [])]


def _context(spec: PointSpec) -> int:
    """The point's context, as far as the options say (the bound sequence length else)."""
    return spec.options.tiling.context or spec.options.frontend.dims.seq_len or 0


OnResult = Callable[[PointSpec, PointResult, PlacementHint | None], None]
Backend = Callable[[Queue, OnResult], None]
