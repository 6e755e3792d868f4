"""The fused attention kernel for ``tftrt.Attention`` (fp32, online softmax).

Why fused: unfused attention writes the [B, H, Sq, Sk] score tensor to memory twice
(scores, then probabilities); this kernel never materialises it. One block owns one
(batch·head, tile of ``QUERY_TILE`` queries), one warp one query. Keys are visited in
tiles of 32 staged in shared memory and shared by the block's warps; lane ``j`` scores
key ``j`` of the tile, and the running max / normaliser / output accumulator are
rescaled per tile (the flash-attention recurrence), so any sequence length runs in one
pass with O(D) registers per lane.

Head dims ``D``/``Dv`` must be static (they size shared memory); the batch, head and
sequence dims may be symbolic.
"""
from __future__ import annotations

from typing import List, Sequence

from tftrt_lite.codegen.kernel import (
    KernelSpec, KernelWriter, LaunchDim, c_literal, c_type, contiguous_strides, dim_prod, emitter,
    shape_of, unravel)
from tftrt_lite.engine import ir
from tftrt_lite.errors import UnsupportedOpError

QUERY_TILE = 4
KEY_TILE = 32
SHARED_LIMIT = 48 * 1024


def _mask_strides(mask_shape: Sequence, score_shape: Sequence, node: ir.Node) -> List:
    """Per score dim, the mask's element stride (0 where the mask broadcasts)."""
    if len(mask_shape) > len(score_shape):
        raise UnsupportedOpError(f"node {node.name!r}: mask rank {len(mask_shape)} exceeds scores' "
                                 f"{len(score_shape)}")
    padded = [1] * (len(score_shape) - len(mask_shape)) + list(mask_shape)
    strides = contiguous_strides(padded)
    out = []
    for m, s, st in zip(padded, score_shape, strides):
        if m == s and m != 1:
            out.append(st)
        elif m == 1:
            out.append(0)
        else:
            raise UnsupportedOpError(f"node {node.name!r}: mask shape {tuple(mask_shape)} does not "
                                     f"broadcast to scores {tuple(score_shape)}")
    return out


