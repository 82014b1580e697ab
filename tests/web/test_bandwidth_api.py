"""The bandwidth API and page over real HTTP (uvicorn on 127.0.0.1), on SQLite."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from pingmesh.clock import FakeClock
from pingmesh.server.tls import AgentAuthenticator
from pingmesh.store.bandwidth import BandwidthStore, InterfaceSample, StoredReport
from pingmesh.store.results import ResultsDB
from pingmesh.web.app import create_app
from pingmesh.web.bandwidth_api import BandwidthService, choose_step_s

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
SECRET = b"s" * 32


class Served:
    """An ASGI app under uvicorn in a thread, on a free 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)
        self._sock.close()


def sample(iface: str, rx: int, tx: int, *, interval_s: float = 1.0) -> InterfaceSample:
    return InterfaceSample(
        interface=iface,
        interval_s=interval_s,
        rx_bytes=rx,
        tx_bytes=tx,
        rx_packets=max(1, rx // 1000),
        tx_packets=max(1, tx // 1000),
        rx_peak_bytes_per_s=rx * 1.5,
        tx_peak_bytes_per_s=tx * 1.5,
    )


def fill(store: BandwidthStore, now_s: float) -> None:
    """Ten minutes of reports: web1 sends 10 kB/s, db1 receives 50 kB/s, loopback is loud."""
    for agent, alias, rx, tx in (("web1", "web one", 2_000, 10_000), ("db1", "", 50_000, 1_000)):
        reports = [
            StoredReport(
                report_id=f"{agent}-{i:06d}",
                start_s=now_s - 600 + i - 1,
                end_s=now_s - 600 + i,
                interfaces=(sample("eth0", rx, tx), sample("lo", 10**7, 10**7)),
            )
            for i in range(600)
        ]
        store.ingest(agent, alias, reports, now_s=now_s)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[BandwidthService]:
    db = ResultsDB(tmp_path / "r.sqlite")
    store = BandwidthStore(db.database)
    fill(store, NOW)
    yield BandwidthService(store, clock=FakeClock(NOW), authenticator=AgentAuthenticator(SECRET))
    db.close()


@pytest.fixture
def url(service: BandwidthService) -> Iterator[str]:
    with Served(create_app([service.router])) as base:
        yield base


def test_interfaces_of_the_last_hour_with_their_rates(url: str) -> None:
    body = httpx.get(f"{url}/api/v1/bandwidth/interfaces", params={"range": "1h"}).json()
    rows = {(i["agent"], i["interface"]): i for i in body["interfaces"]}
    assert set(rows) == {("db1", "eth0"), ("db1", "lo"), ("web1", "eth0"), ("web1", "lo")}
    web = rows[("web1", "eth0")]
    assert (web["alias"], web["tx_bytes"], web["tx_bytes_per_s"]) == ("web one", 6_000_000, 10_000)
    assert web["last_seen"] == "2027-01-15T07:59:59Z"


def test_series_in_buckets_with_rates_packet_sizes_and_peaks(url: str) -> None:
    params = {"agent": "web1", "interface": "eth0", "range": "15m", "step": 60}
    body = httpx.get(f"{url}/api/v1/bandwidth/series", params=params).json()
    assert body["step_s"] == 60
    points = body["points"]
    assert len(points) == 10  # ten minutes of data in a 15-minute range
    full = points[1]
    assert (full["covered_s"], full["tx_bytes"]) == (60.0, 600_000)
    assert full["tx_bytes_per_s"] == 10_000.0
    assert full["tx_avg_packet_bytes"] == 1000.0
    assert full["tx_peak_bytes_per_s"] == 15_000.0
    assert datetime.fromisoformat(full["time"]).timestamp() % 60 == 0


def test_the_default_step_gives_a_readable_number_of_points(url: str) -> None:
    body = httpx.get(
        f"{url}/api/v1/bandwidth/series",
        params={"agent": "db1", "interface": "eth0", "range": "7d"},
    ).json()
    assert body["step_s"] == choose_step_s(7 * 86400) == 3600
    assert sum(p["rx_bytes"] for p in body["points"]) == 600 * 50_000


def test_top_talkers_leave_loopback_out(url: str) -> None:
    body = httpx.get(f"{url}/api/v1/bandwidth/top", params={"range": "1h", "limit": 5}).json()
    talkers = [(t["agent"], t["total_bytes"]) for t in body["talkers"]]
    assert talkers == [("db1", 600 * 51_000), ("web1", 600 * 12_000)]
    assert body["talkers"][0]["rx_bytes_per_s"] == pytest.approx(600 * 50_000 / 3600)


def test_explicit_start_and_end(url: str) -> None:
    start = datetime.fromtimestamp(NOW - 60, tz=UTC).isoformat()
    end = datetime.fromtimestamp(NOW, tz=UTC).isoformat()
    body = httpx.get(f"{url}/api/v1/bandwidth/top", params={"start": start, "end": end}).json()
    assert [t["total_bytes"] for t in body["talkers"]] == [60 * 51_000, 60 * 12_000]


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("top", {"range": "2h"}, "query parameter 'range': '2h' is not one of"),
        ("top", {"start": "2027-01-15T08:00:00Z"}, "'start' and 'end' go together"),
        ("top", {"start": "yesterday", "end": "2027-01-15T08:00:00Z"}, "not an RFC 3339"),
        ("top", {"limit": 0}, "query parameter 'limit'"),
        (
            "series",
            {"agent": "web1", "interface": "eth0", "range": "7d", "step": 1},
            "query parameter 'step'",
        ),
        ("series", {"interface": "eth0"}, "query parameter 'agent'"),
    ],
)
def test_bad_parameters_are_named(
    url: str, path: str, params: dict[str, Any], message: str
) -> None:
    response = httpx.get(f"{url}/api/v1/bandwidth/{path}", params=params)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def _batch(agent: str, report_id: str) -> dict[str, Any]:
    return {
        "agent": agent,
        "alias": "new",
        "reports": [
            {
                "report_id": report_id,
                "start": "2027-01-15T07:59:59Z",
                "end": "2027-01-15T08:00:00Z",
                "interfaces": [
                    {
                        "interface": "eth1",
                        "interval_s": 1.0,
                        "rx_bytes": 5,
                        "tx_bytes": 7,
                        "rx_packets": 1,
                        "tx_packets": 1,
                    }
                ],
            }
        ],
    }


