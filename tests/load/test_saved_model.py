"""Tests of tftrt_lite.load: real SavedModels on disk, real TF loading, freezing and Grappler."""
import logging
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import model_zoo
from tftrt_lite.errors import (
    InvalidSavedModelError,
    SavedModelNotFoundError,
    UnknownSignatureError,
    UnknownTagError,
)
from tftrt_lite.load import LoadedSavedModel, SignatureGraph, TensorBinding, load_saved_model
from tftrt_lite.load import freeze

VARIABLE_OPS = {"VarHandleOp", "ReadVariableOp", "AssignVariableOp", "VariableV2", "Variable",
                "ResourceGather", "VarIsInitializedOp"}


class TwoSignatures(tf.Module):
    """Two signatures over shared variables; argument and output names are out of order on
    purpose, to check the documented binding order."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(7)
        self.w = tf.Variable(rng.standard_normal((4, 3)).astype(np.float32))
        self.b = tf.Variable(rng.standard_normal((3,)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="zeta"),
                                  tf.TensorSpec([None, 3], tf.float32, name="alpha")])
    def serve(self, zeta, alpha):
        return {"score": tf.nn.relu(tf.matmul(zeta, self.w) + self.b) * alpha,
                "norm": tf.reduce_sum(zeta * zeta, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def scale(self, x):
        return {"y": x * self.b}


class OddSignatures(tf.Module):
    """Signatures with no input, no output, and a string input."""

    def __init__(self):
        super().__init__()
        self.v = tf.Variable([1.5, -2.0, 3.0])

    @tf.function(input_signature=[])
    def no_inputs(self):
        return {"doubled": self.v * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def no_outputs(self, x):
        return {}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def strings(self, text):
        return {"weighted": tf.cast(tf.strings.length(text), tf.float32) * self.v[0]}

    @tf.function(input_signature=[tf.TensorSpec([3], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.int32, name="n")])
    def loop(self, x, n):
        _, y = tf.while_loop(lambda i, y: i < n, lambda i, y: (i + 1, y * self.v), [0, x])
        return {"y": y}


def _small_cnn():
    """Conv + BatchNorm + Dense with every weight random (non-zero biases and BN statistics,
    so constant folding cannot simplify the math away)."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    rng = np.random.default_rng(11)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def _retag(src, dst, tags):
    """Copy the SavedModel ``src`` to ``dst`` with its MetaGraph's tag set replaced."""
    shutil.copytree(src, dst)
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(dst, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    del proto.meta_graphs[0].meta_info_def.tags[:]
    proto.meta_graphs[0].meta_info_def.tags.extend(tags)
    with open(os.path.join(dst, "saved_model.pb"), "wb") as f:
        f.write(proto.SerializeToString())
    return dst


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("load_models")
    two = TwoSignatures()
    tf.saved_model.save(two, str(root / "two"), signatures={"serving_default": two.serve,
                                                            "scale": two.scale})
    odd = OddSignatures()
    tf.saved_model.save(odd, str(root / "odd"), signatures={
        "no_inputs": odd.no_inputs, "no_outputs": odd.no_outputs, "strings": odd.strings,
        "loop": odd.loop})
    return {
        "two": str(root / "two"),
        "odd": str(root / "odd"),
        "cnn": model_zoo.export(_small_cnn(), str(root / "cnn"), "image"),
        "bert": model_zoo.build_saved_model("bert_encoder", str(root)),
        "tagged": _retag(str(root / "two"), str(root / "tagged"), ["serve", "gpu"]),
    }


@pytest.fixture
def copy_of(models, tmp_path):
    def make(name):
        return shutil.copytree(models[name], str(tmp_path / name))
    return make


def _assert_frozen_and_clean(sig: SignatureGraph):
    ops = {node.op for node in sig.graph_def.node}
    assert not ops & VARIABLE_OPS, f"{sig.key}: variable ops left: {ops & VARIABLE_OPS}"
    assert not {op for op in ops if op.startswith("_Fused")}, f"{sig.key}: fused ops {ops}"
    nodes = {node.name: node for node in sig.graph_def.node}
    placeholders = {name for name, node in nodes.items() if node.op == "Placeholder"}
    assert placeholders == {binding.node_name for binding in sig.inputs}
    for binding in sig.outputs:  # an output that depends on no input is folded to a Const
        assert nodes[binding.node_name].op == ("Identity" if sig.inputs else "Const")


def _assert_matches_original(path, sig: SignatureGraph, feeds, atol=1e-5):
    restored = tf.saved_model.load(path)  # keeps the signature's variables alive
    original = restored.signatures[sig.key]
    expected = original(**{k: tf.constant(v) for k, v in feeds.items()})
    got = sig.run(feeds)
    assert sorted(got) == sorted(expected)
    for name in expected:
        want = expected[name].numpy()
        assert np.abs(want).max() > 0, "reference output is all zeros: the check would be vacuous"
        np.testing.assert_allclose(got[name].numpy(), want, atol=atol, rtol=atol, err_msg=name)


# --- loading and bindings -------------------------------------------------------------

def test_multi_signature_all_loaded_with_documented_bindings(models):
    loaded = load_saved_model(models["two"])
    assert isinstance(loaded, LoadedSavedModel)
    assert loaded.path == models["two"] and loaded.tags == ["serve"]
    assert list(loaded.signatures) == ["scale", "serving_default"]
    sig = loaded.signatures["serving_default"]
    # inputs in the function's order (TF sorts signature arguments by name), outputs by key
    assert [b.name for b in sig.inputs] == ["alpha", "zeta"]
    assert sig.inputs[1] == TensorBinding("zeta", "zeta:0", tf.float32, tf.TensorShape([None, 4]))
    assert [b.name for b in sig.outputs] == ["norm", "score"]
    assert [b.dtype for b in sig.outputs] == [tf.float32, tf.float32]
    assert [b.shape.as_list() for b in sig.outputs] == [[None], [None, 3]]
    assert [t.name for t in sig.frozen_func.outputs] == [b.tensor_name for b in sig.outputs]
    for s in loaded.signatures.values():
        _assert_frozen_and_clean(s)
        assert s.freeze_seconds > 0 and s.optimize_seconds > 0
        assert s.load_seconds == pytest.approx(s.freeze_seconds + s.optimize_seconds)
    assert loaded.restore_seconds > 0


def test_multi_signature_outputs_match_original(models):
    loaded = load_saved_model(models["two"])
    rng = np.random.default_rng(1)
    _assert_matches_original(models["two"], loaded.signatures["serving_default"], {
        "zeta": rng.standard_normal((5, 4)).astype(np.float32),
        "alpha": rng.standard_normal((5, 3)).astype(np.float32)})
    _assert_matches_original(models["two"], loaded.signatures["scale"],
                             {"x": rng.standard_normal((2, 3)).astype(np.float32)})


def test_select_one_signature_by_key(models):
    loaded = load_saved_model(models["two"], signature_keys="scale")
    assert list(loaded.signatures) == ["scale"]
    assert [b.name for b in loaded.signatures["scale"].inputs] == ["x"]
    assert [b.name for b in loaded.signatures["scale"].outputs] == ["y"]


def test_selected_keys_keep_given_order(models):
    loaded = load_saved_model(models["two"], signature_keys=["serving_default", "scale"])
    assert list(loaded.signatures) == ["serving_default", "scale"]


def test_tags_select_meta_graph(models):
    loaded = load_saved_model(models["tagged"], tags=["gpu", "serve"], signature_keys="scale")
    assert loaded.tags == ["gpu", "serve"]
    _assert_frozen_and_clean(loaded.signatures["scale"])


def test_frozen_func_called_like_the_signature(models):
    sig = load_saved_model(models["two"], signature_keys="scale").signatures["scale"]
    x = np.random.default_rng(2).standard_normal((3, 3)).astype(np.float32)
    traced = tf.function(lambda t: sig.frozen_func(x=t))(tf.constant(x))
    assert list(traced) == ["y"]
    restored = tf.saved_model.load(models["two"])
    expected = restored.signatures["scale"](x=tf.constant(x))["y"]
    np.testing.assert_allclose(traced["y"].numpy(), expected.numpy(), rtol=1e-6)


def test_cleaned_graph_saves_as_the_same_signature(models, tmp_path):
    sig = load_saved_model(models["two"], signature_keys="serving_default").signatures[
        "serving_default"]
    out = str(tmp_path / "resaved")
    tf.saved_model.save(tf.Module(), out, signatures={"serving_default": sig.to_function()})
    resaved = tf.saved_model.load(out).signatures["serving_default"]
    assert set(resaved.structured_input_signature[1]) == {"alpha", "zeta"}
    assert set(resaved.structured_outputs) == {"norm", "score"}
    rng = np.random.default_rng(3)
    feeds = {"zeta": rng.standard_normal((2, 4)).astype(np.float32),
             "alpha": rng.standard_normal((2, 3)).astype(np.float32)}
    got = resaved(**{k: tf.constant(v) for k, v in feeds.items()})
    want = sig.run(feeds)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-6)


