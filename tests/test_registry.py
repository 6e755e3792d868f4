"""The op-support registry: its validators, its coverage, and its agreement with tf2onnx and the engine."""
import numpy as np
import pytest
import tensorflow as tf
import tf2onnx.onnx_opset  # noqa: F401  (registers tf2onnx's own handlers)
from tf2onnx import handler

import tftrt_lite.lower  # noqa: F401  (registers the handlers tf2onnx lacks)
from tftrt_lite.engine.onnx_import import SUPPORTED_ONNX_OPS
from tftrt_lite.lower import ONNX_OPSET
from tftrt_lite.registry import REGISTRY, Support
from tftrt_lite.segment.graph_view import GraphView

FORBIDDEN = {"Placeholder", "If", "StatelessIf", "While", "StatelessWhile", "Switch", "Merge", "Enter", "Exit",
             "NextIteration", "LoopCond", "PartitionedCall", "StatefulPartitionedCall", "VarHandleOp",
             "ReadVariableOp", "RandomUniform", "RandomStandardNormal", "AsString", "StringToNumber", "NoOp"}


def _view(build, shape=(None, 6, 6, 3), dtype=tf.float32):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(dtype, shape, name="x")
        build(x)
    gd = graph.as_graph_def()
    return gd, GraphView(gd)


def _check(build, node_name, **kwargs):
    gd, view = _view(build, **kwargs)
    return REGISTRY.check(view.node(node_name), view)


#: TF ops tf2onnx lowers with a graph rewriter (tf2onnx/rewriter/quantization_ops_rewriter.py)
#: before its handlers run, so they have no handler of their own
REWRITTEN_BY_TF2ONNX = {"QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4"}


def test_every_entry_has_a_tf2onnx_handler_at_the_pinned_opset():
    mapping = handler.tf_op.create_mapping(ONNX_OPSET, [])
    missing = sorted(t for t in REGISTRY.supported_types()
                     if t not in mapping and t != "Const" and t not in REWRITTEN_BY_TF2ONNX)
    assert not missing


def test_every_declared_onnx_op_is_importable_by_the_engine():
    missing = {t: sorted(REGISTRY.onnx_ops(t) - SUPPORTED_ONNX_OPS) for t in REGISTRY.supported_types()}
    assert not {t: ops for t, ops in missing.items() if ops}


def test_never_lists_control_flow_placeholders_or_stateful_ops():
    assert not FORBIDDEN & REGISTRY.supported_types()


def test_zoo_op_types_are_covered():
    zoo_ops = {"Conv2D", "DepthwiseConv2dNative", "Relu", "Relu6", "Mul", "AddV2", "Sub", "Rsqrt", "Pad",
               "MaxPool", "Mean", "MatMul", "BiasAdd", "Softmax", "Reshape", "Squeeze", "Shape", "StridedSlice",
               "Pack", "Less", "SelectV2", "GatherV2", "SquaredDifference", "Neg", "BatchMatMulV2", "Einsum",
               "ConcatV2", "Transpose", "Prod", "Erfc", "Identity", "StopGradient", "Const"}
    assert zoo_ops <= REGISTRY.supported_types()


def test_unknown_op_and_bad_dtype_reasons():
    assert _check(lambda x: tf.math.cumsum(x, axis=1, name="c"), "c") == \
        Support(False, "no lowering for op type Cumsum")
    assert _check(lambda x: tf.identity(tf.strings.as_string(x), name="s"), "s") == Support(False, "dtype string")
    assert _check(lambda x: tf.nn.relu(x, name="r"), "r", dtype=tf.float64) == \
        Support(False, "Relu on dtype float64 (supported: bfloat16, float16, float32)")
    assert _check(lambda x: tf.add(x, x, name="a"), "a", dtype=tf.int32).ok     # shape math
    assert not _check(lambda x: tf.exp(tf.cast(x, tf.float64), name="e"), "e").ok


