"""Rules and the N-of-M tracker: pure functions, checked against a plain re-computation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingmesh.alerts.rules import (
    AlertRule,
    Breach,
    NOfM,
    breach,
    pingmesh_rule,
    smartping_rule,
    split_link,
)


@dataclass(frozen=True)
class S:
    probes: int = 100
    failures: int = 0
    p50_us: float | None = 300.0
    p90_us: float | None = 500.0
    p99_us: float | None = 900.0
    p999_us: float | None = 1500.0
    drop_rate: float | None = 0.0


BAD = Breach(metric="p99_us", value=1.0, threshold=0.0, probes=1)


def test_pingmesh_defaults_p99_5ms_or_drop_1e3() -> None:
    rule = pingmesh_rule(window="10m")
    assert breach(rule, S(p99_us=5000.0)) is None  # over, not at, the threshold
    assert breach(rule, S(p99_us=5001.0)) == Breach(
        metric="p99_us", value=5001.0, threshold=5000.0, probes=100
    )
    why = breach(rule, S(drop_rate=2e-3))
    assert why is not None
    assert why.describe() == "drop rate 0.002 > 0.001"
    assert breach(rule, S(probes=9, p99_us=9e6)) is None  # too few probes to judge


def test_smartping_defaults_200ms_30pct_more_than_3_in_900s() -> None:
    rule = smartping_rule(window="30s", every_s=10)
    assert (rule.n, rule.m, rule.percentile) == (4, 90, "p50")
    assert breach(rule, S(p50_us=200_001.0)) is not None
    assert breach(rule, S(failures=30)) is None  # 30 % is not more than 30 %
    why = breach(rule, S(failures=31))
    assert why is not None
    assert why.describe() == "loss 31.0 % > 30 %"
    # Every probe lost: no latency at all, still bad through the loss test (as in SmartPing).
    assert breach(rule, S(failures=100, p50_us=None, p99_us=None)) is not None
    assert "in 4 of the last 90 30s windows" in rule.describe()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rule_id": "bad id"}, "rule_id"),
        ({"n": 3, "m": 2}, "n: 3"),
        ({"m": 0}, "m: 0"),
        ({"loss_ratio": 30.0}, "a ratio"),
        ({"latency_us": None}, "needs at least one"),
        ({"scope": "incident"}, "incident rule has no"),
        ({"scope": "rack"}, "scope"),
        ({"latency_us": float("nan")}, "latency_us"),
    ],
)
def test_invalid_rules_cannot_exist(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"rule_id": "r", "latency_us": 5000.0}
    values.update(fields)
    with pytest.raises(ValueError, match=message):
        AlertRule(**values)  # type: ignore[arg-type]


def test_globs_select_subjects() -> None:
    rule = AlertRule(rule_id="r", entity="d1*->*", latency_us=1.0)
    assert rule.covers("d1p1t1->d2p1t1")
    assert not rule.covers("d2p1t1->d1p1t1")
    assert split_link("a->b") == ("a", "b")
    assert split_link("t1") is None


@given(
    n=st.integers(1, 6),
    extra=st.integers(0, 6),
    verdicts=st.lists(st.booleans(), max_size=60),
)
def test_n_of_m_matches_a_sliding_window_count(n: int, extra: int, verdicts: list[bool]) -> None:
    m = n + extra
    tracker = NOfM(n, m)
    was_firing = False
    for k, bad in enumerate(verdicts):
        changed = tracker.observe({"x": BAD} if bad else {})
        recent = verdicts[max(0, k - m + 1) : k + 1]
        expected = sum(recent) >= n
        assert tracker.is_firing("x") == expected
        assert ("x" in changed) == (expected != was_firing)  # edge-triggered
        was_firing = expected
    # Memory: a subject with no bad window in its last m is forgotten.
    if not any(verdicts[-m:]):
        assert len(tracker) == 0