def test_run_rejects_wrong_feed_names(models):
    sig = load_saved_model(models["two"], signature_keys="scale").signatures["scale"]
    with pytest.raises(KeyError, match=r"'scale' takes inputs \['x'\]"):
        sig.run({"y": np.ones((1, 3), np.float32)})


def test_odd_signatures_load(models, caplog):
    with caplog.at_level(logging.WARNING, logger="tftrt_lite.load.signature"):
        loaded = load_saved_model(models["odd"])
    sigs = loaded.signatures
    assert sigs["no_inputs"].inputs == [] and [b.name for b in sigs["no_inputs"].outputs] == ["doubled"]
    assert [b.name for b in sigs["no_outputs"].inputs] == ["x"] and sigs["no_outputs"].outputs == []
    assert "'no_inputs' has 0 inputs" in caplog.text and "'no_outputs' has 1 inputs" in caplog.text
    np.testing.assert_allclose(sigs["no_inputs"].run({})["doubled"].numpy(), [3.0, -4.0, 6.0])
    text = sigs["strings"].inputs[0]
    assert (text.name, text.dtype) == ("text", tf.string)
    out = sigs["strings"].run({"text": np.array([b"ab", b"hello"])})["weighted"].numpy()
    np.testing.assert_allclose(out, [3.0, 7.5])
    x = np.random.default_rng(6).standard_normal(3).astype(np.float32)
    out = sigs["loop"].run({"x": x, "n": np.int32(3)})["y"].numpy()
    np.testing.assert_allclose(out, x * np.array([1.5, -2.0, 3.0], np.float32) ** 3, rtol=1e-6)
    for sig in sigs.values():
        _assert_frozen_and_clean(sig)


