"""The bandwidth spool: reports wait here until the server has acknowledged them.

Theory of operation
-------------------
The sampler hands every report to :meth:`BandwidthSpool.submit` (never blocks). The spool gives
it a ``report_id`` unique to this agent (a random per-process prefix and a sequence number),
keeps it in order, and a single sender posts the oldest reports, up to ``batch_max_reports`` at
a time, to ``/api/v1/bandwidth`` through the agent's HTTP client (over QUIC when the
agent has it, see :mod:`pingmesh.agent.transport.http`). Reports leave the spool only when
the server answers 2xx: it stored them, or had them already (a retry whose first answer was
lost), which the server tells apart and the spool counts.

*Nothing lost within the bound.* While the server is unreachable (down, restarting, the
network away) the reports stay and the sender retries with jittered exponential backoff, for
as long as it takes: unlike probe results, bandwidth reports are not dropped after a number of
attempts. The spool holds at most ``max_reports`` (one hour at the default one report per
second); beyond that the *oldest* are dropped and counted, so memory stays bounded and the
freshest figures survive. Since the server stores each ``report_id`` once, resending is safe,
and every report made while the server was away arrives exactly once when it comes back.

A report the server refuses (4xx other than 401, 403, 408 and 429) will never be accepted: it is
dropped and counted as rejected. 401/403 are kept and retried, since the fix (a token) is on
the operator's side and the bound still holds.

Every report ends in exactly one counter:
``submitted == delivered + dropped + rejected + pending``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from pingmesh.agent.bandwidth import BandwidthReport
from pingmesh.agent.http_client import HttpClient
from pingmesh.clock import Clock
from pingmesh.errors import ControllerError
from pingmesh.wire.bandwidth import (
    MAX_REPORTS_PER_BATCH,
    BandwidthAck,
    BandwidthBatchModel,
    BandwidthReportModel,
    InterfaceRateModel,
)

logger = logging.getLogger(__name__)

BANDWIDTH_PATH = "/api/v1/bandwidth"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolStatistics:
    """A snapshot of the spool (``/metrics``)."""

    reports_submitted_total: int
    reports_delivered_total: int  # acknowledged: stored, or already stored
    reports_duplicate_total: int  # of the delivered, those the server already had
    reports_dropped_total: int  # the spool was full: oldest first
    reports_rejected_total: int  # refused by the server for good
    reports_pending: int
    batches_sent_total: int
    send_failures_total: int


def report_model(report: BandwidthReport, *, report_id: str) -> BandwidthReportModel:
    """The wire form of a sampler's report."""
    return BandwidthReportModel(
        report_id=report_id,
        start=datetime.fromtimestamp(report.start_s, tz=UTC),
        end=datetime.fromtimestamp(report.end_s, tz=UTC),
        interfaces=tuple(
            InterfaceRateModel(
                interface=r.interface,
                interval_s=r.interval_s,
                rx_bytes=r.rx_bytes,
                tx_bytes=r.tx_bytes,
                rx_packets=r.rx_packets,
                tx_packets=r.tx_packets,
                rx_peak_bytes_per_s=r.rx_peak_bytes_per_s,
                tx_peak_bytes_per_s=r.tx_peak_bytes_per_s,
            )
            for r in report.interfaces
        ),
    )


