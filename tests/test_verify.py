"""``verify_engine``: a wrong engine is caught, and the error says where it went wrong."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import zoo
from tftrt_lite.engine import Engine, build_engine
from tftrt_lite.errors import ConversionError
from tftrt_lite.verify import verify_engine


def test_a_correct_engine_passes():
    verify_engine(zoo.engine("bert_encoder"), zoo.lowered("bert_encoder"), batch_sizes=(2,))


def test_a_wrong_weight_after_optimisation_is_caught():
    engine = Engine.deserialize(zoo.engine("bert_encoder").serialize())
    name, tensor = max(((n, t) for n, t in engine.graph.tensors.items() if t.is_const and t.value.size > 1000),
                       key=lambda kv: kv[1].value.size)
    tensor.value = tensor.value * 1.5
    with pytest.raises(ConversionError, match="output 'output_0:0' differs from its native segment"):
        verify_engine(engine, zoo.lowered("bert_encoder"), batch_sizes=(2,))


def test_a_wrong_lowering_names_the_first_diverging_tf_tensor():
    lowered = zoo.lowered("bert_encoder")
    broken_model = onnx.ModelProto()
    broken_model.CopyFrom(lowered.onnx_model)
    init = max(broken_model.graph.initializer, key=lambda t: np.prod(t.dims))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    broken = type(lowered)(**{**lowered.__dict__, "onnx_model": broken_model})
    with pytest.raises(ConversionError, match=r"first diverges at TF tensor '.+:\d+'"):
        verify_engine(build_engine(broken_model, name="broken"), broken, batch_sizes=(2,))
