"""A generated direct convolution for convolutions over few input channels (network stems).

Why not cuDNN: the first convolution of an image network reads 3 channels (RGB), and
cuDNN's legacy NHWC path has no tensor-core kernel for them: it ran MobileNetV2's 3x3
stride-2 stem (3 → 32 channels) at 22 % of HBM bandwidth on the H200, 483 µs of a 2.03 ms
FP16 engine at batch 128, and padding the input to 8 channels made cuDNN slower still. The
arithmetic is small — kH·kW·C multiply-adds per output value, 27 for that stem — so CUDA
cores can do it at close to memory speed when nothing else is in the way:

- one thread computes all K outputs of one output pixel. It loads the kH·kW·C input values
  its window covers once (zero for padding taps, as the reference pads with zeros), in
  float, and accumulates every output in a float register;
- the filter (a constant of the graph) is written into the kernel as a ``const`` array
  that the fully unrolled loops index with constants, so the compiler folds every tap into
  its multiply-add as an immediate operand: no filter loads and no shared memory. Tests
  check the PTX for local memory, which a failed unroll would show;
- bias, residual and activation run on the float accumulator and each output is rounded
  once (``fused_ops.fused_conv``'s epilogue); the K outputs of a pixel are contiguous in
  NHWC and go out as 16-byte stores when K·sizeof(Y) is a multiple of 16 and the output is
  16-byte aligned, so a warp writes one contiguous run.

Which convs: one group, at most ``MAX_CHANNELS`` static input channels, a static filter of
at most ``MAX_MACS`` multiply-adds per output pixel (taps · C · K), static spatial dims, no
input activation, float16/bfloat16/float32. The bound keeps the kernel where it is
memory-bound: ResNet50's 7x7 stem (9408 per pixel, 30 GFLOP at batch 128) would take
longer on CUDA cores than cuDNN takes, so it stays there.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tftrt_lite.codegen.conv import single_group_conv_shapes
from tftrt_lite.codegen.elementwise import activation_program, program_c
from tftrt_lite.codegen.kernel import (
    KernelSpec, KernelWriter, LaunchDim, c_literal, c_type, dim_prod, vector_length)
from tftrt_lite.engine import ir
from tftrt_lite.engine.fused_ops import conv_operands

#: Input channels at most (RGB, RGBA, grey).
MAX_CHANNELS = 4
#: Multiply-adds per output pixel at most (kH·kW·C·K): MobileNetV2's stem has 864.
MAX_MACS = 1024
#: Threads per block, one output pixel each.
BLOCK = 128
_FLOATS = ("float32", "float16", "bfloat16")


def _const(graph: ir.Graph, tensor: Optional[str]) -> Optional[np.ndarray]:
    return graph.const(tensor) if tensor else None


def stem_conv_runs(graph: ir.Graph, node: ir.Node) -> bool:
    """Whether :func:`emit_stem_conv` generates ``node``'s kernel."""
    shapes = single_group_conv_shapes(graph, node)
    x, _, _, _, y = conv_operands(node)
    if shapes is None or {graph.tensor(t).dtype for t in (x, y)} - set(_FLOATS):
        return False
    xs, (k, kh, kw, c), _ = shapes
    return c == xs[3] and c <= MAX_CHANNELS and kh * kw * c * k <= MAX_MACS


