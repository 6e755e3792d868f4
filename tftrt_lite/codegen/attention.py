"""Fused attention kernels for ``tftrt.Attention``: flash-attention-2 on tensor cores.

Why fused: unfused attention writes the [B, H, Sq, Sk] score tensor to memory twice
(scores, then probabilities); these kernels never materialise it. Keys are visited in
tiles and the softmax is computed online (the flash-attention recurrence): per query row
a running max ``m`` and normaliser ``l`` are kept, and when a tile raises the max the
output accumulator and ``l`` are rescaled by ``2^(m_old - m_new)``. Any sequence length
therefore runs in one pass with registers independent of ``Sk``.

Tensor-core kernel (float16, bfloat16; float32 with TF32 allowed)
-----------------------------------------------------------------
One block = ``WARPS`` warps; each warp owns 16 query rows (one ``m16`` tile). Per key
tile of ``BC`` keys:

* K and V tiles are copied global → shared with ``cp.async`` into one of two stages, so
  the next tile's copy overlaps this tile's math (both tiles of BERT's Sk = 128 are in
  flight before any math starts). Rows are padded by 16 bytes (32 for fp32 [D, Sk] tiles),
  which makes every ``ldmatrix`` phase and every scalar TF32 fragment read hit 32
  distinct banks. K's tile is kept as [key][d] or, when its keys are contiguous in
  memory (``k_transposed``, or a ``layout`` with key stride 1), as [d][key]; both are
  copied as they lie in memory and the fragment read differs (``ldmatrix`` vs
  ``ldmatrix.trans``), so no layout pass is needed.
* ``S = Q·Kᵀ`` on ``mma.sync`` with fp32 accumulation. Q's A fragments are loaded once
  from global memory straight into registers (32-bit words: two adjacent halves of a row
  are exactly one fragment register).
* Softmax statistics in fp32 registers, in the log2 domain (``scale·log2 e`` folded into
  one FMA, ``exp2f``); each lane keeps partial row sums and the quad is reduced once at
  the end (all four lanes of a quad share the row max, so their sums rescale alike).
* ``O += P·V``: the S accumulator fragments of two adjacent n-tiles *are* the A
  fragment of the next ``m16n8k16`` (FA2's register reuse), packed to the input half
  type with one ``cvt.rn.{f16,bf16}x2.f32``; V's B fragments come from ``ldmatrix.trans``.
* TF32 (``m16n8k8``): the accumulator holds columns ``2t, 2t+1`` of a quad's lane ``t``
  while the A fragment wants columns ``t, t+4``. Instead of shuffling, the P·V reduction
  runs over the 8 keys of an n-tile in the permuted order (k-index ``t`` ↔ key ``2t``,
  ``t+4`` ↔ ``2t+1``), and V's B fragment is read from shared memory in that same order:
  a sum does not care about the order of its terms. Operands are rounded with
  ``cvt.rna.tf32.f32``, as TensorFlow/cuBLASLt do for fp32 matmuls by default.

Why 16 rows per warp and four warps (64 query rows) per block: at batch 1 the kernel is
latency bound, and a block's latency is one warp's serial chain (16 rows × all keys: for
BERT-base, 128 mma + 64 exp2 per lane, after one memory round trip), whatever the block
size, because the warps of a block run side by side on separate SM sub-partitions. At
large batch the warps sharing a K/V tile divide its copy and its L2 reads among them.
Measured on an H200 (BERT-base, merged QKV, fp16, 64-key tiles; µs per launch at batch
1 / 32): one warp 4.7 / 26.4, two 4.5 / 21.4, four 4.7 / 18.9, eight 6.3 / 18.7; TF32
(32-key tiles): two 8.7 / 38.6, four 8.1 / 33.3. Eight warps gain nothing more and cost
latency at batch 1 (each block then waits for twice the tile copy). Four warps is the
emitted choice; two and eight are variants (``WARP_VARIANTS``) the runtime times per
input shape and keeps where they win. A block never spans more 16-row tiles than Sq has
when Sq is static (Sq ≤ 16: one warp).

``BC`` is the largest of 64/32/16 keys whose two K+V stages fit the 48 KB of static
shared memory (fp16 D = Dv = 64: 64 keys, 36 KB; D = Dv = 128: 32 keys).

Operand layouts: every operand is addressed as a strided [B, H, S, D] view (the block
index splits into batch and head; ``tftrt.Attention``'s ``layout``, else contiguous
strides), so the kernel reads Q/K/V straight from the projections' [N, S, H·D] output and
writes O into the next GEMM's input, with no head split/merge transposes. The 16-byte
``cp.async`` tile copies need the d stride to be 1 (keys for [d][key] K tiles) and every
other stride a multiple of 16 bytes; the 32-bit Q loads and O stores (64-bit for fp32)
need d contiguous and even strides. Where the IR proves that (BERT: D = 64, H·D = 768)
only the fast path is emitted; where it disproves it, only element-wise copies; a
symbolic stride it cannot decide gets both behind a uniform run-time branch.

Ragged Sq/Sk: rows past Sq load zeros and are not stored; key chunks past Sk are
zero-filled by ``cp.async`` (src-size 0) and their scores forced to -inf, so they get
probability 0 and add nothing (zero V rows, never garbage that could be NaN). For
[d][key] tiles a 16-byte copy needs Sk to be a multiple of the chunk; otherwise the tile
is copied element by element. Buffers are assumed 16-byte aligned
(the engine arena aligns to 256 bytes, TensorFlow's allocator to at least 64).

Numerics: scores, softmax statistics and the output accumulator are fp32; the only
roundings besides the inputs' own are P to the input half type (or TF32) before P·V and
the output store — what FA2 and cuBLASLt do. Modelled error against the reference (on the
same rounded inputs), relative to the output scale, at BERT-like shapes: ~8e-4 fp16,
~6e-3 bf16 (8-bit mantissas for P and the output), ~1e-3 TF32.
A row whose scores are all -inf yields NaN, as the reference's softmax does.

Exact fp32 kernel (``allow_tf32`` = 0, and the general path)
-------------------------------------------------------------
One warp per query, ``QUERY_TILE`` queries per block, key tiles of 32 in shared memory;
lane ``j`` scores key ``j`` of the tile with FMAs, exact fp32 ``expf``. It also serves
any dtype whose head dims the tensor-core kernel does not take (D or Dv not a multiple
of 16, or above 128), as long as its tiles fit shared memory.

Head dims ``D``/``Dv`` must be static (they size shared memory and register tiles); the
batch, head and sequence dims may be symbolic.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from string import Template
from typing import List, Optional, Sequence, Tuple

import numpy as np

from tftrt_lite.codegen.kernel import (
    Dim, KernelSpec, KernelWriter, LaunchDim, c_literal, c_type, contiguous_strides, dim_mul, dim_prod, emitter,
    shape_of, unravel)
from tftrt_lite.engine import ir, symbolic
from tftrt_lite.errors import UnsupportedOpError

SHARED_LIMIT = 48 * 1024
ROWS_PER_WARP = 16
WARPS = 4
#: Warps per block of the kernel variants timed at run time (see the module docstring).
WARP_VARIANTS = (2, 4, 8)
KEY_TILES = (64, 32, 16)
MAX_TENSOR_CORE_HEAD_DIM = 128
DTYPES = ("float16", "bfloat16", "float32")
QUERY_TILE = 4
KEY_TILE = 32

#: Per-lane index maps of the mma fragments (PTX ISA "Matrix Fragments for mma.m16n8k16 /
#: mma.m16n8k8" and "ldmatrix"), each written once as an expression that is both C and
#: Python: the kernel text is built from them and the CPU tests evaluate them lane by lane
#: against a NumPy model of the PTX semantics. Names: ``g`` = lane / 4, ``tg`` = lane % 4,
#: ``r`` a fragment register, ``e`` an accumulator element, ``i`` a B register.
LANE_MAPS = {
    # m16n8k16 A fragment of Q: register r holds (row, col) and (row, col + 1) of the warp's
    # 16-row tile at k-step kk (low half = lower column, as a 32-bit load of two halves gives).
    "h_q_row": "(r & 1) * 8 + g",
    "h_q_col": "kk * 16 + (r >> 1) * 8 + tg * 2",
    # ldmatrix.x4 row addresses inside a 16x16 block of a [row][col] smem tile. Plain (K as
    # [key][d]): matrices (rows 0-7, cols 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15), so
    # registers 0, 1 are the B fragment of the first n-tile (rows = keys) and 2, 3 of the second.
    "ldsm_row": "(lane >> 4) * 8 + (lane & 7)",
    "ldsm_col": "((lane >> 3) & 1) * 8",
    # .trans (K as [d][key], V as [key][dv]): rows are the mma's k dim, so matrices step k first.
    "ldsm_t_row": "((lane >> 3) & 1) * 8 + (lane & 7)",
    "ldsm_t_col": "(lane >> 4) * 8",
    # Element offsets (in a stage) this lane hands ldmatrix for k-step kk and n-tile pair jp.
    "h_k_addr": "(jp * 16 + ldsm_row) * KS + kk * 16 + ldsm_col",
    "h_kt_addr": "(kk * 16 + ldsm_t_row) * KS + jp * 16 + ldsm_t_col",
    "h_v_addr": "(kk * 16 + ldsm_t_row) * VS + jp * 16 + ldsm_t_col",
    # P.V A fragment, register r of k-step kk: elements (lo, lo + 1) of S n-tile h_p_tile.
    "h_p_tile": "kk * 2 + (r >> 1)",
    "h_p_elem": "(r & 1) * 2",
    # Accumulator element e of a 16x8 tile (S n-tile or O column tile).
    "c_row": "(e >> 1) * 8 + g",
    "c_col": "tg * 2 + (e & 1)",
    # m16n8k8 TF32 A fragment of Q (register r) at k-step kk.
    "t_q_row": "(r & 1) * 8 + g",
    "t_q_col": "kk * 8 + (r >> 1) * 4 + tg",
    # TF32 B fragment register i of n-tile j at k-step kk: K as [key][d], K as [d][key].
    "t_k_addr": "(j * 8 + g) * KS + kk * 8 + i * 4 + tg",
    "t_kt_addr": "(kk * 8 + i * 4 + tg) * KS + j * 8 + g",
    # TF32 P.V with keys permuted (k-index tg <-> key 2tg, tg + 4 <-> key 2tg + 1): A register r
    # of k-step kk is element t_p_elem of S n-tile kk; B register i of O column tile j reads V here.
    "t_p_elem": "(r & 1) * 2 + (r >> 1)",
    "t_v_addr": "(kk * 8 + tg * 2 + i) * VS + j * 8 + g",
}

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class TilePlan:
    """Launch shape of the tensor-core kernel for one node."""

    warps: int
    key_tile: int
    shared_bytes: int
    tf32: bool


Strides = Tuple[Dim, Dim, Dim, Dim]


@dataclass(frozen=True)
class _Problem:
    """One attention as the kernels see it: each operand a strided [B, H, S, D] view.

    ``lead`` are the score dims the block index runs over (and the mask broadcasts
    against): the operands' leading dims, or (B, H) under a ``layout``. ``heads`` splits
    the block index into (batch, head); strides are per operand (b, h, s, d) in elements.
    ``k_cols``: K's keys are contiguous, so its tile is kept as [d][key] in shared memory.
    Offsets are where each operand's view starts in its tensor (Q, K and V may be one
    merged projection read at three column offsets).
    """

    q: str
    k: str
    v: str
    mask: str
    lead: Tuple[Dim, ...]
    heads: Dim
    sq: Dim
    sk: Dim
    d: int
    dv: int
    q_st: Strides
    k_st: Strides
    v_st: Strides
    o_st: Strides
    k_cols: bool
    dtype: str
    scale: float
    #: element offsets of Q, K and V in their tensors (a ``layout``'s ``offsets``)
    q_off: Dim = 0
    k_off: Dim = 0
    v_off: Dim = 0


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


def _parse(graph: ir.Graph, node: ir.Node) -> _Problem:
    q_t, k_t, v_t, mask_t = (list(node.inputs) + [""])[:4]
    q_shape, k_shape, v_shape = (shape_of(graph, t, node) for t in (q_t, k_t, v_t))
    layout = node.attrs.get("layout")
    if layout is not None:
        b, h, sq, sk, d, dv = (symbolic.normalize(x) for x in layout["dims"])
        lead, heads = (b, h), h
        q_st, k_st, v_st, o_st = (tuple(symbolic.normalize(x) for x in layout[n]) for n in "qkvo")
        offsets = tuple(symbolic.normalize(layout.get("offsets", {}).get(n, 0)) for n in "qkv")
    else:
        offsets = (0, 0, 0)
        k_transposed = bool(node.attrs["k_transposed"])
        lead, heads = tuple(q_shape[:-2]), 1
        sq, d = q_shape[-2], q_shape[-1]
        sk = k_shape[-1] if k_transposed else k_shape[-2]
        dv = v_shape[-1]
        if tuple(k_shape[:-2]) != lead or tuple(v_shape[:-2]) != lead:
            raise UnsupportedOpError(f"node {node.name!r}: Q {tuple(q_shape)}, K {tuple(k_shape)}, "
                                     f"V {tuple(v_shape)} leading dims differ")
        q_st = (dim_mul(sq, d), 0, d, 1)
        k_st = (dim_mul(sk, d), 0, 1, sk) if k_transposed else (dim_mul(sk, d), 0, d, 1)
        v_st = (dim_mul(sk, dv), 0, dv, 1)
        o_st = (dim_mul(sq, dv), 0, dv, 1)
    if not (isinstance(d, int) and isinstance(dv, int)):
        raise UnsupportedOpError(f"node {node.name!r}: attention head dims must be static, got D={d}, Dv={dv}")
    dtype = graph.tensor(q_t).dtype
    for t in (k_t, v_t, node.outputs[0]):
        if graph.tensor(t).dtype != dtype:
            raise UnsupportedOpError(f"node {node.name!r}: Q is {dtype} but {t!r} is {graph.tensor(t).dtype}; "
                                     f"Q, K, V and the output must share one dtype")
    if dtype not in DTYPES:
        raise UnsupportedOpError(f"node {node.name!r}: attention kernels are generated for "
                                 f"{', '.join(DTYPES)}, got {dtype}")
    k_cols = symbolic.equal(k_st[2], 1) and not symbolic.equal(k_st[3], 1)
    return _Problem(q_t, k_t, v_t, mask_t, lead, heads, sq, sk, d, dv, q_st, k_st, v_st, o_st, k_cols, dtype,
                    float(node.attrs["scale"]), *offsets)


def _multiple_of(w: KernelWriter, dims: Sequence[Dim], n: int) -> str:
    """A C condition that every dim is a multiple of ``n``: ``true``/``false`` when that is
    known from the IR (every coefficient of a symbolic dim divisible), else a run-time test."""
    tests = []
    for x in dims:
        x = symbolic.normalize(x)
        if isinstance(x, int):
            if x % n:
                return "false"
        elif any(c % n for c, _ in symbolic.terms(x)) and f"{w.dim(x)} % {n} == 0" not in tests:
            tests.append(f"{w.dim(x)} % {n} == 0")
    return " && ".join(tests) or "true"


def _vector_ok(w: KernelWriter, st: Strides, n: int, offset: Dim = 0) -> str:
    """Whether an operand's rows can be moved ``n`` elements at a time: d contiguous, and the
    s, h, b strides and the offset multiples of ``n`` (so vectors stay aligned on an aligned
    buffer)."""
    if not symbolic.equal(st[3], 1):
        return "false"
    return _multiple_of(w, (st[2], st[1], st[0], offset), n)


def _branch(cond: str, fast: str, slow: str) -> str:
    """``fast`` where ``cond`` holds, ``slow`` elsewhere: one of them when it is known, else
    both behind a uniform branch."""
    if cond == "true":
        return fast
    if cond == "false":
        return slow
    pad = " " * (len(fast) - len(fast.lstrip(" ")))
    fast, slow = ("\n".join("  " + line for line in x.split("\n")) for x in (fast, slow))
    return f"{pad}if ({cond}) {{\n{fast}\n{pad}}} else {{\n{slow}\n{pad}}}"


def _operand_bases(w: KernelWriter, p: _Problem, ptrs: Sequence[Tuple[str, str, str, Strides, Dim]]) -> List[str]:
    """C lines that split the block index ``b`` into (batch, head) and point each operand's
    base pointer (name, C type, buffer, strides, offset) at this block's [S, D] slice."""
    if symbolic.equal(p.heads, 1):
        lines = ["  const i64 bi = b, hi = 0;"]
    else:
        lines = [f"  const i64 bi = b / {w.dim(p.heads)}, hi = b % {w.dim(p.heads)};"]
    for name, t, buf, st, off in ptrs:
        terms = [f"{i} * {w.dim(x)}" for i, x in (("bi", st[0]), ("hi", st[1])) if not symbolic.equal(x, 0)]
        if not symbolic.equal(off, 0):
            terms.insert(0, w.dim(off))
        lines.append(f"  {t}* {name} = {buf}{''.join(' + ' + x for x in terms)};")
    return lines


