"""End-to-end conversion: the four reference models and the TF-TRT-compatible API.

The zoo models are converted once per process (``zoo.converter``) and every check
below reads that one conversion: structure (one engine covering every compute op),
the engine's own math (NumPy reference executor of the plan against TensorFlow
running the segment, two batch sizes), kernels compiled for sm_80 and sm_90, and
the saved model reloaded in a fresh process (outputs through the op's native
fallback on a machine without a GPU).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import model_zoo
import tftrt_lite
import zoo
from tftrt_lite.engine import Engine
from tftrt_lite.errors import TftrtLiteError
from tftrt_lite.verify import verify_engine

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("name", zoo.ZOO)
def test_zoo_model_is_one_engine_covering_every_compute_op(name):
    report = zoo.converter(name).report()["signatures"]["serving_default"]
    assert len(report["engines"]) == 1, report["engines"]
    assert report["failed_segments"] == []
    assert report["segmentation"]["unsupported"] == {}
    assert report["converted_ops"] == report["total_ops"] > 0


@pytest.mark.parametrize("name", zoo.ZOO)
def test_zoo_engine_math_matches_tensorflow_at_two_batch_sizes(name):
    # The plan's math, op by op in NumPy, against TF running the segment it replaced;
    # every intermediate that still carries a TF tensor name is compared too.
    verify_engine(zoo.engine(name), zoo.lowered(name), batch_sizes=(1, 3))


@pytest.mark.parametrize("name", zoo.ZOO)
def test_zoo_engine_kernels_compiled_for_sm80_and_sm90(name):
    engine = zoo.engine(name)
    assert engine.kernels, "every zoo engine has generated kernels"
    assert engine.stats["kernel_count"] == len(engine.kernels)
    for kernel in engine.kernels:
        assert [image.arch for image in kernel.images] == ["sm_80", "sm_90"]
        assert all(image.cubin[:4] == b"\x7fELF" for image in kernel.images)
    if name != "bert_encoder":
        assert engine.stats["library_calls"] >= 1 and "tftrt.FusedConv" in engine.stats["ops"]
    assert Engine.deserialize(engine.serialize()).serialize() == engine.serialize()


_FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tftrt_lite
cases = json.loads(sys.argv[1])
for case in cases:
    feeds = dict(np.load(case["inputs"]))
    fn = tf.saved_model.load(case["converted"]).signatures["serving_default"]
    out = fn(**{k: tf.constant(v) for k, v in feeds.items()})
    np.savez(case["result"], **{k: v.numpy() for k, v in out.items()})
print(json.dumps(tftrt_lite.stats()))
"""


def test_zoo_saved_models_reload_in_fresh_process_and_match(tmp_path):
    cases, expected = [], {}
    for name in zoo.ZOO:
        converted = zoo.converter(name).save(str(tmp_path / f"{name}_lite"))
        feeds = model_zoo.random_inputs(name, 3, seed=11)
        np.savez(tmp_path / f"{name}_in.npz", **feeds)
        original = tf.saved_model.load(zoo.saved_model(name)).signatures["serving_default"]
        expected[name] = {k: v.numpy() for k, v in original(**{k: tf.constant(v) for k, v in feeds.items()}).items()}
        cases.append({"converted": converted, "inputs": str(tmp_path / f"{name}_in.npz"),
                      "result": str(tmp_path / f"{name}_out.npz")})
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, json.dumps(cases)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["engine_calls"] == len(zoo.ZOO)
    for name, case in zip(zoo.ZOO, cases):
        got = dict(np.load(case["result"]))
        assert sorted(got) == sorted(expected[name])
        for key, want in expected[name].items():
            np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-5, err_msg=f"{name}:{key}")


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_saved_size_is_at_most_twice_the_original_and_smaller_without_native_segments(tmp_path):
    conv = zoo.converter("resnet50")
    original = _dir_bytes(zoo.saved_model("resnet50"))
    full = _dir_bytes(conv.save(str(tmp_path / "full")))
    lean = _dir_bytes(conv.save(str(tmp_path / "lean"), keep_native_segments=False))
    assert full <= 2 * original, (full, original)
    assert lean <= 1.1 * original, (lean, original)
    assert json.load(open(tmp_path / "lean" / "assets.extra" / "tftrt_lite" / "report.json"))[
        "keep_native_segments"] is False


