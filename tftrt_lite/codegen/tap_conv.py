"""A generated implicit-GEMM convolution on tensor cores for 16 input channels: one
``mma.m16n8k16`` k-step per filter tap.

Why: the space-to-depth stem (``engine/passes/space_to_depth.py``) turns ResNet's 7x7
stride-2 conv over RGB into a 4x4 stride-1 conv over 16 channels, and cuDNN's legacy API
ran that at 15–18 % of its roofline on the H200 (436 µs with its heuristic choice, 371 µs
with every algorithm timed, against 326 µs for the original 7x7 conv), so the rewrite
only pays with a kernel of its own. With exactly 16 channels a tap *is* one k-step of
the mma: the A fragment is the 16 channels of 16 output pixels' input pixel at that tap,
read straight from global memory as 32-bit words (two channels each), and the stride-1
unpadded geometry needs no bounds checks inside the image.

- A warp computes 32 output pixels (consecutive in N·Ho·Wo order, so tiles may cross
  rows) × all K output channels: two m-tiles of 16 pixels, K/8 accumulator tiles of
  ``m16n8`` each, fp32.
- The filter [K, kH, kW, 16] is copied once per block into shared memory, each output
  channel's row padded by 16 bytes so the 8 rows an ``ldmatrix`` phase reads fall in
  distinct bank groups. One ``ldmatrix.x4`` per tap and pair of n-tiles gives both
  n-tiles' B fragments, and both m-tiles use them: 128 bytes of shared-memory traffic per
  mma. A first version (16-pixel warp tiles, two 32-bit shared loads per mma: 256 bytes)
  ran ResNet's folded stem in 311 µs on the H200, bound by shared-memory bandwidth and
  the mma issue rate together.
- Blocks are persistent: at most ``BLOCKS_PER_SM`` per SM (what 128 registers per thread
  and 33 KB of shared memory let reside) do work, each warp striding over the pixel tiles,
  and blocks past that exit at once. Every block's filter copy reads the same 33 KB, so
  the copies queue on the few L2 slices that hold it: with one block per 256 pixels
  (6272 blocks at batch 128) the copies alone set the kernel's time (291 µs on the H200;
  removing its stores, its mma or its A loads changed nothing), 32 tiles per block took
  253 µs. The launch grid still has one block per ``TILES_PER_WARP`` tiles per warp, so
  a batch-1 stem spreads over 49 SMs. Other warps per block and blocks per SM
  (``VARIANTS``) are kernel variants the runtime times per input shape: on the H200 it
  chose 8 warps × 2 blocks at batch 32 and 128, 2 × 6 at batch 1, and ResNet50's
  batch-128 stem stayed at 242 µs, so the fixed cost is none of these. The tap loop is unrolled by 2, which bounds how many
  A loads ptxas hoists (fully unrolled, a 16-pixel version hoisted all 64 of ResNet's 16
  taps and took 222 registers per thread).
- Epilogue on the fp32 accumulator: bias, residual, activation (``fused_ops.fused_conv``),
  one rounding per value, 32-bit stores of channel pairs.

Which convs (:func:`tap_conv_runs`): ``tftrt.FusedConv``, one group, no input activation,
stride 1, dilation 1, no padding, float16 or bfloat16 activations and output, a constant
filter with exactly 16 input channels, K a multiple of 16 up to ``MAX_OUT_CHANNELS``
(accumulator registers), static H, W, Ho, Wo, and a filter that fits shared memory.
Buffers must be 4-byte aligned (the engine arena aligns to 256 bytes, TensorFlow's
allocator to at least 64) and the filter 16-byte aligned (plan weights are).
"""
from __future__ import annotations

from typing import Optional

from tftrt_lite.codegen.conv import single_group_conv_shapes
from tftrt_lite.codegen.elementwise import activation_program, program_c
from tftrt_lite.codegen.kernel import KernelSpec, KernelWriter, LaunchDim, c_type, dim_prod
from tftrt_lite.engine import ir
from tftrt_lite.engine.fused_ops import conv_operands

#: Input channels: one mma k-step.
CHANNELS = 16
#: Output channels at most: 2 · K/8 tiles of 4 fp32 accumulators per lane.
MAX_OUT_CHANNELS = 64
WARPS = 4
TILES_PER_WARP = 2
BLOCKS_PER_SM = 4
#: (warps per block, blocks per SM) of the variants the runtime times against the above.
VARIANTS = ((8, 2), (4, 2), (2, 6))
SHARED_LIMIT = 48 * 1024
_HALVES = {"float16": "f16", "bfloat16": "bf16"}


