"""Fuzzing the command line with mutated ONNX models (issue 7, item 7).

Seeds are small valid models: micro GPT-2, LLaMA (opset 23: RMSNormalization, Attention) and
BERT built by the zoo builders, a static MLP, the MLP with its weights in an external-data
file, and two real torch exports from tests/fixtures (GPT-2 by dynamo, LLaMA by TorchScript).
Hypothesis draws one to three mutations of a seed (protobuf fields, shapes, dtypes,
deleted or rewired nodes and inputs, attribute values, opset and IR versions, external-data
references, raw bytes), writes the model into a fresh directory and runs `wafer inspect`,
`check` or `compile` on it in-process through `compiler.cli.main`, under a wall-clock guard.

A case is a bug when: an exception escapes `main`; the exit code is 70 (internal error) or not
a documented one; a failed command's stderr is not exactly one `error: ...` line (warnings
aside) or shows a traceback; a failed compile leaves OUT or a temporary directory behind; or
the case outlives the guard (a hang).

Run: .venv/bin/python benchmarks/fuzz.py [--cases N] [--seed S]  (writes the `fuzz` section of
docs/performance.md). tests/test_fuzz.py imports this module for a few hundred cases in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import os
import re
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis
import numpy as np
import onnx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compiler.cli import main
from compiler.errors import ExitCode
from compiler.frontend.ops import SUPPORTED_OPS
from compiler.zoo import BertConfig, GPT2Config, LlamaConfig, build_bert, build_gpt2, build_llama

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
GUARD_S = 20.0  # a case running longer than this is a hang (in Python code)
HARD_GUARD_S = 60.0  # ... and this kills the process with a traceback (a hang in C code)
DOCUMENTED = {0, ExitCode.MISMATCH, ExitCode.USAGE, ExitCode.INVALID_INPUT,
              ExitCode.UNSUPPORTED, ExitCode.DOES_NOT_FIT}
MICRO = {"vocab": 32, "hidden": 8, "layers": 1, "heads": 2, "intermediate": 16,
         "max_positions": 16, "default_seq": 4}


# --- seeds -------------------------------------------------------------------------------------


def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((8, 16), (16, 8)))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Gelu", ["hb"], ["g"], name="act"),
        helper.make_node("MatMul", ["g", "w2"], ["o"], name="fc2"),
        helper.make_node("LayerNormalization", ["o", "gamma", "beta"], ["n"], name="norm",
                         axis=-1, epsilon=1e-5),
        helper.make_node("Softmax", ["n"], ["y"], name="softmax", axis=-1),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", w1), ("b1", np.zeros(16, np.float32)), ("w2", w2),
        ("gamma", np.ones(8, np.float32)), ("beta", np.zeros(8, np.float32)))]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [2, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


def _external(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer's data moved into `w.bin` (written by `_write`), back to back."""
    offset = 0
    for t in model.graph.initializer:
        size = len(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", offset), ("length", size)):
            t.external_data.add(key=key, value=str(value))
        offset += size
    return model


@functools.cache
def seeds() -> dict[str, bytes]:
    mlp = _mlp()
    ext = _external(_mlp())
    return {
        "gpt2": build_gpt2(GPT2Config(**MICRO)).SerializeToString(),
        "llama23": build_llama(LlamaConfig(**MICRO, kv_heads=1, opset=23)).SerializeToString(),
        "bert": build_bert(BertConfig(**MICRO)).SerializeToString(),
        "mlp": mlp.SerializeToString(),
        "mlp-external": ext.SerializeToString(),
        # real torch exports (tests/fixtures): the dynamo and TorchScript exporters' patterns
        "gpt2-dynamo": (FIXTURES / "gpt2_dynamo_op18_static.onnx").read_bytes(),
        "llama-torchscript": (FIXTURES / "llama_torchscript_op17_static.onnx").read_bytes(),
    }


@functools.cache
def external_blob() -> bytes:
    return b"".join(t.raw_data for t in _mlp().graph.initializer)


# --- mutations ---------------------------------------------------------------------------------

Draw = Callable[[st.SearchStrategy], object]
OP_TYPES = sorted(SUPPORTED_OPS) + ["If", "Loop", "Scan", "Conv", "TopK", "NonZero", "Foo", ""]
DOMAINS = ["", "ai.onnx", "com.microsoft", "x.y", "ai.onnx.ml"]
ATTR_NAMES = ["axis", "axes", "perm", "keepdims", "transA", "transB", "epsilon", "to", "value",
              "allowzero", "num_outputs", "split", "k", "upper", "ratio", "training_mode",
              "is_causal", "q_num_heads", "kv_num_heads", "scale", "softcap", "approximate"]
INTS = st.one_of(st.integers(-4, 8), st.sampled_from([-(2**63), 2**31, 2**40, 2**63 - 1]))
DIMS = st.one_of(st.integers(-2, 12), st.sampled_from([2**31, 2**40, 10**12]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
LOCATIONS = ["w.bin", "../w.bin", "/etc/passwd", "sub/../../w.bin", "", ".", "nope.bin",
             "w.bin\x00x", "..\\w.bin", "w.bin/"]


def _pick(draw: Draw, seq):
    return seq[draw(st.integers(0, len(seq) - 1))]


def _node(m: onnx.ModelProto, draw: Draw) -> onnx.NodeProto | None:
    return _pick(draw, m.graph.node) if m.graph.node else None


def _values(m: onnx.ModelProto) -> list[str]:
    g = m.graph
    return ([v.name for v in g.input] + [t.name for t in g.initializer]
            + [o for n in g.node for o in n.output])


def delete_node(m, draw):
    if m.graph.node:
        del m.graph.node[draw(st.integers(0, len(m.graph.node) - 1))]


def delete_node_input(m, draw):
    n = _node(m, draw)
    if n is not None and n.input:
        del n.input[draw(st.integers(0, len(n.input) - 1))]


def rewire_input(m, draw):
    """An input renamed to another value (maybe a later one: a cycle), '' or a new name."""
    n = _node(m, draw)
    if n is not None and n.input:
        names = _values(m) + ["", "nowhere"]
        n.input[draw(st.integers(0, len(n.input) - 1))] = _pick(draw, names)


def rename_output(m, draw):
    n = _node(m, draw)
    if n is not None and n.output:
        n.output[draw(st.integers(0, len(n.output) - 1))] = _pick(draw, _values(m) + [""])


def change_op_type(m, draw):
    n = _node(m, draw)
    if n is not None:
        n.op_type = draw(st.sampled_from(OP_TYPES))


def change_domain(m, draw):
    n = _node(m, draw)
    if n is not None:
        n.domain = draw(st.sampled_from(DOMAINS))


def duplicate_node(m, draw):
    n = _node(m, draw)
    if n is not None:
        m.graph.node.append(n)


def swap_nodes(m, draw):
    g = m.graph
    if len(g.node) > 1:
        i, j = (draw(st.integers(0, len(g.node) - 1)) for _ in range(2))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[i])
        b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)


def mutate_attribute(m, draw):
    n = _node(m, draw)
    if n is None:
        return
    how = draw(st.sampled_from(["int", "ints", "float", "type", "delete", "add", "tensor"]))
    if how == "add" or not n.attribute:
        name = draw(st.sampled_from(ATTR_NAMES))
        n.attribute.append(helper.make_attribute(name, draw(st.one_of(
            INTS, FLOATS, st.lists(INTS, min_size=1, max_size=4), st.text(max_size=4)))))
        return
    a = _pick(draw, n.attribute)
    if how == "int":
        a.i = draw(INTS)
    elif how == "ints":
        a.ints[:] = draw(st.lists(INTS, max_size=5))
    elif how == "float":
        a.f = draw(FLOATS)
    elif how == "type":
        a.type = draw(st.sampled_from(list(onnx.AttributeProto.AttributeType.values())))
    elif how == "delete":
        n.attribute.remove(a)
    else:
        a.type = onnx.AttributeProto.TENSOR
        a.t.CopyFrom(numpy_helper.from_array(np.asarray(
            draw(st.lists(INTS, min_size=0, max_size=4)), np.int64), ""))


def initializer_dims(m, draw):
    if m.graph.initializer:
        _pick(draw, m.graph.initializer).dims[:] = draw(st.lists(DIMS, max_size=4))


def initializer_dtype(m, draw):
    if m.graph.initializer:
        _pick(draw, m.graph.initializer).data_type = draw(st.integers(0, 26))


def initializer_data(m, draw):
    """raw_data cut, grown, or set to NaN/Inf; or typed data that disagrees with the shape."""
    if not m.graph.initializer:
        return
    t = _pick(draw, m.graph.initializer)
    how = draw(st.sampled_from(["cut", "grow", "nonfinite", "typed"]))
    if how == "cut":
        t.raw_data = t.raw_data[: draw(st.integers(0, max(len(t.raw_data) - 1, 0)))]
    elif how == "grow":
        t.raw_data = t.raw_data + b"\0" * draw(st.integers(1, 16))
    elif how == "nonfinite" and t.data_type == TensorProto.FLOAT and len(t.raw_data) % 4 == 0 \
            and t.raw_data:
        a = np.frombuffer(t.raw_data, np.float32).copy()
        a[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        t.raw_data = a.tobytes()
    else:
        t.ClearField("raw_data")
        t.float_data[:] = draw(st.lists(FLOATS, max_size=6))


def delete_initializer(m, draw):
    if m.graph.initializer:
        del m.graph.initializer[draw(st.integers(0, len(m.graph.initializer) - 1))]


def external_reference(m, draw):
    """An initializer made external (or its reference changed): location, offset, length."""
    if not m.graph.initializer:
        return
    t = _pick(draw, m.graph.initializer)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for key in draw(st.lists(st.sampled_from(["location", "offset", "length", "checksum"]),
                             unique=True, max_size=4)):
        value = draw(st.sampled_from(LOCATIONS)) if key == "location" else draw(
            st.one_of(INTS.map(str), st.sampled_from(["x", "", "1e3", " 4"])))
        t.external_data.add(key=key, value=value)


def input_dtype(m, draw):
    if m.graph.input:
        _pick(draw, m.graph.input).type.tensor_type.elem_type = draw(st.integers(0, 26))


def input_shape(m, draw):
    if not m.graph.input:
        return
    tt = _pick(draw, m.graph.input).type.tensor_type
    how = draw(st.sampled_from(["dims", "param", "clear", "type"]))
    if how == "dims":
        tt.shape.ClearField("dim")
        for d in draw(st.lists(DIMS, max_size=4)):
            tt.shape.dim.add(dim_value=d)
    elif how == "param" and tt.shape.dim:
        _pick(draw, tt.shape.dim).dim_param = draw(st.sampled_from(["batch", "seq", "q", ""]))
    elif how == "clear":
        tt.ClearField("shape")
    else:
        v = _pick(draw, m.graph.input)
        v.type.sequence_type.elem_type.tensor_type.elem_type = TensorProto.FLOAT


def graph_io(m, draw):
    g = m.graph
    how = draw(st.sampled_from(["drop_input", "add_input", "drop_output", "rename_output"]))
    if how == "drop_input" and g.input:
        del g.input[draw(st.integers(0, len(g.input) - 1))]
    elif how == "add_input":
        g.input.append(helper.make_tensor_value_info(
            _pick(draw, _values(m) + ["extra"]), TensorProto.FLOAT, [2, 8]))
    elif how == "drop_output" and g.output:
        del g.output[draw(st.integers(0, len(g.output) - 1))]
    elif g.output:
        _pick(draw, g.output).name = _pick(draw, _values(m) + ["nowhere"])


def value_info(m, draw):
    """A bogus type annotation for some value (wrong dtype, rank or dims)."""
    name = _pick(draw, _values(m))
    m.graph.value_info.append(helper.make_tensor_value_info(
        name, draw(st.integers(1, 16)), draw(st.lists(DIMS, max_size=4))))


def versions(m, draw):
    how = draw(st.sampled_from(["opset", "ir", "domain", "extra"]))
    if how == "opset" and m.opset_import:
        m.opset_import[0].version = draw(st.one_of(st.integers(-1, 40), INTS))
    elif how == "ir":
        m.ir_version = draw(st.one_of(st.integers(-1, 20), INTS))
    elif how == "domain" and m.opset_import:
        m.opset_import[0].domain = draw(st.sampled_from(DOMAINS))
    else:
        m.opset_import.add(domain=draw(st.sampled_from(DOMAINS)), version=draw(INTS))


# -- plausible mutations: the model stays well-formed protobuf with consistent tensors, so the
# case gets past the file checks into shape inference, folding, tiling and placement

UNARY = ["Relu", "Gelu", "Tanh", "Sigmoid", "Neg", "Exp", "Log", "Abs", "Sqrt", "Reciprocal",
         "Erf", "Softplus", "Cos", "Sin", "Identity", "Not", "IsNaN", "Softmax", "LogSoftmax"]
BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "MatMul", "Equal", "Less",
          "Greater", "And", "Or", "Mod"]
NP_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
            TensorProto.DOUBLE: np.float64, TensorProto.INT64: np.int64,
            TensorProto.INT32: np.int32, TensorProto.INT8: np.int8, TensorProto.BOOL: np.bool_}


