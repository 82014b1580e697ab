"""The analysis runner: runs each windowed job when its window is due.

Theory of operation
-------------------
Pingmesh runs its analysis on fixed time scales (PM §3.5: 10 minutes, 1 hour, 1 day) plus a
faster counter path.  Here:

- The *fast* job runs every ``fast_every_s`` over the sliding window
  ``[end - fast_window_s, end)`` with ``end = floor(now - lag_s, fast_every_s)``: ``lag_s``
  leaves uploads time to arrive (agents batch for a few seconds, the collector group-commits),
  and aligning ``end`` makes every replica compute the same windows.  Missed fast windows are
  not made up: only the newest one matters to the dashboard.
- The *10-minute* job runs over each aligned window ``[k·W, (k+1)·W)`` once it has closed,
  i.e. once ``end + lag_s <= now``.  Windows missed while the runner was down are made up,
  oldest first, from the newest one already in the results database, but at most
  :data:`CATCH_UP_S` back (older ones are skipped and counted) and at most
  :data:`WINDOWS_PER_PASS` per pass, so that a long catch-up never starves the fast job.  A
  failed window is retried on the next pass, :data:`ATTEMPTS_PER_WINDOW` times in all, and
  then skipped (counted), so that one bad window cannot stall the ones after it.

Each job runs in a thread (DuckDB blocks) and writes its result in one transaction; a failure
is logged and counted and the loop goes on.  Cancelling :meth:`AnalysisRunner.run` lets the
job in progress finish first (a thread cannot be stopped), so the results database can be
closed right after.  Time comes from the injected clock only.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from pingmesh.analysis.jobs import WindowResult, compute_window, window_name
from pingmesh.clock import Clock
from pingmesh.config import AnalysisConfig
from pingmesh.store.raw import RawStore
from pingmesh.store.results import ResultsDB

log = logging.getLogger(__name__)

CATCH_UP_S = 86400
"""How far back the 10-minute job makes up missed windows."""

WINDOWS_PER_PASS = 6
"""At most this many 10-minute windows per pass (one pass every ``fast_every_s``)."""

ATTEMPTS_PER_WINDOW = 3
"""A 10-minute window that fails this many times is skipped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisStatistics:
    """A snapshot of the runner's counters (flat, for ``/metrics``).

    ``fast_*`` is the fast job (window ``fast_window``), ``ten_minute_*`` the 10-minute job;
    ``*_skipped_total`` counts windows given up (too old to catch up, or failed too often).
    Fields that are None have no value yet.
    """

    fast_window: str
    fast_runs_total: int
    fast_failures_total: int
    fast_last_duration_seconds: float | None
    fast_last_window_end_timestamp_seconds: int | None
    fast_last_records: int | None
    ten_minute_window: str
    ten_minute_runs_total: int
    ten_minute_failures_total: int
    ten_minute_skipped_total: int
    ten_minute_last_duration_seconds: float | None
    ten_minute_last_window_end_timestamp_seconds: int | None
    ten_minute_last_records: int | None


class _Job:
    """Mutable counters of one kind of job; only the event loop's thread touches them."""

    def __init__(self, window: str) -> None:
        self.window = window
        self.runs = 0
        self.failures = 0
        self.skipped = 0
        self.last_duration_s: float | None = None
        self.last_window_start: int | None = None
        self.last_window_end: int | None = None
        self.last_records: int | None = None


