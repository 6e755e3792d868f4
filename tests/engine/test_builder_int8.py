"""INT8 engines of the zoo models: the reference executor of each plan against TF's float32
output (TF-TRT's INT8 tolerance when no task metric applies: 5e-2 of each output's
scale), calibrated on random inputs, and the ranges recorded in the plan."""
import pytest

import zoo
from tftrt_lite.engine import Engine
from tftrt_lite.engine.builder import build_engine
from tftrt_lite.verify import random_feeds, verify_engine


@pytest.mark.parametrize("name", zoo.ZOO)
def test_int8_engine_matches_tf_within_int8_tolerance(name):
    low = zoo.lowered(name)
    specs = list(zip(low.input_names, low.input_dtypes, low.input_shapes))
    batches = [random_feeds(specs, symbolic_size=2, seed=100 + s) for s in range(2)]
    engine = build_engine(low.onnx_model, precision="INT8", name=name, calibration_batches=batches)
    assert engine.precision == "INT8"
    convs_and_gemms = sum(n in ("tftrt.FusedConv", "tftrt.FusedGemm") for n in zoo.engine(name).graph.nodes
                          for n in [n.op])
    assert 0 < engine.stats["quantized_nodes"] <= convs_and_gemms
    assert set(engine.activation_ranges) and all(a > 0 for a in engine.activation_ranges.values())
    verify_engine(engine, low, batch_sizes=(2,))
    assert Engine.deserialize(engine.serialize()).activation_ranges == engine.activation_ranges
    if name == "bert_encoder":  # the same ranges give the same plan without calibrating
        rebuilt = build_engine(low.onnx_model, precision="INT8", name=name,
                               activation_ranges=engine.activation_ranges)
        assert rebuilt.serialize() == engine.serialize()
