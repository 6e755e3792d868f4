"""Accuracy comparison of a converted SavedModel against its original, Polygraphy style.

Both models run one signature on the same inputs (random from a seed, or an ``.npz``);
each output gets its absolute and relative error statistics, a pass/fail under one error
statistic, the tolerance that would have made it pass, and a log-binned histogram of its
errors. ``per_engine=True`` also checks every ``TftrtLiteEngine`` of the converted
signature in isolation: the engine's inputs are captured while the converted model runs,
then the engine (the op on a GPU with native fallback disabled, or the plan's NumPy
reference executor where there is no GPU) and its native segment function run on exactly
those inputs. Engines are visited in graph order, so the first failing one is where the
converted model starts to diverge.

Why per-engine matters on machines without a GPU: there the converted model runs every
engine's native segment, so the end-to-end numbers match by construction and only the
per-engine check looks at the engines' math.

Errors follow Polygraphy (``b`` is the reference: the original model, or the native
segment): ``abs = |a - b|``, ``rel = abs / |b|`` with zeros of ``b`` replaced by 2.2e-16.
``elemwise`` passes when every element satisfies ``abs <= atol + rtol * |b|`` (as
``np.isclose``); ``max``/``mean``/``median`` pass when that statistic of the absolute error
is ``<= atol`` or that of the relative error is ``<= rtol``. Statistics cover the element
pairs where both values are finite; a non-finite value facing anything but the same
non-finite value is a mismatch no tolerance passes.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
import math
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from tftrt_lite.envutil import scoped_env
from tftrt_lite.errors import TftrtLiteError
from tftrt_lite.load.freeze import freeze_signature
from tftrt_lite.load.proto import read_saved_model_proto
from tftrt_lite.load.signature import signature_bindings
from tftrt_lite.replace.rewrite import ENGINE_OP, engine_input_dtypes
from tftrt_lite.runtime import oplib
from tftrt_lite.save import read_report

ERROR_STATS = ("elemwise", "max", "mean", "median")
ENGINE_EXECUTORS = ("auto", "gpu", "reference")
#: What Polygraphy puts in place of zeros of the reference when dividing by it.
REL_EPSILON = 2.220446049250313e-16
#: Random integer inputs are drawn from [1, 8): small valid indices, never zero.
INT_RANGE = (1, 8)
ALLOW_FALLBACK_ENV = "TFTRT_LITE_ALLOW_NATIVE_FALLBACK"
_HISTOGRAM_BINS = 12
_BAR_WIDTH = 40

Histogram = List[Tuple[float, float, int]]


class CompareError(TftrtLiteError, ValueError):
    """The comparison cannot be made: bad arguments, inputs or models (not a mismatch)."""


# --------------------------------------------------------------------------- inputs
def random_inputs(specs: Mapping[str, tf.TensorSpec], seed: int = 0,
                  batch_size: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Random values for each signature input: floats standard normal, ints in ``INT_RANGE``.

    Inputs are drawn in sorted name order from one generator, so a seed always gives the
    same values. An unknown first dimension takes ``batch_size``; any other unknown
    dimension cannot be guessed, and the error says to pass the inputs as a file.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in sorted(specs):
        spec = specs[name]
        if spec.shape.rank is None:
            raise CompareError(f"input {name!r} has unknown rank; give the inputs as an .npz file")
        dims = spec.shape.as_list()
        for axis, d in enumerate(dims):
            if d is not None:
                continue
            if axis != 0:
                raise CompareError(f"input {name!r} has shape {spec.shape} with unknown dim {axis}; only the "
                                   f"first (batch) dim can be chosen by --batch, give the inputs as an .npz file")
            if batch_size is None:
                raise CompareError(f"input {name!r} has an unknown batch dim ({spec.shape}); "
                                   f"give a batch size (--batch N / batch_size=N)")
            dims[0] = batch_size
        dtype = spec.dtype
        if dtype.is_floating:
            value = rng.standard_normal(dims)
        elif dtype.is_complex:
            value = rng.standard_normal(dims) + 1j * rng.standard_normal(dims)
        elif dtype.is_bool:
            value = rng.integers(0, 2, dims)
        elif dtype.is_integer:
            value = rng.integers(*INT_RANGE, dims)
        else:
            raise CompareError(f"cannot draw random values for input {name!r} of dtype {dtype.name}; "
                               f"give the inputs as an .npz file")
        feeds[name] = np.asarray(value).astype(dtype.as_numpy_dtype)
    return feeds


def checked_inputs(inputs: Union[str, os.PathLike, Mapping[str, np.ndarray]],
                   specs: Mapping[str, tf.TensorSpec]) -> Dict[str, np.ndarray]:
    """The given inputs (an ``.npz`` path or a dict), checked against the signature's specs."""
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        if not os.path.isfile(path):
            raise CompareError(f"inputs file {path!r} does not exist")
        try:
            npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CompareError(f"cannot read inputs file {path!r} as .npz: {e}") from e
        if not hasattr(npz, "files"):
            raise CompareError(f"inputs file {path!r} holds a single array, not an .npz keyed by input name "
                               f"(write it with np.savez(path, **inputs))")
        with npz:
            try:
                feeds = {k: npz[k] for k in npz.files}
            except (OSError, ValueError) as e:
                raise CompareError(f"cannot read inputs file {path!r} as .npz: {e}") from e
        where = f"inputs file {path!r}"
    else:
        feeds = {k: np.asarray(v) for k, v in inputs.items()}
        where = "inputs"
    missing, extra = sorted(set(specs) - set(feeds)), sorted(set(feeds) - set(specs))
    if missing or extra:
        raise CompareError(f"{where} must hold exactly the signature inputs {sorted(specs)}: "
                           f"missing {missing}, unexpected {extra}")
    for name, spec in specs.items():
        value = feeds[name]
        if spec.dtype == tf.string:
            ok = value.dtype.kind in "SU"
        else:
            ok = value.dtype == np.dtype(spec.dtype.as_numpy_dtype)
        if not ok:
            raise CompareError(f"{where}: input {name!r} is {value.dtype}, the signature takes {spec.dtype.name}")
        if not spec.shape.is_compatible_with(value.shape):
            raise CompareError(f"{where}: input {name!r} has shape {value.shape}, "
                               f"the signature takes {spec.shape}")
    return feeds