def test_http_uploads_need_the_agents_token_and_are_idempotent(
    url: str, service: BandwidthService
) -> None:
    token = AgentAuthenticator(SECRET).token_for("new1")
    body = _batch("new1", "new1-000001")
    assert httpx.post(f"{url}/api/v1/bandwidth", json=body).status_code == 401
    wrong = {"Authorization": f"Bearer {AgentAuthenticator(SECRET).token_for('web1')}"}
    assert httpx.post(f"{url}/api/v1/bandwidth", json=body, headers=wrong).status_code == 403
    good = {"Authorization": f"Bearer {token}"}
    first = httpx.post(f"{url}/api/v1/bandwidth", json=body, headers=good)
    again = httpx.post(f"{url}/api/v1/bandwidth", json=body, headers=good)
    assert first.json() == {"accepted": 1, "duplicate": 0}
    assert again.json() == {"accepted": 0, "duplicate": 1}
    assert service.statistics().batches_refused_total == 2


def test_a_bad_or_oversized_upload_is_refused_and_names_the_field(url: str) -> None:
    body = _batch("new1", "x")  # too short for a report id
    response = httpx.post(f"{url}/api/v1/bandwidth", json=body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("reports.0.report_id")
    huge = httpx.post(f"{url}/api/v1/bandwidth", content=b"x" * (5 * 1024 * 1024))
    assert huge.status_code == 413


def test_the_page_and_script_are_served_with_a_strict_policy(url: str) -> None:
    page = httpx.get(f"{url}/bandwidth")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="static/bandwidth.js"' in page.text
    script = httpx.get(f"{url}/static/bandwidth.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "api/v1/bandwidth/series" in script.text
    assert "http://" not in script.text
    assert "https://" not in script.text


def test_retention_runs_and_is_counted(service: BandwidthService) -> None:
    assert service.retention_once() == []  # everything is younger than 7 days
    stats = service.statistics()
    assert (stats.retention_runs_total, stats.retention_failures_total) == (1, 0)
