"""The whole agent, end to end on loopback: standalone and controller mode."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pingmesh.agent.agent import Agent, AgentStatistics
from pingmesh.config import AgentConfig
from pingmesh.core.probe import Outcome, ProbeKind, Scope
from pingmesh.errors import ConfigError, PinglistError
from pingmesh.wire.pinglist import PeerModel, PinglistModel
from pingmesh.wire.results import ProbeRecordModel
from tests.agent.stubs import ControllerStub, eventually_true, free_port, pinglist_for


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(10):
            waiter = asyncio.create_task(agent.wait_listening())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done():
                task.result()  # start-up failed: raise it here
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def write_pinglist(path: Path, pinglist: PinglistModel) -> Path:
    path.write_text(pinglist.model_dump_json())
    return path


def consistent(stats: AgentStatistics) -> None:
    probes = stats.probes
    assert probes.in_flight == 0
    assert probes.started == probes.completed + probes.cancelled
    if stats.results_file is not None:
        assert stats.results_file.written + stats.results_file.write_errors == probes.completed
    if stats.uploader is not None:
        u = stats.uploader
        assert u.records_submitted == probes.completed
        assert u.records_sent + u.dropped_records() + u.records_buffered + u.records_pending == (
            u.records_submitted
        )


async def test_standalone_probes_and_writes_json_lines(tmp_path: Path, loopback: str) -> None:
    a, b, c = loopback + "1", loopback + "2", loopback + "3"
    b_port = free_port(b)
    closed_port = free_port(c)  # nothing listens there: refused
    # Agent B only answers (an empty pinglist).
    agent_b = Agent(
        AgentConfig(
            bind=b,
            responder_port=b_port,
            http_port=0,
            pinglist_file=write_pinglist(tmp_path / "b.json", pinglist_for("b", b, [])),
        )
    )
    results = tmp_path / "results.jsonl"
    pinglist = pinglist_for("a", a, [("b", b, b_port), ("c", c, closed_port)])
    agent_a = Agent(
        AgentConfig(
            bind=a,
            responder_port=free_port(a),
            http_port=0,
            pinglist_file=write_pinglist(tmp_path / "a.json", pinglist),
            results_file=str(results),
        ),
        rng=random.Random(5),
    )
    async with running(agent_b):
        assert not agent_b.statistics().probing
        assert "empty pinglist" in agent_b.statistics().reason
        async with running(agent_a):
            await agent_a.wait_probing()
            async with asyncio.timeout(10):
                await agent_a.wait_probes(4)  # two rounds of both peers
        stats_a = agent_a.statistics()
        stats_b = agent_b.statistics()
    consistent(stats_a)
    records = [
        ProbeRecordModel.model_validate_json(line) for line in results.read_text().splitlines()
    ]
    assert len(records) == stats_a.probes.completed >= 4
    by_peer = {r.dst: r for r in records}
    assert by_peer["b"].outcome is Outcome.OK
    assert by_peer["b"].rtt_us is not None
    assert by_peer["b"].rtt_us > 0
    assert (by_peer["b"].src_addr, by_peer["b"].dst_addr, by_peer["b"].dst_port) == (a, b, b_port)
    assert by_peer["c"].outcome is Outcome.REFUSED
    assert {r.outcome for r in records} == {Outcome.OK, Outcome.REFUSED}
    assert stats_a.probes.count(Outcome.OK) >= 2
    assert stats_a.probes.count(Outcome.REFUSED) >= 2
    # B's kernel answered A's SYNs; with TCP_DEFER_ACCEPT the connections, reset by A at once,
    # never woke B's responder: connect probes cost the responder nothing.
    assert stats_b.responder.accepted == 0
    assert stats_b.probes.started == 0


async def test_cancelling_midway_leaves_consistent_statistics(
    tmp_path: Path, loopback: str
) -> None:
    """Cancel while probes are in flight (they wait on a full accept queue)."""
    a, b = loopback + "1", loopback + "2"
    blocked = socket.socket()
    blocked.bind((b, 0))
    blocked.listen(0)
    filler = socket.create_connection(blocked.getsockname(), timeout=5)
    port = blocked.getsockname()[1]
    peers = [(f"p{i}", b, port) for i in range(20)]
    results = tmp_path / "results.jsonl"
    agent = Agent(
        AgentConfig(
            bind=a,
            responder_port=free_port(a),
            http_port=0,
            pinglist_file=write_pinglist(
                tmp_path / "a.json", pinglist_for("a", a, peers, timeout_s=30)
            ),
            results_file=str(results),
            max_concurrent_probes=4,
        )
    )
    try:
        async with running(agent):
            await eventually_true(lambda: agent.statistics().probes.in_flight == 4)
            assert agent.statistics().probes.started == 4  # the concurrency cap holds
    finally:
        filler.close()
        blocked.close()
    stats = agent.statistics()
    consistent(stats)
    assert stats.probes.cancelled == 4
    assert stats.probes.completed == 0
    assert stats.responder.open_connections == 0
    assert len(results.read_text().splitlines()) == stats.probes.completed


async def test_controller_mode_fetches_probes_uploads_and_obeys_the_kill_switch(
    controller: ControllerStub, loopback: str
) -> None:
    a, b = loopback + "1", loopback + "2"
    b_port = free_port(b)
    responder_b = Agent(
        AgentConfig(
            bind=b,
            responder_port=b_port,
            http_port=0,
            pinglist_file=None,
            controller=controller.url,
            name="b",
            refresh_s=1,
        )
    )
    controller.pinglists["b"] = pinglist_for("b", b, [])
    controller.pinglists["a"] = pinglist_for("a", a, [("b", b, b_port)])
    a_port = free_port(a)
    agent = Agent(
        AgentConfig(
            controller=controller.url,
            name="a",
            bind=a,
            responder_port=a_port,
            http_port=0,
            refresh_s=1,
            upload_interval_s=0.1,
        ),
        rng=random.Random(1),
    )
    async with running(responder_b), running(agent):
        await agent.wait_probing()
        await eventually_true(controller.accepted_records)
        batch = next(p for p in controller.accepted if p["agent"] == "a")
        assert batch["pinglist_version"] == controller.pinglists["a"].version
        # The kill switch: the controller forgets us; we stop probing but keep answering.
        del controller.pinglists["a"]
        async with asyncio.timeout(10):
            await agent.wait_not_probing()
        assert "404" in agent.statistics().reason
        reader, writer = await asyncio.open_connection(a, a_port)
        writer.write(b"still here")
        assert await reader.readexactly(10) == b"still here"
        writer.close()
        await writer.wait_closed()
    stats = agent.statistics()
    consistent(stats)
    assert stats.fetcher is not None
    assert stats.fetcher.not_found >= 1
    assert stats.uploader is not None
    # Shutdown flushed everything that was probed: nothing left behind, nothing dropped.
    assert stats.uploader.records_sent == stats.probes.completed
    records = [r for r in controller.accepted_records() if r["src_addr"] == a]
    assert len(records) == stats.probes.completed
    assert all(r["outcome"] == "ok" for r in records)


async def test_a_busy_port_is_a_config_error_naming_it(loopback: str, tmp_path: Path) -> None:
    a = loopback + "1"
    with socket.socket() as busy:
        busy.bind((a, 0))
        busy.listen(1)
        agent = Agent(
            AgentConfig(
                bind=a,
                responder_port=busy.getsockname()[1],
                http_port=0,
                pinglist_file=write_pinglist(tmp_path / "p.json", pinglist_for("a", a, [])),
            )
        )
        with pytest.raises(ConfigError, match=r"agent\.responder_port.*EADDRINUSE"):
            await agent.run()


async def test_a_bad_pinglist_file_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "v", "server": "a", "address": "127.0.0.1", "timeout_s": -1}')
    agent = Agent(AgentConfig(pinglist_file=bad, http_port=0))
    with pytest.raises(PinglistError, match=r"bad\.json: field timeout_s"):
        await agent.run()
    missing = Agent(AgentConfig(pinglist_file=tmp_path / "nope.json", http_port=0))
    with pytest.raises(PinglistError, match=r"nope\.json: cannot read"):
        await missing.run()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (AgentConfig, "needs a controller"),
        (
            lambda: AgentConfig(controller="http://127.0.0.1:1", pinglist_file=Path("p.json")),
            "not both",
        ),
        (lambda: AgentConfig(controller="http://127.0.0.1:1"), "agent.name"),
        (lambda: AgentConfig(controller="127.0.0.1:1", name="a"), "agent.controller"),
    ],
)
def test_bad_modes_are_config_errors(config: Callable[[], AgentConfig], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Agent(config())


async def test_every_probe_kind_end_to_end_between_two_agents(
    tmp_path: Path, loopback: str
) -> None:
    """Agent A probes agent B with every kind the pinglist can name; B answers all of them."""
    a, b = loopback + "1", loopback + "2"
    b_port, b_http = free_port(b), free_port(b)
    agent_b = Agent(
        AgentConfig(
            bind=b,
            responder_port=b_port,
            http_port=b_http,
            pinglist_file=write_pinglist(tmp_path / "b.json", pinglist_for("b", b, [])),
        )
    )
    kinds = [
        (ProbeKind.TCP, b_port, 0),
        (ProbeKind.TCP_ECHO, b_port, 1400),
        (ProbeKind.UDP, b_port, 1000),
        (ProbeKind.HTTP, b_http, 0),
        (ProbeKind.ICMP, 0, 0),
    ]
    pinglist = PinglistModel(
        version="all-kinds",
        server="a",
        address=a,
        timeout_s=2.0,
        peers=tuple(
            PeerModel(
                name="b", address=b, port=port, kind=kind, scope=Scope.INTRA_TOR,
                interval_s=1.0, size_bytes=size,
            )
            for kind, port, size in kinds
        ),
    )  # fmt: skip
    results = tmp_path / "results.jsonl"
    agent_a = Agent(
        AgentConfig(
            bind=a,
            responder_port=free_port(a),
            http_port=0,
            pinglist_file=write_pinglist(tmp_path / "a.json", pinglist),
            results_file=str(results),
            udp_ecmp_paths=4,  # a small source-port set for the test
        ),
        rng=random.Random(2),
    )
    async with running(agent_b), running(agent_a):
        await eventually_true(
            lambda: (
                {k for k, _, n in agent_a.statistics().probes.outcomes if n}
                >= set(ProbeKind) - {ProbeKind.HTTPS}
            )
        )
    stats_a, stats_b = agent_a.statistics(), agent_b.statistics()
    consistent(stats_a)
    records = [ProbeRecordModel.model_validate_json(x) for x in results.read_text().splitlines()]
    by_kind = {r.kind: r for r in records}
    assert set(by_kind) == {k for k, _, _ in kinds}
    for record in records:
        assert record.outcome is Outcome.OK, (record.kind, record.detail)
    assert by_kind[ProbeKind.TCP_ECHO].dwell_us is not None
    assert by_kind[ProbeKind.UDP].dwell_us is not None
    assert by_kind[ProbeKind.HTTP].connect_us is not None
    assert by_kind[ProbeKind.HTTP].ttfb_us is not None
    assert by_kind[ProbeKind.ICMP].dst_port == 0
    assert stats_b.udp_responder.answered >= 1
    assert stats_b.responder.frames >= 1
    # Local aggregates: one scope, a window per kind once it closes; running totals now.
    kinds_seen = {k for k, _, _ in stats_a.aggregates.scope_totals}
    assert kinds_seen == {k for k, _, _ in kinds}


async def test_controller_mode_polls_tasks_and_posts_traceroutes(
    controller: ControllerStub, loopback: str
) -> None:
    a = loopback + "1"
    a_port = free_port(a)
    controller.pinglists["a"] = pinglist_for("a", a, [])
    controller.tasks["a"] = {
        "server": "a",
        "tasks": [{"task_id": "t1", "dst": "a", "dst_addr": a, "dst_port": a_port, "max_hops": 3}],
    }
    agent = Agent(
        AgentConfig(
            controller=controller.url,
            name="a",
            bind=a,
            responder_port=a_port,
            http_port=0,
            task_poll_s=0.1,
        )
    )
    async with running(agent):
        await eventually_true(lambda: controller.traceroutes)
    (result,) = controller.traceroutes[0]["results"]  # type: ignore[misc]
    assert result["task_id"] == "t1"
    assert result["reached"] is True
    stats = agent.statistics()
    assert stats.tasks is not None
    assert stats.tasks.traces_run == 1
