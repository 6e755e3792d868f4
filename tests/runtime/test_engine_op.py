"""The TftrtLiteEngine op: native-segment fallback, shapes, switches, counters, loading.

Every engine node here wraps a real segment function (random weights baked in as
constants, as the converter bakes them) and is compared against that function run
directly by TensorFlow. The CPU tests pin the op to the CPU; the one GPU test (marked
``gpu``) checks the GPU kernel's fallback reasons and int32 host-memory inputs.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tftrt_lite
from tftrt_lite.errors import OpLibraryError
from tftrt_lite.runtime import oplib

ENV_SWITCH = "TFTRT_LITE_ALLOW_NATIVE_FALLBACK"
RNG = np.random.default_rng(20250121)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


@tf.function
def segment(x, z):
    return tf.nn.relu(x @ tf.constant(W) + tf.constant(B)), tf.reduce_sum(z * z, axis=1)


SEGMENT = segment.get_concrete_function(
    tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, 2], tf.float32))


def engine(x, z, *, input_shapes=((None, 4), (None, 2)), output_shapes=((None, 3), (None,)),
           segment_func=SEGMENT, engine_name="engine_0"):
    """One TftrtLiteEngine node standing for SEGMENT; registers SEGMENT where it is built."""
    attrs = {}
    if segment_func is not None:
        segment_func.add_to_graph()
        attrs["segment_func"] = segment_func.name
    return oplib.load().tftrt_lite_engine(
        in_tensors=[x, z], host_tensors=[], OutT=[tf.float32, tf.float32],
        input_shapes=list(input_shapes), output_shapes=list(output_shapes),
        serialized_plan=b"\x00plan bytes\xff", plan_format_version=1,
        engine_name=engine_name, precision_mode="FP32", **attrs)


TABLE = RNG.standard_normal((10, 3)).astype(np.float32)


@tf.function
def lookup_segment(ids):
    return tf.gather(tf.constant(TABLE), ids) * 2.0


LOOKUP = lookup_segment.get_concrete_function(tf.TensorSpec([None], tf.int32))


def lookup_engine(ids, host=True):
    """An engine whose input is int32, which TensorFlow keeps in host memory on GPUs: in
    ``host_tensors`` as converted models pass it, or (``host=False``) in ``in_tensors``,
    in device memory, as models converted before ``host_tensors`` existed do."""
    LOOKUP.add_to_graph()
    return oplib.load().tftrt_lite_engine(
        in_tensors=[] if host else [ids], host_tensors=[ids] if host else [], OutT=[tf.float32],
        input_shapes=[(None,)], output_shapes=[(None, 3)],
        serialized_plan=b"", plan_format_version=1, segment_func=LOOKUP.name,
        engine_name="engine_lookup", precision_mode="FP32")[0]


def random_inputs(batch):
    return (RNG.standard_normal((batch, 4)).astype(np.float32),
            RNG.standard_normal((batch, 2)).astype(np.float32))


def expected(x, z):
    return np.maximum(x @ W + B, 0), np.sum(z * z, axis=1)


@tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32),
                              tf.TensorSpec([None, 2], tf.float32)])
def engine_graph(x, z):
    with tf.device("/CPU:0"):
        return engine(x, z)


def assert_matches_segment(outputs, x, z):
    direct = SEGMENT(tf.constant(x), tf.constant(z))
    assert len(outputs) == 2
    for got, want, ref in zip(outputs, direct, expected(x, z)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7])
def test_graph_fallback_matches_segment(batch):
    x, z = random_inputs(batch)
    assert_matches_segment(engine_graph(x, z), x, z)


def test_eager_fallback_matches_segment():
    x, z = random_inputs(3)
    with tf.device("/CPU:0"):
        outputs = engine(tf.constant(x), tf.constant(z))
    assert_matches_segment(outputs, x, z)


def test_int32_input_fallback_matches_segment():
    ids = RNG.integers(0, 10, size=8).astype(np.int32)
    fn = tf.function(lambda i: lookup_engine(i), input_signature=[tf.TensorSpec([None], tf.int32)])
    with tf.device("/CPU:0"):
        np.testing.assert_array_equal(fn(ids).numpy(), TABLE[ids] * 2.0)


def test_shape_inference_static_and_symbolic_dims():
    def output_shapes(input_specs, **kwargs):
        fn = tf.function(lambda x, z: engine(x, z, **kwargs))
        return [o.shape.as_list() for o in fn.get_concrete_function(*input_specs).outputs]

    symbolic = [tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, 2], tf.float32)]
    static = [tf.TensorSpec([5, 4], tf.float32), tf.TensorSpec([5, 2], tf.float32)]
    unknown_rank = [tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.float32)]
    assert output_shapes(symbolic) == [[None, 3], [None]]
    assert output_shapes(unknown_rank) == [[None, 3], [None]]
    assert output_shapes(static, input_shapes=[(5, 4), (5, 2)],
                         output_shapes=[(5, 3), (5,)]) == [[5, 3], [5]]


def test_shape_inference_rejects_incompatible_input():
    fn = tf.function(lambda x, z: engine(x, z, engine_name="engine_bad_shape"))
    with pytest.raises(ValueError, match=r"engine_bad_shape.*input 0 has shape \[\?,5\]"):
        fn.get_concrete_function(tf.TensorSpec([None, 5], tf.float32),
                                 tf.TensorSpec([None, 2], tf.float32))


def test_shape_inference_rejects_wrong_output_shape_count():
    fn = tf.function(lambda x, z: engine(x, z, output_shapes=[(None, 3)],
                                         engine_name="engine_one_shape"))
    with pytest.raises(ValueError, match="engine_one_shape' has 2 outputs but 1 output_shapes"):
        fn.get_concrete_function(tf.TensorSpec([None, 4], tf.float32),
                                 tf.TensorSpec([None, 2], tf.float32))


def test_stats_count_calls_and_fallback_reason():
    oplib.reset_stats()
    assert set(oplib.stats().values()) == {0}
    for batch in (2, 3, 4):
        engine_graph(*random_inputs(batch))
    counts = oplib.stats()
    assert counts["engine_calls"] == 3
    assert counts["fallback_calls"] == 3
    assert counts["fallback_no_gpu"] == 3
    assert counts["refused_calls"] == 0
    assert tftrt_lite.stats() == counts


def test_disabled_fallback_is_an_error(monkeypatch):
    x, z = random_inputs(2)
    engine_graph(x, z)
    oplib.reset_stats()
    monkeypatch.setenv(ENV_SWITCH, "0")
    with pytest.raises(tf.errors.FailedPreconditionError,
                       match=r"native fallback disabled \(TFTRT_LITE_ALLOW_NATIVE_FALLBACK=0\): "
                             r"TftrtLiteEngine 'engine_0'"):
        engine_graph(x, z)
    # Read on every call: the same graph runs again once the switch is lifted.
    monkeypatch.setenv(ENV_SWITCH, "1")
    assert_matches_segment(engine_graph(x, z), x, z)
    counts = oplib.stats()
    assert (counts["engine_calls"], counts["refused_calls"], counts["fallback_calls"]) == (2, 1, 1)


def test_invalid_switch_value_is_an_error(monkeypatch):
    monkeypatch.setenv(ENV_SWITCH, "maybe")
    with pytest.raises(tf.errors.InvalidArgumentError, match=ENV_SWITCH):
        engine_graph(*random_inputs(2))


def test_empty_segment_func_is_an_error():
    fn = tf.function(lambda x, z: engine(x, z, segment_func=None, engine_name="engine_no_seg"))
    oplib.reset_stats()
    with pytest.raises(tf.errors.FailedPreconditionError,
                       match="engine_no_seg.*saved without native segments.*GPU engine executor"):
        fn(*random_inputs(2))
    assert oplib.stats()["refused_calls"] == 1


def test_session_runtime_fallback_matches_segment():
    """tf.compat.v1.Session: the runtime TF Serving runs converted models in."""
    graph = tf.Graph()
    with graph.as_default(), tf.device("/CPU:0"):
        x = tf.compat.v1.placeholder(tf.float32, [None, 4])
        z = tf.compat.v1.placeholder(tf.float32, [None, 2])
        outputs = engine(x, z)
    x_value, z_value = random_inputs(4)
    with tf.compat.v1.Session(graph=graph) as session:
        got = session.run(outputs, {x: x_value, z: z_value})
    for value, want in zip(got, expected(x_value, z_value)):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tftrt_lite

    model = tf.saved_model.load(sys.argv[1])
    inputs = np.load(sys.argv[2])
    first = model.run(inputs["x"], inputs["z"])
    second = model.run(inputs["x"], inputs["z"])
    np.savez(sys.argv[3], y0=first[0].numpy(), y1=first[1].numpy(),
             same=all(np.array_equal(a, b) for a, b in zip(first, second)))
    print("STATS " + json.dumps(tftrt_lite.stats()))
""")


