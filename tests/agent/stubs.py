"""Helpers of the agent tests: a scriptable controller stub (FastAPI), free ports, pinglists."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response

from pingmesh.core.probe import ProbeKind, ProbeTarget, Scope
from pingmesh.wire.pinglist import PeerModel, PinglistModel


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pinglist_for(
    server: str,
    address: str,
    peers: list[tuple[str, str, int]],
    *,
    interval_s: float = 1.0,
    timeout_s: float = 1.0,
) -> PinglistModel:
    return PinglistModel(
        version=f"v-{len(peers)}-{'-'.join(p[0] for p in peers)}",
        server=server,
        address=address,
        timeout_s=timeout_s,
        peers=tuple(
            PeerModel(name=n, address=a, port=p, scope=Scope.INTRA_TOR, interval_s=interval_s)
            for n, a, p in peers
        ),
    )


@dataclass
class ControllerStub:
    """What the stub controller answers; tests change it between requests."""

    url: str = ""
    pinglists: dict[str, PinglistModel] = field(default_factory=dict)
    pinglist_status: int | None = None  # answer this status instead (e.g. 503)
    pinglist_body: bytes | None = None  # answer 200 with these bytes instead
    fetch_headers: list[dict[str, str]] = field(default_factory=list)
    results_plan: list[int] = field(default_factory=list)  # statuses to answer first, in order
    retry_after: str | None = None
    posts: list[dict[str, object]] = field(default_factory=list)  # every POSTed batch
    tasks: dict[str, dict[str, object]] = field(default_factory=dict)  # server -> TaskList JSON
    task_polls: int = 0
    traceroutes: list[dict[str, object]] = field(default_factory=list)  # every posted batch
    accepted: list[dict[str, object]] = field(default_factory=list)  # batches answered 200

    def accepted_records(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for batch in self.accepted:
            records = batch["records"]
            assert isinstance(records, list)
            out.extend(records)
        return out


def stub_app(stub: ControllerStub) -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/pinglist/{name}")
    async def pinglist(name: str, request: Request) -> Response:
        stub.fetch_headers.append(dict(request.headers))
        if stub.pinglist_status is not None:
            return Response(status_code=stub.pinglist_status, content=b"stub says no")
        if stub.pinglist_body is not None:
            return Response(content=stub.pinglist_body, media_type="application/json")
        found = stub.pinglists.get(name)
        if found is None:
            return Response(status_code=404, content=b'{"detail": "unknown server"}')
        etag = f'"{found.version}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(
            content=found.model_dump_json(), media_type="application/json", headers={"ETag": etag}
        )

    @app.post("/api/v1/results")
    async def results(request: Request) -> Response:
        batch = json.loads(await request.body())
        stub.posts.append(batch)
        if stub.results_plan:
            status = stub.results_plan.pop(0)
            headers = {"Retry-After": stub.retry_after} if stub.retry_after is not None else {}
            return Response(status_code=status, content=b"stub says no", headers=headers)
        stub.accepted.append(batch)
        ack = {"batch_id": batch["batch_id"], "accepted": len(batch["records"]), "duplicate": False}
        return Response(content=json.dumps(ack), media_type="application/json")

    @app.get("/api/v1/tasks/{name}")
    async def tasks(name: str) -> Response:
        stub.task_polls += 1
        found = stub.tasks.get(name)
        if found is None:
            return Response(status_code=404, content=b'{"detail": "no tasks"}')
        return Response(content=json.dumps(found), media_type="application/json")

    @app.post("/api/v1/traceroutes")
    async def traceroutes(request: Request) -> Response:
        stub.traceroutes.append(json.loads(await request.body()))
        return Response(content=b'{"accepted": true}', media_type="application/json")

    return app


async def eventually_true(condition: object, timeout_s: float = 10.0) -> None:
    """Poll ``condition()`` until it holds (raises TimeoutError otherwise)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def target(
    address: str,
    port: int,
    *,
    kind: ProbeKind = ProbeKind.TCP,
    size_bytes: int = 0,
    name: str = "p1",
    interval_s: float = 1.0,
) -> ProbeTarget:
    """One probe target (a pinglist entry, compact)."""
    return ProbeTarget(
        name=name,
        address=address,
        port=port,
        kind=kind,
        scope=Scope.INTRA_TOR,
        interval_s=interval_s,
        size_bytes=size_bytes,
    )


def open_fds() -> int:
    """File descriptors open in this process now."""
    return len(os.listdir("/proc/self/fd"))


def closed_port(host: str) -> int:
    """A TCP/UDP port on ``host`` where nothing listens (refused)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
