"""Helpers shared by the agent benchmarks (``bench/agent_*.py``); not a benchmark itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

TICKS = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on ``host`` now."""
    while True:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
        return port


def loopback_addresses(count: int, *, first: int = 64) -> list[str]:
    """``count`` distinct 127.x.y.1 addresses (all reach a listener on 0.0.0.0)."""
    if count > (256 - first) * 250:
        raise ValueError(f"count: {count} is too many loopback addresses")
    return [f"127.{first + i // 250}.{i % 250 + 1}.1" for i in range(count)]


def write_pinglist(
    path: Path,
    peers: Sequence[tuple[str, str, int, str, int]],
    *,
    interval_s: float,
    timeout_s: float = 3.5,
    server: str = "bench",
    address: str = "127.0.0.1",
) -> Path:
    """A pinglist file: peers are (name, address, port, kind, size_bytes)."""
    document = {
        "version": f"bench-{len(peers)}-{interval_s}",
        "server": server,
        "address": address,
        "timeout_s": timeout_s,
        "peers": [
            {
                "name": name,
                "address": addr,
                "port": port,
                "kind": kind,
                "scope": "intra_tor",
                "interval_s": interval_s,
                "size_bytes": size,
            }
            for name, addr, port, kind, size in peers
        ],
    }
    path.write_text(json.dumps(document))
    return path


def write_agent_config(path: Path, **fields: object) -> Path:
    """An agent config file (YAML is a superset of JSON)."""
    path.write_text(json.dumps({"agent": fields}))
    return path


def start(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    cpu: int | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process, optionally in a network namespace and pinned to one CPU."""
    command = list(argv)
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def agent_argv(*options: str) -> list[str]:
    """``pingmesh agent OPTIONS`` with this interpreter."""
    return [sys.executable, "-m", "pingmesh", "--log-level", "warning", "agent", *options]


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT, then SIGKILL if it does not go within 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def real_pid(process: subprocess.Popen[bytes]) -> int:
    """The pid of the measured program (``ip netns exec`` and ``taskset`` exec it in place)."""
    return process.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid``, in KiB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as stream:
        for line in stream:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(rest.split()[0])
    return found


def scrape(url: str, timeout_s: float = 60.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of a Prometheus endpoint: name -> [(labels, value)]."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(k) == v for k, v in labels.items())
    )


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    """Wait until ``url`` answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def load_average() -> str:
    """The 1/5/15-minute load averages, for the record (the machine is shared)."""
    with open("/proc/loadavg", encoding="ascii") as stream:
        return " ".join(stream.read().split()[:3])


def figure(name: str, value: float, unit: str) -> None:
    """Print one figure in the house format."""
    print(f"figure: {name} {value:.6g} {unit}", flush=True)