class AnalysisRunner:
    """Runs the fast and the 10-minute analysis jobs and stores their results."""

    def __init__(
        self, raw: RawStore, db: ResultsDB, config: AnalysisConfig, *, clock: Clock
    ) -> None:
        self._raw = raw
        self._db = db
        self._config = config
        self._clock = clock
        self._fast = _Job(window_name(config.fast_window_s))
        self._ten = _Job(window_name(config.ten_minute_window_s))
        self._last_fast_end: int | None = None
        self._last_ten_end: int | None = None  # None: not yet read from the results DB
        self._ten_attempts = 0  # failed attempts at the window after _last_ten_end

    def statistics(self) -> AnalysisStatistics:
        """A snapshot of the counters."""
        fast, ten = self._fast, self._ten
        return AnalysisStatistics(
            fast_window=fast.window,
            fast_runs_total=fast.runs,
            fast_failures_total=fast.failures,
            fast_last_duration_seconds=fast.last_duration_s,
            fast_last_window_end_timestamp_seconds=fast.last_window_end,
            fast_last_records=fast.last_records,
            ten_minute_window=ten.window,
            ten_minute_runs_total=ten.runs,
            ten_minute_failures_total=ten.failures,
            ten_minute_skipped_total=ten.skipped,
            ten_minute_last_duration_seconds=ten.last_duration_s,
            ten_minute_last_window_end_timestamp_seconds=ten.last_window_end,
            ten_minute_last_records=ten.last_records,
        )

    async def run(self) -> None:
        """Run the jobs as they fall due, until cancelled."""
        every_s = self._config.fast_every_s
        while True:
            await self.run_once(self._clock.now_s())
            # Wake when the next fast window has closed (its end plus the lag).
            now_s = self._clock.now_s()
            next_due_s = self._fast_end(now_s) + every_s + self._config.lag_s
            await asyncio.sleep(min(max(next_due_s - now_s, 0.05), every_s))

    async def run_once(self, now_s: float) -> None:
        """Run every job that is due at ``now_s``."""
        await self._run_fast(now_s)
        await self._run_ten_minute(now_s)

    def _fast_end(self, now_s: float) -> int:
        every_s = self._config.fast_every_s
        return int((now_s - self._config.lag_s) // every_s) * every_s

    async def _run_fast(self, now_s: float) -> None:
        end_s = self._fast_end(now_s)
        if self._last_fast_end is not None and end_s <= self._last_fast_end:
            return  # this window is done already
        self._last_fast_end = end_s
        await self._run_job(self._fast, end_s - self._config.fast_window_s, end_s, now_s)

    async def _run_ten_minute(self, now_s: float) -> None:
        length_s = self._config.ten_minute_window_s
        newest_end_s = int((now_s - self._config.lag_s) // length_s) * length_s
        if self._last_ten_end is None:
            try:
                done = await asyncio.to_thread(self._db.latest_window, self._ten.window)
            except Exception:
                log.exception("analysis: cannot read the last %s window", self._ten.window)
                self._ten.failures += 1
                return
            # A fresh database starts at the newest closed window: there is nothing it missed.
            last_end_s = newest_end_s - length_s if done is None else done.window_end
            self._last_ten_end = last_end_s // length_s * length_s
        oldest_end_s = newest_end_s - (CATCH_UP_S // length_s) * length_s + length_s
        if self._last_ten_end + length_s < oldest_end_s:
            skipped = (oldest_end_s - self._last_ten_end) // length_s - 1
            log.warning(
                "analysis: skipping %d %s windows older than %d s",
                skipped,
                self._ten.window,
                CATCH_UP_S,
            )
            self._ten.skipped += skipped
            self._last_ten_end = oldest_end_s - length_s
            self._ten_attempts = 0
        for _ in range(WINDOWS_PER_PASS):
            end_s = self._last_ten_end + length_s
            if end_s > newest_end_s:
                return
            if await self._run_job(self._ten, end_s - length_s, end_s, now_s):
                self._ten_attempts = 0
            else:
                self._ten_attempts += 1
                if self._ten_attempts < ATTEMPTS_PER_WINDOW:
                    return  # retry on the next pass
                log.error(
                    "analysis: giving up on %s window [%d, %d) after %d attempts",
                    self._ten.window,
                    end_s - length_s,
                    end_s,
                    self._ten_attempts,
                )
                self._ten.skipped += 1
                self._ten_attempts = 0
            self._last_ten_end = end_s

    async def _run_job(self, job: _Job, start_s: int, end_s: int, now_s: float) -> bool:
        """Compute and store one window; False (logged and counted) if that failed."""
        started_ns = self._clock.monotonic_ns()
        work = asyncio.get_running_loop().run_in_executor(
            None, self._compute_and_write, job.window, start_s, end_s, now_s
        )
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError:
            # The thread cannot be stopped: let it finish (and count it), so that whoever
            # cancelled us can close the results database without a job still writing to it.
            await asyncio.wait({work})
            self._account(job, work, start_s, end_s, started_ns)
            raise
        return self._account(job, work, start_s, end_s, started_ns)

    def _account(
        self,
        job: _Job,
        work: asyncio.Future[WindowResult],
        start_s: int,
        end_s: int,
        started_ns: int,
    ) -> bool:
        error = work.exception()
        if error is not None:
            # Any failure, ours or a bug, must not stop the other windows: log it with its
            # traceback, count it, go on.
            log.error(
                "analysis: %s window [%d, %d) failed: %s",
                job.window,
                start_s,
                end_s,
                error,
                exc_info=error,
            )
            job.failures += 1
            return False
        job.runs += 1
        job.last_duration_s = (self._clock.monotonic_ns() - started_ns) / 1e9
        job.last_window_start = start_s
        job.last_window_end = end_s
        job.last_records = work.result().window.records
        return True

    def _compute_and_write(
        self, window: str, start_s: int, end_s: int, now_s: float
    ) -> WindowResult:
        result = compute_window(self._raw, window, start_s, end_s, now_s=now_s)
        self._db.write_window(result.window, result.sla, result.matrix)
        return result
