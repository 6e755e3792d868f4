"""The tftrt.* reference implementations against independent formulations (the ONNX ops'
reference implementations, NumPy formulas) on fresh random inputs."""
import math

import numpy as np
import pytest

from tftrt_lite.engine import fused_ops
from tftrt_lite.engine.reference import REFERENCE_OPS

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("group,stride,dilation,pads", [
    (1, 1, 1, [1, 1, 1, 1]), (2, 2, 1, [0, 1, 2, 0]), (6, 1, 2, [2, 2, 2, 2]),
])
def test_fused_conv_matches_onnx_conv(group, stride, dilation, pads):
    x = _rand(2, 9, 8, 6)
    w = _rand(12, 6 // group, 3, 3)  # OIHW
    b, z = _rand(12), None
    attrs = dict(strides=[stride] * 2, pads=pads, dilations=[dilation] * 2, group=group)
    want = REFERENCE_OPS["Conv"]([x.transpose(0, 3, 1, 2), w, b],
                                 dict(attrs, kernel_shape=[3, 3], auto_pad="NOTSET"))[0].transpose(0, 2, 3, 1)
    z = _rand(*want.shape)
    (got,) = fused_ops.fused_conv([x, w.transpose(0, 2, 3, 1), b, z],
                                  dict(attrs, activation="clip", activation_params=[-0.5, 1.0]))
    np.testing.assert_allclose(got, np.clip(want + z, -0.5, 1.0), rtol=1e-5, atol=1e-5)


def _row_conv(x, **attrs):
    """A 1x3 conv over one row of one channel with filter [1, 1, 1], "same" padding."""
    w = np.ones((1, 1, 3, 1), np.float32)
    attrs = dict(strides=[1, 1], pads=[0, 1, 0, 1], dilations=[1, 1], group=1, activation="none",
                 activation_params=[], **attrs)
    (y,) = fused_ops.fused_conv([np.asarray(x, np.float32).reshape(1, 1, -1, 1), w], attrs)
    return y.ravel()


def test_fused_conv_input_activation_comes_before_the_zero_padding():
    """clip(0, 6) of [-2, 3, 8] is [0, 3, 6]; padded with zeros → window sums 3, 9, 9.
    clip(1, 6) gives [1, 3, 6], and the padding stays 0, not clip(0) = 1: 4, 10, 9."""
    x = [-2.0, 3.0, 8.0]
    np.testing.assert_array_equal(_row_conv(x), [1, 9, 11])
    np.testing.assert_array_equal(_row_conv(x, input_activation="none", input_activation_params=[]), [1, 9, 11])
    np.testing.assert_array_equal(_row_conv(x, input_activation="clip", input_activation_params=[0.0, 6.0]),
                                  [3, 9, 9])
    np.testing.assert_array_equal(_row_conv(x, input_activation="relu", input_activation_params=[]), [3, 11, 11])
    np.testing.assert_array_equal(_row_conv(x, input_activation="clip", input_activation_params=[1.0, 6.0]),
                                  [4, 10, 9])


def test_fused_conv_input_activation_keeps_nan_and_rounds_bounds_to_the_input_dtype():
    # a NaN is not clipped to a bound: it reaches every window that holds it
    y = _row_conv([np.nan, 3.0, 8.0, -1.0], input_activation="clip", input_activation_params=[0.0, 6.0])
    np.testing.assert_array_equal(y, [np.nan, np.nan, 9.0, 6.0])
    # float16 input: the bound 6.1 is float16's 6.1015625, as a Clip node in float16 would use
    x = np.full((1, 1, 1, 1), 100.0, np.float16)
    attrs = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1, activation="none",
                 activation_params=[], input_activation="clip", input_activation_params=[0.0, 6.1])
    (y,) = fused_ops.fused_conv([x, np.ones((1, 1, 1, 1), np.float16)], attrs)
    assert y.dtype == np.float16 and float(y.item()) == 6.1015625


def test_fused_conv_input_activation_must_select_a_value():
    """Only activations whose value is one of their operands may run on the input: with
    anything else a float kernel and the reference in the input dtype would round apart."""
    attrs = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1, activation="none",
                 activation_params=[], input_activation="sigmoid", input_activation_params=[])
    with pytest.raises(ValueError, match="input_activation 'sigmoid'"):
        fused_ops.fused_conv([_rand(1, 2, 2, 1), _rand(1, 1, 1, 1)], attrs)


@pytest.mark.parametrize("mode,ceil,include", [("max", 0, 0), ("max", 1, 0), ("avg", 1, 0), ("avg", 0, 1)])
def test_pool_matches_onnx_pools(mode, ceil, include):
    x = _rand(2, 7, 8, 3)
    attrs = dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], dilations=[1, 1], ceil_mode=ceil)
    if mode == "max":
        onnx_attrs = dict(attrs, auto_pad="NOTSET", storage_order=0)
        want = REFERENCE_OPS["MaxPool"]([x.transpose(0, 3, 1, 2)], onnx_attrs)[0]
    else:
        onnx_attrs = dict(attrs, auto_pad="NOTSET", count_include_pad=include)
        onnx_attrs.pop("dilations")
        want = REFERENCE_OPS["AveragePool"]([x.transpose(0, 3, 1, 2)], onnx_attrs)[0]
    (got,) = fused_ops.pool([x], dict(attrs, mode=mode, count_include_pad=include))
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


