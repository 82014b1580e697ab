"""Synthetic probe data with injected faults, for the tests and the benchmarks.

Theory of operation
-------------------
A fleet (:class:`FleetShape`) is laid out as a three-tier Clos like the lab's (Pingmesh §2;
``pingmesh.lab.plan``): every ToR connects to the ``leaves_per_podset`` leaves of its podset,
every leaf to the ``spines_per_dc`` spines of its DC, spines to the ``cores`` that join DCs.
Each server probes the peers of its Pingmesh pinglist (:mod:`pingmesh.core.pinglist`) every
``interval_s``, at a per-pair phase. A probe's path is chosen the way ECMP does it: a hash of
its 5-tuple picks one leaf, spine and core among the equal-cost ones, so a fresh source port
may take another path (Pingmesh §3.4.1).

A TCP connect probe sends up to three SYNs (Linux: at 0, 1 and 3 s; the 3.5 s timeout ends it):
an attempt is lost if any device on the way there or back drops it; the probe succeeds with
``retransmits`` = lost attempts, or times out. A UDP or ICMP probe is one attempt. Faults:

- :class:`BlackHole`: a device drops, every time, the flows whose (src, dst) — or with
  ``per_port`` (type 2) whose (src, dst, src port) — hashes below ``share``;
- :class:`RandomDrop`: a device drops each packet with probability ``rate`` (a silent drop);
- :class:`HostDown`: an agent stops reporting and its host stops answering;
- :class:`ResponderDown`: probes to a host are refused (its kernel answers, its responder not);
- :class:`HostDrops`: a host drops a share of the packets sent to it (a starved responder's
  accept queue, a bad NIC), with no host-noise signal;
- :class:`HostNoise`: a starved agent: its probes carry high event-loop lag and some of them
  time out; probes to it show a long responder dwell;
- :class:`ExtraLatency`: a device adds latency; :class:`SlowHost`: a host adds latency to
  the probes it sends (its own stack, not the network).

Everything is a function of the seed, so a test can compute the expected incidents. Rows have
the columns of the raw store (plus the host-noise columns); :func:`simulate_trace` is what an
agent's 5-tuple traceroute would see.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pingmesh.core.pinglist import generate_pinglist
from pingmesh.core.topology import Server, Topology, topology_from_servers

SYN_TIMES_S = (0.0, 1.0, 3.0)
"""When a Linux client sends its SYNs within a 3.5 s probe timeout (RTO 1 s, doubling)."""

EPHEMERAL_PORTS = (32768, 60999)
BASE_ADDRESS = int(ipaddress.IPv4Address("198.18.16.0"))
DEVICE_ADDRESS = int(ipaddress.IPv4Address("198.18.1.0"))


def _hash(*parts: object) -> int:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _unit(*parts: object) -> float:
    return _hash(*parts) / 2**64


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetShape:
    """How big the synthetic fleet and its fabric are."""

    dcs: int = 2
    podsets_per_dc: int = 2
    tors_per_podset: int = 2
    servers_per_tor: int = 4
    leaves_per_podset: int = 2
    spines_per_dc: int = 2
    cores: int = 2

    def __post_init__(self) -> None:
        for name in (
            "dcs",
            "podsets_per_dc",
            "tors_per_podset",
            "servers_per_tor",
            "leaves_per_podset",
            "spines_per_dc",
            "cores",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.servers_total > 60_000:
            raise ValueError(f"{self.servers_total} servers: too many for 198.18.0.0/15")

    @property
    def servers_total(self) -> int:
        """Servers in the fleet."""
        return self.dcs * self.podsets_per_dc * self.tors_per_podset * self.servers_per_tor


def synthetic_topology(
    shape: FleetShape, *, services: Mapping[str, Iterable[str]] | None = None
) -> Topology:
    """The fleet's topology: ``dc1``, ``dc1-ps1``, ``dc1-ps1-t1``, ``dc1-ps1-t1-h1``, …"""
    servers = []
    index = 0
    for d in range(1, shape.dcs + 1):
        for p in range(1, shape.podsets_per_dc + 1):
            for t in range(1, shape.tors_per_podset + 1):
                for h in range(1, shape.servers_per_tor + 1):
                    servers.append(
                        Server(
                            name=f"dc{d}-ps{p}-t{t}-h{h}",
                            address=str(ipaddress.IPv4Address(BASE_ADDRESS + index)),
                            dc=f"dc{d}",
                            podset=f"dc{d}-ps{p}",
                            tor=f"dc{d}-ps{p}-t{t}",
                        )
                    )
                    index += 1
    return topology_from_servers(servers, services)


