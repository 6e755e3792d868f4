"""The engine builder: ONNX model → optimised IR → generated kernels → compiled plan.

``build_engine`` is the one entry point the converter calls per segment::

    import_onnx ─► run_pipeline (passes + memory plan) ─► steps: library calls for
    convolutions/GEMMs, a generated kernel per other node ─► NVRTC for every target arch
    ─► Plan (engine/plan.py) ─► Engine

Why the Engine keeps the IR graph next to the plan: the NumPy reference executor runs
the optimised graph (``Engine.run_reference``), which is how tests check an engine's
math on machines without a GPU, and the graph travels inside the plan so a deserialised
engine can be checked the same way.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tftrt_lite.codegen import LIBRARY_OPS, VIEW_OPS, KernelSpec, emit_activation, emit_copy, emit_node
from tftrt_lite.codegen.conv import emit_depthwise_conv, is_pointwise
from tftrt_lite.codegen.nvrtc import compile_kernel
from tftrt_lite.codegen.stem_conv import emit_stem_conv
from tftrt_lite.codegen.tap_conv import emit_tap_conv
from tftrt_lite.engine import ir, symbolic
from tftrt_lite.engine.fused_ops import conv_input_activation, conv_operands
from tftrt_lite.engine.plan import (
    NONE_INDEX, Activation, ArgKind, BufferDesc, ConvStep, FilterLayout, GemmStep, KernelArg, KernelEntry,
    KernelImage, LaunchStep, LaunchVariant, Layout, MathMode, Plan, PlanExpr, Step, Storage, SymbolBinding,
    WeightPacker, deserialize_plan, graph_from_json, graph_to_json, serialize_plan)
from tftrt_lite.errors import ConversionError, NotSupportedYetError, UnsupportedOpError

BUILDER_VERSION = 1
DEFAULT_TARGET_ARCHS = ("sm_80", "sm_90")
SUPPORTED_PRECISIONS = ("FP32", "FP16", "BF16", "INT8")

#: fused-op activation → the plan's epilogue code, for activations cuDNN/cuBLASLt apply
#: themselves; any other activation runs as an in-place kernel after the library call.
_CONV_ACTIVATIONS = {"none": Activation.NONE, "relu": Activation.RELU, "clip": Activation.CLIP,
                     "sigmoid": Activation.SIGMOID, "tanh": Activation.TANH}
_GEMM_ACTIVATIONS = {"none": Activation.NONE, "relu": Activation.RELU, "gelu_tanh": Activation.GELU_TANH}


class Engine:
    """A built engine: the optimised graph, its compiled kernels and the serialisable plan."""

    def __init__(self, name: str, graph: ir.Graph, plan: Plan) -> None:
        self.name = name
        self.graph = graph
        self.plan = plan

    @property
    def input_names(self) -> List[str]:
        return list(self.graph.inputs)

    @property
    def output_names(self) -> List[str]:
        return list(self.graph.outputs)

    @property
    def kernels(self) -> List[KernelEntry]:
        return self.plan.kernels

    @property
    def stats(self) -> Dict[str, Any]:
        return self.plan.meta["stats"]

    @property
    def precision(self) -> str:
        return self.plan.meta["precision"]

    @property
    def activation_ranges(self) -> Dict[str, float]:
        """INT8 engines: the amax of each tensor the engine quantizes (empty otherwise)."""
        return dict(self.plan.meta.get("int8", {}).get("activation_ranges", {}))

    @property
    def target_archs(self) -> Tuple[str, ...]:
        return tuple(self.plan.meta["target_archs"])

    def run_reference(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run the optimised graph with the NumPy reference executor."""
        from tftrt_lite.engine.reference import run_graph

        return run_graph(self.graph, feeds)

    def serialize(self) -> bytes:
        return serialize_plan(self.plan)

    @classmethod
    def deserialize(cls, data: bytes) -> "Engine":
        plan = deserialize_plan(data)
        graph = graph_from_json(plan.graph_json, plan.weights)
        return cls(plan.meta["name"], graph, plan)

    def __repr__(self) -> str:
        s = self.stats
        return (f"Engine({self.name!r}, {len(self.graph.nodes)} nodes, {s['kernel_count']} kernels, "
                f"{s['library_calls']} library calls, archs={list(self.target_archs)})")


