"""Conversion reports: what became an engine, what stayed native and why, and how long it took.

A report is plain JSON-ready data so the same thing can be printed by
``Converter.summary()``, saved inside the converted SavedModel and printed again
later by ``tftrt-lite inspect`` without re-running anything.
"""
from __future__ import annotations

import collections
import os
from typing import Callable, Dict, List

from tensorflow.core.protobuf import saved_model_pb2

from tftrt_lite.replace.rewrite import ENGINE_OP


def _shape(shape) -> str:
    dims = shape.as_list() if shape.rank is not None else None
    if dims is None:
        return "<unknown>"
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def signature_report(key, signature, segmentation, engines, built, failures, timings) -> Dict:
    """Report of one converted signature (``engines``: EngineSpecs that were built)."""
    ops = {n.name: n.op for n in signature.graph_def.node}
    sizes = segmentation.report.segment_sizes
    built_by_name = {b["engine"]: b for b in built}
    engine_rows = []
    converted = 0
    for spec in engines:
        info = built_by_name[spec.name]
        converted += sizes[info["segment"]]
        engine_rows.append({
            "name": spec.name,
            "segment": info["segment"],
            "nodes": sizes[info["segment"]],
            "op_types": dict(sorted(collections.Counter(ops[n] for n in spec.nodes).items())),
            "inputs": [{"tensor": t, "dtype": d.name, "shape": _shape(s)}
                       for t, d, s in zip(spec.inputs, spec.input_dtypes, spec.input_shapes)],
            "outputs": [{"tensor": t, "dtype": d.name, "shape": _shape(s)}
                        for t, d, s in zip(spec.outputs, spec.output_dtypes, spec.output_shapes)],
            "precision": spec.precision_mode,
            "plan_bytes": len(spec.plan),
            "build_s": round(info["build_s"], 3),
            "engine": info["stats"],
        })
    seg = segmentation.report.to_dict()
    total = seg["total_ops"]
    return {
        "signature": key,
        "inputs": [{"name": b.name, "dtype": b.dtype.name, "shape": _shape(b.shape)} for b in signature.inputs],
        "outputs": [{"name": b.name, "dtype": b.dtype.name, "shape": _shape(b.shape)} for b in signature.outputs],
        "total_ops": total,
        "converted_ops": converted,
        "percent_converted": round(100.0 * converted / total, 2) if total else 0.0,
        "segmentation": seg,
        "engines": engine_rows,
        "failed_segments": failures,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def model_report(input_dir, precision, signatures: Dict[str, Dict], timings, build_shapes) -> Dict:
    return {
        "input_saved_model_dir": os.path.abspath(input_dir),
        "precision_mode": precision,
        "signatures": signatures,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "build_shapes": build_shapes,
    }


def _row(fields: List[str], widths: List[int]) -> str:
    out = ""
    for text, width in zip(fields, widths):
        text = str(text)
        out += (text if len(text) < width else text[: width - 2] + "…") .ljust(width)
    return out.rstrip()


def print_summary(report: Dict, line_length: int = 160, detailed: bool = True,
                  print_fn: Callable[[str], None] = print) -> None:
    """Print the engines table and per-signature coverage, TF-TRT ``summary()`` style."""
    if line_length < 120:
        raise ValueError(f"line_length must be at least 120, got {line_length}")
    columns = [("Engine", .22), ("# Nodes", .06), ("# In", .04), ("# Out", .05), ("Input DTypes", .12),
               ("Output DTypes", .12), ("Input Shapes", .17), ("Output Shapes", .14), ("Precision", .08)]
    widths = [int(line_length * w) for _, w in columns]
    print_fn(f"tftrt_lite conversion of {report['input_saved_model_dir']} ({report['precision_mode']})")
    print_fn(_row([c for c, _ in columns], widths))
    print_fn("=" * line_length)
    n_engines = 0
    for sig in report["signatures"].values():
        for e in sig["engines"]:
            n_engines += 1
            print_fn(_row([e["name"], e["nodes"], len(e["inputs"]), len(e["outputs"]),
                           ",".join(sorted({i["dtype"] for i in e["inputs"]})),
                           ",".join(sorted({o["dtype"] for o in e["outputs"]})),
                           " ".join(i["shape"] for i in e["inputs"]),
                           " ".join(o["shape"] for o in e["outputs"]), e["precision"]], widths))
            if detailed:
                ops = ", ".join(f"{k} x{v}" for k, v in e["op_types"].items())
                print_fn(f"    absorbed: {ops}")
                stats = e.get("engine") or {}
                if stats:
                    mem = stats["memory_at_binding"]
                    print_fn(f"    engine: {stats['kernel_count']} kernels, {stats['launch_count']} launches, "
                             f"{stats['library_calls']} library calls, {stats['weight_bytes']} weight bytes; "
                             f"arena {mem['arena_bytes']} B vs {mem['naive_bytes']} B unplanned "
                             f"at {mem['binding']}")
                    if "quantized_nodes" in stats:
                        print_fn(f"    int8: {stats['quantized_nodes']} convolution/GEMM node(s) quantized "
                                 f"(int8 operands on float16 tensor cores), the rest float16")
                    if "qdq_nodes" in stats:
                        print_fn(f"    quantization: the model's {stats['qdq_nodes']} quantize-dequantize node(s) "
                                 f"(fake-quant), computed in float32")
    print_fn("-" * line_length)
    for key, sig in report["signatures"].items():
        print_fn(f"[{key}] {sig['converted_ops']}/{sig['total_ops']} ops converted "
                 f"({sig['percent_converted']:.1f}%) into {len(sig['engines'])} engine(s)")
        for op_type, u in sig["segmentation"]["unsupported"].items():
            why = "; ".join(f"{r} (x{n})" for r, n in u["reasons"].items())
            print_fn(f"    native {op_type} x{u['count']}: {why}")
        for d in sig["segmentation"]["dropped_segments"]:
            print_fn(f"    native segment of {d['size']} ops (< minimum_segment_size)")
        for f in sig["failed_segments"]:
            print_fn(f"    segment {f['segment']} ({f['nodes']} nodes) stays native: {f['reason']}")
    timings = report.get("timings") or {}
    if timings:
        print_fn("timings: " + ", ".join(f"{k}={v}s" for k, v in timings.items()))
    print_fn(f"{n_engines} engine(s) in {len(report['signatures'])} signature(s)")


def engines_in_saved_model(saved_model_dir: str) -> List[str]:
    """Names of TftrtLiteEngine nodes in a SavedModel's graphs and functions (no TF load)."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    names = []
    for mg in proto.meta_graphs:
        names += [n.name for n in mg.graph_def.node if n.op == ENGINE_OP]
        for fdef in mg.graph_def.library.function:
            names += [n.name for n in fdef.node_def if n.op == ENGINE_OP]
    return sorted(set(names))
