"""The attention kernels on a machine without a GPU: NVRTC compilation of every variant,
the choice between the tensor-core and exact kernels, errors for head dims no kernel takes,
and a NumPy proof of the tensor-core kernel's fragment layouts.

The proof evaluates the kernel's own per-lane index expressions (``LANE_MAPS``, from which
the CUDA source is built) lane by lane, feeds the register contents they select to NumPy
models of ``ldmatrix`` and ``mma.sync`` written from the PTX ISA's fragment tables, and
checks that the fragments the kernel ends up with hold ``Q·Kᵀ`` and ``P·V``. A last model
replays the kernel's tile loop (online softmax in the log2 domain, rounding of P) to show
the GPU tests' tolerances hold for the algorithm itself.
"""
import numpy as np
import pytest

from tftrt_lite.codegen import emit_node
from tftrt_lite.codegen.attention import LANE_MAPS, SHARED_LIMIT, tensor_core_plan
from tftrt_lite.codegen.nvrtc import compile_kernel
from tftrt_lite.engine import fused_ops, ir, symbolic
from tftrt_lite.engine.plan import np_dtype
from tftrt_lite.errors import UnsupportedOpError
from ir_graphs import one_node_graph

ARCHS = ("sm_80", "sm_90")


def attention_graph(dtype, lead, sq, sk, d, dv, k_transposed, mask_shape=None, mask_dtype="float32",
                    allow_tf32=None, scale=0.125):
    k_shape = (*lead, d, sk) if k_transposed else (*lead, sk, d)
    inputs = [("q", dtype, (*lead, sq, d)), ("k", dtype, k_shape), ("v", dtype, (*lead, sk, dv))]
    if mask_shape is not None:
        inputs.append(("mask", mask_dtype, mask_shape))
    attrs = {"scale": scale, "k_transposed": int(k_transposed)}
    if allow_tf32 is not None:
        attrs["allow_tf32"] = int(allow_tf32)
    return one_node_graph("tftrt.Attention", inputs, [("o", dtype, (*lead, sq, dv))], attrs)


#: How a strided operand lies in memory, per form: "bshd" the GEMMs' [N, S, H·D] rows (BERT's
#: projections and output after the attention_layout pass); "bhds" [N, H, D, S] (d strided,
#: keys contiguous); "padded" [N, S, H·D + 2] rows (d contiguous, rows not 16-byte aligned).
STRIDED_FORMS = {
    "bshd": dict(q="bshd", k="bshd", v="bshd", o="bshd"),
    "bshd_kcols": dict(q="bshd", k="bhds", v="bshd", o="bshd"),
    "bhds": dict(q="bhds", k="bhds", v="bhds", o="bhds"),
    "padded": dict(q="padded", k="padded", v="padded", o="bshd"),
}


def _strided_operand(kind, heads, s, d):
    """(tensor shape, (b, h, s, d) element strides) of a [N, heads, s, d] operand stored as ``kind``."""
    if kind == "bhds":
        return ("N", heads, d, s), (symbolic.mul(heads * d, s), symbolic.mul(d, s), 1, s)
    row = heads * d + (2 if kind == "padded" else 0)
    return ("N", s, row), (symbolic.mul(s, row), d, row, 1)


def strided_attention_graph(dtype, heads, sq, sk, d, dv, form, mask_shape=None, mask_dtype="float32",
                            allow_tf32=None, scale=0.125):
    """One ``tftrt.Attention`` whose operands are strided views (``layout``) in ``form``."""
    kinds = STRIDED_FORMS[form]
    ops = {n: _strided_operand(kinds[n], heads, s, dd) for n, s, dd in
           (("q", sq, d), ("k", sk, d), ("v", sk, dv), ("o", sq, dv))}
    inputs = [(n, dtype, ops[n][0]) for n in "qkv"]
    if mask_shape is not None:
        inputs.append(("mask", mask_dtype, mask_shape))
    layout = {"dims": ["N", heads, sq, sk, d, dv], **{n: list(ops[n][1]) for n in "qkvo"},
              "shapes": {n: list(ops[n][0]) for n in "qkvo"}}
    attrs = {"scale": scale, "k_transposed": 0, "layout": layout}
    if allow_tf32 is not None:
        attrs["allow_tf32"] = int(allow_tf32)
    return one_node_graph("tftrt.Attention", inputs, [("o", dtype, ops["o"][0])], attrs)


