"""Engines on a second GPU: the same converted model placed on /GPU:1 runs its plan there.

The executor keeps its state (loaded modules, library handles, graph caches) per CUDA
context and takes the context from the stream TensorFlow hands the op, so an engine on
/GPU:1 must load its own modules and never touch /GPU:0's memory. What can go wrong: a
kernel launched in the wrong context (an illegal address or a wrong result), state built
on one device reused on the other, or captured graphs shared between devices. Native
fallback is disabled, so a test can only pass if both devices ran the engine.
"""
import concurrent.futures
import os

import numpy as np
import pytest
import tensorflow as tf

import model_zoo
import tftrt_lite
import zoo

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_fallback"),
              pytest.mark.skipif(len(tf.config.list_physical_devices("GPU")) < 2, reason="needs two GPUs")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = zoo.converter("resnet50").save(str(tmp_path_factory.mktemp("multi_gpu") / "resnet50"))
    original = tf.saved_model.load(zoo.saved_model("resnet50")).signatures["serving_default"]
    converted = tf.saved_model.load(out).signatures["serving_default"]
    return original, converted


def _on(device, func, feeds):
    with tf.device(device):
        result = func(**{k: tf.constant(v) for k, v in feeds.items()})
        return {k: v.numpy() for k, v in result.items()}


def _assert_close(got, want, what):
    for key in want:
        scale = max(float(np.max(np.abs(want[key]))), 1e-6)
        err = float(np.max(np.abs(got[key] - want[key]))) / scale
        assert err <= 1e-3, f"{what} {key}: max error {err:.2e} of output scale {scale:.3g}"


def test_engine_runs_on_second_gpu(models):
    original, converted = models
    for batch in (1, 7):
        feeds = model_zoo.random_inputs("resnet50", batch, seed=500 + batch)
        tftrt_lite.reset_stats()
        got = _on("/GPU:1", converted, feeds)
        stats = tftrt_lite.stats()
        assert stats["engine_calls"] >= 1 and stats["fallback_calls"] == 0, stats
        _assert_close(got, _on("/GPU:1", original, feeds), f"/GPU:1 b{batch}")
        assert tf.config.experimental.get_memory_info("GPU:1")["current"] > 0


def test_both_gpus_at_once_match_serial(models):
    """Threads alternating between /GPU:0 and /GPU:1 equal one-at-a-time results."""
    original, converted = models
    feeds = [model_zoo.random_inputs("resnet50", 4, seed=600 + i) for i in range(4)]
    want = [_on("/GPU:0", original, f) for f in feeds]
    jobs = [(f"/GPU:{i % 2}", i % len(feeds)) for i in range(64)]
    tftrt_lite.reset_stats()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: _on(job[0], converted, feeds[job[1]]), jobs))
    stats = tftrt_lite.stats()
    assert stats["engine_calls"] >= len(jobs) and stats["fallback_calls"] == 0, stats
    for (device, i), got in zip(jobs, results):
        _assert_close(got, want[i], f"{device} feeds {i}")
