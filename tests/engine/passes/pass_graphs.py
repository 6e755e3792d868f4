"""Helpers for pass tests: build tiny IR graphs by hand and compare numerics through the
reference executor on fresh random inputs."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import onnx

from tftrt_lite.engine.ir import Graph, Node, Tensor
from tftrt_lite.engine.onnx_import import IR_OPSET
from tftrt_lite.engine.reference import run_graph


class GraphBuilder:
    """Terse construction of IR graphs: ``b.op("Add", [x, y], shape)`` returns the output."""

    def __init__(self, name: str = "g"):
        self.graph = Graph(name, [], [])
        self._n = 0

    def input(self, name: str, shape: Sequence, dtype: str = "float32") -> str:
        self.graph.tensors[name] = Tensor(name, dtype, tuple(shape))
        self.graph.inputs.append(name)
        return name

    def const(self, value, name: Optional[str] = None) -> str:
        self._n += 1
        return self.graph.add_const(name or f"c{self._n}", np.asarray(value))

    def op(self, op: str, inputs: Sequence[str], shape: Sequence, dtype: str = "float32",
           n_out: int = 1, **attrs):
        self._n += 1
        outs = [f"t{self._n}_{k}" for k in range(n_out)]
        for o in outs:
            self.graph.tensors[o] = Tensor(o, dtype, tuple(shape))
        if not op.startswith("tftrt."):
            attrs = {**_schema_defaults(op), **attrs}
        self.graph.nodes.append(Node(op, f"n{self._n}_{op}", list(inputs), outs, attrs))
        return outs[0] if n_out == 1 else outs

    def output(self, *names: str) -> Graph:
        self.graph.outputs.extend(names)
        self.graph.verify()
        return self.graph


def _schema_defaults(op: str) -> dict:
    """The attribute defaults of ONNX ``op`` at the IR's opset (the IR keeps every attr explicit)."""
    schema = onnx.defs.get_schema(op, IR_OPSET, "")
    return {name: onnx.helper.get_attribute_value(a.default_value)
            for name, a in schema.attributes.items() if a.default_value.type != onnx.AttributeProto.UNDEFINED}


def random_feeds(graph: Graph, seed: int = 0, bind: Optional[Dict[str, int]] = None) -> Dict[str, np.ndarray]:
    """Fresh random values (never zeros) for every graph input; symbolic dims from ``bind``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.tensor(name)
        shape = tuple(d if isinstance(d, int) else (bind or {})[d] for d in t.shape)
        feeds[name] = rng.standard_normal(shape).astype(t.dtype)
    return feeds


def assert_same_numerics(before: Graph, after: Graph, feeds=None, rtol=1e-5, atol=1e-5, **kw):
    """Run both graphs on the same random inputs and compare every output."""
    feeds = feeds or random_feeds(before, **kw)
    want, got = run_graph(before, feeds), run_graph(after, feeds)
    assert after.outputs == before.outputs
    for name in before.outputs:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)
