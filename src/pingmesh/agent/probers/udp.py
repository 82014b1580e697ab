"""UDP echo probe: one sequence-numbered datagram, echoed by the peer's responder.

Theory of operation
-------------------
UDP gives what a TCP handshake hides: *direct* loss (no retransmission masks it), duplicates
and reordering, measured per datagram (NetNORAD's UdpPinger, reference §3.1 and §4).

- **Source ports.** A TCP probe gets a fresh source port from the kernel; a UDP prober keeps a
  set of bound sockets instead, one per source port, sized by the coupon-collector rule so that
  the 5-tuples it uses cover every ECMP path with the configured probability
  (:func:`~pingmesh.core.schedule.source_ports_for_paths`: 16 paths, 99 % → 115 ports;
  reference §6.1 item 3). Each peer walks the whole set in turn from a random offset, so every
  pair of agents explores every port, and a fraction of the set (20 % an hour by default) is
  replaced by fresh ports so that the whole 5-tuple space is scanned slowly (type-2 black
  holes hit only some 5-tuples, PM §5.1). A socket is replaced only while no probe awaits an
  answer on it.
- **Matching.** Every datagram carries a sequence number that is unique for this prober; a
  reply is matched by it (and must come from the peer probed). A reply for a sequence number
  already answered is a **duplicate**; one for a probe that already timed out is **late** (the
  probe counted as lost was delayed, not dropped); a reply older than one already received
  from the same peer is **reordered**. These are counted (:meth:`UdpEchoProber.statistics`),
  and a reordered probe says so in its detail.
- **Timing.** The send time is taken right before ``sendto`` and the answer is stamped by the
  kernel on arrival (``SO_TIMESTAMPNS``), so the agent's own event-loop delay on the way back
  is not in the RTT; it is reported as ``recv_lag_us``. The responder's dwell (carried in the
  reply) is subtracted: ``rtt_us`` is the network's share, ``rtt_clock_us`` the whole wait.
- **Errors.** With ``IP_RECVERR`` the kernel queues ICMP errors about our datagrams; the
  queued entry carries the datagram, hence its sequence number, so "port unreachable"
  (``refused``: host up, responder down) and "host unreachable" reach the right probe.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import random
import socket
from dataclasses import dataclass
from typing import Any

from pingmesh.agent.echo_wire import UDP_REPLY, parse_udp, udp_request, udp_size
from pingmesh.agent.probers import OnDone, Peer
from pingmesh.agent.probers.datagram import (
    DatagramProbe,
    DatagramProber,
    read_datagrams,
    read_error_queue,
)
from pingmesh.agent.probers.kernel import (
    IP_RECVERR,
    address_family,
    enable_rx_timestamps,
    parse_extended_error,
    wildcard_for,
)
from pingmesh.clock import Clock
from pingmesh.core.probe import MAX_UDP_PAYLOAD_BYTES, Outcome, ProbeKind, ProbeResult

_RECV_BYTES = MAX_UDP_PAYLOAD_BYTES + 1
_RECENT = 8192  # sequence numbers remembered after their probe ended (dup / late detection)
_PER_PEER_CAP = 65536
_ICMP_ERRNOS = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)


@dataclass(frozen=True, slots=True, kw_only=True)
class UdpProberStatistics:
    """A snapshot of the UDP prober's counters."""

    source_ports: int  # sockets open now
    sent: int
    answered: int
    lost: int  # timed out
    duplicates: int
    reordered: int
    late: int  # answers that came after their probe timed out
    stray: int  # datagrams that matched no probe of ours
    corrupted: int  # echoes whose padding differed from what we sent
    rotations: int  # source ports replaced by fresh ones