def merged_attention_graph(dtype, heads, s, d, shift=0, mask_shape=None, allow_tf32=None, scale=0.125):
    """One ``tftrt.Attention`` reading Q, K and V from one merged projection [N, S, 3·H·D + 8]
    at column offsets (the ``qkv_merge`` pass's form, its rows padded); ``shift`` moves every
    offset by that many elements (an odd one breaks the vector paths' alignment)."""
    hd = heads * d
    row = 3 * hd + 8
    strides = [symbolic.mul(s, row), d, row, 1]
    g = ir.Graph("merged", ["qkv"] + (["mask"] if mask_shape else []), ["o"])
    g.tensors["qkv"] = ir.Tensor("qkv", dtype, ("N", s, row))
    g.tensors["o"] = ir.Tensor("o", dtype, ("N", s, hd))
    inputs = ["qkv"] * 3
    if mask_shape:
        g.tensors["mask"] = ir.Tensor("mask", "float32", tuple(mask_shape))
        inputs.append("mask")
    layout = {"dims": ["N", heads, s, s, d, d], "q": strides, "k": strides, "v": strides,
              "o": [symbolic.mul(s, hd), d, hd, 1], "shapes": {**{n: ["N", s, row] for n in "qkv"}, "o": ["N", s, hd]},
              "offsets": {"q": shift, "k": hd + shift, "v": 2 * hd + shift}}
    attrs = {"scale": scale, "k_transposed": 0, "layout": layout}
    if allow_tf32 is not None:
        attrs["allow_tf32"] = int(allow_tf32)
    g.nodes.append(ir.Node("tftrt.Attention", "n", inputs, ["o"], attrs))
    g.verify()
    return g


def emit_one(g):
    (spec,) = emit_node(g, g.nodes[0])
    return spec


