"""The agent's QUIC client: one long-lived, authenticated connection to the server.

Theory of operation
-------------------
:meth:`QuicClient.request` sends one request on a new bidirectional stream and waits for its
answer (framing in :mod:`pingmesh.wire.quic`). The connection is made on first use: UDP socket,
QUIC + TLS 1.3 handshake (the server's certificate is verified against ``ca_file``, or the
system's trust store without one; never skipped), then ``/hello`` with the agent's id, alias
and token. Requests share the connection concurrently.

*Failure.* Any of these ends the connection, fails every request waiting on it with
:class:`~pingmesh.errors.TransportError`, and leaves the client disconnected, so that the next
request starts a fresh connection: the handshake or hello failed or timed out, the peer closed
the connection, the kernel reported the server's port unreachable (ICMP), or a request got no
answer within ``request_timeout_s`` (a server restarted in the meantime has forgotten the
connection and stays silent). Deciding *when* to try again is the caller's job (see
:class:`~pingmesh.agent.transport.http.QuicFallbackClient`): this class never sleeps and
never retries, and it owns no background task (aioquic's timers run on the event loop).

This is what the original got wrong: after its first reconnect the monitor restarted on a
closed channel and sent frozen figures. Here the measurements never depend on the connection:
the sampler runs on its own, and the transport only carries what it is given.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset

from pingmesh.errors import AuthenticationError, TransportError
from pingmesh.wire.quic import (
    ALPN,
    HELLO_PATH,
    FrameError,
    HelloModel,
    decode_response,
    encode_request,
)

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class QuicClientStatistics:
    """Counters of the QUIC client (``/metrics``)."""

    connected: bool
    connects_total: int
    connect_failures_total: int
    auth_failures_total: int
    disconnects_total: int
    requests_total: int
    request_failures_total: int
    requests_in_flight: int


class _ClientConnection(QuicConnectionProtocol):
    """Collects each stream's answer and fails them all when the connection ends."""

    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        self._answers: dict[int, tuple[bytearray, asyncio.Future[bytes]]] = {}
        self.error: str | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            entry = self._answers.get(event.stream_id)
            if entry is None:
                return  # a stream we did not open, or one we gave up on
            buffer, future = entry
            buffer += event.data
            if len(buffer) > MAX_RESPONSE_BYTES:
                self._settle(event.stream_id, TransportError("answer too large"))
            elif event.end_stream:
                del self._answers[event.stream_id]
                if not future.done():
                    future.set_result(bytes(buffer))
        elif isinstance(event, StreamReset):
            self._settle(event.stream_id, TransportError("the server reset the stream"))
        elif isinstance(event, ConnectionTerminated):
            self.fail(f"connection closed: {event.reason_phrase or event.error_code}")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: nobody is listening there now.
        self.fail(f"network error: {exc}")

    def fail(self, why: str) -> None:
        """Mark the connection dead and fail every waiting request."""
        if self.error is None:
            self.error = why
        for stream_id in list(self._answers):
            self._settle(stream_id, TransportError(why))
        waiter, self._connected_waiter = self._connected_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(why))
        self._closed.set()

    def _settle(self, stream_id: int, exc: Exception) -> None:
        entry = self._answers.pop(stream_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_exception(exc)

    def send_request(self, data: bytes) -> asyncio.Future[bytes]:
        """Send one request on a new stream; the future gets the raw answer."""
        if self.error is not None:
            raise TransportError(self.error)
        stream_id = self._quic.get_next_available_stream_id()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._answers[stream_id] = (bytearray(), future)
        self._quic.send_stream_data(stream_id, data, end_stream=True)
        self.transmit()
        return future

    def forget(self, future: asyncio.Future[bytes]) -> None:
        """Stop waiting for a request's answer (it timed out or was cancelled)."""
        for stream_id, (_buffer, waiting) in list(self._answers.items()):
            if waiting is future:
                del self._answers[stream_id]


class QuicClient:
    """One agent's connection to the server's QUIC listener; see the module docstring."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        agent: str,
        alias: str,
        token: str,
        ca_file: Path | None = None,
        server_name: str | None = None,
        bind: str | None = None,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
    ) -> None:
        if not connect_timeout_s > 0 or not request_timeout_s > 0:
            raise ValueError("connect_timeout_s and request_timeout_s must be > 0")
        self.host = host
        self.port = port
        self._hello = HelloModel(agent=agent, alias=alias, token=token)
        self._bind = bind
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._configuration = QuicConfiguration(
            alpn_protocols=[ALPN],
            is_client=True,
            server_name=server_name or host,
            idle_timeout=idle_timeout_s,
            verify_mode=ssl.CERT_REQUIRED,
        )
        if ca_file is not None:
            self._configuration.load_verify_locations(cafile=str(ca_file))
        self._connection: _ClientConnection | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._connecting: asyncio.Lock | None = None
        self._connects = 0
        self._connect_failures = 0
        self._auth_failures = 0
        self._disconnects = 0
        self._requests = 0
        self._request_failures = 0
        self._in_flight = 0

    @property
    def connected(self) -> bool:
        """True while a handshaken, authenticated connection is up."""
        return self._connection is not None and self._connection.error is None

    async def request(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send ``body`` to ``path`` and return (status, body) of the answer.

        Raises :class:`~pingmesh.errors.TransportError` if the connection cannot carry it (then
        it is closed).
        """
        self._requests += 1
        self._in_flight += 1
        try:
            connection = await self._connect()
            return await self._exchange(connection, encode_request(path, body))
        except TransportError:
            self._request_failures += 1
            raise
        finally:
            self._in_flight -= 1

    async def aclose(self) -> None:
        """Close the connection (politely: the server hears CONNECTION_CLOSE)."""
        self._drop("closed by the agent")

    def statistics(self) -> QuicClientStatistics:
        """A snapshot of the counters."""
        return QuicClientStatistics(
            connected=self.connected,
            connects_total=self._connects,
            connect_failures_total=self._connect_failures,
            auth_failures_total=self._auth_failures,
            disconnects_total=self._disconnects,
            requests_total=self._requests,
            request_failures_total=self._request_failures,
            requests_in_flight=self._in_flight,
        )

    async def _connect(self) -> _ClientConnection:
        if self.connected:
            assert self._connection is not None
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.connected:
                assert self._connection is not None
                return self._connection
            self._drop("reconnecting")
            try:
                connection = await self._handshake()
            except TransportError:
                self._connect_failures += 1
                self._drop("connect failed")
                raise
            self._connects += 1
            logger.info("quic: connected to %s:%d as %r", self.host, self.port, self._hello.agent)
            return connection

    async def _handshake(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            # A connected UDP socket: the kernel then reports "port unreachable" (ICMP) to us,
            # so a server that is down fails the handshake at once instead of timing out.
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            family, remote = infos[0][0], infos[0][4]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.settimeout(0.0)  # non-blocking
                sock.bind((self._bind or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
                sock.connect(remote)
                transport, connection = await loop.create_datagram_endpoint(
                    lambda: _ClientConnection(QuicConnection(configuration=self._configuration)),
                    sock=sock,
                )
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise TransportError(
                f"quic: cannot open a UDP socket to {self.host}:{self.port}: {exc}"
            ) from exc
        self._transport, self._connection = transport, connection
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                connection.connect(remote)
                await connection.wait_connected()
        except TimeoutError as exc:
            raise TransportError(
                f"quic: no handshake with {self.host}:{self.port} within "
                f"{self._connect_timeout_s:g} s"
            ) from exc
        except ConnectionError as exc:
            why = connection.error or _tls_reason(connection) or "handshake failed"
            raise TransportError(f"quic: {self.host}:{self.port}: {why}") from exc
        status, answer = await self._exchange(
            connection, encode_request(HELLO_PATH, self._hello.model_dump_json().encode())
        )
        if status != 200:
            self._auth_failures += 1
            raise AuthenticationError(
                f"quic: {self.host}:{self.port} refused agent {self._hello.agent!r}: "
                f"{status} {answer[:200].decode(errors='replace')}"
            )
        return connection

    async def _exchange(self, connection: _ClientConnection, data: bytes) -> tuple[int, bytes]:
        future = connection.send_request(data)
        try:
            async with asyncio.timeout(self._request_timeout_s):
                raw = await future
        except TimeoutError as exc:
            connection.forget(future)
            self._drop("request timed out")
            raise TransportError(
                f"quic: no answer from {self.host}:{self.port} within {self._request_timeout_s:g} s"
            ) from exc
        except asyncio.CancelledError:
            connection.forget(future)
            raise
        except TransportError:
            self._drop("connection failed")
            raise
        try:
            return decode_response(raw)
        except FrameError as exc:
            self._drop("bad answer")
            raise TransportError(f"quic: {self.host}:{self.port}: {exc}") from exc

    def _drop(self, why: str) -> None:
        connection, transport = self._connection, self._transport
        self._connection, self._transport = None, None
        if connection is not None:
            if connection.error is None:
                connection.close()  # sends CONNECTION_CLOSE now
            connection.fail(why)
            self._disconnects += 1
        if transport is not None:
            transport.close()


def _tls_reason(connection: _ClientConnection) -> str | None:
    # aioquic records why it closed (e.g. a certificate that does not verify).
    close: Any = getattr(connection._quic, "_close_event", None)
    if close is not None and close.reason_phrase:
        return str(close.reason_phrase)
    return None