def test_small_keras_model_freezes_exactly(models):
    sig = load_saved_model(models["cnn"]).signatures["serving_default"]
    _assert_frozen_and_clean(sig)
    assert [b.name for b in sig.inputs] == ["image"]
    ops = {node.op for node in sig.graph_def.node}
    assert "Conv2D" in ops and "Transpose" not in ops  # no layout rewrite
    feeds = {"image": np.random.default_rng(4).standard_normal((3, 8, 8, 3)).astype(np.float32)}
    _assert_matches_original(models["cnn"], sig, feeds)


def test_bert_encoder_freezes_exactly(models):
    sig = load_saved_model(models["bert"]).signatures["serving_default"]
    _assert_frozen_and_clean(sig)
    assert sig.inputs == [TensorBinding("input_ids", "input_ids:0", tf.int32,
                                        tf.TensorShape([None, 16]))]
    assert [b.name for b in sig.outputs] == ["output_0"]
    ops = {node.op for node in sig.graph_def.node}
    assert {"Softmax", "MatMul"} <= ops
    _assert_matches_original(models["bert"], sig, model_zoo.random_inputs("bert_encoder", 3, seed=5))


def test_size_estimate_tracks_the_frozen_graph(models):
    restored = tf.saved_model.load(models["cnn"])  # keeps the function's variables alive
    func = restored.signatures["serving_default"]
    estimate = freeze.estimate_frozen_bytes(func)
    frozen = freeze.freeze_signature("serving_default", func, models["cnn"])
    weights = sum(freeze.variable_bytes(v) for v in func.variables)
    assert weights == 4 * sum(int(np.prod(v.shape)) for v in func.variables) > 0
    actual = frozen.graph.as_graph_def().ByteSize()
    assert actual > weights and estimate > weights
    assert abs(estimate - actual) < 0.1 * actual


