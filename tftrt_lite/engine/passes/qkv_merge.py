"""QKV merge: the Q, K and V projections of an attention become one GEMM, which the
attention reads at three column offsets.

Why: at small batch every projection is a skinny GEMM ([S, H·D] x [H·D, H·D] for BERT-base
at batch 1) that fills a few SMs and is bound by latency, not work: three launches of one
weight-streaming GEMM each. One GEMM with the three weights side by side reads the shared
input once, launches once and has three times the columns to spread over the GPU.

    x ─FusedGemm(Wq, bq)─► [views] ─┐
    x ─FusedGemm(Wk, bk)─► [views] ─┼─Attention(layout)      ==>
    x ─FusedGemm(Wv, bv)─► [views] ─┘
    x ─FusedGemm([Wq|Wk|Wv], [bq|bk|bv])─► [.., Nq+Nk+Nv] ─Attention(layout, offsets 0, Nq, Nq+Nk)

The attention already addresses its operands as strided views of their tensors' flat
memory (``layout``, written by ``attention_layout``); a projection's view of its own
[.., Ni] output becomes a view of the merged [.., R] output by scaling every stride that
steps whole rows by R/Ni and starting at the projection's column offset. That holds when
each stride either is a multiple of Ni (it moves between rows) or stays inside a row
(the in-row strides' reach is below Ni), which the pass checks; otherwise it leaves the
attention alone.

Merged only when the three GEMMs read the same input with the same transposes, alpha and
activation, have constant 2-D weights (and all or none a constant bias), and their outputs
reach the attention through views read by nothing else. A ``precision_overrides`` pattern
naming any of them keeps them apart, so per-node precision keeps its meaning. Runs after
the GEMM fusion (the biases are in the GEMMs) and before quantization and precision, which
treat the merged GEMM like any other.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from tftrt_lite.engine import symbolic
from tftrt_lite.engine.ir import Dim, Graph, Node
from tftrt_lite.engine.passes.graph_edit import (
    VIEW_OPS, make_node, new_const, new_tensor, producer, readers, remove_dead_nodes)
from tftrt_lite.engine.passes.precision import compile_overrides

_SAME_ATTRS = ("trans_a", "trans_b", "alpha", "activation", "activation_params")


def run(graph: Graph, ctx=None) -> None:
    overrides = compile_overrides(getattr(ctx, "precision_overrides", None))
    for node in list(graph.nodes):
        if node.op == "tftrt.Attention" and "layout" in node.attrs and "offsets" not in node.attrs["layout"]:
            _merge(graph, node, overrides)
    remove_dead_nodes(graph)


def _projection(graph: Graph, attention: Node, tensor: str) -> Optional[Node]:
    """The FusedGemm whose output reaches ``attention`` as ``tensor`` through views read by
    nothing else, or None."""
    reader = attention
    while True:
        if tensor in graph.outputs or any(n is not reader for n in readers(graph, tensor)):
            return None
        node = producer(graph, tensor)
        if node is None:
            return None
        if node.op == "tftrt.FusedGemm":
            return node
        if node.op not in VIEW_OPS:
            return None
        reader, tensor = node, node.inputs[0]


def _weight(graph: Graph, gemm: Node) -> Optional[np.ndarray]:
    w = graph.const(gemm.inputs[1])
    return w if w is not None and w.ndim == 2 else None


def _bias(graph: Graph, gemm: Node) -> Optional[np.ndarray]:
    return graph.const(gemm.inputs[2]) if len(gemm.inputs) > 2 and gemm.inputs[2] else None


def _compatible(graph: Graph, gemms: Sequence[Node], overrides) -> bool:
    first = gemms[0]
    if len({g.name for g in gemms}) != 3 or any(p.search(g.name) for p, _ in overrides for g in gemms):
        return False
    if any(g.inputs[0] != first.inputs[0] or any(g.attrs[a] != first.attrs[a] for a in _SAME_ATTRS)
           for g in gemms):
        return False
    weights = [_weight(graph, g) for g in gemms]
    if any(w is None or w.dtype != weights[0].dtype for w in weights):
        return False
    k_axis = 1 if first.attrs["trans_b"] else 0
    if len({w.shape[k_axis] for w in weights}) != 1:
        return False
    has_bias = [len(g.inputs) > 2 and bool(g.inputs[2]) for g in gemms]
    if any(has_bias) and not all(_bias(graph, g) is not None for g in gemms):
        return False
    shapes = [graph.tensor(g.outputs[0]).shape for g in gemms]
    if any(s is None or not isinstance(s[-1], int) for s in shapes):
        return False
    return all(len(s) == len(shapes[0]) and all(symbolic.equal(a, b) for a, b in zip(s[:-1], shapes[0][:-1]))
               for s in shapes)


def _row_strides(strides: Sequence[Dim], extents: Sequence[Dim], row: int, merged_row: int) -> Optional[List[Dim]]:
    """A view's strides over rows of length ``row`` rewritten for rows of ``merged_row``
    (same columns), or None when a stride neither steps whole rows nor stays in one row."""
    out: List[Dim] = []
    reach = 0
    for st, n in zip(strides, extents):
        try:
            out.append(symbolic.mul(symbolic.divide(st, row), merged_row))
            continue
        except Exception:  # not a whole number of rows: it must move inside one row
            pass
        if not (isinstance(st, int) and isinstance(n, int)):
            return None
        out.append(st)
        reach += (n - 1) * st
    return out if reach < row else None


def _merge(graph: Graph, attention: Node, overrides) -> None:
    operands = attention.inputs[:3]
    if len(set(operands)) != 3:
        return
    gemms = [_projection(graph, attention, t) for t in operands]
    if any(g is None for g in gemms) or not _compatible(graph, gemms, overrides):
        return
    layout = attention.attrs["layout"]
    b, h, sq, sk, d, dv = layout["dims"]
    extents = {"q": (b, h, sq, d), "k": (b, h, sk, d), "v": (b, h, sk, dv)}
    widths = [graph.tensor(g.outputs[0]).shape[-1] for g in gemms]
    total = sum(widths)
    strides: Dict[str, List[Dim]] = {}
    for name, width in zip("qkv", widths):
        st = _row_strides(layout[name], extents[name], width, total)
        if st is None:
            return
        strides[name] = st

    first = gemms[0]
    trans_b = bool(first.attrs["trans_b"])
    weight = np.concatenate([_weight(graph, g) for g in gemms], axis=0 if trans_b else 1)
    inputs = [first.inputs[0], new_const(graph, first.name + "/qkv_weight", weight)]
    if len(first.inputs) > 2 and first.inputs[2]:
        inputs.append(new_const(graph, first.name + "/qkv_bias", np.concatenate([_bias(graph, g) for g in gemms])))
    out_t = graph.tensor(first.outputs[0])
    merged_shape = tuple(out_t.shape[:-1]) + (total,)
    out = new_tensor(graph, first.name + "/qkv", out_t.dtype, merged_shape)
    merged = make_node(graph, "tftrt.FusedGemm", first.name + "/qkv", inputs, [out], dict(first.attrs))
    graph.nodes.insert(min(graph.nodes.index(g) for g in gemms), merged)

    attention.inputs[:3] = [out, out, out]
    offsets, start = {}, 0
    for name, width in zip("qkv", widths):
        offsets[name] = start
        start += width
    shape = [symbolic.normalize(x) for x in merged_shape]
    attention.attrs["layout"] = {  # a new dict: graph copies share attr values
        **layout, **{name: [symbolic.normalize(x) for x in strides[name]] for name in "qkv"},
        "shapes": {**layout["shapes"], **{name: list(shape) for name in "qkv"}}, "offsets": offsets}