# --------------------------------------------------------------------------- entry point
def build_engine(onnx_model_or_path: Any, precision: str = "FP32",
                 target_arch: Union[None, str, Sequence[str]] = None, name: Optional[str] = None,
                 precision_overrides: Optional[Dict[str, str]] = None, allow_tf32: bool = True,
                 calibration_batches: Optional[Iterable[Mapping[str, np.ndarray]]] = None,
                 activation_ranges: Optional[Mapping[str, float]] = None,
                 calibration_algorithm: str = "entropy", use_calibration: bool = True) -> Engine:
    """Build an :class:`Engine` from an ONNX ``ModelProto`` or a path to one.

    ``precision``: "FP32", "FP16", "BF16" or "INT8" (see ``passes/precision.py`` and
    ``passes/quantize.py``);
    ``precision_overrides``: ``{node-name regex: "FP32" | "FP16" | "BF16"}`` per node;
    ``allow_tf32``: float32 GEMMs, convolutions and attention may use TF32 tensor cores, as
    TensorFlow does by default.
    INT8 needs the ranges of the tensors it quantizes: ``activation_ranges`` (tensor →
    amax, e.g. from a saved calibration table) or ``calibration_batches`` (engine input
    name → array, per batch), which the float32 graph runs on to measure them with
    ``calibration_algorithm`` ("entropy", "percentile" or "max"). The ranges used are in
    ``Engine.activation_ranges``. ``use_calibration=False`` (INT8 only, TF-TRT's explicit
    precision): the model's own QuantizeLinear/DequantizeLinear nodes are the engine's only
    quantization, so no ranges are taken or measured (``passes/explicit_quantization.py``).
    In every precision those nodes compute as the model says (``Engine.stats["qdq_nodes"]``
    counts the ones on activations).
    ``target_arch``: an ``"sm_XX"`` or a sequence of them (default sm_80 and sm_90); the
    plan carries a cubin per arch and the PTX of the oldest for newer GPUs.
    Raises ``NotSupportedYetError`` for other precisions and ``UnsupportedOpError``
    (naming op and node) for ops the engine cannot run.
    """
    if precision not in SUPPORTED_PRECISIONS:
        raise NotSupportedYetError(f"precision {precision!r} is not supported by the engine builder yet "
                                   f"(supported: {', '.join(SUPPORTED_PRECISIONS)})")
    archs = _target_archs(target_arch)
    from tftrt_lite.engine.onnx_import import import_onnx
    from tftrt_lite.engine.passes import run_pipeline, split_pipeline

    model = onnx_model_or_path
    if isinstance(model, (str, os.PathLike)):
        import onnx

        model = onnx.load(os.fspath(model))
    graph = import_onnx(model)
    name = name or graph.name
    options = dict(precision=precision, precision_overrides=precision_overrides, allow_tf32=allow_tf32)
    ranges = None
    qdq_nodes = sum(n.op == "QuantizeLinear" and graph.const(n.inputs[0]) is None for n in graph.nodes)
    if not use_calibration:
        if precision != "INT8" or calibration_batches is not None or activation_ranges is not None:
            raise ValueError("use_calibration=False is INT8 from the model's own quantize-dequantize nodes: "
                             "it takes no calibration_batches or activation_ranges and no other precision")
        graph, report = run_pipeline(graph, **options)
    elif precision == "INT8":
        before, after = split_pipeline()
        graph, _ = run_pipeline(graph, pipeline=before, **options)
        graph.name = name
        ranges = _int8_ranges(graph, calibration_batches, activation_ranges, calibration_algorithm)
        graph, report = run_pipeline(graph, pipeline=after, activation_ranges=ranges, **options)
    else:
        graph, report = run_pipeline(graph, **options)
    math = MathMode.TF32 if allow_tf32 else MathMode.EXACT
    engine = _PlanBuilder(graph, report.memory_plan, name, precision, archs, math).build()
    if ranges is not None:
        engine.plan.meta["int8"] = {"activation_ranges": ranges, "quantized_nodes": report.quantized_nodes}
        engine.stats["quantized_nodes"] = len(report.quantized_nodes)
    if qdq_nodes:
        engine.stats["qdq_nodes"] = qdq_nodes
    return engine


