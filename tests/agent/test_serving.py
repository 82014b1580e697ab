"""What the fleet-facing servers share: connection caps, rate caps, the watched socket, serve()."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import pytest

from pingmesh.agent.serving import (
    ConnectionCaps,
    RateCaps,
    WatchedSocket,
    serve_until_cancelled,
)


@dataclass(eq=False)
class _Conn:
    source: str


def test_connection_caps_refuse_and_count_by_the_cap_hit() -> None:
    caps = ConnectionCaps[_Conn](max_connections=3, max_per_source=2)
    a1, a2, b1 = _Conn("10.0.0.1"), _Conn("10.0.0.1"), _Conn("10.0.0.2")
    for conn in (a1, a2):
        assert caps.admit(conn.source)
        caps.add(conn)
    assert not caps.admit("10.0.0.1")  # per-source cap
    assert caps.admit("10.0.0.2")
    caps.add(b1)
    assert not caps.admit("10.0.0.3")  # total cap
    stats = caps.statistics()
    assert (stats.open_connections, stats.accepted) == (3, 3)
    assert (stats.rejected, stats.rejected_per_source) == (1, 1)
    assert set(caps) == {a1, a2, b1}


def test_released_connections_free_their_source_and_twice_is_harmless() -> None:
    caps = ConnectionCaps[_Conn](max_connections=8, max_per_source=1)
    conn = _Conn("10.0.0.1")
    assert caps.admit(conn.source)
    caps.add(conn)
    assert not caps.admit(conn.source)
    caps.release(conn)
    caps.release(conn)  # a second release (close after reset) changes nothing
    caps.release(_Conn("10.0.0.9"))  # never added
    assert len(caps) == 0
    assert caps.admit(conn.source)
    assert caps._per_source == {}  # nothing kept for sources without a connection


def test_iterating_gives_a_copy_so_connections_can_close_meanwhile() -> None:
    caps = ConnectionCaps[_Conn](max_connections=8, max_per_source=8)
    conns = [_Conn("10.0.0.1") for _ in range(4)]
    for conn in conns:
        caps.add(conn)
    for conn in caps:
        caps.release(conn)
    assert len(caps) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_connections": 0, "max_per_source": 1}, "max_connections: 0"),
        ({"max_connections": 1, "max_per_source": 0}, "max_per_source: 0"),
    ],
)
def test_connection_caps_refuse_bad_limits(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConnectionCaps[_Conn](**options)


def test_rate_caps_limit_each_source_and_all_together() -> None:
    caps = RateCaps(per_source_rate=2.0, global_rate=30.0, max_sources=16)
    now_ns = 10**12
    # A source gets a burst of one second's worth (2), then is limited.
    assert [caps.admit("a", now_ns) for _ in range(3)] == [True, True, False]
    assert caps.limited == 1
    # Others still get theirs until the global burst (a tenth of 30/s: 3) is spent.
    assert caps.admit("b", now_ns)
    assert not caps.admit("c", now_ns)  # global cap: 3 taken already
    assert caps.limited == 2
    # A second later both have refilled.
    assert caps.admit("a", now_ns + 10**9)


async def test_watched_socket_reports_readiness_and_closes() -> None:
    ready = asyncio.Event()
    watched = WatchedSocket("test server")
    with pytest.raises(RuntimeError, match="test server is not started"):
        _ = watched.address
    configured: list[socket.socket] = []

    def open_it() -> None:
        watched.open(
            bind="127.0.0.1",
            port=0,
            kind=socket.SOCK_DGRAM,
            configure=configured.append,
            on_readable=ready.set,
        )

    open_it()
    assert configured == [watched.sock]
    host, port = watched.address
    assert host == "127.0.0.1"
    assert port > 0
    with pytest.raises(RuntimeError, match="already started"):
        open_it()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"x", (host, port))
        async with asyncio.timeout(5):
            await ready.wait()
    watched.close()
    watched.close()
    assert watched.sock is None


async def test_a_socket_that_cannot_bind_is_not_left_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        watched = WatchedSocket("test server")
        with pytest.raises(OSError, match="in use"):
            watched.open(
                bind="127.0.0.1",
                port=taken.getsockname()[1],
                kind=socket.SOCK_STREAM,
                configure=lambda _: None,
                backlog=8,
                on_readable=lambda: None,
            )
        assert watched.sock is None


class _Server:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.closed = False

    async def start(self) -> tuple[str, int]:
        self.started.set()
        return "127.0.0.1", 1

    async def aclose(self) -> None:
        self.closed = True


async def test_serve_until_cancelled_closes_the_server_when_cancelled() -> None:
    server = _Server()
    task = asyncio.create_task(serve_until_cancelled(server))
    async with asyncio.timeout(5):
        await server.started.wait()
    assert not server.closed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server.closed
