"""The NumPy reference executor: the engine's math, runnable anywhere.

Why it exists: on a machine without a GPU, the only way to check what an engine
computes is to run its IR graph with plain NumPy, op by op, and compare with
TensorFlow. Every IR op has an implementation here (ONNX ops) or registers one with
:func:`reference_op` (the fused ``tftrt.*`` ops, in ``fused_ops.py``). Each output's
shape is checked against the IR's (symbolic dims evaluated from the feeds), so a
wrong shape rule fails where it happens, not three ops later.

An implementation is ``fn(inputs, attrs) -> list of arrays``: ``inputs`` holds one
array per node input (``None`` for an omitted optional input) and ``attrs`` the
node's attributes, all explicit. It may return more outputs than the node uses
(e.g. LayerNormalization's statistics); the extra ones are dropped. Convolutions go
through strided window views and ``einsum`` (BLAS), never Python loops over pixels.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import ml_dtypes
import numpy as np
from numpy.lib.stride_tricks import as_strided

from tftrt_lite.engine import symbolic as sym
from tftrt_lite.engine.ir import Graph
from tftrt_lite.engine.shape_inference import parse_einsum
from tftrt_lite.errors import FeedError, ShapeError, UnsupportedOpError

RefFn = Callable[[Sequence[Optional[np.ndarray]], Dict], List[np.ndarray]]

#: op name → NumPy implementation
REFERENCE_OPS: Dict[str, RefFn] = {}

_NP_DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16)}


def np_dtype(name: str) -> np.dtype:
    """NumPy dtype of an IR dtype name (bfloat16 via ml_dtypes)."""
    return _NP_DTYPES.get(name) or np.dtype(name)


def reference_op(*names: str):
    """Register the decorated function as the implementation of ``names``."""
    def deco(fn: RefFn) -> RefFn:
        for name in names:
            REFERENCE_OPS[name] = fn
        return fn
    return deco


def _load_fused_ops() -> None:
    """Import ``fused_ops`` (if present) so its ``tftrt.*`` implementations register."""
    try:
        importlib.import_module("tftrt_lite.engine.fused_ops")
    except ModuleNotFoundError as e:
        if e.name != "tftrt_lite.engine.fused_ops":
            raise


def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray],
              intermediates: bool = False) -> Dict[str, np.ndarray]:
    """Execute ``graph`` on ``feeds`` and return its outputs (every tensor if
    ``intermediates``), in graph order."""
    if any(n.op.startswith("tftrt.") and n.op not in REFERENCE_OPS for n in graph.nodes):
        _load_fused_ops()
    env = _check_feeds(graph, feeds)
    values: Dict[str, np.ndarray] = {k: t.value for k, t in graph.tensors.items() if t.value is not None}
    for name in graph.inputs:
        values[name] = np.asarray(feeds[name])
    for node in graph.nodes:
        fn = REFERENCE_OPS.get(node.op)
        if fn is None:
            raise UnsupportedOpError(f"{node.op} node {node.name!r}: no reference implementation")
        args = [values[i] if i else None for i in node.inputs]
        try:
            results = fn(args, node.attrs)
        except (FeedError, ShapeError, UnsupportedOpError):
            raise
        except Exception as e:
            raise RuntimeError(f"{node.op} node {node.name!r} failed in the reference executor: {e}") from e
        for out, value in zip(node.outputs, results):
            if not out:
                continue
            t = graph.tensors[out]
            value = np.asarray(value)
            if value.dtype != np_dtype(t.dtype):
                raise ShapeError(f"{node.op} node {node.name!r}: output {out!r} has dtype "
                                 f"{value.dtype}, the graph says {t.dtype}")
            expected = tuple(sym.evaluate(d, env) for d in t.shape)
            if value.shape != expected:
                raise ShapeError(f"{node.op} node {node.name!r}: output {out!r} has shape "
                                 f"{value.shape}, the graph says {tuple(t.shape)} = {expected}")
            values[out] = value
    if intermediates:
        return values
    return {o: values[o] for o in graph.outputs}


def _check_feeds(graph: Graph, feeds: Mapping[str, np.ndarray]) -> Dict[str, int]:
    missing = [i for i in graph.inputs if i not in feeds]
    extra = [k for k in feeds if k not in graph.inputs]
    if missing or extra:
        raise FeedError(f"graph {graph.name!r}: missing feeds {missing}, unexpected feeds {extra} "
                        f"(inputs: {graph.inputs})")
    env: Dict[str, int] = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        value = np.asarray(feeds[name])
        if value.dtype != np_dtype(t.dtype):
            raise FeedError(f"feed {name!r} has dtype {value.dtype}, the graph expects {t.dtype}")
        sym.bind(t.shape, value.shape, env, what=f"feed {name!r}")
    return env


# -- helpers ------------------------------------------------------------------------------------
def _wide(x: np.ndarray) -> np.ndarray:
    """Half-precision values computed in float32 (what GPU kernels accumulate in)."""
    return x.astype(np.float32) if x.dtype in (np.float16, _NP_DTYPES["bfloat16"]) else x


def _axes(value: Optional[np.ndarray]) -> Optional[tuple]:
    return None if value is None or value.size == 0 else tuple(int(a) for a in value.reshape(-1))


def erf(x: np.ndarray) -> np.ndarray:
    """Element-wise erf in the dtype of ``x`` (NumPy has no erf ufunc)."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    out = np.fromiter((math.erf(v) for v in flat), dtype=np.float64, count=flat.size)
    return out.reshape(np.shape(x)).astype(x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    w = _wide(x)
    e = np.exp(-np.abs(w))
    return np.where(w >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _softplus(x: np.ndarray) -> np.ndarray:
    w = _wide(x)
    return (np.maximum(w, 0) + np.log1p(np.exp(-np.abs(w)))).astype(x.dtype)


def _f(x: np.ndarray, v: float):
    return x.dtype.type(v)


# -- element-wise -------------------------------------------------------------------------------------
_UNARY = {
    "Abs": np.abs, "Neg": np.negative, "Floor": np.floor, "Ceil": np.ceil, "Round": np.round,
    "Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Exp": np.exp, "Log": np.log, "Sin": np.sin,
    "Cos": np.cos, "Tan": np.tan, "Asin": np.arcsin, "Acos": np.arccos, "Atan": np.arctan,
    "Sinh": np.sinh, "Cosh": np.cosh, "Asinh": np.arcsinh, "Acosh": np.arccosh, "Atanh": np.arctanh,
    "Sign": np.sign, "Tanh": np.tanh, "Not": np.logical_not, "BitwiseNot": np.invert,
    "Erf": erf, "Sigmoid": _sigmoid, "Softplus": _softplus,
    "Relu": lambda x: np.maximum(x, 0).astype(x.dtype),
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "IsNaN": np.isnan,
    "Mish": lambda x: (x * np.tanh(_softplus(x))).astype(x.dtype),
}


def _unary(fn):
    return lambda inputs, attrs: [fn(inputs[0])]


for _op, _fn in _UNARY.items():
    REFERENCE_OPS[_op] = _unary(_fn)


@reference_op("Identity")
def _identity(inputs, attrs):
    return [inputs[0]]


@reference_op("IsInf")
def _isinf(inputs, attrs):
    x = inputs[0]
    return [(np.isposinf(x) & bool(attrs["detect_positive"])) | (np.isneginf(x) & bool(attrs["detect_negative"]))]


@reference_op("LeakyRelu")
def _leaky_relu(inputs, attrs):
    x = inputs[0]
    return [np.where(x >= 0, x, x * _f(x, attrs["alpha"]))]


@reference_op("Elu")
def _elu(inputs, attrs):
    x = inputs[0]
    return [np.where(x > 0, x, _f(x, attrs["alpha"]) * np.expm1(np.minimum(x, 0)))]


@reference_op("Celu")
def _celu(inputs, attrs):
    x, a = inputs[0], attrs["alpha"]
    return [(np.maximum(x, 0) + np.minimum(0, a * np.expm1(np.minimum(x, 0) / a))).astype(x.dtype)]


@reference_op("Selu")
def _selu(inputs, attrs):
    x = inputs[0]
    neg = _f(x, attrs["alpha"]) * np.expm1(np.minimum(x, 0))
    return [_f(x, attrs["gamma"]) * np.where(x > 0, x, neg)]


@reference_op("HardSigmoid")
def _hard_sigmoid(inputs, attrs):
    x = inputs[0]
    return [np.clip(_f(x, attrs["alpha"]) * x + _f(x, attrs["beta"]), 0, 1).astype(x.dtype)]


@reference_op("HardSwish")
def _hard_swish(inputs, attrs):
    x = inputs[0]
    return [(x * np.clip(x / _f(x, 6) + _f(x, 0.5), 0, 1)).astype(x.dtype)]


@reference_op("ThresholdedRelu")
def _thresholded_relu(inputs, attrs):
    x = inputs[0]
    return [np.where(x > _f(x, attrs["alpha"]), x, _f(x, 0))]


@reference_op("Shrink")
def _shrink(inputs, attrs):
    x = inputs[0]
    lambd, bias = attrs["lambd"], attrs["bias"]
    return [np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)).astype(x.dtype)]


