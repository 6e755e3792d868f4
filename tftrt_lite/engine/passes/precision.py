"""Precision: give every node its compute dtype (FP16/BF16 engines), casting only at borders.

Why a pass, and why here (after the library-call fusions, before elementwise fusion): a
reduced-precision engine is the same graph with most float tensors retyped, plus a few
``Cast`` nodes where a float32 tensor meets a half-precision node or back. Running before
elementwise fusion lets those casts join the neighbouring elementwise groups, so the cast
of an engine input or output is folded into the first/last generated kernel wherever the
graph has one there; only a library call (conv/GEMM) right at a border needs a cast kernel.

Rules:
- Each node is *reduced* (its float inputs and outputs take the engine's reduced dtype)
  when its op is in :data:`REDUCIBLE` and no ``precision_overrides`` pattern keeps it in
  float32; every other node computes in float32, as the lowered graph says.
- Engine inputs and outputs keep the signature's dtypes: an output produced by a reduced
  node is computed into a reduced twin and cast back.
- Float constants read by reduced nodes are converted once, here, so the plan stores them
  once, in the reduced dtype (a float32 copy survives only if a float32 node reads it too).
  Finite values beyond the reduced type's range saturate to its largest finite value, as
  TensorRT does, instead of becoming infinities.
- What stays float32 inside kernels is not decided here: generated kernels compute in float
  and round once per stored value, softmax/layernorm/reduction statistics accumulate in
  float, and cuBLASLt/cuDNN accumulate in float (``compute`` float32 in the plan).
- ``allow_tf32=False`` (exact float32 math) is recorded on attention nodes here; library
  steps carry it as their plan math mode.
- Sum-like reductions keep float32 outputs: a sum of many half values overflows easily,
  and those outputs are small.

    x(f32) ─Conv─► a ─Relu─► b ─MatMul─► y(f32)
      ==>  x ─Cast(f16)─► ─Conv─► a(f16) ─Relu─► b(f16) ─MatMul─► y#f16 ─Cast(f32)─► y
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple


from tftrt_lite.engine.fused_ops import ELEMENTWISE_OPS
from tftrt_lite.engine.ir import Graph, Node, Tensor, saturate_cast
from tftrt_lite.engine.passes.graph_edit import VIEW_OPS, make_node

#: engine precision → the dtype its reduced nodes compute in (None: everything float32).
#: INT8 engines are FP16 engines whose convolutions and GEMMs read int8-quantized operands
#: (the ``quantize`` pass, just before this one).
REDUCED_DTYPES = {"FP32": None, "FP16": "float16", "BF16": "bfloat16", "INT8": "float16"}
#: node attr: this node keeps float32 whatever the engine's precision (set by other passes).
KEEP_FLOAT32 = "keep_float32"
#: per-node override values → dtype
OVERRIDE_DTYPES = {"FP32": "float32", "FP16": "float16", "BF16": "bfloat16"}

_ONNX_DTYPE = {"float32": 1, "float16": 10, "bfloat16": 16}
_FLOAT = ("float32", "float16", "bfloat16")

#: ops whose float inputs and outputs all take one dtype in a reduced engine.
REDUCIBLE = frozenset(
    {"Conv", "tftrt.FusedConv", "Gemm", "MatMul", "tftrt.FusedGemm", "tftrt.LayerNorm", "tftrt.Attention",
     "tftrt.Pool", "tftrt.SpaceToDepth", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Softmax", "LogSoftmax",
     "ReduceMean", "ReduceMax", "ReduceMin", "Transpose", "Concat", "Slice", "Gather", "Pad", "Expand", "Tile",
     "Split", "Identity", "PRelu", "Sum", "Mean", "Max", "Min", *VIEW_OPS}
    | {op for op in ELEMENTWISE_OPS if op != "Const"})

#: op → input positions that keep whatever float dtype they have (the kernel reads any).
_FLEXIBLE_INPUTS = {"Cast": (0,), "tftrt.Attention": (3,), "tftrt.SpaceToDepth": (0,)}


def run(graph: Graph, ctx) -> None:
    if not ctx.allow_tf32:  # generated fp32 attention then stays off TF32 tensor cores too
        for node in graph.nodes:
            if node.op == "tftrt.Attention":
                node.attrs["allow_tf32"] = False
    reduced = REDUCED_DTYPES[ctx.precision]
    overrides = compile_overrides(ctx.precision_overrides)
    if reduced is None and not overrides:
        return
    _Retyper(graph, reduced or "float32", overrides).run()


def compile_overrides(overrides: Optional[Dict[str, str]]) -> List[Tuple["re.Pattern", str]]:
    """``{regex: precision}`` → [(compiled, dtype)], with errors naming the bad entry."""
    out = []
    for pattern, prec in (overrides or {}).items():
        if prec not in OVERRIDE_DTYPES:
            raise ValueError(f"precision_overrides[{pattern!r}] = {prec!r}: the precision must be one of "
                             f"{', '.join(OVERRIDE_DTYPES)}")
        try:
            out.append((re.compile(pattern), OVERRIDE_DTYPES[prec]))
        except re.error as e:
            raise ValueError(f"precision_overrides: {pattern!r} is not a valid regular expression: {e}") from None
    return out


def node_dtype(node: Node, reduced: str, overrides) -> Optional[str]:
    """The float dtype ``node`` computes in once this pass has run on an engine whose
    reducible nodes compute in ``reduced`` (with compiled ``overrides``), or None when it
    keeps the graph's dtypes."""
    for pattern, dtype in overrides:
        if pattern.search(node.name):
            return dtype
    if node.attrs.get(KEEP_FLOAT32):
        return None
    return reduced if node.op in REDUCIBLE else None


