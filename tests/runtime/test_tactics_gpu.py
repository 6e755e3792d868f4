"""Tactic choice in the plan executor (runtime/cc/tactics.h), through the C harness.

Without a GPU: the cache text the store reads and writes (parsing, malformed lines,
another format version, the named counts). On a GPU, each check runs the executor in a
fresh process (tactic choices, the store and the env switches are process-wide, read once
per process), three calls per plan (uncaptured, captured, replayed):

* a BERT-base feed-forward block at 128 rows (GEMMs 128x3072x768 with bias+gelu,
  128x768x3072 with bias, 128x768x768 with bias+relu), the shape where split-K pays:
  tuned (and tuned with only split-K candidates allowed to win) equals untuned and the
  NumPy reference at TF32 tolerance;
* the cache file: written by one process, read by the next, which then times nothing;
  a corrupt file never changes results;
* cuDNN algorithm timing of two convolutions, then their reuse from the cache;
* the variants of a generated kernel (BERT-base-sized attention: 2, 4 or 8 warps per
  block) timed once per problem, the winner reused from the cache, and the switch.
"""
import ctypes
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tftrt_lite.engine import build_engine
from tftrt_lite.runtime.harness import HARNESS_PATH
from tftrt_lite.tune import COUNT_NAMES
from test_executor_gpu import tanh_gelu

HEADER = "# tftrt_lite tactic cache v1"
SWITCHES = ("TFTRT_LITE_TUNING", "TFTRT_LITE_GEMM_TUNING", "TFTRT_LITE_CONV_TUNING", "TFTRT_LITE_KERNEL_TUNING",
            "TFTRT_LITE_CUDA_GRAPHS")
GPU_NAME = "Test_GPU:sm_90:132sm"
ALGO = "0123456789abcdef" * 8  # 64 bytes of cublasLtMatmulAlgo_t in hex


@pytest.fixture(scope="module")
def store():
    """The harness library's tactic functions (its own process-wide store)."""
    lib = ctypes.CDLL(HARNESS_PATH)
    lib.tftrt_lite_tactics_add.restype = ctypes.c_int
    lib.tftrt_lite_tactics_add.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
    lib.tftrt_lite_tactics_dump.restype = ctypes.c_char_p
    lib.tftrt_lite_tactics_dump.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.tftrt_lite_tactics_count.restype = ctypes.c_int64
    lib.tftrt_lite_tactics_count.argtypes = [ctypes.c_char_p]
    return lib


def add(store, text):
    """(lines taken, lines malformed) of merging ``text``."""
    malformed = ctypes.c_int(-1)
    taken = store.tftrt_lite_tactics_add(text.encode(), ctypes.byref(malformed))
    return taken, malformed.value


def stored_lines(store):
    return store.tftrt_lite_tactics_dump(None, 1).decode().splitlines()


# --------------------------------------------------------------------------- no GPU needed
def test_cache_lines_round_trip_through_the_store(store):
    lines = [f"gemm {GPU_NAME} 120503 128,3072,768,1,768,3072,3072,0,0,0,0,0,0,77,6,0,256 {ALGO} 4194304",
             f"conv {GPU_NAME} 90300 1,64,58,58,64,3,3,0,0,1,1,1,1,1,0,0,0,0 1 0",
             f"kernel {GPU_NAME} 13000 3,-4611686018427387904,12,2,1,768,256 2 0"]
    assert add(store, HEADER + "\n" + "\n".join(lines) + "\n") == (3, 0)
    dumped = stored_lines(store)
    assert dumped[0] == HEADER
    assert set(lines) <= set(dumped[1:])
    # Only winners this process used are dumped by default; nothing ran here.
    assert store.tftrt_lite_tactics_dump(b"", 0).decode() == ""


def test_header_is_optional_and_blank_lines_are_ignored(store):
    line = f"conv {GPU_NAME} 90300 2,3,4 7 128"
    assert add(store, "\n\n" + line + "\r\n\n") == (1, 0)
    assert line in stored_lines(store)


