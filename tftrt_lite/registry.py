"""The op-support registry: which TF ops may join an engine, and what they lower to.

One table drives both stages that care: ``segment`` asks ``REGISTRY.check`` whether a
node may join a segment, and ``lower`` (and its tests) ask ``REGISTRY.onnx_ops`` which
ONNX ops tf2onnx emits for that TF op — each of which the engine builder must import.
Keeping both answers in one entry is what stops "supported" from drifting between the
segmenter and the lowering.

An entry maps TF op types to the ONNX ops tf2onnx (opset 17) produces for them and a
capability validator ``validator(node_def, view) -> None | reason``. Validators reject
what tf2onnx or the engine cannot do for *this* node: a dtype outside the compute set
(float32/float16/bfloat16; int32/int64 only where the op is index or shape math), an
attribute value (data_format, padding, training mode), a non-constant operand that
ONNX needs as an attribute, an unknown rank where tf2onnx needs one. The reason is a
short human phrase that the conversion report groups by.

Never registered: string/resource/variant tensors, control flow (If/While/Switch/
Merge/Enter...), Placeholder, stateful or random ops — they stay native by design.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2

if TYPE_CHECKING:  # the segmenter builds the view and imports this module
    from tftrt_lite.segment.graph_view import GraphView

Validator = Callable[[node_def_pb2.NodeDef, "GraphView"], Optional[str]]

FLOAT = frozenset({tf.float32, tf.float16, tf.bfloat16})
#: ONNX Conv/pooling/BatchNormalization at opset 17 take no bfloat16.
CONV_FLOAT = frozenset({tf.float32, tf.float16})
INDEX = frozenset({tf.int32, tf.int64})
FLOAT_OR_INDEX = FLOAT | INDEX
#: dtypes that can never enter an engine, whatever the op.
NEVER = frozenset({tf.string, tf.resource, tf.variant, tf.complex64, tf.complex128})


@dataclass(frozen=True)
class Support:
    """Answer of ``OpRegistry.check``: ``ok``, or not with a ``reason`` naming the obstacle."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class OpEntry:
    tf_type: str
    onnx_ops: FrozenSet[str]
    validator: Validator


class OpRegistry:
    """TF op type → (ONNX ops emitted, capability validator)."""

    def __init__(self):
        self._entries: Dict[str, OpEntry] = {}

    def register(self, ops: Mapping[str, Sequence[str]]) -> Callable[[Validator], Validator]:
        """Decorator: register ``validator`` for each TF op type in ``ops`` (→ its ONNX ops)."""

        def decorate(validator: Validator) -> Validator:
            for tf_type, onnx_ops in ops.items():
                if tf_type in self._entries:
                    raise ValueError(f"TF op type {tf_type!r} is registered twice")
                self._entries[tf_type] = OpEntry(tf_type, frozenset(onnx_ops), validator)
            return validator

        return decorate

    def check(self, node: node_def_pb2.NodeDef, view: "GraphView") -> Support:
        entry = self._entries.get(node.op)
        if entry is None:
            return Support(False, f"no lowering for op type {node.op}")
        bad = _never_dtype(node, view)
        if bad is not None:
            return Support(False, f"dtype {bad.name}")
        reason = entry.validator(node, view)
        return Support(True) if reason is None else Support(False, reason)

    def supported_types(self) -> FrozenSet[str]:
        return frozenset(self._entries)

    def onnx_ops(self, tf_type: str) -> FrozenSet[str]:
        try:
            return self._entries[tf_type].onnx_ops
        except KeyError:
            raise KeyError(f"TF op type {tf_type!r} is not in the op-support registry") from None


REGISTRY = OpRegistry()


# -- validator building blocks ---------------------------------------------------------------

def _never_dtype(node, view: "GraphView") -> Optional[tf.DType]:
    """The first input or output dtype no engine can hold (string, resource...), if any."""
    for tensor in view.data_inputs(node):
        if view.dtype(tensor) in NEVER:
            return view.dtype(tensor)
    for i in range(view.num_outputs(node.name)):
        dtype = view.dtype(f"{node.name}:{i}")
        if dtype in NEVER:
            return dtype
    return None


