"""``tftrt_lite.profile`` on the split model's conversion and on small engines.

Without a GPU: engine input shapes resolved by shape inference (an engine downstream of
another one included, and the error when an op hides a shape), random engine inputs
that stay inside the Gather tables they index, step records from a real plan, the
report's JSON round trip, text and PNG, and the clear error a machine without a GPU
gets. On a GPU, the split model is profiled for real.
"""
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from onnx import TensorProto, helper, numpy_helper

import model_zoo
from gpu_check import gpu_available
from tftrt_lite import Converter
from tftrt_lite.compare import INT_RANGE
from tftrt_lite.engine import build_engine
from tftrt_lite.engine.builder import Engine
from tftrt_lite.engine.costs import roofline_share, step_costs, symbol_values
from tftrt_lite.errors import ShapeError, TftrtLiteError
from tftrt_lite.profile import (EndToEnd, EngineNode, ProfileError, ProfileReport, engine_inputs, engine_profile,
                                index_range, plan_output_shapes, profile_saved_model, resolve_engines,
                                step_profiles)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _HiddenBatch(tf.Module):
    """A dense block behind a serialize/parse round trip: ParseTensor's output has no
    known shape and EnsureShape restores only [?, 8], so the engine's batch dim cannot
    be inferred from the signature's."""

    def __init__(self):
        self.w = tf.Variable(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec((None, 8), tf.float32, name="x")])
    def serve(self, x):
        y = tf.ensure_shape(tf.io.parse_tensor(tf.io.serialize_tensor(x), tf.float32), [None, 8])
        return {"y": tf.nn.relu(tf.matmul(tf.tanh(y), self.w)) * 2.0}


def _convert(src, out):
    conv = Converter(input_saved_model_dir=src, minimum_segment_size=2)
    conv.convert()
    return conv.save(out)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    return _convert(model_zoo.build_split_model(str(root)), str(root / "converted"))


@pytest.fixture(scope="module")
def hidden_batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("hidden_batch")
    module = _HiddenBatch()
    tf.saved_model.save(module, str(root / "src"), signatures={"serving_default": module.serve})
    return _convert(str(root / "src"), str(root / "converted"))


def _lookup_engine():
    """An engine whose int32 input ``ids`` indexes a 10-row table and whose ``k`` is only added."""
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "ids64"], ["rows"], axis=0),
             helper.make_node("Add", ["k", "k"], ["k2"])]
    graph = helper.make_graph(
        nodes, "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", 4]),
         helper.make_tensor_value_info("k", TensorProto.INT32, ["N", 4])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["N", 4, 3]),
         helper.make_tensor_value_info("k2", TensorProto.INT32, ["N", 4])],
        [numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3), "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return build_engine(model, target_arch="sm_90", name="lookup")


def _report(converted, engines=True):
    """A report of the split model's engines with made-up measurements (step i: i + 1 µs)."""
    profiles = []
    for node in resolve_engines(converted, "serving_default", {"x": (4, 8)}) if engines else []:
        engine = Engine.deserialize(node.plan)
        step_us = [float(i + 1) for i in range(len(engine.plan.steps))]
        profiles.append(engine_profile(node, engine, step_us, 0.012, 0.034,
                                       {"captured": 1, "replayed": 50, "uncapturable": 0}))
    return ProfileReport(converted, "serving_default", 4, "NVIDIA H200", "2026-11-21", "random, seed 0",
                         {"x": {"dtype": "float32", "shape": [4, 8]}}, EndToEnd(0.25, 0.24, 10, 50), profiles)


# --------------------------------------------------------------------------- engine input shapes
def test_engine_input_shapes_follow_the_signature_inputs(converted):
    engines = resolve_engines(converted, "serving_default", {"x": (3, 8)})
    # engine 1 reads engine 0's output through native string ops: its batch dim comes from engine 0's plan
    assert [(e.name, e.input_shapes) for e in engines] == [
        ("TftrtLiteEngine_serving_default_0", [(3, 8)]), ("TftrtLiteEngine_serving_default_1", [(3, 16)])]
    assert all(e.function and e.plan for e in engines)
    (logits,) = resolve_engines(converted, "logits", {"x": (5, 8)})
    assert (logits.name, logits.input_shapes) == ("TftrtLiteEngine_logits_0", [(5, 8)])


def test_plan_output_shapes_follow_the_input_shapes(converted):
    first, _ = resolve_engines(converted, "serving_default", {"x": (6, 8)})
    assert plan_output_shapes(Engine.deserialize(first.plan).plan, first.input_shapes) == [(6, 16)]


