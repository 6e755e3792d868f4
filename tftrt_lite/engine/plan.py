"""The engine plan: the versioned binary contract between the Python builder and the C++ op.

Why a hand-rolled binary format: the C++ runtime must read a plan without Python,
protobuf or JSON on its hot path, and check it before trusting a single offset. The
layout is defined here and mirrored, constant for constant, in
``tftrt_lite/runtime/cc/plan_format.h``; a test parses a plan written here with that
header and compares what it read.

Layout (all integers little-endian)::

    header   magic b"TFTRTLP\\0" | u32 format version | u32 section count | u64 file size
    table    section count x (u32 kind | u64 offset | u64 size)
    sections each 8-byte aligned; WEIGHTS 256-byte aligned (every weight inside it too)

Section payloads (``str`` = u32 length + UTF-8, ``blob`` = u64 length + bytes)::

    SYMBOLS  u32 n, n x (str name | u32 input index | u32 axis)
    EXPRS    u32 n, n x (i64 divisor | u32 rounding | u32 terms | terms x (i64 coeff | u32 k | k x u32 symbol))
    BUFFERS  u32 arena size expr | u32 n, n x (str name | u32 dtype | u32 rank | rank x u32 expr
             | u32 storage | u64 a | u64 b)
    KERNELS  u32 n, n x (str name | str source | str ptx arch | blob ptx | u32 images | images x (str arch | blob cubin))
    STEPS    u32 n, n x (u32 kind | str name | payload of that kind, see ``_write_step``)
    WEIGHTS  packed constants
    GRAPH    UTF-8 JSON of the engine IR graph; constants point into WEIGHTS
    META     UTF-8 JSON: precision, target archs, builder version, stats, names

Expressions are sums of monomials over symbol indices (``N*N*3 + 2*N``), then divided by
``divisor`` rounding down or up: one encoding covers tensor sizes, arena offsets and
ceil-div launch grids, so ONE plan serves every batch size.
"""
from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tftrt_lite.engine import ir
from tftrt_lite.errors import TftrtLiteError

MAGIC = b"TFTRTLP\0"
FORMAT_VERSION = 3
WEIGHT_ALIGNMENT = 256
_SECTION_ALIGNMENT = 8
_HEADER = struct.Struct("<8sIIQ")
_SECTION_ENTRY = struct.Struct("<IQQ")
NONE_INDEX = 0xFFFFFFFF  # "no buffer" in optional buffer fields (bias, residual)


class Section:
    SYMBOLS = 1
    EXPRS = 2
    BUFFERS = 3
    KERNELS = 4
    STEPS = 5
    WEIGHTS = 6
    GRAPH = 7
    META = 8


_SECTION_NAMES = {v: k for k, v in vars(Section).items() if not k.startswith("_")}

#: dtype codes on the wire; the same table is in plan_format.h.
DTYPE_CODES = {name: code for code, name in enumerate(ir.DTYPES)}
_DTYPE_NAMES = {code: name for name, code in DTYPE_CODES.items()}


class Storage:
    """Where a buffer's memory comes from."""
    INPUT = 0    # a = engine input index
    OUTPUT = 1   # a = engine output index
    WEIGHT = 2   # a = byte offset in WEIGHTS, b = byte size
    ARENA = 3    # a = expr index of the byte offset in the scratch arena
    ALIAS = 4    # a = index of the buffer whose memory this one views (same bytes)


class StepKind:
    LAUNCH = 1
    GEMM = 2
    CONV = 3


class ArgKind:
    """A kernel argument: a buffer's device pointer, an int64 expression, or an immediate."""
    BUFFER = 0   # value = buffer index
    EXPR = 1     # value = expr index, passed as int64 (a bare symbol is an expr too)
    I64 = 2      # value = the int64 itself
    F32 = 3      # value = the float32's bits


class Activation:
    """Epilogue activations of gemm/conv steps; p0/p1 are its parameters."""
    NONE = 0
    RELU = 1
    GELU_ERF = 2
    GELU_TANH = 3
    SIGMOID = 4
    TANH = 5
    CLIP = 6         # min(max(x, p0), p1)
    LEAKY_RELU = 7   # x < 0 ? p0 * x : x


