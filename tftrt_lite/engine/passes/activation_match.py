"""Recognise an activation applied to a tensor, for the conv and gemm epilogue fusions.

Why one matcher: both fusions absorb "the activation that follows", and GELU in
particular reaches the graph in many equivalent shapes (``0.5·x·(1+erf(x/√2))`` with any
association of the product, ``x/√2`` as a Div or a Mul, TF's ``erfc`` form
``0.5·x·(1-erf(-x/√2))`` once ``erfc`` is lowered, the tanh approximation). Products are
matched as multisets of factors, so association order does not matter.

    y ─Mul(0.5)─┐                     y ─┬──────────────────────────┐
    y ─Div(√2)─Erf─Add(1)─Mul─► out    ==   one gelu_erf epilogue ─► out
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.graph_edit import only_read_by, producer, readers, scalar_const

_INV_SQRT2 = 1 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

#: (activation name, params, output tensor, nodes the activation consists of)
Match = Tuple[str, List[float], str, List[Node]]


def match_activation(graph: Graph, y: str, allowed: Sequence[str]) -> Optional[Match]:
    """The activation applied to ``y`` by ALL of ``y``'s readers, if it is in ``allowed``."""
    rs = readers(graph, y)
    if not rs or y in graph.outputs:
        return None
    if len(rs) == 1:
        m = _simple(graph, rs[0], y)
        if m is not None and m[0] in allowed:
            return m
    for kind in ("silu", "gelu_erf", "gelu_tanh"):
        if kind in allowed:
            m = _compound(graph, y, kind)
            if m is not None:
                return m
    return None


def _simple(graph: Graph, r: Node, y: str) -> Optional[Match]:
    out = r.outputs[0]
    if r.op in ("Relu", "Sigmoid", "Tanh") and r.inputs[0] == y:
        return {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}[r.op], [], out, [r]
    if r.op == "LeakyRelu" and r.inputs[0] == y:
        return "leaky_relu", [float(r.attrs["alpha"])], out, [r]
    if r.op == "Clip" and r.inputs[0] == y:
        lo = scalar_const(graph, r.inputs[1]) if len(r.inputs) > 1 and r.inputs[1] else -math.inf
        hi = scalar_const(graph, r.inputs[2]) if len(r.inputs) > 2 and r.inputs[2] else math.inf
        if lo is None or hi is None:
            return None
        if lo == 0 and hi == math.inf:
            return "relu", [], out, [r]
        return "clip", [float(lo), float(hi)], out, [r]
    return None


def _compound(graph: Graph, y: str, kind: str) -> Optional[Match]:
    """SiLU / GELU: the output is the product node whose factors form the pattern."""
    for top in readers(graph, y):
        if top.op != "Mul":
            continue
        # climb to the root of the Mul tree containing y
        root = top
        while True:
            rs = readers(graph, root.outputs[0])
            if len(rs) == 1 and rs[0].op == "Mul" and root.outputs[0] not in graph.outputs:
                root = rs[0]
            else:
                break
        factors, nodes = _factors(graph, root)
        consts = [scalar_const(graph, f) for f in factors]
        ys = [f for f in factors if f == y]
        rest = [f for f, c in zip(factors, consts) if f != y and c is None]
        scale = math.prod(c for c in consts if c is not None)
        if len(ys) != 1 or len(rest) != 1:
            continue
        inner = _match_inner(graph, rest[0], y, kind, scale)
        if inner is None:
            continue
        nodes = nodes + inner
        internal = [n.outputs[0] for n in nodes if n is not root]
        if all(only_read_by(graph, t, nodes) for t in internal) and only_read_by(graph, y, nodes):
            return kind, [], root.outputs[0], nodes
    return None


def _factors(graph: Graph, root: Node) -> Tuple[List[str], List[Node]]:
    """Leaf factors of the Mul tree under ``root`` (descending only into single-reader Muls)."""
    factors, nodes, stack = [], [root], list(root.inputs)
    while stack:
        t = stack.pop()
        p = producer(graph, t)
        if p is not None and p.op == "Mul" and len(readers(graph, t)) == 1 and t not in graph.outputs:
            nodes.append(p)
            stack.extend(p.inputs)
        else:
            factors.append(t)
    return factors, nodes


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * abs(b)


