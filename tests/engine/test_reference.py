import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tftrt_lite.engine.ir import Graph, Node, Tensor
from tftrt_lite.engine.onnx_import import import_onnx
from tftrt_lite.engine.reference import REFERENCE_OPS, reference_op, run_graph
from tftrt_lite.errors import FeedError, ShapeError

F = TensorProto.FLOAT
rng = np.random.default_rng(7)


def _model(nodes, inputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                              [helper.make_tensor_value_info(nodes[-1].output[0], F, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _w(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# small graphs covering the op families the zoo models and the fused ops lean on
GRAPHS = {
    "conv_bn_relu_pool": _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], group=2),
         helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], epsilon=1e-3),
         helper.make_node("Relu", ["n"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
         helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 0, 0])],
        [("x", ["N", 4, 17, 15])],
        [("w", _w(6, 2, 3, 3)), ("b", _w(6)), ("s", _w(6)), ("bb", _w(6)), ("m", _w(6)),
         ("v", np.abs(_w(6)) + 0.5)]),
    "dilated_depthwise_conv_transpose": _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], dilations=[2, 2], group=4, auto_pad="SAME_UPPER"),
         helper.make_node("ConvTranspose", ["c", "wt"], ["y"], strides=[2, 2], pads=[1, 0, 0, 1])],
        [("x", ["N", 4, 9, 9])], [("w", _w(4, 1, 3, 3)), ("wt", _w(4, 3, 3, 3))]),
    "gemm_einsum_layernorm_softmax": _model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, alpha=0.5),
         helper.make_node("Einsum", ["g", "g"], ["e"], equation="ij,kj->ik"),
         helper.make_node("LayerNormalization", ["e", "s", "bb"], ["l"], epsilon=1e-5),
         helper.make_node("Softmax", ["l"], ["y"], axis=0)],
        [("x", [5, 6])], [("w", _w(8, 6)), ("b", _w(8)), ("s", _w(5)), ("bb", _w(5))]),
    "attention_einsum_transpose_reshape": _model(
        [helper.make_node("Einsum", ["q", "k"], ["s"], equation="bqhd,bkhd->bhqk"),
         helper.make_node("Softmax", ["s"], ["p"], axis=-1),
         helper.make_node("Einsum", ["p", "k"], ["o"], equation="bhqk,bkhd->bqhd"),
         helper.make_node("Reshape", ["o", "shape"], ["y"])],
        [("q", ["B", 5, 2, 4]), ("k", ["B", 5, 2, 4])], [("shape", np.array([0, 0, -1], np.int64))]),
    "reduce_slice_pad_resize": _model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["r"], keepdims=1),
         helper.make_node("Slice", ["r", "st", "en", "ax", "sp"], ["s"]),
         helper.make_node("Pad", ["s", "pads"], ["p"], mode="reflect"),
         helper.make_node("Resize", ["p", "", "scales"], ["y"], mode="linear")],
        [("x", [2, 3, 8, 6])],
        [("axes", np.array([1], np.int64)), ("st", np.array([1, -1], np.int64)),
         ("en", np.array([7, -7], np.int64)), ("ax", np.array([2, 3], np.int64)),
         ("sp", np.array([2, -1], np.int64)), ("pads", np.array([0, 0, 1, 1, 0, 0, 1, 0], np.int64)),
         ("scales", np.array([1, 1, 2, 1.5], np.float32))]),
    "elementwise_mix": _model(
        [helper.make_node("Erf", ["x"], ["e"]),
         helper.make_node("HardSwish", ["e"], ["h"]),
         helper.make_node("Clip", ["h", "lo", "hi"], ["c"]),
         helper.make_node("Pow", ["c", "two"], ["p"]),
         helper.make_node("Where", ["mask", "p", "x"], ["y"])],
        [("x", ["N", 7])],
        [("lo", np.array(-0.2, np.float32)), ("hi", np.array(0.3, np.float32)),
         ("two", np.array(2.0, np.float32)), ("mask", rng.random((1, 7)) > 0.5)]),
}