def swap_op_same_arity(m, draw):
    """An op replaced by another taking as many inputs (Add -> Pow, Relu -> Softmax, ...)."""
    n = _node(m, draw)
    if n is not None and n.op_type in UNARY + BINARY:
        n.op_type = draw(st.sampled_from(UNARY if n.op_type in UNARY else BINARY))
        del n.attribute[:]


def plausible_attribute(m, draw):
    nodes = [n for n in m.graph.node if any(a.type in (1, 2, 7) for a in n.attribute)]
    if not nodes:
        return
    n = _pick(draw, nodes)
    a = _pick(draw, [a for a in n.attribute if a.type in (1, 2, 7)])
    if a.type == onnx.AttributeProto.INT:
        a.i = draw(st.integers(-4, 4))
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = draw(st.sampled_from([0.0, 1e-12, 0.5, 1.0, -1.0, 1e30]))
    else:
        a.ints[:] = draw(st.one_of(st.permutations(list(range(len(a.ints)))),
                                   st.lists(st.integers(-4, 4), max_size=4)))


def retype_initializer(m, draw):
    """An initializer's data cast, consistently, to another element type."""
    inits = [t for t in m.graph.initializer if t.data_location != TensorProto.EXTERNAL]
    if inits:
        t = _pick(draw, inits)
        new = draw(st.sampled_from(sorted(NP_TYPES)))
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(NP_TYPES[new]),
                                           t.name))


