"""The ``tftrt.*`` ops the passes create: exact semantics and NumPy reference implementations.

Why a module of its own: three parties must agree on what a fused op means — the fusion
passes that create it, the code generator / plan builder that emits CUDA (or a library
call) for it, and the NumPy reference executor that tests every plan against TensorFlow.
Each op's docstring below is that contract; the function under it is the reference
implementation (registered with the reference executor, so ``run_graph`` runs fused graphs).

Conventions shared by every op here:

- Inputs are positional; an omitted optional input is ``""`` in ``Node.inputs`` and arrives
  here as ``None``. Every attribute listed is always present on the node (the passes write
  them all), so a consumer never guesses a default.
- Activations are named by ``activation`` (one of :data:`ACTIVATIONS`) with float parameters
  in ``activation_params`` (``clip``: ``[min, max]``; ``leaky_relu``: ``[alpha]``; others
  ``[]``). ``relu6`` is ``clip`` with ``[0, 6]``.
- Reference math runs in the output dtype except where a docstring says otherwise
  (LayerNorm statistics and Attention softmax are accumulated in float32).
"""
from __future__ import annotations

import math
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from tftrt_lite.engine import symbolic
from tftrt_lite.engine.ir import saturate_cast
from tftrt_lite.engine.reference import erf as _erf, np_dtype, reference_op

# -- activations ------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows: the reference must not warn on large logits.
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


#: activation name → (number of ``activation_params``, NumPy implementation)
ACTIVATIONS: Dict[str, tuple] = {
    "none": (0, lambda x, p: x),
    "relu": (0, lambda x, p: np.maximum(x, np.zeros((), x.dtype))),
    "clip": (2, lambda x, p: np.clip(x, x.dtype.type(p[0]), x.dtype.type(p[1]))),
    "leaky_relu": (1, lambda x, p: np.where(x >= 0, x, x * x.dtype.type(p[0]))),
    "sigmoid": (0, lambda x, p: _sigmoid(x)),
    "silu": (0, lambda x, p: x * _sigmoid(x)),
    "tanh": (0, lambda x, p: np.tanh(x)),
    "gelu_erf": (0, lambda x, p: (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)),
    "gelu_tanh": (0, lambda x, p: (0.5 * x * (1.0 + np.tanh(
        _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))).astype(x.dtype)),
}

#: the activations a FusedGemm epilogue may carry (see ``fused_gemm``).
GEMM_ACTIVATIONS = ("none", "relu", "gelu_erf", "gelu_tanh")


def apply_activation(x: np.ndarray, name: str, params: Sequence[float]) -> np.ndarray:
    """Apply activation ``name`` with ``params``; raise ValueError naming a bad one."""
    try:
        nparams, fn = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None
    if len(params) != nparams:
        raise ValueError(f"activation {name!r} takes {nparams} params, got {list(params)}")
    return fn(x, params)


# -- tftrt.FusedConv --------------------------------------------------------------------