@reference_op("Clip")
def _clip(inputs, attrs):
    x = inputs[0]
    lo = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
    hi = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    if lo is not None:
        x = np.maximum(x, lo)
    if hi is not None:
        x = np.minimum(x, hi)
    return [x.astype(inputs[0].dtype)]


def _int_div(a, b):
    """ONNX integer Div truncates toward zero (C semantics)."""
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q).astype(a.dtype)


def _div(a, b):
    return _int_div(a, b) if a.dtype.kind in "iu" else a / b


def _pow(a, b):
    if a.dtype.kind in "iu":
        return np.power(a.astype(np.int64), b.astype(np.int64)).astype(a.dtype)
    return np.power(a, b.astype(a.dtype))


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div, "Pow": _pow,
    "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
    "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal,
}


def _binary(fn, keep_dtype):
    def impl(inputs, attrs):
        out = fn(inputs[0], inputs[1])
        return [out.astype(inputs[0].dtype) if keep_dtype else out]
    return impl


for _op, _fn in _BINARY.items():
    REFERENCE_OPS[_op] = _binary(_fn, _op not in ("Equal", "Less", "Greater", "LessOrEqual",
                                                   "GreaterOrEqual", "And", "Or", "Xor"))


@reference_op("Mod")
def _mod(inputs, attrs):
    a, b = inputs
    if attrs["fmod"]:
        return [np.fmod(a, b).astype(a.dtype)]
    return [np.mod(a, b).astype(a.dtype)]


