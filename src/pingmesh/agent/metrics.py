"""The agent's HTTP endpoint: ``GET /metrics`` (Prometheus text) and ``GET /ping`` ("pong").

``/metrics`` is the fast counter path (PM §3.5: agents' perf counters next to the batch
pipeline). The registry is owned by the agent, not the process-global one, and holds one
custom collector that builds every metric family at scrape time from the components'
``statistics()`` snapshots: nothing is updated on the probe path, and a scrape always sees one
consistent snapshot. Names use base units, ``_total`` only on counters, and label values come
from closed sets (kinds, outcomes, reasons), never from peers.

The server is a small :mod:`h11` state machine driven by :class:`asyncio.Protocol` callbacks:
no task per connection, a cap on connections, a bound on request heads (h11's
``max_incomplete_event_size``), request bodies discarded, an idle timeout, and keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from pingmesh import __version__
from pingmesh.agent.uploader import DropReason

if TYPE_CHECKING:
    from pingmesh.agent.agent import AgentStatistics

logger = logging.getLogger(__name__)

MAX_REQUEST_HEAD_BYTES = 16 * 1024
_PATHS = ("/metrics", "/ping")  # the closed set of path labels; anything else is "other"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpStatistics:
    """A snapshot of the HTTP endpoint's counters."""

    open_connections: int
    connections_rejected: int
    requests: tuple[tuple[str, int], ...]  # (path label, count)
    bad_requests: int


