"""The ``tftrt.Attention`` kernels launched on the GPU (their NVRTC cubins, through CuPy)
against ``fused_ops.attention`` run on the same inputs (already rounded to the dtype).

Every dtype (fp16, bf16, fp32 on TF32, exact fp32) × K layout × mask / no mask × ragged
sequence lengths, head dims from 16 to 128, and BERT-base's shapes at batch 1 and 2 with a
[B, 1, 1, Sk] padding mask of -10000 entries. Errors are measured relative to the output's
scale: max |got - want| / max |want|. BERT batch 1 is also timed (printed, not asserted).
Strided operand layouts (``layout``: BERT's [N, S, H·D] projections read and its output
written in place, keys-contiguous K, d-strided operands, rows too unaligned for cp.async)
run every mode with and without a mask, the output prefilled with NaN so a missed or
misplaced store shows; so do Q, K and V read at offsets of one merged projection. Each
case runs the emitted kernel and every variant the runtime may choose instead (other
warps per block).
"""

import numpy as np
import pytest

from tftrt_lite.codegen import emit_node
from tftrt_lite.engine import fused_ops, symbolic
from tftrt_lite.engine.plan import np_dtype
from cuda_launch import gpu_arch, prepare, to_device, to_host
from test_attention import STRIDED_FORMS, attention_graph, merged_attention_graph, strided_attention_graph

cupy = pytest.importorskip("cupy")


ARCH = gpu_arch()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(ARCH is None, reason="needs a CUDA GPU visible to CuPy")]

#: id → (dtype, allow_tf32 attr, tolerance relative to the output scale)
MODES = {"fp16": ("float16", None, 1e-2), "bf16": ("bfloat16", None, 1e-2),
         "tf32": ("float32", None, 2e-3), "fp32": ("float32", 0, 1e-5)}
#: id → (lead dims, Sq, Sk, D, Dv, mask shape, mask dtype (None: the inputs'), symbol values)
SHAPES = {
    "ragged_fullmask": (("N", 2), "S", "T", 64, 64, ("N", 2, "S", "T"), "float32", {"N": 3, "S": 37, "T": 45}),
    "keymask_sk72": (("N",), "S", "T", 64, 64, ("N", 1, "T"), None, {"N": 2, "S": 70, "T": 72}),
    "d128": (("N",), "S", "T", 128, 128, (1, "T"), "float32", {"N": 2, "S": 50, "T": 100}),
    "d32_dv64": (("N",), "S", "T", 32, 64, ("S", "T"), "float32", {"N": 3, "S": 33, "T": 20}),
    "d16_long_k": ((2,), "S", "T", 16, 16, (2, 1, "T"), "float32", {"S": 17, "T": 300}),
    "short_q_static": ((4,), 9, 300, 64, 64, (4, 9, 300), "float32", {}),
    "general_d40": (("N",), "S", "T", 40, 24, ("N", "S", "T"), "float32", {"N": 2, "S": 21, "T": 35}),
}
BERT_HEADS, BERT_SEQ, BERT_HEAD_DIM = 12, 128, 64


def _concrete(shape, env):
    return tuple(int(symbolic.evaluate(d, env)) for d in shape)


def _inputs(g, env, rng, masked_frac=0.2):
    """Fresh normal inputs in each tensor's dtype; masks get -10000 at ~20% of entries."""
    feeds = {}
    for t in g.inputs:
        tt = g.tensors[t]
        x = rng.standard_normal(_concrete(tt.shape, env))
        if t == "mask":
            x = np.where(rng.random(x.shape) < masked_frac, -10000.0, x)
        feeds[t] = x.astype(np_dtype(tt.dtype))
    return feeds


