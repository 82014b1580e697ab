"""The server's QUIC listener: agents' bandwidth reports and probe result batches (seed 001).

Theory of operation
-------------------
aioquic runs the QUIC and TLS 1.3 state machines; this module only turns streams into requests
(framing in :mod:`pingmesh.wire.quic`). Each connection is one agent: its first request,
``/hello``, carries the agent's id, alias and token, checked by
:class:`~pingmesh.server.tls.AgentAuthenticator`; from then on the connection *is* that agent,
and a request on it may only speak for that agent (a result batch or bandwidth report naming
another agent is refused 403). A connection that has not said hello gets 401 for everything.

*Requests.* A request is buffered until its stream ends (at most ``max_request_bytes``; beyond
that it is answered 413 and the rest of the stream is discarded), then handled in a task of the
listener's :class:`asyncio.TaskGroup`, so cancelling :meth:`QuicListener.serve` cancels every
request in flight and closes every connection. At most ``max_concurrent_requests`` handlers
run at once; the others wait (QUIC's own stream limits bound how many can wait per connection).
A handler's exception becomes a 500 answer, counted, and never takes the listener down.

*Answers.* Every request is answered with a status and a JSON body, so the agent knows what
was stored and can forget it; the original never acknowledged anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from aioquic.quic.stream import StreamFinishedError
from pydantic import ValidationError

from pingmesh import __version__
from pingmesh.collector.routes import validation_detail
from pingmesh.collector.service import Collector
from pingmesh.core.topology import Topology
from pingmesh.errors import BatchError, ConfigError, StoreError, UnknownServerError
from pingmesh.server.tls import AgentAuthenticator
from pingmesh.wire.quic import (
    ALPN,
    HELLO_PATH,
    FrameError,
    HelloModel,
    decode_request,
    encode_response,
)
from pingmesh.wire.results import ResultBatchModel

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_REQUESTS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentIdentity:
    """An authenticated agent, as a handler sees it."""

    agent: str
    alias: str
    address: str


Handler = Callable[[bytes, AgentIdentity], Awaitable[tuple[int, bytes]]]
"""A request handler: (body, who) → (HTTP status, JSON body)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QuicListenerStatistics:
    """Counters of the QUIC listener (``/metrics``)."""

    connections_open: int
    connections_total: int
    hellos_total: int
    auth_failures_total: int
    requests_total: int
    requests_in_flight: int
    requests_too_large_total: int
    requests_bad_total: int  # framing, unknown path, not authenticated
    handler_errors_total: int
    responses_lost_total: int  # the stream or connection was gone when the answer was ready


def detail(text: str) -> bytes:
    """A JSON error body ``{"detail": text}``."""
    return b'{"detail":' + _json_str(text) + b"}"


def _json_str(text: str) -> bytes:
    import json  # noqa: PLC0415 - only on error paths

    return json.dumps(text).encode()


