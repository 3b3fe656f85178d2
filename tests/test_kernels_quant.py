"""compiler/executor/kernels_quant.py bit-exact against ONNX Runtime: each kernel on random
inputs and on the edge cases of integer arithmetic (ties rounded half to even, saturation at
both ends, zero points, int32 accumulation), one single-node model per case run by ORT."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from compiler import ir
from compiler.executor import kernels_quant as kq
from compiler.executor.kernels import KERNELS, Ctx, Operand
from compiler.frontend.convert import held

RNG = np.random.default_rng(0)
MS = "com.microsoft"


WIDE = {TensorProto.INT4: (ml_dtypes.int4, np.int8), TensorProto.UINT4: (ml_dtypes.uint4, np.uint8),
        TensorProto.FLOAT8E4M3FN: (ml_dtypes.float8_e4m3fn, np.float32),
        TensorProto.FLOAT8E5M2: (ml_dtypes.float8_e5m2, np.float32)}


def _ort(node: onnx.NodeProto, feeds: dict[str, np.ndarray], consts: dict[str, np.ndarray],
         opset: int, out_type: int | None = None) -> list[np.ndarray]:
    """Run one node in ORT; `consts` become initializers (ml_dtypes arrays keep their type).
    ORT's Python API cannot return 4-bit or float8 tensors: an output of `out_type` among
    those is read through DequantizeLinear with scale 1 and zero point 0 (exact)."""
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                            v.shape) for k, v in feeds.items()]
    nodes, outs = [node], list(node.output)
    if out_type in WIDE:
        consts = {**consts, "_one": np.array(1, np.float32),
                  "_zero": np.array(0, WIDE[out_type][0])}
        nodes.append(helper.make_node("DequantizeLinear", [outs[0], "_one", "_zero"], ["_w"]))
        outs = ["_w"]
    outputs = [helper.make_value_info(o, onnx.TypeProto()) for o in outs]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(MS, 1)]
                                                  if node.domain == MS else [])
    model = helper.make_model(graph, opset_imports=imports, ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = [held(np.asarray(r)) for r in sess.run(None, feeds)]
    return [got[0].astype(WIDE[out_type][1])] if out_type in WIDE else got


def _ours(kind: str, node: onnx.NodeProto, arrays: list[np.ndarray | None],
          attrs: tuple = ()) -> list[np.ndarray]:
    """Run our kernel on whole tensors (one core), as the executor calls it."""
    given = tuple((a.name, helper.get_attribute_value(a)) for a in node.attribute)
    op = ir.Op("n", kind, tuple(node.input), tuple(node.output), given + attrs)
    ins = [None if a is None else Operand(held(a)[None, None], (None,) * a.ndim, a.shape,
                                          held(a)) for a in arrays]
    return [np.asarray(r)[0, 0] for r in KERNELS[kind](op, ins, [], Ctx(1, 1))]


def _same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)  # NaN equals NaN here


def _edges(scale: float, n: int = 64) -> np.ndarray:
    """Ties (k + 0.5 steps, both signs), values far past both ends, zeros, random."""
    ties = (np.arange(-6, 6) + 0.5) * scale
    far = np.array([-1e6, 1e6, -300 * scale, 300 * scale, 0.0, -0.0])
    rand = RNG.normal(0, 40 * scale, n)
    return np.concatenate([ties, far, rand]).astype(np.float32)


# --- QuantizeLinear / DequantizeLinear ---------------------------------------------------------

INT_TYPES = [  # (ONNX type, numpy/ml_dtypes type for the zero point, a zero point, opset)
    (TensorProto.INT8, np.int8, -3, 13), (TensorProto.UINT8, np.uint8, 130, 13),
    (TensorProto.INT4, ml_dtypes.int4, 1, 21), (TensorProto.UINT4, ml_dtypes.uint4, 9, 21),
]


@pytest.mark.parametrize("onnx_type,zp_type,zp,opset", INT_TYPES,
                         ids=["int8", "uint8", "int4", "uint4"])
def test_quantize_per_tensor_rounds_ties_to_even_and_saturates(onnx_type, zp_type, zp, opset):
    x = _edges(0.25)
    consts = {"s": np.array(0.25, np.float32), "z": np.array(zp, zp_type)}
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    theirs = _ort(node, {"x": x}, consts, opset, onnx_type)[0]
    ours = _ours("QuantizeLinear", node, [x, consts["s"], consts["z"]],
                 (("output_dtype", onnx_type),))[0]
    _same(ours, theirs)
    assert theirs.min() < 0 if zp_type in (np.int8, ml_dtypes.int4) else theirs.min() == 0


@pytest.mark.parametrize("onnx_type,zp_type,zp,opset", INT_TYPES,
                         ids=["int8", "uint8", "int4", "uint4"])
def test_quantize_and_dequantize_per_axis(onnx_type, zp_type, zp, opset):
    x = RNG.normal(0, 3, (4, 5, 6)).astype(np.float32)
    scale = RNG.uniform(0.01, 0.5, 5).astype(np.float32)
    zps = np.full(5, zp, zp_type)
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1)
    consts = {"s": scale, "z": zps}
    theirs = _ort(q, {"x": x}, consts, opset, onnx_type)[0]
    _same(_ours("QuantizeLinear", q, [x, scale, zps], (("output_dtype", onnx_type),))[0],
          theirs)
    stored = theirs.astype(zp_type)
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)
    back = _ort(dq, {}, {"q": stored, "s": scale, "z": zps}, opset)[0]
    _same(_ours("DequantizeLinear", dq, [stored, scale, zps])[0], back)


@pytest.mark.parametrize("onnx_type,np_type", [
    (TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn),
    (TensorProto.FLOAT8E5M2, ml_dtypes.float8_e5m2)], ids=["e4m3fn", "e5m2"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_float8_quantize_rounds_to_nearest_even_and_saturates(onnx_type, np_type, saturate):
    x = np.concatenate([_edges(0.5), [np.inf, -np.inf, 1e30]]).astype(np.float32)
    consts = {"s": np.array(0.5, np.float32), "z": np.array(0, np_type)}
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], saturate=saturate)
    theirs = _ort(node, {"x": x}, consts, 21, onnx_type)[0]
    ours = _ours("QuantizeLinear", node, [x, consts["s"], consts["z"]],
                 (("output_dtype", onnx_type),))[0]
    _same(ours, theirs)
    dq = helper.make_node("DequantizeLinear", ["q", "s"], ["y"])
    stored = theirs.astype(np_type)
    back = _ort(dq, {}, {"q": stored, "s": consts["s"]}, 21)[0]
    _same(_ours("DequantizeLinear", dq, [stored, consts["s"]])[0], back)


# --- the dynamic form ---------------------------------------------------------------------------


@pytest.mark.parametrize("x", [
    RNG.normal(0, 2, (3, 7, 8)).astype(np.float32),
    np.zeros((2, 5), np.float32),  # scale 1
    RNG.uniform(0.5, 4.0, (4, 9)).astype(np.float32),  # all positive: the range takes in 0
    -RNG.uniform(0.5, 4.0, (4, 9)).astype(np.float32),
], ids=["random", "zeros", "positive", "negative"])
def test_dynamic_quantize_linear(x):
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    theirs = _ort(node, {"x": x}, {}, 13)
    for ours, t in zip(_ours("DynamicQuantizeLinear", node, [x]), theirs, strict=True):
        _same(np.asarray(ours).reshape(t.shape).astype(t.dtype, copy=False)
              if ours.ndim != t.ndim else ours, t)


@pytest.mark.parametrize("a_type,b_type", [(np.uint8, np.int8), (np.uint8, np.uint8),
                                           (np.int8, np.int8)])
@pytest.mark.parametrize("per_column", [False, True])
def test_matmul_integer_accumulates_in_int32(a_type, b_type, per_column):
    lo_a, hi_a = np.iinfo(a_type).min, np.iinfo(a_type).max
    lo_b, hi_b = np.iinfo(b_type).min, np.iinfo(b_type).max
    a = RNG.integers(lo_a, hi_a + 1, (2, 5, 300)).astype(a_type)  # K = 300: big sums
    a[0, 0, :] = hi_a
    b = RNG.integers(lo_b, hi_b + 1, (300, 7)).astype(b_type)
    b[:, 0] = lo_b
    a_zp = np.array(7, a_type)
    b_zp = (RNG.integers(lo_b, hi_b + 1, 7).astype(b_type) if per_column
            else np.array(3, b_type))
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    theirs = _ort(node, {"a": a}, {"b": b, "az": a_zp, "bz": b_zp}, 13)[0]
    _same(_ours("MatMulInteger", node, [a, b, a_zp, b_zp])[0], theirs)


# --- QOperator matmuls --------------------------------------------------------------------------


def _q_operands(a_type, b_type, y_type, per_column: bool):
    a = RNG.integers(np.iinfo(a_type).min, np.iinfo(a_type).max + 1, (2, 6, 40)).astype(a_type)
    b = RNG.integers(np.iinfo(b_type).min, np.iinfo(b_type).max + 1, (40, 9)).astype(b_type)
    b_scale = (RNG.uniform(0.001, 0.02, 9) if per_column else np.array(0.01)).astype(np.float32)
    b_zp = np.full(b_scale.shape, 128 if b_type is np.uint8 else 0, b_type)  # both signs
    return {"a": a, "as": np.array(0.05, np.float32), "az": np.array(5, a_type),
            "b": b, "bs": b_scale, "bz": b_zp,
            "ys": np.array(0.07, np.float32), "yz": np.array(11, y_type)}


@pytest.mark.parametrize("a_type,b_type", [(np.uint8, np.int8), (np.int8, np.int8),
                                           (np.uint8, np.uint8)])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("y_scale", [0.07, 3.0])  # small: saturates at both ends
def test_qlinear_matmul_requantizes_like_mlas(a_type, b_type, per_column, y_scale):
    v = _q_operands(a_type, b_type, a_type, per_column)
    v["ys"] = np.array(y_scale, np.float32)
    names = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
    node = helper.make_node("QLinearMatMul", names, ["y"])
    theirs = _ort(node, {"a": v["a"]}, {k: v[k] for k in names[1:]}, 13)[0]
    _same(_ours("QLinearMatMul", node, [v[k] for k in names])[0], theirs)
    if y_scale < 1:
        info = np.iinfo(a_type)
        assert info.min in theirs and info.max in theirs


@pytest.mark.parametrize("quantized_output", [True, False])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_qgemm(quantized_output, trans_b):
    v = _q_operands(np.uint8, np.int8, np.uint8, per_column=False)
    a = v["a"][0]
    b = v["b"].T.copy() if trans_b else v["b"]
    c = RNG.integers(-5000, 5000, 9).astype(np.int32)
    names = ["a", "as", "az", "b", "bs", "bz", "c"] + (["ys", "yz"] if quantized_output else [])
    vals = {**v, "a": a, "b": b, "c": c}
    node = helper.make_node("QGemm", names, ["y"], domain=MS, transB=trans_b, alpha=0.5)
    theirs = _ort(node, {"a": a}, {k: vals[k] for k in names[1:]}, 13)[0]
    _same(_ours("QGemm", node, [vals[k] for k in names])[0], theirs)


def test_quantize_helpers_are_the_kernels_arithmetic():
    """quantize and requantize agree on the same value: one rule for rounding and clamping."""
    x = np.array([2.5, 3.5, -2.5, 1e9, -1e9], np.float32)
    q = kq.quantize(x, np.float32(1), np.int8(0), TensorProto.INT8)
    r = kq.requantize(np.array([5, 7, -5, 10**9, -10**9], np.int32), np.float32(0.5),
                      np.int8(0), np.int8)
    assert q.tolist() == r.tolist() == [2, 4, -2, 127, -128]


@pytest.mark.parametrize("onnx_type,zp_type", [(TensorProto.INT4, ml_dtypes.int4),
                                                (TensorProto.INT8, np.int8)], ids=["int4", "int8"])
def test_dequantize_per_block(onnx_type, zp_type):
    """Blocked quantization (opset 21 block_size): one scale per block of 4 along axis 0, the
    last block short (10 = 4 + 4 + 2)."""
    lo, hi = (-8, 7) if onnx_type == TensorProto.INT4 else (-128, 127)
    q = RNG.integers(lo, hi + 1, (10, 6)).astype(zp_type)
    scale = RNG.uniform(0.01, 0.5, (3, 6)).astype(np.float32)
    zps = RNG.integers(lo, hi + 1, (3, 6)).astype(zp_type)
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0, block_size=4)
    theirs = _ort(node, {}, {"q": q, "s": scale, "z": zps}, 21)[0]
    _same(_ours("DequantizeLinear", node, [q, scale, zps])[0], theirs)


# --- com.microsoft QLinearAdd, QLinearMul, QLinearSoftmax (quantize_static's QOperator form) --

QL_SHAPES = [((256, 256), (256, 256)),  # same shape: MLAS's two-span path
             ((256, 256), (256, 1)),  # B one value per span of A (folded into the fixed part)
             ((1, 256), (256, 256)),  # A broadcast along rows: both run along the span
             ((256, 1), (1, 256)),  # A one value per span
             ((256, 256), ())]  # B a scalar


def _all_pairs(dtype, shape_a, shape_b) -> tuple[np.ndarray, np.ndarray]:
    """Every (a, b) pair of 8-bit values where both have 256 x 256 elements."""
    info = np.iinfo(dtype)
    values = np.arange(info.min, info.max + 1).astype(dtype)
    a = np.repeat(values, 256).reshape(256, 256)
    b = np.tile(values, 256).reshape(256, 256)
    cut = {(256, 256): lambda x: x, (256, 1): lambda x: x[:, :1], (1, 256): lambda x: x[:1],
           (): lambda x: x[0, 7]}
    return (np.ascontiguousarray(cut[shape_a](a)), np.ascontiguousarray(cut[shape_b](b)))


def _ql_scales(dtype, case: int) -> dict[str, np.ndarray]:
    """Random scales and zero points; case 0: c_scale = 2 a_scale = 2 b_scale, so half the
    sums fall on .5 exactly (ties); case 1: zero points at the type's ends."""
    rng = np.random.default_rng(case)
    info = np.iinfo(dtype)
    sa, sb, sc = rng.uniform(0.002, 0.2, 3).astype(np.float32)
    za, zb, zc = rng.integers(info.min, info.max + 1, 3)
    if case == 0:
        sb, sc = sa, np.float32(2 * sa)
    if case == 1:
        za, zb, zc = info.min, info.max, info.min
    return {"as": np.array(sa), "az": np.array(za, dtype), "bs": np.array(sb),
            "bz": np.array(zb, dtype), "cs": np.array(sc), "cz": np.array(zc, dtype)}


@pytest.mark.parametrize("kind", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize(("shape_a", "shape_b"), QL_SHAPES)
@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_qlinear_add_and_mul_every_pair_bit_exact(kind, dtype, shape_a, shape_b, case):
    """All 65,536 input pairs, ties and saturation at both ends included, per broadcast form
    (ORT hands MLAS a per-span scalar side differently from two spans)."""
    a, b = _all_pairs(dtype, shape_a, shape_b)
    consts = _ql_scales(dtype, case)
    node = helper.make_node(kind, ["a", "as", "az", "b", "bs", "bz", "cs", "cz"], ["y"],
                            domain=MS)
    (theirs,) = _ort(node, {"a": a, "b": b}, consts, 17)
    c = consts
    (ours,) = _ours(kind, node, [a, c["as"], c["az"], b, c["bs"], c["bz"], c["cs"], c["cz"]])
    _same(ours, theirs)


SOFTMAX_FORMS = [  # (opset attribute, axis attribute or None, shape)
    (13, None, (2, 3, 40)), (13, 1, (2, 7, 5)), (13, 0, (6, 4)),
    (12, None, (3, 4, 5)), (12, 1, (2, 3, 4)), (12, 2, (2, 3, 8)), (11, 0, (3, 5))]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize(("opset_attr", "axis", "shape"), SOFTMAX_FORMS)
@pytest.mark.parametrize("case", range(6))
def test_qlinear_softmax_bit_exact(dtype, opset_attr, axis, shape, case):
    """ORT's table softmax: `opset` < 13 normalizes from `axis` to the end (the 2-D coercion),
    13 on over `axis` alone; axis defaults to -1 either way. Cases: rows all at the maximum,
    rows near the minimum, random, y_scale 1/256 (ties), y zero points that saturate."""
    rng = np.random.default_rng(case)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    if case == 0:
        x[...] = info.max
    if case == 1:
        x = rng.integers(info.min, info.min + 3, shape).astype(dtype)
    y_scale = np.float32(1 / 256) if case % 2 else np.float32(rng.uniform(0.002, 0.02))
    y_zp = info.min if case < 4 else rng.integers(info.min, info.max + 1)
    consts = {"xs": np.array(rng.uniform(0.01, 0.3), np.float32),
              "xz": np.array(rng.integers(info.min, info.max + 1), dtype),
              "ys": np.array(y_scale), "yz": np.array(y_zp, dtype)}
    attrs = {"opset": opset_attr, **({"axis": axis} if axis is not None else {})}
    node = helper.make_node("QLinearSoftmax", ["x", "xs", "xz", "ys", "yz"], ["y"], domain=MS,
                            **attrs)
    (theirs,) = _ort(node, {"x": x}, consts, 17)
    c = consts
    (ours,) = _ours("QLinearSoftmax", node, [x, c["xs"], c["xz"], c["ys"], c["yz"]])
    _same(ours, theirs)


def test_qlinear_softmax_normalizes_over_the_dims_its_opset_says():
    op = ir.Op("s", "QLinearSoftmax", ("x",), ("y",), (("opset", 12), ("axis", 1)))
    assert kq.softmax_axes(op, 4) == (1, 2, 3)
    op = ir.Op("s", "QLinearSoftmax", ("x",), ("y",), (("opset", 13), ("axis", 1)))
    assert kq.softmax_axes(op, 4) == (1,)
    assert kq.softmax_axes(ir.Op("s", "QLinearSoftmax", ("x",), ("y",), (("opset", 12),)),
                           4) == (3,)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_qlinear_concat_requantizes_through_orts_table(dtype, axis):
    """Inputs with Y's scale and zero point are copied, the others requantized; every 8-bit
    value of each input appears (rows of 256)."""
    info = np.iinfo(dtype)
    values = np.arange(info.min, info.max + 1).astype(dtype)
    xs = [np.ascontiguousarray(np.stack([values, values[::-1]])) for _ in range(3)]
    xs = [x.reshape(2, 256) if axis != 0 else x for x in xs]
    rng = np.random.default_rng(axis + 5)
    consts = {"ys": np.array(0.05, np.float32), "yz": np.array(info.min + 100, dtype),
              "s0": np.array(0.05, np.float32), "z0": np.array(info.min + 100, dtype),
              "s1": np.array(rng.uniform(0.01, 0.2), np.float32),
              "z1": np.array(rng.integers(info.min, info.max + 1), dtype),
              "s2": np.array(0.025, np.float32), "z2": np.array(info.min + 3, dtype)}
    names = ["ys", "yz", "x0", "s0", "z0", "x1", "s1", "z1", "x2", "s2", "z2"]
    node = helper.make_node("QLinearConcat", names, ["y"], domain=MS, axis=axis)
    feeds = {f"x{i}": x for i, x in enumerate(xs)}
    (theirs,) = _ort(node, feeds, consts, 17)
    arrays = [feeds[n] if n in feeds else consts[n] for n in names]
    (ours,) = _ours("QLinearConcat", node, arrays)
    _same(ours, theirs)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("case", range(8))
def test_qlinear_sigmoid_table_bit_exact(dtype, case):
    """Every 8-bit input through ORT's table (MLAS's logistic, then MLAS quantize)."""
    rng = np.random.default_rng(case)
    info = np.iinfo(dtype)
    x = np.arange(info.min, info.max + 1).astype(dtype).reshape(2, 128)
    consts = {"xs": np.array(rng.uniform(0.005, 0.2), np.float32),
              "xz": np.array(rng.integers(info.min, info.max + 1), dtype),
              "ys": np.array(rng.uniform(1 / 300, 1 / 100), np.float32),
              "yz": np.array(info.min if case % 2 else rng.integers(info.min, info.max + 1),
                             dtype)}
    node = helper.make_node("QLinearSigmoid", ["x", "xs", "xz", "ys", "yz"], ["y"], domain=MS)
    (theirs,) = _ort(node, {"x": x}, consts, 17)
    c = consts
    (ours,) = _ours("QLinearSigmoid", node, [x, c["xs"], c["xz"], c["ys"], c["yz"]])
    _same(ours, theirs)


def test_quantize_nan_and_infinite_scale_give_the_minimum():
    """An infinite scale (a calibration that met an infinite activation) makes x / scale NaN
    for infinite x: MLAS's clamp turns NaN into the type's minimum."""
    x = np.array([-3.4e38, 0, 1, -np.inf, np.inf, np.nan, -1, 5] * 2, np.float32)
    for zp in (np.int8(0), np.int8(-3), np.uint8(0), np.uint8(7)):
        consts = {"s": np.array(np.inf, np.float32), "z": np.array(zp)}
        node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
        (theirs,) = _ort(node, {"x": x}, consts, 17)
        (ours,) = _ours("QuantizeLinear", node, [x, consts["s"], consts["z"]])
        _same(ours, theirs)
