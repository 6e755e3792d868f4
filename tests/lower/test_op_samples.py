"""Every op-support registry entry, exercised end to end on a tiny graph.

For each sample: the registry accepts the op (segmentation puts it in one segment),
tf2onnx really lowers it at the pinned opset, the ONNX ops it emits are exactly
declared by the registry entries of the TF ops in the segment (so the registry's
ONNX lists are not guesses), the ONNX model computes what TensorFlow computes on
fresh random inputs (``onnx.reference``), and the engine builds (every kernel
compiles) and computes the same through its reference executor.
"""
import numpy as np
import pytest
import tensorflow as tf
from onnx import version_converter
from onnx.reference import ReferenceEvaluator

from tftrt_lite.engine import build_engine
from tftrt_lite.lower import lower_segment
from tftrt_lite.registry import REGISTRY
from tftrt_lite.segment import segment_graph

F32 = tf.float32
I32 = tf.int32
IMG = tf.TensorSpec([None, 6, 5, 3], F32)      # NHWC, batch unknown
VEC = tf.TensorSpec([None, 8], F32)
C = np.random.default_rng(7)
W33 = tf.constant(C.standard_normal((3, 3, 3, 4)).astype(np.float32))
DW = tf.constant(C.standard_normal((3, 3, 3, 2)).astype(np.float32))
M84 = tf.constant(C.standard_normal((8, 4)).astype(np.float32))
EMB = tf.constant(C.standard_normal((10, 4)).astype(np.float32))


def _pos(x):
    return x * x + 1.0


