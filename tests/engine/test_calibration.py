"""Engine calibration: the ranges an INT8 build measures are those of the tensors it quantizes."""
import numpy as np
import pytest

import zoo
from tftrt_lite.calibrate import Calibrator, CalibrationTable, CalibrationTableError
from tftrt_lite.engine.calibration import calibrate_graph, ranges_for, tensors_to_calibrate
from tftrt_lite.engine.onnx_import import import_onnx
from tftrt_lite.engine.passes import run_pipeline, split_pipeline
from tftrt_lite.engine.reference import run_graph
from tftrt_lite.verify import random_feeds


def _calibration_point(name):
    before, _ = split_pipeline()
    graph, _ = run_pipeline(import_onnx(zoo.lowered(name).onnx_model), pipeline=before)
    return graph


def _batches(name, count, size=2):
    low = zoo.lowered(name)
    specs = list(zip(low.input_names, low.input_dtypes, low.input_shapes))
    return [random_feeds(specs, symbolic_size=size, seed=s) for s in range(count)]


def test_max_calibration_measures_the_quantized_inputs():
    graph = _calibration_point("vgg16")
    wanted = tensors_to_calibrate(graph)
    convs_and_gemms = [n for n in graph.nodes if n.op in ("tftrt.FusedConv", "tftrt.FusedGemm")]
    assert wanted == list(dict.fromkeys(n.inputs[0] for n in convs_and_gemms))
    batches = _batches("vgg16", 3)
    table = calibrate_graph(graph, batches, Calibrator("max"))
    assert table.num_batches == 3 and table.num_samples == 6
    runs = [run_graph(graph, b, intermediates=True) for b in batches]
    for t in wanted:
        assert table.amax[t] == pytest.approx(max(float(np.max(np.abs(r[t]))) for r in runs), rel=1e-6)
    assert ranges_for(graph, table) == {t: table.amax[t] for t in wanted}


def test_ranges_for_names_a_missing_tensor():
    graph = _calibration_point("bert_encoder")
    table = CalibrationTable(amax={"unrelated:0": 1.0}, algorithm="max", num_batches=1, num_samples=1)
    with pytest.raises(CalibrationTableError, match=tensors_to_calibrate(graph)[0]):
        ranges_for(graph, table)
