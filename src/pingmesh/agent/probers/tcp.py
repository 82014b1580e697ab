"""TCP connect probe: the SYN / SYN-ACK round trip over a fresh connection (PM §3.4.1).

Theory of operation
-------------------
Every probe opens a new non-blocking socket; the kernel picks a fresh source port, so
successive probes explore different ECMP paths (PM §3.4.1). The port is read right after the
``connect`` call (which assigns it), so a *failed* probe has its 5-tuple too, which is exactly
what black-hole detection needs (PM §5.1); bound to the wildcard address, a failed probe names
the source address the kernel routes from.

The RTT comes from two clocks. The kernel's smoothed RTT (``tcpi_rtt`` of ``TCP_INFO``) after
the handshake is the SYN / SYN-ACK sample itself, free of event-loop delay; the monotonic clock
around ``connect`` is kept as ``rtt_clock_us`` so the two can be compared, and their difference
is the time the answer waited for us (``recv_lag_us``). Lost SYNs are read from
``tcpi_total_retrans`` instead of being guessed from the connect time (PM §4.2 infers them from
3 s / 9 s marks on Windows; on Linux the marks are 1 s / 3 s / 7 s, or 1 s apart with
``net.ipv4.tcp_syn_linear_timeouts``, so counting is the robust way). When a SYN was
retransmitted and the kernel has no RTT sample (Karn's rule, no timestamps), ``rtt_us`` falls
back to the clock, which then includes the retransmission timeout, as in Pingmesh.

A probe cannot hang: a timer bounds it (3.5 s by default: room for the Linux SYN
retransmissions at 1 s and 3 s), and ``TCP_SYNCNT`` caps the kernel's own SYN retries so a socket
never outlives the probe by two minutes (``tcp_syn_retries`` = 6 is ~127 s). The socket is
closed with ``SO_LINGER`` 0: the kernel answers with RST instead of going through FIN and
TIME_WAIT, so thousands of probes a second leave no TIME_WAIT pile-up on either side.

The probe runs on event-loop callbacks (see :mod:`pingmesh.agent.probers`), and at thousands
of probes a second their bookkeeping matters as much as the system calls, so the prober keeps
its own: its sockets sit in a private ``epoll`` set (registered one-shot for "writable"; a
closed socket leaves the set by itself), and that set's one descriptor is all the event loop
watches. Timeouts share one timer (:class:`~pingmesh.agent.probers.deadlines.Deadlines`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket

from pingmesh.agent.probers import OnDone, Peer, StartingProber
from pingmesh.agent.probers.deadlines import Deadlines
from pingmesh.agent.probers.kernel import (
    LINGER_RST,
    TCP_INFO_BYTES,
    WILDCARDS,
    TcpInfo,
    address_family,
    errno_name,
    outcome_for_errno,
    parse_tcp_info,
    read_tcp_info,
    source_for,
    syn_retries_for,
    wildcard_for,
)
from pingmesh.clock import Clock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult

__all__ = [
    "TCP_INFO_BYTES",
    "TcpConnectProber",
    "TcpInfo",
    "errno_name",
    "outcome_for_errno",
    "parse_tcp_info",
    "syn_retries_for",
]

TCP_ESTABLISHED = 1  # include/net/tcp_states.h
TCP_SYN_SENT = 2
_SYNCNT_CACHE: dict[float, int] = {}


def _syncnt(timeout_s: float) -> int:
    value = _SYNCNT_CACHE.get(timeout_s)
    if value is None:
        value = _SYNCNT_CACHE[timeout_s] = syn_retries_for(timeout_s)
    return value


class _ConnectProbe:
    """One TCP connect probe in flight (see the module docstring)."""

    __slots__ = (
        "_fd",
        "_on_done",
        "_peer",
        "_prober",
        "_send_lag_us",
        "_settled",
        "_sock",
        "_src_addr",
        "_src_port",
        "_start_ns",
        "_time_ns",
        "_timeout_s",
    )

    def __init__(
        self,
        prober: TcpConnectProber,
        peer: Peer,
        timeout_s: float,
        on_done: OnDone,
        send_lag_us: float | None,
    ) -> None:
        self._prober = prober
        self._peer = peer
        self._timeout_s = timeout_s
        self._on_done = on_done
        self._send_lag_us = send_lag_us
        self._sock: socket.socket | None = None
        self._fd = -1
        self._src_addr = prober.bind_addr
        self._src_port = 0
        self._time_ns = 0
        self._start_ns = 0
        self._settled = False

    def begin(self) -> None:
        peer, prober = self._peer, self._prober
        clock = prober.clock
        self._time_ns = round(clock.now_s() * 1e9)
        family = address_family(peer.address)
        if family is None:
            self._finish(
                Outcome.ERROR, detail=f"peer address {peer.address!r} is not an IP address"
            )
            return
        bind_addr = wildcard_for(family, prober.bind_addr)
        self._src_addr = bind_addr
        try:
            # Non-blocking from birth: no extra ioctl per probe.
            sock = self._sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, _syncnt(self._timeout_s))
            if bind_addr not in WILDCARDS:
                # A wildcard bind would cost a port search that connect() does anyway.
                sock.bind((bind_addr, 0))
            self._start_ns = clock.monotonic_ns()
            code = sock.connect_ex((peer.address, peer.port))
            if code in (errno.EINPROGRESS, 0):
                self._src_addr, self._src_port = sock.getsockname()[:2]
        except OSError as exc:
            self._fail(exc.errno, exc.strerror or str(exc))
            return
        if code == errno.EINPROGRESS:
            self._fd = sock.fileno()
            prober._watch(self)
        elif code == 0:
            self._on_writable()
        else:
            self._fail(code, None)

    def cancel(self) -> None:
        self._settled = True
        self._release()

    def abandon(self, detail: str) -> None:
        self._finish(Outcome.ERROR, detail=detail)

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        clock_us = (self._prober.clock.monotonic_ns() - self._start_ns) / 1000
        info = read_tcp_info(sock)
        # ESTABLISHED says the handshake succeeded; only otherwise ask why (one syscall saved).
        if info is None or info.state != TCP_ESTABLISHED:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(code, None)
                return
        if info is not None and info.rtt_us > 0:
            rtt_us = float(info.rtt_us)
            lag_us = max(0.0, clock_us - rtt_us) if info.total_retrans == 0 else None
            self._finish(
                Outcome.OK,
                rtt_us=rtt_us,
                rtt_clock_us=clock_us,
                retransmits=info.total_retrans,
                recv_lag_us=lag_us,
            )
        else:
            self._finish(
                Outcome.OK,
                rtt_us=clock_us,
                rtt_clock_us=clock_us,
                retransmits=info.total_retrans if info is not None else 0,
                detail="no kernel RTT sample; clock RTT",
            )

    def _on_timeout(self) -> None:
        sock = self._sock
        if sock is None:
            return
        info = read_tcp_info(sock)
        if info is None or info.state != TCP_SYN_SENT:
            # The kernel has its verdict (connected or refused) and only a busy event loop kept
            # it from us: it wins, with the kernel's RTT, rather than a false timeout.
            self._on_writable()
            return
        retrans = info.total_retrans
        self._src_addr = self._failed_source()
        self._finish(
            Outcome.TIMEOUT,
            retransmits=retrans,
            detail=f"no answer within {self._timeout_s:g} s ({retrans} SYN retransmissions)",
        )

    def _fail(self, code: int | None, strerror: str | None) -> None:
        info = read_tcp_info(self._sock) if self._sock is not None else None
        retrans = info.total_retrans if info is not None else 0
        if self._src_port:
            self._src_addr = self._failed_source()
        if code == errno.ETIMEDOUT:
            detail = f"ETIMEDOUT: the kernel gave up after {retrans} SYN retransmissions"
        else:
            detail = f"{errno_name(code)}: {strerror or (os.strerror(code) if code else '')}"
        self._finish(outcome_for_errno(code), retransmits=retrans, detail=detail)

    def _failed_source(self) -> str:
        # Bound to the wildcard, a failed connect leaves no source address on the socket; the
        # 5-tuple of a failed probe is the evidence of a black hole (PM §5.1), so look it up.
        peer = self._peer
        family = address_family(peer.address) or socket.AF_INET
        return source_for(self._src_addr, family, peer.address, peer.port)

    def _finish(
        self,
        outcome: Outcome,
        *,
        rtt_us: float | None = None,
        rtt_clock_us: float | None = None,
        retransmits: int = 0,
        recv_lag_us: float | None = None,
        detail: str = "",
    ) -> None:
        self._release()
        if self._settled:
            return
        self._settled = True
        peer = self._peer
        self._on_done(
            ProbeResult(
                time_ns=self._time_ns,
                src_addr=self._src_addr,
                src_port=self._src_port,
                dst=peer.name,
                dst_addr=peer.address,
                dst_port=peer.port,
                kind=ProbeKind.TCP,
                scope=peer.scope,
                outcome=outcome,
                rtt_us=rtt_us,
                rtt_clock_us=rtt_clock_us,
                retransmits=retransmits,
                detail=detail,
                send_lag_us=self._send_lag_us,
                recv_lag_us=recv_lag_us,
            )
        )

    def _release(self) -> None:
        if self._fd >= 0:
            self._prober._unwatch(self)
            self._fd = -1
        if self._sock is not None:
            self._sock.close()  # a closed socket also leaves the epoll set
            self._sock = None


class TcpConnectProber(StartingProber):
    """Measures the TCP handshake RTT to a peer; see the module docstring."""

    def __init__(self, *, bind_addr: str = "0.0.0.0", clock: Clock) -> None:
        self.bind_addr = bind_addr
        self.clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._epoll: select.epoll | None = None
        self._waiting: Deadlines[int, _ConnectProbe] = Deadlines(
            clock=clock, on_expire=lambda _, probe: probe._on_timeout(), drain=self._on_ready
        )

    @property
    def kind(self) -> ProbeKind:
        return ProbeKind.TCP

    def _new_probe(
        self, peer: Peer, timeout_s: float, on_done: OnDone, send_lag_us: float | None
    ) -> _ConnectProbe:
        return _ConnectProbe(self, peer, timeout_s, on_done, send_lag_us)

    def close(self) -> None:
        """Cancel the probes still waiting and close the private epoll set."""
        for probe in self._waiting.values():
            probe.cancel()
        self._waiting.clear()
        epoll, self._epoll = self._epoll, None
        if epoll is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(epoll.fileno())
            epoll.close()

    def _watch(self, probe: _ConnectProbe) -> None:
        epoll = self._epoll
        if epoll is None:
            self._loop = asyncio.get_running_loop()
            epoll = self._epoll = select.epoll()
            self._loop.add_reader(epoll.fileno(), self._on_ready)
        epoll.register(probe._fd, select.EPOLLOUT | select.EPOLLONESHOT)
        self._waiting.add(probe._fd, probe, probe._timeout_s)

    def _unwatch(self, probe: _ConnectProbe) -> None:
        if self._waiting.get(probe._fd) is probe:
            self._waiting.pop(probe._fd)

    def _on_ready(self) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        for fd, _ in epoll.poll(0, 1024):
            probe = self._waiting.get(fd)
            if probe is not None:
                probe._on_writable()