class MathMode:
    """How a float32 library step may compute: exactly, or on TF32 tensor cores (as
    TensorFlow does by default). Half-precision steps always use tensor cores."""
    EXACT = 0
    TF32 = 1


class Layout:
    NCHW = 0
    NHWC = 1


class FilterLayout:
    KCRS = 0   # ONNX's (out channels, in channels / groups, kh, kw)
    KRSC = 1   # NHWC convolutions' (out channels, kh, kw, in channels / groups)


class PlanFormatError(TftrtLiteError, ValueError):
    """Plan bytes that are not a plan, of another format version, or inconsistent."""


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class PlanExpr:
    """``(sum of coeff * prod(symbols)) / divisor``, rounded down (or up if ``ceil``).

    ``terms`` is a tuple of ``(coeff, symbol_indices)``; a symbol repeated means a power.
    """

    terms: Tuple[Tuple[int, Tuple[int, ...]], ...]
    divisor: int = 1
    ceil: bool = False

    @staticmethod
    def const(value: int) -> "PlanExpr":
        return PlanExpr(((int(value), ()),) if value else ())

    def evaluate(self, symbols: Sequence[int]) -> int:
        total = 0
        for coeff, syms in self.terms:
            v = coeff
            for s in syms:
                v *= int(symbols[s])
            total += v
        return -((-total) // self.divisor) if self.ceil else total // self.divisor

    @property
    def constant(self) -> Optional[int]:
        """The value when the expression has no symbols, else None."""
        if any(syms for _, syms in self.terms):
            return None
        return self.evaluate(())


@dataclass(frozen=True)
class SymbolBinding:
    """A symbolic dim and where its value is read at run time: ``inputs[input_index].shape[axis]``."""

    name: str
    input_index: int
    axis: int


@dataclass
class BufferDesc:
    """One tensor's memory: dtype, symbolic shape and storage (see :class:`Storage`)."""

    name: str
    dtype: str
    shape: Tuple[PlanExpr, ...]
    storage: int
    a: Union[int, PlanExpr] = 0
    b: int = 0


@dataclass
class KernelImage:
    arch: str
    cubin: bytes


@dataclass
class KernelEntry:
    """A compiled kernel: cubins per arch, plus PTX (of ``ptx_arch``) for newer GPUs."""

    name: str
    source: str
    ptx_arch: str
    ptx: str
    images: List[KernelImage] = field(default_factory=list)


@dataclass
class KernelArg:
    kind: int
    value: Union[int, float, PlanExpr]


@dataclass
class LaunchVariant:
    """Another kernel for a launch step: the same computation on the same arguments, tiled
    differently, with its own launch geometry."""

    kernel: int
    grid: Tuple[PlanExpr, PlanExpr, PlanExpr]
    block: Tuple[int, int, int]
    shared_mem: int


@dataclass
class LaunchStep:
    """One generated kernel launch. ``kernel``/``grid``/``block``/``shared_mem`` are the
    builder's choice; ``variants`` (may be empty) are alternatives the runtime times per
    input shape on its first call, keeping the fastest (``runtime/cc/tactics.h``)."""

    name: str
    kernel: int
    grid: Tuple[PlanExpr, PlanExpr, PlanExpr]
    block: Tuple[int, int, int]
    shared_mem: int
    args: List[KernelArg]
    variants: List[LaunchVariant] = field(default_factory=list)


@dataclass
class GemmStep:
    """Row-major ``D = act(alpha * op(A) @ op(B) + beta * C + bias)``, batched by strides.

    ``lda/ldb/ldc`` are row-major leading dims (elements); a stride of 0 broadcasts that
    operand over the batch. ``c`` (residual) and ``bias`` (length N) are optional
    (``NONE_INDEX``); ``c`` shares D's layout. The runtime maps row-major onto cuBLASLt's
    column-major by computing ``D^T = op(B)^T op(A)^T``.
    """

    name: str
    a: int
    b: int
    d: int
    m: PlanExpr
    n: PlanExpr
    k: PlanExpr
    lda: PlanExpr
    ldb: PlanExpr
    ldd: PlanExpr
    batch: PlanExpr
    stride_a: PlanExpr
    stride_b: PlanExpr
    stride_d: PlanExpr
    trans_a: bool = False
    trans_b: bool = False
    bias: int = NONE_INDEX
    c: int = NONE_INDEX
    dtype: str = "float32"
    compute: str = "float32"
    math: int = MathMode.TF32
    activation: int = Activation.NONE
    act_p0: float = 0.0
    act_p1: float = 0.0
    alpha: float = 1.0
    beta: float = 0.0


@dataclass
class ConvStep:
    """A 2-D convolution for cuDNN: ``y = act(conv(x, w) + bias + beta * residual)``."""

    name: str
    layout: int
    filter_layout: int
    x: int
    w: int
    y: int
    n: PlanExpr
    c: PlanExpr
    h: PlanExpr
    w_in: PlanExpr
    k: PlanExpr
    r: PlanExpr
    s: PlanExpr
    out_h: PlanExpr
    out_w: PlanExpr
    pads: Tuple[int, int, int, int]          # top, left, bottom, right
    strides: Tuple[int, int]
    dilations: Tuple[int, int]
    groups: int
    bias: int = NONE_INDEX
    residual: int = NONE_INDEX
    dtype: str = "float32"
    compute: str = "float32"
    math: int = MathMode.TF32
    activation: int = Activation.NONE
    act_p0: float = 0.0
    act_p1: float = 0.0
    alpha: float = 1.0
    beta: float = 1.0


Step = Union[LaunchStep, GemmStep, ConvStep]


@dataclass
class Plan:
    symbols: List[SymbolBinding]
    buffers: List[BufferDesc]
    arena_size: PlanExpr
    kernels: List[KernelEntry]
    steps: List[Step]
    weights: bytes
    graph_json: str
    meta: Dict[str, Any]


# --------------------------------------------------------------------------- writer
class _Writer:
    def __init__(self) -> None:
        self.parts: List[bytes] = []

    def u32(self, v: int) -> None:
        if not 0 <= v <= 0xFFFFFFFF:
            raise PlanFormatError(f"value {v} does not fit a u32 field of the plan")
        self.parts.append(struct.pack("<I", v))

    def u64(self, v: int) -> None:
        self.parts.append(struct.pack("<Q", v))

    def i64(self, v: int) -> None:
        self.parts.append(struct.pack("<q", v))

    def f32(self, v: float) -> None:
        self.parts.append(struct.pack("<f", v))

    def str(self, s: str) -> None:
        data = s.encode("utf-8")
        self.u32(len(data))
        self.parts.append(data)

    def blob(self, data: bytes) -> None:
        self.u64(len(data))
        self.parts.append(bytes(data))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class _ExprTable:
    """Interns expressions so identical sizes share one EXPRS entry."""

    def __init__(self) -> None:
        self.exprs: List[PlanExpr] = []
        self.index: Dict[PlanExpr, int] = {}

    def __call__(self, e: PlanExpr) -> int:
        if not isinstance(e, PlanExpr):
            raise PlanFormatError(f"expected a PlanExpr, got {e!r}")
        if e not in self.index:
            self.index[e] = len(self.exprs)
            self.exprs.append(e)
        return self.index[e]


def _write_act(w: _Writer, step: Union[GemmStep, ConvStep]) -> None:
    w.u32(DTYPE_CODES[step.dtype])
    w.u32(DTYPE_CODES[step.compute])
    w.u32(step.math)
    w.u32(step.activation)
    w.f32(step.act_p0)
    w.f32(step.act_p1)
    w.f32(step.alpha)
    w.f32(step.beta)


def _write_launch_config(w: _Writer, launch: Union[LaunchStep, LaunchVariant], ex: _ExprTable) -> None:
    w.u32(launch.kernel)
    for g in launch.grid:
        w.u32(ex(g))
    for b in launch.block:
        w.u32(b)
    w.u32(launch.shared_mem)


def _write_step(w: _Writer, step: Step, ex: _ExprTable) -> None:
    if isinstance(step, LaunchStep):
        w.u32(StepKind.LAUNCH)
        w.str(step.name)
        _write_launch_config(w, step, ex)
        w.u32(len(step.args))
        for arg in step.args:
            w.u32(arg.kind)
            if arg.kind == ArgKind.EXPR:
                w.u64(ex(arg.value))
            elif arg.kind == ArgKind.F32:
                w.u64(struct.unpack("<I", struct.pack("<f", arg.value))[0])
            elif arg.kind == ArgKind.I64:
                w.i64(int(arg.value))
            else:
                w.u64(int(arg.value))
        w.u32(len(step.variants))
        for v in step.variants:
            _write_launch_config(w, v, ex)
    elif isinstance(step, GemmStep):
        w.u32(StepKind.GEMM)
        w.str(step.name)
        for b in (step.a, step.b, step.d, step.bias, step.c):
            w.u32(b)
        w.u32(int(step.trans_a))
        w.u32(int(step.trans_b))
        for e in (step.m, step.n, step.k, step.lda, step.ldb, step.ldd,
                  step.batch, step.stride_a, step.stride_b, step.stride_d):
            w.u32(ex(e))
        _write_act(w, step)
    elif isinstance(step, ConvStep):
        w.u32(StepKind.CONV)
        w.str(step.name)
        w.u32(step.layout)
        w.u32(step.filter_layout)
        for b in (step.x, step.w, step.y, step.bias, step.residual):
            w.u32(b)
        for e in (step.n, step.c, step.h, step.w_in, step.k, step.r, step.s, step.out_h, step.out_w):
            w.u32(ex(e))
        for v in (*step.pads, *step.strides, *step.dilations, step.groups):
            w.u32(v)
        _write_act(w, step)
    else:
        raise PlanFormatError(f"unknown step type {type(step).__name__}")


def serialize_plan(plan: Plan) -> bytes:
    """Encode ``plan`` in the binary format described in the module docstring."""
    ex = _ExprTable()

    buffers = _Writer()
    buffers.u32(ex(plan.arena_size))
    buffers.u32(len(plan.buffers))
    for b in plan.buffers:
        buffers.str(b.name)
        buffers.u32(DTYPE_CODES[b.dtype])
        buffers.u32(len(b.shape))
        for d in b.shape:
            buffers.u32(ex(d))
        buffers.u32(b.storage)
        buffers.u64(ex(b.a) if b.storage == Storage.ARENA else int(b.a))
        buffers.u64(b.b)

    steps = _Writer()
    steps.u32(len(plan.steps))
    for s in plan.steps:
        _write_step(steps, s, ex)

    symbols = _Writer()
    symbols.u32(len(plan.symbols))
    for sym in plan.symbols:
        symbols.str(sym.name)
        symbols.u32(sym.input_index)
        symbols.u32(sym.axis)

    exprs = _Writer()
    exprs.u32(len(ex.exprs))
    for e in ex.exprs:
        if e.divisor <= 0:
            raise PlanFormatError(f"expression divisor must be positive, got {e.divisor}")
        exprs.i64(e.divisor)
        exprs.u32(int(e.ceil))
        exprs.u32(len(e.terms))
        for coeff, syms in e.terms:
            exprs.i64(coeff)
            exprs.u32(len(syms))
            for s in syms:
                if s >= len(plan.symbols):
                    raise PlanFormatError(f"expression uses symbol #{s}, plan has {len(plan.symbols)}")
                exprs.u32(s)

    kernels = _Writer()
    kernels.u32(len(plan.kernels))
    for k in plan.kernels:
        kernels.str(k.name)
        kernels.str(k.source)
        kernels.str(k.ptx_arch)
        kernels.blob(k.ptx.encode("utf-8"))
        kernels.u32(len(k.images))
        for img in k.images:
            kernels.str(img.arch)
            kernels.blob(img.cubin)

    payloads = [
        (Section.SYMBOLS, symbols.getvalue()),
        (Section.EXPRS, exprs.getvalue()),
        (Section.BUFFERS, buffers.getvalue()),
        (Section.KERNELS, kernels.getvalue()),
        (Section.STEPS, steps.getvalue()),
        (Section.WEIGHTS, bytes(plan.weights)),
        (Section.GRAPH, plan.graph_json.encode("utf-8")),
        (Section.META, json.dumps(plan.meta, sort_keys=True).encode("utf-8")),
    ]
    pos = _HEADER.size + _SECTION_ENTRY.size * len(payloads)
    table, body = [], []
    for kind, data in payloads:
        align = WEIGHT_ALIGNMENT if kind == Section.WEIGHTS else _SECTION_ALIGNMENT
        pad = -pos % align
        body.append(b"\0" * pad)
        pos += pad
        table.append(_SECTION_ENTRY.pack(kind, pos, len(data)))
        body.append(data)
        pos += len(data)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(payloads), pos)
    return header + b"".join(table) + b"".join(body)


