"""The life of a stream probe that the TCP echo and HTTP probers share (run_stream_probe)."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest

from pingmesh.agent.probers.stream import StreamProbe, run_stream_probe
from pingmesh.clock import SystemClock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult, ProbeTarget
from tests.agent.stubs import target


async def _run(
    peer: ProbeTarget, exchange: Callable[[StreamProbe], Awaitable[ProbeResult]]
) -> ProbeResult:
    return await run_stream_probe(
        peer,
        kind=ProbeKind.TCP_ECHO,
        clock=SystemClock(),
        bind_addr="127.0.0.1",
        timeout_s=2.0,
        send_lag_us=None,
        exchange=exchange,
        timeout_detail="no {stage} within {timeout_s:g} s",
        size_bytes=64,
    )


async def test_a_refused_connect_is_an_outcome_with_its_stage_and_5_tuple() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]

    async def exchange(probe: StreamProbe) -> ProbeResult:
        probe.fields["connect_us"] = None
        await probe.connect()
        raise AssertionError("connected to a closed port")

    result = await _run(target("127.0.0.1", port, kind=ProbeKind.TCP_ECHO), exchange)
    assert result.outcome is Outcome.REFUSED
    assert result.detail.startswith("connect: ECONNREFUSED")
    assert result.src_addr == "127.0.0.1"
    assert result.src_port > 0
    assert result.size_bytes == 64


@pytest.mark.parametrize(
    ("address", "detail"),
    [
        ("127.0.0.1", "ValueError: the exchange broke"),  # a bug in the exchange: data too
        ("peer.example", "peer address 'peer.example' is not an IP address"),  # no socket
    ],
)
async def test_what_is_no_network_failure_is_an_error_result(address: str, detail: str) -> None:
    async def exchange(probe: StreamProbe) -> ProbeResult:
        raise ValueError("the exchange broke")

    result = await _run(target(address, 9, kind=ProbeKind.TCP_ECHO), exchange)
    assert result.outcome is Outcome.ERROR
    assert result.detail == detail
    assert result.src_port == 0
