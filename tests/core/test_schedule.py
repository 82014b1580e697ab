"""The probe schedule (heap of due times with jitter) and the global token bucket."""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from collections.abc import Hashable
from fractions import Fraction
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pingmesh.core.schedule import (
    PerSourceLimiter,
    ProbeSchedule,
    TokenBucket,
    source_ports_for_paths,
)

K = TypeVar("K", bound=Hashable)

intervals = st.integers(min_value=1, max_value=1_000)
peer_sets = st.dictionaries(st.integers(0, 40), intervals, max_size=25)


def run_exact(schedule: ProbeSchedule[K], start_ns: int, end_ns: int) -> dict[K, list[int]]:
    """Call due() exactly at every next_due_ns() up to end_ns; the times each peer came up."""
    seen: dict[K, list[int]] = defaultdict(list)
    now = start_ns
    while True:
        for key in schedule.due(now):
            seen[key].append(now)
        nxt = schedule.next_due_ns()
        if nxt is None or nxt > end_ns:
            return seen
        assert nxt > now  # due() rescheduled everything that was due at now
        now = nxt


@given(peers=peer_sets, seed=st.integers(0, 2**32), start=st.integers(0, 10**6))
def test_steady_state_probes_every_peer_once_per_interval(
    peers: dict[int, int], seed: int, start: int
) -> None:
    schedule: ProbeSchedule[int] = ProbeSchedule(rng=random.Random(seed))
    schedule.replace(peers, start)
    end = start + 10 * 1_000
    seen = run_exact(schedule, start, end)
    assert set(seen) == set(peers)
    for key, times in seen.items():
        interval = peers[key]
        assert start <= times[0] < start + interval  # jittered into the first interval
        assert all(b - a == interval for a, b in itertools.pairwise(times))
        assert times[-1] + interval > end  # none missed at the end


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, dict[int, int]]]:
    """A random sequence of ticks (at arbitrary times) and pinglist replacements."""
    ops: list[tuple[str, int, dict[int, int]]] = []
    now = 0
    for _ in range(draw(st.integers(1, 60))):
        now += draw(st.integers(0, 700))
        if draw(st.booleans()):
            ops.append(("tick", now, {}))
        else:
            ops.append(("replace", now, draw(peer_sets)))
    return ops


@given(ops=operations(), seed=st.integers(0, 2**32))
def test_never_more_often_than_the_interval(
    ops: list[tuple[str, int, dict[int, int]]], seed: int
) -> None:
    schedule: ProbeSchedule[int] = ProbeSchedule(rng=random.Random(seed))
    last: dict[int, int] = {}
    present: set[int] = set()
    for op, now, peers in ops:
        if op == "replace":
            # A peer that leaves and comes back starts over; only track peers that stay.
            for key in present - set(peers):
                last.pop(key, None)
            present = set(peers)
            schedule.replace(peers, now)
            continue
        for key in schedule.due(now):
            assert key in present
            interval = schedule.interval_ns(key)
            if key in last:
                assert now - last[key] >= interval
            last[key] = now
    assert len(schedule) == len(present)


@given(ops=operations(), seed=st.integers(0, 2**32))
def test_every_present_peer_stays_scheduled(
    ops: list[tuple[str, int, dict[int, int]]], seed: int
) -> None:
    """After any history, every peer of the current set comes up within two intervals
    (one, plus at most one more to spread a late clump)."""
    schedule: ProbeSchedule[int] = ProbeSchedule(rng=random.Random(seed))
    now = 0
    peers: dict[int, int] = {}
    for op, now, new in ops:
        if op == "replace":
            peers = new
            schedule.replace(new, now)
        else:
            schedule.due(now)
    horizon = now + 2 * max(peers.values(), default=0)
    seen = run_exact(schedule, now, horizon)
    assert set(seen) == set(peers)


