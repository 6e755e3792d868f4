"""INT8 conversion: calibration through ``convert(calibration_input_fn)``, the calibration
table saved with the model and reused, and a trained model's accuracy.

The accuracy check follows TF-TRT's rule for INT8 (judge by the task metric): a small CNN
trained here on scikit-learn's bundled digits keeps its test accuracy within one point of
the float32 model's when its engine quantizes every convolution and GEMM to int8. On CPU
the engine's math runs in the NumPy reference executor (the same int8 grid, float16
everywhere else); the GPU test runs the saved model through the TftrtLiteEngine op.
"""

import numpy as np
import pytest
import tensorflow as tf

import model_zoo
import tftrt_lite
from tftrt_lite.calibrate import CalibrationTable, CalibrationTableError
from tftrt_lite.save import read_calibration_table


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits"))
    return model_zoo.build_digits_classifier(root), model_zoo.load_digits_split()


def _calibration_fn(x_train, batches=4, batch=64):
    def fn():
        for k in range(batches):
            yield x_train[k * batch:(k + 1) * batch]
    return fn


@pytest.fixture(scope="module")
def int8(digits):
    path, (x_train, _, _, _) = digits
    conv = tftrt_lite.Converter(input_saved_model_dir=path, precision_mode="INT8")
    conv.convert(calibration_input_fn=_calibration_fn(x_train))
    return conv


def _accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def test_int8_digits_accuracy_within_one_point_of_fp32(digits, int8):
    path, (_, _, x_test, y_test) = digits
    want = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(x_test))["output_0"]
    (built,) = int8.engines().values()
    assert built.engine.precision == "INT8"
    assert built.engine.stats["quantized_nodes"] == 4          # two convs, two dense layers
    assert built.lowered.input_tensors == ["images:0"]          # one engine: signature in, logits out
    got = built.engine.run_reference({built.lowered.input_names[0]: x_test})[built.engine.output_names[0]]
    fp32, quantized = _accuracy(want.numpy(), y_test), _accuracy(got, y_test)
    print(f"digits test accuracy: float32 {fp32:.4f}, INT8 engine (reference executor) {quantized:.4f}")
    assert fp32 > 0.9
    assert quantized >= fp32 - 0.01


def test_calibration_table_is_saved_with_the_model_and_reused(digits, int8, tmp_path):
    path, (x_train, _, _, _) = digits
    table = int8.calibration_table
    (name,) = int8.engines()
    assert table.num_batches == 4 and table.num_samples == 256 and table.algorithm == "entropy"
    assert len(table.amax) == 4 and all(k.startswith(f"{name}:") for k in table.amax)
    saved = int8.save(str(tmp_path / "int8"))
    assert read_calibration_table(saved) == table
    table.save(str(tmp_path / "table.json"))

    again = tftrt_lite.Converter(input_saved_model_dir=path, precision_mode="INT8",
                                 calibration_table=str(tmp_path / "table.json"))
    again.convert()  # no calibration data: the table's ranges
    assert again.calibration_table == table
    (built,) = again.engines().values()
    assert built.engine.serialize() == int8.engines()[name].engine.serialize()


def test_a_table_of_another_model_is_refused(digits):
    path, _ = digits
    other = CalibrationTable(amax={"TftrtLiteEngine_serving_default_0:elsewhere:0": 1.0}, algorithm="max",
                             num_batches=1, num_samples=1)
    conv = tftrt_lite.Converter(input_saved_model_dir=path, precision_mode="INT8", calibration_table=other)
    with pytest.raises(CalibrationTableError, match="has no range for tensor"):
        conv.convert()


def test_int8_needs_calibration_data(digits):
    path, _ = digits
    conv = tftrt_lite.Converter(input_saved_model_dir=path, precision_mode="INT8")
    with pytest.raises(ValueError, match="needs calibration data"):
        conv.convert()
    with pytest.raises(ValueError, match="yielded no batches"):
        tftrt_lite.Converter(input_saved_model_dir=path, precision_mode="INT8").convert(
            calibration_input_fn=lambda: iter(()))


@pytest.mark.parametrize("algorithm", ["max", "percentile"])
def test_other_calibration_algorithms(digits, algorithm):
    path, (x_train, _, x_test, y_test) = digits
    conv = tftrt_lite.Converter(input_saved_model_dir=path, precision_mode="INT8",
                                calibration_algorithm=algorithm)
    conv.convert(calibration_input_fn=_calibration_fn(x_train, batches=2))
    assert conv.calibration_table.algorithm == algorithm
    (built,) = conv.engines().values()
    got = built.engine.run_reference({built.lowered.input_names[0]: x_test})[built.engine.output_names[0]]
    assert _accuracy(got, y_test) > 0.9


@pytest.mark.gpu
def test_int8_digits_accuracy_on_gpu(digits, int8, tmp_path, monkeypatch):
    monkeypatch.setenv("TFTRT_LITE_ALLOW_NATIVE_FALLBACK", "0")
    path, (_, _, x_test, y_test) = digits
    original = tf.saved_model.load(path).signatures["serving_default"]
    converted = tf.saved_model.load(int8.save(str(tmp_path / "int8_gpu"))).signatures["serving_default"]
    tftrt_lite.reset_stats()
    with tf.device("/GPU:0"):
        want = original(images=tf.constant(x_test))["output_0"].numpy()
        got = converted(images=tf.constant(x_test))["output_0"].numpy()
    stats = tftrt_lite.stats()
    assert stats["engine_calls"] >= 1 and stats["fallback_calls"] == 0, stats
    (built,) = int8.engines().values()
    reference = built.engine.run_reference({built.lowered.input_names[0]: x_test})[built.engine.output_names[0]]
    fp32, quantized = _accuracy(want, y_test), _accuracy(got, y_test)
    print(f"digits test accuracy on the GPU: float32 {fp32:.4f}, INT8 engine {quantized:.4f}")
    assert quantized >= fp32 - 0.01
    scale = float(np.max(np.abs(reference)))
    assert float(np.max(np.abs(got - reference))) <= 1e-2 * scale   # the GPU runs the reference's math