def _run(g, feeds, env, tmp_path):
    """Runs the node's kernel and each of its variants on fresh NaN-filled outputs; returns
    the kernel's spec and [(name, output)] of all of them."""
    node = g.nodes[0]
    dtype = g.tensors["o"].dtype
    (spec,) = emit_node(g, node)
    outs = []
    for kernel in [spec, *spec.variants]:
        buffers = {t: to_device(x) for t, x in feeds.items()}
        out_shape = _concrete(g.tensors["o"].shape, env)
        nan_bits = {"float16": 0x7E00, "bfloat16": 0x7FC0}
        buffers["o"] = (cupy.full(out_shape, nan_bits[dtype], np.uint16) if dtype in nan_bits
                        else cupy.full(out_shape, np.nan, np.float32))   # unwritten elements show up as NaN
        if dtype == "float16":
            buffers["o"] = buffers["o"].view(np.float16)
        fn, grid, block, args = prepare(kernel, buffers, env, ARCH, tmp_path)
        fn(grid, block, args)
        cupy.cuda.Device(0).synchronize()
        outs.append((f"{kernel.name} ({block[0] // 32} warps)", to_host(buffers["o"], dtype)))
    return spec, outs


def _check(g, feeds, outs, tol, what):
    node = g.nodes[0]
    (want,) = fused_ops.attention([feeds[t] if t else None for t in node.inputs], node.attrs)
    want64 = want.astype(np.float64)
    for kernel, got in outs:
        where = f"{what}, kernel {kernel}"
        assert got.shape == want.shape and got.dtype == want.dtype, where
        got64 = got.astype(np.float64)
        assert np.isfinite(got64).all(), f"{where}: {np.isnan(got64).sum()} NaN/unwritten of {got64.size}"
        err = np.abs(got64 - want64).max() / np.abs(want64).max()
        assert err <= tol, f"{where}: max error {err:.3g} of the output scale (tolerance {tol})"


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "nomask"])
@pytest.mark.parametrize("shape_id", sorted(SHAPES))
@pytest.mark.parametrize("k_transposed", [0, 1], ids=["K", "Kt"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_attention_matches_reference(mode, k_transposed, shape_id, masked, tmp_path):
    dtype, allow_tf32, tol = MODES[mode]
    lead, sq, sk, d, dv, mask_shape, mask_dtype, env = SHAPES[shape_id]
    g = attention_graph(dtype, lead, sq, sk, d, dv, k_transposed, mask_shape=mask_shape if masked else None,
                        mask_dtype=mask_dtype or dtype, allow_tf32=allow_tf32, scale=d ** -0.5)
    rng = np.random.default_rng([sorted(MODES).index(mode), k_transposed, sorted(SHAPES).index(shape_id), int(masked)])
    feeds = _inputs(g, env, rng)
    spec, outs = _run(g, feeds, env, tmp_path)
    assert ("mma.sync" in spec.source) == (mode != "fp32" and shape_id != "general_d40")
    _check(g, feeds, outs, tol, f"{mode} {shape_id} k_transposed={k_transposed} masked={masked}")


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "nomask"])
@pytest.mark.parametrize("form", sorted(STRIDED_FORMS))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_strided_layout_matches_reference(mode, form, masked, tmp_path):
    """Ragged symbolic sequences (Sq 37, Sk 45) over 3 heads, D = Dv = 64 (tensor cores
    except exact fp32), and BERT-base's shapes (12 heads, 128, D = 64) at batch 2."""
    dtype, allow_tf32, tol = MODES[mode]
    for heads, sq, sk, env in ((3, "S", "T", {"N": 2, "S": 37, "T": 45}), (BERT_HEADS, BERT_SEQ, BERT_SEQ, {"N": 2})):
        g = strided_attention_graph(dtype, heads, sq, sk, 64, 64, form,
                                    mask_shape=("N", 1, 1, sk) if masked else None, allow_tf32=allow_tf32,
                                    scale=0.125)
        rng = np.random.default_rng([sorted(MODES).index(mode), sorted(STRIDED_FORMS).index(form), int(masked), heads])
        feeds = _inputs(g, env, rng)
        spec, outs = _run(g, feeds, env, tmp_path)
        assert ("mma.sync" in spec.source) == (mode != "fp32")
        _check(g, feeds, outs, tol, f"{mode} {form} heads={heads} masked={masked}")


