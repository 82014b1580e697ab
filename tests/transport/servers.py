"""Transport test helpers: a real ingest server (QUIC + HTTP) that can go away and come back."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from pingmesh.agent.bandwidth import BandwidthReport, InterfaceRate
from pingmesh.clock import SystemClock
from pingmesh.server.quic import AgentIdentity, Handler, QuicListener
from pingmesh.server.tls import QuicSecurity, prepare_quic_security
from pingmesh.store.bandwidth import BandwidthStore
from pingmesh.store.results import ResultsDB
from pingmesh.web.bandwidth_api import BANDWIDTH_PATH, BandwidthService

HOST = "127.0.0.1"


def free_port(kind: int) -> int:
    """A port free on 127.0.0.1 right now (``socket.SOCK_STREAM`` or ``SOCK_DGRAM``)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def make_security(directory: Path) -> QuicSecurity:
    """A private CA, a certificate for 127.0.0.1 and localhost, and an agent secret."""
    return prepare_quic_security(
        tls_dir=directory, hosts=(HOST, "localhost"), now=dt.datetime.now(dt.UTC)
    )


async def echo(body: bytes, identity: AgentIdentity) -> tuple[int, bytes]:
    """A handler that answers who asked and what they sent."""
    return 200, json.dumps({"agent": identity.agent, "body": body.decode()}).encode()


class IngestServer:
    """The bandwidth ingest of the server (QUIC listener + HTTP route) on fixed ports."""

    def __init__(self, security: QuicSecurity, db_target: Path | str) -> None:
        self.security = security
        self.db = ResultsDB(db_target)
        self.store = BandwidthStore(self.db.database)
        self.service = BandwidthService(
            self.store, clock=SystemClock(), authenticator=security.authenticator
        )
        self.quic_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        self.url = f"http://{HOST}:{self.http_port}"
        self.handlers: dict[str, Handler] = {
            BANDWIDTH_PATH: self.service.handle_quic,
            "/echo": echo,
        }
        self.quic: QuicListener | None = None
        self._quic_task: asyncio.Task[None] | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._uvicorn: uvicorn.Server | None = None

    async def start(self, *, http: bool = True) -> None:
        """Start answering (again) on the same ports."""
        self.quic = QuicListener(
            host=HOST,
            port=self.quic_port,
            certificate=self.security.certificate,
            private_key=self.security.private_key,
            authenticator=self.security.authenticator,
            handlers=self.handlers,
        )
        await self.quic.start()
        self._quic_task = asyncio.create_task(self.quic.serve())
        if http:
            app = FastAPI()
            app.include_router(self.service.router)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, self.http_port))
            sock.listen(128)
            self._uvicorn = uvicorn.Server(
                uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
            )
            self._http_task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
            async with asyncio.timeout(10):
                while not self._uvicorn.started:
                    await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Go away: close every connection and both sockets."""
        if self._quic_task is not None:
            self._quic_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._quic_task
            self._quic_task = None
        if self._uvicorn is not None and self._http_task is not None:
            self._uvicorn.should_exit = True
            await self._http_task
            self._uvicorn, self._http_task = None, None

    def close(self) -> None:
        """Close the database."""
        self.db.close()


def bandwidth_report(seq: int) -> BandwidthReport:
    """Report ``seq`` of eth0: 1000 + seq bytes received, seq sent, at 1.8e9 + seq s."""
    end = 1_800_000_000.0 + seq
    return BandwidthReport(
        seq=seq,
        start_s=end - 1,
        end_s=end,
        interfaces=(
            InterfaceRate(
                interface="eth0",
                interval_s=1.0,
                rx_bytes=1000 + seq,
                tx_bytes=seq,
                rx_packets=1,
                tx_packets=1 if seq else 0,
                rx_peak_bytes_per_s=1000.0 + seq,
                tx_peak_bytes_per_s=float(seq),
            ),
        ),
    )


class ServerProcess:
    """``pingmesh server --quic-listen`` as a real process, on fixed ports so that a restart is
    the same server; its topology names one server, ``h1`` (127.0.0.1)."""

    def __init__(self, data: Path, db: str | None = None) -> None:
        self.data = data
        self.http_port = free_port(socket.SOCK_STREAM)
        self.quic_port = free_port(socket.SOCK_DGRAM)
        self.url = f"http://{HOST}:{self.http_port}"
        topology = data / "topology.yaml"
        data.mkdir(parents=True, exist_ok=True)
        topology.write_text(
            "servers:\n  - {name: h1, address: 127.0.0.1, dc: dc1, podset: ps1, tor: t1}\n"
        )
        self.args = [
            sys.executable,
            "-m",
            "pingmesh",
            "--log-level",
            "warning",
            "server",
            "--topology",
            str(topology),
            "--data",
            str(data),
            "--listen",
            f"{HOST}:{self.http_port}",
            "--quic-listen",
            f"{HOST}:{self.quic_port}",
        ]
        if db is not None:
            self.args += ["--db", db]
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with (self.data / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=os.environ.copy()
            )
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                assert self.process.poll() is None, (self.data / "server.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/api/v1/agents")).status_code == 200:
                        return
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
