"""Calibration statistics (max / percentile / entropy), histogram growth, and the int8 format."""
import time

import ml_dtypes
import numpy as np
import pytest

from tftrt_lite.calibrate.calibrators import (
    ALGORITHMS, AMAX_FLOOR, AbsHistogram, Calibrator, amax_entropy, amax_percentile, dequantize,
    entropy_divergences, quantize, scale_from_amax, weight_scales)


def brute_force_kl(hist):
    """TensorRT's entropy calibration written out candidate by candidate, the textbook way.

    Independent of the vectorised implementation: levels come from np.linspace/np.digitize,
    P and Q are built as explicit arrays, KL is summed directly. Returns the divergence of
    every candidate of i = 128 .. len(hist) bins.
    """
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    out = []
    for i in range(128, len(bins) + 1):
        level = np.digitize(np.arange(i), np.linspace(0, i, 129)) - 1
        level[bins[:i] == 0] = -1
        q = np.zeros(i)
        for k in range(128):
            members = level == k
            if members.any():
                q[members] = bins[:i][members].sum() / members.sum()
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        support = p > 0
        if np.any(q[support] == 0):
            out.append(np.inf)
        else:
            out.append(float(np.sum(p[support] * np.log(p[support] / q[support]))))
    return np.array(out)


def _histogram(values, num_bins):
    h = AbsHistogram(num_bins)
    h.add(np.abs(values))
    return h


@pytest.mark.parametrize("data", ["gaussian", "relu_sparse_tail"])
def test_entropy_matches_brute_force_kl(data):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000)
    if data == "relu_sparse_tail":  # a zero spike, and empty bins between the bulk and a few outliers
        x = np.concatenate([np.maximum(x, 0), [9.0, 12.0, 20.0]])
    h = _histogram(x, 384)
    expected = brute_force_kl(h.counts)
    got = entropy_divergences(h.counts)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=0, atol=1e-12)
    best = np.flatnonzero(expected == expected.min())[-1]
    assert amax_entropy(h.counts, h.width) == pytest.approx((128 + best) * h.width, rel=1e-12)
    if data == "relu_sparse_tail":
        assert np.isinf(expected).any()  # the case the inf rule exists for is exercised


def test_entropy_amax_for_gaussian_lands_between_clipping_and_max():
    rng = np.random.default_rng(1)
    sigma = 2.0
    x = (sigma * rng.standard_normal((8, 125_000))).astype(np.float32)
    cal = Calibrator("entropy")
    for batch in x:
        cal.observe_batch({"t": batch[None]})
    amax = cal.compute().amax["t"]
    # Clips the sparse tail (below max |x|) but keeps the bulk: well past 3 sigma.
    assert 3.0 * sigma < amax < float(np.abs(x).max())
    single = _histogram(x.reshape(-1), 2048)
    assert amax == pytest.approx(amax_entropy(single.counts, single.width), rel=0.02)


def test_entropy_of_a_single_spike_is_its_bin_edge():
    h = AbsHistogram(256)
    h.add(np.array([0.0] * 50 + [1.0] * 10))  # everything at 0 or at the top bin
    assert amax_entropy(h.counts, h.width) == pytest.approx(1.0)


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99])
def test_percentile_matches_numpy_within_a_bin(percentile):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(400_000).astype(np.float32) * 3
    cal = Calibrator("percentile", percentile=percentile)
    cal.observe_batch({"t": x})
    width = float(np.abs(x).max()) / 2048
    expected = np.percentile(np.abs(x), percentile)
    assert abs(cal.compute().amax["t"] - expected) <= width * 1.0001


def test_percentile_is_the_left_edge_of_the_crossing_bin():
    counts = np.array([10, 0, 30, 40, 20])  # cumulative 10, 10, 40, 80, 100
    assert amax_percentile(counts, 0.5, 50.0) == 1.5   # 50 % reached in bin 3, which starts at 1.5
    assert amax_percentile(counts, 0.5, 40.0) == 1.0   # exactly reached in bin 2
    assert amax_percentile(counts, 0.5, 100.0) == 2.0


