"""The TCP connect prober against real sockets on 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from pingmesh.agent.probers.tcp import (
    TCP_INFO_BYTES,
    TcpConnectProber,
    outcome_for_errno,
    parse_tcp_info,
    syn_retries_for,
)
from pingmesh.clock import SystemClock
from pingmesh.core.probe import Outcome, ProbeKind, Scope
from pingmesh.wire.pinglist import PeerModel


def peer(address: str, port: int) -> PeerModel:
    return PeerModel(name="p1", address=address, port=port, scope=Scope.INTRA_TOR)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock
    sock.close()


@pytest.fixture
def full_listener() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A listener whose accept queue is full: further SYNs are dropped by the kernel.

    With ``listen(0)`` one connection fits in the accept queue; the filler takes it, and
    since nobody accepts, every later SYN is dropped (LISTENOVERFLOWS), as if lost.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    filler = socket.create_connection(sock.getsockname(), timeout=5)
    yield sock, filler
    filler.close()
    sock.close()


async def test_ok_against_a_listening_socket(listener: socket.socket) -> None:
    prober = TcpConnectProber(bind_addr="127.0.0.1", clock=SystemClock())
    port = listener.getsockname()[1]
    results = [await prober.probe(peer("127.0.0.1", port), timeout_s=3.5) for _ in range(5)]
    for result in results:
        assert result.outcome is Outcome.OK, result.detail
        assert result.kind is ProbeKind.TCP
        assert result.rtt_us is not None
        assert result.rtt_us > 0
        assert result.rtt_clock_us is not None
        assert result.rtt_clock_us > 0
        assert result.detail == ""  # the kernel gave an RTT sample
        assert result.retransmits == 0
        assert result.src_addr == "127.0.0.1"
        assert result.src_port > 0
        assert (result.dst, result.dst_addr, result.dst_port) == ("p1", "127.0.0.1", port)
        assert result.time_ns > 1_600_000_000 * 10**9
    assert len({r.src_port for r in results}) > 1  # a fresh source port per probe


async def test_ok_from_the_wildcard_address_reports_the_real_source(
    listener: socket.socket,
) -> None:
    prober = TcpConnectProber(clock=SystemClock())
    result = await prober.probe(peer("127.0.0.1", listener.getsockname()[1]), timeout_s=3.5)
    assert result.outcome is Outcome.OK
    assert result.src_addr == "127.0.0.1"


async def test_refused_against_a_closed_port() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.3", 0))
    port = closed.getsockname()[1]
    closed.close()
    prober = TcpConnectProber(bind_addr="127.0.0.2", clock=SystemClock())
    result = await prober.probe(peer("127.0.0.3", port), timeout_s=3.5)
    assert result.outcome is Outcome.REFUSED
    assert result.detail.startswith("ECONNREFUSED")
    assert result.rtt_us is None
    assert result.src_addr == "127.0.0.2"
    assert result.src_port > 0  # the 5-tuple of a failed probe is kept


async def test_timeout_when_syns_are_dropped(
    full_listener: tuple[socket.socket, socket.socket],
) -> None:
    listener, _ = full_listener
    prober = TcpConnectProber(bind_addr="127.0.0.1", clock=SystemClock())
    before = open_fds()
    result = await prober.probe(peer("127.0.0.1", listener.getsockname()[1]), timeout_s=0.3)
    assert result.outcome is Outcome.TIMEOUT
    assert "no answer within 0.3 s" in result.detail
    assert result.src_port > 0
    assert open_fds() == before + 1  # the prober's epoll set, kept for the next probes
    prober.close()
    assert open_fds() == before


async def test_a_lost_syn_is_counted_as_a_retransmission(
    full_listener: tuple[socket.socket, socket.socket],
) -> None:
    """The first SYN is dropped; room frees up; the retransmitted SYN (after ~1 s) gets in."""
    listener, _ = full_listener
    prober = TcpConnectProber(bind_addr="127.0.0.1", clock=SystemClock())
    task = asyncio.create_task(
        prober.probe(peer("127.0.0.1", listener.getsockname()[1]), timeout_s=5.0)
    )
    await asyncio.sleep(0.2)
    accepted, _ = listener.accept()  # frees the accept queue for the retransmitted SYN
    try:
        result = await task
    finally:
        accepted.close()
    assert result.outcome is Outcome.OK, result.detail
    assert result.retransmits >= 1
    assert result.rtt_clock_us is not None
    assert result.rtt_clock_us >= 500_000  # waited for the retransmission timeout (1 s)


async def test_cancellation_propagates_and_leaks_no_socket(
    full_listener: tuple[socket.socket, socket.socket],
) -> None:
    listener, _ = full_listener
    prober = TcpConnectProber(bind_addr="127.0.0.1", clock=SystemClock())
    before = open_fds()
    task = asyncio.create_task(
        prober.probe(peer("127.0.0.1", listener.getsockname()[1]), timeout_s=30)
    )
    await asyncio.sleep(0.1)
    assert open_fds() == before + 2  # the probe's socket and the prober's epoll set
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert open_fds() == before + 1
    prober.close()
    assert open_fds() == before


async def test_a_name_is_not_resolved() -> None:
    prober = TcpConnectProber(clock=SystemClock())
    result = await prober.probe(peer("example.invalid", 9781), timeout_s=1)
    assert result.outcome is Outcome.ERROR
    assert "not an IP address" in result.detail


async def test_an_unusable_bind_address_is_an_error_with_its_errno() -> None:
    # Binding to a non-local address fails locally (no packet is sent).
    prober = TcpConnectProber(bind_addr="198.18.255.254", clock=SystemClock())
    result = await prober.probe(peer("127.0.0.1", 9), timeout_s=1)
    assert result.outcome is Outcome.ERROR
    assert result.detail.startswith("EADDRNOTAVAIL")


def test_tcp_info_offsets() -> None:
    raw = bytearray(TCP_INFO_BYTES + 40)
    raw[0] = 1  # TCP_ESTABLISHED
    struct.pack_into("=I", raw, 68, 123)
    struct.pack_into("=I", raw, 100, 2)
    info = parse_tcp_info(bytes(raw))
    assert (info.state, info.rtt_us, info.total_retrans) == (1, 123, 2)
    with pytest.raises(ValueError, match="TCP_INFO"):
        parse_tcp_info(bytes(50))


def test_tcp_info_from_the_kernel(listener: socket.socket) -> None:
    """The offsets agree with the running kernel: an established loopback socket."""
    with socket.create_connection(listener.getsockname(), timeout=5) as sock:
        info = parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104))
    assert info.state == 1  # TCP_ESTABLISHED
    assert 0 < info.rtt_us < 1_000_000
    assert info.total_retrans == 0


def test_syn_retries_cover_the_timeout() -> None:
    assert syn_retries_for(0.5) == 1
    assert syn_retries_for(3.5) == 2  # the kernel's bound: 7 s >= 3.5 s
    assert syn_retries_for(60) == 5  # 63 s
    with pytest.raises(ValueError, match="timeout_s"):
        syn_retries_for(0)


def test_errno_mapping() -> None:
    assert outcome_for_errno(errno.ECONNREFUSED) is Outcome.REFUSED
    assert outcome_for_errno(errno.EHOSTUNREACH) is Outcome.UNREACHABLE
    assert outcome_for_errno(errno.ENETUNREACH) is Outcome.UNREACHABLE
    assert outcome_for_errno(errno.ECONNRESET) is Outcome.RESET
    assert outcome_for_errno(errno.ETIMEDOUT) is Outcome.TIMEOUT
    assert outcome_for_errno(errno.EMFILE) is Outcome.ERROR
    assert outcome_for_errno(None) is Outcome.ERROR


async def test_a_failed_probe_from_the_wildcard_names_its_real_source() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.4", 0))
    port = closed.getsockname()[1]
    closed.close()
    prober = TcpConnectProber(clock=SystemClock())
    result = await prober.probe(peer("127.0.0.4", port), timeout_s=3.5)
    assert result.outcome is Outcome.REFUSED
    assert result.src_addr == "127.0.0.1"  # the kernel's route source, not 0.0.0.0
    assert result.src_port > 0
