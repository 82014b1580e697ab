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
  (:class:`~pingmesh.agent.serving.RateCaps`, bounded memory) and all sources together a
  global one; excess requests are dropped and counted;
- one wake-up reads at most a fixed number of datagrams, so a flood cannot starve the rest
  of the agent; the kernel's socket buffer bounds what waits, and drops what does not fit.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

from pingmesh.agent.echo_wire import UDP_REQUEST, parse_udp, udp_reply_into
from pingmesh.agent.probers.kernel import ANCILLARY_BYTES, enable_rx_timestamps, rx_timestamp_ns
from pingmesh.agent.serving import RateCaps, WatchedSocket, serve_until_cancelled
from pingmesh.core.probe import MAX_UDP_PAYLOAD_BYTES

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
        self._caps = RateCaps(
            per_source_rate=per_source_rate, global_rate=global_rate, max_sources=max_sources
        )
        self._socket = WatchedSocket("UDP responder")
        self._received = 0
        self._answered = 0
        self._malformed = 0
        self._send_errors = 0

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (the port is known after :meth:`start`)."""
        return self._socket.address

    async def start(self) -> tuple[str, int]:
        """Bind; ``OSError`` (e.g. ``EADDRINUSE``) propagates to the caller."""
        if self._socket.sock is None:
            self._socket.open(
                bind=self.bind,
                port=self.port,
                kind=socket.SOCK_DGRAM,
                configure=enable_rx_timestamps,
                on_readable=self._on_readable,
            )
            logger.info("UDP responder listening on %s:%d", *self.address)
        return self.address

    async def serve(self) -> None:
        """Bind (if not yet) and answer until cancelled; then close."""
        await serve_until_cancelled(self)

    async def aclose(self) -> None:
        """Stop answering and close the socket."""
        self._socket.close()

    def statistics(self) -> UdpResponderStatistics:
        """A snapshot of the counters."""
        return UdpResponderStatistics(
            received=self._received,
            answered=self._answered,
            malformed=self._malformed,
            rate_limited=self._caps.limited,
            send_errors=self._send_errors,
        )

    def _on_readable(self) -> None:
        sock = self._socket.sock
        if sock is None:
            return
        caps = self._caps
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
            if not caps.admit(source[0], time.monotonic_ns()):
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