def emit_stem_conv(graph: ir.Graph, node: ir.Node) -> Optional[KernelSpec]:
    """The kernel computing ``node``, or None when :func:`stem_conv_runs` says no."""
    if not stem_conv_runs(graph, node):
        return None
    x, wt, bias, residual, y = conv_operands(node)
    n_d, h, w_in, c = graph.tensor(x).shape
    k, kh, kw, _ = graph.tensor(wt).shape
    _, oh, ow, _ = graph.tensor(y).shape
    sh, sw = (int(v) for v in node.attrs["strides"])
    dh, dw = (int(v) for v in node.attrs["dilations"])
    top, left = int(node.attrs["pads"][0]), int(node.attrs["pads"][1])
    dt_x, dt_y = graph.tensor(x).dtype, graph.tensor(y).dtype
    taps = kh * kw * c

    wr = KernelWriter("stemconv", node)
    px = wr.buffer(x, dt_x)
    pz = wr.buffer(residual, graph.tensor(residual).dtype) if residual else None
    py = wr.buffer(y, dt_y, writable=True)
    pixels = wr.dim(dim_prod([n_d, oh, ow]))
    # filter [K, kH, kW, C] as [tap][k], values as the reference reads them (float32 of W's dtype)
    filt = np.asarray(_const(graph, wt), np.float32).reshape(k, taps).T
    lines = [f"  const float w_[{taps * k}] = {{" + ", ".join(c_literal(v, "float32") for v in filt.ravel()) + "};",
             f"  const i64 p = (i64)blockIdx.x * {BLOCK} + threadIdx.x;",
             f"  if (p >= {pixels}) return;",
             f"  const i64 n = p / {oh * ow};",
             f"  const int r = (int)(p - n * {oh * ow});",
             f"  const int oy = r / {ow}, ox = r - oy * {ow};",
             f"  const {c_type(dt_x, node)}* xn = {px} + n * {h * w_in * c}LL;",
             f"  float xv[{taps}];",
             "#pragma unroll",
             f"  for (int i = 0; i < {kh}; ++i) {{",
             f"    const int iy = oy * {sh} - {top} + i * {dh};",
             "#pragma unroll",
             f"    for (int j = 0; j < {kw}; ++j) {{",
             f"      const int ix = ox * {sw} - {left} + j * {dw};",
             f"      const bool in = iy >= 0 && iy < {h} && ix >= 0 && ix < {w_in};",
             "#pragma unroll",
             f"      for (int ch = 0; ch < {c}; ++ch) "
             f"xv[(i * {kw} + j) * {c} + ch] = in ? (float)xn[(iy * {w_in} + ix) * {c} + ch] : 0.0f;",
             "    }",
             "  }"]
    b_vals = _const(graph, bias)
    if bias and b_vals is None:
        pb = wr.buffer(bias, graph.tensor(bias).dtype)
        init = f"(float){pb}[o]"
        lines += [f"  float acc[{k}];", "#pragma unroll", f"  for (int o = 0; o < {k}; ++o) acc[o] = {init};"]
    else:
        b = np.asarray(b_vals, np.float32).ravel() if bias else np.zeros(k, np.float32)
        lines.append(f"  float acc[{k}] = {{" + ", ".join(c_literal(v, "float32") for v in b) + "};")
    lines += ["#pragma unroll",
              f"  for (int t = 0; t < {taps}; ++t) {{",
              "#pragma unroll",
              f"    for (int o = 0; o < {k}; ++o) acc[o] = fmaf(xv[t], w_[t * {k} + o], acc[o]);",
              "  }"]
    ct_y = c_type(dt_y, node)
    lines.append(f"  {ct_y}* yp = {py} + p * {k};")
    if pz:
        lines += [f"  const {c_type(graph.tensor(residual).dtype, node)}* zp = {pz} + p * {k};",
                  "#pragma unroll", f"  for (int o = 0; o < {k}; ++o) acc[o] += (float)zp[o];"]
    act = node.attrs.get("activation", "none")
    if act != "none":
        body, names = program_c(activation_program(act, node.attrs.get("activation_params", []), "float32"),
                                ["s"], "a_")
        lines += ["#pragma unroll", f"  for (int o = 0; o < {k}; ++o) {{", "    const float s = acc[o];"]
        lines += [f"    {b}" for b in body] + [f"    acc[o] = {names[-1]};", "  }"]
    vec = vector_length([dt_y])
    if k % vec == 0:
        vt = f"tl_vec<{ct_y}, {vec}>"
        lines += [f"  if ((reinterpret_cast<unsigned long long>({py}) & 15ULL) == 0) {{",
                  "#pragma unroll",
                  f"    for (int o = 0; o < {k}; o += {vec}) {{",
                  f"      {vt} v;",
                  "#pragma unroll",
                  f"      for (int e = 0; e < {vec}; ++e) v.v[e] = ({ct_y})acc[o + e];",
                  f"      *reinterpret_cast<{vt}*>(yp + o) = v;",
                  "    }",
                  "    return;",
                  "  }"]
    lines += ["#pragma unroll", f"  for (int o = 0; o < {k}; ++o) yp[o] = ({ct_y})acc[o];"]
    return wr.finish("\n".join(lines), (LaunchDim(dim_prod([n_d, oh, ow]), BLOCK),), (BLOCK, 1, 1))
