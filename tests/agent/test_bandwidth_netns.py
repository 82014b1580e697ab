"""Done-when of issue 7: on a veth pair between two network namespaces, a transfer of known size
is reported by the sampler within 1 % of its true byte count, and its rate within 5 %.

Two namespaces joined by a veth pair (198.18.x.1 ↔ 198.18.x.2), made quiet (no IPv6, static
neighbour entries, so nothing but our traffic crosses). The sampler reads each namespace's
``/proc/PID/net/dev`` through a process living in it, exactly as an agent inside it would read
``/proc/net/dev``.

- *Bytes*: K UDP datagrams of P bytes. Their true size on the veth is known exactly:
  K × (P + 8 UDP + 20 IPv4 + 14 Ethernet) bytes, K packets.
- *Rate*: a TCP transfer through ``tc tbf`` shaping the sender's veth to 16 Mbit/s, i.e.
  2 000 000 bytes/s of frames (tbf counts frame bytes, as the counters do, once segmentation
  offload is off). Every report made wholly inside the transfer must show that rate.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pingmesh.agent.bandwidth import (
    BandwidthMeter,
    BandwidthReport,
    BandwidthSampler,
    ProcNetDevSource,
)
from pingmesh.clock import SystemClock

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root, ip"),
]

UDP_COUNT, UDP_PAYLOAD = 3000, 1000
UDP_WIRE_BYTES = UDP_COUNT * (UDP_PAYLOAD + 8 + 20 + 14)
TBF_RATE_BYTES_PER_S = 2_000_000  # 16 Mbit/s
TCP_BYTES = 6_000_000  # three seconds at the shaped rate


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _in(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *args], check=True, capture_output=True)


@dataclass
class Pair:
    ns_a: str
    ns_b: str
    addr_a: str
    addr_b: str
    dev_a: str = "bwa"
    dev_b: str = "bwb"
    pid_a: int = 0
    pid_b: int = 0


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = f"{os.getpid() % 10000}{random.randrange(100, 999)}"
    subnet = random.randrange(0, 64) * 4
    third = random.randrange(1, 250)
    net = Pair(
        ns_a=f"pmbw-a{tag}",
        ns_b=f"pmbw-b{tag}",
        addr_a=f"198.18.{third}.{subnet + 1}",
        addr_b=f"198.18.{third}.{subnet + 2}",
    )
    holders: list[subprocess.Popen[bytes]] = []
    try:
        _ip("netns", "add", net.ns_a)
        _ip("netns", "add", net.ns_b)
        _ip("link", "add", net.dev_a, "netns", net.ns_a, "type", "veth", "peer", "name",
            net.dev_b, "netns", net.ns_b)  # fmt: skip
        macs = {}
        for ns, dev, addr in ((net.ns_a, net.dev_a, net.addr_a), (net.ns_b, net.dev_b, net.addr_b)):
            _in(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            _in(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            _in(ns, "ip", "addr", "add", f"{addr}/30", "dev", dev)
            _in(ns, "ip", "link", "set", "lo", "up")
            _in(ns, "ip", "link", "set", dev, "up")
            macs[ns] = Path(f"/sys/class/net/{dev}/address")
        mac_a = _read_in(net.ns_a, f"/sys/class/net/{net.dev_a}/address")
        mac_b = _read_in(net.ns_b, f"/sys/class/net/{net.dev_b}/address")
        _in(net.ns_a, "ip", "neigh", "replace", net.addr_b, "lladdr", mac_b, "dev", net.dev_a,
            "nud", "permanent")  # fmt: skip
        _in(net.ns_b, "ip", "neigh", "replace", net.addr_a, "lladdr", mac_a, "dev", net.dev_b,
            "nud", "permanent")  # fmt: skip
        for ns in (net.ns_a, net.ns_b):
            holders.append(
                subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])  # its /proc/PID/net
            )
        net.pid_a, net.pid_b = holders[0].pid, holders[1].pid
        yield net
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        for ns in (net.ns_a, net.ns_b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _read_in(ns: str, path: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "cat", path], check=True, capture_output=True, text=True
    ).stdout.strip()


def _python_in(ns: str, code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code])


UDP_RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1] if len(sys.argv) > 1 else "{addr}", 9999))
while True:
    s.recv(65536)
"""

UDP_SENDER = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * {size}
for i in range({count}):
    s.sendto(payload, ("{addr}", 9999))
    if i % 50 == 49:
        time.sleep(0.002)  # gentle: the veth's backlog never overflows
"""

TCP_RECEIVER = """
import socket
srv = socket.create_server(("{addr}", 9998))
conn, _ = srv.accept()
while conn.recv(1 << 20):
    pass
"""

TCP_SENDER = """
import socket, time
for attempt in range(100):
    try:
        s = socket.create_connection(("{addr}", 9998))
        break
    except OSError:
        time.sleep(0.05)
