"""Local aggregates: windows per scope and peer, exact cumulative histograms, the peer limit."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from pingmesh.agent.aggregates import BUCKET_BOUNDS_S, HistogramSnapshot, LocalAggregates
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult, Scope
from pingmesh.core.stats import LatencyHistogram

S = 1_000_000_000


def result(
    rtt_us: float | None,
    *,
    dst: str = "b",
    kind: ProbeKind = ProbeKind.TCP,
    scope: Scope = Scope.INTRA_TOR,
    outcome: Outcome = Outcome.OK,
    retransmits: int = 0,
) -> ProbeResult:
    return ProbeResult(
        time_ns=0,
        src_addr="127.0.0.1",
        src_port=1,
        dst=dst,
        dst_addr="127.0.0.2",
        dst_port=9781,
        kind=kind,
        scope=scope,
        outcome=outcome,
        rtt_us=rtt_us,
        retransmits=retransmits,
    )


def test_a_window_reports_counts_drop_rate_and_percentiles() -> None:
    agg = LocalAggregates(window_s=10)
    agg.set_peers([("b", ProbeKind.TCP), ("c", ProbeKind.TCP)])
    for i in range(1, 101):
        agg.add(result(float(i), retransmits=1 if i <= 2 else 0), 1 * S)
    agg.add(result(None, outcome=Outcome.TIMEOUT), 2 * S)
    agg.add(result(50.0, dst="c", scope=Scope.INTER_TOR), 3 * S)
    assert agg.statistics(9 * S).last_window == ()  # the window is still open
    stats = agg.statistics(11 * S)
    windows = {(k, s): w for k, s, w in stats.last_window}
    intra = windows[(ProbeKind.TCP, Scope.INTRA_TOR)]
    assert (intra.probes, intra.failures, intra.retransmitted) == (101, 1, 2)
    assert intra.drop_rate == 2 / 100  # retransmitted ÷ successful (PM §4.2)
    assert intra.p50_us is not None
    assert math.isclose(intra.p50_us, 50, rel_tol=0.01)
    assert intra.p99_us is not None
    assert math.isclose(intra.p99_us, 99, rel_tol=0.01)
    assert windows[(ProbeKind.TCP, Scope.INTER_TOR)].probes == 1
    peers = {name: w for name, _, w in stats.peers_last_window}
    assert peers["b"].probes == 101
    assert peers["c"].probes == 1
    assert stats.windows_closed == 1


def test_a_gap_of_several_windows_leaves_an_empty_last_window() -> None:
    agg = LocalAggregates(window_s=10)
    agg.add(result(5.0), 1 * S)
    assert agg.statistics(35 * S).last_window == ()
    totals = agg.statistics(35 * S).scope_totals
    assert totals[0][2].rtt.count == 1  # the running total keeps it


def test_per_peer_totals_only_below_the_limit() -> None:
    agg = LocalAggregates(window_s=10, per_peer_limit=2)
    agg.set_peers([("b", ProbeKind.TCP), ("c", ProbeKind.TCP)])
    agg.add(result(5.0, dst="b"), 1 * S)
    agg.add(result(None, dst="c", outcome=Outcome.REFUSED), 1 * S)
    small = agg.statistics(2 * S)
    assert small.peer_totals is not None
    assert {name for name, _, _ in small.peer_totals} == {"b", "c"}
    agg.set_peers([("b", ProbeKind.TCP), ("c", ProbeKind.TCP), ("d", ProbeKind.UDP)])
    assert agg.statistics(2 * S).peer_totals is None
    # the per-scope totals are always there
    assert agg.statistics(2 * S).scope_totals


def test_above_the_limit_peers_keep_counts_and_min_mean_max_without_objects() -> None:
    agg = LocalAggregates(window_s=10, per_peer_limit=1)
    agg.set_peers([("b", ProbeKind.TCP), ("c", ProbeKind.TCP)])
    for rtt in (10.0, 20.0, 60.0):
        agg.add(result(rtt, dst="b", retransmits=1 if rtt == 60 else 0), 1 * S)
    agg.add(result(None, dst="b", outcome=Outcome.TIMEOUT), 2 * S)
    agg.add(result(5.0, dst="gone"), 2 * S)  # not in the pinglist: scopes only
    assert agg.peer_last_window("b", ProbeKind.TCP) is None  # no complete window yet
    stats = agg.statistics(12 * S)
    assert stats.peers_last_window == ()
    b = agg.peer_last_window("b", ProbeKind.TCP)
    assert b is not None
    assert (b.probes, b.failures, b.retransmitted) == (4, 1, 1)
    assert (b.min_us, b.mean_us, b.max_us) == (10.0, 30.0, 60.0)
    assert b.p50_us is None  # no per-peer histograms above the limit
    c = agg.peer_last_window("c", ProbeKind.TCP)
    assert c is not None
    assert (c.probes, c.mean_us) == (0, None)
    ((_, _, scope),) = stats.last_window
    assert scope.probes == 5


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=5e6, allow_nan=False),
            st.integers(min_value=0, max_value=300),  # second of the probe
        ),
        max_size=200,
    )
)
def test_the_cumulative_histogram_is_exactly_the_histogram_of_every_probe(
    probes: list[tuple[float, int]],
) -> None:
    """Windows merged into the running total (exact DDSketch merges) = one histogram of all."""
    agg = LocalAggregates(window_s=7)
    reference = LatencyHistogram()
    for rtt, second in sorted(probes, key=lambda p: p[1]):
        agg.add(result(rtt), second * S)
        reference.add(rtt)
    stats = agg.statistics(400 * S)
    if not probes:
        assert stats.scope_totals == ()
        return
    ((_, _, totals),) = stats.scope_totals
    expected = HistogramSnapshot.of(reference)
    assert totals.rtt.buckets == expected.buckets  # bucket by bucket, exactly
    assert totals.rtt.count == expected.count == len(probes)
    counts = [count for _, count in totals.rtt.buckets]
    assert counts == sorted(counts)  # cumulative
    assert [bound for bound, _ in totals.rtt.buckets] == list(BUCKET_BOUNDS_S)
    assert math.isclose(
        totals.rtt.sum_s, sum(r for r, _ in probes) / 1e6, rel_tol=1e-9, abs_tol=1e-9
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1, max_value=1e7, allow_nan=False), min_size=1, max_size=200))
def test_prometheus_buckets_are_within_the_relative_error_of_each_bound(
    values: list[float],
) -> None:
    histogram = LatencyHistogram()
    histogram.extend(values)
    snapshot = HistogramSnapshot.of(histogram)
    alpha = histogram.alpha
    for bound_s, count in snapshot.buckets:
        bound_us = bound_s * 1e6
        surely_below = sum(1 for v in values if v <= bound_us * (1 - alpha))
        maybe_below = sum(1 for v in values if v <= bound_us * (1 + alpha))
        assert surely_below <= count <= maybe_below