def _row_pads(tf32: bool) -> Tuple[int, int]:
    """Shared-memory row padding, in elements, of [key][d] / [key][dv] tiles and of [d][key] tiles.

    Halves: 8 (16 bytes) everywhere, making the row pitch an odd multiple of 16 bytes, so
    the 8 rows one ldmatrix phase reads start in distinct 16-byte bank groups. fp32: 4 for
    [key][*] rows and 8 for [d][key] rows, so each scalar TF32 fragment read of a warp hits
    32 distinct banks (lanes differ by g in one index and by tg in the other).
    """
    return (4, 8) if tf32 else (8, 8)


def tensor_core_plan(dtype: str, d: int, dv: int, k_transposed: bool, sq: Dim,
                     allow_tf32: bool = True) -> Optional[TilePlan]:
    """The tensor-core kernel's tiles for these head dims, or None where it does not apply.

    ``k_transposed``: K's tile is kept as [d][key] (its keys are contiguous in memory).

    None for float32 without TF32, and for head dims that are not multiples of 16 in
    [16, 128] (the mma k-step and the register budget of the Q and O fragments).
    """
    tf32 = dtype == "float32"
    if tf32 and not allow_tf32:
        return None
    if not all(x % 16 == 0 and 16 <= x <= MAX_TENSOR_CORE_HEAD_DIM for x in (d, dv)):
        return None
    esize = 4 if tf32 else 2
    pad, kt_pad = _row_pads(tf32)
    for bc in KEY_TILES:
        k_elems = d * (bc + kt_pad) if k_transposed else bc * (d + pad)
        shared = 2 * esize * (k_elems + bc * (dv + pad))
        if shared <= SHARED_LIMIT:
            return TilePlan(_warps(WARPS, sq), bc, shared, tf32)
    return None


