"""Attention layout: the head split/merge views and transposes around ``tftrt.Attention``
become strided operand layouts of the attention itself.

Why: Keras ``MultiHeadAttention`` lowers through einsum, so each projection reaches the
attention through a head-split Transpose and the output leaves through a head-merge one:

    GEMM [N, S, H·D] ─► Reshape [N, S, H, 1, D] ─► Transpose ─► Reshape [N·H, S, D] ─┐ (Q, K, V)
    Attention ─► [N·H, S, D] ─► Reshape [N, H, S, D] ─► Transpose ─► Reshape [N, S, H·D]
    ==>  GEMM [N, S, H·D] ─Attention(layout)─► [N, S, H·D]

Each Transpose is a full read and write of its tensor (four kernels per attention, ~48
per BERT-base forward). The attention kernel indexes its operands anyway, so it can read
the GEMM outputs and write the next GEMM's input directly with strides (``layout``; exact
semantics in ``fused_ops.attention``).

Matching: from each of Q, K, V up through Reshape/Flatten/Squeeze/Unsqueeze/Transpose
nodes whose outputs are read by nothing but the chain, and from O down through such nodes
while each is the only reader. A chain of views and permutations is a permutation of
memory, tracked here as *components*: every axis of a tensor is a row-major list of
(size, element stride) pairs over the chain's end tensor. Reshapes regroup (and split)
components; transposes permute axes. An operand's chain is absorbed only when its S and D
axes are single strided dims and its leading dims collapse to at most (batch, heads) with
the same sizes for every operand; otherwise that operand keeps its tensor (contiguous
strides). A mask is allowed when it broadcasts over all leading dims or the leading dims
already are (batch, heads), so its meaning is unchanged.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from tftrt_lite.engine import symbolic
from tftrt_lite.engine.ir import Dim, Graph, Node
from tftrt_lite.engine.passes.graph_edit import VIEW_OPS, producer, readers, remove_dead_nodes

#: ops a chain may contain: views and pure permutations (no arithmetic, no copy semantics).
CHAIN_OPS = (*VIEW_OPS, "Transpose")

Comp = Tuple[Dim, Dim]          # (size, element stride)
View = List[List[Comp]]         # per axis, its components, outermost first


class _NoView(Exception):
    """The chain is not expressible as one strided view (skip this operand)."""


def run(graph: Graph, ctx=None) -> None:
    for node in list(graph.nodes):
        if node.op == "tftrt.Attention" and "layout" not in node.attrs:
            _rewrite(graph, node)
    remove_dead_nodes(graph)


# ----------------------------------------------------------------------------- components
def _is(a: Dim, b: Dim) -> bool:
    return symbolic.equal(a, b)


def _divides(a: Dim, b: Dim) -> Optional[Dim]:
    """``b / a`` when exact, else None."""
    try:
        return symbolic.divide(b, a)
    except Exception:
        return None


def _contiguous(shape: Sequence[Dim]) -> View:
    strides: List[Dim] = []
    acc: Dim = 1
    for d in reversed(shape):
        strides.append(acc)
        acc = symbolic.mul(acc, d)
    return [[(d, st)] for d, st in zip(shape, reversed(strides))]


def _regroup(comps: List[Comp], shape: Sequence[Dim]) -> View:
    """Row-major components regrouped into axes of ``shape`` (a reshape), splitting a
    component where an axis boundary falls inside it."""
    comps = [c for c in comps if not _is(c[0], 1)]
    out: View = []
    k = 0
    for n in shape:
        axis: List[Comp] = []
        need = n
        while not _is(need, 1):
            if k >= len(comps):
                raise _NoView()
            size, stride = comps[k]
            rest = _divides(size, need)
            if rest is not None:
                axis.append((size, stride))
                need, k = rest, k + 1
                continue
            inner = _divides(need, size)
            if inner is None:
                raise _NoView()
            axis.append((need, symbolic.mul(inner, stride)))
            comps[k] = (inner, stride)
            need = 1
        out.append(axis)
    if k != len(comps):
        raise _NoView()
    return out


def _apply(graph: Graph, node: Node, view: View) -> View:
    """The view of ``node``'s output given the view of its input."""
    if node.op == "Transpose":
        return [view[p] for p in node.attrs["perm"]]
    shape = graph.tensor(node.outputs[0]).shape
    if shape is None:
        raise _NoView()
    return _regroup([c for axis in view for c in axis], shape)