def test_model_saved_without_native_segments_cannot_fall_back(tmp_path):
    out = zoo.converter("bert_encoder").save(str(tmp_path / "lean"), keep_native_segments=False)
    fn = tf.saved_model.load(out).signatures["serving_default"]
    with pytest.raises(tf.errors.FailedPreconditionError, match="without native segments"):
        fn(**{k: tf.constant(v) for k, v in model_zoo.random_inputs("bert_encoder", 2).items()})


# ----------------------------------------------------------------------------- split model
@pytest.fixture(scope="module")
def split_model(tmp_path_factory):
    return model_zoo.build_split_model(str(tmp_path_factory.mktemp("split")))


def test_every_signature_converts_and_unsupported_ops_split_segments(split_model, tmp_path):
    conv = tftrt_lite.Converter(input_saved_model_dir=split_model)
    conv.convert()
    report = conv.report()["signatures"]
    assert sorted(report) == ["logits", "serving_default"]
    assert len(report["serving_default"]["engines"]) == 2  # split by the string ops
    assert set(report["serving_default"]["segmentation"]["unsupported"]) == {"AsString", "StringToNumber"}
    assert len(report["logits"]["engines"]) == 1
    out = conv.save(str(tmp_path / "out"))
    x = tf.constant(np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32))
    for key in ("serving_default", "logits"):
        want = tf.saved_model.load(split_model).signatures[key](x=x)
        got = tf.saved_model.load(out).signatures[key](x=x)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-5, atol=1e-5)


def test_signature_key_selects_one_signature(split_model):
    conv = tftrt_lite.Converter(input_saved_model_dir=split_model, input_saved_model_signature_key="logits")
    conv.convert()
    assert list(conv.report()["signatures"]) == ["logits"]


def test_tf_trt_script_runs_with_only_its_import_changed(split_model, tmp_path):
    trt = tftrt_lite  # was: from tensorflow.python.compiler.tensorrt import trt_convert as trt
    params = trt.TrtConversionParams(precision_mode=trt.TrtPrecisionMode.FP32,
                                     max_workspace_size_bytes=trt.DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES)
    converter = trt.TrtGraphConverterV2(input_saved_model_dir=split_model, conversion_params=params,
                                        use_dynamic_shape=True)
    converter.convert()

    def input_fn():
        for batch in (1, 4):
            yield np.ones((batch, 8), np.float32) * 0.5

    converter.build(input_fn=input_fn)
    converter.save(str(tmp_path / "trt"))
    lines = []
    converter.summary(print_fn=lines.append)
    assert any("TftrtLiteEngine_serving_default_0" in line for line in lines)
    assert converter.report()["build_shapes"] == [{"x": [1, 8]}, {"x": [4, 8]}]


def test_verify_mode_checks_engines_during_convert(split_model, monkeypatch):
    monkeypatch.setenv("TFTRT_LITE_VERIFY", "1")
    conv = tftrt_lite.Converter(input_saved_model_dir=split_model, input_saved_model_signature_key="logits")
    conv.convert()
    assert len(conv.engines()) == 1