@reference_op("BitShift")
def _bit_shift(inputs, attrs):
    a, b = inputs
    fn = np.left_shift if attrs["direction"] == "LEFT" else np.right_shift
    return [fn(a, b).astype(a.dtype)]


@reference_op("PRelu")
def _prelu(inputs, attrs):
    x, slope = inputs
    return [np.where(x >= 0, x, x * slope).astype(x.dtype)]


def _variadic(fn):
    def impl(inputs, attrs):
        out = inputs[0]
        for x in inputs[1:]:
            out = fn(out, x)
        return [np.asarray(out).astype(inputs[0].dtype)]
    return impl


REFERENCE_OPS["Max"] = _variadic(np.maximum)
REFERENCE_OPS["Min"] = _variadic(np.minimum)
REFERENCE_OPS["Sum"] = _variadic(np.add)


@reference_op("Mean")
def _mean(inputs, attrs):
    total = _variadic(np.add)(inputs, attrs)[0]
    return [(total / _f(total, len(inputs))).astype(inputs[0].dtype)]


@reference_op("Where")
def _where(inputs, attrs):
    return [np.where(*inputs)]


@reference_op("Cast")
def _cast(inputs, attrs):
    from tftrt_lite.engine.onnx_import import ir_dtype
    return [_astype(inputs[0], np_dtype(ir_dtype(attrs["to"], "Cast")))]


@reference_op("CastLike")
def _cast_like(inputs, attrs):
    return [_astype(inputs[0], inputs[1].dtype)]


def _quantization_params(x: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray], axis: int):
    """Scale and zero point as float32, shaped to broadcast along ``axis`` when they are vectors."""
    zp = np.zeros((), np.float32) if zero_point is None else zero_point.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.ndim == 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = scale.shape[0]
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp.ndim else zp
    return scale, zp


@reference_op("QuantizeLinear")
def _quantize_linear(inputs, attrs):
    """``saturate(round(x / scale) + zero_point)`` (ONNX): an IEEE float32 division, rounding
    half to even, saturation to the zero point's type (uint8 when it is omitted). NaN has no
    defined result (ONNX leaves it open)."""
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    dtype = np.dtype(np.uint8) if zero_point is None else zero_point.dtype
    s, zp = _quantization_params(x, scale, zero_point, attrs["axis"])
    info = np.iinfo(dtype)
    with np.errstate(invalid="ignore"):  # NaN → integer
        q = np.rint(np.divide(x.astype(np.float32), s, dtype=np.float32)) + zp
        return [np.clip(q, info.min, info.max).astype(dtype)]


@reference_op("DequantizeLinear")
def _dequantize_linear(inputs, attrs):
    """``(x - zero_point) * scale`` (ONNX), in float32 (exact up to the final product)."""
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    s, zp = _quantization_params(x, scale, zero_point, attrs["axis"])
    return [np.multiply(x.astype(np.float32) - zp, s, dtype=np.float32)]


def _astype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # ml_dtypes converts bfloat16 to floats only; integers and bool go through float32.
    # Out-of-range float → integer casts are undefined in ONNX; the reference does not
    # pretend to define them.
    if x.dtype == _NP_DTYPES["bfloat16"] and dtype.kind not in "f" and dtype != x.dtype:
        x = x.astype(np.float32)
    return x.astype(dtype)


# -- linear algebra -------------------------------------------------------------------------------
@reference_op("MatMul")
def _matmul(inputs, attrs):
    a, b = inputs
    return [np.matmul(_wide(a), _wide(b)).astype(a.dtype)]


@reference_op("Gemm")
def _gemm(inputs, attrs):
    a, b = _wide(inputs[0]), _wide(inputs[1])
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    y = attrs["alpha"] * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + attrs["beta"] * _wide(inputs[2])
    return [y.astype(inputs[0].dtype)]


@reference_op("Einsum")
def _einsum(inputs, attrs):
    specs, out = parse_einsum(attrs["equation"], [x.ndim for x in inputs])
    eq = ",".join(specs) + "->" + out
    return [np.einsum(eq, *[_wide(x) for x in inputs], optimize=len(inputs) > 1).astype(inputs[0].dtype)]


