"""com.microsoft QLinearSigmoid and QLinearConcat (onnxruntime's QOperator form of a SiLU's
Sigmoid and of a rotary Concat) bit-exact against ONNX Runtime, one single-node model per case
(the helpers of tests/test_kernels_quant.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from test_kernels_quant import MS, _ort, _ours, _same

RNG = np.random.default_rng(7)
TYPES = [(np.uint8, 0, 255), (np.int8, -128, 127)]


@pytest.mark.parametrize("dtype,lo,hi", TYPES, ids=["uint8", "int8"])
@pytest.mark.parametrize("trial", range(4))
def test_qlinear_sigmoid_every_input_value(dtype, lo, hi, trial):
    """All 256 values of x, random scales and zero points: the same table as ORT's."""
    x = np.arange(lo, hi + 1).astype(dtype).reshape(16, 16)
    consts = {"xs": np.array(RNG.uniform(0.005, 0.2), np.float32),
              "xz": np.array(RNG.integers(lo, hi), dtype),
              "ys": np.array(RNG.uniform(1 / 260, 1 / 120), np.float32),
              "yz": np.array(lo if dtype == np.uint8 else RNG.integers(lo, 0), dtype)}
    node = helper.make_node("QLinearSigmoid", ["x", *consts], ["y"], domain=MS)
    theirs = _ort(node, {"x": x}, consts, 17)[0]
    _same(_ours("QLinearSigmoid", node, [x, *consts.values()])[0], theirs)
    assert len(np.unique(theirs)) > 20  # the table spans many output levels


@pytest.mark.parametrize("dtype,lo,hi", TYPES, ids=["uint8", "int8"])
@pytest.mark.parametrize("axis", [-1, 1])
def test_qlinear_concat_copies_or_requantizes_each_input(dtype, lo, hi, axis):
    """Input a has y's scale and zero point (copied); b and c have others (requantized, c
    saturating at both ends)."""
    a, b, c = (RNG.integers(lo, hi + 1, (2, 3, w)).astype(dtype) for w in (4, 5, 3))
    c[..., 0], c[..., -1] = lo, hi
    ys, yz = np.array(0.05, np.float32), np.array((lo + hi) // 2 + 3, dtype)
    consts = {"ys": ys, "yz": yz, "as": ys, "az": yz,
              "bs": np.array(0.0371, np.float32), "bz": np.array((lo + hi) // 2 - 7, dtype),
              "cs": np.array(0.4, np.float32), "cz": np.array(lo + 20, dtype)}
    if axis == 1:
        a, b, c = (np.swapaxes(t, 1, 2).copy() for t in (a, b, c))
    names = ["ys", "yz", "a", "as", "az", "b", "bs", "bz", "c", "cs", "cz"]
    node = helper.make_node("QLinearConcat", names, ["y"], domain=MS, axis=axis)
    theirs = _ort(node, {"a": a, "b": b, "c": c}, consts, 17)[0]
    arrays = {"a": a, "b": b, "c": c, **consts}
    _same(_ours("QLinearConcat", node, [arrays[n] for n in names])[0], theirs)
    assert theirs.min() == lo and theirs.max() == hi  # c saturates both ways
