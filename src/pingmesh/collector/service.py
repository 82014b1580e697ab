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
ids it stored within ``dedup_horizon_s`` (in memory, rebuilt from the raw store's files at
start-up, because the files are the single source of truth) and also checks the groups that
are pending or being written: a duplicate that arrives while the original is still waiting
waits for the same write and is then answered ``duplicate``, so a batch is stored once
however its copies interleave.  Records older than the horizon are refused, which is what
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
from pingmesh.config import CollectorConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.probe import Outcome
from pingmesh.core.topology import Server, Topology
from pingmesh.errors import BatchError, StoreError, UnknownServerError
from pingmesh.store.raw import RAW_SCHEMA, RawStore
from pingmesh.wire import SCHEMA_VERSION
from pingmesh.wire.results import BatchAck, ResultBatchModel

log = logging.getLogger(__name__)

MAX_RTT_US = 600e6
"""An RTT above 10 minutes is garbage: probes time out after at most a minute."""

MAX_RETRANSMITS = 1000
MAX_SIZE_BYTES = 1 << 20
"""Far above the 64 KiB probe payload cap, so only garbage is refused."""

MAX_FUTURE_S = 300.0
"""How far ahead of the collector's clock an agent's record may be (clock skew)."""

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
    batches_busy_total: int  # refused because too much was waiting for the disk
    batches_failed_total: int  # in a group whose write failed
    records_stored_total: int
    files_written_total: int
    flush_failures_total: int
    pending_batches: int
    dedup_ids: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    batch: ResultBatchModel
    source: Server
    topology: Topology  # as in force when the batch arrived: the enrichment follows it


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
        self._seen: dict[str, float] = {}  # batch id -> when stored; insertion = time order
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
        self._busy = 0
        self._failed = 0
        self._records_stored = 0
        self._files_written = 0
        self._flush_failures = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the set of stored batch ids from the raw store (idempotent)."""
        if self._started:
            return
        now_s = self._clock.now_s()
        ids = await asyncio.to_thread(self._raw.batch_ids_since, now_s - self._horizon_s)
        for batch_id in ids:
            self._seen.setdefault(batch_id, now_s)
        self._started = True
        log.info("collector: %d batch ids remembered from the raw store", len(ids))

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
        self._forget_expired(now_s)
        try:
            server = self._check(batch, topology, now_s)
        except (UnknownServerError, BatchError):
            self._rejected += 1
            raise
        if batch.batch_id in self._seen:
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
        group.entries[batch.batch_id] = _Entry(batch=batch, source=server, topology=topology)
        group.records += len(batch.records)
        if group.records >= FLUSH_EARLY_RECORDS:
            self._flush_soon.set()
        # Shielded: a submitter that goes away (client disconnect) must not cancel the group.
        await asyncio.shield(group.done)
        return BatchAck(batch_id=batch.batch_id, accepted=len(batch.records), duplicate=False)

    @property
    def _horizon_s(self) -> float:
        return self._config.dedup_horizon_s

    def _check(self, batch: ResultBatchModel, topology: Topology, now_s: float) -> Server:
        """The batch's source server, after the checks that the wire model cannot make."""
        server = topology.server(batch.agent)
        if server is None:
            raise UnknownServerError(batch.agent)
        if batch.schema_version != SCHEMA_VERSION:
            raise BatchError(
                f"schema_version: {batch.schema_version} is not supported "
                f"(this collector speaks {SCHEMA_VERSION})"
            )
        oldest_s = now_s - self._horizon_s
        newest_s = now_s + MAX_FUTURE_S
        for index, record in enumerate(batch.records):
            where = f"records.{index}"
            at_s = record.time.timestamp()
            if at_s < oldest_s:
                raise BatchError(
                    f"{where}.time: {record.time.isoformat()} is older than the collector's "
                    f"deduplication horizon ({self._horizon_s:g} s)"
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
        return server

    def _forget_expired(self, now_s: float) -> None:
        # A batch stored at t has records up to t + MAX_FUTURE_S; a copy of it is refused as
        # too old once its records are older than the horizon, so only then may its id go.
        oldest_s = now_s - self._horizon_s - MAX_FUTURE_S
        # Ids were inserted in time order, so the expired ones are at the front.
        while self._seen:
            batch_id, stored_s = next(iter(self._seen.items()))
            if stored_s >= oldest_s:
                return
            del self._seen[batch_id]

    # -- flushing ---------------------------------------------------------------------------

    def _new_group(self) -> _Group:
        return _Group(asyncio.get_running_loop().create_future())

    async def _flush(self) -> None:
        """Write the pending group (if any) and wait until it is settled."""
        await self._wait_for_write()
        self._forget_expired(self._clock.now_s())
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
        now_s = self._clock.now_s()
        for batch_id in group.entries:
            self._seen[batch_id] = now_s
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
        return CollectorStatistics(
            batches_accepted_total=self._accepted,
            batches_duplicate_total=self._duplicate,
            batches_rejected_total=self._rejected,
            batches_busy_total=self._busy,
            batches_failed_total=self._failed,
            records_stored_total=self._records_stored,
            files_written_total=self._files_written,
            flush_failures_total=self._flush_failures,
            pending_batches=pending,
            dedup_ids=len(self._seen),
        )


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: a group that nobody waits for is not an error


def _to_table(entries: list[_Entry]) -> pa.Table:
    """The raw-store rows of ``entries``, enriched with the placement of source and destination."""
    columns: dict[str, list[Any]] = {name: [] for name in RAW_SCHEMA.names}
    for entry in entries:
        batch, src = entry.batch, entry.source
        for record in batch.records:
            dst = entry.topology.server(record.dst)
            columns["time"].append(record.time)
            columns["batch_id"].append(batch.batch_id)
            columns["agent"].append(batch.agent)
            columns["src_addr"].append(record.src_addr)
            columns["src_port"].append(record.src_port)
            columns["dst"].append(record.dst)
            columns["dst_addr"].append(record.dst_addr)
            columns["dst_port"].append(record.dst_port)
            columns["kind"].append(record.kind.value)
            columns["scope"].append(record.scope.value)
            columns["outcome"].append(record.outcome.value)
            columns["rtt_us"].append(record.rtt_us)
            columns["rtt_clock_us"].append(record.rtt_clock_us)
            columns["retransmits"].append(record.retransmits)
            columns["size_bytes"].append(record.size_bytes)
            columns["detail"].append(record.detail)
            columns["src_tor"].append(src.tor)
            columns["src_podset"].append(src.podset)
            columns["src_dc"].append(src.dc)
            columns["dst_tor"].append(None if dst is None else dst.tor)
            columns["dst_podset"].append(None if dst is None else dst.podset)
            columns["dst_dc"].append(None if dst is None else dst.dc)
            columns["send_lag_us"].append(record.send_lag_us)
            columns["recv_lag_us"].append(record.recv_lag_us)
            columns["dwell_us"].append(record.dwell_us)
            columns["connect_us"].append(record.connect_us)
            columns["tls_us"].append(record.tls_us)
            columns["ttfb_us"].append(record.ttfb_us)
            columns["seq"].append(record.seq)
    return pa.Table.from_pydict(columns, schema=RAW_SCHEMA)
