"""The UDP echo prober against real sockets on 127.0.0.0/8: every outcome and every anomaly."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest

from pingmesh.agent.echo_wire import UDP_REPLY, parse_udp, udp_reply_into, udp_request
from pingmesh.agent.probers.udp import UdpEchoProber
from pingmesh.agent.udp_responder import UdpResponder
from pingmesh.clock import SystemClock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult
from tests.agent.stubs import closed_port, open_fds, target


@pytest.fixture
async def responder() -> AsyncIterator[UdpResponder]:
    udp = UdpResponder(bind="127.0.0.1", port=0)
    await udp.start()
    yield udp
    await udp.aclose()


@pytest.fixture
async def prober() -> AsyncIterator[UdpEchoProber]:
    udp = UdpEchoProber(
        bind_addr="127.0.0.1", clock=SystemClock(), rng=random.Random(7), source_ports=8
    )
    yield udp
    udp.close()


class Misbehaving(asyncio.DatagramProtocol):
    """A UDP echo that does what ``answer`` says with each request (real socket)."""

    def __init__(self, answer: Callable[[Misbehaving, bytes, tuple[str, int]], None]) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None
        self.held: list[tuple[bytes, tuple[str, int]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.answer(self, data, addr)

    def reply(self, data: bytes, addr: tuple[str, int], *, corrupt: bool = False) -> None:
        reply = bytearray(data)
        udp_reply_into(reply, 1000)
        if corrupt:
            reply[-1] ^= 0xFF
        assert self.transport is not None
        self.transport.sendto(bytes(reply), addr)


async def misbehaving(
    answer: Callable[[Misbehaving, bytes, tuple[str, int]], None],
) -> tuple[Misbehaving, int]:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: Misbehaving(answer), local_addr=("127.0.0.1", 0)
    )
    assert protocol.transport is not None
    return protocol, protocol.transport.get_extra_info("sockname")[1]


@pytest.mark.parametrize("size", [0, 1024, 1472, 9000, 65507])
async def test_ok_with_dwell_and_kernel_timestamps(
    responder: UdpResponder, prober: UdpEchoProber, size: int
) -> None:
    port = responder.address[1]
    result = await prober.probe(
        target("127.0.0.1", port, kind=ProbeKind.UDP, size_bytes=size), timeout_s=2
    )
    assert result.outcome is Outcome.OK, result.detail
    assert result.kind is ProbeKind.UDP
    assert result.size_bytes == max(size, 32)
    assert result.rtt_us is not None
    assert result.rtt_clock_us is not None
    assert result.dwell_us is not None
    assert result.recv_lag_us is not None  # the kernel stamped the echo
    # rtt_us is the network's share: the whole wait minus the responder's dwell
    assert result.rtt_us <= result.rtt_clock_us
    assert result.seq is not None
    assert result.src_addr == "127.0.0.1"
    assert result.src_port > 0
    assert responder.statistics().answered == 1


async def test_every_source_port_of_the_set_is_used_for_one_peer(
    responder: UdpResponder, prober: UdpEchoProber
) -> None:
    peer = target("127.0.0.1", responder.address[1], kind=ProbeKind.UDP)
    results = [await prober.probe(peer, timeout_s=2) for _ in range(16)]
    assert all(r.outcome is Outcome.OK for r in results)
    ports = [r.src_port for r in results]
    assert len(set(ports)) == 8  # the whole set, in turn
    assert ports[:8] == ports[8:]
    assert prober.statistics().source_ports == 8


async def test_refused_when_nothing_listens(prober: UdpEchoProber) -> None:
    result = await prober.probe(
        target("127.0.0.1", closed_port("127.0.0.1"), kind=ProbeKind.UDP), timeout_s=2
    )
    assert result.outcome is Outcome.REFUSED
    assert "ICMP 3/3" in result.detail  # port unreachable, from the error queue
    # the pending socket error did not leak into the next probe on the same socket
    again = await prober.probe(
        target("127.0.0.1", closed_port("127.0.0.1"), kind=ProbeKind.UDP), timeout_s=2
    )
    assert again.outcome is Outcome.REFUSED


async def test_timeout_when_the_peer_never_answers(prober: UdpEchoProber) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        result = await prober.probe(
            target("127.0.0.1", silent.getsockname()[1], kind=ProbeKind.UDP), timeout_s=0.2
        )
    assert result.outcome is Outcome.TIMEOUT
    assert "no echo within 0.2 s" in result.detail
    assert prober.statistics().lost == 1


async def test_duplicates_are_counted(prober: UdpEchoProber) -> None:
    def twice(proto: Misbehaving, data: bytes, addr: tuple[str, int]) -> None:
        proto.reply(data, addr)
        proto.reply(data, addr)

    echo, port = await misbehaving(twice)
    try:
        result = await prober.probe(target("127.0.0.1", port, kind=ProbeKind.UDP), timeout_s=2)
        assert result.outcome is Outcome.OK
        await asyncio.sleep(0.1)  # the second copy arrives
        assert prober.statistics().duplicates == 1
    finally:
        assert echo.transport is not None
        echo.transport.close()


async def test_reordering_and_late_answers_are_counted(prober: UdpEchoProber) -> None:
    def hold(proto: Misbehaving, data: bytes, addr: tuple[str, int]) -> None:
        proto.held.append((data, addr))

    echo, port = await misbehaving(hold)
    peer = target("127.0.0.1", port, kind=ProbeKind.UDP)
    try:
        first = asyncio.create_task(prober.probe(peer, timeout_s=5))
        second = asyncio.create_task(prober.probe(peer, timeout_s=5))
        while len(echo.held) < 2:
            await asyncio.sleep(0.01)
        echo.reply(*echo.held[1])  # the later probe's echo first…
        echo.reply(*echo.held[0])  # …then the earlier one's: reordered
        results = await asyncio.gather(first, second)
        assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK]
        assert results[0].detail == "reordered"
        assert prober.statistics().reordered == 1
        # An echo after its probe gave up: the "loss" was a delay.
        late = asyncio.create_task(prober.probe(peer, timeout_s=0.1))
        while len(echo.held) < 3:
            await asyncio.sleep(0.01)
        assert (await late).outcome is Outcome.TIMEOUT
        echo.reply(*echo.held[2])
        await asyncio.sleep(0.1)
        assert prober.statistics().late == 1
    finally:
        assert echo.transport is not None
        echo.transport.close()


async def test_a_corrupted_echo_is_a_bad_reply(prober: UdpEchoProber) -> None:
    def corrupt(proto: Misbehaving, data: bytes, addr: tuple[str, int]) -> None:
        proto.reply(data, addr, corrupt=True)

    echo, port = await misbehaving(corrupt)
    try:
        result = await prober.probe(
            target("127.0.0.1", port, kind=ProbeKind.UDP, size_bytes=256), timeout_s=2
        )
    finally:
        assert echo.transport is not None
        echo.transport.close()
    assert result.outcome is Outcome.BAD_REPLY
    assert prober.statistics().corrupted == 1


async def test_rotation_replaces_idle_source_ports(responder: UdpResponder) -> None:
    # fraction × ports replaced an hour: 18,000 × 4 an hour is one every 50 ms.
    udp = UdpEchoProber(
        bind_addr="127.0.0.1",
        clock=SystemClock(),
        rng=random.Random(1),
        source_ports=4,
        rotate_fraction_per_hour=18_000,
    )
    peer = target("127.0.0.1", responder.address[1], kind=ProbeKind.UDP)
    try:
        first = {(await udp.probe(peer, timeout_s=2)).src_port for _ in range(4)}
        for _ in range(8):
            await asyncio.sleep(0.06)
            assert (await udp.probe(peer, timeout_s=2)).outcome is Outcome.OK
        later = {(await udp.probe(peer, timeout_s=2)).src_port for _ in range(4)}
        assert udp.statistics().rotations >= 1
        assert later != first
        assert udp.statistics().source_ports == 4
    finally:
        udp.close()


async def test_cancelling_a_probe_releases_it_and_close_releases_the_sockets(
    prober: UdpEchoProber,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        peer = target("127.0.0.1", silent.getsockname()[1], kind=ProbeKind.UDP)
        before = open_fds()
        task = asyncio.create_task(prober.probe(peer, timeout_s=30))
        await asyncio.sleep(0.05)
        assert open_fds() == before + 8  # the source-port set, opened at the first probe
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert prober.statistics().sent == 1
        prober.close()
        assert open_fds() == before


async def test_start_reports_through_the_callback_exactly_once(
    responder: UdpResponder, prober: UdpEchoProber
) -> None:
    got: list[ProbeResult] = []
    done = asyncio.Event()

    def on_done(result: ProbeResult) -> None:
        got.append(result)
        done.set()

    handle = prober.start(
        target("127.0.0.1", responder.address[1], kind=ProbeKind.UDP),
        timeout_s=0.5,
        on_done=on_done,
        send_lag_us=12.5,
    )
    await done.wait()
    handle.cancel()  # after the end: harmless
    await asyncio.sleep(0.6)  # past the timeout: no second callback
    assert len(got) == 1
    assert got[0].send_lag_us == 12.5


async def test_the_responder_answers_only_requests_and_caps_each_source() -> None:
    udp = UdpResponder(bind="127.0.0.1", port=0, per_source_rate=5)
    await udp.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(2)
            client.sendto(b"hello, not an echo request", udp.address)
            request = udp_request(1, 123, 64)
            for _ in range(20):
                client.sendto(request, udp.address)
            await asyncio.sleep(0.2)
            answers = []
            client.setblocking(False)
            while True:
                try:
                    answers.append(client.recv(65536))
                except BlockingIOError:
                    break
        stats = udp.statistics()
        assert stats.malformed == 1
        assert stats.answered == len(answers) == 5  # a burst of one second's worth
        assert stats.rate_limited == 15
        for data in answers:
            echo = parse_udp(data)
            assert echo is not None
            assert echo.flag == UDP_REPLY
            assert len(data) == len(request)  # never larger: no amplification
            assert echo.send_ns == 123
    finally:
        await udp.aclose()
