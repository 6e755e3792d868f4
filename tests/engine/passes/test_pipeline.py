"""The ordered pipeline: its report and invariant checks on a small graph, then the
reference models end to end (lowered with tf2onnx, imported, optimised) against TensorFlow."""
import numpy as np
import pytest

from tftrt_lite.engine.ir import IRError
from tftrt_lite.engine.onnx_import import import_onnx
from tftrt_lite.engine.passes import PIPELINE, run_pipeline
from tftrt_lite.engine.reference import run_graph

from pass_graphs import assert_same_numerics


def _small_cnn(b):
    rng = np.random.default_rng(0)
    x = b.input("x", ("N", 6, 6, 3))
    t = b.op("Transpose", [x], ("N", 3, 6, 6), perm=[0, 3, 1, 2])
    c = b.op("Conv", [t, b.const(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))], ("N", 4, 6, 6),
             strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, kernel_shape=[3, 3])
    r = b.op("Relu", [b.op("Mul", [c, b.const(rng.standard_normal((4, 1, 1)).astype(np.float32))],
                           ("N", 4, 6, 6))], ("N", 4, 6, 6))
    y = b.op("Transpose", [r], ("N", 6, 6, 4), perm=[0, 2, 3, 1])
    return b.output(y)


def test_report_records_every_pass_and_plan(builder):
    g = _small_cnn(builder)
    out, report = run_pipeline(g, precision="FP32")
    assert [s.name for s in report.stats] == [name for name, _ in PIPELINE]
    assert out.summary() == {"tftrt.FusedConv": 1}
    assert g.summary()["Conv"] == 1  # the input graph is not modified
    layout = next(s for s in report.stats if s.name == "layout")
    assert layout.delta["tftrt.FusedConv"] == 1 and layout.seconds >= 0
    assert report.precision == "FP32" and "layout" in report.format()
    assert report.memory_plan is not None and report.memory_plan.placements == {}  # x → conv → y
    assert_same_numerics(g, out, bind={"N": 2})
    half, _ = run_pipeline(g, precision="FP16")  # the conv in fp16, casts fused at both borders
    assert half.summary() == {"tftrt.FusedElementwise": 2, "tftrt.FusedConv": 1}
    assert_same_numerics(g, half, bind={"N": 2}, rtol=1e-2, atol=1e-2)


def test_a_pass_that_breaks_the_graph_is_named(builder):
    g = _small_cnn(builder)

    def broken(graph, ctx):
        graph.nodes.reverse()

    with pytest.raises(IRError, match="after pass 'broken'"):
        run_pipeline(g, pipeline=[("broken", broken)])
    with pytest.raises(ValueError, match="FP8"):
        run_pipeline(g, precision="FP8")


# -- reference models ---------------------------------------------------------------------

def _lower(name):
    """The zoo model's serving signature, its engine's ONNX imported to IR, and the zoo module."""
    import tensorflow as tf

    import model_zoo
    import zoo

    loaded = tf.saved_model.load(zoo.saved_model(name))
    fn = loaded.signatures["serving_default"]
    fn.owner = loaded  # the signature's variables die with the loaded object
    return fn, import_onnx(zoo.lowered(name).onnx_model, name=name), model_zoo


def _expose_logits(graph):
    """Also output the Softmax's input: a 1000-way softmax of random weights is ~1e-3
    everywhere, so comparing only it would hide errors."""
    (sm,) = [n for n in graph.nodes if n.op == "Softmax"]
    graph.outputs.append(sm.inputs[0])


def _compare_with_tf(name, fn, graph, out, model_zoo, batch=2):
    (arg, value), = model_zoo.random_inputs(name, batch, seed=7).items()
    want = fn(**{arg: value})["output_0"].numpy()
    feeds = {graph.inputs[0]: value}
    got = run_graph(out, feeds)
    np.testing.assert_allclose(got[out.outputs[0]], want, rtol=1e-5, atol=1e-5)
    if len(out.outputs) > 1:  # logits against the unoptimised graph
        np.testing.assert_allclose(got[out.outputs[1]], run_graph(graph, feeds)[graph.outputs[1]],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2", "vgg16"])
def test_cnn_zoo_models(name):
    fn, graph, model_zoo = _lower(name)
    _expose_logits(graph)
    n_convs = graph.summary()["Conv"]
    out, report = run_pipeline(graph)
    ops = out.summary()
    assert "Transpose" not in ops and "Conv" not in ops, ops
    assert ops["tftrt.FusedConv"] == n_convs
    for leftover in ("BatchNormalization", "Mul", "Add", "Relu", "Clip", "MaxPool", "AveragePool"):
        assert leftover not in ops, ops  # BN folded; bias, residual and activation fused
    if name == "resnet50":
        convs = [n for n in out.nodes if n.op == "tftrt.FusedConv"]
        assert sum(1 for n in convs if len(n.inputs) > 3 and n.inputs[3]) == 16  # residual adds
        assert sum(1 for n in convs if n.attrs["activation"] == "relu") == 49
    if name == "mobilenetv2":
        assert "Pad" not in ops  # ZeroPadding2D became conv padding
    plan = report.memory_plan
    for n in (1, 128):
        assert 0 < plan.peak_bytes({"N": n}) < plan.naive_bytes({"N": n})
    _compare_with_tf(name, fn, graph, out, model_zoo)


def test_bert_encoder():
    layers = 2  # the zoo default
    fn, graph, model_zoo = _lower("bert_encoder")
    out, report = run_pipeline(graph)
    ops = out.summary()
    assert ops["tftrt.Attention"] == layers
    assert ops["tftrt.LayerNorm"] == 2 * layers + 1
    assert ops["tftrt.FusedGemm"] == 4 * layers  # q|k|v merged, output, ffn in, ffn out
    gemms = [n for n in out.nodes if n.op == "tftrt.FusedGemm"]
    assert sum(1 for n in gemms if n.attrs["activation"] == "gelu_erf") == layers
    assert all(n.inputs[2] for n in gemms)  # every Dense bias fused (the zoo randomises them)
    for leftover in ("MatMul", "Add", "Softmax", "Erf", "GlobalAveragePool", "Sqrt"):
        assert leftover not in ops, ops
    _compare_with_tf("bert_encoder", fn, graph, out, model_zoo)