# --------------------------------------------------------------------------- metrics
@dataclasses.dataclass
class OutputComparison:
    """How one tensor of the checked side (``a``) differs from the reference (``b``)."""

    name: str
    passed: bool
    problem: Optional[str] = None      # set when the values cannot be compared (shape, dtype, missing)
    shape: Optional[Tuple[int, ...]] = None
    dtype: Optional[str] = None
    elements: int = 0
    outside_tolerance: int = 0         # elements failing abs <= atol + rtol*|b| (non-finite included)
    nonfinite_mismatches: int = 0
    max_abs: float = 0.0
    mean_abs: float = 0.0
    median_abs: float = 0.0
    max_rel: float = 0.0
    mean_rel: float = 0.0
    median_rel: float = 0.0
    worst_index: Optional[Tuple[int, ...]] = None
    worst_values: Optional[Tuple[float, float]] = None   # (a, b) at worst_index
    needed_atol: float = 0.0           # smallest atol passing with rtol as given (inf: none does)
    needed_rtol: float = 0.0           # smallest rtol passing with atol as given (inf: none does)
    abs_histogram: Histogram = dataclasses.field(default_factory=list)
    rel_histogram: Histogram = dataclasses.field(default_factory=list)

    def to_dict(self) -> Dict:
        return _json_ready(dataclasses.asdict(self))


