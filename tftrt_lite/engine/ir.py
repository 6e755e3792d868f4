"""Engine IR: the small, explicit graph every builder pass reads and writes.

Why its own IR instead of ONNX protos: passes need cheap in-place rewrites, symbolic
dimensions that survive into the plan (one plan serves every batch size), NumPy
constants for folding, and fused ops ONNX has no name for. The IR is deliberately
plain dataclasses so a pass is ordinary Python and a test can build a graph by hand.

Op semantics: every op whose name is an ONNX op name (``Conv``, ``Add``, ``Gemm``...)
means exactly that ONNX op (default opset of the importer), with every attribute
filled in by the importer (no implicit defaults survive into the IR). Ops this
project adds carry the ``tftrt.`` prefix (``tftrt.FusedConv``, ``tftrt.Attention``...)
and are documented where the pass that creates them lives; the reference executor
(``reference.py``) has a NumPy implementation for every op of both kinds.

Shapes: a dimension is an ``int`` or a ``str``. A string is a symbolic expression
over the named dims of the engine's inputs (``"N"``, ``"N*128"``) — see
``symbolic.py``. ``Tensor.shape is None`` means rank unknown (only allowed before
shape inference has run).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

Dim = Union[int, str]

#: dtypes the IR knows, by NumPy-style name. bfloat16 values use ml_dtypes.bfloat16.
DTYPES = (
    "float32", "float16", "bfloat16", "float64",
    "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "bool",
)


class IRError(ValueError):
    """A graph broke an IR invariant; the message names the node or tensor."""


@dataclass
class Tensor:
    """A value in the graph: graph input, constant (``value`` set) or node output."""

    name: str
    dtype: str
    shape: Optional[Tuple[Dim, ...]]
    value: Optional[np.ndarray] = None

    @property
    def is_const(self) -> bool:
        return self.value is not None

    @property
    def rank(self) -> Optional[int]:
        return None if self.shape is None else len(self.shape)


@dataclass
class Node:
    """One op. ``inputs`` may contain ``""`` for an omitted optional input."""

    op: str
    name: str
    inputs: List[str]
    outputs: List[str]
    attrs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """An engine's computation: inputs → nodes (topologically ordered) → outputs."""

    name: str
    inputs: List[str]
    outputs: List[str]
    tensors: Dict[str, Tensor] = field(default_factory=dict)
    nodes: List[Node] = field(default_factory=list)

    # -- queries ---------------------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise IRError(f"graph {self.name!r}: no tensor named {name!r}") from None

    def const(self, name: str) -> Optional[np.ndarray]:
        """The constant value of ``name``, or None if it is computed at run time."""
        t = self.tensors.get(name)
        return None if t is None else t.value

    def producers(self) -> Dict[str, Node]:
        """Map tensor name → the node that writes it."""
        return {out: n for n in self.nodes for out in n.outputs if out}

    def consumers(self) -> Dict[str, List[Node]]:
        """Map tensor name → nodes that read it (graph outputs are not nodes)."""
        result: Dict[str, List[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    result.setdefault(i, []).append(n)
        return result

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise IRError(f"graph {self.name!r}: no node named {name!r}")

    # -- edits -----------------------------------------------------------------
    def add_const(self, name: str, value: np.ndarray) -> str:
        """Add (or replace) a constant tensor and return its name."""
        value = np.asarray(value)
        self.tensors[name] = Tensor(name, _dtype_name(value.dtype), tuple(value.shape), value)
        return name

    def unique_name(self, base: str) -> str:
        """A tensor/node name not used yet, derived from ``base``."""
        taken = set(self.tensors) | {n.name for n in self.nodes}
        if base not in taken:
            return base
        i = 1
        while f"{base}_{i}" in taken:
            i += 1
        return f"{base}_{i}"

    def replace_uses(self, old: str, new: str) -> None:
        """Point every reader of ``old`` (nodes and graph outputs) at ``new``."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove_unused_tensors(self) -> None:
        """Drop tensors nothing reads or writes (e.g. constants a fusion absorbed)."""
        used = set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            used.update(i for i in n.inputs if i)
            used.update(o for o in n.outputs if o)
        self.tensors = {k: v for k, v in self.tensors.items() if k in used}

    def toposort(self) -> None:
        """Reorder ``nodes`` topologically (stable for already-ordered graphs)."""
        producer = self.producers()
        order: List[Node] = []
        state: Dict[str, int] = {}  # 1 = visiting, 2 = done

        def visit(n: Node) -> None:
            stack = [(n, iter(n.inputs))]
            state[n.name] = 1
            while stack:
                cur, it = stack[-1]
                advanced = False
                for i in it:
                    p = producer.get(i)
                    if p is None:
                        continue
                    s = state.get(p.name)
                    if s == 1:
                        raise IRError(f"graph {self.name!r}: cycle through node {p.name!r}")
                    if s is None:
                        state[p.name] = 1
                        stack.append((p, iter(p.inputs)))
                        advanced = True
                        break
                if not advanced:
                    stack.pop()
                    state[cur.name] = 2
                    order.append(cur)

        for n in self.nodes:
            if n.name not in state:
                visit(n)
        self.nodes = order

    def copy(self) -> "Graph":
        """Deep-enough copy for passes: node lists/attrs copied, constant arrays shared."""
        return Graph(
            self.name,
            list(self.inputs),
            list(self.outputs),
            {k: dataclasses.replace(v) for k, v in self.tensors.items()},
            [Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in self.nodes],
        )

    # -- invariants ------------------------------------------------------------
    def verify(self) -> None:
        """Check the invariants every pass must keep; raise IRError naming the culprit.

        - every tensor referenced is declared, with a known dtype;
        - each tensor has at most one writer; graph inputs and constants have none;
        - nodes are in topological order (every input is written before it is read);
        - graph outputs are computed (or are inputs/constants); names are unique.
        """
        names = set()
        for n in self.nodes:
            if n.name in names:
                raise IRError(f"graph {self.name!r}: duplicate node name {n.name!r}")
            names.add(n.name)
        available = set(self.inputs)
        for name, t in self.tensors.items():
            if t.name != name:
                raise IRError(f"tensor key {name!r} holds tensor named {t.name!r}")
            if t.dtype not in DTYPES:
                raise IRError(f"tensor {name!r}: unknown dtype {t.dtype!r}")
            if t.value is not None:
                if name in self.inputs:
                    raise IRError(f"tensor {name!r} is both a graph input and a constant")
                available.add(name)
        for i in self.inputs:
            if i not in self.tensors:
                raise IRError(f"graph input {i!r} is not declared")
        written = set()
        for n in self.nodes:
            for i in n.inputs:
                if not i:
                    continue
                if i not in self.tensors:
                    raise IRError(f"node {n.name!r} ({n.op}) reads undeclared tensor {i!r}")
                if i not in available:
                    raise IRError(f"node {n.name!r} ({n.op}) reads {i!r} before it is written")
            for o in n.outputs:
                if not o:
                    continue
                if o not in self.tensors:
                    raise IRError(f"node {n.name!r} ({n.op}) writes undeclared tensor {o!r}")
                if o in written or o in self.inputs or self.tensors[o].value is not None:
                    raise IRError(f"tensor {o!r} has more than one writer (last: {n.name!r})")
                written.add(o)
                available.add(o)
        for o in self.outputs:
            if o not in available:
                raise IRError(f"graph output {o!r} is never computed")

    def summary(self) -> Dict[str, int]:
        """Op-type histogram: what a report or a pass test counts."""
        counts: Dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts


def _dtype_name(dt: np.dtype) -> str:
    name = np.dtype(dt).name
    if name not in DTYPES:
        raise IRError(f"dtype {name!r} is not supported by the engine IR")
    return name


def dtype_name(dt: Any) -> str:
    """Normalise a NumPy dtype (or name) to the IR's dtype name."""
    return _dtype_name(np.dtype(dt))


def saturate_cast(value: Any, dtype: str) -> np.ndarray:
    """``value`` as float ``dtype`` with finite values clamped to the type's finite range.

    Why not a plain cast: a float32 weight or immediate beyond float16's ±65504 (a -1e9
    attention mask, say) would become an infinity and turn sums into NaN; TensorRT clamps
    such values too. Infinities and NaNs stay what they are.
    """
    import ml_dtypes

    v = np.asarray(value, np.float32)
    if dtype == "float32":
        return v
    target = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    limit = np.float32(float(ml_dtypes.finfo(target).max))
    with np.errstate(invalid="ignore"):
        v = np.where(np.isfinite(v), np.clip(v, -limit, limit), v)
    return v.astype(target)