def _warps(warps: int, sq: Dim) -> int:
    """``warps``, or fewer when a static Sq has fewer 16-row tiles."""
    return min(warps, -(-sq // ROWS_PER_WARP)) if isinstance(sq, int) else warps


def _mask_setup(w: KernelWriter, graph: ir.Graph, node: ir.Node, p: _Problem,
                mask_var: str) -> Tuple[List[str], str, Optional[str], str]:
    """C lines that point ``mb`` at this block's (batch·head) slice of the mask.

    Returns the lines, the mask's C type, its row stride (None where rows broadcast) and
    its key stride as C expressions.
    """
    mdt = graph.tensor(p.mask).dtype
    strides = _mask_strides(shape_of(graph, p.mask, node), list(p.lead) + [p.sq, p.sk], node)
    lines = []
    if p.lead:
        lines.append(unravel("b", [""] + [w.dim(x) for x in p.lead[1:]], [f"l{i}" for i in range(len(p.lead))]))
    terms = [f"l{i} * {w.dim(s)}" for i, s in enumerate(strides[:-2]) if s != 0]
    mt = c_type(mdt, node)
    lines.append(f"  const {mt}* mb = {mask_var} + ({' + '.join(terms) if terms else '0'});")
    row = w.dim(strides[-2]) if strides[-2] != 0 else None
    key = "1" if strides[-1] == 1 else (w.dim(strides[-1]) if strides[-1] != 0 else "0")
    return lines, mt, row, key


# ----------------------------------------------------------------------------- tensor cores
_TC_BODY = Template(r"""  constexpr int D = ${D}, DV = ${DV}, BC = ${BC}, WARPS = ${WARPS}, THREADS = 32 * WARPS;
  constexpr int KS = ${KS}, VS = ${VS};  // shared-memory row strides (elements), padded against bank conflicts
  __shared__ __align__(16) ${T} k_s[2][${K_ELEMS}];
  __shared__ __align__(16) ${T} v_s[2][BC * VS];
  const i64 Sq = ${Sq}, Sk = ${Sk};
  const int tid = threadIdx.x, lane = tid & 31, g = lane >> 2, tg = lane & 3;
  const i64 b = blockIdx.x;
  const i64 row0 = ((i64)blockIdx.y * WARPS + (tid >> 5)) * 16;  // this warp's first query row
  const i64 r0 = row0 + g, r1 = row0 + g + 8;                    // the two rows of this lane
  const bool v0 = r0 < Sq, v1 = r1 < Sq;
${BASES}
  // global element strides of the s (row) and d (column) axes of Q, K, V and O
  const i64 Q_S = ${Q_S}, Q_D = ${Q_D}, K_S = ${K_S}, K_D = ${K_D};
  const i64 V_S = ${V_S}, V_D = ${V_D}, O_S = ${O_S}, O_D = ${O_D};
${MASK_SETUP}
  const float NEG_INF = -tl_inf();
  auto cp16 = [](void* dst, const void* src, bool full) {  // 16 bytes global -> shared; zero-filled unless full
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src), "r"(full ? 16 : 0) : "memory");
  };
${HELPERS}
  auto stage = [&](int st, i64 k0) {  // K/V tile of keys [k0, k0 + BC) into stage st
${STAGE_K}
${STAGE_V}
  };
  const i64 n_tiles = (Sk + BC - 1) / BC;
  stage(0, 0);
  asm volatile("cp.async.commit_group;\n" ::: "memory");
${LOAD_Q}
  float run_max[2] = {NEG_INF, NEG_INF}, run_sum[2] = {0.f, 0.f};
  float o[DV / 8][4];
  #pragma unroll
  for (int j = 0; j < DV / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  for (i64 t = 0; t < n_tiles; ++t) {
    const int st = (int)(t & 1);
    const i64 k0 = t * BC;
    if (t + 1 < n_tiles) {
      stage(st ^ 1, k0 + BC);
      asm volatile("cp.async.commit_group;\n" ::: "memory");
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    }
    __syncthreads();
${LOAD_MASK}
    float s[BC / 8][4];  // scores of this lane: n-tile j (keys k0 + 8j ..), accumulator element e
    #pragma unroll
    for (int j = 0; j < BC / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
${QK}
    float mx[2] = {run_max[0], run_max[1]};
    #pragma unroll
    for (int j = 0; j < BC / 8; ++j) {
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const i64 key = k0 + j * 8 + ${C_COL};
        const float x = ${SCORE};  // log2 domain
        s[j][e] = key < Sk ? x : NEG_INF;
        mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
      }
    }
    float base[2];
    #pragma unroll
    for (int h = 0; h < 2; ++h) {  // the quad's four lanes hold the same two rows
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      base[h] = mx[h] == NEG_INF ? 0.f : mx[h];  // a row with no finite score yet: keep p = 0, no NaN
      const float corr = exp2f(run_max[h] - base[h]);
      run_max[h] = mx[h];
      run_sum[h] *= corr;
      #pragma unroll
      for (int j = 0; j < DV / 8; ++j) { o[j][2 * h] *= corr; o[j][2 * h + 1] *= corr; }
    }
    #pragma unroll
    for (int j = 0; j < BC / 8; ++j) {
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(s[j][e] - base[e >> 1]);
        run_sum[e >> 1] += s[j][e];
      }
    }
${PV}
    __syncthreads();  // every warp is done with stage st before it is refilled
  }
  float inv[2];
  #pragma unroll
  for (int h = 0; h < 2; ++h) {
    run_sum[h] += __shfl_xor_sync(0xffffffffu, run_sum[h], 1);
    run_sum[h] += __shfl_xor_sync(0xffffffffu, run_sum[h], 2);
    inv[h] = 1.f / run_sum[h];
  }
${STORE}
""")

_HALF_HELPERS = Template(r"""  auto mma = [](float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.${MT}.${MT}.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  };
  auto pack = [](float lo, float hi) {  // the first source operand goes to the upper half
    unsigned r;
    asm("cvt.rn.${MT}x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  };
  auto ldsm = [](unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  };
  auto ldsm_t = [](unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  };
  const int ldsm_row = ${LDSM_ROW}, ldsm_col = ${LDSM_COL};
  const int ldsm_t_row = ${LDSM_T_ROW}, ldsm_t_col = ${LDSM_T_COL};""")

_TF32_HELPERS = r"""  auto mma = [](float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  };
  auto tf32 = [](float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
  };"""

_HALF_LOAD_Q = Template(r"""  unsigned qa[D / 16][4];  // Q's A fragments for every k-step, loaded once
  #pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
      const i64 row = row0 + ${ROW}, col = ${COL};
      qa[kk][r] = (r & 1 ? v1 : v0) ? ${LOAD} : 0u;
    }
  }""")

_TF32_LOAD_Q = Template(r"""  unsigned qa[D / 8][4];  // Q's A fragments (TF32) for every k-step, loaded once
  #pragma unroll
  for (int kk = 0; kk < D / 8; ++kk) {
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
      const i64 row = row0 + ${ROW}, col = ${COL};
      qa[kk][r] = tf32((r & 1 ? v1 : v0) ? qb[row * Q_S + col * Q_D] : 0.f);
    }
  }""")

_HALF_QK = Template(r"""    const unsigned k_base = (unsigned)__cvta_generic_to_shared(&k_s[st][0]);
    #pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      #pragma unroll
      for (int jp = 0; jp < BC / 16; ++jp) {  // two n-tiles (16 keys) per ldmatrix.x4
        unsigned bf[4];
        ${LDSM}(bf, k_base + ${ESIZE} * (${ADDR}));
        mma(s[2 * jp], qa[kk], bf[0], bf[1]);
        mma(s[2 * jp + 1], qa[kk], bf[2], bf[3]);
      }
    }""")

_TF32_QK = Template(r"""    #pragma unroll
    for (int kk = 0; kk < D / 8; ++kk) {
      #pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
        unsigned bf[2];
        #pragma unroll
        for (int i = 0; i < 2; ++i) bf[i] = tf32(k_s[st][${ADDR}]);
        mma(s[j], qa[kk], bf[0], bf[1]);
      }
    }""")

_HALF_PV = Template(r"""    const unsigned v_base = (unsigned)__cvta_generic_to_shared(&v_s[st][0]);
    #pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      unsigned pa[4];  // P as the A fragment: the S accumulators of n-tiles 2kk, 2kk + 1
      #pragma unroll
      for (int r = 0; r < 4; ++r) pa[r] = pack(s[${P_TILE}][${P_ELEM}], s[${P_TILE}][${P_ELEM} + 1]);
      #pragma unroll
      for (int jp = 0; jp < DV / 16; ++jp) {
        unsigned bf[4];
        ldsm_t(bf, v_base + ${ESIZE} * (${V_ADDR}));
        mma(o[2 * jp], pa, bf[0], bf[1]);
        mma(o[2 * jp + 1], pa, bf[2], bf[3]);
      }
    }""")

_TF32_PV = Template(r"""    #pragma unroll
    for (int kk = 0; kk < BC / 8; ++kk) {
      unsigned pa[4];  // P of n-tile kk, keys in the permuted order (see the module docstring)
      #pragma unroll
      for (int r = 0; r < 4; ++r) pa[r] = tf32(s[kk][${P_ELEM}]);
      #pragma unroll
      for (int j = 0; j < DV / 8; ++j) {
        unsigned bf[2];
        #pragma unroll
        for (int i = 0; i < 2; ++i) bf[i] = tf32(v_s[st][${V_ADDR}]);
        mma(o[j], pa, bf[0], bf[1]);
      }
    }""")

_STORE = Template(r"""  #pragma unroll
  for (int j = 0; j < DV / 8; ++j) {
    const int c = j * 8 + tg * 2;
${STORE_ROWS}
  }""")

#: One row's two adjacent output columns (c, c + 1): one 32-bit (halves) / 64-bit (fp32) store
#: where O's rows are contiguous and aligned for it, else two element stores.
_HALF_STORE_PAIR = "if (v{h}) *reinterpret_cast<unsigned*>(ob + r{h} * O_S + c) = pack({x}, {y});"
_TF32_STORE_PAIR = "if (v{h}) *reinterpret_cast<float2*>(ob + r{h} * O_S + c) = make_float2({x}, {y});"
_STORE_ELEMS = "if (v{h}) {{ ob[r{h} * O_S + c * O_D] = {t}({x}); ob[r{h} * O_S + (c + 1) * O_D] = {t}({y}); }}"

#: A tile of keys [k0, k0 + BC) of K or V (``${X}``) as [key][d] rows of ``${W}`` elements in
#: shared memory (pitch ``${P}``): 16-byte ``cp.async`` chunks where d is contiguous and the
#: rows are 16-byte aligned (``${COPY}``, the fast path), else element by element.
_STAGE_ROWS = Template(r"""    #pragma unroll
    for (int c = tid; c < BC * (${W} / ${CH}); c += THREADS) {  // ${X} as [key][d]
      const int r = c / (${W} / ${CH}), col = c % (${W} / ${CH}) * ${CH};
      const bool ok = k0 + r < Sk;
      ${T}* dst = &${X_S}[st][r * ${P} + col];
${COPY}
    }""")
_ROWS_CP16 = "      cp16(dst, ${X_B} + (ok ? k0 + r : 0) * ${X}_S + col, ok);"
_ROWS_ELEMS = r"""      const ${T}* src = ${X_B} + (ok ? k0 + r : 0) * ${X}_S + col * ${X}_D;
      #pragma unroll
      for (int e = 0; e < ${CH}; ++e) dst[e] = ok ? src[e * ${X}_D] : ${T}(0.f);"""

#: K whose keys are contiguous (K_S = 1) as [d][key] rows of the tile: 16-byte chunks when
#: they are aligned and wholly in or out of range (Sk and K's other strides multiples of a
#: chunk), else element by element.
_STAGE_K_COLS = Template(r"""    #pragma unroll
    for (int c = tid; c < D * (BC / ${CH}); c += THREADS) {  // K as [d][key]: rows of Sk keys
      const int r = c / (BC / ${CH}), col = c % (BC / ${CH}) * ${CH};
      const i64 key = k0 + col;
      ${T}* dst = &k_s[st][r * KS + col];
      const ${T}* src = kb + (i64)r * K_D + key;
${COPY}
    }""")
_COLS_CP16 = "      cp16(dst, key < Sk ? src : kb, key < Sk);"
_COLS_ELEMS = r"""      #pragma unroll
      for (int e = 0; e < ${CH}; ++e) dst[e] = key + e < Sk ? src[e] : ${T}(0.f);"""


def _emit_tensor_core(graph: ir.Graph, node: ir.Node, p: _Problem, plan: TilePlan) -> KernelSpec:
    m = LANE_MAPS
    t = c_type(p.dtype, node)
    esize = 4 if plan.tf32 else 2
    ch = 16 // esize
    pad, kt_pad = _row_pads(plan.tf32)
    bc = plan.key_tile
    ks = bc + kt_pad if p.k_cols else p.d + pad
    w = KernelWriter("attention", node)
    q, k, v = w.buffer(p.q, p.dtype), w.buffer(p.k, p.dtype), w.buffer(p.v, p.dtype)
    mask_var = w.buffer(p.mask, graph.tensor(p.mask).dtype) if p.mask else None
    out = w.buffer(node.outputs[0], p.dtype, writable=True)
    Sq, Sk = w.dim(p.sq), w.dim(p.sk)

    scale_log2 = float.hex(float(np.float32(p.scale * _LOG2E))) + "f"
    log2e = float.hex(float(np.float32(_LOG2E))) + "f"
    if mask_var is not None:
        setup, mt, row_stride, key_stride = _mask_setup(w, graph, node, p, mask_var)
        rows = (f"mb + (v0 ? r0 : 0) * {row_stride}", f"mb + (v1 ? r1 : 0) * {row_stride}") if row_stride \
            else ("mb", "mb")
        setup.append(f"  const {mt}* m_row[2] = {{{rows[0]}, {rows[1]}}};  // rows past Sq read row 0")
        load_mask = "\n".join([
            "    float mk[BC / 8][4];  // issued before the mma so their latency overlaps it",
            "    #pragma unroll",
            "    for (int j = 0; j < BC / 8; ++j) {",
            "      #pragma unroll",
            "      for (int e = 0; e < 4; ++e) {",
            f"        const i64 key = k0 + j * 8 + {m['c_col']};",
            f"        mk[j][e] = key < Sk ? (float)m_row[e >> 1][key * {key_stride}] : 0.f;",
            "      }",
            "    }"])
        score = f"fmaf(s[j][e], {scale_log2}, mk[j][e] * {log2e})"
    else:
        setup, load_mask, score = [], "", f"s[j][e] * {scale_log2}"

    bases = _operand_bases(w, p, [("qb", f"const {t}", q, p.q_st, p.q_off),
                                  ("kb", f"const {t}", k, p.k_st, p.k_off),
                                  ("vb", f"const {t}", v, p.v_st, p.v_off), ("ob", t, out, p.o_st, 0)])
    if p.k_cols:
        cond = _multiple_of(w, (p.sk, p.k_st[3], p.k_st[1], p.k_st[0], p.k_off), ch)
        stage_k = _STAGE_K_COLS.substitute(
            CH=ch, T=t, COPY=_branch(cond, _COLS_CP16, Template(_COLS_ELEMS).substitute(CH=ch, T=t)))
    else:
        stage_k = _stage_rows(w, "K", "k_s", "kb", "D", "KS", p.k_st, p.k_off, ch, t)
    stage_v = _stage_rows(w, "V", "v_s", "vb", "DV", "VS", p.v_st, p.v_off, ch, t)
    o_vec = _vector_ok(w, p.o_st, 2)
    if plan.tf32:
        helpers = _TF32_HELPERS
        load_q = _TF32_LOAD_Q.substitute(ROW=m["t_q_row"], COL=m["t_q_col"])
        qk = _TF32_QK.substitute(ADDR=m["t_kt_addr" if p.k_cols else "t_k_addr"])
        pv = _TF32_PV.substitute(P_ELEM=m["t_p_elem"], V_ADDR=m["t_v_addr"])
        store_pair = _TF32_STORE_PAIR
    else:
        helpers = _HALF_HELPERS.substitute(MT="f16" if p.dtype == "float16" else "bf16",
                                           LDSM_ROW=m["ldsm_row"], LDSM_COL=m["ldsm_col"],
                                           LDSM_T_ROW=m["ldsm_t_row"], LDSM_T_COL=m["ldsm_t_col"])
        pair = "*reinterpret_cast<const unsigned*>(qb + row * Q_S + col)"
        elems = "((unsigned)qb[row * Q_S + col * Q_D].bits | (unsigned)qb[row * Q_S + (col + 1) * Q_D].bits << 16)"
        q_vec = _vector_ok(w, p.q_st, 2, p.q_off)
        load = pair if q_vec == "true" else elems if q_vec == "false" else f"({q_vec}) ? {pair} : {elems}"
        load_q = _HALF_LOAD_Q.substitute(ROW=m["h_q_row"], COL=m["h_q_col"], LOAD=load)
        qk = _HALF_QK.substitute(LDSM="ldsm_t" if p.k_cols else "ldsm", ESIZE=esize,
                                 ADDR=m["h_kt_addr" if p.k_cols else "h_k_addr"])
        pv = _HALF_PV.substitute(ESIZE=esize, P_TILE=m["h_p_tile"], P_ELEM=m["h_p_elem"], V_ADDR=m["h_v_addr"])
        store_pair = _HALF_STORE_PAIR
    rows = [(0, "o[j][0] * inv[0]", "o[j][1] * inv[0]"), (1, "o[j][2] * inv[1]", "o[j][3] * inv[1]")]
    store = _STORE.substitute(STORE_ROWS=_branch(
        o_vec, "\n".join("    " + store_pair.format(h=h, x=x, y=y) for h, x, y in rows),
        "\n".join("    " + _STORE_ELEMS.format(h=h, x=x, y=y, t=t) for h, x, y in rows)))
    strides = {f"{n}_{a}": w.dim(st[i]) for n, st in (("Q", p.q_st), ("K", p.k_st), ("V", p.v_st), ("O", p.o_st))
               for a, i in (("S", 2), ("D", 3))}
    body = _TC_BODY.substitute(
        D=p.d, DV=p.dv, BC=bc, WARPS=plan.warps, KS=ks, VS=p.dv + pad, T=t, CH=ch,
        K_ELEMS=f"{p.d} * KS" if p.k_cols else "BC * KS", BASES="\n".join(bases), **strides,
        Sq=Sq, Sk=Sk, MASK_SETUP="\n".join(setup), HELPERS=helpers, STAGE_K=stage_k, STAGE_V=stage_v,
        LOAD_Q=load_q, LOAD_MASK=load_mask, QK=qk, C_COL=m["c_col"], SCORE=score, PV=pv, STORE=store)
    rows_per_block = ROWS_PER_WARP * plan.warps
    grid = (LaunchDim(dim_prod(p.lead) if p.lead else 1), LaunchDim(p.sq, rows_per_block), LaunchDim(1))
    return w.finish(body, grid, (32 * plan.warps, 1, 1))


def _stage_rows(w: KernelWriter, x: str, smem: str, base: str, width: str, pitch: str, st: Strides,
                offset: Dim, ch: int, t: str) -> str:
    """The stage loop copying a [key][d] tile of ``x`` (K or V): cp.async where aligned."""
    sub = dict(X=x, X_B=base, CH=ch, T=t)
    copy = _branch(_vector_ok(w, st, ch, offset), Template(_ROWS_CP16).substitute(sub),
                   Template(_ROWS_ELEMS).substitute(sub))
    return _STAGE_ROWS.substitute(sub, X_S=smem, W=width, P=pitch, COPY=copy)


# ----------------------------------------------------------------------------- exact fp32 FMA
def _emit_fma(graph: ir.Graph, node: ir.Node, p: _Problem) -> KernelSpec:
    d, dv = p.d, p.dv
    shared = 4 * (QUERY_TILE * d + KEY_TILE * (d + 1) + KEY_TILE * dv)
    if shared > SHARED_LIMIT:
        raise UnsupportedOpError(
            f"node {node.name!r}: attention head dims D={d}, Dv={dv} ({p.dtype}) are not generated: the "
            f"tensor-core kernel takes multiples of 16 up to {MAX_TENSOR_CORE_HEAD_DIM}, and the general "
            f"kernel's tiles would need {shared} bytes of shared memory (limit {SHARED_LIMIT})")
    t = c_type(p.dtype, node)
    w = KernelWriter("attention", node)
    q, k, v = w.buffer(p.q, p.dtype), w.buffer(p.k, p.dtype), w.buffer(p.v, p.dtype)
    mask_var = w.buffer(p.mask, graph.tensor(p.mask).dtype) if p.mask else None
    o = w.buffer(node.outputs[0], p.dtype, writable=True)
    Sq, Sk = w.dim(p.sq), w.dim(p.sk)
    regs = (dv + 31) // 32
    scale = c_literal(p.scale, "float32")
    st = {f"{n}_{a}": w.dim(x[i]) for n, x in (("Q", p.q_st), ("K", p.k_st), ("V", p.v_st), ("O", p.o_st))
          for a, i in (("S", 2), ("D", 3))}

    lines = [f"  constexpr int D = {d}, DV = {dv}, TQ = {QUERY_TILE}, KT = {KEY_TILE};",
             f"  const i64 Sq = {Sq}, Sk = {Sk};",
             "  __shared__ float q_s[TQ][D];",
             "  __shared__ float k_s[KT][D + 1];",
             "  __shared__ float v_s[KT][DV];",
             "  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;",
             "  const i64 b = blockIdx.x;",
             "  const i64 qi = (i64)blockIdx.y * TQ + warp;",
             "  const bool active = qi < Sq;",
             *_operand_bases(w, p, [("qb", f"const {t}", q, p.q_st, p.q_off),
                                    ("kb", f"const {t}", k, p.k_st, p.k_off),
                                    ("vb", f"const {t}", v, p.v_st, p.v_off), ("ob", t, o, p.o_st, 0)]),
             "  // global element strides of the s (row) and d (column) axes of Q, K, V and O",
             "  const i64 " + ", ".join(f"{n} = {x}" for n, x in st.items()) + ";"]
    if mask_var is not None:
        setup, _, row_stride, key_stride = _mask_setup(w, graph, node, p, mask_var)
        lines += setup
        q_term = f"qi * {row_stride}" if row_stride else "0"
        mask_term = f" + (float)mb[{q_term} + key * {key_stride}]"
    else:
        mask_term = ""
    lines += [
        "  for (int d = lane; d < D; d += 32) q_s[warp][d] = active ? (float)qb[qi * Q_S + d * Q_D] : 0.f;",
        "  float run_max = -tl_inf(), run_sum = 0.f;",
        f"  float acc[{regs}];",
        f"  for (int r = 0; r < {regs}; ++r) acc[r] = 0.f;",
        "  for (i64 k0 = 0; k0 < Sk; k0 += KT) {",
        "    __syncthreads();",
        "    for (int idx = threadIdx.x; idx < KT * D; idx += blockDim.x) {",
        "      const int j = idx / D, d = idx % D;",
        "      const i64 key = k0 + j;",
        "      k_s[j][d] = key < Sk ? (float)kb[key * K_S + d * K_D] : 0.f;",
        "    }",
        "    for (int idx = threadIdx.x; idx < KT * DV; idx += blockDim.x) {",
        "      const int j = idx / DV, d = idx % DV;",
        "      const i64 key = k0 + j;",
        "      v_s[j][d] = key < Sk ? (float)vb[key * V_S + d * V_D] : 0.f;",
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
        f"if (d < DV) ob[qi * O_S + d * O_D] = ({t})(acc[r] / run_sum); }}",
    ]
    grid = (LaunchDim(dim_prod(p.lead) if p.lead else 1), LaunchDim(p.sq, QUERY_TILE), LaunchDim(1))
    return w.finish("\n".join(lines), grid, (32 * QUERY_TILE, 1, 1))


@emitter("tftrt.Attention")
def _emit_attention(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    p = _parse(graph, node)
    plan = tensor_core_plan(p.dtype, p.d, p.dv, p.k_cols, p.sq,
                            allow_tf32=bool(node.attrs.get("allow_tf32", 1)))
    if plan is not None:
        variants = [_emit_tensor_core(graph, node, p, replace(plan, warps=_warps(w, p.sq)))
                    for w in WARP_VARIANTS]
        return [_emit_tensor_core(graph, node, p, plan).with_variants(variants)]
    return [_emit_fma(graph, node, p)]
