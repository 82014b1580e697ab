"""compute_window on synthetic records with known answers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pingmesh.analysis import queries
from pingmesh.analysis.engine import Expected, Session
from pingmesh.analysis.jobs import JobOptions, compute_window, window_name
from pingmesh.store.raw import RawStore
from pingmesh.store.results import MatrixRow, SlaRow
from tests.analysis.rawdata import PLACEMENT, T0_S, nearest_rank, probe, table

STAT_FIELDS = (
    "probes",
    "successes",
    "failures",
    "retransmitted",
    "p50_us",
    "p90_us",
    "p99_us",
    "p999_us",
    "drop_rate",
)


def dataset() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    # a1 -> b1: RTTs 1..1000 µs in a scrambled order; five needed retransmissions (one needed
    # three: it still counts once); ten timeouts, some with retransmissions, which must not
    # count in the drop rate.
    for i in range(1000):
        rtt = float((i * 7919) % 1000 + 1)
        retransmits = {10.0: 1, 20.0: 1, 30.0: 1, 40.0: 2, 50.0: 3}.get(rtt, 0)
        rows.append(probe(T0_S + i * 0.5, "a1", "b1", rtt_us=rtt, retransmits=retransmits))
    for i in range(10):
        rows.append(
            probe(T0_S + 501 + i, "a1", "b1", outcome="timeout", rtt_us=None, retransmits=i % 3)
        )
    # a2 -> c1 (another DC): 100 probes of 2 ms, two with a retransmission.
    for i in range(100):
        rows.append(probe(T0_S + 2 * i, "a2", "c1", rtt_us=2000.0, retransmits=int(i < 2)))
    # b1 -> a destination that the topology does not name.
    for i in range(4):
        rows.append(probe(T0_S + 10 + i, "b1", "ext", rtt_us=50.0, retransmits=int(i == 0)))
    # c1 -> a1: nothing succeeds.
    for i in range(5):
        rows.append(probe(T0_S + 20 + i, "c1", "a1", outcome="refused", rtt_us=None))
    return rows


def reference(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The statistics by definition, computed in Python."""
    ok = [r for r in rows if r["outcome"] == "ok"]
    retransmitted = sum(1 for r in ok if r["retransmits"] > 0)
    rtts = [r["rtt_us"] for r in ok]
    return {
        "probes": len(rows),
        "successes": len(ok),
        "failures": len(rows) - len(ok),
        "retransmitted": retransmitted,
        "p50_us": nearest_rank(rtts, 0.5),
        "p90_us": nearest_rank(rtts, 0.9),
        "p99_us": nearest_rank(rtts, 0.99),
        "p999_us": nearest_rank(rtts, 0.999),
        "drop_rate": retransmitted / len(ok) if ok else None,
    }


def stats_of(row: SlaRow | MatrixRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in STAT_FIELDS}


PERCENTILES = ("p50_us", "p90_us", "p99_us", "p999_us")


def close(got: dict[str, Any], want: dict[str, Any]) -> bool:
    """Counters and drop rate exact; percentiles within the histogram's relative accuracy."""
    for name in STAT_FIELDS:
        a, b = got[name], want[name]
        if name in PERCENTILES and a is not None and b is not None:
            if abs(a - b) > queries.ALPHA * b + 1e-9:
                return False
        elif a != b:
            return False
    return True


LEVEL_INDEX = {"tor": 0, "podset": 1, "dc": 2}


def entity_of(level: str) -> Callable[[str], str | None]:
    if level == "server":
        return lambda name: name
    return lambda name: PLACEMENT.get(name, (None, None, None))[LEVEL_INDEX[level]]


@pytest.fixture
def store(tmp_path: Path) -> RawStore:
    raw = RawStore(tmp_path)
    rows = dataset()
    # Two uploads, so the window spans several files of one partition.
    raw.write(table(rows[:600]))
    raw.write(table(rows[600:]))
    return raw


