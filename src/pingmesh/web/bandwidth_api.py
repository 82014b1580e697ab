"""Bandwidth: ingest (HTTP and QUIC), retention, the read API and the bandwidth dashboard page.

Routes (JSON under ``/api/v1``; times RFC 3339 UTC, rates in bytes per second):

- ``POST /api/v1/bandwidth``: a batch of an agent's reports (the HTTP fallback of the QUIC
  path of the same name); idempotent by ``report_id``.
- ``GET /api/v1/bandwidth/interfaces?range=1h``: every agent's interfaces that reported in the
  range, with their totals.
- ``GET /api/v1/bandwidth/series?agent=&interface=&range=1h[&step=]``: one interface's
  upload/download rate, packet rate, average packet size and peak, per time bucket.
- ``GET /api/v1/bandwidth/top?range=1h&limit=10``: the fleet's top talkers (loopback excluded).
- ``GET /bandwidth``: the dashboard page (``static/bandwidth.html`` + ``bandwidth.js``).

A range is ``range=`` (``5m``, ``1h``, ``6h``, ``1d``, ``7d``) ending now, or ``start=``
and ``end=``.

*Identity.* When the server holds an agent secret, an upload must carry
``Authorization: Bearer TOKEN`` of the agent it names (over QUIC the hello proves it once per
connection); a batch naming another agent is refused 403. Without a secret (no QUIC listener
configured) the HTTP path accepts any agent, like ``POST /api/v1/results``.

*Retention* runs at start-up and then every ``retention_every_s``, dropping whole day
partitions older than ``retention_days`` (see :mod:`pingmesh.store.bandwidth`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from pingmesh.clock import Clock
from pingmesh.collector.routes import validation_detail
from pingmesh.errors import StoreError
from pingmesh.server.quic import AgentIdentity, detail
from pingmesh.server.tls import AgentAuthenticator
from pingmesh.store.bandwidth import (
    DEFAULT_RETENTION_DAYS,
    BandwidthStore,
    InterfaceSample,
    StoredReport,
)
from pingmesh.web.api import parse_rfc3339, utc
from pingmesh.web.app import ERROR_RESPONSES
from pingmesh.web.dashboard import CONTENT_SECURITY_POLICY
from pingmesh.wire.bandwidth import BandwidthAck, BandwidthBatchModel

log = logging.getLogger(__name__)

BANDWIDTH_PATH = "/api/v1/bandwidth"
MAX_BODY_BYTES = 4 * 1024 * 1024
RANGES_S: dict[str, int] = {"5m": 300, "15m": 900, "1h": 3600, "6h": 6 * 3600, "1d": 86400}
RANGES_S["7d"] = 7 * 86400
STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
TARGET_POINTS = 300
MAX_TOP = 100

RangeParam = Annotated[
    str, Query(description="5m, 15m, 1h, 6h, 1d or 7d ending now (ignored with start and end)")
]
TimeParam = Annotated[str | None, Query(description="RFC 3339 time with a timezone")]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class InterfaceOut(_Out):
    """One agent's interface and its traffic over the range."""

    agent: str
    alias: str
    interface: str
    last_seen: datetime | None
    rx_bytes: int
    tx_bytes: int
    rx_bytes_per_s: float  # over the seconds measured
    tx_bytes_per_s: float


class InterfacesOut(_Out):
    """The interfaces that reported in a range."""

    start: datetime | None
    end: datetime | None
    interfaces: list[InterfaceOut]


class PointOut(_Out):
    """One time bucket of one interface. Rates are averages over ``covered_s`` measured."""

    time: datetime | None
    covered_s: float
    rx_bytes: int
    tx_bytes: int
    rx_bytes_per_s: float
    tx_bytes_per_s: float
    rx_packets_per_s: float
    tx_packets_per_s: float
    rx_avg_packet_bytes: float | None
    tx_avg_packet_bytes: float | None
    rx_peak_bytes_per_s: float
    tx_peak_bytes_per_s: float


class SeriesOut(_Out):
    """One interface over a range, in buckets of ``step_s``."""

    agent: str
    interface: str
    start: datetime | None
    end: datetime | None
    step_s: int
    points: list[PointOut]


class TalkerOut(_Out):
    """One agent's traffic over the range (all interfaces but loopback)."""

    agent: str
    alias: str
    rx_bytes: int
    tx_bytes: int
    total_bytes: int
    rx_bytes_per_s: float  # averaged over the whole range
    tx_bytes_per_s: float