def test_conv2d_validators():
    w = np.ones((3, 3, 3, 4), np.float32)
    assert _check(lambda x: tf.nn.conv2d(x, w, 1, "SAME", name="c"), "c").ok
    assert _check(lambda x: tf.nn.conv2d(x, w, 1, [[0, 0], [1, 1], [0, 2], [0, 0]], name="c"), "c").ok
    assert _check(lambda x: tf.nn.conv2d(x, w, 1, "VALID", dilations=2, name="c"), "c").ok
    nchw = _check(lambda x: tf.nn.conv2d(x, np.ones((3, 3, 6, 4), np.float32), 1, "SAME",
                                         data_format="NCHW", name="c"), "c")
    assert nchw.ok
    half = _check(lambda x: tf.nn.conv2d(x, w.astype(np.float16), 1, "SAME", name="c"), "c", dtype=tf.float16)
    assert half.ok
    bf16 = _check(lambda x: tf.nn.conv2d(x, tf.cast(w, tf.bfloat16), 1, "SAME", name="c"), "c", dtype=tf.bfloat16)
    assert bf16.reason == "Conv2D on dtype bfloat16 (supported: float16, float32)"
    dynamic_filter = _check(lambda x: tf.nn.conv2d(x, tf.tile(x[:1, :3, :3, :], [1, 1, 1, 1]), 1, "SAME",
                                                   name="c"), "c")
    assert dynamic_filter.reason == "Conv2D with non-constant filter"
    unknown_rank = _check(lambda x: tf.nn.conv2d(x, w, 1, "SAME", name="c"), "c", shape=None)
    assert unknown_rank.reason == "Conv2D on an input of rank None (needs 4)"


def test_constant_operand_validators():
    axes = _check(lambda x: tf.reduce_mean(x, axis=tf.shape(x)[3:] - 2, name="m"), "m")
    assert axes.reason == "Mean with non-constant reduction axes"
    assert _check(lambda x: tf.reduce_mean(x, axis=[1, 2], name="m"), "m").ok
    assert _check(lambda x: tf.reduce_max(x, axis=[-1, 2], name="m"), "m").ok
    gap = _check(lambda x: tf.reduce_max(x, axis=[1, 3], name="m"), "m")
    assert gap.reason == "Max over non-adjacent axes [1, 3]"
    perm = _check(lambda x: tf.transpose(x, tf.reverse(tf.range(4), [0]), name="t"), "t")
    assert perm.reason == "Transpose with non-constant permutation"


def test_batch_norm_and_pad_validators():
    def bn(training):
        return lambda x: tf.raw_ops.FusedBatchNormV3(
            x=x, scale=[1.0] * 3, offset=[0.0] * 3, mean=[0.0] * 3 if not training else [],
            variance=[1.0] * 3 if not training else [], is_training=training, name="bn")
    assert _check(bn(False), "bn").ok
    assert _check(bn(True), "bn").reason == "FusedBatchNormV3 in training mode"
    sym = _check(lambda x: tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC", name="p"), "p")
    assert sym.reason == "MirrorPad with mode SYMMETRIC"


def test_registering_twice_is_an_error():
    with pytest.raises(ValueError, match="Relu"):
        REGISTRY.register({"Relu": ["Relu"]})(lambda node, view: None)
    with pytest.raises(KeyError, match="Cumsum"):
        REGISTRY.onnx_ops("Cumsum")


def test_fake_quant_validators_refuse_what_tf2onnx_cannot_lower():
    fq = tf.quantization.fake_quant_with_min_max_vars
    assert _check(lambda x: fq(x, -1.0, 2.0, name="q"), "q").ok
    assert _check(lambda x: tf.quantization.fake_quant_with_min_max_args(x, -1.0, 2.0, name="q"), "q").ok
    assert _check(lambda x: fq(x, -1.0, 2.0, narrow_range=True, name="q"), "q").reason == \
        "FakeQuantWithMinMaxVars with narrow_range=True"
    assert _check(lambda x: fq(x, -1.0, 2.0, num_bits=4, name="q"), "q").reason == \
        "FakeQuantWithMinMaxVars with num_bits=4 (only 8)"
    assert _check(lambda x: fq(x, tf.reduce_min(x), 2.0, name="q"), "q").reason == \
        "FakeQuantWithMinMaxVars with a non-constant or non-scalar min"
    # tf2onnx needs a uint8 zero point; TF would nudge the range to contain 0 instead
    assert _check(lambda x: fq(x, 0.5, 2.0, name="q"), "q").reason == \
        "FakeQuantWithMinMaxVars with a range [0.5, 2.0] that does not contain 0"
    assert _check(lambda x: fq(x, 1.0, 1.0, name="q"), "q").reason == "FakeQuantWithMinMaxVars with min 1.0 >= max 1.0"
    per_channel = _check(lambda x: tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, [-1.0] * 3, [1.0] * 3, name="q"), "q")
    assert per_channel.reason == "no lowering for op type FakeQuantWithMinMaxVarsPerChannel"