def _attr_dtype(node, attr: str) -> tf.DType:
    return tf.as_dtype(node.attr[attr].type)


def _dtype_in(node, attr: str, allowed: FrozenSet[tf.DType]) -> Optional[str]:
    dtype = _attr_dtype(node, attr)
    if dtype in allowed:
        return None
    names = ", ".join(sorted(d.name for d in allowed))
    return f"{node.op} on dtype {dtype.name} (supported: {names})"


def _const_input(node, view, index: int, what: str) -> Optional[str]:
    if view.constant(node, index) is None:
        return f"{node.op} with non-constant {what}"
    return None


def _known_rank(node, view, index: int = 0) -> Optional[str]:
    if view.input_shape(node, index).rank is None:
        return f"{node.op} on an input of unknown rank"
    return None


def _data_format(node, allowed=("NHWC", "NCHW")) -> Optional[str]:
    fmt = node.attr["data_format"].s.decode() if "data_format" in node.attr else allowed[0]
    if fmt not in allowed:
        return f"{node.op} with data_format {fmt}"
    return None


def _first(*reasons: Optional[str]) -> Optional[str]:
    return next((r for r in reasons if r is not None), None)


def _float(attr: str = "T") -> Validator:
    return lambda node, view: _dtype_in(node, attr, FLOAT)


def _float_or_index(attr: str = "T") -> Validator:
    return lambda node, view: _dtype_in(node, attr, FLOAT_OR_INDEX)


# -- elementwise -----------------------------------------------------------------------------

REGISTRY.register({
    "Relu": ["Relu"], "Relu6": ["Clip"], "Elu": ["Elu"], "Selu": ["Selu"], "Sigmoid": ["Sigmoid"],
    "Tanh": ["Tanh"], "Softplus": ["Softplus"], "Softsign": ["Softsign"], "LeakyRelu": ["LeakyRelu"],
    "Exp": ["Exp"], "Log": ["Log"], "Sqrt": ["Sqrt"], "Rsqrt": ["Sqrt", "Reciprocal"],
    "Reciprocal": ["Reciprocal"], "Erf": ["Erf"], "Erfc": ["Erf", "Sub"], "Floor": ["Floor"],
    "Ceil": ["Ceil"], "Square": ["Mul"],
})(_float())

REGISTRY.register({"Abs": ["Abs"], "Neg": ["Neg"]})(_float_or_index())

REGISTRY.register({
    "Add": ["Add"], "AddV2": ["Add"], "Sub": ["Sub"], "Mul": ["Mul"], "Maximum": ["Max"],
    "Minimum": ["Min"],
})(_float_or_index())

REGISTRY.register({
    "RealDiv": ["Div"], "Pow": ["Pow"], "SquaredDifference": ["Sub", "Mul"],
})(_float())

REGISTRY.register({"AddN": ["Sum"]})(_float())

REGISTRY.register({
    "Less": ["Less"], "Greater": ["Greater"], "LessEqual": ["LessOrEqual"],
    "GreaterEqual": ["GreaterOrEqual"], "Equal": ["Equal"],
})(_float_or_index())


# tf2onnx lowers a float select as cond * x + (1 - cond) * y.
_SELECT_ONNX = ["Where", "Cast", "Mul", "Add", "Not"]


@REGISTRY.register({"SelectV2": _SELECT_ONNX, "Select": _SELECT_ONNX})
def _select(node, view):
    if node.op == "Select" and view.input_shape(node, 0).rank != view.input_shape(node, 1).rank:
        # v1 Select broadcasts a vector condition along axis 0, which ONNX Where cannot express.
        return "Select with a condition of lower rank than its operands"
    return _dtype_in(node, "T", FLOAT_OR_INDEX)


