"""INT8 calibration: activation ranges from calibration batches, and the int8 number format.

An INT8 engine stores a float tensor as ``q = clamp(rint(x / scale), -127, 127)`` with one
symmetric ``scale = amax / 127`` per activation tensor and one per output channel of a weight.
This module decides those ``amax`` values and pins down the exact arithmetic of that format,
so the NumPy reference executor, the tests and the generated GPU kernels agree bit for bit.

Activation ranges come from running the engine IR over the user's calibration batches and
feeding every tensor to a :class:`Calibrator` batch by batch. Nothing is kept but a running
max and a histogram of ``|x|`` per tensor, so memory does not grow with the number of batches.
The three algorithms are those of TensorRT and NVIDIA's pytorch-quantization
(``calib/histogram.py``), which users of TF-TRT INT8 already rely on:

- ``max``: the largest finite ``|x|`` seen. No clipping; a single outlier wastes resolution.
- ``percentile``: the left edge of the histogram bin where the cumulative count of ``|x|``
  reaches ``percentile`` % (pytorch-quantization's ``_compute_amax_percentile``).
- ``entropy`` (default): TensorRT's entropy calibration (``IInt8EntropyCalibrator2``, as
  pytorch-quantization's ``_compute_amax_entropy`` implements it). For each candidate of
  ``i`` bins (128..all), the reference distribution ``P`` is the first ``i`` bins with every
  count beyond them added to bin ``i-1`` (clipping); ``Q`` merges those ``i`` bins into 128
  levels and spreads each level's count evenly over its non-empty bins; the candidate with
  the smallest ``KL(P || Q)`` wins (the largest one among ties) and ``amax`` is its right
  edge, ``i * width``. As in pytorch-quantization, bin 0 is given bin 1's count first: after
  a ReLU, most values are exactly 0, and that one spike would otherwise dominate the
  divergence though zero is represented exactly at any scale.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import ml_dtypes
import numpy as np

from tftrt_lite.calibrate.table import CalibrationTable

ALGORITHMS = ("entropy", "max", "percentile")
#: largest int8 magnitude used; -128 is never produced, so the range is symmetric.
QMAX = 127
#: |x| levels of symmetric int8 (0..127): the size of the entropy calibrator's ``Q``.
NUM_LEVELS = 128
#: Smallest amax ever used (2**-24, the smallest float16 subnormal, pytorch-quantization's
#: "zero amax" threshold). A tensor that is all zeros has no range, but ``scale = amax / 127``
#: must stay positive: a zero scale turns ``x / scale`` into NaN (0/0) in the kernel and is
#: rejected by the table. With this floor an all-zero tensor quantizes to exact zeros, and the
#: scale (~4.7e-10) is still a normal float32.
AMAX_FLOOR = 2.0 ** -24

_CHUNK = 1 << 20           # elements per step while scanning a batch: bounds temporaries
_GROWTH_LIMIT = 16         # a histogram holds at most this many times num_bins bins
_KL_BLOCK = 1024           # entropy candidates evaluated together (bounds the work arrays)
_TIE_RTOL = 1e-12          # divergences this close count as equal (float noise, not signal)


# --------------------------------------------------------------------------------------------
# int8 number format


def scale_from_amax(amax):
    """``scale = max(float32(amax), AMAX_FLOOR) / 127``, in float32 — the value an engine stores.

    Works on a number or an array of them; ``amax`` must be finite and >= 0.
    """
    a = np.asarray(amax, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"amax must be finite and >= 0, got {amax!r}")
    return np.maximum(a.astype(np.float32), np.float32(AMAX_FLOOR)) / np.float32(QMAX)


def weight_scales(w, axis: int) -> np.ndarray:
    """Per-output-channel symmetric scales of a weight: ``scale_from_amax(max |w|)`` over every
    axis but ``axis``, as float32 of shape ``(w.shape[axis],)``.

    Weights are known exactly at build time, so their range is the true max (no clipping);
    one scale per output channel keeps a channel of small weights from being quantized with a
    neighbour's large range. A channel of zeros gets the :data:`AMAX_FLOOR` scale.
    """
    w = _float_array("weights", w)
    if w.ndim == 0 or w.size == 0:
        raise ValueError(f"weights must have at least one dimension and one element, got shape {w.shape}")
    axis = _normalize_axis(axis, w.ndim, "weights")
    others = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.max(np.abs(w.astype(np.float32)), axis=others) if others else np.abs(w.astype(np.float32))
    bad = np.flatnonzero(~np.isfinite(amax))
    if bad.size:
        raise ValueError(f"weights have non-finite values (NaN/Inf) in output channel(s) {bad[:10].tolist()} "
                         f"along axis {axis}; they cannot be quantized")
    return scale_from_amax(amax)


def quantize(x, scale, axis: Optional[int] = None) -> np.ndarray:
    """int8 values of ``x``: exactly what a GPU kernel computes, in float32.

    With ``x`` and ``scale`` converted to float32 (``axis``: per-channel ``scale`` along that
    axis; ``None``: one scalar scale), each element is::

        q = (signed char)fminf(fmaxf(rintf(x / scale), -127.0f), 127.0f);

    - ``x / scale`` is an IEEE float32 division, rounded to nearest (CUDA's ``/`` with NVRTC's
      default ``-prec-div=true``; not ``--use_fast_math``, and not ``x * (1/scale)``, which
      rounds differently).
    - ``rintf`` rounds half to even (2.5 → 2, 3.5 → 4), as ``np.rint``.
    - The clamp saturates out-of-range values and ±inf to ±127; -128 is never produced. The
      clamp order is part of the contract: ``fmaxf`` first returns -127 for NaN (``fmaxf``
      returns its non-NaN operand), so NaN quantizes to -127.
    """
    x32 = _float_array("x", x).astype(np.float32, copy=False)
    s = _scale_for(scale, x32.shape, axis)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        q = np.rint(np.divide(x32, s, dtype=np.float32))
    return np.fmin(np.fmax(q, np.float32(-QMAX)), np.float32(QMAX)).astype(np.int8)


def dequantize(q, scale, axis: Optional[int] = None) -> np.ndarray:
    """float32 values of int8 ``q``: ``(float)q * scale`` in float32, the kernel's expression.

    ``scale``/``axis`` as in :func:`quantize`. For ``|x| <= 127 * scale``,
    ``|dequantize(quantize(x, s), s) - x| <= s / 2`` up to float32 rounding of the division
    and product (exact when ``s`` is a power of two).
    """
    q = np.asarray(q)
    if q.dtype != np.int8:
        raise TypeError(f"dequantize expects int8 values, got dtype {q.dtype}")
    s = _scale_for(scale, q.shape, axis)
    return np.multiply(q.astype(np.float32), s, dtype=np.float32)


def _scale_for(scale, shape: Tuple[int, ...], axis: Optional[int]) -> np.ndarray:
    """``scale`` as float32, validated and shaped to broadcast against ``shape``."""
    s = np.asarray(scale)
    if s.dtype.kind not in "fiu":
        raise TypeError(f"scale must be a real number or array, got dtype {s.dtype}")
    s = s.astype(np.float32)
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError(f"scale must be finite and > 0 in float32, got {scale!r}")
    if axis is None:
        if s.size != 1 or s.ndim > 1:
            raise ValueError(f"scale must be a single number when axis is None, got shape {s.shape}")
        return s.reshape(())
    axis = _normalize_axis(axis, len(shape), "x")
    if s.shape != (shape[axis],):
        raise ValueError(f"per-channel scale must have shape ({shape[axis]},) for axis {axis} of shape "
                         f"{tuple(shape)}, got {s.shape}")
    return s.reshape([shape[axis] if d == axis else 1 for d in range(len(shape))])


def _normalize_axis(axis, ndim: int, what: str) -> int:
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {axis!r}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {what} of rank {ndim}")
    return axis % ndim


# --------------------------------------------------------------------------------------------
# histograms and the amax they give


class AbsHistogram:
    """Streaming histogram of ``|x|`` over ``[0, width * len(counts))`` in equal-width bins.

    The first batch holding a positive value fixes ``width = its max / num_bins``. A later
    batch reaching past the range extends it by whole bins of the same width, as
    pytorch-quantization does, so earlier counts stay in their bins exactly and one big batch
    and the same data in several batches give histograms that differ at most by a bin of
    resolution. Should the range ever need more than ``max_bins`` bins (a later batch's max
    ``max_bins / num_bins`` times the first one's), adjacent bins are merged in groups of
    ``2**k`` and the width grows ``2**k`` times: counts stay exact, resolution drops, memory
    stays bounded whatever the outliers do.

    Zeros that arrive before any positive value have no bin width to go by yet; they are
    counted aside and land in bin 0 once the histogram starts.
    """

    def __init__(self, num_bins: int = 2048, max_bins: Optional[int] = None):
        self.num_bins = _check_num_bins(num_bins)
        self.max_bins = _GROWTH_LIMIT * self.num_bins if max_bins is None else operator.index(max_bins)
        if self.max_bins < self.num_bins:
            raise ValueError(f"max_bins ({self.max_bins}) must be >= num_bins ({self.num_bins})")
        self.counts: Optional[np.ndarray] = None
        self.width = 0.0
        self._pending_zeros = 0

    @property
    def total(self) -> int:
        """Number of values counted."""
        return self._pending_zeros if self.counts is None else int(self.counts.sum())

    def edges(self) -> np.ndarray:
        """Bin edges, ``len(counts) + 1`` of them (empty before the first positive value)."""
        if self.counts is None:
            return np.zeros(0)
        return np.arange(len(self.counts) + 1) * self.width

    def cover(self, vmax: float) -> None:
        """Make the range reach ``vmax`` (finite, >= 0): start, extend or coarsen the bins."""
        if self.counts is None:
            if vmax > 0:
                self.width = float(vmax) / self.num_bins
                self.counts = np.zeros(self.num_bins, np.int64)
                self.counts[0] = self._pending_zeros
                self._pending_zeros = 0
            return
        needed = self._bins_for(vmax)
        if needed <= len(self.counts):
            return
        if needed > self.max_bins:
            self._coarsen(vmax)
            needed = max(self._bins_for(vmax), len(self.counts))
        self.counts = np.concatenate([self.counts, np.zeros(needed - len(self.counts), np.int64)])

    def add(self, values: np.ndarray) -> None:
        """Count finite, non-negative ``values`` (any float dtype), growing the range as needed."""
        if values.size == 0:
            return
        vmax = float(values.max())
        if not math.isfinite(vmax) or values.min() < 0:
            raise ValueError("AbsHistogram.add takes finite, non-negative values (|x| with NaN/Inf removed)")
        self.cover(vmax)
        if self.counts is None:  # no positive value yet: they are all zeros
            self._pending_zeros += values.size
            return
        n = len(self.counts)
        index = (values * np.float64(1.0 / self.width)).astype(np.int64)  # values >= 0: truncation = floor
        np.minimum(index, n - 1, out=index)  # the top edge belongs to the last bin, as in np.histogram
        self.counts += np.bincount(index, minlength=n)

    def _bins_for(self, vmax: float) -> int:
        # A value a few ulps past an edge (vmax / width is rarely exact) needs no extra bin.
        return math.ceil(vmax / self.width - 1e-9)

    def _coarsen(self, vmax: float) -> None:
        k = max(1, math.ceil(math.log2(vmax) - math.log2(self.width) - math.log2(self.max_bins)))
        while math.ceil(vmax / math.ldexp(self.width, k) - 1e-9) > self.max_bins:
            k += 1
        group = min(2 ** k, len(self.counts))  # 2**k past every bin: all of them merge into bin 0
        padded = np.concatenate([self.counts, np.zeros(-len(self.counts) % group, np.int64)])
        self.counts = padded.reshape(-1, group).sum(axis=1)
        self.width = math.ldexp(self.width, k)


def amax_percentile(counts: np.ndarray, width: float, percentile: float) -> float:
    """Left edge of the first bin where the cumulative count reaches ``percentile`` % of all
    counts (pytorch-quantization's ``_compute_amax_percentile``)."""
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, percentile / 100.0 * cumulative[-1], side="left"))
    return index * width


