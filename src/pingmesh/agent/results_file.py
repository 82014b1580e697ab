"""Standalone results: one JSON line per probe (``ProbeRecordModel``), to a file or stdout.

A write error (disk full, closed pipe) is counted and logged once, never raised into the probe
loop: the agent keeps answering probes even when it cannot record its own.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pingmesh.core.probe import ProbeResult
from pingmesh.errors import ConfigError
from pingmesh.wire.results import ProbeRecordModel

logger = logging.getLogger(__name__)

STDOUT = "-"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultsFileStatistics:
    """A snapshot of the writer's counters."""

    written: int
    write_errors: int


class ResultsFileWriter:
    """Appends probe records as JSON lines to ``target`` (a path, or ``"-"`` for stdout)."""

    def __init__(self, target: str) -> None:
        if not target:
            raise ConfigError("field agent.results_file: empty")
        self.target = target
        self._stream: TextIO | None = None
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
            # Line buffering: every record reaches the file as soon as it is complete, so a
            # reader (or a crash) never sees half a line.
            self._stream = Path(self.target).open("a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(
                f"field agent.results_file: cannot open {self.target}: {exc.strerror}"
            ) from exc

    def write(self, result: ProbeResult) -> None:
        """Write one record; errors are counted, not raised."""
        if self._stream is None:
            self._errors += 1
            return
        line = ProbeRecordModel.from_result(result).model_dump_json()
        try:
            self._stream.write(line + "\n")
            if self._stream is sys.stdout:
                self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            if self._errors == 0:
                logger.warning("cannot write results to %s: %s", self.target, exc)
            self._errors += 1
            return
        self._written += 1

    def close(self) -> None:
        """Flush and close (stdout is flushed, not closed)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            if stream is sys.stdout:
                stream.flush()
            else:
                stream.close()
        except OSError as exc:
            logger.warning("cannot close results file %s: %s", self.target, exc)

    def statistics(self) -> ResultsFileStatistics:
        """A snapshot of the counters."""
        return ResultsFileStatistics(written=self._written, write_errors=self._errors)
