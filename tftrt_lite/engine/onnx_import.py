"""ONNX model → engine IR, with every attribute explicit and every shape inferred.

Why the importer does more than translate protos: the passes, codegen and plan all
need (a) one op semantics per op name, so nodes from opsets 13-17 are rewritten to
their opset-18 form (``IR_OPSET``: ``Reduce*`` axes move from attribute to input) and
every attribute the schema defaults is filled in; (b) a static-or-symbolic shape
on every tensor, so shape-computation subgraphs (``Shape → Gather → Concat →
Reshape``, as tf2onnx emits them) are evaluated symbolically here and folded away
(see ``shape_inference.py``). Anything the engine cannot run — an op outside
``SUPPORTED_ONNX_OPS``, another domain, an opset outside 13-18, a shape that depends
on tensor values — is rejected here with an error naming the op and node.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from tftrt_lite.engine import symbolic as sym
from tftrt_lite.engine.ir import Dim, Graph, Node, Tensor
from tftrt_lite.engine.shape_inference import (INT_DTYPES, MAX_VALUE_SIZE, RULES, SymbolAlias, VALUE_INPUTS,
                                               infer_node)
from tftrt_lite.errors import ShapeError, UnsupportedModelError, UnsupportedOpError

#: the default-domain opset whose op semantics the IR uses
IR_OPSET = 18
#: default-domain opsets a model may declare
MIN_OPSET, MAX_OPSET = 13, 18

#: every ONNX op (default domain) the importer turns into IR
SUPPORTED_ONNX_OPS = frozenset(RULES) | {"Constant"}

__all__ = ["import_onnx", "SUPPORTED_ONNX_OPS", "VALUE_INPUTS", "IR_OPSET", "ir_dtype"]

_ONNX_TO_IR = {
    TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64", TensorProto.INT8: "int8", TensorProto.UINT8: "uint8",
    TensorProto.INT16: "int16", TensorProto.UINT16: "uint16", TensorProto.INT32: "int32",
    TensorProto.UINT32: "uint32", TensorProto.INT64: "int64", TensorProto.UINT64: "uint64",
    TensorProto.BOOL: "bool",
}

#: ops whose ``axes`` was an attribute before opset 18 and an input since
_AXES_TO_INPUT = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                  "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def ir_dtype(elem_type: int, where: str) -> str:
    """IR dtype name of an ONNX ``TensorProto`` element type."""
    try:
        return _ONNX_TO_IR[elem_type]
    except KeyError:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() \
            else str(elem_type)
        raise UnsupportedModelError(f"{where}: element type {name} is not supported by the engine "
                                    f"(supported: {', '.join(sorted(set(_ONNX_TO_IR.values())))})") from None


def import_onnx(model: Union[onnx.ModelProto, str, os.PathLike], name: Optional[str] = None) -> Graph:
    """Import ``model`` (a ``ModelProto`` or a path) as an IR graph with inferred shapes."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    opset = _default_opset(model)
    g = model.graph
    graph = Graph(name or g.name or "engine", [], [o.name for o in g.output])
    for init in g.initializer:
        graph.add_const(init.name, _array(init, f"initializer {init.name!r}"))
    if g.sparse_initializer:
        raise UnsupportedModelError(f"model {graph.name!r}: sparse initializers are not supported")
    init_names = {i.name for i in g.initializer}
    for index, vi in enumerate(i for i in g.input if i.name not in init_names):
        dtype, shape = _value_info(vi, index)
        graph.inputs.append(vi.name)
        graph.tensors[vi.name] = Tensor(vi.name, dtype, shape)
    nodes = _convert_nodes(model, graph, opset)
    _infer(graph, nodes)
    _fold_reshape_targets(graph)
    _remove_dead_nodes(graph)
    _check_outputs(graph, g.output)
    graph.verify()
    return graph


# -- model level ----------------------------------------------------------------------------
def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise UnsupportedModelError("model imports no default-domain (ai.onnx) opset")
    opset = versions[0]
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError(f"model opset {opset} is not supported "
                                    f"(the engine takes opsets {MIN_OPSET}-{MAX_OPSET})")
    return opset


def _array(t: TensorProto, where: str) -> np.ndarray:
    ir_dtype(t.data_type, where)
    return numpy_helper.to_array(t).copy()  # C-contiguous and, unlike ascontiguousarray, keeps 0-d


def _symbol_name(param: str) -> str:
    s = re.sub(r"\W", "_", param)
    return s if sym.is_identifier(s) else "s_" + s


