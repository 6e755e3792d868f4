"""What a generated kernel is, and the helpers every emitter builds one with.

Why symbolic dims become kernel parameters: a plan must serve every batch size, so a
kernel's source may only bake in dims that are ints in the IR. Each symbolic dim (or
product of dims) an emitter needs becomes an ``int64`` parameter whose value the
runtime evaluates from the plan's expressions; the launch grid is likewise an
expression (a ceil-div of one) over the same symbols.

Kernel names are derived from a hash of the source, so identical kernels from
different nodes (every ResNet block's residual add) share one compiled entry.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tftrt_lite.engine import ir, symbolic
from tftrt_lite.engine.passes import graph_edit
from tftrt_lite.errors import UnsupportedOpError

Dim = ir.Dim

C_TYPES: Dict[str, str] = {
    "float32": "float", "float64": "double",
    "int8": "signed char", "uint8": "unsigned char", "int16": "short", "uint16": "unsigned short",
    "int32": "int", "uint32": "unsigned int", "int64": "long long", "uint64": "unsigned long long",
    "bool": "bool", "float16": "tl_half", "bfloat16": "tl_bf16",
}
#: The type generated code computes in: half types are loaded, widened to float, and
#: rounded once when stored (what tensor-core kernels and cuBLASLt/cuDNN epilogues do).
COMPUTE_TYPES: Dict[str, str] = {"float16": "float", "bfloat16": "float"}
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")

#: Code every kernel starts with. NVRTC runs without the toolkit headers, so the few
#: helpers generated code needs are defined here; NaN propagation of max/min follows NumPy.
#: ``tl_half``/``tl_bf16`` are 2-byte storage types that convert to and from float with
#: one PTX instruction (round to nearest even), so every expression on them is float math.
PREAMBLE = r"""typedef long long i64;
struct __align__(2) tl_half {
  unsigned short bits;
  tl_half() = default;
  __device__ __forceinline__ tl_half(float f) { asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(f)); }
  __device__ __forceinline__ operator float() const { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits)); return f; }
};
struct __align__(2) tl_bf16 {
  unsigned short bits;
  tl_bf16() = default;
  __device__ __forceinline__ tl_bf16(float f) { asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bits) : "f"(f)); }
  __device__ __forceinline__ operator float() const { return __int_as_float(((unsigned int)bits) << 16); }
};
template <typename T, int N> struct __align__(sizeof(T) * N) tl_vec { T v[N]; };
template <typename T> __device__ __forceinline__ T tl_max(T a, T b) { return (a != a || a > b) ? a : b; }
template <typename T> __device__ __forceinline__ T tl_min(T a, T b) { return (a != a || a < b) ? a : b; }
template <typename T> __device__ __forceinline__ T tl_abs(T a) { return a < T(0) ? -a : a; }
template <typename T> __device__ __forceinline__ T tl_sign(T a) { return a != a ? a : T((a > T(0)) - (a < T(0))); }
__device__ __forceinline__ float tl_exp(float x) { return expf(x); }
__device__ __forceinline__ double tl_exp(double x) { return exp(x); }
__device__ __forceinline__ float tl_log(float x) { return logf(x); }
__device__ __forceinline__ double tl_log(double x) { return log(x); }
__device__ __forceinline__ float tl_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double tl_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float tl_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double tl_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float tl_floor(float x) { return floorf(x); }
__device__ __forceinline__ double tl_floor(double x) { return floor(x); }
__device__ __forceinline__ float tl_ceil(float x) { return ceilf(x); }
__device__ __forceinline__ double tl_ceil(double x) { return ceil(x); }
__device__ __forceinline__ float tl_rint(float x) { return rintf(x); }
__device__ __forceinline__ double tl_rint(double x) { return rint(x); }
__device__ __forceinline__ float tl_sin(float x) { return sinf(x); }
__device__ __forceinline__ double tl_sin(double x) { return sin(x); }
__device__ __forceinline__ float tl_cos(float x) { return cosf(x); }
__device__ __forceinline__ double tl_cos(double x) { return cos(x); }
__device__ __forceinline__ float tl_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double tl_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float tl_erf(float x) { return erff(x); }
__device__ __forceinline__ double tl_erf(double x) { return erf(x); }
__device__ __forceinline__ float tl_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double tl_pow(double x, double y) { return pow(x, y); }
template <typename T> __device__ __forceinline__ T tl_pow(T x, T y) { return T(pow(double(x), double(y))); }
template <typename T> __device__ __forceinline__ T tl_sigmoid(T x) { return T(1) / (T(1) + tl_exp(-x)); }
template <typename T> __device__ __forceinline__ T tl_softplus(T x) { return tl_max(x, T(0)) + tl_log1p(tl_exp(-tl_abs(x))); }
__device__ __forceinline__ float tl_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float tl_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double tl_warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float tl_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
"""


def c_type(dtype: str, node: Optional[ir.Node] = None) -> str:
    """The CUDA C storage type of an IR dtype (pointer element type)."""
    if dtype in C_TYPES:
        return C_TYPES[dtype]
    where = f" (node {node.name!r}, {node.op})" if node is not None else ""
    raise UnsupportedOpError(f"no CUDA type for dtype {dtype!r}{where}")


def compute_type(dtype: str, node: Optional[ir.Node] = None) -> str:
    """The CUDA C type values of ``dtype`` are computed in (float for half types)."""
    return COMPUTE_TYPES.get(dtype) or c_type(dtype, node)


def vector_length(dtypes) -> int:
    """Elements per 16-byte access when every dtype is one float width (4 float32s or
    8 halves), else 1 (mixed widths or non-float types run scalar)."""
    widths = {4 if dt == "float32" else 2 if dt in COMPUTE_TYPES else 0 for dt in dtypes}
    width = widths.pop() if len(widths) == 1 else 0
    return 16 // width if width else 1


def c_literal(value: Union[int, float, bool], dtype: str) -> str:
    """A C literal of ``dtype`` for ``value`` (handles inf/nan for floats)."""
    ct = compute_type(dtype)
    if dtype == "bool":
        return "true" if value else "false"
    if dtype in FLOAT_DTYPES:
        v = float(value)
        if math.isnan(v):
            return f"{ct}(__int_as_float(0x7fc00000))"
        if math.isinf(v):
            return f"{ct}({'-' if v < 0 else ''}tl_inf())"
        if dtype == "float32":  # round as NumPy does when the reference makes the constant
            return float.hex(float(np.float32(v))) + "f"
        if dtype in COMPUTE_TYPES:  # a half constant: its rounded (clamped) value, as a float
            return float.hex(float(np.float32(ir.saturate_cast(v, dtype)))) + "f"
        return f"{ct}({float.hex(v)})"
    if int(value) == -2 ** 63:  # the literal 9223372036854775808LL itself would overflow
        return f"{ct}(-9223372036854775807LL - 1)"
    return f"{ct}({int(value)}LL)"


# --------------------------------------------------------------------------- dim algebra
def dim_mul(a: Dim, b: Dim) -> Dim:
    """Product of two dims in canonical form (an int when static)."""
    return symbolic.mul(a, b)


def dim_add(a: Dim, b: Dim) -> Dim:
    """Sum of two dims (concat offsets, negative slice starts) in canonical form."""
    return symbolic.add(a, b)


def dim_prod(dims: Sequence[Dim]) -> Dim:
    return symbolic.product(dims)


def static_shape(shape: Sequence[Dim]) -> bool:
    return all(isinstance(d, int) for d in shape)


@dataclass(frozen=True)
class LaunchDim:
    """``ceil(numerator / divisor)`` blocks along one grid axis."""

    numerator: Dim
    divisor: int = 1


@dataclass(frozen=True)
class Arg:
    """A kernel parameter: ``buffer`` (tensor name), ``expr`` (a Dim, passed as int64),
    ``i64`` or ``f32`` (immediates)."""

    kind: str
    value: Union[str, int, float]


@dataclass
class KernelSpec:
    """One launch of one generated kernel for one IR node.

    ``variants``: other kernels for the same launch (same arguments, other tiling), which
    the runtime times per input shape against this one, the emitter's choice for shapes it
    has not timed. An emitter offers them where the best tiling depends on the shape.
    """

    name: str
    source: str
    grid: Tuple[LaunchDim, LaunchDim, LaunchDim]
    block: Tuple[int, int, int]
    shared_mem: int
    args: List[Arg]
    node: str
    variants: List["KernelSpec"] = field(default_factory=list)

    def with_variants(self, variants: Sequence["KernelSpec"]) -> "KernelSpec":
        """This spec offering ``variants`` (each must take this spec's arguments; equal
        kernels are dropped)."""
        kept: List[KernelSpec] = []
        for v in variants:
            if v.args != self.args:
                raise ValueError(f"kernel variant {v.name} of node {self.node!r} takes other arguments "
                                 f"than {self.name}")
            if v.name != self.name and all(v.name != k.name for k in kept):
                kept.append(v)
        self.variants = kept
        return self


class KernelWriter:
    """Collects a kernel's parameters (buffers, symbolic dims) while its body is written."""

    def __init__(self, prefix: str, node: ir.Node) -> None:
        self.prefix = prefix
        self.node = node
        self.params: List[str] = []
        self.args: List[Arg] = []
        self._buffers: Dict[Tuple[str, bool], str] = {}
        self._dims: Dict[str, str] = {}

    def buffer(self, tensor: str, dtype: str, writable: bool = False, restrict: bool = True) -> str:
        """The C name of a pointer parameter for ``tensor`` (one parameter per tensor)."""
        key = (tensor, writable)
        if key not in self._buffers:
            name = f"{'out' if writable else 'in'}{sum(1 for k in self._buffers if k[1] == writable)}"
            ct = c_type(dtype, self.node)
            qual = "" if writable else "const "
            self.params.append(f"{qual}{ct}* {'__restrict__ ' if restrict else ''}{name}")
            self.args.append(Arg("buffer", tensor))
            self._buffers[key] = name
        return self._buffers[key]

    def dim(self, d: Dim) -> str:
        """A C expression for dim ``d``: a literal when static, else an int64 parameter."""
        d = symbolic.normalize(d)
        if isinstance(d, int):
            return f"{d}LL"
        key = d
        if key not in self._dims:
            name = f"d{len(self._dims)}"
            self.params.append(f"i64 {name}")
            self.args.append(Arg("expr", key))
            self._dims[key] = name
        return self._dims[key]

    def finish(self, body: str, grid: Sequence[LaunchDim], block: Sequence[int],
               shared_mem: int = 0) -> KernelSpec:
        threads = block[0] * block[1] * block[2]
        text = (f'extern "C" __global__ void __launch_bounds__({threads}) KERNEL_NAME('
                + ", ".join(self.params) + ") {\n" + body.rstrip() + "\n}\n")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        name = f"tl_{self.prefix}_{digest}"
        grid = tuple(grid) + (LaunchDim(1),) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        return KernelSpec(name, PREAMBLE + text.replace("KERNEL_NAME", name), grid, block,
                          shared_mem, list(self.args), self.node.name)


