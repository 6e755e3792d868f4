"""Converted zoo models on the GPU: the engines (never the fallback) against TF's own GPU output.

Native fallback is disabled in every test here, so a test can only pass if the
TftrtLiteEngine op executed its plan. Tolerance is TF-TRT's for FP32 with TF32 math
(1e-3, relative to the output's scale). Concurrency (8 threads x 200 calls equal to
serial results, on the captured CUDA-graph path) is checked in
tests/runtime/test_cuda_graphs_gpu.py.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

import model_zoo
import tftrt_lite
import zoo

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_fallback")]


_loaded = {}


def _signatures(name, tmp_root, precision="FP32"):
    key = (name, precision)
    if key not in _loaded:
        out = zoo.converter(name, precision).save(os.path.join(tmp_root, f"{name}_{precision}_gpu"))
        original = tf.saved_model.load(zoo.saved_model(name))
        converted = tf.saved_model.load(out)
        _loaded[key] = (original, converted)
    original, converted = _loaded[key]
    return original.signatures["serving_default"], converted.signatures["serving_default"]


def _assert_close(got, want, what, tolerance=1e-3):
    scale = max(float(np.max(np.abs(want))), 1e-6)
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= tolerance, f"{what}: max error {err:.2e} of output scale {scale:.3g}"


def _run_both(name, precision, batch, seed, tmp_root):
    """TF's and the converted model's outputs on the same fresh inputs; the engine must run."""
    original, converted = _signatures(name, tmp_root, precision)
    feeds = {k: tf.constant(v) for k, v in model_zoo.random_inputs(name, batch, seed=seed).items()}
    tftrt_lite.reset_stats()
    with tf.device("/GPU:0"):
        want, got = original(**feeds), converted(**feeds)
    stats = tftrt_lite.stats()
    assert stats["engine_calls"] >= 1 and stats["fallback_calls"] == 0, stats
    return want, got


@pytest.mark.parametrize("name", zoo.ZOO)
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_engine_matches_tf_gpu(name, batch, tmp_path_factory):
    want, got = _run_both(name, "FP32", batch, batch + 100, str(tmp_path_factory.getbasetemp()))
    for key in want:
        _assert_close(got[key].numpy(), want[key].numpy(), f"{name} b{batch} {key}")


@pytest.mark.parametrize("precision", ["FP16", "BF16"])
@pytest.mark.parametrize("name", zoo.ZOO)
@pytest.mark.parametrize("batch", [1, 7])
def test_reduced_precision_engine_matches_tf_fp32_gpu(name, precision, batch, tmp_path_factory):
    """FP16/BF16 engines against TF's float32 GPU output, relative to the output's scale:
    FP16 at TF-TRT's 1e-2; BF16 at 2e-2, because bfloat16 keeps 8 significant bits to
    float16's 11 (8x the rounding error per stored value; measured on the H200: up to
    1.3e-2 on the BERT-style encoder and 1.1e-2 on ResNet50, where FP16 stays under 1e-2)."""
    want, got = _run_both(name, precision, batch, batch + 300, str(tmp_path_factory.getbasetemp()))
    for key in want:
        assert got[key].dtype == want[key].dtype
        _assert_close(got[key].numpy(), want[key].numpy(), f"{name} {precision} b{batch} {key}",
                      1e-2 if precision == "FP16" else 2e-2)


def test_repeated_calls_with_new_buffers_each_time(tmp_path_factory):
    """Each call gets fresh input/output addresses from TF; results must follow the inputs."""
    original, converted = _signatures("bert_encoder", str(tmp_path_factory.getbasetemp()))
    for seed in range(20):
        feeds = {k: tf.constant(v) for k, v in model_zoo.random_inputs("bert_encoder", 3, seed=seed).items()}
        with tf.device("/GPU:0"):
            _assert_close(converted(**feeds)["output_0"].numpy(), original(**feeds)["output_0"].numpy(),
                          f"call {seed}")


@pytest.mark.parametrize("name", zoo.ZOO)
@pytest.mark.parametrize("batch", [1, 7])
def test_int8_engine_matches_its_reference_and_tf_fp32_gpu(name, batch, tmp_path_factory):
    """INT8 engines (calibrated on two random batches: the zoo has no data) against the plan's
    own reference executor at TF-TRT's INT8 tolerance, 5e-2 of the output's scale: the GPU
    computes the same int8 grids, but an activation a float16 rounding apart lands on the
    other side of an int8 step now and then, and deep random-weight networks amplify that
    (measured on the H200: up to 2.3e-2 on ResNet50). Against TF's float32 output the bound
    is 1e-1: random weights with ranges from random data are no accuracy benchmark (measured:
    7.9e-2 on the BERT-style encoder at batch 1); INT8 accuracy is judged by the task metric
    in tests/test_converter_int8.py."""
    want, got = _run_both(name, "INT8", batch, batch + 500, str(tmp_path_factory.getbasetemp()))
    (built,) = zoo.converter(name, "INT8").engines().values()
    feeds = model_zoo.random_inputs(name, batch, seed=batch + 500)
    reference = built.engine.run_reference({n: feeds[t.split(":")[0]] for n, t in
                                            zip(built.lowered.input_names, built.lowered.input_tensors)})
    (out,) = built.engine.output_names
    for key in want:
        _assert_close(got[key].numpy(), reference[out], f"{name} INT8 b{batch} {key} vs reference", 5e-2)
        _assert_close(got[key].numpy(), want[key].numpy(), f"{name} INT8 b{batch} {key}", 1e-1)
