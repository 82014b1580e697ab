"""The lab's fabric as a pure plan: namespaces, links, addresses, routes and sysctls.

Theory of operation
-------------------
The lab is a three-tier Clos (Pingmesh §2: servers → ToR → Leaf → Spine; Al-Fares et al.,
"A Scalable, Commodity Data Center Network Architecture", SIGCOMM 2008) built from network
namespaces on one Linux machine:

- every **server** is a namespace with one fabric interface ``eth0`` to its ToR;
- every **ToR** connects to every **leaf** of its podset, every leaf to every **spine** of its
  DC, and, with more than one DC, every spine to every **core** router (the DC interconnect);
- routers are namespaces with ``ip_forward`` on, ECMP routes and the L4 multipath hash
  (``net.ipv4.fib_multipath_hash_policy=1``), so a probe's source port picks its path, as in a
  real fabric (Pingmesh §3.4.1).

**Addresses** (all inside 198.18.0.0/15, RFC 2544's benchmarking block; never anything else):
ToR number ``T`` (0-based over the whole lab) owns ``198.18.(16+T).0/24``; its own address is
``.1`` and server ``h`` (1-based) under it is ``.(10+h)``. Cores, spines and leaves are
``198.18.1.k``, ``198.18.2.k`` and ``198.18.3.k``. The management network (``198.19.0.0/20``
by default) is a bridge in a namespace of its own: the host side of the lab is ``.1``, the
pingmesh server listens on ``.2``, server ``i`` is ``.(10+i)``. Agents upload over it, so a fault
injected in the fabric never cuts an agent off from the controller: the lab measures the
fabric, not its own plumbing.

**Unnumbered links.** Every router has one address, its *router id*, put on ``lo`` and on every
one of its fabric interfaces as a /32; next hops are the neighbour's router id with ``onlink``.
Linux answers ARP for any local address (``arp_ignore=0``), so this needs no per-link subnet,
and the source of every ICMP time-exceeded that a router sends is its router id whichever
interface it leaves by — so a traceroute names *devices*, which is what fault localisation
votes on (PINGMESH-AND-SUCCESSORS.md §6.2).

**Routes** are what a converged routing protocol would install: for every destination (a ToR's
/24, a router id) a breadth-first search from the router that owns it gives each router its
distance; a router's next hops are all its neighbours one step closer (equal-cost multipath).
ToRs are never transit (valley-free routing), so in a Clos this is exactly the set of up/down
shortest paths. :func:`routes_for` takes the links
to leave out, so the shell can emulate convergence after a link goes down.

Routers (and servers, the last hop) must answer traceroute without being throttled:
``icmp_ratelimit=0`` and a large ``icmp_msgs_per_sec`` per namespace (both are per namespace),
otherwise Linux sends one time-exceeded per destination per second and hops vanish from
traceroutes. Each router gets a multipath hash seed of its own
(``fib_multipath_hash_seed``, Linux 6.11+; ignored where missing), as real switches do:
with one hash everywhere, every two-way choice along a path agrees (hash polarisation) and half
of the fabric's paths carry nothing.

Nothing here touches the system: :mod:`pingmesh.lab.fabric` turns a plan into ``ip`` commands.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pingmesh.core.topology import Server, Topology, topology_from_servers
from pingmesh.errors import ConfigError

Role = Literal["server", "tor", "leaf", "spine", "core", "mgmt"]
ROUTER_ROLES: tuple[Role, ...] = ("tor", "leaf", "spine", "core")

FABRIC_NET = ipaddress.IPv4Network("198.18.0.0/16")
LAB_NET = ipaddress.IPv4Network("198.18.0.0/15")
DEFAULT_MGMT_NET = "198.19.0.0/20"
DEFAULT_PREFIX = "pmlab"
TOR_SUBNET_BASE = 16  # ToR T owns 198.18.(16+T).0/24
MAX_TORS = 255 - TOR_SUBNET_BASE
MAX_SERVERS_PER_TOR = 200  # .11 … .210
MAX_PER_ROUTER_ROLE = 254  # 198.18.{1,2,3}.1 … .254
SERVER_PORT = "eth0"
MGMT_PORT = "mgmt"
MGMT_BRIDGE = "br0"
NFT_TABLE = "pmlab"  # the nftables table (family inet) in every router namespace
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,9}$")

ROUTER_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.fib_multipath_hash_policy", "1"),  # L4 hash: the source port picks the path
    ("net.ipv4.icmp_ratelimit", "0"),  # answer every traceroute probe …
    ("net.ipv4.icmp_msgs_per_sec", "100000"),  # … also under the global ICMP limiter
    ("net.ipv4.icmp_msgs_burst", "100000"),
    ("net.ipv4.conf.all.rp_filter", "0"),  # ECMP return paths are asymmetric
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv4.conf.all.ignore_routes_with_linkdown", "1"),  # skip next hops without carrier
    ("net.ipv4.conf.default.ignore_routes_with_linkdown", "1"),
)
SERVER_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
    ("net.ipv4.fib_multipath_hash_policy", "1"),
    ("net.ipv4.icmp_ratelimit", "0"),  # the last hop of a traceroute answers too
    ("net.ipv4.icmp_msgs_per_sec", "100000"),
    ("net.ipv4.icmp_msgs_burst", "100000"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
)
MGMT_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LabShape:
    """How big the lab is: DCs, and per DC/podset/ToR how many of each."""

    dcs: int = 1
    podsets: int = 2  # per DC
    tors: int = 2  # per podset
    servers: int = 3  # per ToR
    leaves: int = 2  # per podset
    spines: int = 2  # per DC
    cores: int = 2  # between DCs; none with a single DC

    def __post_init__(self) -> None:
        for name in ("dcs", "podsets", "tors", "servers", "leaves", "spines", "cores"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "cores" else 1):
                raise ConfigError(f"lab shape: field {name}: {value!r} must be at least 1")
        if self.servers > MAX_SERVERS_PER_TOR:
            raise ConfigError(
                f"lab shape: field servers: {self.servers} per ToR is above {MAX_SERVERS_PER_TOR}"
            )
        limits = (
            ("tors", self.dcs * self.podsets * self.tors, MAX_TORS),
            ("leaves", self.dcs * self.podsets * self.leaves, MAX_PER_ROUTER_ROLE),
            ("spines", self.dcs * self.spines, MAX_PER_ROUTER_ROLE),
            ("cores", self.cores, MAX_PER_ROUTER_ROLE),
        )
        for name, total, limit in limits:
            if total > limit:
                raise ConfigError(f"lab shape: {total} {name} in all; the lab holds {limit}")
        if self.dcs > 1 and self.cores < 1:
            raise ConfigError("lab shape: field cores: more than one DC needs at least 1 core")

    @property
    def server_count(self) -> int:
        """Servers in the whole lab."""
        return self.dcs * self.podsets * self.tors * self.servers


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """One namespace of the lab: a server, a router or the management namespace."""

    name: str  # also the topology name of servers and ToRs: dc1-ps1-t1-h1, dc1-ps1-t1, …
    role: Role
    namespace: str
    address: str  # fabric address (router id for routers); management address for mgmt
    mgmt_address: str | None = None  # servers only
    dc: str | None = None
    podset: str | None = None
    tor: str | None = None  # servers only


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """A veth pair between two namespaces; each end named inside its own namespace."""

    a: str  # node name
    a_port: str
    b: str
    b_port: str

    @property
    def key(self) -> frozenset[str]:
        """The unordered pair of node names."""
        return frozenset((self.a, self.b))

    def port_of(self, node: str) -> str:
        """The interface name at ``node``'s end."""
        if node == self.a:
            return self.a_port
        if node == self.b:
            return self.b_port
        raise KeyError(node)

    def other(self, node: str) -> str:
        """The node at the other end."""
        if node == self.a:
            return self.b
        if node == self.b:
            return self.a
        raise KeyError(node)