# (id, TF op types under test, input specs, function)
SAMPLES = [
    ("Relu", ["Relu"], [VEC], tf.nn.relu),
    ("Relu6", ["Relu6"], [VEC], tf.nn.relu6),
    ("Elu", ["Elu"], [VEC], tf.nn.elu),
    ("Selu", ["Selu"], [VEC], tf.nn.selu),
    ("Sigmoid", ["Sigmoid"], [VEC], tf.sigmoid),
    ("Tanh", ["Tanh"], [VEC], tf.tanh),
    ("Softplus", ["Softplus"], [VEC], tf.nn.softplus),
    ("Softsign", ["Softsign"], [VEC], tf.nn.softsign),
    ("LeakyRelu", ["LeakyRelu"], [VEC], lambda x: tf.nn.leaky_relu(x, 0.1)),
    ("Exp", ["Exp"], [VEC], tf.exp),
    ("Log", ["Log"], [VEC], lambda x: tf.math.log(_pos(x))),
    ("Sqrt", ["Sqrt"], [VEC], lambda x: tf.sqrt(_pos(x))),
    ("Rsqrt", ["Rsqrt"], [VEC], lambda x: tf.math.rsqrt(_pos(x))),
    ("Reciprocal", ["Reciprocal"], [VEC], lambda x: tf.math.reciprocal(_pos(x))),
    ("Erf", ["Erf"], [VEC], tf.math.erf),
    ("Erfc", ["Erfc"], [VEC], tf.math.erfc),
    ("Floor", ["Floor"], [VEC], tf.floor),
    ("Ceil", ["Ceil"], [VEC], tf.math.ceil),
    ("Square", ["Square"], [VEC], tf.square),
    ("Abs", ["Abs"], [VEC], tf.abs),
    ("Neg", ["Neg"], [VEC], tf.negative),
    ("Add", ["Add"], [VEC, VEC], lambda x, y: tf.raw_ops.Add(x=x, y=y)),
    ("AddV2", ["AddV2"], [VEC, VEC], tf.add),
    ("Sub", ["Sub"], [VEC, VEC], tf.subtract),
    ("Mul", ["Mul"], [VEC, VEC], tf.multiply),
    ("Maximum", ["Maximum"], [VEC, VEC], tf.maximum),
    ("Minimum", ["Minimum"], [VEC, VEC], tf.minimum),
    ("RealDiv", ["RealDiv"], [VEC, VEC], lambda x, y: x / _pos(y)),
    ("Pow", ["Pow"], [VEC, VEC], lambda x, y: tf.pow(_pos(x), y)),
    ("SquaredDifference", ["SquaredDifference"], [VEC, VEC], tf.math.squared_difference),
    ("AddN", ["AddN"], [VEC, VEC], lambda x, y: tf.add_n([x, y, x])),
    ("Less+SelectV2", ["Less", "SelectV2"], [VEC, VEC], lambda x, y: tf.where(x < y, x, y)),
    ("Greater", ["Greater", "SelectV2"], [VEC, VEC], lambda x, y: tf.where(x > y, x, y)),
    ("LessEqual", ["LessEqual", "SelectV2"], [VEC, VEC], lambda x, y: tf.where(x <= y, x, y)),
    ("GreaterEqual", ["GreaterEqual", "SelectV2"], [VEC, VEC], lambda x, y: tf.where(x >= y, x, y)),
    ("Equal", ["Equal", "SelectV2"], [VEC, VEC], lambda x, y: tf.where(tf.equal(tf.floor(x), 0.0), x, y)),
    ("Select", ["Select"], [VEC, VEC], lambda x, y: tf.raw_ops.Select(condition=x > 0.0, x=x, y=y)),
    ("SelectV2-int", ["Less", "SelectV2"], [tf.TensorSpec([None, 8], I32)],
     lambda i: tf.gather(EMB, tf.where(i < 0, i + 10, i))),
    ("Less-int", ["Less", "SelectV2"], [tf.TensorSpec([None, 8], I32), tf.TensorSpec([None, 8], I32)],
     lambda i, j: tf.where(i < j, i, j)),
    ("Cast", ["Cast"], [VEC], lambda x: tf.cast(tf.cast(x * 3.0, tf.int32), F32)),
    ("Mean", ["Mean"], [IMG], lambda x: tf.reduce_mean(x, axis=[1, 2])),
    ("Mean-keepdims", ["Mean"], [VEC], lambda x: tf.reduce_mean(x, axis=-1, keepdims=True)),
    ("Mean-last-axis", ["Mean"], [tf.TensorSpec([None, 3, 8], F32)],
     lambda x: tf.reduce_mean(x, axis=-1, keepdims=True)),
    # rank 4: onnx.reference's GlobalMaxPool reduces the wrong axes for other ranks
    ("Max-trailing-axes", ["Max"], [IMG], lambda x: tf.reduce_max(x, axis=[2, 3], keepdims=True)),
    ("Sum", ["Sum"], [IMG], lambda x: tf.reduce_sum(x, axis=[2])),
    ("Max", ["Max"], [IMG], lambda x: tf.reduce_max(x, axis=[1, 2])),
    ("Min", ["Min"], [IMG], lambda x: tf.reduce_min(x, axis=[3], keepdims=True)),
    ("Prod", ["Prod"], [VEC], lambda x: tf.reduce_prod(x, axis=[1])),
    ("Softmax", ["Softmax"], [VEC], tf.nn.softmax),
    ("LogSoftmax", ["LogSoftmax"], [VEC], tf.nn.log_softmax),
    ("FusedBatchNormV3", ["FusedBatchNormV3"], [IMG],
     lambda x: tf.raw_ops.FusedBatchNormV3(
         x=x, scale=[1.0, 2.0, 0.5], offset=[0.1, 0.2, 0.3], mean=[0.0, 0.5, -0.5],
         variance=[1.0, 2.0, 0.5], epsilon=1e-3, is_training=False)[0]),
    ("FusedBatchNorm", ["FusedBatchNorm"], [IMG],
     lambda x: tf.raw_ops.FusedBatchNorm(x=x, scale=[1.0, 2.0, 0.5], offset=[0.1, 0.2, 0.3], mean=[0.0, 0.5, -0.5],
                                         variance=[1.0, 2.0, 0.5], is_training=False)[0]),
    ("FusedBatchNormV2", ["FusedBatchNormV2"], [IMG],
     lambda x: tf.raw_ops.FusedBatchNormV2(x=x, scale=[1.0, 2.0, 0.5], offset=[0.1, 0.2, 0.3], mean=[0.0, 0.5, -0.5],
                                           variance=[1.0, 2.0, 0.5], is_training=False)[0]),
    ("BiasAdd", ["BiasAdd"], [IMG], lambda x: tf.nn.bias_add(x, [1.0, 2.0, 3.0])),
    ("Conv2D-SAME", ["Conv2D"], [IMG], lambda x: tf.nn.conv2d(x, W33, 1, "SAME")),
    ("Conv2D-VALID-stride", ["Conv2D"], [IMG], lambda x: tf.nn.conv2d(x, W33, 2, "VALID")),
    ("Conv2D-EXPLICIT", ["Conv2D"], [IMG], lambda x: tf.nn.conv2d(x, W33, 1, [[0, 0], [1, 2], [2, 0], [0, 0]])),
    ("Conv2D-dilated", ["Conv2D"], [IMG], lambda x: tf.nn.conv2d(x, W33, 1, "SAME", dilations=2)),
    ("DepthwiseConv2dNative", ["DepthwiseConv2dNative"], [IMG],
     lambda x: tf.nn.depthwise_conv2d(x, DW, [1, 1, 1, 1], "SAME")),
    ("MaxPool", ["MaxPool"], [IMG], lambda x: tf.nn.max_pool2d(x, 2, 2, "SAME")),
    ("AvgPool", ["AvgPool"], [IMG], lambda x: tf.nn.avg_pool2d(x, 3, 1, "VALID")),
    ("MatMul", ["MatMul"], [VEC], lambda x: tf.matmul(x, M84)),
    ("MatMul-transpose", ["MatMul"], [VEC], lambda x: tf.matmul(x, tf.transpose(M84), transpose_b=True)),
    ("BatchMatMulV2", ["BatchMatMulV2"], [tf.TensorSpec([None, 3, 4], F32), tf.TensorSpec([None, 4, 5], F32)],
     tf.matmul),
    ("BatchMatMul", ["BatchMatMul"], [tf.TensorSpec([None, 3, 4], F32), tf.TensorSpec([None, 5, 4], F32)],
     lambda x, y: tf.raw_ops.BatchMatMul(x=x, y=y, adj_y=True)),
    ("BatchMatMulV3", ["BatchMatMulV3"], [tf.TensorSpec([None, 3, 4], F32), tf.TensorSpec([None, 4, 5], F32)],
     lambda x, y: tf.raw_ops.BatchMatMulV3(x=x, y=y, Tout=F32)),
    ("Einsum", ["Einsum"], [tf.TensorSpec([None, 3, 8], F32)], lambda x: tf.einsum("abc,cd->abd", x, M84)),
    ("Einsum-batched", ["Einsum"], [tf.TensorSpec([None, 3, 4], F32), tf.TensorSpec([None, 5, 4], F32)],
     lambda x, y: tf.einsum("bik,bjk->bij", x, y)),
    ("Pad", ["Pad"], [IMG], lambda x: tf.pad(x, [[0, 0], [1, 1], [2, 0], [0, 0]])),
    ("PadV2", ["PadV2"], [IMG], lambda x: tf.pad(x, [[0, 0], [1, 1], [2, 0], [0, 0]], constant_values=2.0)),
    ("MirrorPad", ["MirrorPad"], [IMG], lambda x: tf.pad(x, [[0, 0], [1, 1], [2, 0], [0, 0]], mode="REFLECT")),
    ("ConcatV2", ["ConcatV2"], [VEC, VEC], lambda x, y: tf.concat([x, y, x], axis=1)),
    ("Pack", ["Pack"], [VEC, VEC], lambda x, y: tf.stack([x, y], axis=1)),
    ("Reshape", ["Reshape"], [IMG], lambda x: tf.reshape(x, [-1, 15, 6])),
    ("Shape+StridedSlice+Pack", ["Shape", "StridedSlice", "Pack", "Reshape"], [IMG],
     lambda x: tf.reshape(x, tf.stack([tf.shape(x)[0], -1]))),
    ("Transpose", ["Transpose"], [IMG], lambda x: tf.transpose(x, [0, 3, 1, 2])),
    ("Squeeze", ["Squeeze"], [tf.TensorSpec([None, 1, 8], F32)], lambda x: tf.squeeze(x, [1])),
    ("ExpandDims", ["ExpandDims"], [VEC], lambda x: tf.expand_dims(x, 1)),
    ("StridedSlice", ["StridedSlice"], [IMG], lambda x: x[:, 1:5:2, ::-1, 1]),
    ("Slice", ["Slice"], [IMG], lambda x: tf.slice(x, [0, 1, 0, 1], [-1, 3, 4, 2])),
    ("GatherV2", ["GatherV2"], [tf.TensorSpec([None, 5], I32)], lambda i: tf.gather(EMB, i)),
    ("GatherV2-axis1", ["GatherV2"], [IMG], lambda x: tf.gather(x, [2, 0, 1], axis=1)),
    ("Tile", ["Tile"], [VEC], lambda x: tf.tile(x, [1, 3])),
    ("Identity+StopGradient", ["Identity", "StopGradient"], [VEC],
     lambda x: tf.stop_gradient(tf.identity(x * 2.0)) + 1.0),
    ("int-shape-math", ["Prod", "Mul", "Sub", "Maximum"], [IMG],
     lambda x: tf.reshape(x, [tf.maximum(tf.reduce_prod(tf.shape(x)[:2]) * 3 - 0, 1), -1])),
    # fake-quant nodes: QuantizeLinear → DequantizeLinear pairs (uint8 with a zero point, int8 per tensor
    # and per channel); random inputs do not land on rounding ties, where TF rounds half up
    ("FakeQuantWithMinMaxArgs", ["FakeQuantWithMinMaxArgs"], [VEC],
     lambda x: tf.quantization.fake_quant_with_min_max_args(x, -2.0, 2.5)),
    ("FakeQuantWithMinMaxVars+Conv2D", ["FakeQuantWithMinMaxVars", "Conv2D"], [IMG],
     lambda x: tf.nn.conv2d(tf.quantization.fake_quant_with_min_max_vars(x, -1.5, 3.0), W33, 1, "SAME")),
    ("QuantizeAndDequantizeV2", ["QuantizeAndDequantizeV2"], [VEC],
     lambda x: tf.quantization.quantize_and_dequantize(x, -2.0, 1.5, range_given=True)),
    ("QuantizeAndDequantizeV3-per-channel", ["QuantizeAndDequantizeV3"], [IMG],
     lambda x: tf.raw_ops.QuantizeAndDequantizeV3(input=x, input_min=[-1.0, -2.0, -0.5], input_max=[1.0, 2.0, 3.0],
                                                  num_bits=8, range_given=True, axis=3)),
    ("QuantizeAndDequantizeV4-unsigned+Reshape", ["QuantizeAndDequantizeV4", "Reshape"], [IMG],
     lambda x: tf.reshape(tf.quantization.quantize_and_dequantize_v2(x, 0.0, 2.0, signed_input=False,
                                                                     range_given=True), [-1, 90])),
]


