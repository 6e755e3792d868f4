"""``tftrt-lite tune`` and the tactics a converted model carries (``tftrt_lite.tune``).

Without a GPU: usage errors, the no-GPU error, the ``tactics`` attr a save writes (the
process's winners per engine: none here) and the attr edit tuning makes. On a GPU: tuning
a converted zoo model end to end, whose tuned copy matches the converted model and, in a
fresh process with no cache file, times nothing; and ``Converter.build`` + ``save``
carrying the winners.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

import model_zoo
import zoo
from gpu_check import gpu_available
from tftrt_lite import cli
from tftrt_lite.load.proto import read_saved_model_proto
from tftrt_lite.tune import COUNT_NAMES, TuneError, process_tactics, set_engine_tactics, tactic_counts, tune_saved_model

HEADER = "# tftrt_lite tactic cache v1"


def engine_nodes(saved_model_dir):
    """Every TftrtLiteEngine NodeDef of a SavedModel (graph and function library)."""
    graph_def = read_saved_model_proto(saved_model_dir).meta_graphs[0].graph_def
    nodes = [n for n in graph_def.node if n.op == "TftrtLiteEngine"]
    return nodes + [n for f in graph_def.library.function for n in f.node_def if n.op == "TftrtLiteEngine"]


# --------------------------------------------------------------------------- no GPU needed
@pytest.mark.parametrize("batch", ["0", "1,x", "", "4,-1", "1.5"])
def test_tune_rejects_bad_batch_sizes(batch, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["tune", "model", "out", "--batch", batch])
    assert raised.value.code == 2
    assert "expects positive batch sizes separated by commas" in capsys.readouterr().err


def test_tune_needs_a_model_and_an_output_directory(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["tune", "model"])
    assert raised.value.code == 2
    assert "output_dir" in capsys.readouterr().err


@pytest.mark.skipif(gpu_available(), reason="checks the error of a machine without a GPU")
def test_tune_without_gpu_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["tune", str(tmp_path / "model"), str(tmp_path / "out"), "--batch", "1,32"]) == 2
    err = capsys.readouterr().err
    assert "tftrt-lite tune: error: tuning times the engines on a GPU and TensorFlow sees none" in err
    with pytest.raises(TuneError, match="TensorFlow sees none"):
        tune_saved_model(str(tmp_path / "model"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_tactic_counts_name_every_count():
    counts = tactic_counts()
    assert list(counts) == list(COUNT_NAMES)
    assert all(v >= 0 for v in counts.values())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from tftrt_lite import Converter

    root = tmp_path_factory.mktemp("tune")
    conv = Converter(input_saved_model_dir=model_zoo.build_split_model(str(root)), minimum_segment_size=2)
    conv.convert()
    return conv, root


def test_save_carries_the_process_tactics_of_each_engine(converted):
    conv, root = converted
    out = conv.save(str(root / "saved"))
    nodes = engine_nodes(out)
    assert len(nodes) == 3
    if not gpu_available():  # no engine ran: nothing to carry, and the attr is left out
        assert not any("tactics" in node.attr for node in nodes)
    for node in nodes:
        carried = node.attr["tactics"].s.decode() if "tactics" in node.attr else ""
        assert carried == process_tactics(node.attr["engine_name"].s.decode())


def _graph_with_engine(name, tactics):
    graph_def = graph_pb2.GraphDef()
    node = graph_def.node.add(name="engine", op="TftrtLiteEngine")
    node.attr["engine_name"].s = name.encode()
    node.attr["tactics"].s = tactics.encode()
    fdef = graph_def.library.function.add()
    fdef.signature.name = "f"
    inner = fdef.node_def.add(name="inner", op="TftrtLiteEngine")
    inner.attr["engine_name"].s = f"{name}_inner".encode()
    return graph_def


def test_set_engine_tactics_keeps_what_an_engine_carries_when_the_process_has_none():
    carried = f"{HEADER}\nconv Some_GPU:sm_90:132sm 90300 1,2,3 1 0\n"
    graph_def = _graph_with_engine("engine_that_never_ran", carried)
    assert set_engine_tactics(graph_def) == {"engine_that_never_ran": 1, "engine_that_never_ran_inner": 0}
    assert graph_def.node[0].attr["tactics"].s.decode() == carried
    assert "tactics" not in graph_def.library.function[0].node_def[0].attr


# --------------------------------------------------------------------------- GPU
RUN_TUNED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tftrt_lite
    from tftrt_lite.tune import tactic_counts

    model = tf.saved_model.load(sys.argv[1])
    feeds = dict(np.load(sys.argv[2]))
    outputs = model.signatures["serving_default"](**{k: tf.constant(v) for k, v in feeds.items()})
    np.savez(sys.argv[3], **{k: v.numpy() for k, v in outputs.items()})
    print("RESULT " + json.dumps({"counts": tactic_counts(), "stats": tftrt_lite.stats()}))
""")