def test_saved_model_runs_in_fresh_process(tmp_path):
    module = tf.Module()
    module.run = engine_graph
    tf.saved_model.save(module, str(tmp_path / "model"))
    x, z = random_inputs(6)
    np.savez(tmp_path / "inputs.npz", x=x, z=z)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", CUDA_VISIBLE_DEVICES="")
    env.pop(ENV_SWITCH, None)
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "model"),
         str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = np.load(tmp_path / "out.npz")
    want = expected(x, z)
    np.testing.assert_allclose(out["y0"], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["y1"], want[1], rtol=1e-5, atol=1e-5)
    assert out["same"]
    stats_line = next(line for line in proc.stdout.splitlines() if line.startswith("STATS "))
    counts = json.loads(stats_line[len("STATS "):])
    assert (counts["engine_calls"], counts["fallback_calls"], counts["fallback_no_gpu"]) == (2, 2, 2)
    assert proc.stderr.count("runs its native segment") == 1, "the fallback is logged once per node"


def write_library_dir(directory, build_info):
    """A library directory whose .so is not a library: loading it could only fail."""
    (directory / oplib.LIBRARY_FILE).write_bytes(b"not an ELF file")
    if build_info is not None:
        (directory / oplib.BUILD_INFO_FILE).write_text(build_info)


