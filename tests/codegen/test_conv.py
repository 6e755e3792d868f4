"""The depthwise convolution kernel: which convs it claims, how it tiles them, its NVRTC
compilation, and (GPU) its numerics against ``fused_ops.fused_conv`` for strides,
dilations, asymmetric pads, residuals, activations, input activations, partial tiles and
every float storage type."""
import numpy as np
import pytest

from tftrt_lite.codegen.conv import (
    BLOCK_Z_MAX, GRID_YZ_MAX, LIVE_FLOATS, SMEM_MAX, THREADS, Tiling, depthwise_kernel_runs, depthwise_tiling,
    emit_depthwise_conv, is_depthwise)
from tftrt_lite.codegen.nvrtc import compile_kernel
from tftrt_lite.engine import symbolic
from tftrt_lite.engine.ir import saturate_cast
from tftrt_lite.engine.reference import run_graph
from cuda_launch import launch_guarded, random_feeds, require_gpu, to_device
from ir_graphs import one_node_graph

#: id → dict(channels, h, w, kernel (kh, kw), strides, pads [t, l, b, r], dilations,
#: residual, bias, activation, params, input_activation, input_params, batch). ``h``/``w``
#: may be symbols (stride 1, "same").
_BASE = dict(channels=32, h=9, w=9, kernel=(3, 3), strides=(1, 1), pads=[1, 1, 1, 1], dilations=(1, 1),
             residual=False, bias=True, activation="clip", params=[0.0, 6.0], input_activation="none",
             input_params=[], batch=3)
_RELU6_IN = dict(input_activation="clip", input_params=[0.0, 6.0])
CASES = {k: {**_BASE, **v} for k, v in {
    "mbv2_s1_relu6": {},
    "mbv2_s1_relu6_batch1": dict(batch=1),
    "mbv2_s2_same_asym": dict(channels=24, strides=(2, 2), pads=[0, 0, 1, 1]),
    "s2_same_asym_odd_width": dict(channels=24, h=10, w=11, strides=(2, 2), pads=[0, 0, 1, 1]),  # 5 columns
    "k5_residual_none": dict(channels=16, kernel=(5, 5), pads=[2, 2, 2, 2], residual=True, activation="none",
                             params=[]),
    "odd_channels_silu": dict(channels=7, pads=[1, 0, 1, 2], activation="silu", params=[]),  # VEC 1
    "dilation2_residual_relu": dict(channels=40, h=11, w=13, pads=[2, 2, 2, 2], dilations=(2, 2), residual=True,
                                    activation="relu", params=[]),
    "width_not_multiple_of_p": dict(channels=16, h=6, w=7, residual=True, bias=False),
    "partial_channel_block": dict(channels=260, h=5, w=6, residual=True, batch=2),
    "k7_many_groups": dict(channels=136, h=8, w=8, kernel=(7, 7), pads=[3, 3, 3, 3], activation="none",
                           params=[], batch=2),
    "rect_kernel_stride": dict(channels=8, h=9, w=12, kernel=(1, 5), strides=(1, 3), pads=[0, 2, 0, 1],
                               activation="none", params=[]),
    "output_1x1": dict(channels=16, h=3, w=3, pads=[0, 0, 0, 0], residual=True, batch=4),
    "large_dilation": dict(channels=8, h=12, w=20, pads=[0, 8, 0, 8], dilations=(1, 8), activation="none",
                           params=[], batch=1),
    "large_batch": dict(channels=16, h=5, w=5, residual=True, batch=1000),  # blocks span images
    "symbolic_hw": dict(h="H", w="W", residual=True),
    # input activations: MobileNetV2's ReLU6 moved from the expand conv (16-byte vectors);
    # a clip whose lower bound is not 0, so padding that took the activation would show
    # (vectors, and scalars for 7 channels); relu on scalars; a symbolic width
    "mbv2_s1_input_relu6": _RELU6_IN,
    "mbv2_s2_same_asym_input_relu6": dict(channels=24, strides=(2, 2), pads=[0, 0, 1, 1], **_RELU6_IN),
    "input_clip_above_zero_residual": dict(channels=16, h=7, w=10, residual=True, activation="none", params=[],
                                           input_activation="clip", input_params=[0.5, 1.5]),
    "odd_channels_input_clip_above_zero": dict(channels=7, pads=[1, 0, 1, 2], input_activation="clip",
                                               input_params=[0.5, 1.5]),
    "odd_channels_input_relu": dict(channels=5, h=6, w=7, strides=(2, 2), pads=[0, 0, 1, 1], activation="none",
                                    params=[], input_activation="relu"),
    "symbolic_hw_input_relu6": dict(h="H", w="W", residual=True, **_RELU6_IN),
}.items()}
#: Values of the spatial symbols of ``symbolic_hw`` (the width is not a multiple of P).
SPATIAL = {"H": 9, "W": 13}