def entropy_divergences(counts: np.ndarray) -> np.ndarray:
    """``KL(P_i || Q_i)`` for every candidate of ``i = 128 .. len(counts)`` bins (element
    ``i - 128``); ``inf`` where ``Q_i`` is zero but ``P_i`` is not (bin ``i-1`` empty while
    values lie beyond it).

    Why not the textbook loop: building ``P`` and ``Q`` per candidate is ``O(bins)`` NumPy
    calls each, seconds per tensor. The divergence only needs per-level sums, so with prefix
    sums of the counts ``h``, of the non-empty-bin indicator and of ``h log h`` it is, per
    candidate (``T`` total, ``C = sum(h[:i])``, ``O = T - C`` outliers, ``S_k``/``N_k`` count and
    non-empty bins of level ``k``, ``S'_k = S_k`` except ``S'_127 = S_127 + O``)::

        KL = (A - B) / T + log C - log T
        A  = sum_{j < i-1} h_j log h_j + P_{i-1} log P_{i-1},     P_{i-1} = h_{i-1} + O
        B  = sum_{k: N_k > 0} S'_k log(S_k / N_k)

    evaluated for a block of candidates at once over ``(candidates, 128)`` arrays. Level ``k``
    of candidate ``i`` holds bins ``j`` with ``floor(j * 128 / i) == k``, i.e. from
    ``ceil(k * i / 128)`` on; bin ``i-1`` is always in level 127 because ``i >= 128``.
    """
    h = np.asarray(counts, dtype=np.float64).copy()
    n = h.size
    if n < NUM_LEVELS:
        raise ValueError(f"entropy calibration needs at least {NUM_LEVELS} histogram bins, got {n}")
    h[0] = h[1]  # the zero spike after ReLU (see the module docstring)
    total = h.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        h_log_h = np.where(h > 0, h * np.log(h), 0.0)
    cum_h = np.concatenate([[0.0], np.cumsum(h)])
    cum_nonzero = np.concatenate([[0], np.cumsum(h > 0)])
    cum_h_log_h = np.concatenate([[0.0], np.cumsum(h_log_h)])
    levels = np.arange(NUM_LEVELS + 1, dtype=np.int64)
    candidates = np.arange(NUM_LEVELS, n + 1, dtype=np.int64)
    out = np.empty(candidates.size)
    for start in range(0, candidates.size, _KL_BLOCK):
        i = candidates[start:start + _KL_BLOCK]
        lo = (levels[None, :] * i[:, None] + NUM_LEVELS - 1) // NUM_LEVELS  # first bin of each level; last = i
        level_sum = cum_h[lo[:, 1:]] - cum_h[lo[:, :-1]]
        level_nonzero = cum_nonzero[lo[:, 1:]] - cum_nonzero[lo[:, :-1]]
        kept = cum_h[i]
        outliers = total - kept
        last = h[i - 1] + outliers
        weighted = level_sum.copy()
        weighted[:, -1] += outliers
        with np.errstate(divide="ignore", invalid="ignore"):
            log_q = np.log(level_sum / level_nonzero)
            b = np.where(level_nonzero > 0, weighted * log_q, 0.0).sum(axis=1)
            a = cum_h_log_h[i - 1] + np.where(last > 0, last * np.log(last), 0.0)
            kl = (a - b) / total + np.log(kept) - np.log(total)
        kl[(h[i - 1] == 0) & (outliers > 0)] = np.inf
        out[start:start + i.size] = kl
    return out


