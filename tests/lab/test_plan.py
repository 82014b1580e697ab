"""The lab's plan, pure: shape limits, addresses, links, ECMP routes, topology."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pingmesh.errors import ConfigError
from pingmesh.lab.plan import (
    LAB_NET,
    LabPlan,
    LabShape,
    NextHop,
    Route,
    build_plan,
    routes_for,
)

SMALL = LabShape(dcs=1, podsets=2, tors=2, servers=3, leaves=2, spines=2)
TWO_DCS = LabShape(dcs=2, podsets=2, tors=2, servers=2, leaves=2, spines=2, cores=2)


def _tor_subnet(plan: LabPlan, tor: str) -> str:
    return str(ipaddress.IPv4Network(f"{plan.node(tor).address}/24", strict=False))


def test_small_lab_has_the_expected_parts() -> None:
    plan = build_plan(SMALL, prefix="pmx")
    assert len(plan.servers) == 12
    assert len(plan.nodes_of("tor")) == 4
    assert len(plan.nodes_of("leaf")) == 4
    assert len(plan.nodes_of("spine")) == 2
    assert plan.nodes_of("core") == ()
    # ToR-leaf (4×2) + leaf-spine (4×2) + server-ToR (12)
    assert len(plan.links) == 8 + 8 + 12
    assert len(plan.mgmt_links) == 12
    assert all(n.namespace == f"pmx-{n.name}" for n in plan.nodes)
    assert plan.host_port == "pmx-m"


@pytest.mark.parametrize("shape", [SMALL, TWO_DCS])
def test_addresses_are_unique_and_inside_the_lab_block(shape: LabShape) -> None:
    plan = build_plan(shape)
    addresses = [n.address for n in plan.nodes] + [
        n.mgmt_address for n in plan.servers if n.mgmt_address
    ]
    assert len(addresses) == len(set(addresses))
    assert all(ipaddress.ip_address(a) in LAB_NET for a in addresses)
    assert plan.host_mgmt_address not in addresses
    for server in plan.servers:
        assert server.tor is not None
        assert ipaddress.ip_address(server.address) in ipaddress.ip_network(
            _tor_subnet(plan, server.tor)
        )


@pytest.mark.parametrize("shape", [SMALL, TWO_DCS])
def test_interface_names_fit_the_kernel_limit_and_are_unique_per_namespace(
    shape: LabShape,
) -> None:
    plan = build_plan(shape, prefix="abcdefghij")
    assert len(plan.host_port) <= 15
    for node in plan.nodes:
        ports = [link.port_of(node.name) for link in plan.links_of(node.name)]
        ports += [link.a_port for link in plan.mgmt_links if link.a == node.name]
        if node.role == "mgmt":
            ports += [link.b_port for link in plan.mgmt_links]
        assert len(ports) == len(set(ports)), node.name
        assert all(0 < len(p) <= 15 for p in ports)


def test_topology_of_the_lab_is_the_servers_with_their_places() -> None:
    plan = build_plan(SMALL)
    topology = plan.topology()
    assert {s.name for s in topology.servers} == {n.name for n in plan.servers}
    assert topology.entities("tor") == tuple(sorted(n.name for n in plan.nodes_of("tor")))
    assert topology.entities("podset") == ("dc1-ps1", "dc1-ps2")
    server = topology.server("dc1-ps2-t1-h3")
    assert server is not None
    assert (server.dc, server.podset, server.tor) == ("dc1", "dc1-ps2", "dc1-ps2-t1")


def test_every_router_reaches_every_tor_subnet() -> None:
    plan = build_plan(TWO_DCS)
    routes = routes_for(plan)
    for router in plan.routers:
        dsts = {r.dst for r in routes[router.name]}
        for tor in plan.nodes_of("tor"):
            if tor.name != router.name:
                assert _tor_subnet(plan, tor.name) in dsts, (router.name, tor.name)


def test_ecmp_next_hops_follow_the_clos() -> None:
    plan = build_plan(SMALL)
    routes = {n: {r.dst: r for r in rs} for n, rs in routes_for(plan).items()}
    far = _tor_subnet(plan, "dc1-ps2-t1")
    # A ToR spreads over both leaves of its podset …
    tor_route = routes["dc1-ps1-t1"][far]
    assert {h.via for h in tor_route.nexthops} == {
        plan.node("dc1-ps1-l1").address,
        plan.node("dc1-ps1-l2").address,
    }
    # … a leaf over both spines, and a spine over the leaves of the destination's podset.
    assert {h.dev for h in routes["dc1-ps1-l1"][far].nexthops} == {"s1", "s2"}
    assert {h.via for h in routes["dc1-s1"][far].nexthops} == {
        plan.node("dc1-ps2-l1").address,
        plan.node("dc1-ps2-l2").address,
    }
    # Inside a podset the leaf goes straight down to the ToR.
    near = _tor_subnet(plan, "dc1-ps1-t2")
    assert routes["dc1-ps1-l1"][near].nexthops == (
        NextHop(dev="t2", via=plan.node("dc1-ps1-t2").address),
    )


def test_tors_carry_no_transit_traffic() -> None:
    plan = build_plan(SMALL)
    tors = {n.address for n in plan.nodes_of("tor")}
    for node, table in routes_for(plan).items():
        if plan.node(node).role not in ("leaf", "spine"):
            continue
        for route in table:
            owner_tor = any(
                ipaddress.ip_address(t) in ipaddress.ip_network(route.dst) for t in tors
            )
            for hop in route.nexthops:
                if hop.via in tors:
                    assert owner_tor, (node, route)


def test_routes_without_a_link_avoid_it() -> None:
    plan = build_plan(SMALL)
    link = plan.link("dc1-ps1-t1", "dc1-ps1-l1")
    routes = routes_for(plan, down=[link.key])
    assert all(hop.dev != "l1" for route in routes["dc1-ps1-t1"] for hop in route.nexthops)
    subnet = _tor_subnet(plan, "dc1-ps1-t1")
    spine = {r.dst: r for r in routes["dc1-s1"]}[subnet]
    assert [h.via for h in spine.nexthops] == [plan.node("dc1-ps1-l2").address]
    # The leaf that lost its link reaches the ToR no more (only through the other leaf).
    leaf = {r.dst: r for r in routes["dc1-ps1-l1"]}[subnet]
    assert {h.dev for h in leaf.nexthops} == {"s1", "s2"}


def test_servers_route_the_fabric_through_their_tor() -> None:
    plan = build_plan(SMALL)
    server = plan.node("dc1-ps1-t2-h1")
    table = routes_for(plan)[server.name]
    fabric = [r for r in table if r.dst == "198.18.0.0/16"]
    assert fabric == [
        Route(
            dst="198.18.0.0/16",
            nexthops=(NextHop(dev="eth0", via=plan.node("dc1-ps1-t2").address),),
            src=server.address,
        )
    ]


def test_route_renders_as_ip_route_arguments() -> None:
    single = Route(dst="198.18.16.0/24", nexthops=(NextHop(dev="t1", via="198.18.16.1"),))
    assert single.ip_args(proto="static") == (
        "198.18.16.0/24 proto static via 198.18.16.1 dev t1 onlink"
    )
    attached = Route(dst="198.18.3.1/32", nexthops=(NextHop(dev="l1"),))
    assert attached.ip_args() == "198.18.3.1/32 dev l1 scope link"
    multi = Route(
        dst="198.18.17.0/24",
        nexthops=(NextHop(dev="l1", via="198.18.3.1"), NextHop(dev="l2", via="198.18.3.2")),
    )
    assert multi.ip_args() == (
        "198.18.17.0/24 nexthop via 198.18.3.1 dev l1 onlink nexthop via 198.18.3.2 dev l2 onlink"
    )


def test_routers_get_forwarding_multipath_hash_and_no_icmp_limit() -> None:
    plan = build_plan(SMALL)
    spine = dict(plan.sysctls("dc1-s1"))
    assert spine["net.ipv4.ip_forward"] == "1"
    assert spine["net.ipv4.fib_multipath_hash_policy"] == "1"
    assert spine["net.ipv4.icmp_ratelimit"] == "0"
    seeds = {dict(plan.sysctls(r.name))["net.ipv4.fib_multipath_hash_seed"] for r in plan.routers}
    assert len(seeds) == len(plan.routers)  # no two routers hash alike
    assert "net.ipv4.ip_forward" not in dict(plan.sysctls("dc1-ps1-t1-h1"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"servers": 0}, "servers"),
        ({"servers": 201}, "servers"),
        ({"dcs": 2, "cores": 0}, "cores"),
        ({"podsets": 20, "tors": 20}, "tors"),
    ],
)
def test_shapes_out_of_range_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LabShape(**kwargs)


@pytest.mark.parametrize("prefix", ["", "a", "Lab", "1lab", "pm-lab", "abcdefghijk"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        build_plan(SMALL, prefix=prefix)


@pytest.mark.parametrize("net", ["10.0.0.0/24", "198.18.0.0/20", "198.19.0.0/30", "nonsense"])
def test_bad_management_networks_are_refused(net: str) -> None:
    with pytest.raises(ConfigError, match="management network"):
        build_plan(SMALL, mgmt_net=net)


def test_unknown_nodes_and_links_are_named_in_the_error() -> None:
    plan = build_plan(SMALL)
    with pytest.raises(ConfigError, match="no node 'dc9-s1'"):
        plan.node("dc9-s1")
    with pytest.raises(ConfigError, match="no link between 'dc1-ps1-t1' and 'dc1-s1'"):
        plan.link("dc1-ps1-t1", "dc1-s1")


@settings(max_examples=25, deadline=None)
@given(
    dcs=st.integers(1, 2),
    podsets=st.integers(1, 3),
    tors=st.integers(1, 3),
    servers=st.integers(1, 3),
    leaves=st.integers(1, 3),
    spines=st.integers(1, 3),
)
def test_every_router_reaches_every_destination_over_shortest_paths(
    dcs: int, podsets: int, tors: int, servers: int, leaves: int, spines: int
) -> None:
    plan = build_plan(
        LabShape(dcs=dcs, podsets=podsets, tors=tors, servers=servers, leaves=leaves, spines=spines)
    )
    routes = routes_for(plan)
    for router in plan.routers:
        table = {r.dst: r for r in routes[router.name]}
        for tor in plan.nodes_of("tor"):
            if tor.name == router.name:
                continue
            route = table[_tor_subnet(plan, tor.name)]
            assert route.nexthops
            devs = [h.dev for h in route.nexthops]
            assert len(devs) == len(set(devs))
        if router.role == "tor":  # a ToR uses all its uplinks for anything off the ToR
            off = [r for d, r in table.items() if d.endswith("/24")]
            assert all(len(r.nexthops) == leaves for r in off)