def _value_info(vi: onnx.ValueInfoProto, index: int) -> Tuple[str, Tuple[Dim, ...]]:
    where = f"graph input {vi.name!r}"
    if vi.type.WhichOneof("value") != "tensor_type":
        raise UnsupportedModelError(f"{where}: only tensor inputs are supported, "
                                    f"got {vi.type.WhichOneof('value')}")
    tt = vi.type.tensor_type
    dtype = ir_dtype(tt.elem_type, where)
    if not tt.HasField("shape"):
        raise UnsupportedModelError(f"{where}: rank is unknown; engines need ranked inputs")
    shape: List[Dim] = []
    for axis, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.dim_param:
            shape.append(_symbol_name(d.dim_param))
        else:
            shape.append(f"d{index}_{axis}")
    return dtype, tuple(shape)


def _attr_value(a: AttributeProto, where: str) -> Any:
    if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.SPARSE_TENSOR,
                  AttributeProto.SPARSE_TENSORS, AttributeProto.TYPE_PROTO, AttributeProto.TYPE_PROTOS,
                  AttributeProto.TENSORS):
        raise UnsupportedOpError(f"{where}: attribute {a.name!r} of type "
                                 f"{AttributeProto.AttributeType.Name(a.type)} is not supported")
    if a.ref_attr_name:
        raise UnsupportedOpError(f"{where}: attribute {a.name!r} refers to a function attribute")
    v = helper.get_attribute_value(a)
    if a.type == AttributeProto.STRING:
        return v.decode("utf-8")
    if a.type == AttributeProto.STRINGS:
        return [s.decode("utf-8") for s in v]
    if a.type == AttributeProto.TENSOR:
        return _array(v, f"{where}: attribute {a.name!r}")
    if a.type in (AttributeProto.INTS, AttributeProto.FLOATS):
        return list(v)
    return v


def _convert_nodes(model: onnx.ModelProto, graph: Graph, opset: int) -> List[Node]:
    """Constants into the graph, other nodes as IR nodes in IR_OPSET form."""
    nodes: List[Node] = []
    used_names = set()
    for k, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{k}"
        while name in used_names:
            name = f"{name}_{k}"
        used_names.add(name)
        where = f"{n.op_type} node {name!r}"
        if n.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"{where}: domain {n.domain!r} is not supported "
                                     "(only the default ONNX domain is)")
        if n.op_type not in SUPPORTED_ONNX_OPS:
            raise UnsupportedOpError(f"{where}: op {n.op_type!r} is not supported by the engine builder")
        try:
            onnx.defs.get_schema(n.op_type, opset, "")
        except onnx.defs.SchemaError:
            raise UnsupportedModelError(f"{where}: {n.op_type} does not exist at opset {opset}") from None
        attrs = {a.name: _attr_value(a, where) for a in n.attribute}
        if n.op_type == "Constant":
            for out in n.output:
                graph.add_const(out, _constant_value(attrs, where))
            continue
        node = Node(n.op_type, name, list(n.input), list(n.output), attrs)
        _to_ir_opset(node, graph, opset)
        _fill_defaults(node)
        nodes.append(node)
    return nodes


def _constant_value(attrs: Dict[str, Any], where: str) -> np.ndarray:
    if "value" in attrs:
        return attrs["value"]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise UnsupportedModelError(f"{where}: only numeric constants are supported, got {sorted(attrs)}")


def _to_ir_opset(node: Node, graph: Graph, opset: int) -> None:
    if opset < 18 and node.op in _AXES_TO_INPUT and "axes" in node.attrs:
        axes = graph.add_const(graph.unique_name(f"{node.name}/axes"),
                               np.asarray(node.attrs.pop("axes"), dtype=np.int64))
        node.inputs = (node.inputs + [""])[:1] + [axes]


def _fill_defaults(node: Node) -> None:
    schema = onnx.defs.get_schema(node.op, IR_OPSET, "")
    for attr_name, attr in schema.attributes.items():
        if attr_name not in node.attrs and attr.default_value.type != AttributeProto.UNDEFINED:
            node.attrs[attr_name] = _attr_value(attr.default_value, f"{node.op} node {node.name!r}")
    unknown = set(node.attrs) - set(schema.attributes)
    if unknown:
        raise UnsupportedOpError(f"{node.op} node {node.name!r}: unknown attributes {sorted(unknown)}")


# -- inference ----------------------------------------------------------------------------------
def _infer(graph: Graph, nodes: List[Node]) -> None:
    """Infer every node's outputs, folding fully-static shape values into constants.

    Broadcasting may prove two input symbols equal (``SymbolAlias``); the alias is
    applied to the graph inputs and inference starts over, so every shape uses one
    name per distinct dim.
    """
    base = {k: v for k, v in graph.tensors.items()}
    for _ in range(64):
        graph.tensors = dict(base)
        try:
            graph.nodes = _infer_nodes(graph, [Node(n.op, n.name, list(n.inputs), list(n.outputs),
                                                    dict(n.attrs)) for n in nodes])
            return
        except SymbolAlias as alias:
            for i in graph.inputs:
                t = base[i]
                base[i] = Tensor(i, t.dtype, tuple(sym.substitute(d, {alias.symbol: alias.expr})
                                                   for d in t.shape))
    raise ShapeError(f"graph {graph.name!r}: input symbols do not settle under broadcasting")


