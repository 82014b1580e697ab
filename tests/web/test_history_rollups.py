"""Long ranges read the analysis's rollups: the answers agree with the 10-minute windows (counts
exactly, percentiles within the histogram's bucket error), the newest stretch that no rollup
covers yet comes from finer windows, and points are the same whatever timezone the range is
written in.

The windows are the analysis's own: two hours of synthetic probes in a raw store, analysed
into 10-minute windows that keep their histograms, rolled up into hours, written to a results
database as the runner writes them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pingmesh.analysis import queries
from pingmesh.analysis.jobs import compute_window, rollup_window
from pingmesh.clock import FakeClock
from pingmesh.config import ServerConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.store.results import ResultsDB
from pingmesh.store.rollups import RollupStore
from pingmesh.web.api import Api
from pingmesh.web.app import create_app
from pingmesh.web.history_api import HistoryApi, Points
from tests.analysis.synthetic_store import T0, TOPOLOGY, synthetic_rows, write_in_flushes
from tests.core.analysis.reference import nearest_rank
from tests.web.client import TestClient
from tests.web.fleet import window

HOUR = 3600
# Two hours in UTC, and the same two hours written in India's offset (+05:30).
UTC_RANGE = {"start": "2027-01-15T08:00:00Z", "end": "2027-01-15T10:00:00Z"}
IST_RANGE = {"start": "2027-01-15T13:30:00+05:30", "end": "2027-01-15T15:30:00+05:30"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Analysed:
    path: Path
    rows: list[dict[str, Any]]
    pair: tuple[str, str]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Analysed:
    """Twelve 10-minute windows and both hours rolled up from them, in a results database."""
    assert datetime.fromisoformat(UTC_RANGE["start"]).timestamp() == T0
    root = tmp_path_factory.mktemp("analysed")
    rows = synthetic_rows(T0, T0 + 2 * HOUR, seed=5)
    raw = write_in_flushes(root / "raw", rows, every_s=60.0)
    rollups = RollupStore(root / "rollups")
    db = ResultsDB(root / "results.sqlite")
    for start in range(T0, T0 + 2 * HOUR, 600):
        done = compute_window(raw, "10m", start, start + 600, now_s=start + 700, rollups=rollups)
        db.write_window(done.window, done.sla, done.matrix)
    for start in (T0, T0 + HOUR):
        done = rollup_window(
            rollups,
            "1h",
            start,
            start + HOUR,
            source_window="10m",
            ten_minute_s=600,
            now_s=start + HOUR + 100,
        )
        db.write_window(done.window, done.sla, done.matrix)
    db.close()
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r["agent"], r["dst"])] = counts.get((r["agent"], r["dst"]), 0) + 1
    pair = max(sorted(counts), key=lambda p: counts[p])
    return Analysed(path=root / "results.sqlite", rows=rows, pair=pair)


@contextmanager
def client_for(
    path: Path, *, max_points: int, node_max_points: int, keep_hours: int = 2
) -> Iterator[TestClient]:
    db = ResultsDB(path)
    try:
        # An hour not rolled up yet: as right after it ended, before the hour job ran.
        db.database.execute(
            'DELETE FROM windows WHERE "window" = ? AND window_start >= ?',
            ("1h", T0 + keep_hours * HOUR),
        )
        clock = FakeClock(float(T0 + 2 * HOUR + 60))
        source = TopologySource(TOPOLOGY)
        api = Api(db, source, ServerConfig(), clock=clock)
        history = HistoryApi(
            db, None, source, api, clock=clock, max_points=max_points, min_points=1,
            node_max_points=node_max_points, node_min_points=1,
        )  # fmt: skip
        with TestClient(create_app([api.router, history.router])) as client:
            yield client
    finally:
        db.close()


@pytest.fixture
def copy(analysed: Analysed, tmp_path: Path) -> Path:
    """A copy of the analysed database that a test may change."""
    target = tmp_path / "results.sqlite"
    target.write_bytes(analysed.path.read_bytes())
    return target


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def ten_minute_series(client: TestClient, src: str, dst: str) -> dict[str, list[Any]]:
    """The two hours of a pair from its ten-minute windows, an hour (6 points) at a time."""
    hours = [
        client.get(
            "/api/v1/history",
            params={"src": src, "dst": dst, "window": "10m", "start": iso(t), "end": iso(t + HOUR)},
        ).json()["series"]
        for t in (T0, T0 + HOUR)
    ]
    return {name: hours[0][name] + hours[1][name] for name in hours[0]}


def within_buckets(value: float, low: float, high: float) -> bool:
    return low * (1 - queries.ALPHA) <= value <= high * (1 + queries.ALPHA)


def test_a_long_range_from_hourly_rollups_agrees_with_the_ten_minute_windows(
    analysed: Analysed, copy: Path
) -> None:
    src, dst = analysed.pair
    # At most 6 points: two hours are 12 ten-minute windows, so auto reads the hours.
    with client_for(copy, max_points=6, node_max_points=6) as client:
        coarse = client.get("/api/v1/history", params={"src": src, "dst": dst, **UTC_RANGE})
        tens = ten_minute_series(client, src, dst)
        node = client.get(f"/api/v1/node/{src}", params=UTC_RANGE).json()
    hourly = coarse.json()
    assert (hourly["window"], hourly["length_s"]) == ("1h", 3600)
    assert hourly["resolutions"] == [{"window": "1h", "length_s": 3600, "points": 2}]
    series = hourly["series"]
    assert len(series["start"]) == 2
    assert len(tens["start"]) == 12
    for h in range(2):
        six = slice(6 * h, 6 * h + 6)
        # Counters add up exactly.
        assert series["probes"][h] > 0
        for name in ("probes", "failures", "retransmitted"):
            assert series[name][h] == sum(tens[name][six])
        # A percentile of the hour lies between those of its ten-minute windows, give or take
        # one histogram bucket, and within a bucket of the exact value over the raw probes.
        rtts = [
            r["rtt_us"]
            for r in analysed.rows
            if (r["agent"], r["dst"]) == (src, dst)
            and r["outcome"] == "ok"
            and T0 + h * HOUR <= r["time"].timestamp() < T0 + (h + 1) * HOUR
        ]
        for name, q in queries.QUANTILES:
            value = series[name][h]
            parts = [v for v in tens[name][six] if v is not None]
            assert within_buckets(value, min(parts), max(parts)), (name, value, parts)
            exact = nearest_rank(rtts, float(q))
            assert exact is not None
            assert value == pytest.approx(exact, rel=queries.ALPHA)
    # The node page reads the same hourly rows: this pair's forward graph is that series.
    assert node["window"] == "1h"
    assert node["start"] == series["start"]
    forward = next(p for p in node["forward"] if p["peer"] == dst)
    assert forward["probes"] == series["probes"]
    assert forward["p99_us"] == [round(v, 1) for v in series["p99_us"]]


def test_the_stretch_no_rollup_covers_yet_comes_from_finer_windows(
    analysed: Analysed, copy: Path
) -> None:
    src, dst = analysed.pair
    with client_for(copy, max_points=6, node_max_points=6, keep_hours=1) as client:
        history = client.get("/api/v1/history", params={"src": src, "dst": dst, **UTC_RANGE})
        tens = ten_minute_series(client, src, dst)
        only_hours = client.get(
            "/api/v1/history", params={"src": src, "dst": dst, "window": "1h", **UTC_RANGE}
        ).json()
        node = client.get(f"/api/v1/node/{src}", params=UTC_RANGE).json()
        sla = client.get(
            "/api/v1/history/sla", params={"scope": "server", "entity": src, **UTC_RANGE}
        ).json()
    body = history.json()
    # The first hour is rolled up, the second not yet: its six ten-minute windows follow.
    assert body["window"] == "1h"
    assert body["resolutions"] == [
        {"window": "1h", "length_s": 3600, "points": 1},
        {"window": "10m", "length_s": 600, "points": 6},
    ]
    series = body["series"]
    assert series["start"][1:] == tens["start"][6:]
    assert series["probes"][1:] == tens["probes"][6:]
    assert series["probes"][0] == sum(tens["probes"][:6])
    # Points tile the range: each starts where the one before ended.
    assert series["start"][0] == "2027-01-15T08:00:00+00:00"
    assert all(e == s for e, s in zip(series["end"], series["start"][1:], strict=False))
    assert series["end"][-1] == "2027-01-15T10:00:00+00:00"
    # Asked for by name, a kind is that kind only.
    assert only_hours["resolutions"] == [{"window": "1h", "length_s": 3600, "points": 1}]
    assert len(node["start"]) == 7
    assert node["start"] == series["start"]
    assert [r["points"] for r in node["resolutions"]] == [1, 6]
    assert sla["series"]["start"] == series["start"]
    assert all(p > 0 for p in sla["series"]["probes"])


def test_points_are_the_same_whatever_timezone_the_range_is_written_in(
    analysed: Analysed, copy: Path
) -> None:
    src, dst = analysed.pair
    with client_for(copy, max_points=6, node_max_points=6) as client:
        answers = [
            client.get("/api/v1/history", params={"src": src, "dst": dst, **r}).json()
            for r in (UTC_RANGE, IST_RANGE)
        ]
        nodes = [client.get(f"/api/v1/node/{src}", params=r).json() for r in (UTC_RANGE, IST_RANGE)]
    utc, ist = answers
    assert utc["series"] == ist["series"]
    assert (utc["start"], utc["end"]) == (ist["start"], ist["end"])
    assert nodes[0]["forward"] == nodes[1]["forward"]
    # Every point is an hour that starts on a UTC hour, written in UTC.
    starts = [datetime.fromisoformat(t) for t in utc["series"]["start"]]
    assert [t.utcoffset() for t in starts] == [timedelta(0)] * 2
    assert all(t.timestamp() % HOUR == 0 for t in starts)
    assert [b.timestamp() - a.timestamp() for a, b in itertools.pairwise(starts)] == [HOUR]
    assert starts[0].timestamp() == T0


def test_auto_reads_the_coarsest_kind_that_gives_enough_points(tmp_path: Path) -> None:
    """With the defaults, for graphs of one series: a day in 10-minute windows (144 points),
    a week in hours, a year in days; for a node page's small graphs: a day in hours, a week
    in days. Each then the stretch its rollup does not cover yet, from finer windows."""
    db = ResultsDB(tmp_path / "results.sqlite")
    end = T0  # 08:00 UTC; the hour 07:00-08:00 is not rolled up yet, nor is today
    midnight = end - end % 86400
    made = {"10m": (end, 600, 6 * 24 * 8), "1h": (end - HOUR, HOUR, 24 * 8),
            "1d": (midnight, 86400, 400)}  # fmt: skip
    for kind, (last_end, length, count) in made.items():
        for k in range(count):
            start = last_end - (k + 1) * length
            db.write_window(window(kind, start, length, computed_at_s=end), [], [])
    for k in range(360):
        db.write_window(window("30s", end - 30 - 10 * k, 30, computed_at_s=end), [], [])
    clock = FakeClock(float(end))
    source = TopologySource(TOPOLOGY)
    api = Api(db, source, ServerConfig(), clock=clock)
    history = HistoryApi(db, None, source, api, clock=clock)
    src, dst = (s.name for s in TOPOLOGY.servers[:2])

    def read(body: dict[str, Any]) -> list[tuple[str, int]]:
        return [(r["window"], r["points"]) for r in body["resolutions"]]

    pairs, nodes = {}, {}
    with TestClient(create_app([api.router, history.router])) as client:
        for days in (1 / 24, 1, 7, 365):
            span = {"start": iso(end - days * 86400), "end": iso(end)}
            pair = client.get("/api/v1/history", params={"src": src, "dst": dst, **span}).json()
            sla = client.get(
                "/api/v1/history/sla", params={"scope": "server", "entity": src, **span}
            ).json()
            node = client.get(f"/api/v1/node/{src}", params=span).json()
            assert read(sla) == read(pair)
            assert len(pair["series"]["start"]) == sum(n for _, n in read(pair))
            assert len(node["start"]) == sum(n for _, n in read(node))
            pairs[days], nodes[days] = read(pair), read(node)
    db.close()
    assert pairs == {
        1 / 24: [("30s", 120)],
        1: [("10m", 144)],
        7: [("1h", 167), ("10m", 6)],
        365: [("1d", 364), ("1h", 7), ("10m", 6)],
    }
    assert nodes == {
        1 / 24: [("10m", 6)],
        1: [("1h", 23), ("10m", 6)],
        7: [("1d", 6), ("1h", 7), ("10m", 6)],
        365: [("1d", 96), ("1h", 7), ("10m", 6)],  # over-long: the newest 96 days
    }


def test_point_bounds_that_make_no_sense_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_points: 800 must be between 1 and 720"):
        Points(low=800, high=720)
    with pytest.raises(ValueError, match="max_points: 1 must be at least 2"):
        Points(low=1, high=1)
    db = ResultsDB(tmp_path / "results.sqlite")
    clock = FakeClock(float(T0))
    source = TopologySource(TOPOLOGY)
    api = Api(db, source, ServerConfig(), clock=clock)
    with pytest.raises(ValueError, match="node_min_points: 0 must be between 1 and 96"):
        HistoryApi(db, None, source, api, clock=clock, node_min_points=0)
    db.close()
