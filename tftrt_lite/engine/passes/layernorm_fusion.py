"""LayerNorm fusion: the decomposed last-axis normalisation becomes one ``tftrt.LayerNorm``.

Why: Keras ``LayerNormalization`` reaches ONNX as ~12 ops (two reductions and a chain of
elementwise ops that read the input three times); one row-wise kernel reads it once and
keeps the statistics in float32. What tf2onnx emits for Keras 3 (``tf.nn.moments`` then
``batch_normalization``; the means become ``GlobalAveragePool`` on rank-3 inputs):

    mean = GAP(x)                 d = Sub(x, mean)        var = GAP(Mul(d, d))
    m = Mul(Reciprocal(Sqrt(Add(var, eps))), gamma)
    y = Add(Mul(x, m), Add(Mul(Neg(mean), m), beta))      ==>   y = LayerNorm(x, gamma, beta)

The ``(x - mean) / sqrt(var + eps) * gamma + beta`` form, ``Pow(·, -0.5)`` for the inverse
square root and ``ReduceMean(axes=[-1])`` for the means are matched too. A residual add
feeding the norm (``x = a + b``, post-LN transformers) is fused into the op's input; if the
sum is also read elsewhere (pre-LN) the op exposes it as a second output.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.graph_edit import (
    channel_vector,
    new_const,
    only_read_by,
    producer,
    readers,
    remove_dead_nodes,
    scalar_const,
)
from tftrt_lite.engine.passes.pattern import match

_STD = ("Sqrt", ("Add", "var", "#eps"))
_INV_STD = [("Reciprocal", _STD), ("Pow", ("Add", "var", "#eps"), -0.5), ("Div", 1.0, _STD)]


def _output_patterns():
    pats = []
    for inv in _INV_STD:
        for m in (("Mul", inv, "#gamma"), inv):
            pats.append(("Add", ("Mul", "x", m), ("Add", ("Mul", ("Neg", "mean"), m), "#beta")))
            pats.append(("Add", ("Mul", "x", m), ("Sub", "#beta", ("Mul", "mean", m))))
    for norm in [("Mul", "d", inv) for inv in _INV_STD] + [("Div", "d", _STD)]:
        pats += [("Add", ("Mul", norm, "#gamma"), "#beta"), ("Mul", norm, "#gamma"),
                 ("Add", norm, "#beta"), norm]
    return pats


_OUTPUT_PATTERNS = _output_patterns()


def run(graph: Graph, ctx=None) -> None:
    for node in list(graph.nodes):
        if node in graph.nodes and _is_last_axis_mean(graph, node):
            _fuse_at(graph, node)
    remove_dead_nodes(graph)


def _is_last_axis_mean(graph: Graph, n: Node) -> bool:
    rank = graph.tensor(n.inputs[0]).rank
    if rank is None:
        return False
    if n.op == "GlobalAveragePool":
        return rank == 3
    if n.op == "ReduceMean" and int(n.attrs["keepdims"]) == 1 and len(n.inputs) > 1 and n.inputs[1]:
        axes = graph.const(n.inputs[1])
        return axes is not None and [int(a) % rank for a in axes.reshape(-1)] == [rank - 1]
    return False


def _fuse_at(graph: Graph, mean_node: Node) -> None:
    x, mean = mean_node.inputs[0], mean_node.outputs[0]
    env, stat_nodes = None, []
    # variance: a last-axis mean of (x - mean)^2
    for sub in readers(graph, mean):
        if sub.op != "Sub" or sub.inputs != [x, mean]:
            continue
        d = sub.outputs[0]
        for sq in readers(graph, d):
            squared = (sq.op == "Mul" and sq.inputs == [d, d]) or (
                sq.op == "Pow" and sq.inputs[0] == d and scalar_const(graph, sq.inputs[1]) == 2)
            if not squared:
                continue
            for v in readers(graph, sq.outputs[0]):
                if _is_last_axis_mean(graph, v):
                    env = {"x": x, "mean": mean, "d": d, "var": v.outputs[0]}
                    stat_nodes = [mean_node, sub, sq, v]
    if env is None:
        return
    best = None
    for root in _nearby(graph, [mean_node], depth=8):
        if root.op not in ("Add", "Mul", "Div"):
            continue
        for pat in _OUTPUT_PATTERNS:
            m = match(graph, root.outputs[0], pat, env)
            if m is not None and (best is None or len(m[1]) > len(best[1][1])):
                best = (root, m)
    if best is None:
        return
    root, (bind, nodes) = best
    nodes = list({id(n): n for n in nodes + stat_nodes}.values())
    y = root.outputs[0]
    internal = [n.outputs[0] for n in nodes if n is not root]
    if not all(only_read_by(graph, t, nodes) for t in internal if t != x):
        return
    dim = graph.tensor(x).shape[-1]
    if not isinstance(dim, int):
        return
    gamma = _vector(graph, bind.get("gamma"), dim, 1.0)
    beta = _vector(graph, bind.get("beta"), dim, 0.0)
    eps = scalar_const(graph, bind["eps"])
    if gamma is None or beta is None or eps is None:
        return
    dtype = graph.tensor(x).dtype
    inputs = [x, new_const(graph, root.name + "/gamma", gamma.astype(dtype)),
              new_const(graph, root.name + "/beta", beta.astype(dtype)) if bind.get("beta") else "", ""]
    outputs = [y]
    # a residual add right before the norm becomes the op's residual input
    add = producer(graph, x)
    if add is not None and add.op == "Add" and all(graph.const(i) is None for i in add.inputs):
        a, b = add.inputs
        ta, tb, tx = graph.tensor(a), graph.tensor(b), graph.tensor(x)
        if ta.shape == tx.shape and tb.shape == tx.shape and a != b:
            inputs[0], inputs[3] = a, b
            if not only_read_by(graph, x, nodes):
                outputs.append(x)  # the sum is read elsewhere too: expose it
            nodes.append(add)
    for n in nodes:
        graph.nodes.remove(n)
    graph.nodes.append(Node("tftrt.LayerNorm", graph.unique_name(root.name + "/layernorm"), inputs, outputs,
                            {"epsilon": float(eps), "axis": -1, "sum_output": int(len(outputs) == 2)}))
    graph.toposort()  # places the new node right before its first reader
    graph.remove_unused_tensors()


def _nearby(graph: Graph, start: List[Node], depth: int) -> List[Node]:
    """Nodes at most ``depth`` reader-steps below ``start``: where a pattern's root can be."""
    seen = {n.name: n for n in start}
    frontier = list(start)
    for _ in range(depth):
        frontier = [r for n in frontier for o in n.outputs if o for r in readers(graph, o) if r.name not in seen]
        seen.update((r.name, r) for r in frontier)
    return list(seen.values())


def _vector(graph: Graph, name: Optional[str], dim: int, default: float) -> Optional[np.ndarray]:
    if name is None:
        return np.full(dim, default)
    c = graph.const(name)
    vec = channel_vector(c, max(c.ndim, 1), -1)
    if vec is None or vec.size not in (1, dim):
        return None
    return np.broadcast_to(vec.astype(np.float64), (dim,)).copy()
