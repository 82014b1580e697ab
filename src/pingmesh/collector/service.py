"""The collector: validates result batches, deduplicates them and group-commits them to Parquet.

Theory of operation
-------------------
*Acknowledged means on disk.*  :meth:`Collector.submit` returns only after the batch's rows
are in a fsynced Parquet file, so an agent may forget a batch once it has the answer.

*Group commit.*  Writing one Parquet file per batch would give thousands of tiny files an
hour and an fsync per upload.  Instead, submissions join the *pending group* and wait on its
shared future; every ``flush_interval_s`` (sooner when :data:`FLUSH_EARLY_RECORDS` are
waiting) the flush loop hands the whole group to a thread that turns it into one table and
writes it (one file per hour it spans), then settles the future: every submitter of the group
gets its answer at once.  At most one group is being written while the next one fills.

*Idempotence.*  A retried upload carries the same ``batch_id``.  The collector remembers the
ids it stored within ``dedup_horizon_s`` (:class:`~pingmesh.collector.dedup.BatchIdMemory`:
hour buckets of 16-byte digests, rebuilt at start-up from the raw store's partitions inside
the horizon, because the files are the single source of truth) and also checks the groups
that are pending or being written: a duplicate that arrives while the original is still
waiting waits for the same write and is then answered ``duplicate``, so a batch is stored
once however its copies interleave, across restarts too.

*The horizon is enforced, not assumed.*  Nothing on the agent's side bounds how late a copy
can come: its uploader gives a batch ``upload_attempts`` tries within one run, but its spool
(``agent.spool_dir``) is bounded by bytes only, and an agent restarted after any time sends
what the spool kept, with the original ids.  So a batch with a record older than the horizon
is *refused* (422, counted in ``batches_too_old_total``; the agent drops it and counts it as
rejected) rather than accepted: past the horizon its id may be forgotten, and accepting it
could store a batch twice without anyone knowing, which double-counts probes in every SLA
computed over that hour.  Refusing loses only data older than the horizon (6 h by default),
long after it could have raised an alert, and loses it visibly on both sides.  This is what
makes the horizon exact: a batch young enough to be accepted is young enough to be found.

*Nothing acknowledged is lost.*  When the flush loop is cancelled it stops accepting, waits
for the write in progress and writes what is pending before it re-raises.  A failed write
answers every submitter of its group with :class:`StoreError` (HTTP 503; the agent retries),
and their ids are not remembered, so the retry is stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pingmesh.clock import Clock
from pingmesh.collector.dedup import BatchIdMemory
from pingmesh.config import CollectorConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.probe import Outcome
from pingmesh.core.topology import Server, Topology
from pingmesh.errors import BatchError, StoreError, UnknownServerError
from pingmesh.store.raw import RAW_SCHEMA, RawStore
from pingmesh.wire import SCHEMA_VERSION
from pingmesh.wire.results import BatchAck, ProbeRecordModel, ResultBatchModel

log = logging.getLogger(__name__)

MAX_RTT_US = 600e6
"""An RTT above 10 minutes is garbage: probes time out after at most a minute."""

MAX_RETRANSMITS = 1000
MAX_SIZE_BYTES = 1 << 20
"""Far above the 64 KiB probe payload cap, so only garbage is refused."""

MAX_FUTURE_S = 300.0
"""How far ahead of the collector's clock an agent's record may be (clock skew)."""

CLOCK_STEP_SLACK_S = 300.0
"""Ids are kept this long past the horizon, in case the collector's own clock steps back."""

FLUSH_EARLY_RECORDS = 100_000
"""Flush before the interval ends once this many records are pending."""

MAX_PENDING_RECORDS = 1_000_000
"""Refuse (HTTP 503, the agent retries) beyond this many records waiting for the disk."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorStatistics:
    """Counters (``_total``) of the collector since it started, and its current backlog."""

    batches_accepted_total: int
    batches_duplicate_total: int
    batches_rejected_total: int  # bad input or unknown agent
    batches_too_old_total: int  # of the rejected: a record older than the dedup horizon
    batches_busy_total: int  # refused because too much was waiting for the disk
    batches_failed_total: int  # in a group whose write failed
    records_stored_total: int
    files_written_total: int
    flush_failures_total: int
    pending_batches: int
    dedup_ids: int
    dedup_buckets: int
    dedup_size_bytes: int
    dedup_expired_ids_total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    batch: ResultBatchModel
    source: Server
    topology: Topology  # as in force when the batch arrived: the enrichment follows it
    oldest_s: float  # the time of its oldest record: when its id may be forgotten


class _Group:
    """Batches that are written together and answered together."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.entries: dict[str, _Entry] = {}
        self.records = 0
        self.done = done