@pytest.mark.parametrize("line", [
    "garbage",
    f"gemm {GPU_NAME} 120503 1,2,3 {ALGO[:-2]} 0",                 # algorithm too short
    f"gemm {GPU_NAME} 120503 1,2,3 {ALGO[:-1]}x 0",                # not hex
    f"gemm {GPU_NAME} 120503 1,,3 {ALGO} 0",                       # empty problem field
    f"gemm {GPU_NAME} 12.0 1,2,3 {ALGO} 0",                        # version not a number
    f"conv {GPU_NAME} 90300 1,2,3 99 0",                           # no such cuDNN algorithm
    f"conv {GPU_NAME} 90300 1,2,3 1",                              # a field missing
    f"conv {GPU_NAME} 90300 1,2,3 1 0 extra",                      # a field too many
    f"fft {GPU_NAME} 90300 1,2,3 1 0",                             # unknown kind
    f"kernel {GPU_NAME} 13000 1,2,3 two 0",                        # variant not a number
    f"conv {GPU_NAME} 90300 1,2,3 1 99999999999999999999999",      # workspace overflows
])
def test_malformed_lines_are_skipped_and_counted(store, line):
    good = f"conv {GPU_NAME} 90300 5,5,5 2 0"
    assert add(store, "\n".join([HEADER, line, good])) == (1, 1)
    assert line not in stored_lines(store)


def test_text_of_another_format_version_is_refused_whole(store):
    line = f"conv {GPU_NAME} 90300 6,6,6 2 0"
    assert add(store, f"# tftrt_lite tactic cache v2\n{line}\n") == (0, 2)
    assert line not in stored_lines(store)


def test_counts_are_named(store):
    for name in COUNT_NAMES:
        assert store.tftrt_lite_tactics_count(name.encode()) >= 0, name
    assert store.tftrt_lite_tactics_count(b"no_such_count") == -1


