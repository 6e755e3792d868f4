"""Attention fusion: ``softmax(Q·Kᵀ·scale + mask)·V`` becomes one ``tftrt.Attention``.

Why: unfused, attention writes and re-reads the [.., Sq, Sk] score matrix three times
(matmul, scale/softmax, matmul); a fused (flash-style) kernel keeps it on chip. Keras
``MultiHeadAttention`` lowers through ``Einsum``, which tf2onnx rewrites to batched
``MatMul``s wrapped in Reshape/Squeeze/Unsqueeze views of the [B·H, S, S] scores:

    Q ─┐                                                         V ─┐
       MatMul ─► Reshape ─► Squeeze ─► Mul(scale) ─► [Add(mask)] ─► Softmax ─►
    Kᵀ ┘        Unsqueeze ─► Reshape ─► MatMul ─► O
    ==>  Q, K, V [, mask] ─Attention(scale, k_transposed)─► O

Anchor: a last-axis ``Softmax``. Up from it: scalar ``Mul``/``Div`` (the scale), an ``Add``
of a non-constant (the mask; added to scores of the QK matmul's own shape, with no view
between it and the softmax), views that keep the last axis, then the QK ``MatMul``. Down from it: views, then the ``MatMul`` that
reads the probabilities as its left operand. The views must cancel out — the
probabilities reach the second matmul in the exact shape the first one produced — and
every intermediate must have no other reader.
"""
from __future__ import annotations

from typing import List

from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.graph_edit import (
    VIEW_OPS,
    make_node,
    producer,
    readers,
    remove_dead_nodes,
    scalar_const,
)


def run(graph: Graph, ctx=None) -> None:
    for node in list(graph.nodes):
        if node in graph.nodes and node.op == "Softmax":
            _fuse(graph, node)
    remove_dead_nodes(graph)


def _keeps_last_axis(graph: Graph, view: Node) -> bool:
    a, b = graph.tensor(view.inputs[0]).shape, graph.tensor(view.outputs[0]).shape
    return a is not None and b is not None and len(a) > 0 and len(b) > 0 and a[-1] == b[-1]


def _reaches_scores(graph: Graph, t: str) -> bool:
    """Whether ``t`` is a MatMul output, seen through scalar scaling and last-axis views."""
    while True:
        p = producer(graph, t)
        if p is None:
            return False
        if p.op == "MatMul":
            return True
        scalar = [scalar_const(graph, i) is not None for i in p.inputs[:2]]
        if p.op in ("Mul", "Div") and scalar[1]:
            t = p.inputs[0]
        elif p.op == "Mul" and scalar[0]:
            t = p.inputs[1]
        elif p.op in VIEW_OPS and _keeps_last_axis(graph, p):
            t = p.inputs[0]
        else:
            return False


def _fuse(graph: Graph, softmax: Node) -> None:
    rank = graph.tensor(softmax.inputs[0]).rank
    if rank is None or softmax.attrs["axis"] % rank != rank - 1:
        return
    nodes: List[Node] = [softmax]
    scale, mask, viewed, masked_shape = 1.0, "", False, None
    t = softmax.inputs[0]
    while True:
        p = producer(graph, t)
        if p is None or len(readers(graph, t)) != 1 or t in graph.outputs:
            return
        c = [scalar_const(graph, i) for i in p.inputs[:2]]
        if p.op == "Mul" and (c[0] is not None or c[1] is not None):
            scale *= c[1] if c[1] is not None else c[0]
            t = p.inputs[0] if c[1] is not None else p.inputs[1]
        elif p.op == "Div" and c[1] is not None:
            scale /= c[1]
            t = p.inputs[0]
        elif p.op == "Add" and not mask and not viewed and all(graph.const(i) is None for i in p.inputs):
            t, mask = p.inputs
            if not _reaches_scores(graph, t):
                t, mask = mask, t
            if not _reaches_scores(graph, t):
                return
            masked_shape = graph.tensor(t).shape
        elif p.op in VIEW_OPS and _keeps_last_axis(graph, p):
            viewed = True
            t = p.inputs[0]
        elif p.op == "MatMul":
            nodes.append(p)
            qk = p
            break
        else:
            return
        nodes.append(p)
    scores = qk.outputs[0]
    # down: views to the PV matmul
    t = softmax.outputs[0]
    while True:
        rs = readers(graph, t)
        if len(rs) != 1 or t in graph.outputs:
            return
        r = rs[0]
        if r.op in VIEW_OPS and _keeps_last_axis(graph, r):
            nodes.append(r)
            t = r.outputs[0]
        elif r.op == "MatMul" and r.inputs[0] == t and r.inputs[1] != t:
            nodes.append(r)
            pv = r
            break
        else:
            return
    s_shape, p_shape = graph.tensor(scores).shape, graph.tensor(t).shape
    if s_shape is None or p_shape is None or tuple(s_shape) != tuple(p_shape):
        return
    if mask and tuple(masked_shape or ()) != tuple(s_shape):
        return  # the mask was added in another view of the scores
    q, kt, v = qk.inputs[0], qk.inputs[1], pv.inputs[1]
    ranks = {graph.tensor(x).rank for x in (q, kt, v)}
    if len(ranks) != 1 or None in ranks:
        return
    k, k_transposed = kt, 1
    tp = producer(graph, kt)
    r_ = graph.tensor(kt).rank
    if tp is not None and tp.op == "Transpose" and list(tp.attrs["perm"]) == list(range(r_ - 2)) + [r_ - 1, r_ - 2] \
            and len(readers(graph, kt)) == 1 and kt not in graph.outputs:
        k, k_transposed = tp.inputs[0], 0
        nodes.append(tp)
    inputs = [q, k, v] + ([mask] if mask else [])
    fused = make_node(graph, "tftrt.Attention", softmax.name + "/attention", inputs, [pv.outputs[0]],
                      {"scale": float(scale), "k_transposed": k_transposed})
    graph.nodes[graph.nodes.index(pv)] = fused
    for n in nodes:
        if n is not pv:
            graph.nodes.remove(n)
    graph.toposort()
    graph.remove_unused_tensors()
