"""A tiny expression-pattern matcher over the IR, for fusions whose pattern is a formula.

Why: a formula like ``(x - mean) / sqrt(var + eps) * gamma + beta`` reaches the graph with
operands of ``Add``/``Mul`` in either order; writing each order by hand is error-prone.
A pattern is a nested tuple ``(op, operand, ...)`` matched against the producers of a
tensor; ``Add``/``Mul`` operands are tried in both orders. Leaves:

- ``"x"``       binds the tensor to name ``x`` (or must equal it, if ``x`` is bound);
- ``"#c"``      same, but the tensor must be a constant;
- ``1.0``       a constant holding one element equal to that number.

``match`` returns the bindings and the matched nodes, or None.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.graph_edit import producer, scalar_const

Pattern = Union[str, float, tuple]
_COMMUTATIVE = ("Add", "Mul")


def match(graph: Graph, tensor: str, pattern: Pattern,
          env: Optional[Dict[str, str]] = None) -> Optional[Tuple[Dict[str, str], List[Node]]]:
    """Match ``pattern`` rooted at ``tensor``; return (bindings, nodes) or None."""
    return _match(graph, tensor, pattern, dict(env or {}), [])


def _match(graph, tensor, pattern, env, nodes):
    if isinstance(pattern, (int, float)):
        v = scalar_const(graph, tensor)
        return (env, nodes) if v is not None and abs(v - pattern) <= 1e-6 * max(1.0, abs(pattern)) else None
    if isinstance(pattern, str):
        name = pattern.lstrip("#")
        if pattern.startswith("#") and graph.const(tensor) is None:
            return None
        if name in env:
            return (env, nodes) if env[name] == tensor else None
        env = dict(env)
        env[name] = tensor
        return env, nodes
    op, *operands = pattern
    node = producer(graph, tensor)
    if node is None or node.op != op:
        return None
    ins = [i for i in node.inputs if i]
    if len(ins) != len(operands):
        return None
    orders = [ins, ins[::-1]] if op in _COMMUTATIVE and len(ins) == 2 else [ins]
    for order in orders:
        result = (env, nodes + [node])
        for t, sub in zip(order, operands):
            result = _match(graph, t, sub, *result)
            if result is None:
                break
        if result is not None:
            return result
    return None
