"""Bandwidth reports: what an agent sends to ``POST /api/v1/bandwidth`` (HTTP or QUIC).

A batch carries the agent's identity (``agent``: its name in the topology, ``alias``: a label
for people, as the ``client_id``/``alias`` of seed 001) and up to
:data:`MAX_REPORTS_PER_BATCH` reports. ``report_id`` is unique per agent and makes retries
idempotent: the server stores a report once however often it arrives.
"""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from pingmesh.wire import SCHEMA_VERSION

MAX_REPORTS_PER_BATCH = 1000
MAX_INTERFACES_PER_REPORT = 256
REPORT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{8,80}$"
INTERFACE_PATTERN = r"^[^\s/:]{1,64}$"  # what Linux allows in a name (IFNAMSIZ), and more
MAX_COUNT = 2**63 - 1  # what a BIGINT column holds
MAX_REPORT_S = 3600.0


class InterfaceRateModel(BaseModel):
    """One interface during one report: exact counts over ``interval_s`` seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interface: str = Field(pattern=INTERFACE_PATTERN)
    interval_s: float = Field(gt=0, le=MAX_REPORT_S)
    rx_bytes: int = Field(ge=0, le=MAX_COUNT)
    tx_bytes: int = Field(ge=0, le=MAX_COUNT)
    rx_packets: int = Field(ge=0, le=MAX_COUNT)
    tx_packets: int = Field(ge=0, le=MAX_COUNT)
    rx_peak_bytes_per_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    tx_peak_bytes_per_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class BandwidthReportModel(BaseModel):
    """One report of one agent: every interface measured between ``start`` and ``end``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    report_id: str = Field(pattern=REPORT_ID_PATTERN)
    start: AwareDatetime
    end: AwareDatetime
    interfaces: tuple[InterfaceRateModel, ...] = Field(max_length=MAX_INTERFACES_PER_REPORT)

    @model_validator(mode="after")
    def _ordered(self) -> BandwidthReportModel:
        if self.end < self.start:
            raise ValueError("end is before start")
        if (self.end - self.start).total_seconds() > MAX_REPORT_S:
            raise ValueError(f"a report spans more than {MAX_REPORT_S:g} s")
        return self


class BandwidthBatchModel(BaseModel):
    """Reports of one agent, oldest first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    agent: str = Field(min_length=1, max_length=128)
    alias: str = Field(default="", max_length=128)
    reports: tuple[BandwidthReportModel, ...] = Field(
        min_length=1, max_length=MAX_REPORTS_PER_BATCH
    )


class BandwidthAck(BaseModel):
    """The server's answer: how many reports were new and how many it already had."""

    accepted: int
    duplicate: int