def reshape_initializer(m, draw):
    """An initializer given a new small shape, with fresh data of that size."""
    inits = [t for t in m.graph.initializer if t.data_type in NP_TYPES
             and t.data_location != TensorProto.EXTERNAL]
    if inits:
        t = _pick(draw, inits)
        dims = draw(st.lists(st.integers(1, 12), max_size=4))
        data = np.arange(int(np.prod(dims)), dtype=np.float64).reshape(dims) % 7 - 3
        t.CopyFrom(numpy_helper.from_array(data.astype(NP_TYPES[t.data_type]), t.name))


def plausible_input_dims(m, draw):
    inputs = [v for v in m.graph.input if v.type.HasField("tensor_type")]
    if inputs:
        tt = _pick(draw, inputs).type.tensor_type
        tt.shape.ClearField("dim")
        for d in draw(st.lists(st.one_of(st.integers(1, 9), st.sampled_from(
                ["batch", "seq", "n"])), min_size=0, max_size=4)):
            tt.shape.dim.add(**({"dim_param": d} if isinstance(d, str) else {"dim_value": d}))


PLAUSIBLE = ["swap_op_same_arity", "plausible_attribute", "retype_initializer",
             "reshape_initializer", "plausible_input_dims"] * 2  # drawn three times as often

MUTATIONS: dict[str, Callable] = {f.__name__: f for f in (
    swap_op_same_arity, plausible_attribute, retype_initializer, reshape_initializer,
    plausible_input_dims,
    delete_node, delete_node_input, rewire_input, rename_output, change_op_type, change_domain,
    duplicate_node, swap_nodes, mutate_attribute, initializer_dims, initializer_dtype,
    initializer_data, delete_initializer, external_reference, input_dtype, input_shape,
    graph_io, value_info, versions)}


