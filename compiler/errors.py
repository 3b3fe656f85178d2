"""Typed errors that carry data and say how to fix the problem.

Library code raises these; only the CLI catches them, prints one line `error: ...` and exits with
the error's documented code (docs/cli.md, "Exit codes").
"""

from __future__ import annotations

from dataclasses import dataclass


class ExitCode:
    """Process exit codes; documented in docs/cli.md."""

    OK = 0
    MISMATCH = 1  # verify: outputs differ from ONNX Runtime
    USAGE = 2  # bad command line
    INVALID_INPUT = 3  # unreadable or malformed model, target spec or artifact
    UNSUPPORTED = 4  # the model uses ops or features the compiler does not support
    DOES_NOT_FIT = 5  # capacity: the model or a layer does not fit the target
    TOOL_MISSING = 6  # an outside program a command needs (Chromium for `view --png`) is absent
    INTERNAL = 70  # a bug in wafer: please report it with `-v` output


class WaferError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = ExitCode.INVALID_INPUT


class WaferWarning(UserWarning):
    """Something suspicious that does not stop the command; the CLI prints it as one line
    `warning: ...` on stderr (tests can catch it with pytest.warns)."""


class UsageError(WaferError):
    exit_code = ExitCode.USAGE


class ToolMissingError(WaferError):
    """An outside program a command needs is not installed."""

    exit_code = ExitCode.TOOL_MISSING


class ModelError(WaferError):
    """The model file is missing, unreadable or malformed."""


class TargetError(WaferError):
    """A target spec is missing, malformed or out of range."""


class ShapeError(WaferError):
    """A dimension cannot be bound or inferred."""


@dataclass(frozen=True)
class UnsupportedOp:
    node: str
    op_type: str
    domain: str
    opset: int
    input_shapes: tuple[str, ...]

    def describe(self) -> str:
        dom = self.domain or "ai.onnx"
        shapes = ", ".join(self.input_shapes) or "no inputs"
        return f"{self.node or '<unnamed>'} ({dom}::{self.op_type} v{self.opset}; inputs {shapes})"


class UnsupportedOpsError(WaferError):
    """Every unsupported op of a model, listed at once."""

    exit_code = ExitCode.UNSUPPORTED

    def __init__(self, ops: list[UnsupportedOp]):
        self.ops = tuple(ops)
        kinds = sorted({o.op_type for o in ops})
        listing = "; ".join(o.describe() for o in ops)
        super().__init__(
            f"{len(ops)} unsupported op(s) ({', '.join(kinds)}): {listing}. "
            "See docs/cli.md for the supported op list."
        )


class CapacityError(WaferError):
    """Something does not fit: says bytes needed, bytes available and where."""

    exit_code = ExitCode.DOES_NOT_FIT

    def __init__(self, what: str, needed: int, available: int, hint: str = ""):
        self.what, self.needed, self.available = what, needed, available
        msg = f"{what} needs {needed:,} bytes but {available:,} are available"
        super().__init__(f"{msg}; {hint}" if hint else msg)


class InfeasiblePlacementError(WaferError):
    """No placement exists (or none was found) within the grid, wafers and capacity given."""

    exit_code = ExitCode.DOES_NOT_FIT


class InvalidPlacementError(WaferError):
    """A placement broke a rule the validator checks: a bug in the placer that produced it."""

    exit_code = ExitCode.INTERNAL


class InternalError(WaferError):
    """An unexpected exception inside a compile stage, named by stage (and layer, where known);
    the exception itself is the cause (compiler/stages.py)."""

    exit_code = ExitCode.INTERNAL
