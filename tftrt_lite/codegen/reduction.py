"""Reduction kernels: Reduce* ops, global pooling, Softmax, and layer normalisation.

Why two shapes of kernel: after dropping size-1 dims, a reduction over a contiguous
group of axes views the input as ``[outer, R, inner]``. When ``inner == 1`` (last-axis
reductions: Softmax, LayerNorm, ReduceMean over features) one warp owns one row and
reduces with shuffles, reading the row coalesced. When ``inner > 1`` (GlobalAveragePool
over NHWC's H*W) one thread owns one ``(outer, inner)`` output and walks R; neighbouring
threads read neighbouring ``inner`` elements, so loads stay coalesced without shared memory.

Statistics are accumulated in float32 for float32 (and narrower) tensors, in float64 for
float64, as ``fused_ops.layer_norm`` specifies.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from tftrt_lite.codegen.kernel import (
    FLOAT_DTYPES, Dim, KernelSpec, KernelWriter, c_literal, c_type, const_ints, dim_prod, emitter, grid_1d,
    normalize_axis, shape_of)
from tftrt_lite.engine import ir
from tftrt_lite.engine.reference import np_dtype
from tftrt_lite.errors import UnsupportedOpError

BLOCK = 256
WARPS = BLOCK // 32
#: Layer norm keeps a row in registers when it has at most this many values per lane
#: (32 x 32 = 1024 columns), and uses small blocks so a few hundred rows (BERT at batch 1:
#: 128) still spread over every SM.
MAX_ROW_REGISTERS = 32
LN_WARPS = 2

# op → (init, combine(acc, v), map(x) applied before combining, finalize(acc, R))
_REDUCERS = {
    "ReduceSum": ("0", "{a} + {v}", "{x}", "{a}"),
    "ReduceMean": ("0", "{a} + {v}", "{x}", "{a} / ({t})({r})"),
    "ReduceMax": ("-tl_inf()", "tl_max<{t}>({a}, {v})", "{x}", "{a}"),
    "ReduceMin": ("tl_inf()", "tl_min<{t}>({a}, {v})", "{x}", "{a}"),
    "ReduceProd": ("1", "{a} * {v}", "{x}", "{a}"),
    "ReduceSumSquare": ("0", "{a} + {v}", "{x} * {x}", "{a}"),
    "ReduceL1": ("0", "{a} + {v}", "tl_abs({x})", "{a}"),
    "ReduceL2": ("0", "{a} + {v}", "{x} * {x}", "tl_sqrt({a})"),
}


def acc_type(dtype: str) -> str:
    return "double" if dtype == "float64" else "float" if dtype in ("float32", "float16", "bfloat16") \
        else c_type(dtype)


def _init(op: str, dtype: str) -> str:
    """The reduction's identity; ±inf for float max/min, the type's bounds for integers."""
    init = _REDUCERS[op][0]
    if "inf" in init and dtype not in FLOAT_DTYPES:
        info = np.iinfo(np.dtype(dtype))
        return c_literal(int(info.min) if init.startswith("-") else int(info.max), dtype)
    return init


def split_reduction(shape: Sequence[Dim], axes: Sequence[int], node: ir.Node) -> Tuple[Dim, Dim, Dim]:
    """``(outer, R, inner)`` of a reduction over ``axes``; the axes must be contiguous
    once size-1 dims are ignored."""
    reduced = sorted(set(axes))
    live = [d for d in reduced if shape[d] != 1]
    if live:
        span = range(live[0], live[-1] + 1)
        if any(shape[d] != 1 and d not in reduced for d in span):
            raise UnsupportedOpError(f"node {node.name!r} ({node.op}): reduction over non-adjacent axes "
                                     f"{list(axes)} of shape {tuple(shape)} is not generated")
        lo, hi = live[0], live[-1] + 1
    else:
        lo = hi = len(shape)
    return dim_prod(shape[:lo]), dim_prod(shape[lo:hi]), dim_prod(shape[hi:])


def reduce_axes(graph: ir.Graph, node: ir.Node, rank: int) -> List[int]:
    """The reduced axes. IR reductions have opset-18 form: ``axes`` is the second input."""
    if node.op in ("GlobalAveragePool", "GlobalMaxPool"):  # ONNX: NCHW, spatial axes last
        return list(range(2, rank))
    if "axes" in node.attrs:
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}) carries 'axes' as an attribute; IR "
                                 f"reductions take axes as their second input (opset 18)")
    axes = const_ints(graph, node, 1, "axes")
    if not axes:
        return [] if node.attrs["noop_with_empty_axes"] else list(range(rank))
    return [normalize_axis(int(a), rank, node) for a in axes]


def emit_reduce(graph: ir.Graph, node: ir.Node, op: str, axes: Sequence[int]) -> KernelSpec:
    x, y = node.inputs[0], node.outputs[0]
    shape = shape_of(graph, x, node)
    dt = graph.tensor(x).dtype
    t, at = c_type(dt, node), acc_type(dt)
    outer, r, inner = split_reduction(shape, axes, node)
    init, combine, pre, fin = _REDUCERS[op]
    w = KernelWriter("reduce", node)
    src, dst = w.buffer(x, dt), w.buffer(y, graph.tensor(y).dtype, writable=True)
    R = w.dim(r)
    mapped = pre.format(x="v_")
    final = fin.format(a="acc", t=at, r=R)
    init = _init(op, dt)
    if inner == 1:
        rows = w.dim(outer)
        body = f"""  const i64 row = (i64)blockIdx.x * {WARPS} + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= {rows}) return;
  const {t}* xr = {src} + row * {R};
  {at} acc = ({at})({init});
  for (i64 i = lane; i < {R}; i += 32) {{ const {at} v_ = ({at})xr[i]; acc = {combine.format(a="acc", v=mapped, t=at)}; }}
  for (int o = 16; o > 0; o >>= 1) {{ const {at} v = __shfl_xor_sync(0xffffffffu, acc, o); acc = {combine.format(a="acc", v="v", t=at)}; }}
  if (lane == 0) {dst}[row] = ({t})({final});"""
        return w.finish(body, grid_1d(outer, WARPS), (BLOCK, 1, 1))
    total = dim_prod([outer, inner])
    n, I = w.dim(total), w.dim(inner)
    body = f"""  const i64 idx = (i64)blockIdx.x * {BLOCK} + threadIdx.x;
  if (idx >= {n}) return;
  const i64 o = idx / {I}, in_ = idx % {I};
  const {t}* xr = {src} + o * {R} * {I} + in_;
  {at} acc = ({at})({init});
  for (i64 i = 0; i < {R}; ++i) {{ const {at} v_ = ({at})xr[i * {I}]; acc = {combine.format(a="acc", v=mapped, t=at)}; }}
  {dst}[idx] = ({t})({final});"""
    return w.finish(body, grid_1d(total, BLOCK), (BLOCK, 1, 1))


@emitter(*_REDUCERS)
def _emit_reduce_op(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    rank = len(shape_of(graph, node.inputs[0], node))
    return [emit_reduce(graph, node, node.op, reduce_axes(graph, node, rank))]


@emitter("GlobalAveragePool", "GlobalMaxPool")
def _emit_global_pool(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    rank = len(shape_of(graph, node.inputs[0], node))
    op = "ReduceMean" if node.op == "GlobalAveragePool" else "ReduceMax"
    return [emit_reduce(graph, node, op, reduce_axes(graph, node, rank))]


def _last_axis_rows(graph: ir.Graph, node: ir.Node, axis: int) -> Tuple[Dim, Dim]:
    shape = shape_of(graph, node.inputs[0], node)
    axis = normalize_axis(axis, len(shape), node)
    return dim_prod(shape[:axis]), dim_prod(shape[axis:])


@emitter("Softmax", "LogSoftmax")
def _emit_softmax(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    shape = shape_of(graph, node.inputs[0], node)
    axis = normalize_axis(int(node.attrs.get("axis", -1)), len(shape), node)
    if any(d != 1 for d in shape[axis + 1:]):
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}): only last-axis softmax is generated "
                                 f"(axis {axis} of shape {tuple(shape)})")
    rows_d, cols_d = dim_prod(shape[:axis]), shape[axis]
    dt = graph.tensor(node.inputs[0]).dtype
    t, at = c_type(dt, node), acc_type(dt)
    w = KernelWriter("softmax", node)
    src, dst = w.buffer(node.inputs[0], dt), w.buffer(node.outputs[0], dt, writable=True)
    rows, D = w.dim(rows_d), w.dim(cols_d)
    out = ("({t})(tl_exp(({at})xr[i] - mx) / sum)" if node.op == "Softmax"
           else "({t})(({at})xr[i] - mx - tl_log(sum))").format(t=t, at=at)
    body = f"""  const i64 row = (i64)blockIdx.x * {WARPS} + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= {rows}) return;
  const {t}* xr = {src} + row * {D};
  {t}* yr = {dst} + row * {D};
  {at} mx = -tl_inf();
  for (i64 i = lane; i < {D}; i += 32) mx = tl_max<{at}>(mx, ({at})xr[i]);
  for (int o = 16; o > 0; o >>= 1) mx = tl_max<{at}>(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  {at} sum = 0;
  for (i64 i = lane; i < {D}; i += 32) sum += tl_exp(({at})xr[i] - mx);
  sum = tl_warp_sum(sum);
  for (i64 i = lane; i < {D}; i += 32) yr[i] = {out};"""
    return [w.finish(body, grid_1d(rows_d, WARPS), (BLOCK, 1, 1))]


def emit_layer_norm(graph: ir.Graph, node: ir.Node, x: str, scale: str, bias: Optional[str],
                    residual: Optional[str], y: str, sum_out: Optional[str], mean_out: Optional[str],
                    inv_std_out: Optional[str], epsilon: float, rows_d: Dim, cols_d: Dim) -> KernelSpec:
    """Warp-per-row layer norm over the last ``cols_d`` elements with float32 statistics."""
    dt = graph.tensor(x).dtype
    t, at = c_type(dt, node), acc_type(dt)
    w = KernelWriter("layernorm", node)
    px = w.buffer(x, dt)
    pscale = w.buffer(scale, graph.tensor(scale).dtype)
    pbias = w.buffer(bias, graph.tensor(bias).dtype) if bias else None
    pres = w.buffer(residual, graph.tensor(residual).dtype) if residual else None
    py = w.buffer(y, dt, writable=True)
    psum = w.buffer(sum_out, dt, writable=True) if sum_out else None
    pmean = w.buffer(mean_out, graph.tensor(mean_out).dtype, writable=True) if mean_out else None
    pinv = w.buffer(inv_std_out, graph.tensor(inv_std_out).dtype, writable=True) if inv_std_out else None
    rows, D = w.dim(rows_d), w.dim(cols_d)
    load = f"({at})(({t})(xr[i] + rr[i]))" if pres else f"({at})xr[i]"
    per_lane = -(-cols_d // 32) if isinstance(cols_d, int) else 0
    cached = 0 < per_lane <= MAX_ROW_REGISTERS
    warps = LN_WARPS if cached else WARPS
    lines = [f"  const i64 row = (i64)blockIdx.x * {warps} + (threadIdx.x >> 5);",
             "  const int lane = threadIdx.x & 31;",
             f"  if (row >= {rows}) return;",
             f"  const {t}* xr = {px} + row * {D};"]
    if pres:
        lines.append(f"  const {t}* rr = {pres} + row * {D};")
    store_sum = f" {psum}[row * {D} + i] = ({t})v;" if psum else ""
    if cached:
        vw = 16 // np.dtype(np_dtype(dt)).itemsize
        if cols_d % (32 * vw) == 0:
            same = [p for p, tensor in ((pscale, scale), (pbias, bias)) if p and graph.tensor(tensor).dtype == dt]
            lines += _layer_norm_vector_body(t, at, vw, per_lane, D, load, px, pres, py, psum, pscale, pbias,
                                             same, epsilon)
        else:
            lines += _layer_norm_cached_body(t, at, per_lane, cols_d, D, load, psum, py, pscale, pbias, epsilon)
    else:
        lines += [f"  {at} s = 0;",
                  f"  for (i64 i = lane; i < {D}; i += 32) {{ const {at} v = {load}; s += v;{store_sum} }}",
                  f"  const {at} mean = tl_warp_sum(s) / ({at}){D};",
                  f"  {at} q = 0;",
                  f"  for (i64 i = lane; i < {D}; i += 32) {{ const {at} d = {load} - mean; q += d * d; }}",
                  f"  const {at} sd = tl_sqrt(tl_warp_sum(q) / ({at}){D} + ({at}){c_literal(epsilon, 'float32')});",
                  f"  for (i64 i = lane; i < {D}; i += 32) {{",
                  f"    {at} v = ({load} - mean) / sd * ({at}){pscale}[i];"]
        if pbias:
            lines.append(f"    v += ({at}){pbias}[i];")
        lines += [f"    {py}[row * {D} + i] = ({t})v;", "  }"]
    if pmean:
        lines.append(f"  if (lane == 0) {pmean}[row] = mean;")
    if pinv:
        lines.append(f"  if (lane == 0) {pinv}[row] = {at}(1) / sd;")
    return w.finish("\n".join(lines), grid_1d(rows_d, warps), (32 * warps, 1, 1))


def _row_statistics(at: str, per_lane: int, D: str, epsilon: float, guard: str = "") -> List[str]:
    """mean and sd of the row held in ``v_`` (``per_lane`` values per lane)."""
    return [f"  {at} s = 0;",
            "#pragma unroll",
            f"  for (int k = 0; k < {per_lane}; ++k) s += v_[k];",
            f"  const {at} mean = tl_warp_sum(s) / ({at}){D};",
            f"  {at} q = 0;",
            "#pragma unroll",
            f"  for (int k = 0; k < {per_lane}; ++k) {{ "
            + (f"const i64 i = lane + 32 * k; {guard}" if guard else "")
            + f"{{ const {at} d = v_[k] - mean; q += d * d; }} }}",
            f"  const {at} sd = tl_sqrt(tl_warp_sum(q) / ({at}){D} + ({at}){c_literal(epsilon, 'float32')});"]


def _normalized(at: str, value: str, pscale: str, pbias: Optional[str], i: str) -> str:
    bias = f" + ({at}){pbias}[{i}]" if pbias else ""
    return f"({value} - mean) / sd * ({at}){pscale}[{i}]{bias}"


def _layer_norm_cached_body(t, at, per_lane, cols, D, load, psum, py, pscale, pbias, epsilon) -> List[str]:
    """The row in registers, element ``lane + 32 k`` in ``v_[k]``: every load is issued
    before the first reduction, so one memory latency per row instead of one per pass."""
    guard = "" if cols % 32 == 0 else f"if (i < {D}) "
    store_sum = f" {psum}[row * {D} + i] = ({t})v_[k];" if psum else ""
    return ([f"  {at} v_[{per_lane}];",
             "#pragma unroll",
             f"  for (int k = 0; k < {per_lane}; ++k) {{ const i64 i = lane + 32 * k; "
             f"v_[k] = 0; {guard}{{ v_[k] = {load};{store_sum} }} }}"]
            + _row_statistics(at, per_lane, D, epsilon, guard)
            + ["#pragma unroll",
               f"  for (int k = 0; k < {per_lane}; ++k) {{ const i64 i = lane + 32 * k; "
               f"{guard}{py}[row * {D} + i] = ({t})({_normalized(at, 'v_[k]', pscale, pbias, 'i')}); }}"])


def _by_alignment(vw: int, per_lane: int, vector_body: List[str], scalar_body: List[str]) -> List[str]:
    """The two walks over a lane's row elements: in 16-byte words when ``aligned`` (run
    ``k`` starts at element ``i``), else one element at a time (element ``k`` of the
    register layout is element ``i`` of the row). Bodies come indented for the loop."""
    return (["  if (aligned) {",
             "#pragma unroll",
             f"    for (int k = 0; k < {per_lane // vw}; ++k) {{",
             f"      const i64 i = ((i64)k * 32 + lane) * {vw};"]
            + vector_body
            + ["    }",
               "  } else {",
               "#pragma unroll",
               f"    for (int k = 0; k < {per_lane}; ++k) {{",
               f"      const i64 i = ((i64)(k / {vw}) * 32 + lane) * {vw} + k % {vw};"]
            + scalar_body
            + ["    }", "  }"])


def _layer_norm_vector_body(t, at, vw, per_lane, D, load, px, pres, py, psum, pscale, pbias, vector_params,
                            epsilon) -> List[str]:
    """As the cached body, with each lane owning runs of ``vw`` neighbouring elements
    (element ``(32 k + lane) vw + j`` in ``v_[k vw + j]``) so that rows move in 16-byte
    words: a quarter (float32) or an eighth (halves) of the load and store instructions.
    ``vector_params`` (scale and bias pointers of the row's dtype) are read in words too.
    Rows whose pointers are not 16-byte aligned take the same layout with scalar accesses."""
    vt = f"tl_vec<{t}, {vw}>"
    ptrs = [px, py] + ([pres] if pres else []) + ([psum] if psum else []) + list(vector_params)
    aligned = " | ".join(f"reinterpret_cast<unsigned long long>({p})" for p in ptrs)
    vload = load.replace("xr[i]", "a.v[j]").replace("rr[i]", "b.v[j]")
    loads = [f"      const {vt} a = *reinterpret_cast<const {vt}*>(xr + i);"]
    if pres:
        loads.append(f"      const {vt} b = *reinterpret_cast<const {vt}*>(rr + i);")
    loads += ["#pragma unroll", f"      for (int j = 0; j < {vw}; ++j) v_[k * {vw} + j] = {vload};"]

    stores = [f"      {vt} o;"]
    if psum:
        stores.append(f"      {vt} so;")
    words = {p: f"w{n}" for n, p in enumerate(vector_params)}
    for p, name in words.items():
        stores.append(f"      const {vt} {name} = *reinterpret_cast<const {vt}*>({p} + i);")
    scale_j = f"{words[pscale]}.v[j]" if pscale in words else f"{pscale}[i + j]"
    bias_j = (f"{words[pbias]}.v[j]" if pbias in words else f"{pbias}[i + j]") if pbias else None
    normalized = f"(v - mean) / sd * ({at}){scale_j}" + (f" + ({at}){bias_j}" if bias_j else "")
    stores += ["#pragma unroll",
               f"      for (int j = 0; j < {vw}; ++j) {{",
               f"        const {at} v = v_[k * {vw} + j];",
               f"        o.v[j] = ({t})({normalized});"]
    if psum:
        stores.append(f"        so.v[j] = ({t})v;")
    stores += ["      }", f"      *reinterpret_cast<{vt}*>({py} + row * {D} + i) = o;"]
    if psum:
        stores.append(f"      *reinterpret_cast<{vt}*>({psum} + row * {D} + i) = so;")
    scalar_stores = [f"      {py}[row * {D} + i] = ({t})({_normalized(at, 'v_[k]', pscale, pbias, 'i')});"]
    if psum:
        scalar_stores.append(f"      {psum}[row * {D} + i] = ({t})v_[k];")

    return ([f"  {at} v_[{per_lane}];", f"  const bool aligned = (({aligned}) & 15ULL) == 0;"]
            + _by_alignment(vw, per_lane, loads, [f"      v_[k] = {load};"])
            + _row_statistics(at, per_lane, D, epsilon)
            + _by_alignment(vw, per_lane, stores, scalar_stores))


@emitter("tftrt.LayerNorm")
def _emit_tftrt_layer_norm(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    if node.attrs["axis"] != -1:
        raise UnsupportedOpError(f"node {node.name!r}: LayerNorm axis {node.attrs['axis']} (only -1)")
    x, scale, bias, residual = (list(node.inputs) + ["", ""])[:4]
    rows, cols = _last_axis_rows(graph, node, -1)
    sum_out = node.outputs[1] if node.attrs["sum_output"] and len(node.outputs) > 1 else None
    return [emit_layer_norm(graph, node, x, scale, bias or None, residual or None, node.outputs[0],
                            sum_out, None, None, float(node.attrs["epsilon"]), rows, cols)]


@emitter("LayerNormalization")
def _emit_onnx_layer_norm(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    x, scale, bias = (list(node.inputs) + [""])[:3]
    rows, cols = _last_axis_rows(graph, node, int(node.attrs.get("axis", -1)))
    outs = list(node.outputs) + ["", ""]
    return [emit_layer_norm(graph, node, x, scale, bias or None, None, outs[0], None,
                            outs[1] or None, outs[2] or None, float(node.attrs.get("epsilon", 1e-5)), rows, cols)]
