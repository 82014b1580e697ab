"""Probe result batches: what an agent uploads to ``POST /api/v1/results``."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult, Scope
from pingmesh.wire import SCHEMA_VERSION

MAX_RECORDS_PER_BATCH = 20_000
BATCH_ID_PATTERN = r"^[A-Za-z0-9_.:-]{8,80}$"


class ProbeRecordModel(BaseModel):
    """One probe on the wire; also one JSON line of ``agent --results``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: AwareDatetime
    src_addr: str
    src_port: int = Field(ge=0, le=65535)
    dst: str = Field(min_length=1, max_length=128)
    dst_addr: str
    dst_port: int = Field(ge=1, le=65535)
    kind: ProbeKind
    scope: Scope
    outcome: Outcome
    rtt_us: float | None = Field(default=None, ge=0)
    rtt_clock_us: float | None = Field(default=None, ge=0)
    retransmits: int = Field(default=0, ge=0)
    size_bytes: int = Field(default=0, ge=0)
    detail: str = Field(default="", max_length=200)

    @classmethod
    def from_result(cls, result: ProbeResult) -> ProbeRecordModel:
        """The wire form of a core probe result."""
        return cls(
            time=datetime.fromtimestamp(result.time_ns / 1e9, tz=UTC),
            src_addr=result.src_addr,
            src_port=result.src_port,
            dst=result.dst,
            dst_addr=result.dst_addr,
            dst_port=result.dst_port,
            kind=result.kind,
            scope=result.scope,
            outcome=result.outcome,
            rtt_us=result.rtt_us,
            rtt_clock_us=result.rtt_clock_us,
            retransmits=result.retransmits,
            size_bytes=result.size_bytes,
            detail=result.detail[:200],
        )


class ResultBatchModel(BaseModel):
    """A batch of probe results from one agent; ``batch_id`` makes retries idempotent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    agent: str = Field(min_length=1, max_length=128)
    pinglist_version: str | None = None
    sent_at: AwareDatetime
    records: tuple[ProbeRecordModel, ...] = Field(max_length=MAX_RECORDS_PER_BATCH)


class BatchAck(BaseModel):
    """The collector's answer to a batch."""

    batch_id: str
    accepted: int
    duplicate: bool
