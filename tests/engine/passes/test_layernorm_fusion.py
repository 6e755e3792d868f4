import numpy as np
import pytest

from tftrt_lite.engine.passes import layernorm_fusion

from pass_graphs import assert_same_numerics

RNG = np.random.default_rng(0)
S = ("N", 5, 8)
STAT = ("N", 5, 1)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _keras_moments_ln(b, x):
    """What tf2onnx emits for Keras 3 LayerNormalization (tf.nn.moments + batch_normalization)."""
    mean = b.op("GlobalAveragePool", [x], STAT)
    neg = b.op("Neg", [mean], STAT)
    d = b.op("Sub", [x, mean], S)
    var = b.op("GlobalAveragePool", [b.op("Mul", [d, d], S)], STAT)
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(1e-3))], STAT)], STAT)], STAT)
    m = b.op("Mul", [inv, b.const(_rand(8))], S)
    return b.op("Add", [b.op("Mul", [x, m], S), b.op("Add", [b.op("Mul", [neg, m], S), b.const(_rand(8))], S)], S)


def _onnx_style_ln(b, x):
    """(x - mean) / sqrt(var + eps) * gamma + beta with ReduceMean(axes=[-1]) and Pow."""
    mean = b.op("ReduceMean", [x, b.const(np.array([-1]))], STAT, keepdims=1)
    d = b.op("Sub", [x, mean], S)
    var = b.op("ReduceMean", [b.op("Pow", [d, b.const(np.float32(2))], S), b.const(np.array([2]))], STAT, keepdims=1)
    n = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(1e-5))], STAT)], STAT)], S)
    return b.op("Add", [b.op("Mul", [n, b.const(_rand(1, 1, 8))], S), b.const(_rand(8))], S)


@pytest.mark.parametrize("make", [_keras_moments_ln, _onnx_style_ln])
def test_layernorm_with_fused_residual(builder, make):
    b = builder
    x = b.input("x", S)
    h = b.input("h", S)
    s = b.op("Add", [x, h], S)
    y = make(b, s)
    g = b.output(y)
    before = g.copy()
    layernorm_fusion.run(g)
    g.verify()
    assert g.summary() == {"tftrt.LayerNorm": 1}
    n = g.nodes[0]
    assert n.inputs[0] == x and n.inputs[3] == h and n.outputs == [y] and n.attrs["sum_output"] == 0
    assert_same_numerics(before, g, bind={"N": 2})


def test_pre_ln_sum_is_exposed_as_second_output(builder):
    b = builder
    x = b.input("x", S)
    h = b.input("h", S)
    s = b.op("Add", [x, h], S)
    y = _keras_moments_ln(b, s)
    nxt = b.op("Add", [s, b.op("Relu", [y], S)], S)
    g = b.output(nxt)
    before = g.copy()
    layernorm_fusion.run(g)
    assert g.summary() == {"tftrt.LayerNorm": 1, "Relu": 1, "Add": 1}
    n = [n for n in g.nodes if n.op == "tftrt.LayerNorm"][0]
    assert n.outputs == [y, s] and n.attrs["sum_output"] == 1
    assert_same_numerics(before, g, bind={"N": 2})


def test_not_a_layernorm_when_not_over_the_last_axis(builder):
    b = builder
    x = b.input("x", S)
    mean = b.op("ReduceMean", [x, b.const(np.array([1]))], ("N", 1, 8), keepdims=1)
    d = b.op("Sub", [x, mean], S)
    var = b.op("ReduceMean", [b.op("Mul", [d, d], S), b.const(np.array([1]))], ("N", 1, 8), keepdims=1)
    y = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(1e-5))], ("N", 1, 8))], ("N", 1, 8))], S)
    g = b.output(y)
    layernorm_fusion.run(g)
    assert "tftrt.LayerNorm" not in g.summary()
