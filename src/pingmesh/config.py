"""Configuration: one object per command, built at the entry point from file + options.

A config file is YAML whose top level has a ``server:`` and/or an ``agent:`` section, each
with the fields below (the agent's in :mod:`pingmesh.agent.config`, re-exported here);
command-line options override the file (:mod:`pingmesh.config_file`). Unknown keys are errors,
so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from pingmesh.agent.config import AgentConfig, BandwidthConfig, TransportConfig
from pingmesh.config_file import Section as _Section
from pingmesh.config_file import build_config, load_config_file
from pingmesh.core.probe import (
    MAX_PAYLOAD_BYTES,
    MAX_UDP_PAYLOAD_BYTES,
    MIN_INTERVAL_S,
    ProbeKind,
)

# The agent's sections and the loaders live apart (pingmesh.config_file); importable here too.
__all__ = [
    "AgentConfig",
    "AlertRuleConfig",
    "AlertsConfig",
    "AnalysisConfig",
    "BandwidthConfig",
    "CollectorConfig",
    "HeatmapConfig",
    "IncidentConfig",
    "PinglistConfig",
    "ProbeSpecConfig",
    "RetentionConfig",
    "ServerConfig",
    "SlaThresholds",
    "SmtpNotifierConfig",
    "TracerouteConfig",
    "TransportConfig",
    "WebhookNotifierConfig",
    "build_config",
    "load_config_file",
]


class ProbeSpecConfig(_Section):
    """One way to probe every peer: a probe kind, its port, size and interval.

    ``port`` defaults to where agents answer that kind (TCP/UDP echo: the pinglist ``port``;
    HTTP: 9782; HTTPS: 443; ICMP: none); ``interval_s`` to the pinglist's.
    """

    kind: ProbeKind = ProbeKind.TCP
    port: int | None = Field(default=None, ge=1, le=65535)
    size_bytes: int = Field(default=0, ge=0, le=MAX_PAYLOAD_BYTES)
    interval_s: float | None = Field(default=None, ge=MIN_INTERVAL_S)

    @model_validator(mode="after")
    def _fits_kind(self) -> ProbeSpecConfig:
        if self.kind is ProbeKind.ICMP and self.port is not None:
            raise ValueError("port: icmp has no port")
        if self.kind is ProbeKind.UDP and self.size_bytes > MAX_UDP_PAYLOAD_BYTES:
            raise ValueError(f"size_bytes: more than {MAX_UDP_PAYLOAD_BYTES} for udp")
        return self


class PinglistConfig(_Section):
    """How the controller builds pinglists (PM §3.3.1)."""

    interval_s: float = Field(default=10.0, ge=MIN_INTERVAL_S)
    timeout_s: float = Field(default=3.5, gt=0, le=60)
    max_peers: int = Field(default=5000, ge=1)
    inter_dc_per_podset: int = Field(default=2, ge=0)
    port: int = Field(default=9781, ge=1, le=65535)
    probes: tuple[ProbeSpecConfig, ...] = Field(
        default=(ProbeSpecConfig(),),
        min_length=1,
        max_length=16,
        description="how each peer is probed; every peer gets one entry per spec",
    )


class CollectorConfig(_Section):
    """Limits and batching of the collector."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    dedup_horizon_s: float = Field(
        default=6 * 3600,
        gt=0,
        description="batch ids are remembered this long; a batch with an older record is "
        "refused (422), since a copy of it could no longer be recognised",
    )


class SlaThresholds(_Section):
    """Alert thresholds of one scope (PM §4.3: drop rate > 1e-3 or P99 > 5 ms)."""

    drop_rate: float = Field(default=1e-3, gt=0, le=1)
    p99_us: float = Field(default=5000.0, gt=0)


IncidentScope = Literal["server", "tor", "podset", "dc", "dc_pair", "service"]


