"""Is a drop rate really above its baseline? Two small tests on counts.

Theory of operation
-------------------
A set of probes with ``x`` drop events out of a basis of ``n`` is a binomial sample. Drop
rates in a healthy fabric sit around 1e-5 to 1e-4 (PM §4.2, Table 1), so a handful of events
means little when ``n`` is small, and a lot when ``n`` is large; a fixed threshold on the rate
alone either fires on noise in small windows or misses real drops in big ones.

- :func:`log_tail_bound` bounds the one-sided p-value ``P(X ≥ x | n, p)`` by the Chernoff
  bound ``exp(−n · KL(x/n ‖ p))`` (Hoeffding 1963, Thm. 1). It is conservative (never smaller
  than the true tail), needs no special functions and stays finite for any ``n``; we work in
  logs so that very small values do not underflow.
- :func:`elevated` asks for both significance (``bound ≤ alpha``) and an effect size
  (``x/n ≥ factor × baseline``): with millions of probes a rate of 1.1× baseline is
  "significant" but not worth waking anybody for.
- :func:`g_statistic` is the log-likelihood-ratio (G) statistic of "two rates" against "one
  pooled rate" for a 2 × 2 table (inside a component vs. outside it): the split of the
  probes that explains the drop events best has the largest G. It is one-sided: 0 unless the
  inside rate is the higher.
"""

from __future__ import annotations

import math


def _xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0 else x * math.log(y)


def kl_bernoulli(a: float, b: float) -> float:
    """KL(Bernoulli(a) ‖ Bernoulli(b)) in nats; ``b`` must be in (0, 1)."""
    if not 0 < b < 1:
        raise ValueError(f"b: {b} must be in (0, 1)")
    if not 0 <= a <= 1:
        raise ValueError(f"a: {a} must be in [0, 1]")
    return _xlogy(a, a / b) + _xlogy(1 - a, (1 - a) / (1 - b))


def log_tail_bound(x: int, n: int, p: float) -> float:
    """``ln`` of an upper bound on ``P(X ≥ x)`` for ``X ~ Binomial(n, p)``; 0 when
    ``x ≤ n·p`` (no evidence of an excess)."""
    if n <= 0 or x <= 0:
        return 0.0
    if x > n:
        raise ValueError(f"x: {x} events out of {n}")
    rate = x / n
    if rate <= p:
        return 0.0
    return -n * kl_bernoulli(rate, p)


def elevated(x: int, n: int, *, baseline: float, factor: float, alpha: float) -> bool:
    """True when ``x`` of ``n`` is at least ``factor`` × ``baseline`` and significantly above
    ``baseline`` at level ``alpha``."""
    if n <= 0 or x <= 0:
        return False
    return x / n >= factor * baseline and log_tail_bound(x, n, baseline) <= math.log(alpha)


def _log_likelihood(x: float, n: float, rate: float) -> float:
    if rate <= 0:
        return 0.0 if x == 0 else -math.inf
    if rate >= 1:
        return 0.0 if x == n else -math.inf
    return _xlogy(x, rate) + _xlogy(n - x, 1 - rate)


def g_statistic(x_in: int, n_in: int, x_out: int, n_out: int) -> float:
    """One-sided G statistic: how much better "inside has its own, higher rate" explains the
    counts than one rate for all; 0 when the inside rate is not higher."""
    if n_in <= 0:
        return 0.0
    r_in = x_in / n_in
    r_out = x_out / n_out if n_out > 0 else 0.0
    if r_in <= r_out:
        return 0.0
    pooled = (x_in + x_out) / (n_in + n_out)
    two = _log_likelihood(x_in, n_in, r_in) + _log_likelihood(x_out, n_out, r_out)
    one = _log_likelihood(x_in, n_in, pooled) + _log_likelihood(x_out, n_out, pooled)
    return max(2.0 * (two - one), 0.0)