def test_version_mismatch_is_reported_before_loading(tmp_path):
    write_library_dir(tmp_path, json.dumps({"tf_version": "2.17.1"}))
    with pytest.raises(OpLibraryError) as raised:
        oplib.load_library(str(tmp_path))
    message = str(raised.value)
    assert "built for TensorFlow 2.17.1" in message
    assert f"TensorFlow {tf.__version__} is imported" in message
    assert "pip install --no-build-isolation ." in message
    assert isinstance(raised.value, ImportError)


def test_missing_library_names_the_build_command(tmp_path):
    with pytest.raises(OpLibraryError, match=r"does not exist; build it .*"
                                             r"`pip install --no-build-isolation \.`"):
        oplib.load_library(str(tmp_path))


@pytest.mark.parametrize("build_info", [None, "{not json", '{"tf_version": 2}'])
def test_unreadable_build_record_asks_for_rebuild(tmp_path, build_info):
    write_library_dir(tmp_path, build_info)
    with pytest.raises(OpLibraryError, match="rebuild"):
        oplib.load_library(str(tmp_path))


def test_installed_library_matches_imported_tensorflow():
    info = oplib.read_build_info()
    assert info["tf_version"] == tf.__version__
    assert info["tf_git_version"] == tf.version.GIT_VERSION
    assert oplib.load() is oplib.load()


