import math

import numpy as np
import pytest

from tftrt_lite.engine.passes import conv_fusion

from pass_graphs import assert_same_numerics

RNG = np.random.default_rng(0)
SHAPE = ("N", 5, 5, 4)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _fconv(b, x, bias=True):
    return b.op("tftrt.FusedConv", [x, b.const(_rand(4, 3, 3, 4)), b.const(_rand(4)) if bias else ""], SHAPE,
                strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1,
                activation="none", activation_params=[])


def test_bias_residual_relu_fuse_into_one_conv(builder):
    b = builder
    x = b.input("x", SHAPE)
    z = b.op("Exp", [x], SHAPE)
    c = _fconv(b, x, bias=False)
    a = b.op("Add", [b.const(_rand(1, 1, 4)), c], SHAPE)
    r = b.op("Add", [a, z], SHAPE)
    y = b.op("Relu", [r], SHAPE)
    g = b.output(y)
    before = g.copy()
    conv_fusion.run(g)
    g.verify()
    assert g.summary() == {"Exp": 1, "tftrt.FusedConv": 1}
    conv = g.nodes[-1]
    assert conv.outputs == [y] and conv.inputs[3] == z and conv.attrs["activation"] == "relu"
    assert_same_numerics(before, g, bind={"N": 2})


def test_residual_between_two_convs_goes_to_the_later_one(builder):
    b = builder
    x = b.input("x", SHAPE)
    c1 = _fconv(b, x)
    c2 = _fconv(b, x)
    y = b.op("Relu", [b.op("Add", [c2, c1], SHAPE)], SHAPE)
    g = b.output(y)
    before = g.copy()
    conv_fusion.run(g)
    assert g.summary() == {"tftrt.FusedConv": 2}
    assert g.nodes[1].inputs[3] == c1 and g.nodes[1].attrs["activation"] == "relu"
    assert_same_numerics(before, g, bind={"N": 2})


def _silu(b, c):
    return b.op("Mul", [c, b.op("Sigmoid", [c], SHAPE)], SHAPE)


def _gelu_erf(b, c):
    e = b.op("Erf", [b.op("Div", [c, b.const(np.float32(math.sqrt(2)))], SHAPE)], SHAPE)
    return b.op("Mul", [b.op("Mul", [c, b.const(np.float32(0.5))], SHAPE),
                        b.op("Add", [e, b.const(np.float32(1))], SHAPE)], SHAPE)


def _relu6(b, c):
    return b.op("Clip", [c, b.const(np.float32(0)), b.const(np.float32(6))], SHAPE)


def _leaky(b, c):
    return b.op("LeakyRelu", [c], SHAPE, alpha=0.2)


@pytest.mark.parametrize("make,name,params", [
    (_silu, "silu", []), (_gelu_erf, "gelu_erf", []), (_relu6, "clip", [0.0, 6.0]),
    (_leaky, "leaky_relu", [pytest.approx(0.2)]),
])
def test_activations(builder, make, name, params):
    b = builder
    x = b.input("x", SHAPE)
    y = make(b, _fconv(b, x))
    g = b.output(y)
    before = g.copy()
    conv_fusion.run(g)
    assert g.summary() == {"tftrt.FusedConv": 1}
    assert g.nodes[0].attrs["activation"] == name and g.nodes[0].attrs["activation_params"] == params
    assert_same_numerics(before, g, bind={"N": 2})


def test_no_fusion_when_conv_output_is_read_twice(builder):
    b = builder
    x = b.input("x", SHAPE)
    c = _fconv(b, x)
    y = b.op("Relu", [c], SHAPE)
    g = b.output(y, c)
    conv_fusion.run(g)
    assert g.summary() == {"tftrt.FusedConv": 1, "Relu": 1}


def test_zero_pad_becomes_conv_padding(builder):
    b = builder
    x = b.input("x", ("N", 4, 4, 4))
    p = b.op("Pad", [x, b.const(np.array([0, 1, 0, 0, 0, 0, 1, 0]))], SHAPE, mode="constant")
    c = _fconv(b, p)
    strided = b.op("tftrt.FusedConv", [c, b.const(_rand(4, 3, 3, 4)), ""], ("N", 2, 2, 4), strides=[2, 2],
                   pads=[0, 0, 0, 0], dilations=[1, 1], group=1, activation="none", activation_params=[])
    g = b.output(strided)
    before = g.copy()
    conv_fusion.run(g)
    assert g.summary() == {"tftrt.FusedConv": 2}
    assert g.nodes[0].inputs[0] == x and g.nodes[0].attrs["pads"] == [2, 1, 1, 2]
    assert_same_numerics(before, g, bind={"N": 2})


def test_reflect_pad_is_kept(builder):
    b = builder
    x = b.input("x", ("N", 3, 5, 4))
    p = b.op("Pad", [x, b.const(np.array([0, 1, 0, 0, 0, 1, 0, 0]))], SHAPE, mode="reflect")
    g = b.output(_fconv(b, p))
    conv_fusion.run(g)
    assert g.summary() == {"Pad": 1, "tftrt.FusedConv": 1}


def _pad_then_max_pool(b, activation, pad=1):
    x = b.input("x", SHAPE)
    c = b.op("tftrt.FusedConv", [x, b.const(_rand(4, 3, 3, 4)), b.const(_rand(4))], SHAPE, strides=[1, 1],
             pads=[1, 1, 1, 1], dilations=[1, 1], group=1, activation=activation, activation_params=[])
    padded = 5 + 2 * pad
    p = b.op("Pad", [c, b.const(np.array([0, pad, pad, 0, 0, pad, pad, 0], np.int64))], ("N", padded, padded, 4),
             mode="constant")
    out = (padded - 3) // 2 + 1
    y = b.op("tftrt.Pool", [p], ("N", out, out, 4), mode="max", kernel_shape=[3, 3], strides=[2, 2],
             pads=[0, 0, 0, 0], dilations=[1, 1], ceil_mode=0, count_include_pad=0)
    return b.output(y)


def test_zero_pad_of_a_relu_conv_becomes_max_pool_padding(builder):
    g = _pad_then_max_pool(builder, "relu")
    before = g.copy()
    conv_fusion.run(g)
    g.verify()
    assert g.summary() == {"tftrt.FusedConv": 1, "tftrt.Pool": 1}
    assert g.nodes[-1].attrs["pads"] == [1, 1, 1, 1]
    assert_same_numerics(before, g, bind={"N": 2})


@pytest.mark.parametrize("activation, pad", [("none", 1), ("relu", 3)])
def test_zero_pad_stays_when_values_may_be_negative_or_windows_could_be_all_padding(builder, activation, pad):
    g = _pad_then_max_pool(builder, activation, pad)
    conv_fusion.run(g)
    assert g.summary()["Pad"] == 1
