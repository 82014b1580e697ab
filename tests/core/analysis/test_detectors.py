"""Every detector on synthetic probes with a known fault: exactly the expected finding; and on
clean data of the same size, none. Facts come from the pure reference (no DuckDB), so the
fault's placement can be a hypothesis strategy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pingmesh.core.analysis.model import DetectorConfig, Finding
from pingmesh.core.analysis.pipeline import evaluate
from pingmesh.core.analysis.synthetic import (
    BlackHole,
    Fabric,
    Fault,
    FleetShape,
    HostDown,
    HostDrops,
    HostNoise,
    ProbePlan,
    RandomDrop,
    ResponderDown,
    SlowHost,
    generate_probes,
    synthetic_topology,
)
from tests.core.analysis.reference import port_history, window_facts

SHAPE = FleetShape()  # 2 DCs x 2 podsets x 2 ToRs x 4 servers; 2 leaves, 2 spines, 2 cores
TOPOLOGY = synthetic_topology(SHAPE)
FABRIC = Fabric(TOPOLOGY, SHAPE)
T0 = 1_800_000_000 - 1_800_000_000 % 3600
END = T0 + 600
CONFIG = DetectorConfig()
TORS = TOPOLOGY.tors()
PODSETS = TOPOLOGY.podsets()
SERVERS = [s.name for s in TOPOLOGY.servers]
# Each example generates ten minutes of a 32-server fleet: a few examples each, reproducible,
# and no shrinking (the generated case is already small and readable).
PROPERTY = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)


def rows(faults: Sequence[Fault] = (), *, seed: int = 1, udp: bool = False) -> list[dict[str, Any]]:
    plan = ProbePlan(
        start_s=T0,
        end_s=END,
        seed=seed,
        faults=tuple(faults),
        udp_servers=frozenset(SERVERS) if udp else frozenset(),
    )
    return list(generate_probes(TOPOLOGY, FABRIC, plan))


def findings(
    faults: Sequence[Fault] = (),
    *,
    seed: int = 1,
    udp: bool = False,
    last_seen: dict[str, float] | None = None,
) -> list[Finding]:
    data = rows(faults, seed=seed, udp=udp)
    window = window_facts(TOPOLOGY, data, END - 30, END)
    horizon = window_facts(TOPOLOGY, data, T0, END)
    seen = last_seen if last_seen is not None else dict.fromkeys(SERVERS, END - 5.0)
    return list(
        evaluate(
            TOPOLOGY,
            window=window,
            horizon=horizon,
            ports=port_history(data, T0, END),
            last_seen_s=seen,
            now_s=END + 5,
            config=CONFIG,
        ).findings
    )


def keys(found: Sequence[Finding], *kinds: str) -> set[tuple[str, str, str]]:
    return {f.key for f in found if not kinds or f.kind in kinds}


@PROPERTY
@given(seed=st.integers(1, 10_000), udp=st.booleans())
def test_clean_data_yields_nothing(seed: int, udp: bool) -> None:
    assert findings(seed=seed, udp=udp) == []


@PROPERTY
@given(tor=st.sampled_from(TORS), share=st.sampled_from([0.25, 0.4, 1.0]), seed=st.integers(1, 99))
def test_a_tor_black_hole_is_that_tor(tor: str, share: float, seed: int) -> None:
    found = findings([BlackHole(device=f"tor:{tor}", share=share)], seed=seed)
    if share == 1.0:
        # Everything through the ToR is gone: its servers are unreachable, a host-side verdict
        # for each, and all of them at once is the ToR (the "white cross").
        assert keys(found) == {("tor_down", "tor", tor)}
    else:
        assert keys(found, "black_hole") == {("black_hole", "tor", tor)}
        assert keys(found) == keys(found, "black_hole")
    (finding,) = found
    assert finding.evidence["servers" if share == 1.0 else "pairs"]


@PROPERTY
@given(podset=st.sampled_from(PODSETS), seed=st.integers(1, 99))
def test_a_black_hole_above_every_tor_of_a_podset_escalates(podset: str, seed: int) -> None:
    leaves = [BlackHole(device=f"leaf:{podset}:{k}", share=0.6) for k in (1, 2)]
    found = findings(leaves, seed=seed)
    assert keys(found) == {("black_hole", "tier", f"leaf@{podset}")}
    assert found[0].evidence["tier"] == "leaf_or_spine"


def test_one_black_holed_pair_is_reported_as_a_pair() -> None:
    pair = ("dc1-ps1-t1-h1", "dc1-ps2-t1-h1")
    found = findings([BlackHole(device="tor:dc1-ps1-t1", only_pairs=frozenset({pair}))])
    assert keys(found) == {("black_hole", "pair", "dc1-ps1-t1-h1->dc1-ps2-t1-h1")}
    (finding,) = found
    assert finding.severity == "warning"
    assert finding.evidence["type"] == 1
    tuples = finding.evidence["five_tuples"]
    assert tuples
    assert tuples[0]["dst_addr"] == TOPOLOGY.server(pair[1]).address  # type: ignore[union-attr]


@PROPERTY
@given(seed=st.integers(1, 9_999))
def test_a_type_2_black_hole_is_found_by_the_rotating_ports(seed: int) -> None:
    pair = ("dc1-ps1-t1-h2", "dc1-ps1-t2-h2")
    # The failing ports are a hash of the 5-tuple: at 0.7, two of this pair's eight rotating
    # ports (the generator's ports do not depend on the seed, the losses do).
    hole = BlackHole(
        device="tor:dc1-ps1-t2", share=0.7, per_port=True, only_pairs=frozenset({pair})
    )
    found = findings([hole], seed=seed, udp=True)
    assert keys(found) == {("black_hole", "pair", "dc1-ps1-t1-h2->dc1-ps1-t2-h2")}
    assert found[0].evidence["type"] == 2
    assert found[0].evidence["failing_ports"] == [44345, 44349]


def test_type_2_needs_the_ports_to_repeat() -> None:
    # With TCP's fresh ephemeral port per probe a port is used once, and in a 30 s window of
    # probes every 10 s this pair has too few timeouts to show flows failing every retry:
    # nothing proves they fail *deterministically*, so no black hole is claimed.
    pair = ("dc1-ps1-t1-h2", "dc1-ps1-t2-h2")
    hole = BlackHole(
        device="tor:dc1-ps1-t2", share=0.3, per_port=True, only_pairs=frozenset({pair})
    )
    assert keys(findings([hole]), "black_hole") == set()


def _every_second(faults: Sequence[Fault], seed: int) -> list[Finding]:
    """Probes every second (as in the lab), judged over a 10 s window."""
    plan = ProbePlan(start_s=T0, end_s=T0 + 40, interval_s=1.0, seed=seed, faults=tuple(faults))
    data = list(generate_probes(TOPOLOGY, FABRIC, plan))
    return list(
        evaluate(
            TOPOLOGY,
            window=window_facts(TOPOLOGY, data, T0 + 30, T0 + 40),
            last_seen_s=dict.fromkeys(SERVERS, T0 + 39.0),
            now_s=T0 + 41,
            config=CONFIG,
        ).findings
    )


@PROPERTY
@given(tor=st.sampled_from(TORS), seed=st.integers(1, 99))
def test_a_tcp_port_black_hole_is_found_by_the_syn_retries(tor: str, seed: int) -> None:
    # One flow in four dies at the ToR, every SYN of it: TCP takes a fresh port per probe, but
    # the kernel retries on the same 5-tuple, so each timeout is a flow that failed every try
    # while the pair's other flows never lost a packet (the lab's port black hole).
    found = _every_second([BlackHole(device=f"tor:{tor}", share=0.25, per_port=True)], seed)
    assert keys(found) == {("black_hole", "tor", tor)}
    assert found[0].evidence["types"] == [2]


@PROPERTY
@given(tor=st.sampled_from(TORS), rate=st.sampled_from([0.1, 0.3, 0.5]), seed=st.integers(1, 99))
def test_random_loss_is_never_a_flow_keyed_black_hole(tor: str, rate: float, seed: int) -> None:
    # Loss heavy enough to time probes out also makes retried successes: not flow-keyed. (At
    # 50 % a pair whose ten probes all time out happens, and is a type-1 symptom.)
    found = _every_second([RandomDrop(device=f"tor:{tor}", rate=rate)], seed)
    types = [f.evidence.get("types", [f.evidence.get("type")]) for f in found]
    assert not [t for t in types if 2 in t]  # type: ignore[operator]
    if rate < 0.5:
        assert keys(found, "black_hole") == set()
    assert ("silent_drop", "tor", tor) in keys(found)


@PROPERTY
@given(server=st.sampled_from(SERVERS), seed=st.integers(1, 99))
def test_an_agent_that_stops_reporting_is_host_down(server: str, seed: int) -> None:
    seen = dict.fromkeys(SERVERS, END - 5.0)
    seen[server] = END - 200.0
    found = findings([HostDown(server=server, start_s=END - 200)], seed=seed, last_seen=seen)
    assert keys(found) == {("host_down", "server", server)}


@PROPERTY
@given(server=st.sampled_from(SERVERS), seed=st.integers(1, 99))
def test_a_target_that_fails_from_every_source_is_a_host_problem(server: str, seed: int) -> None:
    found = findings([ResponderDown(server=server, start_s=END - 60)], seed=seed)
    assert keys(found) == {("host_unreachable", "server", server)}
    assert found[0].evidence["direction"] == "inbound"


def test_a_whole_tor_gone_is_one_tor_incident() -> None:
    tor = "dc2-ps1-t2"
    members = [s.name for s in TOPOLOGY.tor_servers(tor)]
    seen = dict.fromkeys(SERVERS, END - 5.0)
    seen.update(dict.fromkeys(members, END - 100.0))
    found = findings([HostDown(server=m, start_s=END - 100) for m in members], last_seen=seen)
    assert keys(found) == {("tor_down", "tor", tor)}


def test_host_noise_is_not_blamed_on_the_network() -> None:
    server = "dc1-ps2-t1-h3"
    found = findings([HostNoise(server=server, start_s=T0)])
    assert keys(found) == {("host_noise", "server", server)}
    assert found[0].severity == "info"


@PROPERTY
@given(server=st.sampled_from(SERVERS), seed=st.integers(1, 99))
def test_a_host_that_drops_is_a_host_not_its_tor(server: str, seed: int) -> None:
    found = findings([HostDrops(server=server, rate=0.1)], seed=seed)
    assert keys(found, "host_drops", "silent_drop") == {("host_drops", "server", server)}


@PROPERTY
@given(
    dc=st.sampled_from(["dc1", "dc2"]),
    spine=st.sampled_from([1, 2]),
    rate=st.sampled_from([0.02, 0.05]),
    seed=st.integers(1, 99),
)
def test_a_silent_drop_at_a_spine_names_the_spine_tier(
    dc: str, spine: int, rate: float, seed: int
) -> None:
    found = findings([RandomDrop(device=f"spine:{dc}:{spine}", rate=rate)], seed=seed)
    assert keys(found, "silent_drop", "black_hole", "host_drops") == {
        ("silent_drop", "tier", f"spine@{dc}")
    }
    (finding,) = [f for f in found if f.kind == "silent_drop"]
    assert finding.evidence["tier"] == "spine"
    assert finding.evidence["five_tuples"]


@PROPERTY
@given(podset=st.sampled_from(PODSETS), seed=st.integers(1, 99))
def test_a_silent_drop_at_a_leaf_layer_names_the_podset_leaf(podset: str, seed: int) -> None:
    drops = [RandomDrop(device=f"leaf:{podset}:{k}", rate=0.05) for k in (1, 2)]
    found = findings(drops, seed=seed)
    assert keys(found, "silent_drop", "black_hole", "host_drops") == {
        ("silent_drop", "tier", f"leaf@{podset}")
    }


@PROPERTY
@given(tor=st.sampled_from(TORS), seed=st.integers(1, 99))
def test_a_silent_drop_at_a_tor_names_the_tor(tor: str, seed: int) -> None:
    found = findings([RandomDrop(device=f"tor:{tor}", rate=0.03)], seed=seed)
    assert keys(found, "silent_drop", "black_hole", "host_drops") == {("silent_drop", "tor", tor)}


def test_a_silent_drop_between_dcs_names_the_core() -> None:
    found = findings([RandomDrop(device=f"core:{k}", rate=0.05) for k in (1, 2)])
    assert keys(found, "silent_drop") == {("silent_drop", "tier", "core@fabric")}


@PROPERTY
@given(server=st.sampled_from(SERVERS), seed=st.integers(1, 99))
def test_a_slow_host_breaches_its_own_sla_only(server: str, seed: int) -> None:
    # Over 5 minutes every server has the 100 probes a P99 needs: exactly the slow server.
    data = rows([SlowHost(server=server, extra_us=9000.0)], seed=seed)
    facts = window_facts(TOPOLOGY, data, END - 300, END)
    result = evaluate(TOPOLOGY, window=facts, now_s=END, config=CONFIG)
    assert keys(list(result.findings)) == {("high_latency", "server", server)}
    (finding,) = result.findings
    assert finding.evidence["p99_us"] > 5000 > 0
