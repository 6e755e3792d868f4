"""Explicit quantization: the model's own QuantizeLinear/DequantizeLinear as float32 arithmetic.

Quantization-aware models carry fake-quant nodes (``FakeQuantWithMinMaxVars``,
``QuantizeAndDequantizeV2``...), which tf2onnx lowers to ONNX ``QuantizeLinear`` →
``DequantizeLinear`` pairs with constant scales and zero points. They are part of the
model's math — TensorFlow runs them in every precision — so every engine (FP32 to INT8)
must compute them, and an INT8 engine built with ``use_calibration=False`` takes its
quantization from them alone (the calibrated ``quantize`` pass adds nothing then).

Why float32 arithmetic instead of int8 tensors: no generated kernel or library call of
this release reads or writes int8, and none needs to. An int8/uint8 value is an integer
that float32 (and float16, up to 2048) holds exactly, so each Q becomes the chain that
computes that integer as a float, and each DQ the chain that maps it back::

    x ─QuantizeLinear(s, zp)─► q ─DequantizeLinear(s, zp)─► y
    ==>  x ─Div(s)─Round─Add(zp)─Clip(qmin, qmax)─► q(float32) ─Sub(zp)─Mul(s)─► y

``Div`` is an IEEE float32 division and ``Round`` rounds half to even (``rintf``), so the
chain is the ONNX definition exactly; ``Add``/``Sub`` are left out when the zero point is
0; ``[qmin, qmax]`` is the quantized type's range ([-128, 127] or [0, 255]). Per-axis
scales and zero points become constants shaped to broadcast along ``axis``. Every chain
node carries ``KEEP_FLOAT32``, so the precision pass keeps scales and products float32
in FP16/INT8 engines (the casts around the chain fuse into the same kernel), and a
Q→DQ pair fuses into one elementwise kernel, the chain the calibrated ``quantize`` pass
builds. A ``DequantizeLinear`` of a constant (a quantized weight) never gets here:
constant folding has already turned it into a float32 weight on the int8 grid.

Between a Q and its DQ, tf2onnx's QDQ optimizer may leave data-movement ops on the
int8 tensor (``Q → Reshape → DQ``); they move integers exactly in float too, so they
simply get float32 (:data:`GRID_OPS`). Anything else reading a quantized tensor, a
quantized tensor among the engine's outputs (a standalone ``QuantizeLinear`` whose int8
result leaves the engine), or a computed scale or zero point raises
``UnsupportedOpError``: the segment then stays native, which is correct, just not fast.

Runs right after constant folding, so the layout, BN-folding and fusion passes see
ordinary elementwise ops they already know how to move transposes through.
"""
from __future__ import annotations

from typing import List, Set

import numpy as np

from tftrt_lite.engine.ir import Graph, Node, Tensor
from tftrt_lite.engine.passes.graph_edit import make_node, new_const, new_tensor, readers
from tftrt_lite.engine.passes.precision import KEEP_FLOAT32
from tftrt_lite.engine.shape_inference import QUANTIZED_DTYPES
from tftrt_lite.errors import UnsupportedOpError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: ops that only move or select elements: on integers held as float32 they compute the same
#: integers (the ops tf2onnx's QDQ optimizer moves Q/DQ across, that the engine runs)
GRID_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Gather",
                      "GatherElements", "GatherND", "Concat", "Split", "Expand", "Tile", "DepthToSpace"})
#: the grid ops with one data input (input 0) and one output, which a per-tensor Q commutes with
_SINKABLE = GRID_OPS - {"Concat", "Split"}


def run(graph: Graph, ctx=None) -> None:
    if not any(n.op in QDQ_OPS for n in graph.nodes):
        return
    _sink_per_tensor_quantize(graph)
    grid: Set[str] = set()          # tensors that held int8/uint8 values and now hold them as float32
    for node in list(graph.nodes):  # in order: a Q is rewritten before its readers
        if node.op == "QuantizeLinear":
            _replace(graph, node, _quantize(graph, node))
            grid.add(node.outputs[0])
        elif node.op == "DequantizeLinear":
            node.inputs[0] = _on_grid(graph, node, 0, grid)
            _replace(graph, node, _dequantize(graph, node))
        elif any(i in grid for i in node.inputs):
            _move(graph, node, grid)
    leaving = [o for o in graph.outputs if o in grid]
    if leaving:
        raise UnsupportedOpError(f"graph {graph.name!r}: engine output(s) {leaving} are quantized (int8/uint8) "
                                 "values; an engine computes them only between a QuantizeLinear and its "
                                 "DequantizeLinear")
    graph.remove_unused_tensors()