class AgentCollector(Collector):
    """Builds the agent's metric families from ``snapshot()`` at every scrape."""

    def __init__(self, snapshot: Callable[[], AgentStatistics]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        yield _gauge(
            "pingmesh_agent_probing", "1 while probing peers, 0 while only answering", s.probing
        )

        p = s.probes
        yield _gauge("pingmesh_agent_peers", "Peers in the pinglist in force", p.peers)
        probes = CounterMetricFamily(
            "pingmesh_agent_probes",
            "Probes completed, by kind and outcome",
            labels=["kind", "outcome"],
        )
        for kind, outcome, count in p.outcomes:
            probes.add_metric([kind.value, outcome.value], count)
        yield probes
        yield _counter(
            "pingmesh_agent_probes_retransmitted",
            "Probes that needed at least one SYN retransmission (Pingmesh drop-rate numerator)",
            p.retransmitted,
        )
        yield _counter(
            "pingmesh_agent_probes_rate_limited",
            "Due probes skipped by the global probe-rate cap",
            p.rate_limited,
        )
        yield _counter(
            "pingmesh_agent_probes_cancelled", "Probes cancelled before they ended", p.cancelled
        )
        yield _gauge("pingmesh_agent_probes_in_flight", "Probes under way", p.in_flight)

        if s.fetcher is not None:
            f = s.fetcher
            fetches = CounterMetricFamily(
                "pingmesh_agent_pinglist_fetches", "Pinglist fetches by result", labels=["result"]
            )
            for result, count in (
                ("ok", f.ok),
                ("not_modified", f.not_modified),
                ("not_found", f.not_found),
                ("failed", f.failed),
            ):
                fetches.add_metric([result], count)
            yield fetches
            yield _gauge(
                "pingmesh_agent_pinglist_consecutive_failures",
                "Failed pinglist fetches in a row (fail closed at the configured limit)",
                f.consecutive_failures,
            )

        if s.uploader is not None:
            u = s.uploader
            yield _counter(
                "pingmesh_agent_upload_batches_sent", "Result batches accepted", u.batches_sent
            )
            yield _counter(
                "pingmesh_agent_upload_retries", "Result batch upload retries", u.batches_retried
            )
            yield _counter(
                "pingmesh_agent_upload_batches_rejected",
                "Result batches refused by the collector (4xx, not retried)",
                u.batches_rejected,
            )
            dropped_batches = CounterMetricFamily(
                "pingmesh_agent_upload_batches_dropped",
                "Result batches dropped, by reason",
                labels=["reason"],
            )
            dropped_records = CounterMetricFamily(
                "pingmesh_agent_upload_records_dropped",
                "Probe records dropped before upload, by reason",
                labels=["reason"],
            )
            for reason in DropReason:
                dropped_batches.add_metric([reason.value], u.dropped_batches(reason))
                dropped_records.add_metric([reason.value], u.dropped_records(reason))
            yield dropped_batches
            yield dropped_records
            yield _counter(
                "pingmesh_agent_upload_records_sent", "Probe records uploaded", u.records_sent
            )
            yield _gauge(
                "pingmesh_agent_upload_pending_batches",
                "Sealed result batches waiting to be sent",
                u.pending_batches,
            )

        if s.results_file is not None:
            w = s.results_file
            yield _counter(
                "pingmesh_agent_results_written", "Probe records written as JSON lines", w.written
            )
            yield _counter(
                "pingmesh_agent_results_write_errors",
                "Probe records that could not be written",
                w.write_errors,
            )

        r = s.responder
        yield _counter(
            "pingmesh_agent_responder_connections",
            "Connections accepted by the responder",
            r.accepted,
        )
        yield _counter(
            "pingmesh_agent_responder_connections_rejected",
            "Connections reset at once because the responder was at its connection cap",
            r.rejected,
        )
        yield _counter(
            "pingmesh_agent_responder_connections_idle_closed",
            "Responder connections closed for idleness",
            r.idle_closed,
        )
        yield _gauge(
            "pingmesh_agent_responder_open_connections",
            "Connections open at the responder",
            r.open_connections,
        )
        yield _counter(
            "pingmesh_agent_responder_echoed_bytes", "Bytes echoed by the responder", r.echoed_bytes
        )

        if s.http is not None:
            requests = CounterMetricFamily(
                "pingmesh_agent_http_requests", "HTTP requests by path", labels=["path"]
            )
            for path, count in s.http.requests:
                requests.add_metric([path], count)
            yield requests
        info = GaugeMetricFamily(
            "pingmesh_agent_info", "The agent's version and mode", labels=["version", "mode"]
        )
        info.add_metric([__version__, s.mode], 1)
        yield info


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, server: MetricsServer) -> None:
        self._server = server
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._counted = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._server._admit(self):
            transport.abort()
            return
        self._counted = True
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or not self._counted:
            return
        self._arm_idle()
        self._conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        if self._counted:
            self._conn.receive_data(b"")
            self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._counted:
            self._counted = False
            self._server._release(self)
        self._transport = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self._server.idle_timeout_s, self.close)

    def _process(self) -> None:
        while self._transport is not None:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._server._bad_requests += 1
                self._fail(exc.error_status_hint)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request = event
            elif isinstance(event, h11.EndOfMessage):
                request, self._request = self._request, None
                if request is not None:
                    self._respond(request)
                if not self._next_cycle():
                    return
            elif isinstance(event, h11.ConnectionClosed):
                self._transport.close()
                return
            # h11.Data: a request body; GET needs none, so it is discarded unbuffered.

    def _respond(self, request: h11.Request) -> None:
        method = request.method.decode("ascii", "replace")
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        self._server._count(path)
        if path not in _PATHS:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", method)
        elif method not in ("GET", "HEAD"):
            self._send(
                405, b"method not allowed\n", "text/plain; charset=utf-8", method, allow=True
            )
        elif path == "/ping":
            self._send(200, b"pong", "text/plain; charset=utf-8", method)
        else:
            self._send(200, self._server.render_metrics(), CONTENT_TYPE_PLAIN_0_0_4, method)

    def _send(
        self, status: int, body: bytes, content_type: str, method: str, *, allow: bool = False
    ) -> None:
        assert self._transport is not None
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        if allow:
            headers.append(("Allow", "GET, HEAD"))
        out = self._conn.send(h11.Response(status_code=status, headers=headers))
        if method != "HEAD":
            out = (out or b"") + (self._conn.send(h11.Data(data=body)) or b"")
        out = (out or b"") + (self._conn.send(h11.EndOfMessage()) or b"")
        self._transport.write(out)

    def _next_cycle(self) -> bool:
        assert self._transport is not None
        if self._conn.our_state is h11.MUST_CLOSE or self._conn.their_state is h11.MUST_CLOSE:
            self._transport.close()
            return False
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
            return True
        return True

    def _fail(self, status: int) -> None:
        assert self._transport is not None
        if self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = b"bad request\n"
            with contextlib.suppress(h11.LocalProtocolError):
                out = self._conn.send(
                    h11.Response(
                        status_code=status,
                        headers=[
                            ("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))),
                            ("Connection", "close"),
                        ],
                    )
                )
                out = (out or b"") + (self._conn.send(h11.Data(data=body)) or b"")
                out += self._conn.send(h11.EndOfMessage()) or b""
                self._transport.write(out)
        self._transport.close()


class MetricsServer:
    """Serves ``/metrics`` from ``registry`` and ``/ping`` on ``(bind, port)``."""

    def __init__(
        self,
        *,
        bind: str,
        port: int,
        registry: CollectorRegistry,
        max_connections: int = 64,
        idle_timeout_s: float = 30.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections: {max_connections} is not >= 1")
        self.bind = bind
        self.port = port
        self.registry = registry
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[_HttpProtocol] = set()
        self._rejected = 0
        self._bad_requests = 0
        self._requests = dict.fromkeys((*_PATHS, "other"), 0)

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the port is known after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the HTTP endpoint is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> tuple[str, int]:
        """Listen; ``OSError`` (e.g. ``EADDRINUSE``) propagates to the caller."""
        if self._server is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: _HttpProtocol(self), self.bind, self.port, reuse_address=True
            )
            logger.info("HTTP endpoint (/metrics, /ping) on %s:%d", *self.address)
        return self.address

    async def serve(self) -> None:
        """Listen (if not yet) and serve until cancelled; then close everything."""
        try:
            await self.start()
            assert self._server is not None
            await self._server.serve_forever()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._connections):
            conn.close()
        if server is not None:
            await server.wait_closed()

    def render_metrics(self) -> bytes:
        """The Prometheus text exposition of the registry, now."""
        return generate_latest(self.registry)

    def statistics(self) -> HttpStatistics:
        """A snapshot of the counters."""
        return HttpStatistics(
            open_connections=len(self._connections),
            connections_rejected=self._rejected,
            requests=tuple(self._requests.items()),
            bad_requests=self._bad_requests,
        )

    def _admit(self, conn: _HttpProtocol) -> bool:
        if len(self._connections) >= self.max_connections:
            self._rejected += 1
            return False
        self._connections.add(conn)
        return True

    def _release(self, conn: _HttpProtocol) -> None:
        self._connections.discard(conn)

    def _count(self, path: str) -> None:
        key = path if path in self._requests else "other"
        self._requests[key] += 1
