"""``lower_segment``: one segment → its own GraphDef → an ONNX model the engine can import.

The ONNX-op check runs here, not later in the engine builder, so the error can say
which *TF* nodes produced the offending ONNX op and in which segment — the level a
user (or the op-support registry's maintainer) can act on. tf2onnx keeps a TF node's
name as the prefix of every ONNX node it emits for it, which is how the blame is
assigned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import onnx
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from tftrt_lite.engine.onnx_import import SUPPORTED_ONNX_OPS
from tftrt_lite.errors import ConversionError
from tftrt_lite.lower.extract import extract_segment_graph_def, input_node_name, output_node_name
from tftrt_lite.lower.to_onnx import ONNX_OPSET, graph_def_to_onnx
from tftrt_lite.segment import Segment


@dataclass
class LoweredSegment:
    """A segment in both forms: TF (native fallback, reference) and ONNX (engine input).

    ``input_names[i]``/``output_names[j]`` are the ONNX graph's value names for the
    segment's ``input_tensors[i]``/``output_tensors[j]`` (tensor names of the original
    graph); they equal the Placeholder/Identity node names of ``segment_graph_def``.
    """

    segment: Segment
    segment_graph_def: graph_pb2.GraphDef
    onnx_model: onnx.ModelProto
    input_tensors: List[str]
    output_tensors: List[str]
    input_names: List[str]
    output_names: List[str]
    input_dtypes: List[tf.DType]
    input_shapes: List[tf.TensorShape]
    output_dtypes: List[tf.DType]
    output_shapes: List[tf.TensorShape]
    opset: int


def lower_segment(graph_def: graph_pb2.GraphDef, segment: Segment, opset: int = ONNX_OPSET) -> LoweredSegment:
    """Extract ``segment`` from ``graph_def`` and convert it to ONNX at ``opset``.

    Raises ``ConversionError`` when tf2onnx fails, leaves an ONNX op the engine cannot
    import (named with its TF node(s) and the segment), or produces an invalid model.
    """
    segment_graph_def = extract_segment_graph_def(graph_def, segment)
    input_names = [input_node_name(i) for i in range(len(segment.inputs))]
    output_names = [output_node_name(j) for j in range(len(segment.outputs))]
    try:
        model = graph_def_to_onnx(segment_graph_def, input_names, output_names, segment.input_shapes,
                                  name=segment.name, opset=opset)
    except Exception as e:  # tf2onnx raises bare ValueError/AssertionError/KeyError from handlers
        raise ConversionError(f"tf2onnx failed on segment {segment.name!r}: {type(e).__name__}: {e}") from e
    check_onnx_ops(model, segment)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConversionError(f"tf2onnx produced an invalid ONNX model for segment {segment.name!r}: {e}") from e
    return LoweredSegment(
        segment=segment, segment_graph_def=segment_graph_def, onnx_model=model,
        input_tensors=list(segment.inputs), output_tensors=list(segment.outputs),
        input_names=input_names, output_names=output_names,
        input_dtypes=list(segment.input_dtypes), input_shapes=list(segment.input_shapes),
        output_dtypes=list(segment.output_dtypes), output_shapes=list(segment.output_shapes),
        opset=opset)


def check_onnx_ops(model: onnx.ModelProto, segment: Segment) -> None:
    """Raise ``ConversionError`` if an ONNX node is outside ``SUPPORTED_ONNX_OPS``."""
    bad: Dict[str, List[str]] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_ONNX_OPS:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            bad.setdefault(op, []).append(source_tf_node(node.name, segment.nodes))
    if bad:
        details = "; ".join(f"{op} (from TF node(s) {sorted(set(srcs))[:3]})" for op, srcs in sorted(bad.items()))
        raise ConversionError(f"segment {segment.name!r} lowers to ONNX ops the engine cannot import: {details}")


def source_tf_node(onnx_node_name: str, tf_nodes: Sequence[str]) -> str:
    """The TF node whose name is the longest prefix of ``onnx_node_name`` (tf2onnx's naming)."""
    best = ""
    for name in tf_nodes:
        if len(name) > len(best) and onnx_node_name.startswith(name) and \
                (len(onnx_node_name) == len(name) or onnx_node_name[len(name)] in "/_:"):
            best = name
    return best or onnx_node_name
