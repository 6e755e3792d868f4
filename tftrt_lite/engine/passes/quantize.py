"""Quantize: INT8 engines quantize the inputs and weights of their convolutions and GEMMs.

What INT8 means here (TensorRT's implicit-quantization semantics, made explicit in the
graph): each quantized convolution or GEMM reads its activation input as int8 values with
one symmetric per-tensor scale (from calibration: ``scale = amax / 127``) and its constant
weights as int8 values with one symmetric scale per output channel; it accumulates the
products exactly and rescales. Everything else computes in float16, as an FP16 engine.

    x ─FusedConv(W, b)─► y      ==>     x ─Div(s)─Round─Clip(±127)─Mul(s)─► x̂ ─FusedConv(Ŵ, b)─► y
                                        Ŵ = dequantize(quantize(W, s_w[k]), s_w[k])   (per channel k)

Why as quantize-dequantize (QDQ) on the graph: the int8 grid is then part of the engine's
math that the reference executor checks on any machine, the QDQ chain is four ordinary
elementwise ops that fuse into the kernel producing ``x`` (or one small kernel after a
library call), and the conv/GEMM steps run on float16 tensor cores unchanged. Integer
values up to 127 and their products are exact in float16 inputs with float32
accumulation, so the result equals an int8 kernel's up to float16 rounding of the
dequantized operands (relative 2^-11, far below the int8 step of 1/127 of the range). No
int8 library kernel is used: the speed of an INT8 engine is that of an FP16 engine plus
the QDQ kernels.

Which nodes: ``tftrt.FusedConv``/``Conv`` with ``group == 1`` and ``tftrt.FusedGemm``/
``Gemm``/``MatMul`` whose weight (input 1) is a 2-D+ constant and whose data input
(input 0) is computed — the nodes :func:`quantizable_inputs` lists, whose data inputs
calibration measures. Depthwise convolutions, attention and GEMMs of two activations
stay float16. A node is left unquantized when ``precision_overrides`` names it or when
the activation ranges have no entry for its input.

Runs just before the ``precision`` pass, which then types the engine as FP16 (the QDQ
ops and the fake-quantized weights included).

Explicit precision (``use_calibration=False``: ``activation_ranges`` is None) adds
nothing here: the model's own quantize-dequantize nodes, rewritten by
``explicit_quantization``, are then the engine's only quantization, as in TensorRT's
explicit mode, where calibration ranges are ignored once a network has Q/DQ nodes.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from tftrt_lite.calibrate import QMAX, dequantize, quantize, scale_from_amax, weight_scales
from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.graph_edit import make_node, new_const, new_tensor
from tftrt_lite.engine.passes.precision import KEEP_FLOAT32, compile_overrides

_CONVS = ("tftrt.FusedConv", "Conv")
_GEMMS = ("tftrt.FusedGemm", "Gemm", "MatMul")


def quantizable_inputs(graph: Graph) -> Dict[str, str]:
    """``{node name: data-input tensor}`` of every node an INT8 engine may quantize."""
    out = {}
    for node in graph.nodes:
        axis = weight_axis(graph, node)
        if axis is not None:
            out[node.name] = node.inputs[0]
    return out


def weight_axis(graph: Graph, node: Node) -> Optional[int]:
    """The output-channel axis of ``node``'s constant weight, or None when the node is not
    quantizable (see the module docstring)."""
    if node.op not in _CONVS + _GEMMS or len(node.inputs) < 2 or not node.inputs[0]:
        return None
    x, w = graph.tensor(node.inputs[0]), graph.const(node.inputs[1])
    if x.is_const or x.dtype != "float32" or w is None or w.dtype != np.float32 or w.ndim < 2:
        return None
    if node.op in _CONVS:
        return 0 if int(node.attrs.get("group", 1)) == 1 else None   # OHWI and OIHW: O first
    if w.ndim != 2:
        return None
    trans_b = node.attrs.get("trans_b", node.attrs.get("transB", 0)) if node.op != "MatMul" else 0
    return 0 if trans_b else 1


def run(graph: Graph, ctx) -> None:
    if ctx.precision != "INT8" or ctx.activation_ranges is None:
        return
    ranges = ctx.activation_ranges
    skip = compile_overrides(ctx.precision_overrides)
    quantized: Dict[str, str] = {}     # activation tensor → its QDQ output
    done: List[str] = []
    for node in list(graph.nodes):
        axis = weight_axis(graph, node)
        if axis is None or any(p.search(node.name) for p, _ in skip):
            continue
        x = node.inputs[0]
        if x not in ranges:
            continue
        if x not in quantized:
            quantized[x] = _insert_qdq(graph, x, float(ranges[x]), before=node)
        node.inputs[0] = quantized[x]
        node.inputs[1] = _fake_quantized_weight(graph, node.inputs[1], axis)
        done.append(node.name)
    ctx.quantized_nodes = done
    graph.toposort()
    graph.remove_unused_tensors()


def _insert_qdq(graph: Graph, x: str, amax: float, before: Node) -> str:
    """Insert ``x ─Div(s)─Round─Clip(±127)─Mul(s)─►`` before ``before``; return its output.

    The chain is exactly ``calibrate.quantize`` then ``dequantize`` (float32 division,
    round half to even, saturate to ±127), which a fused elementwise kernel computes in
    float. The chain stays float32 (its constants exact; the casts around it fuse into
    the same kernel), so a small scale does not lose bits to float16."""
    scale = np.float32(scale_from_amax(amax))
    s = new_const(graph, f"{x}/quant_scale", np.asarray(scale, np.float32))
    lo = new_const(graph, f"{x}/quant_min", np.asarray(-QMAX, np.float32))
    hi = new_const(graph, f"{x}/quant_max", np.asarray(QMAX, np.float32))
    steps = [("Div", [x, s]), ("Round", None), ("Clip", [None, lo, hi]), ("Mul", [None, s])]
    nodes, prev = [], x
    for op, args in steps:
        out = new_tensor(graph, f"{x}/quant_{op.lower()}", "float32", graph.tensor(x).shape)
        inputs = [prev] if args is None else [prev if a is None else a for a in args]
        nodes.append(make_node(graph, op, f"{x}/quantize_{op.lower()}", inputs, [out], {KEEP_FLOAT32: 1}))
        prev = out
    at = graph.nodes.index(before)
    graph.nodes[at:at] = nodes
    return prev


def _fake_quantized_weight(graph: Graph, w: str, axis: int) -> str:
    """A new constant: ``w`` on its per-channel int8 grid (dequantized to float32)."""
    value = graph.const(w)
    scales = weight_scales(value, axis)
    return new_const(graph, f"{w}/int8", dequantize(quantize(value, scales, axis), scales, axis))
