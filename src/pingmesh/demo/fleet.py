"""``pingmesh demo``: a whole fleet on one machine, no root needed.

Linux routes all of 127.0.0.0/8 to the loopback interface, so every agent can bind an address
of its own (127.<10+dc>.<10·podset+tor>.<server>) and the fleet looks like a real one to the
controller, the collector and the analysis: distinct addresses, real TCP handshakes, real
kernel RTTs. The server runs in this process; every agent is a process of its own, started
exactly as it would be on a server (``pingmesh agent --controller URL --name NAME --bind ADDR``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pingmesh.config import PinglistConfig, ServerConfig
from pingmesh.core.topology import Server, Topology, dump_topology_yaml, topology_from_servers
from pingmesh.errors import ConfigError
from pingmesh.server.app import PingmeshServer

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoShape:
    """How big the demo fleet is."""

    dcs: int = 2
    podsets: int = 2
    tors: int = 2
    servers: int = 4

    def __post_init__(self) -> None:
        for name, limit in (("dcs", 9), ("podsets", 9), ("tors", 9), ("servers", 250)):
            value = getattr(self, name)
            if not 1 <= value <= limit:
                raise ConfigError(f"field {name}: {value} is not between 1 and {limit}")


def demo_topology(shape: DemoShape) -> Topology:
    """The demo fleet: names like ``dc1-ps2-t1-h3``, addresses like 127.11.21.3."""
    servers = []
    for dc in range(1, shape.dcs + 1):
        for ps in range(1, shape.podsets + 1):
            for tor in range(1, shape.tors + 1):
                for host in range(1, shape.servers + 1):
                    servers.append(
                        Server(
                            name=f"dc{dc}-ps{ps}-t{tor}-h{host}",
                            address=f"127.{10 + dc}.{10 * ps + tor}.{host}",
                            dc=f"dc{dc}",
                            podset=f"dc{dc}-ps{ps}",
                            tor=f"dc{dc}-ps{ps}-t{tor}",
                        )
                    )
    return topology_from_servers(servers)


class DemoFleet:
    """The server in this process and one agent process per topology server."""

    def __init__(
        self,
        shape: DemoShape,
        *,
        listen: str = "127.0.0.1:8080",
        data_dir: Path | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self.topology = demo_topology(shape)
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="pingmesh-demo-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        topology_file = self.data_dir / "topology.yaml"
        topology_file.write_text(dump_topology_yaml(self.topology), encoding="utf-8")
        config = ServerConfig(
            listen=listen,
            data_dir=self.data_dir,
            topology=topology_file,
            pinglist=PinglistConfig(interval_s=interval_s),
            # Agents upload over QUIC to a port the kernel picks; the server makes its own
            # private CA in DATA/tls and every agent trusts exactly that CA.
            quic_listen=f"{listen.rpartition(':')[0] or '127.0.0.1'}:0",
        )
        self.server = PingmeshServer.from_config(config)
        self._agents: dict[str, asyncio.subprocess.Process] = {}

    async def run(
        self, *, duration_s: float | None = None, announce: Callable[[str], None] = log.info
    ) -> None:
        """Run the fleet until cancelled or for ``duration_s``; stop every agent on the way out."""
        self.server.bind()
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        async with asyncio.TaskGroup() as tasks:
            server_task = tasks.create_task(self.server.run(), name="server")
            # Agents stop before the server does, so that their last uploads still land.
            try:
                await self.server.wait_started()
                await self._start_agents(logs)
                announce(f"pingmesh demo: dashboard at {self.server.url}/")
                announce(f"pingmesh demo: bandwidth (over QUIC) at {self.server.url}/bandwidth")
                announce(
                    f"pingmesh demo: {len(self._agents)} agents on 127.x addresses "
                    f"({len(self.topology.entities('tor'))} ToRs, "
                    f"{len(self.topology.dcs())} DCs); the heatmap fills within a minute"
                )
                announce(f"pingmesh demo: data and agent logs in {self.data_dir}")
                announce("pingmesh demo: Ctrl-C stops everything")
                watcher = tasks.create_task(self._watch_agents(announce), name="watch")
                if duration_s is None:
                    await asyncio.Event().wait()
                else:
                    await asyncio.sleep(duration_s)
            finally:
                with contextlib.suppress(UnboundLocalError):
                    watcher.cancel()
                await self._stop_agents()
                server_task.cancel()

    def _quic_args(self, name: str) -> list[str]:
        """``--quic``, ``--ca-file`` and ``--token-file`` for agent ``name`` (issue 7)."""
        security, quic = self.server.quic_security, self.server.quic
        if security is None or quic is None or security.ca_certificate is None:
            return []
        tokens = self.data_dir / "tls" / "agents"
        tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
        token_file = tokens / f"{name}.token"
        token_file.touch(mode=0o600)
        token_file.write_text(security.authenticator.token_for(name) + "\n", encoding="ascii")
        host = f"[{quic.host}]" if ":" in quic.host else quic.host
        return [
            "--quic",
            f"{host}:{quic.port}",
            "--ca-file",
            str(security.ca_certificate),
            "--token-file",
            str(token_file),
        ]

    async def _start_agents(self, logs: Path) -> None:
        for server in self.topology.servers:
            with (logs / f"{server.name}.log").open("ab") as log_file:
                self._agents[server.name] = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "pingmesh",
                    "--log-level",
                    "warning",
                    "agent",
                    "--controller",
                    self.server.url,
                    "--name",
                    server.name,
                    "--bind",
                    server.address,
                    *self._quic_args(server.name),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                )

    async def _watch_agents(self, announce: Callable[[str], None]) -> None:
        waits = {
            asyncio.ensure_future(process.wait()): name for name, process in self._agents.items()
        }
        try:
            while waits:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    name = waits.pop(finished)
                    announce(
                        f"pingmesh demo: agent {name} exited with status {finished.result()}; "
                        f"see {self.data_dir / 'logs' / (name + '.log')}"
                    )
        finally:
            for pending in waits:
                pending.cancel()

    async def _stop_agents(self) -> None:
        running = [p for p in self._agents.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for process in running:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await asyncio.gather(*(p.wait() for p in running))
