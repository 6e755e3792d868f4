"""``segment_graph``: cluster supported nodes into cycle-free segments, TF-TRT's way.

The algorithm is TF-TRT's ``segment.cc``:

1. Decide each node's candidacy: the op-support registry's verdict, minus denylisted
   op types (argument and ``TFTRT_LITE_OP_DENYLIST``), protected nodes (signature
   inputs/outputs keep their names) and nodes explicitly pinned to a CPU.
2. Walk nodes in topological order; for each candidate, try to merge its cluster with
   the cluster of every candidate consumer. A merge is refused when another path
   joins the two clusters (through a native node, or through a control edge — control
   dependencies are edges here too): the merged segment would then have to run both
   before and after that path. ``cycles.GraphCycles`` makes that check near-linear.
   Explicitly different devices never merge.
3. Keep clusters with at least ``minimum_segment_size`` effective ops (Const, Identity,
   NoOp, Snapshot and StopGradient are free and do not count).
4. Absorb the Const nodes feeding each segment, so weights travel with the engine;
   a Const also read elsewhere is listed in ``Segment.duplicated_consts`` and stays.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from tftrt_lite.registry import REGISTRY
from tftrt_lite.segment.cycles import GraphCycles
from tftrt_lite.segment.graph_view import GraphView, parse_input, tensor_name
from tftrt_lite.segment.report import ConversionReport, DroppedSegment, UnsupportedOp
from tftrt_lite.segment.union_find import UnionFind

#: Environment variable: comma-separated TF op types that must stay native.
DENYLIST_ENV = "TFTRT_LITE_OP_DENYLIST"

#: Ops that cost nothing in an engine; they do not count towards ``minimum_segment_size``.
NON_EFFECTIVE_OPS = frozenset({"Identity", "NoOp", "Const", "Snapshot", "StopGradient"})

#: Graph plumbing that the report does not count as ops at all.
_NOT_COUNTED = NON_EFFECTIVE_OPS | {"Placeholder"}


@dataclass
class Segment:
    """One cluster of nodes to be replaced by an engine.

    ``inputs``/``outputs`` are tensor names (``"node:idx"``) in a deterministic order:
    inputs by first use in ``nodes`` (topological order), int32 inputs last (the engine
    op takes those from host memory, as TensorFlow keeps int32 on the host, in a second
    input list after the first), outputs by producing node then output index. Shapes use ``None`` for dimensions unknown statically.
    """

    name: str
    nodes: List[str]
    inputs: List[str]
    outputs: List[str]
    input_dtypes: List[tf.DType]
    input_shapes: List[tf.TensorShape]
    output_dtypes: List[tf.DType]
    output_shapes: List[tf.TensorShape]
    control_inputs: List[str] = field(default_factory=list)   # outside nodes the segment waits for
    duplicated_consts: List[str] = field(default_factory=list)  # absorbed Consts also read outside


@dataclass
class SegmentationResult:
    segments: List[Segment]
    report: ConversionReport


def denylist_from_env() -> List[str]:
    return [op.strip() for op in os.environ.get(DENYLIST_ENV, "").split(",") if op.strip()]


def _device_type(device: str) -> Optional[str]:
    """``"GPU"``/``"CPU"``... of an explicit device string, None when unplaced or typeless."""
    if not device:
        return None
    return tf.DeviceSpec.from_string(device).device_type


def _canonical_device(device: str) -> str:
    """Device string with only the fields that make two placements differ."""
    if not device:
        return ""
    spec = tf.DeviceSpec.from_string(device)
    return f"{spec.job or ''}/{spec.replica}/{spec.task}/{(spec.device_type or '').upper()}:{spec.device_index}"


def segment_graph(graph_def: graph_pb2.GraphDef, minimum_segment_size: int = 3,
                  denylist: Iterable[str] = (), protected: Iterable[str] = ()) -> SegmentationResult:
    """Segment ``graph_def``; see the module docstring for the algorithm.

    Args:
      graph_def: a frozen GraphDef (variables as Const).
      minimum_segment_size: smallest number of effective ops worth an engine.
      denylist: TF op types to keep native (merged with ``TFTRT_LITE_OP_DENYLIST``).
      protected: node names (or ``"node:idx"`` tensor names) that must stay in the graph,
        typically the signature's inputs and outputs; their tensors are read outside
        every segment, so segments export what they need.
    """
    if minimum_segment_size < 1:
        raise ValueError(f"minimum_segment_size must be >= 1, got {minimum_segment_size}")
    view = GraphView(graph_def)
    order = view.topological_order()
    index = {name: i for i, name in enumerate(order)}
    denied = set(denylist) | set(denylist_from_env())
    protected_nodes = {parse_input(p)[0] for p in protected}
    unknown = sorted(protected_nodes - set(view.nodes))
    if unknown:
        raise ValueError(f"protected nodes not in the graph: {unknown}")

    reasons: Dict[str, str] = {}
    for name in order:
        reason = _exclusion_reason(view.node(name), view, denied, protected_nodes)
        if reason is not None:
            reasons[name] = reason
    candidate = [name not in reasons and view.node(name).op != "Const" for name in order]

    clusters = _cluster(view, order, index, candidate)

    groups: Dict[int, List[str]] = {}
    for i, name in enumerate(order):
        if candidate[i]:
            groups.setdefault(clusters.find(i), []).append(name)
    kept: List[List[str]] = []
    dropped: List[DroppedSegment] = []
    for members in sorted(groups.values(), key=lambda m: index[m[0]]):
        size = _effective_size(view, members)
        if size >= minimum_segment_size:
            kept.append(members)
        elif size > 0:
            dropped.append(DroppedSegment(nodes=members, size=size))

    segments = [_make_segment(f"segment_{k:03d}", members, view, index)
                for k, members in enumerate(kept)]
    report = _report(view, order, reasons, segments, dropped, minimum_segment_size)
    return SegmentationResult(segments=segments, report=report)


def _exclusion_reason(node, view: GraphView, denied, protected_nodes) -> Optional[str]:
    if node.name in protected_nodes:
        return "protected (signature input or output)"
    if node.op in denied:
        return "denylisted"
    if _device_type(node.device) == "CPU":
        return f"pinned to {node.device}"
    support = REGISTRY.check(node, view)
    return None if support.ok else support.reason


def _cluster(view: GraphView, order: List[str], index: Dict[str, int], candidate: List[bool]) -> UnionFind:
    """Greedy cycle-free merging along every edge between candidates, in topological order."""
    n = len(order)
    dag = GraphCycles(n)
    for name in order:
        for consumer, _ in view.consumers[name]:
            dag.insert_edge(index[name], index[consumer])
    clusters = UnionFind(n)
    device = {i: _canonical_device(view.node(order[i]).device) for i in range(n) if candidate[i]}
    for u, name in enumerate(order):
        if not candidate[u]:
            continue
        consumers = sorted({index[c] for c, _ in view.consumers[name]})
        for v in consumers:
            if not candidate[v]:
                continue
            cu, cv = clusters.find(u), clusters.find(v)
            if cu == cv:
                continue
            du, dv = device[cu], device[cv]
            if du and dv and du != dv:
                continue
            survivor = dag.contract_edge(cu, cv)
            if survivor < 0:
                continue
            clusters.union(cu, cv, survivor)
            device[survivor] = du or dv
    return clusters


def _effective_size(view: GraphView, members: Sequence[str]) -> int:
    return sum(view.node(m).op not in NON_EFFECTIVE_OPS for m in members)


def _absorbable_const(view: GraphView, name: str) -> bool:
    node = view.node(name)
    return node.op == "Const" and not any(i.startswith("^") for i in node.input)


def _make_segment(name: str, members: List[str], view: GraphView, index: Dict[str, int]) -> Segment:
    inside = set(members)
    consts = []
    for m in members:
        for tensor in view.data_inputs(view.node(m)):
            src = parse_input(tensor)[0]
            if src not in inside and _absorbable_const(view, src):
                inside.add(src)
                consts.append(src)
    nodes = sorted(inside, key=index.__getitem__)

    inputs: List[str] = []
    controls: List[str] = []
    for m in nodes:
        node = view.node(m)
        for tensor in view.data_inputs(node):
            if parse_input(tensor)[0] not in inside and tensor not in inputs:
                inputs.append(tensor)
        for src in view.control_inputs(node):
            if src not in inside and src not in controls:
                controls.append(src)

    inputs.sort(key=lambda t: view.dtype(t) == tf.int32)  # stable: int32 last, each group in order
    read_outside = set()
    for m in nodes:
        for consumer, is_control in view.consumers[m]:
            if consumer not in inside and not is_control:
                for tensor in view.data_inputs(view.node(consumer)):
                    if parse_input(tensor)[0] == m:
                        read_outside.add(tensor)
    outputs = [tensor_name(m, i) for m in nodes if m not in consts
               for i in range(view.num_outputs(m)) if tensor_name(m, i) in read_outside]
    duplicated = sorted((c for c in consts if any(consumer not in inside for consumer, _ in view.consumers[c])),
                        key=index.__getitem__)
    return Segment(
        name=name, nodes=nodes, inputs=inputs, outputs=outputs,
        input_dtypes=[view.dtype(t) for t in inputs], input_shapes=[view.shape(t) for t in inputs],
        output_dtypes=[view.dtype(t) for t in outputs], output_shapes=[view.shape(t) for t in outputs],
        control_inputs=controls, duplicated_consts=duplicated)


def _report(view: GraphView, order: List[str], reasons: Dict[str, str], segments: List[Segment],
            dropped: List[DroppedSegment], minimum_segment_size: int) -> ConversionReport:
    converted = {m for s in segments for m in s.nodes}
    counted = [n for n in order if view.node(n).op not in _NOT_COUNTED]
    unsupported: Dict[str, UnsupportedOp] = {}
    for n in counted:
        if n in reasons:
            op = view.node(n).op
            unsupported.setdefault(op, UnsupportedOp(op)).add(reasons[n])
    return ConversionReport(
        total_ops=len(counted),
        converted_ops=sum(n in converted for n in counted),
        unsupported=unsupported,
        dropped_segments=dropped,
        segment_sizes={s.name: _effective_size(view, s.nodes) for s in segments},
        minimum_segment_size=minimum_segment_size,
    )