# -- convolution and pooling ---------------------------------------------------------------------------
def _windows(x: np.ndarray, kernel, strides, dilations, out) -> np.ndarray:
    """View of shape (N, C, *out, *kernel) over an already padded (N, C, *spatial)."""
    r = len(kernel)
    st = x.strides
    shape = x.shape[:2] + tuple(out) + tuple(kernel)
    strides_ = st[:2] + tuple(st[2 + i] * strides[i] for i in range(r)) + \
        tuple(st[2 + i] * dilations[i] for i in range(r))
    return as_strided(x, shape, strides_, writeable=False)


def _pad_spatial(x: np.ndarray, pads, value=0.0, extra=None) -> np.ndarray:
    r = x.ndim - 2
    extra = extra or [0] * r
    width = [(0, 0), (0, 0)] + [(pads[i], pads[i + r] + extra[i]) for i in range(r)]
    return np.pad(x, width, constant_values=value)


def _out_sizes(spatial, kernel, strides, dilations, pads, ceil_mode=False):
    r = len(kernel)
    out, extra = [], []
    for i in range(r):
        k_eff = (kernel[i] - 1) * dilations[i] + 1
        span = spatial[i] + pads[i] + pads[i + r] - k_eff
        o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (o - 1) * strides[i] >= spatial[i] + pads[i]:
            o -= 1
        out.append(o)
        extra.append(max(0, (o - 1) * strides[i] + k_eff - (spatial[i] + pads[i] + pads[i + r])))
    return out, extra


_SPATIAL = "pqrstu"
_KERNEL = "vwxyzo"


