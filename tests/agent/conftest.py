"""Fixtures of the agent tests: a controller stub under uvicorn, a loopback prefix of our own."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn

from tests.agent.stubs import ControllerStub, stub_app


@pytest.fixture
def loopback() -> str:
    """A /24 prefix inside 127.0.0.0/8 of our own (``127.X.Y.``), so parallel runs do not meet."""
    rng = random.Random()
    return f"127.{rng.randrange(100, 250)}.{rng.randrange(1, 250)}."


@pytest.fixture
async def controller() -> AsyncIterator[ControllerStub]:
    """A real HTTP controller stub (FastAPI under uvicorn) on a free 127.0.0.1 port."""
    stub = ControllerStub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    stub.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(stub_app(stub), log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    yield stub
    server.should_exit = True
    await task
    sock.close()
