"""Stage "segment": clusters of supported nodes, cycle-free, with a conversion report."""
from tftrt_lite.segment.report import ConversionReport, DroppedSegment, UnsupportedOp
from tftrt_lite.segment.segmenter import (
    DENYLIST_ENV,
    NON_EFFECTIVE_OPS,
    Segment,
    SegmentationResult,
    segment_graph,
)

__all__ = ["segment_graph", "Segment", "SegmentationResult", "ConversionReport", "UnsupportedOp",
           "DroppedSegment", "DENYLIST_ENV", "NON_EFFECTIVE_OPS"]