def test_known_answers_per_server(store: RawStore) -> None:
    result = compute_window(store, "10m", T0_S, T0_S + 600, now_s=T0_S + 700.5)
    servers = {r.entity: stats_of(r) for r in result.sla if r.scope == "server"}
    assert close(
        servers["a1"],
        {
            "probes": 1010,
            "successes": 1000,
            "failures": 10,
            "retransmitted": 5,
            "p50_us": 500.0,
            "p90_us": 900.0,
            "p99_us": 990.0,
            "p999_us": 999.0,
            "drop_rate": 5 / 1000,  # failures are not in the denominator
        },
    )
    assert close(
        servers["a2"],
        {
            "probes": 100,
            "successes": 100,
            "failures": 0,
            "retransmitted": 2,
            "p50_us": 2000.0,
            "p90_us": 2000.0,
            "p99_us": 2000.0,
            "p999_us": 2000.0,
            "drop_rate": 0.02,
        },
    )
    assert servers["b1"]["probes"] == 4  # an unknown destination still counts for its source
    assert servers["b1"]["drop_rate"] == 0.25
    assert servers["c1"] == {
        "probes": 5,
        "successes": 0,
        "failures": 5,
        "retransmitted": 0,
        "p50_us": None,
        "p90_us": None,
        "p99_us": None,
        "p999_us": None,
        "drop_rate": None,  # nothing succeeded: no estimate, not zero
    }
    window = result.window
    assert (window.window, window.window_start, window.window_end) == ("10m", T0_S, T0_S + 600)
    assert window.records == 1119
    assert window.computed_at_s == T0_S + 700.5


def test_known_answers_per_tor_mix_the_servers_probes(store: RawStore) -> None:
    result = compute_window(store, "10m", T0_S, T0_S + 600, now_s=T0_S + 700)
    t1 = next(r for r in result.sla if (r.scope, r.entity) == ("tor", "t1"))
    # a1's 1000 RTTs of 1..1000 and a2's 100 of 2000: ranks 550, 990, 1089, 1099 of 1100.
    assert close(
        stats_of(t1),
        {
            "probes": 1110,
            "successes": 1100,
            "failures": 10,
            "retransmitted": 7,
            "p50_us": 550.0,
            "p90_us": 990.0,
            "p99_us": 2000.0,
            "p999_us": 2000.0,
            "drop_rate": 7 / 1100,
        },
    )


@pytest.mark.parametrize("level", ["server", "tor", "podset", "dc"])
def test_every_entity_matches_the_definition(store: RawStore, level: str) -> None:
    result = compute_window(store, "10m", T0_S, T0_S + 600, now_s=T0_S + 700)
    rows = dataset()
    entity = entity_of(level)
    expected = {
        name: reference([r for r in rows if entity(r["agent"]) == name])
        for name in {entity(r["agent"]) for r in rows}
    }
    got = {r.entity: stats_of(r) for r in result.sla if r.scope == level}
    assert got.keys() == expected.keys()
    assert all(close(got[k], expected[k]) for k in got)
    assert all(r.window == "10m" and r.window_start == T0_S for r in result.sla)


@pytest.mark.parametrize("level", ["server", "tor", "podset", "dc"])
def test_matrix_matches_the_definition(store: RawStore, level: str) -> None:
    result = compute_window(store, "10m", T0_S, T0_S + 600, now_s=T0_S + 700)
    rows = [r for r in dataset() if r["dst"] in PLACEMENT]  # known destinations only
    entity = entity_of(level)
    pairs = {(entity(r["agent"]), entity(r["dst"])) for r in rows}
    expected = {
        pair: reference([r for r in rows if (entity(r["agent"]), entity(r["dst"])) == pair])
        for pair in pairs
    }
    got = {(r.src, r.dst): stats_of(r) for r in result.matrix if r.level == level}
    assert got.keys() == expected.keys()
    assert all(close(got[k], expected[k]) for k in got)


def test_matrix_cells_by_hand(store: RawStore) -> None:
    result = compute_window(store, "10m", T0_S, T0_S + 600, now_s=T0_S + 700)
    cells = {(r.level, r.src, r.dst): r.probes for r in result.matrix}
    assert cells == {
        ("server", "a1", "b1"): 1010,
        ("server", "a2", "c1"): 100,
        ("server", "c1", "a1"): 5,
        ("tor", "t1", "t2"): 1010,
        ("tor", "t1", "t3"): 100,
        ("tor", "t3", "t1"): 5,
        ("podset", "ps1", "ps1"): 1010,
        ("podset", "ps1", "ps2"): 100,
        ("podset", "ps2", "ps1"): 5,
        ("dc", "dc1", "dc1"): 1010,
        ("dc", "dc1", "dc2"): 100,
        ("dc", "dc2", "dc1"): 5,
    }


