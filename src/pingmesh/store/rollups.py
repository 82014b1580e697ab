"""The rollup store: each analysed window's histograms, as Parquet, a day per directory.

Layout::

    root/<window>/dt=YYYY-MM-DD/start=<unix seconds>/<part>.parquet

``<window>`` is the window kind (``10m``, ``1h``, ``1d``); the parts are the histograms of
:mod:`pingmesh.analysis.queries` (``sources``, ``cells``, and ``pairs`` when the window had few
enough server pairs to keep a histogram each) and the pairs that reported (``coverage``).
A 1-hour window is rolled up from the parts of its six 10-minute windows, a day from its 24
hours: rolled up, never recomputed from raw.

Why files and not tables of the results database: a window holds one row per (entity or cell,
latency bucket) — millions at fleet scale, every ten minutes. As zstd Parquet they take a
fraction of the space, DuckDB (or Spark) merges them without moving a row through Python, and
retention removes a whole day by deleting one directory, like the raw store's hours. The
results database keeps what people read: the SLA and matrix rows of every window.

A window is written into a hidden temporary directory, every file fsynced, then renamed into
place (replacing an earlier result for the same window): a reader sees a window whole or not at
all. Every method blocks on the disk; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pingmesh.errors import StoreError

PARTS: tuple[str, ...] = ("sources", "cells", "coverage", "pairs")
DAY_S = 86400
_KIND_RE = re.compile(r"^[0-9]+[smhd]$")
_START_RE = re.compile(r"^start=(\d+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class RollupStatistics:
    """Counters of one :class:`RollupStore` since it was opened."""

    windows_written_total: int
    bytes_written_total: int
    write_failures_total: int
    days_dropped_total: int


def _day(ts_s: int) -> str:
    return f"dt={datetime.fromtimestamp(ts_s, tz=UTC):%Y-%m-%d}"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RollupStore:
    """Parquet histograms of analysed windows under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._written = 0
        self._bytes = 0
        self._failures = 0
        self._dropped = 0

    def window_dir(self, window: str, start_s: int) -> Path:
        """Where the parts of one window live."""
        if not _KIND_RE.match(window):
            raise ValueError(f"window: {window!r} is not a window kind like 10m")
        return self.root / window / _day(start_s) / f"start={int(start_s)}"

    def write(self, window: str, start_s: int, writer: Callable[[Path], None]) -> Path:
        """Write one window: ``writer(directory)`` puts the part files into a fresh directory,
        which then replaces the window's directory whole. Returns the final directory."""
        final = self.window_dir(window, start_s)
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.mkdir(parents=True)
            writer(tmp)
            size = 0
            for path in tmp.iterdir():
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())
                size += path.stat().st_size
            _fsync_dir(tmp)
            old = None
            if final.exists():
                old = final.parent / f".{final.name}.{uuid.uuid4().hex}.old"
                final.rename(old)
            tmp.rename(final)
            _fsync_dir(final.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException as exc:
            with self._lock:
                self._failures += 1
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise StoreError(f"{final}: cannot write rollup window: {exc}") from exc
            raise
        with self._lock:
            self._written += 1
            self._bytes += size
        return final

    def starts(self, window: str, start_s: int, end_s: int) -> list[int]:
        """The starts of the stored windows of kind ``window`` in ``[start_s, end_s)``."""
        found: list[int] = []
        base = self.root / window
        try:
            days = sorted(base.glob("dt=*")) if base.is_dir() else []
            for day in days:
                for entry in day.iterdir():
                    match = _START_RE.match(entry.name)
                    if match and start_s <= int(match[1]) < end_s and entry.is_dir():
                        found.append(int(match[1]))
        except OSError as exc:
            raise StoreError(f"{base}: cannot list rollup windows: {exc}") from exc
        return sorted(found)

    def files(self, window: str, start_s: int, end_s: int, part: str) -> list[Path]:
        """The ``part`` files of the stored windows in ``[start_s, end_s)``."""
        if part not in PARTS:
            raise ValueError(f"part: {part!r} is not one of {PARTS}")
        out = []
        for start in self.starts(window, start_s, end_s):
            path = self.window_dir(window, start) / f"{part}.parquet"
            if path.is_file():
                out.append(path)
        return out

    def drop_before(self, ts_s: float) -> int:
        """Delete every day directory (of every window kind) that ends at or before ``ts_s``;
        returns how many."""
        dropped = 0
        try:
            kinds = [k for k in self.root.iterdir() if k.is_dir()] if self.root.is_dir() else []
            for kind in kinds:
                for day in sorted(kind.glob("dt=*")):
                    try:
                        start = datetime.strptime(day.name, "dt=%Y-%m-%d").replace(tzinfo=UTC)
                    except ValueError:
                        continue  # not ours
                    if start.timestamp() + DAY_S <= ts_s:
                        shutil.rmtree(day)
                        dropped += 1
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot drop old rollups: {exc}") from exc
        with self._lock:
            self._dropped += dropped
        return dropped

    def statistics(self) -> RollupStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return RollupStatistics(
                windows_written_total=self._written,
                bytes_written_total=self._bytes,
                write_failures_total=self._failures,
                days_dropped_total=self._dropped,
            )

    def remove_temporaries(self) -> int:
        """Remove directories left by writes that a crash interrupted; returns how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for tmp in self.root.glob("*/dt=*/.start=*"):
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
                removed += 1
        return removed
