"""``POST /api/v1/results`` over a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from pingmesh.collector.routes import router
from pingmesh.collector.service import Collector
from pingmesh.config import CollectorConfig
from tests.collector.fleet import batch_dict, make_collector, running, stored_rows

CAP_BYTES = 8192  # make_collector's max_body_bytes
URL_PATH = "/api/v1/results"


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass  # the test owns the process's signals


@contextlib.asynccontextmanager
async def serving(collector: Collector) -> AsyncIterator[tuple[str, int]]:
    """The collector's routes served on 127.0.0.1 (a free port); yields (host, port)."""
    app = FastAPI()
    app.include_router(router(collector, CollectorConfig(max_body_bytes=CAP_BYTES)))
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, ws="none")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    collector = make_collector(tmp_path)
    async with (
        running(collector),
        serving(collector) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
    ):
        yield client


async def post(client: httpx.AsyncClient, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(
        URL_PATH, content=content, headers={"content-type": "application/json"}
    )


async def test_accepts_a_batch_and_answers_duplicates(
    service: httpx.AsyncClient, tmp_path: Path
) -> None:
    first = await post(service, batch_dict("batch-0001"))
    again = await post(service, batch_dict("batch-0001"))
    assert first.status_code == 200
    assert first.json() == {"batch_id": "batch-0001", "accepted": 3, "duplicate": False}
    assert again.status_code == 200
    assert again.json() == {"batch_id": "batch-0001", "accepted": 0, "duplicate": True}
    assert len(stored_rows(tmp_path)) == 3


async def test_every_error_is_answered_and_stored_data_stays(
    service: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert (await post(service, batch_dict("batch-0001"))).status_code == 200
    before = stored_rows(tmp_path)
    files_before = sorted(tmp_path.rglob("*.parquet"))

    bad_rtt = batch_dict("batch-0002", records=5)
    bad_rtt["records"][3]["rtt_us"] = -1
    response = await post(service, bad_rtt)
    assert response.status_code == 422
    assert response.json() == {
        "detail": "records.3.rtt_us: Input should be greater than or equal to 0"
    }

    missing = batch_dict("batch-0003")
    del missing["agent"]
    response = await post(service, missing)
    assert (response.status_code, response.json()["detail"]) == (422, "agent: Field required")

    response = await post(service, b'{"batch_id": "batch-0004", "records": [')
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body: Invalid JSON")
    assert "\n" not in response.json()["detail"]

    response = await post(service, batch_dict("batch-0005", agent="h99"))
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown server 'h99': not in the topology"}

    old = batch_dict("batch-0006")
    old["records"][0]["time"] = "2020-01-01T00:00:00+00:00"
    response = await post(service, old)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("records.0.time: ")

    response = await post(service, batch_dict("batch-0007", records=200))  # > 8 KiB
    assert response.status_code == 413

    assert stored_rows(tmp_path) == before
    assert sorted(tmp_path.rglob("*.parquet")) == files_before
    # The refused ids were not remembered: corrected, they are stored.
    response = await post(service, batch_dict("batch-0002"))
    assert response.json()["duplicate"] is False
    assert len(stored_rows(tmp_path)) == 6


async def test_oversize_content_length_is_refused_before_the_body(tmp_path: Path) -> None:
    collector = make_collector(tmp_path)
    async with running(collector), serving(collector) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            # Headers only: the answer must come without the server waiting for the body.
            writer.write(
                f"POST {URL_PATH} HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 413 ")


async def test_oversize_chunked_body_is_refused_while_reading(
    service: httpx.AsyncClient, tmp_path: Path
) -> None:
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            sent.append(4096)
            yield b" " * 4096  # JSON whitespace: only the size is wrong

    response = await service.post(URL_PATH, content=chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body larger than {CAP_BYTES} bytes"}
    assert stored_rows(tmp_path) == []


async def test_a_chunked_body_within_the_cap_is_accepted(
    service: httpx.AsyncClient, tmp_path: Path
) -> None:
    body = json.dumps(batch_dict("batch-0001")).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = await service.post(URL_PATH, content=chunks())
    assert response.status_code == 200
    assert response.json()["accepted"] == 3
    assert len(stored_rows(tmp_path)) == 3


async def test_a_stopped_collector_answers_503(tmp_path: Path) -> None:
    collector = make_collector(tmp_path)  # never run
    async with serving(collector) as (host, port), httpx.AsyncClient() as client:
        response = await client.post(
            f"http://{host}:{port}{URL_PATH}", content=json.dumps(batch_dict("batch-0001"))
        )
    assert response.status_code == 503
    assert response.json() == {"detail": "the collector is not running"}
