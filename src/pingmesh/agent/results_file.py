"""Standalone results: one JSON line per probe (``ProbeRecordModel``), to a file or stdout.

Lines are encoded by :func:`~pingmesh.wire.results.encode_record` (the model's JSON; the
newer optional fields only when set) and collected in memory, then written in one ``write``
of whole lines by :meth:`ResultsFileWriter.flush` — every second (the agent calls it), when
64 KiB are waiting, and on close. One system call per probe would cost more than the probe's
own bookkeeping at hundreds of probes a second; whole lines per write mean a reader never sees
half a line.

A write error (disk full, closed pipe) is counted and logged once, never raised into the probe
loop: the agent keeps answering probes even when it cannot record its own. Lines that could
not be written count as errors.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pingmesh.core.probe import ProbeResult
from pingmesh.errors import ConfigError
from pingmesh.wire.results import encode_record

logger = logging.getLogger(__name__)

STDOUT = "-"
FLUSH_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultsFileStatistics:
    """A snapshot of the writer's counters."""

    written: int
    write_errors: int
    buffered: int  # lines waiting for the next flush


class ResultsFileWriter:
    """Appends probe records as JSON lines to ``target`` (a path, or ``"-"`` for stdout)."""

    def __init__(self, target: str) -> None:
        if not target:
            raise ConfigError("field agent.results_file: empty")
        self.target = target
        self._stream: TextIO | None = None
        self._lines: list[str] = []
        self._buffered_bytes = 0
        self._written = 0
        self._errors = 0

    def open(self) -> None:
        """Open the target for appending; a file that cannot be opened is a ``ConfigError``."""
        if self._stream is not None:
            return
        if self.target == STDOUT:
            self._stream = sys.stdout
            return
        try:
            self._stream = Path(self.target).open("a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(
                f"field agent.results_file: cannot open {self.target}: {exc.strerror}"
            ) from exc

    def write(self, result: ProbeResult) -> None:
        """Queue one record; errors are counted, not raised."""
        if self._stream is None:
            self._errors += 1
            return
        line = encode_record(result) + "\n"
        self._lines.append(line)
        self._buffered_bytes += len(line)
        if self._buffered_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write every queued line, whole, and flush the stream."""
        lines, self._lines, self._buffered_bytes = self._lines, [], 0
        if not lines:
            return
        stream = self._stream
        if stream is None:
            self._errors += len(lines)
            return
        try:
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            if self._errors == 0:
                logger.warning("cannot write results to %s: %s", self.target, exc)
            self._errors += len(lines)
            return
        self._written += len(lines)

    def close(self) -> None:
        """Flush and close (stdout is flushed, not closed)."""
        self.flush()
        stream, self._stream = self._stream, None
        if stream is None or stream is sys.stdout:
            return
        try:
            stream.close()
        except OSError as exc:
            logger.warning("cannot close results file %s: %s", self.target, exc)

    def statistics(self) -> ResultsFileStatistics:
        """A snapshot of the counters."""
        return ResultsFileStatistics(
            written=self._written, write_errors=self._errors, buffered=len(self._lines)
        )
