"""Constant folding: evaluate, at build time, every node whose inputs are all constants.

Why: tf2onnx and the importer leave weight-layout transposes, shape arithmetic and
reshapes of constants in the graph; folding them turns e.g. ``Transpose(W)`` into a
plain weight the conv/gemm fusions can absorb, and removes work the engine would
otherwise repeat on every call. Evaluation uses the reference executor's op
implementations, so a folded value is by construction what the engine would have
computed. ``Shape`` of a tensor whose dims are all static folds too.

Not folded: nodes whose result would be a large constant materialised from small inputs
(``Expand``/``Tile``/``ConstantOfShape`` broadcasting a scalar to megabytes) — storing
that in the plan costs more than computing it. A ``DequantizeLinear`` of an int8 weight
always folds, whatever its size: the engine has no int8 kernels, so the float32 weight
on the int8 grid is what its convolution or GEMM reads (and the precision pass then
stores it once, as float16, in reduced engines).
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from tftrt_lite.engine.ir import Graph, Node
from tftrt_lite.engine.passes.graph_edit import static_shape
from tftrt_lite.engine.reference import run_graph

#: a folded result bigger than this AND bigger than all its inputs together stays computed.
MAX_INFLATED_BYTES = 1 << 24


def run(graph: Graph, ctx=None) -> None:
    kept = []
    for node in graph.nodes:
        values = _fold(graph, node)
        if values is None:
            kept.append(node)
            continue
        for name, value in values.items():
            graph.add_const(name, value)
    graph.nodes = kept
    graph.remove_unused_tensors()


def _fold(graph: Graph, node: Node):
    """The node's output values if it can be folded, else None."""
    if node.op == "Shape":
        shape = static_shape(graph, node.inputs[0])
        if shape is None:
            return None
        start, end = node.attrs["start"], node.attrs.get("end")  # ONNX gives "end" no default
        return {node.outputs[0]: np.asarray(shape[start:end], dtype=np.int64)}
    inputs = [i for i in node.inputs if i]
    if not inputs or any(graph.const(i) is None for i in inputs):
        return None
    values = _evaluate(graph, node)
    in_bytes = sum(graph.const(i).nbytes for i in inputs)
    out_bytes = sum(v.nbytes for v in values.values())
    if out_bytes > MAX_INFLATED_BYTES and out_bytes > in_bytes and node.op != "DequantizeLinear":
        return None
    return values


def _evaluate(graph: Graph, node: Node) -> Dict[str, np.ndarray]:
    """Run one node through the reference executor on its constant inputs."""
    inputs = [i for i in node.inputs if i]
    mini = Graph(
        name=f"{graph.name}/fold/{node.name}",
        inputs=[],
        outputs=[o for o in node.outputs if o],
        tensors={t: graph.tensors[t] for t in inputs + [o for o in node.outputs if o]},
        nodes=[node],
    )
    results = run_graph(mini, {})
    return {name: np.asarray(results[name]) for name in mini.outputs}