def test_a_late_caller_does_not_turn_peers_into_a_clump() -> None:
    """1000 peers that all fell due while the caller was held up do not stay together."""
    schedule: ProbeSchedule[int] = ProbeSchedule(rng=random.Random(11))
    schedule.replace(dict.fromkeys(range(1000), 1_000_000), 0)
    assert len(schedule.due(2_000_000)) == 1000  # held up: all collected at one instant
    nexts = [t for t, _, _ in schedule._heap]
    assert min(nexts) >= 3_000_000  # never sooner than one interval
    assert max(nexts) < 4_000_000  # at most one more interval
    quarters = [sum(1 for t in nexts if q <= (t - 3_000_000) // 250_000 < q + 1) for q in range(4)]
    assert all(n > 100 for n in quarters)  # spread out again


def test_replace_keeps_unchanged_peers_and_drops_removed_ones() -> None:
    schedule: ProbeSchedule[str] = ProbeSchedule(rng=random.Random(1))
    schedule.replace({"a": 100, "b": 100, "c": 100}, 0)
    first = run_exact(schedule, 0, 99)
    assert set(first) == {"a", "b", "c"}
    a_next = first["a"][0] + 100
    schedule.replace({"a": 100, "d": 50}, 99)
    assert "b" not in schedule
    assert len(schedule) == 2
    later = run_exact(schedule, 99, 300)
    assert set(later) == {"a", "d"}
    assert later["a"][0] == a_next  # the due time of a kept peer did not move


def test_interval_change_respects_the_new_interval_after_the_last_probe() -> None:
    schedule: ProbeSchedule[str] = ProbeSchedule(rng=random.Random(2))
    schedule.replace({"a": 10}, 0)
    times = run_exact(schedule, 0, 9)["a"]
    schedule.replace({"a": 1000}, times[0] + 1)
    assert schedule.next_due_ns() == times[0] + 1000


def test_heap_stays_bounded_under_churn() -> None:
    schedule: ProbeSchedule[int] = ProbeSchedule(rng=random.Random(3))
    for round_ in range(200):
        schedule.replace({round_ * 10 + i: 5 + i for i in range(10)}, round_)
    assert len(schedule) == 10
    assert len(schedule._heap) <= 2 * 10 + 64


def test_bad_intervals_are_refused_by_name() -> None:
    schedule: ProbeSchedule[str] = ProbeSchedule(rng=random.Random(0))
    with pytest.raises(ValueError, match="peer 'x'"):
        schedule.replace({"x": 0}, 0)
    with pytest.raises(ValueError, match="limit"):
        schedule.due(0, limit=-1)


def test_due_limit_leaves_the_rest_due() -> None:
    schedule: ProbeSchedule[int] = ProbeSchedule(rng=random.Random(0))
    schedule.replace(dict.fromkeys(range(10), 100), 0)
    first = schedule.due(1000, limit=4)
    rest = schedule.due(1000)
    assert len(first) == 4
    assert sorted(first + rest) == list(range(10))


def test_empty_schedule_has_no_next_due() -> None:
    schedule: ProbeSchedule[int] = ProbeSchedule(rng=random.Random(0))
    assert schedule.next_due_ns() is None
    schedule.replace({1: 10}, 0)
    schedule.replace({}, 5)
    assert schedule.next_due_ns() is None
    assert schedule.due(10**9) == []


def test_jitter_spreads_first_probes() -> None:
    """1000 peers with one interval do not all start at once (agents do not synchronise)."""
    schedule: ProbeSchedule[int] = ProbeSchedule(rng=random.Random(7))
    schedule.replace(dict.fromkeys(range(1000), 1_000_000), 0)
    firsts = {k: v[0] for k, v in run_exact(schedule, 0, 999_999).items()}
    quarters = [
        sum(1 for t in firsts.values() if q * 250_000 <= t < (q + 1) * 250_000) for q in range(4)
    ]
    assert all(150 < n < 350 for n in quarters)


# -- token bucket ---------------------------------------------------------------------------


@given(
    rate=st.floats(min_value=0.5, max_value=1e6),
    burst=st.integers(1, 50),
    gaps=st.lists(st.integers(0, 3_000_000), min_size=1, max_size=300),
)
@settings(max_examples=200)
def test_token_bucket_honours_the_rate_cap(rate: float, burst: int, gaps: list[int]) -> None:
    bucket = TokenBucket(rate_per_s=rate, burst=burst)
    period = bucket.emission_interval_ns
    assert period >= 1e9 / rate  # never faster than asked
    now = 0
    granted: list[int] = []
    for gap in gaps:
        now += gap
        delay = bucket.delay_ns(now)
        ok = bucket.try_acquire(now)
        assert ok == (delay == 0)
        if ok:
            granted.append(now)
    # In every window [granted[i], granted[j]] at most burst + W // period acquisitions.
    for i in range(len(granted)):
        for j in range(i, min(len(granted), i + 3 * burst + 5)):
            assert j - i + 1 <= burst + (granted[j] - granted[i]) // period


@given(rate=st.floats(min_value=0.5, max_value=1e6), burst=st.integers(1, 50))
def test_token_bucket_grants_everything_at_or_below_the_rate(rate: float, burst: int) -> None:
    bucket = TokenBucket(rate_per_s=rate, burst=burst)
    period = bucket.emission_interval_ns
    assert all(bucket.try_acquire(0) for _ in range(burst))  # starts full
    assert not bucket.try_acquire(0)
    assert bucket.delay_ns(0) == period
    assert all(bucket.try_acquire(k * period) for k in range(1, 100))


def test_token_bucket_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(rate_per_s=0)
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(rate_per_s=float("nan"))
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate_per_s=1, burst=0)


def _coverage_exact(paths: int, flows: int) -> Fraction:
    """P(all paths covered) by inclusion-exclusion in exact arithmetic (R-Pingmesh Eq. 1)."""
    return sum(
        (Fraction((-1) ** i * math.comb(paths, i)) * Fraction(paths - i, paths) ** flows)
        for i in range(paths + 1)
    )


def test_source_ports_match_the_published_coupon_collector_answers() -> None:
    assert source_ports_for_paths(16, 0.99) == 115  # reference §6.1 item 3
    assert source_ports_for_paths(64, 0.99) == 557
    assert source_ports_for_paths(1, 0.99) == 1


@given(st.integers(min_value=2, max_value=12), st.floats(min_value=0.05, max_value=0.999))
def test_source_ports_are_the_smallest_count_that_covers_every_path(
    paths: int, probability: float
) -> None:
    flows = source_ports_for_paths(paths, probability)
    assert _coverage_exact(paths, flows) >= Fraction(probability) * (1 - Fraction(1, 10**9))
    assert _coverage_exact(paths, flows - 1) < Fraction(probability) * (1 + Fraction(1, 10**9))


def test_source_ports_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="paths"):
        source_ports_for_paths(0, 0.9)
    with pytest.raises(ValueError, match="probability"):
        source_ports_for_paths(4, 1.0)