def conv2d_nhwc(x: np.ndarray, w: np.ndarray, strides, pads, dilations, group: int) -> np.ndarray:
    """Grouped, dilated 2-D convolution of NHWC ``x`` with OHWI ``w`` (float64 accumulate)."""
    n, h, wd, c = x.shape
    o, kh, kw, cg = w.shape
    if c != cg * group or o % group:
        raise ValueError(f"conv: input channels {c}, weight {w.shape}, group {group} disagree")
    sh, sw = strides
    dh, dw = dilations
    xp = np.pad(x.astype(np.float64), ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)))
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(1, 2))
    win = win[:, ::sh, ::sw, :, ::dh, ::dw]                       # N,Ho,Wo,C,kh,kw
    ho, wo = win.shape[1], win.shape[2]
    win = win.reshape(n, ho, wo, group, cg, kh, kw)
    wg = w.astype(np.float64).reshape(group, o // group, kh, kw, cg)
    if group == 1:
        y = np.tensordot(win[:, :, :, 0], wg[0], axes=([3, 4, 5], [3, 1, 2]))
    else:
        y = np.einsum("nhwgcij,goijc->nhwgo", win, wg, optimize=True)
    return y.reshape(n, ho, wo, o)


#: the activations a FusedConv may apply to its input (``input_activation``): each of them
#: returns one of its operands (x, 0 or a bound), so the value is the same whether a kernel
#: computes it in float or the reference in X's dtype — there is no rounding to disagree on.
CONV_INPUT_ACTIVATIONS = ("none", "relu", "clip")


def conv_input_activation(attrs: Dict) -> Tuple[str, List[float]]:
    """(``input_activation``, ``input_activation_params``) of a FusedConv's ``attrs``:
    ("none", []) when the node has none; ValueError naming one that is not allowed."""
    name = attrs.get("input_activation", "none")
    if name not in CONV_INPUT_ACTIVATIONS:
        raise ValueError(f"FusedConv: input_activation {name!r} is not one of {CONV_INPUT_ACTIVATIONS}")
    return name, list(attrs.get("input_activation_params", []))


def conv_operands(node) -> Tuple[str, str, Optional[str], Optional[str], str]:
    """Tensor names (X, W, B, Z, Y) of a ``tftrt.FusedConv`` (or ONNX ``Conv``) IR node,
    the optional bias and residual as None when omitted."""
    def optional(i: int) -> Optional[str]:
        return node.inputs[i] if len(node.inputs) > i and node.inputs[i] else None

    return node.inputs[0], node.inputs[1], optional(2), optional(3), node.outputs[0]


@reference_op("tftrt.FusedConv")
def fused_conv(inputs: Sequence[Optional[np.ndarray]], attrs: Dict) -> List[np.ndarray]:
    """``Y = act(conv2d(pad0(in_act(X)), W) + B + Z)`` in NHWC — a cuDNN convolution call at
    run time (a cuBLASLt GEMM for 1×1 convs, a generated kernel for depthwise ones, for
    stems over a few input channels and for half-precision convs over exactly 16).

    Inputs:  ``X`` [N, H, W, C] activations (NHWC);
             ``W`` [O, kH, kW, C/group] weights (cuDNN NHWC filter layout, "OHWI");
             ``B`` [O] bias, optional;
             ``Z`` [N, Ho, Wo, O] residual added before the activation, optional
             (cuDNN's ``conv + z + bias → act`` form).
    Output:  ``Y`` [N, Ho, Wo, O], dtype of ``X``.
    Attrs:   ``strides`` [sH, sW]; ``pads`` [top, left, bottom, right] (ONNX order: begins
             then ends); ``dilations`` [dH, dW]; ``group`` int (C for depthwise);
             ``activation`` / ``activation_params`` (any of :data:`ACTIVATIONS`);
             ``input_activation`` / ``input_activation_params`` (optional, absent meaning
             "none": the conv fusion writes them on the depthwise readers of a ReLU6 1×1
             conv, see :func:`conv_input_activation`). One of
             :data:`CONV_INPUT_ACTIVATIONS`, applied elementwise to ``X`` in ``X``'s dtype
             (clip bounds are values of that dtype, as a Clip node's would be), a NaN
             staying NaN. The padding comes *after* it: ``pad0`` pads ``in_act(X)`` with
             zeros, so padded taps read 0, not ``in_act(0)`` — as when the producer of
             ``X`` applied the activation and the conv zero-padded its output. Only the
             depthwise kernel (``codegen/conv.py``) runs it: cuDNN and cuBLASLt have no
             prologue, and the builder refuses it on any other conv.
    """
    x, w, b, z = (list(inputs) + [None, None])[:4]
    in_act, in_params = conv_input_activation(attrs)
    xa = apply_activation(x, in_act, in_params)
    y = conv2d_nhwc(xa, w, attrs["strides"], attrs["pads"], attrs["dilations"], attrs["group"])
    if b is not None:
        y = y + b.astype(np.float64)
    if z is not None:
        y = y + z.astype(np.float64)
    # activation on the float accumulator, one rounding to the output dtype (the GPU epilogue)
    return [apply_activation(y, attrs["activation"], attrs["activation_params"]).astype(x.dtype)]


# -- tftrt.Pool ------------------------------------------------------------------------

@reference_op("tftrt.Pool")
def pool(inputs: Sequence[np.ndarray], attrs: Dict) -> List[np.ndarray]:
    """ONNX ``MaxPool``/``AveragePool`` semantics on NHWC activations (cuDNN NHWC pooling).

    Input:   ``X`` [N, H, W, C].   Output: ``Y`` [N, Ho, Wo, C], dtype of ``X``.
    Attrs:   ``mode`` "max" | "avg"; ``kernel_shape`` [kH, kW]; ``strides`` [sH, sW];
             ``pads`` [top, left, bottom, right]; ``dilations`` [dH, dW]; ``ceil_mode`` 0/1;
             ``count_include_pad`` 0/1 (avg: whether explicit padding counts in the divisor;
             the extra cells ``ceil_mode`` adds past the padding never count).
    """
    (x,) = inputs
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs["strides"]
    dh, dw = attrs["dilations"]
    pt, pl, pb, pr = attrs["pads"]
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    n, h, w, c = x.shape
    rnd = math.ceil if attrs["ceil_mode"] else math.floor
    ho = int(rnd((h + pt + pb - eh) / sh)) + 1
    wo = int(rnd((w + pl + pr - ew) / sw)) + 1
    if attrs["ceil_mode"]:  # ONNX: the last window must start inside the (padded) input
        ho -= (ho - 1) * sh >= h + pt
        wo -= (wo - 1) * sw >= w + pl
    xb, xr = max(0, (ho - 1) * sh + eh - h - pt - pb), max(0, (wo - 1) * sw + ew - w - pl - pr)
    fill = -np.inf if attrs["mode"] == "max" else 0.0
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb + xb), (pl, pr + xr), (0, 0)),
                constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(1, 2))
    win = win[:, ::sh, ::sw, :, ::dh, ::dw][:, :ho, :wo]
    if attrs["mode"] == "max":
        return [win.max(axis=(-1, -2)).astype(x.dtype)]
    if attrs["mode"] != "avg":
        raise ValueError(f"tftrt.Pool: mode {attrs['mode']!r} is not 'max' or 'avg'")
    inside = np.zeros(xp.shape[1:3])
    if attrs["count_include_pad"]:
        inside[: h + pt + pb, : w + pl + pr] = 1
    else:
        inside[pt:pt + h, pl:pl + w] = 1
    cnt = np.lib.stride_tricks.sliding_window_view(inside, (eh, ew))[::sh, ::sw, ::dh, ::dw]
    cnt = cnt[:ho, :wo].sum(axis=(-1, -2))
    return [(win.sum(axis=(-1, -2)) / cnt[None, :, :, None]).astype(x.dtype)]