def mutate_bytes(data: bytes, draw: Draw) -> bytes:
    """Flip, cut or splice the serialized protobuf."""
    how = draw(st.sampled_from(["flip", "truncate", "splice"]))
    if not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    if how == "flip":
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    if how == "truncate":
        return data[:i]
    return data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]


# --- running one case --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    seed: str
    mutations: tuple[str, ...]
    argv: tuple[str, ...]
    data: bytes


@dataclass
class Outcome:
    case: Case
    code: int | None  # None: an exception escaped main, or the guard fired
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def bug(self) -> bool:
        return bool(self.problems)

    def describe(self) -> str:
        line = _error_line(self.stderr) or self.stderr.strip()[-300:]
        return (f"{self.case.seed} + {', '.join(self.case.mutations)}: "
                f"wafer {' '.join(self.case.argv[:1])} -> {self.code}: {line}")


def draw_case(draw: Draw) -> Case:
    name = draw(st.sampled_from(sorted(seeds())))
    model = onnx.ModelProto()
    model.ParseFromString(seeds()[name])
    names = draw(st.lists(st.sampled_from(sorted(MUTATIONS) + PLAUSIBLE + ["bytes"]),
                          min_size=1, max_size=3))
    names = [n for n in names if n != "bytes"] + (["bytes"] if "bytes" in names else [])
    for n in names:
        if n != "bytes":
            # a mutation of an already broken model may not apply (numpy refuses the data)
            with contextlib.suppress(ValueError, TypeError, IndexError, KeyError):
                MUTATIONS[n](model, draw)
    data = model.SerializeToString()
    if "bytes" in names:
        data = mutate_bytes(data, draw)
    command = draw(st.sampled_from(["inspect", "inspect", "check", "compile"]))
    extra = ["-t", "mesh8x8"] if command != "inspect" else []
    if command == "compile":
        extra += ["-o", "OUT", *draw(st.sampled_from(COMPILE_OPTIONS))]
    if draw(st.booleans()):
        extra += ["--batch", "1", "--seq-len", "4"]
    return Case(name, tuple(names), (command, "MODEL", *extra), data)