def amax_entropy(counts: np.ndarray, width: float) -> float:
    """amax minimising the KL divergence (:func:`entropy_divergences`); among candidates within
    float noise of the minimum, the largest, as pytorch-quantization's "last argmin"."""
    divergences = entropy_divergences(counts)
    best = divergences.min()
    chosen = np.flatnonzero(divergences <= best + _TIE_RTOL * max(1.0, abs(best)))[-1]
    return float((NUM_LEVELS + chosen) * width)


# --------------------------------------------------------------------------------------------
# per-tensor statistics and the facade


class TensorStats:
    """What one tensor's batches leave behind: running max ``|x|``, the ``|x|`` histogram (for
    the histogram algorithms), and how many finite and non-finite values were seen.

    NaN and ±inf are left out of every statistic and counted: one bad batch should cost a
    warning in the table, not the whole calibration run.
    """

    def __init__(self, name: str, histogram: Optional[AbsHistogram]):
        self.name = name
        self.histogram = histogram
        self.max = 0.0
        self.num_finite = 0
        self.num_nonfinite = 0

    def observe(self, array) -> None:
        x = _float_array(self.name, array)
        batch_max, nonfinite = 0.0, 0
        for a in _abs_chunks(x):
            finite = np.isfinite(a)
            bad = a.size - int(np.count_nonzero(finite))
            if bad:
                nonfinite += bad
                a = a[finite]
            if a.size:
                batch_max = max(batch_max, float(a.max()))
        self.max = max(self.max, batch_max)
        self.num_nonfinite += nonfinite
        self.num_finite += x.size - nonfinite
        if self.histogram is not None and x.size > nonfinite:
            self.histogram.cover(batch_max)  # the whole batch's range first: one batch, one bin width
            for a in _abs_chunks(x):
                self.histogram.add(a[np.isfinite(a)] if nonfinite else a)

    def amax(self, algorithm: str, percentile: float) -> Tuple[float, List[str]]:
        """``(amax, warnings)``; amax is never below :data:`AMAX_FLOOR`."""
        warnings = []
        if self.num_nonfinite:
            warnings.append(f"ignored {self.num_nonfinite} non-finite value(s) (NaN/Inf) of "
                            f"{self.num_finite + self.num_nonfinite}")
        if self.num_finite == 0:
            warnings.append(f"no finite values observed; amax set to the floor {AMAX_FLOOR:g}")
            return AMAX_FLOOR, warnings
        if self.max == 0:
            warnings.append(f"all {self.num_finite} observed values are zero; amax set to the floor {AMAX_FLOOR:g} "
                            f"so the scale stays positive and the tensor quantizes to exact zeros")
            return AMAX_FLOOR, warnings
        if algorithm == "max":
            amax = self.max
        elif algorithm == "percentile":
            amax = amax_percentile(self.histogram.counts, self.histogram.width, percentile)
        else:
            amax = amax_entropy(self.histogram.counts, self.histogram.width)
        if amax < AMAX_FLOOR:
            warnings.append(f"{algorithm} amax {amax:g} is below the floor {AMAX_FLOOR:g} (max |x| is "
                            f"{self.max:g}); raised to the floor")
            amax = AMAX_FLOOR
        return float(amax), warnings


