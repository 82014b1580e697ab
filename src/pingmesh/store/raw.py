"""The raw probe store: every probe record as uploaded, in Parquet files partitioned by hour.

Layout (Hive-style, so that DuckDB, Spark or any Parquet reader can prune by path)::

    root/dt=YYYY-MM-DD/hour=HH/part-<uuid>.parquet

The hour is the UTC hour of the probe's ``time``.  Files are immutable: a write creates new
files and never touches an existing one, so a reader always sees whole files.

A write is all or nothing, because the collector answers a failed write with 503 and the agent
retries the whole batch: a file left over from a failed attempt would store its rows twice.
So a write goes in two phases.  First every file of the call is written under a temporary name
in its partition directory (``.part-<uuid>.parquet.tmp``: hidden, and no reader's
``part-*.parquet`` glob matches it), flushed and fsynced.  Only then is each linked to its final
name (``link`` fails rather than overwrite), the temporary names removed and the directories
fsynced.  On any failure the call removes every file it made, temporary or final, and raises
:class:`~pingmesh.errors.StoreError`.  A crash before the second phase leaves only temporary
files, which the next :class:`RawStore` over the directory removes when it opens (counted in
``temp_files_removed_total``); a crash after it leaves complete files.  What POSIX cannot make
atomic is the second phase itself across several directories: a crash in the middle of it
(microseconds, and only for a batch that spans an hour boundary) keeps the hours already
linked.

The files are the single source of truth for what was stored, including which result batches
(``batch_id``) were: the collector rebuilds its deduplication memory at start-up from the
partitions that its horizon still needs.
Retention drops whole hour partitions.

Every method is synchronous and may block on the disk; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pingmesh.errors import StoreError

HOUR_S = 3600

RAW_SCHEMA = pa.schema(
    [
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("agent", pa.string(), nullable=False),  # the source server's topology name
        pa.field("src_addr", pa.string(), nullable=False),
        pa.field("src_port", pa.int32(), nullable=False),
        pa.field("dst", pa.string(), nullable=False),  # the destination's name in the pinglist
        pa.field("dst_addr", pa.string(), nullable=False),
        pa.field("dst_port", pa.int32(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("scope", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("rtt_us", pa.float64()),  # null when the probe failed
        pa.field("rtt_clock_us", pa.float64()),
        pa.field("retransmits", pa.int32(), nullable=False),
        pa.field("size_bytes", pa.int32(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        # Enrichment from the topology in force at ingest; null for a destination that the
        # topology does not name.  Stored rather than joined at query time so that a window
        # is analysed with the placement its probes were sent under.
        pa.field("src_tor", pa.string()),
        pa.field("src_podset", pa.string()),
        pa.field("src_dc", pa.string()),
        pa.field("dst_tor", pa.string()),
        pa.field("dst_podset", pa.string()),
        pa.field("dst_dc", pa.string()),
        # Host-noise signals and phases (issue 3); null when the probe kind has none, and in
        # files written before they existed.  Microseconds, like rtt_us.
        pa.field("send_lag_us", pa.float64()),
        pa.field("recv_lag_us", pa.float64()),
        pa.field("dwell_us", pa.float64()),
        pa.field("connect_us", pa.float64()),
        pa.field("tls_us", pa.float64()),
        pa.field("ttfb_us", pa.float64()),
        pa.field("seq", pa.int64()),
    ]
)
"""The columns of every raw-store file, in order."""

_PART_GLOB = "part-*.parquet"
_TEMP_GLOB = ".part-*.parquet.tmp"  # what a write leaves behind if the process dies mid-write


@dataclass(frozen=True, slots=True, kw_only=True)
class RawStoreStatistics:
    """Counters of one :class:`RawStore` since it was opened."""

    files_written_total: int
    rows_written_total: int
    bytes_written_total: int
    write_failures_total: int
    partitions_dropped_total: int
    temp_files_removed_total: int  # left behind by a crash, removed when the store opened


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pending:
    """One file of a write in progress: written under ``tmp``, to be linked to ``final``."""

    tmp: Path
    final: Path
    rows: int
    size_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    """One hour partition directory."""

    hour_start_s: int
    path: Path


class RawStore:
    """Parquet files under ``root``, one directory per UTC hour.

    Opening the store removes the temporary files that a crashed write left behind, so only
    one process may write a store at a time (the server's collector does).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._files_written = 0
        self._rows_written = 0
        self._bytes_written = 0
        self._write_failures = 0
        self._partitions_dropped = 0
        self._temp_files_removed = self._remove_temp_files()

    def _remove_temp_files(self) -> int:
        """Delete the temporary files of writes that never finished; returns how many."""
        removed = 0
        for partition in self.partitions():
            for path in partition.path.glob(_TEMP_GLOB):
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StoreError(f"{path}: cannot remove temporary file: {exc}") from exc
                removed += 1
        return removed

    # -- writing ----------------------------------------------------------------------------

    def write(self, table: pa.Table) -> list[Path]:
        """Store ``table`` (columns of :data:`RAW_SCHEMA`): one new file per UTC hour it spans.

        Returns the new files.  All or nothing: raises :class:`StoreError` naming the column
        or file at fault, and then no file of this call remains (see the module docstring).
        """
        table = _conform(table)
        if table.num_rows == 0:
            return []
        hours = pc.floor_temporal(table.column("time"), unit="hour")
        pending: list[_Pending] = []
        created: list[Path] = []  # directories this call made (hour, day, root), deepest first
        linked: list[Path] = []
        try:
            for hour in pc.unique(hours).to_pylist():
                part = table.filter(pc.equal(hours, pa.scalar(hour, type=hours.type)))
                # Sorted by time, the row groups' min/max statistics let readers skip them.
                pending.append(self._write_temp(hour, part.sort_by("time"), created))
            self._commit(pending, created, linked)
        except BaseException:
            self._undo(pending, created, linked)
            with self._lock:
                self._write_failures += 1
            raise
        with self._lock:
            self._files_written += len(pending)
            self._rows_written += sum(p.rows for p in pending)
            self._bytes_written += sum(p.size_bytes for p in pending)
        return [p.final for p in pending]

    def _write_temp(self, hour: datetime, part: pa.Table, created: list[Path]) -> _Pending:
        """Phase one: ``part`` complete and fsynced under a temporary name in its partition."""
        day = self.root / f"dt={hour:%Y-%m-%d}"
        directory = day / f"hour={hour:%H}"
        name = f"part-{uuid.uuid4().hex}.parquet"
        final = directory / name
        tmp = directory / f".{name}.tmp"  # no reader's glob matches a hidden .tmp file
        try:
            for path in (self.root, day, directory):
                if not path.is_dir():
                    # Raises if anything is in the way, a file included.
                    path.mkdir(parents=path == self.root)
                    created.insert(0, path)
            fh = tmp.open("xb")
            try:
                with fh:
                    pq.write_table(part, fh, compression="zstd")
                    fh.flush()
                    os.fsync(fh.fileno())
                    size = fh.tell()
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{final}: cannot write raw-store file: {exc}") from exc
        return _Pending(tmp=tmp, final=final, rows=part.num_rows, size_bytes=size)

    def _commit(self, pending: list[_Pending], created: list[Path], linked: list[Path]) -> None:
        """Phase two: every temporary file to its final name, then the names to the disk."""
        for p in pending:
            try:
                os.link(p.tmp, p.final)  # unlike rename, link never replaces an existing file
            except OSError as exc:
                raise StoreError(f"{p.final}: cannot write raw-store file: {exc}") from exc
            linked.append(p.final)
        for p in pending:
            _unlink(p.tmp)
        # The new names must reach the disk too, and so must new directories.
        directories = {p.final.parent for p in pending} | {d.parent for d in created}
        for directory in sorted(directories, key=lambda d: -len(d.parts)):
            try:
                _fsync_dir(directory)
            except OSError as exc:
                raise StoreError(f"{directory}: cannot sync raw-store directory: {exc}") from exc

    def _undo(self, pending: list[_Pending], created: list[Path], linked: list[Path]) -> None:
        """Remove every file and directory a failed write made (best effort: it is failing)."""
        for path in [*linked, *(p.tmp for p in pending)]:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        for directory in created:  # deepest first; one that is not empty is not only ours
            with contextlib.suppress(OSError):
                directory.rmdir()
        for directory in {p.final.parent for p in pending} - set(created):
            with contextlib.suppress(OSError):  # so that the removals reach the disk too
                _fsync_dir(directory)

    # -- reading ----------------------------------------------------------------------------

    def parquet_glob(self) -> str:
        """A glob that matches every file of the store (for engines that take a path)."""
        return str(self.root / "dt=*" / "hour=*" / _PART_GLOB)

    def partitions(self) -> list[Partition]:
        """Every hour partition, oldest first."""
        found: list[Partition] = []
        try:
            day_dirs = sorted(self.root.glob("dt=*"))
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot list the raw store: {exc}") from exc
        for day_dir in day_dirs:
            for hour_dir in sorted(day_dir.glob("hour=*")):
                start = _partition_start_s(day_dir.name, hour_dir.name)
                if start is not None and hour_dir.is_dir():
                    found.append(Partition(hour_start_s=start, path=hour_dir))
        return found

    def files_between(self, start_s: float, end_s: float) -> list[Path]:
        """The files of the hour partitions that overlap ``[start_s, end_s)``, sorted.

        Rows inside these files may still fall outside the interval: readers filter on
        ``time`` as well; this only spares them the partitions they do not need.
        """
        files: list[Path] = []
        for partition in self.partitions():
            if partition.hour_start_s < end_s and partition.hour_start_s + HOUR_S > start_s:
                files.extend(sorted(partition.path.glob(_PART_GLOB)))
        return files

    def batch_ids_by_file(self, since_s: float) -> Iterator[tuple[int, set[str]]]:
        """Each file of the hour partitions that end after ``since_s``: its hour, its batch ids.

        Oldest hour first.  Partitions are chosen by the records' time, so the answer holds
        every batch with a record at or after ``since_s`` (and possibly a few older ones); a
        batch with records in two hours is in both.  One file at a time, so that a caller can
        keep the ids in a compact form without ever holding many of them as strings.
        """
        for partition in self.partitions():
            if partition.hour_start_s + HOUR_S <= since_s:
                continue
            for path in sorted(partition.path.glob(_PART_GLOB)):
                try:
                    # Read as a dictionary: each chunk's distinct ids come without
                    # materialising one string per row (a file holds many rows per batch).
                    column = pq.read_table(
                        path, columns=["batch_id"], read_dictionary=["batch_id"]
                    ).column("batch_id")
                except (OSError, pa.ArrowException) as exc:
                    raise StoreError(f"{path}: cannot read raw-store file: {exc}") from exc
                ids: set[str] = set()
                for chunk in column.chunks:
                    ids.update(v for v in chunk.dictionary.to_pylist() if v is not None)
                yield partition.hour_start_s, ids

    # -- retention --------------------------------------------------------------------------

    def drop_partitions_before(self, ts_s: float) -> int:
        """Delete every hour partition that ends at or before ``ts_s``; returns how many."""
        dropped = 0
        for partition in self.partitions():
            if partition.hour_start_s + HOUR_S > ts_s:
                continue
            try:
                shutil.rmtree(partition.path)
            except OSError as exc:
                raise StoreError(f"{partition.path}: cannot drop partition: {exc}") from exc
            dropped += 1
            day_dir = partition.path.parent
            with contextlib.suppress(OSError):  # not empty: other hours of that day remain
                day_dir.rmdir()
        with self._lock:
            self._partitions_dropped += dropped
        return dropped

    def statistics(self) -> RawStoreStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return RawStoreStatistics(
                files_written_total=self._files_written,
                rows_written_total=self._rows_written,
                bytes_written_total=self._bytes_written,
                write_failures_total=self._write_failures,
                partitions_dropped_total=self._partitions_dropped,
                temp_files_removed_total=self._temp_files_removed,
            )


def _conform(table: pa.Table) -> pa.Table:
    """``table`` with exactly the columns and types of :data:`RAW_SCHEMA`, or StoreError."""
    missing = [name for name in RAW_SCHEMA.names if name not in table.column_names]
    if missing:
        raise StoreError(f"raw table: column {missing[0]!r} is missing")
    extra = [name for name in table.column_names if name not in RAW_SCHEMA.names]
    if extra:
        raise StoreError(f"raw table: column {extra[0]!r} is not in the raw schema")
    table = table.select(RAW_SCHEMA.names)
    for field in RAW_SCHEMA:
        if not field.nullable and table.column(field.name).null_count:
            raise StoreError(f"raw table: column {field.name!r} has nulls")
    try:
        return table.cast(RAW_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StoreError(f"raw table: does not fit the raw schema: {exc}") from exc


def _partition_start_s(day: str, hour: str) -> int | None:
    try:
        start = datetime.strptime(f"{day} {hour}", "dt=%Y-%m-%d hour=%H").replace(tzinfo=UTC)
    except ValueError:
        return None  # not one of ours; leave it alone
    return int(start.timestamp())


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError as exc:
        raise StoreError(f"{path}: cannot remove temporary file: {exc}") from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
