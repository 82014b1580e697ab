"""A whole agent and a whole server on loopback: probe results and bandwidth over QUIC."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import httpx
import pytest

from pingmesh.agent.agent import Agent
from pingmesh.config import (
    AgentConfig,
    BandwidthConfig,
    PinglistConfig,
    ServerConfig,
    TransportConfig,
)
from pingmesh.errors import ConfigError
from pingmesh.server.app import PingmeshServer
from pingmesh.store.bandwidth import BandwidthStore
from pingmesh.store.results import ResultsDB
from tests.transport.servers import free_port


def _topology(path: Path, prefix: str) -> Path:
    path.write_text(
        "servers:\n"
        f"  - {{name: h1, address: {prefix}1, dc: dc1, podset: ps1, tor: t1}}\n"
        f"  - {{name: h2, address: {prefix}2, dc: dc1, podset: ps1, tor: t1}}\n"
    )
    return path


@pytest.mark.parametrize("by_address", [False, True], ids=["by-name", "by-address"])
async def test_results_and_bandwidth_go_over_quic(tmp_path: Path, by_address: bool) -> None:
    """Also when the agent is named by its address: it proves the address, uploads as h1."""
    prefix = f"127.{random.randrange(100, 250)}.{random.randrange(1, 250)}."
    name = f"{prefix}1" if by_address else "h1"
    port = free_port(socket.SOCK_STREAM)
    server = PingmeshServer.from_config(
        ServerConfig(
            listen="127.0.0.1:0",
            data_dir=tmp_path / "data",
            topology=_topology(tmp_path / "topology.yaml", prefix),
            quic_listen="127.0.0.1:0",
            pinglist=PinglistConfig(interval_s=1.0, timeout_s=0.5, port=port),
        )
    )
    server.bind()
    assert server.quic is not None
    assert server.quic_security is not None
    token_file = tmp_path / "h1.token"
    token_file.write_text(server.quic_security.authenticator.token_for(name) + "\n")
    agent = Agent(
        AgentConfig(
            controller=server.url,
            name=name,
            bind=f"{prefix}1",
            responder_port=port,
            http_port=0,
            refresh_s=1.0,
            upload_interval_s=0.3,
            bandwidth=BandwidthConfig(sample_interval_s=0.1, report_interval_s=0.2),
            transport=TransportConfig(
                quic=f"127.0.0.1:{server.quic.port}",
                ca_file=server.quic_security.ca_certificate,
                token_file=token_file,
                alias="first host",
                fallback_http=False,
            ),
        )
    )
    async with asyncio.TaskGroup() as tasks:
        serving = tasks.create_task(server.run())
        running = tasks.create_task(agent.run())
        async with asyncio.timeout(60):
            while (
                server.collector.statistics().batches_accepted_total < 2
                or server.bandwidth.store.statistics().reports_accepted_total < 5
            ):
                await asyncio.sleep(0.05)
        uplink = agent.statistics().uplink
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{server.url}/metrics")).text
        running.cancel()
        await asyncio.sleep(0)
        serving.cancel()
    assert uplink is not None
    assert uplink.quic_connected
    assert uplink.quic_requests_total >= 7  # result batches and bandwidth reports
    assert uplink.http_uploads_total == 0  # only the pinglist fetches used HTTP
    assert uplink.bandwidth_interfaces >= 1
    assert "pingmesh_quic_hellos_total 1.0" in metrics
    assert "pingmesh_bandwidth_store_reports_accepted_total" in metrics
    quic = server.quic.statistics()
    assert (quic.hellos_total, quic.auth_failures_total) == (1, 0)
    # The reports are in the database with the agent's alias, loopback among them.
    db = ResultsDB(tmp_path / "data" / "results.sqlite")
    interfaces = BandwidthStore(db.database).interfaces(start_s=0, end_s=4e9)
    db.close()
    assert {(i.agent, i.alias) for i in interfaces} == {(name, "first host")}
    assert "lo" in {i.interface for i in interfaces}


def test_quic_without_a_token_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"transport\.token"):
        Agent(
            AgentConfig(
                controller="http://127.0.0.1:1",
                name="h1",
                transport=TransportConfig(quic="127.0.0.1:4433"),
            )
        )
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        Agent(
            AgentConfig(
                controller="http://127.0.0.1:1",
                name="h1",
                transport=TransportConfig(quic="nowhere", token="t"),
            )
        )
    with pytest.raises(ConfigError, match="ca_file"):
        Agent(
            AgentConfig(
                controller="http://127.0.0.1:1",
                name="h1",
                transport=TransportConfig(
                    quic="127.0.0.1:4433", token="t", ca_file=tmp_path / "missing.pem"
                ),
            )
        )