def test_fused_gemm_transposes_batch_bias_and_gelu():
    a, b, bias = _rand(3, 5, 4), _rand(3, 6, 5), _rand(6)
    attrs = dict(trans_a=1, trans_b=1, alpha=0.5, activation="gelu_erf", activation_params=[])
    (got,) = fused_ops.fused_gemm([a, b, bias], attrs)
    y = 0.5 * np.swapaxes(a, 1, 2) @ np.swapaxes(b, 1, 2) + bias
    want = 0.5 * y * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    (tanh_form,) = fused_ops.fused_gemm([a, b, bias], dict(attrs, activation="gelu_tanh"))
    np.testing.assert_allclose(tanh_form, want, atol=1e-3)  # the approximation is close, not equal
    with pytest.raises(ValueError, match="silu"):
        fused_ops.fused_gemm([a, b, bias], dict(attrs, activation="silu"))


def test_layer_norm_with_residual_and_sum_output():
    x, r, g, b = _rand(2, 3, 16), _rand(2, 3, 16), _rand(16), _rand(16)
    y, s = fused_ops.layer_norm([x, g, b, r], dict(epsilon=1e-5, axis=-1, sum_output=1))
    ref = x + r
    want = (ref - ref.mean(-1, keepdims=True)) / np.sqrt(ref.var(-1, keepdims=True) + 1e-5) * g + b
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s, ref)
    assert len(fused_ops.layer_norm([x, g, None, None], dict(epsilon=1e-5, axis=-1, sum_output=0))) == 1


def test_attention_with_mask_both_k_layouts():
    q, k, v, mask = _rand(2, 3, 5, 4), _rand(2, 3, 7, 4), _rand(2, 3, 7, 6), _rand(1, 1, 5, 7)
    s = q @ np.swapaxes(k, -1, -2) * 0.3 + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    (got,) = fused_ops.attention([q, k, v, mask], dict(scale=0.3, k_transposed=0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    (got_t,) = fused_ops.attention([q, np.swapaxes(k, -1, -2), v, mask], dict(scale=0.3, k_transposed=1))
    np.testing.assert_allclose(got_t, want, rtol=1e-5, atol=1e-6)


def test_attention_layout_reads_and_writes_strided_views():
    """BERT's einsum layout: Q and V as [N, S, H*D] rows, K as [N, H, D, S] (keys contiguous), O
    written as [N, S, H*Dv]; symbolic N and S bound from the operands' shapes."""
    n, h, sq, sk, d, dv = 2, 3, 5, 7, 4, 6
    q, k, v = _rand(n, h, sq, d), _rand(n, h, sk, d), _rand(n, h, sk, dv)
    mask = _rand(n, 1, 1, sk)
    (want,) = fused_ops.attention([q, k, v, mask], dict(scale=0.3, k_transposed=0))
    layout = {"dims": ["N", h, "S", "T", d, dv],
              "q": [f"S*{h * d}", d, h * d, 1], "k": [f"T*{h * d}", f"T*{d}", 1, "T"],
              "v": [f"T*{h * dv}", dv, h * dv, 1], "o": [f"S*{h * dv}", dv, h * dv, 1],
              "shapes": {"q": ["N", "S", h * d], "k": ["N", h, d, "T"], "v": ["N", "T", h * dv],
                         "o": ["N", "S", h * dv]}}
    args = [q.transpose(0, 2, 1, 3).reshape(n, sq, h * d), k.transpose(0, 1, 3, 2).copy(),
            v.transpose(0, 2, 1, 3).reshape(n, sk, h * dv), mask]
    (got,) = fused_ops.attention(args, dict(scale=0.3, k_transposed=1, layout=layout))  # k_transposed ignored
    np.testing.assert_array_equal(got, want.transpose(0, 2, 1, 3).reshape(n, sq, h * dv))
    bad = dict(layout, q=[f"S*{h * d}", d, h * d, 2])
    with pytest.raises(ValueError, match="reach past"):
        fused_ops.attention(args, dict(scale=0.3, k_transposed=0, layout=bad))


def test_fused_elementwise_program_with_broadcast_and_multiple_outputs():
    x, c = _rand(2, 3, 4), _rand(4)
    program = [
        {"op": "Const", "args": [], "dtype": "float32", "value": 2.0},
        {"op": "Mul", "args": ["in0", "v0"], "dtype": "float32"},
        {"op": "Add", "args": ["v1", "in1"], "dtype": "float32"},
        {"op": "Greater", "args": ["v2", "in0"], "dtype": "bool"},
        {"op": "Where", "args": ["v3", "v2", "in0"], "dtype": "float32"},
    ]
    s, w = fused_ops.fused_elementwise([x, c], {"program": program, "outputs": ["v2", "v4"]})
    np.testing.assert_allclose(s, 2 * x + c, rtol=1e-6)
    np.testing.assert_allclose(w, np.where(2 * x + c > x, 2 * x + c, x), rtol=1e-6)


def test_activation_errors_name_the_problem():
    with pytest.raises(ValueError, match="swish"):
        fused_ops.apply_activation(_rand(3), "swish", [])
    with pytest.raises(ValueError, match="clip"):
        fused_ops.apply_activation(_rand(3), "clip", [0.0])
