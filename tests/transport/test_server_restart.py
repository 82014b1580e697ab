"""Done-when of issue 7: kill the server mid-stream, restart it; the agent reconnects over QUIC,
its figures resume with fresh values, and every report made meanwhile arrives exactly once.

The server is a real ``pingmesh server`` process (SQLite, or the session's real PostgreSQL),
killed with SIGKILL. The agent side is the real sampler → spool → QUIC stack in this process,
reading counters from a source that moves by a different amount at every read, so that a
report carrying frozen or repeated figures would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.agent.bandwidth import BandwidthReport, BandwidthSampler, InterfaceCounters
from pingmesh.agent.http_client import H11Client
from pingmesh.agent.transport.http import QuicFallbackClient
from pingmesh.agent.transport.quic import QuicClient
from pingmesh.agent.transport.spool import BandwidthSpool
from pingmesh.clock import SystemClock
from pingmesh.server.tls import agent_token, load_secret
from pingmesh.store.bandwidth import BandwidthStore
from pingmesh.store.results import ResultsDB
from tests.transport.servers import HOST, ServerProcess

pytestmark = pytest.mark.slow

AGENT = "h1"


class MovingCounters:
    """eth0's counters: read k adds k × 100 bytes received and k × 10 sent."""

    def __init__(self) -> None:
        self.reads = 0
        self.rx = self.tx = self.packets = 0

    def read(self) -> dict[str, InterfaceCounters]:
        self.reads += 1
        self.rx += self.reads * 100
        self.tx += self.reads * 10
        self.packets += 1
        return {
            "eth0": InterfaceCounters(
                rx_bytes=self.rx,
                rx_packets=self.packets,
                tx_bytes=self.tx,
                tx_packets=self.packets,
            )
        }


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None  # the server's default: DATA/results.sqlite
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def server(tmp_path: Path, database: str | None) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data", database)
    yield process
    process.stop()


async def _until(condition: object, *, timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_killed_and_restarted_server_gets_every_report_once_with_fresh_figures(
    server: ServerProcess, database: str | None
) -> None:
    await server.start()
    tls = server.data / "tls"
    token = agent_token(load_secret(tls / "agent-secret"), AGENT)
    quic = QuicClient(
        host=HOST,
        port=server.quic_port,
        agent=AGENT,
        alias="restart test",
        token=token,
        ca_file=tls / "ca.pem",
        connect_timeout_s=2.0,
        request_timeout_s=2.0,
    )
    clock = SystemClock()
    transport = QuicFallbackClient(
        quic=quic,
        http=H11Client(),
        clock=clock,
        rng=random.Random(7),
        agent=AGENT,
        token=token,
        fallback_http=False,  # prove that QUIC carried everything
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
    )
    made: list[BandwidthReport] = []
    async with contextlib.aclosing(transport):
        spool = BandwidthSpool(
            client=transport,
            server=server.url,
            agent=AGENT,
            alias="restart test",
            clock=clock,
            rng=random.Random(8),
            max_reports=10_000,
            batch_max_reports=50,
            request_timeout_s=2.0,
            backoff_initial_s=0.05,
            backoff_max_s=0.3,
        )

        def sink(report: BandwidthReport) -> None:
            made.append(report)
            spool.submit(report)

        counters = MovingCounters()
        sampler = BandwidthSampler(
            source=counters,
            sink=sink,
            clock=clock,
            sample_interval_s=0.05,
            report_interval_s=0.1,
        )
        async with asyncio.TaskGroup() as tasks:
            sampling = tasks.create_task(sampler.run())
            sending = tasks.create_task(spool.run())
            await _until(lambda: spool.statistics().reports_delivered_total >= 10)

            server.kill()
            killed_at, killed_s = len(made), time.time()
            await _until(lambda: len(made) >= killed_at + 15)  # made while the server is away
            assert spool.statistics().reports_delivered_total <= killed_at + 1
            await server.start()
            back_at = len(made)
            await _until(lambda: spool.statistics().reports_delivered_total >= back_at + 10)
            sampling.cancel()
            await _until(lambda: spool.statistics().reports_pending == 0)
            sending.cancel()
        await quic.aclose()
    server.stop()

    # Every report, in order, with the figures the sampler made, stored exactly once.
    db = ResultsDB(database or server.data / "results.sqlite")
    stored = BandwidthStore(db.database).reports(AGENT, "eth0", start_s=0, end_s=4e9)
    db.close()
    ids = [report_id for report_id, _ in stored]
    assert len(ids) == len(set(ids)) == len(made)
    assert [r.interfaces[0].rx_bytes for _, r in stored] == [r.interfaces[0].rx_bytes for r in made]
    # Fresh figures: the reports account for every byte the counters moved (first read is the
    # baseline; what the last reads moved waits in the meter), in time order, and those made
    # after the restart measure traffic after the restart (frozen stats would repeat old ones).
    pending = sum(i.rx_bytes for i in sampler.meter.take_report())
    assert sum(r.interfaces[0].rx_bytes for r in made) + pending == counters.rx - 100
    ends = [r.end_s for r in made]
    assert all(later > earlier for earlier, later in itertools.pairwise(ends))
    after = made[back_at:]
    assert all(r.start_s >= killed_s and r.interfaces[0].rx_bytes > 0 for r in after)
    assert len({r.interfaces[0].rx_bytes for r in after}) > 1
    assert len(made) >= back_at + 10 > killed_at + 15
    stats = spool.statistics()
    assert (stats.reports_dropped_total, stats.reports_rejected_total) == (0, 0)
    assert stats.reports_delivered_total == len(made)
    # Over QUIC, reconnected: at least two connections, nothing went over HTTP.
    quic_stats, carried = quic.statistics(), transport.statistics()
    assert quic_stats.connects_total >= 2
    assert carried.http_requests_total == 0
