"""Bandwidth ingest over QUIC against HTTP, on one server core, in the same run.

A server process (pinned to CPU 0) runs what ``pingmesh server`` runs for bandwidth: the QUIC
listener (aioquic, TLS 1.3, agent tokens) and the HTTP route (uvicorn) in front of one
:class:`BandwidthService` storing into SQLite in a temporary directory. The load generator
(this process, pinned to CPU 1) plays ``--agents`` agents, each with its own authenticated QUIC
connection (QUIC phase) or its own keep-alive HTTP connection (HTTP phase), and each sends
batches of ``--batch`` reports back to back, for ``--seconds`` per phase.

Two figures per transport: the reports per second achieved, and the reports per second of
*server CPU* (reports / CPU seconds the server process used, from ``/proc/PID/stat``), which
is what one server core can ingest even when the load generator, not the server, is the
bottleneck. The ratio QUIC / HTTP of both is printed.

Prints ``figure: NAME VALUE UNIT`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from pingmesh.agent.transport.quic import QuicClient
from pingmesh.agent.transport.spool import BANDWIDTH_PATH
from pingmesh.clock import SystemClock
from pingmesh.server.quic import QuicListener
from pingmesh.server.tls import agent_token, load_secret, prepare_quic_security
from pingmesh.store.bandwidth import BandwidthStore
from pingmesh.store.results import ResultsDB
from pingmesh.web.bandwidth_api import BandwidthService

HOST = "127.0.0.1"


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- the server process --------------------------------------------------------------------


async def _serve(directory: Path, http_port: int, quic_port: int) -> None:
    security = prepare_quic_security(
        tls_dir=directory / "tls", hosts=(HOST,), now=dt.datetime.now(dt.UTC)
    )
    db = ResultsDB(directory / "results.sqlite")
    service = BandwidthService(
        BandwidthStore(db.database), clock=SystemClock(), authenticator=security.authenticator
    )
    listener = QuicListener(
        host=HOST,
        port=quic_port,
        certificate=security.certificate,
        private_key=security.private_key,
        authenticator=security.authenticator,
        handlers={BANDWIDTH_PATH: service.handle_quic},
    )
    app = FastAPI()
    app.include_router(service.router)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, http_port))
    sock.listen(1024)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    (directory / "ready").write_text("ok")
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(listener.serve())
        tasks.create_task(server.serve(sockets=[sock]))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


# -- the load generator --------------------------------------------------------------------


def _batch(agent: str, seq: int, size: int) -> bytes:
    now = time.time()
    reports = [
        {
            "report_id": f"{agent}-{seq:08d}-{i:04d}",
            "start": dt.datetime.fromtimestamp(now - 1, tz=dt.UTC).isoformat(),
            "end": dt.datetime.fromtimestamp(now, tz=dt.UTC).isoformat(),
            "interfaces": [
                {
                    "interface": "eth0",
                    "interval_s": 1.0,
                    "rx_bytes": 123456 + seq,
                    "tx_bytes": 65432 + seq,
                    "rx_packets": 100,
                    "tx_packets": 80,
                    "rx_peak_bytes_per_s": 200000.0,
                    "tx_peak_bytes_per_s": 100000.0,
                }
            ],
        }
        for i in range(size)
    ]
    return json.dumps({"agent": agent, "alias": agent, "reports": reports}).encode()


async def _quic_agent(  # noqa: PLR0917
    agent: str, token: str, ca: Path, port: int, size: int, until: float, counts: list[int]
) -> None:
    client = QuicClient(host=HOST, port=port, agent=agent, alias=agent, token=token, ca_file=ca)
    seq = 0
    try:
        while time.monotonic() < until:
            status, _ = await client.request(BANDWIDTH_PATH, _batch(agent, seq, size))
            if status != 200:
                raise RuntimeError(f"QUIC ingest answered {status}")
            seq += 1
            counts[0] += size
    finally:
        await client.aclose()


async def _http_agent(  # noqa: PLR0917
    agent: str, token: str, url: str, size: int, until: float, counts: list[int]
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    seq = 0
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as client:
        while time.monotonic() < until:
            response = await client.post(
                f"{url}{BANDWIDTH_PATH}", content=_batch(agent, seq, size), headers=headers
            )
            if response.status_code != 200:
                raise RuntimeError(f"HTTP ingest answered {response.status_code}")
            seq += 1
            counts[0] += size


async def _phase(
    kind: str, args: argparse.Namespace, pid: int, tokens: dict[str, str], directory: Path
) -> tuple[float, float]:
    counts = [0]
    ca = directory / "tls" / "ca.pem"
    # Warm up (handshakes, first partitions), then measure.
    for measured in (False, True):
        counts[0] = 0
        seconds = args.seconds if measured else 1.0
        cpu0, wall0 = _cpu_s(pid), time.monotonic()
        until = wall0 + seconds
        async with asyncio.TaskGroup() as tasks:
            for agent in tokens:
                name = f"{kind}-{agent}-{int(measured)}"
                if kind == "quic":
                    coro = _quic_agent(name, _token(directory, name), ca, args.quic_port,
                                       args.batch, until, counts)  # fmt: skip
                else:
                    coro = _http_agent(name, _token(directory, name), args.url, args.batch,
                                       until, counts)  # fmt: skip
                tasks.create_task(coro)
        cpu1, wall1 = _cpu_s(pid), time.monotonic()
    rate = counts[0] / (wall1 - wall0)
    per_cpu = counts[0] / max(cpu1 - cpu0, 1e-9)
    return rate, per_cpu


def _token(directory: Path, agent: str) -> str:
    return agent_token(load_secret(directory / "tls" / "agent-secret"), agent)


async def _load(args: argparse.Namespace, pid: int, directory: Path) -> None:
    tokens = {f"a{i}": "" for i in range(args.agents)}
    results = {}
    for kind in ("quic", "http"):
        results[kind] = await _phase(kind, args, pid, tokens, directory)
        rate, per_cpu = results[kind]
        print(f"figure: {kind}_ingest_rate {rate:.0f} reports_per_s")
        print(f"figure: {kind}_ingest_per_server_core {per_cpu:.0f} reports_per_cpu_s")
    print(
        f"figure: quic_http_ingest_rate_ratio {results['quic'][0] / results['http'][0]:.3f} ratio"
    )
    print(
        "figure: quic_http_ingest_per_core_ratio "
        f"{results['quic'][1] / results['http'][1]:.3f} ratio"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per transport")
    parser.add_argument("--agents", type=int, default=8, help="concurrent agents")
    parser.add_argument("--batch", type=int, default=1, help="reports per request")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--quic-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.serve is not None:
        os.sched_setaffinity(0, {cpus[0]})
        asyncio.run(_serve(args.serve, args.http_port, args.quic_port))
        return
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[1]})
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        args.http_port, args.quic_port = _free(socket.SOCK_STREAM), _free(socket.SOCK_DGRAM)
        args.url = f"http://{HOST}:{args.http_port}"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(directory),
             "--http-port", str(args.http_port), "--quic-port", str(args.quic_port)]
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not (directory / "ready").exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the ingest server did not start")
                time.sleep(0.05)
            time.sleep(0.5)
            print(f"figure: server_cpu {cpus[0]} cpu_index")
            print(f"figure: agents {args.agents} connections")
            print(f"figure: batch {args.batch} reports_per_request")
            asyncio.run(_load(args, server.pid, directory))
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=20)
            if server.poll() is None:
                server.kill()


if __name__ == "__main__":
    main()
