"""CUDA-graph capture and replay in the plan executor, through the C harness and through TensorFlow.

The executor captures the first ``max_cached_shapes`` input-shape sets as CUDA graphs
(first call warm-up, second call capture, later calls replay) on memory it owns, and
copies inputs in and outputs out on every call. What can go wrong: a graph that reads
stale inputs or writes where the caller no longer looks (every call here gets new
buffers and fresh random values), two shapes sharing one graph (batch sizes
alternate), two calls sharing one graph's memory at once (threads on separate streams),
and shapes past the cache. Results are compared with the NumPy reference, with
uncaptured runs of the same plan (an executor with max_cached_shapes=0, and a process
with TFTRT_LITE_CUDA_GRAPHS=0) and, through TensorFlow with native fallback disabled,
with TensorFlow's own output. The process-wide graph counters prove the graph path
really served the calls.
"""
import concurrent.futures
import ctypes
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_executor_gpu import MODELS, assert_close_tf32, harness, kernel_cache, random_feeds  # noqa: F401
from tftrt_lite.engine import build_engine
from tftrt_lite.engine.plan import LaunchStep

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_fallback"),
              pytest.mark.skipif(os.environ.get("TFTRT_LITE_CUDA_GRAPHS") in ("0", "false"),
                                 reason="CUDA graphs are disabled by TFTRT_LITE_CUDA_GRAPHS")]


def _engine(name, seed):
    import cupy

    arch = f"sm_{cupy.cuda.Device().compute_capability}"
    return build_engine(MODELS[name](np.random.default_rng(seed)), target_arch=arch, name=name)


def _delta(after, before):
    return {k: after[k] - before[k] for k in after}


def _run(executor, engine, feeds, stream):
    """One call on fresh device copies of ``feeds``; returns the outputs on the host."""
    import cupy

    out_dtypes = [np.float32] * len(engine.output_names)
    with stream:
        got = executor.run([cupy.asarray(feeds[n]) for n in engine.input_names], out_dtypes, stream)
        return [cupy.asnumpy(g) for g in got]


# --------------------------------------------------------------------------- harness
@pytest.mark.parametrize("name", ["gemm_bias_gelu", "layernorm", "attention", "conv_residual_depthwise_nhwc",
                                  "conv_pad_relu_nhwc"])
def test_replays_follow_new_inputs_at_alternating_batches(harness, name):
    """Two shapes, three calls each, alternating: each shape warms up, captures, replays."""
    import cupy

    engine = _engine(name, seed=11)
    graphs = harness.create(engine.serialize(), max_cached_shapes=2)
    plain = harness.create(engine.serialize(), max_cached_shapes=0)
    stream = cupy.cuda.Stream(non_blocking=True)
    rng = np.random.default_rng(12)
    before = harness.cuda_graph_counts()
    for call in range(6):
        batch = (3, 5)[call % 2]
        feeds = random_feeds(engine, batch, rng)
        want = engine.run_reference(feeds)
        got = _run(graphs, engine, feeds, stream)
        uncaptured = _run(plain, engine, feeds, stream)
        for out, g, u in zip(engine.output_names, got, uncaptured):
            assert g.shape == want[out].shape, (out, batch)
            assert_close_tf32(g, want[out], f"{name} call {call} (batch {batch}): {out} vs reference")
            assert_close_tf32(g, u, f"{name} call {call} (batch {batch}): {out} vs uncaptured run")
    assert _delta(harness.cuda_graph_counts(), before) == {"captured": 2, "replayed": 4, "uncapturable": 0}


def test_shapes_past_the_cache_run_uncaptured(harness):
    """With one cached shape, the first shape seen gets the graph and the others stay correct."""
    import cupy

    engine = _engine("batched_matmul", seed=13)
    executor = harness.create(engine.serialize(), max_cached_shapes=1)
    stream = cupy.cuda.Stream(non_blocking=True)
    rng = np.random.default_rng(14)
    before = harness.cuda_graph_counts()
    for call, batch in enumerate([2, 3, 4, 2, 3, 4, 2, 3, 4]):
        feeds = random_feeds(engine, batch, rng)
        want = engine.run_reference(feeds)
        for out, g in zip(engine.output_names, _run(executor, engine, feeds, stream)):
            assert_close_tf32(g, want[out], f"call {call} (batch {batch}): {out}")
    assert _delta(harness.cuda_graph_counts(), before) == {"captured": 1, "replayed": 2, "uncapturable": 0}


