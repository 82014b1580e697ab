"""Faults the lab can inject, and the nftables rules that make them real (pure).

Theory of operation
-------------------
Each fault is what a real fabric does wrong (Pingmesh §5, PINGMESH-AND-SUCCESSORS.md §2.5),
made with the same mechanism a broken switch has — packets dropped in the forwarding path —
so pingmesh sees nothing that a real network would not show it:

- :class:`BlackHole`: a ToR drops every packet of chosen server pairs, both ways, always
  (Pingmesh's type-1 black hole, a bad TCAM entry): ``ip saddr . ip daddr { a . b, b . a }``.
- :class:`PortBlackHole`: a ToR drops the flows whose ephemeral port falls in one of
  ``one_in`` classes (type-2: only some 5-tuples; found by rotating source ports, §5.1):
  ``th sport 32768-65535 th sport & ((one_in-1) << 1) == 0``, the same for ``dport`` so both
  directions of a flow die. Bit 0 is skipped on purpose: Linux gives a port picked by
  ``bind(port 0)`` an odd number and one picked by ``connect()`` an even one
  (``inet_csk_find_open_port``, net/ipv4/inet_connection_sock.c, since 4.6), so bit 0 would
  match all or none of a prober's flows. The responder ports (9781, 9782) are below the
  ephemeral range, so no pair is cut off entirely.
- :class:`RandomDrop`: ``numgen random mod 10000 < p·100`` drops p % of the packets that a
  spine forwards, or that cross one link (matched by interface, both ways): a silent drop
  (§5.2). TCP recovers with a SYN retransmission, which is exactly Pingmesh's drop signal.
- :class:`LinkDown`: both ends of a veth pair set down. Routes are left as they are by default
  (a fabric whose routing has not reacted yet, or static routes): routers forget the routes
  over a downed interface, so flows hashed onto the dead link from the far side are lost or
  answered "unreachable". With ``reroute`` every router gets the routes of the fabric without
  the link, as a converged routing protocol would have them; ECMP then absorbs the failure.
- :class:`HostDown`: the agent is stopped and the server's interfaces go down.
- :class:`CpuStarve`: the agent is stopped with SIGSTOP for ``stop_ms`` of every ``period_ms``
  and continued with SIGCONT: host noise. The kernel still completes TCP handshakes for it, so
  the network looks fine from outside and only the agent's own timing suffers; nothing here
  may be blamed on the network. (A busy loop would do the same on an idle machine but steals
  CPU from everything else on a small shared one; stopping the process is deterministic.)

Every rule carries a counter and a comment with the fault id, so ``pingmesh lab status`` can
show how many packets each fault dropped. A router's whole table is replaced in one nftables
transaction (``table …; delete table …; table … { … }``), so adding or clearing a fault never
leaves a half-applied rule set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pingmesh.core.pinglist import generate_pinglist
from pingmesh.errors import ConfigError
from pingmesh.lab.plan import NFT_TABLE, LabPlan

EPHEMERAL_PORTS = "32768-65535"  # Linux's default ip_local_port_range starts at 32768
DROP_SCALE = 10_000  # numgen modulus: percentages with two decimals

FaultKind = Literal["black_hole", "port_black_hole", "drop", "link_down", "host_down", "cpu_starve"]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "black_hole",
    "port_black_hole",
    "drop",
    "link_down",
    "host_down",
    "cpu_starve",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackHole:
    """A ToR that drops every packet between the servers of each pair (both ways)."""

    tor: str
    pairs: tuple[tuple[str, str], ...]
    kind: FaultKind = "black_hole"

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ConfigError("black_hole: needs at least one pair")
        for a, b in self.pairs:
            if a == b:
                raise ConfigError(f"black_hole: pair {a}:{b} names one server twice")


@dataclass(frozen=True, slots=True, kw_only=True)
class PortBlackHole:
    """A ToR that drops the flows of one in ``one_in`` ephemeral ports (both ways)."""

    tor: str
    one_in: int = 4
    kind: FaultKind = "port_black_hole"

    def __post_init__(self) -> None:
        if self.one_in < 2 or self.one_in > 1024 or self.one_in & (self.one_in - 1):
            raise ConfigError(
                f"port_black_hole: one_in {self.one_in} must be a power of two from 2 to 1024"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RandomDrop:
    """``percent`` % of packets dropped at a router, or on its link to ``peer``."""

    node: str
    percent: float
    peer: str | None = None
    kind: FaultKind = "drop"

    def __post_init__(self) -> None:
        if not (isinstance(self.percent, int | float) and 0 < self.percent <= 100):
            raise ConfigError(f"drop: percent {self.percent!r} must be above 0 and at most 100")
        if round(self.percent * DROP_SCALE / 100) < 1:
            raise ConfigError(f"drop: percent {self.percent} is below 0.01")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDown:
    """The link between ``a`` and ``b`` down (both ends); see the module docstring."""

    a: str
    b: str
    reroute: bool = False
    kind: FaultKind = "link_down"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDown:
    """A server whose agent is stopped and whose interfaces are down."""

    host: str
    kind: FaultKind = "host_down"


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuStarve:
    """A server whose agent is stopped ``stop_ms`` of every ``period_ms`` (host noise)."""

    host: str
    stop_ms: int = 1500
    period_ms: int = 2000
    kind: FaultKind = "cpu_starve"

    def __post_init__(self) -> None:
        if not 0 < self.stop_ms < self.period_ms <= 60_000:
            raise ConfigError(
                f"cpu_starve: need 0 < stop_ms ({self.stop_ms}) < period_ms "
                f"({self.period_ms}) <= 60000"
            )


Fault = BlackHole | PortBlackHole | RandomDrop | LinkDown | HostDown | CpuStarve
_CLASSES: dict[str, type[Fault]] = {
    "black_hole": BlackHole,
    "port_black_hole": PortBlackHole,
    "drop": RandomDrop,
    "link_down": LinkDown,
    "host_down": HostDown,
    "cpu_starve": CpuStarve,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveFault:
    """A fault in force, with the id that clears it."""

    fault_id: str
    fault: Fault
    started_at_s: float


def fault_to_dict(fault: Fault) -> dict[str, Any]:
    """The fault as plain JSON data (``kind`` plus its fields)."""
    return asdict(fault)


def fault_from_dict(data: dict[str, Any]) -> Fault:
    """The inverse of :func:`fault_to_dict`; ConfigError naming what is wrong."""
    kind = data.get("kind")
    cls = _CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"fault: unknown kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    fields = dict(data)
    if "pairs" in fields:
        fields["pairs"] = tuple(tuple(p) for p in fields["pairs"])
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"fault {kind}: {exc}") from None


def describe(fault: Fault) -> str:
    """One line for people."""
    match fault:
        case BlackHole(tor=tor, pairs=pairs):
            return f"black hole at ToR {tor} for {len(pairs)} server pairs"
        case PortBlackHole(tor=tor, one_in=one_in):
            return f"black hole at ToR {tor} for 1 in {one_in} ephemeral ports"
        case RandomDrop(node=node, percent=percent, peer=None):
            return f"random drop of {percent:g} % at {node}"
        case RandomDrop(node=node, percent=percent, peer=peer):
            return f"random drop of {percent:g} % on the link {node} - {peer}"
        case LinkDown(a=a, b=b, reroute=reroute):
            return f"link {a} - {b} down" + (" (routes converged around it)" if reroute else "")
        case HostDown(host=host):
            return f"host {host} down (agent stopped, interfaces down)"
        case CpuStarve(host=host, stop_ms=stop_ms, period_ms=period_ms):
            return f"agent of {host} starved: stopped {stop_ms} ms of every {period_ms} ms"
    raise AssertionError(fault)  # pragma: no cover


# -- validation against the plan ----------------------------------------------------------


def validate_fault(plan: LabPlan, fault: Fault) -> Fault:
    """``fault`` checked against the lab (names exist, roles fit); normalised where useful."""
    match fault:
        case BlackHole(tor=tor, pairs=pairs):
            _expect_role(plan, tor, ("tor",), "black_hole: --tor")
            for a, b in pairs:
                for name in (a, b):
                    _expect_role(plan, name, ("server",), "black_hole: pair")
                if tor not in (plan.node(a).tor, plan.node(b).tor):
                    raise ConfigError(
                        f"black_hole: pair {a}:{b} does not cross ToR {tor} "
                        "(one of the two must be under it)"
                    )
            return BlackHole(tor=tor, pairs=tuple(sorted({tuple(sorted(p)) for p in pairs})))  # type: ignore[misc]
        case PortBlackHole(tor=tor):
            _expect_role(plan, tor, ("tor",), "port_black_hole: --tor")
            return fault
        case RandomDrop(node=node, peer=None):
            _expect_role(plan, node, ("tor", "leaf", "spine", "core"), "drop: --at")
            return fault
        case RandomDrop(node=node, peer=peer, percent=percent):
            assert peer is not None
            plan.link(node, peer)
            if plan.node(node).role == "server":  # rules live in routers: use the other end
                node, peer = peer, node
            return RandomDrop(node=node, peer=peer, percent=percent)
        case LinkDown(a=a, b=b):
            plan.link(a, b)
            return fault
        case HostDown(host=host) | CpuStarve(host=host):
            _expect_role(plan, host, ("server",), f"{fault.kind}: --host")
            return fault
    raise AssertionError(fault)  # pragma: no cover


def _expect_role(plan: LabPlan, name: str, roles: Sequence[str], what: str) -> None:
    node = plan.node(name)
    if node.role not in roles:
        raise ConfigError(f"{what}: {name!r} is a {node.role}, not a {' or '.join(roles)}")


def default_black_hole_pairs(
    plan: LabPlan, tor: str, *, every: int = 2
) -> tuple[tuple[str, str], ...]:
    """Pairs for a black hole at ``tor`` that pingmesh probes: every ``every``-th of them.

    The candidates are the pairs that the real pinglists (PM §3.3.1) probe through the ToR
    (one end under it), sorted; taking every ``every``-th keeps the rest working, so every
    server keeps some healthy peers: a black hole, not a dead host.
    """
    _expect_role(plan, tor, ("tor",), "black_hole: --tor")
    if every < 1:
        raise ConfigError(f"black_hole: every {every} must be at least 1")
    topology = plan.topology()
    under = {s.name for s in plan.tor_servers(tor)}
    probed: set[tuple[str, str]] = set()
    for server in topology.servers:
        for peer in generate_pinglist(topology, server.name).peers:
            if server.name in under or peer.name in under:
                probed.add((min(server.name, peer.name), max(server.name, peer.name)))
    return tuple(p for i, p in enumerate(sorted(probed)) if i % every == 0)


# -- nftables -----------------------------------------------------------------------------


def fault_routers(fault: Fault) -> tuple[str, ...]:
    """The routers whose nftables rules a fault changes."""
    match fault:
        case BlackHole(tor=tor) | PortBlackHole(tor=tor):
            return (tor,)
        case RandomDrop(node=node):
            return (node,)
    return ()


def nft_rules(plan: LabPlan, router: str, faults: Iterable[ActiveFault]) -> list[str]:
    """The forward-chain rules of ``router`` for the faults in force."""
    rules: list[str] = []
    for active in faults:
        fault = active.fault
        if router not in fault_routers(fault):
            continue
        tag = f'counter drop comment "{active.fault_id} {fault.kind}"'
        match fault:
            case BlackHole(pairs=pairs):
                elements = []
                for a, b in pairs:
                    addr_a, addr_b = plan.node(a).address, plan.node(b).address
                    elements += [f"{addr_a} . {addr_b}", f"{addr_b} . {addr_a}"]
                rules.append(f"ip saddr . ip daddr {{ {', '.join(elements)} }} {tag}")
            case PortBlackHole(one_in=one_in):
                mask = (one_in - 1) << 1  # skip bit 0: see the module docstring
                for port in ("sport", "dport"):
                    rules.append(
                        f"meta l4proto {{ tcp, udp }} th {port} {EPHEMERAL_PORTS} "
                        f"th {port} & {mask} == 0 {tag}"
                    )
            case RandomDrop(percent=percent, peer=None):
                rules.append(f"numgen random mod {DROP_SCALE} < {_drop_threshold(percent)} {tag}")
            case RandomDrop(node=node, percent=percent, peer=peer):
                assert peer is not None
                port = plan.link(node, peer).port_of(node)
                for direction in ("iifname", "oifname"):
                    rules.append(
                        f'{direction} "{port}" numgen random mod {DROP_SCALE} '
                        f"< {_drop_threshold(percent)} {tag}"
                    )
    return rules


def _drop_threshold(percent: float) -> int:
    return max(1, min(DROP_SCALE, math.floor(percent * DROP_SCALE / 100 + 0.5)))


def nft_ruleset(rules: Sequence[str]) -> str:
    """A whole ``nft -f`` script that atomically replaces the lab's table with ``rules``."""
    body = "".join(f"    {rule}\n" for rule in rules)
    return (
        f"table inet {NFT_TABLE}\n"
        f"delete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"{body}"
        "  }\n"
        "}\n"
    )
