"""Which raw files can hold probes of a time range, without opening them twice.

An hour partition of the raw store holds a file per collector flush (one a second under load),
and the fast path asks for 10 seconds at a time: listing the hour's files and letting DuckDB
open every footer would cost more than the slice itself. Raw files are immutable, so the range
of ``time`` in each (the min and max of its row groups' statistics) is read once, from the
footer, and kept; a file is read only when its range overlaps the slice. Files without
statistics are always read. Entries of files that disappeared (retention) are forgotten.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pingmesh.errors import StoreError
from pingmesh.store.raw import RawStore

_UNKNOWN = (float("-inf"), float("inf"))


@dataclass(frozen=True, slots=True, kw_only=True)
class FileIndexStatistics:
    """Counters of the index."""

    files_indexed: int
    footers_read_total: int
    files_skipped_total: int
    files_selected_total: int


def _seconds(value: object) -> float | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def time_range(path: Path) -> tuple[float, float]:
    """(min, max) of ``time`` in a Parquet file, from its footer; ±inf when unknown."""
    try:
        metadata = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"{path}: cannot read raw-store file: {exc}") from exc
    names = metadata.schema.names
    if "time" not in names:
        return _UNKNOWN
    column = names.index("time")
    low, high = float("inf"), float("-inf")
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            return _UNKNOWN
        lo, hi = _seconds(stats.min), _seconds(stats.max)
        if lo is None or hi is None:
            return _UNKNOWN
        low, high = min(low, lo), max(high, hi)
    return (low, high) if low <= high else _UNKNOWN


class RawFileIndex:
    """The time range of every raw file, read once (see the module docstring)."""

    def __init__(self, raw: RawStore) -> None:
        self._raw = raw
        self._lock = threading.Lock()
        self._ranges: dict[Path, tuple[float, float]] = {}
        self._footers = 0
        self._skipped = 0
        self._selected = 0

    def files_overlapping(self, start_s: float, end_s: float) -> list[Path]:
        """The files that may hold probes sent in ``[start_s, end_s)``, sorted."""
        listed = self._raw.files_between(start_s, end_s)
        chosen: list[Path] = []
        for path in listed:
            with self._lock:
                known = self._ranges.get(path)
            if known is None:
                known = time_range(path)
                with self._lock:
                    self._ranges[path] = known
                    self._footers += 1
            if known[1] >= start_s and known[0] < end_s:
                chosen.append(path)
        with self._lock:
            self._selected += len(chosen)
            self._skipped += len(listed) - len(chosen)
        return chosen

    def forget_missing(self) -> int:
        """Drop the entries of files that no longer exist; returns how many."""
        with self._lock:
            paths = list(self._ranges)
        gone = [p for p in paths if not p.exists()]
        with self._lock:
            for path in gone:
                self._ranges.pop(path, None)
        return len(gone)

    def statistics(self) -> FileIndexStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return FileIndexStatistics(
                files_indexed=len(self._ranges),
                footers_read_total=self._footers,
                files_skipped_total=self._skipped,
                files_selected_total=self._selected,
            )