def _infer_nodes(graph: Graph, nodes: List[Node]) -> List[Node]:
    values: Dict[str, Tuple[Dim, ...]] = {}
    kept = []
    for node in nodes:
        for i in node.inputs:
            if i and i not in graph.tensors:
                raise ShapeError(f"{node.op} node {node.name!r} reads {i!r}, which no earlier "
                                 "node, input or initializer defines")
        results, out_values = infer_node(graph, node, values)
        if not out_values and _small_constant_node(graph, node, results):
            out_values = _evaluate(graph, node, results)
        folded = 0
        for k, (out, (dtype, shape)) in enumerate(zip(node.outputs, results)):
            if not out:
                folded += 1
                continue
            v = out_values.get(k)
            if v is not None and all(isinstance(d, int) for d in v):
                graph.add_const(out, np.asarray(v, dtype=dtype).reshape(
                    tuple(int(d) for d in shape)))
                folded += 1
                continue
            if v is not None:
                values[out] = v
            graph.tensors[out] = Tensor(out, dtype, shape)
        if folded < len(node.outputs):
            kept.append(node)
    return kept


def _small_constant_node(graph: Graph, node: Node, results) -> bool:
    """Whether ``node`` is shape-domain arithmetic on constants (``Mod``, ``Where``,
    ``Equal`` of small int tensors) that shape inference needs evaluated."""
    return (all(graph.const(i) is not None for i in node.inputs if i)
            and all(dt in INT_DTYPES + ("bool",) and len(shape) <= 1
                    and all(isinstance(d, int) for d in shape) and sym.numel(shape) <= MAX_VALUE_SIZE
                    for dt, shape in results))


def _evaluate(graph: Graph, node: Node, results) -> Dict[int, Tuple[int, ...]]:
    from tftrt_lite.engine.reference import REFERENCE_OPS

    outputs = REFERENCE_OPS[node.op]([graph.const(i) if i else None for i in node.inputs], node.attrs)
    return {k: tuple(int(v) for v in np.asarray(out).reshape(-1)) for k, out in enumerate(outputs[:len(results)])}


def _fold_reshape_targets(graph: Graph) -> None:
    """Replace a Reshape's run-time target by a constant when its symbolic value can be
    stated with ``0`` (copy the input dim) and at most one ``-1``."""
    for node in graph.nodes:
        if node.op != "Reshape" or graph.const(node.inputs[1]) is not None:
            continue
        x = graph.tensor(node.inputs[0]).shape
        out = graph.tensor(node.outputs[0]).shape
        target = []
        for i, d in enumerate(out):
            if isinstance(d, int):
                target.append(d)
            elif not node.attrs["allowzero"] and i < len(x) and sym.equal(x[i], d):
                target.append(0)
            else:
                target.append(-1)
        if target.count(-1) <= 1:
            node.inputs[1] = graph.add_const(graph.unique_name(f"{node.name}/shape"),
                                             np.asarray(target, dtype=np.int64))


def _remove_dead_nodes(graph: Graph) -> None:
    """Drop nodes none of whose outputs is read (ops are pure), then unused tensors."""
    needed = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.outputs if o):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    graph.nodes = kept[::-1]
    graph.remove_unused_tensors()


def _check_outputs(graph: Graph, declared) -> None:
    for vi in declared:
        t = graph.tensors.get(vi.name)
        if t is None:
            raise ShapeError(f"graph output {vi.name!r} is never computed")
        tt = vi.type.tensor_type
        if tt.elem_type and ir_dtype(tt.elem_type, f"graph output {vi.name!r}") != t.dtype:
            raise ShapeError(f"graph output {vi.name!r}: declared {ir_dtype(tt.elem_type, vi.name)}, "
                             f"computed {t.dtype}")
        if tt.HasField("shape"):
            dims = tt.shape.dim
            if len(dims) != len(t.shape):
                raise ShapeError(f"graph output {vi.name!r}: declared rank {len(dims)}, "
                                 f"inferred shape {t.shape}")
            for axis, (d, mine) in enumerate(zip(dims, t.shape)):
                if d.HasField("dim_value") and isinstance(mine, int) and d.dim_value != mine:
                    raise ShapeError(f"graph output {vi.name!r}: axis {axis} declared {d.dim_value}, "
                                     f"inferred {mine}")