def _sink_per_tensor_quantize(graph: Graph) -> None:
    """Move each per-tensor Q below the data-movement ops it feeds, down to its DQ::

        x ─Q─► ─Reshape─► ─DQ─►     ==>     x ─Reshape─► ─Q─► ─DQ─►

    Why: an elementwise Q commutes with moving elements, and a Q next to its DQ fuses with
    it into one kernel, where a view op between them would split the chain into two kernels
    and a store of the integers. Per-axis Qs stay: their axis is the input's.
    """
    moved = True
    while moved:
        moved = False
        for q in graph.nodes:
            scale = graph.const(q.inputs[1]) if q.op == "QuantizeLinear" else None
            if scale is None or scale.ndim != 0 or q.outputs[0] in graph.outputs:
                continue
            after = readers(graph, q.outputs[0])
            m = after[0] if len(after) == 1 else None
            if m is None or m.op not in _SINKABLE or m.inputs.count(q.outputs[0]) != 1 \
                    or m.inputs[0] != q.outputs[0] or len(m.outputs) != 1:
                continue
            x, out = q.inputs[0], m.outputs[0]
            moved_x = new_tensor(graph, f"{out}/unquantized", graph.tensor(x).dtype, graph.tensor(out).shape)
            m.inputs[0], m.outputs[0] = x, moved_x
            q.inputs[0], q.outputs[0] = moved_x, out
            graph.nodes.remove(q)
            graph.nodes.insert(graph.nodes.index(m) + 1, q)
            moved = True
            break
    graph.remove_unused_tensors()


def _replace(graph: Graph, node: Node, chain: List[Node]) -> None:
    at = graph.nodes.index(node)
    graph.nodes[at:at + 1] = chain


def _params(graph: Graph, node: Node, x_rank: int):
    """(scale, zero point, (qmin, qmax)) of a Q/DQ node as float32 constants shaped to
    broadcast against its data input; raises for computed ones."""
    scale = graph.const(node.inputs[1])
    zp_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    zp = graph.const(zp_name) if zp_name else np.zeros((), np.uint8)
    if scale is None or zp is None:
        raise UnsupportedOpError(f"{node.op} node {node.name!r}: a scale or zero point computed at run time "
                                 "is not supported (only constants)")
    info = np.iinfo(zp.dtype)
    if scale.ndim == 1:  # per axis: a vector along ``axis`` of the data input
        shape = (scale.shape[0],) + (1,) * (x_rank - 1 - node.attrs["axis"] % x_rank)
        scale, zp = scale.reshape(shape), (zp.reshape(shape) if zp.ndim else zp)
    return scale.astype(np.float32), zp.astype(np.float32), (float(info.min), float(info.max))


def _chain(graph: Graph, node: Node, x: str, steps, out: str) -> List[Node]:
    """Nodes applying ``steps`` ((op, constant operands), in order) to ``x``, the last one
    writing ``out``; all float32 and marked ``KEEP_FLOAT32``."""
    shape = graph.tensor(x).shape
    nodes, prev = [], x
    for k, (op, consts) in enumerate(steps):
        last = k == len(steps) - 1
        dst = out if last else new_tensor(graph, f"{node.name}/{op.lower()}", "float32", shape)
        args = [new_const(graph, f"{node.name}/{op.lower()}_{j}", c) for j, c in enumerate(consts)]
        nodes.append(make_node(graph, op, f"{node.name}/{op.lower()}", [prev] + args, [dst], {KEEP_FLOAT32: 1}))
        prev = dst
    return nodes


def _quantize(graph: Graph, node: Node) -> List[Node]:
    x, y = node.inputs[0], node.outputs[0]
    scale, zp, (lo, hi) = _params(graph, node, graph.tensor(x).rank)
    steps = [("Div", [scale]), ("Round", [])]
    if np.any(zp):
        steps.append(("Add", [zp]))
    steps.append(("Clip", [np.float32(lo), np.float32(hi)]))
    graph.tensors[y] = Tensor(y, "float32", graph.tensor(y).shape)
    return _chain(graph, node, x, steps, y)


def _dequantize(graph: Graph, node: Node) -> List[Node]:
    q = node.inputs[0]
    scale, zp, _ = _params(graph, node, graph.tensor(q).rank)
    steps = ([("Sub", [zp])] if np.any(zp) else []) + [("Mul", [scale])]
    return _chain(graph, node, q, steps, node.outputs[0])


def _on_grid(graph: Graph, node: Node, index: int, grid: Set[str]) -> str:
    """Input ``index`` of ``node`` as float32 integers: a rewritten tensor, or a float32 copy
    of an int8/uint8 constant (one that a grid op combines with computed integers, like a
    ``Concat`` operand, which constant folding cannot fold)."""
    t = node.inputs[index]
    if t in grid:
        return t
    value = graph.const(t)
    if value is not None and value.dtype.name in QUANTIZED_DTYPES:
        return new_const(graph, f"{t}/float32", value.astype(np.float32))
    raise UnsupportedOpError(f"{node.op} node {node.name!r} reads {t!r} ({graph.tensor(t).dtype}), which no "
                             "QuantizeLinear computes")


def _move(graph: Graph, node: Node, grid: Set[str]) -> None:
    """A data-movement node on quantized values, retyped to float32; any other reader of a
    quantized tensor is refused."""
    if node.op not in GRID_OPS:
        quantized = [i for i in node.inputs if i in grid]
        raise UnsupportedOpError(f"{node.op} node {node.name!r} computes on the quantized (int8/uint8) tensor(s) "
                                 f"{quantized}; the engine supports only data movement between QuantizeLinear "
                                 f"and DequantizeLinear ({', '.join(sorted(GRID_OPS))})")
    for k, t in enumerate(node.inputs):
        if t and graph.tensor(t).dtype in QUANTIZED_DTYPES:
            node.inputs[k] = _on_grid(graph, node, k, grid)
    for o in node.outputs:
        if o and graph.tensor(o).dtype in QUANTIZED_DTYPES:
            graph.tensors[o] = Tensor(o, "float32", graph.tensor(o).shape)
            grid.add(o)