class Fabric:
    """The devices of the fleet's Clos, their addresses, and ECMP paths."""

    def __init__(self, topology: Topology, shape: FleetShape) -> None:
        self.topology = topology
        self.shape = shape
        self.address: dict[str, str] = {}
        names: list[str] = []
        names.extend(f"tor:{t}" for t in topology.tors())
        for podset in topology.podsets():
            names.extend(f"leaf:{podset}:{k}" for k in range(1, shape.leaves_per_podset + 1))
        for dc in topology.dcs():
            names.extend(f"spine:{dc}:{k}" for k in range(1, shape.spines_per_dc + 1))
        if len(topology.dcs()) > 1:
            names.extend(f"core:{k}" for k in range(1, shape.cores + 1))
        for i, name in enumerate(names):
            self.address[name] = str(ipaddress.IPv4Address(DEVICE_ADDRESS + i))
        self.name_of = {a: n for n, a in self.address.items()}

    def device(self, name_or_address: str) -> str:
        """The device's name, from its name or its address."""
        if name_or_address in self.address:
            return name_or_address
        if name_or_address in self.name_of:
            return self.name_of[name_or_address]
        raise ValueError(f"device: {name_or_address!r} is not a device of the fabric")

    def path(self, src: Server, dst: Server, src_port: int, dst_port: int) -> tuple[str, ...]:
        """The device names a packet of this 5-tuple crosses, in order (ECMP by hash)."""
        if src.tor == dst.tor:
            return (f"tor:{src.tor}",)
        flow = _hash(src.address, dst.address, src_port, dst_port)
        leaf_s = f"leaf:{src.podset}:{flow % self.shape.leaves_per_podset + 1}"
        leaf_d = f"leaf:{dst.podset}:{(flow >> 8) % self.shape.leaves_per_podset + 1}"
        if src.podset == dst.podset:
            return (f"tor:{src.tor}", leaf_s, f"tor:{dst.tor}")
        spine_s = f"spine:{src.dc}:{(flow >> 16) % self.shape.spines_per_dc + 1}"
        if src.dc == dst.dc:
            return (f"tor:{src.tor}", leaf_s, spine_s, leaf_d, f"tor:{dst.tor}")
        spine_d = f"spine:{dst.dc}:{(flow >> 24) % self.shape.spines_per_dc + 1}"
        core = f"core:{(flow >> 32) % self.shape.cores + 1}"
        return (f"tor:{src.tor}", leaf_s, spine_s, core, spine_d, leaf_d, f"tor:{dst.tor}")


# -- faults ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Timed:
    start_s: float = -math.inf
    end_s: float = math.inf

    def active(self, at_s: float) -> bool:
        return self.start_s <= at_s < self.end_s


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackHole(_Timed):
    """``device`` drops, every time, the flows hashing below ``share`` (type 2: per port)."""

    device: str
    share: float = 1.0
    per_port: bool = False
    only_pairs: frozenset[tuple[str, str]] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RandomDrop(_Timed):
    """``device`` drops each packet crossing it with probability ``rate``."""

    device: str
    rate: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDown(_Timed):
    """``server`` is gone: its agent reports nothing, its host answers nothing."""

    server: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderDown(_Timed):
    """Probes to ``server`` are refused."""

    server: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDrops(_Timed):
    """``server`` drops a share ``rate`` of the packets sent to it (no host-noise signal)."""

    server: str
    rate: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HostNoise(_Timed):
    """``server``'s agent is starved: lag on its probes, dwell on probes to it, some timeouts."""

    server: str
    lag_us: float = 200_000.0
    timeout_rate: float = 0.2


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtraLatency(_Timed):
    """``device`` adds ``extra_us`` to the round trip of every flow crossing it."""

    device: str
    extra_us: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowHost(_Timed):
    """``server`` adds ``extra_us`` to the round trip of every probe it sends."""

    server: str
    extra_us: float


