"""The engine builder's optimisation passes, run as one explicit ordered list.

Why a flat list: the order IS the design (folding before fusion so patterns see constants,
layout before fusion so fused convs are NHWC, memory planning last over the final node
order), and a flat list makes it readable, testable pass by pass, and easy to report on.
Every pass is a function ``run(graph, ctx) -> None`` editing the graph in place; the
driver verifies the IR after each one so a broken rewrite is caught at the pass that made
it, not three passes later.

The memory plan (last pass) is returned as ``PassReport.memory_plan`` — that is where the
plan builder takes it from.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from tftrt_lite.engine.ir import Graph, IRError
from tftrt_lite.engine.passes import (
    attention_fusion,
    attention_layout,
    bn_folding,
    cleanup,
    constant_folding,
    conv_fusion,
    elementwise_fusion,
    explicit_quantization,
    gemm_fusion,
    layernorm_fusion,
    layout,
    memory_plan,
    precision,
    qkv_merge,
    quantize,
    space_to_depth,
)

PRECISIONS = ("FP32", "FP16", "BF16", "INT8")


@dataclass
class PassContext:
    """What passes may read besides the graph; ``memory_plan`` is written by the last pass."""

    precision: str = "FP32"
    precision_overrides: Optional[Dict[str, str]] = None
    allow_tf32: bool = True
    #: INT8: calibrated ``amax`` of activation tensors (``quantize`` reads them)
    activation_ranges: Optional[Dict[str, float]] = None
    #: INT8: names of the nodes ``quantize`` quantized (written by it)
    quantized_nodes: List[str] = field(default_factory=list)
    memory_plan: Optional["memory_plan.MemoryPlan"] = None


#: (name, run) in execution order. Cleanup and BN folding run again after layout: the layout
#: rewrite exposes per-channel Mul/Add and transpose pairs that were hidden behind
#: Transposes before it. Cleanup runs once more after the gemm fusion, which moves
#: Reshapes behind its epilogue where they meet (and cancel) the next gemm's; the QKV merge
#: then sees each projection as one FusedGemm and its attention with its layout. Space to
#: depth rewrites strided stems once the conv fusion has given them their final padding,
#: bias and activation, and before precision (its transform takes over the input cast). Precision
#: runs after the library-call fusions (so it types fused convs/GEMMs as a whole) and before
#: elementwise fusion (so the casts it adds at the engine's borders join kernels); quantize
#: runs just before precision, so calibration can measure the graph as it stands there
#: (``CALIBRATION_POINT``) and the precision pass types the quantize ops it adds. The model's
#: own QuantizeLinear/DequantizeLinear become float32 elementwise chains right after constant
#: folding (which has dequantized int8 weights), so every later pass sees ordinary ops.
PIPELINE: List[Tuple[str, Callable[[Graph, PassContext], None]]] = [
    ("constant_folding", constant_folding.run),
    ("explicit_quantization", explicit_quantization.run),
    ("cleanup", cleanup.run),
    ("bn_folding", bn_folding.run),
    ("layout", layout.run),
    ("cleanup_after_layout", cleanup.run),
    ("bn_folding_after_layout", bn_folding.run),
    ("attention_fusion", attention_fusion.run),
    ("attention_layout", attention_layout.run),
    ("layernorm_fusion", layernorm_fusion.run),
    ("conv_fusion", conv_fusion.run),
    ("space_to_depth", space_to_depth.run),
    ("gemm_fusion", gemm_fusion.run),
    ("cleanup_after_fusion", cleanup.run),
    ("qkv_merge", qkv_merge.run),
    ("quantize", quantize.run),
    ("precision", precision.run),
    ("elementwise_fusion", elementwise_fusion.run),
    ("memory_plan", memory_plan.run),
]


#: INT8 calibration runs the graph as it is after the passes before this one.
CALIBRATION_POINT = "quantize"


def split_pipeline(at: str = CALIBRATION_POINT) -> Tuple[List, List]:
    """:data:`PIPELINE` as (the passes before ``at``, ``at`` and the passes after it)."""
    names = [name for name, _ in PIPELINE]
    if at not in names:
        raise ValueError(f"no pass named {at!r}; passes: {names}")
    k = names.index(at)
    return PIPELINE[:k], PIPELINE[k:]


@dataclass
class PassStat:
    """One pass's effect: op histogram before/after and wall time."""

    name: str
    ops_before: Dict[str, int]
    ops_after: Dict[str, int]
    seconds: float

    @property
    def delta(self) -> Dict[str, int]:
        """Per-op change in count (only ops whose count changed)."""
        keys = set(self.ops_before) | set(self.ops_after)
        d = {k: self.ops_after.get(k, 0) - self.ops_before.get(k, 0) for k in sorted(keys)}
        return {k: v for k, v in d.items() if v}


@dataclass
class PassReport:
    precision: str
    stats: List[PassStat] = field(default_factory=list)
    memory_plan: Optional["memory_plan.MemoryPlan"] = None
    quantized_nodes: List[str] = field(default_factory=list)

    def format(self) -> str:
        """Human-readable table: one line per pass with node counts, time and op deltas."""
        lines = []
        for s in self.stats:
            before, after = sum(s.ops_before.values()), sum(s.ops_after.values())
            delta = ", ".join(f"{k}{v:+d}" for k, v in s.delta.items())
            lines.append(f"{s.name:26s} {before:5d} -> {after:5d} nodes {s.seconds * 1e3:8.1f} ms  {delta}")
        return "\n".join(lines)


def run_pipeline(graph: Graph, *, precision: str = "FP32",
                 precision_overrides: Optional[Dict[str, str]] = None, allow_tf32: bool = True,
                 pipeline: Optional[List[Tuple[str, Callable]]] = None,
                 activation_ranges: Optional[Dict[str, float]] = None) -> Tuple[Graph, PassReport]:
    """Run ``pipeline`` (default :data:`PIPELINE`) on a copy of ``graph``.

    Returns the optimised graph and a :class:`PassReport`. Raises ``IRError`` naming the
    pass after which the graph broke an invariant.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    graph = graph.copy()
    graph.verify()
    ctx = PassContext(precision=precision, precision_overrides=precision_overrides, allow_tf32=allow_tf32,
                      activation_ranges=activation_ranges)
    report = PassReport(precision=precision)
    for name, fn in (PIPELINE if pipeline is None else pipeline):
        before = graph.summary()
        t0 = time.perf_counter()
        fn(graph, ctx)
        seconds = time.perf_counter() - t0
        try:
            graph.verify()
        except IRError as e:
            raise IRError(f"after pass {name!r}: {e}") from e
        report.stats.append(PassStat(name, before, graph.summary(), seconds))
    report.memory_plan = ctx.memory_plan
    report.quantized_nodes = list(ctx.quantized_nodes)
    return graph, report
