"""Graph rewrite: swap every segment for one ``TftrtLiteEngine`` node.

The engine node takes the segment's external input tensors, produces its output
tensors in the order the segment lists them, and carries the engine plan plus the
native segment as a library function (the fallback, TF-TRT's ``segment_func``).
Readers of a segment output are rewired to the engine's matching output; control
edges into and out of the segment move to the engine node, so execution order
around the engine is what it was around the segment.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.framework import graph_to_function_def

from tftrt_lite.errors import ConversionError

ENGINE_OP = "TftrtLiteEngine"


@dataclass
class EngineSpec:
    """Everything the rewrite needs to know about one built engine."""

    name: str                      # node name of the engine op (unique in the graph)
    nodes: Sequence[str]           # original nodes the engine absorbs
    inputs: Sequence[str]          # external tensors it reads, "node:idx"
    outputs: Sequence[str]         # segment tensors read outside, "node:idx"
    input_dtypes: Sequence[tf.DType]
    input_shapes: Sequence[tf.TensorShape]
    output_dtypes: Sequence[tf.DType]
    output_shapes: Sequence[tf.TensorShape]
    segment_graph_def: graph_pb2.GraphDef   # Placeholders input_<i> → ... → Identity output_<j>
    plan: bytes
    plan_format_version: int
    precision_mode: str
    max_cached_shapes: int = 1     # input-shape sets whose launches are captured as CUDA graphs
    tactics: str = ""              # tactic cache lines measured for this engine (runtime/cc/tactics.h)


def _split(tensor: str) -> Tuple[str, int]:
    name, _, idx = tensor.partition(":")
    return name, int(idx) if idx else 0


def _ref(node: str, idx: int) -> str:
    """NodeDef input syntax: ``node`` for output 0, ``node:i`` otherwise."""
    return node if idx == 0 else f"{node}:{idx}"


def native_segment_function(spec: EngineSpec, function_name: str) -> Tuple[tf.compat.v1.NameAttrList, List]:
    """Build the FunctionDef that runs the segment natively.

    Returns the NameAttrList for the ``segment_func`` attr and the FunctionDefs to
    add to the graph library (the segment function first, then any library
    functions the segment itself calls).
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(spec.segment_graph_def, name="")
    try:
        inputs = [graph.get_tensor_by_name(f"input_{i}:0") for i in range(len(spec.inputs))]
        outputs = [graph.get_tensor_by_name(f"output_{j}:0") for j in range(len(spec.outputs))]
    except KeyError as e:
        raise ConversionError(f"segment graph of engine {spec.name!r} lacks its input/output nodes: {e}") from None
    ops = [op for op in graph.get_operations() if op.type != "Placeholder"]
    fdef = graph_to_function_def.graph_to_function_def(
        graph, ops, inputs, outputs, out_names=[f"output_{j}" for j in range(len(outputs))])
    fdef.signature.name = function_name
    func = tf.compat.v1.NameAttrList(name=function_name)
    return func, [fdef] + list(spec.segment_graph_def.library.function)


def _function_name(spec: EngineSpec) -> str:
    """Library name of the native segment: engine name + a random suffix.

    TF's function registry is process-wide: converted models loaded (or converted)
    in one process must never share a function name, or rebuilding one model's
    functions would replace another's.
    """
    return f"{spec.name}_native_segment_{uuid.uuid4().hex[:12]}"


def host_input_count(dtypes: Sequence[tf.DType]) -> int:
    """How many of an engine's inputs (in order) go to its ``host_tensors`` list: the
    trailing int32 ones. TensorFlow keeps int32 tensors on the host even on a GPU, and an
    engine that took them in device memory would get a copy that waits for all GPU work
    queued before it, serialising consecutive calls. Segments list int32 inputs last."""
    count = 0
    for d in reversed(list(dtypes)):
        if tf.as_dtype(d) != tf.int32:
            break
        count += 1
    return count


def engine_input_dtypes(node) -> List[int]:
    """An engine node's input dtypes (enum values) in the engine's input order."""
    return list(node.attr["InT"].list.type) + list(node.attr["HostT"].list.type if "HostT" in node.attr else [])


