"""The analysis runner with a fake clock, a real raw store and a real results database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.analysis.runner import ATTEMPTS_PER_WINDOW, AnalysisRunner
from pingmesh.clock import FakeClock
from pingmesh.config import AnalysisConfig, PinglistConfig, RetentionConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.analysis.synthetic import BlackHole
from pingmesh.store.incidents import IncidentStore
from pingmesh.store.raw import RawStore
from pingmesh.store.results import ResultsDB, WindowRow
from pingmesh.store.rollups import RollupStore
from tests.analysis.rawdata import T0_S, probe, table
from tests.analysis.synthetic_store import SERVERS, TOPOLOGY, synthetic_rows, write_in_flushes

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
    (a1,) = db.sla("30s", T0_S + 1170, "server")
    assert (a1.entity, a1.probes) == ("a1", 30)
    assert a1.p50_us == pytest.approx(1184.0, rel=0.01)  # within the histogram's 1 %

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


# -- rollups, retention and detection through the runner -------------------------------------


def full_runner(
    raw: RawStore, db: ResultsDB, tmp_path: Path, clock: FakeClock, **kwargs: object
) -> AnalysisRunner:

    return AnalysisRunner(
        raw,
        db,
        kwargs.pop("config", CONFIG),  # type: ignore[arg-type]
        clock=clock,
        source=TopologySource(TOPOLOGY),
        pinglist=PinglistConfig(inter_dc_per_podset=1),  # as the synthetic fleet probes
        rollups=RollupStore(tmp_path / "rollups"),
        incidents=IncidentStore(db.database),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_the_hour_and_the_day_are_rolled_up_when_their_windows_are_done(
    tmp_path: Path, db: ResultsDB
) -> None:

    raw = write_in_flushes(tmp_path / "raw2", synthetic_rows(T0_S, T0_S + 3600), every_s=120.0)
    clock = FakeClock(T0_S + 15)  # a fresh database starts here
    runner = full_runner(raw, db, tmp_path, clock)
    for _ in range(7):  # every ten minutes, past the hour
        clock.advance(600)
        await runner.run_once(clock.now_s())
    assert len(db.windows("10m")) == 7
    (hour,) = db.windows("1h")
    assert (hour.window_start, hour.window_end) == (T0_S, T0_S + 3600)
    # The hour is the sum of its six ten-minute windows, rolled up, not read again from raw.
    assert hour.records == sum(w.records for w in db.windows("10m") if w.window_start < T0_S + 3600)
    servers = db.sla("1h", T0_S, "server")
    assert len(servers) == 32
    assert all(r.coverage == 1.0 for r in servers)
    assert db.windows("1d") == []  # the day is not over
    stats = runner.statistics()
    assert (stats.hour_runs_total, stats.day_runs_total) == (1, 0)
    # Much later, the day rolls up from its hours.
    clock.advance(86400)
    for _ in range(30):
        await runner.run_once(clock.now_s())
        clock.advance(10)
    day = T0_S - T0_S % 86400
    assert [w.window_start for w in db.windows("1d")] == [day]
    assert db.windows("1d")[0].records == hour.records


async def test_retention_drops_what_is_old_and_nothing_newer(tmp_path: Path, db: ResultsDB) -> None:

    raw = RawStore(tmp_path / "raw3")
    day_s = 86400
    for days_ago in (9, 8, 2):
        raw.write(table([probe(T0_S - days_ago * day_s + s, "a1", "b1") for s in range(5)]))
    config = AnalysisConfig(
        fast_window_s=30,
        fast_every_s=10,
        lag_s=10,
        retention=RetentionConfig(raw_days=7, rollup_days=60, fast_results_hours=1),
    )
    clock = FakeClock(T0_S + 15)
    runner = full_runner(raw, db, tmp_path, clock, config=config)
    old_fast = T0_S - 7200
    db.write_window(
        WindowRow(
            window="30s",
            window_start=old_fast,
            window_end=old_fast + 30,
            records=0,
            computed_at_s=old_fast,
        ),
        [],
        [],
    )
    await runner.run_once(clock.now_s())
    kept = [p.hour_start_s for p in raw.partitions()]
    assert kept == [T0_S - 2 * day_s]
    assert db.window_at("30s", old_fast + 1) is None
    stats = runner.statistics()
    assert (stats.retention_runs_total, stats.retention_raw_partitions_dropped_total) == (1, 2)
    assert stats.retention_result_rows_deleted_total >= 1
    # Not again until ``every_s`` has passed.
    clock.advance(60)
    await runner.run_once(clock.now_s())
    assert runner.statistics().retention_runs_total == 1


async def test_the_runner_opens_and_closes_incidents(tmp_path: Path, db: ResultsDB) -> None:

    hole = BlackHole(device="tor:dc1-ps2-t2", share=0.3, start_s=T0_S + 60, end_s=T0_S + 120)
    raw = write_in_flushes(tmp_path / "raw4", synthetic_rows(T0_S, T0_S + 300, [hole]))
    for name in SERVERS:  # every agent uploads (it is not down)
        db.record_agent_seen(name, "198.18.0.1", now_s=T0_S + 100, uploaded=True)
    clock = FakeClock(T0_S + 40)
    runner = full_runner(raw, db, tmp_path, clock)
    while clock.now_s() < T0_S + 200:
        if clock.now_s() > T0_S + 120:
            for name in SERVERS:
                db.record_agent_seen(name, "198.18.0.1", now_s=clock.now_s(), uploaded=True)
        await runner.run_once(clock.now_s())
        clock.advance(10)
    incidents = IncidentStore(db.database).list()
    assert [(i.kind, i.scope, i.entity) for i in incidents] == [("black_hole", "tor", "dc1-ps2-t2")]
    assert incidents[0].ended_at_s is not None
    detection = runner.detection_statistics()
    assert detection is not None
    assert (detection.incidents_opened_total, detection.incidents_closed_total) == (1, 1)
    assert runner.fast_path_statistics().slices_total >= 15