s.sendall(b"x" * {size})
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""


class _Collected:
    def __init__(self) -> None:
        self.reports: list[BandwidthReport] = []

    def __call__(self, report: BandwidthReport) -> None:
        self.reports.append(report)


def _sampler(pid: int, dev: str, sink: _Collected, *, sample_s: float, report_s: float):
    return BandwidthSampler(
        source=ProcNetDevSource(Path(f"/proc/{pid}/net/dev"), sysfs=None),
        sink=sink,
        clock=SystemClock(),
        meter=BandwidthMeter(interfaces=[dev]),
        sample_interval_s=sample_s,
        report_interval_s=report_s,
    )


async def _run_while(samplers: list[BandwidthSampler], process: subprocess.Popen[bytes]) -> None:
    async with asyncio.TaskGroup() as tasks:
        running = [tasks.create_task(s.run()) for s in samplers]
        for sampler in samplers:
            await sampler.wait_reports(2)  # baselines taken, sampling on schedule
        while process.poll() is None:
            await asyncio.sleep(0.05)
        for sampler in samplers:  # the last frames of the transfer are in a report
            await sampler.wait_reports(sampler.statistics().reports_total + 2)
        for task in running:
            task.cancel()


async def test_a_transfer_of_known_size_is_counted_within_one_percent(pair: Pair) -> None:
    receiver = _python_in(pair.ns_b, UDP_RECEIVER.format(addr=pair.addr_b))
    try:
        time.sleep(0.3)  # the receiver binds (else ICMP unreachable would add traffic)
        sent_a, got_b = _Collected(), _Collected()
        samplers = [
            _sampler(pair.pid_a, pair.dev_a, sent_a, sample_s=0.1, report_s=0.2),
            _sampler(pair.pid_b, pair.dev_b, got_b, sample_s=0.1, report_s=0.2),
        ]
        sender = _python_in(
            pair.ns_a,
            UDP_SENDER.format(addr=pair.addr_b, size=UDP_PAYLOAD, count=UDP_COUNT),
        )
        await _run_while(samplers, sender)
        assert sender.returncode == 0
    finally:
        receiver.kill()
        receiver.wait()
    tx = sum(i.tx_bytes for r in sent_a.reports for i in r.interfaces)
    tx_packets = sum(i.tx_packets for r in sent_a.reports for i in r.interfaces)
    rx = sum(i.rx_bytes for r in got_b.reports for i in r.interfaces)
    assert tx == pytest.approx(UDP_WIRE_BYTES, rel=0.01)
    assert rx == pytest.approx(UDP_WIRE_BYTES, rel=0.01)
    assert tx_packets == pytest.approx(UDP_COUNT, rel=0.01)
    # Average packet size: the frame, exactly.
    busiest = max((i for r in sent_a.reports for i in r.interfaces), key=lambda i: i.tx_bytes)
    assert busiest.tx_avg_packet_bytes == pytest.approx(UDP_PAYLOAD + 42, rel=0.01)


async def test_a_shaped_transfer_is_reported_at_its_rate_within_five_percent(pair: Pair) -> None:
    # One frame per packet: tbf charges a GSO packet for the headers of every segment it
    # would become, while a veth counts it once; with segmentation off, both count frames.
    _in(pair.ns_a, "ip", "link", "set", "dev", pair.dev_a, "gso_max_segs", "1")
    _in(pair.ns_a, "tc", "qdisc", "add", "dev", pair.dev_a, "root", "tbf", "rate", "16mbit",
        "burst", "16kb", "latency", "200ms")  # fmt: skip
    receiver = _python_in(pair.ns_b, TCP_RECEIVER.format(addr=pair.addr_b))
    try:
        time.sleep(0.3)
        sent_a = _Collected()
        sampler = _sampler(pair.pid_a, pair.dev_a, sent_a, sample_s=0.1, report_s=0.5)
        started_s = time.time()
        sender = _python_in(pair.ns_a, TCP_SENDER.format(addr=pair.addr_b, size=TCP_BYTES))
        await _run_while([sampler], sender)
        ended_s = time.time()
        assert sender.returncode == 0
    finally:
        receiver.kill()
        receiver.wait()
    # The reports wholly inside the steady part of the transfer (not its first and last
    # half second, where the connection opens, the burst drains and the tail ends).
    inside = [
        i
        for r in sent_a.reports
        if r.start_s >= started_s + 0.6 and r.end_s <= ended_s - 0.6
        for i in r.interfaces
    ]
    assert len(inside) >= 3
    for rate in inside:
        assert rate.tx_bytes_per_s == pytest.approx(TBF_RATE_BYTES_PER_S, rel=0.05)
    total = sum(i.tx_bytes for r in sent_a.reports for i in r.interfaces)
    assert total >= TCP_BYTES  # payload plus headers: nothing was missed
