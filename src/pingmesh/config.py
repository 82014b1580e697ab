"""Configuration: one object per command, built at the entry point from file + options.

A config file is YAML whose top level has a ``server:`` and/or an ``agent:`` section, each
with the fields below; command-line options override the file. Unknown keys are errors, so a
typo cannot silently fall back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pingmesh.core.probe import MIN_INTERVAL_S
from pingmesh.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PinglistConfig(_Section):
    """How the controller builds pinglists (PM §3.3.1)."""

    interval_s: float = Field(default=10.0, ge=MIN_INTERVAL_S)
    timeout_s: float = Field(default=3.5, gt=0, le=60)
    max_peers: int = Field(default=5000, ge=1)
    inter_dc_per_podset: int = Field(default=2, ge=0)
    port: int = Field(default=9781, ge=1, le=65535)


class CollectorConfig(_Section):
    """Limits and batching of the collector."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    dedup_horizon_s: float = Field(default=6 * 3600, gt=0)


class AnalysisConfig(_Section):
    """The windowed analysis jobs."""

    fast_window_s: int = Field(default=30, ge=5)
    fast_every_s: int = Field(default=10, ge=1)
    lag_s: int = Field(default=10, ge=0, description="wait this long for late uploads")
    ten_minute_window_s: int = Field(default=600, ge=60)


class HeatmapConfig(_Section):
    """Heatmap colours (PM §4.3 / Fig. 7): green below, red above, yellow between."""

    green_below_us: float = Field(default=4000.0, gt=0)
    red_above_us: float = Field(default=5000.0, gt=0)
    drop_green_below: float = Field(default=1e-4, ge=0)
    drop_red_above: float = Field(default=1e-3, ge=0)


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


class AgentConfig(_Section):
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


def load_config_file(path: Path | None, section: str) -> dict[str, Any]:
    """The ``section`` of a YAML config file, or ``{}`` without a file."""
    if path is None:
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict) or not set(doc) <= {"server", "agent"}:
        raise ConfigError(f"{path}: the top level must have only 'server' and/or 'agent'")
    value = doc.get(section) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: field {section!r}: must be a mapping")
    return value


def build_config(model: type[T], path: Path | None, section: str, overrides: dict[str, Any]) -> T:
    """Build a config object from a file section plus command-line overrides."""
    data = load_config_file(path, section)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}field {section}.{field}: {first['msg']}") from exc
