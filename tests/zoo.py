"""The zoo models at each pipeline stage, built once per test process.

Building, freezing, lowering and converting the reference models is the slow part
of the suite (tens of seconds per image model on a CI core), and tests of every
stage need them, so all tests share this process-wide cache instead of rebuilding
per module. Each function returns the stage's real output, made by the project's
own code: tests of a stage look at exactly what the next stage receives.
"""
import atexit
import functools
import shutil
import tempfile

import model_zoo

ZOO = ("resnet50", "mobilenetv2", "vgg16", "bert_encoder")

_ROOT = tempfile.mkdtemp(prefix="tftrt_lite_zoo_")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def root() -> str:
    return _ROOT


@functools.lru_cache(maxsize=None)
def saved_model(name: str) -> str:
    """Path of the zoo model's SavedModel (random weights, small input size)."""
    return model_zoo.build_saved_model(name, _ROOT)


@functools.lru_cache(maxsize=None)
def signature(name: str):
    """``SignatureGraph`` of the ``serving_default`` signature, as the load stage delivers it."""
    from tftrt_lite.load import load_saved_model

    return load_saved_model(saved_model(name)).signatures["serving_default"]


def protected_nodes(sig):
    return [b.node_name for b in sig.inputs + sig.outputs]


@functools.lru_cache(maxsize=None)
def converter(name: str, precision: str = "FP32"):
    """A ``Converter`` of the zoo model after ``convert()`` (engines built, not saved)."""
    from tftrt_lite import Converter

    conv = Converter(input_saved_model_dir=saved_model(name), precision_mode=precision)
    # INT8: ranges from two random batches (the zoo's weights are random too)
    conv.convert(calibration_input_fn=(lambda: (model_zoo.random_inputs(name, 4, seed=700 + k) for k in range(2)))
                 if precision == "INT8" else None)
    return conv


def lowered(name: str):
    """The ``LoweredSegment`` of the model's single engine (segment GraphDef + ONNX)."""
    (built,) = converter(name).engines().values()
    return built.lowered


def engine(name: str):
    """The built ``Engine`` of the model's single segment."""
    (built,) = converter(name).engines().values()
    return built.engine