@REGISTRY.register({"Cast": ["Cast"]})
def _cast(node, view):
    allowed = FLOAT_OR_INDEX | {tf.bool}
    for attr in ("SrcT", "DstT"):
        dtype = _attr_dtype(node, attr)
        if dtype not in allowed:
            return f"Cast {attr}={dtype.name}"
    return None


# -- reductions and normalisation ------------------------------------------------------------

# tf2onnx's reduce optimizer turns a keepdims reduction over all trailing axes into a global pool.
@REGISTRY.register({
    "Mean": ["ReduceMean", "GlobalAveragePool"], "Sum": ["ReduceSum"], "Max": ["ReduceMax", "GlobalMaxPool"],
    "Min": ["ReduceMin"], "Prod": ["ReduceProd"],
})
def _reduction(node, view):
    # opset 17 ReduceMean/Max/Min/Prod take axes as an attribute: they must be known now.
    return _first(_dtype_in(node, "T", FLOAT_OR_INDEX),
                  _const_input(node, view, 1, "reduction axes"),
                  _adjacent_axes(node, view))


def _adjacent_axes(node, view) -> Optional[str]:
    """The engine generates reductions over one run of adjacent axes (rows of a 2-D view)."""
    value = view.constant(node, 1)
    if value is None:
        return None  # reported by the constant-axes check
    rank = view.input_shape(node, 0).rank
    axes = np.atleast_1d(value).astype(np.int64).tolist()
    if rank is None:
        return None if len(axes) <= 1 else f"{node.op} over several axes of an input of unknown rank"
    axes = sorted({a % rank for a in axes})
    if axes and axes[-1] - axes[0] + 1 != len(axes):
        return f"{node.op} over non-adjacent axes {axes}"
    return None


@REGISTRY.register({"Softmax": ["Softmax"], "LogSoftmax": ["LogSoftmax"]})
def _softmax(node, view):
    return _dtype_in(node, "T", FLOAT)


@REGISTRY.register({
    "FusedBatchNorm": ["BatchNormalization", "Transpose"],
    "FusedBatchNormV2": ["BatchNormalization", "Transpose"],
    "FusedBatchNormV3": ["BatchNormalization", "Transpose"],
})
def _fused_batch_norm(node, view):
    if node.attr["is_training"].b:
        return f"{node.op} in training mode"
    rank = view.input_shape(node, 0).rank
    if rank != 4:
        return f"{node.op} on an input of rank {rank} (needs 4)"
    return _first(_dtype_in(node, "T", CONV_FLOAT), _data_format(node),
                  *(_const_input(node, view, i, what)
                    for i, what in ((1, "scale"), (2, "offset"), (3, "mean"), (4, "variance"))))


@REGISTRY.register({"BiasAdd": ["Add", "Reshape"]})
def _bias_add(node, view):
    return _first(_dtype_in(node, "T", FLOAT), _data_format(node), _known_rank(node, view))


# -- convolution, pooling, matmul ------------------------------------------------------------

def _spatial_attrs(node, view) -> Optional[str]:
    """Shared conv/pool checks: 4-D input of known rank, padding TF-TRT and tf2onnx accept."""
    rank = view.input_shape(node, 0).rank
    if rank != 4:
        return f"{node.op} on an input of rank {rank} (needs 4)"
    padding = node.attr["padding"].s.decode()
    if padding not in ("SAME", "VALID", "EXPLICIT"):
        return f"{node.op} with padding {padding}"
    return _data_format(node)


@REGISTRY.register({"Conv2D": ["Conv", "Transpose"]})
def _conv2d(node, view):
    return _first(_dtype_in(node, "T", CONV_FLOAT), _spatial_attrs(node, view),
                  _const_input(node, view, 1, "filter"))


@REGISTRY.register({"DepthwiseConv2dNative": ["Conv", "Transpose", "Reshape"]})
def _depthwise(node, view):
    # tf2onnx reads the filter shape to compute the group count.
    return _first(_dtype_in(node, "T", CONV_FLOAT), _spatial_attrs(node, view),
                  _const_input(node, view, 1, "filter"))


