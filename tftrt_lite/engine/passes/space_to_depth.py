"""Space-to-depth: a strided convolution over few channels becomes a stride-1 convolution
over 16, which a generated tensor-core kernel runs (``codegen/tap_conv.py``).

Why: cuDNN has no tensor-core kernel worth the name for 3 input channels. ResNet50's 7x7
stride-2 stem (3 → 64 channels) ran at 17 % of its roofline on the H200, 326 µs of a
3.0 ms FP16 engine at batch 128, after a 60 µs float32 → float16 input cast. Folding each
2x2 block of input pixels into channels (MLPerf's ResNet stem transform) turns it into a
4x4 stride-1 convolution over 12 channels, zero-padded to 16: one ``mma`` k-step per
filter tap. cuDNN's legacy API is no better at that shape (371–436 µs measured), so the
rewrite applies only where the generated kernel takes the result: float16/bfloat16 convs.

    x [N, H, W, C] ─FusedConv(W [K, kh, kw, C], stride s, pads)─► y
    ==>  x ─SpaceToDepth(s, pads')─► [N, Hs, Ws, 16] ─FusedConv(W' [K, ⌈kh/s⌉, ⌈kw/s⌉, 16], stride 1)─► y

with ``Xs[n, i, j, (p·s + q)·C + c] = Xpad[n, s·i + p, s·j + q, c]`` (``fused_ops.space_to_depth``)
and ``W'[k, a, b, (p·s + q)·C + c] = W[k, s·a + p, s·b + q, c]``, zero where ``s·a + p ≥ kh``
(or ``s·b + q ≥ kw``) and in the ``16 - s²·C`` padding channels. Then

    Σ_{a, b, p, q, c} W'[k, a, b, ·] Xs[n, y + a, x + b, ·] = Σ_{i, j, c} W[k, i, j, c] Xpad[n, s·y + i, s·x + j, c],

the original convolution, term for term (the extra taps multiply zeros). ``Hs = Ho + ⌈kh/s⌉ - 1``,
so the padded input is ``s·Hs`` rows: the original top padding, and a bottom padding that
may be smaller than the original (negative: rows no window reaches are dropped). The
transform kernel also converts the dtype (an FP16 engine's float32 image goes in, float16
comes out), so it replaces the input cast instead of adding a pass over memory.

Which convs: ``tftrt.FusedConv`` with one group, no input activation, dilation 1, equal
strides ``s ≥ 2`` no larger than either kernel dim, a constant filter, static H, W and C
with ``s²·C ≤ 16``, an output the tap kernel takes (``tap_conv.fits``: K a multiple of 16
up to 64), in an FP16, BF16 or INT8 engine and not pinned to FP32 by
``precision_overrides``; and not taken by the generated stem kernel
(``codegen/stem_conv.py``, faster on the small stems it accepts: MobileNetV2's).
"""
from __future__ import annotations

import numpy as np

from tftrt_lite.engine.fused_ops import conv_input_activation, conv_operands, space_to_depth
from tftrt_lite.engine.ir import Graph, Node, dtype_name
from tftrt_lite.engine.passes.graph_edit import make_node, new_const, new_tensor
from tftrt_lite.engine.passes.precision import REDUCED_DTYPES, compile_overrides, node_dtype

#: Folded channels, zero-padded: one mma k-step of the tap kernel.
FOLDED_CHANNELS = 16
#: The dtypes the tap kernel computes in.
_HALVES = ("float16", "bfloat16")


def run(graph: Graph, ctx) -> None:
    reduced = REDUCED_DTYPES[ctx.precision]
    if reduced is None:
        return
    overrides = compile_overrides(ctx.precision_overrides)
    for node in list(graph.nodes):  # the dtype the precision pass will give the conv
        if applies(graph, node) and node_dtype(node, reduced, overrides) in _HALVES:
            _rewrite(graph, node)
    graph.toposort()
    graph.remove_unused_tensors()


def applies(graph: Graph, node: Node) -> bool:
    """Whether the rewrite takes ``node``, precision aside (see the module docstring)."""
    if node.op != "tftrt.FusedConv" or int(node.attrs.get("group", 1)) != 1:
        return False
    if conv_input_activation(node.attrs)[0] != "none" or list(node.attrs["dilations"]) != [1, 1]:
        return False
    x, w, _, _, _ = conv_operands(node)
    weight = graph.const(w)
    shape = graph.tensor(x).shape
    if weight is None or weight.ndim != 4 or not all(isinstance(d, int) for d in shape[1:]):
        return False
    sh, sw = node.attrs["strides"]
    _, kh, kw, c = weight.shape
    if sh != sw or sh < 2 or kh < sh or kw < sw or sh * sh * c > FOLDED_CHANNELS:
        return False
    # codegen imports the passes package, so its predicates load at first use
    from tftrt_lite.codegen import stem_conv, tap_conv

    return tap_conv.fits(weight.shape[0], -(-kh // sh) * -(-kw // sw)) and not stem_conv.stem_conv_runs(graph, node)


def folded_filter(weight: np.ndarray, s: int, channels: int) -> np.ndarray:
    """``W'`` of the module docstring: [K, kh, kw, C] → [K, ⌈kh/s⌉, ⌈kw/s⌉, channels]. It is
    the activations' fold, with the K filters as the batch and zeros after each filter."""
    _, kh, kw, _ = weight.shape
    attrs = {"block": s, "pads": [0, 0, -kh % s, -kw % s], "channels": channels, "dtype": dtype_name(weight.dtype)}
    return space_to_depth([weight], attrs)[0]


def _rewrite(graph: Graph, conv: Node) -> None:
    x, w, _, _, y = conv_operands(conv)
    s = int(conv.attrs["strides"][0])
    n, h, wd, c = graph.tensor(x).shape
    _, ho, wo, _ = graph.tensor(y).shape
    weight = graph.const(w)
    channels = FOLDED_CHANNELS
    folded = folded_filter(weight, s, channels)
    hs, ws = ho + folded.shape[1] - 1, wo + folded.shape[2] - 1
    top, left = int(conv.attrs["pads"][0]), int(conv.attrs["pads"][1])
    pads = [top, left, s * hs - h - top, s * ws - wd - left]
    dtype = graph.tensor(x).dtype
    xs = new_tensor(graph, f"{x}/space_to_depth", dtype, (n, hs, ws, channels))
    s2d = make_node(graph, "tftrt.SpaceToDepth", f"{conv.name}/space_to_depth", [x], [xs],
                    {"block": s, "pads": pads, "channels": channels, "dtype": dtype})
    graph.nodes.insert(graph.nodes.index(conv), s2d)
    conv.inputs[0] = xs
    conv.inputs[1] = new_const(graph, f"{w}/space_to_depth", folded)
    conv.attrs["strides"] = [1, 1]
    conv.attrs["pads"] = [0, 0, 0, 0]
    if "kernel_shape" in conv.attrs:
        conv.attrs["kernel_shape"] = list(folded.shape[1:3])
