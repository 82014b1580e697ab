"""Mergeable latency histograms with a guaranteed relative error.

Theory of operation
-------------------
A :class:`LatencyHistogram` is a DDSketch (Masson, Rim & Lee, VLDB 2019) over positive values
(RTTs in µs): value ``x`` falls in bucket ``i = ceil(log_γ x)`` with ``γ = (1 + α) / (1 − α)``,
and bucket ``i`` reports ``2 γ^i / (γ + 1)``. Every value in the bucket lies within a relative
distance ``α`` of that representative, so any quantile read from the histogram is within
``α`` (relative) of the true value at that rank — whatever the distribution, with no tuning.
With ``α = 1 %`` one decade of latency takes ~116 buckets; a data-centre RTT range
(10 µs … 10 s) fits in under 700 buckets, stored sparsely.

Histograms with the same ``α`` merge *exactly*: the counts of equal buckets add, so the merge
of two histograms equals the histogram of the union of their values. This is what lets the
agent aggregate locally per window, and the analysis roll 10-minute windows up into hours and
days without going back to raw probes (Pingmesh §3.5's 10 min / 1 h / 1 day jobs).

Quantiles use the nearest-rank definition (the value at rank ``ceil(q·n)``), matching the
``percentile_disc`` the analysis SQL uses on raw probes, so the two agree within ``α``.

Zero and values below ``MIN_VALUE`` go to a dedicated zero bucket (reported as 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

DEFAULT_RELATIVE_ACCURACY = 0.01
MIN_VALUE = 1e-3  # µs; below this a value counts as zero


@dataclass(slots=True)
class LatencyHistogram:
    """A sparse log-bucket histogram of non-negative values with relative accuracy ``alpha``."""

    alpha: float = DEFAULT_RELATIVE_ACCURACY
    counts: dict[int, int] = field(default_factory=dict)
    zero_count: int = 0
    total: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: {self.alpha} must be between 0 and 1")

    @property
    def gamma(self) -> float:
        """The ratio between the bounds of consecutive buckets."""
        return (1 + self.alpha) / (1 - self.alpha)

    def bucket_of(self, value: float) -> int:
        """The index of the bucket that holds ``value`` (> MIN_VALUE)."""
        return math.ceil(math.log(value) / math.log(self.gamma))

    def representative(self, index: int) -> float:
        """The value that bucket ``index`` reports: within ``alpha`` of all it holds."""
        gamma = self.gamma
        return 2 * gamma**index / (gamma + 1)

    def add(self, value: float, count: int = 1) -> None:
        """Record ``value`` (``count`` times)."""
        if not value >= 0 or math.isinf(value):
            raise ValueError(f"value: {value} is not a finite non-negative number")
        if count <= 0:
            raise ValueError(f"count: {count} must be positive")
        if value < MIN_VALUE:
            self.zero_count += count
        else:
            index = self.bucket_of(value)
            self.counts[index] = self.counts.get(index, 0) + count
        self.total += count
        self.sum += value * count
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def extend(self, values: Iterable[float]) -> None:
        """Record every value of ``values``."""
        for value in values:
            self.add(value)

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s values to this histogram (exact for equal ``alpha``)."""
        if other.alpha != self.alpha:
            raise ValueError(f"alpha: cannot merge {other.alpha} into {self.alpha}")
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.zero_count += other.zero_count
        self.total += other.total
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        return LatencyHistogram(
            alpha=self.alpha,
            counts=dict(self.counts),
            zero_count=self.zero_count,
            total=self.total,
            sum=self.sum,
            min=self.min,
            max=self.max,
        )

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q``-quantile (within ``alpha``), or None when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"q: {q} must be between 0 and 1")
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q * self.total))
        if rank <= self.zero_count:
            return 0.0
        seen = self.zero_count
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                # Clamp to what was really seen: the extremes are known exactly.
                return min(max(self.representative(index), self.min), self.max)
        return self.max  # pragma: no cover - counts always sum to total

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        """Several quantiles in one pass over the buckets."""
        wanted = sorted((q, i) for i, q in enumerate(qs))
        out: list[float | None] = [None] * len(wanted)
        if self.total == 0:
            return out
        buckets = iter(sorted(self.counts.items()))
        seen, current = self.zero_count, 0.0
        for q, position in wanted:
            if not 0 <= q <= 1:
                raise ValueError(f"q: {q} must be between 0 and 1")
            rank = max(1, math.ceil(q * self.total))
            while seen < rank:
                index, count = next(buckets)
                seen += count
                current = min(max(self.representative(index), self.min), self.max)
            out[position] = current
        return out

    def mean(self) -> float | None:
        """The exact mean, or None when empty."""
        return self.sum / self.total if self.total else None

    def cumulative(self, bounds: Iterable[float]) -> Iterator[tuple[float, int]]:
        """(upper bound, count of values ≤ bound) for Prometheus-style fixed buckets.

        A log bucket is counted under the first bound at or above its representative, so the
        counts are exact to within ``alpha`` of each bound.
        """
        items = sorted(self.counts.items())
        position, running = 0, self.zero_count
        for bound in bounds:
            while position < len(items) and self.representative(items[position][0]) <= bound:
                running += items[position][1]
                position += 1
            yield bound, running

    def to_dict(self) -> dict[str, object]:
        """A JSON-able form (bucket indexes as strings, as JSON requires)."""
        return {
            "alpha": self.alpha,
            "counts": {str(k): v for k, v in sorted(self.counts.items())},
            "zero_count": self.zero_count,
            "total": self.total,
            "sum": self.sum,
            "min": self.min if self.total else None,
            "max": self.max if self.total else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LatencyHistogram:
        """The inverse of :meth:`to_dict`; raises ValueError on an inconsistent document."""
        raw_counts = data.get("counts", {})
        if not isinstance(raw_counts, Mapping):
            raise ValueError("counts: must be a mapping of bucket index to count")  # noqa: TRY004
        counts = {int(k): int(v) for k, v in raw_counts.items()}
        if any(v <= 0 for v in counts.values()):
            raise ValueError("counts: every count must be positive")
        zero_count = int(data.get("zero_count", 0))  # type: ignore[call-overload]
        total = int(data.get("total", 0))  # type: ignore[call-overload]
        if total != zero_count + sum(counts.values()):
            raise ValueError(f"total: {total} is not the sum of the counts")
        low, high = data.get("min"), data.get("max")
        return cls(
            alpha=float(data.get("alpha", DEFAULT_RELATIVE_ACCURACY)),  # type: ignore[arg-type]
            counts=counts,
            zero_count=zero_count,
            total=total,
            sum=float(data.get("sum", 0.0)),  # type: ignore[arg-type]
            min=float(low) if low is not None else math.inf,  # type: ignore[arg-type]
            max=float(high) if high is not None else -math.inf,  # type: ignore[arg-type]
        )


def prometheus_bucket_bounds_s(start_s: float = 25e-6, count: int = 20) -> tuple[float, ...]:
    """The fixed bucket bounds every agent exports: 25 µs doubling (STYLE.md, Metrics).

    20 bounds reach 25 µs · 2¹⁹ ≈ 13 s, past the longest probe timeout.
    """
    return tuple(start_s * 2**i for i in range(count))
