"""The C++ plan executor, driven through its TensorFlow-free C harness.

``_tftrt_lite_executor.so`` (runtime/cc/harness.cc) exposes the executor the
TftrtLiteEngine op runs. On a GPU, engines built from small ONNX models (the shapes
tf2onnx emits: NCHW convs between transposes, MatMul+Add, LayerNormalization...) and from
the zoo models lowered the way the converter lowers them run on CuPy buffers, at batch
1 and 7 of one plan, and must match the engine's NumPy reference at TF32 tolerance.
Without a GPU the harness still loads (it opens no CUDA library until a run), which is
where plan validation is checked. The harness also carries the executor's measuring
entry points (per-step profile, end-to-end call timing) and its CUDA-graph counters,
which ``test_cuda_graphs_gpu.py`` checks; its ctypes binding is
``tftrt_lite.runtime.harness``, which ``tftrt_lite.profile`` uses too.
"""
import ctypes
import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tftrt_lite.engine import build_engine
from tftrt_lite.engine.plan import (Activation, ConvStep, GemmStep, deserialize_plan, np_dtype,
                                    serialize_plan)
from tftrt_lite.runtime.harness import (ALLOC_FN, HARNESS_PATH, INVALID_PLAN, MAX_RANK,
                                        OUT_OF_PROFILE, UNAVAILABLE, ExecutorError, Harness)


def _gpu_available():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver or no device: CuPy raises its own errors
        return False


HAS_GPU = _gpu_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU visible to CuPy")


@pytest.fixture(scope="module")
def harness():
    if not os.path.exists(HARNESS_PATH):
        pytest.fail(f"{HARNESS_PATH} is missing; build it with `pip install --no-build-isolation -e .`")
    return Harness()


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TFTRT_LITE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel_cache"))


# --------------------------------------------------------------------------- models
def _model(name, nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_pad_relu_nhwc(rng):
    """tf2onnx's NHWC conv: transposes around an NCHW Conv, with Keras' asymmetric
    ZeroPadding (bottom/right) before a stride-2 conv, then bias and relu."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Pad", ["xt", "pads"], ["xp"]),
             helper.make_node("Conv", ["xp", "w", "b"], ["c"], strides=[2, 2], pads=[0, 0, 0, 0]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1])]
    inits = {"pads": np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "w": _f32(rng, 8, 3, 3, 3),
             "b": _f32(rng, 8)}
    return _model("conv_pad_relu", nodes, [_vi("x", ["N", 10, 10, 3])], [_vi("y", ["N", 5, 5, 8])], inits)


def conv_residual_depthwise_nhwc(rng):
    """A residual block (conv + bias + identity shortcut + relu) then a depthwise relu6 conv."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c1", "xt"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r6"]),
             helper.make_node("Conv", ["r6", "w3"], ["c3"]),
             helper.make_node("Sigmoid", ["c3"], ["g"]),
             helper.make_node("Transpose", ["g"], ["y"], perm=[0, 2, 3, 1])]
    inits = {"w1": _f32(rng, 8, 8, 3, 3, scale=0.2), "b1": _f32(rng, 8), "w2": _f32(rng, 8, 1, 3, 3),
             "b2": _f32(rng, 8), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
             "w3": _f32(rng, 4, 8, 1, 1, scale=0.3)}
    return _model("conv_residual_dw", nodes, [_vi("x", ["N", 6, 6, 8])], [_vi("y", ["N", 6, 6, 4])], inits)


