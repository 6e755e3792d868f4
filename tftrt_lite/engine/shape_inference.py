"""Per-op dtype and shape rules over symbolic dims, and shape-value propagation.

Why our own rules instead of ``onnx.shape_inference``: ONNX's inference invents a
fresh ``unk__`` symbol whenever a dim is a product or comes from a computed shape,
which loses exactly what an engine needs (``Reshape(x, [-1, 768])`` of
``(N, 128, 768)`` is ``(128*N, 768)``, not ``(unk__7, 768)``).

Shape-domain values: tf2onnx computes reshape targets at run time
(``Shape → Gather → Concat → Reshape``). Every small integer tensor (rank <= 1) gets
a *value*: a tuple of dims, ints or symbolic expressions, computed by the rules
below (``Shape`` of ``(N, 128)`` is ``("N", 128)``). Consumers that need an input's
value to know their output shape (``VALUE_INPUTS``) read it; the importer turns
fully-int values into constants and folds the producing nodes away.

A rule gets an :class:`InferenceContext` and returns one ``(dtype, shape)`` per
node output; it may also record output values with ``ctx.set_value``.
"""
from __future__ import annotations

import string
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt_lite.engine import symbolic as sym
from tftrt_lite.engine.ir import Dim, Graph, Node
from tftrt_lite.errors import ShapeError, UnsupportedOpError

Shape = Tuple[Dim, ...]
Value = Tuple[Dim, ...]
Rule = Callable[["InferenceContext"], List[Tuple[str, Shape]]]

#: largest integer tensor that carries a symbolic value
MAX_VALUE_SIZE = 64

#: op -> indices of inputs whose *values* decide the output shape (or the kernel's
#: structure); they must be constants or resolvable shape values at build time.
VALUE_INPUTS: Dict[str, Tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 3),
    "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "TopK": (1,), "Range": (0, 1, 2),
    "ConstantOfShape": (0,), "Resize": (2, 3), "OneHot": (1,), "CumSum": (1,),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
}

INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")


class SymbolAlias(Exception):
    """Broadcasting proved two dims equal where one is a bare input symbol; the
    importer substitutes ``symbol := expr`` everywhere and infers again."""

    def __init__(self, symbol: str, expr: Dim):
        super().__init__(f"{symbol} := {expr}")
        self.symbol, self.expr = symbol, expr


class InferenceContext:
    """What a rule sees of one node: its inputs' dtypes, shapes, constants and values."""

    def __init__(self, graph: Graph, node: Node, values: Dict[str, Value]):
        self.graph, self.node, self.values = graph, node, values
        self.out_values: Dict[int, Value] = {}

    # -- inputs ------------------------------------------------------------------
    def has(self, i: int) -> bool:
        return i < len(self.node.inputs) and bool(self.node.inputs[i])

    def dtype(self, i: int) -> str:
        return self.graph.tensor(self.node.inputs[i]).dtype

    def shape(self, i: int) -> Shape:
        return tuple(self.graph.tensor(self.node.inputs[i]).shape)

    def rank(self, i: int) -> int:
        return len(self.shape(i))

    def const(self, i: int) -> Optional[np.ndarray]:
        return self.graph.const(self.node.inputs[i]) if self.has(i) else None

    def value(self, i: int) -> Optional[Value]:
        """The input's value as a flat tuple of dims, if known at build time."""
        if not self.has(i):
            return None
        name = self.node.inputs[i]
        c = self.graph.const(name)
        if c is not None and c.dtype.kind in "iu" and c.size <= MAX_VALUE_SIZE:
            return tuple(int(v) for v in c.reshape(-1))
        return self.values.get(name)

    def require_known(self, i: int) -> None:
        """Fail unless input ``i`` is a constant or a resolvable shape value."""
        if self.const(i) is None and self.value(i) is None:
            self.required_value(i)

    def required_value(self, i: int) -> Value:
        v = self.value(i)
        if v is None:
            raise UnsupportedOpError(
                f"{self.node.op} node {self.node.name!r}: input {i} ({self.node.inputs[i]!r}) "
                "decides the output shape, so it must be known when the engine is built, "
                "but it is computed from run-time values")
        return v

    def int_values(self, i: int) -> Optional[List[int]]:
        """The input's value when every element is a plain int (axes, pads...)."""
        v = self.value(i)
        if v is None:
            return None
        if any(isinstance(d, str) for d in v):
            raise UnsupportedOpError(f"{self.node.op} node {self.node.name!r}: input {i} "
                                     f"({self.node.inputs[i]!r}) must be static, got {v}")
        return [int(d) for d in v]

    def attr(self, name: str, default=None):
        return self.node.attrs.get(name, default)

    def fail(self, why: str):
        raise ShapeError(f"{self.node.op} node {self.node.name!r}: {why}")

    def set_value(self, k: int, value: Sequence[Dim]) -> None:
        self.out_values[k] = tuple(sym.normalize(d) for d in value)


