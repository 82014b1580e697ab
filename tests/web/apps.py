"""The whole web API as the server composes it, for tests that need every page's data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pingmesh.alerts.engine import AlertEngine, RuleBook
from pingmesh.alerts.rules import AlertRule
from pingmesh.clock import Clock
from pingmesh.config import ServerConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.store.alerts import AlertStore
from pingmesh.store.raw import RawStore
from pingmesh.store.results import ResultsDB
from pingmesh.web.alerts_api import AlertsApi
from pingmesh.web.api import Api
from pingmesh.web.app import create_app
from pingmesh.web.history_api import HistoryApi
from pingmesh.web.topology_api import TopologyApi


@dataclass
class WebStack:
    app: Any
    api: Api
    engine: AlertEngine
    store: AlertStore


def full_app(
    db: ResultsDB,
    source: TopologySource,
    config: ServerConfig,
    *,
    clock: Clock,
    raw: RawStore | None = None,
    rules: list[AlertRule] | None = None,
    max_heatmap_cells: int = 100_000,
) -> WebStack:
    """Read API, drill-down, topology and alerts routers over one database (no notifiers)."""
    api = Api(db, source, config, clock=clock, max_heatmap_cells=max_heatmap_cells)
    store = AlertStore(db.database)
    engine = AlertEngine(
        store, db, RuleBook(rules or [], store), source=source, clock=clock, config=config.alerts
    )
    app = create_app(
        [
            api.router,
            HistoryApi(db, raw, source, api, clock=clock).router,
            TopologyApi(db, source, api, config.heatmap, firing_alerts=store.firing).router,
            AlertsApi(engine, default_window=api.default_window).router,
        ]
    )
    return WebStack(app=app, api=api, engine=engine, store=store)