# -- tftrt.SpaceToDepth ----------------------------------------------------------------

@reference_op("tftrt.SpaceToDepth")
def space_to_depth(inputs: Sequence[np.ndarray], attrs: Dict) -> List[np.ndarray]:
    """Pad, then fold each ``block``×``block`` patch of pixels into channels, in NHWC — the
    input of a strided conv rewritten as a stride-1 one (``passes/space_to_depth.py``).

    Input:   ``X`` [N, H, W, C], any float dtype.
    Output:  ``Y`` [N, Hs, Ws, channels] in ``dtype``, with
             ``Y[n, i, j, (p·block + q)·C + c] = Xpad[n, block·i + p, block·j + q, c]`` and
             zeros in channels ``block²·C`` and up; ``Xpad`` is ``X`` with ``top``/``left``
             rows/columns of zeros before it and ``bottom``/``right`` after (a negative
             count drops that many), ``Hs = (H + top + bottom) / block`` (exact).
    Attrs:   ``block`` int ≥ 2; ``pads`` [top, left, bottom, right]; ``channels`` int ≥
             block²·C; ``dtype`` the output dtype (the kernel converts as it copies, with a
             Cast's rounding: values past float16's range become infinities).
    """
    (x,) = inputs
    s = int(attrs["block"])
    top, left, bottom, right = (int(p) for p in attrs["pads"])
    n, h, w, c = x.shape
    if (h + top + bottom) % s or (w + left + right) % s or top < 0 or left < 0:
        raise ValueError(f"tftrt.SpaceToDepth: pads {attrs['pads']} do not make {h}x{w} a multiple of {s}")
    xp = np.pad(x, ((0, 0), (top, max(bottom, 0)), (left, max(right, 0)), (0, 0)))
    xp = xp[:, :h + top + bottom, :w + left + right]
    hs, ws = xp.shape[1] // s, xp.shape[2] // s
    folded = xp.reshape(n, hs, s, ws, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hs, ws, s * s * c)
    out = np.zeros((n, hs, ws, int(attrs["channels"])), np_dtype(attrs["dtype"]))
    out[..., :s * s * c] = folded.astype(np.float32).astype(out.dtype)
    return [out]