def _out(size, pad_total, k, s, d):
    return (size + pad_total - (k - 1) * d - 1) // s + 1


def _graph(case_id, dtype, case=None):
    """The one-node graph of ``CASES[case_id]`` (or of ``case``) in ``dtype``."""
    c = case or CASES[case_id]
    (kh, kw), (sh, sw), (dh, dw), pads = c["kernel"], c["strides"], c["dilations"], c["pads"]
    h, w = c["h"], c["w"]
    if isinstance(h, str):
        oh, ow = h, w
    else:
        oh, ow = _out(h, pads[0] + pads[2], kh, sh, dh), _out(w, pads[1] + pads[3], kw, sw, dw)
    channels = c["channels"]
    rng = np.random.default_rng(len(case_id))
    consts = {"w": saturate_cast(rng.standard_normal((channels, kh, kw, 1)), dtype)}
    inputs = [("x", dtype, ("N", h, w, channels)), ("w", None, None)]
    if c["bias"]:
        consts["b"] = saturate_cast(rng.standard_normal(channels), dtype)
    if c["bias"] or c["residual"]:
        inputs.append(("b", None, None) if c["bias"] else ("", None, None))
    if c["residual"]:
        inputs.append(("z", dtype, ("N", oh, ow, channels)))
    attrs = {"strides": [sh, sw], "pads": pads, "dilations": [dh, dw], "group": channels,
             "activation": c["activation"], "activation_params": c["params"]}
    if c["input_activation"] != "none":  # an optional attr: the other cases go without it
        attrs.update(input_activation=c["input_activation"], input_activation_params=c["input_params"])
    return one_node_graph("tftrt.FusedConv", inputs, [("y", dtype, ("N", oh, ow, channels))], attrs, consts)


DTYPES = ("float32", "float16", "bfloat16")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_depthwise_kernel_compiles(case_id, dtype):
    g = _graph(case_id, dtype)
    spec = emit_depthwise_conv(g, g.nodes[0])
    assert spec is not None and "__syncthreads" in spec.source
    for arch in ("sm_80", "sm_90"):
        assert compile_kernel(spec.source, spec.name, arch).cubin[:4] == b"\x7fELF"


@pytest.mark.parametrize("dtype,op,lo,hi", [("float16", "f16x2", "0x00000000u", "0x46004600u"),
                                             ("bfloat16", "bf16x2", "0x00000000u", "0x40c040c0u"),
                                             ("float32", "f32", "0x00000000u", "0x40c00000u")])
def test_input_relu6_clips_each_loaded_word_of_a_vector(dtype, op, lo, hi):
    """On a 16-byte vector the clip runs on the loaded words — per word a NaN-keeping max
    against 0 and min against 6 (6.0 is 0x4600 in float16, 0x40c0 in bfloat16, 0x40c00000
    in float32) — inside the load's bounds check, so padding taps stay zero."""
    g = _graph("mbv2_s1_input_relu6", dtype)
    source = emit_depthwise_conv(g, g.nodes[0]).source
    loads = source.count("= *reinterpret_cast<const tl_vec<unsigned, 4>*>(xn + (xo + ")
    assert loads == 6  # a 3x3 stride-1 row of four pixels streams six columns
    assert source.count(f'asm("max.NaN.{op} %0, %0, %1;"') == 4 * loads
    assert source.count(f'asm("min.NaN.{op} %0, %0, %1;"') == 4 * loads
    assert f'"r"({lo})' in source and f'"r"({hi})' in source
    first = source.index("if (k0) {")
    assert source.index(f"max.NaN.{op}") > first and source.index("float xf0[") > source.index(f"min.NaN.{op}")


