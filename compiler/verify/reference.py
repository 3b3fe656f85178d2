"""The reference run: ONNX Runtime on the original model. The only module that imports
onnxruntime. ORT runs on the CPU provider with graph optimizations disabled (its fusions change
numerics) and one or two intra-op threads."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ml_dtypes import bfloat16 as BFLOAT16

from compiler.errors import WaferError
from compiler.frontend.export import reference_model_bytes
from compiler.verify.inputs import InputsError


class ReferenceRunError(WaferError):
    """ONNX Runtime could not load or run the original model."""


def run_reference(source: str | Path, inputs: Mapping[str, np.ndarray],
                  extra_outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """ONNX Runtime on the original model: its outputs and those of `extra_outputs` that the
    source graph computes, by name."""
    session = _session(reference_model_bytes(source, extra_outputs), str(source))
    inputs = _widened({**empty_pasts(session, inputs), **inputs})
    missing = [i.name for i in session.get_inputs() if i.name not in inputs]
    if missing:
        raise InputsError(f"{source}: no value for input(s) {', '.join(missing)}")
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    try:
        values = session.run(names, feed)
    except Exception as exc:  # ORT raises its own pybind types
        msg = f"ONNX Runtime failed to run {source}: {_first_line(exc)}"
        raise ReferenceRunError(msg) from None
    return dict(zip(names, values, strict=True))


def _widened(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bfloat16 inputs as float32 (exactly): the reference model holds bfloat16 as float32
    (frontend/upcast.py), ORT's Python API takes no bfloat16 arrays (issue 15)."""
    return {k: v.astype(np.float32) if v.dtype == BFLOAT16 else v for k, v in inputs.items()}


def empty_pasts(session: ort.InferenceSession,
                inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A with-past export's past inputs at past length 0 (the graph the compiler takes): every
    dynamic dim but the batch (the other inputs') is the past axis."""
    from compiler.frontend.past import is_past

    batch = next((np.shape(v)[0] for v in inputs.values() if np.ndim(v)), 1)
    out = {}
    for i in session.get_inputs():
        if i.name not in inputs and is_past(i.name):
            shape = [d if isinstance(d, int) else (batch if k == 0 else 0)
                     for k, d in enumerate(i.shape)]
            out[i.name] = np.zeros(shape, ORT_TYPES.get(i.type, np.float32))
    return out


ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _session(model: bytes, name: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = min(2, os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # fatal only: ORT's errors come back as exceptions (one line)
    try:
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ReferenceRunError(f"ONNX Runtime cannot load {name}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