def _int8_ranges(graph: ir.Graph, batches, ranges, algorithm: str) -> Dict[str, float]:
    """The amax of every tensor an INT8 build of ``graph`` quantizes: given, or calibrated."""
    from tftrt_lite.calibrate import Calibrator, CalibrationTable
    from tftrt_lite.engine.calibration import calibrate_graph, ranges_for

    if ranges is not None:
        table = CalibrationTable(amax=dict(ranges), algorithm="given", num_batches=0, num_samples=0)
    elif batches is not None:
        table = calibrate_graph(graph, batches, Calibrator(algorithm))
    else:
        raise ConversionError(f"engine {graph.name!r}: an INT8 build needs calibration_batches or "
                              f"activation_ranges")
    return ranges_for(graph, table)


def _target_archs(target_arch: Union[None, str, Sequence[str]]) -> Tuple[str, ...]:
    if target_arch is None:
        return DEFAULT_TARGET_ARCHS
    archs = (target_arch,) if isinstance(target_arch, str) else tuple(target_arch)
    if not archs:
        raise ValueError("target_arch is empty; give at least one 'sm_XX'")
    for arch in archs:
        if not re.fullmatch(r"sm_\d{2,3}a?", arch):
            raise ValueError(f"target arch {arch!r} is not of the form 'sm_XX' (e.g. 'sm_90')")
    # oldest first: its PTX is the plan's JIT fallback for newer GPUs
    return tuple(sorted(set(archs), key=lambda a: int(re.sub(r"\D", "", a))))


def bind_symbols(graph: ir.Graph) -> List[SymbolBinding]:
    """Each symbol of the graph bound to the first input axis whose dim is exactly it."""
    bindings: Dict[str, SymbolBinding] = {}
    for i, t in enumerate(graph.inputs):
        for axis, d in enumerate(graph.tensor(t).shape or ()):
            if isinstance(d, str) and symbolic.is_identifier(d) and d not in bindings:
                bindings[d] = SymbolBinding(d, i, axis)
    used = set()
    for t in graph.tensors.values():
        for d in t.shape or ():
            used |= symbolic.symbols(d)
    unbound = sorted(used - set(bindings))
    if unbound:
        raise ConversionError(f"engine {graph.name!r}: symbolic dim(s) {', '.join(unbound)} are not an "
                              f"axis of any engine input, so no run-time shape can bind them")
    return list(bindings.values())


# --------------------------------------------------------------------------- plan builder
@dataclass
class _Gemm:
    m: ir.Dim
    n: ir.Dim
    k: ir.Dim
    batch: ir.Dim
    stride_a: ir.Dim
    stride_b: ir.Dim


