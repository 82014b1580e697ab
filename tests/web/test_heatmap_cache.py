"""A heatmap of an analysed window is built once: cached by window, revalidated by ETag, and
rebuilt when the analysis rewrites the window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pingmesh.clock import FakeClock
from pingmesh.config import HeatmapConfig, ServerConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.topology import dump_topology_yaml, topology_from_servers
from pingmesh.server.metrics import snapshot_metrics
from pingmesh.store.results import ResultsDB
from pingmesh.web.api import Api, DocumentCache, HeatmapOut
from pingmesh.web.app import create_app
from tests.web.client import TestClient
from tests.web.fleet import NOW_S, matrix_row, small_topology, window, write_small_windows


def without_time(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "generated_at"}


def test_a_heatmap_of_an_analysed_window_is_cached_and_revalidated(
    client: TestClient, api: Api, db: ResultsDB, clock: FakeClock
) -> None:
    starts = write_small_windows(db)
    first = client.get("/api/v1/heatmap", params={"level": "tor"})
    tag = first.headers["etag"]
    assert tag.startswith('W/"')
    assert first.headers["cache-control"] == "no-cache"
    clock.advance(5.0)
    again = client.get("/api/v1/heatmap", params={"level": "tor"})
    assert again.headers["etag"] == tag
    # The same cells; only the time of the answer moved on.
    assert without_time(again.json()) == without_time(first.json())
    assert again.json()["generated_at"] != first.json()["generated_at"]
    HeatmapOut.model_validate(again.json())
    stats = api.statistics()
    assert (stats.heatmap_cache_misses_total, stats.heatmap_cache_hits_total) == (1, 1)
    assert stats.heatmap_cache_entries == 1
    assert 0 < stats.heatmap_cache_bytes < len(first.content)

    unchanged = client.get(
        "/api/v1/heatmap", params={"level": "tor"}, headers={"If-None-Match": tag}
    )
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["etag"] == tag
    # Another format or metric of the same window is another answer.
    columns = client.get("/api/v1/heatmap", params={"level": "tor", "format": "columns"})
    assert columns.headers["etag"] != tag
    assert columns.json()["values"][1] == 4500.0  # t1 -> t2
    drops = client.get(
        "/api/v1/heatmap", params={"metric": "drop_rate"}, headers={"If-None-Match": tag}
    )
    assert drops.status_code == 200

    # The analysis rewrites the window (a new computed_at): a new answer under a new tag.
    start = starts["10m"]
    db.write_window(
        window("10m", start, 600, computed_at_s=start + 900),
        [],
        [matrix_row("10m", start, "tor", "t1", "t2", 40, p99_us=7000.0)],
    )
    rewritten = client.get(
        "/api/v1/heatmap", params={"level": "tor"}, headers={"If-None-Match": tag}
    )
    assert rewritten.status_code == 200
    assert rewritten.headers["etag"] != tag
    cells = {(c["src"], c["dst"]): c["value"] for c in rewritten.json()["cells"]}
    assert cells[("t1", "t2")] == 7000.0
    assert cells[("t1", "t1")] is None
    stats = api.statistics()
    assert stats.heatmap_not_modified_total == 1
    names = {m.name for m in snapshot_metrics("web", stats)}
    assert {"pingmesh_web_heatmap_cache_hits", "pingmesh_web_heatmap_cache_bytes"} <= names


def test_a_heatmap_without_a_window_is_neither_cached_nor_tagged(
    client: TestClient, api: Api
) -> None:
    empty = client.get("/api/v1/heatmap", params={"level": "tor"})
    assert empty.status_code == 200
    assert empty.json()["note"] == "no 10m window has been analysed yet"
    assert "etag" not in empty.headers
    assert api.statistics().heatmap_cache_entries == 0


def test_a_topology_change_makes_a_new_heatmap(tmp_path: Path, db: ResultsDB) -> None:
    write_small_windows(db)
    full = small_topology()
    path = tmp_path / "topology.yaml"
    without_t4 = topology_from_servers(s for s in full.servers if s.tor != "t4")
    path.write_text(dump_topology_yaml(without_t4), encoding="utf-8")
    source = TopologySource.from_file(path)
    api = Api(db, source, ServerConfig(), clock=FakeClock(NOW_S))
    with TestClient(create_app([api.router])) as client:
        before = client.get("/api/v1/heatmap", params={"level": "tor"})
        assert before.json()["entities"] == ["t1", "t2", "t3"]
        path.write_text(dump_topology_yaml(full), encoding="utf-8")
        assert source.reload_if_changed()
        after = client.get(
            "/api/v1/heatmap",
            params={"level": "tor"},
            headers={"If-None-Match": before.headers["etag"]},
        )
    assert after.status_code == 200
    assert after.json()["entities"] == ["t1", "t2", "t3", "t4"]
    cells = {(c["src"], c["dst"]): c["value"] for c in after.json()["cells"]}
    assert (len(cells), cells[("t4", "t3")]) == (16, 800.0)


def test_the_cache_keeps_at_most_its_bytes_least_recently_used_out_first() -> None:
    cache = DocumentCache(10)
    cache.put(("a",), "aaaa")
    cache.put(("b",), "bbbb")
    assert cache.get(("a",)) == "aaaa"  # now b is the least recently used
    cache.put(("c",), "cccc")
    assert cache.get(("b",)) is None
    assert (cache.get(("a",)), cache.get(("c",))) == ("aaaa", "cccc")
    assert cache.size() == (8, 2)
    cache.put(("d",), "x" * 11)  # bigger than the whole budget: not kept, nothing evicted
    assert cache.get(("d",)) is None
    assert cache.size() == (8, 2)
    assert (cache.hits, cache.misses, cache.evictions) == (3, 2, 1)
    with pytest.raises(ValueError, match="max_bytes"):
        DocumentCache(-1)


def test_a_zero_budget_caches_nothing(db: ResultsDB, source: TopologySource) -> None:
    write_small_windows(db)
    config = ServerConfig(heatmap=HeatmapConfig(cache_max_bytes=0))
    api = Api(db, source, config, clock=FakeClock(NOW_S))
    with TestClient(create_app([api.router])) as client:
        for _ in range(2):
            assert client.get("/api/v1/heatmap").status_code == 200
    stats = api.statistics()
    assert (stats.heatmap_cache_hits_total, stats.heatmap_cache_entries) == (0, 0)
