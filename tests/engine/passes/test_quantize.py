"""The quantize pass (INT8 engines): int8 grids on the operands of convolutions and GEMMs.

What it must get right: every quantizable node reads its activation through exactly
``calibrate.quantize`` then ``dequantize`` with the calibrated scale (one chain per
tensor however many nodes read it) and its weight on a per-output-channel int8 grid;
nodes without a range, overridden nodes, depthwise convolutions and GEMMs of two
activations stay as they were; the chain stays float32 and fuses into one kernel. The
last test computes a quantized GEMM and convolution with integer arithmetic, independently
of the pass, and compares.
"""
import numpy as np
import pytest

from tftrt_lite.calibrate import dequantize, quantize, scale_from_amax, weight_scales
from tftrt_lite.engine.passes import PassContext, elementwise_fusion, precision, quantize as quantize_pass
from tftrt_lite.engine.passes.precision import KEEP_FLOAT32
from tftrt_lite.engine.reference import run_graph

from pass_graphs import GraphBuilder, random_feeds

RNG = np.random.default_rng(11)


def _two_gemms_sharing_input():
    """x ─FusedGemm(w1)─► a, x ─FusedGemm(w2, trans_b)─► b, a·bᵀ (two activations) ─► c."""
    b = GraphBuilder()
    x = b.input("x", ("N", 16))
    w1 = b.const(RNG.standard_normal((16, 8)).astype(np.float32), "w1")
    w2 = b.const(RNG.standard_normal((8, 16)).astype(np.float32), "w2")
    gemm = dict(trans_a=0, trans_b=0, alpha=1.0, activation="none", activation_params=[])
    a = b.op("tftrt.FusedGemm", [x, w1], ("N", 8), **gemm)
    c = b.op("tftrt.FusedGemm", [x, w2], ("N", 8), **{**gemm, "trans_b": 1})
    d = b.op("MatMul", [a, b.op("Transpose", [c], (8, "N"), perm=[1, 0])], ("N", "N"))
    return b.output(a, c, d)


def _run(graph, ranges, overrides=None):
    g = graph.copy()
    ctx = PassContext(precision="INT8", activation_ranges=ranges, precision_overrides=overrides)
    quantize_pass.run(g, ctx)
    g.verify()
    return g, ctx


def test_one_qdq_chain_per_tensor_and_per_channel_weights():
    original = _two_gemms_sharing_input()
    g, ctx = _run(original, {"x": 3.0})
    assert ctx.quantized_nodes == [n.name for n in original.nodes if n.op == "tftrt.FusedGemm"]
    chain = [n for n in g.nodes if n.attrs.get(KEEP_FLOAT32)]
    assert [n.op for n in chain] == ["Div", "Round", "Clip", "Mul"]       # shared by both GEMMs
    gemms = [n for n in g.nodes if n.op == "tftrt.FusedGemm"]
    assert {n.inputs[0] for n in gemms} == {chain[-1].outputs[0]}
    s = float(g.const(chain[0].inputs[1]))
    assert s == float(scale_from_amax(3.0))
    for node, axis, w in ((gemms[0], 1, "w1"), (gemms[1], 0, "w2")):
        scales = weight_scales(original.const(w), axis)
        np.testing.assert_array_equal(g.const(node.inputs[1]),
                                      dequantize(quantize(original.const(w), scales, axis), scales, axis))
    assert "w1" not in g.tensors and "w2" not in g.tensors                # the float weights are gone
    (matmul,) = [n for n in g.nodes if n.op == "MatMul"]                  # two activations: untouched
    assert matmul.inputs == [n for n in original.nodes if n.op == "MatMul"][0].inputs


def test_no_range_or_an_override_leaves_a_node_alone():
    g, ctx = _run(_two_gemms_sharing_input(), {})
    assert ctx.quantized_nodes == [] and not any(n.attrs.get(KEEP_FLOAT32) for n in g.nodes)
    first, second = [n.name for n in _two_gemms_sharing_input().nodes if n.op == "tftrt.FusedGemm"]
    g, ctx = _run(_two_gemms_sharing_input(), {"x": 3.0}, overrides={f"^{second}$": "FP16"})
    assert ctx.quantized_nodes == [first]


def test_other_precisions_are_untouched():
    g = _two_gemms_sharing_input()
    h = g.copy()
    quantize_pass.run(h, PassContext(precision="FP16", activation_ranges={"x": 3.0}))
    assert [n.op for n in h.nodes] == [n.op for n in g.nodes]


def _conv_graph(group):
    b = GraphBuilder()
    x = b.input("x", ("N", 6, 6, 4))
    w = b.const(RNG.standard_normal((4 if group == 4 else 8, 3, 3, 4 // group)).astype(np.float32), "w")
    y = b.op("tftrt.FusedConv", [x, w], ("N", 6, 6, 4 if group == 4 else 8), strides=[1, 1], pads=[1, 1, 1, 1],
             dilations=[1, 1], group=group, activation="relu", activation_params=[])
    return b.output(y)


def test_depthwise_convolutions_stay_float():
    g, ctx = _run(_conv_graph(group=4), {"x": 2.0})
    assert ctx.quantized_nodes == []
    g, ctx = _run(_conv_graph(group=1), {"x": 2.0})
    assert len(ctx.quantized_nodes) == 1


def test_qdq_chain_stays_float32_and_fuses_into_one_kernel():
    g, _ = _run(_conv_graph(group=1), {"x": 2.0})
    precision.run(g, PassContext(precision="INT8"))
    elementwise_fusion.run(g)
    g.verify()
    fused, _ = [n for n in g.nodes if n.op == "tftrt.FusedElementwise"]   # in: QDQ; out: the cast back
    ops = [ins["op"] for ins in fused.attrs["program"] if ins["op"] != "Const"]
    assert ops == ["Div", "Round", "Clip", "Mul", "Cast"]                 # x is float32: only the cast out
    assert g.tensor(fused.outputs[0]).dtype == "float16"
    (conv,) = [n for n in g.nodes if n.op == "tftrt.FusedConv"]
    assert g.const(conv.inputs[1]).dtype == np.float16


@pytest.mark.parametrize("graph, axis", [(_conv_graph, 0), (_two_gemms_sharing_input, 1)])
def test_quantized_math_equals_integer_arithmetic(graph, axis):
    """The engine graph's output against int8 × int8 → int32 products, rescaled."""
    g = graph(1) if graph is _conv_graph else graph()
    feeds = random_feeds(g, seed=5, bind={"N": 3})
    amax = 2.5
    q, _ = _run(g, {"x": amax})
    precision.run(q, PassContext(precision="INT8"))
    elementwise_fusion.run(q)
    got = run_graph(q, feeds)[g.outputs[0]].astype(np.float64)

    sx = scale_from_amax(amax)
    xq = quantize(feeds["x"], sx).astype(np.int64)
    w = g.const("w" if graph is _conv_graph else "w1")
    sw = weight_scales(w, axis)
    wq = quantize(w, sw, axis).astype(np.int64)
    if graph is _conv_graph:
        xp = np.pad(xq, ((0, 0), (1, 1), (1, 1), (0, 0)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))      # N,H,W,C,kh,kw
        acc = np.einsum("nhwcij,oijc->nhwo", win, wq)                                # exact int64
        want = np.maximum(acc * (float(sx) * sw.astype(np.float64)), 0)
    else:
        want = (xq @ wq) * (float(sx) * sw.astype(np.float64))
    # float16 rounding of the dequantized operands and of the stored output only
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.max(np.abs(want)))