# --------------------------------------------------------------------------- reader
class _Reader:
    def __init__(self, data: memoryview, section: str) -> None:
        self.data = data
        self.pos = 0
        self.section = section

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise PlanFormatError(f"plan section {self.section} is truncated at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self._take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self._take(8))[0]

    def i64(self) -> int:
        return struct.unpack("<q", self._take(8))[0]

    def f32(self) -> float:
        return struct.unpack("<f", self._take(4))[0]

    def str(self) -> str:
        return bytes(self._take(self.u32())).decode("utf-8")

    def blob(self) -> bytes:
        return bytes(self._take(self.u64()))


def read_sections(data: bytes) -> Dict[int, memoryview]:
    """Validate header and section table; return section kind → payload view."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise PlanFormatError(f"plan is {len(view)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, version, count, size = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise PlanFormatError(f"not a tftrt_lite plan: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise PlanFormatError(
            f"plan format version {version} is not supported by this tftrt_lite (reads version "
            f"{FORMAT_VERSION}); rebuild the engine with this version")
    if size != len(view):
        raise PlanFormatError(f"plan header says {size} bytes, got {len(view)} (truncated or padded)")
    table_end = _HEADER.size + count * _SECTION_ENTRY.size
    if table_end > len(view):
        raise PlanFormatError(f"plan section table ({count} entries) runs past the end of the plan")
    sections: Dict[int, memoryview] = {}
    for i in range(count):
        kind, offset, length = _SECTION_ENTRY.unpack_from(view, _HEADER.size + i * _SECTION_ENTRY.size)
        if offset < table_end or offset + length > len(view):
            raise PlanFormatError(f"plan section #{i} (kind {kind}) lies outside the plan: "
                                  f"offset {offset}, size {length}, plan {len(view)} bytes")
        if kind in sections:
            raise PlanFormatError(f"plan has two sections of kind {kind}")
        if kind == Section.WEIGHTS and offset % WEIGHT_ALIGNMENT:
            raise PlanFormatError(f"plan WEIGHTS section at offset {offset} is not {WEIGHT_ALIGNMENT}-byte aligned")
        sections[kind] = view[offset:offset + length]
    missing = [name for kind, name in _SECTION_NAMES.items() if kind not in sections]
    if missing:
        raise PlanFormatError(f"plan lacks section(s) {', '.join(missing)}")
    return sections


def _read_act(r: _Reader) -> Dict[str, Any]:
    return dict(dtype=_DTYPE_NAMES[r.u32()], compute=_DTYPE_NAMES[r.u32()], math=r.u32(), activation=r.u32(),
                act_p0=r.f32(), act_p1=r.f32(), alpha=r.f32(), beta=r.f32())


def _read_launch_config(r: _Reader, exprs: List[PlanExpr]) -> LaunchVariant:
    kernel = r.u32()
    grid = tuple(exprs[r.u32()] for _ in range(3))
    block = tuple(r.u32() for _ in range(3))
    return LaunchVariant(kernel, grid, block, r.u32())


def _read_step(r: _Reader, exprs: List[PlanExpr]) -> Step:
    kind = r.u32()
    name = r.str()
    if kind == StepKind.LAUNCH:
        config = _read_launch_config(r, exprs)
        args = []
        for _ in range(r.u32()):
            akind = r.u32()
            if akind == ArgKind.EXPR:
                args.append(KernelArg(akind, exprs[r.u64()]))
            elif akind == ArgKind.F32:
                args.append(KernelArg(akind, struct.unpack("<f", struct.pack("<I", r.u64() & 0xFFFFFFFF))[0]))
            elif akind == ArgKind.I64:
                args.append(KernelArg(akind, r.i64()))
            elif akind == ArgKind.BUFFER:
                args.append(KernelArg(akind, r.u64()))
            else:
                raise PlanFormatError(f"step {name!r}: unknown kernel argument kind {akind}")
        variants = [_read_launch_config(r, exprs) for _ in range(r.u32())]
        return LaunchStep(name, config.kernel, config.grid, config.block, config.shared_mem, args, variants)
    if kind == StepKind.GEMM:
        a, b, d, bias, c = (r.u32() for _ in range(5))
        trans_a, trans_b = bool(r.u32()), bool(r.u32())
        m, n, k, lda, ldb, ldd, batch, sa, sb, sd = (exprs[r.u32()] for _ in range(10))
        return GemmStep(name, a, b, d, m, n, k, lda, ldb, ldd, batch, sa, sb, sd,
                        trans_a, trans_b, bias, c, **_read_act(r))
    if kind == StepKind.CONV:
        layout, flayout = r.u32(), r.u32()
        x, w, y, bias, residual = (r.u32() for _ in range(5))
        dims = [exprs[r.u32()] for _ in range(9)]
        ints = [r.u32() for _ in range(9)]
        return ConvStep(name, layout, flayout, x, w, y, *dims, pads=tuple(ints[0:4]),
                        strides=tuple(ints[4:6]), dilations=tuple(ints[6:8]), groups=ints[8],
                        bias=bias, residual=residual, **_read_act(r))
    raise PlanFormatError(f"step {name!r} has unknown kind {kind}")


def deserialize_plan(data: bytes) -> Plan:
    """Decode plan bytes; raises :class:`PlanFormatError` naming what is wrong."""
    sec = read_sections(data)
    try:
        return _decode_sections(sec)
    except (IndexError, KeyError) as e:
        raise PlanFormatError(f"plan refers to a table entry that does not exist: {e!r}") from None


def _decode_sections(sec: Dict[int, memoryview]) -> Plan:

    r = _Reader(sec[Section.SYMBOLS], "SYMBOLS")
    symbols = [SymbolBinding(r.str(), r.u32(), r.u32()) for _ in range(r.u32())]

    r = _Reader(sec[Section.EXPRS], "EXPRS")
    exprs = []
    for _ in range(r.u32()):
        divisor, ceil, nterms = r.i64(), bool(r.u32()), r.u32()
        terms = []
        for _ in range(nterms):
            coeff = r.i64()
            terms.append((coeff, tuple(r.u32() for _ in range(r.u32()))))
        exprs.append(PlanExpr(tuple(terms), divisor, ceil))

    r = _Reader(sec[Section.BUFFERS], "BUFFERS")
    arena = exprs[r.u32()]
    buffers = []
    for _ in range(r.u32()):
        name, dtype = r.str(), _DTYPE_NAMES[r.u32()]
        shape = tuple(exprs[r.u32()] for _ in range(r.u32()))
        storage, a, b = r.u32(), r.u64(), r.u64()
        buffers.append(BufferDesc(name, dtype, shape, storage, exprs[a] if storage == Storage.ARENA else a, b))

    r = _Reader(sec[Section.KERNELS], "KERNELS")
    kernels = []
    for _ in range(r.u32()):
        k = KernelEntry(r.str(), r.str(), r.str(), r.blob().decode("utf-8"))
        k.images = [KernelImage(r.str(), r.blob()) for _ in range(r.u32())]
        kernels.append(k)

    r = _Reader(sec[Section.STEPS], "STEPS")
    steps = [_read_step(r, exprs) for _ in range(r.u32())]

    return Plan(symbols, buffers, arena, kernels, steps, bytes(sec[Section.WEIGHTS]),
                bytes(sec[Section.GRAPH]).decode("utf-8"), json.loads(bytes(sec[Section.META])))


# --------------------------------------------------------------------------- graph <-> JSON
def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype of an IR dtype name (bfloat16 comes from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class WeightPacker:
    def __init__(self) -> None:
        self.chunks: List[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray) -> Tuple[int, int]:
        """Append ``array``'s little-endian bytes at the next 256-byte boundary."""
        arr = np.ascontiguousarray(array)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        pad = -self.size % WEIGHT_ALIGNMENT
        self.chunks.append(b"\0" * pad)
        self.size += pad
        data = arr.tobytes()
        offset = self.size
        self.chunks.append(data)
        self.size += len(data)
        return offset, len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)


