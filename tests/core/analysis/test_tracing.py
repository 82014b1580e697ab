"""The central traceroute planner: rate-limited, fair between incidents, worst first."""

from __future__ import annotations

import pytest

from pingmesh.core.analysis.tracing import TracePlanner, TraceRequest


def req(agent: str, dst: str, *, reason: str = "r1", priority: float = 0.0) -> TraceRequest:
    return TraceRequest(
        agent=agent,
        dst=dst,
        dst_addr="198.18.16.1",
        dst_port=9781,
        src_port=40000,
        reason=reason,
        priority=priority,
    )


def test_the_token_bucket_caps_the_fleet_rate() -> None:
    planner = TracePlanner(per_minute=60, burst=3, per_incident=100, max_pending_per_agent=100)
    wanted = [req(f"a{i}", "d") for i in range(10)]
    first = planner.plan(wanted, now_s=0.0)
    assert len(first) == 3  # the burst
    assert planner.statistics().rate_limited_total == 7
    # One token a second comes back.
    assert len(planner.plan([req("b1", "d"), req("b2", "d")], now_s=1.0)) == 1
    assert len(planner.plan([req("c1", "d"), req("c2", "d")], now_s=3.0)) == 2


def test_worst_first_and_fair_between_incidents() -> None:
    planner = TracePlanner(per_minute=600, burst=4, per_incident=2, max_pending_per_agent=10)
    wanted = [
        req("a1", "d", reason="big", priority=1),
        req("a2", "d", reason="big", priority=9),
        req("a3", "d", reason="big", priority=5),
        req("b1", "d", reason="small", priority=1),
    ]
    planned = planner.plan(wanted, now_s=0.0)
    assert [(t.request.reason, t.request.agent) for t in planned] == [
        ("big", "a2"),
        ("small", "b1"),
        ("big", "a3"),
    ]
    assert planner.statistics().over_incident_budget_total == 1


def test_cooldown_busy_agents_and_expiry() -> None:
    planner = TracePlanner(
        per_minute=6000, burst=100, max_pending_per_agent=1, pair_cooldown_s=60, task_ttl_s=30
    )
    (task,) = planner.plan([req("a", "d")], now_s=100.0)
    assert task.expires_at_s == 130.0
    assert task.task_id.startswith("tr-100-")
    assert planner.plan([req("a", "d")], now_s=110.0) == []  # traced recently
    assert planner.plan([req("a", "e")], now_s=110.0, pending={"a": 1}) == []  # busy
    assert len(planner.plan([req("a", "d")], now_s=161.0)) == 1  # cooldown over
    stats = planner.statistics()
    assert (stats.cooled_down_total, stats.agent_busy_total, stats.planned_total) == (1, 1, 2)


def test_ids_are_unique_and_valid() -> None:
    planner = TracePlanner(per_minute=6000, burst=100, per_incident=100, max_pending_per_agent=100)
    planned = planner.plan([req(f"a{i}", "d") for i in range(50)], now_s=5.0)
    ids = [t.task_id for t in planned]
    assert len(set(ids)) == 50
    assert all(len(i) <= 80 for i in ids)


def test_bad_requests() -> None:
    with pytest.raises(ValueError, match="src_port"):
        TraceRequest(agent="a", dst="d", dst_addr="x", dst_port=1, src_port=0, reason="r")
    with pytest.raises(ValueError, match="positive"):
        TracePlanner(per_minute=0)
