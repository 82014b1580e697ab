"""The UDP echo responder: answers other agents' UDP probes on port 9781.

Theory of operation
-------------------
A request (see :mod:`pingmesh.agent.echo_wire`) is answered by the same datagram with the
reply flag set and the responder's *dwell* filled in: from the kernel's receive timestamp
(``SO_TIMESTAMPNS``) to the moment right before ``sendto``. The dwell therefore includes any
time the datagram waited for our event loop, which is exactly the host noise that the prober
must not blame on the network (reference §5: "record the responder dwell time in the echo
payload, as NetNORAD and R-Pingmesh do").

It faces the whole fleet, so it is bounded in every direction:

- a reply is never larger than its request (no amplification) and only well-formed requests
  are answered (anything else is counted as malformed and dropped);
- each source address has its own rate cap
  (:class:`~pingmesh.core.schedule.PerSourceLimiter`, bounded memory) and all sources
  together a global one; excess requests are dropped and counted;
- one wake-up reads at most a fixed number of datagrams, so a flood cannot starve the rest
  of the agent; the kernel's socket buffer bounds what waits, and drops what does not fit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass

from pingmesh.agent.echo_wire import UDP_REQUEST, parse_udp, udp_reply_into
from pingmesh.agent.probers.kernel import ANCILLARY_BYTES, enable_rx_timestamps, rx_timestamp_ns
from pingmesh.core.probe import MAX_UDP_PAYLOAD_BYTES
from pingmesh.core.schedule import PerSourceLimiter, TokenBucket

logger = logging.getLogger(__name__)

_MAX_READS_PER_WAKEUP = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class UdpResponderStatistics:
    """A snapshot of the UDP responder's counters."""

    received: int
    answered: int
    malformed: int
    rate_limited: int  # per-source or global cap
    send_errors: int


class UdpResponder:
    """Echoes UDP probes on ``(bind, port)``; see the module docstring."""

    def __init__(
        self,
        *,
        bind: str,
        port: int,
        per_source_rate: float = 200.0,
        global_rate: float = 20_000.0,
        max_sources: int = 4096,
    ) -> None:
        self.bind = bind
        self.port = port
        self._per_source = PerSourceLimiter[str](
            rate_per_s=per_source_rate,
            burst=max(1, int(per_source_rate)),
            max_sources=max_sources,
        )
        self._global = TokenBucket(rate_per_s=global_rate, burst=max(1, int(global_rate / 10)))
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._received = 0
        self._answered = 0
        self._malformed = 0
        self._rate_limited = 0
        self._send_errors = 0

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (the port is known after :meth:`start`)."""
        if self._sock is None:
            raise RuntimeError("the UDP responder is not started")
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def start(self) -> tuple[str, int]:
        """Bind; ``OSError`` (e.g. ``EADDRINUSE``) propagates to the caller."""
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.settimeout(0.0)
                enable_rx_timestamps(sock)
                sock.bind((self.bind, self.port))
            except BaseException:
                sock.close()
                raise
            self._sock = sock
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(sock.fileno(), self._on_readable)
            logger.info("UDP responder listening on %s:%d", *self.address)
        return self.address

    async def serve(self) -> None:
        """Bind (if not yet) and answer until cancelled; then close."""
        try:
            await self.start()
            await asyncio.Event().wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop answering and close the socket."""
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def statistics(self) -> UdpResponderStatistics:
        """A snapshot of the counters."""
        return UdpResponderStatistics(
            received=self._received,
            answered=self._answered,
            malformed=self._malformed,
            rate_limited=self._rate_limited,
            send_errors=self._send_errors,
        )

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_MAX_READS_PER_WAKEUP):
            try:
                data, ancillary, _, source = sock.recvmsg(
                    MAX_UDP_PAYLOAD_BYTES + 1, ANCILLARY_BYTES
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error about one of our replies: nothing to do
            self._received += 1
            echo = parse_udp(data)
            if echo is None or echo.flag != UDP_REQUEST:
                self._malformed += 1
                continue
            now_ns = time.monotonic_ns()
            if not self._per_source.try_acquire(source[0], now_ns) or not self._global.try_acquire(
                now_ns
            ):
                self._rate_limited += 1
                continue
            reply = bytearray(data)
            stamp_ns = rx_timestamp_ns(ancillary)
            sent_ns = time.time_ns()
            dwell_ns = sent_ns - stamp_ns if stamp_ns is not None else 0
            udp_reply_into(reply, dwell_ns)
            try:
                sock.sendto(reply, source)
            except OSError:
                self._send_errors += 1
                continue
            self._answered += 1