class Collector:
    """Accepts result batches and stores each exactly once in the raw store."""

    def __init__(
        self,
        raw: RawStore,
        source: TopologySource,
        config: CollectorConfig,
        *,
        clock: Clock,
        on_upload: Callable[[str, str], None] | None = None,
    ) -> None:
        self._raw = raw
        self._source = source
        self._config = config
        self._clock = clock
        self._on_upload = on_upload
        self._dedup = self._new_dedup()  # replaced by the rebuilt one in start()
        self._started = False
        self._running = False
        self._pending: _Group | None = None
        self._writing: _Group | None = None
        self._write: asyncio.Future[list[Path]] | None = None
        self._flush_soon = asyncio.Event()
        self._running_event = asyncio.Event()
        self._accepted = 0
        self._duplicate = 0
        self._rejected = 0
        self._too_old = 0
        self._busy = 0
        self._failed = 0
        self._records_stored = 0
        self._files_written = 0
        self._flush_failures = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the memory of stored batch ids from the raw store (idempotent).

        Only the hour partitions that the horizon still needs are read, one file at a time.
        """
        if self._started:
            return
        self._dedup = await asyncio.to_thread(self._rebuild_dedup, self._clock.now_s())
        self._started = True
        log.info(
            "collector: %d batch ids remembered from the raw store", self._dedup.statistics().ids
        )

    def _new_dedup(self) -> BatchIdMemory:
        return BatchIdMemory(horizon_s=self._config.dedup_horizon_s, slack_s=CLOCK_STEP_SLACK_S)

    def _rebuild_dedup(self, now_s: float) -> BatchIdMemory:
        """In a thread: the ids of the partitions that the horizon still needs, from the files.

        Built apart and swapped in whole, so that statistics() never sees it half built.
        """
        dedup = self._new_dedup()
        for hour_start_s, ids in self._raw.batch_ids_by_file(dedup.oldest_needed_s(now_s)):
            dedup.add_stored(hour_start_s, ids)
        return dedup

    async def run(self) -> None:
        """Flush pending batches every ``flush_interval_s`` until cancelled.

        On cancellation: stop accepting, finish the write in progress, write what is pending,
        then re-raise.  :meth:`submit` works only while this runs.
        """
        await self.start()
        self._pending = self._new_group()
        self._running = True
        self._running_event.set()
        try:
            while True:
                try:
                    async with asyncio.timeout(self._config.flush_interval_s):
                        await self._flush_soon.wait()
                except TimeoutError:
                    pass
                self._flush_soon.clear()
                await self._flush()
        finally:
            self._running = False
            self._running_event.clear()
            await self._drain()

    async def wait_running(self) -> None:
        """Return once :meth:`run` accepts submissions."""
        await self._running_event.wait()

    async def _drain(self) -> None:
        try:
            await self._wait_for_write()
            await self._flush()
        except BaseException:
            # Cancelled again, or the write failed: nobody may wait forever for an answer.
            self._fail_unsettled(StoreError("the collector stopped before the batch was stored"))
            raise

    # -- submissions ------------------------------------------------------------------------

    async def submit(self, batch: ResultBatchModel) -> BatchAck:
        """Store ``batch`` once; return when its rows are on disk (or it is a duplicate).

        Raises :class:`UnknownServerError` if the topology does not name the agent,
        :class:`BatchError` for an unusable batch (the message names the field), and
        :class:`StoreError` if the batch could not be stored (the agent should retry).
        """
        if not self._running or self._pending is None:
            raise StoreError("the collector is not running")
        topology = self._source.topology
        now_s = self._clock.now_s()
        self._dedup.expire(now_s)
        try:
            server, oldest_s = self._check(batch, topology, now_s)
        except (UnknownServerError, BatchError):
            self._rejected += 1
            raise
        if self._dedup.contains(batch.batch_id, oldest_s):
            self._duplicate += 1
            return BatchAck(batch_id=batch.batch_id, accepted=0, duplicate=True)
        for group in (self._pending, self._writing):
            if group is not None and batch.batch_id in group.entries:
                # The original is on its way to disk: answer once we know it got there.
                await asyncio.shield(group.done)
                self._duplicate += 1
                return BatchAck(batch_id=batch.batch_id, accepted=0, duplicate=True)
        group = self._pending
        if group.records + len(batch.records) > MAX_PENDING_RECORDS and group.entries:
            self._busy += 1
            raise StoreError(
                f"collector busy: {group.records} records are waiting for the disk; retry later"
            )
        group.entries[batch.batch_id] = _Entry(
            batch=batch, source=server, topology=topology, oldest_s=oldest_s
        )
        group.records += len(batch.records)
        if group.records >= FLUSH_EARLY_RECORDS:
            self._flush_soon.set()
        # Shielded: a submitter that goes away (client disconnect) must not cancel the group.
        await asyncio.shield(group.done)
        return BatchAck(batch_id=batch.batch_id, accepted=len(batch.records), duplicate=False)

    def _check(
        self, batch: ResultBatchModel, topology: Topology, now_s: float
    ) -> tuple[Server, float]:
        """The batch's source server and the time of its oldest record (``now_s`` if none).

        Makes the checks that the wire model cannot make.
        """
        server = topology.server(batch.agent)
        if server is None:
            raise UnknownServerError(batch.agent)
        if batch.schema_version != SCHEMA_VERSION:
            raise BatchError(
                f"schema_version: {batch.schema_version} is not supported "
                f"(this collector speaks {SCHEMA_VERSION})"
            )
        horizon_s = self._config.dedup_horizon_s
        too_old_s = now_s - horizon_s
        newest_s = now_s + MAX_FUTURE_S
        oldest_s = math.inf
        for index, record in enumerate(batch.records):
            where = f"records.{index}"
            at_s = record.time.timestamp()
            oldest_s = min(oldest_s, at_s)
            if at_s < too_old_s:
                self._too_old += 1
                raise BatchError(
                    f"{where}.time: {record.time.isoformat()} is older than the collector's "
                    f"deduplication horizon ({horizon_s:g} s): a copy of a batch stored that "
                    "long ago could no longer be recognised"
                )
            if at_s > newest_s:
                raise BatchError(
                    f"{where}.time: {record.time.isoformat()} is more than {MAX_FUTURE_S:g} s "
                    "ahead of the collector's clock"
                )
            if record.outcome is Outcome.OK and record.rtt_us is None:
                raise BatchError(f"{where}.rtt_us: a successful probe must have an RTT")
            for name in ("rtt_us", "rtt_clock_us"):
                value = getattr(record, name)
                if value is not None and not (math.isfinite(value) and value <= MAX_RTT_US):
                    raise BatchError(f"{where}.{name}: {value} is not a plausible RTT")
            if record.retransmits > MAX_RETRANSMITS:
                raise BatchError(f"{where}.retransmits: {record.retransmits} is implausible")
            if record.size_bytes > MAX_SIZE_BYTES:
                raise BatchError(f"{where}.size_bytes: {record.size_bytes} is implausible")
        return server, oldest_s if batch.records else now_s

    # -- flushing ---------------------------------------------------------------------------

    def _new_group(self) -> _Group:
        return _Group(asyncio.get_running_loop().create_future())

    async def _flush(self) -> None:
        """Write the pending group (if any) and wait until it is settled."""
        await self._wait_for_write()
        self._dedup.expire(self._clock.now_s())
        group = self._pending
        if group is None or not group.entries:
            return
        self._pending = self._new_group()
        self._writing = group
        # A plain executor future, not a task: nobody can cancel it, so the group is always
        # settled by the callback once the thread is done, whoever stopped waiting.
        write = asyncio.get_running_loop().run_in_executor(
            None, self._write_group, list(group.entries.values())
        )
        self._write = write
        write.add_done_callback(functools.partial(self._settle, group))
        await self._wait_for_write()

    async def _wait_for_write(self) -> None:
        if self._write is not None:
            await asyncio.wait({self._write})  # never raises the write's error, never cancels

    def _write_group(self, entries: list[_Entry]) -> list[Path]:
        """In a thread: the group as one table, written to the raw store."""
        return self._raw.write(_to_table(entries))

    def _settle(self, group: _Group, write: asyncio.Future[list[Path]]) -> None:
        """Answer every submitter of ``group`` (runs in the event loop when the write ends)."""
        if self._write is write:
            self._write = None
        if self._writing is group:
            self._writing = None
        error = StoreError("the write was cancelled") if write.cancelled() else write.exception()
        if error is not None:
            self._flush_failures += 1
            self._failed += len(group.entries)
            log.error("collector: writing %d batches failed: %s", len(group.entries), error)
            failure = StoreError(f"cannot store the batch: {error}")
            failure.__cause__ = error
            _fail(group.done, failure)
            return
        for batch_id, entry in group.entries.items():
            self._dedup.add(batch_id, entry.oldest_s)
        self._accepted += len(group.entries)
        self._records_stored += group.records
        self._files_written += len(write.result())
        if not group.done.done():
            group.done.set_result(None)
        if self._on_upload is not None:
            for entry in group.entries.values():
                self._notify(entry.source)

    def _notify(self, server: Server) -> None:
        assert self._on_upload is not None
        try:
            self._on_upload(server.name, server.address)
        except Exception:
            # The batch is stored and acknowledged; bookkeeping must not turn that into an
            # error the agent would retry.
            log.exception("collector: on_upload failed for %s", server.name)

    def _fail_unsettled(self, error: StoreError) -> None:
        for group in (self._pending, self._writing):
            if group is not None:
                _fail(group.done, error)

    # -- statistics -------------------------------------------------------------------------

    def statistics(self) -> CollectorStatistics:
        """A snapshot of the counters."""
        pending = sum(len(g.entries) for g in (self._pending, self._writing) if g is not None)
        dedup = self._dedup.statistics()
        return CollectorStatistics(
            batches_accepted_total=self._accepted,
            batches_duplicate_total=self._duplicate,
            batches_rejected_total=self._rejected,
            batches_too_old_total=self._too_old,
            batches_busy_total=self._busy,
            batches_failed_total=self._failed,
            records_stored_total=self._records_stored,
            files_written_total=self._files_written,
            flush_failures_total=self._flush_failures,
            pending_batches=pending,
            dedup_ids=dedup.ids,
            dedup_buckets=dedup.buckets,
            dedup_size_bytes=dedup.size_bytes,
            dedup_expired_ids_total=dedup.expired_ids_total,
        )


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: a group that nobody waits for is not an error


_RECORD_COLUMNS = tuple(name for name in RAW_SCHEMA.names if name in ProbeRecordModel.model_fields)
"""The raw columns that are fields of the record itself, stored as they are (enums by value)."""

_PLACEMENT = ("tor", "podset", "dc")
"""The enrichment: ``src_<level>`` and ``dst_<level>`` from the topology."""


def _to_table(entries: list[_Entry]) -> pa.Table:
    """The raw-store rows of ``entries``, enriched with the placement of source and destination.

    Column by column rather than record by record: one conversion for every field, so a
    field added to both the record and :data:`RAW_SCHEMA` is stored without touching this.
    """
    columns: dict[str, list[Any]] = {name: [] for name in RAW_SCHEMA.names}
    for entry in entries:
        batch, records = entry.batch, entry.batch.records
        for name in _RECORD_COLUMNS:
            columns[name].extend(getattr(record, name) for record in records)
        columns["batch_id"].extend([batch.batch_id] * len(records))
        columns["agent"].extend([batch.agent] * len(records))
        dsts = [entry.topology.server(record.dst) for record in records]
        for level in _PLACEMENT:
            columns[f"src_{level}"].extend([getattr(entry.source, level)] * len(records))
            columns[f"dst_{level}"].extend(
                None if dst is None else getattr(dst, level) for dst in dsts
            )
    return pa.Table.from_pydict(columns, schema=RAW_SCHEMA)