class _PlanBuilder:
    def __init__(self, graph: ir.Graph, memory_plan, name: str, precision: str, archs: Tuple[str, ...],
                 math: int) -> None:
        if memory_plan is None:
            raise ConversionError(f"engine {name!r}: the pass pipeline produced no memory plan")
        self.graph = graph
        self.memory = memory_plan
        self.name = name
        self.precision = precision
        self.archs = archs
        self.math = math
        self.symbols = bind_symbols(graph)
        self.sym_index = {s.name: i for i, s in enumerate(self.symbols)}
        # codegen may add tensors (separate output buffers); the engine keeps `graph` untouched
        self.cg_graph = graph.copy()
        self.buffers: List[BufferDesc] = []
        self.buffer_index: Dict[str, int] = {}
        self.steps: List[Step] = []
        self.deferred: List[Step] = []  # copies into output slots, run after every node
        self.specs: Dict[str, KernelSpec] = {}
        self.kernel_order: List[str] = []
        self.packer = WeightPacker()
        self.graph_json, self.weight_offsets = graph_to_json(graph, self.packer)
        self.output_buffers: Dict[str, str] = {}

    # -- expressions and buffers -----------------------------------------------------------
    def expr(self, dim: ir.Dim, divisor: int = 1, ceil: bool = False) -> PlanExpr:
        terms = []
        for coeff, powers in symbolic.terms(dim):
            syms = tuple(self.sym_index[s] for s, p in powers for _ in range(p))
            terms.append((int(coeff), syms))
        return PlanExpr(tuple(terms), divisor, ceil)

    def _shape_exprs(self, tensor: str) -> Tuple[PlanExpr, ...]:
        shape = self.cg_graph.tensor(tensor).shape
        if shape is None:
            raise ConversionError(f"engine {self.name!r}: tensor {tensor!r} has no known shape")
        return tuple(self.expr(d) for d in shape)

    def _add_buffer(self, tensor: str, storage: int, a: Any = 0, b: int = 0) -> int:
        t = self.cg_graph.tensor(tensor)
        self.buffer_index[tensor] = len(self.buffers)
        self.buffers.append(BufferDesc(tensor, t.dtype, self._shape_exprs(tensor), storage, a, b))
        return self.buffer_index[tensor]

    def buffer(self, tensor: str) -> int:
        """The buffer index of ``tensor``, created on first use (alias targets first)."""
        if tensor in self.buffer_index:
            return self.buffer_index[tensor]
        g = self.graph
        if tensor in self.memory.aliases:
            root = self.buffer(self.memory.aliases[tensor])
            return self._add_buffer(tensor, Storage.ALIAS, root)
        if tensor in g.inputs:
            return self._add_buffer(tensor, Storage.INPUT, g.inputs.index(tensor))
        if tensor in self.weight_offsets:
            offset, nbytes = self.weight_offsets[tensor]
            return self._add_buffer(tensor, Storage.WEIGHT, offset, nbytes)
        if tensor in self.memory.placements:
            return self._add_buffer(tensor, Storage.ARENA, self.expr(self.memory.offset(tensor)))
        raise ConversionError(f"engine {self.name!r}: tensor {tensor!r} has no memory "
                              f"(not an input, output, weight or arena tensor)")

    def _plan_outputs(self) -> None:
        """Output j is written in place by its producer unless that tensor already has other
        storage (an input, a weight, a second output slot): then it gets a copy step."""
        g = self.graph
        producers = g.producers()
        for j, t in enumerate(g.outputs):
            owned = t in g.inputs or t in self.weight_offsets or t in self.output_buffers.values()
            if not owned:
                self._add_buffer(t, Storage.OUTPUT, j)
                self.output_buffers[t] = t
                continue
            out = f"{t}#output{j}"
            self.cg_graph.tensors[out] = ir.Tensor(out, g.tensor(t).dtype, g.tensor(t).shape)
            self._add_buffer(out, Storage.OUTPUT, j)
            self.output_buffers.setdefault(t, out)
            node = producers.get(t) or ir.Node("Identity", f"{out}/copy", [t], [out])
            self._launch(emit_copy(self.cg_graph, node, t, out), deferred=True)

    # -- steps --------------------------------------------------------------------------
    def _kernel_index(self, spec: KernelSpec) -> int:
        if spec.name not in self.specs:
            self.specs[spec.name] = spec
            self.kernel_order.append(spec.name)
        return self.kernel_order.index(spec.name)

    def _grid(self, spec: KernelSpec) -> Tuple[PlanExpr, PlanExpr, PlanExpr]:
        return tuple(self.expr(g.numerator, g.divisor, ceil=True) for g in spec.grid)

    def _launch(self, spec: KernelSpec, deferred: bool = False) -> None:
        kernel = self._kernel_index(spec)
        variants = [LaunchVariant(self._kernel_index(v), self._grid(v), v.block, v.shared_mem) for v in spec.variants]
        args = []
        for a in spec.args:
            if a.kind == "buffer":
                args.append(KernelArg(ArgKind.BUFFER, self.buffer(a.value)))
            elif a.kind == "expr":
                args.append(KernelArg(ArgKind.EXPR, self.expr(a.value)))
            elif a.kind == "i64":
                args.append(KernelArg(ArgKind.I64, int(a.value)))
            else:
                args.append(KernelArg(ArgKind.F32, float(a.value)))
        step = LaunchStep(spec.node, kernel, self._grid(spec), spec.block, spec.shared_mem, args, variants)
        (self.deferred if deferred else self.steps).append(step)

    def _node_steps(self, node: ir.Node) -> None:
        if node.op in VIEW_OPS:
            return
        if node.op in ("Conv", "tftrt.FusedConv"):
            depthwise = emit_depthwise_conv(self.cg_graph, node)
            if depthwise is not None:  # memory-bound: a generated kernel beats cuDNN's grouped conv
                self._launch(depthwise)
                return
            stem = emit_stem_conv(self.cg_graph, node)
            if stem is not None:  # few input channels: cuDNN has no tensor-core kernel for them
                self._launch(stem)
                return
            taps = emit_tap_conv(self.cg_graph, node)
            if taps is not None:  # a space-to-depth stem: cuDNN runs it at under 20 % of roofline
                self._launch(taps)
                return
            in_act, _ = conv_input_activation(node.attrs)
            if in_act != "none":
                raise UnsupportedOpError(
                    f"node {node.name!r} ({node.op}): input_activation {in_act!r} runs only in the depthwise "
                    f"kernel; cuDNN and cuBLASLt have no prologue to apply it to the input")
            if is_pointwise(self.cg_graph, node):
                self._pointwise_conv(node)
            else:
                self._conv(node)
        elif node.op in ("Gemm", "MatMul", "tftrt.FusedGemm"):
            self._gemm(node)
        else:
            assert node.op not in LIBRARY_OPS
            for spec in emit_node(self.cg_graph, node):
                self._launch(spec)

    def _activation_epilogue(self, node: ir.Node, table: Dict[str, int]) -> Tuple[int, float, float, Optional[str]]:
        """(plan activation, p0, p1, activation left for an in-place kernel or None)."""
        act = node.attrs.get("activation", "none")
        params = list(node.attrs.get("activation_params", []))
        if act in table:
            p = params + [0.0, 0.0]
            return table[act], float(p[0]), float(p[1]), None
        return Activation.NONE, 0.0, 0.0, act

    def _conv(self, node: ir.Node) -> None:
        g = self.cg_graph
        x, w, bias, residual, y = conv_operands(node)
        xs, ws, ys = (g.tensor(t).shape for t in (x, w, y))
        if len(xs) != 4 or len(ws) != 4:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op}): only 2-D convolutions run as "
                                     f"cuDNN calls (input rank {len(xs)})")
        if node.op == "tftrt.FusedConv":
            layout, flayout = Layout.NHWC, FilterLayout.KRSC
            n, h, wi, c = xs
            k, r, s, _ = ws
            oh, ow = ys[1], ys[2]
            act, p0, p1, left = self._activation_epilogue(node, _CONV_ACTIVATIONS)
        else:
            auto_pad = node.attrs.get("auto_pad", "NOTSET")
            if auto_pad not in ("NOTSET", b"NOTSET", ""):
                raise UnsupportedOpError(f"node {node.name!r} (Conv): auto_pad {auto_pad!r} is not resolved")
            layout, flayout = Layout.NCHW, FilterLayout.KCRS
            n, c, h, wi = xs
            k, _, r, s = ws
            oh, ow = ys[2], ys[3]
            act, p0, p1, left = Activation.NONE, 0.0, 0.0, None
        pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
        step = ConvStep(
            node.name, layout, flayout, self.buffer(x), self.buffer(w), self.buffer(y),
            *(self.expr(d) for d in (n, c, h, wi, k, r, s, oh, ow)),
            pads=tuple(pads), strides=tuple(int(v) for v in node.attrs.get("strides", [1, 1])),
            dilations=tuple(int(v) for v in node.attrs.get("dilations", [1, 1])),
            groups=int(node.attrs.get("group", 1)),
            bias=self.buffer(bias) if bias else NONE_INDEX,
            residual=self.buffer(residual) if residual else NONE_INDEX,
            dtype=g.tensor(y).dtype, compute="float32", math=self.math, activation=act, act_p0=p0, act_p1=p1)
        self.steps.append(step)
        if left:
            self._launch(emit_activation(g, node, y, left, node.attrs["activation_params"]))

    def _pointwise_conv(self, node: ir.Node) -> None:
        """A 1×1, stride-1, unpadded NHWC convolution as the GEMM it is:
        ``Y[N·H·W, K] = act(X[N·H·W, C] · W[K, C]ᵀ + b + Z)`` (the OHWI filter is [K, C]
        row-major, so B is W with ``trans_b``; the residual Z is cuBLASLt's C with beta 1).

        Why: cuDNN's legacy fused conv runs these at a fraction of HBM bandwidth (MobileNetV2's
        expand/project convs at ~350 GB/s on the H200), while a cuBLASLt GEMM with a
        bias/ReLU epilogue streams them; they are memory-bound, so the GEMM's tactic timing
        has little to choose wrongly."""
        g = self.cg_graph
        x, w, bias, residual, y = conv_operands(node)
        n, h, wi, c = g.tensor(x).shape
        k = g.tensor(w).shape[0]
        m = symbolic.product([n, h, wi])
        act, p0, p1, left = self._activation_epilogue(node, _GEMM_ACTIVATIONS)
        step = GemmStep(
            node.name, self.buffer(x), self.buffer(w), self.buffer(y),
            *(self.expr(d) for d in (m, k, c, c, c, k, 1, 0, 0, symbolic.mul(m, k))),
            trans_a=False, trans_b=True, bias=self.buffer(bias) if bias else NONE_INDEX,
            c=self.buffer(residual) if residual else NONE_INDEX,
            dtype=g.tensor(y).dtype, compute="float32", math=self.math, activation=act, act_p0=p0, act_p1=p1,
            alpha=1.0, beta=1.0 if residual else 0.0)
        self.steps.append(step)
        if left:
            self._launch(emit_activation(g, node, y, left, node.attrs["activation_params"]))

    def _gemm_geometry(self, node: ir.Node, a_shape, b_shape, trans_a: bool, trans_b: bool) -> _Gemm:
        a_shape, b_shape = list(a_shape), list(b_shape)
        if len(a_shape) == 1:
            a_shape = [1] + a_shape
        if len(b_shape) == 1:
            b_shape = b_shape + [1]
        m, ka = (a_shape[-1], a_shape[-2]) if trans_a else (a_shape[-2], a_shape[-1])
        kb, n = (b_shape[-1], b_shape[-2]) if trans_b else (b_shape[-2], b_shape[-1])
        if not symbolic.equal(ka, kb):
            raise UnsupportedOpError(f"node {node.name!r} ({node.op}): inner dims {ka} and {kb} differ")
        a_lead, b_lead = a_shape[:-2], b_shape[:-2]
        a_batch, b_batch = symbolic.product(a_lead), symbolic.product(b_lead)
        mk, kn = symbolic.mul(m, ka), symbolic.mul(ka, n)
        if b_batch == 1 and not trans_a:  # Dense on a sequence: A's batch dims fold into M
            return _Gemm(symbolic.mul(a_batch, m), n, ka, 1, 0, 0)
        if b_batch == 1:
            return _Gemm(m, n, ka, a_batch, mk, 0)
        if a_batch == 1:
            return _Gemm(m, n, ka, b_batch, 0, kn)
        if len(a_lead) == len(b_lead) and all(symbolic.equal(p, q) for p, q in zip(a_lead, b_lead)):
            return _Gemm(m, n, ka, a_batch, mk, kn)
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}): batch dims {a_lead} and {b_lead} "
                                 f"need broadcasting a strided batched GEMM cannot express")

    def _gemm(self, node: ir.Node) -> None:
        g = self.cg_graph
        a, b = node.inputs[0], node.inputs[1]
        y = node.outputs[0]
        bias = c = None
        alpha, beta = 1.0, 0.0
        act, p0, p1, left = Activation.NONE, 0.0, 0.0, None
        if node.op == "tftrt.FusedGemm":
            trans_a, trans_b = bool(node.attrs["trans_a"]), bool(node.attrs["trans_b"])
            alpha = float(node.attrs["alpha"])
            bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
            act, p0, p1, left = self._activation_epilogue(node, _GEMM_ACTIVATIONS)
        elif node.op == "Gemm":
            trans_a, trans_b = bool(node.attrs.get("transA", 0)), bool(node.attrs.get("transB", 0))
            alpha = float(node.attrs.get("alpha", 1.0))
            if len(node.inputs) > 2 and node.inputs[2]:
                c_shape = tuple(g.tensor(node.inputs[2]).shape)
                out_shape = tuple(g.tensor(y).shape)
                if c_shape in ((out_shape[1],), (1, out_shape[1])) and float(node.attrs.get("beta", 1.0)) == 1.0:
                    bias = node.inputs[2]
                elif len(c_shape) == 2 and all(symbolic.equal(p, q) for p, q in zip(c_shape, out_shape)):
                    c, beta = node.inputs[2], float(node.attrs.get("beta", 1.0))
                else:
                    raise UnsupportedOpError(f"node {node.name!r} (Gemm): C of shape {c_shape} is neither a "
                                             f"bias nor a full {out_shape} addend")
        else:
            trans_a = trans_b = False
        geo = self._gemm_geometry(node, g.tensor(a).shape, g.tensor(b).shape, trans_a, trans_b)
        lda = geo.m if trans_a else geo.k
        ldb = geo.k if trans_b else geo.n
        step = GemmStep(
            node.name, self.buffer(a), self.buffer(b), self.buffer(y),
            *(self.expr(d) for d in (geo.m, geo.n, geo.k, lda, ldb, geo.n, geo.batch,
                                     geo.stride_a, geo.stride_b, symbolic.mul(geo.m, geo.n))),
            trans_a=trans_a, trans_b=trans_b,
            bias=self.buffer(bias) if bias else NONE_INDEX, c=self.buffer(c) if c else NONE_INDEX,
            dtype=g.tensor(y).dtype, compute="float32", math=self.math, activation=act, act_p0=p0, act_p1=p1,
            alpha=alpha, beta=beta)
        self.steps.append(step)
        if left:
            self._launch(emit_activation(g, node, y, left, node.attrs["activation_params"]))

    # -- compile & assemble ---------------------------------------------------------------
    def _compile(self) -> List[KernelEntry]:
        entries = []
        for kname in self.kernel_order:
            spec = self.specs[kname]
            compiled = [compile_kernel(spec.source, kname, arch) for arch in self.archs]
            entries.append(KernelEntry(kname, spec.source, compiled[0].arch, compiled[0].ptx,
                                       [KernelImage(k.arch, k.cubin) for k in compiled]))
        return entries

    def build(self) -> Engine:
        g = self.graph
        for t in g.inputs:
            self.buffer(t)
        self._plan_outputs()
        for node in g.nodes:
            self._node_steps(node)
            for o in node.outputs:
                if o in g.outputs and node.op in VIEW_OPS and self.output_buffers.get(o) == o:
                    self._launch(emit_copy(self.cg_graph, node, node.inputs[0], o))
        self.steps.extend(self.deferred)
        kernels = self._compile()
        library_calls = sum(1 for s in self.steps if not isinstance(s, LaunchStep))
        unit = {s.name: 1 for s in self.symbols}
        stats = {
            "ops": g.summary(),
            "kernel_count": len(kernels),
            "launch_count": len(self.steps) - library_calls,
            "library_calls": library_calls,
            "arena_bytes_expr": str(self.memory.arena_bytes()),
            "memory_at_binding": {"binding": unit, "arena_bytes": self.memory.peak_bytes(unit),
                                  "naive_bytes": self.memory.naive_bytes(unit)},
            "weight_bytes": self.packer.size,
        }
        meta = {
            "name": self.name, "precision": self.precision, "target_archs": list(self.archs),
            "allow_tf32": self.math == MathMode.TF32,
            "builder_version": BUILDER_VERSION,
            "inputs": [_tensor_meta(g, t) for t in g.inputs],
            "outputs": [_tensor_meta(g, t) for t in g.outputs],
            "stats": stats,
        }
        plan = Plan(self.symbols, self.buffers, self.expr(self.memory.arena_bytes()), kernels, self.steps,
                    self.packer.getvalue(), self.graph_json, meta)
        return Engine(self.name, g, plan)


def _tensor_meta(graph: ir.Graph, tensor: str) -> Dict[str, Any]:
    t = graph.tensor(tensor)
    return {"name": tensor, "dtype": t.dtype, "shape": None if t.shape is None else list(t.shape)}