def test_per_source_limiter_caps_each_source_on_its_own() -> None:
    limiter = PerSourceLimiter[str](rate_per_s=10, burst=2, max_sources=8)
    now = 0
    granted = {s: sum(limiter.try_acquire(s, now) for _ in range(5)) for s in ("a", "b")}
    assert granted == {"a": 2, "b": 2}  # each its own burst
    now += 100_000_000  # 0.1 s: one more token each
    assert limiter.try_acquire("a", now)
    assert not limiter.try_acquire("a", now)


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=500))
def test_per_source_limiter_memory_is_bounded(sources: list[int]) -> None:
    limiter = PerSourceLimiter[int](rate_per_s=1, burst=1, max_sources=16)
    for now, source in enumerate(sources):
        limiter.try_acquire(source, now)
        assert len(limiter) <= 16


def test_lateness_within_the_callers_slack_earns_no_spread() -> None:
    schedule: ProbeSchedule[str] = ProbeSchedule(rng=random.Random(1))
    schedule.replace({"a": 1_000}, 0)
    first = schedule.next_due_ns()
    assert first is not None
    # Woken 50 ns late with a 100 ns slack: exactly one interval after the probe.
    assert schedule.due(first + 50, slack_ns=100) == ["a"]
    assert schedule.next_due_ns() == first + 50 + 1_000
    # 400 ns late with the same slack: up to 300 ns of spread, never less than the interval.
    second = first + 50 + 1_000
    assert schedule.due(second + 400, slack_ns=100) == ["a"]
    nxt = schedule.next_due_ns()
    assert nxt is not None
    assert second + 400 + 1_000 <= nxt < second + 400 + 1_000 + 300
