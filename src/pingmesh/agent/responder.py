"""The TCP responder: what other agents' probes connect to (PM §3.4.1: every agent is a server).

A connect probe needs only the kernel's SYN-ACK; payload probes (later) need the echo. The
responder accepts, echoes whatever it receives and closes on EOF, and is bounded in every
direction, because it faces the whole fleet:

- at most ``max_connections`` at once; an excess connection is reset at once (``SO_LINGER`` 0)
  and counted, so a storm of probers cannot make the agent hold more;
- per connection, at most ``max_buffer_bytes`` of echo waiting to be sent: beyond that the
  responder stops reading (asyncio flow control) and TCP pushes back on the sender, so a peer
  that sends without reading cannot grow our memory;
- a connection idle for ``idle_timeout_s`` is closed, so idle peers cannot hold the slots.

It is built on :class:`asyncio.Protocol` callbacks rather than a task per connection: a
connection costs a transport and a small object, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderStatistics:
    """A snapshot of the responder's counters."""

    open_connections: int
    accepted: int
    rejected: int  # over the connection cap, reset at once
    idle_closed: int
    echoed_bytes: int


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._transport: asyncio.Transport | None = None
        self._counted = False
        self._idle: asyncio.TimerHandle | None = None
        self._last_activity = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._responder._admit(self):
            _reset(transport)
            return
        self._counted = True
        transport.set_write_buffer_limits(high=self._responder.max_buffer_bytes)
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._idle = loop.call_later(self._responder.idle_timeout_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or not self._counted:
            return
        self._last_activity = asyncio.get_running_loop().time()
        self._responder._echoed_bytes += len(data)
        transport.write(data)

    def eof_received(self) -> bool:
        return False  # close once the echo has been flushed

    def pause_writing(self) -> None:
        # The peer is not reading its echo: stop reading, so TCP flow control holds it back.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._counted:
            self._counted = False
            self._responder._release(self)
        self._transport = None

    def _check_idle(self) -> None:
        self._idle = None
        transport = self._transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        deadline = self._last_activity + self._responder.idle_timeout_s
        if loop.time() < deadline:
            # Re-arm instead of resetting a timer on every read: one timer per idle period.
            self._idle = loop.call_at(deadline, self._check_idle)
            return
        self._responder._idle_closed += 1
        _reset(transport)

    def abort(self) -> None:
        if self._transport is not None:
            _reset(self._transport)


def _reset(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Already gone is fine: abort() below still releases it.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


class Responder:
    """Accepts connections on ``(bind, port)`` and echoes; see the module docstring."""

    def __init__(
        self,
        *,
        bind: str,
        port: int,
        max_connections: int,
        max_buffer_bytes: int = 64 * 1024,
        idle_timeout_s: float = 60.0,
        backlog: int = 1024,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections: {max_connections} is not >= 1")
        if max_buffer_bytes < 1:
            raise ValueError(f"max_buffer_bytes: {max_buffer_bytes} is not >= 1")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s: {idle_timeout_s} is not > 0")
        self.bind = bind
        self.port = port
        self.max_connections = max_connections
        self.max_buffer_bytes = max_buffer_bytes
        self.idle_timeout_s = idle_timeout_s
        self._backlog = backlog
        self._server: asyncio.Server | None = None
        self._connections: set[_EchoProtocol] = set()
        self._accepted = 0
        self._rejected = 0
        self._idle_closed = 0
        self._echoed_bytes = 0

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the port is known after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the responder is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> tuple[str, int]:
        """Listen; ``OSError`` (e.g. ``EADDRINUSE``) propagates to the caller."""
        if self._server is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: _EchoProtocol(self),
                self.bind,
                self.port,
                backlog=self._backlog,
                reuse_address=True,
            )
            logger.info("responder listening on %s:%d", *self.address)
        return self.address

    async def serve(self) -> None:
        """Listen (if not yet) and answer until cancelled; then close everything."""
        try:
            await self.start()
            assert self._server is not None
            await self._server.serve_forever()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and reset every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._connections):
            conn.abort()
        if server is not None:
            await server.wait_closed()

    def statistics(self) -> ResponderStatistics:
        """A snapshot of the counters."""
        return ResponderStatistics(
            open_connections=len(self._connections),
            accepted=self._accepted,
            rejected=self._rejected,
            idle_closed=self._idle_closed,
            echoed_bytes=self._echoed_bytes,
        )

    def _admit(self, conn: _EchoProtocol) -> bool:
        if len(self._connections) >= self.max_connections:
            self._rejected += 1
            return False
        self._accepted += 1
        self._connections.add(conn)
        return True

    def _release(self, conn: _EchoProtocol) -> None:
        self._connections.discard(conn)
