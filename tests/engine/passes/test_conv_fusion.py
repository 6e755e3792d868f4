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


# -- ReLU6 of a 1×1 conv moves into its depthwise readers --------------------------------
EXPANDED = ("N", 6, 6, 16)


def _pointwise(b, x, activation="none", params=(), dtype="float32"):
    return b.op("tftrt.FusedConv", [x, b.const(_rand(16, 1, 1, 8).astype(dtype)), b.const(_rand(16).astype(dtype))],
                EXPANDED, dtype, strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1, activation=activation,
                activation_params=list(params))


def _depthwise(b, x, kernel=3, dtype="float32", **attrs):
    pad = kernel // 2
    return b.op("tftrt.FusedConv", [x, b.const(_rand(16, kernel, kernel, 1).astype(dtype)), ""], EXPANDED, dtype,
                strides=[1, 1], pads=[pad] * 4, dilations=[1, 1], group=16, activation="none",
                activation_params=[], **attrs)


def _large_feeds(graph, seed=3):
    """Inputs large enough that the expanded activation crosses both clip bounds often."""
    rng = np.random.default_rng(seed)
    return {name: (4 * rng.standard_normal((2,) + graph.tensor(name).shape[1:])).astype(graph.tensor(name).dtype)
            for name in graph.inputs}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_relu6_of_a_pointwise_conv_moves_into_its_depthwise_readers(builder, dtype):
    """MobileNetV2's expand conv → ReLU6 → ZeroPadding2D → stride-2 depthwise, and a second
    depthwise reader: the GEMM keeps a ReLU, both readers clip their input, and the
    reference gives bit-identical outputs (rounding is monotone, so it commutes with clip)."""
    b = builder
    x = b.input("x", ("N", 6, 6, 8), dtype)
    e = _pointwise(b, x, dtype=dtype)
    r6 = b.op("Clip", [e, b.const(np.array(0, dtype)), b.const(np.array(6, dtype))], EXPANDED, dtype)
    p = b.op("Pad", [r6, b.const(np.array([0, 0, 0, 0, 0, 1, 1, 0]))], ("N", 7, 7, 16), dtype, mode="constant")
    s2 = b.op("tftrt.FusedConv", [p, b.const(_rand(16, 3, 3, 1).astype(dtype)), ""], ("N", 3, 3, 16), dtype,
              strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1], group=16, activation="none", activation_params=[])
    s1 = _depthwise(b, r6, dtype=dtype)
    g = b.output(s2, s1)
    before = g.copy()
    conv_fusion.run(g)
    g.verify()
    assert g.summary() == {"tftrt.FusedConv": 3}
    pw, dw2, dw1 = g.nodes
    assert pw.attrs["activation"] == "relu" and pw.attrs["activation_params"] == []
    assert dw2.attrs["pads"] == [0, 0, 1, 1]  # the Pad was absorbed first
    for dw in (dw2, dw1):
        assert dw.inputs[0] == pw.outputs[0]
        assert dw.attrs["input_activation"] == "clip" and dw.attrs["input_activation_params"] == [0.0, 6.0]
    assert_same_numerics(before, g, _large_feeds(before), rtol=0, atol=0)


def _relu6_pointwise_graph(b, lo=0.0, hi=6.0):
    x = b.input("x", ("N", 6, 6, 8))
    return _pointwise(b, x, "clip", [lo, hi])


def _unchanged(g):
    before = {n.name: dict(n.attrs) for n in g.nodes}
    conv_fusion.run(g)
    return {n.name: n.attrs for n in g.nodes} == before


def test_relu6_stays_when_another_reader_is_not_a_depthwise_conv(builder):
    b = builder
    e = _relu6_pointwise_graph(b)
    g = b.output(_depthwise(b, e), b.op("Exp", [e], EXPANDED))
    assert _unchanged(g)


def test_relu6_stays_when_a_reader_is_a_dense_conv(builder):
    b = builder
    e = _relu6_pointwise_graph(b)
    dense = b.op("tftrt.FusedConv", [e, b.const(_rand(16, 3, 3, 16)), ""], EXPANDED, strides=[1, 1],
                 pads=[1, 1, 1, 1], dilations=[1, 1], group=1, activation="none", activation_params=[])
    g = b.output(_depthwise(b, e), dense)
    assert _unchanged(g)


def test_relu6_stays_when_the_conv_output_is_a_graph_output(builder):
    b = builder
    e = _relu6_pointwise_graph(b)
    g = b.output(_depthwise(b, e), e)
    assert _unchanged(g)


@pytest.mark.parametrize("lo,hi", [(-1.0, 6.0), (1.0, 6.0)])
def test_clips_other_than_from_zero_stay(builder, lo, hi):
    """relu(v) would lose what clip(-1, 6) keeps; the rewrite is for ReLU6 (lo = 0) only."""
    b = builder
    g = b.output(_depthwise(b, _relu6_pointwise_graph(b, lo, hi)))
    assert _unchanged(g)


