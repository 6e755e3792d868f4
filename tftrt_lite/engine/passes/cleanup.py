"""Dead-node and identity removal.

Why: lowering leaves ops that move no data at inference time — ``Identity``, ``Dropout``,
a ``Cast`` to the dtype the tensor already has, a ``Reshape``/``Squeeze``/``Unsqueeze``
whose output shape equals its input shape, a ``Transpose`` with the identity
permutation — plus chains that compose into one op (``Transpose∘Transpose``,
``Reshape∘Reshape``). Each of them would cost a kernel launch or break a fusion pattern
(a fusion only matches ops that are adjacent), so they go first. Dead nodes (nothing
reads their outputs) are dropped last.

    x ─Transpose(p1)─► ─Transpose(p2)─► y      ==>   x ─Transpose(p1∘p2)─► y
                                                     (or just x when p1∘p2 is identity)
"""
from __future__ import annotations

from typing import Optional

from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.graph_edit import (
    VIEW_OPS,
    forward,
    producer,
    readers,
    remove_dead_nodes,
    reshape_target,
)


def run(graph: Graph, ctx=None) -> None:
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node not in graph.nodes:
                continue
            src = _passthrough_source(graph, node)
            if src is not None:
                if forward(graph, node.outputs[0], src):
                    graph.nodes.remove(node)
                    changed = True
                continue
            changed |= _compose_with_producer(graph, node)
    remove_dead_nodes(graph)


def _passthrough_source(graph: Graph, node: Node) -> Optional[str]:
    """The input ``node`` merely passes through unchanged, or None."""
    if node.op in ("Identity", "Dropout"):
        # Dropout at inference is the identity; its optional mask output must be unused.
        if len([o for o in node.outputs if o]) > 1 and readers(graph, node.outputs[1]):
            return None
        return node.inputs[0]
    x = node.inputs[0] if node.inputs else ""
    if not x:
        return None
    xt, yt = graph.tensor(x), graph.tensor(node.outputs[0])
    if node.op == "Cast":
        return x if xt.dtype == yt.dtype else None
    if node.op == "Transpose":
        perm = list(node.attrs["perm"])
        return x if perm == sorted(perm) else None
    if node.op in VIEW_OPS:
        same = xt.shape is not None and yt.shape is not None and tuple(xt.shape) == tuple(yt.shape)
        return x if same else None
    return None


def _compose_with_producer(graph: Graph, node: Node) -> bool:
    """Fold ``node`` into a producer of the same kind: T∘T → T, view∘view → Reshape."""
    if node.op not in ("Transpose",) + VIEW_OPS:
        return False
    prev = producer(graph, node.inputs[0])
    if prev is None:
        return False
    if node.op == "Transpose" and prev.op == "Transpose":
        p1, p2 = list(prev.attrs["perm"]), list(node.attrs["perm"])
        node.inputs[0] = prev.inputs[0]
        node.attrs["perm"] = [p1[i] for i in p2]
        return True
    if node.op in VIEW_OPS and prev.op in VIEW_OPS:
        # A view of a view is one Reshape to the final shape, when that shape is static
        # enough to state as a constant (at most one symbolic dim, written as -1).
        shape = reshape_target(graph.tensor(node.outputs[0]).shape)
        if shape is None:
            return False
        node.op = "Reshape"
        node.inputs = [prev.inputs[0], graph.add_const(graph.unique_name(node.name + "/shape"), shape)]
        node.attrs = {"allowzero": 0}
        return True
    return False