class _Retyper:
    def __init__(self, graph: Graph, reduced: str, overrides) -> None:
        self.g = graph
        self.reduced = reduced
        self.overrides = overrides
        self.casts: Dict[Tuple[str, str], str] = {}   # (tensor, dtype) → its cast
        self.const_copies: Dict[Tuple[str, str], str] = {}
        self.new_nodes: List[Tuple[Node, Node]] = []  # (cast, insert before this node)

    def run(self) -> None:
        g = self.g
        plan = {n.name: node_dtype(n, self.reduced, self.overrides) for n in g.nodes}
        self._split_graph_outputs(plan)
        original = {name: t.dtype for name, t in g.tensors.items()}
        consumers = g.consumers()
        for node in list(g.nodes):
            dtype = plan.get(node.name)
            flexible = _FLEXIBLE_INPUTS.get(node.op, ())
            for k, t in enumerate(node.inputs):
                if not t or k in flexible or g.tensor(t).dtype not in _FLOAT:
                    continue
                node.inputs[k] = self._as(t, dtype or original[t], node, consumers, plan)
            if dtype is None:
                continue
            for o in node.outputs:
                if o and g.tensor(o).dtype in _FLOAT and o not in g.outputs:
                    g.tensors[o] = Tensor(o, dtype, g.tensor(o).shape)
            if node.op == "Cast" and g.tensor(node.outputs[0]).dtype in _FLOAT:
                node.attrs["to"] = _ONNX_DTYPE[g.tensor(node.outputs[0]).dtype]
            if node.op == "tftrt.SpaceToDepth":
                node.attrs["dtype"] = g.tensor(node.outputs[0]).dtype
        for cast, before in self.new_nodes:
            g.nodes.insert(g.nodes.index(before), cast)
        g.toposort()
        g.remove_unused_tensors()

    def _split_graph_outputs(self, plan: Dict[str, Optional[str]]) -> None:
        """A graph output computed by a retyped node is computed into a twin, then cast."""
        g = self.g
        producers = g.producers()
        for o in list(g.outputs):
            p = producers.get(o)
            dt = g.tensor(o).dtype
            if p is None or plan.get(p.name) in (None, dt) or dt not in _FLOAT:
                continue
            twin = g.unique_name(f"{o}#{plan[p.name]}")
            g.tensors[twin] = Tensor(twin, dt, g.tensor(o).shape)
            p.outputs = [twin if x == o else x for x in p.outputs]
            for n in g.nodes:
                if n is not p:
                    n.inputs = [twin if x == o else x for x in n.inputs]
            cast = make_node(g, "Cast", f"{o}/cast_out", [twin], [o], {"to": _ONNX_DTYPE[dt]})
            g.nodes.insert(g.nodes.index(p) + 1, cast)
            plan[cast.name] = None

    def _as(self, t: str, dtype: str, reader: Node, consumers, plan: Dict[str, Optional[str]]) -> str:
        """``t`` as ``dtype``: itself, a converted constant, or the output of a shared Cast."""
        g = self.g
        tensor = g.tensor(t)
        if tensor.value is not None:
            if tensor.dtype == dtype:
                return t
            readers = consumers.get(t, [])
            if all(plan.get(r.name) == dtype or r.op in _FLEXIBLE_INPUTS for r in readers) \
                    and t not in g.outputs:
                g.tensors[t] = Tensor(t, dtype, tensor.shape, saturate_cast(tensor.value, dtype))
                return t
            key = (t, dtype)
            if key not in self.const_copies:
                name = g.unique_name(f"{t}#{dtype}")
                g.add_const(name, saturate_cast(tensor.value, dtype))
                self.const_copies[key] = name
            return self.const_copies[key]
        # a computed tensor: the dtype its producer will give it
        current = tensor.dtype
        if current == dtype:
            return t
        key = (t, dtype)
        if key not in self.casts:
            out = g.unique_name(f"{t}#{dtype}")
            g.tensors[out] = Tensor(out, dtype, tensor.shape)
            cast = make_node(g, "Cast", f"{t}/cast_{dtype}", [t], [out], {"to": _ONNX_DTYPE[dtype]})
            self.casts[key] = out
            self.new_nodes.append((cast, reader))
        return self.casts[key]