def test_threads_on_their_own_streams_share_one_graph(harness):
    """8 threads x 40 calls on one executor, each thread on its own stream: calls that
    find the graph busy run uncaptured, and uses of the graph's memory from different
    streams must not overlap on the device."""
    import cupy

    engine = _engine("conv_residual_depthwise_nhwc", seed=15)
    executor = harness.create(engine.serialize(), max_cached_shapes=1)
    rng = np.random.default_rng(16)
    feeds = [random_feeds(engine, 4, rng) for _ in range(8)]
    serial_stream = cupy.cuda.Stream(non_blocking=True)
    serial = [_run(executor, engine, f, serial_stream)[0] for f in feeds]  # warm-up and capture happen here
    for f, s in zip(feeds, serial):
        assert_close_tf32(s, engine.run_reference(f)["y"], "serial run")
    before = harness.cuda_graph_counts()

    def worker(i):
        stream = cupy.cuda.Stream(non_blocking=True)
        x = cupy.asarray(feeds[i]["x"])
        for call in range(40):
            with stream:
                (y,) = executor.run([x], [np.float32], stream)
                if not np.allclose(cupy.asnumpy(y), serial[i], rtol=1e-5, atol=1e-5):
                    return f"thread {i} call {call}: result differs from the serial run"
        return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        errors = [e for e in pool.map(worker, range(8)) if e]
    assert not errors, errors
    counts = _delta(harness.cuda_graph_counts(), before)
    assert counts["replayed"] > 0 and counts["uncapturable"] == 0, counts


def test_profile_times_every_step(harness):
    import cupy

    engine = _engine("layernorm", seed=17)
    executor = harness.create(engine.serialize())
    feeds = random_feeds(engine, 6, np.random.default_rng(18))
    inputs = [cupy.asarray(feeds[n]) for n in engine.input_names]
    step_us, kernels = executor.profile(inputs, repeats=5)
    assert len(step_us) == len(kernels) == len(engine.plan.steps)
    assert all(t > 0 for t in step_us), step_us
    assert kernels == [s.kernel if isinstance(s, LaunchStep) else -1 for s in engine.plan.steps]
    with_graphs = executor.time_calls(inputs, warmup=3, iters=20)
    assert with_graphs > 0
    with pytest.raises(Exception, match="at least one repeat, got 0"):
        executor.profile(inputs, repeats=0)


UNCAPTURED_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import cupy
    from tftrt_lite.runtime.harness import Harness

    harness = Harness()
    executor = harness.create(open(sys.argv[1], "rb").read())
    x = cupy.asarray(np.load(sys.argv[2]))
    outs = [cupy.asnumpy(executor.run([x], [np.float32])[0]) for _ in range(3)]
    np.save(sys.argv[3], outs[-1])
    print("RESULT " + json.dumps(harness.cuda_graph_counts()))
