"""Small graph-editing helpers the passes share.

Why: every pass needs the same few safe edits — "is this tensor read only by that node",
"make readers of X read Y instead without renaming a graph output", "add a node with a
fresh output" — and getting graph-output names or dead producers wrong in one pass would
break the engine's I/O binding. Keeping them in one place keeps each pass about its
pattern, not about bookkeeping.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt_lite.engine.ir import Dim, Graph, Node, Tensor

#: ops that only reinterpret their input's bytes (same element order): a view, no copy.
VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def readers(graph: Graph, tensor: str) -> List[Node]:
    """Nodes that read ``tensor`` (once per node, even if it reads it twice)."""
    seen: Dict[str, Node] = {}
    for n in graph.nodes:
        if tensor in n.inputs:
            seen.setdefault(n.name, n)
    return list(seen.values())


def only_read_by(graph: Graph, tensor: str, nodes: Sequence[Node]) -> bool:
    """True when ``tensor`` is not a graph output and only ``nodes`` read it."""
    if tensor in graph.outputs:
        return False
    allowed = {n.name for n in nodes}
    return all(n.name in allowed for n in readers(graph, tensor))


def producer(graph: Graph, tensor: str) -> Optional[Node]:
    for n in graph.nodes:
        if tensor in n.outputs:
            return n
    return None


def forward(graph: Graph, old: str, new: str) -> bool:
    """Make every reader of ``old`` read ``new``, keeping graph-output names stable.

    If ``old`` is a graph output, the engine's output name must not change: the producer
    of ``new`` is made to write ``old`` directly instead. That is only possible when
    ``new`` is a node output that is not itself a graph output; otherwise nothing changes
    and False is returned (the caller keeps its node).
    """
    if old not in graph.outputs:
        graph.replace_uses(old, new)
        return True
    prod = producer(graph, new)
    if prod is None or new in graph.outputs:
        return False
    prod.outputs = [old if o == new else o for o in prod.outputs]
    for n in graph.nodes:
        if n is not prod:
            n.inputs = [old if i == new else i for i in n.inputs]
    keep = graph.tensors[old]
    graph.tensors[old] = Tensor(old, keep.dtype, keep.shape or graph.tensors[new].shape)
    return True


def new_tensor(graph: Graph, base: str, dtype: str, shape: Optional[Tuple[Dim, ...]]) -> str:
    """Declare a fresh computed tensor named after ``base``; return its name."""
    name = graph.unique_name(base)
    graph.tensors[name] = Tensor(name, dtype, None if shape is None else tuple(shape))
    return name


def new_const(graph: Graph, base: str, value: np.ndarray) -> str:
    """Declare a fresh constant named after ``base``; return its name."""
    return graph.add_const(graph.unique_name(base), value)


def make_node(graph: Graph, op: str, base: str, inputs: List[str], outputs: List[str],
              attrs: Optional[dict] = None) -> Node:
    """A node with a unique name derived from ``base`` (not inserted)."""
    return Node(op, graph.unique_name(base), list(inputs), list(outputs), dict(attrs or {}))


def remove_dead_nodes(graph: Graph) -> int:
    """Drop nodes none of whose outputs is read or is a graph output; return how many."""
    removed = 0
    while True:
        used = set(graph.outputs)
        for n in graph.nodes:
            used.update(i for i in n.inputs if i)
        keep = [n for n in graph.nodes if any(o and o in used for o in n.outputs)]
        if len(keep) == len(graph.nodes):
            break
        removed += len(graph.nodes) - len(keep)
        graph.nodes = keep
    graph.remove_unused_tensors()
    return removed


def static_shape(graph: Graph, tensor: str) -> Optional[Tuple[int, ...]]:
    """The shape if every dim is a known int, else None."""
    shape = graph.tensor(tensor).shape
    if shape is None or any(not isinstance(d, (int, np.integer)) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def scalar_const(graph: Graph, tensor: str) -> Optional[float]:
    """The value of a constant with exactly one element (any rank), else None."""
    v = graph.const(tensor)
    if v is None or v.size != 1:
        return None
    return v.reshape(()).item()


def channel_vector(value: np.ndarray, rank: int, axis: int) -> Optional[np.ndarray]:
    """If ``value`` broadcast to rank ``rank`` varies only along ``axis``, return it as a
    1-D vector along that axis (length 1 if it is a scalar); else None."""
    if value.ndim > rank:
        return None
    v = value.reshape((1,) * (rank - value.ndim) + value.shape)
    if any(s != 1 for i, s in enumerate(v.shape) if i != axis % rank):
        return None
    return v.reshape(-1)


def reshape_target(shape) -> Optional[np.ndarray]:
    """``shape`` as a constant Reshape target (its one symbolic dim as -1), or None when it
    has more than one symbolic dim."""
    if shape is None or sum(not isinstance(d, (int, np.integer)) for d in shape) > 1:
        return None
    return np.asarray([int(d) if isinstance(d, (int, np.integer)) else -1 for d in shape], np.int64)