@REGISTRY.register({"MaxPool": ["MaxPool", "Transpose"], "AvgPool": ["AveragePool", "Transpose"]})
def _pool(node, view):
    reason = _first(_dtype_in(node, "T", CONV_FLOAT), _spatial_attrs(node, view))
    if reason is None and node.attr["padding"].s == b"EXPLICIT":
        return f"{node.op} with padding EXPLICIT"
    return reason


@REGISTRY.register({"MatMul": ["MatMul", "Transpose"]})
def _matmul(node, view):
    return _dtype_in(node, "T", FLOAT)


@REGISTRY.register({
    "BatchMatMul": ["MatMul", "Transpose"], "BatchMatMulV2": ["MatMul", "Transpose"],
    "BatchMatMulV3": ["MatMul", "Transpose", "Cast"],
})
def _batch_matmul(node, view):
    if node.op == "BatchMatMulV3":
        return _first(_dtype_in(node, "Ta", FLOAT), _dtype_in(node, "Tb", FLOAT),
                      _dtype_in(node, "Tout", FLOAT))
    return _dtype_in(node, "T", FLOAT)


# tf2onnx rewrites two-operand Einsum as MatMul with Shape/Gather-computed reshapes.
@REGISTRY.register({"Einsum": ["Einsum", "MatMul", "Transpose", "Reshape", "Shape", "Gather", "Concat",
                               "Squeeze", "Unsqueeze", "Max"]})
def _einsum(node, view):
    if len(view.data_inputs(node)) > 2:
        return f"Einsum with {len(view.data_inputs(node))} operands"
    if "..." in node.attr["equation"].s.decode():
        return "Einsum with an ellipsis in its equation"
    return _dtype_in(node, "T", FLOAT)


# -- data movement and shape math ------------------------------------------------------------

@REGISTRY.register({"Pad": ["Pad"], "PadV2": ["Pad"], "MirrorPad": ["Pad"]})
def _pad(node, view):
    reason = _dtype_in(node, "T", FLOAT_OR_INDEX)
    if reason is None and node.op == "MirrorPad":
        mode = node.attr["mode"].s.decode()
        if mode != "REFLECT":
            return f"MirrorPad with mode {mode}"  # ONNX Pad has reflect, not symmetric
    return reason or _const_input(node, view, 1, "paddings")


@REGISTRY.register({"ConcatV2": ["Concat"]})
def _concat(node, view):
    axis = len(view.data_inputs(node)) - 1
    return _first(_dtype_in(node, "T", FLOAT_OR_INDEX), _const_input(node, view, axis, "axis"))


@REGISTRY.register({"Pack": ["Unsqueeze", "Concat"]})
def _pack(node, view):
    return _dtype_in(node, "T", FLOAT_OR_INDEX)


@REGISTRY.register({"Reshape": ["Reshape", "Cast", "Flatten"]})
def _reshape(node, view):
    return _dtype_in(node, "T", FLOAT_OR_INDEX)


@REGISTRY.register({"Transpose": ["Transpose"]})
def _transpose(node, view):
    return _first(_dtype_in(node, "T", FLOAT_OR_INDEX), _const_input(node, view, 1, "permutation"))


@REGISTRY.register({"Squeeze": ["Squeeze"]})
def _squeeze(node, view):
    reason = _dtype_in(node, "T", FLOAT_OR_INDEX)
    if reason is None and not node.attr["squeeze_dims"].list.i and view.input_shape(node, 0).rank is None:
        return "Squeeze of all unit dims on an input of unknown rank"
    return reason


@REGISTRY.register({"ExpandDims": ["Unsqueeze"]})
def _expand_dims(node, view):
    return _first(_dtype_in(node, "T", FLOAT_OR_INDEX), _const_input(node, view, 1, "axis"))


