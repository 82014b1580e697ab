"""``GET /api/v1/incidents``: kind, scope, entity, RFC 3339 times and evidence; filters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.clock import FakeClock
from pingmesh.store.incidents import Detection, IncidentStore
from pingmesh.store.results import ResultsDB
from pingmesh.web.app import create_app
from pingmesh.web.incidents_api import IncidentsApi
from tests.web.client import TestClient

T = 1_800_000_000.0
KINDS = {"black_hole", "silent_drop", "host_down"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IncidentStore]:
    db = ResultsDB(tmp_path / "r.sqlite")
    store = IncidentStore(db.database)
    hole = Detection(
        kind="black_hole",
        scope="tor",
        entity="t2",
        evidence={"pairs": [{"src": "h1", "dst": "h9"}]},
    )
    spine = Detection(kind="silent_drop", scope="tier", entity="spine@dc1", severity="warning")
    down = Detection(kind="host_down", scope="server", entity="h7")
    store.reconcile([hole, spine, down], kinds=KINDS, now_s=T)
    store.reconcile([hole, spine], kinds=KINDS, now_s=T + 60)  # h7 is back at T + 60
    yield store
    db.close()


@pytest.fixture
def api(store: IncidentStore) -> IncidentsApi:
    return IncidentsApi(store, clock=FakeClock(T + 100))


@pytest.fixture
def client(api: IncidentsApi) -> Iterator[TestClient]:
    with TestClient(create_app([api.router])) as test_client:
        yield test_client


def test_every_incident_with_its_fields(client: TestClient) -> None:
    body = client.get("/api/v1/incidents").json()
    assert body["count"] == 3
    by_entity = {i["entity"]: i for i in body["incidents"]}
    hole = by_entity["t2"]
    assert (hole["kind"], hole["scope"], hole["severity"], hole["open"]) == (
        "black_hole",
        "tor",
        "critical",
        True,
    )
    assert hole["started_at"] == "2027-01-15T08:00:00Z"
    assert hole["ended_at"] is None
    assert hole["evidence"] == {"pairs": [{"src": "h1", "dst": "h9"}]}
    down = by_entity["h7"]
    assert (down["open"], down["ended_at"]) == (False, "2027-01-15T08:01:00Z")
    assert body["generated_at"] == "2027-01-15T08:01:40Z"


def test_since_keeps_open_and_recently_closed(client: TestClient) -> None:
    late = client.get("/api/v1/incidents", params={"since": "2027-01-15T08:00:30Z"}).json()
    assert {i["entity"] for i in late["incidents"]} == {"t2", "spine@dc1", "h7"}
    later = client.get("/api/v1/incidents", params={"since": "2027-01-15T09:00:00+01:00"}).json()
    assert {i["entity"] for i in later["incidents"]} == {"t2", "spine@dc1", "h7"}  # 08:00Z
    after = client.get("/api/v1/incidents", params={"since": "2027-01-15T08:05:00Z"}).json()
    assert {i["entity"] for i in after["incidents"]} == {"t2", "spine@dc1"}


def test_filters(client: TestClient) -> None:
    def entities(**params: object) -> set[str]:
        body = client.get("/api/v1/incidents", params=params).json()
        return {i["entity"] for i in body["incidents"]}

    assert entities(open_only=True) == {"t2", "spine@dc1"}
    assert entities(kind="silent_drop") == {"spine@dc1"}
    assert entities(scope="server") == {"h7"}
    assert entities(entity="t2", open_only=True) == {"t2"}
    assert entities(kind="host_down", open_only=True) == set()
    assert len(client.get("/api/v1/incidents", params={"limit": 1}).json()["incidents"]) == 1


def test_one_incident(client: TestClient) -> None:
    first = client.get("/api/v1/incidents").json()["incidents"][0]
    one = client.get(f"/api/v1/incidents/{first['id']}")
    assert one.json() == first
    missing = client.get("/api/v1/incidents/0000")
    assert missing.status_code == 404
    assert "0000" in missing.json()["detail"]


def test_bad_parameters(client: TestClient, api: IncidentsApi) -> None:
    naive = client.get("/api/v1/incidents", params={"since": "2027-01-15T08:00:00"})
    assert naive.status_code == 422
    assert "query parameter 'since'" in naive.json()["detail"]
    assert client.get("/api/v1/incidents", params={"limit": 0}).status_code == 422
    stats = api.statistics()
    assert stats.incidents_rejected_total == 1
    assert stats.incidents_requests_total == 1