# a hang in C code is reported here (the per-case stderr is captured, fd 2 redirected); the
# case's model stays in its /tmp/wafer-fuzz-* directory
_REAL_STDERR = os.fdopen(os.dup(2), "w")


COMPILE_OPTIONS = [("--method", "first-fit")] * 3 + [
    ("--method", "cpsat", "--time-limit", "2"), ("--method", "first-fit", "--verify")]


class Hang(BaseException):
    """Raised by the guard's timer; a BaseException, so `main` does not turn it into exit 70."""


@contextlib.contextmanager
def guard(seconds: float) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    faulthandler.dump_traceback_later(HARD_GUARD_S, exit=True, file=_REAL_STDERR)
    try:  # the timer starts inside: however soon it fires, the finally disarms and restores
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def captured_fds(stdout: Path, stderr: Path) -> Iterator[None]:
    """Capture fds 1 and 2 (what C++ libraries print) and sys.stdout/sys.stderr (Python's
    output, wherever a test runner pointed them) into two files opened for appending."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with stdout.open("a") as out, stderr.open("a") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
        finally:
            out.flush()
            err.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_case(case: Case, guard_s: float = GUARD_S) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="wafer-fuzz-") as tmp:
        d = Path(tmp)
        (d / "model").mkdir()
        model = d / "model" / "m.onnx"
        model.write_bytes(case.data)
        if case.seed == "mlp-external":
            (d / "model" / "w.bin").write_bytes(external_blob())
        argv = ["-q", *(str(model) if a == "MODEL" else str(d / "out") if a == "OUT" else a
                        for a in case.argv)]
        code, escaped = None, ""
        t0 = time.perf_counter()
        try:
            # the files exist before the guard starts: a guard that fires at once (a loaded
            # machine, a tiny guard_s) still leaves a stderr to read
            with captured_fds(d / "stdout", d / "stderr"), guard(guard_s):
                code = main(argv)
        except Hang:
            escaped = f"hang: still running after {guard_s:g} s"
        except BaseException as exc:  # noqa: BLE001 - the very thing we look for
            escaped = f"uncaught {type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
        stderr = (d / "stderr").read_text(errors="replace")
        outcome = Outcome(case, code, stderr + escaped, seconds)
        outcome.problems = _problems(case, code, stderr, escaped, d)
        return outcome


def _problems(case: Case, code: int | None, stderr: str, escaped: str, d: Path) -> list[str]:
    if escaped:
        return [escaped]
    problems = []
    if code == ExitCode.INTERNAL:
        problems.append("internal error (exit 70)")
    elif code not in DOCUMENTED:
        problems.append(f"undocumented exit code {code}")
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    if "Traceback" in stderr:
        problems.append("traceback without -v")
    silent_failure = code == ExitCode.MISMATCH or (code == ExitCode.DOES_NOT_FIT and
                                                   case.argv[0] == "check")
    if code and not silent_failure and (len(lines) != 1 or not lines[0].startswith("error: ")):
        problems.append(f"stderr is not one `error:` line: {lines[:3]}")
    if not code and lines:
        problems.append(f"stderr noise on success: {lines[:3]}")
    if case.argv[0] == "compile" and code:
        # compile --verify writes OUT before it verifies; temporary directories never stay
        keep = {"model", "stdout", "stderr"} | ({"out"} if "--verify" in case.argv else set())
        left = sorted(p.name for p in d.iterdir() if p.name not in keep)
        if left:
            problems.append(f"failed compile left {left}")
    return problems


def _error_line(stderr: str) -> str:
    return next((ln for ln in stderr.splitlines() if ln.startswith("error: ")), "")


# --- hypothesis drivers ------------------------------------------------------------------------


def fuzz(n: int, seed: int | None, on_case: Callable[[Outcome], None],
         derandomize: bool = False) -> None:
    """Run `n` hypothesis-drawn cases; `on_case` sees each outcome (and may raise)."""

    @settings(max_examples=n, deadline=None, database=None, derandomize=derandomize,
              phases=[Phase.generate] if not derandomize else [Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        on_case(run_case(draw_case(data.draw)))

    if seed is not None and not derandomize:
        one = hypothesis.seed(seed)(one)
    one()


# --- the benchmark -----------------------------------------------------------------------------


def main_benchmark(argv: list[str] | None = None) -> int:
    from _harness import machine, table, write_section

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-gb", type=float, default=8.0,
                   help="address-space limit: a memory bomb becomes a MemoryError (exit 70)")
    args = p.parse_args(argv)
    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    fuzz(args.cases, args.seed, outcomes.append)
    total = time.perf_counter() - t0
    body = report(outcomes, args.seed, total, machine(), table)
    write_section("fuzz", body)
    print(body)
    return 1 if any(o.bug for o in outcomes) else 0


def report(outcomes: list[Outcome], seed: int, total: float, where: str, table) -> str:
    bugs = [o for o in outcomes if o.bug]
    by_mutation: dict[str, Counter] = {}
    for o in outcomes:
        for m in dict.fromkeys(o.case.mutations):
            c = by_mutation.setdefault(m, Counter())
            c["cases"] += 1
            c[_code_label(o)] += 1
            c["bugs"] += o.bug
    labels = ["0", "2", "3", "4", "5", "other"]
    rows = [[m, c["cases"], *(c[k] for k in labels), c["bugs"]]
            for m, c in sorted(by_mutation.items())]
    codes = Counter(_code_label(o) for o in outcomes)
    rows.append(["all cases", len(outcomes), *(codes[k] for k in labels), len(bugs)])
    seconds = sorted(o.seconds for o in outcomes)
    commands = Counter(o.case.argv[0] for o in outcomes)
    runs = ", ".join(f"{k} {v}" for k, v in sorted(commands.items()))
    head = (f"{len(outcomes)} hypothesis cases (seed {seed}): one to three mutations of a "
            f"micro GPT-2, LLaMA (opset 23), BERT, an MLP, the MLP with external data or two real "
            f"torch exports (GPT-2 dynamo, LLaMA TorchScript), run "
            f"through `compiler.cli.main` ({runs}) under a {GUARD_S:g} s guard. "
            f"**{len(bugs)} bug(s)** (uncaught exception, exit 70, "
            f"undocumented exit code, not one `error:` line, leftovers, hang). Per case: median "
            f"{seconds[len(seconds) // 2]:.3f} s, max {seconds[-1]:.2f} s; {total:.0f} s in all "
            f"({where}); `.venv/bin/python benchmarks/fuzz.py`.")
    parts = [head, "", "Exit codes by mutation (a case with several mutations counts under each):",
             "", table(["mutation", "cases", *(f"exit {k}" for k in labels), "bugs"], rows)]
    examples = _examples(outcomes)
    if examples:
        parts += ["", "One error message per exit code and first mutation:", "", *examples]
    parts += ["", "Bugs: " + ("none." if not bugs else "")]
    parts += [f"- {o.describe()} ({'; '.join(o.problems)})" for o in bugs[:20]]
    return "\n".join(parts)


def _code_label(o: Outcome) -> str:
    return str(o.code) if o.code in (0, 2, 3, 4, 5) else "other"


def _examples(outcomes: list[Outcome]) -> list[str]:
    seen: dict[tuple[str, str], str] = {}
    for o in outcomes:
        line = _error_line(o.stderr)
        key = (_code_label(o), o.case.mutations[0])
        if line and key not in seen and o.code != 0:
            text = re.sub(r"/\S*wafer-fuzz-\w+/", "", line)
            seen[key] = f"- exit {o.code}, {o.case.mutations[0]}: `{text[:220]}`"
    return [v for _, v in sorted(seen.items())][:24]


if __name__ == "__main__":
    sys.exit(main_benchmark())
