"""The probers across a real (virtual) network: loss, retransmissions, unreachables, traceroute.

Three network namespaces that this module creates and always removes::

    A 198.18.201.2 ── veth ── 198.18.201.1  R  198.18.202.1 ── veth ── 198.18.202.2 B
                                            │ (router: forwards; nftables drops what a test
                                            │  says, and rejects 198.18.203.0/24 as "host
                                            │  unreachable")

Loss is real: nftables in R drops packets (every other SYN, every other datagram, every
frame above a size), the kernels retransmit, and the probers must say what happened. The
test process itself moves between namespaces (``setns`` on its own thread): responders are
started inside B, probers inside A, so every socket lives in the namespace it belongs to.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from pingmesh.agent.probers.icmp import IcmpEchoProber
from pingmesh.agent.probers.tcp import TcpConnectProber
from pingmesh.agent.probers.tcp_echo import TcpEchoProber
from pingmesh.agent.probers.traceroute import TcpTraceroute
from pingmesh.agent.probers.udp import UdpEchoProber
from pingmesh.agent.responder import Responder
from pingmesh.agent.udp_responder import UdpResponder
from pingmesh.clock import SystemClock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeTarget, Scope

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
        reason="needs root, ip and nft (network namespaces)",
    ),
]

A_ADDR, R_A, R_B, B_ADDR = "198.18.201.2", "198.18.201.1", "198.18.202.1", "198.18.202.2"
NOWHERE_NET = "198.18.203.0/24"  # R rejects it: "host unreachable"
NOWHERE = "198.18.203.5"
ECHO_PORT = 9781
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Net:
    a: str
    r: str
    b: str

    def nft(self, rules: str) -> None:
        """Replace R's test rules (forward hook) with ``rules``."""
        subprocess.run(
            ["ip", "netns", "exec", self.r, "nft", "-f", "-"],
            input=(
                "table inet pmagent\ndelete table inet pmagent\n"
                "table inet pmagent {\n chain forward_test {\n"
                "  type filter hook forward priority 0; policy accept;\n"
                # "Unreachable" from R after its TTL check (a route would answer first):
                f"  ip daddr {NOWHERE_NET} reject with icmp type host-unreachable\n"
                f"  {rules}\n }}\n}}\n"
            ),
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    tag = f"{os.getpid() % 100000}"
    names = Net(a=f"pmagt-a{tag}", r=f"pmagt-r{tag}", b=f"pmagt-b{tag}")
    try:
        for ns in (names.a, names.r, names.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "eth0", "netns", names.a, "type", "veth",
           "peer", "name", "a0", "netns", names.r)  # fmt: skip
        sh("ip", "link", "add", "eth0", "netns", names.b, "type", "veth",
           "peer", "name", "b0", "netns", names.r)  # fmt: skip
        for ns, dev, addr in (
            (names.a, "eth0", f"{A_ADDR}/24"),
            (names.r, "a0", f"{R_A}/24"),
            (names.r, "b0", f"{R_B}/24"),
            (names.b, "eth0", f"{B_ADDR}/24"),
        ):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", names.a, "route", "add", "default", "via", R_A)
        sh("ip", "-n", names.b, "route", "add", "default", "via", R_B)
        sh("ip", "-n", names.r, "route", "add", NOWHERE_NET, "via", B_ADDR)
        sh("ip", "netns", "exec", names.r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The router answers every error at once (Linux rate-limits ICMP errors to one a
        # second per destination by default; each test here needs a few in a row).
        sh("ip", "netns", "exec", names.r, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        # Unprivileged ICMP (ping sockets) for everyone in A: a per-namespace sysctl.
        sh("ip", "netns", "exec", names.a, "sysctl", "-qw",
           "net.ipv4.ping_group_range=0 2147483647")  # fmt: skip
        names.nft("")
        yield names
    finally:
        for ns in (names.a, names.r, names.b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run this thread in network namespace ``ns`` (sockets made now stay in it)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(target)
        os.close(home)


@pytest.fixture
async def responders(net: Net) -> AsyncIterator[None]:
    """B's TCP and UDP echo responders (started inside B)."""
    with inside(net.b):
        tcp = Responder(bind=B_ADDR, port=ECHO_PORT, max_connections=64)
        udp = UdpResponder(bind=B_ADDR, port=ECHO_PORT)
        await tcp.start()
        await udp.start()
    try:
        yield
    finally:
        await tcp.aclose()
        await udp.aclose()
        net.nft("")


def peer(address: str, port: int, kind: ProbeKind, size_bytes: int = 0) -> ProbeTarget:
    return ProbeTarget(
        name="b", address=address, port=port, kind=kind, scope=Scope.INTER_TOR,
        interval_s=1.0, size_bytes=size_bytes,
    )  # fmt: skip


# -- TCP connect --------------------------------------------------------------------------------


async def test_a_dropped_syn_is_one_retransmission(net: Net, responders: None) -> None:
    # Every other SYN towards B's responder is dropped: the first SYN of each probe dies,
    # its retransmission (after the initial RTO, 1 s) gets through.
    net.nft(f"ip daddr {B_ADDR} tcp dport {ECHO_PORT} tcp flags syn numgen inc mod 2 0 drop")
    with inside(net.a):
        prober = TcpConnectProber(bind_addr=A_ADDR, clock=SystemClock())
        results = [
            await prober.probe(peer(B_ADDR, ECHO_PORT, ProbeKind.TCP), timeout_s=3.5)
            for _ in range(2)
        ]
    for result in results:
        assert result.outcome is Outcome.OK, result.detail
        assert result.retransmits == 1  # read from TCP_INFO, not guessed
        assert result.rtt_clock_us is not None
        assert result.rtt_clock_us >= 900_000  # it waited for the retransmission timeout


async def test_connect_timeout_refused_and_unreachable_over_the_network(
    net: Net, responders: None
) -> None:
    net.nft(f"ip daddr {B_ADDR} tcp dport 9999 drop")
    with inside(net.a):
        prober = TcpConnectProber(bind_addr=A_ADDR, clock=SystemClock())
        lost = await prober.probe(peer(B_ADDR, 9999, ProbeKind.TCP), timeout_s=1.5)
        refused = await prober.probe(peer(B_ADDR, 9998, ProbeKind.TCP), timeout_s=1.5)
        nowhere = await prober.probe(peer(NOWHERE, ECHO_PORT, ProbeKind.TCP), timeout_s=1.5)
    assert lost.outcome is Outcome.TIMEOUT
    assert lost.retransmits >= 1
    assert (lost.src_addr, lost.dst_addr) == (A_ADDR, B_ADDR)  # the 5-tuple of the failure
    assert lost.src_port > 0
    assert refused.outcome is Outcome.REFUSED
    assert nowhere.outcome is Outcome.UNREACHABLE
    assert nowhere.detail.startswith("EHOSTUNREACH")


# -- size-dependent loss: TCP echo sees what SYNs miss ------------------------------------------


async def test_big_frames_dropped_pass_connect_probes_but_not_echo(
    net: Net, responders: None
) -> None:
    net.nft(f"ip daddr {B_ADDR} meta length > 1000 drop")
    with inside(net.a):
        connect = TcpConnectProber(bind_addr=A_ADDR, clock=SystemClock())
        echo = TcpEchoProber(bind_addr=A_ADDR, clock=SystemClock(), rng=random.Random(1))
        syn = await connect.probe(peer(B_ADDR, ECHO_PORT, ProbeKind.TCP), timeout_s=2)
        small = await echo.probe(peer(B_ADDR, ECHO_PORT, ProbeKind.TCP_ECHO, 500), timeout_s=2)
        big = await echo.probe(peer(B_ADDR, ECHO_PORT, ProbeKind.TCP_ECHO, 8000), timeout_s=1.5)
    assert syn.outcome is Outcome.OK
    assert small.outcome is Outcome.OK, small.detail
    assert small.dwell_us is not None
    assert big.outcome is Outcome.TIMEOUT
    assert big.detail == "no echo within 1.5 s"
    assert big.retransmits >= 1  # the big segments were retransmitted, in vain


# -- UDP: direct loss ---------------------------------------------------------------------------


async def test_udp_loss_is_counted_datagram_by_datagram(net: Net, responders: None) -> None:
    net.nft(f"ip daddr {B_ADDR} udp dport {ECHO_PORT} numgen inc mod 2 0 drop")
    with inside(net.a):
        udp = UdpEchoProber(
            bind_addr=A_ADDR, clock=SystemClock(), rng=random.Random(3), source_ports=4
        )
        try:
            results = [
                await udp.probe(peer(B_ADDR, ECHO_PORT, ProbeKind.UDP, 200), timeout_s=0.5)
                for _ in range(10)
            ]
            nowhere = await udp.probe(peer(NOWHERE, ECHO_PORT, ProbeKind.UDP), timeout_s=1)
        finally:
            udp.close()
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.TIMEOUT) == 5  # every other datagram, really lost
    assert outcomes.count(Outcome.OK) == 5
    assert nowhere.outcome is Outcome.UNREACHABLE
    assert f"from {R_A}" in nowhere.detail  # the router said so (ICMP on the error queue)


# -- ICMP, unprivileged (ping socket) and raw ---------------------------------------------------


@pytest.mark.parametrize("kind", ["ping", "raw"])
async def test_icmp_ok_lost_and_unreachable(net: Net, responders: None, kind: str) -> None:
    with inside(net.a):
        icmp = IcmpEchoProber(
            bind_addr=A_ADDR, clock=SystemClock(), rng=random.Random(2), socket_kind=kind
        )
        try:
            ok = await icmp.probe(peer(B_ADDR, 0, ProbeKind.ICMP), timeout_s=1)
            assert icmp.socket_kind == kind
            net.nft(f"ip daddr {B_ADDR} icmp type echo-request drop")
            lost = await icmp.probe(peer(B_ADDR, 0, ProbeKind.ICMP), timeout_s=0.5)
            nowhere = await icmp.probe(peer(NOWHERE, 0, ProbeKind.ICMP), timeout_s=1)
        finally:
            icmp.close()
    assert ok.outcome is Outcome.OK, ok.detail
    assert ok.recv_lag_us is not None
    assert lost.outcome is Outcome.TIMEOUT
    assert nowhere.outcome is Outcome.UNREACHABLE
    assert R_A in nowhere.detail


# -- traceroute keeping the 5-tuple -------------------------------------------------------------


async def test_traceroute_names_the_router_then_reaches_the_peer(
    net: Net, responders: None
) -> None:
    with inside(net.a):
        tracer = TcpTraceroute(bind_addr=A_ADDR, clock=SystemClock(), hop_timeout_s=1)
        trace = await tracer.trace(B_ADDR, ECHO_PORT, src_port=45678, max_hops=5)
        blocked = await tracer.trace(NOWHERE, ECHO_PORT, src_port=45679, max_hops=5)
    assert trace.reached, trace.detail
    assert trace.src_port == 45678
    assert [(h.ttl, h.address) for h in trace.hops] == [(1, R_A), (2, B_ADDR)]
    assert not blocked.reached
    assert [(h.ttl, h.address) for h in blocked.hops] == [(1, R_A), (2, R_A)]
    assert blocked.detail == f"unreachable, said {R_A} at ttl 2"
