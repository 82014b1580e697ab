"""The agent's HTTP endpoint: ``GET /metrics`` (Prometheus text) and ``GET /ping`` ("pong").

``/metrics`` is the fast counter path (PM §3.5: agents' perf counters next to the batch
pipeline). Every metric family is built at scrape time from the components' ``statistics()``
snapshots: nothing is updated on the probe path, and a scrape always sees one consistent
snapshot. The text format (exposition format 0.0.4) is written here rather than with
``prometheus_client``, whose import alone costs the agent more memory than its whole probe
state (PM §3.4.2's budget). Conventions (STYLE.md, "Metrics"): base units (seconds, bytes,
ratios 0–1), ``_total`` only on counters, histograms with the same bucket bounds on every
agent (25 µs doubling), label values from closed sets (kinds, scopes, outcomes, reasons) —
except ``peer``, which appears only while the pinglist has at most
``per_peer_metrics_max_peers`` peers.

``/ping`` answers ``pong`` with an ``X-Pingmesh-Dwell-Us`` header: the time from the request's
last byte being handled to the response being written (the HTTP probe's responder dwell).

The server is a small :mod:`h11` state machine driven by :class:`asyncio.Protocol` callbacks:
no task per connection, a cap on connections and on connections per source address, a bound
on request heads (h11's ``max_incomplete_event_size``), request bodies discarded, an idle
timeout, and keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11

from pingmesh import __version__
from pingmesh.agent.aggregates import HistogramSnapshot
from pingmesh.agent.serving import ConnectionCaps, serve_until_cancelled
from pingmesh.agent.uploader import DropReason

if TYPE_CHECKING:
    from pingmesh.agent.agent import AgentStatistics

logger = logging.getLogger(__name__)

MAX_REQUEST_HEAD_BYTES = 16 * 1024
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PATHS = ("/metrics", "/ping")  # the closed set of path labels; anything else is "other"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpStatistics:
    """A snapshot of the HTTP endpoint's counters."""

    open_connections: int
    connections_rejected: int
    requests: tuple[tuple[str, int], ...]  # (path label, count)
    bad_requests: int


# -- the text exposition format -------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value)) if abs(value) < 2**53 else repr(float(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class MetricsText:
    """Builds one exposition: families in the order they are added."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        """Start a family (``kind``: counter, gauge or histogram)."""
        self._lines.append(f"# HELP {name} {_escape(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Labels = ()) -> None:
        """One sample line."""
        self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def counter(self, name: str, help_text: str, value: float, labels: Labels = ()) -> None:
        """A counter with one sample (``name`` ends in ``_total``)."""
        self.family(name, "counter", help_text)
        self.sample(name, value, labels)

    def gauge(self, name: str, help_text: str, value: float, labels: Labels = ()) -> None:
        """A gauge with one sample."""
        self.family(name, "gauge", help_text)
        self.sample(name, value, labels)

    def labelled(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Labels, float]],
    ) -> None:
        """A counter or gauge family with one sample per label set."""
        self.family(name, kind, help_text)
        for labels, value in samples:
            self.sample(name, value, labels)

    def histogram_samples(self, name: str, snapshot: HistogramSnapshot, labels: Labels) -> None:
        """The ``_bucket``/``_sum``/``_count`` samples of one histogram."""
        for bound, count in snapshot.buckets:
            self.sample(f"{name}_bucket", count, (*labels, ("le", _number(bound))))
        self.sample(f"{name}_bucket", snapshot.count, (*labels, ("le", "+Inf")))
        self.sample(f"{name}_sum", snapshot.sum_s, labels)
        self.sample(f"{name}_count", snapshot.count, labels)

    def render(self) -> bytes:
        """The exposition, UTF-8."""
        return ("\n".join(self._lines) + "\n").encode()


# -- the agent's families ---------------------------------------------------------------------


def _process(out: MetricsText) -> None:
    """The standard ``process_*`` metrics, read from ``/proc/self`` (Linux)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.counter(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds",
        usage.ru_utime + usage.ru_stime,
    )
    try:
        with open("/proc/self/statm", encoding="ascii") as stream:
            pages = stream.read().split()
        out.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            int(pages[1]) * _PAGE_SIZE,
        )
        out.gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            int(pages[0]) * _PAGE_SIZE,
        )
        out.gauge(
            "process_open_fds", "Number of open file descriptors", len(os.listdir("/proc/self/fd"))
        )
    except (OSError, IndexError, ValueError):
        pass
    out.gauge(
        "pingmesh_agent_peak_resident_memory_bytes",
        "Peak resident memory size in bytes (ru_maxrss)",
        usage.ru_maxrss * 1024,
    )


