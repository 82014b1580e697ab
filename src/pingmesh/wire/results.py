"""Probe result batches: what an agent uploads to ``POST /api/v1/results``."""

from __future__ import annotations

import json
import math
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
    dst_port: int = Field(ge=0, le=65535, description="0 for icmp, which has no ports")
    kind: ProbeKind
    scope: Scope
    outcome: Outcome
    rtt_us: float | None = Field(default=None, ge=0)
    rtt_clock_us: float | None = Field(default=None, ge=0)
    retransmits: int = Field(default=0, ge=0)
    size_bytes: int = Field(default=0, ge=0)
    detail: str = Field(default="", max_length=200)
    # Host-noise signals and phases (schema 1, added later: optional, absent = unknown).
    send_lag_us: float | None = Field(default=None, ge=0)
    recv_lag_us: float | None = Field(default=None, ge=0)
    dwell_us: float | None = Field(default=None, ge=0)
    connect_us: float | None = Field(default=None, ge=0)
    tls_us: float | None = Field(default=None, ge=0)
    ttfb_us: float | None = Field(default=None, ge=0)
    seq: int | None = Field(default=None, ge=0)

    @classmethod
    def from_result(cls, result: ProbeResult) -> ProbeRecordModel:
        """The wire form of a core probe result."""
        return cls(
            time=record_time(result.time_ns),
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
            send_lag_us=result.send_lag_us,
            recv_lag_us=result.recv_lag_us,
            dwell_us=result.dwell_us,
            connect_us=result.connect_us,
            tls_us=result.tls_us,
            ttfb_us=result.ttfb_us,
            seq=result.seq,
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


_OPTIONAL_FIELDS = (
    "send_lag_us",
    "recv_lag_us",
    "dwell_us",
    "connect_us",
    "tls_us",
    "ttfb_us",
)


def _json_string(value: str) -> str:
    # Names and addresses are almost always plain: skip json.dumps (and its cost) for them.
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


def _json_float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return repr(float(value))


_last_second: list[tuple[int, str]] = [(-1, "")]


def _second_stamp(seconds: int) -> str:
    # Records arrive in time order, many per second: format each second once.
    last = _last_second[0]
    if last[0] == seconds:
        return last[1]
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    _last_second[0] = (seconds, stamp)
    return stamp


def record_time(time_ns: int) -> datetime:
    """``time_ns`` as an aware UTC datetime, truncated to the microsecond (exactly)."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=nanos // 1000)


def encode_record(result: ProbeResult) -> str:
    """The JSON of ``ProbeRecordModel.from_result(result)``, optional fields only when set.

    The agent encodes every probe it sends, thousands a second at peak; building a pydantic
    model per record costs about twice this. The output parses back to exactly the model
    that :meth:`ProbeRecordModel.from_result` builds (a tested property), so the wire format
    stays what the model says.
    """
    seconds, nanos = divmod(result.time_ns, 1_000_000_000)
    # rtt_us and rtt_clock_us are always there (null for a failed probe: DESIGN.md lists
    # them among the fields of a record); the newer optional fields only when known.
    rtt = ',"rtt_us":' + ("null" if result.rtt_us is None else _json_float(result.rtt_us))
    rtt += ',"rtt_clock_us":' + (
        "null" if result.rtt_clock_us is None else _json_float(result.rtt_clock_us)
    )
    detail = json.dumps(result.detail[:200]) if result.detail else '""'
    text = (
        f'{{"time":"{_second_stamp(seconds)}.{nanos // 1000:06d}Z",'
        f'"src_addr":{_json_string(result.src_addr)},"src_port":{result.src_port},'
        f'"dst":{_json_string(result.dst)},"dst_addr":{_json_string(result.dst_addr)},'
        f'"dst_port":{result.dst_port},"kind":"{result.kind.value}",'
        f'"scope":"{result.scope.value}","outcome":"{result.outcome.value}"{rtt},'
        f'"retransmits":{result.retransmits},"size_bytes":{result.size_bytes},"detail":{detail}'
    )
    for name in _OPTIONAL_FIELDS:
        value = getattr(result, name)
        if value is not None:
            text += f',"{name}":{_json_float(value)}'
    if result.seq is not None:
        text += f',"seq":{result.seq}'
    return text + "}"


def encode_batch(
    *,
    batch_id: str,
    agent: str,
    pinglist_version: str | None,
    sent_at: datetime,
    records: list[str],
) -> bytes:
    """The JSON of a :class:`ResultBatchModel` around records from :func:`encode_record`."""
    if len(records) > MAX_RECORDS_PER_BATCH:
        raise ValueError(f"records: {len(records)} exceeds {MAX_RECORDS_PER_BATCH}")
    version = "null" if pinglist_version is None else _json_string(pinglist_version)
    head = (
        f'{{"schema_version":{SCHEMA_VERSION},"batch_id":{json.dumps(batch_id)},'
        f'"agent":{json.dumps(agent)},"pinglist_version":{version},'
        f'"sent_at":"{sent_at.astimezone(UTC).isoformat()}","records":['
    )
    return (head + ",".join(records) + "]}").encode()