# -- dim helpers ---------------------------------------------------------------------
def merge_dim(a: Dim, b: Dim, where: str) -> Dim:
    """The broadcast of two dims (also ``max`` of shape values, since dims are >= 1)."""
    a, b = sym.normalize(a), sym.normalize(b)
    if a == 1:
        return b
    if b == 1 or a == b:
        return a
    if isinstance(a, int) and isinstance(b, int):
        raise ShapeError(f"{where}: dims {a} and {b} do not broadcast")
    for s, other in ((a, b), (b, a)):
        if isinstance(s, str) and sym.is_identifier(s) and (
                not isinstance(other, str) or not sym.is_identifier(other) or s > other):
            raise SymbolAlias(s, other)
    raise ShapeError(f"{where}: cannot prove dims {a!r} and {b!r} equal")


def broadcast(shapes: Sequence[Shape], where: str) -> Shape:
    rank = max(len(s) for s in shapes)
    out: List[Dim] = [1] * rank
    for s in shapes:
        padded = (1,) * (rank - len(s)) + tuple(s)
        out = [merge_dim(a, b, where) for a, b in zip(out, padded)]
    return tuple(out)


def norm_axis(axis: int, rank: int, ctx: InferenceContext) -> int:
    if not -rank <= axis < max(rank, 1):
        ctx.fail(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def _int(d: Dim, ctx: InferenceContext, what: str) -> int:
    if isinstance(d, str):
        ctx.fail(f"{what} must be static, got {d!r}")
    return int(d)


def _floordiv(a: Dim, b: int) -> Dim:
    """``a // b`` for a static ``a`` or an exact symbolic division."""
    if isinstance(a, str):
        return sym.divide(a, b)
    return a // b


# -- rules -----------------------------------------------------------------------------
RULES: Dict[str, Rule] = {}


def rule(*ops: str):
    def deco(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn
    return deco


UNARY_OPS = (
    "Abs", "Neg", "Floor", "Ceil", "Round", "Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos",
    "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Erf", "Sign",
    "Relu", "Sigmoid", "Tanh", "Softplus", "Softsign", "LeakyRelu", "Elu", "Selu",
    "Celu", "HardSigmoid", "HardSwish", "ThresholdedRelu", "Mish", "Shrink", "Not", "BitwiseNot",
    "Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "InstanceNormalization",
    "MeanVarianceNormalization", "CumSum", "Trilu", "BatchNormalization", "Clip",
)


@rule(*UNARY_OPS)
def _same(ctx):
    v = ctx.value(0)
    if ctx.node.op == "Neg" and v is not None:
        ctx.set_value(0, [sym.mul(d, -1) for d in v])
    return [(ctx.dtype(0), ctx.shape(0))]


@rule("Identity")
def _identity(ctx):
    v = ctx.value(0)
    if v is not None:
        ctx.set_value(0, v)
    return [(ctx.dtype(0), ctx.shape(0))]


@rule("IsNaN", "IsInf")
def _predicate(ctx):
    return [("bool", ctx.shape(0))]


@rule("Dropout")
def _dropout(ctx):
    return [(ctx.dtype(0), ctx.shape(0)), ("bool", ctx.shape(0))][:len(ctx.node.outputs)]


_VALUE_BINARY = {
    "Add": sym.add, "Sub": sym.sub, "Mul": sym.mul,
    "Div": lambda a, b: sym.divide(a, b) if isinstance(a, str) or isinstance(b, str) else int(a / b),
}
BINARY_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Mod", "BitShift", "And", "Or", "Xor",
              "BitwiseAnd", "BitwiseOr", "BitwiseXor", "PRelu")
COMPARE_OPS = ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")


def _elementwise_values(ctx, fn, out_shape):
    vals = [ctx.value(i) for i in range(len(ctx.node.inputs))]
    if ctx.dtype(0) not in INT_DTYPES or any(v is None for v in vals) or len(out_shape) > 1:
        return
    n = _int(sym.numel(out_shape), ctx, "shape value size") if out_shape else 1
    spread = [v * n if len(v) == 1 else v for v in vals]
    out = spread[0]
    for v in spread[1:]:
        out = [fn(a, b) for a, b in zip(out, v)]
    ctx.set_value(0, out)


@rule(*BINARY_OPS)
def _binary(ctx):
    where = f"{ctx.node.op} node {ctx.node.name!r}"
    shape = broadcast([ctx.shape(0), ctx.shape(1)], where)
    if ctx.node.op in _VALUE_BINARY:
        _elementwise_values(ctx, _VALUE_BINARY[ctx.node.op], shape)
    return [(ctx.dtype(0), shape)]


@rule(*COMPARE_OPS)
def _compare(ctx):
    where = f"{ctx.node.op} node {ctx.node.name!r}"
    return [("bool", broadcast([ctx.shape(0), ctx.shape(1)], where))]


def _dim_max(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    return merge_dim(a, b, "Max of shape values")


def _dim_min(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    a, b = sym.normalize(a), sym.normalize(b)
    if a == b:
        return a
    if 1 in (a, b):
        return 1
    raise ShapeError(f"Min of shape values: cannot order {a!r} and {b!r}")


@rule("Max", "Min", "Sum", "Mean")
def _variadic(ctx):
    where = f"{ctx.node.op} node {ctx.node.name!r}"
    shape = broadcast([ctx.shape(i) for i in range(len(ctx.node.inputs))], where)
    fn = {"Max": _dim_max, "Min": _dim_min, "Sum": sym.add}.get(ctx.node.op)
    if fn is not None:
        _elementwise_values(ctx, fn, shape)
    return [(ctx.dtype(0), shape)]


@rule("Where")
def _where(ctx):
    where = f"Where node {ctx.node.name!r}"
    return [(ctx.dtype(1), broadcast([ctx.shape(0), ctx.shape(1), ctx.shape(2)], where))]


@rule("Cast", "CastLike")
def _cast(ctx):
    from tftrt_lite.engine.onnx_import import ir_dtype  # the one ONNX→IR dtype table
    to = ir_dtype(ctx.attr("to"), ctx.node.name) if ctx.node.op == "Cast" else ctx.dtype(1)
    v = ctx.value(0)
    if v is not None and to in INT_DTYPES and ctx.dtype(0) in INT_DTYPES:
        ctx.set_value(0, v)
    return [(to, ctx.shape(0))]


#: the integer types QuantizeLinear produces and DequantizeLinear reads (opset 13-18, 8 bit)
QUANTIZED_DTYPES = ("int8", "uint8")


@rule("QuantizeLinear", "DequantizeLinear")
def _quantize_linear(ctx):
    """Q: float32 → the zero point's type (uint8 without one); DQ: int8/uint8 → float32. The
    scale is a scalar (per tensor) or a vector along ``axis``; the zero point has its shape."""
    quantize = ctx.node.op == "QuantizeLinear"
    x_dtype = ctx.dtype(0)
    if (quantize and x_dtype != "float32") or (not quantize and x_dtype not in QUANTIZED_DTYPES):
        raise UnsupportedOpError(f"{ctx.node.op} node {ctx.node.name!r}: input of dtype {x_dtype} is not "
                                 f"supported ({'float32' if quantize else ' or '.join(QUANTIZED_DTYPES)})")
    if ctx.dtype(1) != "float32":
        ctx.fail(f"scale of dtype {ctx.dtype(1)} (the IR opset takes float32)")
    scale = ctx.shape(1)
    if len(scale) > 1:
        ctx.fail(f"scale of shape {scale} (a scalar or a vector)")
    if len(scale) == 1:
        axis = norm_axis(ctx.attr("axis"), ctx.rank(0), ctx)
        if not sym.equal(scale[0], ctx.shape(0)[axis]):
            ctx.fail(f"{scale[0]} scales for {ctx.shape(0)[axis]} channels on axis {axis}")
    zp_dtype = "uint8"
    if ctx.has(2):
        zp_dtype = ctx.dtype(2)
        if zp_dtype not in QUANTIZED_DTYPES or ctx.shape(2) != scale:
            ctx.fail(f"zero point {zp_dtype}{list(ctx.shape(2))} does not match scale float32{list(scale)}")
        if not quantize and zp_dtype != x_dtype:
            ctx.fail(f"zero point of dtype {zp_dtype} for an input of dtype {x_dtype}")
    return [(zp_dtype if quantize else "float32", ctx.shape(0))]


# -- linear algebra ---------------------------------------------------------------------------
@rule("MatMul")
def _matmul(ctx):
    a, b = ctx.shape(0), ctx.shape(1)
    where = f"MatMul node {ctx.node.name!r}"
    if not a or not b:
        ctx.fail("operands must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    merge_dim(a2[-1], b2[-2], where + " (contraction)")
    batch = broadcast([a2[:-2], b2[:-2]], where)
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return [(ctx.dtype(0), out)]


@rule("Gemm")
def _gemm(ctx):
    a, b = ctx.shape(0), ctx.shape(1)
    m = a[1] if ctx.attr("transA") else a[0]
    n = b[0] if ctx.attr("transB") else b[1]
    return [(ctx.dtype(0), (m, n))]


def parse_einsum(equation: str, ranks: Sequence[int]) -> Tuple[List[str], str]:
    """Operand and output subscripts of ``equation`` with ``...`` expanded to
    upper-case letters and the implicit output made explicit."""
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    specs = lhs.split(",")
    if len(specs) != len(ranks):
        raise ShapeError(f"einsum {equation!r}: {len(specs)} operand specs for {len(ranks)} inputs")
    ell = 0
    for spec, r in zip(specs, ranks):
        if "..." in spec:
            ell = max(ell, r - (len(spec) - 3))
    fill = string.ascii_uppercase[26 - ell:] if ell else ""
    out_specs = []
    for spec, r in zip(specs, ranks):
        if "..." in spec:
            n = r - (len(spec) - 3)
            spec = spec.replace("...", fill[ell - n:])
        if len(spec) != r:
            raise ShapeError(f"einsum {equation!r}: subscripts {spec!r} for an operand of rank {r}")
        out_specs.append(spec)
    if "->" in eq:
        out = rhs.replace("...", fill)
    else:
        letters = "".join(out_specs)
        out = fill + "".join(sorted(c for c in set(letters) if c.islower() and letters.count(c) == 1))
    return out_specs, out


@rule("Einsum")
def _einsum(ctx):
    n = len(ctx.node.inputs)
    specs, out = parse_einsum(ctx.attr("equation"), [ctx.rank(i) for i in range(n)])
    where = f"Einsum node {ctx.node.name!r}"
    sizes: Dict[str, Dim] = {}
    for i, spec in enumerate(specs):
        shape = ctx.shape(i)
        for k, c in enumerate(spec):
            # ellipsis letters broadcast like numpy; named letters must agree
            sizes[c] = merge_dim(sizes.get(c, 1), shape[k], where)
    return [(ctx.dtype(0), tuple(sizes[c] for c in out))]


# -- convolution and pooling -------------------------------------------------------------------
def resolve_window(ctx, spatial: Sequence[Dim], kernel: Sequence[int]) -> Sequence[Dim]:
    """Fill strides/dilations/pads (auto_pad resolved into explicit pads) and return
    the output spatial dims."""
    r = len(kernel)
    strides = list(ctx.attr("strides") or [1] * r)
    dilations = list(ctx.attr("dilations") or [1] * r)
    pads = list(ctx.attr("pads") or [0] * (2 * r))
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    out = []
    for i in range(r):
        k_eff = (kernel[i] - 1) * dilations[i] + 1
        size, s = spatial[i], strides[i]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            if isinstance(size, str) and s != 1:
                ctx.fail(f"auto_pad {auto_pad} with stride {s} on symbolic spatial dim {size!r}")
            o = size if s == 1 else -(-size // s)
            total = max((_int(o, ctx, "") - 1) * s + k_eff - size, 0) if s != 1 else k_eff - 1
            small = total // 2
            pads[i], pads[i + r] = (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
        elif auto_pad == "VALID":
            pads[i] = pads[i + r] = 0
        elif auto_pad != "NOTSET":
            ctx.fail(f"unknown auto_pad {auto_pad!r}")
        span = sym.sub(sym.add(size, pads[i] + pads[i + r]), k_eff)
        if isinstance(span, str):
            if s != 1 or ceil_mode:
                ctx.fail(f"stride {s} (ceil_mode={int(ceil_mode)}) on symbolic spatial dim {size!r}")
            o = sym.add(span, 1)
        else:
            if span < 0:
                ctx.fail(f"window {k_eff} larger than padded input {size}+{pads[i] + pads[i + r]}")
            o = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (o - 1) * s >= size + pads[i]:
                o -= 1
        out.append(o)
    ctx.node.attrs.update(strides=strides, dilations=dilations, pads=pads)
    if "auto_pad" in ctx.node.attrs:
        ctx.node.attrs["auto_pad"] = "NOTSET"
    return out


def _kernel_from(ctx, w_shape: Shape) -> List[int]:
    kernel = ctx.attr("kernel_shape") or [_int(d, ctx, "kernel size") for d in w_shape[2:]]
    ctx.node.attrs["kernel_shape"] = list(kernel)
    return list(kernel)


@rule("Conv")
def _conv(ctx):
    x, w = ctx.shape(0), ctx.shape(1)
    group = ctx.attr("group")
    c = _int(x[1], ctx, "input channels")
    if c != _int(w[1], ctx, "weight channels") * group:
        ctx.fail(f"input has {c} channels, weight expects {w[1]}*group({group})")
    out = resolve_window(ctx, x[2:], _kernel_from(ctx, w))
    return [(ctx.dtype(0), (x[0], w[0]) + tuple(out))]


@rule("ConvTranspose")
def _conv_transpose(ctx):
    x, w = ctx.shape(0), ctx.shape(1)
    kernel = _kernel_from(ctx, w)
    r = len(kernel)
    group = ctx.attr("group")
    strides = list(ctx.attr("strides") or [1] * r)
    dilations = list(ctx.attr("dilations") or [1] * r)
    out_pad = list(ctx.attr("output_padding") or [0] * r)
    pads = list(ctx.attr("pads") or [0] * (2 * r))
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    spatial = [_int(d, ctx, "ConvTranspose spatial dim") for d in x[2:]]
    full = [strides[i] * (spatial[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
            for i in range(r)]
    out_shape = ctx.attr("output_shape")
    if out_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(out_shape)[-r:] if out_shape else [spatial[i] * strides[i] for i in range(r)]
        for i in range(r):
            total = full[i] - target[i]
            if total < 0:  # a larger requested output grows at the end, like output_padding
                out_pad[i] -= total
                full[i] -= total
                total = 0
            small = total // 2
            upper = auto_pad != "SAME_LOWER"
            pads[i], pads[i + r] = (small, total - small) if upper else (total - small, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * r)
    out = [full[i] - pads[i] - pads[i + r] for i in range(r)]
    ctx.node.attrs.update(strides=strides, dilations=dilations, pads=pads, output_padding=out_pad)
    ctx.node.attrs["auto_pad"] = "NOTSET"
    ctx.node.attrs.pop("output_shape", None)
    return [(ctx.dtype(0), (x[0], _int(w[1], ctx, "weight channels") * group) + tuple(out))]


@rule("MaxPool", "AveragePool", "LpPool")
def _pool(ctx):
    x = ctx.shape(0)
    kernel = list(ctx.attr("kernel_shape"))
    out = (x[0], x[1]) + tuple(resolve_window(ctx, x[2:], kernel))
    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1]:
        raise UnsupportedOpError(f"{ctx.node.op} node {ctx.node.name!r}: the Indices output "
                                 "is not supported")
    return [(ctx.dtype(0), out)] + [("int64", out)] * (len(ctx.node.outputs) - 1)


@rule("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(ctx):
    x = ctx.shape(0)
    return [(ctx.dtype(0), x[:2] + (1,) * (len(x) - 2))]


# -- normalisation ---------------------------------------------------------------------------
@rule("LayerNormalization")
def _layer_norm(ctx):
    x = ctx.shape(0)
    axis = norm_axis(ctx.attr("axis"), len(x), ctx)
    ctx.node.attrs["axis"] = axis
    stats = x[:axis] + (1,) * (len(x) - axis)
    from tftrt_lite.engine.onnx_import import ir_dtype
    stash = ir_dtype(ctx.attr("stash_type"), ctx.node.name)
    return [(ctx.dtype(0), x), (stash, stats), (stash, stats)][:len(ctx.node.outputs)]


# -- reductions ---------------------------------------------------------------------------------
REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def reduce_axes(ctx) -> Optional[List[int]]:
    """The reduced axes (normalised), or None for 'no reduction' (noop_with_empty_axes)."""
    rank = ctx.rank(0)
    axes = ctx.int_values(1) if ctx.has(1) else None
    if not axes:
        if ctx.attr("noop_with_empty_axes"):
            return None
        return list(range(rank))
    return sorted({norm_axis(a, rank, ctx) for a in axes})


@rule(*REDUCE_OPS)
def _reduce(ctx):
    x = ctx.shape(0)
    axes = reduce_axes(ctx)
    if axes is None:
        return [(ctx.dtype(0), x)]
    keep = ctx.attr("keepdims")
    out = tuple(1 if i in axes else d for i, d in enumerate(x) if keep or i not in axes)
    v = ctx.value(0)
    if v is not None and len(x) == 1 and ctx.node.op in ("ReduceProd", "ReduceSum"):
        ctx.set_value(0, [(sym.product if ctx.node.op == "ReduceProd" else _sum)(v)])
    return [(ctx.dtype(0), out)]


def _sum(dims):
    total: Dim = 0
    for d in dims:
        total = sym.add(total, d)
    return total


@rule("ArgMax", "ArgMin")
def _arg(ctx):
    x = ctx.shape(0)
    axis = norm_axis(ctx.attr("axis"), len(x), ctx)
    ctx.node.attrs["axis"] = axis
    out = tuple(1 if i == axis else d for i, d in enumerate(x) if ctx.attr("keepdims") or i != axis)
    return [("int64", out)]


@rule("TopK")
def _topk(ctx):
    x = ctx.shape(0)
    axis = norm_axis(ctx.attr("axis"), len(x), ctx)
    ctx.node.attrs["axis"] = axis
    (k,) = ctx.int_values(1) or ctx.required_value(1)
    out = x[:axis] + (k,) + x[axis + 1:]
    return [(ctx.dtype(0), out), ("int64", out)]


# -- data movement --------------------------------------------------------------------------------
@rule("Shape")
def _shape(ctx):
    x = ctx.shape(0)
    r = len(x)
    start = ctx.attr("start", 0)
    end = ctx.attr("end", r)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    ctx.node.attrs.update(start=start, end=end)
    dims = x[start:end]
    ctx.set_value(0, dims)
    return [("int64", (len(dims),))]


@rule("Size")
def _size(ctx):
    ctx.set_value(0, [sym.numel(ctx.shape(0))])
    return [("int64", ())]


def reshape_shape(ctx, x: Shape, target: Value, allowzero: int) -> Shape:
    out: List[Dim] = []
    minus = None
    for i, d in enumerate(target):
        if d == -1:
            if minus is not None:
                ctx.fail("more than one -1 in the target shape")
            minus = i
            out.append(1)
        elif d == 0 and not allowzero:
            if i >= len(x):
                ctx.fail(f"target {target} copies axis {i} of a rank-{len(x)} input")
            out.append(x[i])
        else:
            out.append(d)
    total = sym.numel(x)
    if minus is not None:
        out[minus] = sym.divide(total, sym.numel(out))
    elif not sym.equal(sym.numel(out), total):
        ctx.fail(f"cannot reshape {x} ({sym.normalize(total)} elements) to {tuple(out)}")
    return tuple(sym.normalize(d) for d in out)


@rule("Reshape")
def _reshape(ctx):
    x = ctx.shape(0)
    target = ctx.required_value(1)
    out = reshape_shape(ctx, x, target, ctx.attr("allowzero"))
    _pass_value(ctx, out)
    return [(ctx.dtype(0), out)]


def _pass_value(ctx, out_shape):
    """Value-preserving reshapes keep the (flat) value of a shape tensor."""
    v = ctx.value(0)
    if v is not None and len(out_shape) <= 1:
        ctx.set_value(0, v)


@rule("Flatten")
def _flatten(ctx):
    x = ctx.shape(0)
    axis = ctx.attr("axis")
    axis = axis + len(x) if axis < 0 else axis
    if not 0 <= axis <= len(x):
        ctx.fail(f"axis {ctx.attr('axis')} out of range for rank {len(x)}")
    ctx.node.attrs["axis"] = axis
    return [(ctx.dtype(0), (sym.numel(x[:axis]), sym.numel(x[axis:])))]


@rule("Squeeze")
def _squeeze(ctx):
    x = ctx.shape(0)
    if ctx.has(1):
        axes = {norm_axis(a, len(x), ctx) for a in ctx.int_values(1) or ctx.required_value(1)}
        for a in axes:
            if x[a] != 1:
                ctx.fail(f"cannot squeeze axis {a} of size {x[a]!r}")
    else:
        if any(isinstance(d, str) for d in x):
            ctx.fail(f"Squeeze without axes on symbolic shape {x}")
        axes = {i for i, d in enumerate(x) if d == 1}
    out = tuple(d for i, d in enumerate(x) if i not in axes)
    _pass_value(ctx, out)
    return [(ctx.dtype(0), out)]


@rule("Unsqueeze")
def _unsqueeze(ctx):
    x = ctx.shape(0)
    axes_in = ctx.int_values(1) or ctx.required_value(1)
    r = len(x) + len(axes_in)
    axes = {norm_axis(a, r, ctx) for a in axes_in}
    if len(axes) != len(axes_in):
        ctx.fail(f"repeated axes {axes_in}")
    it = iter(x)
    out = tuple(1 if i in axes else next(it) for i in range(r))
    _pass_value(ctx, out)
    return [(ctx.dtype(0), out)]


@rule("Transpose")
def _transpose(ctx):
    x = ctx.shape(0)
    perm = ctx.attr("perm") or list(range(len(x)))[::-1]
    if sorted(perm) != list(range(len(x))):
        ctx.fail(f"perm {perm} is not a permutation of rank {len(x)}")
    ctx.node.attrs["perm"] = list(perm)
    return [(ctx.dtype(0), tuple(x[p] for p in perm))]


@rule("Concat")
def _concat(ctx):
    shapes = [ctx.shape(i) for i in range(len(ctx.node.inputs)) if ctx.has(i)]
    r = len(shapes[0])
    axis = norm_axis(ctx.attr("axis"), r, ctx)
    ctx.node.attrs["axis"] = axis
    out = list(shapes[0])
    for s in shapes[1:]:
        if len(s) != r:
            ctx.fail(f"inputs of ranks {r} and {len(s)}")
        for i in range(r):
            if i == axis:
                out[i] = sym.add(out[i], s[i])
            elif not sym.equal(out[i], s[i]):
                out[i] = merge_dim(out[i], s[i], f"Concat node {ctx.node.name!r}")
    vals = [ctx.value(i) for i in range(len(ctx.node.inputs)) if ctx.has(i)]
    if r == 1 and all(v is not None for v in vals):
        ctx.set_value(0, [d for v in vals for d in v])
    return [(ctx.dtype(0), tuple(out))]


@rule("Split")
def _split(ctx):
    x = ctx.shape(0)
    axis = norm_axis(ctx.attr("axis"), len(x), ctx)
    ctx.node.attrs["axis"] = axis
    n = len(ctx.node.outputs)
    if ctx.has(1):
        sizes = list(ctx.int_values(1) or ctx.required_value(1))
        if len(sizes) != n:
            ctx.fail(f"{len(sizes)} split sizes for {n} outputs")
    else:
        total = _int(x[axis], ctx, "split axis")
        chunk = -(-total // n)
        sizes = [chunk] * (n - 1) + [total - chunk * (n - 1)]
        ctx.node.attrs["num_outputs"] = n
    return [(ctx.dtype(0), x[:axis] + (s,) + x[axis + 1:]) for s in sizes]


def slice_params(ctx, x: Shape):
    """Per-axis (start, stop, step) with ONNX clamping; symbolic dims only for full
    or constant-from-the-front ranges."""
    starts = ctx.required_value(1)
    ends = ctx.required_value(2)
    r = len(x)
    axes = [norm_axis(a, r, ctx) for a in (ctx.int_values(3) if ctx.has(3) else range(len(starts)))]
    steps = ctx.int_values(4) if ctx.has(4) else [1] * len(starts)
    return axes, list(starts), list(ends), steps


def _slice_len(dim: Dim, start: Dim, end: Dim, step: int, ctx) -> Tuple[Dim, Optional[Tuple[int, int]]]:
    """Output length along one axis and, for a static dim, the clamped (start, end)."""
    # "To the end": ONNX exporters write INT64_MAX, INT32_MAX or tf2onnx's 1e9. A real
    # axis of 1e9 elements cannot be an engine tensor (it would not fit GPU memory).
    big = 10 ** 9
    if isinstance(dim, str):
        if step == 1 and isinstance(start, int) and 0 <= start and (
                isinstance(end, int) and end >= big or sym.equal(end, dim)):
            return sym.sub(dim, start), None
        if step == 1 and isinstance(start, int) and start >= 0 and isinstance(end, int) and end >= 0:
            ctx.fail(f"slice [{start}:{end}] of symbolic dim {dim!r} may be clamped")
        ctx.fail(f"slice [{start}:{end}:{step}] of symbolic dim {dim!r}")
    if isinstance(start, str) or isinstance(end, str):
        ctx.fail(f"symbolic slice bounds {start!r}:{end!r} on static dim {dim}")
    if step == 0:
        ctx.fail("slice step 0")
    s = start + dim if start < 0 else start
    e = end + dim if end < 0 else end
    if step > 0:
        s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        n = max(0, -(-(e - s) // step))
    else:
        s, e = min(max(s, -1), dim - 1), min(max(e, -1), dim - 1)
        n = max(0, -(-(s - e) // -step))
    return n, (s, e)


@rule("Slice")
def _slice(ctx):
    x = ctx.shape(0)
    axes, starts, ends, steps = slice_params(ctx, x)
    out = list(x)
    for a, s, e, st in zip(axes, starts, ends, steps):
        out[a], _ = _slice_len(x[a], s, e, st, ctx)
    v = ctx.value(0)
    if v is not None and len(x) == 1:
        _, bounds = _slice_len(len(v), starts[0], ends[0], steps[0], ctx)
        s, e = bounds
        ctx.set_value(0, v[s:e:steps[0]] if e >= 0 else v[s::steps[0]])
    return [(ctx.dtype(0), tuple(out))]


@rule("Gather")
def _gather(ctx):
    x, idx = ctx.shape(0), ctx.shape(1)
    axis = norm_axis(ctx.attr("axis"), len(x), ctx)
    ctx.node.attrs["axis"] = axis
    out = x[:axis] + idx + x[axis + 1:]
    v, iv = ctx.value(0), ctx.int_values(1)
    if v is not None and iv is not None and len(x) == 1:
        picked = [v[i] for i in iv]
        ctx.set_value(0, picked)
    return [(ctx.dtype(0), out)]


@rule("GatherElements")
def _gather_elements(ctx):
    ctx.node.attrs["axis"] = norm_axis(ctx.attr("axis"), ctx.rank(0), ctx)
    return [(ctx.dtype(0), ctx.shape(1))]


@rule("GatherND")
def _gather_nd(ctx):
    x, idx = ctx.shape(0), ctx.shape(1)
    b = ctx.attr("batch_dims")
    k = _int(idx[-1], ctx, "GatherND index depth")
    return [(ctx.dtype(0), idx[:-1] + x[b + k:])]


@rule("Pad")
def _pad(ctx):
    x = ctx.shape(0)
    r = len(x)
    pads = ctx.int_values(1) or ctx.required_value(1)
    axes = [norm_axis(a, r, ctx) for a in ctx.int_values(3)] if ctx.has(3) else list(range(r))
    if len(pads) != 2 * len(axes):
        ctx.fail(f"{len(pads)} pads for {len(axes)} axes")
    out = list(x)
    for j, a in enumerate(axes):
        out[a] = sym.add(x[a], pads[j] + pads[j + len(axes)])
    return [(ctx.dtype(0), tuple(out))]


@rule("Tile")
def _tile(ctx):
    x = ctx.shape(0)
    reps = ctx.required_value(1)
    if len(reps) != len(x):
        ctx.fail(f"{len(reps)} repeats for rank {len(x)}")
    return [(ctx.dtype(0), tuple(sym.mul(d, r) for d, r in zip(x, reps)))]


@rule("Expand")
def _expand(ctx):
    target = ctx.required_value(1)
    return [(ctx.dtype(0), broadcast([ctx.shape(0), tuple(target)], f"Expand node {ctx.node.name!r}"))]


@rule("ConstantOfShape")
def _constant_of_shape(ctx):
    value = ctx.attr("value")
    from tftrt_lite.engine.ir import dtype_name
    dtype = dtype_name(value.dtype)
    shape = tuple(ctx.required_value(0))
    if dtype in INT_DTYPES and len(shape) <= 1 and all(isinstance(d, int) for d in shape) \
            and sym.numel(shape) <= MAX_VALUE_SIZE:
        ctx.set_value(0, [int(value.reshape(-1)[0])] * sym.numel(shape))
    return [(dtype, shape)]


@rule("Range")
def _range(ctx):
    if ctx.dtype(0) not in INT_DTYPES:
        start, limit, delta = (float(ctx.const(i).reshape(-1)[0]) for i in range(3))
        return [(ctx.dtype(0), (max(int(np.ceil((limit - start) / delta)), 0),))]
    start, limit, delta = (ctx.required_value(i)[0] for i in range(3))
    if all(isinstance(v, int) for v in (start, limit, delta)):
        n = max(-(-(limit - start) // delta), 0)
        if ctx.dtype(0) in INT_DTYPES and n <= MAX_VALUE_SIZE:
            ctx.set_value(0, list(range(start, limit, delta)))
    elif delta == 1:
        n = sym.sub(limit, start)
    else:
        ctx.fail(f"symbolic range({start!r}, {limit!r}, {delta!r}) needs delta 1")
    return [(ctx.dtype(0), (n,))]


@rule("DepthToSpace", "SpaceToDepth")
def _depth_space(ctx):
    n, c, h, w = ctx.shape(0)
    b = ctx.attr("blocksize")
    c = _int(c, ctx, "channels")
    if ctx.node.op == "DepthToSpace":
        if c % (b * b):
            ctx.fail(f"channels {c} not divisible by blocksize^2 {b * b}")
        return [(ctx.dtype(0), (n, c // (b * b), sym.mul(h, b), sym.mul(w, b)))]
    return [(ctx.dtype(0), (n, c * b * b, _floordiv(h, b), _floordiv(w, b)))]


@rule("Resize")
def _resize(ctx):
    x = ctx.shape(0)
    r = len(x)
    axes = [norm_axis(a, r, ctx) for a in (ctx.attr("axes") or range(r))]
    ctx.node.attrs["axes"] = axes
    if ctx.attr("antialias"):
        raise UnsupportedOpError(f"Resize node {ctx.node.name!r}: antialias=1 is not supported")
    if ctx.attr("mode") not in ("nearest", "linear"):
        raise UnsupportedOpError(f"Resize node {ctx.node.name!r}: mode {ctx.attr('mode')!r} "
                                 "is not supported (nearest, linear are)")
    out = list(x)
    sizes = ctx.int_values(3) if ctx.has(3) else None
    if sizes:
        static = [_int(x[a], ctx, "resized dim") for a in axes]
        policy = ctx.attr("keep_aspect_ratio_policy")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            scale = pick(s / d for s, d in zip(sizes, static))
            sizes = [int(np.floor(d * scale + 0.5)) for d in static]
        for a, s in zip(axes, sizes):
            out[a] = s
    else:
        scales = ctx.const(2)
        if scales is None:
            ctx.required_value(2)
        for a, s in zip(axes, scales.reshape(-1)):
            out[a] = int(np.floor(_int(x[a], ctx, "resized dim") * float(s)))
    return [(ctx.dtype(0), tuple(out))]


@rule("OneHot")
def _one_hot(ctx):
    idx = ctx.shape(0)
    depth = int(ctx.const(1).reshape(-1)[0]) if ctx.const(1) is not None else ctx.required_value(1)[0]
    r = len(idx) + 1
    axis = norm_axis(ctx.attr("axis"), r, ctx)
    ctx.node.attrs["axis"] = axis
    return [(ctx.dtype(2), idx[:axis] + (depth,) + idx[axis:])]


@rule("EyeLike")
def _eye_like(ctx):
    from tftrt_lite.engine.onnx_import import ir_dtype
    dtype = ctx.dtype(0) if ctx.attr("dtype") is None else ir_dtype(ctx.attr("dtype"), ctx.node.name)
    return [(dtype, ctx.shape(0))]


def infer_node(graph: Graph, node: Node, values: Dict[str, Value]):
    """Apply ``node``'s rule: returns ``[(dtype, shape)]`` per output and the output
    values it derived (by output index)."""
    fn = RULES.get(node.op)
    if fn is None:
        raise UnsupportedOpError(f"no shape rule for op {node.op!r} (node {node.name!r})")
    ctx = InferenceContext(graph, node, values)
    for i in VALUE_INPUTS.get(node.op, ()):
        if ctx.has(i):
            ctx.require_known(i)
    results = fn(ctx)
    if len(results) != len(node.outputs):
        ctx.fail(f"has {len(node.outputs)} outputs, the op defines {len(results)}")
    return [(dt, tuple(sym.normalize(d) for d in shape)) for dt, shape in results], ctx.out_values