def _encode_attr(value: Any, packer: WeightPacker, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        offset, nbytes = packer.add(value)
        return {"__ndarray__": {"dtype": ir.dtype_name(value.dtype), "shape": list(value.shape),
                                "offset": offset, "nbytes": nbytes}}
    if isinstance(value, np.generic):
        return {"__scalar__": {"dtype": ir.dtype_name(value.dtype),
                               "value": _encode_attr(value.item(), packer, where)}}
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_attr(v, packer, where) for v in value]}
    if isinstance(value, list):
        return [_encode_attr(v, packer, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode_attr(v, packer, where) for k, v in value.items()}}
    raise PlanFormatError(f"{where}: attribute value of type {type(value).__name__} cannot be stored in a plan")


def _weight_array(weights: memoryview, dtype: str, shape: Sequence[int], offset: int, nbytes: int) -> np.ndarray:
    if offset + nbytes > len(weights):
        raise PlanFormatError(f"weight at offset {offset} ({nbytes} bytes) lies outside WEIGHTS ({len(weights)} bytes)")
    dt = np_dtype(dtype)
    return np.frombuffer(weights[offset:offset + nbytes], dtype=dt).reshape(shape).copy()


def _decode_attr(value: Any, weights: memoryview) -> Any:
    if isinstance(value, list):
        return [_decode_attr(v, weights) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, body), = value.items()
    if tag == "__ndarray__":
        return _weight_array(weights, body["dtype"], body["shape"], body["offset"], body["nbytes"])
    if tag == "__scalar__":
        return np_dtype(body["dtype"]).type(_decode_attr(body["value"], weights))
    if tag == "__bytes__":
        return base64.b64decode(body)
    if tag == "__tuple__":
        return tuple(_decode_attr(v, weights) for v in body)
    if tag == "__dict__":
        return {k: _decode_attr(v, weights) for k, v in body.items()}
    raise PlanFormatError(f"plan GRAPH has an attribute with unknown tag {tag!r}")


