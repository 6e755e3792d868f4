"""A generated kernel for depthwise convolutions (``tftrt.FusedConv`` with one filter per channel).

Why not cuDNN: a depthwise conv does about 2·kH·kW FLOPs per element it reads, so it is
bound by memory traffic, and cuDNN's legacy NHWC path runs it as a grouped convolution at
a small fraction of HBM bandwidth (MobileNetV2 spends most of its time there), plus a
padded copy of the input for every asymmetric ("same", stride 2) padding. One pass of this
kernel reads each input element once from HBM (neighbouring rows meet again in L2) and
writes each output once, with the padding as bounds checks and bias, residual and
activation applied in registers.

Why this tiling. A kernel that gives each thread ``VEC`` channels of one output pixel is
instruction-bound, not memory-bound: per pixel it loads kH·kW input vectors, kH·kW·VEC
scalar filter taps (the OHWI filter ``[C, kH, kW, 1]`` keeps one channel's taps together,
so the ``VEC`` channels of one tap are kH·kW elements apart), converts all of them and
splits a 64-bit flat index three times. Here:

- a thread computes ``VEC`` channels (a 16-byte vector: 4 floats or 8 halves, or 1 when C
  is not a multiple of it) of ``P`` neighbouring output pixels along x. Per filter row it
  streams the input columns the P outputs need, left to right, loading and widening each
  one once and adding it into every (pixel, tap) pair that uses it — a sliding window: for
  3x3 stride 1, P=4 reads 6 columns per row instead of 12. A tap's weights are read when
  the stream first needs them, so what stays live is the P·VEC accumulators, the taps
  still ahead of the window and one column, not the whole filter: big kernels and large
  dilations need no register cache of their own, and P only shrinks (:func:`depthwise_tiling`)
  when stride × width would keep too many taps live at once.
- the block's filter slice is staged once into shared memory, widened to float and
  tap-major (``[tap][channel]``, the two float4 halves of a half-precision group in
  separate planes), so a thread reads one tap of its channels with one or two conflict-free
  16-byte shared loads instead of VEC scalar global loads and conversions per tap (a
  warp's lanes span up to 32 channel groups, so those scalar loads touch as many cache
  lines each). Caching the thread's own OHWI block in registers instead would hold all
  kH·kW·VEC taps at once (72 floats for 3x3 half) beside the accumulators. The staging
  is amortised over every output of the block (P·VEC·threads ≫ channels·taps).
- the grid carries the coordinates: ``blockIdx.x`` is a tile of ``RB`` output rows of the
  flattened ``N·OH`` (the only unbounded dim, and x allows 2^31-1 blocks), ``blockIdx.y``
  the channel block, ``blockIdx.z`` a run of x-tiles; the block is ``(CGB channel groups,
  XB x-tiles, RB rows)``, so a warp's lanes read neighbouring channel vectors of one
  pixel (coalesced). One 64-bit division by OH (a constant unless symbolic) per thread
  splits the row into image and y; all per-pixel arithmetic is 32-bit when the image's
  extents provably fit, and the x-tiles are walked in a loop that covers the width when
  it is symbolic (``grid.z`` = 1) or wider than ``grid.z`` allows.
- 16-byte activations travel as four 32-bit words: a padding tap is a predicated load into
  zeroed registers, halves widen with one instruction each and narrow in pairs
  (``cvt.rn.{f16,bf16}x2.f32``, sm_80+ like the rest of the generated code), and each
  output vector is one ``st.global.v4``. Vectors of 2-byte structs cost byte permutes per
  element and come out as split stores.

For MobileNetV2's block_2 depthwise (56x56x144, fp16) a thread does 18 16-byte input
loads, 18 16-byte shared loads of taps, 4 16-byte stores and 288 FMAs for 32 outputs —
about 920 instructions, 98 registers, no spills (ptxas, sm_90) — where one thread per
pixel did 9 vector and 72 scalar loads, 144 conversions and 64-bit index divisions for 8.

Semantics are ``fused_ops.fused_conv``'s: taps outside the input read zeros (the
reference's zero padding), the float sum adds bias then residual, the activation runs in
float, and the output is rounded once. An input activation (``input_activation``: the
conv fusion moves a 1×1 conv's ReLU6 here, as cuBLASLt has no clip epilogue) is applied
to each in-image column once, as it is loaded: to the 32-bit words of a 16-byte vector
with PTX ``max/min.NaN`` (on packed halves, half an instruction per element and bound),
to scalars in float through its activation program. Its bounds are rounded to X's dtype
as the reference rounds them, padding taps keep their zeros, and a NaN stays NaN
(``.NaN``, ``tl_max``/``tl_min``) as under ``np.clip``. Vector accesses assume 16-byte
aligned buffers, as the memory plan (256-byte offsets), packed weights and TF's allocator
give; offsets are multiples of VEC elements because C is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt_lite.codegen.elementwise import activation_program, program_c
from tftrt_lite.codegen.kernel import (
    Dim, KernelSpec, KernelWriter, LaunchDim, c_type, compute_type, dim_mul, dim_prod, vector_length)
from tftrt_lite.engine import ir
from tftrt_lite.engine.fused_ops import conv_input_activation, conv_operands
from tftrt_lite.engine.reference import np_dtype

#: Threads per block the tiling fills up to (more blocks per SM hide load latency better
#: than bigger ones, and 256 keeps the weight staging a small share of the block's work).
THREADS = 256
#: Output pixels per thread along x: 4 already cuts the input loads of a 3x3 stride-1 row
#: from 3 to 1.5 per pixel, and its 32 float accumulators (half precision) keep a 3x3
#: kernel near 100 registers without spills (ptxas, sm_90): two 252-thread blocks per SM,
#: each thread with a row's 96 bytes of loads in flight, which covers HBM latency.
PIXELS = 4
#: Floats a thread may keep live across its column stream (accumulators, taps still ahead
#: of the window, the current column): beyond it P halves rather than spill.
LIVE_FLOATS = 96
#: Channel groups per block at most: 32 vectors are one warp's fully coalesced 512 bytes.
MAX_BLOCK_GROUPS = 32
#: Shared memory for the staged filter slice the block size aims at, and the static limit
#: a one-group block may use (beyond it the conv goes to cuDNN).
SMEM_TARGET = 16 * 1024
SMEM_MAX = 48 * 1024
#: CUDA's limits on gridDim.y / gridDim.z and blockDim.z.
GRID_YZ_MAX = 65535
BLOCK_Z_MAX = 64


def is_pointwise(graph: ir.Graph, node: ir.Node) -> bool:
    """A ``tftrt.FusedConv`` that is a plain GEMM over NHWC pixels: 1×1 filter, stride 1,
    no padding, one group, static channel counts — what the builder runs as a cuBLASLt
    GEMM, and so what the conv fusion knows has no clip epilogue."""
    if node.op != "tftrt.FusedConv" or int(node.attrs.get("group", 1)) != 1:
        return False
    x_shape, w_shape = graph.tensor(node.inputs[0]).shape, graph.tensor(node.inputs[1]).shape
    return (x_shape is not None and w_shape is not None and len(x_shape) == 4 and len(w_shape) == 4
            and tuple(w_shape[1:3]) == (1, 1) and all(isinstance(d, int) for d in (w_shape[0], w_shape[3]))
            and [int(v) for v in node.attrs.get("strides", [1, 1])] == [1, 1]
            and not any(int(v) for v in node.attrs.get("pads", [0, 0, 0, 0])))


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


def depthwise_kernel_runs(graph: ir.Graph, node: ir.Node) -> bool:
    """Whether :func:`emit_depthwise_conv` generates ``node``'s kernel in whichever float
    type the precision pass gives it (16-byte vectors of 4 or 8 elements, or scalars):
    a pass that hands a conv work only this kernel can do (an input activation) must know
    that the conv will not fall back to cuDNN in some precision."""
    if not is_depthwise(graph, node):
        return False
    channels = graph.tensor(node.inputs[0]).shape[3]
    _, kh, kw, _ = graph.tensor(node.inputs[1]).shape
    out_w = graph.tensor(node.outputs[0]).shape[2]
    sw, dw = int(node.attrs["strides"][1]), int(node.attrs["dilations"][1])
    stage_bytes = _stage_bytes(graph.tensor(node.outputs[0]).dtype, node)
    return all(depthwise_tiling(channels, vec, (kh, kw), sw, dw, out_w, stage_bytes) is not None
               for vec in (1, 4, 8) if channels % vec == 0)


def _stage_bytes(dtype: str, node: ir.Node) -> int:
    """Bytes per staged filter tap: taps are widened to the compute type (float for halves)."""
    return 4 if compute_type(dtype, node) == "float" else np.dtype(dtype).itemsize


@dataclass(frozen=True)
class Tiling:
    """How one depthwise kernel splits its output among threads and blocks.

    A thread computes ``vec`` channels of ``pixels`` neighbouring output pixels of one
    row; a block is ``block_groups`` × ``block_tiles`` × ``block_rows`` threads
    (threadIdx x, y, z); the grid is ``ceil(N·OH / block_rows)`` × ``channel_blocks`` ×
    ``tile_blocks`` (``tile_blocks`` 1 when the width is symbolic: blocks then loop over it).
    """

    vec: int
    pixels: int
    block_groups: int
    block_tiles: int
    block_rows: int
    channel_blocks: int
    tile_blocks: int

    @property
    def threads(self) -> int:
        return self.block_groups * self.block_tiles * self.block_rows

    @property
    def block_channels(self) -> int:
        return self.block_groups * self.vec


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def depthwise_tiling(channels: int, vec: int, kernel: Tuple[int, int], stride_w: int, dilation_w: int,
                     out_w: Dim, stage_bytes: int = 4) -> Optional[Tiling]:
    """The tiling for a depthwise conv over ``channels`` (a multiple of ``vec``) with a
    ``kernel`` (kH, kW) filter whose taps are staged as ``stage_bytes``-byte values (the
    compute type), or None when even a one-group block's filter slice overflows shared
    memory (a kernel beyond ~39x39 in half precision: cuDNN's)."""
    taps = kernel[0] * kernel[1]
    if taps * vec * stage_bytes > SMEM_MAX:
        return None
    pixels = PIXELS
    if isinstance(out_w, int):  # no thread tile wider than the row (rounded to a power of two)
        while pixels > 1 and pixels // 2 >= out_w:
            pixels //= 2

    def live_taps(p: int) -> int:  # tap j is held from column j·dw to (p-1)·sw + j·dw
        return min(kernel[1], (p - 1) * stride_w // dilation_w + 1)

    while pixels > 1 and vec * (pixels + live_taps(pixels) + 1) > LIVE_FLOATS:
        pixels //= 2
    groups = channels // vec
    cap = max(1, min(MAX_BLOCK_GROUPS, SMEM_TARGET // (taps * vec * stage_bytes)))
    channel_blocks = _ceil_div(groups, cap)
    if channel_blocks > GRID_YZ_MAX:
        return None
    block_groups = _ceil_div(groups, channel_blocks)  # balanced: the last block is (nearly) full
    most_tiles = THREADS // block_groups
    if isinstance(out_w, int):
        tiles = _ceil_div(out_w, pixels)
        block_tiles = _ceil_div(tiles, _ceil_div(tiles, most_tiles))
        tile_blocks = min(_ceil_div(tiles, block_tiles), GRID_YZ_MAX)
    else:
        block_tiles, tile_blocks = most_tiles, 1
    block_rows = max(1, min(BLOCK_Z_MAX, THREADS // (block_groups * block_tiles)))
    return Tiling(vec, pixels, block_groups, block_tiles, block_rows, channel_blocks, tile_blocks)


def _stream(pixels: int, kw: int, sw: int, dw: int) -> List[Tuple[int, List[Tuple[int, int]]]]:
    """The input columns one filter row reads, in order, each with the (pixel, tap) pairs
    that use it: column ``p·sw + j·dw`` (relative to the tile's first input column) feeds
    output pixel p through tap j. Only columns some pair uses appear (large dilations)."""
    uses: Dict[int, List[Tuple[int, int]]] = {}
    for p in range(pixels):
        for j in range(kw):
            uses.setdefault(p * sw + j * dw, []).append((p, j))
    return sorted(uses.items())


#: Bytes per element of the types that travel as 16-byte vectors.
_WIDTH = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Four 32-bit words: how a 16-byte vector is loaded, zero-filled and stored. A vector of
#: 2-byte structs makes NVVM split selects and stores into 16-bit pieces (byte permutes,
#: four 32-bit stores), which words avoid.
_WORDS = "tl_vec<unsigned, 4>"


def _indent(lines: List[str], indent: str) -> List[str]:
    return [ln if ln.startswith("#") else indent + ln for ln in lines]


def _widen(dtype: str, ct: str, vec: int, dst: str, src: str, cond: Optional[str] = None,
           on_load: Sequence[str] = ()) -> List[str]:
    """C statements declaring ``ct dst[vec]``: the ``vec`` elements of ``dtype`` at pointer
    ``src``, or zeros where ``cond`` is false (a tap in the padding). A 16-byte vector is
    one load of words and one instruction per element to widen it; anything else loads
    element by element. ``on_load``: statements run on the loaded words ``{dst}_w`` of a
    16-byte vector under ``cond``, before widening (never on padding zeros)."""
    if vec * _WIDTH.get(dtype, 0) != 16:
        value = f"({ct})({src})[v]"
        value = f"{cond} ? {value} : {ct}(0)" if cond else value
        return [f"{ct} {dst}[{vec}];", "#pragma unroll", f"for (int v = 0; v < {vec}; ++v) {dst}[v] = {value};"]
    words = f"{dst}_w"
    load = f"*reinterpret_cast<const {_WORDS}*>({src})"
    if not cond:
        lines = [f"const {_WORDS} {words} = {load};"]
    elif on_load:
        lines = [f"{_WORDS} {words} = {{}};", f"if ({cond}) {{", f"  {words} = {load};",
                 *(f"  {s}" for s in on_load), "}"]
    else:
        lines = [f"{_WORDS} {words} = {{}};", f"if ({cond}) {words} = {load};"]
    lines += [f"float {dst}[{vec}];", "#pragma unroll", "for (int q = 0; q < 4; ++q) "]
    if dtype == "float32":
        lines[-1] += f"{dst}[q] = __uint_as_float({words}.v[q]);"
    elif dtype == "float16":
        lines[-1] += (f'asm("{{.reg .b16 l, h; mov.b32 {{l, h}}, %2; cvt.f32.f16 %0, l; cvt.f32.f16 %1, h;}}" '
                      f': "=f"({dst}[2 * q]), "=f"({dst}[2 * q + 1]) : "r"({words}.v[q]));')
    else:  # bfloat16: the upper half of a float
        lines[-1] += (f"{{ {dst}[2 * q] = __uint_as_float({words}.v[q] << 16); "
                      f"{dst}[2 * q + 1] = __uint_as_float({words}.v[q] & 0xffff0000u); }}")
    return lines


#: The PTX min/max of a 32-bit word of each 16-byte vector type that give NaN when an
#: operand is NaN, as ``tl_min``/``tl_max`` do (sm_80+, like the rest of the generated code).
_WORD_MINMAX = {"float32": "f32", "float16": "f16x2", "bfloat16": "bf16x2"}


def _vector_input_activation(dtype: str, name: str, params: Sequence[float], words: str) -> List[str]:
    """C statements applying input activation ``name`` (relu or clip) to a loaded 16-byte
    vector of ``dtype``, ``words``: per 32-bit word one max (and for clip one min) against
    bounds rounded to ``dtype`` as the reference rounds them (a half bound fills both
    halves of a word).

    Why on the words and not on the widened floats (``activation_program``): a float clip
    costs two compare-and-selects per element (``tl_max``/``tl_min`` keep NaN), which took
    MobileNetV2's block_2 kernel (fp16) from 920 to 1560 instructions per thread (sm_90
    SASS) — in a kernel that is issue-bound, that would give back much of the pass over
    memory the input activation saves. On packed halves it is 1080."""
    lo, hi = (0.0, None) if name == "relu" else params
    t = _WORD_MINMAX[dtype]

    def word(v: float) -> str:  # the bound's bits, in each element of a word
        bits = np.asarray(v, np_dtype(dtype))
        return f"0x{int(bits.view(np.uint32)):08x}u" if dtype == "float32" else \
            f"0x{int(bits.view(np.uint16)) * 0x10001:08x}u"

    ops = [("max", word(lo))] + ([("min", word(hi))] if hi is not None else [])
    return [f'asm("{op}.NaN.{t} %0, %0, %1;" : "+r"({words}.v[{q}]) : "r"({b}));' for q in range(4) for op, b in ops]


def _narrow(dtype: str, vec: int, dst: str, src: str) -> List[str]:
    """C statements storing the values ``src[0..vec)`` to pointer ``dst`` as ``dtype``,
    rounded to nearest even (what ``tl_half``/``tl_bf16`` do). When they fill 16 bytes it
    is one ``st.global.v4``: NVVM splits a store of a word vector into 32-bit stores once
    the address involves 64-bit image offsets, and only an explicit instruction stays whole
    (the stored values depend on the loads of the same pixel, so no ordering is lost)."""
    if vec * _WIDTH.get(dtype, 0) != 16:
        return ["#pragma unroll", f"for (int v = 0; v < {vec}; ++v) ({dst})[v] = {src}[v];"]
    lines = ["unsigned o_w[4];", "#pragma unroll", "for (int q = 0; q < 4; ++q) "]
    if dtype == "float32":
        lines[-1] += f"o_w[q] = __float_as_uint({src}[q]);"
    else:  # the pair's first element is the low half
        cvt = "cvt.rn.f16x2.f32" if dtype == "float16" else "cvt.rn.bf16x2.f32"
        lines[-1] += f'asm("{cvt} %0, %1, %2;" : "=r"(o_w[q]) : "f"({src}[2 * q + 1]), "f"({src}[2 * q]));'
    return lines + [f'asm volatile("st.global.v4.b32 [%0], {{%1, %2, %3, %4}};" :: "l"({dst}), '
                    '"r"(o_w[0]), "r"(o_w[1]), "r"(o_w[2]), "r"(o_w[3]));']


def single_group_conv_shapes(graph: ir.Graph, node: ir.Node) -> Optional[Tuple[tuple, tuple, tuple]]:
    """(X, W, Y) shapes of a one-group ``tftrt.FusedConv`` without an input activation whose
    filter is a constant and whose shapes are static but for the batch — what the generated
    stem and tap kernels need before their own limits — else None."""
    if node.op != "tftrt.FusedConv" or int(node.attrs.get("group", 1)) != 1:
        return None
    if conv_input_activation(node.attrs)[0] != "none":
        return None
    x, wt, _, _, y = conv_operands(node)
    xs, ws, ys = (graph.tensor(t).shape for t in (x, wt, y))
    if xs is None or ws is None or ys is None or len(xs) != 4 or len(ws) != 4 or graph.const(wt) is None:
        return None
    if not all(isinstance(d, int) for d in list(xs[1:]) + list(ws) + list(ys[1:])):
        return None
    return tuple(xs), tuple(ws), tuple(ys)


def emit_depthwise_conv(graph: ir.Graph, node: ir.Node) -> Optional[KernelSpec]:
    """The kernel computing depthwise ``node``, or None when it is not depthwise (or its
    filter is too large to stage, see :func:`depthwise_tiling`)."""
    if not is_depthwise(graph, node):
        return None
    x, wt, bias, residual, y = conv_operands(node)
    n_d, h_d, w_d, channels = graph.tensor(x).shape
    _, oh_d, ow_d, _ = graph.tensor(y).shape
    _, kh, kw, _ = graph.tensor(wt).shape
    sh, sw = (int(v) for v in node.attrs["strides"])
    dh, dw = (int(v) for v in node.attrs["dilations"])
    top, left = int(node.attrs["pads"][0]), int(node.attrs["pads"][1])
    dts = {t: graph.tensor(t).dtype for t in (x, wt, bias, residual, y) if t}
    ct = compute_type(dts[y], node)
    vec = vector_length([dts[t] for t in (x, residual, y) if t])
    vec = vec if channels % vec == 0 else 1
    tl = depthwise_tiling(channels, vec, (kh, kw), sw, dw, ow_d, _stage_bytes(dts[y], node))
    if tl is None:
        return None
    P, cgb, xb, rb, cblk, taps = tl.pixels, tl.block_groups, tl.block_tiles, tl.block_rows, tl.block_channels, kh * kw
    sv = min(vec, 4)   # elements per shared-memory read of a tap
    planes = vec // sv

    w = KernelWriter("dwconv", node)
    px, pw = w.buffer(x, dts[x]), w.buffer(wt, dts[wt])
    pb = w.buffer(bias, dts[bias]) if bias else None
    pz = w.buffer(residual, dts[residual]) if residual else None
    py = w.buffer(y, dts[y], writable=True)

    def dim(d: Dim) -> str:  # static dims as plain ints, so 32-bit math stays 32-bit
        return str(d) if isinstance(d, int) else w.dim(d)

    static = all(isinstance(d, int) for d in (h_d, w_d, oh_d, ow_d))
    # The largest in-image offset formed, valid column or not: rows < H, columns within the
    # padded window of the last (partial) tile.
    span = (h_d * w_d + (ow_d + P) * sw + kw * dw + w_d) * channels if static else 0
    it = "int" if static and max(span, (oh_d * ow_d + P) * channels) < 2 ** 31 else "i64"
    H, W, OH, OW = dim(h_d), dim(w_d), dim(oh_d), dim(ow_d)
    rows = w.dim(dim_mul(n_d, oh_d))
    in_image, out_image = dim(dim_prod([h_d, w_d, channels])), dim(dim_prod([oh_d, ow_d, channels]))
    vw = f"tl_vec<{ct}, {sv}>"
    partial = tl.channel_blocks * cblk != channels
    nchan = f"min({cblk}, {channels} - cb)" if partial else str(cblk)

    lines = [f"  __shared__ __align__(16) {ct} s_w[{taps * cblk}];",
             f"  const int cb = blockIdx.y * {cblk};",
             f"  const int tid = threadIdx.x + {cgb} * (threadIdx.y + {xb} * threadIdx.z);",
             "  // stage the block's taps widened, [tap][plane][group][element of the plane]",
             f"  for (int cl = tid; cl < {nchan}; cl += {tl.threads}) {{",
             f"    const int o = ((cl % {vec}) / {sv} * {cgb} + cl / {vec}) * {sv} + cl % {sv};",
             f"    const {c_type(dts[wt], node)}* src = {pw} + (i64)(cb + cl) * {taps};",
             "#pragma unroll",
             f"    for (int t = 0; t < {taps}; ++t) s_w[t * {cblk} + o] = ({ct})src[t];",
             "  }",
             "  __syncthreads();",
             f"  const int c = cb + threadIdx.x * {vec};"]
    if partial:
        lines.append(f"  if (c >= {channels}) return;")
    lines += [f"  const unsigned long long row = (unsigned long long)blockIdx.x * {rb} + threadIdx.z;",
              f"  if (row >= (unsigned long long){rows}) return;",
              f"  const i64 n = (i64)(row / (unsigned long long){OH});",
              f"  const {it} oy = ({it})((i64)row - n * {OH});",
              f"  const {c_type(dts[x], node)}* xn = {px} + n * {in_image} + c;",
              f"  {c_type(dts[y], node)}* yn = {py} + n * {out_image} + c;"]
    if pz:
        lines.append(f"  const {c_type(dts[residual], node)}* zn = {pz} + n * {out_image} + c;")
    if pb:
        lines += _indent(_widen(dts[bias], ct, vec, "bv", f"{pb} + c"), "  ")
    lines.append(f"  const {vw}* ws = reinterpret_cast<const {vw}*>(s_w) + threadIdx.x;")
    if isinstance(ow_d, int):
        tiles = str(_ceil_div(ow_d, P))
    else:
        lines.append(f"  const i64 tiles = ({OW} + {P - 1}) / {P};")
        tiles = "tiles"
    stream = _stream(P, kw, sw, dw)
    lines += [f"  for ({it} xt = blockIdx.z * {xb} + threadIdx.y; xt < {tiles}; xt += {xb} * gridDim.z) {{",
              f"    const {it} ox0 = xt * {P};",
              f"    const {it} ix0 = ox0 * {sw} - {left};"]
    lines += [f"    const bool k{u} = ix0 + {u} >= 0 && ix0 + {u} < {W};" for u, _ in stream]
    lines += [f"    {ct} acc[{P * vec}];", "#pragma unroll", f"    for (int a = 0; a < {P * vec}; ++a) acc[a] = 0;",
              "#pragma unroll",
              f"    for (int i = 0; i < {kh}; ++i) {{",
              f"      const {it} iy = oy * {sh} - {top} + i * {dh};",
              f"      if (iy < 0 || iy >= {H}) continue;",
              f"      const {it} xo = (iy * {W} + ix0) * {channels};",
              f"      const {vw}* wr = ws + i * {kw * planes * cgb};"]
    # the input activation applies to in-image values only: padding taps stay zero, not act(0);
    # on the loaded words of a 16-byte vector, else in float on the widened scalars
    in_act, in_params = conv_input_activation(node.attrs)
    act_words = in_act != "none" and vec * _WIDTH.get(dts[x], 0) == 16
    act_floats = in_act != "none" and not act_words
    seen = set()
    for u, pairs in stream:
        on_load = _vector_input_activation(dts[x], in_act, in_params, f"xf{u}_w") if act_words else ()
        lines += _indent(_widen(dts[x], ct, vec, f"xf{u}", f"xn + (xo + {u * channels})", f"k{u}", on_load),
                         "      ")
        if act_floats:
            body, names = program_c(activation_program(in_act, in_params, dts[x]), [f"xf{u}[v]"], "i_")
            lines += [f"      if (k{u}) {{", "#pragma unroll", f"        for (int v = 0; v < {vec}; ++v) {{"]
            lines += [f"          {b}" for b in body] + [f"          xf{u}[v] = {names[-1]};", "        }", "      }"]
        for p, j in pairs:
            if j not in seen:  # a tap is read from shared memory where the stream first needs it
                seen.add(j)
                lines.append(f"      {vw} wt{j}[{planes}];")
                lines += [f"      wt{j}[{h}] = wr[{(j * planes + h) * cgb}];" for h in range(planes)]
            fma = f"acc[{p * vec} + v] += xf{u}[v] * wt{j}[v / {sv}].v[v % {sv}];"
            lines += ["#pragma unroll", f"      for (int v = 0; v < {vec}; ++v) {fma}"]
    lines.append("    }")
    act = node.attrs.get("activation", "none")
    if act != "none":
        body, names = program_c(activation_program(act, node.attrs.get("activation_params", []), "float32"),
                                ["s"], "a_")
    tail_guard = not (isinstance(ow_d, int) and ow_d % P == 0)
    for p in range(P):
        lines.append(f"    if (ox0 + {p} < {OW}) {{" if tail_guard else "    {")
        lines.append(f"      const {it} yo = (oy * {OW} + ox0 + {p}) * {channels};")
        if pz:
            lines += _indent(_widen(dts[residual], ct, vec, "zf", "zn + yo"), "      ")
        lines += [f"      {ct} ys[{vec}];", "#pragma unroll", f"      for (int v = 0; v < {vec}; ++v) {{",
                  f"        {ct} s = acc[{p * vec} + v]{' + bv[v]' if pb else ''}{' + zf[v]' if pz else ''};"]
        if act != "none":
            lines += [f"        {b}" for b in body] + [f"        s = {names[-1]};"]
        lines += ["        ys[v] = s;", "      }"]
        lines += _indent(_narrow(dts[y], vec, "yn + yo", "ys"), "      ")
        lines.append("    }")
    lines.append("  }")
    grid = (LaunchDim(dim_mul(n_d, oh_d), rb), LaunchDim(tl.channel_blocks), LaunchDim(tl.tile_blocks))
    return w.finish("\n".join(lines), grid, (cgb, xb, rb))