def _as_numbers(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "c":
        return x.astype(np.complex128)
    return x.astype(np.float64)


def compare_arrays(name: str, got, want, atol: float, rtol: float, error_stat: str) -> OutputComparison:
    """Compare ``got`` (checked side) with ``want`` (reference) under ``error_stat``."""
    a, b = np.asarray(got), np.asarray(want)
    if a.dtype != b.dtype:
        return OutputComparison(name, False, f"dtype {a.dtype} vs reference {b.dtype}", a.shape, str(a.dtype))
    if a.shape != b.shape:
        return OutputComparison(name, False, f"shape {a.shape} vs reference {b.shape}", a.shape, str(a.dtype))
    result = OutputComparison(name, True, shape=a.shape, dtype=str(a.dtype), elements=int(a.size))
    if a.dtype.kind in "OSU":   # strings: exact equality, an unequal element has error 1
        a, b = (a != b).astype(np.float64), np.zeros(a.shape)
    else:
        a, b = _as_numbers(a), _as_numbers(b)
    finite = np.isfinite(a) & np.isfinite(b)
    same_nonfinite = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    result.nonfinite_mismatches = int(np.count_nonzero(~finite & ~same_nonfinite))
    abs_err = np.abs(a[finite] - b[finite])
    ref_mag = np.abs(b[finite])
    rel_err = abs_err / np.where(ref_mag == 0, REL_EPSILON, ref_mag)
    if abs_err.size:
        result.max_abs, result.mean_abs, result.median_abs = _stats(abs_err)
        result.max_rel, result.mean_rel, result.median_rel = _stats(rel_err)
        worst = int(np.argmax(abs_err))
        index = tuple(int(i) for i in np.argwhere(finite)[worst])
        result.worst_index = index
        result.worst_values = (_scalar(np.asarray(got)[index]), _scalar(np.asarray(want)[index]))
    close = abs_err <= atol + rtol * ref_mag
    result.outside_tolerance = int(np.count_nonzero(~close)) + result.nonfinite_mismatches
    if error_stat == "elemwise":
        stat_passed = bool(close.all())
        result.needed_atol = float(max(0.0, np.max(abs_err - rtol * ref_mag, initial=0.0)))
        over = abs_err > atol
        if np.any(over & (ref_mag == 0)):
            result.needed_rtol = math.inf
        else:
            result.needed_rtol = float(np.max((abs_err[over] - atol) / ref_mag[over], initial=0.0))
    else:
        stat_abs, stat_rel = getattr(result, f"{error_stat}_abs"), getattr(result, f"{error_stat}_rel")
        stat_passed = stat_abs <= atol or stat_rel <= rtol
        result.needed_atol = 0.0 if stat_rel <= rtol else stat_abs
        result.needed_rtol = 0.0 if stat_abs <= atol else stat_rel
    if result.nonfinite_mismatches:
        result.needed_atol = result.needed_rtol = math.inf
    result.passed = stat_passed and not result.nonfinite_mismatches
    result.abs_histogram = log_histogram(abs_err)
    result.rel_histogram = log_histogram(rel_err)
    return result


def _stats(x: np.ndarray) -> Tuple[float, float, float]:
    return float(np.max(x)), float(np.mean(x)), float(np.median(x))


def _scalar(x) -> Union[float, str]:
    """One element as a JSON-ready value: a float, or text for strings and complex numbers."""
    if isinstance(x, bytes):
        return x.decode(errors="replace")
    x = np.asarray(x)
    if x.dtype.kind in "cSU":
        return str(x)
    return float(x.astype(np.float64))


def log_histogram(values: np.ndarray, max_bins: int = _HISTOGRAM_BINS) -> Histogram:
    """``(low, high, count)`` rows: exact zeros as ``(0, 0, n)``, then decade-wide bins
    (wider when the values span more than ``max_bins`` decades), then overflow as
    ``(inf, inf, n)``. Errors spread over orders of magnitude, so linear bins would put
    almost everything in the first one."""
    values = np.asarray(values, np.float64).ravel()
    rows: Histogram = []
    zeros = int(np.count_nonzero(values == 0))
    if zeros:
        rows.append((0.0, 0.0, zeros))
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size:
        lo = math.floor(math.log10(positive.min()))
        hi = math.floor(math.log10(positive.max())) + 1
        while 10.0 ** lo > positive.min():   # log10 rounding at exact powers of ten
            lo -= 1
        while 10.0 ** hi <= positive.max():
            hi += 1
        step = math.ceil((hi - lo) / max_bins)
        edges = [10.0 ** (lo + k * step) for k in range(math.ceil((hi - lo) / step) + 1)]
        counts = np.histogram(positive, bins=edges)[0]
        rows += [(edges[i], edges[i + 1], int(c)) for i, c in enumerate(counts)]
    overflow = int(np.count_nonzero(np.isinf(values)))
    if overflow:
        rows.append((math.inf, math.inf, overflow))
    return rows


def format_histogram(rows: Histogram, title: str, indent: str = "    ") -> List[str]:
    if not rows:
        return []
    peak = max(c for _, _, c in rows) or 1
    lines = [f"{indent}{title}:"]
    for lo, hi, count in rows:
        label = "== 0" if hi == 0 else ("inf" if math.isinf(lo) else f"[{lo:.0e}, {hi:.0e})")
        bar = "#" * (math.ceil(_BAR_WIDTH * count / peak) if count else 0)
        lines.append(f"{indent}  {label:>17} {count:>9} {bar}")
    return lines


# --------------------------------------------------------------------------- report
@dataclasses.dataclass
class EngineComparison:
    """One engine's outputs against its native segment's on the captured inputs."""

    engine: str                        # engine_name attr
    node: str                          # node name in the frozen signature graph
    passed: bool
    outputs: List[OutputComparison]
    problem: Optional[str] = None      # the engine side failed to run

    def to_dict(self) -> Dict:
        return {"engine": self.engine, "node": self.node, "passed": self.passed, "problem": self.problem,
                "outputs": [o.to_dict() for o in self.outputs]}


@dataclasses.dataclass
class CompareReport:
    """Everything one comparison found; ``passed`` is what the exit code reports."""

    original_dir: str
    converted_dir: str
    signature: str
    input_source: str
    inputs: Dict[str, Tuple[str, Tuple[int, ...]]]   # name -> (dtype, shape)
    atol: float
    rtol: float
    error_stat: str
    outputs: List[OutputComparison]
    converted_engine_calls: int = 0
    converted_fallback_calls: int = 0
    engine_executor: Optional[str] = None            # "gpu" or "reference" when per-engine ran
    engines: Optional[List[EngineComparison]] = None

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs) and all(e.passed for e in self.engines or ())

    @property
    def first_divergent_engine(self) -> Optional[str]:
        return next((e.engine for e in self.engines or () if not e.passed), None)

    def to_dict(self) -> Dict:
        per_engine = None
        if self.engines is not None:
            per_engine = {"executor": self.engine_executor, "first_divergent": self.first_divergent_engine,
                          "engines": [e.to_dict() for e in self.engines]}
        return _json_ready({
            "passed": self.passed,
            "original": self.original_dir,
            "converted": self.converted_dir,
            "signature": self.signature,
            "inputs": {"source": self.input_source,
                       "tensors": {k: {"dtype": d, "shape": list(s)} for k, (d, s) in self.inputs.items()}},
            "tolerance": {"atol": self.atol, "rtol": self.rtol, "error_stat": self.error_stat},
            "converted_run": {"engine_calls": self.converted_engine_calls,
                              "fallback_calls": self.converted_fallback_calls},
            "outputs": [o.to_dict() for o in self.outputs],
            "per_engine": per_engine,
        })

    def write_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1, allow_nan=False)

    def format(self, histograms: bool = False) -> str:
        """The report as text: header, details of failures (all outputs with ``histograms``),
        and a table of every compared tensor last."""
        lines = [f"compare {self.converted_dir} against {self.original_dir}, signature {self.signature!r}",
                 f"inputs ({self.input_source}): " + ", ".join(
                     f"{k} {d}{list(s)}" for k, (d, s) in self.inputs.items()),
                 f"tolerance: atol={self.atol:g} rtol={self.rtol:g}, error statistic {self.error_stat}"]
        if self.converted_fallback_calls:
            lines.append(f"note: {self.converted_fallback_calls} of {self.converted_engine_calls} engine calls in "
                         f"the converted model ran their native segment, so its outputs do not test engine "
                         f"math; --per-engine does")
        for o in self.outputs:
            if histograms or not o.passed:
                lines += self._details(f"output {o.name!r}", o)
        rows = [(o.name, o) for o in self.outputs]
        if self.engines is not None:
            runner = ("the TftrtLiteEngine op on the GPU, native fallback disabled" if self.engine_executor == "gpu"
                      else "the plan's NumPy reference executor (no GPU)")
            lines.append(f"per-engine: each engine run by {runner}, against its native segment "
                         f"on the inputs it received in the converted model")
            for e in self.engines:
                if e.problem:
                    lines.append(f"engine {e.engine!r} (node {e.node!r}): FAILED to run: {e.problem}")
                for o in e.outputs:
                    if histograms or not o.passed:
                        lines += self._details(f"engine {e.engine!r} {o.name}", o)
                rows += [(f"{e.engine} {o.name}", o) for o in e.outputs]
                if e.problem:
                    rows.append((e.engine, OutputComparison("-", False, problem="failed to run")))
        lines.append("")
        lines += _table(rows)
        verdict = "PASSED" if self.passed else "FAILED"
        failed = [o.name for o in self.outputs if not o.passed]
        summary = f"{verdict}: {len(self.outputs) - len(failed)}/{len(self.outputs)} outputs match"
        if failed:
            summary += f"; mismatched: {', '.join(failed)}"
        if self.engines is not None:
            ok = sum(e.passed for e in self.engines)
            summary += f"; {ok}/{len(self.engines)} engines match their native segment"
            if self.first_divergent_engine:
                summary += f"; first divergent engine: {self.first_divergent_engine}"
        lines.append(summary)
        return "\n".join(lines)

    def _details(self, what: str, o: OutputComparison) -> List[str]:
        if o.problem:
            return [f"{what}: FAILED, {o.problem}"]
        lines = [f"{what}: {'passed' if o.passed else 'FAILED'}, {o.outside_tolerance} of {o.elements} elements "
                 f"outside abs <= atol + rtol*|ref|"]
        if o.worst_index is not None and o.max_abs > 0:
            got, want = (f"{v:.9g}" if isinstance(v, float) else repr(v) for v in o.worst_values)
            lines.append(f"    max abs error {o.max_abs:.4g} at {list(o.worst_index)}: {got} vs reference {want}")
        if o.nonfinite_mismatches:
            lines.append(f"    {o.nonfinite_mismatches} non-finite mismatches (NaN or inf against a different "
                         f"value); no tolerance passes")
        else:
            lines.append(f"    would pass with atol={_up(o.needed_atol)} (rtol={self.rtol:g}) "
                         f"or rtol={_up(o.needed_rtol)} (atol={self.atol:g})")
        return lines + format_histogram(o.abs_histogram, "abs error histogram") + \
            format_histogram(o.rel_histogram, "rel error histogram")