@dataclass(frozen=True, slots=True, kw_only=True)
class NextHop:
    """``via`` on ``dev`` (onlink); ``via`` is None for a directly attached destination."""

    dev: str
    via: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One route of one namespace."""

    dst: str  # CIDR
    nexthops: tuple[NextHop, ...]
    src: str | None = None

    def ip_args(self, *, proto: str | None = None) -> str:
        """The route as ``ip route replace`` arguments (one ``ip -batch`` line, no verb)."""
        words = [self.dst]
        if proto is not None:
            words += ["proto", proto]
        if self.src is not None:
            words += ["src", self.src]
        if len(self.nexthops) == 1:
            hop = self.nexthops[0]
            if hop.via is None:
                words += ["dev", hop.dev, "scope", "link"]
            else:
                words += ["via", hop.via, "dev", hop.dev, "onlink"]
        else:
            for hop in self.nexthops:
                if hop.via is None:  # pragma: no cover - attached routes have one next hop
                    raise ValueError(f"route {self.dst}: an attached next hop in a multipath")
                words += ["nexthop", "via", hop.via, "dev", hop.dev, "onlink"]
        return " ".join(words)


@dataclass(frozen=True, slots=True, kw_only=True)
class LabPlan:
    """Everything the lab is made of; see the module docstring."""

    shape: LabShape
    prefix: str
    mgmt_net: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    mgmt_links: tuple[Link, ...]  # server mgmt ports ↔ the bridge in the mgmt namespace
    _by_name: dict[str, Node] = field(init=False, repr=False, compare=False)
    _links_of: dict[str, tuple[Link, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {n.name: n for n in self.nodes}
        if len(by_name) != len(self.nodes):  # pragma: no cover - built by build_plan
            raise ValueError("nodes: duplicate node name")
        links_of: dict[str, list[Link]] = {n: [] for n in by_name}
        for link in self.links:
            links_of[link.a].append(link)
            links_of[link.b].append(link)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_links_of", {k: tuple(v) for k, v in links_of.items()})

    # -- lookups --------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        """The node called ``name``; ConfigError (naming it and the choices) otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(f"lab: no node {name!r} (see `pingmesh lab status`)") from None

    def has_node(self, name: str) -> bool:
        """True if the lab has a node called ``name``."""
        return name in self._by_name

    def nodes_of(self, role: Role) -> tuple[Node, ...]:
        """Every node of ``role``, in plan order."""
        return tuple(n for n in self.nodes if n.role == role)

    @property
    def servers(self) -> tuple[Node, ...]:
        """The server nodes."""
        return self.nodes_of("server")

    @property
    def routers(self) -> tuple[Node, ...]:
        """Every ToR, leaf, spine and core."""
        return tuple(n for n in self.nodes if n.role in ROUTER_ROLES)

    @property
    def mgmt(self) -> Node:
        """The management namespace (the bridge and the pingmesh server)."""
        return self.nodes_of("mgmt")[0]

    def links_of(self, name: str) -> tuple[Link, ...]:
        """The fabric links of node ``name``."""
        return self._links_of.get(name, ())

    def link(self, a: str, b: str) -> Link:
        """The fabric link between ``a`` and ``b``; ConfigError if there is none."""
        self.node(a)
        self.node(b)
        for link in self.links_of(a):
            if link.other(a) == b:
                return link
        raise ConfigError(f"lab: no link between {a!r} and {b!r}")

    def tor_servers(self, tor: str) -> tuple[Node, ...]:
        """The servers under ToR ``tor``."""
        return tuple(n for n in self.servers if n.tor == tor)

    @property
    def host_port(self) -> str:
        """The host's interface into the management network (the only one outside a netns)."""
        return f"{self.prefix}-m"

    @property
    def host_mgmt_address(self) -> str:
        """The host's address on the management network."""
        return str(ipaddress.IPv4Network(self.mgmt_net)[1])

    @property
    def server_listen_address(self) -> str:
        """Where the pingmesh server listens, in the management namespace."""
        return self.mgmt.address

    @property
    def mgmt_prefixlen(self) -> int:
        """The prefix length of the management network."""
        return ipaddress.IPv4Network(self.mgmt_net).prefixlen

    def topology(self) -> Topology:
        """The pingmesh topology of the lab's servers."""
        return topology_from_servers(
            Server(
                name=n.name,
                address=n.address,
                dc=n.dc or "",
                podset=n.podset or "",
                tor=n.tor or "",
            )
            for n in self.servers
        )

    def sysctls(self, name: str) -> tuple[tuple[str, str], ...]:
        """The sysctls to set in node ``name``'s namespace."""
        role = self.node(name).role
        if role == "server":
            return SERVER_SYSCTLS
        if role == "mgmt":
            return MGMT_SYSCTLS
        # A seed of its own per router, as real switches have: with one hash for all, every
        # two-way ECMP choice along a path agrees (hash polarisation) and half the paths idle.
        seed = 1 + [n.name for n in self.routers].index(name)
        return (
            *ROUTER_SYSCTLS,
            ("net.ipv4.fib_multipath_hash_seed", str(seed * 2654435761 % 2**32)),
        )

    def addresses(self, name: str) -> tuple[tuple[str, str], ...]:
        """(interface, CIDR) pairs to configure in node ``name``'s namespace."""
        node = self.node(name)
        if node.role == "mgmt":
            return ((MGMT_BRIDGE, f"{node.address}/{self.mgmt_prefixlen}"),)
        out = []
        if node.role == "server":
            out.append((SERVER_PORT, f"{node.address}/32"))
            assert node.mgmt_address is not None
            out.append((MGMT_PORT, f"{node.mgmt_address}/{self.mgmt_prefixlen}"))
            return tuple(out)
        out.append(("lo", f"{node.address}/32"))
        for link in self.links_of(name):
            out.append((link.port_of(name), f"{node.address}/32"))
        return tuple(out)

    def routes(self, down: Iterable[frozenset[str]] = ()) -> dict[str, tuple[Route, ...]]:
        """Every node's routes; see :func:`routes_for`."""
        return routes_for(self, down=down)


