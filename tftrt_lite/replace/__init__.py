"""Replace each segment of a frozen graph with a ``TftrtLiteEngine`` node."""
from tftrt_lite.replace.rewrite import EngineSpec, replace_segments, native_segment_function

__all__ = ["EngineSpec", "replace_segments", "native_segment_function"]