class _PortSocket:
    __slots__ = ("fd", "outstanding", "port", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.port: int = sock.getsockname()[1]
        self.outstanding = 0


class _UdpProbe(DatagramProbe["UdpEchoProber"]):
    __slots__ = ("port_socket",)

    def __init__(
        self,
        prober: UdpEchoProber,
        peer: Peer,
        timeout_s: float,
        on_done: OnDone,
        send_lag_us: float | None,
    ) -> None:
        super().__init__(prober, peer, timeout_s, on_done, send_lag_us)
        self.port_socket: _PortSocket | None = None

    def _result(self, outcome: Outcome, fields: dict[str, Any]) -> ProbeResult:
        peer = self.peer
        port_socket = self.port_socket
        return ProbeResult(
            time_ns=self.time_ns,
            src_addr=self._prober._sources.lookup(peer.address, peer.port),
            src_port=port_socket.port if port_socket is not None else 0,
            dst=peer.name,
            dst_addr=peer.address,
            dst_port=peer.port,
            kind=ProbeKind.UDP,
            scope=peer.scope,
            outcome=outcome,
            size_bytes=self.size,
            seq=self.seq,
            send_lag_us=self._send_lag_us,
            **fields,
        )


class UdpEchoProber(DatagramProber[_UdpProbe]):
    """Probes peers with UDP echo datagrams; see the module docstring."""

    def __init__(
        self,
        *,
        bind_addr: str = "0.0.0.0",
        clock: Clock,
        rng: random.Random,
        source_ports: int = 115,
        rotate_fraction_per_hour: float = 0.2,
    ) -> None:
        if source_ports < 1:
            raise ValueError(f"source_ports: {source_ports} is not >= 1")
        if not 0 <= rotate_fraction_per_hour < float("inf"):
            raise ValueError(f"rotate_fraction_per_hour: {rotate_fraction_per_hour} is not >= 0")
        super().__init__(bind_addr=bind_addr, clock=clock)
        self._rng = rng
        self.source_ports = source_ports
        self._rotate_every_ns = (
            round(3600e9 / (rotate_fraction_per_hour * source_ports))
            if rotate_fraction_per_hour > 0
            else None
        )
        self._pools: dict[int, list[_PortSocket]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_rotation_ns: int | None = None
        self._rotation_index = 0
        self._seq = rng.getrandbits(32)
        # seq -> True (answered) / False (timed out), for duplicates and late answers.
        self._recent: collections.OrderedDict[int, bool] = collections.OrderedDict()
        self._next_port: dict[tuple[str, int], int] = {}
        self._highest: dict[tuple[str, int], int] = {}
        self._duplicates = 0
        self._reordered = 0
        self._late = 0
        self._corrupted = 0
        self._rotations = 0

    @property
    def kind(self) -> ProbeKind:
        return ProbeKind.UDP

    def _new_probe(
        self, peer: Peer, timeout_s: float, on_done: OnDone, send_lag_us: float | None
    ) -> _UdpProbe:
        probe = _UdpProbe(self, peer, timeout_s, on_done, send_lag_us)
        probe.size = udp_size(peer.size_bytes)
        return probe

    def _close_sockets(self) -> None:
        for pool in self._pools.values():
            for port_socket in pool:
                self._close_socket(port_socket)
        self._pools.clear()
        self._next_rotation_ns = None

    def statistics(self) -> UdpProberStatistics:
        """A snapshot of the counters."""
        return UdpProberStatistics(
            source_ports=sum(len(pool) for pool in self._pools.values()),
            sent=self._sent,
            answered=self._answered,
            lost=self._lost,
            duplicates=self._duplicates,
            reordered=self._reordered,
            late=self._late,
            stray=self._stray,
            corrupted=self._corrupted,
            rotations=self._rotations,
        )

    # -- sending ----------------------------------------------------------------------------

    def _send(self, probe: _UdpProbe) -> None:
        peer = probe.peer
        family = address_family(peer.address)
        if family is None:
            probe.finish(
                Outcome.ERROR, detail=f"peer address {peer.address!r} is not an IP address"
            )
            return
        pool = self._pool(family)
        key = (peer.address, peer.port)
        index = self._next_port.get(key)
        if index is None:
            if len(self._next_port) >= _PER_PEER_CAP:
                self._next_port.clear()
            index = self._rng.randrange(len(pool))
        self._next_port[key] = index + 1
        port_socket = pool[index % len(pool)]
        self._seq = (self._seq + 1) & 0xFFFF_FFFF_FFFF_FFFF
        probe.seq = seq = self._seq
        probe.port_socket = port_socket
        # The datagram first, the send time last: right before the system call.
        datagram = udp_request(seq, self._clock_real_ns(), probe.size)
        probe.send_mono_ns = self._clock.monotonic_ns()
        probe.send_real_ns = self._clock_real_ns()
        try:
            try:
                port_socket.sock.sendto(datagram, key)
            except OSError as exc:
                if exc.errno not in _ICMP_ERRNOS:
                    raise
                # A pending ICMP error of an earlier probe (it is on the error queue, where
                # that probe will find it) is reported by the next send: send again.
                port_socket.sock.sendto(datagram, key)
        except OSError as exc:
            probe.fail(exc)
            return
        port_socket.outstanding += 1
        self._sent_waiting(seq, probe)
        self._maybe_rotate(family)

    def _clock_real_ns(self) -> int:
        return round(self._clock.now_s() * 1e9)

    def _pool(self, family: int) -> list[_PortSocket]:
        pool = self._pools.get(family)
        if pool is None:
            pool = []
            try:
                for _ in range(self.source_ports):
                    pool.append(self._open(family))
            except BaseException:
                for port_socket in pool:
                    self._close_socket(port_socket)
                raise
            self._pools[family] = pool
            if self._rotate_every_ns is not None and self._next_rotation_ns is None:
                self._next_rotation_ns = self._clock.monotonic_ns() + self._rotate_every_ns
        return pool

    def _open(self, family: int) -> _PortSocket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.settimeout(0.0)
            enable_rx_timestamps(sock)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            sock.bind((wildcard_for(family, self.bind_addr), 0))
            port_socket = _PortSocket(sock)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(port_socket.fd, self._on_readable, port_socket)
        except BaseException:
            sock.close()
            raise
        return port_socket

    def _maybe_rotate(self, family: int) -> None:
        if self._next_rotation_ns is None or self._rotate_every_ns is None:
            return
        now_ns = self._clock.monotonic_ns()
        if now_ns < self._next_rotation_ns:
            return
        pool = self._pools[family]
        index = self._rotation_index % len(pool)
        old = pool[index]
        if old.outstanding:
            return  # its answers are still due; try again at the next probe
        self._close_socket(old)
        pool[index] = self._open(family)
        self._rotations += 1
        self._rotation_index += 1
        self._next_rotation_ns = now_ns + self._rotate_every_ns

    def _close_socket(self, port_socket: _PortSocket) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(port_socket.fd)
        port_socket.sock.close()

    # -- receiving --------------------------------------------------------------------------

    def _on_readable(self, port_socket: _PortSocket) -> None:
        sock = port_socket.sock
        read_error_queue(sock, _RECV_BYTES, self._on_error)
        read_datagrams(sock, _RECV_BYTES, self._on_datagram)

    def _on_error(self, data: bytes, ancillary: list[tuple[int, int, bytes]]) -> None:
        error = parse_extended_error(ancillary)
        echo = parse_udp(data)
        if error is None or echo is None:
            return
        probe = self._outstanding.get(echo.seq)
        if probe is None:
            return
        self._forget(probe, answered=False)
        probe.finish(error.outcome, detail=error.describe())

    def _on_datagram(
        self, data: bytes, ancillary: list[tuple[int, int, bytes]], source: tuple[str, int]
    ) -> None:
        now_real_ns = self._clock_real_ns()
        now_mono_ns = self._clock.monotonic_ns()
        echo = parse_udp(data)
        if echo is None or echo.flag != UDP_REPLY:
            self._stray += 1
            return
        probe = self._outstanding.get(echo.seq)
        if probe is None:
            answered = self._recent.get(echo.seq)
            if answered is True:
                self._duplicates += 1
            elif answered is False:
                self._late += 1
                self._recent[echo.seq] = True  # a second copy now is a duplicate
            else:
                self._stray += 1
            return
        peer = probe.peer
        if (source[0], source[1]) != (peer.address, peer.port):
            self._stray += 1
            return
        self._forget(probe, answered=True)
        self._answered += 1
        if not echo.intact or len(data) != probe.size:
            self._corrupted += 1
            probe.finish(
                Outcome.BAD_REPLY,
                detail=f"echo of {len(data)} bytes differs from the {probe.size} sent",
            )
            return
        key = (peer.address, peer.port)
        highest = self._highest.get(key, -1)
        reordered = echo.seq < highest
        if reordered:
            self._reordered += 1
        else:
            if len(self._highest) >= _PER_PEER_CAP:
                self._highest.clear()
            self._highest[key] = echo.seq
        probe.answered(
            ancillary,
            now_real_ns,
            now_mono_ns,
            dwell_us=echo.dwell_ns / 1000,
            detail="reordered" if reordered else "",
        )

    def _drain(self) -> None:
        # Before declaring timeouts: an echo may wait in a socket, unread only because the
        # event loop was busy. Read it first (its kernel timestamp still gives the true RTT).
        for pool in self._pools.values():
            for port_socket in pool:
                if port_socket.outstanding:
                    self._on_readable(port_socket)

    def _on_expired(self, seq: int, probe: _UdpProbe) -> None:
        # Deadlines has already taken it out of the table; settle the rest of the books.
        self._settle(probe, answered=False)
        self._lost += 1
        probe.finish(Outcome.TIMEOUT, detail=f"no echo within {probe.timeout_s:g} s")

    def _forget(self, probe: _UdpProbe, *, answered: bool | None = None) -> None:
        """Take ``probe`` off the books; remember its seq as answered / timed out."""
        if self._outstanding.get(probe.seq) is not probe:
            return
        self._outstanding.pop(probe.seq)
        self._settle(probe, answered=answered)

    def _settle(self, probe: _UdpProbe, *, answered: bool | None) -> None:
        if probe.port_socket is not None:
            probe.port_socket.outstanding -= 1
        if answered is not None:
            self._recent[probe.seq] = answered
            if len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