def test_max_is_exact_and_streaming_equals_one_batch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 1000)).astype(np.float32) * np.array([1, 1, 5, 1, 9, 2], np.float32)[:, None]
    streamed, whole = Calibrator("max"), Calibrator("max")
    for batch in x:
        streamed.observe_batch({"t": batch[None]})
    whole.observe_batch({"t": x})
    assert streamed.compute().amax["t"] == whole.compute().amax["t"] == float(np.abs(x).max())


def test_percentile_streaming_equals_one_batch_within_a_bin():
    rng = np.random.default_rng(4)
    # later batches reach further, so the streamed histogram grows twice
    x = [rng.standard_normal(100_000).astype(np.float32) * s for s in (1.0, 2.0, 4.0)]
    streamed, whole = Calibrator("percentile"), Calibrator("percentile")
    for batch in x:
        streamed.observe_batch({"t": batch[None]})
    whole.observe_batch({"t": np.concatenate(x)[None]})
    width = max(float(np.abs(b).max()) for b in x) / 2048  # the coarser of the two histograms' widths
    expected = np.percentile(np.abs(np.concatenate(x)), 99.99)
    for cal in (streamed, whole):
        assert abs(cal.compute().amax["t"] - expected) <= width * 1.0001


def _expected_counts(first, second, edges, first_top_bin):
    """np.histogram of both batches on the final edges, but with the first batch's max (1.0) in
    ``first_top_bin``: it sat on the first histogram's closed top edge, which growth made an
    interior edge, and a value never moves to another bin once counted."""
    counts = np.histogram(np.concatenate([first, second]), bins=edges)[0]
    counts[first_top_bin + 1] -= 1
    counts[first_top_bin] += 1
    return counts


def test_range_growth_extends_with_the_same_width_and_keeps_counts():
    rng = np.random.default_rng(5)
    first = np.append(rng.uniform(0, 1, 9_999), 1.0)
    second = np.append(rng.uniform(0, 3, 9_999), 3.0)
    h = AbsHistogram(256)
    h.add(first)
    width, before = h.width, h.counts.copy()
    h.add(second)
    assert h.width == width and len(h.counts) == 768
    assert h.total == 20_000
    np.testing.assert_array_equal(h.counts, _expected_counts(first, second, h.edges(), first_top_bin=255))
    # the first batch's counts stayed in their bins: what changed there is the second batch's share
    np.testing.assert_array_equal(h.counts[:256] - before, np.histogram(second, bins=h.edges()[:257])[0])


def test_growth_past_max_bins_merges_bins_exactly():
    rng = np.random.default_rng(6)
    first = np.append(rng.uniform(0, 1, 4_999), 1.0)
    second = np.append(rng.uniform(0, 5, 4_999), 5.0)
    h = AbsHistogram(128, max_bins=256)
    h.add(first)
    h.add(second)  # needs 640 bins at the first width: merge groups of 4 instead
    assert h.width == 4 / 128 and len(h.counts) == 160
    np.testing.assert_array_equal(h.counts, _expected_counts(first, second, h.edges(), first_top_bin=31))


def test_extreme_growth_stays_bounded():
    h = AbsHistogram(128)
    h.add(np.array([0.0, 1e-30, 5e-31]))
    h.add(np.array([1e30, 3.0]))
    assert len(h.counts) <= 16 * 128 and h.total == 5
    assert h.edges()[-1] >= 1e30
    assert entropy_divergences(h.counts).size == len(h.counts) - 127


def test_histogram_rejects_values_that_are_not_finite_magnitudes():
    h = AbsHistogram(128)
    for bad in ([1.0, -0.5], [1.0, np.nan], [np.inf]):
        with pytest.raises(ValueError, match="finite, non-negative values"):
            h.add(np.array(bad))
    assert h.total == 0