def test_quantize_and_dequantize_validators():
    def v2(**kw):
        return lambda x: tf.raw_ops.QuantizeAndDequantizeV2(input=x, input_min=-1.0, input_max=1.0, name="q",
                                                            **{"range_given": True, **kw})
    assert _check(v2(), "q").ok
    assert _check(v2(signed_input=False), "q").ok
    assert _check(v2(range_given=False), "q").reason == \
        "QuantizeAndDequantizeV2 with range_given=False (a range measured at run time)"
    assert _check(v2(num_bits=4), "q").reason == "QuantizeAndDequantizeV2 with num_bits=4 (only 8)"
    assert _check(v2(round_mode="HALF_UP"), "q").reason == "QuantizeAndDequantizeV2 with round_mode HALF_UP"
    # tf2onnx saturates narrow_range=True at -128 where TF clamps at -127
    assert _check(v2(narrow_range=True), "q").reason == \
        "QuantizeAndDequantizeV2 with narrow_range=True on a computed input"
    computed = _check(lambda x: tf.raw_ops.QuantizeAndDequantizeV4(
        input=x, input_min=tf.reduce_min(x), input_max=1.0, range_given=True, name="q"), "q")
    assert computed.reason == "QuantizeAndDequantizeV4 with a non-constant min"

    def v3(bits=8, axis=3, lo=(-1.0, -2.0, -3.0), hi=(1.0, 2.0, 3.0)):
        return lambda x: tf.raw_ops.QuantizeAndDequantizeV3(input=x, input_min=list(lo), input_max=list(hi),
                                                            num_bits=bits, axis=axis, name="q")
    assert _check(v3(), "q").ok
    assert _check(v3(bits=7), "q").reason == "QuantizeAndDequantizeV3 with num_bits other than a constant 8"
    assert _check(v3(lo=(0.0,) * 3, hi=(1.0, 0.0, 1.0)), "q").reason == \
        "QuantizeAndDequantizeV3 with an empty range (scale 0)"


def test_narrow_range_on_a_constant_weight_is_exact_when_nothing_rounds_to_minus_128():
    w = np.array([[-1.0, 0.5], [0.25, -0.004]], np.float32)

    def weight(amax):
        return lambda x: tf.matmul(x[:, 0, 0, :2], tf.raw_ops.QuantizeAndDequantizeV2(
            input=w, input_min=[-amax, -0.5], input_max=[amax, 0.5], range_given=True, narrow_range=True, axis=1,
            name="q"))
    assert _check(weight(1.0), "q").ok                      # the weight's own range: -1 → -127
    assert _check(weight(0.9), "q").reason == \
        "QuantizeAndDequantizeV2 with narrow_range=True on values below the range"     # -1 → -141