def _outputs(model_dir, feeds):
    outputs = tf.saved_model.load(model_dir).signatures["serving_default"](
        **{k: tf.constant(v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def _assert_close(got, want, what):
    """TF32 tolerance relative to the output's scale."""
    for key in want:
        scale = max(float(np.max(np.abs(want[key]))), 1e-6)
        err = float(np.max(np.abs(got[key] - want[key]))) / scale
        assert err <= 1e-3, f"{what}: output {key!r} max error {err:.2e} of output scale {scale:.3g}"


TUNING_OFF = pytest.mark.skipif(os.environ.get("TFTRT_LITE_TUNING") in ("0", "false"),
                                reason="TFTRT_LITE_TUNING=0 turns timing off in this process")


@pytest.mark.gpu
@TUNING_OFF
@pytest.mark.parametrize("name", ["bert_encoder", "resnet50"])
def test_tune_end_to_end_carries_winners_a_fresh_process_reuses(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFTRT_LITE_ALLOW_NATIVE_FALLBACK", "0")
    converted = zoo.converter(name).save(str(tmp_path / "converted"))
    tuned = str(tmp_path / "tuned")
    assert cli.main(["tune", converted, tuned, "--batch", "1,4"]) == 0
    printed = capsys.readouterr().out
    assert f"saved: {tuned}" in printed
    nodes = engine_nodes(tuned)
    assert nodes
    for node in nodes:
        text = node.attr["tactics"].s.decode()
        assert text.startswith(HEADER + "\n") and len(text.splitlines()) > 1, (node.name, printed)

    feeds = model_zoo.random_inputs(name, batch=1, seed=3)
    want = _outputs(converted, feeds)
    _assert_close(_outputs(tuned, feeds), want, "tuned vs converted, same process")

    np.savez(tmp_path / "feeds.npz", **feeds)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_TUNED, tuned, str(tmp_path / "feeds.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TFTRT_LITE_TACTIC_CACHE="off", TFTRT_LITE_ALLOW_NATIVE_FALLBACK="0"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    counts = info["counts"]
    assert counts["gemm_timed"] == 0 and counts["conv_timed"] == 0, info
    assert counts["cache_hits"] >= 1 and counts["cache_rejected"] == 0, info
    assert info["stats"]["fallback_calls"] == 0, info
    got = dict(np.load(tmp_path / "out.npz"))
    _assert_close(got, want, "tuned model in a fresh process vs converted")


@pytest.mark.gpu
@TUNING_OFF
def test_build_runs_each_input_twice_and_save_carries_the_winners(tmp_path, monkeypatch):
    from tftrt_lite import Converter

    monkeypatch.setenv("TFTRT_LITE_ALLOW_NATIVE_FALLBACK", "0")
    conv = Converter(input_saved_model_dir=zoo.saved_model("bert_encoder"))
    conv.convert()
    batches = [model_zoo.random_inputs("bert_encoder", batch=b, seed=b)["input_ids"] for b in (1, 2)]
    conv.build(input_fn=lambda: iter(batches))
    out = conv.save(str(tmp_path / "built"))
    nodes = engine_nodes(out)
    assert nodes and all(n.attr["tactics"].s.decode().startswith(HEADER) for n in nodes)
    feeds = {"input_ids": batches[0]}
    want = _outputs(zoo.saved_model("bert_encoder"), feeds)
    _assert_close(_outputs(out, feeds), want, "built and saved vs TensorFlow")


def test_saved_copy_carries_tactics_and_computes_what_the_model_did(converted, monkeypatch):
    """The write half of tuning, with stand-in winners: every engine gets its own, and both
    signatures of the copy give the converted model's outputs (here through the fallback)."""
    from tftrt_lite import tune
    from tftrt_lite.save import read_report

    conv, root = converted
    model = conv.save(str(root / "to_tune"))
    note = os.path.join(model, "assets.extra", "tftrt_lite", "note.bin")
    with open(note, "wb") as f:
        f.write(b"\x00kept\xff")
    winners = {}

    def fake_tactics(engine_name=""):
        winners[engine_name] = f"{HEADER}\nconv Some_GPU:sm_90:132sm 90300 {len(winners)},7 1 0\n"
        return winners[engine_name]

    monkeypatch.setattr(tune, "process_tactics", fake_tactics)
    out, lines = tune.save_with_tactics(model, str(root / "tuned"), tuning={"batch_sizes": [1]})
    assert lines == {name: 1 for name in winners} and len(winners) == 3
    for node in engine_nodes(out):
        assert node.attr["tactics"].s.decode() == winners[node.attr["engine_name"].s.decode()]
    assert read_report(out)["tuning"] == {"batch_sizes": [1], "engine_tactics": lines}
    with open(os.path.join(out, "assets.extra", "tftrt_lite", "note.bin"), "rb") as f:
        assert f.read() == b"\x00kept\xff", "extra files travel with the model"
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    original, tuned = tf.saved_model.load(model), tf.saved_model.load(out)
    for key in ("serving_default", "logits"):
        want, got = original.signatures[key](x=tf.constant(x)), tuned.signatures[key](x=tf.constant(x))
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())


@pytest.mark.parametrize("keep_native_segments", [True, False])
def test_save_puts_each_engine_s_winners_in_its_node(converted, monkeypatch, keep_native_segments):
    from tftrt_lite import converter as converter_module

    conv, root = converted
    monkeypatch.setattr(converter_module, "process_tactics",
                        lambda name="": f"{HEADER}\nconv Some_GPU:sm_90:132sm 90300 {len(name)},1 1 0\n")
    out = conv.save(str(root / f"with_tactics_{keep_native_segments}"), keep_native_segments=keep_native_segments)
    nodes = engine_nodes(out)
    assert len(nodes) == 3
    for node in nodes:
        name = node.attr["engine_name"].s.decode()
        assert node.attr["tactics"].s.decode().endswith(f" {len(name)},1 1 0\n")
        assert bool(node.attr["segment_func"].func.name) == keep_native_segments
    if keep_native_segments:  # runs here through the fallback
        x = np.random.default_rng(6).standard_normal((2, 8)).astype(np.float32)
        got = tf.saved_model.load(out).signatures["logits"](x=tf.constant(x))["logits"].numpy()
        original = tf.saved_model.load(model_zoo.build_split_model(str(root)))
        want = original.signatures["logits"](x=tf.constant(x))["logits"].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
