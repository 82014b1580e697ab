"""Traceroute tasks against a stub server, traced on loopback; the HTTP client's limits.

Traces through real routers (time exceeded from a hop) are in tests/lab/test_agent_netns.py.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from pingmesh.agent.http_client import H11Client
from pingmesh.agent.probers.traceroute import TcpTraceroute
from pingmesh.agent.tasks import TaskRunner
from pingmesh.clock import SystemClock
from pingmesh.errors import ControllerError
from pingmesh.wire.tasks import TracerouteBatch
from tests.agent.stubs import ControllerStub, closed_port, free_port


@pytest.fixture
async def client() -> AsyncIterator[H11Client]:
    http = H11Client()
    yield http
    await http.aclose()


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def runner(client: H11Client, url: str, **options: float) -> TaskRunner:
    return TaskRunner(
        client=client,
        controller=url,
        name="a",
        tracer=TcpTraceroute(bind_addr="127.0.0.1", clock=SystemClock(), hop_timeout_s=0.5),
        clock=SystemClock(),
        rng=random.Random(1),
        poll_s=options.get("poll_s", 60.0),
        max_per_minute=options.get("max_per_minute", 60.0),
        timeout_s=5.0,
    )


def task(task_id: str, port: int, src_port: int | None = None) -> dict[str, object]:
    return {
        "task_id": task_id,
        "dst": "b",
        "dst_addr": "127.0.0.1",
        "dst_port": port,
        "src_port": src_port,
        "max_hops": 4,
    }


async def test_a_trace_keeps_the_source_port_and_reaches_the_peer(listener: int) -> None:
    tracer = TcpTraceroute(bind_addr="127.0.0.1", clock=SystemClock())
    src_port = free_port("127.0.0.1")
    trace = await tracer.trace("127.0.0.1", listener, src_port=src_port, max_hops=4)
    assert trace.reached
    assert trace.src_port == src_port  # the 5-tuple of the failing probe, kept
    assert [(h.ttl, h.address) for h in trace.hops] == [(1, "127.0.0.1")]
    assert trace.hops[0].rtt_us is not None
    # Twice in a row on the same source port: no TIME_WAIT in the way.
    again = await tracer.trace("127.0.0.1", listener, src_port=src_port, max_hops=4)
    assert again.reached


async def test_a_refusing_peer_is_reached_too() -> None:
    tracer = TcpTraceroute(bind_addr="127.0.0.1", clock=SystemClock())
    trace = await tracer.trace("127.0.0.1", closed_port("127.0.0.1"), src_port=None, max_hops=4)
    assert trace.reached
    assert trace.src_port > 0


async def test_a_source_port_in_use_is_reported(listener: int) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        tracer = TcpTraceroute(bind_addr="127.0.0.1", clock=SystemClock())
        trace = await tracer.trace(
            "127.0.0.1", listener, src_port=busy.getsockname()[1], max_hops=2
        )
    assert not trace.reached
    assert "in use" in trace.detail


async def test_tasks_are_polled_traced_once_and_posted(
    controller: ControllerStub, client: H11Client, listener: int
) -> None:
    controller.tasks["a"] = {"server": "a", "tasks": [task("t1", listener)]}
    tasks = runner(client, controller.url)
    await tasks.cycle()
    await tasks.cycle()  # the server still offers t1: it is not traced again
    assert len(controller.traceroutes) == 1
    batch = TracerouteBatch.model_validate(controller.traceroutes[0])
    (result,) = batch.results
    assert (result.task_id, result.reached, result.agent) == ("t1", True, "a")
    assert result.hops[0].address == "127.0.0.1"
    stats = tasks.statistics()
    assert (stats.polls_ok, stats.traces_run, stats.results_posted) == (2, 1, 1)


async def test_the_local_rate_cap_postpones_tasks(
    controller: ControllerStub, client: H11Client, listener: int
) -> None:
    controller.tasks["a"] = {
        "server": "a",
        "tasks": [task("t1", listener), task("t2", listener), task("t3", listener)],
    }
    tasks = runner(client, controller.url, max_per_minute=1)
    await tasks.cycle()
    stats = tasks.statistics()
    assert stats.traces_run == 1
    assert stats.traces_rate_limited == 2  # left for a later poll, not lost


async def test_no_tasks_endpoint_or_no_server_is_just_counted(
    controller: ControllerStub, client: H11Client
) -> None:
    tasks = runner(client, controller.url)  # the stub has no tasks for "a": 404
    await tasks.cycle()
    down = runner(client, f"http://127.0.0.1:{free_port('127.0.0.1')}")
    await down.cycle()
    assert tasks.statistics().polls_not_found == 1
    assert down.statistics().polls_failed == 1
    assert controller.traceroutes == []


async def test_run_polls_periodically_and_cancels_cleanly(
    controller: ControllerStub, client: H11Client
) -> None:
    tasks = runner(client, controller.url, poll_s=0.05)
    job = asyncio.create_task(tasks.run())
    while controller.task_polls < 3:
        await asyncio.sleep(0.02)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job


# -- the HTTP client ---------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(
    controller: ControllerStub, client: H11Client
) -> None:
    for _ in range(3):
        response = await client.request("GET", f"{controller.url}/api/v1/tasks/zz", timeout_s=5)
        assert response.status == 404
    assert len(client._idle[("http", "127.0.0.1", int(controller.url.rsplit(":", 1)[1]))]) == 1


async def test_a_long_body_is_cut_and_a_dead_server_is_a_controller_error(
    controller: ControllerStub, client: H11Client
) -> None:
    response = await client.request(
        "GET", f"{controller.url}/api/v1/tasks/zz", timeout_s=5, max_body_bytes=4
    )
    assert response.body is None
    with pytest.raises(ControllerError, match="ConnectionRefusedError"):
        await client.request("GET", f"http://127.0.0.1:{closed_port('127.0.0.1')}/", timeout_s=5)


async def test_a_silent_server_times_out() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = H11Client()
    try:
        with pytest.raises(ControllerError, match=r"no answer within 0\.2 s"):
            await client.request("GET", f"http://127.0.0.1:{port}/", timeout_s=0.2)
    finally:
        await client.aclose()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_stale_kept_alive_connection_is_retried_on_a_fresh_one() -> None:
    answers = 0

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answers
        await reader.readuntil(b"\r\n\r\n")
        answers += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # after answering, as a server closing an idle connection would

    server = await asyncio.start_server(once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = H11Client()
    try:
        for _ in range(3):
            response = await client.request("GET", f"http://127.0.0.1:{port}/", timeout_s=5)
            assert response.body == b"ok"
            await asyncio.sleep(0.05)
        assert answers == 3
    finally:
        await client.aclose()
        server.close()
