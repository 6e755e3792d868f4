"""``tftrt-lite convert / inspect / run`` on a real model."""
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import model_zoo
from tftrt_lite import cli


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    src = model_zoo.build_split_model(str(root))
    out = str(root / "out")
    assert cli.main(["convert", src, out, "--min-segment-size", "2"]) == 0
    return src, out


def test_convert_writes_a_model_with_every_signature(converted):
    src, out = converted
    assert sorted(tf.saved_model.load(out).signatures.keys()) == ["logits", "serving_default"]


def test_inspect_prints_engines_and_report(converted, capsys):
    assert cli.main(["inspect", converted[1], "--detailed"]) == 0
    text = capsys.readouterr().out
    assert "TftrtLiteEngine_serving_default_1" in text and "native AsString x1" in text
    assert "absorbed: " in text
    assert "library calls" in text and "B unplanned at {'N': 1}" in text


def test_inspect_of_an_unconverted_model_says_so(converted, capsys):
    assert cli.main(["inspect", converted[0]]) == 1
    assert "no tftrt_lite conversion report" in capsys.readouterr().out


def test_run_feeds_npy_files_and_writes_outputs(converted, tmp_path, capsys):
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["run", converted[1], "--signature", "logits", "--input", f"x={tmp_path / 'x.npy'}",
                     "--outdir", str(tmp_path / "res")]) == 0
    want = tf.saved_model.load(converted[0]).signatures["logits"](x=tf.constant(x))["logits"].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "res" / "logits.npy"), want, rtol=1e-5, atol=1e-6)
    assert "Result for output key logits" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--input", "x"], "expects name=file.npy"),
    (["--input", "x=/nonexistent.npy"], "no such file"),
    (["--signature", "nope", "--input", "x=/nonexistent.npy"], "signature 'nope' not in"),
])
def test_run_rejects_bad_arguments_clearly(converted, args, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["run", converted[1]] + args)


def test_console_script_is_installed(converted):
    exe = shutil.which("tftrt-lite")
    assert exe, "pip install must put the tftrt-lite console script on PATH"
    proc = subprocess.run([exe, "inspect", converted[1]], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 engine(s) in 2 signature(s)" in proc.stdout
