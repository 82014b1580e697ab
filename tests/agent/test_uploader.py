"""The result uploader against a real HTTP collector stub: batching, retries, bounds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pingmesh.agent.http_client import H11Client
from pingmesh.agent.spool import ResultSpool
from pingmesh.agent.uploader import DropReason, Uploader, UploaderStatistics
from pingmesh.clock import FakeClock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult, Scope
from pingmesh.errors import ConfigError
from pingmesh.wire.results import ResultBatchModel
from tests.agent.stubs import ControllerStub, eventually_true, free_port


@pytest.fixture
async def client() -> AsyncIterator[H11Client]:
    http = H11Client()
    yield http
    await http.aclose()


def result(i: int) -> ProbeResult:
    return ProbeResult(
        time_ns=1_800_000_000 * 10**9 + i,
        src_addr="127.0.0.1",
        src_port=40000 + i,
        dst="b",
        dst_addr="127.0.0.2",
        dst_port=9781,
        kind=ProbeKind.TCP,
        scope=Scope.INTRA_TOR,
        outcome=Outcome.OK,
        rtt_us=50.0 + i,
        rtt_clock_us=80.0 + i,
    )


def make_uploader(client: H11Client, url: str, **overrides: object) -> Uploader:
    options: dict[str, object] = {
        "client": client,
        "controller": url,
        "agent_name": "a",
        "clock": FakeClock(),
        "rng": random.Random(0),
        "interval_s": 60.0,
        "max_batch_records": 100,
        "attempts": 4,
        "timeout_s": 5.0,
        "max_pending_batches": 10,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }
    options.update(overrides)
    return Uploader(**options)  # type: ignore[arg-type]


def accounted(stats: UploaderStatistics) -> int:
    """Where every submitted record is: sent, dropped, buffered or pending."""
    return (
        stats.records_sent
        + stats.dropped_records()
        + stats.records_buffered
        + stats.records_pending
    )


async def run_until(uploader: Uploader, condition: object) -> None:
    task = asyncio.create_task(uploader.run())
    try:
        await eventually_true(condition)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_retries_with_the_same_batch_id_until_accepted(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.results_plan = [503, 500]
    uploader = make_uploader(client, controller.url)
    for i in range(3):
        uploader.submit(result(i))
    uploader.seal()
    await run_until(uploader, lambda: uploader.statistics().batches_sent == 1)
    assert len(controller.posts) == 3
    assert len({p["batch_id"] for p in controller.posts}) == 1  # idempotent retries
    assert controller.posts[0] == controller.posts[2]  # the very same body
    batch = ResultBatchModel.model_validate(controller.accepted[0])
    assert batch.agent == "a"
    assert [r.src_port for r in batch.records] == [40000, 40001, 40002]
    stats = uploader.statistics()
    assert (stats.batches_sent, stats.batches_retried, stats.records_sent) == (1, 2, 3)
    assert stats.dropped_records() == 0
    assert accounted(stats) == stats.records_submitted == 3


async def test_a_collector_that_always_fails_makes_us_drop_and_count(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.results_plan = [500] * 10
    uploader = make_uploader(client, controller.url, attempts=3)
    for i in range(5):
        uploader.submit(result(i))
    uploader.seal()
    await run_until(uploader, lambda: uploader.statistics().dropped_batches() == 1)
    assert len(controller.posts) == 3  # exactly `attempts` tries
    stats = uploader.statistics()
    assert stats.dropped_batches(DropReason.RETRIES_EXHAUSTED) == 1
    assert stats.dropped_records(DropReason.RETRIES_EXHAUSTED) == 5
    assert stats.batches_retried == 2
    assert stats.records_sent == 0
    assert accounted(stats) == 5


async def test_400_is_rejected_without_retry(controller: ControllerStub, client: H11Client) -> None:
    controller.results_plan = [400, 400]
    uploader = make_uploader(client, controller.url)
    uploader.submit(result(0))
    uploader.seal()
    await run_until(uploader, lambda: uploader.statistics().batches_rejected == 1)
    await asyncio.sleep(0.1)  # time for a retry that must not happen
    assert len(controller.posts) == 1
    stats = uploader.statistics()
    assert stats.batches_retried == 0
    assert stats.dropped_records(DropReason.REJECTED) == 1


async def test_429_is_retried_after_retry_after(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.results_plan = [429]
    controller.retry_after = "0"
    uploader = make_uploader(client, controller.url)
    uploader.submit(result(0))
    uploader.seal()
    await run_until(uploader, lambda: uploader.statistics().batches_sent == 1)
    assert uploader.statistics().batches_retried == 1


async def test_an_unreachable_collector_is_retried_then_dropped(client: H11Client) -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    uploader = make_uploader(client, url, attempts=2)
    uploader.submit(result(0))
    uploader.seal()
    await run_until(uploader, lambda: uploader.statistics().dropped_batches() == 1)
    assert uploader.statistics().batches_retried == 1


async def test_full_batches_are_sealed_and_sent_on_the_interval(
    controller: ControllerStub, client: H11Client
) -> None:
    uploader = make_uploader(client, controller.url, max_batch_records=2, interval_s=0.05)
    for i in range(5):
        uploader.submit(result(i))
    assert uploader.statistics().pending_batches == 2  # two full batches sealed at once
    assert uploader.statistics().records_buffered == 1
    # The rest goes on the interval.
    await run_until(uploader, lambda: uploader.statistics().records_sent == 5)
    ids = [b["batch_id"] for b in controller.accepted]
    assert len(set(ids)) == 3
    assert [len(b["records"]) for b in controller.accepted] == [2, 2, 1]  # type: ignore[arg-type]
    assert accounted(uploader.statistics()) == uploader.statistics().records_sent == 5


async def test_the_pending_queue_is_bounded_oldest_dropped_first(
    controller: ControllerStub, client: H11Client
) -> None:
    uploader = make_uploader(client, controller.url, max_batch_records=1, max_pending_batches=2)
    for i in range(5):
        uploader.submit(result(i))  # five one-record batches, but room for two
    stats = uploader.statistics()
    assert stats.pending_batches == 2
    assert stats.dropped_batches(DropReason.QUEUE_FULL) == 3
    await run_until(uploader, lambda: uploader.statistics().batches_sent == 2)
    ports = [r["src_port"] for r in controller.accepted_records()]
    assert ports == [40003, 40004]  # the newest survived
    assert accounted(uploader.statistics()) == 5


async def test_cancel_midway_then_flush_sends_what_is_left(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.results_plan = [503]
    uploader = make_uploader(client, controller.url, backoff_initial_s=5.0, backoff_max_s=5.0)
    uploader.submit(result(0))
    uploader.seal()
    task = asyncio.create_task(uploader.run())
    await eventually_true(lambda: uploader.statistics().batches_retried == 1)  # in backoff now
    uploader.submit(result(1))  # still in the open batch
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = uploader.statistics()
    assert stats.pending_batches == 1  # the interrupted batch was put back, not lost
    assert accounted(stats) == 2
    await uploader.flush(timeout_s=5)
    stats = uploader.statistics()
    assert stats.records_sent == 2
    assert stats.pending_batches == 0
    assert accounted(stats) == 2
    assert len(controller.accepted) == 2


async def test_flush_drops_and_counts_what_cannot_be_sent(client: H11Client) -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    uploader = make_uploader(client, url)
    uploader.submit(result(0))
    uploader.submit(result(1))
    await uploader.flush(timeout_s=5)
    stats = uploader.statistics()
    assert stats.dropped_records(DropReason.SHUTDOWN) == 2
    assert accounted(stats) == 2


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="attempts"):
        make_uploader(H11Client(), "http://127.0.0.1:1", attempts=0)
    with pytest.raises(ValueError, match="backoff_initial_s"):
        make_uploader(H11Client(), "http://127.0.0.1:1", backoff_initial_s=0)


# -- with the on-disk spool ----------------------------------------------------------------


def spooled(client: H11Client, url: str, directory: Path, **overrides: object) -> Uploader:
    spool = ResultSpool(directory, max_bytes=int(overrides.pop("max_bytes", 1 << 20)))  # type: ignore[call-overload]
    uploader = make_uploader(client, url, spool=spool, **overrides)
    uploader.recover()
    return uploader


async def test_spooled_batches_live_on_disk_and_go_once_sent(
    controller: ControllerStub, client: H11Client, tmp_path: Path
) -> None:
    uploader = spooled(client, controller.url, tmp_path)
    for i in range(3):
        uploader.submit(result(i))
    uploader.seal()
    files = list(tmp_path.glob("b*.json"))
    assert len(files) == 1
    assert ResultBatchModel.model_validate_json(files[0].read_bytes()).records[2].src_port == 40002
    await run_until(uploader, lambda: uploader.statistics().batches_sent == 1)
    assert list(tmp_path.glob("b*.json")) == []
    stats = uploader.statistics()
    assert stats.spool is not None
    assert (stats.spool.files, stats.spool.size_bytes) == (0, 0)


async def test_the_spool_cap_drops_the_oldest_batches_and_counts_them(
    client: H11Client, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nobody there: batches wait
    probe = spooled(client, url, tmp_path / "probe", max_batch_records=1)
    probe.submit(result(0))
    one_batch = probe.statistics().spool.size_bytes  # type: ignore[union-attr]
    uploader = spooled(
        client, url, tmp_path / "spool", max_batch_records=1, max_bytes=int(one_batch * 3.5)
    )
    for i in range(10):
        uploader.submit(result(i))  # ten one-record batches; room on disk for three
    stats = uploader.statistics()
    assert stats.spool is not None
    assert stats.spool.files == 3
    assert stats.spool.size_bytes <= stats.spool.max_bytes
    assert stats.dropped_batches(DropReason.QUEUE_FULL) == 7
    assert accounted(stats) == 10
    kept = sorted(
        ResultBatchModel.model_validate_json(f.read_bytes()).records[0].src_port
        for f in (tmp_path / "spool").glob("b*.json")
    )
    assert kept == [40007, 40008, 40009]  # the newest survived


async def test_a_restart_uploads_what_the_spool_kept(
    controller: ControllerStub, client: H11Client, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    first = spooled(client, down, tmp_path)
    for i in range(4):
        first.submit(result(i))
    await first.flush(timeout_s=2)  # the collector is down: kept on disk, not dropped
    stats = first.statistics()
    assert stats.dropped_records() == 0
    assert stats.pending_batches == 1
    second = spooled(client, controller.url, tmp_path)
    assert second.statistics().records_recovered == 4
    await run_until(second, lambda: second.statistics().batches_sent == 1)
    assert [r["src_port"] for r in controller.accepted_records()] == [40000, 40001, 40002, 40003]
    assert list(tmp_path.glob("b*.json")) == []


async def test_retries_exhausted_drop_the_spooled_batch_too(
    controller: ControllerStub, client: H11Client, tmp_path: Path
) -> None:
    controller.results_plan = [500] * 3
    uploader = spooled(client, controller.url, tmp_path, attempts=3)
    uploader.submit(result(0))
    uploader.seal()
    await run_until(uploader, lambda: uploader.statistics().dropped_batches() == 1)
    assert uploader.statistics().dropped_records(DropReason.RETRIES_EXHAUSTED) == 1
    assert list(tmp_path.glob("b*.json")) == []


def test_an_unusable_spool_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"agent\.spool_dir"):
        ResultSpool(blocker / "spool", max_bytes=1 << 20).open()


def test_the_spool_ignores_foreign_files_and_removes_torn_writes(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("mine")
    (tmp_path / ".b000000000007-3.json.tmp").write_text("{half")
    (tmp_path / "b000000000005-2.json").write_text("{}")
    spool = ResultSpool(tmp_path, max_bytes=1 << 20)
    entries = spool.open()
    assert [(e.seq, e.records) for e in entries] == [(5, 2)]
    assert (tmp_path / "README").exists()
    assert not (tmp_path / ".b000000000007-3.json.tmp").exists()
    entry = spool.put(b"{}", 1)
    assert entry is not None
    assert entry.seq == 6  # continues after what is there
