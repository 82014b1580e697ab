"""The TCP responder: what other agents' probes connect to (PM §3.4.1: every agent is a server).

Theory of operation
-------------------
**Connect probes cost nothing here.** A TCP connect probe needs only the kernel's SYN-ACK;
the prober then resets the connection. The listening socket sets ``TCP_DEFER_ACCEPT``, so the
kernel hands us a connection only once data arrives: connect probes complete their handshake
and vanish without ever waking the agent (at 250 probes a second from the fleet that is a
quarter of a thousand accepts saved every second). Echo probes send their request at once
and are accepted as usual.

**Echo.** A connection whose first four bytes are ``PMT1`` speaks the framed echo of
:mod:`pingmesh.agent.echo_wire`: the body is streamed back as it arrives, then an 8-byte trailer
carries the *dwell*, from the kernel's receive timestamp of the request's last byte
(``SO_TIMESTAMPNS`` via ``recvmsg``) to the moment the trailer is queued, so time spent waiting
for our event loop is reported rather than hidden in the prober's RTT. Anything else gets a
plain echo (handy with ``nc``).

**Bounded in every direction**, because it faces the whole fleet:

- at most ``max_connections`` at once and ``max_per_source`` from one source address; an
  excess connection is reset at once (``SO_LINGER`` 0) and counted;
- per connection at most ``max_buffer_bytes`` of echo waiting to be sent: beyond that the
  responder stops reading, and TCP flow control pushes back on a sender that does not read;
- a connection idle for ``idle_timeout_s`` is reset;
- one wake-up accepts or reads a bounded number of times, so a flood cannot starve the rest
  of the agent.

It is written on the event loop's readiness callbacks and plain non-blocking sockets rather
than asyncio transports, because transports do not expose ``recvmsg``'s timestamps; a
connection costs one small object and no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass

from pingmesh.agent.echo_wire import (
    TCP_HEADER_BYTES,
    TCP_MAGIC,
    TCP_TRAILER,
    parse_tcp_header,
)
from pingmesh.agent.probers.kernel import (
    ANCILLARY_BYTES,
    LINGER_RST,
    enable_rx_timestamps,
    rx_timestamp_ns,
)
from pingmesh.agent.serving import ConnectionCaps, WatchedSocket, serve_until_cancelled

logger = logging.getLogger(__name__)

_READ_BYTES = 65536
_MAX_READS_PER_WAKEUP = 16
_MAX_ACCEPTS_PER_WAKEUP = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderStatistics:
    """A snapshot of the responder's counters."""

    open_connections: int
    accepted: int
    rejected: int  # over the connection cap, reset at once
    rejected_per_source: int  # over the per-source cap, reset at once
    idle_closed: int
    echoed_bytes: int
    frames: int  # framed echo requests answered
    bad_frames: int  # framed requests with a bad header, reset


class _Connection:
    __slots__ = (
        "_eof",
        "_fd",
        "_header",
        "_idle",
        "_last_activity",
        "_loop",
        "_mode",
        "_out",
        "_reading",
        "_remaining",
        "_responder",
        "_sock",
        "_writing",
        "source",
    )

    def __init__(
        self,
        responder: Responder,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        source: str,
    ) -> None:
        self._responder = responder
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self.source = source
        self._mode = ""  # "" undecided, "plain", "framed"
        self._header = bytearray()  # the start of the stream, or of the next frame header
        self._remaining = 0  # body bytes still expected in the current frame
        self._out = bytearray()
        self._eof = False
        self._reading = False
        self._writing = False
        self._last_activity = loop.time()
        self._idle: asyncio.TimerHandle | None = loop.call_later(
            responder.idle_timeout_s, self._check_idle
        )

    def start(self) -> None:
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)

    # -- reading ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_MAX_READS_PER_WAKEUP):
            try:
                data, ancillary, _, _ = sock.recvmsg(_READ_BYTES, ANCILLARY_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close(reset=True)
                return
            if not data:
                self._on_eof()
                return
            self._last_activity = self._loop.time()
            stamp_ns = rx_timestamp_ns(ancillary) or time.time_ns()
            self._process(data, stamp_ns)
            if self._sock is None:
                return
            if len(self._out) > self._responder.max_buffer_bytes:
                self._pause_reading()
                return

    def _process(self, data: bytes, stamp_ns: int) -> None:
        if self._mode == "":
            self._header += data
            if len(self._header) < len(TCP_MAGIC) and TCP_MAGIC.startswith(self._header):
                return  # could still be a frame: wait for the rest of the magic
            data, self._header = bytes(self._header), bytearray()
            self._mode = "framed" if data.startswith(TCP_MAGIC) else "plain"
        if self._mode == "plain":
            self._write(data)
            return
        view = memoryview(data)
        while view:
            if self._remaining == 0:
                need = TCP_HEADER_BYTES - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) < TCP_HEADER_BYTES:
                    return
                parsed = parse_tcp_header(bytes(self._header))
                if parsed is None:
                    self._responder._bad_frames += 1
                    self.close(reset=True)
                    return
                size, _ = parsed
                self._write(bytes(self._header))
                self._header.clear()
                self._remaining = size - TCP_HEADER_BYTES
                if self._remaining == 0:
                    self._end_frame(stamp_ns)
                continue
            take = min(self._remaining, len(view))
            self._write(view[:take])
            self._remaining -= take
            view = view[take:]
            if self._remaining == 0:
                self._end_frame(stamp_ns)

    def _end_frame(self, stamp_ns: int) -> None:
        self._write(TCP_TRAILER.pack(max(0, time.time_ns() - stamp_ns)))
        self._responder._frames += 1

    def _on_eof(self) -> None:
        self._eof = True
        self._stop_reading()
        if self._mode == "" and self._header:
            self._write(bytes(self._header))  # fewer bytes than a magic: plain echo
            self._header.clear()
        if not self._out:
            self.close(reset=False)

    def _pause_reading(self) -> None:
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    # -- writing ----------------------------------------------------------------------------

    def _write(self, data: bytes | memoryview) -> None:
        sock = self._sock
        if sock is None or not data:
            return
        self._responder._echoed_bytes += len(data)
        if self._out:
            self._out += data
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(reset=True)
            return
        if sent < len(data):
            self._out += data[sent:]
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(reset=True)
            return
        del self._out[:sent]
        self._last_activity = self._loop.time()
        if self._out:
            return
        self._writing = False
        self._loop.remove_writer(self._fd)
        if self._eof:
            self.close(reset=False)
        elif not self._reading:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    # -- closing ----------------------------------------------------------------------------

    def _check_idle(self) -> None:
        self._idle = None
        if self._sock is None:
            return
        loop = self._loop
        deadline = self._last_activity + self._responder.idle_timeout_s
        if loop.time() < deadline:
            # Re-arm instead of resetting a timer on every read: one timer per idle period.
            self._idle = loop.call_at(deadline, self._check_idle)
            return
        self._responder._idle_closed += 1
        self.close(reset=True)

    def close(self, *, reset: bool) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        loop = self._loop
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not loop.is_closed():
            if self._reading:
                loop.remove_reader(self._fd)
            if self._writing:
                loop.remove_writer(self._fd)
        self._reading = self._writing = False
        self._out.clear()
        if reset:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        sock.close()
        self._responder._release(self)


