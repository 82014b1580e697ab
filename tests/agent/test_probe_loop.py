"""The probe loop: the global rate cap and the concurrency cap, with real TCP probes."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Iterator

import pytest

from pingmesh.agent.probe_loop import ProbeLoop
from pingmesh.agent.probers.tcp import TcpConnectProber
from pingmesh.clock import SystemClock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult
from tests.agent.stubs import eventually_true, pinglist_for


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        yield "127.0.0.1", sock.getsockname()[1]


def make_loop(sink: list[ProbeResult], **limits: float) -> ProbeLoop:
    clock = SystemClock()
    return ProbeLoop(
        probers={ProbeKind.TCP: TcpConnectProber(bind_addr="127.0.0.1", clock=clock)},
        sink=sink.append,
        clock=clock,
        rng=random.Random(4),
        max_probe_rate=limits.get("rate", 1000.0),
        max_concurrent_probes=int(limits.get("concurrency", 64)),
        burst=int(limits.get("burst", 1)),
    )


async def test_the_global_rate_cap_skips_and_counts(listener: tuple[str, int]) -> None:
    host, port = listener
    results: list[ProbeResult] = []
    loop = make_loop(results, rate=2.0, burst=1)
    loop.set_pinglist(pinglist_for("a", host, [(f"p{i}", host, port) for i in range(20)]))
    start = time.monotonic()
    task = asyncio.create_task(loop.run())
    try:
        # Every peer comes due once within its first (1 s) interval.
        await eventually_true(
            lambda: loop.statistics().started + loop.statistics().rate_limited >= 20
        )
        elapsed_s = time.monotonic() - start
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    stats = loop.statistics()
    assert stats.rate_limited > 0
    assert stats.started <= 1 + 2.0 * elapsed_s + 1  # burst + rate × time (upper bound)
    assert stats.started == stats.completed + stats.cancelled
    assert len(results) == stats.completed
    assert all(r.outcome is Outcome.OK for r in results)


async def test_a_pinglist_change_keeps_probing_the_new_peers(listener: tuple[str, int]) -> None:
    host, port = listener
    results: list[ProbeResult] = []
    loop = make_loop(results)
    task = asyncio.create_task(loop.run())
    try:
        assert not loop.probing
        loop.set_pinglist(pinglist_for("a", host, [("old", host, port)]))
        await loop.wait_probing()
        await loop.wait_completed(1)
        loop.set_pinglist(pinglist_for("a", host, [("new", host, port)]))
        await eventually_true(lambda: any(r.dst == "new" for r in results))
        loop.set_pinglist(None)
        await loop.wait_not_probing()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    stats = loop.statistics()
    assert stats.peers == 0
    assert stats.pinglist_version is None
    assert {r.dst for r in results} == {"old", "new"}
