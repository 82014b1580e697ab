"""The analysis runner with a fake clock, a real raw store and a real results database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.analysis.runner import ATTEMPTS_PER_WINDOW, AnalysisRunner
from pingmesh.clock import FakeClock
from pingmesh.config import AnalysisConfig
from pingmesh.store.raw import RawStore
from pingmesh.store.results import ResultsDB
from tests.analysis.rawdata import T0_S, probe, table

CONFIG = AnalysisConfig(fast_window_s=30, fast_every_s=10, lag_s=10, ten_minute_window_s=600)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ResultsDB]:
    results = ResultsDB(tmp_path / "results.sqlite")
    yield results
    results.close()


@pytest.fixture
def raw(tmp_path: Path) -> RawStore:
    store = RawStore(tmp_path / "raw")
    # One probe a second from a1 to b1 for the first 40 minutes of the hour; RTT = its second.
    store.write(table([probe(T0_S + s, "a1", "b1", rtt_us=float(s)) for s in range(2400)]))
    return store


async def test_writes_the_fast_and_the_ten_minute_window(raw: RawStore, db: ResultsDB) -> None:
    clock = FakeClock(T0_S + 1211)  # 20 min 11 s into the hour
    runner = AnalysisRunner(raw, db, CONFIG, clock=clock)
    await runner.run_once(clock.now_s())

    fast = db.latest_window("30s")
    assert fast is not None
    # end = floor(now - lag, 10 s) = T0 + 1200; the window is the 30 s before it.
    assert (fast.window_start, fast.window_end, fast.records) == (T0_S + 1170, T0_S + 1200, 30)
    a1 = db.sla("30s", T0_S + 1170, "server")
    assert [(r.entity, r.probes, r.p50_us) for r in a1] == [("a1", 30, 1184.0)]

    ten = db.windows("10m")
    # A fresh database starts at the newest closed window, [T0 + 600, T0 + 1200).
    assert [(w.window_start, w.window_end, w.records) for w in ten] == [
        (T0_S + 600, T0_S + 1200, 600)
    ]
    assert [(r.src, r.dst, r.probes) for r in db.matrix("10m", T0_S + 600, "tor")] == [
        ("t1", "t2", 600)
    ]
    stats = runner.statistics()
    assert (stats.fast_window, stats.ten_minute_window) == ("30s", "10m")
    assert (stats.fast_runs_total, stats.ten_minute_runs_total) == (1, 1)
    assert stats.fast_last_window_end_timestamp_seconds == T0_S + 1200
    assert stats.ten_minute_last_records == 600

    # Nothing new is due 5 s later (now - lag = T0 + 1206); 10 s later the next window is.
    clock.advance(5)
    await runner.run_once(clock.now_s())
    assert runner.statistics().fast_runs_total == 1
    clock.advance(5)
    await runner.run_once(clock.now_s())
    assert runner.statistics().fast_runs_total == 2
    latest = db.latest_window("30s")
    assert latest is not None
    assert latest.window_start == T0_S + 1180


async def test_ten_minute_window_waits_for_the_lag(raw: RawStore, db: ResultsDB) -> None:
    clock = FakeClock(T0_S + 1205)  # the window [T0+600, T0+1200) closed 5 s ago: lag is 10 s
    runner = AnalysisRunner(raw, db, CONFIG, clock=clock)
    await runner.run_once(clock.now_s())
    assert [w.window_end for w in db.windows("10m")] == [T0_S + 600]
    clock.advance(5)
    await runner.run_once(clock.now_s())
    assert [w.window_end for w in db.windows("10m")] == [T0_S + 1200, T0_S + 600]


async def test_catches_up_the_windows_missed_while_down(raw: RawStore, db: ResultsDB) -> None:
    clock = FakeClock(T0_S + 615)
    first = AnalysisRunner(raw, db, CONFIG, clock=clock)
    await first.run_once(clock.now_s())
    assert [w.window_start for w in db.windows("10m")] == [T0_S]

    clock.advance(3 * 600)  # down for half an hour; a new process starts
    second = AnalysisRunner(raw, db, CONFIG, clock=clock)
    await second.run_once(clock.now_s())
    windows = db.windows("10m")
    assert [w.window_start for w in windows] == [T0_S + 1800, T0_S + 1200, T0_S + 600, T0_S]
    # The last 10 minutes (T0+2400 on) have no probes: an empty window, not a missing one.
    assert [w.records for w in windows] == [600, 600, 600, 600]
    assert second.statistics().ten_minute_runs_total == 3
    assert second.statistics().ten_minute_skipped_total == 0


async def test_a_failing_job_is_counted_and_the_loop_goes_on(
    raw: RawStore, db: ResultsDB, tmp_path: Path
) -> None:
    # A damaged file in the second hour: every window that touches that hour fails.
    bad_hour = tmp_path / "raw" / "dt=2027-01-15" / "hour=09"
    bad_hour.mkdir(parents=True)
    (bad_hour / "part-damaged.parquet").write_bytes(b"PAR1 this is not parquet")
    clock = FakeClock(T0_S + 3600 + 615)  # 10 min into the damaged hour
    runner = AnalysisRunner(raw, db, CONFIG, clock=clock)

    for attempt in range(1, ATTEMPTS_PER_WINDOW + 1):
        await runner.run_once(clock.now_s())
        stats = runner.statistics()
        assert stats.fast_failures_total == attempt
        assert stats.ten_minute_failures_total == attempt
        clock.advance(10)
    # Given up after the last attempt, counted, and the loop is still alive.
    assert runner.statistics().ten_minute_skipped_total == 1
    assert db.windows("10m") == []
    assert db.latest_window("30s") is None

    (bad_hour / "part-damaged.parquet").unlink()
    await runner.run_once(clock.now_s())
    assert runner.statistics().fast_runs_total == 1
    fast = db.latest_window("30s")
    assert fast is not None
    assert fast.records == 0  # the probes ended at T0 + 2400


async def test_catch_up_is_bounded(raw: RawStore, db: ResultsDB) -> None:
    clock = FakeClock(T0_S + 615)
    await AnalysisRunner(raw, db, CONFIG, clock=clock).run_once(clock.now_s())
    clock.advance(2 * 86400)  # down for two days
    runner = AnalysisRunner(raw, db, CONFIG, clock=clock)
    await runner.run_once(clock.now_s())
    stats = runner.statistics()
    # Only the last day is made up (144 windows), 6 per pass, oldest first.
    assert stats.ten_minute_skipped_total == 2 * 144 - 144
    assert stats.ten_minute_runs_total == 6
    done = sorted(w.window_start for w in db.windows("10m"))
    newest_end = int(clock.now_s() - 10) // 600 * 600
    oldest_start = newest_end - 144 * 600
    assert done == [T0_S] + [oldest_start + i * 600 for i in range(6)]


async def test_run_is_cancellable_and_leaves_a_consistent_database(
    raw: RawStore, db: ResultsDB
) -> None:
    clock = FakeClock(T0_S + 1215)
    runner = AnalysisRunner(raw, db, CONFIG, clock=clock)
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(30):
        while runner.statistics().ten_minute_runs_total < 1:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = runner.statistics()
    assert (stats.fast_runs_total, stats.ten_minute_runs_total) == (1, 1)
    fast = db.latest_window("30s")
    assert fast is not None
    assert len(db.sla("30s", fast.window_start, "server")) == 1
    assert len(db.windows("10m")) == 1


async def test_cancelled_mid_job_the_job_finishes_and_is_counted(
    raw: RawStore, db: ResultsDB
) -> None:
    clock = FakeClock(T0_S + 1211)
    runner = AnalysisRunner(raw, db, CONFIG, clock=clock)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)  # run() is now waiting for the fast job's thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = runner.statistics()
    assert (stats.fast_runs_total, stats.fast_failures_total) == (1, 0)
    assert stats.ten_minute_runs_total == 0  # never started
    fast = db.latest_window("30s")
    assert fast is not None
    assert fast.records == 30
    assert db.windows("10m") == []