def _match_inner(graph: Graph, t: str, y: str, kind: str, scale: float) -> Optional[List[Node]]:
    """Nodes computing the non-y factor of the pattern, or None if it does not match."""
    p = producer(graph, t)
    if p is None:
        return None
    if kind == "silu":
        return [p] if p.op == "Sigmoid" and p.inputs[0] == y and _close(scale, 1.0) else None
    if not _close(scale, 0.5) or p.op not in ("Add", "Sub"):
        return None
    one = [i for i in p.inputs if scalar_const(graph, i) == 1.0]
    if len(one) != 1:
        return None
    other = p.inputs[1] if p.inputs[0] == one[0] else p.inputs[0]
    sign = -1.0 if p.op == "Sub" and p.inputs[0] == one[0] else 1.0
    q = producer(graph, other)
    fn = "Erf" if kind == "gelu_erf" else "Tanh"
    if q is None or q.op != fn:
        return None
    lin = _linear(graph, q.inputs[0], y) if kind == "gelu_erf" else _tanh_arg(graph, q.inputs[0], y)
    if lin is None:
        return None
    k, nodes = lin
    want = _INV_SQRT2 if kind == "gelu_erf" else _SQRT_2_OVER_PI
    # erf and tanh are odd: 1 - f(-a·y) == 1 + f(a·y)
    return [p, q] + nodes if _close(sign * k, want) else None


def _linear(graph: Graph, t: str, y: str) -> Optional[Tuple[float, List[Node]]]:
    """(k, nodes) if ``t == k·y`` through Mul/Div by scalar constants and Neg."""
    k, nodes = 1.0, []
    while t != y:
        p = producer(graph, t)
        if p is None:
            return None
        if p.op == "Neg":
            k, t = -k, p.inputs[0]
        elif p.op in ("Mul", "Div"):
            c = scalar_const(graph, p.inputs[1])
            if c is not None:
                k, t = (k * c if p.op == "Mul" else k / c), p.inputs[0]
            elif p.op == "Mul" and scalar_const(graph, p.inputs[0]) is not None:
                k, t = k * scalar_const(graph, p.inputs[0]), p.inputs[1]
            else:
                return None
        else:
            return None
        nodes.append(p)
    return k, nodes


def _tanh_arg(graph: Graph, t: str, y: str) -> Optional[Tuple[float, List[Node]]]:
    """(k, nodes) if ``t == k·(y + 0.044715·y³)``."""
    k, nodes = 1.0, []
    p = producer(graph, t)
    while p is not None and p.op == "Mul" and any(scalar_const(graph, i) is not None for i in p.inputs):
        c = [scalar_const(graph, i) for i in p.inputs]
        k *= c[0] if c[0] is not None else c[1]
        nodes.append(p)
        t = p.inputs[1] if c[0] is not None else p.inputs[0]
        p = producer(graph, t)
    if p is None or p.op != "Add" or y not in p.inputs:
        return None
    cube = p.inputs[1] if p.inputs[0] == y else p.inputs[0]
    cp = producer(graph, cube)
    if cp is None or cp.op != "Mul":
        return None
    factors, fnodes = _factors(graph, cp)
    coeff = math.prod(scalar_const(graph, f) for f in factors if scalar_const(graph, f) is not None)
    rest = [f for f in factors if scalar_const(graph, f) is None]
    if rest != [y, y, y]:
        pw = producer(graph, rest[0]) if len(rest) == 1 else None
        if pw is None or pw.op != "Pow" or pw.inputs[0] != y or scalar_const(graph, pw.inputs[1]) != 3:
            return None
        fnodes = fnodes + [pw]
    return (k, nodes + [p] + fnodes) if _close(coeff, 0.044715) else None
