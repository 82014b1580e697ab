"""The analysis runner: runs each job when its window is due.

Theory of operation
-------------------
Pingmesh runs its analysis on fixed time scales (PM §3.5: 10 minutes, 1 hour, 1 day) plus a
faster counter path. Here there are four, each built from the one before:

- The **fast** path runs every ``fast_every_s``. Its window is ``[end - fast_window_s, end)``
  with ``end = floor(now - lag_s, fast_every_s)``: ``lag_s`` leaves uploads time to arrive
  (agents batch for a few seconds, the collector group-commits), and aligning ``end`` makes
  every replica compute the same windows. Raw data is read once, a slice of ``fast_every_s``
  at a time (:mod:`.fastpath`); the window is the merge of its slices. Its SLA and matrix rows
  are written, and the detectors run on it (:mod:`.detect`): incidents open here, within
  seconds. Missed fast windows are not made up: only the newest one matters for alerts.
- The **10-minute** job runs over each aligned window ``[k·W, (k+1)·W)`` once it has closed
  (``end + lag_s <= now``), from raw, and keeps the window's histograms in the rollup store.
  Windows missed while the runner was down are made up, oldest first, from the newest one
  already in the results database, but at most :data:`CATCH_UP_S` back (older ones are skipped
  and counted) and at most :data:`WINDOWS_PER_PASS` per pass, so that a long catch-up never
  starves the fast path. A failed window is retried on the next pass,
  :data:`ATTEMPTS_PER_WINDOW` times in all, and then skipped (counted).
- The **1-hour** and **1-day** jobs roll up the histograms of the kind below once all of its
  windows in the hour (day) are done: rolled up, never recomputed from raw. The 10-minute
  window is computed from raw rather than from the fast slices because it is the record: it
  waits for late uploads and it is complete even when fast slices were skipped.
- **Retention** (:mod:`.retention`) runs every ``retention.every_s``.

Each job runs in a thread (DuckDB blocks) and writes its result in one transaction; a failure
is logged and counted and the loop goes on. Cancelling :meth:`AnalysisRunner.run` lets the job
in progress finish first (a thread cannot be stopped), so the results database can be closed
right after. Time comes from the injected clock only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pingmesh.analysis.detect import DetectionStatistics, IncidentDetector
from pingmesh.analysis.engine import Expected
from pingmesh.analysis.expected import ExpectedCache
from pingmesh.analysis.fastpath import FastPath, FastPathStatistics
from pingmesh.analysis.fileindex import FileIndexStatistics, RawFileIndex
from pingmesh.analysis.jobs import (
    JobOptions,
    WindowResult,
    compute_window,
    rollup_window,
    window_name,
)
from pingmesh.analysis.retention import apply_retention
from pingmesh.clock import Clock
from pingmesh.config import AnalysisConfig, PinglistConfig
from pingmesh.controller.tasks import TracerouteService
from pingmesh.controller.topology_source import TopologySource
from pingmesh.store.incidents import IncidentStore
from pingmesh.store.raw import RawStore
from pingmesh.store.results import ResultsDB
from pingmesh.store.rollups import RollupStore

log = logging.getLogger(__name__)

T = TypeVar("T")

CATCH_UP_S = 86400
"""How far back the 10-minute job makes up missed windows."""

WINDOWS_PER_PASS = 6
"""At most this many 10-minute windows per pass (one pass every ``fast_every_s``)."""

ATTEMPTS_PER_WINDOW = 3
"""A window that fails this many times is skipped."""

HOUR_S = 3600
DAY_S = 86400
ROLLUP_CATCH_UP = {HOUR_S: 48, DAY_S: 7}
"""How many missed windows each rollup kind makes up."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisStatistics:
    """A snapshot of the runner's counters (flat, for ``/metrics``).

    ``fast_*`` is the fast path (window ``fast_window``), ``ten_minute_*`` the 10-minute job,
    ``hour_*`` and ``day_*`` the rollups; ``*_skipped_total`` counts windows given up (too old
    to catch up, or failed too often). Fields that are None have no value yet.
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
    hour_runs_total: int = 0
    hour_failures_total: int = 0
    hour_skipped_total: int = 0
    hour_last_duration_seconds: float | None = None
    hour_last_window_end_timestamp_seconds: int | None = None
    day_runs_total: int = 0
    day_failures_total: int = 0
    day_skipped_total: int = 0
    day_last_duration_seconds: float | None = None
    day_last_window_end_timestamp_seconds: int | None = None
    retention_runs_total: int = 0
    retention_failures_total: int = 0
    retention_raw_partitions_dropped_total: int = 0
    retention_rollup_days_dropped_total: int = 0
    retention_result_rows_deleted_total: int = 0


class _Job:
    """Mutable counters and progress of one kind of job; only the event loop's thread
    touches them."""

    def __init__(self, window: str, length_s: int) -> None:
        self.window = window
        self.length_s = length_s
        self.runs = 0
        self.failures = 0
        self.skipped = 0
        self.last_duration_s: float | None = None
        self.last_window_start: int | None = None
        self.last_window_end: int | None = None
        self.last_records: int | None = None
        self.done_end: int | None = None  # None: not yet read from the results DB
        self.attempts = 0  # failed attempts at the window after done_end


class AnalysisRunner:
    """Runs the fast path, the 10-minute job, the rollups and retention; stores the results.

    Everything but ``raw``, ``db`` and ``config`` is optional: without ``source`` there is no
    detection and no coverage; without ``rollups`` no 1 h / 1 d windows; without ``incidents``
    no detection.
    """

    def __init__(
        self,
        raw: RawStore,
        db: ResultsDB,
        config: AnalysisConfig,
        *,
        clock: Clock,
        source: TopologySource | None = None,
        pinglist: PinglistConfig | None = None,
        rollups: RollupStore | None = None,
        incidents: IncidentStore | None = None,
        traces: TracerouteService | None = None,
        options: JobOptions | None = None,
    ) -> None:
        self._raw = raw
        self._db = db
        self._config = config
        self._clock = clock
        self._source = source
        self._rollups = rollups
        if rollups is not None:
            rollups.remove_temporaries()  # what a crash left half-written
        self._traces = traces
        noise = config.incidents
        self._options = options or JobOptions(
            lag_us=noise.host_noise_lag_us,
            dwell_us=noise.host_noise_dwell_us,
            pair_cells_max=config.pair_cells_max,
        )
        self._expected = ExpectedCache(pinglist or PinglistConfig()) if source else None
        self.index = RawFileIndex(raw)
        every = config.fast_every_s
        horizon = max(
            -(-config.incidents.silent_drop_horizon_s // every) * every, config.fast_window_s
        )
        self.fast_path = FastPath(
            self.index,
            every_s=every,
            window_s=config.fast_window_s,
            horizon_s=horizon,
            options=self._options,
            tor_cells_max=config.fast_tor_cells_max,
        )
        self.detector = (
            IncidentDetector(
                incidents,
                config.incidents,
                traces=traces,
                vote_window_s=config.traceroute.vote_window_s,
                vote_min_flows=config.traceroute.vote_min_flows,
                traces_per_finding=config.traceroute.per_incident,
            )
            if incidents is not None and source is not None and config.detect
            else None
        )
        self._fast = _Job(window_name(config.fast_window_s), config.fast_window_s)
        self._ten = _Job(window_name(config.ten_minute_window_s), config.ten_minute_window_s)
        self._hour = _Job("1h", HOUR_S)
        self._day = _Job("1d", DAY_S)
        self._last_fast_end: int | None = None
        self._retention_runs = 0
        self._retention_failures = 0
        self._retention_next_s: float | None = None
        self._dropped_partitions = 0
        self._dropped_days = 0
        self._deleted_rows = 0

    # -- statistics ----------------------------------------------------------------------------

    def statistics(self) -> AnalysisStatistics:
        """A snapshot of the counters."""
        fast, ten, hour, day = self._fast, self._ten, self._hour, self._day
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
            hour_runs_total=hour.runs,
            hour_failures_total=hour.failures,
            hour_skipped_total=hour.skipped,
            hour_last_duration_seconds=hour.last_duration_s,
            hour_last_window_end_timestamp_seconds=hour.last_window_end,
            day_runs_total=day.runs,
            day_failures_total=day.failures,
            day_skipped_total=day.skipped,
            day_last_duration_seconds=day.last_duration_s,
            day_last_window_end_timestamp_seconds=day.last_window_end,
            retention_runs_total=self._retention_runs,
            retention_failures_total=self._retention_failures,
            retention_raw_partitions_dropped_total=self._dropped_partitions,
            retention_rollup_days_dropped_total=self._dropped_days,
            retention_result_rows_deleted_total=self._deleted_rows,
        )

    def detection_statistics(self) -> DetectionStatistics | None:
        """The detector's counters (None without detection)."""
        return self.detector.statistics() if self.detector is not None else None

    def fast_path_statistics(self) -> FastPathStatistics:
        """The fast path's counters."""
        return self.fast_path.statistics()

    def file_index_statistics(self) -> FileIndexStatistics:
        """The raw file index's counters."""
        return self.index.statistics()

    # -- loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the jobs as they fall due, until cancelled."""
        every_s = self._config.fast_every_s
        try:
            while True:
                await self.run_once(self._clock.now_s())
                # Wake when the next fast window has closed (its end plus the lag).
                now_s = self._clock.now_s()
                next_due_s = self._fast_end(now_s) + every_s + self._config.lag_s
                await asyncio.sleep(min(max(next_due_s - now_s, 0.05), every_s))
        finally:
            self.fast_path.close()

    async def run_once(self, now_s: float) -> None:
        """Run every job that is due at ``now_s``."""
        await self._run_fast(now_s)
        await self._run_ten_minute(now_s)
        if self._rollups is not None and self._config.rollups:
            await self._run_rollup(self._hour, self._ten, now_s)
            await self._run_rollup(self._day, self._hour, now_s)
        await self._run_retention(now_s)

    async def _in_thread(
        self, fn: Callable[[], T], *, finished: Callable[[T], None] | None = None
    ) -> T:
        """Run ``fn`` in a worker thread; if cancelled, let it finish first (and hand a
        successful result to ``finished``, so it is counted), then re-raise."""
        work = asyncio.get_running_loop().run_in_executor(None, fn)
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError:
            # The thread cannot be stopped: let it finish, so that whoever cancelled us can
            # close the results database without a job still writing to it.
            await asyncio.wait({work})
            if finished is not None and not work.cancelled() and work.exception() is None:
                finished(work.result())
            raise
        return work.result()

    def _expected_now(self) -> Expected:
        if self._expected is None or self._source is None:
            return Expected.empty()
        return self._expected.get(self._source.topology)

    # -- fast ----------------------------------------------------------------------------------

    def _fast_end(self, now_s: float) -> int:
        every_s = self._config.fast_every_s
        return int((now_s - self._config.lag_s) // every_s) * every_s

    async def _run_fast(self, now_s: float) -> None:
        end_s = self._fast_end(now_s)
        if self._last_fast_end is not None and end_s <= self._last_fast_end:
            return  # this window is done already
        self._last_fast_end = end_s
        job = self._fast
        start_s = end_s - self._config.fast_window_s
        started_ns = self._clock.monotonic_ns()

        def done(records: int) -> None:
            self._account(job, start_s, end_s, records, started_ns)

        try:
            records = await self._in_thread(
                lambda: self._fast_pass(start_s, end_s, now_s), finished=done
            )
        except Exception:  # any failure must not stop the loop: log, count, go on
            log.exception("analysis: %s window [%d, %d) failed", job.window, start_s, end_s)
            job.failures += 1
            return
        done(records)

    def _fast_pass(self, start_s: int, end_s: int, now_s: float) -> int:
        every_s = self._config.fast_every_s
        for slice_start in range(start_s, end_s, every_s):
            if not self.fast_path.has_slice(slice_start):
                self.fast_path.add_slice(slice_start, slice_start + every_s)
        expected = self._expected_now()
        result, facts = self.fast_path.run_window(
            self._fast.window, start_s, end_s, now_s=now_s, expected=expected
        )
        self._db.write_window(result.window, result.sla, result.matrix)
        if self.detector is not None and self._source is not None:
            try:
                seen = {
                    a.name: a.last_upload_s
                    for a in self._db.agents()
                    if a.last_upload_s is not None
                }
                self.detector.run(self._source.topology, facts, last_seen_s=seen, now_s=now_s)
            except Exception:
                self.detector.count_failure()
                raise
        return result.window.records

    # -- 10 minutes ----------------------------------------------------------------------------

    async def _run_ten_minute(self, now_s: float) -> None:
        job = self._ten
        length_s = job.length_s
        newest_end_s = int((now_s - self._config.lag_s) // length_s) * length_s
        if not await self._load_progress(job, newest_end_s):
            return
        assert job.done_end is not None
        oldest_end_s = newest_end_s - (CATCH_UP_S // length_s) * length_s + length_s
        if job.done_end + length_s < oldest_end_s:
            skipped = (oldest_end_s - job.done_end) // length_s - 1
            log.warning(
                "analysis: skipping %d %s windows older than %d s", skipped, job.window, CATCH_UP_S
            )
            job.skipped += skipped
            job.done_end = oldest_end_s - length_s
            job.attempts = 0
        expected = self._expected_now()
        for _ in range(WINDOWS_PER_PASS):
            end_s = job.done_end + length_s
            if end_s > newest_end_s:
                return
            start_s = end_s - length_s

            def work(start_s: int = start_s, end_s: int = end_s) -> WindowResult:
                result = compute_window(
                    self._raw,
                    job.window,
                    start_s,
                    end_s,
                    now_s=now_s,
                    expected=expected,
                    rollups=self._rollups,
                    options=self._options,
                )
                self._db.write_window(result.window, result.sla, result.matrix)
                return result

            if not await self._attempt(job, start_s, end_s, work):
                return

    async def _load_progress(self, job: _Job, newest_end_s: int, *, fresh_back: int = 1) -> bool:
        """Read where ``job`` stopped from the results DB, once; False if that failed.

        A fresh database starts ``fresh_back`` windows before ``newest_end_s``.
        """
        if job.done_end is not None:
            return True
        try:
            done = await asyncio.to_thread(self._db.latest_window, job.window)
        except Exception:
            log.exception("analysis: cannot read the last %s window", job.window)
            job.failures += 1
            return False
        # A fresh database starts at the newest closed window: there is nothing it missed.
        last_end_s = newest_end_s - fresh_back * job.length_s if done is None else done.window_end
        job.done_end = last_end_s // job.length_s * job.length_s
        return True

    async def _attempt(
        self, job: _Job, start_s: int, end_s: int, work: Callable[[], WindowResult]
    ) -> bool:
        """Run one window of ``job``; True to go on with the next one."""
        started_ns = self._clock.monotonic_ns()
        result: WindowResult | None = None

        def done(finished: WindowResult) -> None:
            job.attempts = 0
            job.done_end = end_s
            self._account(job, start_s, end_s, finished.window.records, started_ns)

        try:
            result = await self._in_thread(work, finished=done)
        except Exception:  # any failure must not stop the others: log, count, go on
            log.exception("analysis: %s window [%d, %d) failed", job.window, start_s, end_s)
            job.failures += 1
            job.attempts += 1
        if result is None:
            if job.attempts < ATTEMPTS_PER_WINDOW:
                return False  # retry on the next pass
            log.error(
                "analysis: giving up on %s window [%d, %d) after %d attempts",
                job.window,
                start_s,
                end_s,
                job.attempts,
            )
            job.skipped += 1
            job.attempts = 0
            job.done_end = end_s
            return True
        done(result)
        return True

    def _account(self, job: _Job, start_s: int, end_s: int, records: int, started_ns: int) -> None:
        job.runs += 1
        job.last_duration_s = (self._clock.monotonic_ns() - started_ns) / 1e9
        job.last_window_start = start_s
        job.last_window_end = end_s
        job.last_records = records

    # -- rollups -------------------------------------------------------------------------------

    async def _run_rollup(self, job: _Job, below: _Job, now_s: float) -> None:
        """Roll ``below``'s windows up into ``job``'s, for every window of ``job`` whose
        windows below are all done."""
        rollups = self._rollups
        if rollups is None or below.done_end is None:
            return
        length_s = job.length_s
        newest_end_s = below.done_end // length_s * length_s
        # A fresh database rolls up from the next whole window on: the ones before it were
        # not all computed below.
        if not await self._load_progress(job, newest_end_s, fresh_back=0):
            return
        assert job.done_end is not None
        oldest_end_s = newest_end_s - ROLLUP_CATCH_UP[length_s] * length_s
        if job.done_end < oldest_end_s:
            job.skipped += (oldest_end_s - job.done_end) // length_s
            job.done_end = oldest_end_s
        expected = self._expected_now()
        for _ in range(WINDOWS_PER_PASS):
            end_s = job.done_end + length_s
            if end_s > newest_end_s:
                return
            start_s = end_s - length_s

            def work(start_s: int = start_s, end_s: int = end_s) -> WindowResult:
                result = rollup_window(
                    rollups,
                    job.window,
                    start_s,
                    end_s,
                    source_window=below.window,
                    ten_minute_s=self._ten.length_s,
                    now_s=now_s,
                    expected=expected,
                    options=self._options,
                )
                self._db.write_window(result.window, result.sla, result.matrix)
                return result

            if not await self._attempt(job, start_s, end_s, work):
                return

    # -- retention -----------------------------------------------------------------------------

    async def _run_retention(self, now_s: float) -> None:
        if self._retention_next_s is not None and now_s < self._retention_next_s:
            return
        self._retention_next_s = now_s + self._config.retention.every_s
        try:
            outcome = await self._in_thread(
                lambda: apply_retention(
                    self._config.retention,
                    now_s=now_s,
                    raw=self._raw,
                    db=self._db.database,
                    fast_window=self._fast.window,
                    kept_windows=(self._ten.window, self._hour.window, self._day.window),
                    rollups=self._rollups,
                    traces=self._traces.store if self._traces is not None else None,
                )
            )
        except Exception:
            log.exception("analysis: retention failed")
            self._retention_failures += 1
            return
        if outcome.raw_partitions:
            self.index.forget_missing()
        self._retention_runs += 1
        self._dropped_partitions += outcome.raw_partitions
        self._dropped_days += outcome.rollup_days
        self._deleted_rows += outcome.result_rows