# -- tftrt.FusedGemm --------------------------------------------------------------------

@reference_op("tftrt.FusedGemm")
def fused_gemm(inputs: Sequence[Optional[np.ndarray]], attrs: Dict) -> List[np.ndarray]:
    """``Y = act(alpha · op(A) @ op(B) + bias)`` — a cuBLASLt matmul with epilogue.

    Inputs:  ``A`` [..., M, K] (or [..., K, M] with ``trans_a``);
             ``B`` [..., K, Nc] (or [..., Nc, K] with ``trans_b``); batch dims of A and B
             broadcast like ``numpy.matmul`` (a 2-D B with batched A is the common
             "Dense on a sequence" case; a builder may flatten A's batch dims into M);
             ``bias`` [Nc], optional, added along the last axis.
    Output:  ``Y`` [..., M, Nc], dtype of ``A``.
    Attrs:   ``trans_a``, ``trans_b`` (0/1): transpose the last two axes of the operand;
             ``alpha`` float; ``activation`` ∈ :data:`GEMM_ACTIVATIONS`,
             ``activation_params`` ``[]``.
    cuBLASLt's native epilogues are RELU, GELU (the tanh approximation) and their BIAS
    forms; ``gelu_erf`` is the exact erf GELU and needs an epilogue kernel of its own —
    it must not be mapped to cuBLASLt's tanh-approximate GELU.
    """
    a, b, bias = (list(inputs) + [None])[:3]
    if attrs["activation"] not in GEMM_ACTIVATIONS:
        raise ValueError(f"FusedGemm: activation {attrs['activation']!r} is not one of "
                         f"{GEMM_ACTIVATIONS}")
    a64 = np.swapaxes(a, -1, -2) if attrs["trans_a"] else a
    b64 = np.swapaxes(b, -1, -2) if attrs["trans_b"] else b
    y = np.matmul(a64.astype(np.float64), b64.astype(np.float64)) * attrs["alpha"]
    if bias is not None:
        y = y + bias.astype(np.float64)
    return [apply_activation(y, attrs["activation"], attrs["activation_params"]).astype(a.dtype)]


# -- tftrt.FusedElementwise -------------------------------------------------------------

def _ew(arity: int, fn: Callable) -> tuple:
    return arity, fn


#: Attributes an elementwise instruction copies from its ONNX node (all floats).
INSTRUCTION_ATTRS: Dict[str, tuple] = {
    "LeakyRelu": ("alpha",), "Elu": ("alpha",), "HardSigmoid": ("alpha", "beta"), "Selu": ("alpha", "gamma"),
}


def instruction_attrs(op: str, node_attrs: Dict) -> Dict[str, float]:
    """The instruction attributes of ONNX elementwise ``op`` taken from its node's attrs."""
    return {k: float(node_attrs[k]) for k in INSTRUCTION_ATTRS.get(op, ())}