@pytest.mark.parametrize("shift", [0, 1], ids=["aligned", "odd_offsets"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_merged_projection_matches_reference(mode, shift, tmp_path):
    """Q, K, V at column offsets of one [N, S, 3·H·D + 8] buffer (the QKV merge's form):
    BERT-base's shapes with a padding mask, and a ragged symbolic sequence without one."""
    dtype, allow_tf32, tol = MODES[mode]
    for heads, s, mask, env in ((BERT_HEADS, BERT_SEQ, ("N", 1, 1, BERT_SEQ), {"N": 2}),
                                (3, "S", None, {"N": 3, "S": 45})):
        g = merged_attention_graph(dtype, heads, s, 64, shift=shift, mask_shape=mask, allow_tf32=allow_tf32)
        rng = np.random.default_rng([sorted(MODES).index(mode), shift, heads])
        feeds = _inputs(g, env, rng)
        spec, outs = _run(g, feeds, env, tmp_path)
        assert ("mma.sync" in spec.source) == (mode != "fp32")
        _check(g, feeds, outs, tol, f"{mode} shift={shift} heads={heads}")


def bert_graph(mode, k_transposed=1):
    dtype, allow_tf32, _ = MODES[mode]
    return attention_graph(dtype, ("N", BERT_HEADS), BERT_SEQ, BERT_SEQ, BERT_HEAD_DIM, BERT_HEAD_DIM, k_transposed,
                           mask_shape=("N", 1, 1, BERT_SEQ), allow_tf32=allow_tf32, scale=BERT_HEAD_DIM ** -0.5)


def _bert_feeds(g, env, rng):
    """BERT's padding mask: the last keys of each sequence are -10000 (a different count per batch)."""
    feeds = _inputs(g, env, rng, masked_frac=0.0)
    mask = np.zeros(_concrete(g.tensors["mask"].shape, env), np.float32)
    for i in range(mask.shape[0]):
        mask[i, ..., BERT_SEQ - 9 - 23 * i:] = -10000.0
    feeds["mask"] = mask
    return feeds


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("k_transposed", [0, 1], ids=["K", "Kt"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_bert_base_attention(mode, k_transposed, batch, tmp_path):
    g, env = bert_graph(mode, k_transposed), {"N": batch}
    feeds = _bert_feeds(g, env, np.random.default_rng([batch, k_transposed]))
    _, outs = _run(g, feeds, env, tmp_path)
    _check(g, feeds, outs, MODES[mode][2], f"BERT-base b{batch} {mode} k_transposed={k_transposed}")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_bert_base_batch1_timing(mode, tmp_path, capsys):
    """Prints µs per launch: back to back from Python, and replayed from a CUDA graph (kernel
    time without the host's launch overhead). The pre-tensor-core kernel took 38.5 µs."""
    g, env = bert_graph(mode), {"N": 1}
    feeds = _bert_feeds(g, env, np.random.default_rng(0))
    buffers = {t: to_device(x) for t, x in feeds.items()}
    buffers["o"] = cupy.zeros(_concrete(g.tensors["o"].shape, env), np.uint16 if mode in ("fp16", "bf16")
                              else np.float32)
    (spec,) = emit_node(g, g.nodes[0])
    fn, grid, block, args = prepare(spec, buffers, env, ARCH, tmp_path)
    reps = 200
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(10):
            fn(grid, block, args)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(reps):
            fn(grid, block, args)
        end.record()
        end.synchronize()
        direct = cupy.cuda.get_elapsed_time(start, end) * 1e3 / reps
        stream.begin_capture()
        for _ in range(reps):
            fn(grid, block, args)
        graph = stream.end_capture()
        graph.launch()
        start.record()
        graph.launch()
        end.record()
        end.synchronize()
        replayed = cupy.cuda.get_elapsed_time(start, end) * 1e3 / reps
    with capsys.disabled():
        print(f"\nBERT-base b1 attention [12 heads, 128x128, D=64, Kt, mask] {mode}: {direct:.1f} us/launch "
              f"back to back, {replayed:.1f} us/launch from a CUDA graph (grid {grid}, block {block})")
