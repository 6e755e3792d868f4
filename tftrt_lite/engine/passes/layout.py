"""Layout: run convolutions and pools in NHWC and make the transposes around them vanish.

Why: TensorFlow models are NHWC; ONNX convs are NCHW, so tf2onnx wraps the network in
``Transpose`` ops (and its own optimiser pushes them to the edges, leaving an NCHW
network). cuDNN is fastest on NHWC with tensor cores, and every surviving Transpose is a
full memory pass. So each 2-D ``Conv``/``MaxPool``/``AveragePool`` becomes its NHWC form
between a transpose pair, and the NHWC→NCHW transposes are then sunk towards the outputs
until they meet their inverse and cancel:

    x ─T(0,3,1,2)─► ─Conv─► ─Relu─► ─Conv─►            (NCHW network)
    ==> x ─T─► ─T⁻¹─► FusedConv ─T─► Relu ─T⁻¹─► FusedConv ─T─►    (wrap each conv)
    ==> x ─FusedConv─► Relu ─FusedConv─► ─T─►                      (sink and cancel)

A transpose ``T`` moves below its readers only when ALL of them can take it (so the count
never grows): another Transpose (composed), an elementwise op whose other inputs are
constants (permuted at build time) or the same transpose, a pool, ``Pad``, a reduction,
``Concat``. A transpose that only moves size-1 dims is a view and becomes a ``Reshape``.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from tftrt_lite.engine.fused_ops import ELEMENTWISE_OPS
from tftrt_lite.engine.ir import Graph, IRError, Node
from tftrt_lite.engine.passes.graph_edit import (
    VIEW_OPS,
    forward,
    make_node,
    new_const,
    new_tensor,
    producer,
    readers,
    remove_dead_nodes,
    reshape_target,
)

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]
_REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")


def run(graph: Graph, ctx=None) -> None:
    for node in list(graph.nodes):
        _to_nhwc(graph, node)
    budget = 20 * len(graph.nodes) + 100  # every step moves a transpose strictly down
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node in graph.nodes and node.op == "Transpose":
                changed |= _simplify(graph, node)
                budget -= 1
        if budget < 0:
            raise IRError(f"graph {graph.name!r}: layout pass did not converge")
    remove_dead_nodes(graph)


# -- step 1: NCHW ops → NHWC ops between transposes -------------------------------------

def _to_nhwc(graph: Graph, node: Node) -> None:
    if node.op not in ("Conv", "MaxPool", "AveragePool"):
        return
    x, y = node.inputs[0], node.outputs[0]
    xt, yt = graph.tensor(x), graph.tensor(y)
    if xt.rank != 4 or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return
    if node.op == "MaxPool" and len([o for o in node.outputs if o]) > 1:
        return  # the indices output is NCHW-specific
    if node.op == "Conv":
        w = graph.const(node.inputs[1])
        if w is None:
            return
        bias = node.inputs[2] if len(node.inputs) > 2 else ""
        ohwi = new_const(graph, node.inputs[1] + "/ohwi", np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
        attrs = {"strides": list(node.attrs["strides"]), "pads": list(node.attrs["pads"]),
                 "dilations": list(node.attrs["dilations"]), "group": int(node.attrs["group"]),
                 "activation": "none", "activation_params": []}
        op = "tftrt.FusedConv"
    else:
        attrs = {"mode": "max" if node.op == "MaxPool" else "avg",
                 "kernel_shape": list(node.attrs["kernel_shape"]), "strides": list(node.attrs["strides"]),
                 "pads": list(node.attrs["pads"]), "dilations": list(node.attrs.get("dilations", [1, 1])),
                 "ceil_mode": int(node.attrs.get("ceil_mode", 0)),
                 "count_include_pad": int(node.attrs.get("count_include_pad", 0))}
        op = "tftrt.Pool"
    x_nhwc = new_tensor(graph, x + "/nhwc", xt.dtype, _permute(xt.shape, TO_NHWC))
    y_nhwc = new_tensor(graph, y + "/nhwc", yt.dtype, _permute(yt.shape, TO_NHWC))
    idx = graph.nodes.index(node)
    graph.nodes[idx:idx + 1] = [
        make_node(graph, "Transpose", node.name + "/to_nhwc", [x], [x_nhwc], {"perm": TO_NHWC}),
        make_node(graph, op, node.name, [x_nhwc, ohwi, bias] if op == "tftrt.FusedConv" else [x_nhwc],
                  [y_nhwc], attrs),
        make_node(graph, "Transpose", node.name + "/to_nchw", [y_nhwc], [y], {"perm": TO_NCHW}),
    ]


# -- step 2: sink transposes ------------------------------------------------------------

def _simplify(graph: Graph, t: Node) -> bool:
    """One rewrite around transpose ``t``; True if the graph changed."""
    x, y = t.inputs[0], t.outputs[0]
    perm = list(t.attrs["perm"])
    if perm == sorted(perm):
        if forward(graph, y, x):
            graph.nodes.remove(t)
            return True
        return False
    if _hoist_above_view(graph, t):
        return True
    changed = False
    for r in readers(graph, y):
        if r.op == "Transpose":  # compose; the result is handled on the next sweep
            r.inputs[0] = x
            r.attrs["perm"] = [perm[i] for i in r.attrs["perm"]]
            changed = True
    if _unit_dims_only(graph, x, perm):
        shape = reshape_target(graph.tensor(y).shape)
        if shape is not None:
            t.op, t.attrs = "Reshape", {"allowzero": 0}
            t.inputs = [x, new_const(graph, t.name + "/shape", shape)]
            return True
    rs = readers(graph, y)
    if not rs or y in graph.outputs or not all(_can_absorb(graph, r, y, perm) for r in rs):
        return changed
    for r in rs:
        _absorb(graph, r, y, x, perm)
    graph.nodes.remove(t)
    return True


def _hoist_above_view(graph: Graph, t: Node) -> bool:
    """Move ``t`` above a view whose trailing dims it alone permutes, when a transpose
    feeds that view — the two then compose into one (attention's head split/merge):

        x ─T(p1)─► ─Reshape(merge leading dims)─► ─T(swap last two)─► y
        ==>  x ─T(p1)─► ─T(q)─► ─Reshape─► y   ==>  x ─T(p1∘q)─► ─Reshape─► y
    """
    r = t.inputs[0]
    view = producer(graph, r)
    if view is None or view.op not in VIEW_OPS or r in graph.outputs or len(readers(graph, r)) != 1:
        return False
    src = producer(graph, view.inputs[0])
    xs, rs, ys = graph.tensor(view.inputs[0]).shape, graph.tensor(r).shape, graph.tensor(t.outputs[0]).shape
    if src is None or src.op != "Transpose" or xs is None or rs is None:
        return False
    perm = list(t.attrs["perm"])
    fixed = next(i for i, p in enumerate(perm) if p != i)  # t keeps dims [0, fixed)
    m = len(rs) - fixed
    target = reshape_target(ys)
    if m > len(xs) or tuple(xs[len(xs) - m:]) != tuple(rs[fixed:]) or target is None:
        return False
    lead = len(xs) - m
    q = list(range(lead)) + [lead + p - fixed for p in perm[fixed:]]
    moved = new_tensor(graph, view.inputs[0] + "/t", graph.tensor(r).dtype, _permute(xs, q))
    graph.nodes.insert(graph.nodes.index(view),
                       make_node(graph, "Transpose", t.name, [view.inputs[0]], [moved], {"perm": q}))
    view.op, view.attrs = "Reshape", {"allowzero": 0}
    view.inputs = [moved, new_const(graph, view.name + "/shape", target)]
    view.outputs = [t.outputs[0]]
    graph.nodes.remove(t)
    graph.tensors.pop(r)
    return True


def _can_absorb(graph: Graph, r: Node, y: str, perm: List[int]) -> bool:
    if r.op in ELEMENTWISE_OPS or r.op == "Concat":
        return all(_operand_for(graph, i, y, perm, dry_run=True) for i in r.inputs if i)
    if r.op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
        single_output = len([o for o in r.outputs if o]) == 1  # MaxPool indices are NCHW-specific
        return perm == TO_NCHW and single_output and graph.tensor(y).rank == 4
    if r.op == "Pad":
        ok_axes = len(r.inputs) < 4 or not r.inputs[3]
        return r.inputs[0] == y and graph.const(r.inputs[1]) is not None and ok_axes
    if r.op in _REDUCTIONS:
        return r.inputs[0] == y and _reduce_axes(graph, r) is not None
    return False


def _operand_for(graph: Graph, name: str, y: str, perm: List[int], dry_run: bool = False):
    """What an absorbed elementwise/concat reader should read instead of ``name``."""
    if name == y:
        return True if dry_run else producer(graph, y).inputs[0]
    prod = producer(graph, name)
    if prod is not None and prod.op == "Transpose" and list(prod.attrs["perm"]) == perm:
        return True if dry_run else prod.inputs[0]
    c = graph.const(name)
    if c is None:
        return False
    if dry_run:
        return c.ndim <= len(perm)
    if c.size == 1:
        return name
    aligned = c.reshape((1,) * (len(perm) - c.ndim) + c.shape)
    return new_const(graph, name + "/perm", np.ascontiguousarray(aligned.transpose(_inverse(perm))))


def _absorb(graph: Graph, r: Node, y: str, x: str, perm: List[int]) -> None:
    """Rewrite reader ``r`` of ``y = Transpose(x, perm)`` to work on ``x``; its output is
    re-transposed so the rest of the graph sees the same values."""
    out = r.outputs[0]
    ot = graph.tensor(out)
    out_perm = perm
    if r.op in ELEMENTWISE_OPS or r.op == "Concat":
        r.inputs = [_operand_for(graph, i, y, perm) if i else "" for i in r.inputs]
        if r.op == "Concat":
            r.attrs["axis"] = perm[r.attrs["axis"] % len(perm)]
    elif r.op in ("MaxPool", "AveragePool"):
        r.attrs = {"mode": "max" if r.op == "MaxPool" else "avg",
                   "kernel_shape": list(r.attrs["kernel_shape"]), "strides": list(r.attrs["strides"]),
                   "pads": list(r.attrs["pads"]), "dilations": list(r.attrs.get("dilations", [1, 1])),
                   "ceil_mode": int(r.attrs.get("ceil_mode", 0)),
                   "count_include_pad": int(r.attrs.get("count_include_pad", 0))}
        r.op, r.inputs = "tftrt.Pool", [x]
    elif r.op in ("GlobalAveragePool", "GlobalMaxPool"):
        r.op = "ReduceMean" if r.op == "GlobalAveragePool" else "ReduceMax"
        r.inputs = [x, new_const(graph, r.name + "/axes", np.asarray([1, 2], np.int64))]
        r.attrs = {"keepdims": 1, "noop_with_empty_axes": 0}
    elif r.op == "Pad":
        pads = graph.const(r.inputs[1])
        rank = len(perm)
        new = np.zeros_like(pads)
        for i in range(rank):
            new[perm[i]], new[rank + perm[i]] = pads[i], pads[rank + i]
        r.inputs = [x, new_const(graph, r.inputs[1] + "/perm", new)] + r.inputs[2:]
    else:  # reduction
        axes, keepdims = _reduce_axes(graph, r)
        new_axes = sorted(perm[a] for a in axes)
        r.inputs = [x, new_const(graph, r.inputs[1] + "/perm", np.asarray(new_axes, np.int64))]
        if not keepdims:
            kept = [p for p in perm if p not in new_axes]
            out_perm = [sorted(kept).index(p) for p in kept]
    inner = new_tensor(graph, out + "/pre_t", ot.dtype, _permute(ot.shape, _inverse(out_perm)))
    r.outputs[0] = inner
    graph.nodes.insert(graph.nodes.index(r) + 1,
                       make_node(graph, "Transpose", r.name + "/t", [inner], [out], {"perm": out_perm}))


def _reduce_axes(graph: Graph, r: Node):
    """(axes, keepdims) of a reduction with constant, non-empty axes (opset-18 form), or None."""
    rank = graph.tensor(r.inputs[0]).rank
    axes = graph.const(r.inputs[1]) if len(r.inputs) > 1 and r.inputs[1] else None
    if axes is None or axes.size == 0 or rank is None:
        return None
    return [int(a) % rank for a in axes.reshape(-1)], int(r.attrs["keepdims"])


# -- helpers ------------------------------------------------------------------------------

def _inverse(perm: Sequence[int]) -> List[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def _permute(shape, perm):
    return None if shape is None else tuple(shape[p] for p in perm)


def _unit_dims_only(graph: Graph, x: str, perm: List[int]) -> bool:
    """True if Transpose(x, perm) keeps the order of every dim that is not a static 1."""
    shape = graph.tensor(x).shape
    if shape is None:
        return False
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)
