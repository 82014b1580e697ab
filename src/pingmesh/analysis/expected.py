"""What the pinglists promise: the pairs each server should report (for coverage).

Coverage is the share of expected pairs that reported in a window (reference §6.1 item 15:
RD-Probe's 80.9 % → 99.5 % shows it must be measured, not assumed). The expected pairs are the
controller's pinglists, rebuilt here from the same topology and pinglist config; they are
computed once per topology (a new topology object is a reload) and counted per source and
destination DC, which is all the SLA scopes need.
"""

from __future__ import annotations

import threading

from pingmesh.analysis.engine import Expected, members_of
from pingmesh.config import PinglistConfig
from pingmesh.core.pinglist import generate_pinglist
from pingmesh.core.topology import Topology


def expected_pairs(topology: Topology, config: PinglistConfig) -> Expected:
    """The pairs of every server's pinglist, counted per (server, destination DC)."""
    rows: list[tuple[str, str, str, str, str, int]] = []
    dc_of = {s.name: s.dc for s in topology.servers}
    for server in topology.servers:
        pinglist = generate_pinglist(
            topology,
            server.name,
            interval_s=config.interval_s,
            timeout_s=config.timeout_s,
            max_peers=config.max_peers,
            inter_dc_per_podset=config.inter_dc_per_podset,
            port=config.port,
        )
        per_dc: dict[str, int] = {}
        for peer in pinglist.peers:
            dst_dc = dc_of.get(peer.name)
            if dst_dc is not None:
                per_dc[dst_dc] = per_dc.get(dst_dc, 0) + 1
        for dst_dc, n in sorted(per_dc.items()):
            rows.append((server.name, server.tor, server.podset, server.dc, dst_dc, n))
    return Expected(rows=tuple(rows), members=members_of(topology))


class ExpectedCache:
    """:func:`expected_pairs` of the newest topology, computed once per topology object."""

    def __init__(self, config: PinglistConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._topology: Topology | None = None
        self._expected = Expected.empty()

    def get(self, topology: Topology) -> Expected:
        """The expected pairs of ``topology``."""
        with self._lock:
            if self._topology is topology:
                return self._expected
        expected = expected_pairs(topology, self._config)
        with self._lock:
            self._topology, self._expected = topology, expected
        return expected