def _engine_node(spec: EngineSpec, control_inputs: Sequence[str], segment_func) -> tf.compat.v1.NodeDef:
    dtypes = [tf.as_dtype(d) for d in spec.input_dtypes]
    n_host = host_input_count(dtypes)
    if tf.int32 in dtypes[:len(dtypes) - n_host]:
        raise ConversionError(f"engine {spec.name!r} lists an int32 input before a non-int32 one "
                              f"({[d.name for d in dtypes]}); int32 inputs must come last")
    node = tf.compat.v1.NodeDef(name=spec.name, op=ENGINE_OP)
    node.input.extend(_ref(*_split(t)) for t in spec.inputs)
    node.input.extend(f"^{c}" for c in control_inputs)
    node.attr["InT"].list.type.extend(d.as_datatype_enum for d in dtypes[:len(dtypes) - n_host])
    if n_host:  # absent otherwise, so the node stays readable by runtimes without the attr
        node.attr["HostT"].list.type.extend(d.as_datatype_enum for d in dtypes[len(dtypes) - n_host:])
    node.attr["OutT"].list.type.extend(d.as_datatype_enum for d in spec.output_dtypes)
    node.attr["input_shapes"].list.shape.extend(tf.TensorShape(s).as_proto() for s in spec.input_shapes)
    node.attr["output_shapes"].list.shape.extend(tf.TensorShape(s).as_proto() for s in spec.output_shapes)
    node.attr["serialized_plan"].s = spec.plan
    node.attr["plan_format_version"].i = spec.plan_format_version
    node.attr["engine_name"].s = spec.name.encode()
    node.attr["precision_mode"].s = spec.precision_mode.encode()
    node.attr["max_cached_shapes"].i = spec.max_cached_shapes
    if spec.tactics:  # absent otherwise, so the node stays readable by runtimes without the attr
        node.attr["tactics"].s = spec.tactics.encode()
    node.attr["segment_func"].func.CopyFrom(segment_func)
    return node


def replace_segments(graph_def: graph_pb2.GraphDef, specs: Sequence[EngineSpec],
                     keep_native_segments: bool = True) -> graph_pb2.GraphDef:
    """Return a copy of ``graph_def`` with each spec's segment replaced by its engine node.

    A Const that a segment absorbed but that is also read outside stays in the graph
    (the segmenter duplicates constants rather than exporting them).
    """
    nodes_by_name = {n.name: n for n in graph_def.node}
    # Consts are copied into every segment that reads them, so several engines may list
    # the same one; any other node belongs to exactly one engine.
    absorbed: Dict[str, EngineSpec] = {}
    absorbed_consts = set()
    for spec in specs:
        for n in spec.nodes:
            if nodes_by_name[n].op == "Const":
                absorbed_consts.add(n)
            elif n in absorbed:
                raise ConversionError(f"node {n!r} is in engines {absorbed[n].name!r} and {spec.name!r}")
            else:
                absorbed[n] = spec
    out_index: Dict[Tuple[str, int], Tuple[str, int]] = {}
    for spec in specs:
        for j, t in enumerate(spec.outputs):
            out_index[_split(t)] = (spec.name, j)

    read_outside = set()
    for n in graph_def.node:
        if n.name in absorbed or n.name in absorbed_consts:
            continue
        for i in n.input:
            read_outside.add(i.lstrip("^").partition(":")[0])

    result = graph_pb2.GraphDef()
    result.versions.CopyFrom(graph_def.versions)
    result.library.CopyFrom(graph_def.library)
    known_functions = {f.signature.name for f in result.library.function}

    for spec in specs:
        controls = set()
        for n in spec.nodes:
            for i in nodes_by_name[n].input:
                src = i[1:]
                if not i.startswith("^") or src in spec.nodes or src in absorbed_consts:
                    continue  # data edge, internal edge, or a side-effect-free Const
                controls.add(absorbed[src].name if src in absorbed else src)
        func = tf.compat.v1.NameAttrList()
        if keep_native_segments:
            func, fdefs = native_segment_function(spec, _function_name(spec))
            for fdef in fdefs:
                if fdef.signature.name not in known_functions:
                    result.library.function.add().CopyFrom(fdef)
                    known_functions.add(fdef.signature.name)
        result.node.add().CopyFrom(_engine_node(spec, sorted(controls), func))

    for n in graph_def.node:
        if n.name in absorbed or (n.name in absorbed_consts and n.name not in read_outside):
            continue
        new = result.node.add()
        new.CopyFrom(n)
        del new.input[:]
        for i in n.input:
            if i.startswith("^"):
                src = absorbed.get(i[1:])
                new.input.append(f"^{src.name}" if src is not None else i)
                continue
            name, idx = _split(i)
            if name in absorbed:
                try:
                    new.input.append(_ref(*out_index[(name, idx)]))
                except KeyError:
                    raise ConversionError(
                        f"node {n.name!r} reads {i!r} from engine {absorbed[name].name!r}, "
                        "but the segment does not export it") from None
            else:
                new.input.append(i)
    _dedupe_control_inputs(result)
    return result


def _dedupe_control_inputs(graph_def: graph_pb2.GraphDef) -> None:
    """Drop repeated ``^x`` inputs and a node's control edge to itself (rewiring can create both)."""
    for n in graph_def.node:
        seen, keep = set(), []
        for i in n.input:
            if i.startswith("^"):
                if i in seen or i[1:] == n.name:
                    continue
                seen.add(i)
            keep.append(i)
        del n.input[:]
        n.input.extend(keep)
