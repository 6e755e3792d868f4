"""Conv epilogue fusion: bias, residual add and activation into one ``tftrt.FusedConv``.

Why: cuDNN's fused ``conv → +bias → +z → activation`` runs the whole epilogue while the
output tile is still in registers; done separately, each step is a full read and write
of the activation. ResNet's ``conv → Add(shortcut) → Relu`` and MobileNet's
``conv → Clip(0, 6)`` become single library calls.

    x ─FusedConv(W,b)─► ─Add(const c)─► ─Add(z)─► ─Relu─► y
    ==>  x ─FusedConv(W, b+c, Z=z, activation=relu)─► y

A zero ``Pad`` of the spatial dims before a conv (Keras ``ZeroPadding2D``) becomes the
conv's own padding. So does one before a max pool whose input cannot be negative (a conv
with a relu-like epilogue: ResNet's ``conv1 → relu → ZeroPadding2D → MaxPool``): the pool
ignores out-of-bounds cells, and while every window keeps at least one real cell, the max
of non-negative values with or without extra zeros is the same — one pass over the
largest activation of the network saved.

Last, a ReLU6 no library epilogue can apply moves into the convs that read it. A 1×1 conv
runs as a cuBLASLt GEMM, which has RELU but no clip epilogue, so its ReLU6 costs an
in-place clip kernel — a full read and write of the expanded activation (MobileNetV2 FP16,
batch 128, H200: 17 such kernels, 435 us of a 2.4 ms pass; 16 of them clip an "expand"
conv that only a depthwise conv reads). When every reader is a depthwise conv run by the
generated kernel, which applies an ``input_activation`` to the values it loads, the GEMM
keeps the ReLU and each reader clips:

    x ─FusedConv 1×1 (clip 0, hi)─► e ─FusedConv depthwise─► y
    ==>  x ─FusedConv 1×1 (relu)─► e ─FusedConv depthwise (input_activation clip 0, hi)─► y

Exact: ``clip(relu(v), 0, hi) == clip(v, 0, hi)``; the reader zero-pads the clipped values
either way; rounding to a storage type (and a Cast the precision pass may put between the
two) is monotone, so it commutes with a clip to bounds of that type. A NaN stays NaN in
the reference and in the generated clip; whether cuBLASLt's RELU epilogue keeps a NaN
accumulator is cuBLASLt's, as for every 1×1 conv with a ReLU. Done here, not in a pass of
its own: it needs the activation and zero-pad fusions above and must precede
``precision`` (below), and the end of this pass is the first point where both hold.

The residual ``z`` must be computed before the conv runs (it is produced earlier in node
order and does not depend on the conv), and each intermediate must have no other reader.
When both operands of the Add are convs, the one later in node order takes the other as
its residual. Runs after layout, so every conv here is already NHWC, and before
``quantize`` and ``precision``: INT8 quantizes the 1×1 conv's input, never its output (a
depthwise conv's input stays float16), and the casts the precision pass may put between
the two convs would hide the pair from the rewrite, not change its result.
"""
from __future__ import annotations

import numpy as np

from tftrt_lite.engine.fused_ops import ACTIVATIONS, conv_input_activation
from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.activation_match import match_activation
from tftrt_lite.engine.passes.graph_edit import (
    channel_vector,
    new_const,
    only_read_by,
    producer,
    readers,
    remove_dead_nodes,
    scalar_const,
)


def run(graph: Graph, ctx=None) -> None:
    for conv in list(graph.nodes):
        if conv.op == "tftrt.FusedConv":
            _absorb_zero_pad(graph, conv)
        if conv.op == "tftrt.FusedConv" and conv.attrs["activation"] == "none":
            _fold_bias(graph, conv)
            _fuse_residual(graph, conv)
            _fuse_activation(graph, conv)
    for pool in list(graph.nodes):
        if pool.op == "tftrt.Pool" and pool.attrs["mode"] == "max":
            _absorb_zero_pad_into_max_pool(graph, pool)
    for conv in graph.nodes:
        _move_relu6_into_depthwise_readers(graph, conv)
    remove_dead_nodes(graph)


def _sole_reader(graph: Graph, conv: Node):
    y = conv.outputs[0]
    rs = readers(graph, y)
    return rs[0] if len(rs) == 1 and only_read_by(graph, y, rs) else None


def _spatial_zero_pad(graph: Graph, node: Node):
    """(Pad node, [top, left, bottom, right]) when ``node``'s input is an NHWC zero pad of
    H/W only, read by ``node`` alone; else None."""
    pad = producer(graph, node.inputs[0])
    if pad is None or pad.op != "Pad" or pad.attrs["mode"] not in ("constant", b"constant"):
        return None
    pads = graph.const(pad.inputs[1])
    value = pad.inputs[2] if len(pad.inputs) > 2 else ""
    if pads is None or (value and scalar_const(graph, value) != 0) or (len(pad.inputs) > 3 and pad.inputs[3]):
        return None
    begin, end = pads[:4].tolist(), pads[4:].tolist()
    if len(pads) != 8 or min(begin + end) < 0 or begin[0] or begin[3] or end[0] or end[3]:
        return None
    if not only_read_by(graph, node.inputs[0], [node]):
        return None
    return pad, [begin[1], begin[2], end[1], end[2]]


