"""SLA thresholds, reported at the level that explains the breach."""

from __future__ import annotations

from pingmesh.core.analysis.model import Counts, DetectorConfig, EntitySla, Thresholds
from pingmesh.core.analysis.sla_alerts import detect_sla_breaches
from pingmesh.core.analysis.synthetic import FleetShape, synthetic_topology

TOPOLOGY = synthetic_topology(FleetShape(), services={"search": ["dc1-ps1-t1-h1", "dc2-ps1-t1-h1"]})
CONFIG = DetectorConfig()


def row(scope: str, entity: str, *, p99: float = 500.0, drops: int = 0, n: int = 1000) -> EntitySla:
    return EntitySla(
        scope=scope,
        entity=entity,
        counts=Counts(probes=n, successes=n, drop_events=drops, retransmitted=drops, drop_basis=n),
        p99_us=p99,
    )


def healthy() -> dict[tuple[str, str], EntitySla]:
    rows = {}
    for s in TOPOLOGY.servers:
        for scope, entity in (
            ("server", s.name),
            ("tor", s.tor),
            ("podset", s.podset),
            ("dc", s.dc),
        ):
            rows[(scope, entity)] = row(scope, entity)
    return rows


def keys(
    rows: dict[tuple[str, str], EntitySla], config: DetectorConfig = CONFIG
) -> set[tuple[str, str, str]]:
    return {f.key for f in detect_sla_breaches(TOPOLOGY, list(rows.values()), config=config)}


def test_healthy_is_silent() -> None:
    assert keys(healthy()) == set()


def test_one_slow_server_is_that_server_not_its_tor() -> None:
    rows = healthy()
    rows[("server", "dc1-ps1-t1-h2")] = row("server", "dc1-ps1-t1-h2", p99=9000)
    rows[("tor", "dc1-ps1-t1")] = row("tor", "dc1-ps1-t1", p99=7000)  # lifted by it
    rows[("podset", "dc1-ps1")] = row("podset", "dc1-ps1", p99=6000)
    assert keys(rows) == {("high_latency", "server", "dc1-ps1-t1-h2")}


def test_a_dc_wide_breach_is_one_dc_incident() -> None:
    rows = healthy()
    for scope, entity in list(rows):
        if entity.startswith("dc1"):
            rows[(scope, entity)] = row(scope, entity, drops=5, n=1000)  # 5e-3
    assert keys(rows) == {("packet_loss", "dc", "dc1")}


def test_a_tor_wide_breach_is_one_tor_incident() -> None:
    rows = healthy()
    for s in TOPOLOGY.tor_servers("dc2-ps2-t1"):
        rows[("server", s.name)] = row("server", s.name, p99=8000)
    rows[("tor", "dc2-ps2-t1")] = row("tor", "dc2-ps2-t1", p99=8000)
    rows[("podset", "dc2-ps2")] = row("podset", "dc2-ps2", p99=8000)
    rows[("dc", "dc2")] = row("dc", "dc2", p99=6000)
    assert keys(rows) == {("high_latency", "tor", "dc2-ps2-t1")}


def test_evidence_is_needed() -> None:
    rows = healthy()
    rows[("server", "dc1-ps1-t1-h1")] = row("server", "dc1-ps1-t1-h1", p99=9000, n=50)
    rows[("server", "dc1-ps1-t1-h3")] = row("server", "dc1-ps1-t1-h3", drops=2, n=100)  # 2e-2
    assert keys(rows) == set()  # 50 probes make no P99; 2 events make no drop rate


def test_services_and_dc_pairs_are_judged_on_their_own() -> None:
    rows = healthy()
    rows[("service", "search")] = row("service", "search", p99=9000)
    rows[("dc_pair", "dc1->dc2")] = row("dc_pair", "dc1->dc2", drops=20)
    rows[("dc_pair", "dc1->dc1")] = row("dc_pair", "dc1->dc1", drops=20)  # inside a DC: the DC's
    assert keys(rows) == {
        ("high_latency", "service", "search"),
        ("packet_loss", "dc_pair", "dc1->dc2"),
    }


def test_thresholds_per_scope() -> None:
    rows = healthy()
    rows[("server", "dc1-ps1-t1-h2")] = row("server", "dc1-ps1-t1-h2", p99=900)
    strict = DetectorConfig(per_scope={"server": Thresholds(p99_us=800)})
    assert keys(rows) == set()
    assert keys(rows, strict) == {("high_latency", "server", "dc1-ps1-t1-h2")}
