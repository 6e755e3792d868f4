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
