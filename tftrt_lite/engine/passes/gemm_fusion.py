"""Gemm fusion: MatMul/Gemm + bias + activation into one ``tftrt.FusedGemm`` (cuBLASLt).

Why: cuBLASLt applies a bias and an activation in the matmul's epilogue for free, and
Keras ``Dense`` reaches the graph as ``MatMul`` → ``Add(bias)`` → activation — three kernels
and two extra round trips of the output. Every remaining ``MatMul`` becomes a FusedGemm
(so the builder has one gemm op to map), ONNX ``Gemm`` too when its C is a bias vector.

    x ─MatMul(W)─► [─Reshape─►] ─Add(b)─► ─GELU(erf)─► y
    ==>  x ─FusedGemm(W, b, activation=gelu_erf)─► [─Reshape─►] y

A Reshape between the matmul and its epilogue is looked through (tf2onnx's ``Tensordot``
lowering of Dense on 3-D inputs; EinsumDense's head split [.., H·D] → [.., H, D] with an
[H, D] bias) when the column index survives it as the trailing dims: a column bias and an
elementwise activation commute with it, so it moves after the fused op (it is a view).
Runs after the attention fusion, which claims the matmuls of attention blocks first.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tftrt_lite.engine.fused_ops import GEMM_ACTIVATIONS
from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.activation_match import match_activation
from tftrt_lite.engine.passes.graph_edit import channel_vector, new_const, readers, remove_dead_nodes


def run(graph: Graph, ctx=None) -> None:
    for node in list(graph.nodes):
        gemm = _to_fused_gemm(graph, node)
        if gemm is not None:
            _fuse_epilogue(graph, gemm)
    remove_dead_nodes(graph)


def _to_fused_gemm(graph: Graph, node: Node):
    if node.op == "MatMul":
        if any(graph.tensor(i).rank is None or graph.tensor(i).rank < 2 for i in node.inputs):
            return None
        node.op = "tftrt.FusedGemm"
        node.inputs = list(node.inputs) + [""]
        node.attrs = {"trans_a": 0, "trans_b": 0, "alpha": 1.0,
                      "activation": "none", "activation_params": []}
        return node
    if node.op == "Gemm":
        c = node.inputs[2] if len(node.inputs) > 2 else ""
        bias = ""
        if c:
            cv = graph.const(c)
            n_out = graph.tensor(node.outputs[0]).shape[-1]
            vec = None if cv is None else channel_vector(cv, 2, -1)
            if vec is None or not isinstance(n_out, int):
                return None
            bias = new_const(graph, node.name + "/bias",
                             (np.broadcast_to(vec, (n_out,)) * node.attrs["beta"]).astype(cv.dtype))
        node.op = "tftrt.FusedGemm"
        node.attrs = {"trans_a": int(node.attrs["transA"]), "trans_b": int(node.attrs["transB"]),
                      "alpha": float(node.attrs["alpha"]), "activation": "none", "activation_params": []}
        node.inputs = [node.inputs[0], node.inputs[1], bias]
        return node
    if node.op == "tftrt.FusedGemm" and node.attrs["activation"] == "none":
        return node
    return None


def _fuse_epilogue(graph: Graph, gemm: Node) -> None:
    y = gemm.outputs[0]
    n = graph.tensor(y).shape[-1]
    if not isinstance(n, int):
        return
    view, cur, k = None, y, 1  # k: trailing dims of ``cur`` that index the gemm's columns
    rs = readers(graph, y)
    if len(rs) == 1 and rs[0].op == "Reshape" and y not in graph.outputs:
        k = _column_dims(graph.tensor(rs[0].outputs[0]).shape, n)
        if k is None:
            return
        view, cur = rs[0], rs[0].outputs[0]
    absorbed = []
    rs = readers(graph, cur)
    if not gemm.inputs[2] and len(rs) == 1 and rs[0].op == "Add" and cur not in graph.outputs:
        add = rs[0]
        c = graph.const(add.inputs[1] if add.inputs[0] == cur else add.inputs[0])
        vec = None if c is None else _bias_vector(c, graph.tensor(cur).shape, k, n)
        if vec is not None:
            gemm.inputs[2] = new_const(graph, gemm.name + "/bias", vec.astype(c.dtype))
            absorbed.append(add)
            cur = add.outputs[0]
    m = match_activation(graph, cur, [a for a in GEMM_ACTIVATIONS if a != "none"])
    if m is not None:
        gemm.attrs["activation"], gemm.attrs["activation_params"] = m[0], m[1]
        absorbed.extend(m[3])
        cur = m[2]
    if not absorbed:
        return
    for a in absorbed:
        graph.nodes.remove(a)
    if view is None:
        gemm.outputs[0] = cur
    else:
        view.outputs[0] = cur
    graph.remove_unused_tensors()


def _column_dims(shape, n: int) -> Optional[int]:
    """How many trailing dims of a row-major reshape of an [..., n] tensor hold its column
    index: k such that the last k dims multiply to n; None if there is no such k."""
    prod = 1
    for k in range(1, len(shape) + 1):
        if not isinstance(shape[-k], int):
            return None
        prod *= shape[-k]
        if prod == n:
            return k
        if prod > n:
            return None
    return None


def _bias_vector(c: np.ndarray, shape, k: int, n: int) -> Optional[np.ndarray]:
    """``c`` as a length-``n`` column bias, if it only varies along the trailing ``k`` dims
    of ``shape`` (e.g. EinsumDense's [heads, head_dim] bias after a head split)."""
    rank = len(shape)
    if c.ndim > rank:
        return None
    a = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if any(s != 1 for s in a.shape[:rank - k]):
        return None
    return np.broadcast_to(a.reshape(a.shape[rank - k:]), tuple(shape[rank - k:])).reshape(n)