def test_samples_cover_every_registry_entry():
    covered = {t for _, types, _, _ in SAMPLES for t in types} | {"Const"}
    assert sorted(REGISTRY.supported_types() - covered) == []


def _onnx_reference(model):
    """onnx.reference implements QuantizeLinear/DequantizeLinear from opset 19 only; their
    8-bit semantics have not changed since 13, so such models are evaluated converted to 19."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        model = version_converter.convert_version(model, 19)
    return ReferenceEvaluator(model)


def _random(spec, rng):
    dims = [2 if d is None else d for d in spec.shape.as_list()]
    if spec.dtype.is_integer:
        return rng.integers(0, 10, dims).astype(spec.dtype.as_numpy_dtype)
    return rng.standard_normal(dims).astype(spec.dtype.as_numpy_dtype)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_registry_entry_lowers_as_declared(sample):
    _, tf_types, specs, fn = sample
    specs = [tf.TensorSpec(s.shape, s.dtype, name=f"x{i}") for i, s in enumerate(specs)]
    concrete = tf.function(lambda *args: fn(*args), input_signature=specs).get_concrete_function()
    graph_def = concrete.graph.as_graph_def()
    outputs = [t.name.split(":")[0] for t in concrete.outputs]
    protected = [f"x{i}" for i in range(len(specs))] + outputs

    result = segment_graph(graph_def, minimum_segment_size=1, protected=protected)
    assert not result.report.unsupported, result.report.summary()
    assert len(result.segments) == 1
    segment = result.segments[0]
    op_types = {n.name: n.op for n in graph_def.node}
    segment_types = {op_types[n] for n in segment.nodes}
    assert set(tf_types) <= segment_types

    lowered = lower_segment(graph_def, segment)
    emitted = {n.op_type for n in lowered.onnx_model.graph.node}
    declared = set().union(*(REGISTRY.onnx_ops(t) for t in segment_types))
    assert emitted <= declared, f"undeclared ONNX ops {sorted(emitted - declared)} for {sorted(segment_types)}"

    rng = np.random.default_rng(0)
    feeds = {f"input_{i}": _random(tf.TensorSpec(segment.input_shapes[i], segment.input_dtypes[i]), rng)
             for i in range(len(segment.inputs))}
    by_tensor = dict(zip(segment.inputs, feeds.values()))
    expected = concrete(*[tf.constant(by_tensor[f"x{i}:0"]) for i in range(len(specs))])
    expected = [expected] if isinstance(expected, tf.Tensor) else list(expected)
    got = _onnx_reference(lowered.onnx_model).run(None, feeds)
    # "Supported" means the engine builds and runs it too: passes, kernels (NVRTC), plan.
    engine = build_engine(lowered.onnx_model, target_arch="sm_90", name=sample[0])
    engine_out = engine.run_reference(feeds)
    nodes = {n.name: n for n in graph_def.node}
    for name, want in zip(outputs, expected):
        read = nodes[name].input[0]
        j = lowered.output_tensors.index(read if ":" in read else f"{read}:0")
        np.testing.assert_allclose(got[j], want.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(engine_out[engine.output_names[j]], want.numpy(), rtol=1e-4, atol=1e-5)