def _merged(axis: List[Comp]) -> List[Comp]:
    """Components of one axis with memory-contiguous neighbours merged, size-1 ones dropped."""
    out: List[Comp] = []
    for size, stride in axis:
        if _is(size, 1):
            continue
        if out and _is(out[-1][1], symbolic.mul(size, stride)):
            out[-1] = (symbolic.mul(out[-1][0], size), stride)
        else:
            out.append((size, stride))
    return out


def _single(axis: List[Comp]) -> Dim:
    """The stride of an axis that is one strided dim (0 when its size is 1)."""
    comps = _merged(axis)
    if not comps:
        return 0
    if len(comps) != 1:
        raise _NoView()
    return comps[0][1]


# ----------------------------------------------------------------------------- chains
def _chain_up(graph: Graph, t: str) -> List[Node]:
    """CHAIN_OPS producing ``t``, outermost first, whose outputs only the chain reads."""
    chain: List[Node] = []
    while True:
        p = producer(graph, t)
        if p is None or p.op not in CHAIN_OPS or t in graph.outputs or len(readers(graph, t)) != 1:
            return chain[::-1]
        chain.append(p)
        t = p.inputs[0]


def _chain_down(graph: Graph, t: str) -> List[Node]:
    """CHAIN_OPS reading ``t`` onward, each the only reader of the tensor before it."""
    chain: List[Node] = []
    while t not in graph.outputs:
        rs = readers(graph, t)
        if len(rs) != 1 or rs[0].op not in CHAIN_OPS or rs[0].inputs[0] != t:
            break
        chain.append(rs[0])
        t = rs[0].outputs[0]
    return chain


def _input_view(graph: Graph, chain: List[Node], t: str) -> View:
    """``t`` as components over the memory of the chain's first input (or ``t`` itself)."""
    if not chain:
        return _contiguous(graph.tensor(t).shape)
    view = _contiguous(graph.tensor(chain[0].inputs[0]).shape)
    for n in chain:
        view = _apply(graph, n, view)
    return view


def _output_view(graph: Graph, chain: List[Node], t: str) -> View:
    """The attention output ``t`` as components over the memory of the chain's last output.

    The chain maps the last output's components to strides in ``t``; ordering them by
    those strides (1, then size·1, ...) lists ``t``'s memory outermost first, each with
    its stride in the last output, which regroup into ``t``'s axes.
    """
    view = _contiguous(graph.tensor(t).shape)
    for n in chain:
        view = _apply(graph, n, view)
    comps = [c for axis in view for c in axis if not _is(c[0], 1)]
    out_strides: List[Dim] = []
    acc: Dim = 1
    for size, _ in reversed(comps):
        out_strides.append(acc)
        acc = symbolic.mul(acc, size)
    pairs = [(size, in_stride, out) for (size, in_stride), out in zip(comps, reversed(out_strides))]
    ordered: List[Comp] = []
    acc = 1
    while pairs:
        hit = next((p for p in pairs if _is(p[1], acc)), None)
        if hit is None:
            raise _NoView()
        pairs.remove(hit)
        ordered.append((hit[0], hit[2]))
        acc = symbolic.mul(acc, hit[0])
    return _regroup(ordered[::-1], graph.tensor(t).shape)