def test_input_activation_of_scalars_runs_in_float_on_in_image_columns():
    g = _graph("odd_channels_input_clip_above_zero", "float16")
    source = emit_depthwise_conv(g, g.nodes[0]).source
    assert "max.NaN" not in source
    guarded = source[source.index("      if (k0) {"):]
    assert guarded.index("tl_min<float>(tl_max<float>(xf0[v], i_v0), i_v1)") < guarded.index("}")
    assert "const float i_v0 = 0x1.0000000000000p-1f;" in source  # the bound 0.5


def test_only_depthwise_convs_are_claimed():
    g = _graph("mbv2_s1_relu6", "float32")
    assert is_depthwise(g, g.nodes[0])
    g.nodes[0].attrs["group"] = 1  # a dense conv (the filter shape no longer fits either)
    assert not is_depthwise(g, g.nodes[0]) and emit_depthwise_conv(g, g.nodes[0]) is None


# --------------------------------------------------------------------------- tiling (CPU)
#: MobileNetV2's depthwise convs (fp16 engine, and one fp32): (channels, vec, kernel, stride,
#: output width) → the tiling. E.g. block_2: 18 channel groups × 14 four-pixel tiles = 252
#: threads, one output row per block, one channel block.
MBV2 = {
    "expanded_conv_112x32": ((32, 8, (3, 3), 1, 112), Tiling(8, 4, 4, 28, 2, 1, 1)),
    "block_1_s2_56x96": ((96, 8, (3, 3), 2, 56), Tiling(8, 4, 12, 14, 1, 1, 1)),
    "block_2_56x144": ((144, 8, (3, 3), 1, 56), Tiling(8, 4, 18, 14, 1, 1, 1)),
    "block_4_28x192": ((192, 8, (3, 3), 1, 28), Tiling(8, 4, 24, 7, 1, 1, 1)),
    "block_11_14x576": ((576, 8, (3, 3), 1, 14), Tiling(8, 4, 24, 4, 2, 3, 1)),
    "block_14_7x960": ((960, 8, (3, 3), 1, 7), Tiling(8, 4, 30, 2, 4, 4, 1)),
    "block_2_fp32": ((144, 4, (3, 3), 1, 56), Tiling(4, 4, 18, 14, 1, 2, 1)),
}


@pytest.mark.parametrize("layer", sorted(MBV2))
def test_tiling_of_mobilenet_v2_layers(layer):
    (channels, vec, kernel, stride, out_w), want = MBV2[layer]
    assert depthwise_tiling(channels, vec, kernel, stride, 1, out_w) == want


@pytest.mark.parametrize("channels,vec", [(7, 1), (32, 8), (144, 8), (260, 4), (576, 8), (2304, 8), (3, 1)])
@pytest.mark.parametrize("kernel,stride,dilation", [((3, 3), 1, 1), ((3, 3), 2, 1), ((5, 5), 1, 1),
                                                    ((7, 7), 2, 1), ((3, 3), 1, 8), ((9, 9), 4, 1),
                                                    ((1, 5), 3, 1)])
