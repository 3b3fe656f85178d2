"""One point of a sweep: `run_point` compiles (and verifies) a `PointSpec` into a `PointResult`
whatever happens to the compile; it is the unit of work of every backend (a `Backend` runs
points and hands each result to an `OnResult`). The parent caches each finished point
atomically in SWEEPDIR/points/<key>.json (`store`, `load_cached`)."""

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
    # options), "placement" (an equal placement problem and solver options)
    reused: tuple[str, ...] = ()
    # mixture-of-experts models (expert-group layers): decode with k of E experts under the
    # sweep's routing (--routing), and how many expert regions stream their weights
    moe_expected_tokens_per_s: float | None = None
    moe_worst_tokens_per_s: float | None = None
    streamed_expert_regions: int | None = None

    @property
    def cacheable(self) -> bool:
        return not self.internal


_REUSE = Reuse()  # per process: a worker's points share their frontend and placements


def run_point(spec: PointSpec) -> PointResult:
    """Compile one point (and verify it when asked); never raises for a failed compile."""
    t0 = time.perf_counter()
    try:
        result = _compile(spec)
    except CapacityError as exc:
        return PointResult(DOES_NOT_FIT, str(exc), compile_s=_since(t0))
    except InfeasiblePlacementError as exc:
        return PointResult(INFEASIBLE, str(exc), compile_s=_since(t0))
    except InternalError as exc:  # a bug a stage named: not cached either
        return PointResult(ERROR, str(exc), internal=True, compile_s=_since(t0))
    except WaferError as exc:
        return PointResult(ERROR, str(exc), compile_s=_since(t0))
    except Exception as exc:  # a bug: recorded, not cached, so a re-run tries again
        msg = f"internal error: {type(exc).__name__}: {exc}"
        return PointResult(ERROR, msg, internal=True, compile_s=_since(t0))
    return result


def _compile(spec: PointSpec) -> PointResult:
    if spec.target is None:
        raise TargetError(spec.target_error)
    t0 = time.perf_counter()
    r = compile_model(spec.model, spec.target, spec.options, reuse=_REUSE)
    compiled = _since(t0)
    d, p = r.estimates[Mode.DECODE], r.estimates[Mode.PREFILL]
    out = PointResult(
        OK, tokens_per_s=d.tokens_per_s, ttft_s=p.ttft_s if p.ttft_s is not None else p.seconds,
        offchip_bytes_per_token=r.metrics.offchip_bytes_per_token, byte_hops=r.metrics.byte_hops,
        cores_used=r.metrics.cores_used, wafers_used=r.metrics.wafers_used,
        decode_context=r.tiled.context, decode_batch=r.tiled.batch,
        prompt_resident=r.tiled.prompt_resident,
        solver_status=r.placement.report.status, compile_s=compiled, reused=r.reused)
    if r.moe is not None:
        out = replace(out, moe_expected_tokens_per_s=r.moe.expected_tokens_per_s,
                      moe_worst_tokens_per_s=r.moe.worst_tokens_per_s,
                      streamed_expert_regions=len(r.moe.streaming))
    return _verify(spec, r, out) if spec.verify else out


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


def store(sweep_dir: Path, spec: PointSpec, result: PointResult) -> None:
    """Write one finished point's result (with what it was computed from) atomically."""
    assert spec.target is not None
    doc = {"schema_version": SCHEMA_VERSION, "key": spec.key, "tool": tool_doc(),
           "overrides": dict(spec.overrides), "target": spec.target.to_dict(),
           "target_sha256": spec.target.sha256,
           "options": dataclasses.asdict(spec.options), "verify": spec.verify,
           "result": dataclasses.asdict(result)}
    write_atomic(cache_path(sweep_dir, spec.key), json.dumps(doc, indent=1) + "\n")


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


OnResult = Callable[[PointSpec, PointResult], None]
Backend = Callable[[Sequence[PointSpec], OnResult], None]
