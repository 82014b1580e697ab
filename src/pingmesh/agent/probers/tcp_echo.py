"""TCP payload echo probe: one request of ``size_bytes`` on a fresh connection, echoed back.

Theory of operation
-------------------
A SYN is 60 bytes; a link that corrupts or drops only large frames (bad FCS, SerDes errors,
cell splitting) passes every connect probe. Pingmesh therefore also sends a payload of
configurable length, up to 64 KiB, and times its echo (PM §3.4.1, §4.1: one message of
800–1200 bytes "in one packet"; reference §6.1 item 2: 1 KiB and near-MTU). Each probe:

1. connects (fresh source port, as every TCP probe); ``connect_us`` is the kernel's SYN RTT;
2. sends the framed request of :mod:`pingmesh.agent.echo_wire` in one write;
3. reads the echo and the responder's dwell trailer, with the kernel's receive timestamps.

``rtt_us`` is request sent → last echo byte received (kernel stamp), minus the responder's
dwell; ``ttfb_us`` is request sent → first echo byte; ``rtt_clock_us`` is what the monotonic
clock saw, dwell included. ``retransmits`` counts every retransmitted segment of the
connection (SYNs and data, ``TCP_INFO``): a size-dependent loss shows up here first. An echo
that differs from the request, or ends early, is ``bad_reply``.
"""

from __future__ import annotations

import random
from functools import partial

from pingmesh.agent.echo_wire import (
    TCP_HEADER,
    TCP_HEADER_BYTES,
    TCP_MAGIC,
    TCP_TRAILER,
    TCP_TRAILER_BYTES,
    tcp_request,
    tcp_size,
)
from pingmesh.agent.probers import Peer
from pingmesh.agent.probers.stream import StreamProbe, run_stream_probe
from pingmesh.clock import Clock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult


class TcpEchoProber:
    """Times a payload echo over a fresh TCP connection; see the module docstring."""

    def __init__(self, *, bind_addr: str = "0.0.0.0", clock: Clock, rng: random.Random) -> None:
        self.bind_addr = bind_addr
        self._clock = clock
        self._rng = rng

    @property
    def kind(self) -> ProbeKind:
        return ProbeKind.TCP_ECHO

    def close(self) -> None:
        """Nothing is shared between echo probes."""

    async def probe(
        self, peer: Peer, *, timeout_s: float, send_lag_us: float | None = None
    ) -> ProbeResult:
        """Echo ``size_bytes`` off ``peer`` once; failures are outcomes, never exceptions."""
        size = tcp_size(peer.size_bytes)
        return await run_stream_probe(
            peer,
            kind=ProbeKind.TCP_ECHO,
            clock=self._clock,
            bind_addr=self.bind_addr,
            timeout_s=timeout_s,
            send_lag_us=send_lag_us,
            exchange=partial(self._exchange, size=size),
            timeout_detail="no {stage} within {timeout_s:g} s",
            size_bytes=size,
        )

    async def _exchange(self, probe: StreamProbe, *, size: int) -> ProbeResult:
        connect_us = await probe.connect()
        probe.stage = "echo"
        stream = probe.stream
        nonce = self._rng.getrandbits(64)
        request = tcp_request(nonce, size)
        expected = size + TCP_TRAILER_BYTES
        send_real_ns = round(self._clock.now_s() * 1e9)
        send_mono_ns = self._clock.monotonic_ns()
        await stream.send_all(request)
        reply = bytearray()
        while len(reply) < expected:
            chunk = await stream.receive()
            if not chunk:
                break
            reply += chunk
        done_mono_ns = self._clock.monotonic_ns()
        now_real_ns = round(self._clock.now_s() * 1e9)
        done = partial(probe.result, connect_us=connect_us)
        if len(reply) != expected:
            return done(
                outcome=Outcome.BAD_REPLY,
                detail=f"echo ended after {len(reply)} of {expected} bytes",
            )
        magic, echoed_size, echoed_nonce = TCP_HEADER.unpack_from(reply)
        body_ok = reply[TCP_HEADER_BYTES:size] == request[TCP_HEADER_BYTES:]
        if magic != TCP_MAGIC or echoed_size != size or echoed_nonce != nonce or not body_ok:
            return done(outcome=Outcome.BAD_REPLY, detail="echo differs from request")
        (dwell_ns,) = TCP_TRAILER.unpack_from(reply, size)
        dwell_us = dwell_ns / 1000
        clock_us = (done_mono_ns - send_mono_ns) / 1000
        wire_us: float | None = None
        recv_lag_us: float | None = None
        ttfb_us: float | None = None
        if stream.last_rx_ns is not None and stream.first_rx_ns is not None:
            wire_us = (stream.last_rx_ns - send_real_ns) / 1000
            ttfb_us = (stream.first_rx_ns - send_real_ns) / 1000
            if 0 <= ttfb_us <= wire_us <= clock_us + 1000:
                recv_lag_us = max(0.0, (now_real_ns - stream.last_rx_ns) / 1000)
            else:
                wire_us = ttfb_us = None  # the wall clock stepped: trust the monotonic one
        if wire_us is None:
            wire_us = clock_us
        return done(
            outcome=Outcome.OK,
            rtt_us=max(0.0, wire_us - dwell_us),
            rtt_clock_us=clock_us,
            dwell_us=dwell_us,
            recv_lag_us=recv_lag_us,
            ttfb_us=ttfb_us,
        )