def render_agent_metrics(s: AgentStatistics) -> bytes:
    """The whole ``/metrics`` page of an agent."""
    out = MetricsText()
    out.gauge(
        "pingmesh_agent_info",
        "The agent's version and mode",
        1,
        (("version", __version__), ("mode", s.mode)),
    )
    out.gauge(
        "pingmesh_agent_probing", "1 while probing peers, 0 while only answering", int(s.probing)
    )
    _limits(out, s)
    _probe_loop(out, s)
    _aggregates(out, s)
    _probers(out, s)
    _responders(out, s)
    _controller(out, s)
    _process(out)
    return out.render()


def _limits(out: MetricsText, s: AgentStatistics) -> None:
    lim = s.limits
    values: list[tuple[str, float]] = [
        ("min_interval_seconds", lim.min_interval_s),
        ("max_payload_bytes", lim.max_payload_bytes),
        ("max_probe_rate_per_second", lim.max_probe_rate),
        ("max_concurrent_probes", lim.max_concurrent_probes),
        ("probe_timeout_seconds", lim.probe_timeout_s),
        ("responder_max_connections", lim.responder_max_connections),
        ("responder_max_connections_per_source", lim.responder_max_per_source),
        ("max_pending_batches", lim.max_pending_batches),
        ("per_peer_series_max_peers", lim.per_peer_metrics_max_peers),
    ]
    if lim.spool_max_bytes is not None:
        values.append(("spool_max_bytes", lim.spool_max_bytes))
    out.labelled(
        "pingmesh_agent_limit",
        "gauge",
        "The agent's safety limits in force",
        [((("limit", name),), value) for name, value in values],
    )


def _probe_loop(out: MetricsText, s: AgentStatistics) -> None:
    p = s.probes
    out.gauge(
        "pingmesh_agent_peers", "Probe targets (peer × kind) in the pinglist in force", p.peers
    )
    out.labelled(
        "pingmesh_agent_probes_total",
        "counter",
        "Probes completed, by kind and outcome",
        [((("kind", k.value), ("outcome", o.value)), n) for k, o, n in p.outcomes],
    )
    out.counter(
        "pingmesh_agent_probes_retransmitted_total",
        "Successful probes that needed at least one retransmission (the drop-rate numerator)",
        p.retransmitted,
    )
    out.counter(
        "pingmesh_agent_probes_rate_limited_total",
        "Due probes skipped by the global probe-rate cap",
        p.rate_limited,
    )
    out.counter(
        "pingmesh_agent_probes_cancelled_total", "Probes cancelled before they ended", p.cancelled
    )
    out.gauge("pingmesh_agent_probes_in_flight", "Probes under way", p.in_flight)
    out.counter("pingmesh_agent_loop_wakeups_total", "Wake-ups of the probe scheduler", p.wakeups)
    out.family(
        "pingmesh_agent_loop_lag_seconds",
        "histogram",
        "How late the probe scheduler's timers fired (event-loop lag: host noise)",
    )
    out.histogram_samples("pingmesh_agent_loop_lag_seconds", p.loop_lag, ())
    out.gauge(
        "pingmesh_agent_loop_lag_max_seconds", "The largest event-loop lag seen", p.loop_lag_max_s
    )


