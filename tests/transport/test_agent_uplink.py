"""A whole agent and a whole server on loopback: probe results and bandwidth over QUIC."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pingmesh.agent.agent import Agent
from pingmesh.agent.transport.uplink import UplinkStatistics
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


def _server(tmp_path: Path, *, quic: bool) -> tuple[str, int, PingmeshServer]:
    """A bound server of h1 and h2 on 127.x.y.1 and .2: (address prefix, probe port, server)."""
    prefix = f"127.{random.randrange(100, 250)}.{random.randrange(1, 250)}."
    port = free_port(socket.SOCK_STREAM)
    server = PingmeshServer.from_config(
        ServerConfig(
            listen="127.0.0.1:0",
            data_dir=tmp_path / "data",
            topology=_topology(tmp_path / "topology.yaml", prefix),
            quic_listen="127.0.0.1:0" if quic else None,
            pinglist=PinglistConfig(interval_s=1.0, timeout_s=0.5, port=port),
        )
    )
    server.bind()
    return prefix, port, server


def _agent(
    server: PingmeshServer, prefix: str, port: int, *, name: str, transport: TransportConfig
) -> Agent:
    return Agent(
        AgentConfig(
            controller=server.url,
            name=name,
            bind=f"{prefix}1",
            responder_port=port,
            http_port=0,
            refresh_s=1.0,
            upload_interval_s=0.3,
            bandwidth=BandwidthConfig(sample_interval_s=0.1, report_interval_s=0.2),
            transport=transport,
        )
    )


async def _run(
    server: PingmeshServer, agent: Agent, *, batches: int, reports: int
) -> tuple[UplinkStatistics | None, str]:
    """Run both until the server has ``batches`` result batches and ``reports`` bandwidth
    reports; then the agent's uplink figures and the server's ``/metrics``."""
    async with asyncio.TaskGroup() as tasks:
        serving = tasks.create_task(server.run())
        running = tasks.create_task(agent.run())
        async with asyncio.timeout(60):
            while (
                server.collector.statistics().batches_accepted_total < batches
                or server.bandwidth.store.statistics().reports_accepted_total < reports
            ):
                await asyncio.sleep(0.05)
        uplink = agent.statistics().uplink
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{server.url}/metrics")).text
        running.cancel()
        await asyncio.sleep(0)
        serving.cancel()
    return uplink, metrics


@pytest.mark.parametrize("by_address", [False, True], ids=["by-name", "by-address"])
async def test_results_and_bandwidth_go_over_quic(tmp_path: Path, by_address: bool) -> None:
    """Also when the agent is named by its address: it proves the address, uploads as h1."""
    prefix, port, server = _server(tmp_path, quic=True)
    name = f"{prefix}1" if by_address else "h1"
    assert server.quic is not None
    assert server.quic_security is not None
    token_file = tmp_path / "h1.token"
    token_file.write_text(server.quic_security.authenticator.token_for(name) + "\n")
    agent = _agent(
        server,
        prefix,
        port,
        name=name,
        transport=TransportConfig(
            quic=f"127.0.0.1:{server.quic.port}",
            ca_file=server.quic_security.ca_certificate,
            token_file=token_file,
            alias="first host",
            fallback_http=False,
        ),
    )
    uplink, metrics = await _run(server, agent, batches=2, reports=5)
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


async def test_bandwidth_goes_over_http_by_default(tmp_path: Path) -> None:
    """The default agent (no QUIC): bandwidth reports ride the agent's own HTTP client."""
    prefix, port, server = _server(tmp_path, quic=False)
    agent = _agent(server, prefix, port, name="h1", transport=TransportConfig())
    uplink, metrics = await _run(server, agent, batches=1, reports=3)
    assert uplink is not None
    assert not uplink.quic_connected
    assert uplink.quic_requests_total == 0
    assert uplink.http_uploads_total >= 4  # result batches and bandwidth reports
    assert uplink.spool_reports_delivered_total >= 3
    assert uplink.spool_reports_rejected_total == 0
    assert "pingmesh_quic_hellos_total" not in metrics  # the server has no QUIC listener


_MODULES_LOADED = """
import sys
from pingmesh.agent.agent import Agent
from pingmesh.agent.transport.uplink import UplinkStatistics
from pingmesh.agent.http_client import H11Client
from pingmesh.config import AgentConfig
config = AgentConfig.model_validate_json(sys.argv[1])
agent = Agent(config)
assert agent.uplink is not None
agent.uplink.attach(H11Client())
print(sorted(m for m in ("httpx", "aioquic", "cryptography") if m in sys.modules))
"""


@pytest.mark.parametrize(
    ("transport", "loaded"),
    [
        (TransportConfig(), []),
        (TransportConfig(quic="127.0.0.1:4433", token="t"), ["aioquic", "cryptography"]),
    ],
    ids=["http", "quic"],
)
def test_the_agent_loads_aioquic_only_for_quic_and_never_httpx(
    transport: TransportConfig, loaded: list[str]
) -> None:
    """The memory budget (45 MB, PM §3.4.2): aioquic costs ~12 MiB, httpx ~4 MiB."""
    config = AgentConfig(controller="http://127.0.0.1:1", name="h1", transport=transport)
    assert config.bandwidth.enabled
    result = subprocess.run(
        [sys.executable, "-c", _MODULES_LOADED, config.model_dump_json()],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == repr(loaded)
