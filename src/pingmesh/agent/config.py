"""The agent's configuration (``pingmesh agent``; the ``agent:`` section of a config file).

Apart from :mod:`pingmesh.config`, which holds the server's sections, so that an agent builds
only its own models (see :mod:`pingmesh.config_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from pingmesh.config_file import Section


class BandwidthConfig(Section):
    """The agent's bandwidth sampler: the kernel's interface counters (seed 001)."""

    enabled: bool = True
    sample_interval_s: float = Field(default=0.5, ge=0.05, le=60)
    report_interval_s: float = Field(default=1.0, ge=0.05, le=3600)
    interfaces: tuple[str, ...] = Field(default=(), description="empty: every interface")
    max_rate_bytes_per_s: float = Field(default=50e9, gt=0, description="outlier above this")
    counter_bits: Literal[0, 32, 64] = Field(default=0, description="0: the kernel's own width")
    counters_file: Path = Path("/proc/net/dev")
    spool_max_reports: int = Field(default=3600, ge=1, description="kept while the server is away")
    batch_max_reports: int = Field(default=100, ge=1, le=1000)

    @model_validator(mode="after")
    def _report_after_sample(self) -> BandwidthConfig:
        if self.report_interval_s < self.sample_interval_s:
            raise ValueError("report_interval_s must be >= sample_interval_s")
        return self


class TransportConfig(Section):
    """How the agent sends uploads: QUIC (TLS 1.3, verified) when ``quic`` is set, else HTTP."""

    quic: str | None = Field(default=None, description="HOST:PORT of the server's QUIC listener")
    server_name: str | None = Field(default=None, description="default: the host of 'quic'")
    ca_file: Path | None = Field(default=None, description="CA to trust; default: the system's")
    token: SecretStr | None = None
    token_file: Path | None = None
    alias: str = Field(default="", max_length=128)
    fallback_http: bool = True
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    idle_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    backoff_initial_s: float = Field(default=0.5, gt=0, le=60)
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)


class AgentConfig(Section):
    """``pingmesh agent``."""

    controller: str | None = None
    name: str | None = None
    bind: str = "0.0.0.0"
    pinglist_file: Path | None = None
    results_file: str | None = None
    responder_port: int = Field(default=9781, ge=1, le=65535)
    http_port: int = Field(default=9782, ge=0, le=65535)
    refresh_s: float = Field(default=60.0, ge=1)
    fail_closed_after: int = Field(default=3, ge=1)
    upload_interval_s: float = Field(default=5.0, gt=0)
    upload_attempts: int = Field(default=4, ge=1, le=20)
    upload_timeout_s: float = Field(default=10.0, gt=0)
    max_pending_batches: int = Field(default=60, ge=1)
    max_batch_records: int = Field(default=5000, ge=1, le=20_000)
    max_probe_rate: float = Field(default=2000.0, gt=0, description="probes/s, all peers")
    max_concurrent_probes: int = Field(default=512, ge=1)
    responder_max_connections: int = Field(default=1024, ge=1)
    # Issue 3: probe kinds, safety limits, spool, aggregates, tasks.
    responder_max_per_source: int = Field(default=64, ge=1)
    udp_responder_per_source_rate: float = Field(default=200.0, gt=0, description="datagrams/s")
    udp_responder_rate: float = Field(default=20_000.0, gt=0, description="datagrams/s, all")
    udp_ecmp_paths: int = Field(default=16, ge=1, le=1024, description="ECMP paths to cover")
    udp_path_coverage: float = Field(default=0.99, gt=0, lt=1)
    udp_rotate_per_hour: float = Field(default=0.2, ge=0, le=60, description="fraction of ports")
    icmp_socket: Literal["auto", "raw", "ping"] = "auto"
    https_ca_file: Path | None = None
    probe_tick_s: float = Field(default=0.2, ge=0, le=1, description="wake-up coalescing")
    spool_dir: Path | None = None
    spool_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    aggregate_window_s: float = Field(default=60.0, ge=1, le=3600)
    per_peer_metrics_max_peers: int = Field(default=100, ge=0)
    task_poll_s: float = Field(default=10.0, ge=0, description="0: do not poll for tasks")
    traceroutes_per_minute: float = Field(default=6.0, gt=0)
    bandwidth: BandwidthConfig = BandwidthConfig()
    transport: TransportConfig = TransportConfig()
