"""The results database: migrations, agents, windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from pingmesh.errors import StoreError
from pingmesh.store.results import ResultsDB, SlaRow, WindowRow


def _window(start: int, length: int = 30) -> WindowRow:
    return WindowRow(
        window="30s", window_start=start, window_end=start + length, records=1, computed_at_s=0
    )


def _sla(start: int, entity: str, probes: int) -> SlaRow:
    return SlaRow(
        window="30s",
        window_start=start,
        scope="tor",
        entity=entity,
        probes=probes,
        successes=probes,
        failures=0,
        retransmitted=0,
        p50_us=100.0,
        p90_us=200.0,
        p99_us=300.0,
        p999_us=400.0,
        drop_rate=0.0,
    )


def test_rewriting_a_window_replaces_it_whole(db_target: Path | str) -> None:
    db = ResultsDB(db_target)
    db.write_window(_window(0), [_sla(0, "t1", 5), _sla(0, "t2", 5)], [])
    db.write_window(_window(0), [_sla(0, "t1", 7)], [])
    assert [(r.entity, r.probes) for r in db.sla("30s", 0, "tor")] == [("t1", 7)]


def test_window_at_finds_the_window_containing_an_instant(db_target: Path | str) -> None:
    db = ResultsDB(db_target)
    for start in (0, 30, 60):
        db.write_window(_window(start), [], [])
    found = db.window_at("30s", 45.0)
    assert found is not None
    assert found.window_start == 30
    assert db.window_at("30s", 90.0) is None  # end is exclusive
    assert db.window_at("10m", 45.0) is None


def test_agents_seen_keeps_first_seen_and_merges_fetch_and_upload(db_target: Path | str) -> None:
    db = ResultsDB(db_target)
    db.record_agent_seen("h1", "127.0.0.2", now_s=10.0, fetched=True, pinglist_version="v1")
    db.record_agent_seen("h1", "127.0.0.2", now_s=20.0, uploaded=True)
    (agent,) = db.agents()
    assert (agent.first_seen_s, agent.last_seen_s) == (10.0, 20.0)
    assert (agent.last_fetch_s, agent.last_upload_s) == (10.0, 20.0)
    assert agent.pinglist_version == "v1"


def test_data_survives_reopening_and_a_newer_schema_is_refused(db_target: Path | str) -> None:
    path = db_target
    db = ResultsDB(path)
    db.write_window(_window(0), [_sla(0, "t1", 5)], [])
    db.close()
    again = ResultsDB(path)
    assert len(again.sla("30s", 0, "tor")) == 1
    again.database.execute(
        "INSERT INTO schema_migrations (version, name, applied_at_s) VALUES (99, 'future', 0)"
    )
    again.close()
    with pytest.raises(StoreError, match="newer than this pingmesh"):
        ResultsDB(path)


def test_migrations_are_applied_once(db_target: Path | str) -> None:
    path = db_target
    ResultsDB(path).close()
    again = ResultsDB(path)
    versions = again.database.query("SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(v,) for v in range(1, len(versions) + 1)]
    assert len(versions) >= 1


def test_an_unsupported_database_url_is_named(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unsupported scheme 'mysql'"):
        ResultsDB("mysql://db/pingmesh")
