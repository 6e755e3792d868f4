"""Fused elementwise kernels: a straight-line program over broadcast inputs, one pass over memory.

Why one emitter for every elementwise op: a single ONNX op (``Add``, ``Relu``, ``Cast``...)
is just a one-instruction ``tftrt.FusedElementwise`` program (see ``engine/fused_ops.py``),
so fused and unfused nodes share the broadcasting, indexing and vectorisation logic.

Indexing: dims of the output where every input is either present or broadcast alike are
coalesced, so a bias add over NHWC becomes ``[N*H*W, C]`` and a same-shape add one flat
dim. Inputs are then *full* (offset = element index), *scalar* (offset 0) or *indexed*
(offset from the unravelled coordinates). Constant scalar inputs are inlined as literals.

Vectorisation: when every input and output has the same float width (float32, or the
2-byte half types) and the innermost coalesced dim is a multiple of the vector length (or
the kernel is one flat dim), each thread handles 16 bytes per tensor (4 floats or 8
halves) with ``tl_vec`` loads/stores when every vector pointer is 16-byte aligned, and
falls back to scalar code at the tail.

Half precision: values are loaded into float (``compute_type``), every instruction runs
in float, and each output is rounded once when stored — the semantics
``fused_ops.fused_elementwise`` gives the reference executor.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tftrt_lite.codegen.kernel import (
    FLOAT_DTYPES, Dim, KernelSpec, KernelWriter, c_literal, c_type, compute_type, dim_mul, dim_prod,
    emitter, grid_1d, shape_of, unravel, vector_length)
from tftrt_lite.engine import ir
from tftrt_lite.engine.fused_ops import ELEMENTWISE_OPS, check_program, instruction_attrs
from tftrt_lite.errors import UnsupportedOpError

BLOCK = 256

_UNARY_FN = {
    "Exp": "tl_exp", "Log": "tl_log", "Sqrt": "tl_sqrt", "Floor": "tl_floor", "Ceil": "tl_ceil",
    "Round": "tl_rint", "Sin": "tl_sin", "Cos": "tl_cos", "Tanh": "tl_tanh", "Erf": "tl_erf",
    "Sigmoid": "tl_sigmoid", "Softplus": "tl_softplus", "Abs": "tl_abs", "Sign": "tl_sign",
}
_BINARY_OP = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "Equal": "==", "Less": "<",
              "LessOrEqual": "<=", "Greater": ">", "GreaterOrEqual": ">=", "And": "&&", "Or": "||"}


def instruction_c(ins: Dict, args: Sequence[str]) -> str:
    """The C expression of one program instruction over already-computed operands."""
    op, dt = ins["op"], ins["dtype"]
    ct = compute_type(dt)
    if op == "Const":
        return c_literal(ins["value"], dt)
    if op in ("Identity", "Cast"):
        return f"({ct})({args[0]})"
    if op in _BINARY_OP:
        return f"({ct})({args[0]} {_BINARY_OP[op]} {args[1]})"
    if op in _UNARY_FN:
        return f"({ct}){_UNARY_FN[op]}({args[0]})"
    if op == "Pow":
        return f"({ct})tl_pow({args[0]}, ({ct}){args[1]})"
    if op == "Max":
        return f"tl_max<{ct}>({args[0]}, {args[1]})"
    if op == "Min":
        return f"tl_min<{ct}>({args[0]}, {args[1]})"
    if op == "Neg":
        return f"({ct})(-{args[0]})"
    if op == "Reciprocal":
        return f"({ct})({ct}(1) / {args[0]})"
    if op == "Relu":
        return f"({args[0]} < {ct}(0) ? {ct}(0) : {args[0]})"
    if op == "LeakyRelu":
        return f"({args[0]} >= {ct}(0) ? {args[0]} : ({ct})({args[0]} * {c_literal(ins['alpha'], dt)}))"
    if op == "Elu":
        return f"({args[0]} >= {ct}(0) ? {args[0]} : ({ct})({c_literal(ins['alpha'], dt)} * (tl_exp({args[0]}) - {ct}(1))))"
    if op == "Selu":
        neg = f"{c_literal(ins['alpha'], dt)} * (tl_exp({args[0]}) - {ct}(1))"
        return f"({ct})({c_literal(ins['gamma'], dt)} * ({args[0]} > {ct}(0) ? {args[0]} : {neg}))"
    if op == "Softsign":
        return f"({ct})({args[0]} / ({ct}(1) + tl_abs({args[0]})))"
    if op == "HardSigmoid":
        lin = f"({args[0]} * {c_literal(ins['alpha'], dt)} + {c_literal(ins['beta'], dt)})"
        return f"tl_min<{ct}>(tl_max<{ct}>({lin}, {ct}(0)), {ct}(1))"
    if op == "Clip":
        return f"tl_min<{ct}>(tl_max<{ct}>({args[0]}, {args[1]}), {args[2]})"
    if op == "Where":
        return f"({args[0]} ? {args[1]} : {args[2]})"
    if op == "Not":
        return f"(!{args[0]})"
    raise UnsupportedOpError(f"elementwise op {op!r} has no CUDA C form")


def program_c(program: Sequence[Dict], inputs: Sequence[str], prefix: str) -> Tuple[List[str], List[str]]:
    """C statements defining ``{prefix}v<k>`` for each instruction; returns (lines, value names)."""
    lines: List[str] = []
    names: List[str] = []
    for k, ins in enumerate(program):
        args = [inputs[int(r[2:])] if r.startswith("in") else names[int(r[1:])] for r in ins["args"]]
        name = f"{prefix}v{k}"
        lines.append(f"const {compute_type(ins['dtype'])} {name} = {instruction_c(ins, args)};")
        names.append(name)
    return lines, names


def _resolve(ref: str, inputs: Sequence[str], names: Sequence[str]) -> str:
    return inputs[int(ref[2:])] if ref.startswith("in") else names[int(ref[1:])]


# --------------------------------------------------------------------------- broadcasting
def _broadcast_flags(out_shape: Sequence[Dim], in_shape: Sequence[Dim], what: str) -> List[bool]:
    """Per output dim: does this input vary along it (True) or broadcast (False)."""
    if len(in_shape) > len(out_shape):
        raise UnsupportedOpError(f"{what}: input rank {len(in_shape)} exceeds output rank {len(out_shape)}")
    padded = [1] * (len(out_shape) - len(in_shape)) + list(in_shape)
    flags = []
    for o, i in zip(out_shape, padded):
        if i == o:
            flags.append(o != 1)
        elif i == 1:
            flags.append(False)
        else:
            raise UnsupportedOpError(f"{what}: input shape {tuple(in_shape)} does not broadcast to {tuple(out_shape)}")
    return flags


def coalesce(out_shape: Sequence[Dim], flags: Sequence[Sequence[bool]]) -> Tuple[List[Dim], List[List[bool]]]:
    """Drop size-1 dims and merge neighbours along which every input behaves alike."""
    keep = [d for d in range(len(out_shape)) if out_shape[d] != 1]
    dims: List[Dim] = []
    merged: List[List[bool]] = [[] for _ in flags]
    for d in keep:
        col = [f[d] for f in flags]
        if dims and all(m[-1] == c for m, c in zip(merged, col)):
            dims[-1] = dim_mul(dims[-1], out_shape[d])
        else:
            dims.append(out_shape[d])
            for m, c in zip(merged, col):
                m.append(c)
    return dims, merged


def emit_elementwise(graph: ir.Graph, node: ir.Node, inputs: Sequence[str], outputs: Sequence[str],
                     program: Sequence[Dict], out_refs: Sequence[str], inplace: bool = False) -> KernelSpec:
    """One kernel computing ``program`` over broadcast ``inputs`` into ``outputs``.

    With ``inplace`` the single input and single output are the same tensor (an epilogue
    applied after a library call) and get one read-write pointer.
    """
    check_program(program, len(inputs), out_refs)
    out_shape = shape_of(graph, outputs[0], node)
    for o in outputs[1:]:
        if shape_of(graph, o, node) != out_shape:
            raise UnsupportedOpError(f"node {node.name!r}: elementwise outputs differ in shape")
    what = f"node {node.name!r} ({node.op})"
    w = KernelWriter("ew", node)

    # Inline constant scalars; the rest become buffers.
    literal: Dict[int, str] = {}
    loaded: List[int] = []
    for j, t in enumerate(inputs):
        value = graph.const(t)
        if value is not None and value.size == 1:
            literal[j] = c_literal(value.reshape(-1)[0].item(), ir.dtype_name(value.dtype))
        else:
            loaded.append(j)
    flags = [_broadcast_flags(out_shape, shape_of(graph, inputs[j], node), what) for j in loaded]
    dims, present = coalesce(out_shape, flags)
    kind = {}
    for j, p in zip(loaded, present):
        kind[j] = "full" if all(p) else "scalar" if not any(p) else "indexed"

    in_dtypes = {j: graph.tensor(inputs[j]).dtype for j in loaded}
    out_dtypes = [graph.tensor(o).dtype for o in outputs]
    if inplace:
        if len(inputs) != 1 or len(outputs) != 1 or inputs[0] != outputs[0] or kind.get(0) != "full":
            raise ValueError(f"{what}: an in-place kernel reads and writes exactly one full tensor")
        ptr = w.buffer(outputs[0], out_dtypes[0], writable=True)
        in_ptr = {0: ptr}
        out_ptr = [ptr]
    else:
        in_ptr = {j: w.buffer(inputs[j], in_dtypes[j]) for j in loaded}
        out_ptr = [w.buffer(o, dt, writable=True) for o, dt in zip(outputs, out_dtypes)]

    n = w.dim(dim_prod(dims)) if dims else "1LL"
    coords = [f"c{i}" for i in range(len(dims))]
    offsets: Dict[int, str] = {}
    for j, p in zip(loaded, present):
        if kind[j] == "indexed":
            terms, factors = [], []
            for i in range(len(dims) - 1, -1, -1):
                if p[i]:
                    terms.append(" * ".join([coords[i]] + [w.dim(dims[f]) for f in factors]))
                    factors.append(i)
            offsets[j] = " + ".join(reversed(terms))
    needs_coords = any(k == "indexed" for k in kind.values())
    c_dims = ["unused"] + [w.dim(d) for d in dims[1:]] if needs_coords else []

    # Vector width: 16 bytes per access when every input and output has one float width.
    vec = vector_length(list(in_dtypes.values()) + out_dtypes)
    inner_ok = len(dims) <= 1 or (isinstance(dims[-1], int) and dims[-1] % vec == 0)
    vec = vec if inner_ok and dims else 1

    def scalar_body(e: str, indent: str) -> List[str]:
        lines = []
        if needs_coords:
            lines.append(unravel(e, c_dims, coords, indent))
        vals = []
        for j in range(len(inputs)):
            if j in literal:
                vals.append(literal[j])
                continue
            off = {"full": e, "scalar": "0", "indexed": offsets.get(j)}[kind[j]]
            lines.append(f"{indent}const {compute_type(in_dtypes[j])} a{j} = {in_ptr[j]}[{off}];")
            vals.append(f"a{j}")
        body, names = program_c(program, vals, "")
        lines += [indent + b for b in body]
        for ptr, ref in zip(out_ptr, out_refs):
            lines.append(f"{indent}{ptr}[{e}] = {_resolve(ref, vals, names)};")
        return lines

    lines = [f"  const i64 n = {n};",
             f"  const i64 base = ((i64)blockIdx.x * {BLOCK} + threadIdx.x) * {vec};",
             "  if (base >= n) return;"]
    if vec == 1:
        lines += scalar_body("base", "  ")
    else:
        vec_inputs = [j for j in loaded if kind[j] == "full" or
                      (kind[j] == "indexed" and present[loaded.index(j)][-1])]
        ptrs = [in_ptr[j] for j in vec_inputs] + list(out_ptr)
        aligned = " | ".join(f"reinterpret_cast<unsigned long long>({p})" for p in dict.fromkeys(ptrs))
        lines.append(f"  if (base + {vec} <= n && (({aligned}) & 15ULL) == 0) {{")
        if needs_coords:
            lines.append(unravel("base", c_dims, coords, "    "))
        for j in loaded:
            off = {"full": "base", "scalar": "0", "indexed": offsets.get(j)}[kind[j]]
            if j in vec_inputs:
                vt = f"tl_vec<{c_type(in_dtypes[j])}, {vec}>"
                lines.append(f"    const {vt} x{j} = *reinterpret_cast<const {vt}*>({in_ptr[j]} + {off});")
            else:
                lines.append(f"    const {compute_type(in_dtypes[j])} x{j} = {in_ptr[j]}[{off}];")
        for k in range(len(outputs)):
            lines.append(f"    tl_vec<{c_type(out_dtypes[k])}, {vec}> o{k};")
        for lane in range(vec):
            vals = [literal[j] if j in literal else
                    (f"(({compute_type(in_dtypes[j])})x{j}.v[{lane}])" if j in vec_inputs else f"x{j}")
                    for j in range(len(inputs))]
            body, names = program_c(program, vals, f"l{lane}_")
            lines.append("    {")
            lines += ["      " + b for b in body]
            for k, ref in enumerate(out_refs):
                lines.append(f"      o{k}.v[{lane}] = {_resolve(ref, vals, names)};")
            lines.append("    }")
        for k, (ptr, dt) in enumerate(zip(out_ptr, out_dtypes)):
            lines.append(f"    *reinterpret_cast<tl_vec<{c_type(dt)}, {vec}>*>({ptr} + base) = o{k};")
        lines.append("  } else {")
        lines.append(f"    for (i64 e = base; e < n && e < base + {vec}; ++e) {{")
        lines += scalar_body("e", "      ")
        lines.append("    }")
        lines.append("  }")
    total = dim_prod(dims) if dims else 1
    return w.finish("\n".join(lines), grid_1d(total, BLOCK * vec), (BLOCK, 1, 1))


# --------------------------------------------------------------------------- ONNX ops as programs
def _dtype_bounds(dtype: str) -> Tuple[float, float]:
    if dtype in FLOAT_DTYPES:
        return -math.inf, math.inf
    if dtype == "bool":
        return 0, 1
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def onnx_program(graph: ir.Graph, node: ir.Node) -> Tuple[List[Dict], List[str], List[str]]:
    """A single ONNX elementwise node as (program, out refs, input tensors)."""
    dt = graph.tensor(node.outputs[0]).dtype
    op = node.op
    ins = [i for i in node.inputs]
    refs = [f"in{j}" for j in range(len(ins))]
    if op in ("Max", "Min", "Sum", "Mean"):
        base = {"Sum": "Add", "Mean": "Add"}.get(op, op)
        program = []
        acc = refs[0]
        for r in refs[1:]:
            program.append({"op": base, "args": [acc, r], "dtype": dt})
            acc = f"v{len(program) - 1}"
        if op == "Mean":
            program.append({"op": "Const", "args": [], "dtype": dt, "value": float(len(refs))})
            program.append({"op": "Div", "args": [acc, f"v{len(program) - 1}"], "dtype": dt})
        if not program:
            program.append({"op": "Identity", "args": [acc], "dtype": dt})
        return program, [f"v{len(program) - 1}"], ins
    if op == "Clip":
        lo, hi = _dtype_bounds(dt)
        program, args = [], [refs[0]]
        present = [i for i in ins[1:3]] + [""] * (3 - len(ins))
        inputs = [ins[0]]
        for k, t in enumerate(present[:2]):
            if t:
                inputs.append(t)
                args.append(f"in{len(inputs) - 1}")
            else:
                program.append({"op": "Const", "args": [], "dtype": dt, "value": (lo, hi)[k]})
                args.append(f"v{len(program) - 1}")
        program.append({"op": "Clip", "args": args, "dtype": dt})
        return program, [f"v{len(program) - 1}"], inputs
    if op == "PRelu":
        program = [
            {"op": "Const", "args": [], "dtype": dt, "value": 0.0},
            {"op": "Less", "args": ["in0", "v0"], "dtype": "bool"},
            {"op": "Mul", "args": ["in0", "in1"], "dtype": dt},
            {"op": "Where", "args": ["v1", "v2", "in0"], "dtype": dt},
        ]
        return program, ["v3"], ins
    if op == "Expand":
        return [{"op": "Identity", "args": ["in0"], "dtype": dt}], ["v0"], ins[:1]
    if op in ELEMENTWISE_OPS and op != "Const":
        ins_dict = {"op": op, "args": refs[:ELEMENTWISE_OPS[op][0]], "dtype": dt,
                    **instruction_attrs(op, node.attrs)}
        return [ins_dict], ["v0"], ins[:ELEMENTWISE_OPS[op][0]]
    raise UnsupportedOpError(f"op {op!r} (node {node.name!r}) is not an elementwise op")


ONNX_ELEMENTWISE_OPS = tuple(sorted(
    {op for op in ELEMENTWISE_OPS if op not in ("Const", "Identity")} | {"Sum", "Mean", "PRelu", "Expand"}))


@emitter(*ONNX_ELEMENTWISE_OPS)
def _emit_onnx(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    program, out_refs, inputs = onnx_program(graph, node)
    return [emit_elementwise(graph, node, inputs, node.outputs[:1], program, out_refs)]


@emitter("tftrt.FusedElementwise")
def _emit_fused(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    return [emit_elementwise(graph, node, node.inputs, node.outputs,
                             node.attrs["program"], node.attrs["outputs"])]


def emit_copy(graph: ir.Graph, node: ir.Node, src: str, dst: str) -> KernelSpec:
    """A flat copy of ``src`` into ``dst`` (same element count, any shapes): Identity nodes,
    and graph outputs that would otherwise alias an input, a constant or a view."""
    dt = graph.tensor(dst).dtype
    n_d = dim_prod(shape_of(graph, dst, node))
    w = KernelWriter("copy", node)
    s_ptr, d_ptr = w.buffer(src, dt), w.buffer(dst, dt, writable=True)
    body = (f"  const i64 e = (i64)blockIdx.x * {BLOCK} + threadIdx.x;\n"
            f"  if (e < {w.dim(n_d)}) {d_ptr}[e] = {s_ptr}[e];")
    return w.finish(body, grid_1d(n_d, BLOCK), (BLOCK, 1, 1))


@emitter("Identity")
def _emit_identity(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    return [emit_copy(graph, node, node.inputs[0], node.outputs[0])]


#: activation name (``fused_ops.ACTIVATIONS``) → program over ``in0``.
def activation_program(name: str, params: Sequence[float], dtype: str) -> List[Dict]:
    def const(v: float) -> Dict:
        return {"op": "Const", "args": [], "dtype": dtype, "value": float(v)}

    if name == "relu":
        return [{"op": "Relu", "args": ["in0"], "dtype": dtype}]
    if name == "clip":
        return [const(params[0]), const(params[1]), {"op": "Clip", "args": ["in0", "v0", "v1"], "dtype": dtype}]
    if name == "leaky_relu":
        return [{"op": "LeakyRelu", "args": ["in0"], "dtype": dtype, "alpha": float(params[0])}]
    if name == "sigmoid":
        return [{"op": "Sigmoid", "args": ["in0"], "dtype": dtype}]
    if name == "silu":
        return [{"op": "Sigmoid", "args": ["in0"], "dtype": dtype},
                {"op": "Mul", "args": ["in0", "v0"], "dtype": dtype}]
    if name == "tanh":
        return [{"op": "Tanh", "args": ["in0"], "dtype": dtype}]
    if name == "gelu_erf":  # 0.5 * x * (1 + erf(x / sqrt(2))), as fused_ops computes it
        # x * (1/sqrt(2)) is within an ulp of x / sqrt(2) and spares the IEEE division's
        # instruction sequence: over a large FFN activation this kernel is bound by
        # instruction issue, not by memory.
        return [const(1.0 / math.sqrt(2.0)), {"op": "Mul", "args": ["in0", "v0"], "dtype": dtype},
                {"op": "Erf", "args": ["v1"], "dtype": dtype}, const(1.0),
                {"op": "Add", "args": ["v3", "v2"], "dtype": dtype}, const(0.5),
                {"op": "Mul", "args": ["v5", "in0"], "dtype": dtype},
                {"op": "Mul", "args": ["v6", "v4"], "dtype": dtype}]
    if name == "gelu_tanh":  # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
        return [const(0.044715), {"op": "Mul", "args": ["v0", "in0"], "dtype": dtype},
                {"op": "Mul", "args": ["v1", "in0"], "dtype": dtype},
                {"op": "Mul", "args": ["v2", "in0"], "dtype": dtype},
                {"op": "Add", "args": ["in0", "v3"], "dtype": dtype},
                const(math.sqrt(2.0 / math.pi)), {"op": "Mul", "args": ["v5", "v4"], "dtype": dtype},
                {"op": "Tanh", "args": ["v6"], "dtype": dtype}, const(1.0),
                {"op": "Add", "args": ["v8", "v7"], "dtype": dtype}, const(0.5),
                {"op": "Mul", "args": ["v10", "in0"], "dtype": dtype},
                {"op": "Mul", "args": ["v11", "v9"], "dtype": dtype}]
    raise UnsupportedOpError(f"activation {name!r} has no elementwise program")


def emit_activation(graph: ir.Graph, node: ir.Node, tensor: str, name: str,
                    params: Sequence[float]) -> KernelSpec:
    """An in-place kernel applying activation ``name`` to ``tensor`` (a library call's output)."""
    dt = graph.tensor(tensor).dtype
    program = activation_program(name, params, dt)
    return emit_elementwise(graph, node, [tensor], [tensor], program, [f"v{len(program) - 1}"], inplace=True)
