"""The raw store: Parquet files partitioned by UTC hour, written atomically."""

from __future__ import annotations

import glob
import re
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pingmesh.analysis.fileindex import RawFileIndex
from pingmesh.errors import StoreError
from pingmesh.store.raw import RAW_SCHEMA, RawStore

# 2027-01-15 08:00:00 UTC, the start of an hour.
HOUR_START_S = 1_800_000_000 - 1_800_000_000 % 3600


def row(at_s: float, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict.fromkeys(RAW_SCHEMA.names)  # newer columns are nullable
    values |= {
        "time": datetime.fromtimestamp(at_s, tz=UTC),
        "batch_id": "batch-0001",
        "agent": "h11",
        "src_addr": "127.0.0.11",
        "src_port": 40000,
        "dst": "h21",
        "dst_addr": "127.0.0.21",
        "dst_port": 9781,
        "kind": "tcp",
        "scope": "inter_tor",
        "outcome": "ok",
        "rtt_us": 250.5,
        "rtt_clock_us": 260.0,
        "retransmits": 0,
        "size_bytes": 0,
        "detail": "",
        "src_tor": "t1",
        "src_podset": "ps1",
        "src_dc": "dc1",
        "dst_tor": "t2",
        "dst_podset": "ps1",
        "dst_dc": "dc1",
    }
    values.update(overrides)
    return values


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def read_all(files: list[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in files:
        rows.extend(pq.read_table(path).to_pylist())
    return sorted(rows, key=lambda r: (r["time"], r["batch_id"], r["src_port"]))


def test_round_trip_keeps_every_value_and_the_schema(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    rows = [
        row(HOUR_START_S + 1, src_port=1),
        row(
            HOUR_START_S + 2,
            src_port=2,
            outcome="timeout",
            rtt_us=None,
            rtt_clock_us=3_500_000.0,
            retransmits=2,
            detail="no answer",
            dst="ext",
            dst_tor=None,
            dst_podset=None,
            dst_dc=None,
        ),
    ]
    files = store.write(table(rows))
    assert len(files) == 1
    assert pq.read_schema(files[0]).remove_metadata() == RAW_SCHEMA
    assert read_all(files) == rows
    assert sorted(glob.glob(store.parquet_glob())) == [str(f) for f in files]
    stats = store.statistics()
    assert stats.files_written_total == 1
    assert stats.rows_written_total == 2
    assert stats.bytes_written_total == files[0].stat().st_size


def test_rows_split_by_utc_hour_across_hour_and_day_boundaries(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    midnight_s = HOUR_START_S - HOUR_START_S % 86400 + 86400  # 2027-01-16 00:00 UTC
    times = [midnight_s - 3600.5, midnight_s - 0.000001, midnight_s, midnight_s + 3599.9]
    # Given in another zone too: the partition is the UTC hour all the same.
    plus_two = datetime.fromtimestamp(times[2], tz=UTC).astimezone(timezone(timedelta(hours=2)))
    rows = [row(t, src_port=i) for i, t in enumerate(times)]
    rows[2]["time"] = plus_two
    files = store.write(table(rows))
    layout = sorted(str(f.relative_to(tmp_path).parent) for f in files)
    assert layout == ["dt=2027-01-15/hour=22", "dt=2027-01-15/hour=23", "dt=2027-01-16/hour=00"]
    by_dir = {str(f.relative_to(tmp_path).parent): pq.read_table(f).num_rows for f in files}
    assert by_dir == {
        "dt=2027-01-15/hour=22": 1,
        "dt=2027-01-15/hour=23": 1,
        "dt=2027-01-16/hour=00": 2,
    }
    # A query window reads only the partitions it overlaps.
    only_midnight = store.files_between(midnight_s, midnight_s + 1800)
    assert [str(f.relative_to(tmp_path).parent) for f in only_midnight] == ["dt=2027-01-16/hour=00"]
    assert len(store.files_between(midnight_s - 1, midnight_s + 1)) == 2
    assert store.files_between(midnight_s + 3600, midnight_s + 7200) == []
    assert sorted(store.files_between(0, midnight_s + 7200)) == sorted(files)


def test_a_write_never_replaces_a_file(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    first = store.write(table([row(HOUR_START_S + 5, batch_id="batch-aaaa")]))
    second = store.write(table([row(HOUR_START_S + 6, batch_id="batch-bbbb")]))
    assert first[0] != second[0]
    assert first[0].parent == second[0].parent
    assert [r["batch_id"] for r in read_all(store.files_between(0, 2**40))] == [
        "batch-aaaa",
        "batch-bbbb",
    ]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    rows_per_file = 20_000
    big = table([row(HOUR_START_S + i / 1000, src_port=i % 60000) for i in range(rows_per_file)])
    done = threading.Event()
    seen_counts: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not done.is_set():
            for path in tmp_path.glob("dt=*/hour=*/part-*.parquet"):
                try:
                    seen_counts.append(pq.read_metadata(path).num_rows)
                except (OSError, pa.ArrowException) as exc:  # a partial file would show here
                    errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(8):
            store.write(big)
    finally:
        done.set()
        thread.join()
    assert errors == []
    assert set(seen_counts) <= {rows_per_file}
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temporary file left behind
    assert len(store.files_between(0, 2**40)) == 8


def test_a_failed_write_leaves_nothing_visible(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    root.write_text("not a directory")
    store = RawStore(root)
    with pytest.raises(StoreError, match="cannot write raw-store file"):
        store.write(table([row(HOUR_START_S)]))
    assert store.statistics().write_failures_total == 1
    assert store.statistics().files_written_total == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_write_names_the_column_that_does_not_fit(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    good = table([row(HOUR_START_S)])
    with pytest.raises(StoreError, match="column 'detail' is missing"):
        store.write(good.drop_columns(["detail"]))
    with pytest.raises(StoreError, match="column 'extra' is not in the raw schema"):
        store.write(good.append_column("extra", pa.array([1])))
    nullable = pa.schema([f.with_nullable(True) for f in RAW_SCHEMA])
    with pytest.raises(StoreError, match="column 'agent' has nulls"):
        store.write(pa.Table.from_pylist([row(HOUR_START_S, agent=None)], schema=nullable))
    assert store.files_between(0, 2**40) == []
    assert store.write(good.slice(0, 0)) == []


def ids_since(store: RawStore, since_s: float) -> dict[int, set[str]]:
    """The ids by hour, from :meth:`RawStore.batch_ids_by_file`."""
    found: dict[int, set[str]] = {}
    for hour_start_s, ids in store.batch_ids_by_file(since_s):
        found.setdefault(hour_start_s, set()).update(ids)
    return found


def test_batch_ids_by_file_reads_the_files_of_recent_partitions(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    store.write(
        table(
            [
                row(HOUR_START_S - 7200 + 10, batch_id="old-batch-1"),
                row(HOUR_START_S + 10, batch_id="new-batch-1"),
                row(HOUR_START_S + 20, batch_id="new-batch-1"),
                row(HOUR_START_S + 3590, batch_id="spanning"),
                row(HOUR_START_S + 3600 + 30, batch_id="new-batch-2"),
                row(HOUR_START_S + 3600 + 40, batch_id="spanning"),
            ]
        )
    )
    store.write(table([row(HOUR_START_S + 50, batch_id="new-batch-3")]))  # a second file
    this_hour = {"new-batch-1", "new-batch-3", "spanning"}
    next_hour = {"new-batch-2", "spanning"}
    # File by file, oldest hour first; a batch with records in two hours is in both.
    by_file = list(store.batch_ids_by_file(HOUR_START_S + 1800))
    assert [hour_start_s for hour_start_s, _ in by_file] == [HOUR_START_S] * 2 + [
        HOUR_START_S + 3600
    ]
    assert sorted(len(ids) for _, ids in by_file) == [1, 2, 2]
    assert ids_since(store, HOUR_START_S + 1800) == {
        HOUR_START_S: this_hour,
        HOUR_START_S + 3600: next_hour,
    }
    assert ids_since(store, HOUR_START_S - 7200) == {
        HOUR_START_S - 7200: {"old-batch-1"},
        HOUR_START_S: this_hour,
        HOUR_START_S + 3600: next_hour,
    }
    # A partition that ends exactly at since_s holds nothing at or after it.
    assert ids_since(store, HOUR_START_S + 3600) == {HOUR_START_S + 3600: next_hour}
    assert ids_since(store, HOUR_START_S + 7200) == {}
    # The ids come from the files alone: a new store object over the same directory agrees.
    assert ids_since(RawStore(tmp_path), HOUR_START_S + 3599) == ids_since(store, HOUR_START_S)


def test_batch_ids_by_file_names_an_unreadable_file(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    [path] = store.write(table([row(HOUR_START_S + 10)]))
    path.write_bytes(b"not parquet")
    with pytest.raises(StoreError, match=re.escape(str(path))):
        list(store.batch_ids_by_file(0))


def test_drop_partitions_before_removes_whole_hours_only(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    store.write(
        table(
            [
                row(HOUR_START_S - 86400, batch_id="day-before"),
                row(HOUR_START_S - 3600, batch_id="hour-before"),
                row(HOUR_START_S + 10, batch_id="this-hour"),
            ]
        )
    )
    # ts inside this hour: this hour's partition is kept whole.
    assert store.drop_partitions_before(HOUR_START_S + 1800) == 2
    assert ids_since(store, 0) == {HOUR_START_S: {"this-hour"}}
    assert len(store.partitions()) == 1
    assert not (tmp_path / "dt=2027-01-14").exists()  # the emptied day directory went too
    assert store.drop_partitions_before(HOUR_START_S + 1800) == 0
    assert store.statistics().partitions_dropped_total == 2


def test_an_empty_or_missing_store_has_no_files(tmp_path: Path) -> None:
    store = RawStore(tmp_path / "nothing-yet")
    assert store.files_between(0, 2**40) == []
    assert ids_since(store, 0) == {}
    assert store.drop_partitions_before(2**40) == 0


def files_under(root: Path) -> list[str]:
    """Every regular file under ``root``, temporary ones included, relative and sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_write_that_fails_in_its_second_hour_leaves_no_file_and_can_be_retried(
    tmp_path: Path,
) -> None:
    store = RawStore(tmp_path)
    batch = table(
        [
            row(HOUR_START_S + 3590, batch_id="spanning", src_port=1),
            row(HOUR_START_S + 3600 + 5, batch_id="spanning", src_port=2),
        ]
    )
    # A regular file where the second hour's partition directory should be (root ignores
    # permissions, so a read-only directory would not stop the write).
    blocker = tmp_path / "dt=2027-01-15" / "hour=09"
    blocker.parent.mkdir()
    blocker.write_text("in the way")
    with pytest.raises(StoreError, match=r"hour=09.*cannot write raw-store file"):
        store.write(batch)
    # The first hour's file was written before the second failed; it is gone, temp and all,
    # and so is the partition directory the call created for it.
    assert files_under(tmp_path) == ["dt=2027-01-15/hour=09"]
    assert not (tmp_path / "dt=2027-01-15" / "hour=08").exists()
    assert ids_since(store, 0) == {}
    stats = store.statistics()
    assert (stats.write_failures_total, stats.files_written_total) == (1, 0)
    assert stats.rows_written_total == 0
    # The agent retries the same batch once the disk is fixed: every row is stored once.
    blocker.unlink()
    files = store.write(batch)
    assert len(files) == 2
    assert [r["src_port"] for r in read_all(store.files_between(0, 2**40))] == [1, 2]
    assert ids_since(store, 0) == {HOUR_START_S: {"spanning"}, HOUR_START_S + 3600: {"spanning"}}
    stats = store.statistics()
    assert (stats.files_written_total, stats.rows_written_total) == (2, 2)


def test_a_failed_write_keeps_the_files_of_earlier_writes(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    [kept] = store.write(table([row(HOUR_START_S + 1, batch_id="earlier")]))
    (tmp_path / "dt=2027-01-15" / "hour=09").write_text("in the way")
    with pytest.raises(StoreError):
        store.write(table([row(HOUR_START_S + 2), row(HOUR_START_S + 3601)]))
    # The call's own file in the existing partition went; the partition and its file stay.
    assert store.files_between(0, 2**40) == [kept]
    assert ids_since(store, 0) == {HOUR_START_S: {"earlier"}}


def test_temp_files_of_a_crashed_write_are_ignored_and_removed_at_open(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    [real] = store.write(table([row(HOUR_START_S + 10, batch_id="stored")]))
    # What a crash between the two phases leaves: complete files under temporary names (one
    # here in a partition of its own), and one whose link to its final name was made.
    crashed = table([row(HOUR_START_S + 20, batch_id="crashed")])
    orphan = real.parent / ".part-0123456789abcdef0123456789abcdef.parquet.tmp"
    pq.write_table(crashed, orphan)
    lonely_dir = tmp_path / "dt=2027-01-15" / "hour=10"
    lonely_dir.mkdir()
    lonely = lonely_dir / ".part-fedcba9876543210fedcba9876543210.parquet.tmp"
    pq.write_table(crashed, lonely)
    linked_tmp = real.parent / f".{real.name}.tmp"
    linked_tmp.hardlink_to(real)
    unrelated = real.parent / "notes.tmp"  # not ours: left alone
    unrelated.write_text("keep me")
    # Readers see the real file only.
    assert store.files_between(0, 2**40) == [real]
    assert RawFileIndex(store).files_overlapping(0, 2**40) == [real]
    assert glob.glob(store.parquet_glob()) == [str(real)]
    assert ids_since(store, 0) == {HOUR_START_S: {"stored"}}
    assert store.statistics().temp_files_removed_total == 0
    # Opening the store again (the process restarting) removes them.
    reopened = RawStore(tmp_path)
    assert reopened.statistics().temp_files_removed_total == 3
    assert files_under(tmp_path) == sorted(str(p.relative_to(tmp_path)) for p in (real, unrelated))
    assert read_all([real])[0]["batch_id"] == "stored"
