"""``tftrt-lite convert / inspect / run`` on a real model."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import model_zoo
from gpu_check import gpu_available
from tftrt_lite import cli
from tftrt_lite.calibrate import CalibrationTable
from tftrt_lite.save import read_calibration_table


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


# --------------------------------------------------------------------------- bench
@pytest.mark.parametrize("args", [[], ["--batch", "two"], ["--iters"]])
def test_bench_usage_errors_exit_2(converted, args):
    with pytest.raises(SystemExit) as raised:
        cli.main(["bench"] + ([converted[1]] if args else []) + args)
    assert raised.value.code == 2


@pytest.mark.parametrize("args, message", [
    (["--inputs", "in.npz", "--batch", "2"], "--inputs gives the batch and the values; do not combine it"),
    (["--inputs", "in.npz", "--seed", "1"], "--inputs gives the batch and the values; do not combine it"),
    (["--png", "out.png"], "--png plots the per-step profile; add --profile"),
    (["--signature", "nope"], r"has no signature 'nope'; keys present: \['logits', 'serving_default'\]"),
    (["--batch", "0"], "batch must be an integer >= 1, got 0"),
])
def test_bench_bad_arguments_exit_2_and_say_why(converted, capsys, args, message):
    assert cli.main(["bench", converted[1]] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("tftrt-lite bench: error: ") and re.search(message, err), err


def test_bench_of_a_missing_model_exits_2(tmp_path, capsys):
    assert cli.main(["bench", str(tmp_path / "nope"), "--profile"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(gpu_available(), reason="checks the error of a machine without a GPU")
@pytest.mark.parametrize("profile, what", [(False, "benchmarking"), (True, "profiling")])
def test_bench_without_a_gpu_exits_2_with_a_clear_message(converted, capsys, tmp_path, profile, what):
    out = tmp_path / "p.json"
    args = ["bench", converted[1], "--batch", "2", "--json", str(out)] + (["--profile"] if profile else [])
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tftrt-lite bench: error: {what} needs an NVIDIA GPU, and TensorFlow sees none"), err
    assert "Traceback" not in err and not out.exists()


def test_convert_int8_from_npz_calibration_data(converted, tmp_path):
    src = converted[0]
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32))
    out, table = str(tmp_path / "int8"), str(tmp_path / "table.json")
    assert cli.main(["convert", src, out, "--min-segment-size", "2", "--signature", "logits", "--precision", "INT8",
                     "--calibration-data", str(tmp_path / "cal.npz"), "--calibration-batch-size", "8",
                     "--calibration-algorithm", "max", "--save-calibration-table", table]) == 0
    saved = read_calibration_table(out)
    assert saved == CalibrationTable.load(table)
    assert saved.num_batches == 3 and saved.num_samples == 20 and saved.algorithm == "max" and saved.amax
    again = str(tmp_path / "int8_again")
    assert cli.main(["convert", src, again, "--min-segment-size", "2", "--signature", "logits",
                     "--precision", "INT8", "--calibration-table", table]) == 0
    assert read_calibration_table(again) == saved


def test_convert_int8_without_calibration_data_says_so(converted, tmp_path, capsys):
    assert cli.main(["convert", converted[0], str(tmp_path / "x"), "--precision", "INT8"]) == 2
    assert "tftrt-lite convert: error: an INT8 conversion needs calibration data" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
