"""``/metrics`` of the server: Prometheus text built at scrape time from statistics() snapshots.

Each component's ``statistics()`` returns a frozen dataclass of numbers. Fields whose name ends
in ``_total`` are counters, the rest are gauges; names carry their unit (``_seconds``,
``_bytes``), so the metric name is ``pingmesh_<component>_<field>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def snapshot_metrics(component: str, snapshot: Any) -> Iterator[Metric]:
    """Metric families for every numeric field of a statistics() dataclass snapshot."""
    for field in dataclasses.fields(snapshot):
        value = getattr(snapshot, field.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            if isinstance(value, bool):
                value = int(value)
            else:
                continue
        name = f"pingmesh_{component}_{field.name}"
        doc = f"{component} {field.name.replace('_', ' ')}"
        if field.name.endswith("_total"):
            yield CounterMetricFamily(name.removesuffix("_total"), doc, value=value)
        else:
            yield GaugeMetricFamily(name, doc, value=value)


class SnapshotCollector(Collector):
    """A custom collector over named ``statistics()`` callables."""

    def __init__(self, sources: Mapping[str, Callable[[], Any]]) -> None:
        self._sources = dict(sources)

    def collect(self) -> Iterator[Metric]:
        for component, statistics in self._sources.items():
            yield from snapshot_metrics(component, statistics())


def metrics_router(sources: Mapping[str, Callable[[], Any]]) -> APIRouter:
    """``GET /metrics`` over an owned registry fed by ``sources``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(sources))
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    return router