def pointwise_convs_nhwc(rng):
    """1×1 convs that run as cuBLASLt GEMMs: bias + identity shortcut + relu (the residual
    is the GEMM's C), then bias + relu6 (a clip kernel after the GEMM) to 40 channels. The
    inner dim is kept at 8 so two chained TF32 GEMMs stay well inside the TF32 tolerance
    (measured against the output's scale, which the clip at 6 caps)."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w1", "b1"], ["c1"]),
             helper.make_node("Add", ["c1", "xt"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c2"]),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r6"]),
             helper.make_node("Transpose", ["r6"], ["y"], perm=[0, 2, 3, 1])]
    inits = {"w1": _f32(rng, 8, 8, 1, 1, scale=0.35), "b1": _f32(rng, 8), "w2": _f32(rng, 40, 8, 1, 1, scale=0.8),
             "b2": _f32(rng, 40), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    return _model("pointwise_convs", nodes, [_vi("x", ["N", 7, 5, 8])], [_vi("y", ["N", 7, 5, 40])], inits)


def tanh_gelu(x, y):
    """ONNX nodes of ``y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`` (the form the GEMM fusion
    turns into a cuBLASLt GELU epilogue) and the constants they read."""
    nodes = [helper.make_node("Mul", [x, x], [f"{y}.x2"]),
             helper.make_node("Mul", [f"{y}.x2", x], [f"{y}.x3"]),
             helper.make_node("Mul", [f"{y}.x3", "gelu_k"], [f"{y}.kx3"]),
             helper.make_node("Add", [x, f"{y}.kx3"], [f"{y}.inner"]),
             helper.make_node("Mul", [f"{y}.inner", "gelu_c"], [f"{y}.scaled"]),
             helper.make_node("Tanh", [f"{y}.scaled"], [f"{y}.t"]),
             helper.make_node("Add", [f"{y}.t", "gelu_one"], [f"{y}.t1"]),
             helper.make_node("Mul", [x, "gelu_half"], [f"{y}.half"]),
             helper.make_node("Mul", [f"{y}.half", f"{y}.t1"], [y])]
    consts = {"gelu_k": np.array(0.044715, np.float32), "gelu_c": np.array(np.sqrt(2 / np.pi), np.float32),
              "gelu_one": np.array(1, np.float32), "gelu_half": np.array(0.5, np.float32)}
    return nodes, consts


def gemm_bias_gelu(rng):
    """Dense + tanh-form GELU (a cuBLASLt GELU_BIAS epilogue), then Gemm with transB and C."""
    gelu, consts = tanh_gelu("hb", "gelu")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             *gelu,
             helper.make_node("Gemm", ["gelu", "w2", "b2"], ["y"], transB=1)]
    inits = {"w1": _f32(rng, 16, 32, scale=0.3), "b1": _f32(rng, 32), **consts,
             "w2": _f32(rng, 12, 32, scale=0.3), "b2": _f32(rng, 12)}
    return _model("gemm_gelu", nodes, [_vi("x", ["N", 16])], [_vi("y", ["N", 12])], inits)


def batched_matmul(rng):
    """A batched matmul of two inputs, a matmul by a shared weight, and a broadcast batch."""
    nodes = [helper.make_node("MatMul", ["a", "b"], ["ab"]),
             helper.make_node("MatMul", ["ab", "w"], ["y"]),
             helper.make_node("MatMul", ["wl", "a"], ["z"])]
    inits = {"w": _f32(rng, 8, 5), "wl": _f32(rng, 3, 8)}
    return _model("batched_matmul", nodes, [_vi("a", ["N", 4, 8, 16]), _vi("b", ["N", 4, 16, 8])],
                  [_vi("y", ["N", 4, 8, 5]), _vi("z", ["N", 4, 3, 16])], inits)


def layernorm(rng):
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["ln", "w"], ["y"])]
    inits = {"g": _f32(rng, 32), "b": _f32(rng, 32), "w": _f32(rng, 32, 32, scale=0.2)}
    return _model("layernorm", nodes, [_vi("x", ["N", 6, 32])], [_vi("y", ["N", 6, 32])], inits)


def attention(rng):
    """softmax(Q K^T / sqrt(d)) V over heads, as Keras' MultiHeadAttention lowers."""
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    inits = {"scale": np.array(1 / np.sqrt(16), np.float32)}
    shape = ["N", 2, 8, 16]
    return _model("attention", nodes, [_vi("q", shape), _vi("k", shape), _vi("v", shape)], [_vi("y", shape)],
                  inits)