def _feeds(model, batch):
    feeds = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_matches_onnx_reference_evaluator(name):
    model = GRAPHS[name]
    graph = import_onnx(model)
    for batch in (1, 3):
        feeds = _feeds(model, batch)
        want = ReferenceEvaluator(model).run(None, feeds)[0]
        got = run_graph(graph, feeds)[graph.outputs[0]]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _relu_graph():
    g = Graph("g", ["x"], ["y"], {"x": Tensor("x", "float32", ("N", 4)), "y": Tensor("y", "float32", ("N", 4))},
              [Node("Relu", "relu", ["x"], ["y"])])
    g.verify()
    return g


def test_feed_errors_are_clear():
    g = _relu_graph()
    with pytest.raises(FeedError, match=r"missing feeds \['x'\], unexpected feeds \['z'\]"):
        run_graph(g, {"z": np.ones((2, 4), np.float32)})
    with pytest.raises(FeedError, match="feed 'x' has dtype float64, the graph expects float32"):
        run_graph(g, {"x": np.ones((2, 4))})
    with pytest.raises(ShapeError, match="feed 'x': axis 1 is 5"):
        run_graph(g, {"x": np.ones((2, 5), np.float32)})


def test_symbol_conflict_between_feeds():
    g = Graph("g", ["a", "b"], ["y"], {"a": Tensor("a", "float32", ("N", 4)), "b": Tensor("b", "float32", ("N", 4)),
                                        "y": Tensor("y", "float32", ("N", 4))}, [Node("Add", "add", ["a", "b"], ["y"])])
    with pytest.raises(ShapeError, match=r"feed 'b': axis 0 is 3 .* 'N' = 2"):
        run_graph(g, {"a": np.ones((2, 4), np.float32), "b": np.ones((3, 4), np.float32)})


def test_output_shape_is_checked_against_the_ir():
    g = _relu_graph()
    g.tensors["y"] = Tensor("y", "float32", ("2*N", 4))
    with pytest.raises(ShapeError, match=r"Relu node 'relu': output 'y' has shape \(3, 4\), the graph says"):
        run_graph(g, {"x": np.ones((3, 4), np.float32)})


def test_intermediates_and_registered_ops(monkeypatch):
    monkeypatch.setitem(REFERENCE_OPS, "test.Twice", None)
    reference_op("test.Twice")(lambda inputs, attrs: [inputs[0] * attrs["k"]])
    g = Graph("g", ["x"], ["y"], {"x": Tensor("x", "float32", ("N",)), "t": Tensor("t", "float32", ("N",)),
                                  "y": Tensor("y", "float32", ("N",))},
              [Node("test.Twice", "twice", ["x"], ["t"], {"k": 2.0}), Node("Neg", "neg", ["t"], ["y"])])
    x = rng.standard_normal(3).astype(np.float32)
    values = run_graph(g, {"x": x}, intermediates=True)
    assert set(values) == {"x", "t", "y"}
    np.testing.assert_array_equal(values["y"], -2 * x)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["resnet50", "mobilenetv2", "vgg16", "bert_encoder"])
