"""HTTP(S) ping: ``GET /ping`` on a fresh connection, timed phase by phase.

Theory of operation
-------------------
Pingmesh probes over HTTP as well as TCP because applications speak HTTP (PM §3.4.1, §6.2);
``rafayopen/pingmesh`` and curl's ``-w`` show the useful breakdown (reference §4). One probe
opens a new connection (a fresh source port, as every TCP probe) to the peer's HTTP endpoint
(port 9782 on every agent, DESIGN.md) and records:

- ``connect_us``: the TCP handshake, the kernel's SYN RTT (``TCP_INFO``);
- ``tls_us`` (``https`` only): the TLS handshake, by the monotonic clock;
- ``ttfb_us``: request sent → first response byte (kernel receive timestamp);
- ``rtt_us``: the total, connect started → last response byte (kernel receive timestamp):
  what a client of the service would wait for on a new connection;
- ``dwell_us``: the responder's own time, from its ``X-Pingmesh-Dwell-Us`` header.

A status other than 2xx is ``bad_reply`` with the status in the detail; a TLS failure
(certificate, protocol) is ``error`` with the TLS library's reason. The response is read up
to a small bound (``/ping`` says ``pong``), so a misdirected probe cannot make us buffer much.
"""

from __future__ import annotations

import ssl
from typing import Any

import h11

from pingmesh import __version__
from pingmesh.agent.probers import Peer
from pingmesh.agent.probers.stream import ProbeStream, StreamProbe, run_stream_probe
from pingmesh.clock import Clock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult

PING_PATH = "/ping"
DWELL_HEADER = "x-pingmesh-dwell-us"
MAX_RESPONSE_BYTES = 64 * 1024


class HttpProber:
    """Times ``GET /ping`` over HTTP or HTTPS; see the module docstring."""

    def __init__(
        self,
        *,
        kind: ProbeKind = ProbeKind.HTTP,
        bind_addr: str = "0.0.0.0",
        clock: Clock,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if kind not in (ProbeKind.HTTP, ProbeKind.HTTPS):
            raise ValueError(f"kind: {kind.value!r} is not http or https")
        self._kind = kind
        self.bind_addr = bind_addr
        self._clock = clock
        self._ssl_context = ssl_context  # HTTPS without one: the system's, made at first use

    @property
    def kind(self) -> ProbeKind:
        return self._kind

    def close(self) -> None:
        """Nothing is shared between HTTP probes."""

    async def probe(
        self, peer: Peer, *, timeout_s: float, send_lag_us: float | None = None
    ) -> ProbeResult:
        """``GET /ping`` from ``peer`` once; failures are outcomes, never exceptions."""
        return await run_stream_probe(
            peer,
            kind=self._kind,
            clock=self._clock,
            bind_addr=self.bind_addr,
            timeout_s=timeout_s,
            send_lag_us=send_lag_us,
            exchange=self._run,
            timeout_detail="no {stage} answer within {timeout_s:g} s",
        )

    async def _run(self, probe: StreamProbe) -> ProbeResult:
        stream, peer, fields = probe.stream, probe.peer, probe.fields
        fields["connect_us"] = fields["tls_us"] = None  # reported even if the probe fails
        start_real_ns = round(self._clock.now_s() * 1e9)
        try:
            fields["connect_us"] = await probe.connect()
            if self._kind is ProbeKind.HTTPS:
                probe.stage = "tls"
                if self._ssl_context is None:
                    self._ssl_context = ssl.create_default_context()
                tls_start_ns = self._clock.monotonic_ns()
                await stream.start_tls(self._ssl_context, peer.name)
                fields["tls_us"] = (self._clock.monotonic_ns() - tls_start_ns) / 1000
            probe.stage = "request"
            outcome = await self._exchange(stream, peer, start_real_ns, probe.start_ns)
        except ssl.SSLError as exc:  # an OSError, but the TLS library's reason says more
            return probe.make(
                src_addr=stream.src_addr,
                src_port=stream.src_port,
                outcome=Outcome.ERROR,
                detail=f"tls: {exc.reason or exc}"[:200],
                **fields,
            )
        except h11.ProtocolError as exc:
            return probe.failed(Outcome.BAD_REPLY, f"{probe.stage}: not HTTP: {exc}"[:200])
        return probe.result(**fields, **outcome)

    async def _exchange(
        self, stream: ProbeStream, peer: Peer, start_real_ns: int, start_ns: int
    ) -> dict[str, Any]:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_BYTES)
        host = peer.address if ":" not in peer.address else f"[{peer.address}]"
        request = conn.send(
            h11.Request(
                method="GET",
                target=PING_PATH,
                headers=[
                    ("Host", f"{host}:{peer.port}"),
                    ("User-Agent", f"pingmesh-agent/{__version__}"),
                    ("Connection", "close"),
                ],
            )
        )
        request = (request or b"") + (conn.send(h11.EndOfMessage()) or b"")
        send_real_ns = round(self._clock.now_s() * 1e9)
        await stream.send_all(request)
        response: h11.Response | None = None
        received = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive()
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                received += len(event.data)
                if received > MAX_RESPONSE_BYTES:
                    return {"outcome": Outcome.BAD_REPLY, "detail": "response body too long"}
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        end_ns = self._clock.monotonic_ns()
        now_real_ns = round(self._clock.now_s() * 1e9)
        assert response is not None
        if not 200 <= response.status_code < 300:
            return {"outcome": Outcome.BAD_REPLY, "detail": f"HTTP {response.status_code}"}
        dwell_us = None
        for name, value in response.headers:
            if name.decode("latin-1").lower() == DWELL_HEADER:
                try:
                    dwell_us = max(0.0, float(value))
                except ValueError:
                    dwell_us = None
        clock_us = (end_ns - start_ns) / 1000
        total_us = ttfb_us = recv_lag_us = None
        if stream.last_rx_ns is not None and stream.first_rx_ns is not None:
            total_us = (stream.last_rx_ns - start_real_ns) / 1000
            ttfb_us = (stream.first_rx_ns - send_real_ns) / 1000
            if ttfb_us >= 0 and 0 <= total_us <= clock_us + 1000:
                recv_lag_us = max(0.0, (now_real_ns - stream.last_rx_ns) / 1000)
            else:
                total_us = ttfb_us = None  # the wall clock stepped: trust the monotonic one
        return {
            "outcome": Outcome.OK,
            "rtt_us": total_us if total_us is not None else clock_us,
            "rtt_clock_us": clock_us,
            "ttfb_us": ttfb_us,
            "dwell_us": dwell_us,
            "recv_lag_us": recv_lag_us,
        }