@pytest.mark.parametrize("out_w", [1, 3, 7, 14, 56, 1000, 300000, "W"])
def test_tiling_respects_cuda_limits_and_budgets(channels, vec, kernel, stride, dilation, out_w):
    t = depthwise_tiling(channels, vec, kernel, stride, dilation, out_w)
    groups = channels // vec
    assert t.vec == vec and t.threads <= THREADS and t.block_rows <= BLOCK_Z_MAX
    assert t.channel_blocks * t.block_groups >= groups > (t.channel_blocks - 1) * t.block_groups
    assert t.channel_blocks <= GRID_YZ_MAX and 1 <= t.tile_blocks <= GRID_YZ_MAX
    assert kernel[0] * kernel[1] * t.block_channels * 4 <= SMEM_MAX
    live_taps = min(kernel[1], (t.pixels - 1) * stride // dilation + 1)
    assert t.pixels == 1 or vec * (t.pixels + live_taps + 1) <= LIVE_FLOATS
    if isinstance(out_w, int):
        tiles = -(-out_w // t.pixels)
        assert t.pixels // 2 < out_w  # no thread tile of pure padding
        # the grid covers the row, or blocks loop over the x-tiles grid.z cannot reach
        assert t.tile_blocks * t.block_tiles >= tiles or t.tile_blocks == GRID_YZ_MAX
    else:
        assert t.tile_blocks == 1  # a symbolic width is walked by a loop


def test_wide_stride_halves_the_pixels_per_thread():
    """9 taps of stride 4 keep every tap live over four pixels: 8·(4 + 9 + 1) floats
    exceed the budget, so each thread takes two pixels."""
    assert depthwise_tiling(64, 8, (9, 9), 4, 1, 100).pixels == 2
    assert depthwise_tiling(64, 8, (3, 3), 1, 1, 100).pixels == 4


def test_filters_too_large_to_stage_are_left_to_cudnn():
    assert depthwise_tiling(64, 8, (41, 41), 1, 1, 64) is None
    assert depthwise_tiling(64, 8, (39, 39), 1, 1, 64) is not None
    g = _graph("", "float16", {**_BASE, "h": 41, "w": 41, "kernel": (41, 41), "pads": [20] * 4})
    assert is_depthwise(g, g.nodes[0]) and emit_depthwise_conv(g, g.nodes[0]) is None
    assert not depthwise_kernel_runs(g, g.nodes[0])  # so no pass gives it an input activation


@pytest.mark.parametrize("channels,kernel", [(32, 3), (7, 3), (8, 39)])
def test_a_conv_the_kernel_runs_in_float32_it_runs_in_every_precision(channels, kernel):
    """``depthwise_kernel_runs`` on a float32 graph (as passes before ``precision`` see it)
    promises the kernel in float32 and in both half types; 39x39 taps of 8 halves just fit."""
    case = {**_BASE, "channels": channels, "h": kernel, "w": kernel, "kernel": (kernel, kernel),
            "pads": [kernel // 2] * 4}
    g = _graph("", "float32", case)
    assert depthwise_kernel_runs(g, g.nodes[0])
    for dtype in DTYPES:
        g = _graph("", dtype, case)
        assert emit_depthwise_conv(g, g.nodes[0]) is not None


@pytest.mark.parametrize("case_id,columns", [("mbv2_s1_relu6", 6), ("mbv2_s2_same_asym", 9),
                                             ("large_dilation", 12), ("k5_residual_none", 8)])
def test_each_filter_row_streams_each_input_column_once(case_id, columns):
    """P=4 outputs of a 3x3 stride-1 row read 6 input columns (not 12), stride 2 reads 9,
    a dilation of 8 only the 12 columns its taps touch, and 5x5 reads 8."""
    g = _graph(case_id, "float16")
    source = emit_depthwise_conv(g, g.nodes[0]).source
    assert source.count("(xn + (xo + ") == columns


def test_grid_puts_the_unbounded_rows_on_x():
    g = _graph("symbolic_hw", "float16")
    spec = emit_depthwise_conv(g, g.nodes[0])
    rows, channel_blocks, tiles = spec.grid
    assert symbolic.equal(rows.numerator, "N*H") and channel_blocks.numerator == 1 and tiles.numerator == 1
    assert spec.block[0] * spec.block[1] * spec.block[2] <= THREADS


# --------------------------------------------------------------------------- GPU numerics
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_depthwise_kernel_matches_reference(case_id, dtype, tmp_path):
    arch = require_gpu()
    env = {"N": CASES[case_id]["batch"], **SPATIAL}
    g = _graph(case_id, dtype)
    feeds = random_feeds(g, env, np.random.default_rng(5), dtype, scale=2)
    if CASES[case_id]["input_activation"] != "none":
        feeds["x"][0, 0, 0, 0] = np.nan  # not clipped to a bound: the windows holding it stay NaN
    want = run_graph(g, feeds)["y"].astype(np.float32)
    buffers = {t: to_device(v) for t, v in feeds.items()}
    buffers.update({t: to_device(g.tensor(t).value) for t in ("w", "b") if t in g.tensors})
    got = launch_guarded(emit_depthwise_conv(g, g.nodes[0]), buffers, want.shape, dtype, env, arch, tmp_path)
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=tol, atol=tol * max(1.0, np.nanmax(np.abs(want))))