class IncidentConfig(_Section):
    """The detectors (see ``pingmesh.core.analysis``): thresholds, evidence, hysteresis."""

    thresholds: SlaThresholds = SlaThresholds()
    per_scope: dict[IncidentScope, SlaThresholds] = Field(
        default_factory=dict, description="thresholds that differ from the default, by scope"
    )
    min_latency_probes: int = Field(default=100, ge=1, description="to judge a P99")
    min_drop_events: int = Field(default=5, ge=1, description="to judge a drop rate")
    host_down_after_s: float = Field(default=30.0, gt=0, description="agent silent this long")
    host_unreachable_share: float = Field(default=1.0, gt=0, le=1)
    host_min_peers: int = Field(default=3, ge=1)
    host_noise_lag_us: float = Field(default=50_000.0, gt=0)
    host_noise_dwell_us: float = Field(default=50_000.0, gt=0)
    host_noise_share: float = Field(default=0.2, gt=0, le=1)
    black_hole_min_probes: int = Field(default=2, ge=1)
    tor_score_threshold: float = Field(default=0.5, gt=0, le=1)
    max_pair_incidents: int = Field(default=10, ge=0)
    baseline_drop_rate: float = Field(default=1e-4, gt=0, lt=1)
    silent_drop_factor: float = Field(default=5.0, ge=1)
    significance: float = Field(default=1e-6, gt=0, lt=0.5)
    localization_significance: float = Field(default=1e-3, gt=0, lt=0.5)
    silent_drop_horizon_s: int = Field(default=600, ge=10)
    open_after_windows: int = Field(default=1, ge=1)
    sla_open_after_windows: int = Field(
        default=3,
        ge=1,
        description="threshold breaches (packet_loss, high_latency) wait this many windows, "
        "so that a fault another detector localises is not also a bare threshold alert",
    )
    close_after_windows: int = Field(default=3, ge=1)


class RetentionConfig(_Section):
    """How long data is kept; expired raw hours and rollup days are removed whole."""

    raw_days: float = Field(default=7.0, gt=0)
    rollup_days: float = Field(default=60.0, gt=0)
    fast_results_hours: float = Field(default=6.0, gt=0)
    traceroute_days: float = Field(default=7.0, gt=0)
    every_s: float = Field(default=3600.0, ge=10)


class TracerouteConfig(_Section):
    """Central, rate-limited choice of the failing 5-tuples that agents trace (PM §5.2)."""

    enabled: bool = True
    per_minute: float = Field(default=30.0, gt=0, description="new tasks, fleet-wide")
    burst: int = Field(default=10, ge=1)
    per_incident: int = Field(default=5, ge=1, description="tasks per incident per window")
    max_pending_per_agent: int = Field(default=2, ge=1)
    pair_cooldown_s: float = Field(default=600.0, ge=0)
    task_ttl_s: float = Field(default=120.0, gt=0)
    max_hops: int = Field(default=16, ge=1, le=32)
    vote_min_flows: int = Field(default=3, ge=1)
    vote_window_s: float = Field(default=900.0, gt=0)


class AnalysisConfig(_Section):
    """The windowed analysis jobs."""

    fast_window_s: int = Field(default=30, ge=5)
    fast_every_s: int = Field(default=10, ge=1)
    lag_s: int = Field(default=10, ge=0, description="wait this long for late uploads")
    ten_minute_window_s: int = Field(default=600, ge=60)
    rollups: bool = Field(default=True, description="roll 10 min up into 1 h and 1 d")
    detect: bool = Field(default=True, description="run the detectors on the fast path")
    pair_cells_max: int = Field(
        default=200_000, ge=0, description="above: no per-pair histograms (server matrix)"
    )
    fast_tor_cells_max: int = Field(
        default=20_000, ge=0, description="above: the fast window has no ToR matrix"
    )
    incidents: IncidentConfig = IncidentConfig()
    retention: RetentionConfig = RetentionConfig()
    traceroute: TracerouteConfig = TracerouteConfig()

    @model_validator(mode="after")
    def _windows_fit(self) -> AnalysisConfig:
        if self.fast_window_s % self.fast_every_s:
            raise ValueError("fast_window_s must be a multiple of fast_every_s")
        if 3600 % self.ten_minute_window_s:
            raise ValueError("ten_minute_window_s must divide an hour")
        return self


