"""The depthwise convolution kernel: which convs it claims, its NVRTC compilation, and (GPU)
its numerics against ``fused_ops.fused_conv`` for strides, asymmetric pads, residuals,
activations and every float storage type."""
import numpy as np
import pytest

from tftrt_lite.codegen.conv import emit_depthwise_conv, is_depthwise
from tftrt_lite.codegen.nvrtc import compile_kernel
from tftrt_lite.engine import symbolic
from tftrt_lite.engine.ir import saturate_cast
from tftrt_lite.engine.reference import np_dtype, run_graph
from cuda_launch import gpu_arch, launch, to_device, to_host
from ir_graphs import one_node_graph

#: id → (channels, kernel, stride, pads [t, l, b, r], residual, activation, params)
CASES = {
    "mbv2_s1_relu6": (32, 3, 1, [1, 1, 1, 1], False, "clip", [0.0, 6.0]),
    "mbv2_s2_same_asym": (24, 3, 2, [0, 0, 1, 1], False, "clip", [0.0, 6.0]),
    "k5_residual_none": (16, 5, 1, [2, 2, 2, 2], True, "none", []),
    "odd_channels_silu": (7, 3, 1, [1, 0, 1, 2], False, "silu", []),
}


def _graph(case_id, dtype):
    channels, k, s, pads, residual, act, params = CASES[case_id]
    h = w = 9
    oh = (h + pads[0] + pads[2] - k) // s + 1
    ow = (w + pads[1] + pads[3] - k) // s + 1
    rng = np.random.default_rng(len(case_id))
    weights = saturate_cast(rng.standard_normal((channels, k, k, 1)), dtype)
    bias = saturate_cast(rng.standard_normal(channels), dtype)
    inputs = [("x", dtype, ("N", h, w, channels)), ("w", None, None), ("b", None, None)]
    if residual:
        inputs.append(("z", dtype, ("N", oh, ow, channels)))
    return one_node_graph("tftrt.FusedConv", inputs, [("y", dtype, ("N", oh, ow, channels))],
                          {"strides": [s, s], "pads": pads, "dilations": [1, 1], "group": channels,
                           "activation": act, "activation_params": params}, {"w": weights, "b": bias})


DTYPES = ("float32", "float16", "bfloat16")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_depthwise_kernel_compiles(case_id, dtype):
    g = _graph(case_id, dtype)
    spec = emit_depthwise_conv(g, g.nodes[0])
    assert spec is not None and "tl_vec" in spec.source
    for arch in ("sm_80", "sm_90"):
        assert compile_kernel(spec.source, spec.name, arch).cubin[:4] == b"\x7fELF"


def test_only_depthwise_convs_are_claimed():
    g = _graph("mbv2_s1_relu6", "float32")
    assert is_depthwise(g, g.nodes[0])
    g.nodes[0].attrs["group"] = 1  # a dense conv (the filter shape no longer fits either)
    assert not is_depthwise(g, g.nodes[0]) and emit_depthwise_conv(g, g.nodes[0]) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_depthwise_kernel_matches_reference(case_id, dtype, tmp_path):
    arch = gpu_arch()
    if arch is None:
        pytest.skip("needs a CUDA GPU visible to CuPy")
    env = {"N": 3}
    g = _graph(case_id, dtype)
    rng = np.random.default_rng(5)
    feeds = {t: saturate_cast(rng.standard_normal([symbolic.evaluate(d, env) for d in g.tensor(t).shape]), dtype)
             for t in g.inputs}
    want = run_graph(g, feeds)["y"].astype(np.float32)
    buffers = {t: to_device(v) for t, v in feeds.items()}
    buffers.update({t: to_device(g.tensor(t).value) for t in ("w", "b")})
    buffers["y"] = to_device(np.full(want.shape, np.nan, np_dtype(dtype)))
    launch(emit_depthwise_conv(g, g.nodes[0]), buffers, env, arch, tmp_path)
    got = to_host(buffers["y"], dtype)
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))
