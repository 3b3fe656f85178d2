"""How `wafer compile` shows its stages on stderr (the only rich importer).

`stage_display(quiet, stream)` gives one of three displays with the same methods: start(name),
done(name, seconds), solver(stage, objective, bound, elapsed_s) (the placer's ProgressHook),
paused() (a context in which to print results to stdout) and close(). With -q nothing; when
the stream is not a terminal, plain stage lines `[name] 1.23 s` as each stage ends; on a
terminal, a live line per running stage (spinner, name, elapsed; for CP-SAT the solve running,
its gap, incumbent and bound) above which the same plain lines stay once each stage is done.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from rich.console import Console


class StageDisplay(Protocol):
    def start(self, name: str) -> None: ...
    def done(self, name: str, seconds: float) -> None: ...
    def solver(self, stage: str, objective: float | None, bound: float | None,
               elapsed_s: float) -> None: ...
    def paused(self) -> contextlib.AbstractContextManager[None]: ...
    def close(self) -> None: ...


class Quiet:
    """-q: nothing at all."""

    def start(self, name: str) -> None:
        pass

    def done(self, name: str, seconds: float) -> None:
        pass

    def solver(self, stage: str, objective: float | None, bound: float | None,
               elapsed_s: float) -> None:
        pass

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass


class Plain(Quiet):
    """Not a terminal: one line per finished stage, nothing live."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def done(self, name: str, seconds: float) -> None:
        print(stage_line(name, seconds), file=self.stream)


def stage_line(name: str, seconds: float) -> str:
    return f"[{name}] {seconds:.2f} s"


def solver_text(stage: str, objective: float | None, bound: float | None) -> str:
    """`stage 2 wafer 0 fine: gap 11.2%, 5.77e+05 (bound 5.12e+05)`: the gap first, as a
    narrow terminal cuts the end."""
    known = bound is not None and math.isfinite(bound)
    if objective is None:
        return stage + (f": bound {bound:.4g}" if known else "")
    if not known:
        return f"{stage}: {objective:.4g}"
    gap = 0.0 if objective == 0 else max(0.0, (objective - bound) / abs(objective))
    return f"{stage}: gap {gap:.1%}, {objective:.4g} (bound {bound:.4g})"


class Live(Quiet):
    """A terminal: rich's live progress (spinner, stage, elapsed, solver), redrawn in a thread
    of its own, so it moves while CP-SAT works."""

    def __init__(self, console: Console) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[solver]}"),
                                 console=console, transient=True, refresh_per_second=8)
        self.tasks: dict[str, int] = {}
        self.best: tuple[float | None, float | None] = (None, None)
        self.progress.start()

    def start(self, name: str) -> None:
        self.tasks[name] = self.progress.add_task(name, total=None, solver="")

    def done(self, name: str, seconds: float) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            self.progress.remove_task(task)
            self.progress.refresh()
        self.console.print(stage_line(name, seconds), markup=False, highlight=False)

    def solver(self, stage: str, objective: float | None, bound: float | None,
               elapsed_s: float) -> None:
        """From the solver's thread; rich's updates take a lock."""
        task = self.tasks.get("placement")
        if task is None:
            return
        if objective is None and bound is None:  # a new solve
            self.best = (None, None)
        else:
            self.best = (self.best[0] if objective is None else objective, bound)
        self.progress.update(task, solver=solver_text(stage, *self.best))

    def refresh(self) -> None:
        self.progress.refresh()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing live while results go to stdout (rich would wrap them otherwise)."""
        self.progress.stop()
        try:
            yield
        finally:
            self.progress.start()

    def close(self) -> None:
        self.progress.stop()


def stage_display(quiet: bool, stream: TextIO | None = None,
                  console: Console | None = None) -> StageDisplay:
    """Quiet, Plain or Live for `stream` (default stderr); `console` forces a rich console."""
    if quiet:
        return Quiet()
    stream = stream or sys.stderr
    if console is None:
        if not stream.isatty():
            return Plain(stream)
        from rich.console import Console

        console = Console(file=stream)
    return Live(console)
