"""The rollup store: windows written whole, listed, and dropped a day at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from pingmesh.errors import StoreError
from pingmesh.store.rollups import RollupStore

DAY = 1_800_000_000 - 1_800_000_000 % 86400


def write(store: RollupStore, window: str, start: int, text: str = "x") -> Path:
    def writer(directory: Path) -> None:
        for part in ("sources", "cells", "coverage"):
            (directory / f"{part}.parquet").write_text(f"{part}:{text}")

    return store.write(window, start, writer)


def test_write_list_and_replace(tmp_path: Path) -> None:
    store = RollupStore(tmp_path)
    first = write(store, "10m", DAY + 600)
    write(store, "10m", DAY + 1200)
    write(store, "1h", DAY)
    assert first == tmp_path / "10m" / "dt=2027-01-15" / f"start={DAY + 600}"
    assert store.starts("10m", DAY, DAY + 3600) == [DAY + 600, DAY + 1200]
    assert store.starts("10m", DAY + 601, DAY + 3600) == [DAY + 1200]
    assert [p.name for p in store.files("10m", DAY, DAY + 3600, "cells")] == ["cells.parquet"] * 2
    assert store.files("10m", DAY, DAY + 3600, "pairs") == []  # this window kept no pairs part
    # Writing a window again replaces it whole.
    write(store, "10m", DAY + 600, "second")
    assert (first / "sources.parquet").read_text() == "sources:second"
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]
    stats = store.statistics()
    assert (stats.windows_written_total, stats.write_failures_total) == (4, 0)
    assert stats.bytes_written_total > 0


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = RollupStore(tmp_path)
    write(store, "10m", DAY, "good")

    def broken(directory: Path) -> None:
        (directory / "sources.parquet").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(StoreError, match="cannot write rollup window"):
        store.write("10m", DAY, broken)
    # The earlier result is intact and no temporary directory is left.
    assert (store.window_dir("10m", DAY) / "sources.parquet").read_text() == "sources:good"
    assert [p.name for p in store.window_dir("10m", DAY).parent.iterdir()] == [f"start={DAY}"]
    assert store.statistics().write_failures_total == 1


def test_retention_drops_whole_days_that_ended(tmp_path: Path) -> None:
    store = RollupStore(tmp_path)
    for day in range(3):
        write(store, "10m", DAY + day * 86400)
        write(store, "1d", DAY + day * 86400)
    # Half-way through the second day: only the first day has ended.
    assert store.drop_before(DAY + 86400 + 43200) == 2
    assert store.starts("10m", 0, 2**40) == [DAY + 86400, DAY + 2 * 86400]
    assert store.starts("1d", 0, 2**40) == [DAY + 86400, DAY + 2 * 86400]
    assert store.statistics().days_dropped_total == 2
    assert store.drop_before(DAY) == 0


def test_leftovers_of_a_crash_are_removed(tmp_path: Path) -> None:
    store = RollupStore(tmp_path)
    write(store, "10m", DAY)
    leftover = store.window_dir("10m", DAY).parent / f".start={DAY}.abc.tmp"
    leftover.mkdir()
    assert store.remove_temporaries() == 1
    assert not leftover.exists()
    assert store.starts("10m", DAY, DAY + 1) == [DAY]


def test_bad_names(tmp_path: Path) -> None:
    store = RollupStore(tmp_path)
    with pytest.raises(ValueError, match="window kind"):
        store.window_dir("../etc", DAY)
    with pytest.raises(ValueError, match="part"):
        store.files("10m", 0, 1, "secrets")
    assert store.starts("10m", 0, 2**40) == []
