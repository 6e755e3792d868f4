import numpy as np
import pytest

from tftrt_lite.engine import fused_ops
from tftrt_lite.engine.passes import precision, space_to_depth
from tftrt_lite.engine.passes import PassContext
from tftrt_lite.engine.reference import run_graph

from pass_graphs import assert_same_numerics, random_feeds

RNG = np.random.default_rng(0)
FP16 = PassContext(precision="FP16")


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _stem(b, x_shape, k, stride, pads, out_hw, channels_out=16, residual=False, activation="relu"):
    x = b.input("x", x_shape)
    c = x_shape[-1]
    out_shape = (x_shape[0],) + tuple(out_hw) + (channels_out,)
    inputs = [x, b.const(_rand(channels_out, k[0], k[1], c)), b.const(_rand(channels_out))]
    if residual:
        inputs.append(b.input("z", out_shape))
    y = b.op("tftrt.FusedConv", inputs, out_shape, strides=[stride, stride], pads=list(pads), dilations=[1, 1],
             group=1, activation=activation, activation_params=[])
    return b.output(y)


@pytest.mark.parametrize("x_shape, k, stride, pads, out_hw", [
    (("N", 224 // 8, 224 // 8, 3), (7, 7), 2, (3, 3, 3, 3), (14, 14)),   # ResNet's stem, smaller image
    (("N", 15, 13, 3), (7, 7), 2, (3, 3, 3, 3), (8, 7)),                   # odd sizes
    (("N", 16, 16, 3), (7, 7), 2, (2, 3, 3, 2), (8, 8)),                   # asymmetric (TF "SAME")
    (("N", 17, 17, 3), (7, 7), 2, (0, 0, 0, 0), (6, 6)),                   # no padding: the last rows are dropped
    (("N", 12, 12, 1), (5, 4), 3, (1, 1, 1, 0), (4, 4)),                   # stride 3, rectangular filter
    ((2, 9, 9, 4), (3, 3), 2, (1, 1, 1, 1), (5, 5)),                        # 4 channels: 16 folded
])
def test_strided_stem_becomes_stride_one_conv_over_folded_channels(builder, x_shape, k, stride, pads, out_hw):
    g = _stem(builder, x_shape, k, stride, pads, out_hw, channels_out=64)
    before = g.copy()
    space_to_depth.run(g, FP16)
    g.verify()
    assert g.summary() == {"tftrt.SpaceToDepth": 1, "tftrt.FusedConv": 1}
    s2d, conv = g.nodes
    c = x_shape[-1]
    folded = stride * stride * c
    assert folded <= s2d.attrs["channels"] == 16 and s2d.attrs["block"] == stride
    assert conv.attrs["strides"] == [1, 1] and conv.attrs["pads"] == [0, 0, 0, 0]
    assert g.const(conv.inputs[1]).shape == (64, -(-k[0] // stride), -(-k[1] // stride), s2d.attrs["channels"])
    assert_same_numerics(before, g, bind={"N": 2})


def test_residual_and_activation_stay_on_the_conv(builder):
    g = _stem(builder, ("N", 16, 16, 3), (7, 7), 2, (3, 3, 3, 3), (8, 8), residual=True, activation="none")
    before = g.copy()
    space_to_depth.run(g, FP16)
    assert g.summary() == {"tftrt.SpaceToDepth": 1, "tftrt.FusedConv": 1}
    assert_same_numerics(before, g, bind={"N": 3})


@pytest.mark.parametrize("x_shape, k, stride, pads, out_hw, channels_out", [
    (("N", 16, 16, 8), (3, 3), 2, (1, 1, 1, 1), (8, 8), 64),    # 32 folded channels: not a small conv
    (("N", 16, 16, 3), (3, 3), 1, (1, 1, 1, 1), (16, 16), 64),  # stride 1
    (("N", 16, 16, 3), (1, 1), 2, (0, 0, 0, 0), (8, 8), 64),    # the filter is smaller than the stride
    (("N", 16, 16, 3), (3, 3), 2, (1, 1, 1, 1), (8, 8), 32),    # MobileNet's stem: the generated stem kernel's
    (("N", "H", 16, 3), (7, 7), 2, (3, 3, 3, 3), ("Ho", 8), 64),  # symbolic height
    (("N", 16, 16, 3), (7, 7), 2, (3, 3, 3, 3), (8, 8), 72),    # more outputs than the tap kernel holds
])
def test_other_convs_are_left_alone(builder, x_shape, k, stride, pads, out_hw, channels_out):
    g = _stem(builder, x_shape, k, stride, pads, out_hw, channels_out=channels_out)
    before = g.summary()
    space_to_depth.run(g, FP16)
    assert g.summary() == before


@pytest.mark.parametrize("ctx", [PassContext(precision="FP32"),
                                 PassContext(precision="FP16", precision_overrides={"FusedConv": "FP32"})],
                         ids=["fp32-engine", "pinned-fp32"])
def test_float32_convs_are_left_alone(builder, ctx):
    """The folded conv runs fast only in the half-type tap kernel; cuDNN is slower on it."""
    g = _stem(builder, ("N", 16, 16, 3), (7, 7), 2, (3, 3, 3, 3), (8, 8), channels_out=64)
    space_to_depth.run(g, ctx)
    assert g.summary() == {"tftrt.FusedConv": 1}


def test_folded_filter_places_every_tap():
    w = _rand(2, 7, 7, 3)
    f = space_to_depth.folded_filter(w, 2, 16)
    for i in range(8):
        for j in range(8):
            for c in range(3):
                got = f[:, i // 2, j // 2, ((i % 2) * 2 + j % 2) * 3 + c]
                np.testing.assert_array_equal(got, w[:, i, j, c] if i < 7 and j < 7 else 0)
    assert not f[..., 12:].any()


def test_reference_folds_pads_and_converts():
    x = _rand(2, 5, 6, 3)
    attrs = {"block": 2, "pads": [1, 2, 0, -2], "channels": 16, "dtype": "float16"}
    (y,) = fused_ops.space_to_depth([x], attrs)
    assert y.shape == (2, 3, 3, 16) and y.dtype == np.float16
    xp = np.pad(x, ((0, 0), (1, 0), (2, 0), (0, 0)))[:, :6, :6]
    for i in range(3):
        for j in range(3):
            for p in range(2):
                for q in range(2):
                    want = xp[:, 2 * i + p, 2 * j + q, :].astype(np.float16)
                    np.testing.assert_array_equal(y[:, i, j, (p * 2 + q) * 3:(p * 2 + q + 1) * 3], want)
    assert not y[..., 12:].any()
    with pytest.raises(ValueError, match="multiple of 2"):
        fused_ops.space_to_depth([x], {**attrs, "pads": [0, 0, 0, 0]})


def test_reduced_engines_convert_in_the_transform(builder):
    """FP16: the transform reads the float32 input as it is and writes float16, so no cast
    kernel runs before it."""
    g = _stem(builder, ("N", 16, 16, 3), (7, 7), 2, (3, 3, 3, 3), (8, 8), channels_out=64)
    before = g.copy()
    space_to_depth.run(g, FP16)
    precision.run(g, PassContext(precision="FP16"))
    g.verify()
    s2d = next(n for n in g.nodes if n.op == "tftrt.SpaceToDepth")
    assert s2d.inputs[0] == "x" and s2d.attrs["dtype"] == "float16" == g.tensor(s2d.outputs[0]).dtype
    assert [n.op for n in g.nodes] == ["tftrt.SpaceToDepth", "tftrt.FusedConv", "Cast"]
    feeds = random_feeds(before, bind={"N": 2})
    want, got = run_graph(before, feeds), run_graph(g, feeds)
    (y,) = before.outputs
    np.testing.assert_allclose(got[y], want[y], rtol=1e-2, atol=1e-2 * np.abs(want[y]).max())