def test_a_shape_hidden_from_shape_inference_names_the_engine_and_input(hidden_batch):
    with pytest.raises(ShapeError, match=r"engine 'TftrtLiteEngine_serving_default_0' .*: input 0 \(tensor "
                                         r"'.*EnsureShape:0'\) has shape \(None, 8\) for signature inputs of "
                                         r"shapes \{'x': \[3, 8\]\}; shape inference leaves it unknown"):
        resolve_engines(hidden_batch, "serving_default", {"x": (3, 8)})


def test_input_shapes_must_name_the_signature_inputs(converted):
    with pytest.raises(ProfileError, match=r"exactly the signature inputs \['x'\], got \['y'\]"):
        resolve_engines(converted, "serving_default", {"y": (3, 8)})


# --------------------------------------------------------------------------- engine inputs and steps
def test_int_inputs_stay_inside_the_table_they_index():
    engine = _lookup_engine()
    assert index_range(engine, "ids") == (0, 10)
    assert index_range(engine, "k") == INT_RANGE
    node = EngineNode("lookup", "lookup", None, [(64, 4), (64, 4)], engine.serialize())
    ids, k = engine_inputs(engine, node, np.random.default_rng(0))
    assert ids.dtype == k.dtype == np.int32 and ids.shape == k.shape == (64, 4)
    assert ids.min() == 0 and ids.max() == 9
    assert INT_RANGE[0] <= k.min() and k.max() < INT_RANGE[1]


