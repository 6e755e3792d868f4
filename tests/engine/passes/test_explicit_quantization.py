"""The explicit_quantization pass: a model's QuantizeLinear/DequantizeLinear as float32 chains.

What it must get right: the rewritten graph computes exactly what the ONNX ops compute
(bit for bit, through the reference executor), per tensor and per axis, int8 and uint8,
with and without zero points; data-movement ops between a Q and its DQ carry the integers
as float32; nothing int8 is left between kernels; the chain stays float32 in reduced
engines and fuses into one kernel; and every case it cannot run is refused with a reason.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnx.reference import ReferenceEvaluator

from tftrt_lite.engine import build_engine
from tftrt_lite.engine.passes import PassContext, elementwise_fusion, explicit_quantization, precision, run_pipeline
from tftrt_lite.engine.passes.precision import KEEP_FLOAT32
from tftrt_lite.engine.onnx_import import import_onnx
from tftrt_lite.engine.reference import run_graph
from tftrt_lite.errors import UnsupportedOpError

from pass_graphs import GraphBuilder, random_feeds

RNG = np.random.default_rng(3)


def _qdq(b, x, shape, scale, zp=None, axis=1, qdtype="uint8"):
    """``x ─Q─► ─DQ─►`` with constant ``scale`` and zero point ``zp`` (None: omitted)."""
    s = b.const(np.asarray(scale, np.float32))
    params = [s] if zp is None else [s, b.const(np.asarray(zp, qdtype))]
    q = b.op("QuantizeLinear", [x] + params, shape, dtype=qdtype, axis=axis)
    return b.op("DequantizeLinear", [q] + params, shape, axis=axis)


def _rewritten(graph):
    g = graph.copy()
    explicit_quantization.run(g, PassContext())
    g.verify()
    return g


def _feeds(graph, seed=0, scale=4.0, batch=3):
    """Random inputs wide enough to saturate the grids (never zeros)."""
    return {k: v * np.float32(scale) for k, v in random_feeds(graph, seed=seed, bind={"N": batch}).items()}


def _assert_same(before, after, feeds):
    want, got = run_graph(before, feeds), run_graph(after, feeds)
    for name in before.outputs:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_pair_with_a_zero_point_becomes_one_float32_chain():
    b = GraphBuilder()
    x = b.input("x", ("N", 8))
    y = b.op("Relu", [_qdq(b, x, ("N", 8), 0.05, 113)], ("N", 8))
    graph = b.output(y)
    g = _rewritten(graph)
    assert [n.op for n in g.nodes] == ["Div", "Round", "Add", "Clip", "Sub", "Mul", "Relu"]
    assert all(n.attrs.get(KEEP_FLOAT32) for n in g.nodes[:-1])
    (clip,) = [n for n in g.nodes if n.op == "Clip"]
    assert (float(g.const(clip.inputs[1])), float(g.const(clip.inputs[2]))) == (0.0, 255.0)
    assert {t.dtype for t in g.tensors.values() if t.value is None} == {"float32"}
    _assert_same(graph, g, _feeds(graph))


def test_zero_point_zero_and_int8_range():
    b = GraphBuilder()
    x = b.input("x", ("N", 8))
    graph = b.output(_qdq(b, x, ("N", 8), 0.02, 0, qdtype="int8"))
    g = _rewritten(graph)
    assert [n.op for n in g.nodes] == ["Div", "Round", "Clip", "Mul"]       # no Add/Sub of a zero
    (clip,) = [n for n in g.nodes if n.op == "Clip"]
    assert (float(g.const(clip.inputs[1])), float(g.const(clip.inputs[2]))) == (-128.0, 127.0)
    _assert_same(graph, g, _feeds(graph))


@pytest.mark.parametrize("axis", [1, -3, 3])
def test_per_axis_parameters_broadcast_along_the_axis(axis):
    b = GraphBuilder()
    x = b.input("x", ("N", 4, 5, 6))
    channels = (4, 5, 6)[axis % 4 - 1]
    scale = RNG.uniform(0.01, 0.1, channels)
    zp = RNG.integers(-10, 10, channels)
    graph = b.output(_qdq(b, x, ("N", 4, 5, 6), scale, zp, axis=axis, qdtype="int8"))
    g = _rewritten(graph)
    (div,) = [n for n in g.nodes if n.op == "Div"]
    assert g.const(div.inputs[1]).shape == (channels,) + (1,) * (3 - axis % 4)
    _assert_same(graph, g, _feeds(graph))


def test_data_movement_between_q_and_dq_carries_the_integers():
    """A per-axis Q keeps its place (its axis is its input's); the Transpose after it and the
    Concat with an int8 constant compute on float32 integers."""
    b = GraphBuilder()
    x = b.input("x", ("N", 4, 6))
    scale, zp = b.const(np.float32([0.1, 0.2, 0.3, 0.4])), b.const(np.int8([1, -2, 3, 0]))
    q = b.op("QuantizeLinear", [x, scale, zp], ("N", 4, 6), dtype="int8", axis=1)
    t = b.op("Transpose", [q], ("N", 6, 4), dtype="int8", perm=[0, 2, 1])
    c = b.op("Concat", [t, b.const(np.full((1, 6, 4), -7, np.int8))], ("N+1", 6, 4), dtype="int8", axis=0)
    y = b.op("DequantizeLinear", [c, scale, zp], ("N+1", 6, 4), axis=2)
    graph = b.output(y)
    g = _rewritten(graph)
    assert [n.op for n in g.nodes] == ["Div", "Round", "Add", "Clip", "Transpose", "Concat", "Sub", "Mul"]
    assert {t.dtype for t in g.tensors.values()} == {"float32"}
    _assert_same(graph, g, _feeds(graph))


def test_a_per_tensor_q_moves_down_to_its_dq_so_the_pair_fuses():
    """``Q → Reshape → DQ`` (tf2onnx's QDQ optimizer pushes DQs below reshapes) becomes
    ``Reshape → Q → DQ``: one kernel for the pair instead of two around a view."""
    b = GraphBuilder()
    x = b.input("x", ("N", 4, 6))
    s, zp = b.const(np.float32(0.05)), b.const(np.uint8(128))
    q = b.op("QuantizeLinear", [x, s, zp], ("N", 4, 6), dtype="uint8", axis=1)
    r = b.op("Reshape", [q, b.const(np.int64([-1, 24]))], ("N", 24), dtype="uint8")
    graph = b.output(b.op("DequantizeLinear", [r, s, zp], ("N", 24), axis=1))
    g = _rewritten(graph)
    assert [n.op for n in g.nodes] == ["Reshape", "Div", "Round", "Add", "Clip", "Sub", "Mul"]
    assert g.nodes[0].inputs[0] == "x"
    _assert_same(graph, g, _feeds(graph))
    elementwise_fusion.run(g)
    assert [n.op for n in g.nodes] == ["Reshape", "tftrt.FusedElementwise"]


def test_reduced_engines_keep_the_chain_float32_in_one_kernel():
    b = GraphBuilder()
    x = b.input("x", ("N", 16))
    w = b.const(RNG.standard_normal((16, 8)).astype(np.float32))
    graph = b.output(b.op("MatMul", [_qdq(b, x, ("N", 16), 0.03, 100), w], ("N", 8)))
    for mode in ("FP16", "INT8"):
        g = _rewritten(graph)
        precision.run(g, PassContext(precision=mode))
        elementwise_fusion.run(g)
        g.verify()
        fused = [n for n in g.nodes if n.op == "tftrt.FusedElementwise"]
        program = fused[0].attrs["program"]
        assert [i["op"] for i in program if i["op"] != "Const"] == ["Div", "Round", "Add", "Clip", "Sub", "Mul",
                                                                    "Cast"]
        assert {i["dtype"] for i in program if i["op"] not in ("Cast",)} == {"float32"}   # scale and products
        assert g.tensor(fused[0].outputs[0]).dtype == "float16"                            # the MatMul's operand
        assert g.const(g.nodes[1].inputs[1]).dtype == np.float16


@pytest.mark.parametrize("case, match", [
    ("computes_on_int8", "Add node .* computes on the quantized"),
    ("int8_output", "engine output.* are quantized"),
    ("computed_scale", "scale or zero point computed at run time"),
])
def test_what_the_engine_cannot_run_is_refused(case, match):
    b = GraphBuilder()
    x = b.input("x", ("N", 8))
    s = b.input("s", ()) if case == "computed_scale" else b.const(np.float32(0.1))
    q = b.op("QuantizeLinear", [x, s, b.const(np.uint8(3))], ("N", 8), dtype="uint8", axis=1)
    if case == "computes_on_int8":
        q = b.op("Add", [q, b.const(np.uint8(1))], ("N", 8), dtype="uint8")
    graph = b.output(q)
    with pytest.raises(UnsupportedOpError, match=match):
        _rewritten(graph)


def _qdq_onnx_model():
    """What a QDQ exporter writes for ``Dense(QDQ(x))``: an int8 per-channel weight through a
    DequantizeLinear, the activation through a uint8 Q→DQ pair."""
    w = RNG.integers(-127, 128, (16, 8)).astype(np.int8)
    inits = {"w": w, "w_s": RNG.uniform(0.001, 0.01, 8).astype(np.float32), "w_zp": np.zeros(8, np.int8),
             "x_s": np.float32(0.04), "x_zp": np.uint8(120), "b": RNG.standard_normal(8).astype(np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), inits


def test_a_quantized_weight_folds_and_the_engine_matches_onnx():
    model, inits = _qdq_onnx_model()
    g, _ = run_pipeline(import_onnx(model))
    (gemm,) = [n for n in g.nodes if n.op == "tftrt.FusedGemm"]
    np.testing.assert_array_equal(g.const(gemm.inputs[1]), inits["w"].astype(np.float32) * inits["w_s"])
    x = (RNG.standard_normal((5, 16)) * 3).astype(np.float32)
    # onnx.reference has QuantizeLinear/DequantizeLinear from opset 19 (8-bit semantics as in 13-18)
    want = ReferenceEvaluator(version_converter.convert_version(model, 19)).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_graph(g, {"x": x})["y"], want, rtol=1e-6, atol=1e-6)
    # the INT8 build from the model's own QDQ: its kernels compile, nothing int8 is left
    engine = build_engine(model, precision="INT8", use_calibration=False, target_arch="sm_90")
    assert engine.stats["qdq_nodes"] == 1 and "quantized_nodes" not in engine.stats
    assert not {t.dtype for t in engine.graph.tensors.values()} & {"int8", "uint8"}
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(engine.graph.summary())
    got = engine.run_reference({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * float(np.max(np.abs(want))))


def test_use_calibration_false_is_int8_without_ranges():
    model, _ = _qdq_onnx_model()
    for kwargs in ({"precision": "FP16"}, {"precision": "INT8", "activation_ranges": {"x": 1.0}}):
        with pytest.raises(ValueError, match="use_calibration=False"):
            build_engine(model, use_calibration=False, target_arch="sm_90", **kwargs)
