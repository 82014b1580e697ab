"""The raw probe store: every probe record as uploaded, in Parquet files partitioned by hour.

Layout (Hive-style, so that DuckDB, Spark or any Parquet reader can prune by path)::

    root/dt=YYYY-MM-DD/hour=HH/part-<uuid>.parquet

The hour is the UTC hour of the probe's ``time``.  Files are immutable: a write creates new
files and never touches an existing one, so a reader always sees whole files.  Each file is
written under a temporary name in its partition directory, flushed and fsynced, then linked to
its final name (``link`` fails rather than overwrite) and the directory fsynced: after a crash
a file is either complete or absent.

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


@dataclass(frozen=True, slots=True, kw_only=True)
class RawStoreStatistics:
    """Counters of one :class:`RawStore` since it was opened."""

    files_written_total: int
    rows_written_total: int
    bytes_written_total: int
    write_failures_total: int
    partitions_dropped_total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    """One hour partition directory."""

    hour_start_s: int
    path: Path


class RawStore:
    """Parquet files under ``root``, one directory per UTC hour."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._files_written = 0
        self._rows_written = 0
        self._bytes_written = 0
        self._write_failures = 0
        self._partitions_dropped = 0

    # -- writing ----------------------------------------------------------------------------

    def write(self, table: pa.Table) -> list[Path]:
        """Store ``table`` (columns of :data:`RAW_SCHEMA`): one new file per UTC hour it spans.

        Returns the new files.  Raises :class:`StoreError` naming the column or file at fault;
        files already written by this call stay (they are complete, and the caller learns that
        the write failed, so it does not acknowledge the rows).
        """
        table = _conform(table)
        if table.num_rows == 0:
            return []
        hours = pc.floor_temporal(table.column("time"), unit="hour")
        written: list[Path] = []
        try:
            for hour in pc.unique(hours).to_pylist():
                part = table.filter(pc.equal(hours, pa.scalar(hour, type=hours.type)))
                # Sorted by time, the row groups' min/max statistics let readers skip them.
                written.append(self._write_part(hour, part.sort_by("time")))
        except BaseException:
            with self._lock:
                self._write_failures += 1
            raise
        return written

    def _write_part(self, hour: datetime, part: pa.Table) -> Path:
        directory = self.root / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}"
        name = f"part-{uuid.uuid4().hex}.parquet"
        final = directory / name
        tmp = directory / f".{name}.tmp"  # no reader's glob matches a hidden .tmp file
        try:
            created = not directory.is_dir()
            directory.mkdir(parents=True, exist_ok=True)
            with tmp.open("xb") as fh:
                pq.write_table(part, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
            os.link(tmp, final)  # unlike rename, link never replaces an existing file
            tmp.unlink()
            # The new name must reach the disk too, and so must new partition directories.
            _fsync_dir(directory)
            if created:
                _fsync_dir(directory.parent)
                _fsync_dir(self.root)
        except (OSError, pa.ArrowException) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"{final}: cannot write raw-store file: {exc}") from exc
        with self._lock:
            self._files_written += 1
            self._rows_written += part.num_rows
            self._bytes_written += size
        return final

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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
