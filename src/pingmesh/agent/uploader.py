"""The uploader: probe results → batches → ``POST {controller}/api/v1/results``.

Theory of operation
-------------------
Results are appended to an open batch; the batch is sealed every ``interval_s`` or when it
reaches ``max_batch_records``. A sealed batch gets a unique ``batch_id`` and its JSON body is
built once, so every retry sends the same bytes and the collector can deduplicate by id.

Sealed batches wait either in memory or, with a :class:`~pingmesh.agent.spool.ResultSpool`,
on disk (then they survive a restart and cost no memory while the collector is away). Both are
bounded (PM §3.4.2: "the in-memory data is dropped after several retries"; local files "whose
total size is capped"):

- in memory, at most ``max_pending_batches`` wait; on disk, at most the spool's ``max_bytes``.
  When a new batch would exceed the bound, the *oldest* waiting batches are dropped (the
  freshest data is the most useful for alerting) and counted;
- a batch is tried at most ``attempts`` times with jittered exponential backoff (honouring a
  ``Retry-After`` up to the backoff cap), then dropped and counted;
- a 4xx answer other than 408/429 means the collector will never accept this batch, so it is
  not retried but counted as rejected.

Every record ends in exactly one counter, so
``submitted + recovered == sent + dropped (all reasons) + buffered + pending`` at all times
(``recovered``: records found in the spool at start-up).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from pingmesh.agent.http_client import HttpClient, HttpResponse
from pingmesh.agent.spool import ResultSpool, SpoolEntry, SpoolStatistics
from pingmesh.clock import Clock
from pingmesh.core.probe import ProbeResult
from pingmesh.errors import ControllerError
from pingmesh.wire.results import encode_batch, encode_record

logger = logging.getLogger(__name__)


class DropReason(enum.StrEnum):
    """Why records were dropped (the label of the drop counters)."""

    RETRIES_EXHAUSTED = "retries_exhausted"
    QUEUE_FULL = "queue_full"  # the in-memory queue or the spool was full: oldest dropped
    REJECTED = "rejected"
    SHUTDOWN = "shutdown"
    SPOOL_ERROR = "spool_error"  # the spool could not write or read the batch


class _Answer(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True, kw_only=True)
class UploaderStatistics:
    """A snapshot of the uploader's counters."""

    records_submitted: int
    records_recovered: int  # found in the spool at start-up
    records_sent: int
    records_buffered: int  # in the open batch
    records_pending: int  # in sealed batches waiting (or being sent)
    records_dropped: tuple[tuple[DropReason, int], ...]
    batches_sent: int
    batches_retried: int  # retry attempts, not batches
    batches_rejected: int
    batches_dropped: tuple[tuple[DropReason, int], ...]
    pending_batches: int
    spool: SpoolStatistics | None

    def dropped_records(self, reason: DropReason | None = None) -> int:
        """Records dropped for ``reason`` (all reasons without one)."""
        return sum(n for r, n in self.records_dropped if reason is None or r is reason)

    def dropped_batches(self, reason: DropReason | None = None) -> int:
        """Batches dropped for ``reason`` (all reasons without one)."""
        return sum(n for r, n in self.batches_dropped if reason is None or r is reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Batch:
    batch_id: str
    records: int
    body: bytes | None = None  # in memory
    entry: SpoolEntry | None = None  # or on disk


class Uploader:
    """Batches results and uploads them; see the module docstring."""

    def __init__(
        self,
        *,
        client: HttpClient,
        controller: str,
        agent_name: str,
        clock: Clock,
        rng: random.Random,
        interval_s: float,
        max_batch_records: int,
        attempts: int,
        timeout_s: float,
        max_pending_batches: int,
        spool: ResultSpool | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        for field, value in (("interval_s", interval_s), ("timeout_s", timeout_s)):
            if not value > 0:
                raise ValueError(f"{field}: {value} is not > 0")
        for field, count in (
            ("max_batch_records", max_batch_records),
            ("attempts", attempts),
            ("max_pending_batches", max_pending_batches),
        ):
            if count < 1:
                raise ValueError(f"{field}: {count} is not >= 1")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError(
                f"backoff_initial_s: {backoff_initial_s} must be > 0 and <= backoff_max_s"
            )
        self._client = client
        self.url = f"{controller.rstrip('/')}/api/v1/results"
        self._agent_name = agent_name
        self._pinglist_version: str | None = None
        self._clock = clock
        self._rng = rng
        self._interval_s = interval_s
        self._max_batch_records = max_batch_records
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._max_pending = max_pending_batches
        self._spool = spool
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        # A per-process random prefix + a sequence number: unique across agents and restarts
        # without coordination, and never repeated by a seeded test rng.
        self._id_prefix = secrets.token_hex(8)
        self._next_seq = 0
        self._buffer: list[str] = []
        self._pending: collections.deque[_Batch] = collections.deque()
        self._in_flight: _Batch | None = None
        self._wakeup = asyncio.Event()
        self._submitted = 0
        self._recovered = 0
        self._records_sent = 0
        self._batches_sent = 0
        self._retries = 0
        self._rejected = 0
        self._records_dropped = dict.fromkeys(DropReason, 0)
        self._batches_dropped = dict.fromkeys(DropReason, 0)

    def set_identity(self, *, agent_name: str, pinglist_version: str | None) -> None:
        """Name the agent and pinglist version in batches sealed from now on."""
        self._agent_name = agent_name
        self._pinglist_version = pinglist_version

    def recover(self) -> int:
        """Queue the batches a previous run left in the spool (oldest first); how many."""
        if self._spool is None:
            return 0
        entries = self._spool.open()
        for entry in entries:
            self._pending.append(
                _Batch(batch_id=f"spool-{entry.seq}", records=entry.records, entry=entry)
            )
            self._recovered += entry.records
        if entries:
            logger.info("result spool: %d batches from a previous run to upload", len(entries))
            self._wakeup.set()
        return len(entries)

    def submit(self, result: ProbeResult) -> None:
        """Queue one result (never blocks; a full batch is sealed at once)."""
        self._buffer.append(encode_record(result))
        self._submitted += 1
        if len(self._buffer) >= self._max_batch_records:
            self.seal()

    def seal(self) -> None:
        """Close the open batch (if it has records) and queue it for sending."""
        if not self._buffer:
            return
        records, self._buffer = self._buffer, []
        batch_id = f"{self._id_prefix}-{self._next_seq:010d}"
        self._next_seq += 1
        body = encode_batch(
            batch_id=batch_id,
            agent=self._agent_name,
            pinglist_version=self._pinglist_version,
            sent_at=datetime.fromtimestamp(self._clock.now_s(), tz=UTC),
            records=records,
        )
        if self._spool is None:
            self._pending.append(_Batch(batch_id=batch_id, records=len(records), body=body))
            while len(self._pending) > self._max_pending:
                self._drop(self._pending.popleft(), DropReason.QUEUE_FULL)
        else:
            spool = self._spool
            batch = _Batch(batch_id=batch_id, records=len(records))
            if len(body) > spool.max_bytes:
                self._drop(batch, DropReason.QUEUE_FULL)
                return
            # The batch being sent stays until it is settled, so the spool can exceed its cap
            # by at most that one batch.
            while self._pending and spool.size_bytes + len(body) > spool.max_bytes:
                self._drop(self._pending.popleft(), DropReason.QUEUE_FULL)
            entry = spool.put(body, len(records))
            if entry is None:
                self._drop(batch, DropReason.SPOOL_ERROR)
                return
            self._pending.append(_Batch(batch_id=batch_id, records=len(records), entry=entry))
        self._wakeup.set()

    async def run(self) -> None:
        """Seal every ``interval_s`` and send batches in order, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._seal_periodically(), name="uploader-seal")
            tasks.create_task(self._send_forever(), name="uploader-send")

    async def flush(self, *, timeout_s: float) -> None:
        """Seal, then try every waiting batch once within ``timeout_s``.

        For shutdown. Without a spool, what cannot be sent now is dropped and counted (reason
        ``shutdown``); with one, it stays on disk for the next start.
        """
        self.seal()
        try:
            async with asyncio.timeout(timeout_s):
                while self._pending:
                    batch = self._pending[0]
                    body = self._body(batch)
                    if body is None:
                        self._pending.popleft()
                        self._drop(batch, DropReason.SPOOL_ERROR)
                        continue
                    answer = await self._post(batch, body)
                    if answer.answer is _Answer.RETRY and self._spool is not None:
                        break  # keep it (and the rest) on disk
                    self._pending.popleft()
                    self._settle(batch, answer, final=True)
        except TimeoutError:
            logger.warning("upload flush did not finish within %g s", timeout_s)
        if self._spool is None:
            while self._pending:
                self._drop(self._pending.popleft(), DropReason.SHUTDOWN)

    def statistics(self) -> UploaderStatistics:
        """A snapshot of the counters."""
        waiting = list(self._pending)
        if self._in_flight is not None:
            waiting.append(self._in_flight)
        return UploaderStatistics(
            records_submitted=self._submitted,
            records_recovered=self._recovered,
            records_sent=self._records_sent,
            records_buffered=len(self._buffer),
            records_pending=sum(b.records for b in waiting),
            records_dropped=tuple(self._records_dropped.items()),
            batches_sent=self._batches_sent,
            batches_retried=self._retries,
            batches_rejected=self._rejected,
            batches_dropped=tuple(self._batches_dropped.items()),
            pending_batches=len(waiting),
            spool=self._spool.statistics() if self._spool is not None else None,
        )

    async def _seal_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self.seal()

    async def _send_forever(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._pending.popleft()
            self._in_flight = batch
            try:
                await self._send_with_retries(batch)
            except asyncio.CancelledError:
                # Not lost: flush() (or a later run) still gets its chance to send it.
                self._pending.appendleft(batch)
                raise
            finally:
                self._in_flight = None

    def _body(self, batch: _Batch) -> bytes | None:
        if batch.body is not None:
            return batch.body
        assert batch.entry is not None
        assert self._spool is not None
        return self._spool.read(batch.entry)

    async def _send_with_retries(self, batch: _Batch) -> None:
        body = self._body(batch)
        if body is None:
            self._drop(batch, DropReason.SPOOL_ERROR)
            return
        delay_s = 0.0
        for attempt in range(self._attempts):
            if attempt > 0:
                self._retries += 1
                await asyncio.sleep(delay_s)
            answer = await self._post(batch, body)
            if answer.answer is not _Answer.RETRY:
                self._settle(batch, answer, final=True)
                return
            delay_s = self._backoff_s(attempt, answer.retry_after_s)
        self._drop(batch, DropReason.RETRIES_EXHAUSTED)
        logger.warning(
            "dropped batch %s (%d records) after %d attempts",
            batch.batch_id,
            batch.records,
            self._attempts,
        )

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff, jittered over its upper half; a Retry-After (capped) wins."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self._backoff_max_s)
        ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2.0**attempt)
        return ceiling * self._rng.uniform(0.5, 1.0)

    async def _post(self, batch: _Batch, body: bytes) -> _PostAnswer:
        try:
            response = await self._client.request(
                "POST",
                self.url,
                body=body,
                headers={"Content-Type": "application/json"},
                timeout_s=self._timeout_s,
                max_body_bytes=64 * 1024,
            )
        except ControllerError as exc:
            logger.info("upload of batch %s failed: %s", batch.batch_id, exc)
            return _PostAnswer(answer=_Answer.RETRY)
        status = response.status
        if 200 <= status < 300:
            return _PostAnswer(answer=_Answer.SENT)
        if 400 <= status < 500 and status not in (408, 429):
            logger.warning(
                "collector rejected batch %s: HTTP %d %s",
                batch.batch_id,
                status,
                response.text(),
            )
            return _PostAnswer(answer=_Answer.REJECTED)
        return _PostAnswer(answer=_Answer.RETRY, retry_after_s=_retry_after_s(response))

    def _settle(self, batch: _Batch, answer: _PostAnswer, *, final: bool) -> None:
        if answer.answer is _Answer.SENT:
            self._batches_sent += 1
            self._records_sent += batch.records
            self._forget(batch)
        elif answer.answer is _Answer.REJECTED:
            self._rejected += 1
            self._drop(batch, DropReason.REJECTED)
        elif final:
            self._drop(batch, DropReason.SHUTDOWN)

    def _drop(self, batch: _Batch, reason: DropReason) -> None:
        self._batches_dropped[reason] += 1
        self._records_dropped[reason] += batch.records
        self._forget(batch)

    def _forget(self, batch: _Batch) -> None:
        if batch.entry is not None and self._spool is not None:
            self._spool.remove(batch.entry)


@dataclass(frozen=True, slots=True, kw_only=True)
class _PostAnswer:
    answer: _Answer
    retry_after_s: float | None = None


def _retry_after_s(response: HttpResponse) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: rare from our own collector; use our backoff
