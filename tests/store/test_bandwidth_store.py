"""BandwidthStore on SQLite and PostgreSQL: exactly-once ingest, day partitions, retention."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.store.bandwidth import (
    DAY_S,
    BandwidthStore,
    InterfaceSample,
    StoredReport,
    day_of,
    partition_name,
)
from pingmesh.store.results import ResultsDB

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.fixture
def store(db_target: Path | str) -> Iterator[BandwidthStore]:
    db = ResultsDB(db_target)
    yield BandwidthStore(db.database)
    db.close()


def _report(
    report_id: str, end_s: float, *, rx: int = 1000, tx: int = 500, iface: str = "eth0"
) -> StoredReport:
    return StoredReport(
        report_id=report_id,
        start_s=end_s - 1.0,
        end_s=end_s,
        interfaces=(
            InterfaceSample(
                interface=iface,
                interval_s=1.0,
                rx_bytes=rx,
                tx_bytes=tx,
                rx_packets=max(1, rx // 1000),
                tx_packets=max(1, tx // 1000),
                rx_peak_bytes_per_s=float(rx),
                tx_peak_bytes_per_s=float(tx),
            ),
        ),
    )


def test_a_report_is_stored_once_however_often_it_arrives(store: BandwidthStore) -> None:
    first = store.ingest("h1", "web 1", [_report("r-000001", T0)], now_s=T0)
    again = store.ingest(
        "h1", "web 1", [_report("r-000001", T0), _report("r-000002", T0 + 1)], now_s=T0 + 1
    )
    assert (first.accepted, first.duplicate) == (1, 0)
    assert (again.accepted, again.duplicate) == (1, 1)
    (summary,) = store.interfaces(start_s=T0 - 10, end_s=T0 + 10)
    assert (summary.agent, summary.alias, summary.interface) == ("h1", "web 1", "eth0")
    assert (summary.rx_bytes, summary.tx_bytes) == (2000, 1000)
    stats = store.statistics()
    assert (stats.reports_accepted_total, stats.reports_duplicate_total) == (2, 1)


def test_the_same_report_id_from_another_agent_is_another_report(store: BandwidthStore) -> None:
    store.ingest("h1", "", [_report("r-000001", T0)], now_s=T0)
    result = store.ingest("h2", "", [_report("r-000001", T0)], now_s=T0)
    assert result.accepted == 1
    assert [t.agent for t in store.top_talkers(start_s=T0 - 10, end_s=T0 + 10)] == ["h1", "h2"]


def test_duplicates_inside_one_batch_count_once(store: BandwidthStore) -> None:
    result = store.ingest("h1", "", [_report("r-000001", T0)] * 3, now_s=T0)
    assert (result.accepted, result.duplicate) == (1, 2)


def test_reports_go_to_the_partition_of_their_day(store: BandwidthStore) -> None:
    midnight = (day_of(T0) + 1) * DAY_S
    store.ingest(
        "h1",
        "",
        [_report("r-000001", midnight - 0.5), _report("r-000002", midnight + 0.5)],
        now_s=T0,
    )
    assert store.partitions() == [day_of(T0), day_of(T0) + 1]
    points = store.series("h1", "eth0", start_s=midnight - 60, end_s=midnight + 60, step_s=60)
    assert [(p.start_s, p.rx_bytes) for p in points] == [(midnight - 60, 1000), (midnight, 1000)]
    assert partition_name(day_of(T0)) == "bandwidth_stats_p20270115"


def test_series_buckets_sum_bytes_and_keep_the_peak(store: BandwidthStore) -> None:
    start = day_of(T0) * DAY_S + 3600  # on a bucket boundary
    reports = [_report(f"r-{i:06d}", start + 1 + i, rx=1000 * (i + 1)) for i in range(20)]
    store.ingest("h1", "", reports, now_s=start + 30)
    points = store.series("h1", "eth0", start_s=start, end_s=start + 20, step_s=10)
    assert [p.start_s for p in points] == [start, start + 10]
    # ends start+1 … start+19 are in [start, start + 20); a report's bucket holds its end
    assert [p.interval_s for p in points] == [9.0, 10.0]
    assert points[0].rx_bytes == sum(1000 * (i + 1) for i in range(9))
    assert points[1].rx_peak_bytes_per_s == 19_000.0
    assert points[0].rx_bytes_per_s == pytest.approx(points[0].rx_bytes / 9.0)
    assert store.series("h1", "eth1", start_s=start, end_s=start + 20, step_s=10) == []


def test_top_talkers_rank_by_both_directions_and_leave_loopback_out(
    store: BandwidthStore,
) -> None:
    store.ingest("quiet", "", [_report("r-000001", T0, rx=10, tx=10)], now_s=T0)
    store.ingest("busy", "", [_report("r-000001", T0, rx=5000, tx=5000)], now_s=T0)
    store.ingest("loud-lo", "", [_report("r-000001", T0, rx=10**9, tx=10**9, iface="lo")], now_s=T0)
    talkers = store.top_talkers(start_s=T0 - 5, end_s=T0 + 5, limit=5)
    assert [(t.agent, t.total_bytes) for t in talkers] == [("busy", 10_000), ("quiet", 20)]
    with_lo = store.top_talkers(start_s=T0 - 5, end_s=T0 + 5, limit=1, exclude_interfaces=())
    assert [t.agent for t in with_lo] == ["loud-lo"]


def test_retention_drops_old_partitions_and_nothing_newer(store: BandwidthStore) -> None:
    today = day_of(T0)
    for back in range(10):  # one report a day, at 23:59:59.5 of days today-9 … today
        end = (today - back + 1) * DAY_S - 0.5
        store.ingest("h1", "", [_report(f"r-{back:06d}", end)], now_s=T0)
    assert len(store.partitions()) == 10
    now = today * DAY_S + 3600  # 01:00 today
    dropped = store.apply_retention(now_s=now, retention_days=7)
    cutoff = now - 7 * DAY_S
    # Dropped: every day whose whole span ends at or before the cut-off …
    assert dropped == [today - 9, today - 8]
    assert all((d + 1) * DAY_S <= cutoff for d in dropped)
    # … and the day that holds the cut-off stays: every row newer than the cut-off is kept.
    assert store.partitions() == list(range(today - 7, today + 1))
    (kept,) = store.interfaces(start_s=cutoff, end_s=now + DAY_S)
    assert kept.rx_bytes == 8 * 1000
    assert store.statistics().partitions_dropped_total == 2
    assert store.apply_retention(now_s=now, retention_days=7) == []


def test_a_dropped_day_can_take_reports_again(store: BandwidthStore) -> None:
    store.ingest("h1", "", [_report("r-000001", T0)], now_s=T0)
    store.drop_before((day_of(T0) + 1) * DAY_S)
    assert store.partitions() == []
    result = store.ingest("h1", "", [_report("r-000001", T0)], now_s=T0)
    assert result.accepted == 1
    assert store.partitions() == [day_of(T0)]


def test_partitions_survive_reopening(db_target: Path | str) -> None:
    db = ResultsDB(db_target)
    BandwidthStore(db.database).ingest("h1", "", [_report("r-000001", T0)], now_s=T0)
    db.close()
    again = ResultsDB(db_target)
    store = BandwidthStore(again.database)
    assert store.partitions() == [day_of(T0)]
    assert store.ingest("h1", "", [_report("r-000001", T0)], now_s=T0).duplicate == 1
    again.close()


def test_a_bad_series_request_is_refused(store: BandwidthStore) -> None:
    with pytest.raises(ValueError, match="end_s > start_s"):
        store.series("h1", "eth0", start_s=T0, end_s=T0, step_s=1)
    with pytest.raises(ValueError, match="more than"):
        store.series("h1", "eth0", start_s=T0, end_s=T0 + 10**6, step_s=1)
    with pytest.raises(ValueError, match="retention_days"):
        store.apply_retention(now_s=T0, retention_days=0)
