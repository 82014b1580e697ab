"""The TCP echo responder: echo, connection cap, bounded buffers, idle close, cancellation."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pingmesh.agent.responder import Responder


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True when the peer closed or reset the connection (within 5 s)."""
    try:
        async with asyncio.timeout(5):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True


ResponderFactory = Callable[..., Awaitable[Responder]]


@pytest.fixture
async def responders() -> AsyncIterator[ResponderFactory]:
    tasks: list[asyncio.Task[None]] = []

    async def start(**kwargs: object) -> Responder:
        options: dict[str, object] = {"bind": "127.0.0.1", "port": 0, "max_connections": 16}
        options.update(kwargs)
        responder = Responder(**options)  # type: ignore[arg-type]
        await responder.start()
        tasks.append(asyncio.create_task(responder.serve()))
        return responder

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_echoes_and_closes_on_eof(responders: ResponderFactory) -> None:
    responder = await responders()
    reader, writer = await asyncio.open_connection(*responder.address)
    writer.write(b"hello pingmesh")
    await writer.drain()
    assert await reader.readexactly(14) == b"hello pingmesh"
    writer.write_eof()
    assert await reader.read() == b""  # the responder closed after EOF
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: responder.statistics().open_connections == 0)
    stats = responder.statistics()
    assert (stats.accepted, stats.rejected, stats.echoed_bytes) == (1, 0, 14)


async def test_echoes_a_large_payload_in_full(responders: ResponderFactory) -> None:
    responder = await responders(max_buffer_bytes=4096)
    reader, writer = await asyncio.open_connection(*responder.address)
    payload = bytes(range(256)) * 4096  # 1 MiB, far more than the echo buffer

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    echoed = await reader.read(-1)
    await sender
    writer.close()
    assert echoed == payload


async def test_a_peer_that_does_not_read_cannot_grow_our_buffer(
    responders: ResponderFactory,
) -> None:
    responder = await responders(max_buffer_bytes=16 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, responder.address)
    chunk = b"x" * 65536
    sent = 0
    blocked = False
    try:
        while sent < 64 * 1024 * 1024:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.05)  # let the responder run; is it still reading?
                try:
                    sent += sock.send(chunk)
                except BlockingIOError:
                    blocked = True
                    break
            await asyncio.sleep(0)
    finally:
        sock.close()
    assert blocked, f"sent {sent} bytes without being pushed back"


async def test_connection_cap_resets_the_excess_and_counts_it(
    responders: ResponderFactory,
) -> None:
    responder = await responders(max_connections=2)
    clients = []
    for i in range(2):
        reader, writer = await asyncio.open_connection(*responder.address)
        writer.write(b"%d" % i)
        assert await reader.readexactly(1) == b"%d" % i  # admitted and echoing
        clients.append((reader, writer))
    # With TCP_DEFER_ACCEPT the kernel hands a connection over once it carries data.
    reader3, writer3 = await asyncio.open_connection(*responder.address)
    writer3.write(b"3")
    assert await closed_by_peer(reader3)
    writer3.close()
    stats = responder.statistics()
    assert (stats.open_connections, stats.accepted, stats.rejected) == (2, 2, 1)
    # A slot that frees up is available again.
    clients[0][1].close()
    await eventually(lambda: responder.statistics().open_connections == 1)
    reader4, writer4 = await asyncio.open_connection(*responder.address)
    writer4.write(b"z")
    assert await reader4.readexactly(1) == b"z"
    for _, writer in [*clients[1:], (reader4, writer4)]:
        writer.close()
    assert responder.statistics().rejected == 1


async def test_idle_connections_are_closed(responders: ResponderFactory) -> None:
    responder = await responders(idle_timeout_s=0.2)
    reader, writer = await asyncio.open_connection(*responder.address)
    writer.write(b"a")
    assert await reader.readexactly(1) == b"a"
    assert await closed_by_peer(reader)
    writer.close()
    await eventually(lambda: responder.statistics().open_connections == 0)
    assert responder.statistics().idle_closed == 1


async def test_cancelling_serve_closes_everything() -> None:
    responder = Responder(bind="127.0.0.1", port=0, max_connections=8)
    address = await responder.start()
    task = asyncio.create_task(responder.serve())
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"q")
    assert await reader.readexactly(1) == b"q"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await closed_by_peer(reader)
    writer.close()
    assert responder.statistics().open_connections == 0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*address)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        Responder(bind="127.0.0.1", port=0, max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        Responder(bind="127.0.0.1", port=0, max_connections=1, idle_timeout_s=0)
