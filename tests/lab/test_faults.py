"""Faults, pure: validation against the plan, default pairs, and the nftables rules."""

from __future__ import annotations

import subprocess

import pytest

from pingmesh.core.pinglist import generate_pinglist
from pingmesh.errors import ConfigError
from pingmesh.lab.faults import (
    ActiveFault,
    BlackHole,
    CpuStarve,
    Fault,
    HostDown,
    LinkDown,
    PortBlackHole,
    RandomDrop,
    default_black_hole_pairs,
    describe,
    fault_from_dict,
    fault_to_dict,
    nft_rules,
    nft_ruleset,
    validate_fault,
)
from pingmesh.lab.plan import LabShape, build_plan

from .conftest import can_build_labs

PLAN = build_plan(LabShape(dcs=1, podsets=2, tors=2, servers=3, leaves=2, spines=2))
TOR = "dc1-ps1-t1"


def _active(fault_id: str, fault: object) -> ActiveFault:
    return ActiveFault(fault_id=fault_id, fault=fault, started_at_s=0.0)  # type: ignore[arg-type]


def test_default_black_hole_pairs_cross_the_tor_are_probed_and_spare_other_peers() -> None:
    pairs = default_black_hole_pairs(PLAN, TOR)
    under = {s.name for s in PLAN.tor_servers(TOR)}
    topology = PLAN.topology()
    probed = {
        frozenset((s.name, p.name))
        for s in topology.servers
        for p in generate_pinglist(topology, s.name).peers
    }
    assert pairs
    for a, b in pairs:
        assert a in under or b in under
        assert frozenset((a, b)) in probed
    # every server under the ToR keeps at least one healthy peer: not a dead host
    for server in under:
        peers = {p.name for p in generate_pinglist(topology, server).peers}
        cut = {b if a == server else a for a, b in pairs if server in (a, b)}
        assert peers - cut


def test_black_hole_rule_drops_both_directions_of_each_pair() -> None:
    fault = validate_fault(PLAN, BlackHole(tor=TOR, pairs=(("dc1-ps1-t1-h1", "dc1-ps2-t1-h2"),)))
    rules = nft_rules(PLAN, TOR, [_active("f1", fault)])
    a, b = PLAN.node("dc1-ps1-t1-h1").address, PLAN.node("dc1-ps2-t1-h2").address
    assert rules == [
        f'ip saddr . ip daddr {{ {a} . {b}, {b} . {a} }} counter drop comment "f1 black_hole"'
    ]
    assert nft_rules(PLAN, "dc1-ps1-t2", [_active("f1", fault)]) == []


def test_port_black_hole_skips_bit_zero_of_the_port() -> None:
    rules = nft_rules(PLAN, TOR, [_active("f2", PortBlackHole(tor=TOR, one_in=4))])
    assert len(rules) == 2
    assert all("& 6 == 0" in r and "32768-65535" in r for r in rules)
    assert {r.split()[7] for r in rules} == {"sport", "dport"}


def test_random_drop_at_a_router_and_on_a_link() -> None:
    at_spine = nft_rules(PLAN, "dc1-s1", [_active("f3", RandomDrop(node="dc1-s1", percent=2.5))])
    assert at_spine == ['numgen random mod 10000 < 250 counter drop comment "f3 drop"']
    # given server-first, the rule goes to the router end of the link, matched both ways
    link = validate_fault(PLAN, RandomDrop(node="dc1-ps1-t1-h2", peer=TOR, percent=10))
    assert isinstance(link, RandomDrop)
    assert (link.node, link.peer) == (TOR, "dc1-ps1-t1-h2")
    rules = nft_rules(PLAN, TOR, [_active("f4", link)])
    assert [r.split()[0:2] for r in rules] == [["iifname", '"h2"'], ["oifname", '"h2"']]