class Responder:
    """Accepts connections on ``(bind, port)`` and echoes; see the module docstring."""

    def __init__(
        self,
        *,
        bind: str,
        port: int,
        max_connections: int,
        max_per_source: int = 64,
        max_buffer_bytes: int = 64 * 1024,
        idle_timeout_s: float = 60.0,
        backlog: int = 1024,
        defer_accept_s: int = 5,
    ) -> None:
        if max_buffer_bytes < 1:
            raise ValueError(f"max_buffer_bytes: {max_buffer_bytes} is not >= 1")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s: {idle_timeout_s} is not > 0")
        self.bind = bind
        self.port = port
        self.max_buffer_bytes = max_buffer_bytes
        self.idle_timeout_s = idle_timeout_s
        self._backlog = backlog
        self._defer_accept_s = defer_accept_s
        self._listener = WatchedSocket("responder")
        self._caps = ConnectionCaps[_Connection](
            max_connections=max_connections, max_per_source=max_per_source
        )
        self._idle_closed = 0
        self._echoed_bytes = 0
        self._frames = 0
        self._bad_frames = 0

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the port is known after :meth:`start`)."""
        return self._listener.address

    async def start(self) -> tuple[str, int]:
        """Listen; ``OSError`` (e.g. ``EADDRINUSE``) propagates to the caller."""
        if self._listener.sock is None:
            self._listener.open(
                bind=self.bind,
                port=self.port,
                kind=socket.SOCK_STREAM,
                configure=self._configure,
                backlog=self._backlog,
                on_readable=self._on_acceptable,
            )
            logger.info("responder listening on %s:%d", *self.address)
        return self.address

    async def serve(self) -> None:
        """Listen (if not yet) and answer until cancelled; then close everything."""
        await serve_until_cancelled(self)

    async def aclose(self) -> None:
        """Stop listening and reset every open connection."""
        self._listener.close()
        for conn in self._caps:
            conn.close(reset=True)

    def statistics(self) -> ResponderStatistics:
        """A snapshot of the counters."""
        caps = self._caps.statistics()
        return ResponderStatistics(
            open_connections=caps.open_connections,
            accepted=caps.accepted,
            rejected=caps.rejected,
            rejected_per_source=caps.rejected_per_source,
            idle_closed=self._idle_closed,
            echoed_bytes=self._echoed_bytes,
            frames=self._frames,
            bad_frames=self._bad_frames,
        )

    def _configure(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self._defer_accept_s > 0:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, self._defer_accept_s)
        enable_rx_timestamps(sock)

    def _on_acceptable(self) -> None:
        listener, loop = self._listener.sock, asyncio.get_running_loop()
        if listener is None:
            return
        caps = self._caps
        for _ in range(_MAX_ACCEPTS_PER_WAKEUP):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENOBUFS…: try again at the next wake-up
                logger.warning("responder: accept failed: %s", exc)
                return
            source = str(address[0])
            if not caps.admit(source):
                _reset(sock)
                continue
            try:
                sock.settimeout(0.0)
                enable_rx_timestamps(sock)
            except OSError:
                sock.close()
                continue
            conn = _Connection(self, loop, sock, source)
            caps.add(conn)
            conn.start()

    def _release(self, conn: _Connection) -> None:
        self._caps.release(conn)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    sock.close()