class HeatmapConfig(_Section):
    """Heatmap colours (PM §4.3 / Fig. 7): green below, red above, yellow between."""

    green_below_us: float = Field(default=4000.0, gt=0)
    red_above_us: float = Field(default=5000.0, gt=0)
    drop_green_below: float = Field(default=1e-4, ge=0)
    drop_red_above: float = Field(default=1e-3, ge=0)
    cache_max_bytes: int = Field(
        default=64 * 2**20,
        ge=0,
        description="memory for the JSON of heatmaps of analysed windows (0: no cache); "
        "an analysed window does not change, so its heatmap is built once",
    )


class SmtpNotifierConfig(_Section):
    """E-mail alerts over SMTP. ``security``: plain (none), starttls (RFC 3207), tls (RFC 8314)."""

    name: str = Field(default="email", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["plain", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None  # never shown by the API or the dashboard
    sender: str = Field(min_length=3)
    recipients: tuple[str, ...] = Field(min_length=1)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    verify_tls: bool = True
    ca_file: Path | None = None


class WebhookNotifierConfig(_Section):
    """JSON alerts POSTed to ``url``, signed with HMAC-SHA256 when ``secret`` is set."""

    name: str = Field(default="webhook", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr | None = None  # never shown by the API or the dashboard
    timeout_s: float = Field(default=5.0, gt=0, le=120)


class AlertRuleConfig(_Section):
    """One alert rule (see ``pingmesh.alerts.rules.AlertRule``; thresholds are OR-ed)."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str = ""
    scope: Literal["server", "tor", "podset", "dc", "service", "link", "incident"] = "link"
    level: Literal["server", "tor", "podset", "dc"] = "tor"
    entity: str = Field(default="*", min_length=1)
    window: str | None = Field(default=None, description="window kind; default: the 10m kind")
    percentile: Literal["p50", "p90", "p99", "p999"] = "p99"
    latency_us: float | None = Field(default=None, ge=0)
    loss_ratio: float | None = Field(default=None, ge=0, le=1)
    drop_rate: float | None = Field(default=None, ge=0)
    min_probes: int = Field(default=1, ge=1)
    n: int = Field(default=1, ge=1, le=1024)
    m: int = Field(default=1, ge=1, le=1024)
    incident_kinds: tuple[str, ...] = ()
    severity: Literal["critical", "warning", "info"] = "critical"


class AlertsConfig(_Section):
    """The alert engine: rules, notifiers, retries."""

    enabled: bool = True
    evaluate_every_s: float = Field(default=5.0, gt=0, le=600)
    default_rules: bool = Field(
        default=True, description="add the SmartPing, Pingmesh and incident presets"
    )
    rules: tuple[AlertRuleConfig, ...] = ()
    smtp: tuple[SmtpNotifierConfig, ...] = ()
    webhooks: tuple[WebhookNotifierConfig, ...] = ()
    trace_wait_s: float = Field(
        default=20.0, ge=0, le=600, description="hold a firing notice this long for its trace"
    )
    send_attempts: int = Field(default=5, ge=1, le=50)
    retry_after_s: float = Field(default=15.0, gt=0, le=3600)
    dashboard_url: str | None = Field(default=None, description="linked from every message")
    write_token: SecretStr | None = Field(
        default=None, description="if set, ack/mute/rule changes need 'Authorization: Bearer'"
    )


class ServerConfig(_Section):
    """``pingmesh server``: controller + collector + analysis + web."""

    listen: str = "127.0.0.1:8080"
    data_dir: Path = Path("pingmesh-data")
    topology: Path | None = None
    agent_down_after_s: float = Field(default=60.0, gt=0)
    pinglist: PinglistConfig = PinglistConfig()
    collector: CollectorConfig = CollectorConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    heatmap: HeatmapConfig = HeatmapConfig()
    alerts: AlertsConfig = AlertsConfig()
    db: str | None = Field(default=None, description="results DB URL; default: SQLite in data_dir")
    quic_listen: str | None = Field(default=None, description="HOST:PORT (UDP) for agents")
    tls_dir: Path | None = Field(default=None, description="private CA + certificate; data_dir/tls")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_hosts: tuple[str, ...] = Field(default=(), description="names in a generated certificate")
    agent_secret_file: Path | None = None
    bandwidth_retention_days: int = Field(default=7, ge=1, le=3650)
