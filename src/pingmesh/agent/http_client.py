"""A small HTTP/1.1 client for the agent's few requests (pinglist, results, tasks, bandwidth).

Why not httpx: the agent must stay within Pingmesh's budget (under 45 MB on every server,
PM §3.4.2), and importing httpx (with its CLI dependencies) costs more memory than the rest
of the agent. Three request types a few times a minute need very little: :mod:`h11` (which
the agent's HTTP server already uses) over asyncio streams, with

- keep-alive: idle connections are reused (a few per origin at most), and a request that
  fails on a *reused* connection before any answer arrived is retried once on a fresh one
  (the server may have closed it meanwhile; our requests are idempotent);
- bounded everything: a whole-request timeout, response heads bounded by h11, bodies read
  only up to ``max_body_bytes`` (a longer body makes ``HttpResponse.body`` ``None``);
- every transport failure raised as :class:`~pingmesh.errors.ControllerError`, naming the
  URL and the cause; HTTP error statuses are answers, not exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import h11

from pingmesh import __version__
from pingmesh.errors import ControllerError

MAX_RESPONSE_HEAD_BYTES = 64 * 1024
MAX_IDLE_PER_ORIGIN = 4
_READ_CHUNK = 65536


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponse:
    """An answer: status, headers (lower-case names), body (``None``: longer than allowed)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = b""

    def text(self, limit: int = 200) -> str:
        """The start of the body as text, whitespace collapsed (for messages)."""
        if self.body is None:
            return "(long body)"
        return " ".join(self.body[:limit].decode("utf-8", "replace").split())


class HttpClient(Protocol):
    """What the fetcher, uploader and task runner need from HTTP."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout_s: float,
        max_body_bytes: int = 1024 * 1024,
    ) -> HttpResponse:
        """One request; transport failures raise :class:`~pingmesh.errors.ControllerError`."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h11: h11.Connection


_Origin = tuple[str, str, int]  # scheme, host, port


class H11Client:
    """:class:`HttpClient` over asyncio streams and :mod:`h11`; see the module docstring."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, user_agent: str | None = None
    ) -> None:
        self._ssl_context = ssl_context
        self._user_agent = user_agent or f"pingmesh-agent/{__version__}"
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout_s: float,
        max_body_bytes: int = 1024 * 1024,
    ) -> HttpResponse:
        """One request within ``timeout_s``; see :class:`HttpClient`."""
        if self._closed:
            raise ControllerError(f"{method} {url}: the HTTP client is closed")
        origin, target = _split(url)
        try:
            async with asyncio.timeout(timeout_s):
                for attempt in range(2):
                    conn, reused = await self._connection(origin)
                    try:
                        response = await self._exchange(
                            conn,
                            origin=origin,
                            method=method,
                            target=target,
                            headers=headers,
                            body=body,
                            max_body_bytes=max_body_bytes,
                        )
                    except (_StaleConnectionError, ConnectionError) as exc:
                        _close(conn)
                        if reused and attempt == 0:
                            continue  # the server closed it while idle: one fresh try
                        if isinstance(exc, ConnectionError):
                            raise
                        raise ControllerError(
                            f"{method} {url}: connection closed before an answer"
                        ) from None
                    except BaseException:
                        _close(conn)
                        raise
                    self._release(origin, conn)
                    return response
        except TimeoutError as exc:
            raise ControllerError(f"{method} {url}: no answer within {timeout_s:g} s") from exc
        except (OSError, h11.ProtocolError, ssl.SSLError) as exc:
            raise ControllerError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        raise ControllerError(f"{method} {url}: connection closed before an answer")

    async def aclose(self) -> None:
        """Close every idle connection; later requests fail."""
        self._closed = True
        idle, self._idle = self._idle, {}
        closing = [conn for conns in idle.values() for conn in conns]
        for conn in closing:
            _close(conn)
        for conn in closing:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()

    async def _connection(self, origin: _Origin) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn, True
            _close(conn)
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl_context or ssl.create_default_context()
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, limit=_READ_CHUNK * 2
        )
        conn = _Connection(
            reader=reader,
            writer=writer,
            h11=h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES),
        )
        return conn, False

    def _release(self, origin: _Origin, conn: _Connection) -> None:
        state = conn.h11
        if self._closed or state.our_state is not h11.DONE or state.their_state is not h11.DONE:
            _close(conn)
            return
        state.start_next_cycle()
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            _close(conn)
            return
        idle.append(conn)

    async def _exchange(
        self,
        conn: _Connection,
        *,
        origin: _Origin,
        method: str,
        target: str,
        headers: Mapping[str, str] | None,
        body: bytes,
        max_body_bytes: int,
    ) -> HttpResponse:
        scheme, host, port = origin
        default_port = 443 if scheme == "https" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        out = [
            ("Host", host_header),
            ("User-Agent", self._user_agent),
            ("Content-Length", str(len(body))),
        ]
        out.extend((headers or {}).items())
        h = conn.h11
        data = h.send(h11.Request(method=method, target=target, headers=out)) or b""
        if body:
            data += h.send(h11.Data(data=body)) or b""
        data += h.send(h11.EndOfMessage()) or b""
        conn.writer.write(data)
        await conn.writer.drain()
        response: h11.Response | None = None
        chunks = bytearray()
        too_long = False
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                chunk = await conn.reader.read(_READ_CHUNK)
                if not chunk and response is None:
                    raise _StaleConnectionError
                h.receive_data(chunk)
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                if not too_long:
                    chunks += event.data
                    if len(chunks) > max_body_bytes:
                        too_long = True
                        chunks.clear()
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise _StaleConnectionError
        assert response is not None
        return HttpResponse(
            status=response.status_code,
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers},
            body=None if too_long else bytes(chunks),
        )


class _StaleConnectionError(Exception):
    """The peer closed the connection before answering."""


def _split(url: str) -> tuple[_Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ControllerError(f"{url!r}: not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ControllerError(f"{url!r}: bad port") from exc
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return (parts.scheme, parts.hostname, port), target


def _close(conn: _Connection) -> None:
    with contextlib.suppress(Exception):
        conn.writer.close()