# --------------------------------------------------------------------------- models
def _f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def bert_ffn(rng, rows=128, hidden=768, ffn=3072):
    """BERT-base's feed-forward block and one more dense layer, at ``rows`` tokens per batch
    entry: MatMul+bias+tanh-GELU, MatMul+bias, residual, MatMul+bias+relu (three cuBLASLt
    GEMMs with GELU_BIAS, BIAS and RELU_BIAS epilogues)."""
    gelu, consts = tanh_gelu("hb", "gelu")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             *gelu,
             helper.make_node("MatMul", ["gelu", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["ob"]),
             helper.make_node("Add", ["ob", "x"], ["res"]),
             helper.make_node("MatMul", ["res", "w3"], ["p"]),
             helper.make_node("Add", ["p", "b3"], ["pb"]),
             helper.make_node("Relu", ["pb"], ["y"])]
    inits = {"w1": _f32(rng, hidden, ffn, scale=hidden ** -0.5), "b1": _f32(rng, ffn), **consts,
             "w2": _f32(rng, ffn, hidden, scale=ffn ** -0.5),
             "b2": _f32(rng, hidden), "w3": _f32(rng, hidden, hidden, scale=hidden ** -0.5), "b3": _f32(rng, hidden)}
    graph = helper.make_graph(nodes, "bert_ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["N", rows, hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", rows, hidden])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def attention_block(rng, heads=12, seq=128, head_dim=64):
    """softmax(Q K^T / 8) V over 12 heads of 128 tokens: one tftrt.Attention kernel with
    warp variants."""
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    shape = ["N", heads, seq, head_dim]
    graph = helper.make_graph(nodes, "attention_block",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(np.array(head_dim ** -0.5, np.float32), "scale")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_block(rng, channels=64, size=28):
    """NCHW 3x3 conv + bias + relu (cuDNN's fused path), then 1x1 conv + bias."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"])]
    inits = {"w1": _f32(rng, channels, channels, 3, 3, scale=(9 * channels) ** -0.5), "b1": _f32(rng, channels),
             "w2": _f32(rng, channels, channels, 1, 1, scale=channels ** -0.5), "b2": _f32(rng, channels)}
    shape = ["N", channels, size, size]
    graph = helper.make_graph(nodes, "conv_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# --------------------------------------------------------------------------- GPU
RUN_PLAN = textwrap.dedent("""
    import ctypes, json, sys
    import cupy
    import numpy as np
    from tftrt_lite.runtime.harness import Harness

    plan_path, inputs_path, result_path, prefer_split_k, count_names = sys.argv[1:]
    harness = Harness()
    lib = harness.lib
    lib.tftrt_lite_tactics_prefer_split_k.argtypes = [ctypes.c_int]
    lib.tftrt_lite_tactics_count.restype = ctypes.c_int64
    lib.tftrt_lite_tactics_count.argtypes = [ctypes.c_char_p]
    lib.tftrt_lite_tactics_dump.restype = ctypes.c_char_p
    lib.tftrt_lite_tactics_dump.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.tftrt_lite_tactics_prefer_split_k(int(prefer_split_k))
    with open(plan_path, "rb") as f:
        executor = harness.create(f.read())
    inputs = np.load(inputs_path)
    stream = cupy.cuda.Stream(non_blocking=True)
    runs = {}
    with stream:
        for r in range(3):  # uncaptured (chooses the tactics), captured, replayed
            outs = executor.run([cupy.asarray(inputs[f"in{i}"]) for i in range(executor.num_inputs)],
                                [np.float32] * executor.num_outputs, stream)
            runs.update({f"run{r}_out{j}": cupy.asnumpy(o) for j, o in enumerate(outs)})
    np.savez(result_path, **runs)
    counts = {n: lib.tftrt_lite_tactics_count(n.encode()) for n in count_names.split(",")}
    print("RESULT " + json.dumps({"counts": counts, "tactics": lib.tftrt_lite_tactics_dump(None, 0).decode(),
                                  "graphs": harness.cuda_graph_counts()}))
""")


def _engine(model_fn, seed=0):
    import cupy

    arch = f"sm_{cupy.cuda.Device().compute_capability}"
    return build_engine(model_fn(np.random.default_rng(seed)), target_arch=arch, name=model_fn.__name__)


def _feeds(engine, batch, seed=1):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in engine.input_names:
        shape = tuple(batch if isinstance(d, str) else int(d) for d in engine.graph.tensor(name).shape)
        feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run_plan(tmp_path, engine, feeds, *, cache="off", prefer_split_k=False, **env):
    """Runs ``engine`` three times in a fresh process on ``feeds``; returns the last run's
    outputs and {"counts", "tactics", "graphs"}. ``cache`` is TFTRT_LITE_TACTIC_CACHE; every
    run's outputs must agree (the captured and replayed calls use the tuned algorithms)."""
    plan_path, inputs_path, result_path = tmp_path / "plan.bin", tmp_path / "inputs.npz", tmp_path / "result.npz"
    plan_path.write_bytes(engine.serialize())
    np.savez(inputs_path, **{f"in{i}": feeds[n] for i, n in enumerate(engine.input_names)})
    base = {k: v for k, v in os.environ.items() if k not in SWITCHES}  # each test sets its own
    proc = subprocess.run(
        [sys.executable, "-c", RUN_PLAN, str(plan_path), str(inputs_path), str(result_path),
         str(int(prefer_split_k)), ",".join(COUNT_NAMES)],
        capture_output=True, text=True, timeout=600, env=dict(base, TFTRT_LITE_TACTIC_CACHE=str(cache), **env))
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    info["stderr"] = proc.stderr
    result = np.load(result_path)
    outputs = [result[f"run2_out{j}"] for j in range(len(engine.output_names))]
    for r in (0, 1):
        for j, want in enumerate(outputs):
            np.testing.assert_allclose(result[f"run{r}_out{j}"], want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"run {r} output {j} differs from the replayed run")
    return outputs, info


def assert_close_tf32(got, want, what):
    """TF32 tolerance relative to the output's scale (as tests/runtime/test_executor_gpu.py)."""
    atol = 1e-3 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=atol, err_msg=what)


def assert_matches_reference(engine, feeds, outputs, what):
    want = engine.run_reference(feeds)
    for name, got in zip(engine.output_names, outputs):
        assert_close_tf32(got, want[name], f"{what}: output {name!r}")


@pytest.fixture(scope="module")
def ffn():
    engine = _engine(bert_ffn)
    return engine, _feeds(engine, batch=1)