def _encode_dim(d: ir.Dim) -> Any:
    return int(d) if isinstance(d, (int, np.integer)) else str(d)


def graph_to_json(graph: ir.Graph, packer: WeightPacker) -> Tuple[str, Dict[str, Tuple[int, int]]]:
    """Encode ``graph`` as JSON, packing constants; returns (json, tensor → (offset, nbytes))."""
    tensors, offsets = {}, {}
    for name, t in graph.tensors.items():
        entry: Dict[str, Any] = {"dtype": t.dtype,
                                 "shape": None if t.shape is None else [_encode_dim(d) for d in t.shape]}
        if t.value is not None:
            offsets[name] = packer.add(t.value)
            entry["weight"] = {"offset": offsets[name][0], "nbytes": offsets[name][1],
                               "shape": list(t.value.shape), "dtype": ir.dtype_name(t.value.dtype)}
        tensors[name] = entry
    nodes = [{"op": n.op, "name": n.name, "inputs": list(n.inputs), "outputs": list(n.outputs),
              "attrs": {k: _encode_attr(v, packer, f"node {n.name!r} attr {k!r}") for k, v in n.attrs.items()}}
             for n in graph.nodes]
    doc = {"name": graph.name, "inputs": list(graph.inputs), "outputs": list(graph.outputs),
           "tensors": tensors, "nodes": nodes}
    return json.dumps(doc, allow_nan=True), offsets


def graph_from_json(text: str, weights: bytes) -> ir.Graph:
    """Rebuild the IR graph written by :func:`graph_to_json`, constants read from ``weights``."""
    doc = json.loads(text)
    view = memoryview(weights)
    g = ir.Graph(doc["name"], list(doc["inputs"]), list(doc["outputs"]))
    for name, t in doc["tensors"].items():
        value = None
        if "weight" in t:
            w = t["weight"]
            value = _weight_array(view, w["dtype"], w["shape"], w["offset"], w["nbytes"])
        shape = None if t["shape"] is None else tuple(t["shape"])
        g.tensors[name] = ir.Tensor(name, t["dtype"], shape, value)
    for n in doc["nodes"]:
        g.nodes.append(ir.Node(n["op"], n["name"], list(n["inputs"]), list(n["outputs"]),
                               {k: _decode_attr(v, view) for k, v in n["attrs"].items()}))
    return g
