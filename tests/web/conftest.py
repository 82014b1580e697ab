"""Fixtures of the web tests: a real results database in a temporary file, a small topology."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.clock import FakeClock
from pingmesh.config import HeatmapConfig, ServerConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.store.results import ResultsDB
from pingmesh.web.api import Api
from pingmesh.web.app import create_app
from tests.web.client import TestClient
from tests.web.fleet import NOW_S, small_topology


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW_S)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ResultsDB]:
    results = ResultsDB(tmp_path / "results.sqlite")
    yield results
    results.close()


@pytest.fixture
def source() -> TopologySource:
    return TopologySource(small_topology())


@pytest.fixture
def config() -> ServerConfig:
    # Not the defaults, so that a test sees the configuration flow through.
    return ServerConfig(
        agent_down_after_s=60.0,
        heatmap=HeatmapConfig(
            green_below_us=4000.0, red_above_us=5000.0, drop_green_below=2e-4, drop_red_above=2e-3
        ),
    )


@pytest.fixture
def api(db: ResultsDB, source: TopologySource, config: ServerConfig, clock: FakeClock) -> Api:
    return Api(db, source, config, clock=clock)


@pytest.fixture
def client(api: Api) -> Iterator[TestClient]:
    with TestClient(create_app([api.router])) as test_client:
        yield test_client