class BandwidthSpool:
    """Keeps reports until the server acknowledges them; see the module docstring."""

    def __init__(
        self,
        *,
        client: HttpClient,
        server: str,
        agent: str,
        alias: str,
        clock: Clock,
        rng: random.Random,
        max_reports: int = 3600,
        batch_max_reports: int = 100,
        request_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if max_reports < 1:
            raise ValueError(f"max_reports: {max_reports} is not >= 1")
        if not 1 <= batch_max_reports <= MAX_REPORTS_PER_BATCH:
            raise ValueError(
                f"batch_max_reports: {batch_max_reports} is not 1…{MAX_REPORTS_PER_BATCH}"
            )
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("backoff_initial_s must be > 0 and <= backoff_max_s")
        self._client = client
        self.url = f"{server.rstrip('/')}{BANDWIDTH_PATH}"
        self._agent = agent
        self._alias = alias
        self._clock = clock
        self._rng = rng
        self._max = max_reports
        self._batch_max = batch_max_reports
        self._timeout_s = request_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._prefix = secrets.token_hex(8)
        self._next_seq = 0
        self._pending: collections.deque[BandwidthReportModel] = collections.deque()
        self._in_flight: list[BandwidthReportModel] = []
        self._wakeup = asyncio.Event()
        self._delivered_event = asyncio.Event()
        self._submitted = 0
        self._delivered = 0
        self._duplicate = 0
        self._dropped = 0
        self._rejected = 0
        self._batches = 0
        self._failures = 0

    def submit(self, report: BandwidthReport) -> None:
        """Queue one report (the sampler's sink; never blocks)."""
        model = report_model(report, report_id=f"{self._prefix}-{self._next_seq:010d}")
        self._next_seq += 1
        self._submitted += 1
        self._pending.append(model)
        self._enforce_bound()
        self._wakeup.set()

    async def run(self) -> None:
        """Send reports in order until cancelled, retrying with backoff while sends fail."""
        failures = 0
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if await self._send_one_batch():
                failures = 0
                continue
            ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** min(failures, 30))
            failures += 1
            await asyncio.sleep(ceiling * self._rng.uniform(0.5, 1.0))

    async def flush(self, *, timeout_s: float) -> None:
        """On shutdown: try to send what waits, for at most ``timeout_s`` (kept if it fails)."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._pending and await self._send_one_batch():
                    pass
        except TimeoutError:
            logger.warning("bandwidth flush did not finish within %g s", timeout_s)

    async def wait_delivered(self, count: int) -> None:
        """Return once at least ``count`` reports have been acknowledged."""
        while self._delivered < count:
            self._delivered_event.clear()
            await self._delivered_event.wait()

    def statistics(self) -> SpoolStatistics:
        """A snapshot of the counters."""
        return SpoolStatistics(
            reports_submitted_total=self._submitted,
            reports_delivered_total=self._delivered,
            reports_duplicate_total=self._duplicate,
            reports_dropped_total=self._dropped,
            reports_rejected_total=self._rejected,
            reports_pending=len(self._pending) + len(self._in_flight),
            batches_sent_total=self._batches,
            send_failures_total=self._failures,
        )

    def _enforce_bound(self) -> None:
        while len(self._pending) + len(self._in_flight) > self._max and self._pending:
            self._pending.popleft()
            self._dropped += 1

    async def _send_one_batch(self) -> bool:
        """Send the oldest reports once; True if the server settled them (stored or refused)."""
        count = min(self._batch_max, len(self._pending))
        self._in_flight = [self._pending.popleft() for _ in range(count)]
        try:
            body = BandwidthBatchModel(
                agent=self._agent, alias=self._alias, reports=tuple(self._in_flight)
            ).model_dump_json()
            settled = await self._post(body.encode(), count)
        except BaseException:
            self._put_back()  # cancelled mid-send: nothing is lost
            raise
        if not settled:
            self._put_back()
            self._failures += 1
        else:
            self._in_flight = []
        return settled

    def _put_back(self) -> None:
        self._pending.extendleft(reversed(self._in_flight))
        self._in_flight = []
        self._enforce_bound()

    async def _post(self, body: bytes, count: int) -> bool:
        try:
            response = await self._client.request(
                "POST",
                self.url,
                headers={"Content-Type": "application/json"},
                body=body,
                timeout_s=self._timeout_s,
                max_body_bytes=64 * 1024,
            )
        except ControllerError as exc:
            logger.info("bandwidth upload failed: %s", exc)
            return False
        status = response.status
        if 200 <= status < 300:
            duplicate = 0
            try:
                duplicate = BandwidthAck.model_validate_json(response.body or b"").duplicate
            except ValidationError:
                logger.warning("bandwidth upload: unreadable acknowledgement")
            self._batches += 1
            self._delivered += count
            self._duplicate += min(max(duplicate, 0), count)
            self._delivered_event.set()
            return True
        if 400 <= status < 500 and status not in (401, 403, 408, 429):
            logger.warning(
                "server refused %d bandwidth reports: HTTP %d %s",
                count,
                status,
                response.text(),
            )
            self._rejected += count
            return True
        log = logger.error if status in (401, 403) else logger.info
        log("bandwidth upload: HTTP %d %s", status, response.text())
        return False
