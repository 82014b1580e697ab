"""LatencyHistogram: exact merges, quantiles within the relative accuracy."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingmesh.core.stats import LatencyHistogram, prometheus_bucket_bounds_s

rtts = st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False)
samples = st.lists(rtts, min_size=1, max_size=300)
quantile = st.floats(min_value=0.0, max_value=1.0)


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _histogram(values: list[float]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    histogram.extend(values)
    return histogram


def _close(estimate: float | None, truth: float, alpha: float) -> bool:
    assert estimate is not None
    if truth < 1e-3:
        return estimate == 0.0
    return abs(estimate - truth) <= alpha * truth * (1 + 1e-9)


@given(samples, quantile)
def test_quantile_is_within_the_relative_accuracy(values: list[float], q: float) -> None:
    histogram = _histogram(values)
    assert _close(histogram.quantile(q), _nearest_rank(values, q), histogram.alpha)


@given(samples, samples)
def test_merge_equals_the_histogram_of_the_union(left: list[float], right: list[float]) -> None:
    merged = _histogram(left)
    merged.merge(_histogram(right))
    union = _histogram(left + right)
    assert merged.counts == union.counts
    assert (merged.zero_count, merged.total) == (union.zero_count, union.total)
    assert (merged.min, merged.max) == (union.min, union.max)
    assert merged.sum == pytest.approx(union.sum)


@given(samples, st.lists(quantile, min_size=1, max_size=6))
def test_quantiles_in_one_pass_equal_single_quantiles(values: list[float], qs: list[float]) -> None:
    histogram = _histogram(values)
    assert histogram.quantiles(qs) == [histogram.quantile(q) for q in qs]


@given(samples)
def test_round_trip_through_json(values: list[float]) -> None:
    histogram = _histogram(values)
    again = LatencyHistogram.from_dict(json.loads(json.dumps(histogram.to_dict())))
    assert again.counts == histogram.counts
    assert again.quantile(0.99) == histogram.quantile(0.99)
    assert (again.min, again.max, again.total) == (histogram.min, histogram.max, histogram.total)


@given(samples)
def test_cumulative_buckets_are_monotone_and_end_at_the_total(values: list[float]) -> None:
    histogram = _histogram([v for v in values if v <= 1e6])
    bounds_us = [b * 1e6 for b in prometheus_bucket_bounds_s()] + [math.inf]
    counts = [c for _, c in histogram.cumulative(bounds_us)]
    assert counts == sorted(counts)
    assert counts[-1] == histogram.total


def test_known_values() -> None:
    histogram = _histogram([100.0] * 98 + [5000.0, 9000.0])
    assert histogram.quantile(0.5) == pytest.approx(100.0, rel=0.01)
    assert histogram.quantile(0.99) == pytest.approx(5000.0, rel=0.01)
    assert histogram.quantile(1.0) == 9000.0  # the maximum is known exactly
    assert histogram.mean() == pytest.approx((9800 + 14000) / 100)


def test_empty_histogram_has_no_quantiles() -> None:
    assert LatencyHistogram().quantile(0.5) is None
    assert LatencyHistogram().mean() is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="value"):
        LatencyHistogram().add(-1.0)
    with pytest.raises(ValueError, match="value"):
        LatencyHistogram().add(math.nan)
    with pytest.raises(ValueError, match="alpha"):
        LatencyHistogram().merge(LatencyHistogram(alpha=0.02))
    with pytest.raises(ValueError, match="total"):
        LatencyHistogram.from_dict({"counts": {"5": 2}, "total": 3})
    with pytest.raises(ValueError, match="alpha"):
        LatencyHistogram(alpha=1.5)


def test_prometheus_bounds_start_at_25_us_and_double() -> None:
    bounds = prometheus_bucket_bounds_s()
    assert bounds[0] == 25e-6
    assert all(b == pytest.approx(2 * a) for a, b in itertools.pairwise(bounds))
    assert bounds[-1] > 10.0
