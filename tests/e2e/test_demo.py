"""``pingmesh demo``: the whole fleet fills the ToR heatmap, and Ctrl-C stops it.

How fast it fills (target: within 60 s) is measured by ``bench/demo_heatmap.py``, not here:
this machine is shared, so the test only allows a generous bound.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pingmesh.demo.fleet import DemoShape, demo_topology

pytestmark = pytest.mark.slow

FILL_BOUND_S = 150


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(FILL_BOUND_S + 90)
def test_demo_fills_the_tor_heatmap_and_stops_cleanly(tmp_path: Path) -> None:
    topology = demo_topology(DemoShape())
    assert len(topology.servers) == 32
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    argv = ["demo", "--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "demo")]
    demo = subprocess.Popen(
        [sys.executable, "-m", "pingmesh", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        tors = topology.entities("tor")
        # every ToR pair inside a DC is probed (PM §3.3.1), so the 30 s window must have them
        expected = {(a, b) for a in tors for b in tors if a.split("-")[0] == b.split("-")[0]}
        filled: set[tuple[str, str]] = set()
        while time.monotonic() - started < FILL_BOUND_S and not expected <= filled:
            time.sleep(1)
            try:
                reply = httpx.get(f"{url}/api/v1/heatmap", params={"level": "tor", "window": "30s"})
            except httpx.HTTPError:
                continue
            if reply.status_code == 200:
                filled = {
                    (c["src"], c["dst"]) for c in reply.json()["cells"] if c["value"] is not None
                }
        assert expected <= filled, f"missing after {FILL_BOUND_S} s: {sorted(expected - filled)}"
        agents = httpx.get(f"{url}/api/v1/agents").json()["agents"]
        assert {a["status"] for a in agents} == {"up"}
        assert len(agents) == 32
    finally:
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=30)
    assert demo.returncode == 0, output
    assert f"{url}/" in output
    # every agent process is gone: nothing answers on any agent's responder port
    for server in topology.servers:
        with socket.socket() as probe:
            probe.settimeout(1)
            assert probe.connect_ex((server.address, 9781)) != 0
