"""AlertStore on SQLite and on a real PostgreSQL: lifecycle, notification bookkeeping, mutes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.store.alerts import AlertStore, NewAlert
from pingmesh.store.results import ResultsDB


@pytest.fixture
def store(db_target: Path | str) -> Iterator[AlertStore]:
    db = ResultsDB(db_target)
    yield AlertStore(db.database)
    db.close()


def _new(subject: str = "t1->t2", **changes: object) -> NewAlert:
    values: dict[str, object] = {
        "rule_id": "pingmesh",
        "rule_name": "Pingmesh SLA",
        "kind": "metric",
        "severity": "warning",
        "scope": "link",
        "subject": subject,
        "summary": f"tor link {subject}: P99 9.00 ms > 5.00 ms",
        "window_start": 1_799_999_400,
        "value": 9000.0,
        "threshold": 5000.0,
        "evidence": {"pairs": [{"src": "h11", "dst": "h21"}], "level": "tor"},
    }
    values.update(changes)
    return NewAlert(**values)  # type: ignore[arg-type]


def test_fire_resolve_and_notifications_once_each(store: AlertStore) -> None:
    alert = store.fire(_new(), now_s=100.0, notifiers=["mail", "hook"])
    assert alert.is_firing
    assert alert.evidence["pairs"] == [{"src": "h11", "dst": "h21"}]
    assert [a.alert_id for a in store.firing("pingmesh")] == [alert.alert_id]
    due = store.due_notifications(now_s=100.0)
    assert [(n.notifier, n.event, n.state) for n in due] == [
        ("hook", "firing", "pending"),
        ("mail", "firing", "pending"),
    ]
    store.mark_sent(due[0], now_s=101.0)
    store.mark_failed_attempt(due[1], error="down", next_attempt_s=200.0)
    assert [n.notifier for n in store.due_notifications(now_s=150.0)] == []
    resolved = store.resolve(alert.alert_id, now_s=160.0, notifiers=["mail", "hook"])
    assert resolved is not None
    assert (resolved.state, resolved.resolved_at_s) == ("resolved", 160.0)
    assert store.resolve(alert.alert_id, now_s=170.0, notifiers=["mail"]) is None
    # mail's recovery waits behind its own pending firing notice; hook's goes now.
    due = store.due_notifications(now_s=160.0)
    assert [(n.notifier, n.event) for n in due] == [("hook", "resolved")]
    due = store.due_notifications(now_s=200.0)
    assert [(n.notifier, n.event) for n in due] == [("mail", "firing"), ("hook", "resolved")]
    store.mark_failed_attempt(due[0], error="gave up", next_attempt_s=None)
    assert [(n.notifier, n.event) for n in store.due_notifications(now_s=300.0)] == [
        ("hook", "resolved"),
        ("mail", "resolved"),
    ]
    assert store.history(state="resolved") == [store.get(alert.alert_id)]
    assert store.history(since_s=161.0) == []


def test_history_and_ack(store: AlertStore) -> None:
    a = store.fire(_new("t1->t2"), now_s=100.0, notifiers=[])
    b = store.fire(_new("t3->t4", severity="critical"), now_s=200.0, notifiers=[])
    store.resolve(a.alert_id, now_s=150.0, notifiers=[])
    assert [x.subject for x in store.history()] == ["t3->t4", "t1->t2"]
    assert [x.subject for x in store.history(since_s=160.0)] == ["t3->t4"]
    assert [x.subject for x in store.history(until_s=120.0)] == ["t1->t2"]
    acked = store.acknowledge(b.alert_id, by="ana", note="on it", now_s=210.0)
    assert acked is not None
    assert (acked.acked_by, acked.acked_at_s, acked.ack_note) == ("ana", 210.0, "on it")


def test_mutes_cover_rules_and_subject_globs(store: AlertStore) -> None:
    mute = store.add_mute(
        rule_id="pingmesh", subject="t1->*", until_s=500.0, by="ana", reason="work", now_s=100.0
    )
    assert store.mute_for("pingmesh", "t1->t9", now_s=200.0) == mute
    assert store.mute_for("pingmesh", "t2->t1", now_s=200.0) is None
    assert store.mute_for("other", "t1->t9", now_s=200.0) is None
    assert store.mute_for("pingmesh", "t1->t9", now_s=500.0) is None  # expired
    alert = store.fire(_new("t1->t2"), now_s=200.0, notifiers=["mail"])
    assert [n.state for n in store.notifications(alert.alert_id)] == ["suppressed"]
    assert store.mutes(now_s=600.0) == []
    assert store.delete_mute(mute.mute_id)
    assert not store.delete_mute(mute.mute_id)


def test_api_rules_round_trip(store: AlertStore) -> None:
    store.put_rule("r1", {"scope": "tor", "latency_us": 1.0}, now_s=1.0)
    store.put_rule("r1", {"scope": "dc", "latency_us": 2.0}, now_s=2.0)
    assert store.rules() == [("r1", {"scope": "dc", "latency_us": 2.0})]
    assert store.delete_rule("r1")
    assert store.rules() == []


def test_big_evidence_is_truncated_not_refused(store: AlertStore) -> None:
    alert = store.fire(_new(evidence={"blob": "x" * 100_000}), now_s=1.0, notifiers=[])
    assert alert.evidence["truncated"] is True