def _aggregates(out: MetricsText, s: AgentStatistics) -> None:
    a = s.aggregates
    out.gauge("pingmesh_agent_window_seconds", "Length of the local aggregation window", a.window_s)
    out.counter("pingmesh_agent_windows_total", "Aggregation windows closed", a.windows_closed)
    out.labelled(
        "pingmesh_agent_scope_probes_total",
        "counter",
        "Probes by kind, scope and outcome",
        [
            ((("kind", k.value), ("scope", sc.value), ("outcome", o.value)), n)
            for k, sc, t in a.scope_totals
            for o, n in t.outcomes
        ],
    )
    out.labelled(
        "pingmesh_agent_scope_retransmitted_total",
        "counter",
        "Successful probes that needed a retransmission, by kind and scope",
        [
            ((("kind", k.value), ("scope", sc.value)), t.retransmitted)
            for k, sc, t in a.scope_totals
        ],
    )
    out.family(
        "pingmesh_agent_scope_rtt_seconds",
        "histogram",
        "RTT of successful probes, by kind and scope",
    )
    for k, sc, t in a.scope_totals:
        out.histogram_samples(
            "pingmesh_agent_scope_rtt_seconds", t.rtt, (("kind", k.value), ("scope", sc.value))
        )
    quantiles: list[tuple[Labels, float]] = []
    drops: list[tuple[Labels, float]] = []
    probes: list[tuple[Labels, float]] = []
    failures: list[tuple[Labels, float]] = []
    for k, sc, w in a.last_window:
        labels: Labels = (("kind", k.value), ("scope", sc.value))
        for q, value in (("0.5", w.p50_us), ("0.9", w.p90_us), ("0.99", w.p99_us)):
            if value is not None:
                quantiles.append(((*labels, ("quantile", q)), value / 1e6))
        if w.drop_rate is not None:
            drops.append((labels, w.drop_rate))
        probes.append((labels, w.probes))
        failures.append((labels, w.failures))
    out.labelled(
        "pingmesh_agent_window_rtt_seconds",
        "gauge",
        "RTT percentiles of the last complete window, by kind and scope",
        quantiles,
    )
    out.labelled(
        "pingmesh_agent_window_drop_ratio",
        "gauge",
        "Probes that needed a retransmission / successful probes, last complete window (PM §4.2)",
        drops,
    )
    out.labelled(
        "pingmesh_agent_window_probes", "gauge", "Probes in the last complete window", probes
    )
    out.labelled(
        "pingmesh_agent_window_failures",
        "gauge",
        "Failed probes in the last complete window",
        failures,
    )
    out.gauge(
        "pingmesh_agent_peer_series",
        "1 while per-peer series are exported (the pinglist is small enough)",
        int(a.peer_totals is not None),
    )
    if a.peer_totals is None:
        return
    out.labelled(
        "pingmesh_agent_peer_probes_total",
        "counter",
        "Probes by peer, kind and outcome",
        [
            ((("peer", name), ("kind", k.value), ("outcome", o.value)), n)
            for name, k, t in a.peer_totals
            for o, n in t.outcomes
        ],
    )
    out.labelled(
        "pingmesh_agent_peer_retransmitted_total",
        "counter",
        "Successful probes that needed a retransmission, by peer and kind",
        [((("peer", name), ("kind", k.value)), t.retransmitted) for name, k, t in a.peer_totals],
    )
    out.family(
        "pingmesh_agent_peer_rtt_seconds", "histogram", "RTT of successful probes, by peer and kind"
    )
    for name, k, t in a.peer_totals:
        out.histogram_samples(
            "pingmesh_agent_peer_rtt_seconds", t.rtt, (("peer", name), ("kind", k.value))
        )


def _probers(out: MetricsText, s: AgentStatistics) -> None:
    u = s.udp
    out.gauge(
        "pingmesh_agent_udp_source_ports",
        "UDP source ports (sockets) in the rotating set",
        u.source_ports,
    )
    for name, value, text in (
        ("duplicates", u.duplicates, "UDP echoes received twice"),
        ("reordered", u.reordered, "UDP echoes that arrived after a later one from the same peer"),
        ("late", u.late, "UDP echoes that arrived after their probe timed out"),
        ("stray", u.stray, "UDP datagrams that matched no probe of ours"),
        ("corrupted", u.corrupted, "UDP echoes whose content differed from the request"),
        ("source_port_rotations", u.rotations, "UDP source ports replaced by fresh ones"),
    ):
        out.counter(f"pingmesh_agent_udp_{name}_total", text, value)
    i = s.icmp
    out.labelled(
        "pingmesh_agent_icmp_socket",
        "gauge",
        "1 for the kind of ICMP socket in use (raw, ping) or none",
        [((("socket", kind),), int(i.socket_kind == kind)) for kind in ("raw", "ping", "none")],
    )
    out.gauge(
        "pingmesh_agent_icmp_unavailable",
        "1 when ICMP probes cannot be sent (see the log)",
        int(bool(i.unavailable)),
    )
    out.counter(
        "pingmesh_agent_icmp_stray_total", "ICMP messages that matched no probe of ours", i.stray
    )