def test_window_is_half_open_and_filters_inside_files(tmp_path: Path) -> None:
    raw = RawStore(tmp_path)
    raw.write(
        table(
            [
                probe(T0_S - 0.000001, "a1", "b1", rtt_us=1.0),  # previous hour's file
                probe(T0_S, "a1", "b1", rtt_us=2.0),
                probe(T0_S + 599.999999, "a1", "b1", rtt_us=3.0),
                probe(T0_S + 600, "a1", "b1", rtt_us=4.0),  # same file, next window
                probe(T0_S + 3605, "a1", "b1", rtt_us=5.0),  # next hour's file
            ]
        )
    )
    first = compute_window(raw, "10m", T0_S, T0_S + 600, now_s=T0_S + 3700)
    a1 = next(r for r in first.sla if r.entity == "a1")
    # Never outside the window's exact minimum and maximum, within 1 % of the true value.
    assert (first.window.records, a1.p50_us) == (2, 2.0)
    assert a1.p999_us == pytest.approx(3.0, rel=queries.ALPHA)
    second = compute_window(raw, "10m", T0_S + 600, T0_S + 1200, now_s=T0_S + 3700)
    assert [(r.entity, r.p50_us) for r in second.sla if r.scope == "server"] == [("a1", 4.0)]
    across = compute_window(raw, "2h", T0_S - 3600, T0_S + 3600, now_s=T0_S + 3700)
    assert across.window.records == 4


def test_a_window_without_files_is_empty(tmp_path: Path) -> None:
    raw = RawStore(tmp_path)
    raw.write(table([probe(T0_S + 10, "a1", "b1")]))
    empty = compute_window(raw, "30s", T0_S + 7200, T0_S + 7230, now_s=T0_S + 7240)
    assert empty.window.records == 0
    assert (empty.sla, empty.matrix) == ((), ())
    # Files, but no row in the window: empty too.
    quiet = compute_window(raw, "30s", T0_S + 60, T0_S + 90, now_s=T0_S + 100)
    assert (quiet.window.records, quiet.sla, quiet.matrix) == (0, (), ())


def test_a_backwards_window_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"start .* is not before end"):
        compute_window(RawStore(tmp_path), "10m", T0_S, T0_S, now_s=T0_S)


@pytest.mark.parametrize(
    ("length_s", "name"),
    [(30, "30s"), (90, "90s"), (600, "10m"), (3600, "1h"), (5400, "90m"), (86400, "1d")],
)
def test_window_names(length_s: int, name: str) -> None:
    assert window_name(length_s) == name


def test_sql_reads_one_relation_with_utc_literals() -> None:
    sql = queries.probes_view_sql(T0_S, T0_S + 600, columns=(), lag_us=1.0, dwell_us=1.0)
    assert "FROM raw" in sql
    assert "TIMESTAMP '2027-01-15 08:00:00'" in sql
    assert "TIMESTAMP '2027-01-15 08:10:00'" in sql
    assert "FALSE AS noisy" in sql  # files without the host-noise columns: nothing is noisy
    view = queries.duckdb_raw_view_sql(["/data/it's/part-1.parquet"])
    assert "'/data/it''s/part-1.parquet'" in view


