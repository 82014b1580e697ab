"""What the agent's fleet-facing servers share: their socket's life, their caps, their counters.

The TCP responder (:mod:`~pingmesh.agent.responder`), the UDP responder
(:mod:`~pingmesh.agent.udp_responder`) and the HTTP endpoint (:mod:`~pingmesh.agent.metrics`)
answer the whole fleet, so each is bounded, and every bound is counted where ``/metrics`` can
show it. The bookkeeping is the same for all three and lives here, once:

- :class:`ConnectionCaps`: connections open at once, in total and per source address (TCP
  responder, HTTP endpoint). A connection is admitted *before* anything is spent on it; an
  excess one is refused and counted by the cap it hit.
- :class:`RateCaps`: requests per second per source address (GCRA buckets in bounded memory,
  :class:`~pingmesh.core.schedule.PerSourceLimiter`) and for all sources together (UDP
  responder, whose requests are single datagrams). An excess request is dropped and counted.
- :class:`WatchedSocket`: a bound socket whose readiness the event loop reports to one
  callback, with no transport or task in between (both responders: they read ``recvmsg``'s
  kernel timestamps, which asyncio's transports hide).
- :func:`serve_until_cancelled`: ``serve()`` of every server: start, answer until cancelled,
  then close everything even when cancelled.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pingmesh.core.schedule import PerSourceLimiter, TokenBucket


class Sourced(Protocol):
    """A connection, as the caps see it: the address it came from."""

    @property
    def source(self) -> str: ...


C = TypeVar("C", bound=Sourced)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionCapStatistics:
    """A snapshot of a :class:`ConnectionCaps`' counters."""

    open_connections: int
    accepted: int
    rejected: int  # over the total cap
    rejected_per_source: int  # over the per-source cap


class ConnectionCaps(Generic[C]):
    """The connections a server holds open, capped in total and per source address."""

    def __init__(self, *, max_connections: int, max_per_source: int) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections: {max_connections} is not >= 1")
        if max_per_source < 1:
            raise ValueError(f"max_per_source: {max_per_source} is not >= 1")
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self._open: set[C] = set()
        self._per_source: dict[str, int] = {}  # only sources with a connection open: bounded
        self._accepted = 0
        self._rejected = 0
        self._rejected_per_source = 0

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[C]:
        """The open connections (a copy: safe to close them while iterating)."""
        return iter(list(self._open))

    def admit(self, source: str) -> bool:
        """Whether one more connection from ``source`` fits; a refusal is counted."""
        if len(self._open) >= self.max_connections:
            self._rejected += 1
            return False
        if self._per_source.get(source, 0) >= self.max_per_source:
            self._rejected_per_source += 1
            return False
        return True

    def add(self, conn: C) -> None:
        """Hold ``conn`` open (after :meth:`admit` said it fits)."""
        self._accepted += 1
        self._open.add(conn)
        self._per_source[conn.source] = self._per_source.get(conn.source, 0) + 1

    def release(self, conn: C) -> None:
        """``conn`` is closed; releasing it twice, or one never added, does nothing."""
        if conn in self._open:
            self._open.discard(conn)
            left = self._per_source.get(conn.source, 1) - 1
            if left > 0:
                self._per_source[conn.source] = left
            else:
                self._per_source.pop(conn.source, None)

    def statistics(self) -> ConnectionCapStatistics:
        """A snapshot of the counters."""
        return ConnectionCapStatistics(
            open_connections=len(self._open),
            accepted=self._accepted,
            rejected=self._rejected,
            rejected_per_source=self._rejected_per_source,
        )


class RateCaps:
    """Requests per second, capped per source address and for all sources together.

    Bursts: one second's worth per source, a tenth of a second's worth for all sources.
    """

    def __init__(self, *, per_source_rate: float, global_rate: float, max_sources: int) -> None:
        self._per_source = PerSourceLimiter[str](
            rate_per_s=per_source_rate,
            burst=max(1, int(per_source_rate)),
            max_sources=max_sources,
        )
        self._global = TokenBucket(rate_per_s=global_rate, burst=max(1, int(global_rate / 10)))
        self.limited = 0  # requests dropped by either cap

    def admit(self, source: str, now_ns: int) -> bool:
        """Whether a request from ``source`` at ``now_ns`` is within both caps; else counted."""
        if self._per_source.try_acquire(source, now_ns) and self._global.try_acquire(now_ns):
            return True
        self.limited += 1
        return False


class WatchedSocket:
    """A bound socket whose readiness the event loop reports to one callback.

    ``name`` says which server it is, in errors and in the log.
    """

    __slots__ = ("_loop", "_name", "sock")

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sock: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (the port is known after :meth:`open`)."""
        if self.sock is None:
            raise RuntimeError(f"the {self._name} is not started")
        host, port = self.sock.getsockname()[:2]
        return host, port

    def open(
        self,
        *,
        bind: str,
        port: int,
        kind: socket.SocketKind,
        configure: Callable[[socket.socket], None],
        backlog: int | None = None,
        on_readable: Callable[[], None],
    ) -> None:
        """Bind (and listen, given a ``backlog``); ``OSError`` propagates, nothing is left open.

        ``configure`` sets the socket's options before it is bound.
        """
        if self.sock is not None:
            raise RuntimeError(f"the {self._name} is already started")
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            sock.settimeout(0.0)
            configure(sock)
            sock.bind((bind, port))
            if backlog is not None:
                sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), on_readable)

    def close(self) -> None:
        """Stop watching and close the socket (if open)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()


class Server(Protocol):
    """What :func:`serve_until_cancelled` drives."""

    async def start(self) -> tuple[str, int]: ...
    async def aclose(self) -> None: ...


async def serve_until_cancelled(server: Server) -> None:
    """Start ``server`` (if not yet), let it answer until cancelled, then close it."""
    try:
        await server.start()
        await asyncio.Event().wait()
    finally:
        await server.aclose()
