"""TCP traceroute that keeps a probe's 5-tuple, so it shows the path that probe took.

Theory of operation
-------------------
In an ECMP fabric each 5-tuple hashes onto one path; a plain traceroute (ICMP, or UDP with
changing ports) explores other paths than the failing probe's. To localise a black hole or a
silent drop, the trace must reuse the failing probe's source port, destination address and
port (PM §5; 007 and R-Pingmesh trace the flows of anomalous probes; fbtracert; reference
§6.1 item 13e). For TTL = 1, 2, … the tracer:

1. opens a fresh TCP socket bound to the *same* source port (``SO_REUSEADDR``; the previous
   hop's socket is already gone: it failed, or was closed with RST by ``SO_LINGER`` 0, so no
   TIME_WAIT blocks the port), sets ``IP_TTL`` and ``IP_RECVERR``, and sends its SYN with a
   non-blocking ``connect``;
2. a router where the TTL runs out answers "time exceeded"; Linux aborts a connecting socket
   on that ICMP error (``tcp_v4_err``: EHOSTUNREACH in SYN_SENT) and, with ``IP_RECVERR``,
   queues it on the error queue with the router's address (``SO_EE_OFFENDER``). No raw socket
   and no privilege are needed;
3. a SYN-ACK (connect succeeds) or a RST (refused) means the destination itself answered:
   the trace has reached it; silence for ``hop_timeout_s`` is a hop that does not answer.

The trace stops at the destination, after ``max_hops``, or after ``max_silent`` silent hops in
a row. Each hop's RTT is the monotonic clock from ``connect`` to the answer.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass

from pingmesh.agent.probers.kernel import (
    ANCILLARY_BYTES,
    IP_RECVERR,
    LINGER_RST,
    SO_EE_ORIGIN_ICMP,
    describe_os_error,
    errno_name,
    parse_extended_error,
)
from pingmesh.clock import Clock


@dataclass(frozen=True, slots=True, kw_only=True)
class HopAnswer:
    """One TTL step of a trace."""

    ttl: int
    address: str | None  # who answered; None: nobody within the hop timeout
    rtt_us: float | None
    reached: bool  # the destination itself answered
    unreachable: bool = False  # an ICMP unreachable ended the trace here


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """A whole trace of one 5-tuple."""

    src_addr: str
    src_port: int
    hops: tuple[HopAnswer, ...]
    reached: bool
    detail: str


class TcpTraceroute:
    """Traces the path of a TCP 5-tuple; see the module docstring (IPv4)."""

    def __init__(
        self,
        *,
        bind_addr: str = "0.0.0.0",
        clock: Clock,
        hop_timeout_s: float = 1.0,
        max_silent: int = 4,
    ) -> None:
        if not hop_timeout_s > 0:
            raise ValueError(f"hop_timeout_s: {hop_timeout_s} is not > 0")
        self.bind_addr = bind_addr
        self._clock = clock
        self._hop_timeout_s = hop_timeout_s
        self._max_silent = max_silent

    async def trace(
        self, dst_addr: str, dst_port: int, *, src_port: int | None, max_hops: int
    ) -> Trace:
        """Trace ``dst_addr:dst_port`` from ``src_port`` (``None``: any, kept for every hop)."""
        hops: list[HopAnswer] = []
        port = src_port or 0
        src_addr = self.bind_addr
        silent = 0
        reached = False
        detail = f"not reached within {max_hops} hops"
        for ttl in range(1, max_hops + 1):
            try:
                hop, src_addr, port = await self._hop(dst_addr, dst_port, port, ttl)
            except OSError as exc:
                detail = f"ttl {ttl}: {describe_os_error(exc)}"
                if exc.errno == errno.EADDRINUSE:
                    detail = f"source port {port} is in use: {detail}"
                break
            hops.append(hop)
            if hop.reached:
                reached, detail = True, ""
                break
            if hop.unreachable:
                detail = f"unreachable, said {hop.address} at ttl {ttl}"
                break
            silent = silent + 1 if hop.address is None else 0
            if silent >= self._max_silent:
                detail = f"{silent} silent hops in a row"
                break
        return Trace(
            src_addr=src_addr, src_port=port, hops=tuple(hops), reached=reached, detail=detail[:200]
        )

    async def _hop(
        self, dst_addr: str, dst_port: int, port: int, ttl: int
    ) -> tuple[HopAnswer, str, int]:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
            sock.bind((self.bind_addr, port))
            src_addr, port = sock.getsockname()[:2]
            start_ns = self._clock.monotonic_ns()
            code = sock.connect_ex((dst_addr, dst_port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, errno_name(code))
            if code == errno.EINPROGRESS:
                ready: asyncio.Future[None] = loop.create_future()
                fd = sock.fileno()

                def wake() -> None:
                    if not ready.done():
                        ready.set_result(None)

                loop.add_writer(fd, wake)
                try:
                    async with asyncio.timeout(self._hop_timeout_s):
                        await ready
                except TimeoutError:
                    return (
                        HopAnswer(ttl=ttl, address=None, rtt_us=None, reached=False),
                        src_addr,
                        port,
                    )
                finally:
                    loop.remove_writer(fd)
            rtt_us = (self._clock.monotonic_ns() - start_ns) / 1000
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error in (0, errno.ECONNREFUSED):
                return (
                    HopAnswer(ttl=ttl, address=dst_addr, rtt_us=rtt_us, reached=True),
                    src_addr,
                    port,
                )
            try:
                _, ancillary, _, _ = sock.recvmsg(512, ANCILLARY_BYTES, socket.MSG_ERRQUEUE)
            except OSError:
                ancillary = []
            extended = parse_extended_error(ancillary)
            if extended is None or extended.origin != SO_EE_ORIGIN_ICMP:
                return HopAnswer(ttl=ttl, address=None, rtt_us=None, reached=False), src_addr, port
            # Time exceeded (type 11): a router on the way. Unreachable (type 3) from the
            # destination itself also ends the trace.
            unreachable = extended.icmp_type == 3
            reached = unreachable and extended.offender == dst_addr
            return (
                HopAnswer(
                    ttl=ttl,
                    address=extended.offender,
                    rtt_us=rtt_us,
                    reached=reached,
                    unreachable=unreachable and not reached,
                ),
                src_addr,
                port,
            )
