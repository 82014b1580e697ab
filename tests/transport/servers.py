"""Transport test helpers: a real ingest server (QUIC + HTTP) that can go away and come back."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI

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
