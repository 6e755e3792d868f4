"""Data-movement kernels: Transpose, Concat, Split, Slice, Pad, Tile, Gather, pooling, Shape.

Why one thread per output element everywhere: these ops are memory-bound and their
outputs are written contiguously, so "compute my input offset from my output
coordinates" keeps every store coalesced and every kernel short enough to audit. Dims
that move together are coalesced first (a Transpose NCHW→NHWC of a 1x1 map is a copy).

Pooling is 2-D, in the tensor's layout: ONNX ``MaxPool``/``AveragePool`` are NCHW, the
layout pass's ``tftrt.Pool`` is NHWC.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from tftrt_lite.codegen.kernel import (
    Dim, KernelSpec, KernelWriter, c_literal, c_type, compute_type, const_ints, contiguous_strides, dim_add,
    dim_mul, dim_prod, emitter, grid_1d, normalize_axis, shape_of, unravel, vector_length)
from tftrt_lite.engine import ir
from tftrt_lite.errors import UnsupportedOpError

BLOCK = 256


def _per_element(w: KernelWriter, out_dims: Sequence[Dim], lines: Sequence[str]) -> Tuple[str, Tuple]:
    """Kernel body: one thread per output element, coordinates ``c0..`` over ``out_dims``."""
    n = w.dim(dim_prod(out_dims)) if out_dims else "1LL"
    body = [f"  const i64 e = (i64)blockIdx.x * {BLOCK} + threadIdx.x;",
            f"  if (e >= {n}) return;"]
    if out_dims:
        body.append(unravel("e", [""] + [w.dim(d) for d in out_dims[1:]],
                            [f"c{i}" for i in range(len(out_dims))]))
    body += ["  " + line for line in lines]
    return "\n".join(body), grid_1d(dim_prod(out_dims) if out_dims else 1, BLOCK)


def _offset(w: KernelWriter, coords: Sequence[str], shape: Sequence[Dim]) -> str:
    """Row-major offset of ``coords`` in a contiguous tensor of ``shape``."""
    terms = []
    for c, s in zip(coords, contiguous_strides(shape)):
        terms.append(c if s == 1 else f"{c} * {w.dim(s)}")
    return " + ".join(terms) if terms else "0"


# --------------------------------------------------------------------------- Transpose
def coalesce_transpose(shape: Sequence[Dim], perm: Sequence[int]) -> Tuple[List[Dim], List[int]]:
    """Drop size-1 dims and merge output neighbours that are input neighbours in order."""
    live = [p for p in perm if shape[p] != 1]
    rank_map = {p: i for i, p in enumerate(sorted(live))}
    groups: List[List[int]] = []
    for p in live:
        if groups and rank_map[p] == rank_map[groups[-1][-1]] + 1:
            groups[-1].append(p)
        else:
            groups.append([p])
    order = sorted(range(len(groups)), key=lambda g: groups[g][0])   # input order of groups
    in_dims = [dim_prod([shape[p] for p in groups[g]]) for g in order]
    new_perm = [order.index(g) for g in range(len(groups))]
    return in_dims, new_perm


@emitter("Transpose")
def _emit_transpose(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    x, y = node.inputs[0], node.outputs[0]
    shape = shape_of(graph, x, node)
    perm = [int(p) for p in node.attrs.get("perm") or range(len(shape) - 1, -1, -1)]
    in_dims, perm = coalesce_transpose(shape, perm)
    dt = graph.tensor(x).dtype
    w = KernelWriter("transpose", node)
    src, dst = w.buffer(x, dt), w.buffer(y, dt, writable=True)
    out_dims = [in_dims[p] for p in perm]
    in_coords = [""] * len(in_dims)
    for i, p in enumerate(perm):
        in_coords[p] = f"c{i}"
    body, grid = _per_element(w, out_dims, [f"{dst}[e] = {src}[{_offset(w, in_coords, in_dims)}];"])
    return [w.finish(body, grid, (BLOCK, 1, 1))]


# --------------------------------------------------------------------------- Concat / Split
def _outer_axis_inner(shape: Sequence[Dim], axis: int) -> Tuple[Dim, Dim, Dim]:
    return dim_prod(shape[:axis]), shape[axis], dim_prod(shape[axis + 1:])


@emitter("Concat")
def _emit_concat(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    y = node.outputs[0]
    out_shape = shape_of(graph, y, node)
    axis = normalize_axis(int(node.attrs["axis"]), len(out_shape), node)
    dt = graph.tensor(y).dtype
    w = KernelWriter("concat", node)
    inputs = [i for i in node.inputs if i]
    ptrs = [w.buffer(i, dt) for i in inputs]
    dst = w.buffer(y, dt, writable=True)
    outer, total, inner = _outer_axis_inner(out_shape, axis)
    lines, start = [], 0
    for k, (t, p) in enumerate(zip(inputs, ptrs)):
        a = shape_of(graph, t, node)[axis]
        if a == 0:
            continue
        end = dim_add(start, a)
        cond = f"c1 < {w.dim(end)}" if k < len(inputs) - 1 else "true"
        lines.append(f"{'if' if not lines else 'else if'} ({cond}) {dst}[e] = "
                     f"{p}[(c0 * {w.dim(a)} + (c1 - {w.dim(start)})) * {w.dim(inner)} + c2];")
        start = end
    body, grid = _per_element(w, [outer, total, inner], lines)
    return [w.finish(body, grid, (BLOCK, 1, 1))]


def _emit_axis_window(graph: ir.Graph, node: ir.Node, src_t: str, dst_t: str, axis: int,
                      start: Dim, prefix: str) -> KernelSpec:
    """Copy ``dst = src[..., start:start+len, ...]`` along ``axis`` (Split's outputs)."""
    in_shape = shape_of(graph, src_t, node)
    out_shape = shape_of(graph, dst_t, node)
    dt = graph.tensor(src_t).dtype
    w = KernelWriter(prefix, node)
    src, dst = w.buffer(src_t, dt), w.buffer(dst_t, dt, writable=True)
    outer, a, inner = _outer_axis_inner(out_shape, axis)
    src_off = f"(c0 * {w.dim(in_shape[axis])} + c1 + {w.dim(start)}) * {w.dim(inner)} + c2"
    body, grid = _per_element(w, [outer, a, inner], [f"{dst}[e] = {src}[{src_off}];"])
    return w.finish(body, grid, (BLOCK, 1, 1))


@emitter("Split")
def _emit_split(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    shape = shape_of(graph, node.inputs[0], node)
    axis = normalize_axis(int(node.attrs.get("axis", 0)), len(shape), node)
    kernels, start = [], 0
    for out in node.outputs:
        if not out:
            continue
        a = shape_of(graph, out, node)[axis]
        kernels.append(_emit_axis_window(graph, node, node.inputs[0], out, axis, start, "split"))
        start = dim_add(start, a)
    return kernels


# --------------------------------------------------------------------------- Slice
_BIG = 2 ** 62


def slice_start(start: int, step: int, dim: Dim) -> Dim:
    """The first input index a Slice reads on one axis (ONNX clamping rules)."""
    if isinstance(dim, int):
        return range(dim)[slice(start, None, step)].start if dim else 0
    if step > 0:
        if start < 0:
            return dim_add(dim, start)
        return start
    if start >= _BIG:
        return dim_add(dim, -1)
    return dim_add(dim, start) if start < 0 else start


@emitter("Slice")
def _emit_slice(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    x, y = node.inputs[0], node.outputs[0]
    in_shape = shape_of(graph, x, node)
    out_shape = shape_of(graph, y, node)
    rank = len(in_shape)
    starts = const_ints(graph, node, 1, "starts")
    axes = const_ints(graph, node, 3, "axes") or list(range(len(starts)))
    steps = const_ints(graph, node, 4, "steps") or [1] * len(starts)
    first: List[Dim] = [0] * rank
    step: List[int] = [1] * rank
    for s, a, st in zip(starts, axes, steps):
        a = normalize_axis(a, rank, node)
        first[a], step[a] = slice_start(s, st, in_shape[a]), st
    dt = graph.tensor(x).dtype
    w = KernelWriter("slice", node)
    src, dst = w.buffer(x, dt), w.buffer(y, dt, writable=True)
    coords = []
    for i in range(rank):
        c = f"c{i}" if step[i] == 1 else f"c{i} * {step[i]}LL"
        coords.append(c if first[i] == 0 else f"({w.dim(first[i])} + {c})")
    body, grid = _per_element(w, out_shape, [f"{dst}[e] = {src}[{_offset(w, coords, in_shape)}];"])
    return [w.finish(body, grid, (BLOCK, 1, 1))]


# --------------------------------------------------------------------------- Pad / Tile
def coalesce_pad(shape: Sequence[Dim], pads: Sequence[int]) -> Tuple[List[Dim], List[int], List[int]]:
    """Merge neighbouring dims that are both unpadded (their elements move together):
    (dims, begin pads, end pads). An NHWC channel pad becomes [N·H·W, C] → [N·H·W, C']."""
    rank = len(shape)
    dims: List[Dim] = []
    begins: List[int] = []
    ends: List[int] = []
    for d, b, e in zip(shape, pads[:rank], pads[rank:]):
        if dims and b == e == 0 and begins[-1] == ends[-1] == 0:
            dims[-1] = dim_mul(dims[-1], d)
        else:
            dims.append(d)
            begins.append(b)
            ends.append(e)
    return dims, begins, ends


@emitter("Pad")
def _emit_pad(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    x, y = node.inputs[0], node.outputs[0]
    if len(node.inputs) > 3 and node.inputs[3]:
        raise UnsupportedOpError(f"node {node.name!r} (Pad): the axes input is not generated")
    in_shape, begins, ends = coalesce_pad(shape_of(graph, x, node), const_ints(graph, node, 1, "pads"))
    out_shape = [dim_add(d, b + e) for d, b, e in zip(in_shape, begins, ends)]
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    dt = graph.tensor(x).dtype
    w = KernelWriter("pad", node)
    src, dst = w.buffer(x, dt), w.buffer(y, dt, writable=True)
    fill = c_literal(0, dt)
    if len(node.inputs) > 2 and node.inputs[2]:
        value = graph.const(node.inputs[2])
        fill = (c_literal(value.reshape(-1)[0].item(), dt) if value is not None
                else f"{w.buffer(node.inputs[2], dt)}[0]")
    lines, coords, inside = [], [], []
    for i, (begin, end) in enumerate(zip(begins, ends)):
        coords.append(f"i{i}")
        if begin == end == 0:
            lines.append(f"const i64 i{i} = c{i};")
            continue
        d = w.dim(in_shape[i])
        lines.append(f"i64 i{i} = c{i} - {begin}LL;")
        if mode == "constant":
            inside.append(f"i{i} >= 0 && i{i} < {d}")
        elif mode == "reflect":
            lines.append(f"if (i{i} < 0) i{i} = -i{i}; if (i{i} >= {d}) i{i} = 2 * ({d} - 1) - i{i};")
        elif mode == "edge":
            lines.append(f"if (i{i} < 0) i{i} = 0; if (i{i} >= {d}) i{i} = {d} - 1;")
        else:
            raise UnsupportedOpError(f"node {node.name!r} (Pad): mode {mode!r} is not generated")
    load = f"{src}[{_offset(w, coords, in_shape)}]"
    if inside:  # both branches in the compute type: a half load and a float literal do not mix
        ct = compute_type(dt, node)
        lines.append(f"{dst}[e] = ({' && '.join(inside)}) ? ({ct}){load} : ({ct}){fill};")
    else:
        lines.append(f"{dst}[e] = {load};")
    body, grid = _per_element(w, out_shape, lines)
    return [w.finish(body, grid, (BLOCK, 1, 1))]


@emitter("Tile")
def _emit_tile(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    x, y = node.inputs[0], node.outputs[0]
    in_shape = shape_of(graph, x, node)
    out_shape = shape_of(graph, y, node)
    dt = graph.tensor(x).dtype
    w = KernelWriter("tile", node)
    src, dst = w.buffer(x, dt), w.buffer(y, dt, writable=True)
    coords = [f"(c{i} % {w.dim(d)})" if d != 1 else "0" for i, d in enumerate(in_shape)]
    body, grid = _per_element(w, out_shape, [f"{dst}[e] = {src}[{_offset(w, coords, in_shape)}];"])
    return [w.finish(body, grid, (BLOCK, 1, 1))]


# --------------------------------------------------------------------------- Gather
@emitter("Gather")
def _emit_gather(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    data, indices = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    shape = shape_of(graph, data, node)
    axis = normalize_axis(int(node.attrs.get("axis", 0)), len(shape), node)
    dt = graph.tensor(data).dtype
    it = graph.tensor(indices).dtype
    if it not in ("int32", "int64"):
        raise UnsupportedOpError(f"node {node.name!r} (Gather): indices of dtype {it}")
    w = KernelWriter("gather", node)
    src, idx, dst = w.buffer(data, dt), w.buffer(indices, it), w.buffer(y, dt, writable=True)
    outer, a, inner = _outer_axis_inner(shape, axis)
    J = dim_prod(shape_of(graph, indices, node))
    A = w.dim(a)
    # Out-of-range indices are invalid in ONNX; clamping keeps a bad input from faulting the GPU.
    lines = [f"i64 k = (i64){idx}[c1];",
             f"if (k < 0) k += {A};",
             f"k = k < 0 ? 0 : (k >= {A} ? {A} - 1 : k);",
             f"{dst}[e] = {src}[(c0 * {A} + k) * {w.dim(inner)} + c2];"]
    body, grid = _per_element(w, [outer, J, inner], lines)
    return [w.finish(body, grid, (BLOCK, 1, 1))]


# --------------------------------------------------------------------------- Shape
@emitter("Shape")
def _emit_shape(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    shape = shape_of(graph, node.inputs[0], node)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    dims = list(shape)[slice(start, None if end is None else int(end))]
    w = KernelWriter("shape", node)
    dst = w.buffer(node.outputs[0], graph.tensor(node.outputs[0]).dtype, writable=True)
    lines = ["  if (blockIdx.x != 0 || threadIdx.x != 0) return;"]
    lines += [f"  {dst}[{i}] = {w.dim(d)};" for i, d in enumerate(dims)]
    return [w.finish("\n".join(lines), grid_1d(1, 1), (32, 1, 1))]


# --------------------------------------------------------------------------- pooling
def _pool_geometry(graph: ir.Graph, node: ir.Node, nhwc: bool) -> Tuple[List[int], List[int], List[int], List[int]]:
    kernel = [int(k) for k in node.attrs["kernel_shape"]]
    if len(kernel) != 2:
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}): only 2-D pooling is generated")
    strides = [int(s) for s in node.attrs.get("strides") or [1, 1]]
    dilations = [int(d) for d in node.attrs.get("dilations") or [1, 1]]
    pads = [int(p) for p in node.attrs.get("pads") or [0, 0, 0, 0]]
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID", ""):
        in_shape = shape_of(graph, node.inputs[0], node)
        out_shape = shape_of(graph, node.outputs[0], node)
        spatial_in = in_shape[1:3] if nhwc else in_shape[2:4]
        spatial_out = out_shape[1:3] if nhwc else out_shape[2:4]
        if not all(isinstance(d, int) for d in list(spatial_in) + list(spatial_out)):
            raise UnsupportedOpError(f"node {node.name!r} ({node.op}): auto_pad with symbolic spatial dims")
        pads = [0, 0, 0, 0]
        for i in range(2):
            total = max(0, (spatial_out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial_in[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    return kernel, strides, dilations, pads


@emitter("MaxPool", "AveragePool", "tftrt.Pool")
def _emit_pool(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    """ONNX pools (NCHW) and ``tftrt.Pool`` (NHWC, ``mode`` "max"/"avg", from the layout pass).

    NHWC with a static channel count that is a multiple of the 16-byte vector length
    (8 halves, 4 floats): each thread pools one vector of neighbouring channels, so every
    window tap is one 16-byte load and the index arithmetic is shared by its channels
    (ResNet50's 3x3/2 max pool at batch 128 moves 256 MB). Buffers that are not 16-byte
    aligned take scalar accesses of the same channel grouping (a uniform branch).
    """
    if len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedOpError(f"node {node.name!r} (MaxPool): the Indices output is not generated")
    nhwc = node.op == "tftrt.Pool"
    is_max = node.attrs["mode"] == "max" if nhwc else node.op == "MaxPool"
    x, y = node.inputs[0], node.outputs[0]
    in_shape = shape_of(graph, x, node)
    out_shape = shape_of(graph, y, node)
    (kh, kw), (sh, sw), (dh, dw), pads = _pool_geometry(graph, node, nhwc)
    dt = graph.tensor(x).dtype
    t = c_type(dt, node)
    at = "double" if dt == "float64" else "float"
    w = KernelWriter("maxpool" if is_max else "avgpool", node)
    src, dst = w.buffer(x, dt), w.buffer(y, dt, writable=True)
    vec = 1
    if nhwc:
        n_d, h_d, w_d, c_d = in_shape
        vec = vector_length([dt])
        vec = vec if isinstance(c_d, int) and c_d % vec == 0 else 1
        n, oh, ow, c = "c0", "c1", "c2", (f"c3 * {vec}" if vec > 1 else "c3")
        addr = f"((({n} * {w.dim(h_d)} + ih) * {w.dim(w_d)} + iw) * {w.dim(c_d)} + {c})"
        out_dims = list(out_shape[:3]) + [out_shape[3] // vec if vec > 1 else out_shape[3]]
    else:
        n_d, c_d, h_d, w_d = in_shape
        n, c, oh, ow = "c0", "c1", "c2", "c3"
        addr = f"((({n} * {w.dim(c_d)} + {c}) * {w.dim(h_d)} + ih) * {w.dim(w_d)} + iw)"
        out_dims = list(out_shape)
    H, W = w.dim(h_d), w.dim(w_d)
    lines = [f"{at} acc[{vec}];", "#pragma unroll", f"for (int i = 0; i < {vec}; ++i) acc[i] = {'-tl_inf()' if is_max else '0'};",
             "int count = 0;",
             f"for (int kh = 0; kh < {kh}; ++kh) {{",
             f"  const i64 ih = {oh} * {sh} - {pads[0]} + kh * {dh};",
             f"  for (int kw = 0; kw < {kw}; ++kw) {{",
             f"    const i64 iw = {ow} * {sw} - {pads[1]} + kw * {dw};"]
    if not is_max and node.attrs.get("count_include_pad", 0):
        lines.append(f"    if (ih >= -{pads[0]} && ih < {H} + {pads[2]} && iw >= -{pads[1]} && iw < {W} + {pads[3]}) ++count;")
        lines.append(f"    if (ih < 0 || ih >= {H} || iw < 0 || iw >= {W}) continue;")
    else:
        lines.append(f"    if (ih < 0 || ih >= {H} || iw < 0 || iw >= {W}) continue;")
        lines.append("    ++count;")

    def take(i: str, v: str) -> str:
        return f"acc[{i}] = tl_max(acc[{i}], {v});" if is_max else f"acc[{i}] += {v};"

    def result(i: str) -> str:
        return f"({t})(acc[{i}])" if is_max else f"({t})(acc[{i}] / ({at})count)"

    if vec > 1:
        vt = f"tl_vec<{t}, {vec}>"
        lines += [f"    const {t}* p = {src} + {addr};",
                  f"    {vt} x;",
                  f"    if (aligned) x = *reinterpret_cast<const {vt}*>(p);",
                  f"    else for (int i = 0; i < {vec}; ++i) x.v[i] = p[i];",
                  "    #pragma unroll",
                  f"    for (int i = 0; i < {vec}; ++i) {take('i', f'({at})x.v[i]')}",
                  "  }", "}",
                  f"{vt} o;",
                  "#pragma unroll",
                  f"for (int i = 0; i < {vec}; ++i) o.v[i] = {result('i')};",
                  f"if (aligned) *reinterpret_cast<{vt}*>({dst} + e * {vec}) = o;",
                  f"else for (int i = 0; i < {vec}; ++i) {dst}[e * {vec} + i] = o.v[i];"]
        lines.insert(0, f"const bool aligned = ((reinterpret_cast<unsigned long long>({src}) | "
                        f"reinterpret_cast<unsigned long long>({dst})) & 15ULL) == 0;")
    else:
        lines += [f"    {take('0', f'({at}){src}[{addr}]')}", "  }", "}", f"{dst}[e] = {result('0')};"]
    body, grid = _per_element(w, out_dims, lines)
    return [w.finish(body, grid, (BLOCK, 1, 1))]


@emitter("tftrt.SpaceToDepth")
def _emit_space_to_depth(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    """One thread per output pixel: it reads the block×block×C input values its channels
    fold (``block`` runs of block·C contiguous values, so a warp's reads are contiguous),
    converts them to the output dtype and writes its ``channels`` values, as 16-byte words
    when they fill whole words and the output is 16-byte aligned."""
    x, y = node.inputs[0], node.outputs[0]
    n_d, h, wd, c = shape_of(graph, x, node)
    out_shape = shape_of(graph, y, node)
    s, channels = int(node.attrs["block"]), int(node.attrs["channels"])
    top, left = int(node.attrs["pads"][0]), int(node.attrs["pads"][1])
    if not all(isinstance(d, int) for d in (h, wd, c)):
        raise UnsupportedOpError(f"node {node.name!r} (tftrt.SpaceToDepth): H, W and C must be static")
    dt_in, dt_out = graph.tensor(x).dtype, graph.tensor(y).dtype
    t_in, t_out = c_type(dt_in, node), c_type(dt_out, node)
    w = KernelWriter("space_to_depth", node)
    src, dst = w.buffer(x, dt_in), w.buffer(y, dt_out, writable=True)
    vec = vector_length([dt_out])
    lines = [f"{t_out} v[{channels}];",
             "#pragma unroll",
             f"for (int k = {s * s * c}; k < {channels}; ++k) v[k] = ({t_out})0.f;",
             "#pragma unroll",
             f"for (int p = 0; p < {s}; ++p) {{",
             f"  const i64 ih = c1 * {s} + p - {top};",
             "  #pragma unroll",
             f"  for (int q = 0; q < {s}; ++q) {{",
             f"    const i64 iw = c2 * {s} + q - {left};",
             f"    const bool inside = ih >= 0 && ih < {h} && iw >= 0 && iw < {wd};",
             f"    const {t_in}* px = {src} + ((c0 * {h} + (inside ? ih : 0)) * {wd} + (inside ? iw : 0)) * {c};",
             "    #pragma unroll",
             f"    for (int ch = 0; ch < {c}; ++ch) v[(p * {s} + q) * {c} + ch] = "
             f"({t_out})(inside ? (float)px[ch] : 0.f);",
             "  }",
             "}",
             f"{t_out}* py = {dst} + e * {channels};"]
    if vec > 1 and channels % vec == 0:
        vt = f"tl_vec<{t_out}, {vec}>"
        lines += [f"if ((reinterpret_cast<unsigned long long>({dst}) & 15ULL) == 0) {{",
                  "  #pragma unroll",
                  f"  for (int k = 0; k < {channels}; k += {vec}) {{",
                  f"    {vt} o;",
                  "    #pragma unroll",
                  f"    for (int i = 0; i < {vec}; ++i) o.v[i] = v[k + i];",
                  f"    *reinterpret_cast<{vt}*>(py + k) = o;",
                  "  }",
                  "} else {",
                  "  #pragma unroll",
                  f"  for (int k = 0; k < {channels}; ++k) py[k] = v[k];",
                  "}"]
    else:
        lines += ["#pragma unroll", f"for (int k = 0; k < {channels}; ++k) py[k] = v[k];"]
    body, grid = _per_element(w, list(out_shape[:3]), lines)
    return [w.finish(body, grid, (BLOCK, 1, 1))]
