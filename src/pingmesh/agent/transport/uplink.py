"""The agent's uplink: QUIC transport for its uploads, the bandwidth sampler and its spool.

What :class:`~pingmesh.agent.agent.Agent` needs from issue 7, in one object, so that the agent
itself only hands its HTTP client to :meth:`Uplink.attach` (and uses the client it gets back),
runs :meth:`Uplink.run` in its task group and :meth:`Uplink.flush` on the way out.

- With ``transport.quic`` set, uploads (probe results and bandwidth reports) go over QUIC to
  that address, verified against ``transport.ca_file``, and fall back to HTTP
  (:mod:`pingmesh.agent.transport.http`); without it, everything is HTTP.
- With ``bandwidth.enabled``, the sampler reads the kernel's counters and hands each report to
  the spool, which delivers it to the server at the controller URL.

*Memory.* The agent's budget is 45 MB (PM §3.4.2). Everything here rides on the agent's own
small HTTP client, so the bandwidth monitor over HTTP costs about 1 MiB. aioquic is imported
only when ``transport.quic`` is set: with the ``cryptography``, pyOpenSSL and
``service_identity`` modules it loads it costs about 12 MiB of RSS, and the first handshake
touches about 4 MiB more (mostly shared library pages), which puts a QUIC agent over budget.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pingmesh.agent.bandwidth import (
    NATIVE_COUNTER_BITS,
    BandwidthMeter,
    BandwidthSampler,
    ProcNetDevSource,
)
from pingmesh.agent.config import AgentConfig
from pingmesh.agent.http_client import HttpClient
from pingmesh.agent.transport.http import QuicFallbackClient
from pingmesh.agent.transport.spool import BandwidthSpool
from pingmesh.clock import Clock
from pingmesh.errors import ConfigError

if TYPE_CHECKING:
    from pingmesh.agent.transport.quic import QuicClient


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkStatistics:
    """Flat figures of the uplink (``/metrics``: counters end in ``_total``)."""

    quic_connected: bool
    quic_connects_total: int
    quic_connect_failures_total: int
    quic_auth_failures_total: int
    quic_requests_total: int
    quic_request_failures_total: int
    http_requests_total: int
    http_uploads_total: int
    http_fallbacks_total: int
    quic_backoff_seconds: float
    bandwidth_reads_total: int
    bandwidth_read_errors_total: int
    bandwidth_reports_total: int
    bandwidth_outliers_total: int
    bandwidth_counter_wraps_total: int
    bandwidth_counter_resets_total: int
    bandwidth_interfaces: int
    spool_reports_submitted_total: int
    spool_reports_delivered_total: int
    spool_reports_duplicate_total: int
    spool_reports_dropped_total: int
    spool_reports_rejected_total: int
    spool_reports_pending: int


def _split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"field agent.transport.quic: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def read_token(config: AgentConfig) -> str | None:
    """The agent's token: ``transport.token``, else the first line of ``transport.token_file``."""
    transport = config.transport
    if transport.token is not None:
        return transport.token.get_secret_value().strip() or None
    if transport.token_file is None:
        return None
    try:
        text = transport.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"field agent.transport.token_file: cannot read {transport.token_file}: {exc.strerror}"
        ) from exc
    if not text:
        raise ConfigError(f"field agent.transport.token_file: {transport.token_file} is empty")
    return text.splitlines()[0].strip()