@REGISTRY.register({"StridedSlice": ["Slice", "Squeeze", "Unsqueeze", "Reshape", "Concat", "Cast"]})
def _strided_slice(node, view):
    return _first(_dtype_in(node, "T", FLOAT_OR_INDEX), _const_input(node, view, 3, "strides"))


@REGISTRY.register({"Slice": ["Slice", "Add", "Cast"]})
def _slice(node, view):
    return _dtype_in(node, "T", FLOAT_OR_INDEX)


@REGISTRY.register({"GatherV2": ["Gather"]})
def _gather(node, view):
    if node.attr["batch_dims"].i != 0:
        return f"GatherV2 with batch_dims={node.attr['batch_dims'].i}"
    return _first(_dtype_in(node, "Tparams", FLOAT_OR_INDEX), _dtype_in(node, "Tindices", INDEX),
                  _const_input(node, view, 2, "axis"))


@REGISTRY.register({"Shape": ["Shape", "Cast"]})
def _shape(node, view):
    return _dtype_in(node, "out_type", INDEX)


@REGISTRY.register({"Tile": ["Tile"]})
def _tile(node, view):
    return _dtype_in(node, "T", FLOAT_OR_INDEX)


@REGISTRY.register({"Identity": ["Identity"], "StopGradient": ["Identity"]})
def _identity(node, view):
    return _dtype_in(node, "T", FLOAT_OR_INDEX | {tf.bool})


@REGISTRY.register({"Const": []})
def _const(node, view):
    return _dtype_in(node, "dtype", FLOAT_OR_INDEX | {tf.bool})


# -- explicit quantization (fake-quant / QDQ nodes of quantization-aware models) -------------
#
# tf2onnx lowers each of these to an ONNX QuantizeLinear → DequantizeLinear pair with constant
# scales and zero points, which the engine imports (see engine/passes/explicit_quantization.py).
# The validators refuse every case where tf2onnx fails or where its pair would compute
# something else than TensorFlow. FakeQuantWithMinMaxVarsPerChannel is not listed: tf2onnx has
# no lowering for it (on a constant weight Grappler folds it away before segmentation anyway).

#: TF ops of quantization-aware models that put a tensor on an 8-bit grid: what an INT8
#: conversion with use_calibration=False takes its quantization from
FAKE_QUANT_OPS = ("FakeQuantWithMinMaxArgs", "FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel",
                  "QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4")


def _attr(node, name: str, default):
    """An attr's value, or the op's default when the NodeDef leaves it out (protobuf map reads
    would insert an empty value)."""
    if name not in node.attr:
        return default
    value = node.attr[name]
    kind = value.WhichOneof("value")
    return {"b": value.b, "i": value.i, "f": value.f, "s": value.s.decode()}.get(kind, default)


def _fake_quant_range(node, amin: float, amax: float) -> Optional[str]:
    """tf2onnx's uint8 grid for [amin, amax]: ``scale = (amax - amin) / 255`` and zero point
    ``-round(amin / scale)``, which must be a uint8 (TF nudges it into range instead)."""
    if not amin < amax:
        return f"{node.op} with min {amin} >= max {amax}"
    zero_point = -np.around(amin / ((amax - amin) / 255.0))
    if not 0 <= zero_point <= 255:
        return f"{node.op} with a range [{amin}, {amax}] that does not contain 0"
    return None


def _scalar_const(node, view, index: int, what: str):
    value = view.constant(node, index)
    if value is None or np.size(value) != 1:
        return None, f"{node.op} with a non-constant or non-scalar {what}"
    return float(np.asarray(value).reshape(())), None


@REGISTRY.register({"FakeQuantWithMinMaxArgs": ["QuantizeLinear", "DequantizeLinear"],
                    "FakeQuantWithMinMaxVars": ["QuantizeLinear", "DequantizeLinear"]})