class Calibrator:
    """Activation ranges of an engine's tensors from calibration batches.

    ``algorithm``: one of :data:`ALGORITHMS` (``"entropy"`` default, as TF-TRT's INT8
    calibration); ``percentile``: for ``"percentile"``, in (0, 100]; ``num_bins``: bins of each
    ``|x|`` histogram when it starts (>= 128, the int8 levels the entropy search needs).

    Feed each batch with :meth:`observe_batch` (or tensor by tensor with :meth:`observe`),
    then :meth:`compute` the table.
    """

    def __init__(self, algorithm: str = "entropy", percentile: float = 99.99, num_bins: int = 2048):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown calibration algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
        if (isinstance(percentile, bool) or not isinstance(percentile, numbers.Real)
                or not 0 < percentile <= 100):
            raise ValueError(f"percentile must be a number in (0, 100], got {percentile!r}")
        self.algorithm = algorithm
        self.percentile = float(percentile)
        self.num_bins = _check_num_bins(num_bins)
        self.num_batches = 0
        self.num_samples = 0
        self._stats: Dict[str, TensorStats] = {}

    @property
    def names(self) -> List[str]:
        """Tensors observed so far, in first-seen order."""
        return list(self._stats)

    def observe(self, name: str, array) -> None:
        """Add one tensor's values (a float array of any shape) to its statistics. Does not count
        a batch; :meth:`observe_batch` does."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor name must be a non-empty string, got {name!r}")
        x = _float_array(name, array)  # before registering the name: a rejected array leaves no trace
        stats = self._stats.get(name)
        if stats is None:
            histogram = None if self.algorithm == "max" else AbsHistogram(self.num_bins)
            stats = self._stats[name] = TensorStats(name, histogram)
        stats.observe(x)

    def observe_batch(self, tensors: Mapping[str, object], batch_size: Optional[int] = None) -> None:
        """Add one calibration batch: tensor name → its values for this batch.

        ``batch_size`` (samples in the batch) defaults to the leading dimension the arrays
        share; pass it when they do not share one (e.g. a tensor reshaped to ``[N*S, H]``).
        Every array is checked before any statistic changes, so a rejected batch leaves the
        calibrator as it was.
        """
        if not isinstance(tensors, Mapping):
            raise TypeError(f"observe_batch expects a mapping of tensor name -> array, got {type(tensors).__name__}")
        if not tensors:
            raise ValueError("observe_batch got an empty batch (no tensors)")
        arrays = {name: _float_array(name, a) for name, a in tensors.items()}
        if batch_size is None:
            batch_size = _shared_batch_size(arrays)
        elif isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        for name, a in arrays.items():
            self.observe(name, a)
        self.num_batches += 1
        self.num_samples += int(batch_size)

    def compute(self, model: str = "") -> CalibrationTable:
        """The table of every observed tensor's amax (``model``: the table's fingerprint key)."""
        if not self._stats:
            raise ValueError("nothing to calibrate: no tensor was observed")
        amax, warnings = {}, {}
        for name, stats in self._stats.items():
            amax[name], notes = stats.amax(self.algorithm, self.percentile)
            if notes:
                warnings[name] = "; ".join(notes)
        return CalibrationTable(amax=amax, algorithm=self.algorithm, num_batches=self.num_batches,
                                num_samples=self.num_samples, model=model, warnings=warnings)


def _check_num_bins(num_bins) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) or num_bins < NUM_LEVELS:
        raise ValueError(f"num_bins must be an integer >= {NUM_LEVELS} (the int8 levels entropy calibration "
                         f"compares against), got {num_bins!r}")
    return int(num_bins)


def _is_float_dtype(dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    if dtype.kind != "V":  # ml_dtypes' bfloat16 and float8 types are kind "V"
        return False
    try:
        ml_dtypes.finfo(dtype)
    except (ValueError, TypeError):
        return False
    return True


def _float_array(name: str, array) -> np.ndarray:
    x = np.asarray(array)
    if not _is_float_dtype(x.dtype):
        raise TypeError(f"cannot calibrate or quantize {name!r}: dtype {x.dtype} is not floating point "
                        f"(only float tensors have int8 ranges)")
    return x


def _abs_chunks(x: np.ndarray) -> Iterator[np.ndarray]:
    """``|x|`` flattened, a bounded slice at a time, in float32 (float64 for 64-bit input)."""
    work = np.float64 if x.dtype.itemsize > 4 else np.float32
    flat = x.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        yield np.abs(flat[start:start + _CHUNK].astype(work, copy=False))


def _shared_batch_size(arrays: Mapping[str, np.ndarray]) -> int:
    leading = {name: a.shape[0] for name, a in arrays.items() if a.ndim > 0}
    sizes = set(leading.values())
    if len(sizes) != 1:
        found = ", ".join(f"{n}: {s}" for n, s in list(leading.items())[:8]) or "only scalars"
        raise ValueError(f"cannot infer the batch size: the arrays do not share one leading dimension ({found}); "
                         f"pass batch_size=")
    size = sizes.pop()
    if size < 1:
        raise ValueError("cannot infer the batch size: the arrays' leading dimension is 0; pass batch_size=")
    return size