def _absorb_zero_pad(graph: Graph, conv: Node) -> None:
    """``Pad`` by zeros of H/W only (Keras ZeroPadding2D) becomes the conv's own padding —
    unless the conv has an input activation, which would then skip the padded zeros."""
    if conv_input_activation(conv.attrs)[0] != "none":
        return
    found = _spatial_zero_pad(graph, conv)
    if found is not None:
        _move_pad_into(graph, conv, *found)


def _absorb_zero_pad_into_max_pool(graph: Graph, pool: Node) -> None:
    found = _spatial_zero_pad(graph, pool)
    if found is None or pool.attrs["ceil_mode"] or list(pool.attrs["dilations"]) != [1, 1]:
        return
    pad, extra = found
    src = producer(graph, pad.inputs[0])
    nonnegative = src is not None and src.op == "tftrt.FusedConv" and (
        src.attrs["activation"] == "relu"
        or (src.attrs["activation"] == "clip" and src.attrs["activation_params"][0] >= 0))
    kh, kw = pool.attrs["kernel_shape"]
    total = [p + e for p, e in zip(pool.attrs["pads"], extra)]
    if nonnegative and max(total[0], total[2]) < kh and max(total[1], total[3]) < kw:
        _move_pad_into(graph, pool, pad, extra)


def _move_pad_into(graph: Graph, node: Node, pad: Node, extra) -> None:
    node.attrs["pads"] = [p + e for p, e in zip(node.attrs["pads"], extra)]
    node.inputs[0] = pad.inputs[0]
    graph.nodes.remove(pad)
    graph.remove_unused_tensors()


def _move_relu6_into_depthwise_readers(graph: Graph, conv: Node) -> None:
    """A 1×1 conv's clip(0, hi) becomes relu, and each of its readers clips its input
    instead (see the module docstring). Every reader must be a depthwise conv reading it as
    X alone, run by the generated kernel in any precision and without an input activation
    of its own (one clip is all a reader takes); the conv's output must not be a graph
    output, which would then return relu values."""
    # codegen imports engine.passes (graph_edit), so its predicates load at first use
    from tftrt_lite.codegen.conv import depthwise_kernel_runs, is_pointwise

    if not (is_pointwise(graph, conv) and conv.attrs["activation"] == "clip"
            and float(conv.attrs["activation_params"][0]) == 0.0):
        return
    e = conv.outputs[0]
    rs = readers(graph, e)
    if not rs or e in graph.outputs or not all(
            depthwise_kernel_runs(graph, r) and r.inputs[0] == e and e not in r.inputs[1:]
            and conv_input_activation(r.attrs)[0] == "none" for r in rs):
        return
    clip = [0.0, float(conv.attrs["activation_params"][1])]
    conv.attrs["activation"], conv.attrs["activation_params"] = "relu", []
    for r in rs:
        r.attrs["input_activation"], r.attrs["input_activation_params"] = "clip", list(clip)


def _fold_bias(graph: Graph, conv: Node) -> None:
    while True:
        r = _sole_reader(graph, conv)
        if r is None or r.op != "Add":
            return
        y = conv.outputs[0]
        other = r.inputs[1] if r.inputs[0] == y else r.inputs[0]
        c = graph.const(other)
        vec = None if c is None else channel_vector(c, 4, -1)
        channels = graph.const(conv.inputs[1]).shape[0]
        if vec is None or vec.size not in (1, channels):
            return
        bias = graph.const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else 0
        new_bias = (np.broadcast_to(vec, (channels,)) + bias).astype(c.dtype)
        conv.inputs[2:3] = [new_const(graph, conv.name + "/bias", new_bias)]
        _bypass(graph, conv, r)


def _fuse_residual(graph: Graph, conv: Node) -> None:
    r = _sole_reader(graph, conv)
    if r is None or r.op != "Add":
        return
    y = conv.outputs[0]
    z = r.inputs[1] if r.inputs[0] == y else r.inputs[0]
    if z == y or graph.const(z) is not None:
        return
    yt, zt = graph.tensor(y), graph.tensor(z)
    if yt.shape is None or zt.shape is None or tuple(yt.shape) != tuple(zt.shape) or yt.dtype != zt.dtype:
        return
    zp = producer(graph, z)
    if zp is not None and graph.nodes.index(zp) > graph.nodes.index(conv):
        return  # z is computed after the conv (maybe from it): the other operand's conv fuses
    while len(conv.inputs) < 4:
        conv.inputs.append("")
    conv.inputs[3] = z
    _bypass(graph, conv, r)


def _fuse_activation(graph: Graph, conv: Node) -> None:
    m = match_activation(graph, conv.outputs[0], [a for a in ACTIVATIONS if a != "none"])
    if m is None:
        return
    name, params, out, nodes = m
    conv.attrs["activation"], conv.attrs["activation_params"] = name, params
    _retarget(graph, conv, out, nodes)


def _bypass(graph: Graph, conv: Node, r: Node) -> None:
    _retarget(graph, conv, r.outputs[0], [r])


def _retarget(graph: Graph, conv: Node, out: str, absorbed) -> None:
    """Make ``conv`` write ``out`` (the last absorbed node's output) and drop ``absorbed``."""
    old = conv.outputs[0]
    conv.outputs[0] = out
    for n in absorbed:
        graph.nodes.remove(n)
    graph.tensors.pop(old, None)
    graph.remove_unused_tensors()