def _responders(out: MetricsText, s: AgentStatistics) -> None:
    r = s.responder
    out.counter(
        "pingmesh_agent_responder_connections_total",
        "Connections accepted by the responder",
        r.accepted,
    )
    out.labelled(
        "pingmesh_agent_responder_connections_rejected_total",
        "counter",
        "Connections reset at once by the responder, by the cap they hit",
        [((("cap", "total"),), r.rejected), ((("cap", "per_source"),), r.rejected_per_source)],
    )
    out.counter(
        "pingmesh_agent_responder_connections_idle_closed_total",
        "Responder connections closed for idleness",
        r.idle_closed,
    )
    out.gauge(
        "pingmesh_agent_responder_open_connections",
        "Connections open at the responder",
        r.open_connections,
    )
    out.counter(
        "pingmesh_agent_responder_echoed_bytes_total",
        "Bytes echoed by the TCP responder",
        r.echoed_bytes,
    )
    out.counter(
        "pingmesh_agent_responder_frames_total", "Framed TCP echo requests answered", r.frames
    )
    out.counter(
        "pingmesh_agent_responder_bad_frames_total",
        "Framed TCP echo requests refused (bad header)",
        r.bad_frames,
    )
    d = s.udp_responder
    out.labelled(
        "pingmesh_agent_udp_responder_datagrams_total",
        "counter",
        "Datagrams received by the UDP responder, by what became of them",
        [
            ((("result", "answered"),), d.answered),
            ((("result", "malformed"),), d.malformed),
            ((("result", "rate_limited"),), d.rate_limited),
            ((("result", "send_error"),), d.send_errors),
        ],
    )
    if s.http is not None:
        out.labelled(
            "pingmesh_agent_http_requests_total",
            "counter",
            "HTTP requests by path",
            [((("path", path),), count) for path, count in s.http.requests],
        )
        out.counter(
            "pingmesh_agent_http_connections_rejected_total",
            "HTTP connections closed at once (connection caps)",
            s.http.connections_rejected,
        )


def _controller(out: MetricsText, s: AgentStatistics) -> None:
    if s.fetcher is not None:
        f = s.fetcher
        out.labelled(
            "pingmesh_agent_pinglist_fetches_total",
            "counter",
            "Pinglist fetches by result",
            [
                ((("result", "ok"),), f.ok),
                ((("result", "not_modified"),), f.not_modified),
                ((("result", "not_found"),), f.not_found),
                ((("result", "failed"),), f.failed),
            ],
        )
        out.gauge(
            "pingmesh_agent_pinglist_consecutive_failures",
            "Failed pinglist fetches in a row (fail closed at the configured limit)",
            f.consecutive_failures,
        )
    if s.uploader is not None:
        u = s.uploader
        out.counter(
            "pingmesh_agent_upload_batches_sent_total", "Result batches accepted", u.batches_sent
        )
        out.counter(
            "pingmesh_agent_upload_retries_total", "Result batch upload retries", u.batches_retried
        )
        out.counter(
            "pingmesh_agent_upload_batches_rejected_total",
            "Result batches refused by the collector (4xx, not retried)",
            u.batches_rejected,
        )
        out.labelled(
            "pingmesh_agent_upload_batches_dropped_total",
            "counter",
            "Result batches dropped, by reason",
            [((("reason", reason.value),), u.dropped_batches(reason)) for reason in DropReason],
        )
        out.labelled(
            "pingmesh_agent_upload_records_dropped_total",
            "counter",
            "Probe records dropped before upload, by reason",
            [((("reason", reason.value),), u.dropped_records(reason)) for reason in DropReason],
        )
        out.counter(
            "pingmesh_agent_upload_records_sent_total", "Probe records uploaded", u.records_sent
        )
        out.counter(
            "pingmesh_agent_upload_records_recovered_total",
            "Probe records found in the spool at start-up",
            u.records_recovered,
        )
        out.gauge(
            "pingmesh_agent_upload_pending_batches",
            "Sealed result batches waiting to be sent",
            u.pending_batches,
        )
        if u.spool is not None:
            out.gauge("pingmesh_agent_spool_bytes", "Bytes in the result spool", u.spool.size_bytes)
            out.gauge("pingmesh_agent_spool_files", "Batches in the result spool", u.spool.files)
            out.counter(
                "pingmesh_agent_spool_write_errors_total",
                "Batches the spool could not write",
                u.spool.write_errors,
            )
    if s.tasks is not None:
        t = s.tasks
        out.labelled(
            "pingmesh_agent_task_polls_total",
            "counter",
            "Task polls by result",
            [
                ((("result", "ok"),), t.polls_ok),
                ((("result", "not_found"),), t.polls_not_found),
                ((("result", "failed"),), t.polls_failed),
            ],
        )
        out.counter("pingmesh_agent_traceroutes_total", "Traceroutes run", t.traces_run)
        out.counter(
            "pingmesh_agent_traceroutes_rate_limited_total",
            "Traceroute tasks postponed by the local rate cap",
            t.traces_rate_limited,
        )
        out.counter(
            "pingmesh_agent_traceroute_results_posted_total",
            "Traceroute results posted",
            t.results_posted,
        )
        out.counter(
            "pingmesh_agent_traceroute_results_dropped_total",
            "Traceroute results dropped (queue full or refused)",
            t.results_dropped,
        )
        out.counter(
            "pingmesh_agent_traceroute_post_failures_total",
            "Failed posts of traceroute results",
            t.post_failures,
        )
    if s.results_file is not None:
        w = s.results_file
        out.counter(
            "pingmesh_agent_results_written_total", "Probe records written as JSON lines", w.written
        )
        out.counter(
            "pingmesh_agent_results_write_errors_total",
            "Probe records that could not be written",
            w.write_errors,
        )
        out.gauge(
            "pingmesh_agent_results_buffered", "Probe records waiting to be written", w.buffered
        )
    if s.uplink is not None:
        for name, value in _fields(s.uplink):
            kind = "counter" if name.endswith("_total") else "gauge"
            metric = f"pingmesh_agent_uplink_{name}"
            out.family(metric, kind, f"Uplink (issue 7): {name.replace('_', ' ')}")
            out.sample(metric, value)