def test_rules_of_several_faults_are_all_kept() -> None:
    faults = [
        _active("f1", PortBlackHole(tor=TOR)),
        _active("f2", RandomDrop(node=TOR, percent=1)),
        _active("f3", HostDown(host="dc1-ps1-t1-h1")),
    ]
    rules = nft_rules(PLAN, TOR, faults)
    assert [r.rsplit('"', 2)[1].split()[0] for r in rules] == ["f1", "f1", "f2"]


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (BlackHole(tor="dc1-s1", pairs=(("dc1-ps1-t1-h1", "dc1-ps1-t1-h2"),)), "is a spine"),
        (
            BlackHole(tor=TOR, pairs=(("dc1-ps2-t1-h1", "dc1-ps2-t2-h1"),)),
            "does not cross ToR",
        ),
        (BlackHole(tor=TOR, pairs=(("dc1-ps1-t1-h1", "nope"),)), "no node 'nope'"),
        (PortBlackHole(tor="dc1-ps1-t1-h1"), "is a server"),
        (RandomDrop(node="dc1-ps1-t1-h1", percent=5), "is a server"),
        (RandomDrop(node=TOR, peer="dc1-s1", percent=5), "no link"),
        (LinkDown(a=TOR, b="dc1-ps2-l1"), "no link"),
        (HostDown(host=TOR), "is a tor"),
        (CpuStarve(host="dc1-s2"), "is a spine"),
    ],
)
def test_faults_that_do_not_fit_the_lab_are_refused(fault: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_fault(PLAN, fault)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: BlackHole(tor=TOR, pairs=()),
        lambda: BlackHole(tor=TOR, pairs=(("a", "a"),)),
        lambda: PortBlackHole(tor=TOR, one_in=3),
        lambda: PortBlackHole(tor=TOR, one_in=1),
        lambda: RandomDrop(node=TOR, percent=0),
        lambda: RandomDrop(node=TOR, percent=101),
        lambda: RandomDrop(node=TOR, percent=0.001),
        lambda: CpuStarve(host="h", stop_ms=2000, period_ms=2000),
    ],
)
def test_bad_fault_parameters_are_refused(build: object) -> None:
    with pytest.raises(ConfigError):
        build()  # type: ignore[operator]


def test_faults_round_trip_through_plain_data() -> None:
    faults: list[Fault] = [
        BlackHole(tor=TOR, pairs=(("a1", "b1"), ("a2", "b2"))),
        PortBlackHole(tor=TOR, one_in=8),
        RandomDrop(node="dc1-s1", percent=1.5),
        RandomDrop(node=TOR, peer="dc1-ps1-l1", percent=3),
        LinkDown(a=TOR, b="dc1-ps1-l1", reroute=True),
        HostDown(host="dc1-ps1-t1-h1"),
        CpuStarve(host="dc1-ps1-t1-h1", stop_ms=100, period_ms=300),
    ]
    for fault in faults:
        assert fault_from_dict(fault_to_dict(fault)) == fault
        assert describe(fault)
    with pytest.raises(ConfigError, match="unknown kind"):
        fault_from_dict({"kind": "meteor"})
    with pytest.raises(ConfigError, match="black_hole"):
        fault_from_dict({"kind": "black_hole", "tor": TOR, "pairs": [["a", "b"]], "x": 1})


@pytest.mark.netns
def test_rulesets_are_valid_nftables() -> None:
    reason = can_build_labs()
    if reason is not None:
        pytest.skip(reason)
    faults = [
        _active(
            "f1",
            validate_fault(PLAN, BlackHole(tor=TOR, pairs=default_black_hole_pairs(PLAN, TOR))),
        ),
        _active("f2", PortBlackHole(tor=TOR, one_in=16)),
        _active("f3", RandomDrop(node=TOR, percent=0.5)),
        _active("f4", RandomDrop(node=TOR, peer="dc1-ps1-l2", percent=50)),
    ]
    script = nft_ruleset(nft_rules(PLAN, TOR, faults))
    namespace = "pmtscr-nftcheck"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, "nft", "-c", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr + script
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=True)