# --- errors -----------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    path = str(tmp_path / "nope")
    with pytest.raises(SavedModelNotFoundError, match="does not exist") as info:
        load_saved_model(path)
    assert path in str(info.value)


def test_directory_without_saved_model_lists_files(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    (tmp_path / "notes.txt").write_text("weights")
    with pytest.raises(SavedModelNotFoundError,
                       match=r"is not a SavedModel.*\['model.h5', 'notes.txt'\]"):
        load_saved_model(str(tmp_path))


def test_truncated_saved_model_pb(copy_of):
    path = copy_of("two")
    pb = os.path.join(path, "saved_model.pb")
    with open(pb, "rb") as f:
        data = f.read()
    with open(pb, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(InvalidSavedModelError, match="truncated or corrupt") as info:
        load_saved_model(path)
    assert pb in str(info.value)


def test_garbage_saved_model_pb(copy_of):
    path = copy_of("two")
    pb = os.path.join(path, "saved_model.pb")
    with open(pb, "wb") as f:
        f.write(b"this is not a SavedModel\n" * 8)
    with pytest.raises(InvalidSavedModelError, match="saved_model.pb"):
        load_saved_model(path)


def test_empty_saved_model_pb_has_no_meta_graph(copy_of):
    path = copy_of("two")
    open(os.path.join(path, "saved_model.pb"), "wb").close()
    with pytest.raises(InvalidSavedModelError, match="holds no MetaGraph"):
        load_saved_model(path)


def test_corrupt_saved_model_pbtxt(tmp_path):
    (tmp_path / "saved_model.pbtxt").write_text("meta_graphs { this is { not text format")
    with pytest.raises(InvalidSavedModelError, match="saved_model.pbtxt.*is corrupt"):
        load_saved_model(str(tmp_path))


def test_missing_variables_data(copy_of):
    path = copy_of("two")
    variables = os.path.join(path, "variables")
    for name in os.listdir(variables):
        if name.startswith("variables.data"):
            os.remove(os.path.join(variables, name))
    with pytest.raises(InvalidSavedModelError, match="could not restore SavedModel") as info:
        load_saved_model(path)
    assert path in str(info.value)


def test_unknown_tag_lists_tag_sets(models):
    with pytest.raises(UnknownTagError, match=r"tags \['serve'\].*present: \[\['serve', 'gpu'\]\]"):
        load_saved_model(models["tagged"])
    with pytest.raises(UnknownTagError, match=r"tags \['train'\]"):
        load_saved_model(models["two"], tags="train")


def test_unknown_signature_lists_keys(models):
    with pytest.raises(UnknownSignatureError,
                       match=r"no signature 'predict'.*\['scale', 'serving_default'\]"):
        load_saved_model(models["two"], signature_keys=["scale", "predict"])


def test_too_large_to_freeze(models, monkeypatch):
    monkeypatch.setattr(freeze, "MAX_GRAPH_DEF_BYTES", 1000)
    with pytest.raises(InvalidSavedModelError,
                       match=r"'serving_default'.*too large to freeze.*limit of 1,000 bytes"):
        load_saved_model(models["cnn"])