class _Connection(QuicConnectionProtocol):
    """One agent's connection: buffers streams into requests, hands them to the listener."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *, listener: QuicListener):
        super().__init__(quic, stream_handler)
        self._listener = listener
        self._buffers: dict[int, bytearray | None] = {}  # None: too large, being discarded
        self.identity: AgentIdentity | None = None
        self.address = ""
        self._open = True
        listener._opened(self)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self.address:
            self.address = str(addr[0])
        super().datagram_received(data, addr)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, ConnectionTerminated) and self._open:
            self._open = False
            self._buffers.clear()
            self._listener._closed(self)

    def _stream_data(self, event: StreamDataReceived) -> None:
        stream_id = event.stream_id
        if stream_id not in self._buffers:
            self._buffers[stream_id] = bytearray()
        buffer = self._buffers[stream_id]
        if buffer is not None:
            buffer += event.data
            if len(buffer) > self._listener.max_request_bytes:
                self._buffers[stream_id] = None
                self._listener.too_large += 1
                limit = self._listener.max_request_bytes
                self.respond(stream_id, 413, detail(f"request larger than {limit} bytes"))
        if event.end_stream:
            data = self._buffers.pop(stream_id, None)
            if data is not None:
                self._listener.spawn(self._handle(stream_id, bytes(data)))

    async def _handle(self, stream_id: int, data: bytes) -> None:
        status, body = await self._listener.handle(self, data)
        self.respond(stream_id, status, body)

    def authenticate(self, hello: HelloModel) -> AgentIdentity:
        """Remember who this connection is."""
        self.identity = AgentIdentity(agent=hello.agent, alias=hello.alias, address=self.address)
        return self.identity

    def respond(self, stream_id: int, status: int, body: bytes) -> None:
        """Send the answer of one stream and end it."""
        if not self._open:
            self._listener.responses_lost += 1
            return
        try:
            self._quic.send_stream_data(stream_id, encode_response(status, body), end_stream=True)
        except (ValueError, StreamFinishedError):  # the peer reset the stream, or it is closing
            self._listener.responses_lost += 1
            return
        self.transmit()


class QuicListener:
    """Accepts agents over QUIC and routes their requests to ``handlers`` by path."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        certificate: Path,
        private_key: Path,
        authenticator: AgentAuthenticator,
        handlers: Mapping[str, Handler],
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
        idle_timeout_s: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.max_request_bytes = max_request_bytes
        self._authenticator = authenticator
        self._handlers = dict(handlers)
        self._configuration = QuicConfiguration(
            alpn_protocols=[ALPN], is_client=False, idle_timeout=idle_timeout_s
        )
        try:
            self._configuration.load_cert_chain(certificate, private_key)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"quic: cannot load certificate {certificate} / key {private_key}: {exc}"
            ) from exc
        self._semaphore = asyncio.Semaphore(max_concurrent_requests)
        self._server: QuicServer | None = None
        self._socket: socket.socket | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._connections: set[_Connection] = set()
        self._connections_total = 0
        self._hellos = 0
        self._auth_failures = 0
        self._requests = 0
        self._in_flight = 0
        self.too_large = 0
        self._bad = 0
        self._handler_errors = 0
        self.responses_lost = 0

    def bind(self) -> None:
        """Open the UDP socket now (a busy port is an error before anything runs; port 0 is
        resolved to the port the kernel chose)."""
        if self._socket is not None or self._transport is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"field quic_listen: cannot listen on {self.host}:{self.port}/udp: {exc.strerror}"
            ) from exc
        self.port = sock.getsockname()[1]
        self._socket = sock

    async def start(self) -> None:
        """Bind (if not yet) and start answering."""
        if self._transport is not None:
            return
        self.bind()
        sock, self._socket = self._socket, None
        assert sock is not None
        loop = asyncio.get_running_loop()
        create = partial(_Connection, listener=self)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: QuicServer(configuration=self._configuration, create_protocol=create),
            sock=sock,
        )
        self._transport, self._server = transport, protocol

    async def serve(self) -> None:
        """Serve until cancelled; then close every connection and the socket."""
        await self.start()
        assert self._server is not None
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await asyncio.Event().wait()
        finally:
            self._tasks = None
            self._server.close()
            self._transport = None
            self._server = None

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a request in the listener's task group (dropped if the listener is stopping)."""
        if self._tasks is None:
            with contextlib.suppress(AttributeError):
                coro.close()  # type: ignore[attr-defined]
            return
        self._tasks.create_task(coro)  # type: ignore[arg-type]

    async def handle(self, connection: _Connection, data: bytes) -> tuple[int, bytes]:
        """Answer one request of ``connection``."""
        self._requests += 1
        try:
            path, body = decode_request(data)
        except FrameError as exc:
            self._bad += 1
            return 400, detail(str(exc))
        if path == HELLO_PATH:
            return self._hello(connection, body)
        identity = connection.identity
        if identity is None:
            self._bad += 1
            return 401, detail("say hello first: /hello with agent, alias and token")
        handler = self._handlers.get(path)
        if handler is None:
            self._bad += 1
            return 404, detail(f"no such path {path!r}")
        self._in_flight += 1
        try:
            async with self._semaphore:
                return await handler(body, identity)
        except Exception:
            self._handler_errors += 1
            log.exception("quic: handler of %s failed", path)
            return 500, detail("internal error")
        finally:
            self._in_flight -= 1

    def statistics(self) -> QuicListenerStatistics:
        """A snapshot of the counters."""
        return QuicListenerStatistics(
            connections_open=len(self._connections),
            connections_total=self._connections_total,
            hellos_total=self._hellos,
            auth_failures_total=self._auth_failures,
            requests_total=self._requests,
            requests_in_flight=self._in_flight,
            requests_too_large_total=self.too_large,
            requests_bad_total=self._bad,
            handler_errors_total=self._handler_errors,
            responses_lost_total=self.responses_lost,
        )

    def _hello(self, connection: _Connection, body: bytes) -> tuple[int, bytes]:
        try:
            hello = HelloModel.model_validate_json(body)
        except ValidationError as exc:
            self._bad += 1
            return 422, detail(validation_detail(exc))
        if not self._authenticator.verify(hello.agent, hello.token):
            self._auth_failures += 1
            log.warning("quic: agent %r from %s: bad token", hello.agent, connection.address)
            return 401, detail(f"agent {hello.agent!r}: the token is not this agent's")
        if connection.identity is not None and connection.identity.agent != hello.agent:
            self._bad += 1
            return 409, detail("this connection already speaks for another agent")
        identity = connection.authenticate(hello)
        self._hellos += 1
        return 200, (
            b'{"agent":'
            + _json_str(identity.agent)
            + b',"server":'
            + _json_str(f"pingmesh/{__version__}")
            + b"}"
        )

    def _opened(self, connection: _Connection) -> None:
        self._connections.add(connection)
        self._connections_total += 1

    def _closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)


def results_handler(
    collector: Collector, topology: Callable[[], Topology] | None = None
) -> Handler:
    """``/api/v1/results`` over QUIC: a probe result batch of the connected agent.

    An agent started with its address as ``--name`` proves that address and uploads under its
    topology name (which its pinglist told it); with ``topology``, both name one server.
    """

    def same_server(batch_agent: str, identity: str) -> bool:
        if batch_agent == identity:
            return True
        server = topology().server(batch_agent) if topology is not None else None
        return server is not None and server.address == identity

    async def handle(body: bytes, identity: AgentIdentity) -> tuple[int, bytes]:
        try:
            batch = ResultBatchModel.model_validate_json(body)
        except ValidationError as exc:
            return 422, detail(validation_detail(exc))
        if not same_server(batch.agent, identity.agent):
            return 403, detail(f"this connection is agent {identity.agent!r}, not {batch.agent!r}")
        try:
            ack = await collector.submit(batch)
        except BatchError as exc:
            return 422, detail(str(exc))
        except UnknownServerError as exc:
            return 404, detail(str(exc))
        except StoreError as exc:
            return 503, detail(str(exc))
        return 200, ack.model_dump_json().encode()

    return handle
