"""SLA thresholds, reported at the level that explains the breach."""

from __future__ import annotations

from typing import Any

from pingmesh.core.analysis.model import Counts, DetectorConfig, EntitySla, PairFacts, Thresholds
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


def _pair(src: str, dst: str, *, retransmitted: int, n: int = 100) -> PairFacts:
    """A pair whose successes needed ``retransmitted`` retransmissions."""
    servers = {"src": TOPOLOGY.server(src), "dst": TOPOLOGY.server(dst)}
    ends: dict[str, Any] = {
        f"{side}_{level}": getattr(server, level)
        for side, server in servers.items()
        for level in ("tor", "podset", "dc")
    }
    events = {"retransmitted": retransmitted, "drop_events": retransmitted}
    counts = Counts(probes=n, successes=n, drop_basis=n, **events)
    return PairFacts(src=src, dst=dst, counts=counts, **ends)


def test_what_another_detector_explains_is_not_a_breach() -> None:
    # A black hole is cleared: the SYNs it dropped succeed on their retry, 15 in each of two
    # pairs from each podset of dc1 — a 1e-2 drop rate and, as more than 1 % of the probes
    # waited a retransmission timeout, a 1 s P99 for the whole DC.
    pairs = [
        _pair("dc1-ps1-t1-h1", "dc1-ps2-t1-h1", retransmitted=15),
        _pair("dc1-ps1-t2-h1", "dc1-ps1-t1-h2", retransmitted=15),
        _pair("dc1-ps2-t1-h1", "dc1-ps1-t1-h1", retransmitted=15),
        _pair("dc1-ps2-t2-h1", "dc1-ps1-t1-h3", retransmitted=15),
    ]
    rows = healthy()
    for pair in pairs:
        for scope, entity in (
            ("server", pair.src),
            ("tor", pair.src_tor),
            ("podset", pair.src_podset),
            ("dc", pair.src_dc),
        ):
            old = rows[(scope, entity)]
            counts = old.counts + pair.counts
            rows[(scope, entity)] = EntitySla(
                scope=scope, entity=entity, counts=counts, p99_us=1_000_000.0
            )
    blamed = keys(rows)
    assert ("packet_loss", "dc", "dc1") in blamed
    assert ("high_latency", "dc", "dc1") in blamed
    found = detect_sla_breaches(TOPOLOGY, list(rows.values()), config=CONFIG, explained=pairs)
    assert found == []


def test_explained_pairs_leave_a_real_breach_alone() -> None:
    rows = healthy()
    for scope, entity in list(rows):
        if entity.startswith("dc2"):
            rows[(scope, entity)] = row(scope, entity, drops=8, n=1000)
    explained = [_pair("dc2-ps1-t1-h1", "dc2-ps2-t1-h1", retransmitted=1, n=10)]
    found = detect_sla_breaches(TOPOLOGY, list(rows.values()), config=CONFIG, explained=explained)
    assert {f.key for f in found} == {("packet_loss", "dc", "dc2")}


def test_a_p99_that_three_retried_syns_make_is_not_judged() -> None:
    # 3 of 200 probes waited a 1 s retransmission timeout: the P99 is 1 s, but three events
    # are no evidence of a drop rate, so they are none of a P99 either.
    rows = healthy()
    tor = "dc1-ps1-t1"
    counts = Counts(probes=200, successes=200, retransmitted=3, drop_events=3, drop_basis=200)
    rows[("tor", tor)] = EntitySla(scope="tor", entity=tor, counts=counts, p99_us=1_000_000.0)
    assert keys(rows) == set()
    counts = Counts(probes=200, successes=200, retransmitted=6, drop_events=6, drop_basis=200)
    rows[("tor", tor)] = EntitySla(scope="tor", entity=tor, counts=counts, p99_us=1_000_000.0)
    assert keys(rows) == {("high_latency", "tor", tor), ("packet_loss", "tor", tor)}
