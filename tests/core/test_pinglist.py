"""Pinglist generation: Pingmesh's three complete graphs, the cap, determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pingmesh.core.pinglist import (
    Peer,
    Pinglist,
    find_server,
    generate_pinglist,
    pinglist_version,
)
from pingmesh.core.probe import ProbeKind, Scope
from pingmesh.core.topology import (
    Server,
    Topology,
    dump_topology_yaml,
    parse_topology,
    topology_from_servers,
)
from pingmesh.errors import UnknownServerError

UNCAPPED = 10**9

# --- random topologies ----------------------------------------------------------------------


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    """DC → podset → ToR → servers, with ToRs of different sizes (1 included) and names whose
    sort order differs from the order of creation."""
    servers: list[Server] = []
    n_dcs = draw(st.integers(1, 3))
    for d in range(n_dcs):
        for p in range(draw(st.integers(1, 3))):
            for t in range(draw(st.integers(1, 3))):
                for _ in range(draw(st.integers(1, 5))):
                    n = len(servers) + 1
                    tag = draw(st.integers(0, 999))
                    servers.append(
                        Server(
                            name=f"s{tag:03d}-{n}",
                            address=f"198.18.{n // 250}.{n % 250 + 1}",
                            dc=f"dc{d}",
                            podset=f"ps{d}.{p}",
                            tor=f"t{d}.{p}.{t}",
                        )
                    )
    return topology_from_servers(servers)


def everyone(
    topology: Topology, *, max_peers: int, inter_dc_per_podset: int = 2
) -> dict[str, Pinglist]:
    """The pinglist of every server, by name."""
    return {
        s.name: generate_pinglist(
            topology, s.name, max_peers=max_peers, inter_dc_per_podset=inter_dc_per_podset
        )
        for s in topology.servers
    }


def weight(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def chosen_by_podset(topology: Topology, per_podset: int) -> dict[str, set[str]]:
    """An independent statement of the rendezvous choice: the heaviest names of each podset."""
    result: dict[str, set[str]] = {}
    for podset in topology.podsets():
        members = [s.name for s in topology.servers if s.podset == podset]
        result[podset] = set(sorted(members, key=weight, reverse=True)[:per_podset])
    return result


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(topologies(), st.randoms(use_true_random=False))
def test_deterministic_across_calls_reparsing_and_reordering(
    topology: Topology, rnd: random.Random
) -> None:
    shuffled = list(topology.servers)
    rnd.shuffle(shuffled)
    reordered = topology_from_servers(shuffled)
    reparsed = parse_topology(dump_topology_yaml(topology), filename="again.yaml")
    for server in topology.servers:
        first = generate_pinglist(topology, server.name)
        assert generate_pinglist(topology, server.name) == first
        assert generate_pinglist(reordered, server.name) == first
        assert generate_pinglist(reparsed, server.name) == first
        assert pinglist_version(generate_pinglist(reparsed, server.name)) == pinglist_version(first)


@settings(max_examples=150, deadline=None)
@given(topologies(), st.integers(0, 3))
def test_no_self_probes_no_duplicates_and_all_three_graphs_covered(
    topology: Topology, per_podset: int
) -> None:
    lists = everyone(topology, max_peers=UNCAPPED, inter_dc_per_podset=per_podset)
    by_name = {s.name: s for s in topology.servers}
    for name, pinglist in lists.items():
        assert pinglist.server == name
        assert pinglist.truncated == 0
        names = [p.name for p in pinglist.peers]
        assert name not in names
        assert len(names) == len(set(names))
        me = by_name[name]
        for peer in pinglist.peers:
            other = by_name[peer.name]
            assert peer.address == other.address
            expected_scope = (
                Scope.INTRA_TOR
                if other.tor == me.tor
                else Scope.INTER_TOR
                if other.dc == me.dc
                else Scope.INTER_DC
            )
            assert peer.scope is expected_scope
        # The order is intra-ToR, then inter-ToR, then inter-DC.
        ranks = [list(Scope).index(p.scope) for p in pinglist.peers]
        assert ranks == sorted(ranks)

    probes = {(src, p.name) for src, pl in lists.items() for p in pl.peers}
    servers = topology.servers
    # Every ordered pair under one ToR.
    for a in servers:
        for b in servers:
            if a.tor == b.tor and a.name != b.name:
                assert (a.name, b.name) in probes
    # Every ordered ToR pair of a DC: in fact every server of X probes exactly one server of Y.
    for x in topology.tors():
        for y in topology.tors():
            if x == y or by_name[topology.tor_servers(x)[0].name].dc != (
                topology.tor_servers(y)[0].dc
            ):
                continue
            for src in topology.tor_servers(x):
                into_y = [p for p in lists[src.name].peers if by_name[p.name].tor == y]
                assert len(into_y) == 1
    # Every ordered DC pair, when servers are chosen at all.
    dc_pairs = {(by_name[a].dc, by_name[b].dc) for a, b in probes}
    for a_dc in topology.dcs():
        for b_dc in topology.dcs():
            if a_dc != b_dc:
                assert ((a_dc, b_dc) in dc_pairs) == (per_podset > 0)


@settings(max_examples=100, deadline=None)
@given(topologies())
def test_inter_tor_rule_server_i_probes_server_i_mod_size(topology: Topology) -> None:
    for x in topology.tors():
        members = topology.tor_servers(x)
        dc = members[0].dc
        for i, src in enumerate(members):
            pinglist = generate_pinglist(topology, src.name, max_peers=UNCAPPED)
            inter_tor = [p.name for p in pinglist.peers if p.scope is Scope.INTER_TOR]
            expected = [
                topology.tor_servers(y)[i % len(topology.tor_servers(y))].name
                for y in topology.tors(dc=dc)
                if y != x
            ]
            assert inter_tor == expected


@settings(max_examples=100, deadline=None)
@given(topologies(), st.integers(1, 3))
def test_inter_dc_rule_kth_chosen_probes_k_mod_n_chosen(
    topology: Topology, per_podset: int
) -> None:
    chosen = chosen_by_podset(topology, per_podset)
    chosen_of_dc = {
        dc: sorted(n for ps in topology.podsets(dc=dc) for n in chosen[ps]) for dc in topology.dcs()
    }
    for dc, names in chosen_of_dc.items():
        for k, name in enumerate(names):
            pinglist = generate_pinglist(
                topology, name, max_peers=UNCAPPED, inter_dc_per_podset=per_podset
            )
            inter_dc = [p.name for p in pinglist.peers if p.scope is Scope.INTER_DC]
            assert inter_dc == [
                chosen_of_dc[other][k % len(chosen_of_dc[other])]
                for other in topology.dcs()
                if other != dc
            ]
    everybody_chosen = {n for names in chosen.values() for n in names}
    for server in topology.servers:
        if server.name not in everybody_chosen:
            pinglist = generate_pinglist(
                topology, server.name, max_peers=UNCAPPED, inter_dc_per_podset=per_podset
            )
            assert all(p.scope is not Scope.INTER_DC for p in pinglist.peers)


@settings(max_examples=150, deadline=None)
@given(topologies(), st.integers(0, 12), st.integers(0, 3))
def test_cap_is_honoured_and_truncated_is_exact(
    topology: Topology, max_peers: int, per_podset: int
) -> None:
    for server in topology.servers:
        full = generate_pinglist(
            topology, server.name, max_peers=UNCAPPED, inter_dc_per_podset=per_podset
        )
        capped = generate_pinglist(
            topology, server.name, max_peers=max_peers, inter_dc_per_podset=per_podset
        )
        assert len(capped.peers) == min(max_peers, len(full.peers))
        assert capped.truncated == len(full.peers) - len(capped.peers)
        assert set(capped.peers) <= set(full.peers)
        # Scopes are kept in priority order: a scope is cut only once the ones before it fit.
        kept = Counter(p.scope for p in capped.peers)
        wanted = Counter(p.scope for p in full.peers)
        room = max_peers
        for scope in Scope:
            assert kept[scope] == min(wanted[scope], max(room, 0))
            room -= kept[scope]


@settings(max_examples=100, deadline=None)
@given(topologies(), st.integers(1, 4))
def test_cut_windows_still_spread_coverage(topology: Topology, max_peers: int) -> None:
    """Under the cap, each server probes the next ones of its ToR (so everyone is still
    probed), and the servers of a ToR together reach as many other ToRs as their room allows."""
    lists = everyone(topology, max_peers=max_peers)
    by_name = {s.name: s for s in topology.servers}
    probed = Counter(
        p.name for pl in lists.values() for p in pl.peers if p.scope is Scope.INTRA_TOR
    )
    for tor in topology.tors():
        members = topology.tor_servers(tor)
        for member in members:
            assert probed[member.name] == min(len(members) - 1, max_peers)
        room = max_peers - (len(members) - 1)
        if room <= 0:
            continue
        other_tors = len(topology.tors(dc=members[0].dc)) - 1
        reached = {
            by_name[p.name].tor
            for m in members
            for p in lists[m.name].peers
            if p.scope is Scope.INTER_TOR
        }
        assert len(reached) == min(other_tors, len(members) * room)


@settings(max_examples=50, deadline=None)
@given(topologies())
def test_lookup_by_address_gives_the_same_pinglist(topology: Topology) -> None:
    for server in topology.servers:
        assert generate_pinglist(topology, server.address) == generate_pinglist(
            topology, server.name
        )


# --- examples with exact peers --------------------------------------------------------------

EXAMPLE = """\
servers:
  - {name: a3, address: 198.18.1.3, dc: dc1, podset: ps1, tor: t1}
  - {name: a1, address: 198.18.1.1, dc: dc1, podset: ps1, tor: t1}
  - {name: a2, address: 198.18.1.2, dc: dc1, podset: ps1, tor: t1}
  - {name: b1, address: 198.18.2.1, dc: dc1, podset: ps1, tor: t2}
  - {name: c1, address: 198.18.3.1, dc: dc1, podset: ps2, tor: t3}
  - {name: c2, address: 198.18.3.2, dc: dc1, podset: ps2, tor: t3}
  - {name: d1, address: 198.19.4.1, dc: dc2, podset: ps3, tor: t4}
  - {name: d2, address: 198.19.4.2, dc: dc2, podset: ps3, tor: t4}