def _fake_quant(node, view):
    # tf2onnx lowers neither narrow_range=True nor num_bits != 8 (it raises)
    if _attr(node, "num_bits", 8) != 8:
        return f"{node.op} with num_bits={_attr(node, 'num_bits', 8)} (only 8)"
    if _attr(node, "narrow_range", False):
        return f"{node.op} with narrow_range=True"
    if view.input_dtype(node, 0) != tf.float32:
        return f"{node.op} on dtype {view.input_dtype(node, 0).name} (supported: float32)"
    if node.op == "FakeQuantWithMinMaxArgs":
        return _fake_quant_range(node, _attr(node, "min", -6.0), _attr(node, "max", 6.0))
    amin, reason = _scalar_const(node, view, 1, "min")
    amax, reason_max = _scalar_const(node, view, 2, "max")
    return reason or reason_max or _fake_quant_range(node, amin, amax)


_QDQ_ONNX = ["QuantizeLinear", "DequantizeLinear"]


@REGISTRY.register({"QuantizeAndDequantizeV2": _QDQ_ONNX, "QuantizeAndDequantizeV3": _QDQ_ONNX,
                    "QuantizeAndDequantizeV4": _QDQ_ONNX})
def _quantize_and_dequantize(node, view):
    """tf2onnx's rewriter (not a handler) turns these into an int8 (``signed_input``) or uint8
    pair with zero point 0 and ``scale = max(min / qmin, max / qmax)`` per tensor or per
    ``axis``; it reads min and max as float32 Const nodes and ignores ``num_bits`` and
    ``round_mode``, so those must already be what it assumes."""
    if _attr(node, "range_given", node.op == "QuantizeAndDequantizeV3") is not True:
        return f"{node.op} with range_given=False (a range measured at run time)"
    reason = _dtype_in(node, "T", frozenset({tf.float32}))
    if reason is not None:
        return reason
    if node.op == "QuantizeAndDequantizeV3":
        bits = view.constant(node, 3)
        if bits is None or int(np.asarray(bits).reshape(-1)[0]) != 8:
            return f"{node.op} with num_bits other than a constant 8"
    elif _attr(node, "num_bits", 8) != 8:
        return f"{node.op} with num_bits={_attr(node, 'num_bits', 8)} (only 8)"
    elif _attr(node, "round_mode", "HALF_TO_EVEN") != "HALF_TO_EVEN":
        return f"{node.op} with round_mode {_attr(node, 'round_mode', '')}"
    for index in (1, 2):  # tf2onnx reads the Const node itself, not through an Identity
        src = view.node(view.data_inputs(node)[index].split(":")[0])
        if src.op != "Const":
            return f"{node.op} with a non-constant {('min', 'max')[index - 1]}"
    # TF's shape function already ties min/max to ``axis`` (scalars for -1, one per channel else)
    amin = np.asarray(view.constant(node, 1), np.float32).reshape(-1)
    amax = np.asarray(view.constant(node, 2), np.float32).reshape(-1)
    axis = _attr(node, "axis", -1)
    signed = _attr(node, "signed_input", True)
    qmin, qmax = (-127 if _attr(node, "narrow_range", False) else -128, 127) if signed else (0, 255)
    scale = np.maximum(amin / np.float32(qmin) if qmin < 0 else np.float32(0), amax / np.float32(qmax))
    if not np.all(scale > 0):
        return f"{node.op} with an empty range (scale 0)"
    if signed and _attr(node, "narrow_range", False):
        return _narrow_range_holds(node, view, scale, axis)
    return None


def _narrow_range_holds(node, view, scale: np.ndarray, axis: int) -> Optional[str]:
    """tf2onnx quantizes narrow_range=True to int8's full [-128, 127], where TF clamps at -127.
    The results agree when nothing rounds to -128: provable for a constant input (a weight
    whose range is its own max |w|), not for activations."""
    x = view.constant(node, 0)
    if x is None:
        return f"{node.op} with narrow_range=True on a computed input"
    x = np.asarray(x, np.float32)
    if axis != -1:
        scale = scale.reshape([-1 if d == axis else 1 for d in range(x.ndim)])
    if np.any(np.rint(x / scale) < -127):
        return f"{node.op} with narrow_range=True on values below the range"
    return None
