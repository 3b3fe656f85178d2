"""Named stages: how the driver says what failed.

`Stages(on_stage, on_start)` times each `with stages("tiling"):` block (on_start(name) as it
begins, on_stage(name, seconds) and `times` when it ends normally) and turns an unexpected
exception inside it into an `InternalError` whose one line names the stage and, where known, the
layer: `internal error in stage tiling, layer block.3: KeyError: 'x' (rerun with -v and report
it)`. The original exception is its cause (`-v` prints both). Typed `WaferError`s (capacity,
unsupported op, ...) pass through unchanged, with their own exit codes; so do interrupts.

Code that works layer by layer marks where it is with `with at_layer(name):`; an unexpected
exception leaving that block carries the innermost layer's name as an exception note, which
the stage reads (and `-v`'s traceback shows).

`check(problems, what)` raises `CheckError` when an in-memory consistency check between stages
(compiler/tiling/check.py, compiler/schedule/check.py) found problems; inside a stage that is an
internal error naming the stage and the first problem.

`spaced_collections()` spaces out the garbage collector's full passes while a compile runs:
Python's default runs one whenever the objects that outlived the young generations grew by a
quarter, and a compile's objects only grow (a giant's graph, tilings, schedules, then the
artifacts' documents), so each pass walks millions of live objects to free nearly nothing:
6 of Qwen3-235B's 26 CPU s. Reference cycles still die: the young generations are collected
as before, and a full pass comes every FULL_EVERY of theirs. (An explicit full collection
after the frontend freed nothing measurable on the giants, 405B peak RSS 403 -> 406 MB
without it, and cost every compile a walk of its whole process: in the test suite, one
process compiling hundreds of models, 80 CPU s of test_conformance.py alone.)
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from compiler.errors import InternalError, WaferError

StageHook = Callable[[str, float], None]
StartHook = Callable[[str], None]

_LAYER_NOTE = "wafer: in layer "
# generation-1 collections between two full ones while compiling (Python's default 10)
FULL_EVERY = 1000


class CheckError(Exception):
    """A value passed between stages broke an invariant of its type: a bug in the stage that
    made it."""


class at_layer:  # noqa: N801 - used like a function: `with at_layer(layer.name):`
    """Marks an unexpected exception leaving the block with the layer's name (innermost wins)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if isinstance(exc, Exception) and not isinstance(exc, WaferError) \
                and layer_of(exc) is None:
            exc.add_note(_LAYER_NOTE + self.name)
        return False


def layer_of(exc: BaseException) -> str | None:
    """The layer `at_layer` marked `exc` with, if any."""
    notes = getattr(exc, "__notes__", ())
    return next((n.removeprefix(_LAYER_NOTE) for n in notes if n.startswith(_LAYER_NOTE)), None)


def check(problems: list[str], what: str) -> None:
    """Raise `CheckError` naming the first of `problems` (and how many more), if any."""
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckError(f"{what}: {problems[0]}{more}")


class Stages:
    """The stages of one compile: `with stages(name):` blocks, their times in order."""

    def __init__(self, on_stage: StageHook | None = None,
                 on_start: StartHook | None = None) -> None:
        self.on_stage, self.on_start = on_stage, on_start
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.on_start:
            self.on_start(name)
        t0 = time.perf_counter()
        try:
            yield
        except WaferError:
            raise
        except Exception as exc:
            raise InternalError(internal_message(name, exc)) from exc
        seconds = time.perf_counter() - t0
        self.times.append((name, seconds))
        if self.on_stage:
            self.on_stage(name, seconds)


def internal_message(stage: str, exc: Exception) -> str:
    layer = layer_of(exc)
    where = f"stage {stage}" + (f", layer {layer}" if layer else "")
    text = next(iter(str(exc).splitlines()), "")  # one line, whatever the exception says
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"internal error in {where}: {what} (rerun with -v and report it)"


@contextmanager
def spaced_collections() -> Iterator[None]:
    """Full collections FULL_EVERY generation-1 collections apart (at most) inside the block;
    the thresholds as they were after it."""
    old = gc.get_threshold()
    gc.set_threshold(old[0], old[1], max(old[2], FULL_EVERY))
    try:
        yield
    finally:
        gc.set_threshold(*old)
