"""1-hour and 1-day windows are rolled up from the stored histograms of the kind below, and equal
a recomputation from raw: counters exactly, percentiles within the histogram's 1 %."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pingmesh.analysis import queries
from pingmesh.analysis.expected import expected_pairs
from pingmesh.analysis.jobs import WindowResult, compute_window, rollup_window
from pingmesh.config import PinglistConfig
from pingmesh.core.analysis.synthetic import RandomDrop
from pingmesh.store.raw import RawStore
from pingmesh.store.rollups import RollupStore
from tests.analysis.synthetic_store import T0, TOPOLOGY, synthetic_rows, write_in_flushes
from tests.core.analysis.reference import counts_of, nearest_rank

DAY = T0 - T0 % 86400


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    # Two hours, the second with a silent drop so that the drop rates are not all zero.
    return synthetic_rows(T0, T0 + 3600, seed=3) + synthetic_rows(
        T0 + 3600, T0 + 7200, [RandomDrop(device="spine:dc1:1", rate=0.02)], seed=4
    )


@pytest.fixture(scope="module")
def stores(
    rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[RawStore, RollupStore]:
    root = tmp_path_factory.mktemp("data")
    raw = write_in_flushes(root / "raw", rows, every_s=60.0)
    rollups = RollupStore(root / "rollups")
    for start in range(T0, T0 + 7200, 600):
        compute_window(raw, "10m", start, start + 600, now_s=start + 700, rollups=rollups)
    for start in (T0, T0 + 3600):
        rollup_window(
            rollups,
            "1h",
            start,
            start + 3600,
            source_window="10m",
            ten_minute_s=600,
            now_s=start + 3700,
        )
    return raw, rollups


def by_key(result: WindowResult) -> tuple[dict[Any, Any], dict[Any, Any]]:
    sla = {(r.scope, r.entity): r for r in result.sla}
    matrix = {(r.level, r.src, r.dst): r for r in result.matrix}
    return sla, matrix


@pytest.mark.parametrize("hour", [0, 1])
def test_an_hour_rolled_up_equals_the_hour_from_raw(
    stores: tuple[RawStore, RollupStore], hour: int
) -> None:
    raw, rollups = stores
    start = T0 + hour * 3600
    rolled = rollup_window(
        rollups,
        "1h",
        start,
        start + 3600,
        source_window="10m",
        ten_minute_s=600,
        now_s=start + 3700,
    )
    direct = compute_window(raw, "1h", start, start + 3600, now_s=start + 3700)
    assert rolled.window == direct.window
    assert rolled.window.records > 10_000
    # Histograms merge exactly: not "close", equal.
    assert by_key(rolled) == by_key(direct)


def test_a_day_rolled_up_from_hours_equals_the_day_from_raw(
    stores: tuple[RawStore, RollupStore],
) -> None:
    raw, rollups = stores
    rolled = rollup_window(
        rollups, "1d", DAY, DAY + 86400, source_window="1h", ten_minute_s=600, now_s=DAY + 86500
    )
    direct = compute_window(raw, "1d", DAY, DAY + 86400, now_s=DAY + 86500)
    assert by_key(rolled) == by_key(direct)
    assert rollups.starts("1d", DAY, DAY + 86400) == [DAY]


def test_rollups_are_within_the_bucket_error_of_the_exact_values(
    stores: tuple[RawStore, RollupStore], rows: list[dict[str, Any]]
) -> None:
    _, rollups = stores
    rolled = rollup_window(
        rollups, "1d", DAY, DAY + 86400, source_window="1h", ten_minute_s=600, now_s=DAY + 86500
    )
    sla, matrix = by_key(rolled)
    checked = 0
    for scope, column in (("server", "agent"), ("tor", "src_tor"), ("dc", "src_dc")):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(r[column], []).append(r)
        for entity, members in groups.items():
            got = sla[(scope, entity)]
            want = counts_of(members)
            assert (got.probes, got.successes, got.retransmitted) == (
                want.probes,
                want.successes,
                want.retransmitted,
            )
            assert got.drop_rate == want.drop_rate
            rtts = [r["rtt_us"] for r in members if r["outcome"] == "ok"]
            for name, q in queries.QUANTILES:
                exact = nearest_rank(rtts, float(q))
                assert exact is not None
                assert getattr(got, name) == pytest.approx(exact, rel=queries.ALPHA)
                checked += 1
    assert checked > 100
    pair = matrix[("server", "dc1-ps1-t1-h1", "dc1-ps1-t1-h2")]
    rtts = [
        r["rtt_us"] for r in rows if (r["agent"], r["dst"]) == ("dc1-ps1-t1-h1", "dc1-ps1-t1-h2")
    ]
    assert pair.p50_us == pytest.approx(nearest_rank(rtts, 0.5), rel=queries.ALPHA)


def test_rollup_coverage_is_the_mean_over_ten_minute_windows(tmp_path: Path) -> None:
    expected = expected_pairs(TOPOLOGY, PinglistConfig(inter_dc_per_podset=1))
    # Probes only in the first 30 minutes of the hour: half the hour's windows are empty.
    raw = write_in_flushes(tmp_path / "raw", synthetic_rows(T0, T0 + 1800), every_s=60.0)
    rollups = RollupStore(tmp_path / "rollups")
    for start in range(T0, T0 + 3600, 600):
        ten = compute_window(
            raw, "10m", start, start + 600, now_s=start + 700, expected=expected, rollups=rollups
        )
        if start < T0 + 1800:
            assert {r.coverage for r in ten.sla if r.scope == "server"} == {1.0}
    hour = rollup_window(
        rollups,
        "1h",
        T0,
        T0 + 3600,
        source_window="10m",
        ten_minute_s=600,
        now_s=T0 + 3700,
        expected=expected,
    )
    coverage = {r.coverage for r in hour.sla if r.scope in ("server", "tor", "dc", "dc_pair")}
    assert coverage == {0.5}
    assert all(r.pairs_expected for r in hour.sla if r.scope == "server")


def test_nothing_to_roll_up(tmp_path: Path) -> None:
    empty = rollup_window(
        RollupStore(tmp_path),
        "1h",
        T0,
        T0 + 3600,
        source_window="10m",
        ten_minute_s=600,
        now_s=T0 + 3700,
    )
    assert (empty.window.records, empty.sla, empty.matrix) == (0, (), ())
