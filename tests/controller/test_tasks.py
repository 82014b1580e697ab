"""``GET /api/v1/tasks/{server}`` and ``POST /api/v1/traceroutes`` over a real results DB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pingmesh.clock import FakeClock
from pingmesh.config import TracerouteConfig
from pingmesh.controller.tasks import TracerouteService, tasks_router, traced_path
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.analysis.synthetic import FleetShape, synthetic_topology
from pingmesh.core.analysis.tracing import TraceRequest
from pingmesh.store.results import ResultsDB
from pingmesh.store.traceroutes import TracerouteStore
from pingmesh.web.app import create_app
from tests.web.client import TestClient

TOPOLOGY = synthetic_topology(FleetShape(dcs=1, podsets_per_dc=1))
SRC, DST = TOPOLOGY.servers[0], TOPOLOGY.servers[5]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def service(tmp_path: Path, clock: FakeClock) -> Iterator[TracerouteService]:
    db = ResultsDB(tmp_path / "r.sqlite")
    yield TracerouteService(
        TracerouteStore(db.database),
        TopologySource(TOPOLOGY),
        TracerouteConfig(burst=2),
        clock=clock,
    )
    db.close()


@pytest.fixture
def client(service: TracerouteService) -> Iterator[TestClient]:
    with TestClient(create_app([tasks_router(service)])) as test_client:
        yield test_client


def post(client: TestClient, agent: str, results: list[dict[str, Any]]) -> Any:
    return client.post("/api/v1/traceroutes", json={"agent": agent, "results": results})


def result_body(task_id: str, agent: str = SRC.name) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "agent": agent,
        "time": "2027-01-15T08:00:00Z",
        "src_addr": SRC.address,
        "src_port": 40001,
        "dst": DST.name,
        "dst_addr": DST.address,
        "dst_port": 9781,
        "hops": [
            {"ttl": 1, "address": "198.18.1.1"},
            {"ttl": 2, "address": None},
            {"ttl": 3, "address": DST.address, "rtt_us": 120.0},
        ],
        "reached": True,
    }


def test_the_agent_gets_its_task_and_posts_the_path(
    client: TestClient, service: TracerouteService, clock: FakeClock
) -> None:
    request = TraceRequest(
        agent=SRC.name,
        dst=DST.name,
        dst_addr=DST.address,
        dst_port=9781,
        src_port=40001,
        reason="silent_drop|tor|t1",
    )
    (planned,) = service.request([request], now_s=clock.now_s())
    body = client.get(f"/api/v1/tasks/{SRC.name}").json()
    assert body["server"] == SRC.name
    (task,) = body["tasks"]
    assert (task["task_id"], task["src_port"], task["dst_addr"]) == (
        planned.task_id,
        40001,
        DST.address,
    )
    assert client.get(f"/api/v1/tasks/{SRC.name}").json()["tasks"] == []  # leased
    assert client.get(f"/api/v1/tasks/{DST.name}").json()["tasks"] == []
    ack = post(client, SRC.name, [result_body(planned.task_id)])
    assert ack.status_code == 200
    assert ack.json() == {"accepted": 1, "duplicates": 0, "unknown_tasks": 0}
    assert post(client, SRC.name, [result_body(planned.task_id)]).json()["duplicates"] == 1
    stored = service.trace_result(planned.task_id)
    assert stored is not None
    path = traced_path(stored)
    assert path.devices() == ("198.18.1.1",)  # the destination itself is not a device
    assert service.paths_for({"silent_drop|tor|t1"}, since_s=0)["silent_drop|tor|t1"] == [path]
    stats = service.statistics()
    assert (stats.tasks_planned_total, stats.tasks_issued_total, stats.results_stored_total) == (
        1,
        1,
        1,
    )


def test_bad_requests_are_refused_and_nothing_is_stored(
    client: TestClient, service: TracerouteService
) -> None:
    assert client.get("/api/v1/tasks/nobody").status_code == 404
    unknown = post(client, "nobody", [result_body("tr-1", agent="nobody")])
    assert unknown.status_code == 404
    mixed = post(client, SRC.name, [result_body("tr-1", agent=DST.name)])
    assert mixed.status_code == 400
    assert "results.0.agent" in mixed.json()["detail"]
    malformed = client.post("/api/v1/traceroutes", json={"agent": SRC.name, "results": [{"x": 1}]})
    assert malformed.status_code == 422
    assert service.trace_result("tr-1") is None
    assert service.statistics().batches_rejected_total == 2


def test_the_alert_engine_asks_through_the_same_rate_limit(service: TracerouteService) -> None:
    ids = [service.request_trace(s.name, DST.name, reason="alert x") for s in TOPOLOGY.servers[:4]]
    assert [i is not None for i in ids] == [True, True, False, False]  # burst of 2
    assert service.request_trace("nobody", DST.name, reason="alert") is None
    assert service.trace_result(str(ids[0])) is None  # not reported yet
    assert service.statistics().tasks_rate_limited_total == 2


def test_disabled_tracing_plans_nothing(tmp_path: Path, clock: FakeClock) -> None:
    db = ResultsDB(tmp_path / "off.sqlite")
    off = TracerouteService(
        TracerouteStore(db.database),
        TopologySource(TOPOLOGY),
        TracerouteConfig(enabled=False),
        clock=clock,
    )
    assert off.request_trace(SRC.name, DST.name, reason="x") is None
    db.close()
