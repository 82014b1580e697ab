"""The deduplication memory: exact membership through packing and merging, hourly expiry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pingmesh.collector.dedup import DIGEST_BYTES, PACK_AT, BatchIdMemory, _Run

T0_S = 1_800_000_000  # an hour boundary
HORIZON_S = 6 * 3600.0
SLACK_S = 300.0


def memory() -> BatchIdMemory:
    return BatchIdMemory(horizon_s=HORIZON_S, slack_s=SLACK_S)


def test_every_remembered_id_is_found_through_packing_and_merging() -> None:
    ids = BatchIdMemory(horizon_s=HORIZON_S, slack_s=SLACK_S)
    # Enough ids for several packs and merges in one bucket, and a second bucket.
    stored = {
        f"agent{i % 7:02d}-{i:010d}": T0_S + (i % 2) * 3600 + i % 3000
        for i in range(5 * PACK_AT + 123)
    }
    for batch_id, oldest_s in stored.items():
        ids.add(batch_id, oldest_s)
    assert all(ids.contains(batch_id, oldest_s) for batch_id, oldest_s in stored.items())
    assert not any(ids.contains(f"other-{i:010d}", T0_S + i % 2 * 3600) for i in range(2000))
    stats = ids.statistics()
    assert stats.ids == len(stored)
    assert stats.buckets == 2
    # Packed: far below the ~115 bytes an id costs as a string in a dict.
    assert stats.size_bytes < 40 * len(stored)


def test_adding_an_id_twice_counts_it_once() -> None:
    ids = memory()
    for _ in range(3):
        ids.add("batch-0001", T0_S + 10)
    assert ids.statistics().ids == 1


def test_a_retry_is_looked_for_in_the_hour_of_its_oldest_record() -> None:
    ids = memory()
    ids.add("batch-0001", T0_S + 10)
    assert ids.contains("batch-0001", T0_S + 3599)
    # The same id with records of another hour is another batch (only a broken agent reuses
    # an id), so it is not taken for a duplicate and its data is kept.
    assert not ids.contains("batch-0001", T0_S + 3600)
    assert not ids.contains("batch-0001", T0_S - 1)


def test_a_digest_found_across_two_neighbours_is_not_a_match() -> None:
    # The blob holds 00..00 11..11 | 11..11 22..22: "11" * 16 occurs, but straddling two
    # digests, so it was never added.
    low = b"\x00" * 8 + b"\x11" * 8
    high = b"\x11" * 8 + b"\x22" * 8
    run = _Run([high, low])
    assert len(run) == 2
    assert low in run
    assert high in run
    assert b"\x11" * DIGEST_BYTES not in run
    assert b"\x00" * DIGEST_BYTES not in run  # before the first fence
    assert b"\xff" * DIGEST_BYTES not in run


def test_whole_hour_buckets_expire_after_the_horizon_and_the_slack() -> None:
    ids = memory()
    ids.add("early", T0_S + 10)  # bucket [T0, T0 + 1 h)
    ids.add("late", T0_S + 3600 + 10)  # the next hour
    first_expiry_s = T0_S + 3600 + HORIZON_S + SLACK_S
    assert ids.expire(first_expiry_s - 1) == 0
    assert ids.contains("early", T0_S + 10)
    assert ids.expire(first_expiry_s) == 1
    assert not ids.contains("early", T0_S + 10)
    assert ids.contains("late", T0_S + 3600 + 10)
    stats = ids.statistics()
    assert (stats.ids, stats.buckets, stats.expired_ids_total, stats.expired_buckets_total) == (
        1,
        1,
        1,
        1,
    )
    assert ids.expire(first_expiry_s + 3600) == 1
    assert ids.statistics().ids == 0


def test_a_rebuilt_partition_is_found_and_expires_like_any_bucket() -> None:
    ids = memory()
    ids.add_stored(T0_S, [f"rebuilt-{i:04d}" for i in range(100)])
    ids.add_stored(T0_S + 3600, [])  # an hour without batches makes no bucket
    ids.add("live", T0_S + 20)
    assert ids.contains("rebuilt-0042", T0_S + 3599)  # anywhere in the partition's hour
    assert ids.contains("live", T0_S + 20)
    assert not ids.contains("rebuilt-0042", T0_S + 3600)
    assert ids.statistics().buckets == 1
    assert ids.expire(T0_S + 3600 + HORIZON_S + SLACK_S) == 101
    assert ids.oldest_needed_s(T0_S + HORIZON_S + SLACK_S) == T0_S


@settings(max_examples=200, deadline=None)
@given(
    oldest_offsets_s=st.lists(st.floats(0, 10 * 3600), min_size=1, max_size=40),
    steps_s=st.lists(st.floats(0, 4 * 3600), min_size=1, max_size=10),
)
def test_no_id_is_forgotten_while_a_copy_of_its_batch_could_be_accepted(
    oldest_offsets_s: list[float], steps_s: list[float]
) -> None:
    ids = memory()
    batches = {f"batch-{i:04d}": T0_S + offset for i, offset in enumerate(oldest_offsets_s)}
    for batch_id, oldest_s in batches.items():
        ids.add(batch_id, oldest_s)
    now_s = float(T0_S)
    for step_s in steps_s:
        now_s += step_s
        ids.expire(now_s)
        for batch_id, oldest_s in batches.items():
            if oldest_s >= now_s - HORIZON_S:  # the collector would accept a copy
                assert ids.contains(batch_id, oldest_s)
    stats = ids.statistics()
    assert stats.ids + stats.expired_ids_total == len(batches)


def test_bad_arguments_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="horizon_s: 0"):
        BatchIdMemory(horizon_s=0, slack_s=0)
    with pytest.raises(ValueError, match="slack_s: -1"):
        BatchIdMemory(horizon_s=1, slack_s=-1)
    with pytest.raises(ValueError, match="hour_start_s: 1800000001 is not the start of an hour"):
        memory().add_stored(T0_S + 1, ["batch-0001"])
