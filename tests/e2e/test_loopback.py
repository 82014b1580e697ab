"""The whole loop as real processes on loopback: server, agents, collector, analysis, API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pingmesh.core.pinglist import generate_pinglist
from pingmesh.core.topology import Server, Topology, dump_topology_yaml, topology_from_servers

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _topology() -> Topology:
    # 2 DCs; dc1 has ToRs of different sizes, dc2 one ToR with a single server.
    servers = [
        Server(name="a1", address="127.21.1.1", dc="dc1", podset="p1", tor="t1"),
        Server(name="a2", address="127.21.1.2", dc="dc1", podset="p1", tor="t1"),
        Server(name="a3", address="127.21.1.3", dc="dc1", podset="p1", tor="t1"),
        Server(name="b1", address="127.21.2.1", dc="dc1", podset="p1", tor="t2"),
        Server(name="c1", address="127.21.3.1", dc="dc1", podset="p2", tor="t3"),
        Server(name="c2", address="127.21.3.2", dc="dc1", podset="p2", tor="t3"),
        Server(name="d1", address="127.22.1.1", dc="dc2", podset="p3", tor="t4"),
    ]
    return topology_from_servers(servers)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pingmesh", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _stop(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=15))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
    return codes


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[str, Topology, Path]]:
    topology = _topology()
    (tmp_path / "topology.yaml").write_text(dump_topology_yaml(topology))
    (tmp_path / "server.yaml").write_text(
        "server:\n"
        "  pinglist: {interval_s: 1.0}\n"
        "  analysis: {fast_window_s: 10, fast_every_s: 2, lag_s: 2}\n"
        "  collector: {flush_interval_s: 0.5}\n"
    )
    (tmp_path / "agent.yaml").write_text(
        "agent:\n  upload_interval_s: 1.0\n  refresh_s: 5\n  http_port: 0\n"
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _spawn(
        [
            "server",
            "--config", str(tmp_path / "server.yaml"),
            "--listen", f"127.0.0.1:{port}",
            "--data", str(tmp_path / "data"),
            "--topology", str(tmp_path / "topology.yaml"),
        ],
        tmp_path / "server.log",
    )  # fmt: skip
    processes = [server]
    try:
        _wait_for(lambda: httpx.get(f"{url}/api/v1/agents").status_code == 200, 30)
        for s in topology.servers:
            processes.append(
                _spawn(
                    [
                        "agent",
                        "--controller",
                        url,
                        "--name",
                        s.name,
                        "--bind",
                        s.address,
                        "--config",
                        str(tmp_path / "agent.yaml"),
                    ],
                    tmp_path / f"agent-{s.name}.log",
                )
            )
        yield url, topology, tmp_path
    finally:
        codes = _stop(processes[1:]) + _stop(processes[:1])
        assert codes == [0] * len(codes), _logs(tmp_path)


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in tmp_path.glob("*.log"))


def _wait_for(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"condition not met within {timeout_s} s (last error: {last})")


def _expected_tor_pairs(topology: Topology) -> set[tuple[str, str]]:
    pairs = set()
    for server in topology.servers:
        for peer in generate_pinglist(topology, server.name).peers:
            dst = topology.server(peer.name)
            assert dst is not None
            pairs.add((server.tor, dst.tor))
    return pairs


def _filled_tor_cells(url: str, window: str) -> set[tuple[str, str]]:
    reply = httpx.get(f"{url}/api/v1/heatmap", params={"level": "tor", "window": window})
    if reply.status_code != 200:
        return set()
    return {
        (c["src"], c["dst"])
        for c in reply.json()["cells"]
        if c["probes"] > 0 and c["value"] is not None
    }


def test_fleet_on_loopback_fills_every_tor_pair(fleet: tuple[str, Topology, Path]) -> None:
    url, topology, _tmp_path = fleet
    expected = _expected_tor_pairs(topology)
    # every ToR pair inside a DC, both ways, and the inter-DC pairs that the pinglists name
    assert {("t1", "t2"), ("t2", "t1"), ("t1", "t3"), ("t3", "t2"), ("t1", "t1")} <= expected

    # The fast window is 10 s here (see server.yaml); its name follows its length.
    _wait_for(lambda: expected <= _filled_tor_cells(url, "10s"), 60)

    sla = httpx.get(f"{url}/api/v1/sla", params={"scope": "tor", "window": "10s"}).json()
    rows = {row["entity"]: row for row in sla["rows"]}
    assert set(rows) == set(topology.entities("tor"))
    for row in rows.values():
        assert row["probes"] > 0
        assert 0 < row["p50_us"] <= row["p99_us"] < 1_000_000  # loopback: well under a second
        assert row["drop_rate"] == 0.0

    agents = httpx.get(f"{url}/api/v1/agents").json()
    statuses = {a["name"]: a["status"] for a in agents["agents"]}
    assert statuses == {s.name: "up" for s in topology.servers}

    metrics = httpx.get(f"{url}/metrics").text
    assert "pingmesh_collector_" in metrics
