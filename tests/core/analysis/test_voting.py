"""Voting over the paths of failing 5-tuples names the device they share."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pingmesh.core.analysis.synthetic import (
    BlackHole,
    Fabric,
    FleetShape,
    simulate_trace,
    synthetic_topology,
)
from pingmesh.core.analysis.voting import TracedPath, vote

SHAPE = FleetShape(dcs=1, podsets_per_dc=3, tors_per_podset=2, servers_per_tor=4, spines_per_dc=4)
TOPOLOGY = synthetic_topology(SHAPE)
FABRIC = Fabric(TOPOLOGY, SHAPE)
SERVERS = TOPOLOGY.servers


def failing_paths(spine: str, n: int, seed: int) -> list[TracedPath]:
    """Traces of ``n`` random cross-podset 5-tuples that crossed ``spine``."""
    rng = random.Random(seed)
    out: list[TracedPath] = []
    while len(out) < n:
        src, dst = rng.sample(SERVERS, 2)
        port = rng.randint(32768, 60999)
        if src.podset == dst.podset or spine not in FABRIC.path(src, dst, port, 9781):
            continue
        hops, reached = simulate_trace(FABRIC, src, dst, src_port=port, dst_port=9781)
        out.append(
            TracedPath(
                flow=f"f{len(out)}",
                hops=hops,
                reached=reached,
                src_addr=src.address,
                dst_addr=dst.address,
            )
        )
    return out


@settings(max_examples=20, deadline=None)
@given(spine=st.sampled_from([f"spine:dc1:{k}" for k in (1, 2, 3, 4)]), seed=st.integers(0, 999))
def test_the_spine_on_every_failing_path_gets_the_most_votes(spine: str, seed: int) -> None:
    result = vote(failing_paths(spine, 8, seed), min_flows=3)
    assert result.suspect is not None
    assert result.suspect.device == FABRIC.address[spine]
    assert result.suspect.flows == 8
    assert result.flows == 8


def test_one_source_alone_is_ambiguous() -> None:
    # Every failing flow of one server crossed spine 1 — and its own ToR: nobody is blamed.
    src = SERVERS[0]
    paths = []
    port = 40000
    for dst in (s for s in SERVERS if s.podset != src.podset):
        while "spine:dc1:1" not in FABRIC.path(src, dst, port, 9781):
            port += 1
        hops, reached = simulate_trace(FABRIC, src, dst, src_port=port, dst_port=9781)
        paths.append(
            TracedPath(
                flow=f"f{port}",
                hops=hops,
                reached=reached,
                src_addr=src.address,
                dst_addr=dst.address,
            )
        )
    result = vote(paths, min_flows=2)
    assert result.suspect is None
    on_all = {r.device for r in result.ranking if r.flows == result.flows}
    assert on_all == {FABRIC.address["spine:dc1:1"], FABRIC.address[f"tor:{src.tor}"]}
    # Once the heatmap has put the fault in the spine tier, the source's ToR is ruled out.
    beyond = vote(paths, min_flows=2, skip_edges=2)
    assert beyond.suspect is not None
    assert beyond.suspect.device == FABRIC.address["spine:dc1:1"]


def test_a_tier_finding_never_names_the_tor_at_the_ends() -> None:
    # The lab's spine drop: the few traced flows all left one ToR, over either spine (the
    # packet lost on the way there or back). The ToR is on all of them, no spine is; with
    # only a few, one leaf may be on all of them as well.
    src = SERVERS[0]
    paths = []
    for k, dst in enumerate(s for s in SERVERS if s.podset != src.podset):
        hops, reached = simulate_trace(FABRIC, src, dst, src_port=40000 + k, dst_port=9781)
        paths.append(
            TracedPath(
                flow=f"f{k}", hops=hops, reached=reached, src_addr=src.address, dst_addr=dst.address
            )
        )
    tor = FABRIC.address[f"tor:{src.tor}"]
    blind = vote(paths, min_flows=3)
    assert blind.suspect is not None
    assert blind.suspect.device == tor
    below = {tor} | {a for name, a in FABRIC.address.items() if name.startswith("leaf:")}
    tier = vote(paths, min_flows=3, skip_edges=2)
    assert tier.suspect is None or tier.suspect.device not in below
    assert tier.ranking  # the ToR and the leaves keep their votes as evidence
    leaf_tier = vote(paths, min_flows=3, skip_edges=1)
    assert leaf_tier.suspect is None or leaf_tier.suspect.device != tor


def test_healthy_flows_clear_a_device() -> None:
    spine = FABRIC.address["spine:dc1:1"]
    tor = FABRIC.address["tor:dc1-ps1-t1"]
    bad = [TracedPath(flow=f"b{i}", hops=(tor, spine)) for i in range(4)]
    good = [TracedPath(flow=f"g{i}", hops=(tor, spine), failing=False) for i in range(20)]
    assert vote(bad, min_flows=3).suspect is None  # a tie between the two devices
    mixed = vote(bad + good, min_flows=3)
    assert mixed.suspect is None  # both are crossed by healthy flows too
    assert mixed.ranking[0].hit_ratio < 0.6


def test_a_black_hole_stops_the_trace_at_the_device() -> None:
    src = next(s for s in SERVERS if s.podset == "dc1-ps1")
    dst = next(s for s in SERVERS if s.podset == "dc1-ps2")
    hole = BlackHole(device="spine:dc1:2")
    for port in range(40000, 40400):
        if "spine:dc1:2" in FABRIC.path(src, dst, port, 9781):
            hops, reached = simulate_trace(
                FABRIC, src, dst, src_port=port, dst_port=9781, faults=[hole]
            )
            assert not reached
            assert hops[-1] == FABRIC.address["spine:dc1:2"]
            break
    else:
        raise AssertionError("no port hashed onto spine 2")


def test_not_enough_flows() -> None:
    spine = FABRIC.address["spine:dc1:3"]
    assert vote([TracedPath(flow="x", hops=(spine,))], min_flows=3).suspect is None
    assert vote([], min_flows=1).ranking == ()


def test_a_plurality_of_a_few_flows_names_nobody() -> None:
    # Four traced failing flows, three of which happened to take spine 2 (the lab's spine
    # drop, whose traces did not all follow their probes): 3 to 1 is no evidence.
    def path(k: int, spine: str) -> TracedPath:
        hops = ("t1", "l1", spine, "l3", "t3", "h")
        return TracedPath(flow=f"f{k}", hops=hops, src_addr="s", dst_addr="h")

    paths = [path(1, "s2"), path(2, "s2"), path(3, "s2"), path(4, "s1")]
    result = vote(paths, min_flows=3, skip_edges=2)
    spines = [r.device for r in result.ranking if r.device in ("s1", "s2")]
    assert spines == ["s2", "s1"]
    assert result.suspect is None
    # With many flows the same plurality is 007's evidence.
    many = [path(k, "s2") for k in range(9)] + [path(9, "s1"), path(10, "s1")]
    assert vote(many, min_flows=3, skip_edges=2).suspect is not None