#: op name → (arity, fn(args, instruction) → array). The names are ONNX op names and mean
#: what ONNX means by them; ``Const`` (arity 0) yields the scalar ``instruction["value"]``.
ELEMENTWISE_OPS: Dict[str, tuple] = {
    "Const": _ew(0, lambda a, i: np.asarray(i["value"], dtype=np_dtype(i["dtype"]))),
    "Identity": _ew(1, lambda a, i: a[0]),
    "Add": _ew(2, lambda a, i: a[0] + a[1]),
    "Sub": _ew(2, lambda a, i: a[0] - a[1]),
    "Mul": _ew(2, lambda a, i: a[0] * a[1]),
    "Div": _ew(2, lambda a, i: (a[0] / a[1]) if np_dtype(i["dtype"]).kind in "fV"
               else np.trunc(a[0] / a[1])),
    "Pow": _ew(2, lambda a, i: np.power(a[0], a[1])),
    "Max": _ew(2, lambda a, i: np.maximum(a[0], a[1])),
    "Min": _ew(2, lambda a, i: np.minimum(a[0], a[1])),
    "Neg": _ew(1, lambda a, i: -a[0]),
    "Abs": _ew(1, lambda a, i: np.abs(a[0])),
    "Exp": _ew(1, lambda a, i: np.exp(a[0])),
    "Log": _ew(1, lambda a, i: np.log(a[0])),
    "Sqrt": _ew(1, lambda a, i: np.sqrt(a[0])),
    "Reciprocal": _ew(1, lambda a, i: 1 / a[0]),
    "Floor": _ew(1, lambda a, i: np.floor(a[0])),
    "Ceil": _ew(1, lambda a, i: np.ceil(a[0])),
    "Round": _ew(1, lambda a, i: np.round(a[0])),
    "Sign": _ew(1, lambda a, i: np.sign(a[0])),
    "Sin": _ew(1, lambda a, i: np.sin(a[0])),
    "Cos": _ew(1, lambda a, i: np.cos(a[0])),
    "Tanh": _ew(1, lambda a, i: np.tanh(a[0])),
    "Erf": _ew(1, lambda a, i: _erf(a[0])),
    "Sigmoid": _ew(1, lambda a, i: _sigmoid(a[0])),
    "Relu": _ew(1, lambda a, i: np.maximum(a[0], 0)),
    "Softplus": _ew(1, lambda a, i: np.logaddexp(a[0], 0)),
    "LeakyRelu": _ew(1, lambda a, i: np.where(a[0] >= 0, a[0], a[0] * i["alpha"])),
    "Elu": _ew(1, lambda a, i: np.where(a[0] >= 0, a[0], i["alpha"] * np.expm1(a[0]))),
    "Selu": _ew(1, lambda a, i: i["gamma"] * np.where(a[0] > 0, a[0], i["alpha"] * np.expm1(a[0]))),
    "Softsign": _ew(1, lambda a, i: a[0] / (1 + np.abs(a[0]))),
    "HardSigmoid": _ew(1, lambda a, i: np.clip(a[0] * i["alpha"] + i["beta"], 0, 1)),
    "Clip": _ew(3, lambda a, i: np.minimum(np.maximum(a[0], a[1]), a[2])),
    "Cast": _ew(1, lambda a, i: a[0]),  # the conversion is the result dtype itself
    "Where": _ew(3, lambda a, i: np.where(a[0], a[1], a[2])),
    "Equal": _ew(2, lambda a, i: a[0] == a[1]),
    "Less": _ew(2, lambda a, i: a[0] < a[1]),
    "LessOrEqual": _ew(2, lambda a, i: a[0] <= a[1]),
    "Greater": _ew(2, lambda a, i: a[0] > a[1]),
    "GreaterOrEqual": _ew(2, lambda a, i: a[0] >= a[1]),
    "Not": _ew(1, lambda a, i: np.logical_not(a[0])),
    "And": _ew(2, lambda a, i: np.logical_and(a[0], a[1])),
    "Or": _ew(2, lambda a, i: np.logical_or(a[0], a[1])),
}


