"""Cut one segment out of its graph as a self-contained GraphDef.

The result has a fixed interface: Placeholder ``input_<i>`` for the segment's i-th
external input and Identity ``output_<j>`` for its j-th output, in the order the
``Segment`` lists them. Two consumers rely on that: tf2onnx (which needs named graph
inputs/outputs) and the converter, which turns the same GraphDef into the native
fallback function — so it must compute exactly what the nodes computed in place.
Device pins are dropped (the engine op decides placement); control edges from outside
the segment are dropped (the engine node inherits them); the library functions the
segment's nodes call are copied along, transitively.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Set

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, function_pb2, graph_pb2

from tftrt_lite.errors import ConversionError
from tftrt_lite.segment import Segment
from tftrt_lite.segment.graph_view import parse_input, tensor_name


def input_node_name(i: int) -> str:
    return f"input_{i}"


def output_node_name(j: int) -> str:
    return f"output_{j}"


def extract_segment_graph_def(graph_def: graph_pb2.GraphDef, segment: Segment) -> graph_pb2.GraphDef:
    """The GraphDef ``input_<i>`` → segment nodes → ``output_<j>`` (see module docstring)."""
    nodes = {n.name: n for n in graph_def.node}
    missing = [m for m in segment.nodes if m not in nodes]
    if missing:
        raise ConversionError(f"segment {segment.name!r} names nodes missing from the graph: {missing[:5]}")
    reserved = {input_node_name(i) for i in range(len(segment.inputs))} | \
               {output_node_name(j) for j in range(len(segment.outputs))}
    clash = sorted(reserved & set(segment.nodes))
    if clash:
        raise ConversionError(f"segment {segment.name!r} has nodes named like its interface: {clash}")

    inside = set(segment.nodes)
    input_index = {t: i for i, t in enumerate(segment.inputs)}
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)

    for i, (dtype, shape) in enumerate(zip(segment.input_dtypes, segment.input_shapes)):
        ph = out.node.add(name=input_node_name(i), op="Placeholder")
        ph.attr["dtype"].type = tf.as_dtype(dtype).as_datatype_enum
        ph.attr["shape"].shape.CopyFrom(tf.TensorShape(shape).as_proto())

    for name in segment.nodes:
        node = out.node.add()
        node.CopyFrom(nodes[name])
        node.device = ""
        del node.input[:]
        for inp in nodes[name].input:
            src, idx, is_control = parse_input(inp)
            if src in inside:
                node.input.append(inp)
            elif not is_control:
                tensor = tensor_name(src, idx)
                if tensor not in input_index:
                    raise ConversionError(
                        f"segment {segment.name!r}: node {name!r} reads {tensor!r}, which is neither "
                        "inside the segment nor one of its inputs")
                node.input.append(input_node_name(input_index[tensor]))

    for j, (tensor, dtype) in enumerate(zip(segment.outputs, segment.output_dtypes)):
        src, idx, _ = parse_input(tensor)
        if src not in inside:
            raise ConversionError(f"segment {segment.name!r}: output {tensor!r} is not produced inside it")
        ident = out.node.add(name=output_node_name(j), op="Identity")
        ident.input.append(src if idx == 0 else f"{src}:{idx}")
        ident.attr["T"].type = tf.as_dtype(dtype).as_datatype_enum

    for fdef in _functions_used(graph_def.library, out.node):
        out.library.function.add().CopyFrom(fdef)
    return out


def _called_functions(node_ops: Iterable[str], attrs: Iterable[attr_value_pb2.AttrValue],
                      known: Dict[str, function_pb2.FunctionDef]) -> Set[str]:
    names = {op for op in node_ops if op in known}
    for attr in attrs:
        if attr.HasField("func"):
            names.add(attr.func.name)
        names.update(f.name for f in attr.list.func)
    return names & set(known)


def _functions_used(library: function_pb2.FunctionDefLibrary, nodes) -> List[function_pb2.FunctionDef]:
    """Library functions reachable from ``nodes`` (by op type or func attr), in library order."""
    known = {f.signature.name: f for f in library.function}
    if not known:
        return []
    todo = _called_functions((n.op for n in nodes), (a for n in nodes for a in n.attr.values()), known)
    used: Set[str] = set()
    while todo:
        name = todo.pop()
        if name in used:
            continue
        used.add(name)
        body = known[name].node_def
        todo |= _called_functions((n.op for n in body), (a for n in body for a in n.attr.values()), known)
    return [f for f in library.function if f.signature.name in used]
