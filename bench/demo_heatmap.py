"""Time from `pingmesh demo` start to a ToR heatmap filled with real measurements.

Target (issue "The whole Pingmesh loop"): within 60 s of start, every ToR pair inside a DC has a
P99 in the fast window and every agent is up. Prints `figure: NAME VALUE UNIT` lines.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from pingmesh.demo.fleet import DemoShape, demo_topology


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(timeout_s: float) -> tuple[float | None, float | None]:
    """Seconds until the heatmap is filled and until every agent is up (None: not in time)."""
    topology = demo_topology(DemoShape())
    tors = topology.entities("tor")
    expected = {(a, b) for a in tors for b in tors if a.split("-")[0] == b.split("-")[0]}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        started = time.monotonic()
        argv = ["demo", "--listen", f"127.0.0.1:{port}", "--data", data]
        demo = subprocess.Popen(
            [sys.executable, "-m", "pingmesh", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        filled_at = all_up_at = None
        try:
            while time.monotonic() - started < timeout_s and filled_at is None:
                time.sleep(0.5)
                try:
                    if all_up_at is None:
                        agents = httpx.get(f"{url}/api/v1/agents").json()
                        if agents["counts"]["up"] == len(topology.servers):
                            all_up_at = time.monotonic() - started
                    cells = httpx.get(
                        f"{url}/api/v1/heatmap", params={"level": "tor", "window": "30s"}
                    ).json()["cells"]
                except (httpx.HTTPError, KeyError):
                    continue
                if expected <= {(c["src"], c["dst"]) for c in cells if c["value"] is not None}:
                    filled_at = time.monotonic() - started
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=30)
    return filled_at, all_up_at


def _fmt(seconds: float | None) -> str:
    return "nan" if seconds is None else f"{seconds:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    fills = []
    for _ in range(args.runs):
        filled_at, all_up_at = measure(args.timeout)
        print(f"figure: demo_agents_up_s {_fmt(all_up_at)} s")
        print(f"figure: demo_heatmap_filled_s {_fmt(filled_at)} s")
        if filled_at is not None:
            fills.append(filled_at)
    if fills:
        print(f"figure: demo_heatmap_filled_worst_s {max(fills):.1f} s")


if __name__ == "__main__":
    main()
