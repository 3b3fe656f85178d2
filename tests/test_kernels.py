"""compiler/executor/kernels.py, kernel by kernel: the view ops run in place (reshape, transpose or
pass through), and Cast gives the numpy type ONNX does. Every kernel against ONNX's own operator
cases, through the whole pipeline: test_conformance.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler import vocab
from compiler.executor import kernels
from compiler.vocab import DataType


def test_view_ops_are_the_executors_in_place_kernels():
    """The executor runs every view (the ops that may alias memory) with a kernel that only
    reshapes, transposes or passes its tile through; its reshape kernel serves exactly the
    reshapes."""
    assert {k for k, fn in kernels.KERNELS.items() if fn is kernels.reshape} == vocab.RESHAPE_OPS
    assert set(kernels.KERNELS) >= vocab.VIEW_OPS
    x = np.arange(24, dtype=np.float32).reshape(1, 1, 2, 3, 4)
    for kind in vocab.VIEW_OPS - vocab.RESHAPE_OPS:
        op = type("Op", (), {"kind": kind, "attr": lambda self, k, d=None: None})()
        operand = kernels.Operand(x, (None, None, None), (2, 3, 4))
        out = kernels.KERNELS[kind](op, [operand], [((2, 3, 4), (None, None, None))],
                                    kernels.Ctx(1, 1))
        assert sorted(np.asarray(out[0]).ravel()) == sorted(x.ravel())


@pytest.mark.parametrize("to", sorted(kernels.ONNX_DTYPES))
def test_cast_gives_onnxs_numpy_type(to):
    x = np.array([1.5, -2.0, 0.0], dtype=np.float32)
    want = np.float32 if to == DataType.BFLOAT16 else onnx.helper.tensor_dtype_to_np_dtype(to)
    assert kernels._cast(x, int(to)).dtype == want
