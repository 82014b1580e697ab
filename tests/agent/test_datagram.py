"""What the datagram probers share: RTT from kernel stamps, bounded reads, source addresses,
and the ``start`` guard every callback prober gets from :class:`StartingProber`."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest

from pingmesh.agent.probers import OnDone, Peer, StartingProber
from pingmesh.agent.probers.datagram import (
    MAX_READS_PER_WAKEUP,
    DatagramProbe,
    SourceAddresses,
    read_datagrams,
)
from pingmesh.agent.probers.kernel import SCM_TIMESTAMPNS
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult
from tests.agent.stubs import target

_PEER = target("127.0.0.1", 9781, kind=ProbeKind.UDP)


def _result(outcome: Outcome, fields: dict[str, Any]) -> ProbeResult:
    return ProbeResult(
        time_ns=1,
        src_addr="127.0.0.1",
        src_port=1,
        dst="p1",
        dst_addr="127.0.0.1",
        dst_port=9781,
        kind=ProbeKind.UDP,
        scope=_PEER.scope,
        outcome=outcome,
        **fields,
    )


class _Probe(DatagramProbe[Any]):
    __slots__ = ()

    def _result(self, outcome: Outcome, fields: dict[str, Any]) -> ProbeResult:
        return _result(outcome, fields)


def _stamp(ns: int) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, SCM_TIMESTAMPNS, struct.pack("=qq", *divmod(ns, 10**9)))]


def _answered(ancillary: list[tuple[int, int, bytes]], **options: Any) -> ProbeResult:
    results: list[ProbeResult] = []
    probe = _Probe(None, _PEER, 1.0, results.append, None)
    probe.send_real_ns = 1_000_000_000_000
    probe.send_mono_ns = 5_000_000
    # Read 300 µs after sending (monotonic), 310 µs after (wall clock).
    probe.answered(ancillary, 1_000_000_310_000, 5_300_000, **options)
    probe.answered(ancillary, 1_000_000_310_000, 5_300_000, **options)  # once only
    assert len(results) == 1
    return results[0]


def test_the_rtt_runs_to_the_kernel_stamp_and_the_rest_is_receive_lag() -> None:
    result = _answered(_stamp(1_000_000_000_000 + 120_000))
    assert result.outcome is Outcome.OK
    assert result.rtt_us == pytest.approx(120.0)
    assert result.rtt_clock_us == pytest.approx(300.0)
    assert result.recv_lag_us == pytest.approx(190.0)
    assert result.dwell_us is None


def test_the_responder_dwell_is_not_the_network_s() -> None:
    result = _answered(_stamp(1_000_000_000_000 + 120_000), dwell_us=20.0, detail="reordered")
    assert result.rtt_us == pytest.approx(100.0)
    assert result.dwell_us == 20.0
    assert result.detail == "reordered"


@pytest.mark.parametrize(
    "ancillary",
    [
        [],  # no stamp
        _stamp(1_000_000_000_000 - 50_000),  # before the send: the wall clock stepped back
        _stamp(1_000_000_000_000 + 5_000_000),  # far beyond the clock's RTT: stepped forward
    ],
)
def test_without_a_believable_stamp_the_monotonic_clock_is_the_rtt(
    ancillary: list[tuple[int, int, bytes]],
) -> None:
    result = _answered(ancillary)
    assert result.rtt_us == pytest.approx(300.0)
    assert result.recv_lag_us is None


def test_one_wakeup_reads_a_bounded_number_of_datagrams() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        total = MAX_READS_PER_WAKEUP + 10
        for i in range(total):
            sender.sendto(i.to_bytes(2, "big"), receiver.getsockname())
        seen: list[int] = []
        read_datagrams(receiver, 64, lambda data, _, source: seen.append(int.from_bytes(data)))
        assert seen == list(range(MAX_READS_PER_WAKEUP))
        read_datagrams(receiver, 64, lambda data, _, source: seen.append(int.from_bytes(data)))
        assert seen == list(range(total))
        read_datagrams(receiver, 64, lambda *_: seen.append(-1))  # nothing left: returns
        assert len(seen) == total


def test_source_addresses_are_the_bound_one_or_the_routed_one() -> None:
    assert SourceAddresses("127.0.0.5").lookup("127.0.0.1", 9) == "127.0.0.5"
    routed = SourceAddresses("0.0.0.0")
    assert routed.lookup("127.0.0.1", 9781) == "127.0.0.1"
    assert routed.lookup("not an address", 9) == "0.0.0.0"  # no route: the bound address


class _Exploding:
    def __init__(self, on_done: OnDone) -> None:
        self.on_done = on_done
        self.cancelled = False

    def begin(self) -> None:
        raise ValueError("x" * 300)

    def cancel(self) -> None:
        self.cancelled = True

    def abandon(self, detail: str) -> None:
        self.on_done(_result(Outcome.ERROR, {"detail": detail}))


class _ExplodingProber(StartingProber):
    @property
    def kind(self) -> ProbeKind:
        return ProbeKind.UDP

    def close(self) -> None:
        pass

    def _new_probe(
        self, peer: Peer, timeout_s: float, on_done: OnDone, send_lag_us: float | None
    ) -> _Exploding:
        return _Exploding(on_done)


async def test_an_exception_while_starting_is_an_error_result_not_a_raise() -> None:
    result = await _ExplodingProber().probe(_PEER, timeout_s=1.0)
    assert result.outcome is Outcome.ERROR
    assert result.detail.startswith("ValueError: xxx")
    assert len(result.detail) == 200  # bounded