@emitter("tftrt.Attention")
def _emit_attention(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    q_t, k_t, v_t, mask_t = (list(node.inputs) + [""])[:4]
    q_shape, k_shape, v_shape = (shape_of(graph, t, node) for t in (q_t, k_t, v_t))
    k_transposed = bool(node.attrs["k_transposed"])
    lead = q_shape[:-2]
    sq, d = q_shape[-2], q_shape[-1]
    sk = k_shape[-1] if k_transposed else k_shape[-2]
    dv = v_shape[-1]
    if not (isinstance(d, int) and isinstance(dv, int)):
        raise UnsupportedOpError(f"node {node.name!r}: attention head dims must be static, got D={d}, Dv={dv}")
    if tuple(k_shape[:-2]) != tuple(lead) or tuple(v_shape[:-2]) != tuple(lead):
        raise UnsupportedOpError(f"node {node.name!r}: Q {tuple(q_shape)}, K {tuple(k_shape)}, "
                                 f"V {tuple(v_shape)} leading dims differ")
    shared = 4 * (QUERY_TILE * d + KEY_TILE * (d + 1) + KEY_TILE * dv)
    if shared > SHARED_LIMIT:
        raise UnsupportedOpError(f"node {node.name!r}: head dims D={d}, Dv={dv} need {shared} bytes of "
                                 f"shared memory (limit {SHARED_LIMIT})")
    dt = graph.tensor(q_t).dtype
    if dt != "float32":
        raise UnsupportedOpError(f"node {node.name!r}: attention is generated for float32 only, got {dt}")
    t = c_type(dt, node)
    w = KernelWriter("attention", node)
    q, k, v = w.buffer(q_t, dt), w.buffer(k_t, dt), w.buffer(v_t, dt)
    m = w.buffer(mask_t, graph.tensor(mask_t).dtype) if mask_t else None
    o = w.buffer(node.outputs[0], dt, writable=True)
    Sq, Sk = w.dim(sq), w.dim(sk)
    regs = (dv + 31) // 32
    scale = c_literal(float(node.attrs["scale"]), "float32")
    k_index = "(i64)d * Sk + key" if k_transposed else "key * D + d"

    lines = [f"  constexpr int D = {d}, DV = {dv}, TQ = {QUERY_TILE}, KT = {KEY_TILE};",
             f"  const i64 Sq = {Sq}, Sk = {Sk};",
             "  __shared__ float q_s[TQ][D];",
             "  __shared__ float k_s[KT][D + 1];",
             "  __shared__ float v_s[KT][DV];",
             "  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;",
             "  const i64 b = blockIdx.x;",
             "  const i64 qi = (i64)blockIdx.y * TQ + warp;",
             "  const bool active = qi < Sq;",
             f"  const {t}* qb = {q} + b * Sq * D;",
             f"  const {t}* kb = {k} + b * Sk * D;",
             f"  const {t}* vb = {v} + b * Sk * DV;"]
    if m is not None:
        strides = _mask_strides(shape_of(graph, mask_t, node), list(lead) + [sq, sk], node)
        lead_strides = strides[:-2]
        if lead:
            lines.append(unravel("b", [""] + [w.dim(x) for x in lead[1:]],
                                 [f"l{i}" for i in range(len(lead))]))
        terms = [f"l{i} * {w.dim(s)}" for i, s in enumerate(lead_strides) if s != 0]
        lines.append(f"  const {c_type(graph.tensor(mask_t).dtype)}* mb = {m} + "
                     f"({' + '.join(terms) if terms else '0'});")
        q_stride = f"qi * {w.dim(strides[-2])}" if strides[-2] != 0 else "0"
        k_stride = "key" if strides[-1] == 1 else (f"key * {w.dim(strides[-1])}" if strides[-1] != 0 else "0")
        mask_term = f" + (float)mb[{q_stride} + {k_stride}]"
    else:
        mask_term = ""
    lines += [
        "  for (int d = lane; d < D; d += 32) q_s[warp][d] = active ? (float)qb[qi * D + d] : 0.f;",
        "  float run_max = -tl_inf(), run_sum = 0.f;",
        f"  float acc[{regs}];",
        f"  for (int r = 0; r < {regs}; ++r) acc[r] = 0.f;",
        "  for (i64 k0 = 0; k0 < Sk; k0 += KT) {",
        "    __syncthreads();",
        "    for (int idx = threadIdx.x; idx < KT * D; idx += blockDim.x) {",
        "      const int j = idx / D, d = idx % D;",
        "      const i64 key = k0 + j;",
        f"      k_s[j][d] = key < Sk ? (float)kb[{k_index}] : 0.f;",
        "    }",
        "    for (int idx = threadIdx.x; idx < KT * DV; idx += blockDim.x) {",
        "      const int j = idx / DV, d = idx % DV;",
        "      const i64 key = k0 + j;",
        "      v_s[j][d] = key < Sk ? (float)vb[key * DV + d] : 0.f;",
        "    }",
        "    __syncthreads();",
        "    const i64 key = k0 + lane;",
        "    float s = -tl_inf();",
        "    if (active && key < Sk) {",
        "      float dot = 0.f;",
        "      for (int d = 0; d < D; ++d) dot += q_s[warp][d] * k_s[lane][d];",
        f"      s = dot * {scale}{mask_term};",
        "    }",
        "    const float new_max = fmaxf(run_max, tl_warp_max(s));",
        "    const float p = (s == -tl_inf()) ? 0.f : expf(s - new_max);",
        "    const float corr = (run_max == -tl_inf()) ? 0.f : expf(run_max - new_max);",
        "    run_sum = run_sum * corr + tl_warp_sum(p);",
        f"    for (int r = 0; r < {regs}; ++r) acc[r] *= corr;",
        "    for (int j = 0; j < KT; ++j) {",
        "      const float pj = __shfl_sync(0xffffffffu, p, j);",
        f"      for (int r = 0; r < {regs}; ++r) {{ const int d = lane + 32 * r; if (d < DV) acc[r] += pj * v_s[j][d]; }}",
        "    }",
        "    run_max = new_max;",
        "  }",
        "  if (!active) return;",
        f"  for (int r = 0; r < {regs}; ++r) {{ const int d = lane + 32 * r; "
        f"if (d < DV) {o}[(b * Sq + qi) * DV + d] = ({t})(acc[r] / run_sum); }}",
    ]
    grid = (LaunchDim(dim_prod(lead) if lead else 1), LaunchDim(sq, QUERY_TILE), LaunchDim(1))
    return [w.finish("\n".join(lines), grid, (32 * QUERY_TILE, 1, 1))]
