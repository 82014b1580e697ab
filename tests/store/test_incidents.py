"""IncidentStore: incidents open, update and close on changes of state only."""

from __future__ import annotations

from pathlib import Path

import pytest

from pingmesh.store.incidents import Detection, IncidentStore
from pingmesh.store.results import ResultsDB

KINDS = {"black_hole", "host_down"}


@pytest.fixture
def store(db_target: Path | str) -> IncidentStore:
    return IncidentStore(ResultsDB(db_target).database)


def _hole(tor: str, pairs: int = 1) -> Detection:
    return Detection(kind="black_hole", scope="tor", entity=tor, evidence={"pairs": pairs})


def test_open_update_close(store: IncidentStore) -> None:
    first = store.reconcile([_hole("t2")], kinds=KINDS, now_s=100.0)
    assert [i.entity for i in first.opened] == ["t2"]
    assert first.opened[0].is_open

    again = store.reconcile([_hole("t2", pairs=3)], kinds=KINDS, now_s=110.0)
    assert again.opened == ()
    (updated,) = again.updated
    assert updated.incident_id == first.opened[0].incident_id
    assert updated.evidence == {"pairs": 3}
    assert (updated.started_at_s, updated.updated_at_s) == (100.0, 110.0)

    gone = store.reconcile([], kinds=KINDS, now_s=120.0)
    (closed,) = gone.closed
    assert closed.ended_at_s == 120.0
    assert store.open_incidents() == []

    reopened = store.reconcile([_hole("t2")], kinds=KINDS, now_s=130.0)
    assert reopened.opened[0].incident_id != first.opened[0].incident_id


def test_reconcile_leaves_other_kinds_alone(store: IncidentStore) -> None:
    store.reconcile([_hole("t1")], kinds={"black_hole"}, now_s=1.0)
    down = Detection(kind="host_down", scope="server", entity="h1")
    store.reconcile([down], kinds={"host_down"}, now_s=2.0)
    result = store.reconcile([], kinds={"host_down"}, now_s=3.0)
    assert [i.kind for i in result.closed] == ["host_down"]
    assert [i.kind for i in store.open_incidents()] == ["black_hole"]


def test_list_since_keeps_open_and_recently_closed(store: IncidentStore) -> None:
    store.reconcile([_hole("t1"), _hole("t2")], kinds=KINDS, now_s=10.0)
    store.reconcile([_hole("t2")], kinds=KINDS, now_s=20.0)  # t1 closes at 20
    assert {i.entity for i in store.list(since_s=15.0)} == {"t1", "t2"}
    assert {i.entity for i in store.list(since_s=25.0)} == {"t2"}


def test_bad_detections_are_refused(store: IncidentStore) -> None:
    with pytest.raises(ValueError, match="severity"):
        Detection(kind="black_hole", scope="tor", entity="t1", severity="meh")
    with pytest.raises(ValueError, match="entity"):
        Detection(kind="black_hole", scope="tor", entity="")
    with pytest.raises(ValueError, match="kind"):
        store.reconcile([_hole("t1")], kinds={"host_down"}, now_s=1.0)
    assert store.open_incidents() == []


def test_oversized_evidence_is_cut_not_lost_silently(store: IncidentStore) -> None:
    big = Detection(kind="black_hole", scope="tor", entity="t1", evidence={"x": "y" * 100_000})
    (incident,) = store.reconcile([big], kinds=KINDS, now_s=1.0).opened
    assert incident.evidence["truncated"] is True