def fits(out_channels: int, taps: int) -> bool:
    """Whether a filter of ``out_channels`` × ``taps`` taps × 16 channels suits the kernel."""
    return out_channels % 16 == 0 and 16 <= out_channels <= MAX_OUT_CHANNELS \
        and _shared_bytes(out_channels, taps) <= SHARED_LIMIT


def _row_pitch(taps: int) -> int:
    """Shared-memory halves per output channel's filter row (16 bytes of padding)."""
    return taps * CHANNELS + 8


def _shared_bytes(out_channels: int, taps: int) -> int:
    return 2 * out_channels * _row_pitch(taps)


def tap_conv_runs(graph: ir.Graph, node: ir.Node) -> bool:
    """Whether :func:`emit_tap_conv` generates ``node``'s kernel."""
    shapes = single_group_conv_shapes(graph, node)
    if shapes is None:
        return False
    if [list(node.attrs[a]) for a in ("strides", "dilations", "pads")] != [[1, 1], [1, 1], [0, 0, 0, 0]]:
        return False
    x, wt, _, residual, y = conv_operands(node)
    dtype = graph.tensor(x).dtype
    if dtype not in _HALVES or any(graph.tensor(t).dtype != dtype for t in (wt, residual, y) if t):
        return False
    xs, (k, kh, kw, c), _ = shapes
    return c == CHANNELS == xs[3] and fits(k, kh * kw)


def emit_tap_conv(graph: ir.Graph, node: ir.Node) -> Optional[KernelSpec]:
    """The kernel computing ``node``, or None when :func:`tap_conv_runs` says no."""
    if not tap_conv_runs(graph, node):
        return None
    variants = [_emit(graph, node, warps, blocks) for warps, blocks in VARIANTS]
    return _emit(graph, node, WARPS, BLOCKS_PER_SM).with_variants(variants)