def test_zeros_before_the_first_positive_value_land_in_bin_zero():
    h = AbsHistogram(128)
    h.add(np.zeros(7))
    assert h.counts is None and h.total == 7
    h.add(np.array([0.0, 2.0]))
    assert h.counts[0] == 8 and h.counts[-1] == 1 and h.total == 9


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_non_finite_values_are_ignored_and_counted(algorithm):
    clean = np.linspace(-3, 3, 4001, dtype=np.float32)
    dirty = np.concatenate([clean, np.array([np.nan, np.inf, -np.inf], np.float32)])
    reference, cal = Calibrator(algorithm), Calibrator(algorithm)
    reference.observe_batch({"t": clean}, batch_size=1)
    cal.observe_batch({"t": dirty}, batch_size=1)
    table = cal.compute()
    assert table.amax["t"] == reference.compute().amax["t"]
    assert "3 non-finite" in table.warnings["t"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_all_zero_and_all_nan_tensors_get_the_floor(algorithm):
    cal = Calibrator(algorithm)
    cal.observe_batch({"zero": np.zeros((2, 8), np.float32), "nan": np.full((2, 3), np.nan, np.float32)})
    table = cal.compute()
    assert table.amax == {"zero": AMAX_FLOOR, "nan": AMAX_FLOOR}
    assert "zero" in table.warnings["zero"] and "no finite values" in table.warnings["nan"]
    scale = scale_from_amax(table.amax["zero"])
    assert scale > 0 and np.all(quantize(np.zeros(4, np.float32), scale) == 0)


def test_percentile_below_the_floor_is_raised_and_reported():
    cal = Calibrator("percentile", percentile=99.0)
    cal.observe_batch({"t": np.concatenate([np.zeros(1000), [1.0]])[None]})  # 99 % of values in bin 0
    table = cal.compute()
    assert table.amax["t"] == AMAX_FLOOR and "below the floor" in table.warnings["t"]


def test_non_float_tensors_are_rejected_by_name():
    cal = Calibrator()
    for bad in (np.arange(4, dtype=np.int32), np.ones(3, bool), np.ones(2, np.complex64)):
        with pytest.raises(TypeError, match=r"'idx'.*not floating point"):
            cal.observe("idx", bad)
    cal.observe("bf", np.ones(4, ml_dtypes.bfloat16) * 3)
    cal.observe("f16", np.ones(4, np.float16))
    assert cal.names == ["bf", "f16"]  # the rejected tensor left no entry behind
    assert cal.compute().amax["bf"] > 0


def test_invalid_options_name_the_valid_ones():
    with pytest.raises(ValueError, match="unknown calibration algorithm 'kl'; valid: entropy, max, percentile"):
        Calibrator("kl")
    for p in (0, 100.5, float("nan"), True, "99"):
        with pytest.raises(ValueError, match="percentile must be"):
            Calibrator("percentile", percentile=p)
    for n in (64, 2048.0, True):
        with pytest.raises(ValueError, match="num_bins must be an integer >= 128"):
            Calibrator(num_bins=n)


def test_batches_and_samples_are_counted_and_a_bad_batch_changes_nothing():
    cal = Calibrator("max")
    cal.observe_batch({"a": np.ones((4, 3), np.float32), "b": np.ones((4, 5, 5), np.float32)})
    cal.observe_batch({"a": np.ones((6, 2), np.float32)}, batch_size=6)
    with pytest.raises(ValueError, match=r"do not share one leading dimension \(a: 2, b: 3\); pass batch_size="):
        cal.observe_batch({"a": np.full((2, 1), 50, np.float32), "b": np.ones((3, 1), np.float32)})
    with pytest.raises(TypeError, match="'i'"):
        cal.observe_batch({"a": np.full((2, 1), 50, np.float32), "i": np.ones(2, np.int64)})
    table = cal.compute(model="fp")
    assert (table.num_batches, table.num_samples, table.model) == (2, 10, "fp")
    assert table.amax == {"a": 1.0, "b": 1.0}  # the rejected batches' 50s never counted
    with pytest.raises(ValueError, match="nothing to calibrate"):
        Calibrator().compute()


def test_computing_sixty_tensors_is_fast():
    rng = np.random.default_rng(7)
    cal = Calibrator("entropy")
    for k in range(60):
        cal.observe(f"t{k}", rng.standard_normal(20_000).astype(np.float32) * (k + 1))
    start = time.perf_counter()
    table = cal.compute()
    assert time.perf_counter() - start < 5.0  # the per-candidate loop takes minutes here
    assert len(table.amax) == 60


# --------------------------------------------------------------------------------------------
# int8 format


def test_quantize_rounds_half_to_even_and_saturates_symmetrically():
    s = np.float32(0.5)
    x = np.array([1.25, 1.75, -1.25, 0.25, -0.25, 1000, -1000, np.inf, -np.inf, np.nan, 63.5, -63.75], np.float32)
    q = quantize(x, s)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, [2, 4, -2, 0, 0, 127, -127, 127, -127, -127, 127, -127])


