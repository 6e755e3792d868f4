"""INT8 from a quantization-aware model's own fake-quant nodes (TF-TRT's ``use_calibration=False``).

The model is a small Keras CNN written the way quantization-aware training leaves one:
``fake_quant_with_min_max_vars`` on the input and on the conv's activations, per-channel
fake quantization on both weights (``fake_quant_with_min_max_vars_per_channel`` on the
conv kernel, a per-channel ``QuantizeAndDequantizeV3`` on the dense kernel; Grappler
folds those into the weights before segmentation). On CPU the engine's math runs in the
NumPy reference executor and is compared with TensorFlow on fresh random inputs.

Why the INT8 bound holds and what "mostly exact" means: an explicit INT8 engine is the
FP16 engine plus the model's quantize-dequantize chains, computed in float32 exactly as
ONNX defines them. Its activations are float16 before each chain, so a value within its
float16 rounding (relative 2^-11, i.e. at most 0.06 of a step on int8's ±127 and 0.12 on
uint8's 255) of a rounding boundary lands one step away from TensorFlow's, on a few percent
of the elements, and never more than one step. The FP32 engine has no such rounding and
agrees with TensorFlow to float32 precision except, rarely, at a boundary (where
TensorFlow's ``x * (1/s) + 0.5`` and ONNX's ``x / s`` round differently). Each stray step
moves the output by one step times a weight, far inside TF-TRT's INT8 tolerance of 5e-2 of
the output's scale.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import model_zoo
import tftrt_lite
from tftrt_lite import cli
from tftrt_lite.save import read_calibration_table

INT8_TOLERANCE = 5e-2      # TF-TRT's, relative to the output's scale


class FakeQuant(keras.layers.Layer):
    """The activation quantizer of quantization-aware training, with a trained range."""

    def __init__(self, lo, hi, **kwargs):
        super().__init__(**kwargs)
        self.lo, self.hi = lo, hi

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_vars(x, self.lo, self.hi)


class QConv2D(keras.layers.Conv2D):
    """Conv2D on its kernel quantized per output channel (symmetric, narrow range)."""

    def call(self, x):
        amax = tf.reduce_max(tf.abs(self.kernel), axis=[0, 1, 2])
        w = tf.quantization.fake_quant_with_min_max_vars_per_channel(self.kernel, -amax, amax, narrow_range=True)
        return self.activation(tf.nn.conv2d(x, w, 1, "SAME") + self.bias)


class QDense(keras.layers.Dense):
    """Dense on its kernel quantized per output unit (symmetric int8, narrow range)."""

    def call(self, x):
        amax = tf.reduce_max(tf.abs(self.kernel), axis=0)
        w = tf.raw_ops.QuantizeAndDequantizeV3(input=self.kernel, input_min=-amax, input_max=amax, num_bits=8,
                                               range_given=True, narrow_range=True, axis=1)
        return tf.matmul(x, w) + self.bias


def _inputs(seed, batch=32):
    """Fresh random images (never zeros), wide enough that the input range [-3, 3] saturates."""
    return (np.random.default_rng(seed).standard_normal((batch, 8, 8, 3)) * 1.5).astype(np.float32)


@pytest.fixture(scope="module")
def qat_model(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 3)), FakeQuant(-3.0, 3.0),
                              QConv2D(16, 3, padding="same", activation="relu"), FakeQuant(0.0, 4.0),
                              keras.layers.Flatten(), QDense(10)])
    model_zoo.randomize_weights(model)
    return model_zoo.export(model, str(tmp_path_factory.mktemp("qat") / "qat_cnn"), "images")


@pytest.fixture(scope="module")
def explicit(qat_model):
    conv = tftrt_lite.Converter(input_saved_model_dir=qat_model, precision_mode="INT8", use_calibration=False)
    conv.convert()      # no calibration data
    return conv


def _tf_output(path, x):
    return tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(x))["output_0"].numpy()


def _engine_output(conv, x):
    (built,) = conv.engines().values()
    return built.engine.run_reference({built.lowered.input_names[0]: x})[built.engine.output_names[0]]


def test_explicit_int8_engine_takes_the_model_quantization(explicit):
    (built,) = explicit.engines().values()
    engine = built.engine
    assert engine.precision == "INT8"
    assert engine.stats["qdq_nodes"] == 2                 # the two activation fake-quants, and nothing else:
    assert "quantized_nodes" not in engine.stats and engine.activation_ranges == {}    # no calibrated QDQ
    assert explicit.calibration_table is None
    assert built.lowered.input_tensors == ["images:0"]     # one engine, fake-quant nodes absorbed
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(engine.graph.summary())
    assert not {t.dtype for t in engine.graph.tensors.values()} & {"int8", "uint8"}
    rounds = [n for n in engine.graph.nodes if n.op == "tftrt.FusedElementwise"
              and any(i["op"] == "Round" for i in n.attrs["program"])]
    assert len(rounds) == 2                              # each Q→DQ pair is one fused kernel
    report = explicit.report()
    assert report["precision_mode"] == "INT8"


def test_explicit_int8_engine_matches_tensorflow(qat_model, explicit):
    for seed in (11, 12):
        x = _inputs(seed)
        want, got = _tf_output(qat_model, x), _engine_output(explicit, x)
        scale = float(np.max(np.abs(want)))
        err = np.abs(got - want) / scale
        print(f"explicit INT8 vs TF: max {err.max():.2e}, mean {err.mean():.2e} of scale {scale:.3g}")
        assert err.max() <= INT8_TOLERANCE


def test_explicit_int8_is_the_fp16_engine_with_the_model_quantization(qat_model, explicit):
    """No calibrated quantization on top: the same math as an FP16 conversion of the model."""
    fp16 = tftrt_lite.Converter(input_saved_model_dir=qat_model, precision_mode="FP16")
    fp16.convert()
    x = _inputs(13)
    np.testing.assert_array_equal(_engine_output(explicit, x), _engine_output(fp16, x))


def test_fp32_conversion_computes_the_fake_quant_nodes_as_tensorflow(qat_model):
    conv = tftrt_lite.Converter(input_saved_model_dir=qat_model, precision_mode="FP32")
    conv.convert()
    (built,) = conv.engines().values()
    assert built.engine.stats["qdq_nodes"] == 2
    x = _inputs(14, batch=64)
    want, got = _tf_output(qat_model, x), _engine_output(conv, x)
    err = np.abs(got - want) / float(np.max(np.abs(want)))
    assert np.mean(err <= 1e-5) >= 0.999 and err.max() <= INT8_TOLERANCE


class _ConvThenFakeQuant(tf.Module):
    """x ─FakeQuant─► conv ─+b─► FakeQuant(-2, 6) ─► y: the engine's output is a quantized tensor."""

    def __init__(self):
        rng = np.random.default_rng(4)
        self.w = tf.Variable(rng.standard_normal((3, 3, 3, 8)).astype(np.float32) * 0.4)
        self.b = tf.Variable(rng.standard_normal(8).astype(np.float32) * 0.2)

    @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 3), tf.float32, name="images")])
    def serve(self, x):
        x = tf.quantization.fake_quant_with_min_max_vars(x, -3.0, 3.0)
        y = tf.nn.conv2d(x, self.w, 1, "SAME") + self.b
        return {"output_0": tf.quantization.fake_quant_with_min_max_vars(y, -2.0, 6.0)}