def _emit(graph: ir.Graph, node: ir.Node, warps: int, blocks_per_sm: int) -> KernelSpec:
    x, wt, bias, residual, y = conv_operands(node)
    n_d, h, w_in, _ = graph.tensor(x).shape
    k, kh, kw, _ = graph.tensor(wt).shape
    _, oh, ow, _ = graph.tensor(y).shape
    dtype = graph.tensor(x).dtype
    t = c_type(dtype, node)
    taps, pitch = kh * kw, _row_pitch(kh * kw)

    wr = KernelWriter("tapconv", node)
    px, pw = wr.buffer(x, dtype), wr.buffer(wt, dtype)
    pb = wr.buffer(bias, graph.tensor(bias).dtype) if bias else None
    pz = wr.buffer(residual, dtype) if residual else None
    py = wr.buffer(y, dtype, writable=True)
    pixels = wr.dim(dim_prod([n_d, oh, ow]))
    act = node.attrs.get("activation", "none")
    act_lines, names = program_c(activation_program(act, node.attrs.get("activation_params", []), "float32"),
                                 ["s"], "a_") if act != "none" else ([], ["s"])
    mt = _HALVES[dtype]
    lines = [
        f"  constexpr int K = {k}, TAPS = {taps}, KW = {kw}, PITCH = {pitch};",
        "  __shared__ __align__(16) unsigned short w_s[K * PITCH];",
        "  unsigned sms;",
        '  asm("mov.u32 %0, %%nsmid;" : "=r"(sms));',
        f"  const unsigned blocks = min(gridDim.x, sms * {blocks_per_sm}u);  // persistent: see the module docstring",
        "  if (blockIdx.x >= blocks) return;",
        "  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tg = lane & 3;",
        "  for (int i = tid; i < K * TAPS * 2; i += blockDim.x) {  // 16-byte chunks of [K][TAPS * 16]",
        "    const int o = i / (TAPS * 2), part = i - o * (TAPS * 2);",
        f"    *reinterpret_cast<uint4*>(&w_s[o * PITCH + part * 8]) = "
        f"*reinterpret_cast<const uint4*>({pw} + (i64)o * TAPS * 16 + part * 8);",
        "  }",
        "  __syncthreads();",
        "  auto mma = [](float* c, const unsigned* a, unsigned b0, unsigned b1) {",
        f'    asm("mma.sync.aligned.m16n8k16.row.col.f32.{mt}.{mt}.f32 {{%0,%1,%2,%3}}, {{%4,%5,%6,%7}}, '
        '{%8,%9}, {%0,%1,%2,%3};\\n"',
        '        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])',
        '        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));',
        "  };",
        "  auto ldsm = [](unsigned* r, unsigned addr) {",
        '    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\\n"',
        '                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));',
        "  };",
        f"  auto act = [](float s) {{ {' '.join(act_lines)} return {names[-1]}; }};",
        "  auto pixel = [&](i64 p) {  // input pixel under output pixel p's first tap",
        f"    const i64 n = p / {oh * ow};",
        f"    const int r = (int)(p - n * {oh * ow}), oy = r / {ow}, ox = r - oy * {ow};",
        f"    return {px} + ((n * {h} + oy) * {w_in} + ox) * {CHANNELS}LL + tg * 2;",
        "  };",
        "  // ldmatrix.x4 rows: matrix m = lane / 8 holds output channels (m / 2) * 8 + lane % 8 of an",
        "  // n-tile pair at channels (m % 2) * 8..: registers 0, 1 are the B fragment of the pair's first",
        "  // n-tile (k = 2tg.. and 2tg + 8..), 2, 3 of its second",
        "  const unsigned w_lane = (unsigned)__cvta_generic_to_shared(w_s) + "
        "2u * (unsigned)((((lane >> 4) << 3) + (lane & 7)) * PITCH + ((lane >> 3) & 1) * 8);",
        f"  for (i64 tile = (i64)blockIdx.x * {warps} + warp; tile * 32 < {pixels}; tile += (i64)blocks * {warps}) {{",
        "    const i64 p0 = tile * 32;",
        "    i64 q[4];  // this lane's output pixels: rows g and g + 8 of m-tiles 0 and 1",
        "    bool ok[4];",
        f"    const {t}* xp[4];",
        "    #pragma unroll",
        "    for (int i = 0; i < 4; ++i) {",
        "      q[i] = p0 + (i >> 1) * 16 + (i & 1) * 8 + g;",
        f"      ok[i] = q[i] < {pixels};",
        "      xp[i] = pixel(ok[i] ? q[i] : 0);",
        "    }",
        "    float acc[2][K / 8][4];",
        "    #pragma unroll",
        "    for (int m = 0; m < 2; ++m)",
        "      #pragma unroll",
        "      for (int j = 0; j < K / 8; ++j) acc[m][j][0] = acc[m][j][1] = acc[m][j][2] = acc[m][j][3] = 0.f;",
        "    #pragma unroll 2",  # registers: see the module docstring
        "    for (int tap = 0; tap < TAPS; ++tap) {",
        f"      const int off = ((tap / KW) * {w_in} + tap % KW) * {CHANNELS};",
        "      unsigned a[2][4];  // per m-tile: rows g / g + 8, channels 2tg.. / 2tg + 8..",
        "      #pragma unroll",
        "      for (int m = 0; m < 2; ++m) {",
        "        a[m][0] = *reinterpret_cast<const unsigned*>(xp[2 * m] + off);",
        "        a[m][1] = *reinterpret_cast<const unsigned*>(xp[2 * m + 1] + off);",
        "        a[m][2] = *reinterpret_cast<const unsigned*>(xp[2 * m] + off + 8);",
        "        a[m][3] = *reinterpret_cast<const unsigned*>(xp[2 * m + 1] + off + 8);",
        "      }",
        "      #pragma unroll",
        "      for (int jp = 0; jp < K / 16; ++jp) {  // one ldmatrix: B of two n-tiles, used by both m-tiles",
        "        unsigned b[4];",
        "        ldsm(b, w_lane + 2u * (unsigned)(16 * jp * PITCH + tap * 16));",
        "        #pragma unroll",
        "        for (int m = 0; m < 2; ++m) {",
        "          mma(acc[m][2 * jp], a[m], b[0], b[1]);",
        "          mma(acc[m][2 * jp + 1], a[m], b[2], b[3]);",
        "        }",
        "      }",
        "    }",
        "    #pragma unroll",
        "    for (int j = 0; j < K / 8; ++j) {",
        "      const int col = 8 * j + tg * 2;",
        (f"      const float b0 = (float){pb}[col], b1 = (float){pb}[col + 1];" if pb
         else "      const float b0 = 0.f, b1 = 0.f;"),
        "      #pragma unroll",
        "      for (int i = 0; i < 4; ++i) {  // accumulator rows: m-tile i / 2, half i % 2",
        "        if (!ok[i]) continue;",
        "        const i64 at = q[i] * K + col;",
        "        float u = acc[i >> 1][j][2 * (i & 1)] + b0, v = acc[i >> 1][j][2 * (i & 1) + 1] + b1;"]
    if pz:
        lines += [f"        u += (float){pz}[at];", f"        v += (float){pz}[at + 1];"]
    lines += [f"        tl_vec<{t}, 2> out;",
              f"        out.v[0] = ({t})act(u);",
              f"        out.v[1] = ({t})act(v);",
              f"        *reinterpret_cast<tl_vec<{t}, 2>*>({py} + at) = out;",
              "      }",
              "    }",
              "  }"]
    rows = 32 * warps * TILES_PER_WARP
    return wr.finish("\n".join(lines), (LaunchDim(dim_prod([n_d, oh, ow]), rows),), (32 * warps, 1, 1))
