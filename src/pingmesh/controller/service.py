"""The pinglist service: the topology in force, turned into wire pinglists on demand.

The controller is stateless (PM §3.3.2): a pinglist is a pure function of the topology, and its
``version`` is a digest of its content, so any number of replicas serve identical documents and
``ETag``s. What this class keeps is only a cache: the documents already built for the current
topology, dropped as soon as the topology's digest changes, and bounded in size.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from pingmesh.config import PinglistConfig, ProbeSpecConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.pinglist import Pinglist, find_server, generate_pinglist, pinglist_version
from pingmesh.core.probe import ProbeKind
from pingmesh.errors import UnknownServerError
from pingmesh.wire.pinglist import DEFAULT_PORTS, PeerModel, PinglistModel


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerStatistics:
    """A snapshot of the service's counters (feeds ``/metrics``: ``_total`` = counter)."""

    served_total: int  # fetches answered with the document (HTTP 200)
    not_modified_total: int  # fetches answered "you have it already" (HTTP 304)
    unknown_total: int  # lookups of a server that the topology does not name (HTTP 404)
    cache_hits_total: int
    cache_misses_total: int
    cache_evictions_total: int
    cache_size: int  # pinglists held for the current topology
    cache_capacity: int
    topology_servers: int
    topology_digest: str  # not a number, so not exported as a metric


@dataclass(frozen=True, slots=True, kw_only=True)
class PinglistFetch:
    """The answer to one fetch: who asked, the current version, and the body unless unchanged."""

    name: str
    address: str
    version: str
    body: bytes | None  # the JSON document; None when the client already has this version

    @property
    def not_modified(self) -> bool:
        """True when the client already holds the current version."""
        return self.body is None


@dataclass(frozen=True, slots=True)
class _Entry:
    model: PinglistModel
    body: bytes


def to_wire(
    pinglist: Pinglist, probes: Sequence[ProbeSpecConfig] = (ProbeSpecConfig(),)
) -> PinglistModel:
    """The wire model of a core pinglist, each peer expanded into one entry per probe spec.

    With the default spec (TCP connect only) every peer stays one entry and ``version`` is
    :func:`pinglist_version`; other specs are folded into the version (a digest of both), so
    that changing how peers are probed changes the ``ETag`` too.
    """
    specs = tuple(probes) or (ProbeSpecConfig(),)
    version = pinglist_version(pinglist)
    if specs != (ProbeSpecConfig(),):
        digest = hashlib.sha256(version.encode())
        for spec in specs:
            digest.update(spec.model_dump_json().encode())
        version = digest.hexdigest()[: max(len(version), 16)]
    return PinglistModel(
        version=version,
        server=pinglist.server,
        address=pinglist.address,
        timeout_s=pinglist.timeout_s,
        peers=tuple(
            PeerModel(
                name=p.name,
                address=p.address,
                port=_spec_port(spec, p.port),
                kind=spec.kind,
                scope=p.scope,
                interval_s=spec.interval_s if spec.interval_s is not None else p.interval_s,
                size_bytes=spec.size_bytes,
            )
            for p in pinglist.peers
            for spec in specs
        ),
        truncated=pinglist.truncated,
    )


def _spec_port(spec: ProbeSpecConfig, echo_port: int) -> int:
    """Where a kind is answered: the spec's port, else the agents' port for that kind."""
    if spec.kind is ProbeKind.ICMP:
        return 0
    if spec.port is not None:
        return spec.port
    if spec.kind in (ProbeKind.TCP, ProbeKind.TCP_ECHO, ProbeKind.UDP):
        return echo_port  # the pinglist's port: the agents' TCP and UDP echo responder
    return DEFAULT_PORTS[spec.kind]


class PinglistService:
    """Serves the pinglist of any server of the topology that ``source`` holds.

    Thread-safe: FastAPI runs synchronous routes on a thread pool. Documents are built outside
    the lock (two threads may build the same one; both get identical results).
    """

    def __init__(
        self, source: TopologySource, config: PinglistConfig, *, max_cached: int = 4096
    ) -> None:
        if max_cached < 1:
            raise ValueError(f"max_cached: {max_cached} must be at least 1")
        self._source = source
        self._config = config
        self._max_cached = max_cached
        self._lock = threading.Lock()
        self._digest = ""
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._served = 0
        self._not_modified = 0
        self._unknown = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @property
    def config(self) -> PinglistConfig:
        """How pinglists are built."""
        return self._config

    def pinglist(self, server: str) -> PinglistModel:
        """The wire pinglist of ``server`` (a name, or else an address).

        Raises :class:`~pingmesh.errors.UnknownServerError` if the topology names neither.
        """
        return self._entry(server).model

    def fetch(self, server: str, *, cached_versions: Collection[str] = ()) -> PinglistFetch:
        """One conditional fetch, as an agent makes it.

        ``cached_versions`` are the versions the client already holds (``If-None-Match``);
        ``"*"`` matches any. Counts the answer for :meth:`statistics`. Raises
        :class:`~pingmesh.errors.UnknownServerError` like :meth:`pinglist`.
        """
        entry = self._entry(server)
        version = entry.model.version
        unchanged = version in cached_versions or "*" in cached_versions
        with self._lock:
            if unchanged:
                self._not_modified += 1
            else:
                self._served += 1
        return PinglistFetch(
            name=entry.model.server,
            address=entry.model.address,
            version=version,
            body=None if unchanged else entry.body,
        )

    def statistics(self) -> ControllerStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return ControllerStatistics(
                served_total=self._served,
                not_modified_total=self._not_modified,
                unknown_total=self._unknown,
                cache_hits_total=self._hits,
                cache_misses_total=self._misses,
                cache_evictions_total=self._evictions,
                cache_size=len(self._cache),
                cache_capacity=self._max_cached,
                topology_digest=self._source.digest,
                topology_servers=len(self._source.topology.servers),
            )

    def _entry(self, server: str) -> _Entry:
        # Read the digest before the topology: TopologySource installs a new topology before
        # its digest, so we may pair an old digest with a new topology (the next call sees the
        # new digest and rebuilds) but never a new digest with an old topology, which would
        # keep a stale document cached. Versions are digests of content either way.
        digest = self._source.digest
        topology = self._source.topology
        try:
            name = find_server(topology, server).name
        except UnknownServerError:
            with self._lock:
                self._unknown += 1
            raise
        with self._lock:
            if digest != self._digest:
                self._digest = digest
                self._cache.clear()
            entry = self._cache.get(name)
            if entry is not None:
                self._cache.move_to_end(name)
                self._hits += 1
                return entry
            self._misses += 1
        cfg = self._config
        model = to_wire(
            generate_pinglist(
                topology,
                name,
                interval_s=cfg.interval_s,
                timeout_s=cfg.timeout_s,
                max_peers=cfg.max_peers,
                inter_dc_per_podset=cfg.inter_dc_per_podset,
                port=cfg.port,
            ),
            cfg.probes,
        )
        entry = _Entry(model, model.model_dump_json().encode())
        with self._lock:
            if digest == self._digest:
                self._cache[name] = entry
                self._cache.move_to_end(name)
                while len(self._cache) > self._max_cached:
                    self._cache.popitem(last=False)
                    self._evictions += 1
        return entry