@pytest.fixture(scope="module")
def convs():
    engine = _engine(conv_block)
    return engine, _feeds(engine, batch=2)


@pytest.mark.gpu
def test_tuned_gemms_with_split_k_match_the_untuned_path(tmp_path, ffn):
    engine, feeds = ffn
    untuned, info = run_plan(tmp_path, engine, feeds, TFTRT_LITE_TUNING="0")
    assert info["counts"]["gemm_timed"] == 0 and info["tactics"] == "", info
    assert_matches_reference(engine, feeds, untuned, "untuned")

    tuned, info = run_plan(tmp_path, engine, feeds)
    assert info["counts"]["gemm_timed"] == 3, info          # three distinct GEMM problems
    assert info["graphs"]["captured"] == 1, info
    assert_matches_reference(engine, feeds, tuned, "tuned")
    for got, want in zip(tuned, untuned):
        assert_close_tf32(got, want, "tuned vs untuned")

    split_k, info = run_plan(tmp_path, engine, feeds, prefer_split_k=True)
    print(f"\nwith split-K preferred: {info['counts']}\n{info['tactics']}")
    assert_matches_reference(engine, feeds, split_k, "split-K")
    for got, want in zip(split_k, untuned):
        assert_close_tf32(got, want, "split-K vs untuned")
    assert info["counts"]["split_k_chosen"] >= 1, (
        f"no split-K candidate passed cuBLASLt's check and the output check at 128 rows: {info}")


@pytest.mark.gpu
def test_gemm_tuning_switch_is_an_alias_for_gemms_only(tmp_path, ffn, convs):
    engine, feeds = ffn
    _, info = run_plan(tmp_path, engine, feeds, TFTRT_LITE_GEMM_TUNING="0")
    assert info["counts"]["gemm_timed"] == 0, info
    engine, feeds = convs
    outputs, info = run_plan(tmp_path, engine, feeds, TFTRT_LITE_GEMM_TUNING="0", TFTRT_LITE_CONV_TUNING="1")
    assert info["counts"]["conv_timed"] >= 1, info
    assert_matches_reference(engine, feeds, outputs, "convs with GEMM tuning off")


@pytest.mark.gpu
def test_cache_file_is_written_then_reused_without_timing(tmp_path, ffn):
    engine, feeds = ffn
    cache = tmp_path / "cache" / "tactics.txt"  # its folder is created too
    first, info = run_plan(tmp_path, engine, feeds, cache=cache)
    timed = info["counts"]["gemm_timed"]
    assert timed == 3, info
    lines = cache.read_text().splitlines()
    assert lines[0] == HEADER
    assert len([line for line in lines if line.startswith("gemm ")]) == timed
    assert set(lines[1:]) == set(info["tactics"].splitlines()[1:])

    second, info = run_plan(tmp_path, engine, feeds, cache=cache)
    assert info["counts"]["gemm_timed"] == 0 and info["counts"]["cache_hits"] == timed, info
    assert cache.read_text().splitlines() == lines, "a process that times nothing appends nothing"
    for got, want in zip(second, first):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _corrupt(kind, valid_text):
    if kind == "binary garbage":
        return b"\x00\xff\xfe not a tactic cache \x80\n"
    if kind == "another format version":
        return valid_text.replace("v1", "v9").encode()
    if kind == "malformed lines and a cut-off last line":
        return (HEADER + "\ngemm broken\nconv x y z\n" + valid_text.splitlines()[1][:40]).encode()
    if kind == "zeroed algorithms":  # well-formed lines whose algorithm bytes are all zero
        lines = [" ".join(f[:4] + ["0" * len(f[4])] + f[5:]) if f[0] == "gemm" else line
                 for line in valid_text.splitlines() for f in [line.split()]]
        return ("\n".join(lines) + "\n").encode()
    raise ValueError(kind)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["binary garbage", "another format version",
                                  "malformed lines and a cut-off last line", "zeroed algorithms"])