@pytest.mark.gpu
def test_gpu_fallback_reasons_and_parity(monkeypatch):
    # This test is about the fallback itself: allow it even where GPU runs disable it.
    monkeypatch.setenv("TFTRT_LITE_ALLOW_NATIVE_FALLBACK", "1")
    gpu = tf.config.list_logical_devices("GPU")[0].name

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([None, 2], tf.float32),
                                  tf.TensorSpec([None], tf.int32)])
    def on_gpu(x, z, ids):
        with tf.device(gpu):
            dynamic = engine(x, z, engine_name="engine_gpu")
            fixed = engine(x, z, input_shapes=[(2, 4), (2, 2)], engine_name="engine_gpu_b2")
            return dynamic, fixed, lookup_engine(ids), lookup_engine(ids, host=False)

    oplib.reset_stats()
    x, z = random_inputs(5)
    ids = RNG.integers(0, 10, size=6).astype(np.int32)
    dynamic, fixed, looked_up, looked_up_on_device = on_gpu(x, z, ids)
    want = expected(x, z)
    for outputs in (dynamic, fixed):
        np.testing.assert_allclose(outputs[0].numpy(), want[0], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(outputs[1].numpy(), want[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(looked_up.numpy(), TABLE[ids] * 2.0, rtol=1e-6)
    np.testing.assert_allclose(looked_up_on_device.numpy(), TABLE[ids] * 2.0, rtol=1e-6)
    assert "GPU" in dynamic[0].device
    counts = oplib.stats()
    assert counts["fallback_no_executor"] == 3, counts
    assert counts["fallback_shape_mismatch"] == 1, counts
    assert counts["fallback_no_gpu"] == 0, counts


# --------------------------------------------------------------------------- tactics attr
TACTIC_LINES = ("# tftrt_lite tactic cache v1\n"
                "conv Some_GPU:sm_90:132sm 90300 1,64,58,58 1 0\n"
                "a line this runtime cannot read\n")


def test_tactics_attr_defaults_to_empty():
    from tensorflow.python.framework import op_def_registry

    attrs = {a.name: a for a in op_def_registry.get("TftrtLiteEngine").attr}
    assert attrs["tactics"].type == "string"
    assert attrs["tactics"].default_value.s == b""


def test_node_written_without_tactics_attr_loads_and_falls_back():
    """A model converted before the attr existed: its nodes lack it and get the default."""
    graph = tf.Graph()
    with graph.as_default(), tf.device("/CPU:0"):
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        z = tf.compat.v1.placeholder(tf.float32, [None, 2], name="z")
        engine(x, z, engine_name="engine_old")
    graph_def = graph.as_graph_def()
    node = next(n for n in graph_def.node if n.op == "TftrtLiteEngine")
    del node.attr["tactics"]
    old = tf.Graph()
    with old.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    x_value, z_value = random_inputs(3)
    with tf.compat.v1.Session(graph=old) as session:
        got = session.run([f"{node.name}:0", f"{node.name}:1"], {"x:0": x_value, "z:0": z_value})
    for value, want in zip(got, expected(x_value, z_value)):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)


def test_node_with_tactics_runs_and_saves_them(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, 2], tf.float32)])
    def tuned(x, z):
        with tf.device("/CPU:0"):
            SEGMENT.add_to_graph()
            return oplib.load().tftrt_lite_engine(
                in_tensors=[x, z], host_tensors=[], OutT=[tf.float32, tf.float32], input_shapes=[(None, 4), (None, 2)],
                output_shapes=[(None, 3), (None,)], serialized_plan=b"\x00plan bytes\xff", plan_format_version=1,
                segment_func=SEGMENT.name, engine_name="engine_tuned", precision_mode="FP32",
                tactics=TACTIC_LINES)

    module = tf.Module()
    module.run = tuned
    tf.saved_model.save(module, str(tmp_path / "model"))
    x, z = random_inputs(5)
    assert_matches_segment(tf.saved_model.load(str(tmp_path / "model")).run(x, z), x, z)
    from tftrt_lite.load.proto import read_saved_model_proto

    proto = read_saved_model_proto(str(tmp_path / "model"))
    nodes = [n for f in proto.meta_graphs[0].graph_def.library.function for n in f.node_def
             if n.op == "TftrtLiteEngine"]
    assert [n.attr["tactics"].s.decode() for n in nodes] == [TACTIC_LINES]
