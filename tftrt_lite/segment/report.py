"""What segmentation converted, what it left native, and why.

Counts cover *effective* ops only — graph plumbing (Const, Identity, NoOp, Snapshot,
StopGradient, Placeholder) would otherwise dominate the totals of a frozen graph and
make "percent converted" meaningless. Unsupported ops are grouped by op type with a
count per distinct reason, the shape of tf2onnx's "unsupported ops" summary, so one
line tells a user what to change or what to ask for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List


@dataclass
class UnsupportedOp:
    """All native nodes of one op type: how many, and how many for each reason."""

    op_type: str
    count: int = 0
    reasons: Dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


@dataclass
class DroppedSegment:
    """A cluster of supported nodes left native for having too few effective ops."""

    nodes: List[str]
    size: int            # effective ops, the number compared to minimum_segment_size


@dataclass
class ConversionReport:
    total_ops: int
    converted_ops: int
    unsupported: Dict[str, UnsupportedOp]
    dropped_segments: List[DroppedSegment]
    segment_sizes: Dict[str, int]          # segment name -> effective ops
    minimum_segment_size: int

    @property
    def percent(self) -> float:
        return 100.0 * self.converted_ops / self.total_ops if self.total_ops else 0.0

    def to_dict(self) -> dict:
        """Plain JSON-ready form, as saved with a converted model."""
        return {
            "total_ops": self.total_ops,
            "converted_ops": self.converted_ops,
            "percent_converted": round(self.percent, 2),
            "segments": dict(self.segment_sizes),
            "unsupported": {t: {"count": u.count, "reasons": dict(u.reasons)}
                            for t, u in sorted(self.unsupported.items())},
            "dropped_segments": [{"size": d.size, "nodes": list(d.nodes)} for d in self.dropped_segments],
            "minimum_segment_size": self.minimum_segment_size,
        }

    def summary(self) -> str:
        lines = [f"{self.converted_ops}/{self.total_ops} ops converted ({self.percent:.1f}%) "
                 f"in {len(self.segment_sizes)} segment(s)"]
        for name, size in self.segment_sizes.items():
            lines.append(f"  {name}: {size} ops")
        if self.unsupported:
            lines.append("native ops:")
            for op_type, u in sorted(self.unsupported.items(), key=lambda kv: (-kv[1].count, kv[0])):
                why = "; ".join(f"{r} (x{n})" for r, n in sorted(u.reasons.items()))
                lines.append(f"  {op_type} x{u.count}: {why}")
        if self.dropped_segments:
            sizes = ", ".join(str(d.size) for d in self.dropped_segments)
            lines.append(f"segments below minimum_segment_size={self.minimum_segment_size} "
                         f"left native: sizes {sizes}")
        return "\n".join(lines)
