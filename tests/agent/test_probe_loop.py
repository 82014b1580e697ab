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
from pingmesh.agent.probers.tcp_echo import TcpEchoProber
from pingmesh.agent.responder import Responder
from pingmesh.clock import SystemClock
from pingmesh.core.probe import Outcome, ProbeKind, ProbePlan, ProbeResult
from tests.agent.stubs import eventually_true, open_fds, pinglist_for, target


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
    loop.set_pinglist(pinglist_for("a", host, [(f"p{i}", host, port) for i in range(20)]).to_plan())
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
        loop.set_pinglist(pinglist_for("a", host, [("old", host, port)]).to_plan())
        await loop.wait_probing()
        await loop.wait_completed(1)
        loop.set_pinglist(pinglist_for("a", host, [("new", host, port)]).to_plan())
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


@pytest.fixture
def blackhole() -> Iterator[tuple[str, int]]:
    """A listener whose accept queue is full: every SYN to it is dropped (probes hang)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    filler = socket.create_connection(sock.getsockname(), timeout=5)
    yield "127.0.0.1", sock.getsockname()[1]
    filler.close()
    sock.close()


def plan(host: str, port: int, count: int, *, timeout_s: float = 1.0) -> ProbePlan:
    return pinglist_for(
        "a", host, [(f"p{i}", host, port) for i in range(count)], timeout_s=timeout_s
    ).to_plan()


async def test_the_concurrency_cap_bounds_probes_in_flight(blackhole: tuple[str, int]) -> None:
    host, port = blackhole
    results: list[ProbeResult] = []
    loop = make_loop(results, rate=10_000.0, burst=1000, concurrency=5)
    loop.set_pinglist(plan(host, port, 40, timeout_s=30.0))
    task = asyncio.create_task(loop.run())
    try:
        await eventually_true(lambda: loop.statistics().in_flight == 5)
        await asyncio.sleep(0.2)  # more peers are due, but no slot is free
        stats = loop.statistics()
        assert stats.in_flight == 5
        assert stats.started == 5
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancelling_midway_closes_every_probe_and_keeps_the_books(
    blackhole: tuple[str, int], listener: tuple[str, int]
) -> None:
    """Callback probes (no task each) are cancelled with the loop: sockets closed, counted."""
    results: list[ProbeResult] = []
    loop = make_loop(results, rate=10_000.0, burst=1000, concurrency=64)
    hung = plan(*blackhole, 10, timeout_s=30.0).targets
    fine = plan(*listener, 10).targets
    loop.set_pinglist(
        ProbePlan(version="v", server="a", address="127.0.0.1", timeout_s=30.0, targets=hung + fine)
    )
    before = open_fds()
    task = asyncio.create_task(loop.run())
    await eventually_true(lambda: loop.statistics().in_flight == 10 and len(results) >= 10)
    assert open_fds() == before + 11  # the hung probes' sockets, the prober's epoll set
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = loop.statistics()
    assert stats.in_flight == 0
    assert stats.cancelled == 10
    assert stats.started == stats.completed + stats.cancelled == 20
    assert open_fds() == before


async def test_loop_lag_is_measured_on_the_loops_own_timers(listener: tuple[str, int]) -> None:
    results: list[ProbeResult] = []
    clock = SystemClock()
    loop = ProbeLoop(
        probers={ProbeKind.TCP: TcpConnectProber(bind_addr="127.0.0.1", clock=clock)},
        sink=results.append,
        clock=clock,
        rng=random.Random(4),
        max_probe_rate=1000.0,
        max_concurrent_probes=64,
        tick_s=0.02,
    )
    loop.set_pinglist(plan(*listener, 5))
    task = asyncio.create_task(loop.run())
    try:
        await eventually_true(lambda: len(results) >= 10)
        # Block the event loop for longer than the interval (1 s), so that the loop's pending
        # timer (due within 1 s) fires at least 0.5 s late; the probes it starts say so.
        time.sleep(1.5)
        count = len(results)
        await eventually_true(lambda: len(results) >= count + 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    stats = loop.statistics()
    assert stats.loop_lag.count >= 1
    assert stats.loop_lag_max_s >= 0.1
    assert max(r.send_lag_us or 0 for r in results) >= 100_000
    assert all(r.send_lag_us is not None for r in results[count:])


async def test_mixed_kinds_run_as_callbacks_and_tasks_side_by_side() -> None:
    """TCP connect (callback) and TCP echo (task) probes from one loop."""
    echo = Responder(bind="127.0.0.1", port=0, max_connections=64)
    await echo.start()
    port = echo.address[1]
    clock = SystemClock()
    results: list[ProbeResult] = []
    loop = ProbeLoop(
        probers={
            ProbeKind.TCP: TcpConnectProber(bind_addr="127.0.0.1", clock=clock),
            ProbeKind.TCP_ECHO: TcpEchoProber(
                bind_addr="127.0.0.1", clock=clock, rng=random.Random(1)
            ),
        },
        sink=results.append,
        clock=clock,
        rng=random.Random(4),
        max_probe_rate=1000.0,
        max_concurrent_probes=64,
    )
    loop.set_pinglist(
        ProbePlan(
            version="v",
            server="a",
            address="127.0.0.1",
            timeout_s=2.0,
            targets=(
                target("127.0.0.1", port, kind=ProbeKind.TCP, name="c"),
                target("127.0.0.1", port, kind=ProbeKind.TCP_ECHO, size_bytes=1000, name="e"),
                target("127.0.0.1", port, kind=ProbeKind.ICMP, name="i"),  # no prober given
            ),
        )
    )
    task = asyncio.create_task(loop.run())
    try:
        await eventually_true(
            lambda: {r.kind for r in results} >= {ProbeKind.TCP, ProbeKind.TCP_ECHO, ProbeKind.ICMP}
        )
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await echo.aclose()
    by_kind = {r.kind: r for r in results}
    assert by_kind[ProbeKind.TCP].outcome is Outcome.OK
    assert by_kind[ProbeKind.TCP_ECHO].outcome is Outcome.OK
    assert by_kind[ProbeKind.ICMP].outcome is Outcome.ERROR
    assert "no prober" in by_kind[ProbeKind.ICMP].detail
    stats = loop.statistics()
    assert stats.count(Outcome.OK, ProbeKind.TCP_ECHO) >= 1
    # every outcome of every kind in use is reported, zeros included
    assert len([o for k, o, _ in stats.outcomes if k is ProbeKind.TCP]) == len(Outcome)
