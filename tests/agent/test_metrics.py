"""The agent's HTTP endpoint: /metrics (valid Prometheus text), /ping, and its limits."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pingmesh.agent.agent import Agent
from pingmesh.agent.metrics import MetricsServer
from pingmesh.config import AgentConfig
from tests.agent.stubs import ControllerStub, eventually_true, free_port, pinglist_for


def samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(found: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matches = [s.value for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, found.get(name))
    return matches[0]


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    metrics = MetricsServer(
        bind="127.0.0.1", port=0, render=lambda: b"# nothing\n", max_connections=2
    )
    await metrics.start()
    task = asyncio.create_task(metrics.serve())
    yield metrics
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_agent_metrics_are_valid_prometheus_text_with_the_counters(
    tmp_path: Path, loopback: str
) -> None:
    a, b = loopback + "1", loopback + "2"
    b_port = free_port(b)
    http_port = free_port(a)
    pinglist = pinglist_for("a", a, [("b", b, b_port), ("c", b, free_port(b))])
    (tmp_path / "a.json").write_text(pinglist.model_dump_json())
    (tmp_path / "b.json").write_text(pinglist_for("b", b, []).model_dump_json())
    agent_b = Agent(
        AgentConfig(bind=b, responder_port=b_port, http_port=0, pinglist_file=tmp_path / "b.json")
    )
    agent = Agent(
        AgentConfig(
            bind=a,
            responder_port=free_port(a),
            http_port=http_port,
            pinglist_file=tmp_path / "a.json",
            results_file=str(tmp_path / "out.jsonl"),
        ),
        rng=random.Random(3),
    )
    async with asyncio.TaskGroup() as tasks:
        task_b = tasks.create_task(agent_b.run())
        task_a = tasks.create_task(agent.run())
        async with asyncio.timeout(10):
            await agent.wait_probes(2)
        async with httpx.AsyncClient(base_url=f"http://{a}:{http_port}") as client:
            response = await client.get("/metrics")
            ping = await client.get("/ping")
        task_a.cancel()
        task_b.cancel()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(response.text)
    stats = agent.statistics()
    assert value(found, "pingmesh_agent_probing") == 1
    assert value(found, "pingmesh_agent_peers") == 2
    ok = value(found, "pingmesh_agent_probes_total", kind="tcp", outcome="ok")
    refused = value(found, "pingmesh_agent_probes_total", kind="tcp", outcome="refused")
    assert ok >= 1
    assert refused >= 1
    assert value(found, "pingmesh_agent_probes_total", kind="tcp", outcome="timeout") == 0
    written = value(found, "pingmesh_agent_results_written_total")
    assert written + value(found, "pingmesh_agent_results_buffered") == ok + refused
    assert value(found, "pingmesh_agent_probes_rate_limited_total") == 0
    assert value(found, "pingmesh_agent_responder_connections_rejected_total", cap="total") == 0
    assert value(found, "pingmesh_agent_http_requests_total", path="/metrics") == 1
    assert value(found, "pingmesh_agent_info", mode="standalone") == 1
    assert "pingmesh_agent_upload_batches_sent_total" not in found  # no uploader standalone
    # Counters end in _total, gauges do not; histograms have buckets, a sum and a count.
    for family in text_string_to_metric_families(response.text):
        assert family.type in ("counter", "gauge", "histogram"), family.name
        for sample in family.samples:
            if family.type == "histogram":
                assert sample.name.endswith(("_bucket", "_sum", "_count")), sample.name
            else:
                assert sample.name.endswith("_total") == (family.type == "counter"), sample.name
    assert stats.http is not None
    assert ping.status_code == 200
    assert ping.text == "pong"


async def test_controller_mode_metrics_show_fetches_and_uploads(
    controller: ControllerStub, loopback: str
) -> None:
    a = loopback + "1"
    a_port, http_port = free_port(a), free_port(a)
    controller.pinglists["a"] = pinglist_for("a", a, [("self", a, a_port)])
    agent = Agent(
        AgentConfig(
            controller=controller.url,
            name="a",
            bind=a,
            responder_port=a_port,
            http_port=http_port,
            upload_interval_s=0.1,
        )
    )
    task = asyncio.create_task(agent.run())
    try:
        await eventually_true(
            lambda: agent.uploader is not None and agent.uploader.statistics().batches_sent >= 1
        )
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{a}:{http_port}/metrics")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    found = samples(response.text)
    assert value(found, "pingmesh_agent_pinglist_fetches_total", result="ok") == 1
    assert value(found, "pingmesh_agent_pinglist_fetches_total", result="failed") == 0
    assert value(found, "pingmesh_agent_pinglist_consecutive_failures") == 0
    assert value(found, "pingmesh_agent_upload_batches_sent_total") >= 1
    assert value(found, "pingmesh_agent_upload_records_sent_total") >= 1
    assert value(found, "pingmesh_agent_upload_records_dropped_total", reason="queue_full") == 0
    assert value(found, "pingmesh_agent_probes_total", kind="tcp", outcome="ok") >= 1  # itself
    # Connect probes never wake the responder (TCP_DEFER_ACCEPT).
    assert value(found, "pingmesh_agent_responder_connections_total") == 0
    assert value(found, "pingmesh_agent_info", mode="controller") == 1


async def test_ping_404_405_head_and_keep_alive(server: MetricsServer) -> None:
    host, port = server.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        assert (await client.get("/ping")).text == "pong"
        assert (await client.get("/ping?x=1")).text == "pong"
        assert (await client.get("/nope")).status_code == 404
        post = await client.post("/metrics", content=b"x" * 100_000)
        assert post.status_code == 405
        assert post.headers["allow"] == "GET, HEAD"
        head = await client.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""
    stats = server.statistics()
    requests = dict(stats.requests)
    assert requests == {"/metrics": 2, "/ping": 2, "other": 1}
    assert stats.connections_rejected == 0  # one kept-alive connection served all of them


async def test_a_malformed_request_gets_400(server: MetricsServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 400")
    assert server.statistics().bad_requests == 1


async def test_connections_over_the_cap_are_closed(server: MetricsServer) -> None:
    held = [await asyncio.open_connection(*server.address) for _ in range(2)]
    async with asyncio.timeout(5):
        while server.statistics().open_connections < 2:
            await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    except ConnectionResetError:
        pass
    writer.close()
    assert server.statistics().connections_rejected == 1
    for _, w in held:
        w.close()


async def test_cancelling_serve_closes_its_connections() -> None:
    metrics = MetricsServer(bind="127.0.0.1", port=0, render=lambda: b"")
    address = await metrics.start()
    task = asyncio.create_task(metrics.serve())
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readuntil(b"pong")).startswith(b"HTTP/1.1 200")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await reader.read() == b""
    writer.close()
    assert metrics.statistics().open_connections == 0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*address)


async def scrape(agent: Agent, stop_after: int) -> dict[str, list[Sample]]:
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(20):
            await agent.wait_listening()
            await agent.wait_probes(stop_after)
        return samples(agent.render_metrics().decode())
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(("limit", "per_peer"), [(10, True), (1, False)])
async def test_histograms_per_scope_always_per_peer_only_below_the_limit(
    tmp_path: Path, loopback: str, limit: int, per_peer: bool
) -> None:
    a = loopback + "1"
    a_port = free_port(a)
    pinglist = pinglist_for("a", a, [("self", a, a_port), ("other", a, free_port(a))])
    (tmp_path / "a.json").write_text(pinglist.model_dump_json())
    agent = Agent(
        AgentConfig(
            bind=a,
            responder_port=a_port,
            http_port=0,
            pinglist_file=tmp_path / "a.json",
            per_peer_metrics_max_peers=limit,
        )
    )
    found = await scrape(agent, 2)
    buckets = [
        s for s in found["pingmesh_agent_scope_rtt_seconds_bucket"] if s.labels["kind"] == "tcp"
    ]
    bounds = [float(s.labels["le"]) for s in buckets]
    assert bounds[:3] == [25e-6, 50e-6, 100e-6]  # 25 µs doubling, the same on every agent
    assert bounds[-1] == float("inf")
    assert [s.value for s in buckets] == sorted(s.value for s in buckets)
    assert (
        value(found, "pingmesh_agent_scope_rtt_seconds_count", kind="tcp", scope="intra_tor") >= 1
    )
    assert value(found, "pingmesh_agent_limit", limit="max_payload_bytes") == 65536
    assert value(found, "pingmesh_agent_limit", limit="min_interval_seconds") == 1
    assert value(found, "pingmesh_agent_peer_series") == int(per_peer)
    assert ("pingmesh_agent_peer_rtt_seconds_bucket" in found) is per_peer
    assert value(found, "process_resident_memory_bytes") > 1_000_000
    if per_peer:
        refused = value(
            found, "pingmesh_agent_peer_probes_total", peer="other", kind="tcp", outcome="refused"
        )
        assert refused >= 1
