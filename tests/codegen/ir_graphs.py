"""One-node IR graphs and random inputs for the kernel tests (imported by test files here)."""
import numpy as np

from tftrt_lite.engine import ir


def one_node_graph(op, inputs, outputs, attrs=None, consts=None, name="n"):
    """A graph computing one ``op`` node.

    ``inputs``/``outputs``: lists of ``(tensor name, dtype, shape)``; ``consts``: name →
    array, for constant inputs (listed by name in ``inputs`` as ``(name, None, None)``).
    """
    consts = consts or {}
    graph_inputs = [t for t, _, _ in inputs if t and t not in consts]
    g = ir.Graph(name, graph_inputs, [t for t, _, _ in outputs])
    for t, dt, shape in inputs + outputs:
        if not t:
            continue
        if t in consts:
            g.add_const(t, consts[t])
        else:
            g.tensors[t] = ir.Tensor(t, dt, tuple(shape))
    g.nodes.append(ir.Node(op, name, [t for t, _, _ in inputs], [t for t, _, _ in outputs], dict(attrs or {})))
    g.verify()
    return g


def random_array(rng, dtype, shape):
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 5, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)
