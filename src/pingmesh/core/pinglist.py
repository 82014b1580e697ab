"""Pinglist generation: which peers each server probes (Pingmesh §3.3.1).

Theory of operation
-------------------
Pingmesh covers a fleet with three levels of complete graph, each with its own
:class:`~pingmesh.core.probe.Scope`:

1. **intra-ToR** (``intra_tor``): every server probes every other server under its own ToR.
2. **inter-ToR within a DC** (``inter_tor``): the ToRs of a DC form a complete graph. The paper
   says "for each ToR pair (X, Y), server i of X pings server i of Y"; ToRs differ in size, so
   we make it total: with the servers of every ToR sorted by name, server ``i`` of ``X`` probes
   server ``i mod |Y|`` of ``Y``, for every ordered pair of ToRs ``(X, Y)`` of the DC. Every
   server of ``X`` therefore probes into every other ToR ``Y``, and the pair is covered in both
   directions, because ``Y → X`` is the same rule applied to ``Y``'s own servers. Every server
   takes part, there is no sampling, and each side measures for itself so each server can
   compute its own latency and drop rate.
3. **inter-DC** (``inter_dc``): the DCs form a complete graph. From every podset a few servers
   (``inter_dc_per_podset``) are *chosen* by rendezvous (highest-random-weight) hashing: each
   server's weight is the SHA-256 of its name, and a podset's chosen servers are its heaviest.
   The choice depends on nothing but the names, so adding or removing a server changes it only
   if that server is (or was) among the heaviest of its podset. The chosen servers of a DC,
   sorted by name, form its list ``C_A``; for every ordered pair of DCs ``(A, B)`` the ``k``-th
   server of ``C_A`` probes server ``k mod |C_B|`` of ``C_B``. Every ordered DC pair is covered
   (both ways) when both DCs have chosen servers.

Peers come in that order: intra-ToR, then inter-ToR (by ToR name), then inter-DC (by DC
name). There are no self-probes and no duplicates by construction: intra-ToR peers share the
ToR, each other ToR of the DC contributes one peer, each other DC contributes one peer.

**The cap.** A pinglist holds at most ``max_peers`` peers (the controller's threshold on the
number of probes per server, PM §3.3.1); ``truncated`` counts the ones left out, scope by scope
in the order above. When a scope does not fit in the room left, a server takes a *window* of
that scope's candidates, in cyclic name order, instead of always the first ones: intra-ToR,
the window starts just after the server itself, so each server probes the next few of its
ToR and every server is still probed by others; inter-ToR, server ``i`` of ``X`` starts just
after ``X``, shifted by ``i`` times the room, so the servers of a ToR together cover
consecutive slices of the DC's ToRs; inter-DC likewise with the ``k``-th chosen server.
Without a cap the order is plain name order.

**Determinism.** The output is a function of the topology's content only: servers are sorted by
name, every derived list is sorted, and hashing uses SHA-256 rather than Python's salted
``hash``. Every controller replica therefore serves the same pinglist and the same
:func:`pinglist_version`.

**Cost.** The per-topology indexes (ToR members, ToR order per DC, the chosen servers) are
built once per :class:`~pingmesh.core.topology.Topology` object and cached, so one pinglist
costs time proportional to its own length, not to the size of the fleet.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pingmesh.core.probe import MAX_PAYLOAD_BYTES, MIN_INTERVAL_S, ProbeKind, Scope
from pingmesh.core.topology import Server, Topology
from pingmesh.errors import UnknownServerError

T = TypeVar("T")

_INDEX_CACHE_SIZE = 4  # topologies whose indexes stay cached (current one, plus reloads)


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """One peer that a server probes.

    ``address`` comes from a validated :class:`~pingmesh.core.topology.Server`, so it is not
    parsed again here (that would cost more than the rest of generation).
    """

    name: str
    address: str
    port: int
    kind: ProbeKind
    scope: Scope
    interval_s: float
    size_bytes: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: must not be empty")
        if not 0 < self.port <= 65535:
            raise ValueError(f"port: {self.port} is out of range 1-65535")
        if not self.interval_s >= MIN_INTERVAL_S:
            raise ValueError(f"interval_s: {self.interval_s} is below {MIN_INTERVAL_S} s")
        if not 0 <= self.size_bytes <= MAX_PAYLOAD_BYTES:
            raise ValueError(f"size_bytes: {self.size_bytes} is outside 0-{MAX_PAYLOAD_BYTES}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pinglist:
    """The peers of one server; ``truncated`` counts the peers that the cap left out."""

    server: str
    address: str
    timeout_s: float
    peers: tuple[Peer, ...]
    truncated: int = 0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s: {self.timeout_s} must be positive")
        if self.truncated < 0:
            raise ValueError(f"truncated: {self.truncated} is negative")
        names = {p.name for p in self.peers}
        if len(names) != len(self.peers):
            raise ValueError("peers: a peer is listed twice")
        if self.server in names:
            raise ValueError(f"peers: {self.server!r} would probe itself")


@dataclass(slots=True, kw_only=True)
class _Index:
    """What generation needs from a topology, computed once per topology object."""

    topology: Topology
    by_address: dict[str, Server]
    tor_members: dict[str, tuple[Server, ...]]
    tor_position: dict[str, int]  # server name -> its index under its ToR (name order)
    dc_tors: dict[str, tuple[str, ...]]  # DC -> its ToRs, sorted
    dcs: tuple[str, ...]
    # podset -> its servers, heaviest rendezvous weight first; and podset -> DC.
    podset_ranked: dict[str, tuple[Server, ...]]
    podset_dc: dict[str, str]
    # inter_dc_per_podset -> (DC -> chosen servers by name, server name -> k), built lazily.
    _chosen: dict[int, tuple[dict[str, tuple[Server, ...]], dict[str, int]]] = field(
        default_factory=dict
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def chosen(self, per_podset: int) -> tuple[dict[str, tuple[Server, ...]], dict[str, int]]:
        with self._lock:
            cached = self._chosen.get(per_podset)
        if cached is not None:
            return cached
        by_dc: dict[str, list[Server]] = {dc: [] for dc in self.dcs}
        for podset, ranked in self.podset_ranked.items():
            by_dc[self.podset_dc[podset]].extend(ranked[:per_podset])
        lists = {dc: tuple(sorted(members, key=lambda s: s.name)) for dc, members in by_dc.items()}
        position = {s.name: k for members in lists.values() for k, s in enumerate(members)}
        with self._lock:
            return self._chosen.setdefault(per_podset, (lists, position))


def _weight(server: Server) -> bytes:
    """The rendezvous weight of a server: a function of its name alone."""
    return hashlib.sha256(server.name.encode()).digest()


def _canonical_address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _build_index(topology: Topology) -> _Index:
    by_address: dict[str, Server] = {}
    tor_members: dict[str, list[Server]] = {}
    podsets: dict[str, list[Server]] = {}
    podset_dc: dict[str, str] = {}
    dc_tors: dict[str, set[str]] = {}
    for server in topology.servers:  # sorted by name, so every list below is too
        # An IPv4 address that ipaddress accepts is already canonical; parsing 100k of them
        # would double the cost of the index, so only IPv6 ones are rewritten.
        address = server.address
        by_address[str(ipaddress.ip_address(address)) if ":" in address else address] = server
        tor_members.setdefault(server.tor, []).append(server)
        podsets.setdefault(server.podset, []).append(server)
        podset_dc[server.podset] = server.dc
        dc_tors.setdefault(server.dc, set()).add(server.tor)
    return _Index(
        topology=topology,
        by_address=by_address,
        tor_members={t: tuple(m) for t, m in tor_members.items()},
        tor_position={s.name: i for m in tor_members.values() for i, s in enumerate(m)},
        dc_tors={dc: tuple(sorted(tors)) for dc, tors in dc_tors.items()},
        dcs=tuple(sorted(dc_tors)),
        podset_ranked={
            p: tuple(sorted(m, key=lambda s: (_weight(s), s.name), reverse=True))
            for p, m in podsets.items()
        },
        podset_dc=podset_dc,
    )


_index_lock = threading.Lock()
# Keyed by id(); the entry holds the topology itself, so the id cannot be reused while cached.
_index_cache: OrderedDict[int, _Index] = OrderedDict()


def _index_for(topology: Topology) -> _Index:
    key = id(topology)
    with _index_lock:
        index = _index_cache.get(key)
        if index is not None and index.topology is topology:
            _index_cache.move_to_end(key)
            return index
    # Build outside the lock: two threads may race to build the same index, which is
    # harmless (both are equal) and cheaper than making every other caller wait.
    index = _build_index(topology)
    with _index_lock:
        _index_cache[key] = index
        _index_cache.move_to_end(key)
        while len(_index_cache) > _INDEX_CACHE_SIZE:
            _index_cache.popitem(last=False)
    return index


def find_server(topology: Topology, server: str) -> Server:
    """The server of ``topology`` named ``server``, or else whose address it is.

    Names win over addresses (a name may look like an address). Raises
    :class:`~pingmesh.errors.UnknownServerError` when neither matches.
    """
    found = topology.server(server)
    if found is not None:
        return found
    address = _canonical_address(server)
    if address is not None:
        found = _index_for(topology).by_address.get(address)
        if found is not None:
            return found
    raise UnknownServerError(server)


def _window(candidates: Sequence[T], start: int, room: int) -> Sequence[T]:
    """All ``candidates`` if they fit in ``room``, else ``room`` of them cyclically."""
    if room >= len(candidates):
        return candidates
    if room <= 0:
        return ()
    start %= len(candidates)
    end = start + room
    if end <= len(candidates):
        return candidates[start:end]
    return (*candidates[start:], *candidates[: end - len(candidates)])


def generate_pinglist(
    topology: Topology,
    server: str,
    *,
    interval_s: float = 10.0,
    timeout_s: float = 3.5,
    max_peers: int = 5000,
    inter_dc_per_podset: int = 2,
    port: int = 9781,
) -> Pinglist:
    """The pinglist of ``server`` (a name, or else an address) in ``topology``.

    See the module docstring for the rules. Raises
    :class:`~pingmesh.errors.UnknownServerError` for a server that the topology does not name,
    and :class:`ValueError` for a parameter out of range.
    """
    if max_peers < 0:
        raise ValueError(f"max_peers: {max_peers} is negative")
    if inter_dc_per_podset < 0:
        raise ValueError(f"inter_dc_per_podset: {inter_dc_per_podset} is negative")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: {timeout_s} must be positive")
    # Checked here too, not only by Peer, so that a server without peers cannot hide a bad value.
    if not interval_s >= MIN_INTERVAL_S:
        raise ValueError(f"interval_s: {interval_s} is below {MIN_INTERVAL_S} s")
    if not 0 < port <= 65535:
        raise ValueError(f"port: {port} is out of range 1-65535")
    me = find_server(topology, server)
    index = _index_for(topology)
    interval_s = float(interval_s)

    def peers_of(servers: Sequence[Server], scope: Scope) -> list[Peer]:
        return [
            Peer(
                name=s.name,
                address=s.address,
                port=port,
                kind=ProbeKind.TCP,
                scope=scope,
                interval_s=interval_s,
                size_bytes=0,
            )
            for s in servers
        ]

    # 1. intra-ToR: everyone else under my ToR.
    members = index.tor_members[me.tor]
    i = index.tor_position[me.name]
    intra = (*members[:i], *members[i + 1 :])
    # The member just after me sits at index i of `intra` (cyclically).
    intra_kept = _window(intra, i, max_peers)
    room = max_peers - len(intra_kept)

    # 2. inter-ToR: server i mod |Y| of every other ToR Y of my DC.
    tors = index.dc_tors[me.dc]
    other_tors = [t for t in tors if t != me.tor]
    after_my_tor = bisect.bisect_left(other_tors, me.tor)
    tor_kept = _window(other_tors, after_my_tor + i * max(room, 0), room)
    inter_tor = [index.tor_members[t][i % len(index.tor_members[t])] for t in tor_kept]
    room -= len(inter_tor)

    # 3. inter-DC: only chosen servers probe; k-th chosen of my DC -> (k mod n)-th of each other.
    dc_total = 0
    inter_dc: list[Server] = []
    if inter_dc_per_podset > 0 and index.dcs:
        chosen, chosen_position = index.chosen(inter_dc_per_podset)
        k = chosen_position.get(me.name)
        if k is not None:
            other_dcs = [dc for dc in index.dcs if dc != me.dc and chosen[dc]]
            dc_total = len(other_dcs)
            after_my_dc = bisect.bisect_left(other_dcs, me.dc)
            dc_kept = _window(other_dcs, after_my_dc + k * max(room, 0), room)
            inter_dc = [chosen[dc][k % len(chosen[dc])] for dc in dc_kept]

    peers = (
        peers_of(intra_kept, Scope.INTRA_TOR)
        + peers_of(inter_tor, Scope.INTER_TOR)
        + peers_of(inter_dc, Scope.INTER_DC)
    )
    total = len(intra) + len(other_tors) + dc_total
    return Pinglist(
        server=me.name,
        address=me.address,
        timeout_s=float(timeout_s),
        peers=tuple(peers),
        truncated=total - len(peers),
    )


def pinglist_version(pinglist: Pinglist) -> str:
    """A short hex digest of the pinglist's content: equal content, equal version.

    Floats are written with ``repr`` of a float, so ``10`` and ``10.0`` give one version.
    """
    h = hashlib.sha256()
    h.update(
        f"pinglist|{pinglist.server}|{pinglist.address}|{float(pinglist.timeout_s)!r}"
        f"|{pinglist.truncated}\n".encode()
    )
    for p in pinglist.peers:
        h.update(
            f"{p.name}|{p.address}|{p.port}|{p.kind.value}|{p.scope.value}"
            f"|{float(p.interval_s)!r}|{p.size_bytes}\n".encode()
        )
    return h.hexdigest()[:16]
