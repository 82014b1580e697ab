"""Traceroute tasks and results, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pingmesh.core.analysis.tracing import PlannedTask, TraceRequest
from pingmesh.store.results import ResultsDB
from pingmesh.store.traceroutes import TracerouteStore
from pingmesh.wire.tasks import Hop, TracerouteResult


@pytest.fixture
def store(db_target: Path | str) -> TracerouteStore:
    return TracerouteStore(ResultsDB(db_target, now_s=0.0).database, lease_s=30.0)


def task(
    task_id: str,
    agent: str = "h1",
    *,
    at: float = 100.0,
    reason: str = "silent_drop|tier|spine@dc1",
) -> PlannedTask:
    return PlannedTask(
        task_id=task_id,
        request=TraceRequest(
            agent=agent,
            dst="h9",
            dst_addr="198.18.16.9",
            dst_port=9781,
            src_port=40123,
            reason=reason,
        ),
        created_at_s=at,
        expires_at_s=at + 120,
    )


def result(
    task_id: str, agent: str = "h1", hops: tuple[str | None, ...] = ("198.18.1.1", "198.18.1.7")
) -> TracerouteResult:
    return TracerouteResult(
        task_id=task_id,
        agent=agent,
        time=datetime.fromtimestamp(150, tz=UTC),
        src_addr="198.18.16.1",
        src_port=40123,
        dst="h9",
        dst_addr="198.18.16.9",
        dst_port=9781,
        hops=tuple(Hop(ttl=i + 1, address=a, rtt_us=10.0 * (i + 1)) for i, a in enumerate(hops)),
        reached=False,
    )


def test_tasks_are_leased_and_reissued(store: TracerouteStore) -> None:
    store.add_tasks([task("t1"), task("t2"), task("t3", agent="h2")], max_hops=12)
    first = store.issue("h1", now_s=101.0)
    assert [(t.task_id, t.src_port, t.max_hops) for t in first] == [
        ("t1", 40123, 12),
        ("t2", 40123, 12),
    ]
    wire = first[0].to_wire()
    assert (wire.dst_addr, wire.src_port, wire.reason) == (
        "198.18.16.9",
        40123,
        "silent_drop|tier|spine@dc1",
    )
    assert store.issue("h1", now_s=110.0) == []  # leased
    assert [t.task_id for t in store.issue("h1", now_s=140.0)] == ["t1", "t2"]  # lease over
    assert store.issue("h1", now_s=300.0) == []  # expired
    assert store.pending_counts(now_s=101.0) == {"h1": 2, "h2": 1}


def test_results_finish_tasks_and_are_idempotent(store: TracerouteStore) -> None:
    store.add_tasks([task("t1")])
    done = store.store_results([result("t1")], now_s=160.0)
    assert (done.stored, done.duplicates, done.unknown_tasks) == (1, 0, 0)
    again = store.store_results([result("t1")], now_s=161.0)
    assert (again.stored, again.duplicates) == (0, 1)
    orphan = store.store_results([result("nobody-asked")], now_s=162.0)
    assert (orphan.stored, orphan.unknown_tasks) == (1, 1)
    assert store.pending_counts(now_s=160.0) == {}
    finished = store.task("t1")
    assert finished is not None
    assert finished.done_at_s == 160.0
    got = store.result("t1")
    assert got == result("t1")
    assert store.result("t9") is None


def test_results_by_reason(store: TracerouteStore) -> None:
    store.add_tasks([task("t1", at=100.0), task("t2", at=200.0), task("t3", reason="other")])
    store.store_results([result("t1"), result("t2"), result("t3")], now_s=250.0)
    found = store.results_for({"silent_drop|tier|spine@dc1"}, since_s=150.0)
    assert [(reason, r.task_id) for reason, r in found] == [("silent_drop|tier|spine@dc1", "t2")]
    assert store.results_for(set(), since_s=0.0) == []


def test_retention(store: TracerouteStore) -> None:
    store.add_tasks([task("old", at=10.0), task("new", at=1000.0)])
    store.store_results([result("old")], now_s=20.0)
    assert store.delete_before(500.0) == 2  # the old task and its result
    assert store.task("old") is None
    assert store.task("new") is not None
