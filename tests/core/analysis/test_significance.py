"""The drop-rate tests: the tail bound never claims more certainty than the exact binomial."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingmesh.core.analysis.significance import (
    elevated,
    g_statistic,
    kl_bernoulli,
    log_tail_bound,
)


def exact_log_tail(x: int, n: int, p: float) -> float:
    """ln P(X >= x), X ~ Binomial(n, p), summed in logs."""
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
        for k in range(x, n + 1)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


@given(
    n=st.integers(1, 400),
    frac=st.floats(0.0, 1.0),
    p=st.floats(1e-5, 0.5),
)
def test_the_tail_bound_is_conservative(n: int, frac: float, p: float) -> None:
    x = round(frac * n)
    bound = log_tail_bound(x, n, p)
    assert bound <= 0.0
    if x > 0:
        assert bound >= exact_log_tail(x, n, p) - 1e-9


def test_known_values() -> None:
    assert kl_bernoulli(0.5, 0.5) == 0.0
    assert kl_bernoulli(1.0, 0.5) == pytest.approx(math.log(2))
    assert log_tail_bound(1, 100, 0.05) == 0.0  # at or below the mean: no evidence
    with pytest.raises(ValueError, match="b"):
        kl_bernoulli(0.1, 0.0)
    with pytest.raises(ValueError, match="events out of"):
        log_tail_bound(5, 3, 0.1)


def test_elevated_needs_both_significance_and_effect_size() -> None:
    # 2e-3 over a million probes against 1e-4: overwhelming.
    assert elevated(2000, 1_000_000, baseline=1e-4, factor=5, alpha=1e-6)
    # 2 events in 1000 is 20x the baseline, but could be luck at alpha 1e-6.
    assert not elevated(2, 1000, baseline=1e-4, factor=5, alpha=1e-6)
    # 1.2x the baseline over a billion probes is significant but not worth an incident.
    assert not elevated(120_000, 1_000_000_000, baseline=1e-4, factor=5, alpha=1e-6)
    assert not elevated(0, 0, baseline=1e-4, factor=5, alpha=1e-6)


@given(
    x_in=st.integers(0, 100),
    n_in=st.integers(1, 1000),
    x_out=st.integers(0, 100),
    n_out=st.integers(1, 1000),
)
def test_g_is_one_sided_and_non_negative(x_in: int, n_in: int, x_out: int, n_out: int) -> None:
    x_in, x_out = min(x_in, n_in), min(x_out, n_out)
    g = g_statistic(x_in, n_in, x_out, n_out)
    assert g >= 0.0
    if x_in / n_in <= x_out / n_out:
        assert g == 0.0


def test_a_purer_split_has_a_larger_g() -> None:
    # All 50 events inside 1000 probes vs. the same 50 inside 4000.
    assert g_statistic(50, 1000, 0, 9000) > g_statistic(50, 4000, 0, 6000)
