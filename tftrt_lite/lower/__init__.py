"""Stage "lower": a segment as its own GraphDef, then ONNX via tf2onnx (opset pinned)."""
from tftrt_lite.lower.extract import extract_segment_graph_def
from tftrt_lite.lower.lowering import LoweredSegment, check_onnx_ops, lower_segment
from tftrt_lite.lower.to_onnx import ONNX_OPSET

__all__ = ["lower_segment", "LoweredSegment", "extract_segment_graph_def", "check_onnx_ops", "ONNX_OPSET"]