def test_engine_inputs_must_match_the_plan(converted):
    node = resolve_engines(converted, "serving_default", {"x": (3, 8)})[0]
    engine = Engine.deserialize(node.plan)
    (x,) = engine_inputs(engine, node, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (3, 8)
    node.input_shapes = [(3, 8), (3, 8)]
    with pytest.raises(ProfileError, match="the node has 2 inputs, its plan 1"):
        engine_inputs(engine, node, np.random.default_rng(0))


def test_steps_are_sorted_with_work_rates_and_roofline(converted):
    node = resolve_engines(converted, "serving_default", {"x": (32, 8)})[0]
    plan = Engine.deserialize(node.plan).plan
    step_us = [2.0 + i for i in range(len(plan.steps))]
    steps = step_profiles(plan, step_us, symbol_values(plan, node.input_shapes))
    assert [s.us for s in steps] == sorted(step_us, reverse=True)
    assert sum(s.share for s in steps) == pytest.approx(1.0, abs=1e-4)
    costs = step_costs(plan, symbol_values(plan, node.input_shapes))
    for s in steps:
        assert (s.flops, s.bytes) == (costs[s.index]["flops"], costs[s.index]["bytes"])
        assert s.gbps == pytest.approx(s.bytes / (s.us * 1e3), abs=0.01)
        assert s.roofline == pytest.approx(roofline_share(plan.steps[s.index], costs[s.index], s.us * 1e-6),
                                           abs=1e-4)
        assert s.kind in ("launch", "gemm", "conv") and s.kernel
    assert {"gemm", "launch"} <= {s.kind for s in steps}
    assert any(s.kind == "gemm" and s.tflops > 0 for s in steps)


# --------------------------------------------------------------------------- report
def test_json_round_trip(converted, tmp_path):
    report = _report(converted)
    path = tmp_path / "profile.json"
    report.to_json(path)
    assert ProfileReport.read_json(path) == report
    data = json.loads(path.read_text())
    assert {"device", "date", "model_dir", "batch", "engines", "end_to_end", "ceilings"} <= set(data)
    assert [e["precision"] for e in data["engines"]] == ["FP32", "FP32"]
    assert os.listdir(tmp_path) == ["profile.json"]        # written through a temporary file, renamed


def test_engine_records_total_by_kind(converted):
    first, second = _report(converted).engines
    # engine 0: fused tanh (1 us), MatMul (2 us), fused mul (3 us); engine 1: MatMul_1 (1 us), fused sub (2 us)
    assert [s.index for s in first.steps] == [2, 1, 0] and first.step_sum_us == 6.0
    assert first.by_kind == {"launch": {"steps": 2, "us": 4.0, "share": 0.66667},
                             "gemm": {"steps": 1, "us": 2.0, "share": 0.33333}}
    assert [s.kind for s in second.steps] == ["launch", "gemm"]
    assert (first.ms_cuda_graphs, first.ms_uncaptured, first.cuda_graph_counts["replayed"]) == (0.012, 0.034, 50)


def test_format_shows_the_slowest_steps_and_the_totals(converted):
    report = _report(converted)
    text = report.format(top=2)
    assert "tftrt_lite profile of" in text and "signature 'serving_default', batch 4" in text
    assert "NVIDIA H200, 2026-11-21; inputs (random, seed 0): x float32[4, 8]" in text
    assert "end to end through TensorFlow: 0.250 ms/batch (median of 10 x 50 calls; best 0.240)" in text
    first, second = report.engines
    assert f"engine {first.name} (FP32, inputs [[4, 8]]): 3 steps, 6.0 us summed over steps; the 2 slowest:" in text
    assert f"engine {second.name} (FP32, inputs [[4, 16]]): 2 steps, 3.0 us summed over steps:" in text
    assert "StatefulPartitionedCall/mul/fused / " in text and "StatefulPartitionedCall/MatMul / cublasLtMatmul" in text
    assert "StatefulPartitionedCall/Tanh/fused" not in text         # the fastest step of engine 0, past top=2
    assert "by kind: launch 2 steps 4.0 us (66.7%), gemm 1 steps 2.0 us (33.3%)" in text
    assert "engine alone: 0.012 ms/call with CUDA graphs (captured 1, replayed 50), 0.034 ms/call uncaptured" in text
    assert "HBM 4.3 TB/s, fp16/bf16 790 TFLOP/s, TF32 494 TFLOP/s" in text
    assert "engine " not in _report(converted, engines=False).format()


def test_save_png_writes_a_matplotlib_png(converted, tmp_path):
    path = tmp_path / "profile.png"
    _report(converted).save_png(path, top=5)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert b"Software" in data and b"Matplotlib" in data     # matplotlib's tEXt chunk names it
    assert os.listdir(tmp_path) == ["profile.png"]


def test_save_png_without_matplotlib_says_how_to_install_it(converted, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ProfileError, match="pip install matplotlib"):
        _report(converted).save_png(tmp_path / "profile.png")


def test_save_png_needs_the_per_engine_profile(converted, tmp_path):
    with pytest.raises(ProfileError, match="no per-step profile to plot"):
        _report(converted, engines=False).save_png(tmp_path / "profile.png")


# --------------------------------------------------------------------------- arguments and GPU
@pytest.mark.parametrize("kwargs, error, message", [
    ({"batch": 0}, ProfileError, "batch must be an integer >= 1, got 0"),
    ({"iters": 0}, ProfileError, "iters must be an integer >= 1"),
    ({"signature_key": "nope"}, TftrtLiteError, r"no signature 'nope'; keys present: \['logits', 'serving_default'\]"),
    ({"inputs": {"x": np.ones((2, 7), np.float32)}}, TftrtLiteError, r"input 'x' has shape \(2, 7\)"),
])
def test_bad_arguments_are_named(converted, kwargs, error, message):
    with pytest.raises(error, match=message):
        profile_saved_model(converted, **kwargs)


@pytest.mark.skipif(gpu_available(), reason="checks the error of a machine without a GPU")
@pytest.mark.parametrize("per_engine, what", [(True, "profiling"), (False, "benchmarking")])
def test_without_a_gpu_the_error_says_so(converted, per_engine, what):
    with pytest.raises(ProfileError, match=f"{what} needs an NVIDIA GPU, and TensorFlow sees none"):
        profile_saved_model(converted, batch=2, per_engine=per_engine)


@pytest.mark.gpu
def test_profiles_the_split_model_on_the_gpu(converted, tmp_path):
    report = profile_saved_model(converted, batch=4, repeats=3, iters=5)
    assert report.batch == 4 and report.device and report.end_to_end.ms_per_batch > 0
    assert [(e.name, e.input_shapes) for e in report.engines] == [
        ("TftrtLiteEngine_serving_default_0", [[4, 8]]), ("TftrtLiteEngine_serving_default_1", [[4, 16]])]
    for engine in report.engines:
        assert engine.steps and all(s.us > 0 for s in engine.steps)
        assert engine.step_sum_us == pytest.approx(sum(s.us for s in engine.steps), abs=0.01)
        assert engine.ms_cuda_graphs > 0 and engine.ms_uncaptured > 0
        assert engine.cuda_graph_counts["captured"] == 1 and engine.cuda_graph_counts["replayed"] >= 5
    report.to_json(tmp_path / "p.json")
    report.save_png(tmp_path / "p.png")
    assert ProfileReport.read_json(tmp_path / "p.json") == report
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE
