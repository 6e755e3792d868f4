"""Elementwise fusion: maximal groups of elementwise ops become one ``tftrt.FusedElementwise``.

Why: an elementwise op is memory-bound — its cost is reading its inputs and writing its
output — so a chain of k of them run as one kernel costs one pass over memory instead of
k. Every elementwise op left after the library-call fusions joins a group (singletons
too: the code generator then needs only one elementwise emitter).

    a ─Mul(c)─► ─Add(b)─► ─Sigmoid─► ─Mul─► y        ==>   a, b ─FusedElementwise─► y
    └────────────────────────────────┘ (DAG)                  program: v0=Mul(in0,c) ...

Rules: a group never crosses a non-elementwise op; every member's output has the group's
full (broadcast) shape, so each group output is one store per element; constants with one
element become immediates of the program, other constants (per-channel vectors) stay
inputs and are broadcast; merging two groups is refused when a path leaves the group and
comes back (that would make a cycle).
"""
from __future__ import annotations

from typing import Dict, List, Set

import numpy as np

from tftrt_lite.engine.fused_ops import ELEMENTWISE_OPS, check_program, instruction_attrs
from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.reference import np_dtype
from tftrt_lite.engine.passes.graph_edit import make_node, scalar_const

FUSIBLE = frozenset(op for op in ELEMENTWISE_OPS if op not in ("Const", "Identity"))


def run(graph: Graph, ctx=None) -> None:
    groups = _form_groups(graph)
    for members in groups:
        _emit(graph, members)
    graph.toposort()
    graph.remove_unused_tensors()


def _fusible(graph: Graph, n: Node) -> bool:
    if n.op not in FUSIBLE or len([o for o in n.outputs if o]) != 1:
        return False
    # Variadic ONNX ops (Max/Min with 1 or 3+ inputs) have no fixed-arity instruction.
    if n.op != "Clip" and len([i for i in n.inputs if i]) != ELEMENTWISE_OPS[n.op][0]:
        return False
    return graph.tensor(n.outputs[0]).shape is not None


def _form_groups(graph: Graph) -> List[List[Node]]:
    """Greedy grouping in node order with a cycle check on ancestor bitsets."""
    index = {n.name: k for k, n in enumerate(graph.nodes)}
    prod: Dict[str, Node] = graph.producers()
    anc: List[int] = []
    for n in graph.nodes:
        bits = 0
        for i in n.inputs:
            p = prod.get(i)
            if p is not None:
                bits |= anc[index[p.name]] | (1 << index[p.name])
        anc.append(bits)
    group_of: Dict[str, int] = {}
    groups: Dict[int, List[Node]] = {}
    for n in graph.nodes:
        if not _fusible(graph, n):
            continue
        shape = tuple(graph.tensor(n.outputs[0]).shape)
        cands: List[int] = []
        for i in n.inputs:
            p = prod.get(i)
            g = group_of.get(p.name) if p is not None else None
            if g is not None and g not in cands and _group_shape(graph, groups[g]) == shape:
                cands.append(g)
        members = [n]
        for g in cands:
            trial = members + groups[g]
            if _convex(trial, prod, index, anc):
                members = trial
        gid = index[n.name]
        for m in members:
            old = group_of.get(m.name)
            if old is not None:
                groups.pop(old, None)
            group_of[m.name] = gid
        groups[gid] = members
    return [sorted(ms, key=lambda m: index[m.name]) for ms in groups.values()]


def _group_shape(graph: Graph, members: List[Node]):
    return tuple(graph.tensor(members[0].outputs[0]).shape)


def _convex(members: List[Node], prod, index, anc) -> bool:
    """No path leaves the group and re-enters it (else fusing would create a cycle)."""
    mask = 0
    for m in members:
        mask |= 1 << index[m.name]
    for m in members:
        for i in m.inputs:
            p = prod.get(i)
            if p is not None and not (mask >> index[p.name]) & 1 and anc[index[p.name]] & mask:
                return False
    return True


class _ProgramBuilder:
    """Turns member nodes into program instructions, numbering inputs and values."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.refs: Dict[str, str] = {}
        self.inputs: List[str] = []
        self.program: List[dict] = []

    def ref(self, t: str) -> str:
        """The operand reference for tensor ``t``: a value, an immediate, or a new input."""
        if t not in self.refs:
            value = scalar_const(self.graph, t)
            if value is not None:
                self.refs[t] = self.immediate(self.graph.tensor(t).dtype, value)
            else:
                self.inputs.append(t)
                self.refs[t] = f"in{len(self.inputs) - 1}"
        return self.refs[t]

    def immediate(self, dtype: str, value) -> str:
        return self.add({"op": "Const", "args": [], "dtype": dtype, "value": value})

    def add(self, instruction: dict) -> str:
        self.program.append(instruction)
        return f"v{len(self.program) - 1}"

    def node(self, m: Node) -> None:
        """Append the instruction for ONNX elementwise node ``m``."""
        dtype = self.graph.tensor(m.outputs[0]).dtype
        if m.op == "Clip":
            x_dtype = self.graph.tensor(m.inputs[0]).dtype
            args = [self.ref(m.inputs[0])]
            for k, default in ((1, _lowest(x_dtype)), (2, _highest(x_dtype))):
                given = len(m.inputs) > k and m.inputs[k]
                args.append(self.ref(m.inputs[k]) if given else self.immediate(x_dtype, default))
            ins = {"op": "Clip", "args": args, "dtype": dtype}
        else:
            ins = {"op": m.op, "args": [self.ref(i) for i in m.inputs if i], "dtype": dtype}
        ins.update(instruction_attrs(m.op, m.attrs))
        self.refs[m.outputs[0]] = self.add(ins)


def _lowest(dtype: str):
    """Clip's default min: -inf for floats, the type's minimum for integers (ONNX)."""
    dt = np_dtype(dtype)
    return float("-inf") if dt.kind in "fV" else int(np.iinfo(dt).min)


def _highest(dtype: str):
    dt = np_dtype(dtype)
    return float("inf") if dt.kind in "fV" else int(np.iinfo(dt).max)


def _emit(graph: Graph, members: List[Node]) -> None:
    """Replace ``members`` by one FusedElementwise node at the last member's position."""
    names: Set[str] = {m.name for m in members}
    pb = _ProgramBuilder(graph)
    for m in members:
        pb.node(m)
    read_outside = {i for n in graph.nodes if n.name not in names for i in n.inputs}
    outs = [m.outputs[0] for m in members if m.outputs[0] in read_outside or m.outputs[0] in graph.outputs]
    out_refs = [pb.refs[o] for o in outs]
    check_program(pb.program, len(pb.inputs), out_refs)
    fused = make_node(graph, "tftrt.FusedElementwise", members[-1].name + "/fused", pb.inputs, outs,
                      {"program": pb.program, "outputs": out_refs})
    graph.nodes[graph.nodes.index(members[-1])] = fused
    graph.nodes = [n for n in graph.nodes if n.name not in names]
