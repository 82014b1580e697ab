"""The read API over a real results database: agents, SLA, heatmap, bad parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from pingmesh.clock import FakeClock
from pingmesh.config import AnalysisConfig, ServerConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.store.results import ResultsDB
from pingmesh.web.api import (
    AgentStatus,
    Api,
    HeatmapOut,
    SlaOut,
    agent_status,
    parse_rfc3339,
    router,
    utc,
)
from pingmesh.web.app import create_app
from tests.web.client import TestClient
from tests.web.fleet import NOW_S, matrix_row, sla_row, window, write_small_windows


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


# -- agents ---------------------------------------------------------------------------------


def test_agents_lists_every_server_and_removed_agents_with_their_status(
    client: TestClient, db: ResultsDB
) -> None:
    db.record_agent_seen("h11", "198.18.1.1", now_s=NOW_S - 5, fetched=True, pinglist_version="v7")
    db.record_agent_seen("h12", "198.18.2.1", now_s=NOW_S - 300, uploaded=True)
    db.record_agent_seen("gone", "198.18.9.9", now_s=NOW_S - 1)

    body = client.get("/api/v1/agents").json()

    by_name = {a["name"]: a for a in body["agents"]}
    assert [a["name"] for a in body["agents"]] == ["gone", "h11", "h12", "h21", "h31", "h41"]
    assert {n: a["status"] for n, a in by_name.items()} == {
        "gone": "removed",
        "h11": "up",
        "h12": "down",
        "h21": "never_seen",
        "h31": "never_seen",
        "h41": "never_seen",
    }
    assert body["counts"] == {"up": 1, "down": 1, "never_seen": 3, "removed": 1}
    h11 = by_name["h11"]
    assert h11["last_seen"] == rfc3339(NOW_S - 5)
    assert h11["last_fetch"] == rfc3339(NOW_S - 5)
    assert h11["last_upload"] is None
    assert h11["pinglist_version"] == "v7"
    assert (h11["dc"], h11["podset"], h11["tor"]) == ("dc1", "ps1", "t1")
    assert by_name["h12"]["last_upload"] == rfc3339(NOW_S - 300)
    assert by_name["h21"]["last_seen"] is None
    assert by_name["h21"]["address"] == "198.18.3.1"  # from the topology, never seen
    gone = by_name["gone"]
    assert (gone["address"], gone["dc"], gone["tor"]) == ("198.18.9.9", None, None)
    assert body["generated_at"] == rfc3339(NOW_S)
    assert body["down_after_s"] == 60.0


def test_an_agent_goes_down_when_the_clock_passes_the_limit(
    client: TestClient, db: ResultsDB, clock: FakeClock
) -> None:
    db.record_agent_seen("h11", "198.18.1.1", now_s=NOW_S)
    clock.advance(60)
    assert _status(client, "h11") == "up"
    clock.advance(1)
    assert _status(client, "h11") == "down"
    db.record_agent_seen("h11", "198.18.1.1", now_s=clock.now_s())
    assert _status(client, "h11") == "up"


def _status(client: TestClient, name: str) -> str:
    agents = client.get("/api/v1/agents").json()["agents"]
    return str(next(a["status"] for a in agents if a["name"] == name))


def test_agent_status_is_a_pure_function_of_its_inputs() -> None:
    def status(last: float | None, *, in_topology: bool = True) -> AgentStatus:
        return agent_status(
            last_seen_s=last, in_topology=in_topology, now_s=100.0, down_after_s=10.0
        )

    assert status(None) is AgentStatus.NEVER_SEEN
    assert status(90.0) is AgentStatus.UP
    assert status(89.9) is AgentStatus.DOWN
    assert status(150.0) is AgentStatus.UP  # an agent clock ahead of ours is still up
    assert status(99.0, in_topology=False) is AgentStatus.REMOVED
    assert status(None, in_topology=False) is AgentStatus.REMOVED


# -- windows --------------------------------------------------------------------------------


def test_windows_lists_the_kinds_with_their_newest_window(
    client: TestClient, db: ResultsDB
) -> None:
    empty = client.get("/api/v1/windows").json()
    assert empty["default"] == "10m"
    assert empty["not_built"] == ["1h", "1d"]
    assert [(k["name"], k["role"], k["length_s"], k["every_s"]) for k in empty["kinds"]] == [
        ("30s", "fast", 30, 10),
        ("10m", "ten_minute", 600, 600),
    ]
    assert all(k["latest_start"] is None for k in empty["kinds"])
    starts = write_small_windows(db)
    kinds = {k["name"]: k for k in client.get("/api/v1/windows").json()["kinds"]}
    assert kinds["30s"]["latest_start"] == rfc3339(starts["30s"])
    assert kinds["30s"]["latest_end"] == rfc3339(starts["30s"] + 30)
    assert kinds["10m"]["computed_at"] == rfc3339(starts["10m"] + 610)


def test_window_kinds_follow_the_configured_lengths(
    db: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    config = ServerConfig(analysis=AnalysisConfig(fast_window_s=10, ten_minute_window_s=300))
    start = int(NOW_S) - 10
    db.write_window(
        window("10s", start, 10, computed_at_s=NOW_S),
        [sla_row("10s", start, "tor", "t1", 10, p99_us=150.0)],
        [],
    )
    with TestClient(create_app([router(db, source, config, clock=clock)])) as client:
        kinds = client.get("/api/v1/windows").json()
        assert [k["name"] for k in kinds["kinds"]] == ["10s", "5m"]
        assert kinds["default"] == "5m"
        fast = client.get("/api/v1/sla", params={"scope": "tor", "window": "10s"}).json()
        assert [r["p99_us"] for r in fast["rows"]] == [150.0]
        assert client.get("/api/v1/sla", params={"scope": "tor"}).json()["window"] == "5m"
        wrong = client.get("/api/v1/heatmap", params={"window": "30s"})
        assert wrong.status_code == 422
        assert wrong.json()["detail"] == (
            "query parameter 'window': '30s' is not a window kind; built: 10s, 5m"
        )
        spec = client.get("/openapi.json").json()
        params = spec["paths"]["/api/v1/sla"]["get"]["parameters"]
        window_param = next(p for p in params if p["name"] == "window")
        assert window_param["schema"]["enum"] == ["10s", "5m", "1h", "1d"]


def test_a_fast_window_as_long_as_the_ten_minute_one_is_refused(
    db: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    config = ServerConfig(analysis=AnalysisConfig(fast_window_s=60, ten_minute_window_s=60))
    with pytest.raises(ValueError, match="both 1m"):
        Api(db, source, config, clock=clock)


# -- SLA ------------------------------------------------------------------------------------


def test_sla_defaults_to_the_newest_10m_window(client: TestClient, db: ResultsDB) -> None:
    starts = write_small_windows(db)
    response = client.get("/api/v1/sla", params={"scope": "tor"})
    assert response.status_code == 200
    body = response.json()
    assert body["window"] == "10m"
    assert body["scope"] == "tor"
    assert body["window_start"] == rfc3339(starts["10m"])
    assert body["window_end"] == rfc3339(starts["10m"] + 600)
    assert body["computed_at"] == rfc3339(starts["10m"] + 610)
    assert body["note"] is None
    rows = {r["entity"]: r for r in body["rows"]}
    assert list(rows) == ["t1", "t2"]
    assert rows["t1"] == {
        "entity": "t1",
        "probes": 200,
        "successes": 197,
        "failures": 3,
        "retransmitted": 0,
        "p50_us": pytest.approx(1000.0 / 3),
        "p90_us": 500.0,
        "p99_us": 1000.0,
        "p999_us": 1500.0,
        "drop_rate": 0.0,
    }
    SlaOut.model_validate(body)  # what /docs documents is what is served


@pytest.mark.parametrize(
    ("scope", "entities"),
    [("server", ["h11", "h12"]), ("podset", ["ps1"]), ("dc", ["dc1"])],
)
def test_sla_answers_every_built_scope(
    client: TestClient, db: ResultsDB, scope: str, entities: list[str]
) -> None:
    write_small_windows(db)
    body = client.get("/api/v1/sla", params={"scope": scope}).json()
    assert [r["entity"] for r in body["rows"]] == entities


def test_sla_of_the_fast_window_is_the_newest_30s_window(client: TestClient, db: ResultsDB) -> None:
    starts = write_small_windows(db)
    body = client.get("/api/v1/sla", params={"scope": "tor", "window": "30s"}).json()
    assert body["window_start"] == rfc3339(starts["30s"])
    assert [(r["entity"], r["p99_us"]) for r in body["rows"]] == [("t1", 200.0)]


def test_sla_without_a_10m_window_says_so_instead_of_falling_back(
    client: TestClient, db: ResultsDB
) -> None:
    start = int(NOW_S) - 30
    db.write_window(
        window("30s", start, 30, computed_at_s=NOW_S),
        [sla_row("30s", start, "tor", "t1", 10, p99_us=100.0)],
        [],
    )
    body = client.get("/api/v1/sla", params={"scope": "tor"}).json()
    assert body["rows"] == []
    assert body["window"] == "10m"
    assert body["window_start"] is None
    assert "no 10m window" in body["note"]


def test_sla_at_picks_the_window_that_contains_the_time(client: TestClient, db: ResultsDB) -> None:
    starts = write_small_windows(db)
    old = client.get(
        "/api/v1/sla", params={"scope": "tor", "at": rfc3339(starts["10m_old"] + 599)}
    ).json()
    assert old["window_start"] == rfc3339(starts["10m_old"])
    assert [(r["entity"], r["p99_us"]) for r in old["rows"]] == [("t1", 700.0)]
    new = client.get(
        "/api/v1/sla", params={"scope": "tor", "at": rfc3339(starts["10m_old"] + 600)}
    ).json()
    assert new["window_start"] == rfc3339(starts["10m"])
    # A timezone other than UTC names the same instant.
    offset = datetime.fromtimestamp(starts["10m_old"] + 10, tz=UTC).astimezone(
        timezone(timedelta(hours=5, minutes=30))
    )
    assert (
        client.get("/api/v1/sla", params={"scope": "tor", "at": offset.isoformat()}).json()[
            "window_start"
        ]
        == old["window_start"]
    )
    # Overlapping 30 s windows: the newest one that contains the time.
    fast = client.get(
        "/api/v1/sla", params={"scope": "tor", "window": "30s", "at": rfc3339(starts["30s"] + 5)}
    ).json()
    assert fast["window_start"] == rfc3339(starts["30s"])


@pytest.mark.parametrize("offset_s", [-3600, 3600])
def test_sla_at_outside_every_window_is_empty_with_a_note(
    client: TestClient, db: ResultsDB, offset_s: int
) -> None:
    write_small_windows(db)
    at = rfc3339(NOW_S + offset_s)
    body = client.get("/api/v1/sla", params={"scope": "tor", "at": at}).json()
    assert body["rows"] == []
    assert body["window_start"] is None
    assert at in body["note"]


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"scope": "tor", "window": "1h"}, 400, ["'window'", "'1h'", "not built yet", "30s, 10m"]),
        ({"scope": "tor", "window": "1d"}, 400, ["'1d'", "not built yet"]),
        ({"scope": "rack"}, 422, ["query parameter 'scope'", "'rack'"]),
        ({}, 422, ["query parameter 'scope'", "required"]),
        ({"scope": "tor", "window": "5m"}, 422, ["query parameter 'window'", "'5m'", "30s, 10m"]),
        ({"scope": "tor", "at": "yesterday"}, 422, ["'at'", "'yesterday'", "RFC 3339"]),
        ({"scope": "tor", "at": "2027-01-15T08:00:00"}, 422, ["'at'", "timezone"]),
    ],
)
def test_sla_refuses_bad_parameters_with_one_clear_line(
    client: TestClient,
    db: ResultsDB,
    params: dict[str, str],
    status: int,
    words: list[str],
) -> None:
    write_small_windows(db)
    response = client.get("/api/v1/sla", params=params)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert "\n" not in detail
    for word in words:
        assert word in detail


# -- heatmap --------------------------------------------------------------------------------


def test_heatmap_covers_every_tor_with_null_for_missing_cells(
    client: TestClient, db: ResultsDB
) -> None:
    starts = write_small_windows(db)
    response = client.get("/api/v1/heatmap", params={"level": "tor", "metric": "p99"})
    assert response.status_code == 200
    body = response.json()
    assert body["entities"] == ["t1", "t2", "t3", "t4"]
    assert (body["level"], body["metric"], body["unit"], body["window"]) == (
        "tor",
        "p99",
        "us",
        "10m",
    )
    assert body["window_start"] == rfc3339(starts["10m"])
    assert body["note"] is None
    assert body["thresholds"] == {"green_below": 4000.0, "red_above": 5000.0}
    cells = body["cells"]
    assert len(cells) == 16
    # Dense and row-major over ``entities``.
    assert [(c["src"], c["dst"]) for c in cells] == [
        (s, d) for s in body["entities"] for d in body["entities"]
    ]
    filled = {(c["src"], c["dst"]): (c["value"], c["probes"], c["failures"]) for c in cells}
    assert filled.pop(("t1", "t1")) == (1200.0, 40, 0)
    assert filled.pop(("t1", "t2")) == (4500.0, 40, 0)
    assert filled.pop(("t2", "t1")) == (9000.0, 40, 0)
    assert filled.pop(("t3", "t4")) == (None, 10, 10)  # probes, but every one failed
    assert filled.pop(("t4", "t3")) == (800.0, 10, 2)
    assert set(filled.values()) == {(None, 0, 0)}  # t9 (gone from the topology) is dropped
    assert len(filled) == 11
    HeatmapOut.model_validate(body)  # what /docs documents is what is served


def test_sla_turns_a_non_finite_value_into_null(client: TestClient, db: ResultsDB) -> None:
    start = int(NOW_S) - 30
    db.write_window(
        window("30s", start, 30, computed_at_s=NOW_S),
        [sla_row("30s", start, "dc", "dc1", 5, p99_us=float("inf"))],
        [],
    )
    response = client.get("/api/v1/sla", params={"scope": "dc", "window": "30s"})
    assert response.status_code == 200
    (row,) = response.json()["rows"]
    assert (row["entity"], row["probes"], row["p99_us"], row["p999_us"]) == ("dc1", 5, None, None)


def test_heatmap_turns_a_non_finite_value_into_null(client: TestClient, db: ResultsDB) -> None:
    start = int(NOW_S) - 30
    db.write_window(
        window("30s", start, 30, computed_at_s=NOW_S),
        [],
        [matrix_row("30s", start, "dc", "dc1", "dc2", 5, p99_us=float("inf"))],
    )
    response = client.get("/api/v1/heatmap", params={"level": "dc", "window": "30s"})
    assert response.status_code == 200
    assert response.json()["cells"][1] == {
        "src": "dc1",
        "dst": "dc2",
        "value": None,
        "probes": 5,
        "failures": 0,
    }


def test_heatmap_of_drop_rate_uses_the_drop_thresholds(client: TestClient, db: ResultsDB) -> None:
    write_small_windows(db)
    body = client.get("/api/v1/heatmap", params={"metric": "drop_rate"}).json()
    assert body["unit"] == "ratio"
    assert body["thresholds"] == {"green_below": 2e-4, "red_above": 2e-3}
    values = {(c["src"], c["dst"]): c["value"] for c in body["cells"] if c["probes"]}
    assert values[("t1", "t2")] == pytest.approx(1 / 40)
    assert values[("t1", "t1")] == 0.0
    assert values[("t3", "t4")] is None


def test_heatmap_at_other_levels_lists_that_levels_entities(
    client: TestClient, db: ResultsDB
) -> None:
    write_small_windows(db)
    dc = client.get("/api/v1/heatmap", params={"level": "dc"}).json()
    assert dc["entities"] == ["dc1", "dc2"]
    assert [c["value"] for c in dc["cells"]] == [None, 3000.0, None, None]
    podset = client.get("/api/v1/heatmap", params={"level": "podset"}).json()
    assert podset["entities"] == ["ps1", "ps2", "ps3"]
    assert len(podset["cells"]) == 9
    assert all(c["value"] is None and c["probes"] == 0 for c in podset["cells"])


def test_heatmap_of_the_fast_window_and_at(client: TestClient, db: ResultsDB) -> None:
    starts = write_small_windows(db)
    fast = client.get("/api/v1/heatmap", params={"window": "30s"}).json()
    assert fast["window_start"] == rfc3339(starts["30s"])
    assert [c["value"] for c in fast["cells"] if c["probes"]] == [200.0]
    older = client.get(
        "/api/v1/heatmap", params={"window": "30s", "at": rfc3339(starts["30s_old"] + 1)}
    ).json()
    assert older["window_start"] == rfc3339(starts["30s_old"])
    assert [c["value"] for c in older["cells"] if c["probes"]] == [100.0]


def test_heatmap_can_be_restricted_to_one_dc(client: TestClient, db: ResultsDB) -> None:
    write_small_windows(db)
    body = client.get("/api/v1/heatmap", params={"dc": "dc1"}).json()
    assert body["dc"] == "dc1"
    assert body["entities"] == ["t1", "t2", "t3"]
    assert len(body["cells"]) == 9
    assert sum(1 for c in body["cells"] if c["probes"]) == 3  # t3→t4 and t4→t3 are outside
    unknown = client.get("/api/v1/heatmap", params={"dc": "dc9"})
    assert unknown.status_code == 400
    assert unknown.json()["detail"] == (
        "query parameter 'dc': 'dc9' is not a DC of the topology (known: dc1, dc2)"
    )


def test_heatmap_without_any_window_is_all_white_with_a_note(client: TestClient) -> None:
    body = client.get("/api/v1/heatmap", params={"window": "30s"}).json()
    assert body["window_start"] is None
    assert body["note"] == "no 30s window has been analysed yet"
    assert len(body["cells"]) == 16
    assert all(c["value"] is None and c["probes"] == 0 for c in body["cells"])


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"level": "server"}, 422, ["query parameter 'level'", "'server'"]),
        ({"metric": "p50"}, 422, ["query parameter 'metric'", "'p50'"]),
        ({"window": "1h"}, 400, ["'1h'", "not built yet"]),
        ({"at": "2027-13-45T00:00:00Z"}, 422, ["'at'", "RFC 3339"]),
    ],
)
def test_heatmap_refuses_bad_parameters(
    client: TestClient, params: dict[str, str], status: int, words: list[str]
) -> None:
    response = client.get("/api/v1/heatmap", params=params)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert "\n" not in detail
    for word in words:
        assert word in detail


def test_heatmap_over_the_cell_limit_is_refused_and_counted(
    db: ResultsDB, source: TopologySource, config: ServerConfig, clock: FakeClock
) -> None:
    write_small_windows(db)
    api = Api(db, source, config, clock=clock, max_heatmap_cells=9)
    with TestClient(create_app([api.router])) as client:
        refused = client.get("/api/v1/heatmap", params={"level": "tor"})
        assert refused.status_code == 400
        assert refused.json()["detail"] == (
            "level 'tor' has 4 entities (16 cells), over the limit of 9 cells; "
            "restrict it with dc= or use a coarser level"
        )
        assert client.get("/api/v1/heatmap", params={"level": "tor", "dc": "dc1"}).is_success
        client.get("/api/v1/agents")
        client.get("/api/v1/sla", params={"scope": "tor", "window": "1h"})
    stats = api.statistics()
    assert stats.heatmap_requests_total == 2
    assert stats.heatmap_over_limit_total == 1
    assert stats.heatmap_cells_served_total == 9
    assert stats.agents_requests_total == 1
    assert stats.windows_requests_total == 0
    assert stats.sla_requests_total == 1
    assert stats.rejected_requests_total == 2


def test_a_max_heatmap_cells_below_one_is_refused(
    db: ResultsDB, source: TopologySource, config: ServerConfig, clock: FakeClock
) -> None:
    with pytest.raises(ValueError, match="max_heatmap_cells"):
        router(db, source, config, clock=clock, max_heatmap_cells=0)


# -- errors of the store and time helpers ------------------------------------------------------


def test_a_failing_results_database_answers_503_naming_it(
    client: TestClient, db: ResultsDB
) -> None:
    db.close()
    response = client.get("/api/v1/agents")
    assert response.status_code == 503
    assert db.path in response.json()["detail"]


def test_time_helpers() -> None:
    assert utc(None) is None
    assert utc(1_800_000_000.1234) == datetime(2027, 1, 15, 8, 0, 0, 123000, tzinfo=UTC)
    assert parse_rfc3339("at", "2027-01-15T08:00:00Z").timestamp() == 1_800_000_000
    assert parse_rfc3339("at", "2027-01-15T09:00:00+01:00").timestamp() == 1_800_000_000
    with pytest.raises(ValueError, match="query parameter 'at'"):
        parse_rfc3339("at", "2027-01-15")


def test_service_slas_and_rollup_windows_are_served_once_the_analysis_writes_them(
    client: TestClient, db: ResultsDB
) -> None:
    write_small_windows(db)
    empty = client.get("/api/v1/sla", params={"scope": "service"}).json()
    assert empty["rows"] == []
    assert empty["note"] == "the 10m window has no service rows"
    start = int(NOW_S) - 7200
    db.write_window(
        window("1h", start, 3600, computed_at_s=start + 3700),
        [sla_row("1h", start, "service", "search", 5000, p99_us=1800.0)],
        [matrix_row("1h", start, "tor", "t1", "t2", 900, p99_us=2100.0)],
    )
    rows = client.get("/api/v1/sla", params={"scope": "service", "window": "1h"}).json()["rows"]
    assert [(r["entity"], r["p99_us"]) for r in rows] == [("search", 1800.0)]
    kinds = client.get("/api/v1/windows").json()
    assert [k["name"] for k in kinds["kinds"]] == ["30s", "10m", "1h"]
    assert kinds["not_built"] == ["1d"]
    heat = client.get("/api/v1/heatmap", params={"window": "1h", "format": "columns"}).json()
    assert "cells" not in heat
    n = len(heat["entities"])
    k = heat["entities"].index("t1") * n + heat["entities"].index("t2")
    assert (heat["values"][k], heat["probes"][k]) == (2100.0, 900)
    assert sum(heat["probes"]) == 900