def test_relu6_stays_when_the_depthwise_conv_reads_it_as_residual(builder):
    b = builder
    e = _relu6_pointwise_graph(b)
    other = b.input("other", EXPANDED)
    z = b.op("tftrt.FusedConv", [other, b.const(_rand(16, 3, 3, 1)), "", e], EXPANDED, strides=[1, 1],
             pads=[1, 1, 1, 1], dilations=[1, 1], group=16, activation="none", activation_params=[])
    g = b.output(z)
    assert _unchanged(g)


def test_relu6_stays_when_a_reader_already_has_an_input_activation(builder):
    b = builder
    e = _relu6_pointwise_graph(b)
    g = b.output(_depthwise(b, e, input_activation="clip", input_activation_params=[0.0, 4.0]))
    assert _unchanged(g)


def test_relu6_stays_when_the_depthwise_kernel_cannot_run_the_reader(builder):
    """A 41x41 filter does not fit the kernel's shared memory: cuDNN would run the reader,
    and cuDNN has no input activation."""
    b = builder
    x = b.input("x", ("N", 6, 6, 8))
    e = _pointwise(b, x, "clip", [0.0, 6.0])
    g = b.output(_depthwise(b, e, kernel=41))
    assert _unchanged(g)


def test_relu6_of_a_cudnn_conv_stays_in_its_epilogue(builder):
    """A 3x3 conv runs on cuDNN, whose epilogue clips: nothing to move."""
    b = builder
    x = b.input("x", ("N", 6, 6, 8))
    e = b.op("tftrt.FusedConv", [x, b.const(_rand(16, 3, 3, 8)), ""], EXPANDED, strides=[1, 1], pads=[1, 1, 1, 1],
             dilations=[1, 1], group=1, activation="clip", activation_params=[0.0, 6.0])
    g = b.output(_depthwise(b, e))
    assert _unchanged(g)


def test_zero_pad_stays_before_a_conv_with_an_input_activation(builder):
    """clip(1, 6) of a padded zero is 1: the Pad cannot become the conv's padding, where
    taps read 0."""
    b = builder
    x = b.input("x", ("N", 4, 4, 16))
    p = b.op("Pad", [x, b.const(np.array([0, 1, 1, 0, 0, 1, 1, 0]))], EXPANDED, mode="constant")
    g = b.output(b.op("tftrt.FusedConv", [p, b.const(_rand(16, 3, 3, 1)), ""], ("N", 4, 4, 16), strides=[1, 1],
                      pads=[0, 0, 0, 0], dilations=[1, 1], group=16, activation="none", activation_params=[],
                      input_activation="clip", input_activation_params=[1.0, 6.0]))
    before = g.copy()
    conv_fusion.run(g)
    assert g.summary() == {"Pad": 1, "tftrt.FusedConv": 1}
    assert_same_numerics(before, g, bind={"N": 2})


@pytest.mark.parametrize("precision,pointwise_fp32", [("FP16", False), ("FP16", True), ("BF16", False),
                                                      ("INT8", False)])
def test_moved_relu6_is_exact_through_the_precision_and_quantize_passes(builder, precision, pointwise_fp32):
    """After the whole pipeline (half types, a float32 override putting a Cast between the
    two convs, INT8's quantize-dequantize before the 1×1 conv) the engine graph computes
    bit for bit what it computes with the ReLU6 put back on the 1×1 conv."""
    from tftrt_lite.engine.passes import run_pipeline
    from tftrt_lite.engine.reference import run_graph

    b = builder
    x = b.input("x", ("N", 6, 6, 8))
    r6 = b.op("Clip", [_pointwise(b, x), b.const(np.float32(0)), b.const(np.float32(6))], EXPANDED)
    g = b.output(_depthwise(b, r6))
    pw_name = g.nodes[0].name
    out, _ = run_pipeline(g, precision=precision, precision_overrides={pw_name: "FP32"} if pointwise_fp32 else None,
                          activation_ranges={x: 12.0} if precision == "INT8" else None)
    pw = next(n for n in out.nodes if n.name == pw_name)
    (dw,) = [n for n in out.nodes if n.op == "tftrt.FusedConv" and n is not pw]
    assert pw.attrs["activation"] == "relu" and dw.attrs["input_activation"] == "clip"
    assert (dw.inputs[0] == pw.outputs[0]) != pointwise_fp32  # the override's Cast sits between
    undone = out.copy()
    for n in undone.nodes:
        if n.name == pw_name:
            n.attrs.update(activation="clip", activation_params=[0.0, 6.0])
        if n.name == dw.name:
            n.attrs.update(input_activation="none", input_activation_params=[])
    feeds = _large_feeds(g)
    (y,) = g.outputs
    np.testing.assert_array_equal(run_graph(out, feeds)[y], run_graph(undone, feeds)[y])