# --------------------------------------------------------------------------- compilation
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("k_transposed", [0, 1], ids=["K", "Kt"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_tensor_core_kernel_compiles(dtype, k_transposed, masked):
    """Masked variants use static ragged sequence lengths, unmasked ones symbolic ones."""
    if masked:
        g = attention_graph(dtype, ("N", 2), 37, 45, 64, 64, k_transposed, mask_shape=("N", 1, 1, 45),
                            mask_dtype="float16" if dtype == "float16" else "float32")
    else:
        g = attention_graph(dtype, ("N",), "S", "T", 64, 64, k_transposed)
    spec = emit_one(g)
    if dtype == "float32":
        assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in spec.source
        assert "cvt.rna.tf32.f32" in spec.source
    else:
        mt = "f16" if dtype == "float16" else "bf16"
        assert f"mma.sync.aligned.m16n8k16.row.col.f32.{mt}.{mt}.f32" in spec.source
        assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in spec.source
        # cvt.rn.f16x2.f32 d, a, b puts a in the upper half: the pack helper passes (hi, lo)
        assert f'asm("cvt.rn.{mt}x2.f32 %0, %1, %2;\\n" : "=r"(r) : "f"(hi), "f"(lo));' in spec.source
    assert "cp.async.cg.shared.global" in spec.source and ("m_row[2]" in spec.source) == masked
    warps = 3 if masked else 4   # Sq = 37 static: three 16-row tiles
    assert spec.block == (32 * warps, 1, 1) and spec.grid[1].divisor == 16 * warps
    for arch in ARCHS:
        assert compile_kernel(spec.source, spec.name, arch).cubin[:4] == b"\x7fELF"


@pytest.mark.parametrize("form", sorted(STRIDED_FORMS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_strided_layout_kernels_compile(dtype, form):
    """Operands read and written in place: cp.async and vector accesses only where d is
    contiguous and rows stay aligned, element-wise copies elsewhere."""
    g = strided_attention_graph(dtype, 12, "S", "S", 64, 64, form, mask_shape=("N", 1, 1, "S"))
    spec = emit_one(g)
    src = spec.source
    assert "const i64 bi = b / 12LL, hi = b % 12LL;" in src
    assert ("ldsm_t(bf, k_base" in src) == (dtype != "float32" and STRIDED_FORMS[form]["k"] == "bhds")
    rows_cp16 = "cp16(dst, kb + (ok ? k0 + r : 0) * K_S + col, ok);" in src
    assert rows_cp16 == (form in ("bshd", "bhds") and STRIDED_FORMS[form]["k"] == "bshd")
    assert ("src[e * V_D]" in src) == (form in ("bhds", "padded"))
    assert ("ob[r0 * O_S + c * O_D]" in src) == (form == "bhds")
    if dtype != "float32":
        assert ("qb[row * Q_S + col * Q_D].bits" in src) == (form == "bhds")
    for arch in ARCHS:
        compile_kernel(src, spec.name, arch)
    exact = emit_one(strided_attention_graph(dtype, 12, "S", "S", 40, 24, form))
    assert "mma" not in exact.source and "(float)kb[key * K_S + d * K_D]" in exact.source
    compile_kernel(exact.source, exact.name, "sm_90")


@pytest.mark.parametrize("shift", [0, 1], ids=["aligned", "odd_offsets"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_merged_projection_offsets(dtype, shift):
    """Q, K, V at offsets 0, H·D, 2·H·D of one buffer (one kernel parameter): the offsets
    join the base pointers, and an odd offset turns the paired and cp.async accesses off."""
    spec = emit_one(merged_attention_graph(dtype, 12, 128, 64, shift=shift))
    src = spec.source
    assert [a.value for a in spec.args if a.kind == "buffer"] == ["qkv", "o"]  # q, k, v: one parameter
    q_off = f"{shift}LL + " if shift else ""
    assert f"qb = in0 + {q_off}bi * " in src
    assert f"kb = in0 + {768 + shift}LL + bi * " in src and f"vb = in0 + {1536 + shift}LL + bi * " in src
    assert ("cp16(dst, kb + (ok ? k0 + r : 0) * K_S + col, ok);" in src) == (shift == 0)
    if dtype == "float16":
        assert ("qb[row * Q_S + col * Q_D].bits" in src) == (shift == 1)
    for arch in ARCHS:
        compile_kernel(src, spec.name, arch)


def test_bert_einsum_layout_takes_the_fast_paths():
    """BERT-base's [N, S, 768] projections: Q pairs, K/V tiles by cp.async, O pairs, no branches."""
    src = emit_one(strided_attention_graph("float16", 12, 128, 128, 64, 64, "bshd")).source
    assert "Q_S = 768LL, Q_D = 1LL, K_S = 768LL, K_D = 1LL;" in src and "V_S = 768LL, V_D = 1LL, O_S = 768LL" in src
    assert "const tl_half* qb = in0 + bi * 98304LL + hi * 64LL;" in src
    assert "if (" not in src.split("auto stage")[1].split("const i64 n_tiles")[0]
    assert "*reinterpret_cast<unsigned*>(ob + r0 * O_S + c)" in src and "ob[r0 * O_S + c * O_D]" not in src


@pytest.mark.parametrize("dtype, d, dv, k_transposed", [
    ("float16", 128, 128, 0), ("bfloat16", 128, 128, 1), ("float32", 128, 128, 1), ("float32", 32, 64, 0),
    ("float16", 16, 48, 1)])
def test_head_dims_up_to_128_fit_shared_memory(dtype, d, dv, k_transposed):
    plan = tensor_core_plan(dtype, d, dv, bool(k_transposed), "S")
    assert plan is not None and plan.shared_bytes <= SHARED_LIMIT and plan.warps == 4
    spec = emit_one(attention_graph(dtype, ("N",), "S", 70, d, dv, k_transposed, mask_shape=(70,)))
    assert f"BC = {plan.key_tile}," in spec.source
    compile_kernel(spec.source, spec.name, "sm_90")   # static shared memory over 48 KB would not compile


def test_short_static_query_uses_one_warp_per_block():
    spec = emit_one(attention_graph("float16", (4,), 9, 300, 64, 64, 1, mask_shape=(4, 9, 300)))
    assert spec.block == (32, 1, 1) and spec.grid[1].divisor == 16
    compile_kernel(spec.source, spec.name, "sm_80")


@pytest.mark.parametrize("sq, warps", [(17, 2), (40, 3), (64, 4), (128, 4), ("S", 4)])
def test_a_block_spans_no_more_row_tiles_than_the_query(sq, warps):
    assert tensor_core_plan("float16", 64, 64, False, sq).warps == warps


def test_warp_variants_take_the_same_arguments():
    """Two and eight warps per block are offered for the runtime to time (symbolic Sq);
    a static Sq of two row tiles leaves nothing to choose."""
    spec = emit_one(attention_graph("float16", ("N", 12), "S", "S", 64, 64, 1, mask_shape=("N", 1, 1, "S")))
    assert spec.block == (128, 1, 1)
    assert sorted(v.block[0] for v in spec.variants) == [64, 256]
    for v in spec.variants:
        assert v.args == spec.args and v.grid[1].divisor == 16 * v.block[0] // 32
        compile_kernel(v.source, v.name, "sm_90")
    assert emit_one(attention_graph("float16", ("N", 12), 32, 128, 64, 64, 1)).variants == []


def test_bert_plans():
    """BERT-base: 64 keys per tile in two 36 KB stages for fp16; 32 for TF32 (fp32 K/V rows)."""
    assert tensor_core_plan("float16", 64, 64, True, 128) == tensor_core_plan("bfloat16", 64, 64, True, 128)
    plan = tensor_core_plan("float16", 64, 64, True, 128)
    assert (plan.warps, plan.key_tile, plan.shared_bytes, plan.tf32) == (4, 64, 36864, False)
    plan = tensor_core_plan("float32", 64, 64, False, 128)
    assert (plan.key_tile, plan.tf32) == (32, True)


def test_fp32_is_exact_when_tf32_is_disallowed():
    g = attention_graph("float32", ("N",), 33, 70, 64, 64, 0, allow_tf32=0)
    spec = emit_one(g)
    assert "mma" not in spec.source and "expf(" in spec.source and spec.block == (128, 1, 1)
    compile_kernel(spec.source, spec.name, "sm_90")
    assert tensor_core_plan("float32", 64, 64, False, 33, allow_tf32=False) is None
    g = attention_graph("float32", ("N",), 33, 70, 64, 64, 0, allow_tf32=1)
    assert "tf32" in emit_one(g).source


def test_other_head_dims_take_the_general_kernel():
    """D not a multiple of 16: the FMA kernel, reading and writing halves through float."""
    spec = emit_one(attention_graph("float16", ("N",), 20, 30, 40, 24, 1, mask_shape=("N", 20, 30)))
    assert "mma" not in spec.source and "(float)kb[" in spec.source and "(tl_half)(acc[r] / run_sum)" in spec.source
    compile_kernel(spec.source, spec.name, "sm_80")


def test_unsupported_attention_is_refused_clearly():
    with pytest.raises(UnsupportedOpError, match=r"D=256, Dv=256 \(bfloat16\).*multiples of 16 up to 128.*"
                                                 r"shared memory"):
        emit_one(attention_graph("bfloat16", ("N",), 8, 8, 256, 256, 0))
    with pytest.raises(UnsupportedOpError, match="head dims must be static"):
        emit_one(attention_graph("float16", ("N",), 8, 8, "D", 64, 0))
    with pytest.raises(UnsupportedOpError, match="generated for float16, bfloat16, float32, got float64"):
        emit_one(attention_graph("float64", ("N",), 8, 8, 64, 64, 0))
    g = attention_graph("float16", ("N",), 8, 8, 64, 64, 0)
    g.tensors["v"].dtype = "float32"
    with pytest.raises(UnsupportedOpError, match="must share one dtype"):
        emit_one(g)


def test_kernels_are_built_from_the_proven_lane_maps():
    """Every lane map the proofs below evaluate is the text the kernels index with."""
    half = emit_one(attention_graph("float16", ("N",), "S", "T", 64, 64, 1)).source + \
        emit_one(attention_graph("float16", ("N",), "S", "T", 64, 64, 0)).source
    tf = emit_one(attention_graph("float32", ("N",), "S", "T", 64, 64, 1)).source + \
        emit_one(attention_graph("float32", ("N",), "S", "T", 64, 64, 0)).source
    for name, expr in LANE_MAPS.items():
        if name != "c_row":
            assert expr in (tf if name.startswith("t_") else half), name
    # accumulator elements 0, 1 belong to row g, elements 2, 3 to row g + 8 (c_row)
    for src in (half, tf):
        assert "const i64 r0 = row0 + g, r1 = row0 + g + 8;" in src and "mx[e >> 1]" in src


# --------------------------------------------------------------------------- PTX models
def lane_env(lane, **kw):
    env = {"lane": lane, "g": lane >> 2, "tg": lane & 3, **kw}
    for name in ("ldsm_row", "ldsm_col", "ldsm_t_row", "ldsm_t_col"):
        env[name] = eval(LANE_MAPS[name], {}, {"lane": lane})
    return env


def lane_map(name, lane, **kw):
    """The kernel's index expression ``name`` evaluated for one lane (C and Python agree on it)."""
    return eval(LANE_MAPS[name], {}, lane_env(lane, **kw))


def halves(word):
    """The (low, high) float16 values of a 32-bit register."""
    return (float(np.uint16(word & 0xFFFF).view(np.float16)), float(np.uint16(word >> 16).view(np.float16)))


def word(lo, hi):
    """Two float16 values packed as cvt.rn.f16x2.f32 / a 32-bit load does: ``lo`` in the low half."""
    return int(np.float16(lo).view(np.uint16)) | int(np.float16(hi).view(np.uint16)) << 16


def tf32(x):
    """cvt.rna.tf32.f32: keep 10 mantissa bits, round to nearest with ties away from zero."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def _scatter(shape, entries):
    """A matrix from (row, col, value) entries, each position written exactly once."""
    m, seen = np.zeros(shape), np.zeros(shape, int)
    for r, c, v in entries:
        m[r, c] = v
        seen[r, c] += 1
    assert (seen == 1).all(), "fragment layout does not cover the matrix exactly once"
    return m


def _accumulator_layout():
    """PTX C/D layout of a 16x8 f32 tile (the same for m16n8k16 and m16n8k8): the row and
    column of element i of lane l, at index 4l + i."""
    return [(lane >> 2) + (8 if i >= 2 else 0) for lane in range(32) for i in range(4)], \
           [(lane & 3) * 2 + (i & 1) for lane in range(32) for i in range(4)]


def _mma(a_entries, b_entries, k, c):
    """D = A·B + C on matrices assembled from fragment entries; D handed back per lane."""
    rows, cols = _accumulator_layout()
    cm = _scatter((16, 8), [(r, cc, c[i // 4][i % 4]) for i, (r, cc) in enumerate(zip(rows, cols))])
    dm = _scatter((16, k), a_entries) @ _scatter((k, 8), b_entries) + cm
    return [[dm[rows[4 * lane + i], cols[4 * lane + i]] for i in range(4)] for lane in range(32)]


def ptx_mma_m16n8k16(a, b, c):
    """mma.m16n8k16.row.col .f16: a [32][4] and b [32][2] f16x2 words, c [32][4] floats."""
    a_entries, b_entries = [], []
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(8):
            row = g if i < 2 or 4 <= i < 6 else g + 8
            a_entries.append((row, t * 2 + (i & 1) + (8 if i >= 4 else 0), halves(a[lane][i // 2])[i % 2]))
        for i in range(4):
            b_entries.append((t * 2 + (i & 1) + (8 if i >= 2 else 0), g, halves(b[lane][i // 2])[i % 2]))
    return _mma(a_entries, b_entries, 16, c)


def ptx_mma_m16n8k8_tf32(a, b, c):
    """mma.m16n8k8.row.col .tf32: a [32][4] and b [32][2] tf32 values, c [32][4] floats."""
    a_entries, b_entries = [], []
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            a_entries.append((g + (8 if i in (1, 3) else 0), t + (4 if i >= 2 else 0), a[lane][i]))
        for i in range(2):
            b_entries.append((t + 4 * i, g, b[lane][i]))
    return _mma(a_entries, b_entries, 8, c)


def ptx_ldmatrix_x4(smem, addrs, trans):
    """ldmatrix.m8n8.x4(.trans).b16: lanes 8m..8m+7 give the row addresses of matrix m; lane l
    receives row l/4, elements 2(l%4) and 2(l%4)+1 of each matrix (of its transpose for .trans)."""
    regs = [[0] * 4 for _ in range(32)]
    for m in range(4):
        rows = addrs[8 * m: 8 * m + 8]
        assert all(a * 2 % 16 == 0 for a in rows), "ldmatrix rows must be 16-byte aligned"
        assert len({a * 2 // 16 % 8 for a in rows}) == 8, "the 8 rows of one matrix hit the same banks"
        mat = np.stack([smem[a: a + 8] for a in rows])
        if trans:
            mat = mat.T
        for lane in range(32):
            regs[lane][m] = word(mat[lane // 4, 2 * (lane % 4)], mat[lane // 4, 2 * (lane % 4) + 1])
    return regs


def _gather(frags, n_tiles):
    """The [16, 8 * n_tiles] matrix a warp's accumulator fragments ``frags[lane][j][e]`` hold."""
    return _scatter((16, 8 * n_tiles), [
        (lane_map("c_row", lane, e=e), j * 8 + lane_map("c_col", lane, e=e), frags[lane][j][e])
        for lane in range(32) for j in range(n_tiles) for e in range(4)])


def _smem_tile(x, stride):
    """``x`` as a shared-memory tile with padded rows; padding is NaN, so reading it shows."""
    tile = np.full((x.shape[0], stride), np.nan, np.float16 if x.dtype == np.float16 else np.float32)
    tile[:, :x.shape[1]] = x
    return tile.reshape(-1)


# --------------------------------------------------------------------------- layout proofs
@pytest.mark.parametrize("k_transposed", [0, 1], ids=["K", "Kt"])
def test_half_fragments_compute_qk_and_pv(k_transposed):
    d, dv, bc = 32, 32, 32
    rng = np.random.default_rng(k_transposed)
    q, k, v = (rng.standard_normal(s).astype(np.float16) for s in ((16, d), (bc, d), (bc, dv)))
    ks, vs = (bc + 8 if k_transposed else d + 8), dv + 8   # the kernel's strides (KS, VS)
    k_smem = _smem_tile(k.T if k_transposed else k, ks)
    v_smem = _smem_tile(v, vs)
    qa = [[[word(q[lane_map("h_q_row", lane, r=r), c], q[lane_map("h_q_row", lane, r=r), c + 1])
            for r in range(4) for c in [lane_map("h_q_col", lane, r=r, kk=kk)]] for kk in range(d // 16)]
          for lane in range(32)]
    s = [[[0.0] * 4 for _ in range(bc // 8)] for _ in range(32)]
    for kk in range(d // 16):
        for jp in range(bc // 16):
            addrs = [lane_map("h_kt_addr" if k_transposed else "h_k_addr", lane, kk=kk, jp=jp, KS=ks)
                     for lane in range(32)]
            bf = ptx_ldmatrix_x4(k_smem, addrs, trans=bool(k_transposed))
            a = [qa[lane][kk] for lane in range(32)]
            for n, regs in ((2 * jp, (0, 1)), (2 * jp + 1, (2, 3))):
                out = ptx_mma_m16n8k16(a, [[bf[lane][regs[0]], bf[lane][regs[1]]] for lane in range(32)],
                                       [s[lane][n] for lane in range(32)])
                for lane in range(32):
                    s[lane][n] = out[lane]
    scores = _gather(s, bc // 8)
    np.testing.assert_allclose(scores, q.astype(np.float64) @ k.astype(np.float64).T, rtol=1e-12, atol=1e-12)

    # P·V, with the score fragments themselves as P (any values prove the layout)
    p = [[[x / 8 for x in tile] for tile in lane_s] for lane_s in s]
    o = [[[0.0] * 4 for _ in range(dv // 8)] for _ in range(32)]
    for kk in range(bc // 16):
        pa = [[word(p[lane][t][e], p[lane][t][e + 1]) for r in range(4)
               for t, e in [(lane_map("h_p_tile", lane, r=r, kk=kk), lane_map("h_p_elem", lane, r=r))]]
              for lane in range(32)]
        for jp in range(dv // 16):
            bf = ptx_ldmatrix_x4(v_smem, [lane_map("h_v_addr", lane, kk=kk, jp=jp, VS=vs) for lane in range(32)],
                                 trans=True)
            for n, regs in ((2 * jp, (0, 1)), (2 * jp + 1, (2, 3))):
                out = ptx_mma_m16n8k16(pa, [[bf[lane][regs[0]], bf[lane][regs[1]]] for lane in range(32)],
                                       [o[lane][n] for lane in range(32)])
                for lane in range(32):
                    o[lane][n] = out[lane]
    p16 = (scores / 8).astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(_gather(o, dv // 8), p16 @ v.astype(np.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k_transposed", [0, 1], ids=["K", "Kt"])
def test_tf32_fragments_compute_qk_and_pv(k_transposed):
    d, dv, bc = 16, 24, 16
    rng = np.random.default_rng(10 + k_transposed)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((16, d), (bc, d), (bc, dv)))
    ks, vs = (bc + 8 if k_transposed else d + 4), dv + 4
    k_smem = _smem_tile(k.T if k_transposed else k, ks)
    v_smem = _smem_tile(v, vs)
    s = [[[0.0] * 4 for _ in range(bc // 8)] for _ in range(32)]
    for kk in range(d // 8):
        a = [[tf32(q[lane_map("t_q_row", lane, r=r), lane_map("t_q_col", lane, r=r, kk=kk)]) for r in range(4)]
             for lane in range(32)]
        for j in range(bc // 8):
            addr = "t_kt_addr" if k_transposed else "t_k_addr"
            b = [[tf32(k_smem[lane_map(addr, lane, i=i, j=j, kk=kk, KS=ks)]) for i in range(2)] for lane in range(32)]
            out = ptx_mma_m16n8k8_tf32(a, b, [s[lane][j] for lane in range(32)])
            for lane in range(32):
                s[lane][j] = out[lane]
    scores = _gather(s, bc // 8)
    np.testing.assert_allclose(scores, tf32(q).astype(np.float64) @ tf32(k).astype(np.float64).T,
                               rtol=1e-12, atol=1e-12)

    # P·V over each n-tile's keys in the kernel's permuted order
    o = [[[0.0] * 4 for _ in range(dv // 8)] for _ in range(32)]
    for kk in range(bc // 8):
        a = [[tf32(s[lane][kk][lane_map("t_p_elem", lane, r=r)]) for r in range(4)] for lane in range(32)]
        for j in range(dv // 8):
            b = [[tf32(v_smem[lane_map("t_v_addr", lane, i=i, j=j, kk=kk, VS=vs)]) for i in range(2)]
                 for lane in range(32)]
            out = ptx_mma_m16n8k8_tf32(a, b, [o[lane][j] for lane in range(32)])
            for lane in range(32):
                o[lane][j] = out[lane]
    want = tf32(scores.astype(np.float32)).astype(np.float64) @ tf32(v).astype(np.float64)
    np.testing.assert_allclose(_gather(o, dv // 8), want, rtol=1e-12, atol=1e-12)


def test_tf32_scalar_fragment_reads_are_bank_conflict_free():
    for ks, addr in ((64 + 4, "t_k_addr"), (16 + 4, "t_k_addr"), (32 + 8, "t_kt_addr"), (16 + 8, "t_kt_addr")):
        for i in range(2):
            banks = {lane_map(addr, lane, i=i, j=1, kk=1, KS=ks) % 32 for lane in range(32)}
            assert len(banks) == 32, (addr, ks, i)
    for vs in (64 + 4, 16 + 4, 48 + 4):
        for i in range(2):
            assert len({lane_map("t_v_addr", lane, i=i, j=1, kk=1, VS=vs) % 32 for lane in range(32)}) == 32


# --------------------------------------------------------------------------- numerics model
def flash_model(q, k, v, mask, scale, key_tile, dtype):
    """The kernel's tile loop for one head in NumPy fp32: log2-domain online softmax, P rounded
    to the input type (or TF32) before P·V, one division at the end."""
    log2e = np.float32(1.4426950408889634)
    rnd = tf32 if dtype == "float32" else (lambda x: np.asarray(x).astype(np_dtype(dtype)).astype(np.float32))
    q32, k32, v32 = (rnd(x.astype(np.float32)) for x in (q, k, v))
    run_max = np.full(q.shape[0], -np.inf, np.float32)
    run_sum = np.zeros(q.shape[0], np.float32)
    o = np.zeros((q.shape[0], v.shape[1]), np.float32)
    for k0 in range(0, k.shape[0], key_tile):
        s = (q32 @ k32[k0:k0 + key_tile].T) * np.float32(scale * log2e)
        if mask is not None:
            s = s + mask[:, k0:k0 + key_tile].astype(np.float32) * log2e
        mx = np.maximum(run_max, s.max(axis=1))
        base = np.where(mx == -np.inf, np.float32(0), mx)
        corr = np.exp2(run_max - base)
        p = np.exp2(s - base[:, None])
        run_sum = run_sum * corr + p.sum(axis=1)
        o = o * corr[:, None] + rnd(p) @ v32[k0:k0 + key_tile]
        run_max = mx
    return (o / run_sum[:, None]).astype(np_dtype(dtype))


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-2), ("bfloat16", 1e-2), ("float32", 2e-3)])
def test_kernel_numerics_model_meets_gpu_tolerances(dtype, tol):
    rng = np.random.default_rng(3)
    for sq, sk, d in ((128, 128, 64), (37, 45, 64), (50, 70, 128)):
        q, k, v = (rng.standard_normal(s).astype(np_dtype(dtype)) for s in ((sq, d), (sk, d), (sk, d)))
        mask = np.where(rng.random((1, sk)) < 0.2, -10000.0, 0.0).astype(np.float32)
        plan = tensor_core_plan(dtype, d, d, False, sq)
        got = flash_model(q, k, v, np.broadcast_to(mask, (sq, sk)), d ** -0.5, plan.key_tile, dtype)
        (want,) = fused_ops.attention([q, k, v, mask], {"scale": d ** -0.5, "k_transposed": 0})
        want = want.astype(np.float64)
        err = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
        assert err < tol, (sq, sk, d, err)
