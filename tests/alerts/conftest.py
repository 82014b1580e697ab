"""Fixtures of the alert tests: a real results database (SQLite, and PostgreSQL for the store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.clock import FakeClock
from pingmesh.controller.topology_source import TopologySource
from pingmesh.store.alerts import AlertStore
from pingmesh.store.incidents import IncidentStore
from pingmesh.store.results import ResultsDB
from tests.web.fleet import NOW_S, small_topology


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A SQLite file, or a fresh schema in the session's real PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "r.sqlite"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def results(tmp_path: Path) -> Iterator[ResultsDB]:
    db = ResultsDB(tmp_path / "results.sqlite")
    yield db
    db.close()


@pytest.fixture
def alerts(results: ResultsDB) -> AlertStore:
    return AlertStore(results.database)


@pytest.fixture
def incidents(results: ResultsDB) -> IncidentStore:
    return IncidentStore(results.database)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW_S)


@pytest.fixture
def source() -> TopologySource:
    return TopologySource(small_topology())
