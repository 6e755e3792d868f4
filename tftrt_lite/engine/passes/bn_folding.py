"""Fold inference BatchNormalization and per-channel constant Mul/Add into the conv/gemm before.

Why: at inference a BatchNorm is a per-channel affine map ``y = x·s + t``; applied to a
linear op's output it can be absorbed exactly into that op's weights and bias
(``W' = W·s`` along the output-channel axis, ``b' = b·s + t``), removing a full
read-modify-write of the activation. Keras 3 BatchNormalization reaches the graph as
``Mul``/``Add`` by constants (tf2onnx folds most of those into the conv already, but not
after depthwise convs), and ONNX exporters emit ``BatchNormalization``; both are handled.

    x ─Conv(W,b)─► ─BatchNormalization(γ,β,μ,σ²)─► y    ==>   x ─Conv(W·s, (b-μ)·s+β)─► y
    x ─Conv(W,b)─► ─Mul(c)─► ─Add(d)─► y                ==>   x ─Conv(W·c, b·c+d)─► y
        with s = γ / sqrt(σ² + ε); c, d constant along every axis but the channel one

Absorbing producers: ONNX ``Conv`` (NCHW), ``tftrt.FusedConv`` (NHWC) and
``tftrt.FusedGemm`` without an activation, and ``MatMul`` with a constant 2-D weight (scale
only: its bias belongs to the gemm fusion). A BatchNormalization with nothing to fold into
becomes ``Mul``/``Add`` by per-channel constants, which the elementwise fusion then merges.
The conv's output must have no other reader, or folding would change what they see.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.graph_edit import (
    channel_vector,
    forward,
    make_node,
    new_const,
    new_tensor,
    only_read_by,
    producer,
    remove_dead_nodes,
)
from tftrt_lite.errors import UnsupportedOpError


def run(graph: Graph, ctx=None) -> None:
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node in graph.nodes and node.op in ("BatchNormalization", "Mul", "Div", "Add", "Sub"):
                changed |= _fold_into_producer(graph, node)
        for node in list(graph.nodes):
            if node.op == "BatchNormalization":
                _lower_batchnorm(graph, node)
                changed = True
    remove_dead_nodes(graph)


# -- what a producer can absorb ----------------------------------------------------------

def _channel_axes(graph: Graph, node: Node) -> Optional[Tuple[int, int, bool]]:
    """For an absorbing producer (weight = input 1, bias = input 2): (output channel axis,
    weight axis of the output channel, whether it takes a bias). None if it cannot absorb."""
    w = graph.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return None
    if node.op == "Conv":
        return 1, 0, True
    if node.op == "tftrt.FusedConv":
        plain = node.attrs["activation"] == "none" and (len(node.inputs) < 4 or not node.inputs[3])
        return (-1, 0, True) if plain else None
    if node.op == "tftrt.FusedGemm":
        if node.attrs["activation"] != "none" or w.ndim != 2:
            return None
        return -1, 0 if node.attrs["trans_b"] else 1, True
    if node.op == "MatMul" and w.ndim == 2:
        return -1, 1, False
    return None


def _affine(graph: Graph, node: Node, x: str, rank: int, axis: int):
    """(scale, shift) vectors of the per-channel affine map ``node`` applies to input ``x``,
    or None if ``node`` is not such a map along ``axis``."""
    if node.op == "BatchNormalization":
        if node.inputs[0] != x or len([o for o in node.outputs if o]) != 1:
            return None
        if axis % rank != 1:
            return None  # ONNX BN normalises axis 1; only NCHW producers qualify
        gamma, beta, mean, var = (graph.const(i) for i in node.inputs[1:5])
        if any(v is None for v in (gamma, beta, mean, var)):
            return None
        s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + node.attrs["epsilon"])
        return s, beta.astype(np.float64) - mean.astype(np.float64) * s
    if node.inputs[0] == x:
        other = node.inputs[1]
    elif node.inputs[1] == x and node.op in ("Mul", "Add"):
        other = node.inputs[0]
    else:
        return None
    c = graph.const(other)
    if c is None or c.dtype.kind != "f":
        return None
    vec = channel_vector(c, rank, axis)
    if vec is None:
        return None
    vec = vec.astype(np.float64)
    one, zero = np.ones_like(vec), np.zeros_like(vec)
    if node.op == "Div":  # x / 0 is inf or nan: folding 1/0 into weights would not keep that
        return None if np.any(vec == 0) else (1.0 / vec, zero)
    return {"Mul": (vec, zero), "Add": (one, vec), "Sub": (one, -vec)}[node.op]


def _fold_into_producer(graph: Graph, node: Node) -> bool:
    x = node.inputs[0]
    prod = producer(graph, x)
    if node.op in ("Mul", "Add") and (prod is None or _channel_axes(graph, prod) is None):
        x = node.inputs[1]
        prod = producer(graph, x)
    if prod is None or not only_read_by(graph, x, [node]):
        return False
    axes = _channel_axes(graph, prod)
    out_shape = graph.tensor(x).shape
    if axes is None or out_shape is None:
        return False
    ch_axis, w_axis, takes_bias = axes
    affine = _affine(graph, node, x, len(out_shape), ch_axis)
    if affine is None:
        return False
    scale, shift = affine
    w = graph.const(prod.inputs[1])
    channels = w.shape[w_axis]
    if scale.size not in (1, channels) or shift.size not in (1, channels):
        return False
    has_shift = bool(np.any(shift != 0))
    if has_shift and not takes_bias:
        return False
    # x is a node output read only by ``node`` (checked above), so forwarding cannot fail.
    forward(graph, node.outputs[0], x)
    graph.nodes.remove(node)
    scale = np.broadcast_to(scale, (channels,))
    shift = np.broadcast_to(shift, (channels,))
    bshape = [1] * w.ndim
    bshape[w_axis] = channels
    new_w = (w.astype(np.float64) * scale.reshape(bshape)).astype(w.dtype)
    prod.inputs[1] = new_const(graph, prod.inputs[1] + "/folded", new_w)
    if takes_bias:
        old = graph.const(prod.inputs[2]) if len(prod.inputs) > 2 and prod.inputs[2] else None
        if old is not None or has_shift:
            b = np.zeros(channels) if old is None else old.astype(np.float64).reshape(-1)
            prod.inputs[2:3] = [new_const(graph, prod.name + "/bias", (b * scale + shift).astype(w.dtype))]
    return True


def _lower_batchnorm(graph: Graph, node: Node) -> None:
    """Rewrite a BatchNormalization nothing absorbed as ``Mul(s)`` then ``Add(t)``."""
    x, y = node.inputs[0], node.outputs[0]
    xt = graph.tensor(x)
    gamma, beta, mean, var = (graph.const(i) for i in node.inputs[1:5])
    if any(v is None for v in (gamma, beta, mean, var)) or xt.shape is None:
        raise UnsupportedOpError(f"BatchNormalization node {node.name!r}: statistics must be "
                                 f"constants and the input rank known (inference only)")
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + node.attrs["epsilon"])
    t = beta.astype(np.float64) - mean.astype(np.float64) * s
    bshape = (-1,) + (1,) * (len(xt.shape) - 2)
    dtype = np.dtype(xt.dtype)
    sc = new_const(graph, node.name + "/scale", s.reshape(bshape).astype(dtype))
    sh = new_const(graph, node.name + "/shift", t.reshape(bshape).astype(dtype))
    mid = new_tensor(graph, node.name + "/scaled", xt.dtype, xt.shape)
    idx = graph.nodes.index(node)
    graph.nodes[idx:idx + 1] = [
        make_node(graph, "Mul", node.name + "/mul", [x, sc], [mid]),
        make_node(graph, "Add", node.name + "/add", [mid, sh], [y]),
    ]