# --------------------------------------------------------------------------- registry
Emitter = Callable[[ir.Graph, ir.Node], List[KernelSpec]]
EMITTERS: Dict[str, Emitter] = {}

#: Ops executed by a library call (cuDNN / cuBLASLt), not by a generated kernel.
LIBRARY_OPS = frozenset({"Conv", "tftrt.FusedConv", "Gemm", "MatMul", "tftrt.FusedGemm"})
#: Ops whose output is the same bytes as their first input: an alias, no kernel (the
#: memory planner's list, so codegen and the arena agree on what owns memory).
VIEW_OPS = frozenset(graph_edit.VIEW_OPS)


def emitter(*ops: str) -> Callable[[Emitter], Emitter]:
    def register(fn: Emitter) -> Emitter:
        for op in ops:
            if op in EMITTERS:
                raise ValueError(f"two kernel emitters registered for {op!r}")
            EMITTERS[op] = fn
        return fn

    return register


def emit_node(graph: ir.Graph, node: ir.Node) -> List[KernelSpec]:
    """The kernels that compute ``node`` (empty for views); library ops are not kernels."""
    if node.op in VIEW_OPS:
        return []
    if node.op in LIBRARY_OPS:
        raise ValueError(f"node {node.name!r} ({node.op}) is a library call, not a generated kernel")
    fn = EMITTERS.get(node.op)
    if fn is None:
        raise UnsupportedOpError(f"no CUDA kernel generator for op {node.op!r} (node {node.name!r})")
    return fn(graph, node)


