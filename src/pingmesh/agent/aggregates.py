"""Local aggregates: per peer and per scope, per window — Pingmesh's perf counters (PM §3.5).

Theory of operation
-------------------
Besides uploading every probe, a Pingmesh agent computes a few counters itself (drop rate,
P50, P99) that go to the perf-counter pipeline within seconds, long before the batch analysis
runs (PM §3.5; reference §6.1 item 6). Here every probe result is added to:

- the open *window* (``window_s``, 60 s by default) of its scope and kind, and of its peer and
  kind: a :class:`~pingmesh.core.stats.LatencyHistogram` of successful RTTs (DDSketch, 1 %
  relative accuracy, mergeable), the number of probes, failures, and probes that needed a
  retransmission (the Pingmesh drop-rate numerator, PM §4.2);
- running totals per scope and kind (and per peer below ``per_peer_limit`` peers): counters
  by outcome and a cumulative histogram, which ``/metrics`` exports as Prometheus histograms
  with the same bucket bounds on every agent (25 µs doubling,
  :func:`~pingmesh.core.stats.prometheus_bucket_bounds_s`).

When a window ends, its aggregates become the *last window* (what ``statistics()`` reports:
probes, failures, drop rate, P50/P90/P99) and its histograms are merged into the cumulative
ones. Merging DDSketches is exact, so the cumulative histogram is exactly the histogram of
every probe since start, window by window, with no rescan; adding a probe costs a few
dictionary updates, never a loop over peers.

Memory (the agent's budget is PM's 45 MB): per-scope windows and totals are a handful of
histograms. Per peer, below ``per_peer_limit`` peers (the Prometheus cardinality rule,
STYLE.md "Metrics"), each peer gets histograms too. Above it — thousands of peers — the
per-peer windows are flat arrays indexed by peer (probes, failures, retransmissions, RTT
sum/min/max; no percentiles): no object per peer is created while probing, so the many
small long-lived objects that would otherwise pin Python's memory arenas (and grow the
process by megabytes) never exist. Peers that leave the pinglist are dropped with it.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult, Scope
from pingmesh.core.stats import LatencyHistogram, prometheus_bucket_bounds_s

BUCKET_BOUNDS_S = prometheus_bucket_bounds_s()
_BOUNDS_US = tuple(bound * 1e6 for bound in BUCKET_BOUNDS_S)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramSnapshot:
    """A cumulative histogram in Prometheus form (seconds)."""

    count: int
    sum_s: float
    buckets: tuple[tuple[float, int], ...]  # (upper bound in s, observations ≤ bound)

    @classmethod
    def of(cls, histogram: LatencyHistogram) -> HistogramSnapshot:
        """The Prometheus form of a histogram of microseconds."""
        counts = tuple(count for _, count in histogram.cumulative(_BOUNDS_US))
        return cls(
            count=histogram.total,
            sum_s=histogram.sum / 1e6,
            buckets=tuple(zip(BUCKET_BOUNDS_S, counts, strict=True)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowSummary:
    """One window of one scope or peer: counts and RTTs (µs) of the successful probes.

    Percentiles are ``None`` for per-peer windows above the per-peer limit (see the module
    docstring); min, mean and max are always there when a probe succeeded.
    """

    probes: int
    failures: int
    retransmitted: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    min_us: float | None = None
    mean_us: float | None = None
    max_us: float | None = None

    @property
    def drop_rate(self) -> float | None:
        """Probes that needed a retransmission ÷ successful probes (PM §4.2)."""
        successes = self.probes - self.failures
        return self.retransmitted / successes if successes > 0 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeTotals:
    """Running totals of one (kind, scope) — or of one (peer, kind)."""

    outcomes: tuple[tuple[Outcome, int], ...]
    retransmitted: int
    rtt: HistogramSnapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregatesStatistics:
    """A snapshot of the local aggregates."""

    window_s: float
    windows_closed: int
    last_window: tuple[tuple[ProbeKind, Scope, WindowSummary], ...]
    # per peer only below the per-peer limit (above it: LocalAggregates.peer_last_window)
    peers_last_window: tuple[tuple[str, ProbeKind, WindowSummary], ...]
    scope_totals: tuple[tuple[ProbeKind, Scope, ScopeTotals], ...]
    peer_totals: tuple[tuple[str, ProbeKind, ScopeTotals], ...] | None  # None: too many peers
    peers: int


@dataclass(slots=True)
class _Window:
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    probes: int = 0
    failures: int = 0
    retransmitted: int = 0

    def add(self, result: ProbeResult) -> None:
        self.probes += 1
        if result.outcome is Outcome.OK:
            assert result.rtt_us is not None
            self.histogram.add(result.rtt_us)
            if result.retransmits > 0:
                self.retransmitted += 1
        else:
            self.failures += 1

    def summary(self) -> WindowSummary:
        h = self.histogram
        p50, p90, p99 = h.quantiles((0.5, 0.9, 0.99))
        return WindowSummary(
            probes=self.probes,
            failures=self.failures,
            retransmitted=self.retransmitted,
            p50_us=p50,
            p90_us=p90,
            p99_us=p99,
            min_us=h.min if h.total else None,
            mean_us=h.mean(),
            max_us=h.max if h.total else None,
        )


@dataclass(slots=True)
class _Totals:
    outcomes: dict[Outcome, int] = field(default_factory=dict)
    retransmitted: int = 0
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)

    def count(self, result: ProbeResult) -> None:
        self.outcomes[result.outcome] = self.outcomes.get(result.outcome, 0) + 1
        if result.outcome is Outcome.OK and result.retransmits > 0:
            self.retransmitted += 1

    def snapshot(self, open_window: _Window | None) -> ScopeTotals:
        histogram = self.histogram
        if open_window is not None and open_window.histogram.total:
            histogram = histogram.copy()
            histogram.merge(open_window.histogram)
        return ScopeTotals(
            outcomes=tuple(sorted(self.outcomes.items())),
            retransmitted=self.retransmitted,
            rtt=HistogramSnapshot.of(histogram),
        )


class _PeerTable:
    """Per-peer windows of many peers in flat arrays (see the module docstring)."""

    def __init__(self, keys: list[tuple[str, ProbeKind]]) -> None:
        self.index = {key: i for i, key in enumerate(keys)}
        size = len(keys)
        self.current = [array("d", bytes(8 * size)) for _ in range(4)]  # n, fail, retr, sum
        self.low = array("d", [math.inf]) * size
        self.high = array("d", [-math.inf]) * size
        self.last: list[array[float]] | None = None

    def add(self, key: tuple[str, ProbeKind], result: ProbeResult) -> None:
        i = self.index.get(key)
        if i is None:
            return  # a peer of an earlier pinglist
        probes, failures, retransmitted, rtt_sum = self.current
        probes[i] += 1
        if result.outcome is Outcome.OK:
            rtt = result.rtt_us
            assert rtt is not None
            rtt_sum[i] += rtt
            self.low[i] = min(self.low[i], rtt)
            self.high[i] = max(self.high[i], rtt)
            if result.retransmits > 0:
                retransmitted[i] += 1
        else:
            failures[i] += 1

    def roll(self, *, adjacent: bool) -> None:
        size = len(self.index)
        self.last = [*self.current, self.low, self.high] if adjacent else None
        self.current = [array("d", bytes(8 * size)) for _ in range(4)]
        self.low = array("d", [math.inf]) * size
        self.high = array("d", [-math.inf]) * size

    def summary(self, key: tuple[str, ProbeKind]) -> WindowSummary | None:
        i = self.index.get(key)
        if i is None or self.last is None:
            return None
        probes, failures, retransmitted, rtt_sum, low, high = (a[i] for a in self.last)
        successes = probes - failures
        return WindowSummary(
            probes=int(probes),
            failures=int(failures),
            retransmitted=int(retransmitted),
            p50_us=None,
            p90_us=None,
            p99_us=None,
            min_us=low if successes else None,
            mean_us=rtt_sum / successes if successes else None,
            max_us=high if successes else None,
        )


_ScopeKey = tuple[ProbeKind, Scope]
_PeerKey = tuple[str, ProbeKind]


class LocalAggregates:
    """Per-scope and per-peer windows and totals; see the module docstring.

    Time arrives as an argument (monotonic ns): windows are ``[k·window, (k+1)·window)``.
    """

    def __init__(self, *, window_s: float = 60.0, per_peer_limit: int = 100) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s: {window_s} is not > 0")
        if per_peer_limit < 0:
            raise ValueError(f"per_peer_limit: {per_peer_limit} is negative")
        self.window_s = window_s
        self.per_peer_limit = per_peer_limit
        self._window_ns = round(window_s * 1e9)
        self._window_index: int | None = None
        self._closed = 0
        self._scopes: dict[_ScopeKey, _Window] = {}
        self._peers: dict[_PeerKey, _Window] = {}
        self._last_scopes: dict[_ScopeKey, WindowSummary] = {}
        self._last_peers: dict[_PeerKey, WindowSummary] = {}
        self._scope_totals: dict[_ScopeKey, _Totals] = {}
        self._peer_totals: dict[_PeerKey, _Totals] = {}
        self._table: _PeerTable | None = None  # per-peer windows above the limit
        self._peer_count = 0

    @property
    def per_peer_detail(self) -> bool:
        """True while per-peer histograms and totals are kept (peers <= the limit)."""
        return self._peer_count <= self.per_peer_limit

    def set_peers(self, peers: Iterable[tuple[str, ProbeKind]]) -> None:
        """The (peer name, kind) pairs of the pinglist in force."""
        keys = sorted(set(peers))
        self._peer_count = len({name for name, _ in keys})
        self._peers = {}
        self._last_peers = {}
        if self.per_peer_detail:
            self._table = None
            wanted = set(keys)
            self._peer_totals = {k: v for k, v in self._peer_totals.items() if k in wanted}
        else:
            self._table = _PeerTable(keys)
            self._peer_totals = {}

    def peer_last_window(self, name: str, kind: ProbeKind) -> WindowSummary | None:
        """The last complete window of one peer probed with one kind."""
        if self._table is not None:
            return self._table.summary((name, kind))
        return self._last_peers.get((name, kind))

    def add(self, result: ProbeResult, now_ns: int) -> None:
        """Count one probe result."""
        self.roll(now_ns)
        scope_key = (result.kind, result.scope)
        window = self._scopes.get(scope_key)
        if window is None:
            window = self._scopes[scope_key] = _Window()
        window.add(result)
        totals = self._scope_totals.get(scope_key)
        if totals is None:
            totals = self._scope_totals[scope_key] = _Totals()
        totals.count(result)
        peer_key = (result.dst, result.kind)
        if self._table is not None:
            self._table.add(peer_key, result)
            return
        peer_window = self._peers.get(peer_key)
        if peer_window is None:
            peer_window = self._peers[peer_key] = _Window()
        peer_window.add(result)
        if self.per_peer_detail:
            peer_totals = self._peer_totals.get(peer_key)
            if peer_totals is None:
                peer_totals = self._peer_totals[peer_key] = _Totals()
            peer_totals.count(result)

    def roll(self, now_ns: int) -> None:
        """Close the open window if ``now_ns`` is past it."""
        index = now_ns // self._window_ns
        if self._window_index is None:
            self._window_index = index
            return
        if index == self._window_index:
            return
        self._closed += 1
        # A gap of several windows without probes leaves an empty "last window".
        adjacent = index == self._window_index + 1
        self._window_index = index
        self._last_scopes = (
            {key: window.summary() for key, window in self._scopes.items()} if adjacent else {}
        )
        self._last_peers = (
            {key: window.summary() for key, window in self._peers.items()} if adjacent else {}
        )
        for scope_key, window in self._scopes.items():
            self._scope_totals[scope_key].histogram.merge(window.histogram)
        if self._table is not None:
            self._table.roll(adjacent=adjacent)
        if self.per_peer_detail:
            for peer_key, peer_window in self._peers.items():
                totals = self._peer_totals.get(peer_key)
                if totals is not None:
                    totals.histogram.merge(peer_window.histogram)
        self._scopes = {}
        self._peers = {}

    def statistics(self, now_ns: int) -> AggregatesStatistics:
        """A snapshot (closing the open window first if it is over)."""
        self.roll(now_ns)
        peer_totals = None
        if self.per_peer_detail:
            peer_totals = tuple(
                (name, peer_kind, totals.snapshot(self._peers.get((name, peer_kind))))
                for (name, peer_kind), totals in sorted(self._peer_totals.items())
            )
        return AggregatesStatistics(
            window_s=self.window_s,
            windows_closed=self._closed,
            last_window=tuple(
                (kind, scope, summary)
                for (kind, scope), summary in sorted(self._last_scopes.items())
            ),
            peers_last_window=tuple(
                (name, kind, summary) for (name, kind), summary in sorted(self._last_peers.items())
            ),
            scope_totals=tuple(
                (kind, scope, totals.snapshot(self._scopes.get((kind, scope))))
                for (kind, scope), totals in sorted(self._scope_totals.items())
            ),
            peer_totals=peer_totals,
            peers=self._peer_count,
        )
