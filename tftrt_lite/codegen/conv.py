"""A generated kernel for depthwise convolutions (``tftrt.FusedConv`` with one filter per channel).

Why not cuDNN: a depthwise conv does about 2·kH·kW FLOPs per element it reads, so it is
bound by memory traffic, and cuDNN's legacy NHWC path runs it as a grouped convolution at
a small fraction of HBM bandwidth (MobileNetV2 spends most of its time there), plus a
padded copy of the input for every asymmetric ("same", stride 2) padding. One pass of this
kernel reads each input element kH·kW times from L1/L2 and writes each output once, with
the padding as bounds checks and bias, residual and activation applied in registers.

Each thread computes ``VEC`` neighbouring channels of one output pixel, so loads and
stores of the NHWC activations are 16-byte vectors when the channel count allows (4
floats or 8 halves) and coalesced across the warp; filter taps (OHWI, ``[C, kH, kW, 1]``)
are small and stay in cache. Arithmetic is float for every storage type.
"""
from __future__ import annotations

from typing import Optional

from tftrt_lite.codegen.elementwise import activation_program, program_c
from tftrt_lite.codegen.kernel import (
    KernelSpec, KernelWriter, c_type, compute_type, dim_mul, dim_prod, grid_1d, unravel, vector_length)
from tftrt_lite.engine import ir

BLOCK = 256


def is_depthwise(graph: ir.Graph, node: ir.Node) -> bool:
    """A ``tftrt.FusedConv`` with one static-size filter per input channel."""
    if node.op != "tftrt.FusedConv":
        return False
    x_shape, w_shape = graph.tensor(node.inputs[0]).shape, graph.tensor(node.inputs[1]).shape
    if x_shape is None or w_shape is None or len(x_shape) != 4 or len(w_shape) != 4:
        return False
    channels = x_shape[3]
    return (isinstance(channels, int) and channels > 1 and int(node.attrs.get("group", 1)) == channels
            and tuple(w_shape) == (channels, w_shape[1], w_shape[2], 1)
            and all(isinstance(d, int) for d in w_shape))


def emit_depthwise_conv(graph: ir.Graph, node: ir.Node) -> Optional[KernelSpec]:
    """The kernel computing depthwise ``node``, or None when it is not depthwise."""
    if not is_depthwise(graph, node):
        return None
    x, wt = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    residual = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
    y = node.outputs[0]
    n_d, h_d, w_d, channels = graph.tensor(x).shape
    _, oh_d, ow_d, _ = graph.tensor(y).shape
    _, kh, kw, _ = graph.tensor(wt).shape
    sh, sw = (int(v) for v in node.attrs["strides"])
    dh, dw = (int(v) for v in node.attrs["dilations"])
    top, left = int(node.attrs["pads"][0]), int(node.attrs["pads"][1])
    dt = graph.tensor(y).dtype
    t, ct = c_type(dt, node), compute_type(dt, node)
    vec = vector_length([dt])
    vec = vec if channels % vec == 0 else 1

    w = KernelWriter("dwconv", node)
    px, pw = w.buffer(x, graph.tensor(x).dtype), w.buffer(wt, graph.tensor(wt).dtype)
    pb = w.buffer(bias, graph.tensor(bias).dtype) if bias else None
    pz = w.buffer(residual, graph.tensor(residual).dtype) if residual else None
    py = w.buffer(y, dt, writable=True)
    H, W, OH, OW = w.dim(h_d), w.dim(w_d), w.dim(oh_d), w.dim(ow_d)
    groups = channels // vec
    total = dim_mul(dim_prod([n_d, oh_d, ow_d]), groups)
    vt = f"tl_vec<{t}, {vec}>"
    lines = [f"  const i64 e = (i64)blockIdx.x * {BLOCK} + threadIdx.x;",
             f"  if (e >= {w.dim(total)}) return;",
             unravel("e", ["", OH, OW, str(groups)], ["n", "oy", "ox", "g"]),
             f"  const int c = (int)g * {vec};",
             f"  {ct} acc[{vec}];",
             "#pragma unroll",
             f"  for (int v = 0; v < {vec}; ++v) acc[v] = 0;",
             f"  for (int i = 0; i < {kh}; ++i) {{",
             f"    const i64 iy = oy * {sh} - {top} + i * {dh};",
             f"    if (iy < 0 || iy >= {H}) continue;",
             f"    for (int j = 0; j < {kw}; ++j) {{",
             f"      const i64 ix = ox * {sw} - {left} + j * {dw};",
             f"      if (ix < 0 || ix >= {W}) continue;",
             f"      const {vt} xv = *reinterpret_cast<const {vt}*>({px} + ((n * {H} + iy) * {W} + ix) * {channels} + c);",
             "#pragma unroll",
             f"      for (int v = 0; v < {vec}; ++v) acc[v] += ({ct})xv.v[v] * ({ct}){pw}[((c + v) * {kh} + i) * {kw} + j];",
             "    }",
             "  }",
             f"  const i64 out = ((n * {OH} + oy) * {OW} + ox) * {channels} + c;"]
    if pz:
        lines.append(f"  const {vt} zv = *reinterpret_cast<const {vt}*>({pz} + out);")
    lines += [f"  {vt} yv;", "#pragma unroll", f"  for (int v = 0; v < {vec}; ++v) {{",
              f"    {ct} s = acc[v]" + (f" + ({ct}){pb}[c + v]" if pb else "") + (f" + ({ct})zv.v[v]" if pz else "") + ";"]
    act = node.attrs.get("activation", "none")
    if act != "none":
        body, names = program_c(activation_program(act, node.attrs.get("activation_params", []), "float32"),
                                ["s"], "a_")
        lines += ["    " + b for b in body] + [f"    s = {names[-1]};"]
    lines += ["    yv.v[v] = s;", "  }", f"  *reinterpret_cast<{vt}*>({py} + out) = yv;"]
    return w.finish("\n".join(lines), grid_1d(total, BLOCK), (BLOCK, 1, 1))