def _fields(snapshot: object) -> list[tuple[str, float]]:
    names = getattr(type(snapshot), "__slots__", ()) or getattr(
        snapshot, "__dataclass_fields__", {}
    )
    found: list[tuple[str, float]] = []
    for name in names:
        value = getattr(snapshot, name)
        if isinstance(value, bool | int | float):
            found.append((name, float(value)))
    return found


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, server: MetricsServer) -> None:
        self._server = server
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._counted = False
        self._idle: asyncio.TimerHandle | None = None
        self.source = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if peer else ""
        caps = self._server._caps
        if not caps.admit(self.source):
            transport.abort()
            return
        caps.add(self)
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
            self._server._caps.release(self)
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
                    self._respond(request, time.monotonic_ns())
                if not self._next_cycle():
                    return
            elif isinstance(event, h11.ConnectionClosed):
                self._transport.close()
                return
            # h11.Data: a request body; GET needs none, so it is discarded unbuffered.

    def _respond(self, request: h11.Request, received_ns: int) -> None:
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
            dwell_us = (time.monotonic_ns() - received_ns) / 1000
            self._send(
                200,
                b"pong",
                "text/plain; charset=utf-8",
                method,
                extra=[("X-Pingmesh-Dwell-Us", f"{dwell_us:.3f}")],
            )
        else:
            self._send(200, self._server.render_metrics(), CONTENT_TYPE, method)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        method: str,
        *,
        allow: bool = False,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        assert self._transport is not None
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *(extra or []),
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
    """Serves ``/metrics`` (the bytes ``render`` returns) and ``/ping`` on ``(bind, port)``."""

    def __init__(
        self,
        *,
        bind: str,
        port: int,
        render: Callable[[], bytes],
        max_connections: int = 64,
        max_per_source: int = 8,
        idle_timeout_s: float = 30.0,
    ) -> None:
        self.bind = bind
        self.port = port
        self._render = render
        self._caps = ConnectionCaps[_HttpProtocol](
            max_connections=max_connections, max_per_source=max_per_source
        )
        self.idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
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
        await serve_until_cancelled(self)

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in self._caps:
            conn.close()
        if server is not None:
            await server.wait_closed()

    def render_metrics(self) -> bytes:
        """The Prometheus text exposition, now."""
        return self._render()

    def statistics(self) -> HttpStatistics:
        """A snapshot of the counters."""
        caps = self._caps.statistics()
        return HttpStatistics(
            open_connections=caps.open_connections,
            connections_rejected=caps.rejected + caps.rejected_per_source,
            requests=tuple(self._requests.items()),
            bad_requests=self._bad_requests,
        )

    def _count(self, path: str) -> None:
        key = path if path in self._requests else "other"
        self._requests[key] += 1