def test_windows_are_utc_whatever_the_local_time_zone(store: RawStore) -> None:
    # DuckDB reads TIMESTAMP literals in its session zone, which defaults to the process's.
    script = (
        "import sys; from pathlib import Path;"
        "from pingmesh.store.raw import RawStore;"
        "from pingmesh.analysis.jobs import compute_window;"
        "r = compute_window(RawStore(Path(sys.argv[1])), '10m', int(sys.argv[2]),"
        " int(sys.argv[2]) + 600, now_s=0);"
        "print(r.window.records)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(store.root), str(T0_S)],
        env={**os.environ, "TZ": "Asia/Tokyo"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "1119"


def test_services_and_dc_pairs(store: RawStore) -> None:
    expected = Expected(
        rows=(
            ("a1", "t1", "ps1", "dc1", "dc1", 1),
            ("a2", "t1", "ps1", "dc1", "dc2", 2),
            ("c1", "t3", "ps2", "dc2", "dc1", 1),
        ),
        members=(("web", "a1"), ("web", "a2"), ("db", "c1")),
    )
    result = compute_window(store, "10m", T0_S, T0_S + 600, now_s=T0_S + 700, expected=expected)
    rows = {(r.scope, r.entity): r for r in result.sla}
    rowset = dataset()
    web = reference([r for r in rowset if r["agent"] in ("a1", "a2")])
    assert close(stats_of(rows["service", "web"]), web)
    assert rows["service", "db"].probes == 5
    cross = reference([r for r in rowset if r["agent"] == "a2"])
    assert close(stats_of(rows["dc_pair", "dc1->dc2"]), cross)
    # Coverage: a1 reported its 1 pair, a2 one of its 2, c1 its 1; b1 is not expected.
    assert (rows["server", "a1"].pairs_expected, rows["server", "a1"].coverage) == (1, 1.0)
    assert (rows["server", "a2"].pairs_expected, rows["server", "a2"].coverage) == (2, 0.5)
    assert rows["server", "b1"].coverage is None
    assert rows["tor", "t1"].coverage == pytest.approx(2 / 3)
    assert rows["dc_pair", "dc1->dc2"].coverage == 0.5
    assert rows["service", "web"].coverage == pytest.approx(2 / 3)


def test_server_pairs_have_cells_unless_there_are_too_many(store: RawStore) -> None:
    full = compute_window(store, "10m", T0_S, T0_S + 600, now_s=T0_S + 700)
    pairs = {(r.src, r.dst): r for r in full.matrix if r.level == "server"}
    assert set(pairs) == {("a1", "b1"), ("a2", "c1"), ("c1", "a1")}
    assert pairs["a1", "b1"].p50_us == pytest.approx(500.0, rel=queries.ALPHA)
    # Above the cap only the pairs with a failure or a drop are kept, without percentiles.
    capped = compute_window(
        store, "10m", T0_S, T0_S + 600, now_s=T0_S + 700, options=JobOptions(pair_cells_max=1)
    )
    kept = {(r.src, r.dst): r for r in capped.matrix if r.level == "server"}
    assert set(kept) == {("a1", "b1"), ("a2", "c1"), ("c1", "a1")}  # all three have trouble
    assert kept["a1", "b1"].probes == 1010
    assert kept["a1", "b1"].drop_rate == 5 / 1000
    assert kept["a1", "b1"].p50_us is None
    # The other levels do not depend on the cap.
    assert [r for r in capped.matrix if r.level != "server"] == [
        r for r in full.matrix if r.level != "server"
    ]


def _noisy_store(tmp_path: Path) -> RawStore:
    """A store with one file from before the agents reported host noise and one from after."""

    raw = RawStore(tmp_path)
    raw.write(table([probe(T0_S + i, "a1", "b1", rtt_us=100.0) for i in range(10)]))
    newer = [
        {**probe(T0_S + 100 + i, "a1", "b1", rtt_us=100.0 + i), "send_lag_us": lag}
        for i, lag in enumerate([10.0] * 6 + [90_000.0] * 4)
    ]
    fields = [*table([]).schema, pa.field("send_lag_us", pa.float64())]
    directory = tmp_path / "dt=2027-01-15" / "hour=08"
    pq.write_table(
        pa.Table.from_pylist(newer, schema=pa.schema(fields)), directory / "part-newer.parquet"
    )
    return raw


def test_host_noise_counts_in_the_sla_but_not_for_the_detectors(tmp_path: Path) -> None:

    raw = _noisy_store(tmp_path)
    result = compute_window(raw, "10m", T0_S, T0_S + 600, now_s=T0_S + 700)
    a1 = next(r for r in result.sla if (r.scope, r.entity) == ("server", "a1"))
    assert a1.probes == 20  # the SLA is what the fleet saw, noisy or not
    with Session() as session:
        session.open_raw(
            raw.files_between(T0_S, T0_S + 600),
            T0_S,
            T0_S + 600,
            lag_us=50_000.0,
            dwell_us=50_000.0,
        )
        session.summarise()
        session.register_expected(Expected.empty())
        session.entity_histogram()
        clean = {(e.scope, e.entity): e for e in session.clean_sla()}
        assert clean["server", "a1"].counts.probes == 16  # the 4 late sends are left out
        noisy = session.query("SELECT SUM(noisy) FROM pairs")[0][0]
        assert noisy == 4
