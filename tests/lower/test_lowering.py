"""``lower_segment``: zoo segments to ONNX with TF-equal numerics, interface naming, errors."""
import numpy as np
import onnx
import pytest
import tensorflow as tf
from onnx.reference import ReferenceEvaluator

from tftrt_lite.errors import ConversionError
from tftrt_lite.lower import ONNX_OPSET, extract_segment_graph_def, lower_segment
from tftrt_lite.segment import Segment, segment_graph
from zoo import protected_nodes
from zoo import signature as zoo_signature

import model_zoo


def _run_tf(graph_def, feeds, fetches):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(fetches, feeds)


def _logits_protected(sig):
    """Keep the final Softmax native so the segment exports logits (a far stricter comparison
    than near-uniform probabilities of a randomly initialised classifier)."""
    return protected_nodes(sig) + [n.name for n in sig.graph_def.node if n.op == "Softmax"][-1:]


# Two models keep this quick: every zoo engine is also checked against TF in tests/test_converter.py.
@pytest.mark.parametrize("name", ["bert_encoder", "mobilenetv2"])
def test_zoo_segment_lowers_to_an_equivalent_onnx_model(name):
    sig = zoo_signature(name)
    protected = _logits_protected(sig) if name != "bert_encoder" else protected_nodes(sig)
    (segment,) = segment_graph(sig.graph_def, protected=protected).segments
    lowered = lower_segment(sig.graph_def, segment)

    model = lowered.onnx_model
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == ONNX_OPSET
    assert [i.name for i in model.graph.input] == ["input_0"]
    assert [o.name for o in model.graph.output] == [f"output_{j}" for j in range(len(segment.outputs))]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"

    x = next(iter(model_zoo.random_inputs(name, batch=2, seed=5).values()))
    want = _run_tf(sig.graph_def, {segment.inputs[0]: x}, segment.outputs)
    native = _run_tf(lowered.segment_graph_def, {"input_0:0": x},
                     [f"output_{j}:0" for j in range(len(segment.outputs))])
    got = ReferenceEvaluator(model).run(None, {"input_0": x})
    for w, n, g in zip(want, native, got):
        assert np.abs(w).max() > 1e-3
        np.testing.assert_array_equal(n, w)                  # fallback graph == original subgraph
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


def _graph(build, shape=(None, None, 8)):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        tf.identity(build(x), name="out")
    return graph.as_graph_def()


def test_unknown_dims_get_symbols_and_native_graph_matches():
    gd = _graph(lambda x: tf.nn.relu(x * 2.0) + tf.reduce_mean(x, axis=-1, keepdims=True))
    (segment,) = segment_graph(gd, minimum_segment_size=1, protected=["x", "out"]).segments
    lowered = lower_segment(gd, segment)
    dims = lowered.onnx_model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", "d0_1", 8]
    assert lowered.input_tensors == ["x:0"] and lowered.output_names == ["output_0"]
    x = np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32)
    (got,) = ReferenceEvaluator(lowered.onnx_model).run(None, {"input_0": x})
    np.testing.assert_allclose(got, _run_tf(gd, {"x:0": x}, "out:0"), rtol=1e-5, atol=1e-6)


def _manual_segment(gd, nodes, inputs, outputs):
    shapes = {}
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(gd, name="")
    for t in inputs + outputs:
        shapes[t] = graph.get_tensor_by_name(t)
    return Segment(name="seg_manual", nodes=nodes, inputs=inputs, outputs=outputs,
                   input_dtypes=[shapes[t].dtype for t in inputs], input_shapes=[shapes[t].shape for t in inputs],
                   output_dtypes=[shapes[t].dtype for t in outputs],
                   output_shapes=[shapes[t].shape for t in outputs])


def test_onnx_op_outside_the_engine_names_op_tf_node_and_segment():
    gd = _graph(lambda x: tf.math.lgamma(tf.abs(x) + 1.0, name="lg"))
    segment = _manual_segment(gd, ["Abs", "add/y", "add", "lg"], ["x:0"], ["lg:0"])
    with pytest.raises(ConversionError, match=r"seg_manual.*Lgamma.*'lg'"):
        lower_segment(gd, segment)


def test_extract_copies_called_functions_and_matches_tf():
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def f(x):
        y = x * 3.0
        z = tf.cond(tf.reduce_sum(y) > 0.0, lambda: tf.tanh(y), lambda: y - 1.0)
        return z + 1.0

    gd = f.get_concrete_function().graph.as_graph_def()
    cond = next(n for n in gd.node if n.op in ("If", "StatelessIf"))
    inside = [n.name for n in gd.node if n.op != "Placeholder" and n.name != "Identity"]
    out_tensor = next(n.input[0] for n in gd.node if n.name == "Identity")
    segment = _manual_segment(gd, inside, ["x:0"], [out_tensor if ":" in out_tensor else f"{out_tensor}:0"])
    sub = extract_segment_graph_def(gd, segment)
    called = {cond.attr["then_branch"].func.name, cond.attr["else_branch"].func.name}
    assert called <= {fdef.signature.name for fdef in sub.library.function}
    for sign in (1.0, -1.0):
        x = sign * np.abs(np.random.default_rng(2).standard_normal((2, 4))).astype(np.float32)
        np.testing.assert_array_equal(_run_tf(sub, {"input_0:0": x}, "output_0:0"), f(x).numpy())


def test_extract_rejects_inconsistent_segments():
    gd = _graph(lambda x: tf.nn.relu(x * 2.0, name="r"))
    bad_input = _manual_segment(gd, ["mul/y", "mul", "r"], ["x:0"], ["r:0"])
    bad_input.nodes = ["r"]
    with pytest.raises(ConversionError, match="'r' reads 'mul:0'"):
        extract_segment_graph_def(gd, bad_input)
    missing = _manual_segment(gd, ["mul/y", "mul", "r"], ["x:0"], ["r:0"])
    missing.nodes = ["mul/y", "mul", "ghost"]
    with pytest.raises(ConversionError, match="ghost"):
        extract_segment_graph_def(gd, missing)
