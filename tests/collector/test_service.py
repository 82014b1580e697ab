"""The collector: validation, deduplication, group commit, cancellation, restart."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from pingmesh.clock import FakeClock
from pingmesh.errors import BatchError, StoreError, UnknownServerError
from pingmesh.server.metrics import snapshot_metrics
from tests.collector.fleet import (
    NOW_S,
    batch,
    batch_of,
    make_collector,
    record,
    running,
    stored_rows,
)


async def test_accepted_batch_is_on_disk_when_acknowledged(tmp_path: Path) -> None:
    uploads: list[tuple[str, str]] = []
    collector = make_collector(tmp_path, uploads=uploads)
    records = [record(0), record(1, dst="h31", dst_addr="127.0.3.31"), record(2, dst="ext")]
    async with running(collector):
        ack = await collector.submit(batch_of("batch-0001", records))
        # Acknowledged means stored: the rows are readable before the collector stops.
        rows = stored_rows(tmp_path)
    assert (ack.batch_id, ack.accepted, ack.duplicate) == ("batch-0001", 3, False)
    assert [r["dst"] for r in rows] == ["h21", "h31", "ext"]
    assert {r["agent"] for r in rows} == {"h11"}
    assert [(r["src_tor"], r["src_podset"], r["src_dc"]) for r in rows] == [
        ("t1", "ps1", "dc1")
    ] * 3
    assert [(r["dst_tor"], r["dst_podset"], r["dst_dc"]) for r in rows] == [
        ("t2", "ps2", "dc1"),
        ("t3", "ps3", "dc2"),
        (None, None, None),  # not in the topology
    ]
    assert [r["rtt_us"] for r in rows] == [100.0, 101.0, 102.0]
    assert uploads == [("h11", "127.0.1.11")]
    stats = collector.statistics()
    assert stats.batches_accepted_total == 1
    assert stats.records_stored_total == 3
    assert stats.files_written_total == 1
    assert stats.pending_batches == 0


async def test_sequential_duplicate_is_acknowledged_but_stored_once(tmp_path: Path) -> None:
    uploads: list[tuple[str, str]] = []
    collector = make_collector(tmp_path, uploads=uploads)
    async with running(collector):
        first = await collector.submit(batch("batch-0001"))
        second = await collector.submit(batch("batch-0001"))
    assert not first.duplicate
    assert second.duplicate
    assert second.accepted == 0
    assert len(stored_rows(tmp_path)) == 3
    assert uploads == [("h11", "127.0.1.11")]  # only for the stored copy
    stats = collector.statistics()
    assert (stats.batches_accepted_total, stats.batches_duplicate_total) == (1, 1)


async def test_concurrent_copies_of_one_batch_are_stored_once(tmp_path: Path) -> None:
    collector = make_collector(tmp_path, flush_interval_s=0.05)
    async with running(collector):
        acks = await asyncio.gather(*(collector.submit(batch("batch-0001")) for _ in range(6)))
    assert sorted(a.duplicate for a in acks) == [False] + [True] * 5
    assert len(stored_rows(tmp_path)) == 3
    assert collector.statistics().batches_duplicate_total == 5


async def test_unknown_agent_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    collector = make_collector(tmp_path)
    async with running(collector):
        with pytest.raises(UnknownServerError, match="unknown server 'h99'"):
            await collector.submit(batch("batch-0001", agent="h99"))
    assert stored_rows(tmp_path) == []
    assert collector.statistics().batches_rejected_total == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"outcome": "ok", "rtt_us": None}, r"records\.1\.rtt_us: a successful probe"),
        ({"rtt_us": 1e12}, r"records\.1\.rtt_us: 1000000000000\.0 is not a plausible RTT"),
        ({"at_s": NOW_S - 7 * 3600}, r"records\.1\.time: .* older than .* horizon"),
        ({"at_s": NOW_S + 3600}, r"records\.1\.time: .* ahead of the collector's clock"),
        ({"retransmits": 10**6}, r"records\.1\.retransmits: 1000000 is implausible"),
    ],
)
async def test_implausible_records_are_refused_naming_the_field(
    tmp_path: Path, bad: dict[str, object], message: str
) -> None:
    collector = make_collector(tmp_path)
    at_s = bad.pop("at_s", NOW_S - 5)
    assert isinstance(at_s, float)
    async with running(collector):
        with pytest.raises(BatchError, match=message):
            await collector.submit(batch_of("batch-0001", [record(0), record(1, at_s=at_s, **bad)]))
        # Refused, not remembered: a corrected batch with the same id is stored.
        ack = await collector.submit(batch_of("batch-0001", [record(0), record(1)]))
    assert not ack.duplicate
    assert len(stored_rows(tmp_path)) == 2


async def test_group_commit_writes_many_batches_into_one_file(tmp_path: Path) -> None:
    collector = make_collector(tmp_path, flush_interval_s=0.2)
    async with running(collector):
        # All submissions join the pending group before the flush loop next runs.
        acks = await asyncio.gather(*(collector.submit(batch(f"batch-{i:04}")) for i in range(20)))
    assert all(not a.duplicate and a.accepted == 3 for a in acks)
    assert len(stored_rows(tmp_path)) == 60
    assert len(list(tmp_path.rglob("*.parquet"))) == 1
    assert collector.statistics().files_written_total == 1


async def test_cancelling_the_collector_stores_what_is_pending(tmp_path: Path) -> None:
    # A flush interval far longer than the test: only the cancellation can flush.
    collector = make_collector(tmp_path, flush_interval_s=60)
    task = asyncio.create_task(collector.run())
    await collector.wait_running()
    submissions = [asyncio.create_task(collector.submit(batch(f"batch-{i:04}"))) for i in range(3)]
    while collector.statistics().pending_batches < 3:
        await asyncio.sleep(0)
    assert stored_rows(tmp_path) == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    acks = await asyncio.gather(*submissions)
    assert [a.accepted for a in acks] == [3, 3, 3]
    assert len(stored_rows(tmp_path)) == 9
    assert collector.statistics().pending_batches == 0
    # Stopped: new batches are refused (the agent retries elsewhere or later), not lost.
    with pytest.raises(StoreError, match="not running"):
        await collector.submit(batch("batch-9999"))


async def test_dedup_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(NOW_S)
    first = make_collector(tmp_path, clock=clock)
    async with running(first):
        await first.submit(batch("batch-0001"))
    clock.advance(60)
    second = make_collector(tmp_path, clock=clock)  # a new process over the same directory
    async with running(second):
        again = await second.submit(batch("batch-0001"))
        fresh = await second.submit(batch("batch-0002"))
    assert again.duplicate
    assert not fresh.duplicate
    assert len(stored_rows(tmp_path)) == 6
    assert second.statistics().dedup_ids == 2


async def test_dedup_forgets_after_the_horizon(tmp_path: Path) -> None:
    clock = FakeClock(NOW_S)
    collector = make_collector(tmp_path, clock=clock)
    async with running(collector):
        await collector.submit(batch("batch-0001"))
        assert collector.statistics().dedup_ids == 1
        clock.advance(6 * 3600 + 301)  # the horizon plus the clock-skew allowance
        # The old batch's records are now too old: refused rather than stored twice.
        with pytest.raises(BatchError, match="older than"):
            await collector.submit(batch("batch-0001"))
    assert collector.statistics().dedup_ids == 0
    assert len(stored_rows(tmp_path)) == 3


async def test_failed_write_is_an_error_and_the_retry_is_stored(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    root.write_text("a file where the store's directory should be")
    collector = make_collector(root)
    async with running(collector):
        results = await asyncio.gather(
            collector.submit(batch("batch-0001")),
            collector.submit(batch("batch-0001")),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreError) for r in results)
        stats = collector.statistics()
        assert stats.flush_failures_total == 1
        assert stats.batches_failed_total == 1
        assert stats.dedup_ids == 0
        root.unlink()  # the disk is back
        ack = await collector.submit(batch("batch-0001"))
    assert not ack.duplicate
    assert len(stored_rows(root)) == 3


async def test_submit_before_run_is_refused(tmp_path: Path) -> None:
    collector = make_collector(tmp_path)
    with pytest.raises(StoreError, match="not running"):
        await collector.submit(batch("batch-0001"))


async def test_a_submitter_that_goes_away_does_not_lose_the_batch(tmp_path: Path) -> None:
    collector = make_collector(tmp_path, flush_interval_s=0.05)
    async with running(collector):
        submission = asyncio.create_task(collector.submit(batch("batch-0001")))
        while collector.statistics().pending_batches < 1:
            await asyncio.sleep(0)
        submission.cancel()  # e.g. the client disconnected
        with contextlib.suppress(asyncio.CancelledError):
            await submission
        retry = await collector.submit(batch("batch-0001"))
    assert retry.duplicate
    assert len(stored_rows(tmp_path)) == 3


async def test_dedup_expires_whole_hours_and_refuses_what_it_forgot(tmp_path: Path) -> None:
    clock = FakeClock(NOW_S)  # NOW_S is an hour boundary
    collector = make_collector(tmp_path, clock=clock)
    early = [record(0, at_s=NOW_S - 3000)]  # the hour before NOW_S
    async with running(collector):
        await collector.submit(batch_of("batch-early", early))
        clock.advance(3600)
        late = [record(0, at_s=NOW_S + 3595)]  # the hour after NOW_S
        await collector.submit(batch_of("batch-late", late))
        clock.advance(6 * 3600 + 300 - 3600 - 1)  # a second before the early hour expires
        assert (await collector.submit(batch_of("batch-late", late))).duplicate
        stats = collector.statistics()
        assert (stats.dedup_ids, stats.dedup_buckets, stats.dedup_expired_ids_total) == (2, 2, 0)
        clock.advance(1)  # the early hour ended the horizon plus the slack ago
        # Its id is forgotten, so a copy could no longer be recognised: refused, counted.
        with pytest.raises(BatchError, match=r"records\.0\.time: .* could no longer be"):
            await collector.submit(batch_of("batch-early", early))
        # The later hour is still remembered whole.
        assert (await collector.submit(batch_of("batch-late", late))).duplicate
    stats = collector.statistics()
    assert (stats.dedup_ids, stats.dedup_buckets, stats.dedup_expired_ids_total) == (1, 1, 1)
    assert (stats.batches_too_old_total, stats.batches_rejected_total) == (1, 1)
    assert stats.batches_duplicate_total == 2
    assert stats.dedup_size_bytes > 0
    assert len(stored_rows(tmp_path)) == 2


async def test_restart_rebuilds_only_the_hours_inside_the_horizon(tmp_path: Path) -> None:
    clock = FakeClock(NOW_S)
    first = make_collector(tmp_path, clock=clock)
    async with running(first):
        await first.submit(batch_of("batch-early", [record(0, at_s=NOW_S - 3000)]))
        clock.advance(3600)
        await first.submit(batch_of("batch-late", [record(0, at_s=NOW_S + 3595)]))
    clock.advance(6 * 3600 + 300 - 3600)  # the early hour is outside the horizon + slack
    second = make_collector(tmp_path, clock=clock)
    async with running(second):
        stats = second.statistics()
        assert (stats.dedup_ids, stats.dedup_buckets) == (1, 1)
        again = await second.submit(batch_of("batch-late", [record(0, at_s=NOW_S + 3595)]))
    assert again.duplicate
    assert len(stored_rows(tmp_path)) == 2


async def test_every_field_of_a_record_reaches_the_raw_store(tmp_path: Path) -> None:
    extras: dict[str, Any] = {
        "send_lag_us": 1.5,
        "recv_lag_us": 2.5,
        "dwell_us": 3.5,
        "connect_us": 4.5,
        "tls_us": 5.5,
        "ttfb_us": 6.5,
        "seq": 7,
        "detail": "why",
        "retransmits": 1,
        "size_bytes": 64,
    }
    sent = batch_of("batch-0001", [record(0, **extras), record(1)])
    collector = make_collector(tmp_path)
    async with running(collector):
        await collector.submit(sent)
    rows = stored_rows(tmp_path)
    assert len(rows) == 2
    for row, original in zip(rows, sent.records, strict=True):
        for name, value in original.model_dump().items():
            assert row[name] == value, name  # enums are stored as their value
    assert rows[0]["seq"] == 7
    assert rows[1]["seq"] is None


async def test_dedup_figures_are_in_the_metrics(tmp_path: Path) -> None:
    collector = make_collector(tmp_path)
    async with running(collector):
        await collector.submit(batch("batch-0001"))
    names = {metric.name for metric in snapshot_metrics("collector", collector.statistics())}
    assert {
        "pingmesh_collector_dedup_ids",
        "pingmesh_collector_dedup_buckets",
        "pingmesh_collector_dedup_size_bytes",
        "pingmesh_collector_dedup_expired_ids",  # a counter: _total is added on exposition
        "pingmesh_collector_batches_too_old",
    } <= names