""")


def test_env_switch_turns_capture_off_with_the_same_results(harness, tmp_path):
    """TFTRT_LITE_CUDA_GRAPHS=0 in a fresh process: no graph is captured, and the
    uncaptured result equals this process's replayed one."""
    import json

    import cupy

    engine = _engine("gemm_bias_gelu", seed=19)
    plan_path, x_path, out_path = tmp_path / "plan.bin", tmp_path / "x.npy", tmp_path / "y.npy"
    plan_path.write_bytes(engine.serialize())
    x = random_feeds(engine, 9, np.random.default_rng(20))["x"]
    np.save(x_path, x)
    executor = harness.create(engine.serialize())
    before = harness.cuda_graph_counts()
    replayed = [cupy.asnumpy(executor.run([cupy.asarray(x)], [np.float32])[0]) for _ in range(3)][-1]
    assert _delta(harness.cuda_graph_counts(), before) == {"captured": 1, "replayed": 2, "uncapturable": 0}

    env = dict(os.environ, TFTRT_LITE_CUDA_GRAPHS="0")
    proc = subprocess.run([sys.executable, "-c", UNCAPTURED_CHILD, str(plan_path), str(x_path), str(out_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert json.loads(line[len("RESULT "):]) == {"captured": 0, "replayed": 0, "uncapturable": 0}
    assert_close_tf32(replayed, np.load(out_path), "replayed vs uncaptured process")
    assert_close_tf32(replayed, engine.run_reference({"x": x})["y"], "replayed vs reference")


# --------------------------------------------------------------------------- TensorFlow
@pytest.fixture(scope="module")
def converted_bert(tmp_path_factory):
    """(original serving fn, path of the converted SavedModel) of the zoo's BERT encoder."""
    import tensorflow as tf

    import zoo

    path = zoo.converter("bert_encoder").save(str(tmp_path_factory.mktemp("graphs") / "bert_encoder"))
    return tf.saved_model.load(zoo.saved_model("bert_encoder")).signatures["serving_default"], path


def _load(path):
    """A fresh load: new op kernels, so new executors with empty graph caches."""
    import tensorflow as tf

    return tf.saved_model.load(path).signatures["serving_default"]


def _op_graph_counts():
    from tftrt_lite.runtime import oplib

    oplib.load()
    lib = ctypes.CDLL(oplib.library_path())
    values = [ctypes.c_int64() for _ in range(3)]
    lib.tftrt_lite_cuda_graph_counts(*[ctypes.byref(v) for v in values])
    return dict(zip(("captured", "replayed", "uncapturable"), (v.value for v in values)))


def _bert_feeds(batch, seed):
    import model_zoo

    return model_zoo.random_inputs("bert_encoder", batch, seed=seed)


def _assert_close(got, want, what):
    scale = max(float(np.max(np.abs(want))), 1e-6)
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= 1e-3, f"{what}: max error {err:.2e} of output scale {scale:.3g}"


def test_tf_alternating_batches_match_tf_and_uncaptured_runs(converted_bert, harness):
    """Through TensorFlow, new input tensors every call at batches 2 and 5 in turn; each
    result is checked against TensorFlow and against an uncaptured run of the same plan."""
    import cupy
    import tensorflow as tf

    import zoo

    original, path = converted_bert
    converted = _load(path)
    engine = zoo.engine("bert_encoder")
    assert len(engine.input_names) == 1 and engine.graph.tensor(engine.input_names[0]).dtype == "int32"
    uncaptured = harness.create(engine.serialize(), max_cached_shapes=0)
    # max_cached_shapes is 1 by default: batch 2 (seen first) is captured, batch 5 is not.
    before = _op_graph_counts()
    for call in range(8):
        batch = (2, 5)[call % 2]
        ids = _bert_feeds(batch, seed=200 + call)["input_ids"]
        with tf.device("/GPU:0"):
            got = converted(input_ids=tf.constant(ids))["output_0"].numpy()
            want = original(input_ids=tf.constant(ids))["output_0"].numpy()
        _assert_close(got, want, f"call {call} (batch {batch}) vs TensorFlow")
        (plain,) = uncaptured.run([cupy.asarray(ids)], [np.float32])
        _assert_close(got, cupy.asnumpy(plain), f"call {call} (batch {batch}) vs the uncaptured run")
    # Batch 2: warm-up, capture and replay, replay, replay.
    assert _delta(_op_graph_counts(), before) == {"captured": 1, "replayed": 3, "uncapturable": 0}


def test_tf_eight_threads_match_serial_results(converted_bert):
    """8 threads x 200 calls on one converted model: the graph of batch 2 is contended,
    calls that find it busy run uncaptured, and every result equals the serial one."""
    import tensorflow as tf

    _, path = converted_bert
    converted = _load(path)
    inputs = [tf.constant(_bert_feeds(2, seed=300 + s)["input_ids"]) for s in range(8)]
    with tf.device("/GPU:0"):
        serial = [converted(input_ids=x)["output_0"].numpy() for x in inputs]
        serial = [converted(input_ids=x)["output_0"].numpy() for x in inputs]  # now from the graph
    before = _op_graph_counts()

    def worker(i):
        with tf.device("/GPU:0"):
            for call in range(200):
                out = converted(input_ids=inputs[i])["output_0"].numpy()
                if not np.allclose(out, serial[i], rtol=1e-5, atol=1e-5):
                    return f"thread {i} call {call}: result differs from the serial run"
        return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        errors = [e for e in pool.map(worker, range(8)) if e]
    assert not errors, errors
    counts = _delta(_op_graph_counts(), before)
    assert counts["replayed"] > 0 and counts["uncapturable"] == 0, counts


def test_tf_more_shapes_than_cached_stay_correct(converted_bert):
    import tensorflow as tf

    original, path = converted_bert
    converted = _load(path)
    before = _op_graph_counts()
    with tf.device("/GPU:0"):
        for call, batch in enumerate([1, 2, 3, 4] * 3):
            x = tf.constant(_bert_feeds(batch, seed=400 + call)["input_ids"])
            _assert_close(converted(input_ids=x)["output_0"].numpy(), original(input_ids=x)["output_0"].numpy(),
                          f"call {call} (batch {batch})")
    # One cached shape (the default): batch 1 warms up, then is captured and replayed,
    # then replayed again; batches 2-4 run uncaptured.
    assert _delta(_op_graph_counts(), before) == {"captured": 1, "replayed": 2, "uncapturable": 0}
