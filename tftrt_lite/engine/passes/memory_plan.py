"""Memory planning: every intermediate tensor gets an offset in one workspace arena.

Why: one arena allocated per call (from TF's allocator) replaces hundreds of
allocations, and tensors whose lifetimes do not overlap share bytes, so the arena is a
fraction of the sum of all intermediates. Sizes are symbolic (``N*64*64*256`` floats) and
one plan serves every batch size, so offsets must be expressions too. The exact and
practical method used here:

1. liveness over the final node order: a tensor lives from the node that writes it to
   the last node that reads it; views (Reshape/Flatten/Squeeze/Unsqueeze) alias their
   input and extend its lifetime instead of taking memory;
2. tensors are grouped by the symbolic monomial of their byte size (``N`` for
   ``N*802816``; the constant monomial for static sizes; a size with several terms is a
   group of its own), so within a group every size is ``coeff × monomial``;
3. each group is packed by greedy best-fit on coefficients (largest first, lowest gap
   free during the tensor's lifetime), offsets aligned to :data:`ALIGNMENT` bytes;
4. groups are laid one after another: arena = Σ peak_coeff × monomial, and a tensor's
   offset = (sum of earlier groups) + its coefficient offset × its monomial — an
   expression the plan encodes like any other.

Graph inputs, outputs and constants are not in the arena (their memory comes from TF or
from the weights section). The plan is returned as ``PassReport.memory_plan`` by
``run_pipeline``; buffer sizes follow the IR dtypes of the final graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from tftrt_lite.engine import symbolic
from tftrt_lite.engine.ir import Dim, Graph
from tftrt_lite.engine.passes.graph_edit import VIEW_OPS

ALIGNMENT = 256


@dataclass
class Placement:
    """Where one arena tensor lives: ``group`` index, byte offset and size coefficients."""

    group: int
    offset_coeff: int
    size_coeff: int
    first: int  # index of the writing node
    last: int   # index of the last reading node


@dataclass
class Group:
    """Tensors whose byte size is ``coeff × monomial``; occupies ``peak_coeff × monomial``."""

    monomial: Dim  # 1 for static sizes
    peak_coeff: int = 0


@dataclass
class MemoryPlan:
    groups: List[Group] = field(default_factory=list)
    placements: Dict[str, Placement] = field(default_factory=dict)
    #: view tensor → the tensor whose memory it reads (arena, input, output or constant)
    aliases: Dict[str, str] = field(default_factory=dict)

    def arena_bytes(self) -> Dim:
        """The arena size as a symbolic expression."""
        return symbolic.normalize(_sum(symbolic.mul(g.peak_coeff, g.monomial) for g in self.groups))

    def offset(self, tensor: str) -> Dim:
        """Byte offset of an arena tensor (follow ``aliases`` for views) as an expression."""
        p = self.placements[tensor]
        base = _sum(symbolic.mul(g.peak_coeff, g.monomial) for g in self.groups[:p.group])
        return symbolic.normalize(symbolic.add(base, symbolic.mul(p.offset_coeff, self.groups[p.group].monomial)))

    def size(self, tensor: str) -> Dim:
        p = self.placements[tensor]
        return symbolic.normalize(symbolic.mul(p.size_coeff, self.groups[p.group].monomial))

    def peak_bytes(self, env: Mapping[str, int]) -> int:
        """Arena bytes at a binding of the symbols, e.g. ``{"N": 128}``."""
        return symbolic.evaluate(self.arena_bytes(), env)

    def naive_bytes(self, env: Mapping[str, int]) -> int:
        """Bytes if every arena tensor had memory of its own (what sharing saves against)."""
        return sum(symbolic.evaluate(self.size(t), env) for t in self.placements)


def _sum(dims) -> Dim:
    total: Dim = 0
    for d in dims:
        total = symbolic.add(total, d)
    return total


def plan_memory(graph: Graph) -> MemoryPlan:
    """Liveness + grouped best-fit packing over ``graph``'s node order (see module doc)."""
    plan = MemoryPlan()
    external = set(graph.inputs) | set(graph.outputs) | {t for t, v in graph.tensors.items() if v.is_const}
    root: Dict[str, str] = {}
    first: Dict[str, int] = {}
    last: Dict[str, int] = {}
    for k, n in enumerate(graph.nodes):
        for i in n.inputs:
            if i:
                r = root.get(i, i)
                last[r] = k
        for o in n.outputs:
            if not o:
                continue
            if n.op in VIEW_OPS and o not in graph.outputs:
                src = root.get(n.inputs[0], n.inputs[0])
                root[o] = src
                plan.aliases[o] = src
            elif o not in external:
                first[o] = k
                last.setdefault(o, k)  # written but never read: lives for its own node
    group_index: Dict[Dim, int] = {}
    members: Dict[int, List[str]] = {}
    for t in first:
        coeff, mono = _split(_byte_size(graph, t))
        g = group_index.setdefault(mono, len(group_index))
        if g == len(plan.groups):
            plan.groups.append(Group(mono))
        size = -(-coeff // ALIGNMENT) * ALIGNMENT
        plan.placements[t] = Placement(g, 0, size, first[t], last[t])
        members.setdefault(g, []).append(t)
    for g, names in members.items():
        plan.groups[g].peak_coeff = _pack([plan.placements[t] for t in names])
    return plan


def _byte_size(graph: Graph, tensor: str) -> Dim:
    t = graph.tensor(tensor)
    if t.shape is None:
        raise ValueError(f"memory plan: tensor {tensor!r} has no known shape")
    item = 2 if t.dtype == "bfloat16" else np.dtype(t.dtype).itemsize
    return symbolic.mul(symbolic.numel(t.shape), item)


def _split(size: Dim) -> Tuple[int, Dim]:
    """(coefficient, monomial) of a byte size; a multi-term size is its own monomial."""
    terms = symbolic.terms(size)
    if len(terms) != 1:
        return 1, symbolic.normalize(size)
    coeff, powers = terms[0]
    mono: Dim = 1
    for sym, p in powers:
        for _ in range(p):
            mono = symbolic.mul(mono, sym)
    return coeff, mono


def _pack(items: List[Placement]) -> int:
    """Greedy best-fit by size; sets ``offset_coeff``; returns the peak coefficient."""
    placed: List[Placement] = []
    peak = 0
    for p in sorted(items, key=lambda p: (-p.size_coeff, p.first)):
        busy = sorted((q.offset_coeff, q.offset_coeff + q.size_coeff) for q in placed
                      if q.first <= p.last and p.first <= q.last)
        best: Optional[Tuple[int, int]] = None  # (gap size, offset)
        cursor = 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= p.size_coeff and (best is None or gap < best[0]):
                best = (gap, cursor)
            cursor = max(cursor, hi)
        p.offset_coeff = cursor if best is None else best[1]
        placed.append(p)
        peak = max(peak, p.offset_coeff + p.size_coeff)
    return peak


def run(graph: Graph, ctx) -> None:
    ctx.memory_plan = plan_memory(graph)