def test_corrupt_cache_file_still_gives_correct_results(tmp_path, ffn, kind):
    engine, feeds = ffn
    valid = tmp_path / "valid.txt"
    run_plan(tmp_path, engine, feeds, cache=valid)
    cache = tmp_path / "corrupt.txt"
    cache.write_bytes(_corrupt(kind, valid.read_text()))
    outputs, info = run_plan(tmp_path, engine, feeds, cache=cache)
    assert_matches_reference(engine, feeds, outputs, f"with a cache file of {kind}")
    after = cache.read_bytes()
    if kind in ("binary garbage", "another format version"):
        assert after == _corrupt(kind, valid.read_text()), "a foreign file is left as is"
        assert "tactic cache" in info["stderr"] and "left as is" in info["stderr"]
    elif kind == "malformed lines and a cut-off last line":
        lines = after.decode().splitlines()
        assert info["counts"]["gemm_timed"] == 3, info
        assert sum(line.startswith("gemm ") and len(line.split()) == 6 for line in lines) >= 3, lines
    else:
        assert info["counts"]["cache_hits"] + info["counts"]["cache_rejected"] == 3, info


@pytest.mark.gpu
def test_conv_timing_is_opt_in(tmp_path, convs):
    engine, feeds = convs
    outputs, info = run_plan(tmp_path, engine, feeds, cache=tmp_path / "tactics.txt")
    assert info["counts"]["conv_timed"] == 0 and not info["tactics"].count("conv "), info
    assert_matches_reference(engine, feeds, outputs, "convs in cuDNN's heuristic order")


@pytest.mark.gpu
def test_conv_timing_picks_an_algorithm_then_reuses_it(tmp_path, convs):
    engine, feeds = convs
    cache = tmp_path / "tactics.txt"
    first, info = run_plan(tmp_path, engine, feeds, cache=cache, TFTRT_LITE_CONV_TUNING="1")
    timed = info["counts"]["conv_timed"]  # the 3x3 convolution, where cuDNN offers a choice
    gemms = info["counts"]["gemm_timed"]  # the 1x1 convolution runs as a cuBLASLt GEMM
    assert timed >= 1, info
    assert len([line for line in info["tactics"].splitlines() if line.startswith("conv ")]) == timed, info
    assert_matches_reference(engine, feeds, first, "timed convs")

    second, info = run_plan(tmp_path, engine, feeds, cache=cache, TFTRT_LITE_CONV_TUNING="1")
    assert info["counts"]["conv_timed"] == info["counts"]["gemm_timed"] == 0, info
    assert info["counts"]["cache_hits"] == timed + gemms, info
    for got, want in zip(second, first):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    untuned, info = run_plan(tmp_path, engine, feeds, TFTRT_LITE_TUNING="0")
    assert info["counts"]["conv_timed"] == 0, info
    for got, want in zip(first, untuned):
        assert_close_tf32(got, want, "timed vs untimed convs")


@pytest.fixture(scope="module")
def attention():
    engine = _engine(attention_block)
    (step,) = [s for s in engine.plan.steps if getattr(s, "variants", None)]
    assert len(step.variants) == 2
    return engine, _feeds(engine, batch=2)


@pytest.mark.gpu
def test_kernel_variants_are_timed_then_reused(tmp_path, attention):
    engine, feeds = attention
    cache = tmp_path / "tactics.txt"
    first, info = run_plan(tmp_path, engine, feeds, cache=cache)
    assert info["counts"]["kernel_timed"] == 1, info
    (line,) = [line for line in info["tactics"].splitlines() if line.startswith("kernel ")]
    fields = line.split()
    assert len(fields) == 6 and fields[4] in ("0", "1", "2") and fields[5] == "0", line
    assert_matches_reference(engine, feeds, first, "timed kernel variants")

    second, info = run_plan(tmp_path, engine, feeds, cache=cache)
    assert info["counts"]["kernel_timed"] == 0 and info["counts"]["cache_hits"] == 1, info
    for got, want in zip(second, first):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    untimed, info = run_plan(tmp_path, engine, feeds, TFTRT_LITE_KERNEL_TUNING="0")
    assert info["counts"]["kernel_timed"] == 0 and info["tactics"] == "", info
    assert_matches_reference(engine, feeds, untimed, "the emitted kernel")
