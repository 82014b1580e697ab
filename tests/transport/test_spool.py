"""The bandwidth spool and the QUIC/HTTP transport: nothing lost within the bound, once each."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pingmesh.agent.http_client import H11Client
from pingmesh.agent.transport.http import QuicFallbackClient
from pingmesh.agent.transport.quic import QuicClient
from pingmesh.agent.transport.spool import BandwidthSpool
from pingmesh.clock import FakeClock, SystemClock
from pingmesh.server.tls import QuicSecurity
from tests.transport.servers import HOST, IngestServer, bandwidth_report, make_security

AGENT = "h1"


@pytest.fixture
def security(tmp_path: Path) -> QuicSecurity:
    return make_security(tmp_path / "tls")


@pytest.fixture
async def server(security: QuicSecurity, tmp_path: Path) -> AsyncIterator[IngestServer]:
    ingest = IngestServer(security, tmp_path / "r.sqlite")
    await ingest.start()
    yield ingest
    await ingest.stop()
    ingest.close()


def _quic(server: IngestServer, **kwargs: object) -> QuicClient:
    return QuicClient(
        host=HOST,
        port=server.quic_port,
        agent=AGENT,
        alias="web one",
        token=server.security.authenticator.token_for(AGENT),
        ca_file=server.security.ca_certificate,
        **kwargs,  # type: ignore[arg-type]
    )


def _client(
    server: IngestServer,
    *,
    quic: QuicClient | None,
    clock: FakeClock | SystemClock,
    fallback: bool = True,
    token: str | None = None,
) -> QuicFallbackClient:
    return QuicFallbackClient(
        quic=quic,
        http=H11Client(),
        clock=clock,
        rng=random.Random(1),
        agent=AGENT,
        token=token or server.security.authenticator.token_for(AGENT),
        fallback_http=fallback,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )


def _spool(client: QuicFallbackClient, server: IngestServer, **kwargs: object) -> BandwidthSpool:
    options: dict[str, object] = {
        "max_reports": 1000,
        "batch_max_reports": 10,
        "request_timeout_s": 2.0,
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.1,
    }
    options.update(kwargs)
    return BandwidthSpool(
        client=client,
        server=server.url,
        agent=AGENT,
        alias="web one",
        clock=SystemClock(),
        rng=random.Random(2),
        **options,  # type: ignore[arg-type]
    )


def _stored(server: IngestServer) -> list[tuple[str, int]]:
    rows = server.store.series(
        AGENT, "eth0", start_s=1_800_000_000.0 - 100, end_s=1_800_000_000.0 + 1000, step_s=1
    )
    return [(f"{p.start_s:.0f}", p.rx_bytes) for p in rows]


async def test_reports_go_over_quic_in_order_and_are_stored_once(server: IngestServer) -> None:
    client = _client(server, quic=_quic(server), clock=SystemClock(), fallback=False)
    async with contextlib.aclosing(client):
        spool = _spool(client, server)
        for seq in range(25):
            spool.submit(bandwidth_report(seq))
        task = asyncio.create_task(spool.run())
        async with asyncio.timeout(20):
            await spool.wait_delivered(25)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [rx for _, rx in _stored(server)] == [1000 + s for s in range(25)]
    stats = spool.statistics()
    assert (stats.reports_delivered_total, stats.reports_pending) == (25, 0)
    assert stats.batches_sent_total == 3  # 10 + 10 + 5
    figures = client.statistics()
    assert (figures.quic_requests_total, figures.http_requests_total) == (3, 0)
    (summary,) = server.store.interfaces(start_s=0, end_s=2e9)
    assert summary.alias == "web one"


async def test_while_the_server_is_away_reports_wait_and_then_arrive_exactly_once(
    server: IngestServer,
) -> None:
    client = _client(server, quic=_quic(server, request_timeout_s=0.5), clock=SystemClock())
    async with contextlib.aclosing(client):
        spool = _spool(client, server)
        task = asyncio.create_task(spool.run())
        for seq in range(5):
            spool.submit(bandwidth_report(seq))
        async with asyncio.timeout(20):
            await spool.wait_delivered(5)
        await server.stop()
        for seq in range(5, 40):
            spool.submit(bandwidth_report(seq))
        async with asyncio.timeout(20):
            while spool.statistics().send_failures_total < 3:
                await asyncio.sleep(0.01)
        assert spool.statistics().reports_pending == 35  # all kept
        await server.start()
        async with asyncio.timeout(30):
            await spool.wait_delivered(40)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [rx for _, rx in _stored(server)] == [1000 + s for s in range(40)]
    stats = spool.statistics()
    assert stats.reports_submitted_total == stats.reports_delivered_total == 40
    assert stats.reports_dropped_total == 0


async def test_a_full_spool_drops_the_oldest_and_counts_them(server: IngestServer) -> None:
    await server.stop()
    client = _client(server, quic=None, clock=SystemClock())
    async with contextlib.aclosing(client):
        spool = _spool(client, server, max_reports=10)
        for seq in range(25):
            spool.submit(bandwidth_report(seq))
        stats = spool.statistics()
        assert (stats.reports_dropped_total, stats.reports_pending) == (15, 10)
        await server.start()
        task = asyncio.create_task(spool.run())
        async with asyncio.timeout(20):
            await spool.wait_delivered(10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The freshest ten survived.
    assert [rx for _, rx in _stored(server)] == [1000 + s for s in range(15, 25)]
    stats = spool.statistics()
    assert stats.reports_submitted_total == (
        stats.reports_delivered_total + stats.reports_dropped_total + stats.reports_pending
    )


async def test_a_resent_batch_is_acknowledged_as_duplicate(server: IngestServer) -> None:
    client = _client(server, quic=_quic(server), clock=SystemClock(), fallback=False)
    async with contextlib.aclosing(client):
        first = _spool(client, server)
        first.submit(bandwidth_report(0))
        await first.flush(timeout_s=10)
        # The same report id again (as after an answer lost in a server crash).
        body = first.statistics()
        assert body.reports_delivered_total == 1
        again = _spool(client, server)
        again._prefix = first._prefix  # same agent process: same ids
        again.submit(bandwidth_report(0))
        await again.flush(timeout_s=10)
    assert again.statistics().reports_duplicate_total == 1
    assert _stored(server) == [(f"{1_800_000_000.0:.0f}", 1000)]


async def test_quic_unreachable_falls_back_to_http_then_returns(server: IngestServer) -> None:
    clock = FakeClock()
    assert server.quic is not None
    await server.stop()
    await server.start()  # HTTP and QUIC up ...
    quic = _quic(server, connect_timeout_s=0.5, request_timeout_s=0.5)
    client = _client(server, quic=quic, clock=clock)
    real_port = server.quic_port
    quic.port = real_port + 1 if real_port < 65535 else real_port - 1  # ... but not where we look
    async with contextlib.aclosing(client):
        spool = _spool(client, server)
        spool.submit(bandwidth_report(0))
        await spool.flush(timeout_s=10)
        spool.submit(bandwidth_report(1))
        await spool.flush(timeout_s=10)  # within the backoff: straight to HTTP
        figures = client.statistics()
        assert (figures.http_fallbacks_total, figures.http_requests_total) == (1, 2)
        assert figures.quic_failures_total == 1
        quic.port = real_port
        clock.advance(1.0)  # the backoff has passed
        spool.submit(bandwidth_report(2))
        await spool.flush(timeout_s=10)
        figures = client.statistics()
        assert (figures.quic_requests_total, figures.http_requests_total) == (1, 2)
    assert [rx for _, rx in _stored(server)] == [1000, 1001, 1002]


async def test_http_uploads_must_carry_the_agents_token(server: IngestServer) -> None:
    client = _client(server, quic=None, clock=SystemClock(), token="0" * 64)
    async with contextlib.aclosing(client):
        spool = _spool(client, server)
        spool.submit(bandwidth_report(0))
        await spool.flush(timeout_s=0.5)
        assert spool.statistics().reports_pending == 1  # kept: the fix is the operator's
    async with httpx.AsyncClient() as plain:
        response = await plain.post(
            f"{server.url}/api/v1/bandwidth",
            content=b'{"agent": "h1", "reports": [{"report_id": "x", "start": 1}]}',
        )
        assert response.status_code == 422  # validation first: names the field
        assert "reports.0" in response.json()["detail"]
    assert _stored(server) == []


async def test_a_refused_batch_is_dropped_and_counted(server: IngestServer) -> None:
    client = _client(server, quic=_quic(server), clock=SystemClock(), fallback=False)
    async with contextlib.aclosing(client):
        spool = _spool(client, server)
        spool._agent = "h2"  # speaks for another agent on h1's connection
        spool.submit(bandwidth_report(0))
        await spool.flush(timeout_s=0.5)
    stats = spool.statistics()
    assert (stats.reports_rejected_total, stats.reports_pending) == (0, 1)  # 403: kept
    assert _stored(server) == []


async def test_cancelling_the_sender_mid_send_loses_nothing(server: IngestServer) -> None:
    await server.stop()  # every send fails and retries: cancel lands in a send or a sleep
    client = _client(server, quic=None, clock=SystemClock())
    async with contextlib.aclosing(client):
        spool = _spool(client, server)
        for seq in range(7):
            spool.submit(bandwidth_report(seq))
        task = asyncio.create_task(spool.run())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert spool.statistics().reports_pending == 7
        await server.start()
        await spool.flush(timeout_s=10)
    assert [rx for _, rx in _stored(server)] == [1000 + s for s in range(7)]


async def test_without_fallback_a_quic_failure_keeps_the_reports_for_later(
    server: IngestServer,
) -> None:
    quic = _quic(server, connect_timeout_s=0.5, request_timeout_s=0.5)
    real_port = server.quic_port
    quic.port = real_port + 1 if real_port < 65535 else real_port - 1  # nobody there
    client = _client(server, quic=quic, clock=FakeClock(), fallback=False)  # time stands still
    async with contextlib.aclosing(client):
        spool = _spool(client, server)
        spool.submit(bandwidth_report(0))
        await spool.flush(timeout_s=5)
        # The transport error reached the spool as "not now": kept, not rejected.
        stats = spool.statistics()
        assert (stats.reports_pending, stats.reports_rejected_total) == (1, 0)
        assert stats.send_failures_total == 1
        figures = client.statistics()
        assert (figures.quic_failures_total, figures.http_requests_total) == (1, 0)
        # Within the backoff QUIC is not tried, and without the fallback nothing is sent.
        await spool.flush(timeout_s=5)
        assert client.statistics().quic_failures_total == 1
        assert spool.statistics().send_failures_total == 2
        quic.port = real_port
    assert _stored(server) == []