def check_program(program: Sequence[Dict], n_inputs: int, outputs: Sequence[str]) -> None:
    """Validate a FusedElementwise program; raise ValueError naming the bad instruction."""
    for k, ins in enumerate(program):
        op = ins.get("op")
        if op not in ELEMENTWISE_OPS:
            raise ValueError(f"instruction v{k}: unknown elementwise op {op!r}")
        arity = ELEMENTWISE_OPS[op][0]
        if len(ins["args"]) != arity:
            raise ValueError(f"instruction v{k} ({op}) takes {arity} args, got {ins['args']}")
        for ref in ins["args"]:
            _check_ref(ref, n_inputs, k, f"instruction v{k} ({op})")
    for ref in outputs:
        _check_ref(ref, n_inputs, len(program), "program outputs")


_REF = re.compile(r"(in|v)(\d+)")


def _check_ref(ref: str, n_inputs: int, n_values: int, where: str) -> None:
    m = _REF.fullmatch(ref)
    if m is None:
        raise ValueError(f"{where}: bad operand reference {ref!r} (want 'in<k>' or 'v<k>')")
    if int(m.group(2)) >= (n_inputs if m.group(1) == "in" else n_values):
        raise ValueError(f"{where}: operand {ref!r} is out of range")


@reference_op("tftrt.FusedElementwise")
def fused_elementwise(inputs: Sequence[np.ndarray], attrs: Dict) -> List[np.ndarray]:
    """A DAG of elementwise ops with NumPy broadcasting, run as ONE kernel.

    Inputs:  any number of tensors; all broadcast (NumPy/ONNX multidirectional rules) to
             the output shape ``S`` (the broadcast of every input shape).
    Outputs: one or more tensors, each of shape ``S`` (a pass only exposes values of the
             full shape), dtypes as their instructions say.
    Attrs:   ``program``: list of instructions, in order; instruction ``k`` defines value
             ``v<k>`` and is a dict ``{"op": str, "args": [ref...], "dtype": str, ...}``:
               - ``op`` ∈ :data:`ELEMENTWISE_OPS` (ONNX meaning, e.g. ``Clip`` takes
                 ``[x, min, max]``, ``Where`` takes ``[cond, a, b]``);
               - each ``ref`` is ``"in<j>"`` (node input j, read at the broadcast index)
                 or ``"v<j>"`` with ``j < k`` — straight-line SSA, no control flow;
               - ``dtype`` is the result dtype (for ``Cast`` it is the target type;
                 comparisons give ``bool``);
               - ``Const`` carries ``"value"`` (a Python scalar: an immediate in CUDA C);
                 ``LeakyRelu`` and ``Elu`` carry ``"alpha"``; ``HardSigmoid``
                 ``"alpha"``/``"beta"``; ``Selu`` ``"alpha"``/``"gamma"``.
             ``outputs``: list of refs, one per node output, in order.
    A code generator emits, per output element: one load per input (broadcast index),
    one C expression per instruction, one store per output.
    Half precision: float16/bfloat16 values (inputs and instructions) are computed in
    float32 and rounded to their dtype only where an output is stored; a half ``Const``
    is its value rounded (and clamped, see ``ir.saturate_cast``) to that dtype.
    """
    program, outputs = attrs["program"], attrs["outputs"]
    check_program(program, len(inputs), outputs)
    shape = np.broadcast_shapes(*[np.shape(x) for x in inputs]) if inputs else ()
    values: Dict[str, np.ndarray] = {f"in{j}": _widen(np.asarray(x)) for j, x in enumerate(inputs)}
    for k, ins in enumerate(program):
        fn = ELEMENTWISE_OPS[ins["op"]][1]
        args = [values[r] for r in ins["args"]]
        dtype = np_dtype(ins["dtype"])
        with np.errstate(all="ignore"):  # inf/nan propagate exactly as on the GPU
            if ins["op"] == "Const" and dtype in _HALF:  # the immediate is the (clamped) half value
                value = saturate_cast(ins["value"], ins["dtype"])
            else:
                value = np.asarray(fn(args, ins))
            # a half value stays float32 until stored, as in the kernel (only Const is rounded)
            values[f"v{k}"] = value.astype(np.float32) if dtype in _HALF and ins["op"] != "Const" \
                else _widen(value.astype(dtype, copy=False))
    result = []
    for r in outputs:
        dtype = _ref_dtype(r, program, inputs)
        result.append(np.broadcast_to(values[r].astype(dtype, copy=False), shape).copy())  # copy: 0-d stays 0-d
    return result