def test_zoo_model_matches_tensorflow(model_name):
    import tensorflow as tf

    import model_zoo
    import zoo

    loaded = tf.saved_model.load(zoo.saved_model(model_name))
    fn = loaded.signatures["serving_default"]  # `loaded` keeps the variables alive
    graph = import_onnx(zoo.lowered(model_name).onnx_model)
    assert graph.summary().get("Shape", 0) == 0, "shape subgraphs must fold at import"
    (onnx_input,) = graph.inputs
    for batch in (1, 3):
        (arg, value), = model_zoo.random_inputs(model_name, batch, seed=batch).items()
        want = fn(**{arg: tf.constant(value)})["output_0"].numpy()
        got = run_graph(graph, {onnx_input: value})[graph.outputs[0]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# -- QuantizeLinear / DequantizeLinear ------------------------------------------------------------
def _qdq_model(nodes, x_dtype, x_shape, out_dtype, inits, opset=17):
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", x_dtype, x_shape)],
                              [helper.make_tensor_value_info(nodes[-1].output[0], out_dtype, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run_one(model, x):
    graph = import_onnx(model)
    return run_graph(graph, {"x": x})[graph.outputs[0]]


def test_quantize_linear_rounds_half_to_even_and_saturates():
    """uint8 with zero point 10, scale 0.5: x/s = -200, -10.5, -9.5, 0.5, 1.5, 2.5, 5, 400."""
    model = _qdq_model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"])], F, [8], TensorProto.UINT8,
                       {"s": np.float32(0.5), "zp": np.uint8(10)})
    x = np.array([-100, -5.25, -4.75, 0.25, 0.75, 1.25, 2.5, 200], np.float32)
    q = _run_one(model, x)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, [0, 0, 0, 10, 12, 12, 15, 255])  # ties -10.5 → -10, 2.5 → 2; clamped


def test_quantize_linear_without_zero_point_is_uint8():
    model = _qdq_model([helper.make_node("QuantizeLinear", ["x", "s"], ["q"])], F, [4], TensorProto.UINT8,
                       {"s": np.float32(2.0)})
    np.testing.assert_array_equal(_run_one(model, np.array([-3, 3, 5, 1e9], np.float32)), np.uint8([0, 2, 2, 255]))


def test_per_axis_int8_quantize_then_dequantize():
    """axis 1 of [2, 3]: scales 1, 0.5, 2 and zero points 0, -1, 3, worked out by hand."""
    inits = {"s": np.float32([1.0, 0.5, 2.0]), "zp": np.int8([0, -1, 3])}
    x = np.array([[127.5, -0.75, 5.0], [-129.0, 63.75, -1.0]], np.float32)
    quantize = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1)
    q = _run_one(_qdq_model([quantize], F, [2, 3], TensorProto.INT8, inits), x)
    assert q.dtype == np.int8
    # row 0: 127.5 → 128 (even), saturated to 127; -1.5 → -2 (even), + zp -1; 2.5 → 2 (even), + zp 3
    # row 1: -129 saturated to -128; 127.5 → 128, + zp -1; -0.5 → -0 (even), + zp 3
    np.testing.assert_array_equal(q, [[127, -3, 5], [-128, 127, 3]])
    both = _qdq_model([quantize, helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1)],
                      F, [2, 3], F, inits)
    y = _run_one(both, x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[127.0, -1.0, 4.0], [-128.0, 64.0, 0.0]])   # (q - zp) * s


def test_dequantize_linear_of_an_input():
    model = _qdq_model([helper.make_node("DequantizeLinear", ["x", "s", "zp"], ["y"])], TensorProto.UINT8, [3], F,
                       {"s": np.float32(0.25), "zp": np.uint8(128)})
    np.testing.assert_array_equal(_run_one(model, np.uint8([0, 128, 255])), np.float32([-32.0, 0.0, 31.75]))


@pytest.mark.parametrize("qtype, axis", [(TensorProto.INT8, None), (TensorProto.UINT8, None),
                                         (TensorProto.INT8, 1), (TensorProto.UINT8, 0)])
def test_quantize_dequantize_matches_onnx_reference_evaluator(qtype, axis):
    """Random data around the grid (ties and saturation included) against onnx.reference, whose
    QuantizeLinear/DequantizeLinear start at opset 19 (8-bit semantics unchanged since 13)."""
    np_type = np.int8 if qtype == TensorProto.INT8 else np.uint8
    shape = [4, 5, 3]
    n = 1 if axis is None else shape[axis]
    scale = rng.uniform(0.01, 0.1, n).astype(np.float32)
    zp = rng.integers(-20 if np_type == np.int8 else 100, 20 if np_type == np.int8 else 150, n).astype(np_type)
    if axis is None:
        scale, zp = scale[0], zp[0]
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], **attrs)]
    x = (rng.standard_normal(shape) * 8).astype(np.float32)                              # saturates too
    x.reshape(-1)[:10] = (np.arange(10) + 0.5) * np.asarray(scale).reshape(-1)[0]      # ties
    ours, theirs = (_qdq_model(nodes, F, shape, F, {"s": scale, "zp": zp}, opset=opset) for opset in (17, 19))
    for model in (ours, theirs):
        model.graph.output.insert(0, helper.make_tensor_value_info("q", qtype, shape))
    want_q, want_y = ReferenceEvaluator(theirs).run(None, {"x": x})
    got = run_graph(import_onnx(ours), {"x": x})
    assert got["q"].dtype == want_q.dtype == np_type and got["y"].dtype == np.float32
    np.testing.assert_array_equal(got["q"], want_q)
    np.testing.assert_array_equal(got["y"], want_y)
