"""The few-input-channel (stem) convolution kernel: which convs it claims, that its filter
folds into the code (no local memory), and (GPU) its numerics against
``fused_ops.fused_conv`` for strides, asymmetric pads, dilations, residuals, activations,
scalar and vector stores, in every float storage type."""
import numpy as np
import pytest

from tftrt_lite.codegen.nvrtc import compile_kernel
from tftrt_lite.codegen.stem_conv import MAX_MACS, emit_stem_conv, stem_conv_runs
from tftrt_lite.engine import symbolic
from tftrt_lite.engine.ir import saturate_cast
from tftrt_lite.engine.reference import run_graph
from cuda_launch import launch, launch_guarded, random_feeds, require_gpu, to_device, to_host
from ir_graphs import one_node_graph

_BASE = dict(channels=3, outputs=32, h=17, w=16, kernel=(3, 3), strides=(2, 2), pads=[0, 0, 1, 1],
             dilations=(1, 1), bias=True, residual=False, activation="clip", params=[0.0, 6.0], batch=3)
CASES = {k: {**_BASE, **v} for k, v in {
    "mbv2_stem_relu6": {},                                   # 3x3 s2 "same" (pads only at the end)
    "stem_batch1_no_bias": dict(batch=1, bias=False, activation="relu", params=[]),
    "grey_five_outputs": dict(channels=1, outputs=5, pads=[1, 1, 1, 1], strides=(1, 1)),   # scalar stores
    "rgba_dilated_residual": dict(channels=4, outputs=16, h=12, w=13, strides=(1, 1), pads=[2, 2, 2, 2],
                                  dilations=(2, 2), residual=True, activation="none", params=[]),
    "rect_kernel_silu": dict(outputs=24, kernel=(1, 5), strides=(1, 3), pads=[0, 2, 0, 1], activation="silu",
                             params=[]),
}.items()}
DTYPES = ("float32", "float16", "bfloat16")


def _out(size, pad_total, k, s, d):
    return (size + pad_total - (k - 1) * d - 1) // s + 1


def _graph(case_id, dtype, group=1, input_activation=None, weights_const=True):
    c = CASES[case_id]
    (kh, kw), (sh, sw), (dh, dw), pads = c["kernel"], c["strides"], c["dilations"], c["pads"]
    oh, ow = _out(c["h"], pads[0] + pads[2], kh, sh, dh), _out(c["w"], pads[1] + pads[3], kw, sw, dw)
    ch, k = c["channels"], c["outputs"]
    rng = np.random.default_rng(len(case_id))
    consts = {"w": saturate_cast(rng.standard_normal((k, kh, kw, ch // group)), dtype)} if weights_const else {}
    inputs = [("x", dtype, ("N", c["h"], c["w"], ch)),
              ("w", None, None) if weights_const else ("w", dtype, (k, kh, kw, ch // group))]
    if c["bias"]:
        consts["b"] = saturate_cast(rng.standard_normal(k), dtype)
    if c["bias"] or c["residual"]:
        inputs.append(("b", None, None) if c["bias"] else ("", None, None))
    if c["residual"]:
        inputs.append(("z", dtype, ("N", oh, ow, k)))
    attrs = {"strides": [sh, sw], "pads": pads, "dilations": [dh, dw], "group": group,
             "activation": c["activation"], "activation_params": c["params"]}
    if input_activation:
        attrs.update(input_activation=input_activation, input_activation_params=[0.0, 6.0])
    return one_node_graph("tftrt.FusedConv", inputs, [("y", dtype, ("N", oh, ow, k))], attrs, consts)


def test_claims_stems_and_leaves_other_convs_to_cudnn():
    g = _graph("mbv2_stem_relu6", "float16")
    assert stem_conv_runs(g, g.nodes[0])
    for other in (_graph("mbv2_stem_relu6", "float16", input_activation="clip"),
                  _graph("mbv2_stem_relu6", "float32", weights_const=False),
                  _graph("rgba_dilated_residual", "float32", group=2)):
        assert not stem_conv_runs(other, other.nodes[0]) and emit_stem_conv(other, other.nodes[0]) is None
    wide = one_node_graph("tftrt.FusedConv", [("x", "float32", ("N", 9, 9, 8)), ("w", None, None)],
                          [("y", "float32", ("N", 9, 9, 4))],
                          {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1,
                           "activation": "none", "activation_params": []},
                          {"w": np.ones((4, 3, 3, 8), np.float32)})
    assert not stem_conv_runs(wide, wide.nodes[0])  # 8 input channels
    resnet = one_node_graph("tftrt.FusedConv", [("x", "float32", ("N", 224, 224, 3)), ("w", None, None)],
                            [("y", "float32", ("N", 112, 112, 64))],
                            {"strides": [2, 2], "pads": [2, 3, 3, 2], "dilations": [1, 1], "group": 1,
                             "activation": "relu", "activation_params": []},
                            {"w": np.ones((64, 7, 7, 3), np.float32)})
    assert 7 * 7 * 3 * 64 > MAX_MACS and not stem_conv_runs(resnet, resnet.nodes[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_filter_folds_into_the_code(case_id, dtype):
    """Fully unrolled, the filter array indexes are constants: no local memory in the PTX."""
    g = _graph(case_id, dtype)
    spec = emit_stem_conv(g, g.nodes[0])
    (pixels, *_rest) = spec.grid
    assert symbolic.equal(pixels.numerator, symbolic.product(["N", *g.tensor("y").shape[1:3]]))
    ptx = compile_kernel(spec.source, spec.name, "sm_90").ptx
    assert ".local" not in ptx and "ld.local" not in ptx and "st.local" not in ptx
    vector = CASES[case_id]["outputs"] % (4 if dtype == "float32" else 8) == 0
    assert ("st.global.v4" in ptx) == vector


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_stem_kernel_matches_reference(case_id, dtype, tmp_path):
    arch = require_gpu()
    env = {"N": CASES[case_id]["batch"]}
    g = _graph(case_id, dtype)
    feeds = random_feeds(g, env, np.random.default_rng(6), dtype, scale=2)
    want = run_graph(g, feeds)["y"].astype(np.float32)
    buffers = {t: to_device(v) for t, v in feeds.items()}
    got = launch_guarded(emit_stem_conv(g, g.nodes[0]), buffers, want.shape, dtype, env, arch, tmp_path)
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))


@pytest.mark.gpu
def test_unaligned_output_takes_scalar_stores(tmp_path):
    arch = require_gpu()
    env = {"N": 2}
    g = _graph("mbv2_stem_relu6", "float16")
    rng = np.random.default_rng(7)
    x = saturate_cast(rng.standard_normal([2, 17, 16, 3]), "float16")
    want = run_graph(g, {"x": x})["y"].astype(np.float32)
    out = to_device(np.full(want.size + 1, np.nan, np.float16))
    buffers = {"x": to_device(x), "y": out[1:].reshape(want.shape)}  # 2 bytes off 16-byte alignment
    launch(emit_stem_conv(g, g.nodes[0]), buffers, env, arch, tmp_path)
    np.testing.assert_allclose(to_host(buffers["y"], "float16").astype(np.float32), want, rtol=1e-2,
                               atol=1e-2 * max(1.0, np.abs(want).max()))