def test_fallback_can_be_disabled_so_tests_prove_engines_ran(split_model, tmp_path, monkeypatch):
    conv = tftrt_lite.Converter(input_saved_model_dir=split_model, input_saved_model_signature_key="logits")
    conv.convert()
    fn = tf.saved_model.load(conv.save(str(tmp_path / "m"))).signatures["logits"]
    monkeypatch.setenv("TFTRT_LITE_ALLOW_NATIVE_FALLBACK", "0")
    with pytest.raises(tf.errors.FailedPreconditionError, match="native fallback disabled"):
        fn(x=tf.ones((2, 8)))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"precision_mode": "INT8", "use_calibration": False, "calibration_table": "t.json"}, ValueError,
     "calibration_table is for use_calibration=True"),
    ({"calibration_table": "t.json"}, ValueError, "calibration_table is for precision_mode='INT8'"),
    ({"calibration_algorithm": "mse"}, ValueError, "calibration_algorithm='mse'"),
    ({"precision_mode": "FP64"}, ValueError, "precision_mode='FP64'"),
    ({"dynamic_shape_profile_strategy": "Fastest"}, ValueError, "dynamic_shape_profile_strategy='Fastest'"),
    ({"minimum_segment_size": 0}, ValueError, "minimum_segment_size"),
    ({"precision_overrides": {"dense": "FP8"}}, ValueError, "must be one of"),
    ({"allow_tf32": "yes"}, ValueError, "allow_tf32"),
])
def test_invalid_or_not_yet_supported_options_are_named(split_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        tftrt_lite.Converter(input_saved_model_dir=split_model, **kwargs)


@pytest.mark.parametrize("strategy", ["Range", "optimal", "Range+Optimal", "ImplicitBatchModeCompatible"])
def test_tf_trt_profile_strategies_are_accepted(split_model, strategy):
    tftrt_lite.Converter(input_saved_model_dir=split_model, use_dynamic_shape=True,
                         dynamic_shape_profile_strategy=strategy)


def test_calibration_input_fn_is_for_int8_only(split_model):
    conv = tftrt_lite.Converter(input_saved_model_dir=split_model)
    with pytest.raises(ValueError, match="calibration_input_fn is for precision_mode='INT8' only"):
        conv.convert(calibration_input_fn=lambda: iter(()))


def test_methods_before_convert_raise(split_model):
    conv = tftrt_lite.Converter(input_saved_model_dir=split_model)
    for call in (conv.summary, lambda: conv.save("/tmp/never"), lambda: conv.build(lambda: iter(()))):
        with pytest.raises(RuntimeError, match="convert"):
            call()


def test_save_is_atomic_and_never_overwrites_foreign_directories(split_model, tmp_path):
    conv = tftrt_lite.Converter(input_saved_model_dir=split_model, input_saved_model_signature_key="logits")
    conv.convert()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TftrtLiteError, match="not a SavedModel"):
        conv.save(str(foreign))
    assert sorted(os.listdir(foreign)) == ["notes.txt"]
    target = tmp_path / "model"
    conv.save(str(target))
    first = (target / "saved_model.pb").stat().st_mtime_ns
    conv.save(str(target))  # replacing an existing SavedModel is one rename
    assert (target / "saved_model.pb").stat().st_mtime_ns >= first
    assert sorted(os.listdir(tmp_path)) == ["foreign", "model"], "no temporary directories left behind"


def test_maximum_cached_engines_sets_the_number_of_captured_shapes(split_model, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    conv = tftrt_lite.Converter(input_saved_model_dir=split_model, maximum_cached_engines=3)
    conv.convert()
    out = conv.save(str(tmp_path / "m"))
    proto = saved_model_pb2.SavedModel.FromString(open(os.path.join(out, "saved_model.pb"), "rb").read())
    nodes = [n for f in proto.meta_graphs[0].graph_def.library.function for n in f.node_def
             if n.op == "TftrtLiteEngine"]
    assert len(nodes) == 3 and all(n.attr["max_cached_shapes"].i == 3 for n in nodes)


def test_fp16_conversion_with_an_override_saves_and_reports_its_precision(split_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TFTRT_LITE_VERIFY", "1")  # each engine's reference checked against TF at 1e-2
    conv = tftrt_lite.Converter(input_saved_model_dir=split_model, precision_mode="FP16",
                                precision_overrides={"MatMul": "FP32"})
    conv.convert()
    engines = conv.engines()
    assert engines and all(b.engine.precision == "FP16" for b in engines.values())
    for built in engines.values():
        g = built.engine.graph
        gemms = [n for n in g.nodes if n.op in ("tftrt.FusedGemm", "MatMul", "Gemm")]
        assert gemms and all(g.tensor(n.outputs[0]).dtype == "float32" for n in gemms)  # pinned by the override
    out = conv.save(str(tmp_path / "fp16"))
    report = json.load(open(os.path.join(out, "assets.extra", "tftrt_lite", "report.json")))
    assert report["precision_mode"] == "FP16"
