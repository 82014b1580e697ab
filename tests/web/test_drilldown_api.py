"""The drill-down, topology and alerts APIs over a real results database and raw store."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from pingmesh.alerts.engine import AlertEngine, RuleBook
from pingmesh.alerts.notifiers import WebhookNotifier
from pingmesh.alerts.rules import AlertRule
from pingmesh.clock import FakeClock
from pingmesh.config import AlertsConfig, ServerConfig, WebhookNotifierConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.store.alerts import AlertStore
from pingmesh.store.raw import RawStore
from pingmesh.store.results import ResultsDB
from pingmesh.web.alerts_api import AlertsApi
from pingmesh.web.api import Api
from pingmesh.web.app import create_app
from pingmesh.web.history_api import HistoryApi
from pingmesh.web.topology_api import TopologyApi
from tests.web.client import TestClient
from tests.web.fleet import NOW_S
from tests.web.mesh import (
    HEALTHY_PAIR,
    SICK_TOR,
    fill_history,
    fill_raw,
    mesh_topology,
    write_window,
)

SECRET = "webhook-secret-never-shown"


class Stack:
    def __init__(self, tmp: Path, *, token: str | None = None) -> None:
        self.clock = FakeClock(NOW_S)
        self.topology = mesh_topology()
        self.source = TopologySource(self.topology)
        self.db = ResultsDB(tmp / "results.sqlite")
        self.raw = RawStore(tmp / "raw")
        self.starts = fill_history(self.db, self.topology, NOW_S)
        self.raw_rows = fill_raw(self.raw, self.topology, NOW_S)
        config = ServerConfig()
        self.api = Api(self.db, self.source, config, clock=self.clock)
        self.store = AlertStore(self.db.database)
        alerts_config = AlertsConfig(
            write_token=SecretStr(token) if token else None, trace_wait_s=0.0
        )
        self.engine = AlertEngine(
            self.store,
            self.db,
            RuleBook(
                [
                    AlertRule(
                        rule_id="tor-links",
                        scope="link",
                        level="tor",
                        window="30s",
                        latency_us=5000.0,
                        n=2,
                        m=3,
                    )
                ],
                self.store,
            ),
            source=self.source,
            clock=self.clock,
            config=alerts_config,
            notifiers=[
                WebhookNotifier(
                    WebhookNotifierConfig(
                        name="hook", url="http://user:pw@127.0.0.1:9/x", secret=SecretStr(SECRET)
                    )
                )
            ],
        )
        self.history = HistoryApi(self.db, self.raw, self.source, self.api, clock=self.clock)
        self.topo = TopologyApi(
            self.db, self.source, self.api, config.heatmap, firing_alerts=self.store.firing
        )
        self.alerts = AlertsApi(self.engine, default_window="10m")
        app = create_app(
            [self.api.router, self.history.router, self.topo.router, self.alerts.router]
        )
        self.client = TestClient(app)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("drill"))
    with s.client:
        yield s
    s.db.close()


def test_a_cell_opens_its_server_pairs_worst_first(stack: Stack) -> None:
    src_tor = "d1p1t1"
    body = stack.client.get(
        "/api/v1/pairs", params={"level": "tor", "src": src_tor, "dst": SICK_TOR, "window": "30s"}
    ).json()
    assert body["window_start"].startswith("2027-")
    assert (body["src_servers"], body["dst_servers"]) == (3, 3)
    pairs = body["pairs"]
    # Pingmesh pinglists: server i of one ToR probes server i of the other.
    assert {(p["src"], p["dst"]) for p in pairs} == {
        (f"{src_tor}s{i}", f"{SICK_TOR}s{i}") for i in (1, 2, 3)
    }
    assert pairs[0]["p99_us"] >= pairs[-1]["p99_us"]
    assert body["cell"]["probes"] == sum(p["probes"] for p in pairs)
    missing = stack.client.get("/api/v1/pairs", params={"src": "nope", "dst": SICK_TOR})
    assert missing.status_code == 404
    assert "no tor 'nope'" in missing.json()["detail"]


def test_pair_history_picks_the_window_kind_and_marks_gaps(stack: Stack) -> None:
    src, dst = "d1p1t1s1", f"{SICK_TOR}s1"
    day = stack.client.get(
        "/api/v1/history",
        params={
            "src": src,
            "dst": dst,
            "start": "2027-01-14T08:00:00Z",
            "end": "2027-01-15T08:00:00Z",
        },
    ).json()
    assert day["window"] == "10m"  # 24 h of 30 s windows would be too many points
    series = day["series"]
    assert len(series["start"]) == 144
    assert all(p > 0 for p in series["probes"])
    assert series["p50_us"][-1] <= series["p99_us"][-1] <= series["p999_us"][-1]
    recent = stack.client.get(
        "/api/v1/history",
        params={
            "src": src,
            "dst": dst,
            "start": "2027-01-15T07:50:00Z",
            "end": "2027-01-15T08:00:00Z",
        },
    ).json()
    assert recent["window"] == "30s"
    starts = recent["series"]["start"]
    # Overlapping 30 s windows (every 10 s) are thinned so that no probe counts twice.
    assert len(starts) >= 15
    times = [datetime.fromisoformat(t).timestamp() for t in starts]
    assert all(b - a >= 30 for a, b in itertools.pairwise(times))
    # A pair that is never probed: every window is a gap.
    never = stack.client.get(
        "/api/v1/history", params={"src": "d1p1t1s1", "dst": "d2p2t3s2", "window": "10m"}
    ).json()
    assert set(never["series"]["probes"]) == {0}
    bad = stack.client.get("/api/v1/history", params={"src": src, "dst": dst, "window": "7m"})
    assert bad.status_code == 422


def test_node_page_has_forward_and_reverse_series(stack: Stack) -> None:
    body = stack.client.get(
        "/api/v1/node/d1p1t1s1", params={"start": "2027-01-15T02:00:00Z", "window": "10m"}
    ).json()
    forward = {s["peer"] for s in body["forward"]}
    reverse = {s["peer"] for s in body["reverse"]}
    assert "d1p1t1s2" in forward
    assert forward == reverse  # Pingmesh pinglists are symmetric
    assert len(body["start"]) == len(body["forward"][0]["p99_us"]) == 36
    assert body["forward"][0]["probes"][-1] > 0
    assert stack.client.get("/api/v1/node/nobody").status_code == 404


def test_raw_probes_carry_their_5_tuples(stack: Stack) -> None:
    src, dst = HEALTHY_PAIR
    body = stack.client.get(
        "/api/v1/probes", params={"src": src, "dst": dst, "start": "2027-01-15T07:40:00Z"}
    ).json()
    assert len(body["probes"]) == 90
    first = body["probes"][0]
    assert first["time"] > body["probes"][-1]["time"]  # newest first
    assert (first["protocol"], first["dst_port"]) == ("tcp", 9781)
    assert first["src_addr"] == stack.topology.server(src).address  # type: ignore[union-attr]
    assert len({p["src_port"] for p in body["probes"]}) == 90  # a new source port each
    failed = stack.client.get(
        "/api/v1/probes",
        params={"level": "tor", "src": "d1p1t1", "dst": SICK_TOR, "failed_only": "true",
                "start": "2027-01-15T07:40:00Z", "limit": 5},
    ).json()  # fmt: skip
    assert len(failed["probes"]) == 5
    assert failed["truncated"] is True
    assert {p["outcome"] for p in failed["probes"]} == {"timeout"}
    assert stack.history.statistics().probes_rows_served_total == 95


def test_alerts_api_ack_mute_rules_and_no_secret_anywhere(stack: Stack) -> None:
    stack.engine.evaluate()
    active = stack.client.get("/api/v1/alerts/active").json()
    assert active["sound"] is True
    subjects = {a["subject"] for a in active["alerts"]}
    assert subjects == {f"{t}->{SICK_TOR}" for t in stack.topology.entities("tor")}
    one = active["alerts"][0]
    detail = stack.client.get(f"/api/v1/alerts/{one['id']}").json()
    assert detail["evidence"]["pairs"]
    assert detail["notifications"][0]["notifier"] == "hook"

    # The topology view marks those links red.
    topo = stack.client.get("/api/v1/topology", params={"level": "tor", "window": "30s"}).json()
    red = {(x["src"], x["dst"]) for x in topo["links"] if x["alerts"]}
    assert red == {(t, SICK_TOR) for t in stack.topology.entities("tor")}
    assert {n["id"] for n in topo["nodes"]} == set(stack.topology.entities("tor"))

    for a in active["alerts"]:
        acked = stack.client.post(f"/api/v1/alerts/{a['id']}/ack", json={"by": "ana"})
        assert acked.json()["acked_by"] == "ana"
    assert stack.client.get("/api/v1/alerts/active").json()["sound"] is False
    muted = stack.client.post(
        f"/api/v1/alerts/{one['id']}/mute", json={"by": "ana", "duration_s": 600}
    ).json()
    assert muted["subject"] == one["subject"]
    assert [m["id"] for m in stack.client.get("/api/v1/alerts/mutes").json()] == [muted["id"]]
    detail = stack.client.get(f"/api/v1/alerts/{one['id']}").json()
    assert detail["muted"] is True
    assert detail["notifications"][0]["state"] == "suppressed"

    added = stack.client.post(
        "/api/v1/alerts/rules",
        json={"id": "dc-loss", "scope": "dc", "loss_ratio": 0.05, "n": 2, "m": 4},
    )
    assert added.status_code == 200
    assert added.json()["window"] == "10m"
    assert "loss > 5 %" in added.json()["description"]
    rules = [r["id"] for r in stack.client.get("/api/v1/alerts/rules").json()]
    assert rules == ["tor-links", "dc-loss"]
    clash = stack.client.post("/api/v1/alerts/rules", json={"id": "tor-links", "scope": "dc",
                                                              "loss_ratio": 0.1})  # fmt: skip
    assert clash.status_code == 400
    assert stack.client.delete("/api/v1/alerts/rules/dc-loss").status_code == 200
    assert stack.client.delete("/api/v1/alerts/rules/dc-loss").status_code == 404

    notifiers = stack.client.get("/api/v1/alerts/notifiers").json()
    assert notifiers == [
        {"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/x", "secret_set": True}
    ]
    everything = json.dumps(
        [stack.client.get(p).json() for p in ("/api/v1/alerts", "/api/v1/alerts/rules",
                                              f"/api/v1/alerts/{one['id']}", "/openapi.json")]
    )  # fmt: skip
    assert SECRET not in everything
    assert "user:pw" not in everything


def test_changes_need_the_write_token_when_one_is_set(tmp_path: Path) -> None:
    s = Stack(tmp_path, token="t0ken")
    with s.client:
        s.engine.evaluate()
        alert = s.client.get("/api/v1/alerts/active").json()["alerts"][0]
        refused = s.client.post(f"/api/v1/alerts/{alert['id']}/ack", json={"by": "x"})
        assert refused.status_code == 401
        assert "write_token" in refused.json()["detail"]
        wrong = s.client.post(
            f"/api/v1/alerts/{alert['id']}/ack",
            json={"by": "x"},
            headers={"Authorization": "Bearer nope"},
        )
        assert wrong.status_code == 401
        ok = s.client.post(
            f"/api/v1/alerts/{alert['id']}/ack",
            json={"by": "x"},
            headers={"Authorization": "Bearer t0ken"},
        )
        assert ok.status_code == 200
    s.db.close()


def test_a_day_of_node_graphs_uses_hourly_rollups_when_there_are_some(tmp_path: Path) -> None:
    topology = mesh_topology()
    db = ResultsDB(tmp_path / "r.sqlite")
    rng = random.Random(3)
    end = int(NOW_S) - int(NOW_S) % 3600
    for start in range(end - 86400, end, 3600):
        write_window(db, topology, "1h", start, 3600, sick=False, rng=rng)
    for start in range(end - 86400, end, 600):
        write_window(db, topology, "10m", start, 600, sick=False, rng=rng)
    clock = FakeClock(float(end))
    source = TopologySource(topology)
    api = Api(db, source, ServerConfig(), clock=clock)
    history = HistoryApi(db, None, source, api, clock=clock)
    with TestClient(create_app([api.router, history.router])) as client:
        day = {"start": "2027-01-14T08:00:00Z", "end": "2027-01-15T08:00:00Z"}
        node = client.get("/api/v1/node/d1p1t1s1", params=day).json()
        assert (node["window"], len(node["start"])) == ("1h", 24)
        pair = client.get("/api/v1/history", params={"src": "d1p1t1s1", "dst": "d1p1t1s2", **day})
        assert pair.json()["window"] == "10m"  # one graph: the finest that fits
    db.close()
