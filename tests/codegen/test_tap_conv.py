"""The 16-channel tensor-core (tap) convolution kernel: which convs it claims, that it and its
variants keep their accumulators in registers, and (GPU) the numerics of each against
``fused_ops.fused_conv`` for bias, residual and activations, pixel tiles that cross image
rows and a ragged last tile, in both half types."""
import numpy as np
import pytest

from tftrt_lite.codegen.nvrtc import compile_kernel
from tftrt_lite.codegen.tap_conv import VARIANTS, emit_tap_conv, tap_conv_runs
from tftrt_lite.engine import symbolic
from tftrt_lite.engine.ir import saturate_cast
from tftrt_lite.engine.reference import run_graph
from cuda_launch import launch_guarded, random_feeds, require_gpu, to_device
from ir_graphs import one_node_graph

_BASE = dict(outputs=64, h=11, w=12, kernel=(4, 4), bias=True, residual=False, activation="relu", params=[],
             batch=3)
CASES = {k: {**_BASE, **v} for k, v in {
    "resnet_stem_folded": {},                                 # 3·8·9 = 216 pixels: tiles cross rows, last ragged
    "residual_no_bias": dict(outputs=16, kernel=(2, 3), bias=False, residual=True, activation="none"),
    "one_tap_silu": dict(outputs=48, kernel=(1, 1), activation="silu", batch=2),
    "clip_batch1": dict(outputs=32, h=20, w=5, kernel=(3, 2), activation="clip", params=[0.0, 6.0], batch=1),
}.items()}
DTYPES = ("float16", "bfloat16")


def _graph(case_id, dtype, channels=16, strides=(1, 1), pads=(0, 0, 0, 0), outputs=None):
    c = CASES[case_id]
    (kh, kw), k = c["kernel"], outputs or c["outputs"]
    oh, ow = (c["h"] + pads[0] + pads[2] - kh) // strides[0] + 1, (c["w"] + pads[1] + pads[3] - kw) // strides[1] + 1
    rng = np.random.default_rng(len(case_id))
    consts = {"w": saturate_cast(rng.standard_normal((k, kh, kw, channels)) / np.sqrt(kh * kw * 16), dtype)}
    inputs = [("x", dtype, ("N", c["h"], c["w"], channels)), ("w", None, None)]
    if c["bias"]:
        consts["b"] = saturate_cast(rng.standard_normal(k), dtype)
    if c["bias"] or c["residual"]:
        inputs.append(("b", None, None) if c["bias"] else ("", None, None))
    if c["residual"]:
        inputs.append(("z", dtype, ("N", oh, ow, k)))
    attrs = {"strides": list(strides), "pads": list(pads), "dilations": [1, 1], "group": 1,
             "activation": c["activation"], "activation_params": c["params"]}
    return one_node_graph("tftrt.FusedConv", inputs, [("y", dtype, ("N", oh, ow, k))], attrs, consts)


def test_claims_stride_one_convs_over_16_half_channels_only():
    g = _graph("resnet_stem_folded", "float16")
    assert tap_conv_runs(g, g.nodes[0])
    for other in (_graph("resnet_stem_folded", "float32"),               # TF32 is not this kernel's mma
                  _graph("resnet_stem_folded", "float16", channels=8),  # half a k-step
                  _graph("resnet_stem_folded", "float16", strides=(2, 2)),
                  _graph("resnet_stem_folded", "float16", pads=(1, 1, 1, 1)),
                  _graph("resnet_stem_folded", "float16", outputs=72),  # more accumulators than it holds
                  _graph("resnet_stem_folded", "float16", outputs=24)):  # not a multiple of 16
        assert not tap_conv_runs(other, other.nodes[0]) and emit_tap_conv(other, other.nodes[0]) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_accumulators_stay_in_registers(case_id, dtype):
    g = _graph(case_id, dtype)
    spec = emit_tap_conv(g, g.nodes[0])
    assert len(spec.variants) == len(VARIANTS)
    for kernel in [spec, *spec.variants]:
        (tiles, *_rest) = kernel.grid
        assert symbolic.equal(tiles.numerator, symbolic.product(["N", *g.tensor("y").shape[1:3]]))
        ptx = compile_kernel(kernel.source, kernel.name, "sm_90").ptx
        assert ".local" not in ptx and "mma.sync.aligned.m16n8k16" in ptx


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_tap_kernel_matches_reference(case_id, dtype, tmp_path):
    arch = require_gpu()
    env = {"N": CASES[case_id]["batch"]}
    g = _graph(case_id, dtype)
    feeds = random_feeds(g, env, np.random.default_rng(9), dtype)
    want = run_graph(g, feeds)["y"].astype(np.float32)
    buffers = {t: to_device(v) for t, v in feeds.items()}
    buffers.update({t: to_device(tt.value) for t, tt in g.tensors.items() if tt.value is not None})
    spec = emit_tap_conv(g, g.nodes[0])
    for kernel in [spec, *spec.variants]:  # the runtime may choose any of them
        got = launch_guarded(kernel, buffers, want.shape, dtype, env, arch, tmp_path)
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-2 * max(1.0, np.abs(want).max()),
                                   err_msg=f"kernel {kernel.name} ({kernel.block[0] // 32} warps)")