_HALF = (np.dtype(np.float16), np_dtype("bfloat16"))


def _widen(x: np.ndarray) -> np.ndarray:
    """Half values as float32: a generated kernel computes in float and rounds when it stores."""
    return x.astype(np.float32) if x.dtype in _HALF else x


def _ref_dtype(ref: str, program: Sequence[Dict], inputs: Sequence[np.ndarray]) -> np.dtype:
    return np_dtype(program[int(ref[1:])]["dtype"]) if ref.startswith("v") else np.asarray(inputs[int(ref[2:])]).dtype


# -- tftrt.LayerNorm --------------------------------------------------------------------

@reference_op("tftrt.LayerNorm")
def layer_norm(inputs: Sequence[Optional[np.ndarray]], attrs: Dict) -> List[np.ndarray]:
    """Last-axis layer normalisation with an optional fused residual add on the input.

    Inputs:  ``X`` [..., D]; ``scale`` [D]; ``bias`` [D] (optional);
             ``R`` residual, same shape as X (optional).
    Outputs: ``Y`` [..., D] = ``(S - mean(S)) / sqrt(var(S) + epsilon) * scale + bias`` with
             ``S = X + R`` (or ``X``); mean/var over the last axis, biased variance,
             accumulated in float32 whatever the I/O dtype;
             optional second output ``S`` (present when the pre-norm sum is consumed
             elsewhere, e.g. pre-LN transformers).
    Attrs:   ``epsilon`` float; ``axis`` = -1 (the only axis supported, kept explicit);
             ``sum_output`` 0/1: whether the node has the second output ``S``.
    """
    x, scale, bias, r = (list(inputs) + [None, None])[:4]
    if attrs["axis"] != -1:
        raise ValueError(f"LayerNorm: axis {attrs['axis']} unsupported (only -1)")
    s = x if r is None else (x + r).astype(x.dtype)
    s32 = s.astype(np.float32)
    mean = s32.mean(axis=-1, keepdims=True)
    var = np.square(s32 - mean).mean(axis=-1, keepdims=True)
    y = (s32 - mean) / np.sqrt(var + np.float32(attrs["epsilon"])) * scale.astype(np.float32)
    if bias is not None:
        y = y + bias.astype(np.float32)
    return [y.astype(x.dtype), s] if attrs["sum_output"] else [y.astype(x.dtype)]


# -- tftrt.Attention --------------------------------------------------------------------

