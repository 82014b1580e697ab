"""TCP payload echo and HTTP(S) ping against real sockets on loopback: success and each failure."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from pingmesh.agent.metrics import MetricsServer
from pingmesh.agent.probers.http import HttpProber
from pingmesh.agent.probers.kernel import LINGER_RST
from pingmesh.agent.probers.tcp_echo import TcpEchoProber
from pingmesh.agent.responder import Responder
from pingmesh.clock import SystemClock
from pingmesh.core.probe import Outcome, ProbeKind
from tests.agent.stubs import closed_port, open_fds, target

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def responder() -> AsyncIterator[Responder]:
    echo = Responder(bind="127.0.0.1", port=0, max_connections=16)
    await echo.start()
    yield echo
    await echo.aclose()


@pytest.fixture
def echo_prober() -> TcpEchoProber:
    return TcpEchoProber(bind_addr="127.0.0.1", clock=SystemClock(), rng=random.Random(3))


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: SYNs to it are dropped, as if lost."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    filler = socket.create_connection(sock.getsockname(), timeout=5)
    yield sock.getsockname()[1]
    filler.close()
    sock.close()


async def serve(handler: Handler, *, tls: ssl.SSLContext | None = None) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def reset_after_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    writer.transport.abort()


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(-1)
    writer.close()


# -- TCP payload echo ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1024, 1400, 9000, 65536])
async def test_echo_ok_with_phases_and_dwell(
    responder: Responder, echo_prober: TcpEchoProber, size: int
) -> None:
    result = await echo_prober.probe(
        target("127.0.0.1", responder.address[1], kind=ProbeKind.TCP_ECHO, size_bytes=size),
        timeout_s=3,
    )
    assert result.outcome is Outcome.OK, result.detail
    assert result.size_bytes == max(size, 16)
    assert result.rtt_us is not None
    assert result.rtt_clock_us is not None
    assert result.connect_us is not None
    assert result.connect_us > 0
    assert result.dwell_us is not None
    assert result.ttfb_us is not None
    assert result.rtt_us <= result.rtt_clock_us  # the dwell is taken out
    assert result.retransmits == 0
    assert responder.statistics().frames >= 1


async def test_echo_refused(echo_prober: TcpEchoProber) -> None:
    result = await echo_prober.probe(
        target("127.0.0.1", closed_port("127.0.0.1"), kind=ProbeKind.TCP_ECHO), timeout_s=3
    )
    assert result.outcome is Outcome.REFUSED
    assert result.detail.startswith("connect: ECONNREFUSED")
    assert result.src_port > 0


async def test_echo_connect_timeout(echo_prober: TcpEchoProber, full_listener: int) -> None:
    before = open_fds()
    result = await echo_prober.probe(
        target("127.0.0.1", full_listener, kind=ProbeKind.TCP_ECHO), timeout_s=0.3
    )
    assert result.outcome is Outcome.TIMEOUT
    assert result.detail == "no connect within 0.3 s"
    assert open_fds() == before


async def test_echo_timeout_when_nothing_is_echoed(echo_prober: TcpEchoProber) -> None:
    server = await serve(never_answer)
    try:
        result = await echo_prober.probe(
            target("127.0.0.1", port_of(server), kind=ProbeKind.TCP_ECHO), timeout_s=0.3
        )
    finally:
        server.close()
    assert result.outcome is Outcome.TIMEOUT
    assert result.detail == "no echo within 0.3 s"


async def test_echo_reset(echo_prober: TcpEchoProber) -> None:
    server = await serve(reset_after_reading)
    try:
        result = await echo_prober.probe(
            target("127.0.0.1", port_of(server), kind=ProbeKind.TCP_ECHO, size_bytes=4096),
            timeout_s=3,
        )
    finally:
        server.close()
    assert result.outcome is Outcome.RESET
    assert "ECONNRESET" in result.detail


async def test_echo_of_other_bytes_is_a_bad_reply(echo_prober: TcpEchoProber) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readexactly(1024)
        writer.write(request[:16] + bytes(len(request) - 16) + bytes(8))
        await writer.drain()
        writer.close()

    server = await serve(garbage)
    try:
        result = await echo_prober.probe(
            target("127.0.0.1", port_of(server), kind=ProbeKind.TCP_ECHO, size_bytes=1024),
            timeout_s=3,
        )
    finally:
        server.close()
    assert result.outcome is Outcome.BAD_REPLY
    assert result.detail == "echo differs from request"


async def test_echo_cut_short_is_a_bad_reply(echo_prober: TcpEchoProber) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(100))
        await writer.drain()
        writer.close()

    server = await serve(short)
    try:
        result = await echo_prober.probe(
            target("127.0.0.1", port_of(server), kind=ProbeKind.TCP_ECHO, size_bytes=1000),
            timeout_s=3,
        )
    finally:
        server.close()
    assert result.outcome is Outcome.BAD_REPLY
    assert result.detail == "echo ended after 100 of 1008 bytes"


async def test_echo_cancellation_leaks_no_socket(echo_prober: TcpEchoProber) -> None:
    server = await serve(never_answer)
    before = open_fds()
    task = asyncio.create_task(
        echo_prober.probe(
            target("127.0.0.1", port_of(server), kind=ProbeKind.TCP_ECHO), timeout_s=30
        )
    )
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    server.close()
    await server.wait_closed()
    assert open_fds() <= before


async def test_the_responder_resets_a_bad_frame_and_caps_each_source() -> None:
    echo = Responder(bind="127.0.0.1", port=0, max_connections=16, max_per_source=2)
    await echo.start()
    try:
        reader, writer = await asyncio.open_connection(*echo.address)
        writer.write(b"PMT1" + (10).to_bytes(4, "big") + bytes(8))  # size below the header
        await writer.drain()
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await reader.readexactly(1)
        writer.close()
        held = []
        for _ in range(2):
            r, w = await asyncio.open_connection(*echo.address)
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
            held.append(w)
        r3, w3 = await asyncio.open_connection(*echo.address)
        w3.write(b"y")
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await r3.readexactly(1)
        w3.close()
        stats = echo.statistics()
        assert stats.bad_frames == 1
        assert stats.rejected_per_source == 1
        for w in held:
            w.close()
    finally:
        await echo.aclose()


# -- HTTP(S) ping --------------------------------------------------------------------------


@pytest.fixture
async def ping_server() -> AsyncIterator[MetricsServer]:
    http = MetricsServer(bind="127.0.0.1", port=0, render=lambda: b"")
    await http.start()
    yield http
    await http.aclose()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``peer.test`` (openssl CLI)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=peer.test",
            "-addext", "subjectAltName=DNS:peer.test",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Pingmesh-Dwell-Us: 7.5\r\n"
        b"Connection: close\r\n\r\npong"
    )
    await writer.drain()
    writer.close()


async def test_http_ok_with_phases_against_the_agents_ping(ping_server: MetricsServer) -> None:
    prober = HttpProber(bind_addr="127.0.0.1", clock=SystemClock())
    result = await prober.probe(
        target("127.0.0.1", ping_server.address[1], kind=ProbeKind.HTTP), timeout_s=3
    )
    assert result.outcome is Outcome.OK, result.detail
    assert result.kind is ProbeKind.HTTP
    assert result.connect_us is not None
    assert result.ttfb_us is not None
    assert result.rtt_us is not None
    assert result.tls_us is None
    assert result.dwell_us is not None  # from /ping's X-Pingmesh-Dwell-Us
    assert result.ttfb_us <= result.rtt_us  # first byte before the whole exchange
    assert dict(ping_server.statistics().requests)["/ping"] == 1


async def test_https_ok_with_the_tls_phase(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server = await serve(pong, tls=server_side)
    try:
        prober = HttpProber(
            kind=ProbeKind.HTTPS,
            bind_addr="127.0.0.1",
            clock=SystemClock(),
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        peer = target("127.0.0.1", port_of(server), kind=ProbeKind.HTTPS, name="peer.test")
        result = await prober.probe(peer, timeout_s=3)
        assert result.outcome is Outcome.OK, result.detail
        assert result.tls_us is not None
        assert result.tls_us > 0
        assert result.dwell_us == 7.5
        # Without the CA, verification fails: an error naming TLS, not a crash.
        strict = HttpProber(kind=ProbeKind.HTTPS, bind_addr="127.0.0.1", clock=SystemClock())
        refused = await strict.probe(peer, timeout_s=3)
        assert refused.outcome is Outcome.ERROR
        assert refused.detail.startswith("tls: CERTIFICATE_VERIFY_FAILED")
    finally:
        server.close()


async def test_http_status_other_than_2xx_is_a_bad_reply() -> None:
    async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await serve(not_found)
    try:
        prober = HttpProber(bind_addr="127.0.0.1", clock=SystemClock())
        result = await prober.probe(
            target("127.0.0.1", port_of(server), kind=ProbeKind.HTTP), timeout_s=3
        )
    finally:
        server.close()
    assert result.outcome is Outcome.BAD_REPLY
    assert result.detail == "HTTP 404"


async def test_http_refused_timeout_reset_and_not_http(full_listener: int) -> None:
    prober = HttpProber(bind_addr="127.0.0.1", clock=SystemClock())
    refused = await prober.probe(
        target("127.0.0.1", closed_port("127.0.0.1"), kind=ProbeKind.HTTP), timeout_s=3
    )
    assert refused.outcome is Outcome.REFUSED
    timeout = await prober.probe(
        target("127.0.0.1", full_listener, kind=ProbeKind.HTTP), timeout_s=0.3
    )
    assert timeout.outcome is Outcome.TIMEOUT
    assert timeout.detail == "no connect answer within 0.3 s"

    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        writer.close()

    reset_server, junk_server = await serve(reset_after_reading), await serve(junk)
    try:
        reset = await prober.probe(
            target("127.0.0.1", port_of(reset_server), kind=ProbeKind.HTTP), timeout_s=3
        )
        not_http = await prober.probe(
            target("127.0.0.1", port_of(junk_server), kind=ProbeKind.HTTP), timeout_s=3
        )
    finally:
        reset_server.close()
        junk_server.close()
    assert reset.outcome is Outcome.RESET
    assert not_http.outcome is Outcome.BAD_REPLY
    assert not_http.detail.startswith("request: not HTTP")
