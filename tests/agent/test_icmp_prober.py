"""The ICMP echo prober on loopback (raw socket: the tests run as root), and without privilege.

Timeouts and unreachables need a network that drops or refuses: they are tested in network
namespaces (tests/lab/test_agent_netns.py), with the unprivileged ping socket.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from pingmesh.agent.probers.icmp import IcmpEchoProber, checksum, echo_request
from pingmesh.clock import SystemClock
from pingmesh.core.probe import Outcome, ProbeKind
from tests.agent.stubs import open_fds, target

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a raw socket")


@pytest.fixture
async def prober() -> AsyncIterator[IcmpEchoProber]:
    icmp = IcmpEchoProber(clock=SystemClock(), rng=random.Random(5), socket_kind="raw")
    yield icmp
    icmp.close()


def test_checksum_of_a_packet_with_its_checksum_is_zero() -> None:
    for size in (0, 1, 7, 56, 1000):
        packet = echo_request(0x1234, 42, bytes(range(256))[:size] * 1)
        assert checksum(packet) == 0


@pytest.mark.parametrize("size", [0, 16, 1000, 8000])
async def test_ok_on_loopback_with_kernel_timestamps(prober: IcmpEchoProber, size: int) -> None:
    result = await prober.probe(
        target("127.0.0.1", 0, kind=ProbeKind.ICMP, size_bytes=size), timeout_s=2
    )
    assert result.outcome is Outcome.OK, result.detail
    assert result.kind is ProbeKind.ICMP
    assert result.dst_port == 0
    assert result.src_port == prober.identifier
    assert result.size_bytes == (size if size >= 20 else (56 if size == 0 else 20))
    assert result.rtt_us is not None
    assert result.rtt_clock_us is not None
    assert result.recv_lag_us is not None
    assert result.rtt_us <= result.rtt_clock_us + 1  # the kernel stamp comes first
    assert prober.socket_kind == "raw"


async def test_replies_to_other_pingers_are_ignored(prober: IcmpEchoProber) -> None:
    peer = target("127.0.0.1", 0, kind=ProbeKind.ICMP)
    assert (await prober.probe(peer, timeout_s=2)).outcome is Outcome.OK
    # fping sends its own echo requests (another identifier) to the same address meanwhile:
    # our raw socket must ignore their replies.
    fping = subprocess.run(
        ["fping", "-c", "3", "-p", "20", "-q", "127.0.0.1"], check=False, capture_output=True
    )
    assert fping.returncode == 0
    results = [await prober.probe(peer, timeout_s=2) for _ in range(3)]
    assert all(r.outcome is Outcome.OK for r in results)
    stats = prober.statistics()
    assert stats.answered == 4
    assert stats.sent == 4


async def test_ipv6_and_names_are_errors_not_exceptions(prober: IcmpEchoProber) -> None:
    v6 = await prober.probe(target("::1", 0, kind=ProbeKind.ICMP), timeout_s=1)
    name = await prober.probe(target("localhost", 0, kind=ProbeKind.ICMP), timeout_s=1)
    assert v6.outcome is Outcome.ERROR
    assert name.outcome is Outcome.ERROR
    assert "IPv4" in v6.detail


async def test_close_releases_the_socket(prober: IcmpEchoProber) -> None:
    before = open_fds()
    await prober.probe(target("127.0.0.1", 0, kind=ProbeKind.ICMP), timeout_s=2)
    assert open_fds() == before + 1
    prober.close()
    assert open_fds() == before


UNPRIVILEGED = """
import asyncio, random
from pingmesh.agent.probers.icmp import IcmpEchoProber
from pingmesh.clock import SystemClock
from pingmesh.core.probe import ProbeKind, ProbeTarget, Scope

async def main():
    icmp = IcmpEchoProber(clock=SystemClock(), rng=random.Random(1))
    peer = ProbeTarget(name="x", address="127.0.0.1", port=0, kind=ProbeKind.ICMP,
                       scope=Scope.INTRA_TOR, interval_s=1.0)
    result = await icmp.probe(peer, timeout_s=1)
    print(result.outcome.value)
    print(result.detail)

asyncio.run(main())
"""


def test_without_privilege_the_error_names_the_capability_and_the_sysctl() -> None:
    # No CAP_NET_RAW (setpriv drops it), and ping_group_range excludes gid 0 unless the machine
    # allows it, in which case the ping socket works instead.
    with open("/proc/sys/net/ipv4/ping_group_range", encoding="ascii") as stream:
        low, high = (int(x) for x in stream.read().split())
    done = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", sys.executable, "-c", UNPRIVILEGED],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    outcome, detail = done.stdout.splitlines()[:2]
    if low <= 0 <= high:
        assert outcome == "ok"
    else:
        assert outcome == "error"
        assert "CAP_NET_RAW (raw socket: EPERM)" in detail
        assert "gid 0 in net.ipv4.ping_group_range" in detail
        assert f"now {low} {high}" in detail