def test_quantized_outputs_are_on_tensorflow_s_grid_at_most_one_step_away(tmp_path):
    module = _ConvThenFakeQuant()
    path = str(tmp_path / "conv_fq")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    step = 8.0 / 255                                     # the output grid of FakeQuant(-2, 6)
    x = _inputs(15)
    want = _tf_output(path, x)
    for precision, use_calibration, exact in (("INT8", False, 0.9), ("FP32", True, 0.999)):
        conv = tftrt_lite.Converter(input_saved_model_dir=path, precision_mode=precision,
                                    use_calibration=use_calibration)
        conv.convert()
        steps = np.abs(_engine_output(conv, x) - want) / step
        assert np.all((steps < 1e-4) | (np.abs(steps - 1) < 1e-4)), precision     # on TF's grid, ±1 step
        print(f"{precision}: {np.mean(steps > 0.5):.2%} of the values one step from TensorFlow's")
        assert np.mean(steps < 1e-4) >= exact


def test_a_model_without_fake_quant_nodes_is_refused(tmp_path):
    path = model_zoo.build_split_model(str(tmp_path))
    conv = tftrt_lite.Converter(input_saved_model_dir=path, precision_mode="INT8", use_calibration=False)
    with pytest.raises(ValueError, match="fake-quant nodes .* and this model has none: calibrate instead"):
        conv.convert()


def test_calibration_data_is_refused(qat_model):
    with pytest.raises(ValueError, match="calibration_table is for use_calibration=True"):
        tftrt_lite.Converter(input_saved_model_dir=qat_model, precision_mode="INT8", use_calibration=False,
                             calibration_table="table.json")
    conv = tftrt_lite.Converter(input_saved_model_dir=qat_model, precision_mode="INT8", use_calibration=False)
    with pytest.raises(ValueError, match="use_calibration=False"):
        conv.convert(calibration_input_fn=lambda: iter([_inputs(0)]))


def test_cli_no_calibration(qat_model, tmp_path, capsys):
    out = str(tmp_path / "qat_int8")
    assert cli.main(["convert", qat_model, out, "--precision", "INT8", "--no-calibration"]) == 0
    assert "the model's 2 quantize-dequantize node(s)" in capsys.readouterr().out
    assert read_calibration_table(out) is None
    with pytest.raises(SystemExit, match="--no-calibration measures no ranges"):
        cli.main(["convert", qat_model, str(tmp_path / "x"), "--precision", "INT8", "--no-calibration",
                  "--save-calibration-table", str(tmp_path / "t.json")])


@pytest.mark.gpu
def test_explicit_int8_on_gpu_matches_tensorflow(qat_model, explicit, tmp_path, no_fallback):
    original = tf.saved_model.load(qat_model).signatures["serving_default"]
    converted = tf.saved_model.load(explicit.save(str(tmp_path / "qat_int8_gpu"))).signatures["serving_default"]
    for batch, seed in ((1, 21), (32, 22)):
        x = tf.constant(_inputs(seed, batch))
        tftrt_lite.reset_stats()
        with tf.device("/GPU:0"):
            want = original(images=x)["output_0"].numpy()
            got = converted(images=x)["output_0"].numpy()
        stats = tftrt_lite.stats()
        assert stats["engine_calls"] >= 1 and stats["fallback_calls"] == 0, stats
        scale = float(np.max(np.abs(want)))
        err = float(np.max(np.abs(got - want))) / scale
        print(f"explicit INT8 on the GPU, batch {batch}: max error {err:.2e} of scale {scale:.3g}")
        assert err <= INT8_TOLERANCE