Fault = (
    BlackHole
    | RandomDrop
    | HostDown
    | ResponderDown
    | HostDrops
    | HostNoise
    | ExtraLatency
    | SlowHost
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbePlan:
    """What to generate: the window, the probing, the healthy fabric's own loss."""

    start_s: float
    end_s: float
    interval_s: float = 10.0
    seed: int = 1
    base_drop_rate: float = 1e-5
    udp_servers: frozenset[str] = frozenset()  # these probe over UDP with rotating ports
    udp_ports: int = 8
    inter_dc_per_podset: int = 1
    faults: tuple[Fault, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.start_s < self.end_s:
            raise ValueError("start_s must be before end_s")
        if self.interval_s <= 0 or not 0 <= self.base_drop_rate < 1:
            raise ValueError("interval_s must be positive and base_drop_rate in [0, 1)")


_BASE_RTT_US = {1: 40.0, 3: 90.0, 5: 180.0, 7: 900.0}


def pairs_of(topology: Topology, *, inter_dc_per_podset: int = 1) -> list[tuple[Server, Server]]:
    """Every (source, destination) pair of the fleet's pinglists."""
    out = []
    for server in topology.servers:
        pinglist = generate_pinglist(topology, server.name, inter_dc_per_podset=inter_dc_per_podset)
        for peer in pinglist.peers:
            dst = topology.server(peer.name)
            assert dst is not None
            out.append((server, dst))
    return out


def generate_probes(
    topology: Topology, fabric: Fabric, plan: ProbePlan
) -> Iterator[dict[str, Any]]:
    """Probe records of every pair in ``[plan.start_s, plan.end_s)``, in pair order."""
    rng = random.Random(plan.seed)
    holes = [f for f in plan.faults if isinstance(f, BlackHole)]
    drops = [f for f in plan.faults if isinstance(f, RandomDrop)]
    slow = [f for f in plan.faults if isinstance(f, ExtraLatency)]
    down = {f.server: f for f in plan.faults if isinstance(f, HostDown)}
    refused = {f.server: f for f in plan.faults if isinstance(f, ResponderDown)}
    host_drops = {f.server: f for f in plan.faults if isinstance(f, HostDrops)}
    noise = {f.server: f for f in plan.faults if isinstance(f, HostNoise)}
    slow_hosts = {f.server: f for f in plan.faults if isinstance(f, SlowHost)}
    for device in [
        *(f.device for f in holes),
        *(f.device for f in drops),
        *(f.device for f in slow),
    ]:
        fabric.device(device)  # fails loudly on a typo
    hole_dev = [(fabric.device(f.device), f) for f in holes]
    drop_dev = [(fabric.device(f.device), f) for f in drops]
    slow_dev = [(fabric.device(f.device), f) for f in slow]
    for src, dst in pairs_of(topology, inter_dc_per_podset=plan.inter_dc_per_podset):
        udp = src.name in plan.udp_servers
        kind = "udp" if udp else "tcp"
        scope = (
            "intra_tor" if src.tor == dst.tor else "inter_tor" if src.dc == dst.dc else "inter_dc"
        )
        phase = _unit("phase", src.name, dst.name) * plan.interval_s
        k = 0
        while True:
            at_s = plan.start_s + phase + k * plan.interval_s
            if at_s >= plan.end_s:
                break
            k += 1
            gone = down.get(src.name)
            if gone is not None and gone.active(at_s):
                continue  # the agent is down: it reports nothing
            if udp:
                src_port = (
                    40000 + _hash("ports", src.name) % 1000 * plan.udp_ports + (k % plan.udp_ports)
                )
            else:
                src_port = rng.randint(*EPHEMERAL_PORTS)
            dst_port = 9781
            there = fabric.path(src, dst, src_port, dst_port)
            back = fabric.path(dst, src, dst_port, src_port)
            blocked = any(
                f.active(at_s)
                and (name in there or name in back)
                and (f.only_pairs is None or (src.name, dst.name) in f.only_pairs)
                and _unit("hole", src.name, dst.name, src_port if f.per_port else "") < f.share
                for name, f in hole_dev
            )
            lose = [f.rate for name, f in drop_dev if f.active(at_s) and name in there]
            lose_back = [f.rate for name, f in drop_dev if f.active(at_s) and name in back]
            hd = host_drops.get(dst.name)
            inbound = hd.rate if hd is not None and hd.active(at_s) else 0.0
            starved = noise.get(src.name)
            starved = starved if starved is not None and starved.active(at_s) else None
            starved_dst = noise.get(dst.name)
            starved_dst = (
                starved_dst if starved_dst is not None and starved_dst.active(at_s) else None
            )
            dst_gone = down.get(dst.name)
            dst_gone_now = dst_gone is not None and dst_gone.active(at_s)
            ref = refused.get(dst.name)
            refused_now = ref is not None and ref.active(at_s)

            # The chance that one attempt (there and back) gets through.
            p_ok = 0.0 if blocked or dst_gone_now else (1 - plan.base_drop_rate) ** 2
            p_ok *= 1 - inbound
            for rate in (*lose, *lose_back):
                p_ok *= 1 - rate
            attempts = 1 if udp else len(SYN_TIMES_S)
            lost = 0
            while lost < attempts and rng.random() >= p_ok:
                lost += 1
            base = _BASE_RTT_US[len(there)] + sum(
                f.extra_us for name, f in slow_dev if f.active(at_s) and name in there
            )
            slow_host = slow_hosts.get(src.name)
            if slow_host is not None and slow_host.active(at_s):
                base += slow_host.extra_us
            rtt = base * (0.8 + 0.4 * rng.random()) + rng.expovariate(1 / 20.0)
            outcome = "ok"
            if refused_now and not blocked and not dst_gone_now:
                outcome, lost = "refused", 0
            elif lost >= attempts or (starved is not None and rng.random() < starved.timeout_rate):
                outcome = "timeout"
            retransmits = lost if not udp else 0
            if outcome == "timeout" and not udp:
                retransmits = attempts - 1
            ok = outcome == "ok"
            clock_rtt = rtt + (SYN_TIMES_S[lost] * 1e6 if ok and not udp else 0.0)
            yield {
                "time": datetime.fromtimestamp(at_s, tz=UTC),
                "batch_id": f"syn-{src.name}-{int(at_s // 5)}",
                "agent": src.name,
                "src_addr": src.address,
                "src_port": src_port,
                "dst": dst.name,
                "dst_addr": dst.address,
                "dst_port": dst_port,
                "kind": kind,
                "scope": scope,
                "outcome": outcome,
                "rtt_us": rtt if ok else None,
                "rtt_clock_us": clock_rtt if ok else None,
                "retransmits": retransmits,
                "size_bytes": 0,
                "detail": "" if ok else outcome,
                "src_tor": src.tor,
                "src_podset": src.podset,
                "src_dc": src.dc,
                "dst_tor": dst.tor,
                "dst_podset": dst.podset,
                "dst_dc": dst.dc,
                "send_lag_us": starved.lag_us if starved is not None else 30.0,
                "recv_lag_us": (starved.lag_us if starved is not None else 20.0) if ok else None,
                "dwell_us": (starved_dst.lag_us if starved_dst is not None else 15.0)
                if ok
                else None,
            }


def simulate_trace(
    fabric: Fabric,
    src: Server,
    dst: Server,
    *,
    src_port: int,
    dst_port: int,
    faults: Sequence[Fault] = (),
    at_s: float = 0.0,
) -> tuple[tuple[str | None, ...], bool]:
    """(hop addresses, reached) of a TCP traceroute keeping this 5-tuple.

    Each device on the path answers its TTL; a black hole on the path answers its own TTL and
    swallows the rest (PM §5.1, 007: the trace stops next to the fault).
    """
    hops: list[str | None] = []
    for name in fabric.path(src, dst, src_port, dst_port):
        hops.append(fabric.address[name])
        if any(
            isinstance(f, BlackHole)
            and f.active(at_s)
            and fabric.device(f.device) == name
            and (f.only_pairs is None or (src.name, dst.name) in f.only_pairs)
            and _unit("hole", src.name, dst.name, src_port if f.per_port else "") < f.share
            for f in faults
        ):
            return tuple(hops), False
    return (*hops, dst.address), True


def columns(rows: Iterable[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """Rows as columns named ``names`` (missing values None), for ``pyarrow.table``."""
    out: dict[str, list[Any]] = {name: [] for name in names}
    for row in rows:
        for name in names:
            out[name].append(row.get(name))
    return out