def _up(x: float) -> str:
    """``x`` rounded up to 3 significant digits, so the printed tolerance really passes."""
    if math.isinf(x):
        return "none"
    if x == 0:
        return "0"
    scale = 10.0 ** (math.floor(math.log10(x)) - 2)
    return f"{math.ceil(x / scale) * scale:.3g}"


def _table(rows: Sequence[Tuple[str, OutputComparison]]) -> List[str]:
    header = ["Tensor", "Shape", "Max abs", "Mean abs", "Med abs", "Max rel", "Mean rel", "Med rel",
              "Need atol", "Need rtol", "Result"]
    body = []
    for label, o in rows:
        if o.problem:
            body.append([label, "-" if o.shape is None else str(list(o.shape))] + ["-"] * 8 + [f"FAIL ({o.problem})"])
            continue
        body.append([label, str(list(o.shape))] + [f"{v:.3g}" for v in (
            o.max_abs, o.mean_abs, o.median_abs, o.max_rel, o.mean_rel, o.median_rel)]
            + [_up(o.needed_atol), _up(o.needed_rtol), "PASS" if o.passed else "FAIL"])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def fmt(row: List[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return [fmt(header), "-" * len(fmt(header))] + [fmt(r) for r in body]


def _json_ready(x):
    """Tuples as lists, non-finite floats as None (strict JSON has no inf/NaN)."""
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------- models
def _load(path: str):
    read_saved_model_proto(path)   # a missing or broken directory gets an error naming it
    try:
        return tf.saved_model.load(path)
    except (tf.errors.OpError, ValueError, OSError) as e:
        raise CompareError(f"TensorFlow could not load SavedModel {path!r}: {type(e).__name__}: {e}") from e


def _signature_key(original, converted, key: Optional[str], paths: Tuple[str, str]) -> str:
    for model, path in zip((original, converted), paths):
        if key is not None and key not in model.signatures:
            raise CompareError(f"SavedModel {path!r} has no signature {key!r}; "
                               f"signatures: {sorted(model.signatures.keys())}")
    if key is not None:
        return key
    common = sorted(set(original.signatures.keys()) & set(converted.signatures.keys()))
    if "serving_default" in common:
        return "serving_default"
    if len(common) == 1:
        return common[0]
    raise CompareError(f"choose a signature (--signature KEY): the models share signatures {common}")


def _input_specs(func) -> Dict[str, tf.TensorSpec]:
    specs = func.structured_input_signature[1]
    bad = [k for k, s in specs.items() if not isinstance(s, tf.TensorSpec)]
    if func.structured_input_signature[0] or bad:
        raise CompareError(f"signature inputs must be dense tensors passed by name; not so: {bad or 'positional'}")
    return dict(specs)


def _run(func, feeds: Mapping[str, np.ndarray], path: str) -> Dict[str, np.ndarray]:
    try:
        outputs = func(**{k: tf.constant(v) for k, v in feeds.items()})
    except (tf.errors.OpError, ValueError, TypeError) as e:
        raise CompareError(f"running SavedModel {path!r} failed: {type(e).__name__}: {e}") from e
    return {k: v.numpy() for k, v in outputs.items()}


def compare_saved_models(original_dir: str, converted_dir: str, signature_key: Optional[str] = None,
                         inputs: Union[None, str, os.PathLike, Mapping[str, np.ndarray]] = None,
                         seed: int = 0, batch_size: Optional[int] = None, atol: float = 1e-5,
                         rtol: float = 1e-5, error_stat: str = "elemwise", per_engine: bool = False,
                         engine_executor: str = "auto") -> CompareReport:
    """Run one signature of both SavedModels on the same inputs and compare every output.

    ``inputs``: an ``.npz`` path or a dict keyed by input name; without it, random inputs
    from ``seed`` (``batch_size`` fills an unknown batch dim). ``engine_executor`` picks the
    engine side of ``per_engine``: ``"gpu"`` (the op, native fallback disabled),
    ``"reference"`` (the plan's NumPy executor) or ``"auto"`` (the GPU when there is one).
    Raises :class:`CompareError` when the comparison cannot be made; a mismatch is
    ``report.passed == False``.
    """
    if error_stat not in ERROR_STATS:
        raise CompareError(f"error statistic {error_stat!r} is not one of {list(ERROR_STATS)}")
    if engine_executor not in ENGINE_EXECUTORS:
        raise CompareError(f"engine executor {engine_executor!r} is not one of {list(ENGINE_EXECUTORS)}")
    for label, tol in (("atol", atol), ("rtol", rtol)):
        if not (tol >= 0 and math.isfinite(tol)):
            raise CompareError(f"{label} must be a finite number >= 0, got {tol}")
    if batch_size is not None and batch_size < 1:
        raise CompareError(f"batch size must be >= 1, got {batch_size}")
    executor = engine_executor
    if per_engine and executor == "auto":
        executor = "gpu" if tf.config.list_physical_devices("GPU") else "reference"
    if per_engine and executor == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise CompareError("engine executor 'gpu' needs a GPU and TensorFlow sees none; use 'reference'")

    original, converted = _load(original_dir), _load(converted_dir)
    key = _signature_key(original, converted, signature_key, (original_dir, converted_dir))
    specs = _input_specs(original.signatures[key])
    conv_specs = _input_specs(converted.signatures[key])
    if {k: s.dtype for k, s in specs.items()} != {k: s.dtype for k, s in conv_specs.items()}:
        raise CompareError(f"signature {key!r} takes different inputs in the two models: "
                           f"{_describe(specs)} vs {_describe(conv_specs)}")
    if inputs is None:
        feeds, source = random_inputs(specs, seed, batch_size), f"random, seed {seed}"
    else:
        feeds = checked_inputs(inputs, specs)
        source = f"file {os.fspath(inputs)}" if isinstance(inputs, (str, os.PathLike)) else "given"

    want = _run(original.signatures[key], feeds, original_dir)
    before = oplib.stats()
    got = _run(converted.signatures[key], feeds, converted_dir)
    after = oplib.stats()
    outputs = []
    for name in sorted(set(want) | set(got)):
        if name not in got or name not in want:
            where = "converted" if name not in got else "original"
            outputs.append(OutputComparison(name, False, f"missing from the {where} model's outputs"))
        else:
            outputs.append(compare_arrays(name, got[name], want[name], atol, rtol, error_stat))
    report = CompareReport(
        original_dir, converted_dir, key, source, {k: (str(v.dtype), v.shape) for k, v in feeds.items()},
        atol, rtol, error_stat, outputs,
        converted_engine_calls=after["engine_calls"] - before["engine_calls"],
        converted_fallback_calls=after["fallback_calls"] - before["fallback_calls"])
    if per_engine:
        report.engine_executor = executor
        report.engines = compare_engines(converted.signatures[key], converted_dir, key, feeds, atol, rtol,
                                         error_stat, executor)
    return report


def _describe(specs: Mapping[str, tf.TensorSpec]) -> str:
    return "{" + ", ".join(f"{k}: {s.dtype.name}{s.shape}" for k, s in sorted(specs.items())) + "}"


# --------------------------------------------------------------------------- per engine
def compare_engines(signature_func, converted_dir: str, key: str, feeds: Mapping[str, np.ndarray],
                    atol: float, rtol: float, error_stat: str, executor: str) -> List[EngineComparison]:
    """Each engine of the signature against its native segment, in graph order.

    The signature is frozen (its function calls inlined, with no other rewrite) so every
    engine node sits in one GraphDef; one run of it captures every engine's inputs, so
    each engine sees exactly what it received inside the converted model.
    """
    frozen = freeze_signature(key, signature_func, converted_dir)
    bindings, _ = signature_bindings(key, frozen)
    graph_def = frozen.graph.as_graph_def()
    engines = engine_nodes_in_order(graph_def)
    if not engines:
        raise CompareError(f"signature {key!r} of {converted_dir!r} has no {ENGINE_OP} nodes to compare per engine")
    fetches = sorted({_tensor(i) for node in engines for i in node.input if not i.startswith("^")})
    captured = dict(zip(fetches, _session_run(
        graph_def, fetches, {b.tensor_name: feeds[b.name] for b in bindings}, "capturing engine inputs")))
    tensor_names = _engine_output_tensors(converted_dir, key)
    results = []
    for node in engines:
        name = node.attr["engine_name"].s.decode()
        inputs = [captured[_tensor(i)] for i in node.input if not i.startswith("^")]
        want = run_native_segment(node, graph_def, inputs)
        labels = [f"out {j}" + (f" ({tensor_names[name][j]})" if name in tensor_names else "")
                  for j in range(len(want))]
        try:
            got = (run_engine_op(node, graph_def, inputs) if executor == "gpu"
                   else run_engine_reference(node, inputs))
        except (TftrtLiteError, ValueError, tf.errors.OpError, RuntimeError) as e:   # a plan that cannot run
            results.append(EngineComparison(name, node.name, False, [], f"{type(e).__name__}: {e}"))
            continue
        outs = [compare_arrays(label, a, b, atol, rtol, error_stat) for label, a, b in zip(labels, got, want)]
        results.append(EngineComparison(name, node.name, all(o.passed for o in outs), outs))
    return results


def engine_nodes_in_order(graph_def: graph_pb2.GraphDef) -> List:
    """The ``TftrtLiteEngine`` nodes of ``graph_def`` in topological order (data and control
    edges; ties in GraphDef order), so upstream engines come before the ones they feed."""
    index = {n.name: i for i, n in enumerate(graph_def.node)}
    deps = [set() for _ in graph_def.node]
    readers: List[List[int]] = [[] for _ in graph_def.node]
    for i, n in enumerate(graph_def.node):
        for inp in n.input:
            src = index.get(inp.lstrip("^").split(":")[0])
            if src is not None and src not in deps[i]:
                deps[i].add(src)
                readers[src].append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, c in enumerate(pending) if c == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(graph_def.node[i])
        for r in readers[i]:
            pending[r] -= 1
            if pending[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(graph_def.node):
        raise CompareError("the frozen signature graph has a cycle; cannot order its engines")
    return [n for n in order if n.op == ENGINE_OP]


def _tensor(node_input: str) -> str:
    return node_input if ":" in node_input else f"{node_input}:0"


def _engine_output_tensors(converted_dir: str, key: str) -> Dict[str, List[str]]:
    """Engine name -> the original TF tensors its outputs replace, from the conversion report."""
    report = read_report(converted_dir) or {}
    engines = report.get("signatures", {}).get(key, {}).get("engines", [])
    return {e["name"]: [o["tensor"] for o in e["outputs"]] for e in engines}


def _session_run(graph_def: graph_pb2.GraphDef, fetches: Sequence[str], feeds: Mapping[str, np.ndarray],
                 what: str) -> List[np.ndarray]:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto(allow_soft_placement=False)
    try:
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            return sess.run(list(fetches), dict(feeds))
    except tf.errors.OpError as e:
        raise CompareError(f"{what} failed: {type(e).__name__}: {e.message}") from e


def _interface_graph(node, source: graph_pb2.GraphDef, inputs: Sequence[np.ndarray]) -> graph_pb2.GraphDef:
    """A GraphDef with ``source``'s versions and library and a Placeholder ``input_<i>``
    per engine input."""
    graph_def = graph_pb2.GraphDef()
    graph_def.versions.CopyFrom(source.versions)
    graph_def.library.CopyFrom(source.library)
    for i, (value, dtype) in enumerate(zip(inputs, engine_input_dtypes(node))):
        ph = graph_def.node.add(name=f"input_{i}", op="Placeholder")
        ph.attr["dtype"].type = dtype
        ph.attr["shape"].shape.CopyFrom(tf.TensorShape(np.shape(value)).as_proto())
    return graph_def


def run_native_segment(node, source: graph_pb2.GraphDef, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The engine's native segment function (its ``segment_func`` attr) run by TensorFlow."""
    name = node.attr["engine_name"].s.decode()
    func = node.attr["segment_func"].func
    if not func.name:
        raise CompareError(f"engine {name!r} has no native segment (the model was saved with "
                           f"keep_native_segments=False), so it has nothing to be compared with")
    graph_def = _interface_graph(node, source, inputs)
    call = graph_def.node.add(name="native_segment", op="StatefulPartitionedCall")
    call.input.extend(f"input_{i}" for i in range(len(inputs)))
    call.attr["Tin"].list.type.extend(engine_input_dtypes(node))
    call.attr["Tout"].list.type.extend(node.attr["OutT"].list.type)
    call.attr["f"].func.CopyFrom(func)
    n_out = len(node.attr["OutT"].list.type)
    return _session_run(graph_def, [f"native_segment:{j}" for j in range(n_out)],
                        {f"input_{i}:0": v for i, v in enumerate(inputs)}, f"native segment of engine {name!r}")


def run_engine_op(node, source: graph_pb2.GraphDef, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The ``TftrtLiteEngine`` node itself on the GPU, with native fallback disabled so a
    call the engine cannot serve fails instead of silently running the segment."""
    graph_def = _interface_graph(node, source, inputs)
    engine = graph_def.node.add()
    engine.CopyFrom(node)
    engine.name = "engine"
    engine.device = "/device:GPU:0"
    del engine.input[:]
    engine.input.extend(f"input_{i}" for i in range(len(inputs)))
    n_out = len(node.attr["OutT"].list.type)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with scoped_env(ALLOW_FALLBACK_ENV, "0"), tf.compat.v1.Session(
            graph=graph, config=tf.compat.v1.ConfigProto(allow_soft_placement=False)) as sess:
        return sess.run([f"engine:{j}" for j in range(n_out)], {f"input_{i}:0": v for i, v in enumerate(inputs)})


def run_engine_reference(node, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The engine's plan through the NumPy reference executor.

    The op hands its i-th input to the plan's i-th graph input and takes output j from
    the plan's j-th graph output (positions, as the runtime binds them); the counts must
    agree, and names in the segment interface's ``input_<i>``/``output_<j>`` form must
    sit at their own position, or the plan does not belong to this node.
    """
    from tftrt_lite.engine.builder import Engine

    name = node.attr["engine_name"].s.decode()
    engine = Engine.deserialize(node.attr["serialized_plan"].s)
    n_out = len(node.attr["OutT"].list.type)
    for kind, names, count in (("input", engine.input_names, len(inputs)), ("output", engine.output_names, n_out)):
        if len(names) != count:
            raise CompareError(f"engine {name!r}: the plan has {len(names)} {kind}s, the node {count}")
        for pos, tensor in enumerate(names):
            m = re.fullmatch(rf"{kind}_(\d+)", tensor)
            if m and int(m.group(1)) != pos:
                raise CompareError(f"engine {name!r}: plan {kind} {pos} is named {tensor!r}")
    results = engine.run_reference(dict(zip(engine.input_names, inputs)))
    return [np.asarray(results[t]) for t in engine.output_names]