# ----------------------------------------------------------------------------- rewrite
class _Operand:
    """One operand: the tensor the attention will address, its chain and its view."""

    def __init__(self, tensor: str, chain: List[Node], view: View, transposed: bool) -> None:
        self.tensor, self.chain = tensor, chain
        *lead, a, b = view
        s_axis, d_axis = (b, a) if transposed else (a, b)
        self.s, self.d = _single(s_axis), _single(d_axis)
        self.lead = _merged([c for axis in lead for c in axis])
        if len(self.lead) > 2:
            raise _NoView()


def _operand(graph: Graph, t: str, transposed: bool, output: bool) -> _Operand:
    """``t`` through its absorbable chain, or as it is when the chain does not qualify."""
    chain = _chain_down(graph, t) if output else _chain_up(graph, t)
    if chain:
        try:
            if output:
                return _Operand(chain[-1].outputs[0], chain, _output_view(graph, chain, t), transposed)
            return _Operand(chain[0].inputs[0], chain, _input_view(graph, chain, t), transposed)
        except _NoView:
            pass
    return _Operand(t, [], _contiguous(graph.tensor(t).shape), transposed)


def _lead_strides(op: _Operand, b: Dim, h: Dim) -> Tuple[Dim, Dim]:
    """(batch stride, head stride) of an operand whose leading components are (b, h)."""
    if len(op.lead) == 2:
        (nb, sb), (nh, sh) = op.lead
        if _is(nb, b) and _is(nh, h):
            return sb, sh
    elif len(op.lead) == 1:
        n, st = op.lead[0]
        if _is(n, symbolic.mul(b, h)):
            return symbolic.mul(h, st), st
    elif _is(symbolic.mul(b, h), 1):
        return 0, 0
    raise _NoView()


def _rewrite(graph: Graph, node: Node) -> None:
    q_t, k_t, v_t = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else ""
    o_t = node.outputs[0]
    shapes = [graph.tensor(t).shape for t in (q_t, k_t, v_t, o_t)]
    if any(s is None or len(s) < 2 for s in shapes):
        return
    k_transposed = bool(node.attrs["k_transposed"])
    ops = [_operand(graph, q_t, False, False), _operand(graph, k_t, k_transposed, False),
           _operand(graph, v_t, False, False), _operand(graph, o_t, False, True)]
    if not any(op.chain for op in ops):
        return
    lead = shapes[0][:-2]
    b, h = _batch_heads(ops, lead)
    if mask:
        m_shape = graph.tensor(mask).shape
        if m_shape is None:
            return
        if any(not _is(x, 1) for x in m_shape[:-2]) and not (
                len(lead) == 2 and _is(lead[0], b) and _is(lead[1], h)):
            return  # the mask varies over leading dims that are not (batch, heads)
    try:
        strides = [(*_lead_strides(op, b, h), op.s, op.d) for op in ops]
    except _NoView:
        return
    sq, d = shapes[0][-2:]
    sk = shapes[1][-1] if k_transposed else shapes[1][-2]
    dv = shapes[2][-1]
    node.inputs[:3] = [op.tensor for op in ops[:3]]
    node.outputs[0] = ops[3].tensor
    node.attrs["k_transposed"] = 0
    node.attrs["layout"] = {
        "dims": _dims([b, h, sq, sk, d, dv]),
        **{name: _dims(st) for name, st in zip("qkvo", strides)},
        "shapes": {name: _dims(graph.tensor(op.tensor).shape) for name, op in zip("qkvo", ops)},
    }
    for n in ops[3].chain:
        graph.nodes.remove(n)


def _dims(dims: Sequence[Dim]) -> List[Dim]:
    return [symbolic.normalize(x) for x in dims]


def _batch_heads(ops: Sequence[_Operand], lead: Sequence[Dim]) -> Tuple[Dim, Dim]:
    """(B, H): the sizes of the first two-component leading dims, else (all of them, 1)."""
    for op in ops:
        if len(op.lead) == 2:
            return op.lead[0][0], op.lead[1][0]
    if len(lead) == 2:
        return lead[0], lead[1]
    return symbolic.product(lead), 1
