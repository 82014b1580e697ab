"""The result spool: sealed result batches waiting for upload, on disk, capped in size.

Pingmesh keeps results in local files "whose total size is capped by configuration" besides
uploading them (PM §3.4.2). Here the waiting batches themselves live on disk, so that

- the agent's memory does not grow while the collector is unreachable (a batch of 5,000
  records is ~2 MB of JSON; only its small index entry stays in memory);
- batches survive a restart of the agent: at start-up the spool is read back, oldest first,
  and uploaded with the batch ids they were sealed with (the collector deduplicates);
- the disk use is bounded: the uploader drops the *oldest* batches (counted) to keep the
  spool under ``max_bytes``, since the freshest data matters most for alerting.

Each batch is one file ``b<seq>-<records>.json`` holding exactly the request body, written
under a temporary name and renamed, so a crash leaves whole files or none (no ``fsync``:
losing the last seconds of results in a power cut is acceptable, and an ``fsync`` per batch
is not free). The spool is synchronous: files are small and written every few seconds.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pingmesh.errors import ConfigError

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^b(\d{12})-(\d{1,9})\.json$")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolEntry:
    """One spooled batch."""

    seq: int
    records: int
    size_bytes: int
    path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolStatistics:
    """A snapshot of the spool."""

    files: int
    size_bytes: int
    max_bytes: int
    write_errors: int


class ResultSpool:
    """Batches as files under ``directory``; see the module docstring."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes: {max_bytes} is not >= 1")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._next_seq = 0
        self._files = 0
        self._size = 0
        self._write_errors = 0

    @property
    def size_bytes(self) -> int:
        """Bytes held now."""
        return self._size

    def open(self) -> list[SpoolEntry]:
        """Create the directory if needed; the batches already there, oldest first.

        A directory that cannot be created or listed is a ``ConfigError`` naming it.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            names = os.listdir(self.directory)
        except OSError as exc:
            raise ConfigError(
                f"field agent.spool_dir: cannot use {self.directory}: {exc.strerror or exc}"
            ) from exc
        entries: list[SpoolEntry] = []
        for name in names:
            path = self.directory / name
            if name.startswith(".") and name.endswith(".tmp"):
                self._unlink(path)  # a write that did not finish before a crash
                continue
            match = _NAME.match(name)
            if match is None:
                continue  # not ours: leave it alone
            try:
                size = path.stat().st_size
            except OSError:
                continue
            entries.append(
                SpoolEntry(
                    seq=int(match.group(1)), records=int(match.group(2)), size_bytes=size, path=path
                )
            )
        entries.sort(key=lambda e: e.seq)
        self._files = len(entries)
        self._size = sum(e.size_bytes for e in entries)
        self._next_seq = entries[-1].seq + 1 if entries else 0
        return entries

    def put(self, body: bytes, records: int) -> SpoolEntry | None:
        """Write one batch; ``None`` (counted, logged) if the disk refuses it."""
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"b{seq:012d}-{records}.json"
        tmp = self.directory / f".{path.name}.tmp"
        try:
            with tmp.open("wb") as stream:
                stream.write(body)
            tmp.rename(path)
        except OSError as exc:
            self._unlink(tmp)
            if self._write_errors == 0:
                logger.warning("cannot write to the result spool %s: %s", self.directory, exc)
            self._write_errors += 1
            return None
        self._files += 1
        self._size += len(body)
        return SpoolEntry(seq=seq, records=records, size_bytes=len(body), path=path)

    def read(self, entry: SpoolEntry) -> bytes | None:
        """The body of a spooled batch, or ``None`` if it cannot be read."""
        try:
            return entry.path.read_bytes()
        except OSError as exc:
            logger.warning("cannot read spooled batch %s: %s", entry.path, exc)
            return None

    def remove(self, entry: SpoolEntry) -> None:
        """Delete a batch (sent, rejected or dropped)."""
        if self._unlink(entry.path):
            self._files -= 1
            self._size -= entry.size_bytes

    def statistics(self) -> SpoolStatistics:
        """A snapshot of the spool."""
        return SpoolStatistics(
            files=self._files,
            size_bytes=self._size,
            max_bytes=self.max_bytes,
            write_errors=self._write_errors,
        )

    @staticmethod
    def _unlink(path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("cannot delete %s: %s", path, exc)
            return False
        return True