@reference_op("tftrt.Attention")
def attention(inputs: Sequence[Optional[np.ndarray]], attrs: Dict) -> List[np.ndarray]:
    """Scaled dot-product attention ``softmax(Q·Kᵀ·scale + mask) · V`` on batched matrices.

    Inputs:  ``Q`` [..., Sq, D];
             ``K`` [..., Sk, D], or [..., D, Sk] when ``k_transposed`` = 1 (the form einsum
             lowerings produce);
             ``V`` [..., Sk, Dv];
             ``mask`` additive, broadcastable to [..., Sq, Sk] (optional).
             Leading (batch/head) dims of Q, K, V are equal — e.g. [B*H] or [B, H].
    Output:  ``O`` [..., Sq, Dv], dtype of Q.
    Attrs:   ``scale`` float; ``k_transposed`` 0/1; ``layout`` (optional, below).
    The softmax is over the last axis, computed in float32 with max subtraction (what a
    flash-attention style kernel does); a builder may reshape the leading dims freely.

    ``layout`` (written by the ``attention_layout`` pass, so that the kernel reads the
    projections and writes the output in the GEMMs' [N, S, H, D] memory order instead of
    behind head split/merge transposes) makes every operand a strided view of its tensor's
    flat row-major memory:

        {"dims": [B, H, Sq, Sk, D, Dv],
         "q": [sb, sh, ss, sd], "k": [...], "v": [...], "o": [...],
         "shapes": {"q": shape, "k": shape, "v": shape, "o": shape},
         "offsets": {"q": oq, "k": ok, "v": ov}}          (optional; 0 when absent)

    Element (b, h, s, d) of the logical [B, H, S, D] operand (Q: [B, H, Sq, D], K:
    [B, H, Sk, D] — ``k_transposed`` is then ignored —, V: [B, H, Sk, Dv], O:
    [B, H, Sq, Dv]) lives at flat element ``offset + b·sb + h·sh + s·ss + d·sd`` of its
    tensor (Q, K and V may then be one tensor: the ``qkv_merge`` pass's merged projection). Dims
    and strides are IR dims (ints or symbolic expressions); ``shapes`` holds each operand
    tensor's IR shape, from which the symbols are bound. O's views cover its tensor exactly
    once (the output is ``shapes["o"]``, every element written). The mask then broadcasts
    to [B, H, Sq, Sk].
    """
    q, k, v, mask = (list(inputs) + [None])[:4]
    layout = attrs.get("layout")
    if layout is not None:
        q, k, v, o_shape, o_view = _attention_views(q, k, v, layout)
    kt = k if attrs["k_transposed"] and layout is None else np.swapaxes(k, -1, -2)
    s = np.matmul(q.astype(np.float64), kt.astype(np.float64)) * attrs["scale"]
    if mask is not None:
        s = s + mask.astype(np.float64)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    o = np.matmul(p, v.astype(np.float64)).astype(q.dtype)
    if layout is None:
        return [o]
    out = np.full(o_shape, np.nan, q.dtype)
    o_view(out)[...] = o
    return [out]


def _attention_views(q: np.ndarray, k: np.ndarray, v: np.ndarray, layout: Dict):
    """Q, K, V as their [B, H, S, D] strided views, the output's shape and a function giving
    the O view of an output array (see ``attention``'s ``layout``)."""
    env: Dict[str, int] = {}
    for name, x in (("q", q), ("k", k), ("v", v)):
        symbolic.bind(layout["shapes"][name], x.shape, env, what=f"attention layout {name!r}")
    b, h, sq, sk, d, dv = (symbolic.evaluate(x, env) for x in layout["dims"])
    o_shape = tuple(symbolic.evaluate(x, env) for x in layout["shapes"]["o"])

    offsets = layout.get("offsets", {})

    def view(x: np.ndarray, name: str, shape) -> np.ndarray:
        strides = [symbolic.evaluate(st, env) for st in layout[name]]
        offset = int(offsets.get(name, 0))
        last = offset + sum((n - 1) * st for n, st in zip(shape, strides))
        if min(strides) < 0 or offset < 0 or (min(shape) > 0 and last >= x.size):
            raise ValueError(f"attention layout {name!r}: strides {strides} from offset {offset} of a {shape} "
                             f"view reach past the {x.size} elements of its tensor")
        flat = np.ascontiguousarray(x).reshape(-1)[offset:]
        return as_strided(flat, shape, [st * flat.itemsize for st in strides], writeable=name == "o")

    return (view(q, "q", (b, h, sq, d)), view(k, "k", (b, h, sk, d)), view(v, "v", (b, h, sk, dv)),
            o_shape, lambda out: view(out, "o", (b, h, sq, dv)))