def shape_of(graph: ir.Graph, tensor: str, node: ir.Node) -> Tuple[Dim, ...]:
    shape = graph.tensor(tensor).shape
    if shape is None:
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}): tensor {tensor!r} has unknown rank")
    return tuple(shape)


def const_ints(graph: ir.Graph, node: ir.Node, index: int, what: str) -> Optional[List[int]]:
    """The int values of constant input ``index`` (None if the input is omitted)."""
    if index >= len(node.inputs) or not node.inputs[index]:
        return None
    value = graph.const(node.inputs[index])
    if value is None:
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}): {what} must be a constant")
    return [int(v) for v in value.reshape(-1)]


def normalize_axis(axis: int, rank: int, node: ir.Node) -> int:
    if not -rank <= axis < rank:
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}): axis {axis} out of range for rank {rank}")
    return axis % rank


def unravel(index: str, dims: Sequence[str], names: Sequence[str], indent: str = "  ") -> str:
    """C statements that split flat ``index`` into coordinates ``names`` (last is fastest)."""
    lines = [f"{indent}i64 rem_ = {index};"]
    for i in range(len(dims) - 1, -1, -1):
        if i == 0:
            lines.append(f"{indent}const i64 {names[i]} = rem_;")
        else:
            lines.append(f"{indent}const i64 {names[i]} = rem_ % {dims[i]}; rem_ /= {dims[i]};")
    return "\n".join(lines)


def contiguous_strides(shape: Sequence[Dim]) -> List[Dim]:
    strides: List[Dim] = []
    acc: Dim = 1
    for d in reversed(shape):
        strides.append(acc)
        acc = dim_mul(acc, d)
    return list(reversed(strides))


def grid_1d(total: Dim, per_block: int) -> Tuple[LaunchDim, LaunchDim, LaunchDim]:
    return (LaunchDim(total, per_block), LaunchDim(1), LaunchDim(1))
