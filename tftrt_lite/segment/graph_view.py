"""Read-only view of a GraphDef: nodes, edges, topological order and static tensor facts.

Segmentation and the op-support validators both need the same facts about a graph —
who feeds whom (data and control edges), each tensor's dtype and statically inferred
shape, and which inputs are compile-time constants. Computing them once per graph in
one place keeps the two consistent and keeps validators free of proto plumbing.
Shapes come from importing the GraphDef into a ``tf.Graph``: TensorFlow's own shape
functions, so an unknown dimension here is one TensorFlow cannot know either.
"""
from __future__ import annotations

import heapq
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from tftrt_lite.errors import ConversionError

#: Ops that forward their input unchanged; a constant seen through them is still a constant.
FORWARDING_OPS = frozenset({"Identity", "StopGradient", "Snapshot"})


def parse_input(name: str) -> Tuple[str, int, bool]:
    """``"n"``, ``"n:2"``, ``"^n"`` → ``(node, output index, is_control)``."""
    if name.startswith("^"):
        return name[1:], -1, True
    node, sep, idx = name.rpartition(":")
    if sep and idx.isdigit():
        return node, int(idx), False
    return name, 0, False


def tensor_name(node: str, index: int) -> str:
    """The canonical ``"node:index"`` spelling used in every segment contract."""
    return f"{node}:{index}"


class GraphView:
    """Indexes of one GraphDef; build it once per graph and share it.

    Raises ``ConversionError`` when the GraphDef cannot be imported into TensorFlow
    (unknown op, malformed input reference): nothing downstream could handle it either.
    """

    def __init__(self, graph_def: graph_pb2.GraphDef):
        self.graph_def = graph_def
        self.nodes: Dict[str, node_def_pb2.NodeDef] = {}
        for node in graph_def.node:
            if node.name in self.nodes:
                raise ConversionError(f"GraphDef has two nodes named {node.name!r}")
            self.nodes[node.name] = node
        self.graph = tf.Graph()
        try:
            with self.graph.as_default():
                tf.graph_util.import_graph_def(graph_def, name="")
        except (ValueError, TypeError, tf.errors.OpError) as e:
            raise ConversionError(f"GraphDef cannot be imported into TensorFlow: {e}") from e
        # fan-out per node: (consumer, is_control), in GraphDef order (deterministic).
        self.consumers: Dict[str, List[Tuple[str, bool]]] = {name: [] for name in self.nodes}
        for node in graph_def.node:
            for inp in node.input:
                src, _, is_control = parse_input(inp)
                self.consumers[src].append((node.name, is_control))

    # -- nodes and edges -------------------------------------------------------------------

    def node(self, name: str) -> node_def_pb2.NodeDef:
        return self.nodes[name]

    def data_inputs(self, node: node_def_pb2.NodeDef) -> List[str]:
        """Tensor names (``"n:i"``) of the node's data inputs, in input order."""
        out = []
        for inp in node.input:
            src, idx, is_control = parse_input(inp)
            if not is_control:
                out.append(tensor_name(src, idx))
        return out

    def control_inputs(self, node: node_def_pb2.NodeDef) -> List[str]:
        return [inp[1:] for inp in node.input if inp.startswith("^")]

    def topological_order(self) -> List[str]:
        """Node names so every node follows all of its data and control inputs.

        Kahn's algorithm, taking ready nodes in GraphDef order, so the result is the
        same for the same GraphDef. A cycle (only possible with v1 loop ops) is an error.
        """
        pending = {name: 0 for name in self.nodes}
        for node in self.graph_def.node:
            pending[node.name] = len({parse_input(i)[0] for i in node.input})
        position = {name: i for i, name in enumerate(self.nodes)}
        ready = [position[n] for n, count in pending.items() if count == 0]
        heapq.heapify(ready)
        names = list(self.nodes)
        order: List[str] = []
        while ready:
            name = names[heapq.heappop(ready)]
            order.append(name)
            for consumer in dict.fromkeys(c for c, _ in self.consumers[name]):
                pending[consumer] -= 1
                if pending[consumer] == 0:
                    heapq.heappush(ready, position[consumer])
        if len(order) != len(self.nodes):
            stuck = sorted(n for n, c in pending.items() if c > 0)[:5]
            raise ConversionError(f"GraphDef has a cycle through nodes such as {stuck}")
        return order

    # -- tensor facts ------------------------------------------------------------------------

    def _tensor(self, name: str) -> tf.Tensor:
        node, idx, _ = parse_input(name)
        return self.graph.get_operation_by_name(node).outputs[idx]

    def dtype(self, tensor: str) -> tf.DType:
        return self._tensor(tensor).dtype

    def shape(self, tensor: str) -> tf.TensorShape:
        return self._tensor(tensor).shape

    def num_outputs(self, node: str) -> int:
        return len(self.graph.get_operation_by_name(node).outputs)

    def input_dtype(self, node: node_def_pb2.NodeDef, index: int) -> tf.DType:
        return self.dtype(self.data_inputs(node)[index])

    def input_shape(self, node: node_def_pb2.NodeDef, index: int) -> tf.TensorShape:
        return self.shape(self.data_inputs(node)[index])

    def constant(self, node: node_def_pb2.NodeDef, index: int) -> Optional[np.ndarray]:
        """Value of data input ``index`` if it is a ``Const`` (seen through forwarding ops)."""
        src, _, _ = parse_input(self.data_inputs(node)[index])
        producer = self.nodes[src]
        while producer.op in FORWARDING_OPS:
            producer = self.nodes[parse_input(producer.input[0])[0]]
        if producer.op != "Const":
            return None
        return tf.make_ndarray(producer.attr["value"].tensor)
