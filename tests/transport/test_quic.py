"""QUIC between agent and server on 127.0.0.1: TLS verified, identity proved, restarts survived."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pingmesh.agent.transport.quic import QuicClient
from pingmesh.errors import AuthenticationError, TransportError
from pingmesh.server.quic import QuicListener
from pingmesh.server.tls import QuicSecurity
from tests.transport.servers import HOST, IngestServer, echo, free_port, make_security


@pytest.fixture
def security(tmp_path: Path) -> QuicSecurity:
    return make_security(tmp_path / "tls")


@pytest.fixture
async def server(security: QuicSecurity, tmp_path: Path) -> AsyncIterator[IngestServer]:
    ingest = IngestServer(security, tmp_path / "r.sqlite")
    await ingest.start(http=False)
    yield ingest
    await ingest.stop()
    ingest.close()


def _client(
    server: IngestServer, *, agent: str = "h1", token: str | None = None, **kwargs: object
) -> QuicClient:
    options: dict[str, object] = {
        "ca_file": server.security.ca_certificate,
        "connect_timeout_s": 5.0,
        "request_timeout_s": 5.0,
    }
    options.update(kwargs)
    return QuicClient(
        host=HOST,
        port=server.quic_port,
        agent=agent,
        alias=f"{agent} alias",
        token=token if token is not None else server.security.authenticator.token_for(agent),
        **options,  # type: ignore[arg-type]
    )


async def test_a_request_reaches_its_handler_as_the_authenticated_agent(
    server: IngestServer,
) -> None:
    client = _client(server)
    status, body = await client.request("/echo", b"hello")
    assert status == 200
    assert json.loads(body) == {"agent": "h1", "body": "hello"}
    # Many requests share one connection, concurrently.
    answers = await asyncio.gather(*(client.request("/echo", str(i).encode()) for i in range(20)))
    assert [json.loads(b)["body"] for _, b in answers] == [str(i) for i in range(20)]
    assert client.statistics().connects_total == 1
    assert server.quic is not None
    stats = server.quic.statistics()
    assert (stats.hellos_total, stats.connections_open) == (1, 1)
    await client.aclose()


async def test_an_unknown_path_is_a_404_answer_not_a_failure(server: IngestServer) -> None:
    client = _client(server)
    status, body = await client.request("/nowhere", b"{}")
    assert status == 404
    assert "no such path" in json.loads(body)["detail"]
    await client.aclose()


async def test_a_token_of_another_agent_is_refused(server: IngestServer) -> None:
    stolen = server.security.authenticator.token_for("h2")
    client = _client(server, agent="h1", token=stolen)
    with pytest.raises(AuthenticationError, match="refused agent 'h1'"):
        await client.request("/echo", b"x")
    assert client.statistics().auth_failures_total == 1
    assert server.quic is not None
    assert server.quic.statistics().auth_failures_total == 1
    await client.aclose()


async def test_the_server_certificate_is_verified_by_default(
    server: IngestServer, tmp_path: Path
) -> None:
    # Without the private CA the system trust store is used, and it does not know our CA.
    untrusting = _client(server, ca_file=None)
    with pytest.raises(TransportError, match="issuer certificate"):
        await untrusting.request("/echo", b"x")
    await untrusting.aclose()
    # Another CA, however valid, is not the one that signed the server's certificate.
    other = make_security(tmp_path / "other-tls")
    wrong_ca = _client(server, ca_file=other.ca_certificate)
    with pytest.raises(TransportError, match="issuer certificate"):
        await wrong_ca.request("/echo", b"x")
    await wrong_ca.aclose()
    # The right CA, but a name the certificate does not carry.
    wrong_name = _client(server, server_name="not-the-server.example")
    with pytest.raises(TransportError, match="doesn't match"):
        await wrong_name.request("/echo", b"x")
    await wrong_name.aclose()
    assert server.quic is not None
    assert server.quic.statistics().hellos_total == 0


async def test_nobody_listening_fails_fast_and_the_next_request_reconnects(
    server: IngestServer,
) -> None:
    client = _client(server, request_timeout_s=2.0)
    assert (await client.request("/echo", b"1"))[0] == 200
    await server.stop()
    with pytest.raises(TransportError):
        await client.request("/echo", b"2")  # port unreachable, or no answer
    assert not client.connected
    await server.start(http=False)  # a new server: it knows nothing of the old connection
    status, body = await client.request("/echo", b"3")
    assert (status, json.loads(body)["body"]) == (200, "3")
    stats = client.statistics()
    assert stats.connects_total == 2
    assert stats.request_failures_total == 1
    await client.aclose()


async def test_a_silent_server_times_out(tmp_path: Path) -> None:
    # A UDP socket that never answers: the handshake cannot complete.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))
        client = QuicClient(
            host=HOST,
            port=silent.getsockname()[1],
            agent="h1",
            alias="",
            token="t",
            connect_timeout_s=0.3,
        )
        with pytest.raises(TransportError, match="no handshake"):
            await client.request("/echo", b"x")
        assert client.statistics().connect_failures_total == 1
        await client.aclose()


async def test_cancelling_the_listener_closes_connections_and_frees_the_port(
    server: IngestServer,
) -> None:
    client = _client(server)
    assert (await client.request("/echo", b"1"))[0] == 200
    await server.stop()
    async with asyncio.timeout(5):
        while client.connected:  # the server's CONNECTION_CLOSE arrives
            await asyncio.sleep(0.01)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((HOST, server.quic_port))  # free again
    await client.aclose()


async def test_a_request_larger_than_the_cap_is_refused(security: QuicSecurity) -> None:
    port = free_port(socket.SOCK_DGRAM)
    listener = QuicListener(
        host=HOST,
        port=port,
        certificate=security.certificate,
        private_key=security.private_key,
        authenticator=security.authenticator,
        handlers={"/echo": echo},
        max_request_bytes=10_000,
    )
    task = asyncio.create_task(listener.serve())
    client = QuicClient(
        host=HOST,
        port=port,
        agent="h1",
        alias="",
        token=security.authenticator.token_for("h1"),
        ca_file=security.ca_certificate,
    )
    status, body = await client.request("/echo", b"x" * 50_000)
    assert status == 413
    assert "larger than 10000 bytes" in json.loads(body)["detail"]
    assert (await client.request("/echo", b"small"))[0] == 200  # the connection goes on
    assert listener.statistics().requests_too_large_total == 1
    await client.aclose()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