class TopOut(_Out):
    """The agents that moved the most bytes in a range, most first."""

    start: datetime | None
    end: datetime | None
    talkers: list[TalkerOut]


@dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthServiceStatistics:
    """The bandwidth service (``/metrics``; the store has its own statistics)."""

    batches_total: int
    batches_refused_total: int  # bad body, wrong identity
    retention_runs_total: int
    retention_failures_total: int


def choose_step_s(span_s: float) -> int:
    """The smallest round step that gives at most ~:data:`TARGET_POINTS` points."""
    for step in STEPS_S:
        if span_s / step <= TARGET_POINTS:
            return step
    return STEPS_S[-1]


class BandwidthService:
    """Stores agents' bandwidth reports and answers the bandwidth API; see the module doc."""

    def __init__(
        self,
        store: BandwidthStore,
        *,
        clock: Clock,
        authenticator: AgentAuthenticator | None = None,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        retention_every_s: float = 3600.0,
    ) -> None:
        if retention_days < 1:
            raise ValueError(f"retention_days: {retention_days} is not >= 1")
        self.store = store
        self._clock = clock
        self._authenticator = authenticator
        self._retention_days = retention_days
        self._retention_every_s = retention_every_s
        self._batches = 0
        self._refused = 0
        self._retention_runs = 0
        self._retention_failures = 0
        self.router = self._build_router()

    # -- ingest ------------------------------------------------------------------------------

    async def ingest(self, batch: BandwidthBatchModel) -> BandwidthAck:
        """Store a batch whose identity the caller has checked."""
        reports = [
            StoredReport(
                report_id=r.report_id,
                start_s=r.start.timestamp(),
                end_s=r.end.timestamp(),
                interfaces=tuple(
                    InterfaceSample(
                        interface=i.interface,
                        interval_s=i.interval_s,
                        rx_bytes=i.rx_bytes,
                        tx_bytes=i.tx_bytes,
                        rx_packets=i.rx_packets,
                        tx_packets=i.tx_packets,
                        rx_peak_bytes_per_s=i.rx_peak_bytes_per_s,
                        tx_peak_bytes_per_s=i.tx_peak_bytes_per_s,
                    )
                    for i in r.interfaces
                ),
            )
            for r in batch.reports
        ]
        result = await asyncio.to_thread(
            self.store.ingest, batch.agent, batch.alias, reports, now_s=self._clock.now_s()
        )
        self._batches += 1
        return BandwidthAck(accepted=result.accepted, duplicate=result.duplicate)

    async def handle_quic(self, body: bytes, identity: AgentIdentity) -> tuple[int, bytes]:
        """``/api/v1/bandwidth`` over QUIC, for an agent that proved ``identity``."""
        try:
            batch = BandwidthBatchModel.model_validate_json(body)
        except ValidationError as exc:
            self._refused += 1
            return 422, detail(validation_detail(exc))
        if batch.agent != identity.agent:
            self._refused += 1
            return 403, detail(f"this connection is agent {identity.agent!r}, not {batch.agent!r}")
        ack = await self.ingest(batch)
        return 200, ack.model_dump_json().encode()

    async def _handle_http(self, request: Request) -> Response:
        body = await _read_capped(request)
        if body is None:
            self._refused += 1
            return JSONResponse({"detail": f"body larger than {MAX_BODY_BYTES} bytes"}, 413)
        try:
            batch = BandwidthBatchModel.model_validate_json(body)
        except ValidationError as exc:
            self._refused += 1
            return JSONResponse({"detail": validation_detail(exc)}, 422)
        if self._authenticator is not None:
            auth = request.headers.get("authorization", "")
            token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
            if not token or not self._authenticator.verify(batch.agent, token):
                self._refused += 1
                return JSONResponse(
                    {"detail": f"agent {batch.agent!r}: missing or wrong bearer token"},
                    401 if not token else 403,
                )
        ack = await self.ingest(batch)
        return JSONResponse(ack.model_dump(mode="json"))

    # -- retention -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Apply retention now and then every ``retention_every_s``, until cancelled."""
        while True:
            await asyncio.to_thread(self.retention_once)
            await asyncio.sleep(self._retention_every_s)

    def retention_once(self) -> list[int]:
        """Drop the partitions older than the retention; returns the days dropped."""
        self._retention_runs += 1
        try:
            days = self.store.apply_retention(
                now_s=self._clock.now_s(), retention_days=self._retention_days
            )
        except StoreError:  # retried at the next run; counted, and the server keeps serving
            self._retention_failures += 1
            log.exception("bandwidth retention failed")
            return []
        if days:
            log.info("bandwidth retention: dropped %d day partitions", len(days))
        return days

    def statistics(self) -> BandwidthServiceStatistics:
        """A snapshot of the counters."""
        return BandwidthServiceStatistics(
            batches_total=self._batches,
            batches_refused_total=self._refused,
            retention_runs_total=self._retention_runs,
            retention_failures_total=self._retention_failures,
        )

    # -- reading -------------------------------------------------------------------------------

    def _range(self, range_: str, start: str | None, end: str | None) -> tuple[float, float]:
        if start is not None or end is not None:
            if start is None or end is None:
                raise HTTPException(422, "query parameters 'start' and 'end' go together")
            try:
                start_s = parse_rfc3339("start", start).timestamp()
                end_s = parse_rfc3339("end", end).timestamp()
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from exc
        else:
            if range_ not in RANGES_S:
                raise HTTPException(
                    422, f"query parameter 'range': {range_!r} is not one of {', '.join(RANGES_S)}"
                )
            end_s = self._clock.now_s()
            start_s = end_s - RANGES_S[range_]
        if not end_s > start_s:
            raise HTTPException(422, "query parameter 'end': must be after 'start'")
        if end_s - start_s > 31 * 86400:
            raise HTTPException(422, "a range longer than 31 days")
        return start_s, end_s

    def interfaces(self, range_: str, start: str | None, end: str | None) -> InterfacesOut:
        """Every interface that reported in the range."""
        start_s, end_s = self._range(range_, start, end)
        rows = self.store.interfaces(start_s=start_s, end_s=end_s)
        return InterfacesOut(
            start=utc(start_s),
            end=utc(end_s),
            interfaces=[
                InterfaceOut(
                    agent=r.agent,
                    alias=r.alias,
                    interface=r.interface,
                    last_seen=utc(r.last_end_s),
                    rx_bytes=r.rx_bytes,
                    tx_bytes=r.tx_bytes,
                    rx_bytes_per_s=r.rx_bytes / r.interval_s if r.interval_s else 0.0,
                    tx_bytes_per_s=r.tx_bytes / r.interval_s if r.interval_s else 0.0,
                )
                for r in rows
            ],
        )

    def series(
        self,
        agent: str,
        interface: str,
        *,
        range_: str,
        start: str | None,
        end: str | None,
        step: int | None,
    ) -> SeriesOut:
        """One interface's traffic over the range."""
        start_s, end_s = self._range(range_, start, end)
        step_s = step or choose_step_s(end_s - start_s)
        # Align the range on the step, so buckets are whole and the same in every request.
        first = math.floor(start_s / step_s) * step_s
        try:
            points = self.store.series(agent, interface, start_s=first, end_s=end_s, step_s=step_s)
        except ValueError as exc:
            raise HTTPException(422, f"query parameter 'step': {exc}") from exc
        return SeriesOut(
            agent=agent,
            interface=interface,
            start=utc(first),
            end=utc(end_s),
            step_s=step_s,
            points=[
                PointOut(
                    time=utc(p.start_s),
                    covered_s=p.interval_s,
                    rx_bytes=p.rx_bytes,
                    tx_bytes=p.tx_bytes,
                    rx_bytes_per_s=p.rx_bytes_per_s,
                    tx_bytes_per_s=p.tx_bytes_per_s,
                    rx_packets_per_s=p.rx_packets / p.interval_s if p.interval_s else 0.0,
                    tx_packets_per_s=p.tx_packets / p.interval_s if p.interval_s else 0.0,
                    rx_avg_packet_bytes=p.rx_bytes / p.rx_packets if p.rx_packets else None,
                    tx_avg_packet_bytes=p.tx_bytes / p.tx_packets if p.tx_packets else None,
                    rx_peak_bytes_per_s=p.rx_peak_bytes_per_s,
                    tx_peak_bytes_per_s=p.tx_peak_bytes_per_s,
                )
                for p in points
            ],
        )

    def top(self, range_: str, start: str | None, end: str | None, limit: int) -> TopOut:
        """The fleet's top talkers over the range."""
        start_s, end_s = self._range(range_, start, end)
        span = end_s - start_s
        talkers = self.store.top_talkers(start_s=start_s, end_s=end_s, limit=limit)
        return TopOut(
            start=utc(start_s),
            end=utc(end_s),
            talkers=[
                TalkerOut(
                    agent=t.agent,
                    alias=t.alias,
                    rx_bytes=t.rx_bytes,
                    tx_bytes=t.tx_bytes,
                    total_bytes=t.total_bytes,
                    rx_bytes_per_s=t.rx_bytes / span,
                    tx_bytes_per_s=t.tx_bytes / span,
                )
                for t in talkers
            ],
        )

    def _build_router(self) -> APIRouter:
        api = APIRouter(tags=["bandwidth"])
        page = _Page()

        @api.post(
            BANDWIDTH_PATH,
            response_model=BandwidthAck,
            summary="Upload an agent's bandwidth reports (idempotent by report_id)",
            responses={
                401: {"description": "no bearer token (the server requires one)"},
                403: {"description": "the token is not the named agent's"},
                413: {"description": f"the body is larger than {MAX_BODY_BYTES} bytes"},
                422: {"description": "the body is not a valid batch of reports"},
            },
        )
        async def post_bandwidth(request: Request) -> Response:
            return await self._handle_http(request)

        @api.get(
            f"{BANDWIDTH_PATH}/interfaces",
            response_model=InterfacesOut,
            responses=ERROR_RESPONSES,
            summary="The interfaces that reported in a range",
        )
        def get_interfaces(
            range: RangeParam = "1h",  # noqa: A002 - the API's parameter name
            start: TimeParam = None,
            end: TimeParam = None,
        ) -> InterfacesOut:
            """Every agent's interfaces that reported in the range, with their totals."""
            return self.interfaces(range, start, end)

        @api.get(
            f"{BANDWIDTH_PATH}/series",
            response_model=SeriesOut,
            responses=ERROR_RESPONSES,
            summary="One interface's traffic over a range",
        )
        def get_series(  # noqa: PLR0917 - query parameters
            agent: Annotated[str, Query(min_length=1, max_length=128)],
            interface: Annotated[str, Query(min_length=1, max_length=64)],
            range: RangeParam = "1h",  # noqa: A002 - the API's parameter name
            start: TimeParam = None,
            end: TimeParam = None,
            step: Annotated[
                int | None, Query(ge=1, le=86400, description="bucket, s (default: ~300 points)")
            ] = None,
        ) -> SeriesOut:
            """Upload (tx) and download (rx) rates, packet rates, average packet size and the
            peak of the finest samples, per time bucket; buckets without reports are absent."""
            return self.series(agent, interface, range_=range, start=start, end=end, step=step)

        @api.get(
            f"{BANDWIDTH_PATH}/top",
            response_model=TopOut,
            responses=ERROR_RESPONSES,
            summary="The fleet's top talkers",
        )
        def get_top(
            range: RangeParam = "1h",  # noqa: A002 - the API's parameter name
            start: TimeParam = None,
            end: TimeParam = None,
            limit: Annotated[int, Query(ge=1, le=MAX_TOP)] = 10,
        ) -> TopOut:
            """The agents that sent and received the most bytes (loopback excluded)."""
            return self.top(range, start, end, limit)

        @api.get("/bandwidth", include_in_schema=False)
        def bandwidth_page() -> Response:
            return page.response("bandwidth.html")

        @api.get("/static/bandwidth.js", include_in_schema=False)
        def bandwidth_script() -> Response:
            return page.response("bandwidth.js")

        return api


class _Page:
    """The bandwidth page's files, read once from the package."""

    TYPES: dict[str, str] = {  # noqa: RUF012 - read-only by convention
        "bandwidth.html": "text/html; charset=utf-8",
        "bandwidth.js": "text/javascript; charset=utf-8",
    }

    def __init__(self) -> None:
        root = resources.files("pingmesh.web").joinpath("static")
        self._content = {name: root.joinpath(name).read_bytes() for name in self.TYPES}

    def response(self, name: str) -> Response:
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if name.endswith(".html"):
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            headers["Referrer-Policy"] = "no-referrer"
        return Response(self._content[name], media_type=self.TYPES[name], headers=headers)


async def _read_capped(request: Request) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