"""


@pytest.fixture
def example() -> Topology:
    return parse_topology(EXAMPLE, filename="example.yaml")


def peers(pinglist: Pinglist) -> list[tuple[str, str]]:
    return [(p.name, p.scope.value) for p in pinglist.peers]


def test_example_exact_peers_with_everyone_chosen(example: Topology) -> None:
    a2 = generate_pinglist(example, "a2", inter_dc_per_podset=10)
    assert peers(a2) == [
        ("a1", "intra_tor"),
        ("a3", "intra_tor"),
        ("b1", "inter_tor"),  # t2 has one server: 1 mod 1 = 0
        ("c2", "inter_tor"),  # t3: 1 mod 2 = 1
        ("d2", "inter_dc"),  # dc1 chosen [a1 a2 a3 b1 c1 c2], a2 is k=1; dc2 [d1 d2]
    ]
    assert peers(generate_pinglist(example, "b1", inter_dc_per_podset=10)) == [
        ("a1", "inter_tor"),
        ("c1", "inter_tor"),
        ("d2", "inter_dc"),  # b1 is k=3; 3 mod 2 = 1
    ]
    assert peers(generate_pinglist(example, "d1", inter_dc_per_podset=10)) == [
        ("d2", "intra_tor"),
        ("a1", "inter_dc"),
    ]


def test_example_fields(example: Topology) -> None:
    pinglist = generate_pinglist(
        example, "198.18.2.1", interval_s=5, timeout_s=2.0, port=9999, inter_dc_per_podset=0
    )
    assert pinglist.server == "b1"
    assert pinglist.address == "198.18.2.1"
    assert pinglist.timeout_s == 2.0
    assert pinglist.truncated == 0
    assert pinglist.peers[0] == Peer(
        name="a1",
        address="198.18.1.1",
        port=9999,
        kind=ProbeKind.TCP,
        scope=Scope.INTER_TOR,
        interval_s=5.0,
        size_bytes=0,
    )


def test_example_cap(example: Topology) -> None:
    # a2: intra [a1 a3] fits; room 1 for the two other ToRs; a2 is server 1 of t1, so its
    # window starts 1 * room past t1: t3.
    a2 = generate_pinglist(example, "a2", max_peers=3, inter_dc_per_podset=10)
    assert peers(a2) == [("a1", "intra_tor"), ("a3", "intra_tor"), ("c2", "inter_tor")]
    assert a2.truncated == 2
    a1 = generate_pinglist(example, "a1", max_peers=3, inter_dc_per_podset=10)
    assert peers(a1) == [("a2", "intra_tor"), ("a3", "intra_tor"), ("b1", "inter_tor")]
    # Intra-ToR cut: the window starts just after the server itself.
    assert peers(generate_pinglist(example, "a2", max_peers=1)) == [("a3", "intra_tor")]
    assert peers(generate_pinglist(example, "a3", max_peers=1)) == [("a1", "intra_tor")]
    assert generate_pinglist(example, "a3", max_peers=0).peers == ()
    assert generate_pinglist(example, "a3", max_peers=0, inter_dc_per_podset=10).truncated == 5


def test_rendezvous_choice_is_the_heaviest_and_stable(example: Topology) -> None:
    chosen = chosen_by_podset(example, 1)
    (pick,) = chosen["ps1"]
    inter_dc = [
        s.name
        for s in example.servers
        if any(
            p.scope is Scope.INTER_DC
            for p in generate_pinglist(example, s.name, inter_dc_per_podset=1).peers
        )
    ]
    assert pick in inter_dc
    assert set(inter_dc) == set().union(*chosen.values())
    # Adding servers lighter than the pick leaves the choice alone.
    lighter = [f"x{n}" for n in range(200) if weight(f"x{n}") < weight(pick) and f"x{n}" != pick][
        :5
    ]
    grown = topology_from_servers(
        [
            *example.servers,
            *(
                Server(name=n, address=f"198.18.9.{i + 1}", dc="dc1", podset="ps1", tor="t2")
                for i, n in enumerate(lighter)
            ),
        ]
    )
    assert chosen_by_podset(grown, 1)["ps1"] == {pick}
    assert any(
        p.scope is Scope.INTER_DC
        for p in generate_pinglist(grown, pick, inter_dc_per_podset=1).peers
    )


def test_single_server_has_an_empty_pinglist() -> None:
    lonely = topology_from_servers(
        [Server(name="solo", address="127.0.0.1", dc="d", podset="p", tor="t")]
    )
    pinglist = generate_pinglist(lonely, "solo")
    assert pinglist.peers == ()
    assert pinglist.truncated == 0


def test_unknown_server(example: Topology) -> None:
    with pytest.raises(UnknownServerError, match="unknown server 'zz'"):
        generate_pinglist(example, "zz")
    with pytest.raises(UnknownServerError):
        generate_pinglist(example, "10.0.0.1")
    with pytest.raises(UnknownServerError):
        find_server(example, "")


def test_names_win_over_addresses_and_addresses_are_canonicalised() -> None:
    topology = topology_from_servers(
        [
            Server(name="198.18.0.2", address="198.18.0.1", dc="d", podset="p", tor="t"),
            Server(name="b", address="198.18.0.2", dc="d", podset="p", tor="t"),
            Server(name="v6", address="2001:DB8::1", dc="d", podset="p", tor="u"),
        ]
    )
    assert find_server(topology, "198.18.0.2").name == "198.18.0.2"
    assert find_server(topology, "198.18.0.1").name == "198.18.0.2"
    assert find_server(topology, "2001:db8:0::1").name == "v6"


def test_version_follows_content(example: Topology) -> None:
    base = generate_pinglist(example, "a1")
    assert len(pinglist_version(base)) == 16
    int(pinglist_version(base), 16)
    assert pinglist_version(generate_pinglist(example, "a1", interval_s=10)) == pinglist_version(
        base
    )
    for changed in (
        generate_pinglist(example, "a1", interval_s=11.0),
        generate_pinglist(example, "a1", port=9000),
        generate_pinglist(example, "a1", timeout_s=1.0),
        generate_pinglist(example, "a1", max_peers=1),
        generate_pinglist(example, "a2"),
        dataclasses.replace(base, peers=base.peers[::-1]),
    ):
        assert pinglist_version(changed) != pinglist_version(base)


def test_models_refuse_invalid_values() -> None:
    peer = Peer(
        name="a",
        address="198.18.0.1",
        port=9781,
        kind=ProbeKind.TCP,
        scope=Scope.INTRA_TOR,
        interval_s=10.0,
        size_bytes=0,
    )
    bad: list[dict[str, Any]] = [
        {"port": 0},
        {"port": 65536},
        {"interval_s": 0.5},
        {"size_bytes": 65537},
        {"size_bytes": -1},
        {"name": ""},
    ]
    for change in bad:
        with pytest.raises(ValueError, match=next(iter(change))):
            dataclasses.replace(peer, **change)
    with pytest.raises(ValueError, match="twice"):
        Pinglist(server="b", address="198.18.0.2", timeout_s=1.0, peers=(peer, peer))
    with pytest.raises(ValueError, match="itself"):
        Pinglist(server="a", address="198.18.0.1", timeout_s=1.0, peers=(peer,))
    with pytest.raises(ValueError, match="timeout_s"):
        Pinglist(server="b", address="198.18.0.2", timeout_s=0, peers=())
    with pytest.raises(ValueError, match="truncated"):
        Pinglist(server="b", address="198.18.0.2", timeout_s=1, peers=(), truncated=-1)


def test_bad_parameters(example: Topology) -> None:
    with pytest.raises(ValueError, match="max_peers"):
        generate_pinglist(example, "a1", max_peers=-1)
    with pytest.raises(ValueError, match="inter_dc_per_podset"):
        generate_pinglist(example, "a1", inter_dc_per_podset=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        generate_pinglist(example, "a1", timeout_s=0)
    lonely = topology_from_servers(
        [Server(name="solo", address="127.0.0.1", dc="d", podset="p", tor="t")]
    )
    for topology in (example, lonely):  # even without peers to carry the values
        name = topology.servers[0].name
        with pytest.raises(ValueError, match="interval_s"):
            generate_pinglist(topology, name, interval_s=0.1)
        with pytest.raises(ValueError, match="port"):
            generate_pinglist(topology, name, port=0)


def test_large_fleet_generates_without_rescanning() -> None:
    """Not a timing test: checks that a 20k-server fleet gives full-size pinglists whose
    inter-ToR part follows the rule (the index is what keeps it fast; see bench/)."""
    servers = [
        Server(
            name=f"h{d}-{t:03d}-{h:02d}",
            address=f"10.{d}.{t}.{h + 1}",
            dc=f"dc{d}",
            podset=f"ps{d}-{t // 20}",
            tor=f"t{d}-{t:03d}",
        )
        for d in range(2)
        for t in range(250)
        for h in range(40)
    ]
    topology = topology_from_servers(servers)
    pinglist = generate_pinglist(topology, "h1-007-05")
    is_chosen = "h1-007-05" in chosen_by_podset(topology, 2)["ps1-0"]
    assert len(pinglist.peers) == 39 + 249 + (1 if is_chosen else 0)
    assert pinglist.truncated == 0
    inter_tor = [p for p in pinglist.peers if p.scope is Scope.INTER_TOR]
    assert [p.name for p in inter_tor[:2]] == ["h1-000-05", "h1-001-05"]