class Uplink:
    """See the module docstring."""

    def __init__(self, config: AgentConfig, *, clock: Clock, rng: random.Random) -> None:
        if config.controller is None or not config.name:
            raise ConfigError("agent uplink: needs a controller and a name")
        self._config = config
        self._clock = clock
        self._rng = rng
        transport = config.transport
        self.token = read_token(config)
        self.quic: QuicClient | None = None
        if transport.quic is not None:
            if self.token is None:
                raise ConfigError(
                    "field agent.transport.token: QUIC needs the agent's token "
                    "(transport.token or transport.token_file; the server's operator makes it "
                    f"with 'pingmesh token --agent {config.name}')"
                )
            host, port = _split_host_port(transport.quic)
            if transport.ca_file is not None and not transport.ca_file.is_file():
                raise ConfigError(
                    f"field agent.transport.ca_file: {transport.ca_file} is not a file"
                )
            bind = config.bind if config.bind not in ("0.0.0.0", "::") else None
            # Imported here: aioquic costs ~12 MiB, paid only by agents that use QUIC.
            from pingmesh.agent.transport.quic import QuicClient  # noqa: PLC0415

            self.quic = QuicClient(
                host=host,
                port=port,
                agent=config.name,
                alias=transport.alias or config.name,
                token=self.token,
                ca_file=transport.ca_file,
                server_name=transport.server_name,
                bind=bind,
                connect_timeout_s=transport.connect_timeout_s,
                request_timeout_s=transport.request_timeout_s,
                idle_timeout_s=transport.idle_timeout_s,
            )
        self.client: QuicFallbackClient | None = None
        self.spool: BandwidthSpool | None = None
        self.sampler: BandwidthSampler | None = None

    def attach(self, http: HttpClient) -> HttpClient:
        """Put the uploads of the agent's HTTP client ``http`` on QUIC (if configured) and
        build the bandwidth sampler and spool on it; returns the client for every component.
        """
        config = self._config
        transport = config.transport
        assert config.name is not None
        client = QuicFallbackClient(
            quic=self.quic,
            http=http,
            clock=self._clock,
            rng=self._rng,
            agent=config.name,
            token=self.token,
            fallback_http=transport.fallback_http,
            backoff_initial_s=transport.backoff_initial_s,
            backoff_max_s=max(transport.backoff_max_s, transport.backoff_initial_s),
        )
        self.client = client
        bandwidth = config.bandwidth
        if bandwidth.enabled:
            self._build_bandwidth(client)
        return client

    def _build_bandwidth(self, client: HttpClient) -> None:
        config = self._config
        bandwidth = config.bandwidth
        assert config.controller is not None
        assert config.name is not None
        self.spool = BandwidthSpool(
            client=client,
            server=config.controller,
            agent=config.name,
            alias=config.transport.alias or config.name,
            clock=self._clock,
            rng=self._rng,
            max_reports=bandwidth.spool_max_reports,
            batch_max_reports=bandwidth.batch_max_reports,
            request_timeout_s=config.transport.request_timeout_s,
            backoff_initial_s=config.transport.backoff_initial_s,
            backoff_max_s=max(config.transport.backoff_max_s, config.transport.backoff_initial_s),
        )
        self.sampler = BandwidthSampler(
            source=ProcNetDevSource(bandwidth.counters_file),
            sink=self.spool.submit,
            clock=self._clock,
            meter=BandwidthMeter(
                counter_bits=bandwidth.counter_bits or NATIVE_COUNTER_BITS,
                max_rate_bytes_per_s=bandwidth.max_rate_bytes_per_s,
                interfaces=bandwidth.interfaces,
            ),
            sample_interval_s=bandwidth.sample_interval_s,
            report_interval_s=bandwidth.report_interval_s,
        )

    async def run(self) -> None:
        """Sample and deliver until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            if self.sampler is not None:
                tasks.create_task(self.sampler.run(), name="bandwidth-sampler")
            if self.spool is not None:
                tasks.create_task(self.spool.run(), name="bandwidth-spool")

    async def flush(self, *, timeout_s: float) -> None:
        """On shutdown: one bounded attempt to deliver what waits, then close QUIC."""
        try:
            if self.spool is not None:
                await self.spool.flush(timeout_s=timeout_s)
        finally:
            if self.quic is not None:
                await self.quic.aclose()

    def statistics(self) -> UplinkStatistics:
        """A snapshot of every part."""
        quic = self.quic.statistics() if self.quic is not None else None
        fallback = self.client.statistics() if self.client is not None else None
        sampler = self.sampler.statistics() if self.sampler is not None else None
        meter = sampler.meter if sampler is not None else None
        spool = self.spool.statistics() if self.spool is not None else None
        return UplinkStatistics(
            quic_connected=quic.connected if quic else False,
            quic_connects_total=quic.connects_total if quic else 0,
            quic_connect_failures_total=quic.connect_failures_total if quic else 0,
            quic_auth_failures_total=quic.auth_failures_total if quic else 0,
            quic_requests_total=fallback.quic_requests_total if fallback else 0,
            quic_request_failures_total=quic.request_failures_total if quic else 0,
            http_requests_total=fallback.http_requests_total if fallback else 0,
            http_uploads_total=fallback.http_uploads_total if fallback else 0,
            http_fallbacks_total=fallback.http_fallbacks_total if fallback else 0,
            quic_backoff_seconds=fallback.quic_backoff_seconds if fallback else 0.0,
            bandwidth_reads_total=sampler.reads_total if sampler else 0,
            bandwidth_read_errors_total=sampler.read_errors_total if sampler else 0,
            bandwidth_reports_total=sampler.reports_total if sampler else 0,
            bandwidth_outliers_total=meter.outliers_total if meter else 0,
            bandwidth_counter_wraps_total=meter.wraps_total if meter else 0,
            bandwidth_counter_resets_total=meter.resets_total if meter else 0,
            bandwidth_interfaces=meter.interfaces if meter else 0,
            spool_reports_submitted_total=spool.reports_submitted_total if spool else 0,
            spool_reports_delivered_total=spool.reports_delivered_total if spool else 0,
            spool_reports_duplicate_total=spool.reports_duplicate_total if spool else 0,
            spool_reports_dropped_total=spool.reports_dropped_total if spool else 0,
            spool_reports_rejected_total=spool.reports_rejected_total if spool else 0,
            spool_reports_pending=spool.reports_pending if spool else 0,
        )