def elementwise_chain(rng):
    nodes = [helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Add", ["m", "z"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["g"]),
             helper.make_node("Tanh", ["z"], ["t"]),
             helper.make_node("Sub", ["g", "t"], ["d"]),
             helper.make_node("Exp", ["d"], ["e"]),
             helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=0),
             helper.make_node("Neg", ["x"], ["nx"])]
    inits = {"a": _f32(rng, 5), "axes": np.array([1], np.int64)}
    return _model("elementwise", nodes, [_vi("x", ["N", 3, 5]), _vi("z", ["N", 3, 5])],
                  [_vi("y", ["N", 5]), _vi("nx", ["N", 3, 5])], inits)


def pooling_nhwc(rng):
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("MaxPool", ["xt"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              count_include_pad=0),
             helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"], axis=1)]
    return _model("pooling", nodes, [_vi("x", ["N", 8, 8, 6])], [_vi("y", ["N", 6])], {})


def embedding_lookup(rng):
    """Token rows gathered by int32 ids (host memory under TensorFlow) plus a float input."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
             helper.make_node("Add", ["rows", "x"], ["s"]),
             helper.make_node("MatMul", ["s", "w"], ["y"])]
    inits = {"table": _f32(rng, 16, 8), "w": _f32(rng, 8, 4, scale=0.3)}
    return _model("embedding_lookup", nodes, [_vi("x", ["N", 5, 8]), _vi("ids", ["N", 5], TensorProto.INT32)],
                  [_vi("y", ["N", 5, 4])], inits)


MODELS = {f.__name__: f for f in (conv_pad_relu_nhwc, conv_residual_depthwise_nhwc, pointwise_convs_nhwc,
                                  gemm_bias_gelu, batched_matmul, layernorm, attention, elementwise_chain,
                                  pooling_nhwc, embedding_lookup)}


def random_feeds(engine, batch, rng):
    """Fresh random inputs for every engine input, its symbol N bound to ``batch``."""
    feeds = {}
    for name in engine.input_names:
        t = engine.graph.tensor(name)
        shape = tuple(batch if isinstance(d, str) else int(d) for d in t.shape)
        if t.dtype.startswith("int"):
            feeds[name] = rng.integers(0, 16, shape).astype(np_dtype(t.dtype))
        else:
            feeds[name] = rng.standard_normal(shape).astype(np_dtype(t.dtype))
    return feeds


def assert_close_tf32(got, want, what):
    """TF32 tolerance: TF32 rounds GEMM/conv inputs to 10-bit mantissas, so an element's
    error scales with the magnitude of the whole output, not with the element's own
    (1e-3 relative, plus 1e-3 of the output's largest magnitude when that exceeds 1)."""
    atol = 1e-3 * max(1.0, float(np.abs(want).max())) if want.size else 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=atol, err_msg=what)


def run_and_compare(harness, engine, batches=(1, 7), seed=0):
    import cupy

    executor = harness.create(engine.serialize())
    assert (executor.num_inputs, executor.num_outputs) == (len(engine.input_names), len(engine.output_names))
    out_dtypes = [np_dtype(engine.graph.tensor(o).dtype) for o in engine.output_names]
    stream = cupy.cuda.Stream(non_blocking=True)
    rng = np.random.default_rng(seed)
    for batch in batches:
        feeds = random_feeds(engine, batch, rng)
        want = engine.run_reference(feeds)
        with stream:
            got = executor.run([cupy.asarray(feeds[n]) for n in engine.input_names], out_dtypes, stream)
        for name, g in zip(engine.output_names, got):
            w = want[name]
            assert g.shape == w.shape, (name, batch)
            assert_close_tf32(cupy.asnumpy(g), w, f"{engine.name}: output {name!r} at batch {batch}")


# --------------------------------------------------------------------------- no GPU needed
def _small_plan():
    return build_engine(gemm_bias_gelu(np.random.default_rng(0)), target_arch="sm_90").serialize()


def test_rejects_bad_magic(harness):
    plan = bytearray(_small_plan())
    plan[:8] = b"NOTAPLAN"
    with pytest.raises(ExecutorError, match="not a tftrt_lite plan") as raised:
        harness.create(bytes(plan))
    assert raised.value.code == INVALID_PLAN


def test_rejects_other_format_version(harness):
    plan = bytearray(_small_plan())
    plan[8:12] = (99).to_bytes(4, "little")
    with pytest.raises(ExecutorError, match="plan format version 99 is not supported by this runtime"):
        harness.create(bytes(plan))


def test_rejects_truncated_plan(harness):
    plan = _small_plan()
    with pytest.raises(ExecutorError, match=f"plan header says {len(plan)} bytes, got {len(plan) - 100}"):
        harness.create(plan[:-100])


def test_accepts_built_plan_and_counts_its_inputs_outputs_and_steps(harness):
    engine = build_engine(batched_matmul(np.random.default_rng(1)), target_arch="sm_90")
    executor = harness.create(engine.serialize())
    assert (executor.num_inputs, executor.num_outputs) == (2, 2)
    assert executor.num_steps == len(engine.plan.steps) > 0
    assert harness.create(engine.serialize(), max_cached_shapes=0).num_steps == executor.num_steps


def test_rejects_gemm_activation_cublaslt_cannot_apply(harness):
    plan = deserialize_plan(_small_plan())
    (index, step), = [(i, s) for i, s in enumerate(plan.steps) if isinstance(s, GemmStep)
                      and s.activation == Activation.GELU_TANH]
    step.activation = Activation.SIGMOID
    with pytest.raises(ExecutorError, match=rf"gemm step #{index} '{step.name}': activation 4 is not a "
                                            r"cuBLASLt epilogue") as raised:
        harness.create(serialize_plan(plan))
    assert raised.value.code == INVALID_PLAN


def test_rejects_conv_clip_with_nonzero_lower_bound(harness):
    engine = build_engine(conv_residual_depthwise_nhwc(np.random.default_rng(2)), target_arch="sm_90")
    plan = engine.plan
    conv = next(s for s in plan.steps if isinstance(s, ConvStep))  # the depthwise relu6 is a generated kernel
    conv.activation, conv.act_p0, conv.act_p1 = Activation.CLIP, 0.0, 6.0
    harness.create(serialize_plan(plan))  # relu6 itself is fine
    conv.act_p0 = -1.0
    with pytest.raises(ExecutorError, match=r"clip\(-1.0+, 6.0+\) has a lower bound other than 0"):
        harness.create(serialize_plan(plan))


@pytest.mark.skipif(HAS_GPU, reason="checks the error of a machine without a CUDA driver")
def test_run_without_driver_is_unavailable(harness):
    executor = harness.create(_small_plan())
    lib = harness.lib
    fake = (ctypes.c_uint64 * 1)(256)
    rank = (ctypes.c_int32 * 1)(2)
    dims = (ctypes.c_int64 * 2)(3, 16)
    out = (ctypes.c_uint64 * 1)()
    out_rank = (ctypes.c_int32 * 1)()
    out_dims = (ctypes.c_int64 * MAX_RANK)()
    on_host = (ctypes.c_uint8 * 1)(0)
    code = lib.tftrt_lite_executor_run(executor.handle, None, 1, fake, on_host, rank, dims, ALLOC_FN(lambda _, n: 0),
                                       None, out, out_rank, out_dims, MAX_RANK)
    assert code == UNAVAILABLE
    assert "libcuda.so.1" in lib.tftrt_lite_executor_last_error().decode()


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", sorted(MODELS))
def test_engine_matches_reference(harness, name):
    import cupy

    arch = f"sm_{cupy.cuda.Device().compute_capability}"
    engine = build_engine(MODELS[name](np.random.default_rng(sorted(MODELS).index(name))), target_arch=arch,
                          name=name)
    run_and_compare(harness, engine)


@pytest.mark.gpu
@gpu
def test_ptx_is_jit_compiled_for_a_newer_arch(harness):
    """A plan with only sm_80 code runs on a newer GPU through the driver's PTX JIT."""
    import cupy

    if int(cupy.cuda.Device().compute_capability) <= 80:
        pytest.skip("needs a GPU newer than sm_80")
    engine = build_engine(elementwise_chain(np.random.default_rng(3)), target_arch="sm_80")
    run_and_compare(harness, engine, batches=(3,))


@pytest.mark.gpu
@gpu
def test_input_shape_outside_profile_is_reported(harness):
    import cupy

    engine = build_engine(batched_matmul(np.random.default_rng(4)), target_arch="sm_90")
    executor = harness.create(engine.serialize())
    a = cupy.asarray(np.random.default_rng(5).standard_normal((2, 4, 8, 16)).astype(np.float32))
    b = cupy.asarray(np.random.default_rng(6).standard_normal((3, 4, 16, 8)).astype(np.float32))
    with pytest.raises(ExecutorError, match=r"shape outside engine profile: input 1 \('b'\) has shape "
                                            r"\[3,4,16,8\], the engine needs \[2,4,16,8\] with N=2") as raised:
        executor.run([a, b], [np.float32, np.float32])
    assert raised.value.code == OUT_OF_PROFILE


@pytest.mark.gpu
@gpu
def test_concurrent_runs_on_one_executor(harness):
    """Several threads, each on its own stream, share one executor and its caches."""
    import concurrent.futures

    import cupy

    engine = build_engine(conv_residual_depthwise_nhwc(np.random.default_rng(7)), target_arch="sm_90")
    executor = harness.create(engine.serialize())
    rng = np.random.default_rng(8)
    feeds = [random_feeds(engine, batch, rng) for batch in (1, 2, 3, 4, 5, 6)]
    want = [engine.run_reference(f)["y"] for f in feeds]

    def run(i):
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            (y,) = executor.run([cupy.asarray(feeds[i]["x"])], [np.float32], stream)
            return cupy.asnumpy(y)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        got = list(pool.map(run, range(len(feeds))))
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close_tf32(g, w, f"run {i}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("max_cached_shapes", [0, 1])
def test_host_inputs_are_uploaded_on_the_stream(harness, max_cached_shapes):
    """int32 ids in host memory (a NumPy array, as TensorFlow hands them to the op): the
    executor stages and uploads them each call, uncaptured and under a CUDA graph, and
    the buffer may be rewritten as soon as the call returns. More calls than staging
    slots, so every slot is reused."""
    import cupy

    engine = build_engine(embedding_lookup(np.random.default_rng(9)), target_arch="sm_90")
    executor = harness.create(engine.serialize(), max_cached_shapes=max_cached_shapes)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    ids = np.empty((3, 5), np.int32)
    stream = cupy.cuda.Stream(non_blocking=True)
    for call in range(12):
        ids[...] = rng.integers(0, 16, ids.shape)  # the same host buffer, new values
        want = engine.run_reference({"x": x, "ids": ids})["y"]
        with stream:
            (y,) = executor.run([cupy.asarray(x), ids], [np.float32], stream)
        assert_close_tf32(cupy.asnumpy(y), want, f"call {call}")


# --------------------------------------------------------------------------- zoo
@pytest.mark.gpu
@pytest.mark.slow
@gpu
@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2", "bert_encoder"])
def test_zoo_engine_matches_reference(harness, name):
    import zoo

    run_and_compare(harness, zoo.engine(name))
