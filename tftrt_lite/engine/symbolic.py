"""Symbolic dimension expressions: what lets one engine plan serve every batch size.

An IR dimension is an ``int`` or a ``str`` expression over named symbols (the named
dims of the engine's inputs: ``"N"``, ``"unk__397"``, ``"d0_1"``). Shapes inside a
network are built from input dims by products (flatten, reshape with -1, einsum
batch folding) and, more rarely, sums (concat along a symbolic axis, padding), so
the expressions are integer polynomials: sums of monomials.

Canonical form (what every function here returns, and what the plan encodes for the
C++ evaluator):

- an expression whose value does not depend on any symbol is a plain ``int``;
- otherwise a ``str`` of monomials joined by ``+`` / ``-`` with no spaces;
- a monomial is an optional positive integer coefficient followed by its symbols,
  all joined by ``*``; the coefficient comes first and is omitted when it is 1;
  symbols are sorted by name and a symbol of power ``p`` is written ``p`` times
  (``"2*N*N*S"``);
- monomials are ordered by descending degree, then by their symbol tuple; the
  constant monomial (if any) comes last (``"128*N+1"``, ``"N*S-N"``);
- a leading negative monomial is written with a leading ``-`` (``"-N+4"``).

Equal polynomials therefore have equal strings. :func:`terms` gives the same
polynomial as a structured list ``[(coeff, ((symbol, power), ...)), ...]`` in
canonical order for code that encodes expressions in a binary format.

Symbols stand for dims of real tensors, so they are assumed to be ``>= 1``; the
importer relies on that for ``max(N, 1) == N`` when it broadcasts.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

from tftrt_lite.errors import ShapeError

Dim = Union[int, str]
Monomial = Tuple[str, ...]  # sorted symbol names, repeated per power
Poly = Dict[Monomial, int]  # monomial -> non-zero coefficient

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(.))")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# -- polynomial core --------------------------------------------------------------
def _poly_add(a: Poly, b: Poly, sign: int = 1) -> Poly:
    out = dict(a)
    for mono, c in b.items():
        v = out.get(mono, 0) + sign * c
        if v:
            out[mono] = v
        else:
            out.pop(mono, None)
    return out


def _poly_mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            mono = tuple(sorted(ma + mb))
            v = out.get(mono, 0) + ca * cb
            if v:
                out[mono] = v
            else:
                out.pop(mono, None)
    return out


def _const(v: int) -> Poly:
    return {(): v} if v else {}


class _Parser:
    """Recursive descent over ``expr := term (('+'|'-') term)*``,
    ``term := factor ('*' factor)*``, ``factor := INT | SYMBOL | '(' expr ')' | '-' factor``."""

    def __init__(self, text: str):
        self.text = text
        self.tokens: List[Tuple[str, str]] = []
        for m in _TOKEN.finditer(text):
            num, ident, other = m.groups()
            if num is not None:
                self.tokens.append(("int", num))
            elif ident is not None:
                self.tokens.append(("sym", ident))
            elif other is not None and other.strip():
                if other not in "+-*()":
                    self.fail(f"unexpected character {other!r}")
                self.tokens.append(("op", other))
        self.pos = 0

    def fail(self, why: str):
        raise ShapeError(f"invalid dimension expression {self.text!r}: {why}")

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def take(self):
        tok = self.peek()
        self.pos += 1
        return tok

    def parse(self) -> Poly:
        if not self.tokens:
            self.fail("empty")
        p = self.expr()
        if self.pos != len(self.tokens):
            self.fail(f"unexpected {self.peek()[1]!r}")
        return p

    def expr(self) -> Poly:
        p = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            sign = 1 if self.take()[1] == "+" else -1
            p = _poly_add(p, self.term(), sign)
        return p

    def term(self) -> Poly:
        p = self.factor()
        while self.peek() == ("op", "*"):
            self.take()
            p = _poly_mul(p, self.factor())
        return p

    def factor(self) -> Poly:
        kind, val = self.take()
        if kind == "int":
            return _const(int(val))
        if kind == "sym":
            return {(val,): 1}
        if (kind, val) == ("op", "-"):
            return _poly_mul(_const(-1), self.factor())
        if (kind, val) == ("op", "("):
            p = self.expr()
            if self.take() != ("op", ")"):
                self.fail("missing ')'")
            return p
        self.fail("unexpected end" if kind is None else f"unexpected {val!r}")


def _poly(dim: Dim) -> Poly:
    if isinstance(dim, bool):
        raise ShapeError(f"dimension {dim!r} is a bool, not an int or expression")
    if isinstance(dim, int):
        return _const(dim)
    if hasattr(dim, "__index__") and not isinstance(dim, str):  # numpy integers
        return _const(int(dim))
    if isinstance(dim, str):
        return _Parser(dim).parse()
    raise ShapeError(f"dimension {dim!r} is neither an int nor an expression string")


def _order(mono: Monomial):
    return (-len(mono), mono)


def _format(p: Poly) -> Dim:
    if not p:
        return 0
    if set(p) == {()}:
        return p[()]
    parts = []
    for mono in sorted(p, key=_order):
        c = p[mono]
        body = "*".join(mono)
        mag = abs(c)
        text = body if mag == 1 and body else (f"{mag}*{body}" if body else str(mag))
        if c < 0:
            parts.append("-" + text)
        else:
            parts.append(("+" if parts else "") + text)
    return "".join(parts)


# -- public API ---------------------------------------------------------------------
def normalize(dim: Dim) -> Dim:
    """The canonical form of ``dim`` (an ``int`` when it has no symbols)."""
    return _format(_poly(dim))


def is_symbolic(dim: Dim) -> bool:
    return isinstance(normalize(dim), str)


def equal(a: Dim, b: Dim) -> bool:
    return _poly(a) == _poly(b)


def add(a: Dim, b: Dim) -> Dim:
    return _format(_poly_add(_poly(a), _poly(b)))


def sub(a: Dim, b: Dim) -> Dim:
    return _format(_poly_add(_poly(a), _poly(b), -1))


def mul(a: Dim, b: Dim) -> Dim:
    return _format(_poly_mul(_poly(a), _poly(b)))


def product(dims: Iterable[Dim]) -> Dim:
    p = _const(1)
    for d in dims:
        p = _poly_mul(p, _poly(d))
    return _format(p)


def numel(shape: Sequence[Dim]) -> Dim:
    """Number of elements of a tensor of ``shape``."""
    return product(shape)


def divide(a: Dim, b: Dim) -> Dim:
    """``a / b`` when it divides exactly for every value of the symbols.

    ``b`` may be an int or a monomial (``"4*N"``); an exact quotient of polynomials
    by a monomial is what reshape-with-``-1`` and flatten need. Raises
    :class:`ShapeError` naming both expressions otherwise.
    """
    pa, pb = _poly(a), _poly(b)
    if len(pb) != 1:
        raise ShapeError(f"cannot divide {normalize(a)!r} by {normalize(b)!r}: "
                         "the divisor must be a single monomial")
    (mb, cb), = pb.items()
    out: Poly = {}
    for ma, ca in pa.items():
        rest = list(ma)
        for s in mb:
            if s not in rest:
                break
            rest.remove(s)
        else:
            if ca % cb == 0:
                out[tuple(rest)] = ca // cb
                continue
        raise ShapeError(f"{normalize(a)!r} is not exactly divisible by {normalize(b)!r}")
    return _format(out)


def symbols(dim: Dim) -> frozenset:
    """The symbol names ``dim`` depends on."""
    return frozenset(s for mono in _poly(dim) for s in mono)


def terms(dim: Dim) -> List[Tuple[int, Tuple[Tuple[str, int], ...]]]:
    """Structured canonical form: ``[(coeff, ((symbol, power), ...)), ...]``.

    Monomials come in canonical order; symbols within one sorted by name; the
    constant term has an empty symbol tuple. ``0`` gives ``[]``.
    """
    out = []
    p = _poly(dim)
    for mono in sorted(p, key=_order):
        powers: Dict[str, int] = {}
        for s in mono:
            powers[s] = powers.get(s, 0) + 1
        out.append((p[mono], tuple(sorted(powers.items()))))
    return out


def substitute(dim: Dim, values: Mapping[str, Dim]) -> Dim:
    """Replace symbols by ints or other expressions (unlisted symbols stay)."""
    out: Poly = {}
    for mono, c in _poly(dim).items():
        p = _const(c)
        for s in mono:
            p = _poly_mul(p, _poly(values[s]) if s in values else {(s,): 1})
        out = _poly_add(out, p)
    return _format(out)


def evaluate(dim: Dim, env: Mapping[str, int]) -> int:
    """The int value of ``dim`` with every symbol taken from ``env``."""
    missing = symbols(dim) - set(env)
    if missing:
        raise ShapeError(f"cannot evaluate dimension {normalize(dim)!r}: "
                         f"no value for {', '.join(sorted(missing))}")
    return substitute(dim, env)


def is_identifier(name: str) -> bool:
    """Whether ``name`` can be used as a symbol."""
    return bool(_IDENT.match(name))


def bind(shape: Sequence[Dim], actual_shape: Sequence[int], env: Dict[str, int],
         what: str = "tensor") -> Dict[str, int]:
    """Bind the symbols of ``shape`` from a real array shape into ``env`` (in place).

    Plain symbols bind directly; a compound expression that is linear in its only
    unbound symbol (``"128*N"`` against 256) is solved for it. Any mismatch — rank,
    a static dim, an already-bound symbol with another value, a non-integral or
    ambiguous solution — raises :class:`ShapeError` naming ``what`` and the axis.
    Returns ``env``.
    """
    if len(shape) != len(actual_shape):
        raise ShapeError(f"{what}: expected rank {len(shape)} {_show(shape)}, "
                         f"got shape {tuple(actual_shape)}")
    pending = [(axis, _poly(d), int(actual)) for axis, (d, actual)
               in enumerate(zip(shape, actual_shape))]
    while pending:
        left = []
        for axis, p, actual in pending:
            p_env = _poly(substitute(_format(p), {s: env[s] for s in _poly_symbols(p) if s in env}))
            free = _poly_symbols(p_env)
            if not free:
                value = p_env.get((), 0)
                if value != actual:
                    raise ShapeError(
                        f"{what}: axis {axis} is {actual} but the engine expects "
                        f"{_format(p)!r} = {value} (bound: {_show_env(env, _poly_symbols(p))})")
                continue
            if len(free) == 1:
                (s,) = free
                if all(len(m) <= 1 for m in p_env):
                    a, b = p_env.get((s,), 0), p_env.get((), 0)
                    if (actual - b) % a or (actual - b) // a < 1:
                        raise ShapeError(f"{what}: axis {axis} is {actual}, which no value "
                                         f"of {s} >= 1 makes equal to {_format(p)!r}")
                    env[s] = (actual - b) // a
                    continue
            left.append((axis, p, actual))
        if len(left) == len(pending):
            axis, p, actual = left[0]
            raise ShapeError(f"{what}: cannot bind the symbols of axis {axis} "
                             f"({_format(p)!r}) from its size {actual}")
        pending = left
    return env


def _poly_symbols(p: Poly) -> frozenset:
    return frozenset(s for mono in p for s in mono)


def _show(shape: Sequence[Dim]) -> str:
    return "(" + ", ".join(str(normalize(d)) for d in shape) + ")"


def _show_env(env: Mapping[str, int], names: Iterable[str]) -> str:
    items = [f"{s}={env[s]}" for s in sorted(names) if s in env]
    return ", ".join(items) or "none"