def valid_prefix(prefix: str) -> str:
    """``prefix`` if it can name the lab's namespaces and host interface, else ConfigError."""
    if not _PREFIX_RE.match(prefix):
        raise ConfigError(
            f"lab: prefix {prefix!r} must be 2-10 lowercase letters and digits, "
            "starting with a letter"
        )
    return prefix


def _mgmt_network(mgmt_net: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(mgmt_net)
    except ValueError as exc:
        raise ConfigError(f"lab: management network {mgmt_net!r}: {exc}") from None
    if not net.subnet_of(LAB_NET) or net.overlaps(FABRIC_NET):
        raise ConfigError(
            f"lab: management network {mgmt_net} must lie in 198.19.0.0/16 "
            "(198.18.0.0/16 is the fabric)"
        )
    return net


def build_plan(
    shape: LabShape, *, prefix: str = DEFAULT_PREFIX, mgmt_net: str = DEFAULT_MGMT_NET
) -> LabPlan:
    """The plan of a lab of ``shape``; namespaces are called ``{prefix}-{node}``."""
    valid_prefix(prefix)
    mnet = _mgmt_network(mgmt_net)
    if mnet.num_addresses - 11 < shape.server_count:
        raise ConfigError(
            f"lab: management network {mgmt_net} is too small for {shape.server_count} servers"
        )
    nodes: list[Node] = []
    links: list[Link] = []
    mgmt_links: list[Link] = []

    def ns(name: str) -> str:
        return f"{prefix}-{name}"

    mgmt = Node(name="mgmt", role="mgmt", namespace=ns("mgmt"), address=str(mnet[2]))
    nodes.append(mgmt)
    cores = [
        Node(name=f"core{c}", role="core", namespace=ns(f"core{c}"), address=f"198.18.1.{c}")
        for c in range(1, (shape.cores if shape.dcs > 1 else 0) + 1)
    ]
    nodes.extend(cores)
    tor_index = leaf_index = spine_index = server_index = 0
    for d in range(1, shape.dcs + 1):
        dc = f"dc{d}"
        spines = []
        for s in range(1, shape.spines + 1):
            spine_index += 1
            name = f"{dc}-s{s}"
            spines.append(
                Node(
                    name=name,
                    role="spine",
                    namespace=ns(name),
                    address=f"198.18.2.{spine_index}",
                    dc=dc,
                )
            )
        nodes.extend(spines)
        for spine in spines:
            for core in cores:
                links.append(
                    Link(
                        a=spine.name,
                        a_port=core.name.replace("core", "c"),
                        b=core.name,
                        b_port=f"d{d}{spine.name.rsplit('-', 1)[1]}",
                    )
                )
        for p in range(1, shape.podsets + 1):
            podset = f"{dc}-ps{p}"
            leaves = []
            for leaf_no in range(1, shape.leaves + 1):
                leaf_index += 1
                name = f"{podset}-l{leaf_no}"
                leaves.append(
                    Node(
                        name=name,
                        role="leaf",
                        namespace=ns(name),
                        address=f"198.18.3.{leaf_index}",
                        dc=dc,
                        podset=podset,
                    )
                )
            nodes.extend(leaves)
            for leaf_no, leaf in enumerate(leaves, 1):
                for s, spine in enumerate(spines, 1):
                    links.append(
                        Link(a=leaf.name, a_port=f"s{s}", b=spine.name, b_port=f"p{p}l{leaf_no}")
                    )
            for t in range(1, shape.tors + 1):
                third = TOR_SUBNET_BASE + tor_index
                tor_index += 1
                tor_name = f"{podset}-t{t}"
                tor = Node(
                    name=tor_name,
                    role="tor",
                    namespace=ns(tor_name),
                    address=f"198.18.{third}.1",
                    dc=dc,
                    podset=podset,
                )
                nodes.append(tor)
                for leaf_no, leaf in enumerate(leaves, 1):
                    links.append(
                        Link(a=tor.name, a_port=f"l{leaf_no}", b=leaf.name, b_port=f"t{t}")
                    )
                for h in range(1, shape.servers + 1):
                    name = f"{tor_name}-h{h}"
                    server = Node(
                        name=name,
                        role="server",
                        namespace=ns(name),
                        address=f"198.18.{third}.{10 + h}",
                        mgmt_address=str(mnet[10 + server_index]),
                        dc=dc,
                        podset=podset,
                        tor=tor_name,
                    )
                    nodes.append(server)
                    links.append(Link(a=tor.name, a_port=f"h{h}", b=name, b_port=SERVER_PORT))
                    mgmt_links.append(
                        Link(a=name, a_port=MGMT_PORT, b="mgmt", b_port=f"s{server_index}")
                    )
                    server_index += 1
    return LabPlan(
        shape=shape,
        prefix=prefix,
        mgmt_net=str(mnet),
        nodes=tuple(nodes),
        links=tuple(links),
        mgmt_links=tuple(mgmt_links),
    )


def _destinations(plan: LabPlan) -> list[tuple[str, str]]:
    """(CIDR, owning node) for every routed destination: ToR subnets and router ids."""
    out = []
    for node in plan.routers:
        if node.role == "tor":
            net = ipaddress.IPv4Network(f"{node.address}/24", strict=False)
            out.append((str(net), node.name))
        else:
            out.append((f"{node.address}/32", node.name))
    return out


def routes_for(
    plan: LabPlan, *, down: Iterable[frozenset[str]] = ()
) -> dict[str, tuple[Route, ...]]:
    """Every namespace's routes, as a converged ECMP fabric would have them.

    ``down`` names links (unordered node pairs) to leave out, as a routing protocol would
    after they fail. See the module docstring for the rule.
    """
    down_set = set(down)
    routers = {n.name for n in plan.routers}
    adjacency: dict[str, list[Link]] = {r: [] for r in routers}
    for link in plan.links:
        if link.key in down_set or link.a not in routers or link.b not in routers:
            continue
        adjacency[link.a].append(link)
        adjacency[link.b].append(link)
    table: dict[str, list[Route]] = {n.name: [] for n in plan.nodes}
    tors = frozenset(n.name for n in plan.nodes_of("tor"))
    # Routers: the ToR subnets' servers are attached; the rest by BFS distance.
    for tor in plan.nodes_of("tor"):
        for link in plan.links_of(tor.name):
            peer = plan.node(link.other(tor.name))
            if peer.role == "server" and link.key not in down_set:
                table[tor.name].append(
                    Route(dst=f"{peer.address}/32", nexthops=(NextHop(dev=link.port_of(tor.name)),))
                )
    for dst, owner in _destinations(plan):
        distance = _bfs(owner, adjacency, no_transit=tors)
        for router in sorted(routers):
            if router == owner or router not in distance:
                continue
            hops = []
            for link in adjacency[router]:
                neighbour = link.other(router)
                if neighbour in tors and neighbour != owner:
                    continue  # no transit through a ToR
                if distance.get(neighbour) == distance[router] - 1:
                    attached = neighbour == owner and dst.endswith("/32")
                    hops.append(
                        NextHop(
                            dev=link.port_of(router),
                            via=None if attached else plan.node(neighbour).address,
                        )
                    )
            hops.sort(key=lambda h: h.dev)
            table[router].append(Route(dst=dst, nexthops=tuple(hops)))
    # Servers: their ToR is attached; the whole fabric is behind it.
    for server in plan.servers:
        assert server.tor is not None
        tor = plan.node(server.tor)
        link = plan.link(server.name, tor.name)
        if link.key in down_set:
            continue
        table[server.name].append(Route(dst=f"{tor.address}/32", nexthops=(NextHop(dev="eth0"),)))
        table[server.name].append(
            Route(
                dst=str(FABRIC_NET),
                nexthops=(NextHop(dev=SERVER_PORT, via=tor.address),),
                src=server.address,
            )
        )
    return {name: tuple(routes) for name, routes in table.items()}


def _bfs(
    start: str, adjacency: Mapping[str, list[Link]], *, no_transit: frozenset[str]
) -> dict[str, int]:
    # ToRs carry no transit traffic (valley-free routing): reached, never passed through.
    distance = {start: 0}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        if here != start and here in no_transit:
            continue
        for link in adjacency[here]:
            there = link.other(here)
            if there not in distance:
                distance[there] = distance[here] + 1
                queue.append(there)
    return distance
