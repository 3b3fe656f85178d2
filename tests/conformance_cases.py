"""ONNX's own operator test cases, run through the whole wafer pipeline (tests/test_conformance.py).

`onnx.backend.test.case.node.collect_testcases` builds every node test case in memory (the wheel
ships no data directory). A case here is one (test case, data set) pair whose model is a single
node of an op in SUPPORTED_OPS. `prepare` turns it into a model the compiler can take:

- inputs that fix shapes or act as attributes (Reshape's shape, Slice's starts, ReduceSum's
  axes, Dropout's ratio, CastLike's type carrier ...) become initializers holding the case's
  data: wafer compiles static shapes, so such inputs must be constants of the model;
- every other input stays a graph input fed with the case's data at run time.

`run_whole` compiles with `compile_model` (first-fit placement: one-op models need no solver)
and runs `run_schedule`. `run_split` forces a region of rows x cols cores for every layer and
puts identity-MatMul preludes in front of the op so that its inputs arrive split across cores
(graph inputs are whole on every core, and a tiny one-op model fits one core, so neither the
placer nor the layouts would ever split them): the op's layout rule, its collectives and its
kernel then run on ragged tiles. The preludes are exact (x @ I in fp32, ints via a float cast).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.driver import CompileOptions, SolverOptions, compile_model
from compiler.executor import run_schedule
from compiler.executor.run import host_constants
from compiler.frontend import DimRequest, FrontendOptions, load_model
from compiler.frontend.ops import SUPPORTED_OPS
from compiler.placement import place
from compiler.schedule.build import build_schedule
from compiler.target import load_target
from compiler.tiling.candidates import tile_graph, to_problem

# (op, input index) that must be constants for static shapes, or that are attributes in
# all but name.
CONST_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Slice": (1, 2, 3, 4), "Tile": (1,), "Split": (1,),
    "Unsqueeze": (1,), "Squeeze": (1,), "ReduceSum": (1,), "ReduceMean": (1,),
    "ReduceMax": (1,), "Range": (0, 1, 2), "ConstantOfShape": (0,), "Trilu": (1,),
    "Dropout": (1, 2), "CastLike": (1,),
    "TopK": (1,), "OneHot": (1,),  # k and depth: output shapes (mixture-of-experts routing)
    "CumSum": (1,),  # issue 15 (h-real)
}

# Tolerances per expected dtype: fp32 as the brief says; fp16/bf16 expectations were computed
# in that precision while wafer computes in fp32, so they differ by that format's rounding.
TOLERANCE = {"float32": (1e-4, 1e-3), "float64": (1e-4, 1e-3), "float16": (2e-3, 2e-3),
             "bfloat16": (2e-2, 2e-2)}
EXACT_OPS = frozenset({"Cast", "CastLike"})  # a cast must land on the exact value


@dataclass(frozen=True)
class Case:
    name: str  # ONNX test name, with "#k" for data set k > 0
    op: str
    opset: int
    model: onnx.ModelProto
    inputs: tuple[np.ndarray, ...]
    outputs: tuple[np.ndarray, ...]

    @property
    def id(self) -> str:
        return f"{self.op}/{self.name}"


def to_array(x) -> np.ndarray:
    return numpy_helper.to_array(x) if isinstance(x, TensorProto) else np.asarray(x)


@functools.cache
def _collected() -> tuple:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators divide by zero on purpose
        return tuple(collect_testcases(None))


def _cases(keep) -> tuple[Case, ...]:
    out = []
    for c in _collected():
        op = keep(c)
        if op is None:
            continue
        opset = next((o.version for o in c.model.opset_import if o.domain in ("", "ai.onnx")),
                     0)
        for k, (ins, outs) in enumerate(c.data_sets):
            name = c.name[len("test_"):] + (f"#{k}" if k else "")
            out.append(Case(name, op, opset, c.model, tuple(to_array(x) for x in ins),
                            tuple(to_array(x) for x in outs)))
    return tuple(out)


@functools.cache
def all_cases() -> tuple[Case, ...]:
    """Every data set of every single-node test case of a supported op (not the `_expanded`
    function-body variants, which are multi-op graphs)."""

    def keep(c) -> str | None:
        nodes = c.model.graph.node
        if len(nodes) != 1 or nodes[0].op_type not in SUPPORTED_OPS or "expanded" in c.name:
            return None
        return nodes[0].op_type

    return _cases(keep)


EXPANDED = "(expanded)"


@functools.cache
def expanded_cases() -> tuple[Case, ...]:
    """The `_expanded` cases (an op's function body inlined: a small multi-op graph) whose
    every op is supported: op combinations, with ONNX's expected outputs."""

    def keep(c) -> str | None:
        ops = {n.op_type for n in c.model.graph.node}
        subgraphs = any(a.g.node or a.graphs for n in c.model.graph.node for a in n.attribute)
        ok = "expanded" in c.name and ops <= SUPPORTED_OPS and not subgraphs
        return EXPANDED if ok else None

    return _cases(keep)


def prepare(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(model, feed, expected outputs): graph inputs used only as constant-like inputs
    (CONST_INPUTS) are baked in as initializers."""
    m = onnx.ModelProto()
    m.CopyFrom(case.model)
    slots = [(name, i in CONST_INPUTS.get(node.op_type, ())) for node in m.graph.node
             for i, name in enumerate(node.input)]
    consts = {n for n, const in slots if const} - {n for n, const in slots if not const}
    feed, keep = {}, []
    for vi, value in zip(m.graph.input, case.inputs, strict=False):
        if vi.name in consts:
            m.graph.initializer.append(numpy_helper.from_array(value, vi.name))
        else:
            keep.append(vi)
            feed[vi.name] = value
    del m.graph.input[:]
    m.graph.input.extend(keep)
    expected = dict(zip([o.name for o in m.graph.output], case.outputs, strict=False))
    return m, feed, expected


def _bind(feed: Mapping[str, np.ndarray]) -> FrontendOptions:
    shapes = tuple((n, tuple(int(d) for d in v.shape)) for n, v in feed.items())
    return FrontendOptions(DimRequest(input_shapes=shapes))


def run_whole(case: Case, target: str, tmp: Path) -> tuple[dict[str, np.ndarray], object]:
    """compile_model + run_schedule; outputs folded to constants come from the pipeline's own
    host evaluation of the constant (the value the schedule would load)."""
    model, feed, _ = prepare(case)
    path = tmp / f"{case.op}.onnx"
    onnx.save(model, path)
    r = compile_model(path, target, CompileOptions(frontend=_bind(feed),
                                                   solver=SolverOptions(method="first-fit")))
    got = run_schedule(r.schedule, r.graph, r.target, feed)
    return _outputs(r.graph, r.target, got.outputs), r


def _outputs(graph, target, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(outputs)
    missing = [n for n in graph.outputs if n not in out]
    if missing:
        host = host_constants(graph, target, "fp32")
        out.update({n: host[n] for n in missing if n in host})
    return out


# --- split inputs across cores ------------------------------------------------------------------


# which dim of every run-time input is split over which mesh axis; "+" chains two splits
PLANS = ("last:c", "last:r", "0:c", "1:r", "0:r+last:c")


def split_prelude(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], plan: str
                  ) -> onnx.ModelProto:
    """Put exact identity MatMuls in front of the op's run-time inputs so that they arrive
    split. A plan "dim:axis" splits that dim ("last" or an index) over mesh rows ("r") or
    columns ("c"): a MatMul by a constant splits its output's last dim over the axis its K
    does not use (c), a second one flips it (r); Transposes bring the dim last and back.
    "0:r+last:c" does one after the other (rows split one way, columns the other).
    Inputs with non-finite values (0 * inf is nan) or too small a dim are left whole."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    pre: list[onnx.NodeProto] = []
    renamed = {}
    for name, value in feed.items():
        if value.ndim == 0 or not _finite(value):
            continue
        cur = name
        for part in plan.split("+"):
            where, axis = part.split(":")
            dim = value.ndim - 1 if where == "last" else int(where)
            if dim < value.ndim and value.shape[dim] >= 2:
                cur = _prelude(m, pre, cur, value, dim, axis)
        renamed[name] = cur
    for node in m.graph.node:
        for i, inp in enumerate(node.input):
            node.input[i] = renamed.get(inp, inp)
    nodes = [*pre, *m.graph.node]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def _finite(value: np.ndarray) -> bool:
    """x @ I is exact only for finite x (0 * inf is nan); strings never go through it."""
    try:
        return bool(np.all(np.isfinite(value.astype(np.float64))))
    except (TypeError, ValueError):
        return False


def _prelude(m: onnx.ModelProto, pre: list, name: str, value: np.ndarray, dim: int,
             axis: str) -> str:
    cur, rank = name, value.ndim
    is_float = value.dtype in (np.float32, np.float64)
    tag = f"{name.split('__split')[0]}__split{len(pre)}_"

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = f"{tag}{len(pre)}"
        pre.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    if not is_float:  # ints, bools, fp16, bf16: exact through float32
        cur = node("Cast", [cur], to=TensorProto.FLOAT)
    if rank == 1:  # a vector: as a [1, n] matrix through the MatMul, and back
        for shape in ((1, value.shape[0]), (value.shape[0],)):
            m.graph.initializer.append(numpy_helper.from_array(
                np.asarray(shape, np.int64), f"{tag}_shape{len(shape)}"))
        cur = node("Reshape", [cur, f"{tag}_shape2"])
    perm = None
    if dim != rank - 1:
        perm = [d for d in range(rank) if d != dim] + [dim]
        cur = node("Transpose", [cur], perm=perm)
    eye = f"{tag}_eye"
    m.graph.initializer.append(numpy_helper.from_array(
        np.eye(value.shape[dim], dtype=value.dtype if is_float else np.float32), eye))
    for _ in range(2 if axis == "r" else 1):
        cur = node("MatMul", [cur, eye])
    if perm is not None:
        cur = node("Transpose", [cur], perm=[int(p) for p in np.argsort(perm)])
    if rank == 1:
        cur = node("Reshape", [cur, f"{tag}_shape1"])
    if not is_float:
        cur = node("Cast", [cur], to=helper.np_dtype_to_tensor_dtype(value.dtype))
    return cur


def run_split(case: Case, target: str, rows: int, cols: int, plan: str, tmp: Path
              ) -> tuple[dict[str, np.ndarray], object, object]:
    """The pipeline stage by stage (as compile_model runs it) with every layer forced onto
    rows x cols cores; returns (outputs, graph, schedule)."""
    model, feed, _ = prepare(case)
    model = split_prelude(model, feed, plan)
    path = tmp / f"{case.op}-split.onnx"
    onnx.save(model, path)
    tgt = load_target(target)
    graph = load_model(path, _bind(feed))
    tiled = tile_graph(graph, tgt)
    forced = tuple(dataclasses.replace(lt, candidates=(dataclasses.replace(
        lt.candidates[0], rows=rows, cols=cols),)) for lt in tiled.layers)
    tiled = dataclasses.replace(tiled, layers=forced)
    problem = to_problem(tiled, tgt)
    placement = place(problem, "first-fit")
    schedule = build_schedule(graph, tiled, problem, placement, tgt)
    got = run_schedule(schedule, graph, tgt, feed)
    return _outputs(graph, tgt, got.outputs), graph, schedule


# --- comparing ----------------------------------------------------------------------------------


def mismatches(case: Case, got: Mapping[str, np.ndarray]) -> list[str]:
    """One line per output that differs from the case's expectation."""
    _, _, expected = prepare(case)
    bad = []
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            bad.append(f"{name}: not produced")
            continue
        have = np.asarray(have)
        dtype = str(want.dtype)
        if have.shape != want.shape:
            bad.append(f"{name}: shape {have.shape}, expected {want.shape}")
        elif dtype in TOLERANCE and case.op not in EXACT_OPS:
            atol, rtol = TOLERANCE[dtype]
            w, h = want.astype(np.float64), have.astype(np.float64)
            if not np.allclose(h, w, atol=atol, rtol=rtol, equal_nan=True):
                err = np.nanmax(np.where(np.isnan(w) & np.isnan(h), 0, np.abs(h - w)))
                bad.append(f"{name}: max abs error {err:.3g} (atol {atol}, rtol {rtol})")
        else:
            w = want.astype(np.float32) if dtype == "bfloat16" else want
            if not np.array_equal(have.astype(w.dtype), w, equal_nan=w.dtype.kind == "f"):
                wrong = int(np.sum(have.astype(w.dtype) != w))
                bad.append(f"{name}: {wrong} of {w.size} elements differ ({dtype})")
    return bad