@reference_op("Conv")
def _conv(inputs, attrs):
    x, w = _wide(inputs[0]), _wide(inputs[1])
    r = x.ndim - 2
    kernel, strides, dilations, pads = attrs["kernel_shape"], attrs["strides"], attrs["dilations"], attrs["pads"]
    out, _ = _out_sizes(x.shape[2:], kernel, strides, dilations, pads)
    win = _windows(_pad_spatial(x, pads), kernel, strides, dilations, out)
    g = attrs["group"]
    n, c = x.shape[:2]
    m = w.shape[0]
    win = win.reshape((n, g, c // g) + win.shape[2:])
    wg = w.reshape((g, m // g, c // g) + w.shape[2:])
    sp, kk = _SPATIAL[:r], _KERNEL[:r]
    y = np.einsum(f"ngc{sp}{kk},gmc{kk}->ngm{sp}", win, wg, optimize=True)
    y = y.reshape((n, m) + tuple(out))
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + _wide(inputs[2]).reshape((1, m) + (1,) * r)
    return [np.ascontiguousarray(y.astype(inputs[0].dtype))]


@reference_op("ConvTranspose")
def _conv_transpose(inputs, attrs):
    """Scatter formulation: each kernel tap adds ``x ⋅ w[tap]`` into a strided slice of
    the full output; the loop runs over taps, never over pixels."""
    x, w = _wide(inputs[0]), _wide(inputs[1])
    r = x.ndim - 2
    kernel, strides, dilations = attrs["kernel_shape"], attrs["strides"], attrs["dilations"]
    pads, out_pad = attrs["pads"], attrs["output_padding"]
    g = attrs["group"]
    n, c = x.shape[:2]
    m = w.shape[1] * g
    spatial = x.shape[2:]
    full = [strides[i] * (spatial[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(r)]
    y = np.zeros((n, g, m // g) + tuple(full), dtype=x.dtype)
    xg = x.reshape((n, g, c // g) + spatial)
    wg = w.reshape((g, c // g, m // g) + tuple(kernel))
    sp = _SPATIAL[:r]
    for tap in np.ndindex(*kernel):
        contrib = np.einsum(f"ngc{sp},gcm->ngm{sp}", xg, wg[(slice(None),) * 3 + tap], optimize=True)
        index = tuple(slice(tap[i] * dilations[i], tap[i] * dilations[i] + strides[i] * (spatial[i] - 1) + 1,
                            strides[i]) for i in range(r))
        y[(slice(None),) * 3 + index] += contrib
    y = y.reshape((n, m) + tuple(full))
    crop = tuple(slice(pads[i], full[i] - pads[i + r]) for i in range(r))
    y = y[(slice(None), slice(None)) + crop]
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + _wide(inputs[2]).reshape((1, m) + (1,) * r)
    return [np.ascontiguousarray(y.astype(inputs[0].dtype))]


def _pool_windows(x, attrs, pad_value):
    kernel, strides = attrs["kernel_shape"], attrs["strides"]
    dilations = attrs.get("dilations") or [1] * len(kernel)
    pads = attrs["pads"]
    out, extra = _out_sizes(x.shape[2:], kernel, strides, dilations, pads, bool(attrs.get("ceil_mode", 0)))
    padded = _pad_spatial(x, pads, pad_value, extra)
    return _windows(padded, kernel, strides, dilations, out), out, extra


@reference_op("MaxPool")
def _max_pool(inputs, attrs):
    x = inputs[0]
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    win, out, _ = _pool_windows(x, attrs, fill)
    r = len(out)
    return [win.max(axis=tuple(range(-r, 0)))]


@reference_op("AveragePool")
def _average_pool(inputs, attrs):
    x = _wide(inputs[0])
    win, out, extra = _pool_windows(x, attrs, 0.0)
    r = len(out)
    axes = tuple(range(-r, 0))
    total = win.sum(axis=axes)
    # divisor: taps inside the input, plus explicit pads when count_include_pad, never
    # the extra end padding ceil_mode adds
    ones = np.ones((1, 1) + x.shape[2:], dtype=x.dtype)
    counted = _pad_spatial(ones, attrs["pads"], 1.0 if attrs["count_include_pad"] else 0.0)
    counted = _pad_spatial(counted, [0] * (2 * r), 0.0, extra)
    dilations = attrs.get("dilations") or [1] * r
    cwin = _windows(counted, attrs["kernel_shape"], attrs["strides"], dilations, out)
    return [(total / cwin.sum(axis=axes)).astype(inputs[0].dtype)]


@reference_op("LpPool")
def _lp_pool(inputs, attrs):
    x = _wide(inputs[0])
    p = attrs["p"]
    win, out, _ = _pool_windows(np.abs(x) ** p, attrs, 0.0)
    r = len(out)
    return [(win.sum(axis=tuple(range(-r, 0))) ** (1.0 / p)).astype(inputs[0].dtype)]


def _spatial_axes(x):
    return tuple(range(2, x.ndim))


@reference_op("GlobalAveragePool")
def _global_average_pool(inputs, attrs):
    x = inputs[0]
    return [_wide(x).mean(axis=_spatial_axes(x), keepdims=True).astype(x.dtype)]


@reference_op("GlobalMaxPool")
def _global_max_pool(inputs, attrs):
    x = inputs[0]
    return [x.max(axis=_spatial_axes(x), keepdims=True)]


@reference_op("GlobalLpPool")
def _global_lp_pool(inputs, attrs):
    x = inputs[0]
    p = attrs["p"]
    y = (np.abs(_wide(x)) ** p).sum(axis=_spatial_axes(x), keepdims=True) ** (1.0 / p)
    return [y.astype(x.dtype)]


# -- normalisation ----------------------------------------------------------------------------------
@reference_op("BatchNormalization")
def _batch_norm(inputs, attrs):
    if attrs["training_mode"]:
        raise UnsupportedOpError("BatchNormalization: training_mode=1 is not supported")
    x, scale, bias, mean, var = (_wide(v) for v in inputs[:5])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale.reshape(shape) / np.sqrt(var.reshape(shape) + attrs["epsilon"])
    return [((x - mean.reshape(shape)) * inv + bias.reshape(shape)).astype(inputs[0].dtype)]


@reference_op("InstanceNormalization")
def _instance_norm(inputs, attrs):
    x, scale, bias = (_wide(v) for v in inputs)
    axes = _spatial_axes(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean) / np.sqrt(var + attrs["epsilon"]) * scale.reshape(shape) + bias.reshape(shape)
    return [y.astype(inputs[0].dtype)]


@reference_op("LayerNormalization")
def _layer_norm(inputs, attrs):
    x = inputs[0].astype(np.float32) if attrs["stash_type"] == 1 else _wide(inputs[0])
    axes = tuple(range(attrs["axis"], x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + attrs["epsilon"])
    y = (x - mean) * inv * _wide(inputs[1])
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + _wide(inputs[2])
    return [y.astype(inputs[0].dtype), mean.astype(x.dtype), inv.astype(x.dtype)]


@reference_op("LpNormalization")
def _lp_normalization(inputs, attrs):
    x = inputs[0]
    p, axis = attrs["p"], attrs["axis"]
    norm = np.abs(x).sum(axis=axis, keepdims=True) if p == 1 else np.sqrt((x * x).sum(axis=axis, keepdims=True))
    # an all-zero slice normalises to zeros, not NaN
    return [np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm)).astype(x.dtype)]


@reference_op("MeanVarianceNormalization")
def _mvn(inputs, attrs):
    x = _wide(inputs[0])
    axes = tuple(attrs["axes"])
    mean = x.mean(axis=axes, keepdims=True)
    std = np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True))
    return [((x - mean) / (std + 1e-9)).astype(inputs[0].dtype)]


@reference_op("Softmax")
def _softmax(inputs, attrs):
    x = _wide(inputs[0])
    e = np.exp(x - x.max(axis=attrs["axis"], keepdims=True))
    return [(e / e.sum(axis=attrs["axis"], keepdims=True)).astype(inputs[0].dtype)]


@reference_op("LogSoftmax")
def _log_softmax(inputs, attrs):
    x = _wide(inputs[0])
    s = x - x.max(axis=attrs["axis"], keepdims=True)
    return [(s - np.log(np.exp(s).sum(axis=attrs["axis"], keepdims=True))).astype(inputs[0].dtype)]


@reference_op("Hardmax")
def _hardmax(inputs, attrs):
    x = inputs[0]
    axis = attrs["axis"]
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return [y]


# -- reductions ------------------------------------------------------------------------------------
def _reduction(fn):
    def impl(inputs, attrs):
        x = inputs[0]
        axes = _axes(inputs[1] if len(inputs) > 1 else None)
        if axes is None and attrs["noop_with_empty_axes"]:
            return [x]
        keep = bool(attrs["keepdims"])
        return [np.asarray(fn(x, axes, keep)).astype(x.dtype)]
    return impl


def _log_sum_exp(x, axes, keep):
    w = _wide(x)
    if w.size == 0:
        return np.log(np.sum(np.exp(w), axis=axes, keepdims=keep))
    m = np.max(w, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    s = np.log(np.sum(np.exp(w - m), axis=axes, keepdims=True)) + m
    return s if keep else np.squeeze(s, axis=axes if axes is not None else tuple(range(x.ndim)))


def _extreme(fn, identity):
    def impl(x, axes, keep):
        if x.size == 0:
            fill = identity(x.dtype)
            shape = np.sum(np.zeros(x.shape, np.int8), axis=axes, keepdims=keep).shape
            return np.full(shape, fill, x.dtype)
        return fn(x, axis=axes, keepdims=keep)
    return impl


def _lowest(dt):
    return -np.inf if dt.kind == "f" else np.iinfo(dt).min


def _highest(dt):
    return np.inf if dt.kind == "f" else np.iinfo(dt).max


_REDUCE = {
    "ReduceSum": lambda x, a, k: np.sum(_wide(x), axis=a, keepdims=k),
    "ReduceMean": lambda x, a, k: np.mean(_wide(x), axis=a, keepdims=k),
    "ReduceMax": _extreme(np.max, _lowest),
    "ReduceMin": _extreme(np.min, _highest),
    "ReduceProd": lambda x, a, k: np.prod(x, axis=a, keepdims=k),
    "ReduceL1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k),
    "ReduceL2": lambda x, a, k: np.sqrt(np.sum(np.square(_wide(x)), axis=a, keepdims=k)),
    "ReduceLogSum": lambda x, a, k: np.log(np.sum(_wide(x), axis=a, keepdims=k)),
    "ReduceLogSumExp": _log_sum_exp,
    "ReduceSumSquare": lambda x, a, k: np.sum(np.square(_wide(x)), axis=a, keepdims=k),
}
for _op, _fn in _REDUCE.items():
    REFERENCE_OPS[_op] = _reduction(_fn)


def _arg(fn):
    def impl(inputs, attrs):
        x, axis = inputs[0], attrs["axis"]
        if attrs["select_last_index"]:
            flipped = np.flip(x, axis=axis)
            idx = x.shape[axis] - 1 - fn(flipped, axis=axis)
        else:
            idx = fn(x, axis=axis)
        if attrs["keepdims"]:
            idx = np.expand_dims(idx, axis)
        return [idx.astype(np.int64)]
    return impl


REFERENCE_OPS["ArgMax"] = _arg(np.argmax)
REFERENCE_OPS["ArgMin"] = _arg(np.argmin)


@reference_op("TopK")
def _topk(inputs, attrs):
    x, k = inputs[0], int(inputs[1].reshape(-1)[0])
    axis = attrs["axis"]
    # Stable sorts keep the lower index first among equal values, as ONNX requires; for
    # "largest" sort the reversed axis ascending and read it backwards (works for unsigned).
    if attrs["largest"]:
        n = x.shape[axis]
        order = n - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


@reference_op("CumSum")
def _cumsum(inputs, attrs):
    x = inputs[0]
    axis = int(inputs[1].reshape(-1)[0])
    y = np.flip(x, axis) if attrs["reverse"] else x
    out = np.cumsum(y, axis=axis, dtype=x.dtype)
    if attrs["exclusive"]:
        out = out - y
    return [np.flip(out, axis) if attrs["reverse"] else out]


# -- data movement ----------------------------------------------------------------------------------
@reference_op("Shape")
def _shape(inputs, attrs):
    return [np.asarray(inputs[0].shape[attrs["start"]:attrs["end"]], dtype=np.int64)]


@reference_op("Size")
def _size(inputs, attrs):
    return [np.asarray(inputs[0].size, dtype=np.int64)]


@reference_op("Reshape")
def _reshape(inputs, attrs):
    x, target = inputs[0], [int(v) for v in inputs[1]]
    if not attrs["allowzero"]:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [x.reshape(target)]


@reference_op("Flatten")
def _flatten(inputs, attrs):
    x, axis = inputs[0], attrs["axis"]
    return [x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))]


@reference_op("Squeeze")
def _squeeze(inputs, attrs):
    axes = _axes(inputs[1] if len(inputs) > 1 else None)
    return [np.squeeze(inputs[0], axis=axes)]


@reference_op("Unsqueeze")
def _unsqueeze(inputs, attrs):
    x = inputs[0]
    axes = _axes(inputs[1])
    r = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(a % r for a in axes))]


@reference_op("Transpose")
def _transpose(inputs, attrs):
    return [np.transpose(inputs[0], attrs["perm"])]


@reference_op("Concat")
def _concat(inputs, attrs):
    return [np.concatenate([x for x in inputs if x is not None], axis=attrs["axis"])]


@reference_op("Split")
def _split(inputs, attrs):
    x, axis = inputs[0], attrs["axis"]
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = [int(s) for s in inputs[1]]
    else:
        n = attrs["num_outputs"]
        chunk = -(-x.shape[axis] // n)
        sizes = [chunk] * (n - 1) + [x.shape[axis] - chunk * (n - 1)]
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


@reference_op("Slice")
def _slice(inputs, attrs):
    x = inputs[0]
    starts, ends = inputs[1].reshape(-1), inputs[2].reshape(-1)
    axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else np.arange(len(starts))
    steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else np.ones(len(starts), np.int64)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a, s, e, st = int(a) % x.ndim, int(s), int(e), int(st)
        dim = x.shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, -1), dim - 1), min(max(e, -1), dim - 1)
        index[a] = slice(s, None if e < 0 else e, st)
    return [x[tuple(index)]]


@reference_op("Gather")
def _gather(inputs, attrs):
    x, idx = inputs
    axis = attrs["axis"]
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take(x, idx, axis=axis)]


@reference_op("GatherElements")
def _gather_elements(inputs, attrs):
    x, idx = inputs
    axis = attrs["axis"]
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take_along_axis(x, idx, axis=axis)]


@reference_op("GatherND")
def _gather_nd(inputs, attrs):
    x, idx = inputs
    b = attrs["batch_dims"]
    k = idx.shape[-1]
    batch = x.shape[:b]
    nb = int(np.prod(batch))
    xs = x.reshape((nb,) + x.shape[b:])
    ids = idx.reshape((nb, -1, k))
    ids = np.where(ids < 0, ids + np.asarray(x.shape[b:b + k]), ids)
    out = np.stack([xs[i][tuple(ids[i].T)] for i in range(nb)])
    return [out.reshape(idx.shape[:-1] + x.shape[b + k:])]


@reference_op("Pad")
def _pad(inputs, attrs):
    x = inputs[0]
    pads = [int(p) for p in inputs[1]]
    value = inputs[2].reshape(-1)[0] if len(inputs) > 2 and inputs[2] is not None and inputs[2].size else 0
    axes = [int(a) % x.ndim for a in inputs[3]] if len(inputs) > 3 and inputs[3] is not None \
        else list(range(x.ndim))
    width = [(0, 0)] * x.ndim
    for j, a in enumerate(axes):
        width[a] = (pads[j], pads[j + len(axes)])
    # negative pads crop: pad the positive part, then slice off the negative part
    pos = [(max(b, 0), max(e, 0)) for b, e in width]
    crop = tuple(slice(-min(b, 0), (x.shape[i] + pos[i][0] + pos[i][1]) + min(e, 0))
                 for i, (b, e) in enumerate(width))
    mode = attrs["mode"]
    if mode == "constant":
        y = np.pad(x, pos, mode="constant", constant_values=value)
    else:
        y = np.pad(x, pos, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
    return [y[crop]]


@reference_op("Tile")
def _tile(inputs, attrs):
    return [np.tile(inputs[0], [int(r) for r in inputs[1]])]


@reference_op("Expand")
def _expand(inputs, attrs):
    x, shape = inputs[0], tuple(int(d) for d in inputs[1])
    out = np.broadcast_shapes(x.shape, shape)
    return [np.broadcast_to(x, out).copy()]


@reference_op("ConstantOfShape")
def _constant_of_shape(inputs, attrs):
    value = attrs["value"]
    return [np.full(tuple(int(d) for d in inputs[0]), value.reshape(-1)[0], dtype=value.dtype)]


@reference_op("Range")
def _range(inputs, attrs):
    start, limit, delta = (v.reshape(()) for v in inputs)
    n = max(int(np.ceil((limit - start) / delta)), 0)
    return [(start + np.arange(n, dtype=start.dtype) * delta).astype(start.dtype)]


@reference_op("EyeLike")
def _eye_like(inputs, attrs):
    from tftrt_lite.engine.onnx_import import ir_dtype
    x = inputs[0]
    dtype = x.dtype if attrs.get("dtype") is None else np_dtype(ir_dtype(attrs["dtype"], "EyeLike"))
    return [np.eye(x.shape[0], x.shape[1], k=attrs["k"], dtype=dtype)]


@reference_op("OneHot")
def _one_hot(inputs, attrs):
    idx, depth, values = inputs
    depth = int(depth.reshape(-1)[0])
    idx = np.where(idx < 0, idx + depth, idx).astype(np.int64)
    hot = np.arange(depth).reshape((1,) * idx.ndim + (depth,)) == idx[..., None]
    y = np.where(hot, values[1], values[0]).astype(values.dtype)
    return [np.moveaxis(y, -1, attrs["axis"])]


@reference_op("Trilu")
def _trilu(inputs, attrs):
    x = inputs[0]
    k = int(inputs[1].reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else 0
    return [np.triu(x, k) if attrs["upper"] else np.tril(x, k)]


@reference_op("Dropout")
def _dropout(inputs, attrs):
    training = len(inputs) > 2 and inputs[2] is not None and bool(inputs[2].reshape(-1)[0])
    if training:
        raise UnsupportedOpError("Dropout: training_mode=True is random and not supported")
    return [inputs[0], np.ones(inputs[0].shape, dtype=bool)]


@reference_op("DepthToSpace")
def _depth_to_space(inputs, attrs):
    x, b = inputs[0], attrs["blocksize"]
    n, c, h, w = x.shape
    if attrs["mode"] == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@reference_op("SpaceToDepth")
def _space_to_depth(inputs, attrs):
    x, b = inputs[0], attrs["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]


# -- resize -------------------------------------------------------------------------------------------
def _source_coords(out_size: int, in_size: int, scale: float, mode: str, roi=(0.0, 1.0)) -> np.ndarray:
    """Input coordinate of every output index along one axis (ONNX Resize formulas;
    ``align_corners`` uses the unrounded resized length ``in_size * scale``)."""
    o = np.arange(out_size, dtype=np.float64)
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if out_size > 1 else np.zeros(out_size)
    if mode == "align_corners":
        length = in_size * scale
        return o * (in_size - 1) / (length - 1) if length > 1 else np.zeros(out_size)
    if mode == "asymmetric":
        return o / scale
    if mode == "tf_crop_and_resize":
        lo, hi = roi
        if out_size > 1:
            return lo * (in_size - 1) + o * (hi - lo) * (in_size - 1) / (out_size - 1)
        return np.full(out_size, 0.5 * (lo + hi) * (in_size - 1))
    if mode == "half_pixel_symmetric":
        adj = out_size / (scale * in_size)
        center = in_size / 2
        offset = center * (1 - adj)
        return offset + (o + 0.5) / scale - 0.5
    raise UnsupportedOpError(f"Resize: coordinate_transformation_mode {mode!r} is not supported")


def _nearest(coords: np.ndarray, mode: str) -> np.ndarray:
    if mode == "round_prefer_floor":
        return np.where(coords - np.floor(coords) == 0.5, np.floor(coords), np.round(coords))
    if mode == "round_prefer_ceil":
        return np.floor(coords + 0.5)
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    raise UnsupportedOpError(f"Resize: nearest_mode {mode!r} is not supported")


@reference_op("Resize")
def _resize(inputs, attrs):
    x = inputs[0]
    axes = attrs["axes"]
    roi = inputs[1] if len(inputs) > 1 and inputs[1] is not None and inputs[1].size else None
    scales = inputs[2] if len(inputs) > 2 and inputs[2] is not None and inputs[2].size else None
    sizes = inputs[3] if len(inputs) > 3 and inputs[3] is not None and inputs[3].size else None
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        policy = attrs["keep_aspect_ratio_policy"]
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            common = pick(s / x.shape[a] for s, a in zip(sizes, axes))
            sizes = [int(np.floor(x.shape[a] * common + 0.5)) for a in axes]
            scale_list = [common] * len(axes)
        else:
            scale_list = [s / x.shape[a] for s, a in zip(sizes, axes)]
    else:
        scale_list = [float(s) for s in scales]
        sizes = [int(np.floor(x.shape[a] * s)) for a, s in zip(axes, scale_list)]
    y = _wide(x) if attrs["mode"] == "linear" else x
    for j, (a, out_size, scale) in enumerate(zip(axes, sizes, scale_list)):
        in_size = x.shape[a]
        axis_roi = (float(roi[j]), float(roi[j + len(axes)])) if roi is not None else (0.0, 1.0)
        coords = _source_coords(out_size, in_size, scale, attrs["coordinate_transformation_mode"], axis_roi)
        outside = (coords < 0) | (coords > in_size - 1)
        if attrs["mode"] == "nearest":
            idx = np.clip(_nearest(coords, attrs["nearest_mode"]), 0, in_size - 1).astype(np.int64)
            y = np.take(y, idx, axis=a)
        else:
            c = np.clip(coords, 0, in_size - 1)
            lo = np.floor(c).astype(np.int64)
            hi = np.minimum(lo + 1, in_size - 1)
            frac = (c - lo).reshape((-1,) + (1,) * (y.ndim - a - 1)).astype(y.dtype)
            y = np.take(y, lo, axis=a) * (1 - frac) + np.take(y, hi, axis=a) * frac
        if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize" and outside.any():
            mask = outside.reshape((-1,) + (1,) * (y.ndim - a - 1))
            y = np.where(mask, y.dtype.type(attrs["extrapolation_value"]), y)
    return [y.astype(x.dtype)]