def test_quantize_divides_in_float32():
    # x / s rounds to exactly 63.5 in float32 (then to even: 64); the exact quotient is 63.4999992
    x, s = np.float32(34.465378), np.float32(0.54276186)
    assert np.float64(x) / np.float64(s) < 63.5
    assert quantize(x, s) == 64
    # a division, not a multiplication by 1/s, which rounds to 96 here
    x, s = np.float32(18.720106), np.float32(0.19602206)
    assert np.rint(x * (np.float32(1) / s)) == 96 and quantize(x, s) == 95


def test_round_trip_error_is_at_most_half_a_step():
    rng = np.random.default_rng(8)
    s = np.float32(2.0 ** -5)  # power of two: division and product are exact
    x = rng.uniform(-127 * s, 127 * s, 100_000).astype(np.float32)
    assert np.max(np.abs(dequantize(quantize(x, s), s) - x)) <= s / 2
    w = rng.standard_normal((3, 3, 8, 16)).astype(np.float32) * rng.uniform(0.01, 5, 16).astype(np.float32)
    scales = weight_scales(w, axis=3)
    err = np.abs(dequantize(quantize(w, scales, axis=3), scales, axis=3) - w)
    assert np.all(err <= scales * np.float32(0.5 + 1e-5))


def test_weight_scales_are_per_output_channel():
    w = np.zeros((4, 2, 3, 3), np.float32)  # OIHW, channel 2 all zero
    w[0, 0, 0, 0], w[1, 1, 2, 2], w[3, 0, 1, 1] = -2.54, 1.27, 127.0
    scales = weight_scales(w, axis=0)
    assert scales.dtype == np.float32 and scales.shape == (4,)
    np.testing.assert_array_equal(scales, np.float32([2.54, 1.27, AMAX_FLOOR, 127.0]) / np.float32(127))
    np.testing.assert_array_equal(weight_scales(np.moveaxis(w, 0, -1), axis=-1), scales)
    assert quantize(w, scales, axis=0)[0, 0, 0, 0] == -127
    w[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite values \(NaN/Inf\) in output channel\(s\) \[1\]"):
        weight_scales(w, axis=0)
    with pytest.raises(ValueError, match="axis 4 is out of range for weights of rank 4"):
        weight_scales(w, axis=4)


def test_scale_and_format_arguments_are_checked():
    assert scale_from_amax(12.7) == np.float32(12.7) / np.float32(127)
    assert scale_from_amax(0.0) == np.float32(AMAX_FLOOR) / np.float32(127)
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="amax must be finite and >= 0"):
            scale_from_amax(bad)
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        quantize(x, 0.0)
    with pytest.raises(ValueError, match="single number when axis is None"):
        quantize(x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"must have shape \(3,\) for axis 1"):
        quantize(x, np.ones(2, np.float32), axis=1)
    with pytest.raises(TypeError, match="int8 values"):
        dequantize(np.ones(3, np.int32), 1.0)
    with pytest.raises(TypeError, match="not floating point"):
        quantize(np.ones(3, np.int32), 1.0)
