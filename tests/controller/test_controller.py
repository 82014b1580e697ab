"""The controller over HTTP: pinglists with ETag/304, 404 as the kill switch, reloads."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from pingmesh.config import PinglistConfig
from pingmesh.controller.routes import parse_if_none_match, router
from pingmesh.controller.service import PinglistService, to_wire
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.pinglist import generate_pinglist
from pingmesh.errors import UnknownServerError
from pingmesh.wire.pinglist import PinglistModel

TOPOLOGY = """\
servers:
  - {name: h11, address: 127.0.1.11, dc: dc1, podset: ps1, tor: t1}
  - {name: h12, address: 127.0.1.12, dc: dc1, podset: ps1, tor: t1}
  - {name: h21, address: 127.0.2.21, dc: dc1, podset: ps1, tor: t2}
  - {name: h31, address: 127.0.3.31, dc: dc2, podset: ps2, tor: t3}
"""
# h13 joins h11's ToR: h11's pinglist changes.
GROWN = TOPOLOGY + "  - {name: h13, address: 127.0.1.13, dc: dc1, podset: ps1, tor: t1}\n"

Fetch = tuple[str, str, str]


def write(path: Path, text: str, *, mtime_ns: int) -> None:
    path.write_text(text, encoding="utf-8")
    # Set the stamp explicitly: two writes within one timer tick could otherwise look alike.
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    path = tmp_path / "topology.yaml"
    write(path, TOPOLOGY, mtime_ns=1_000_000_000)
    return path


@pytest.fixture
def source(topology_file: Path) -> TopologySource:
    return TopologySource.from_file(topology_file)


@pytest.fixture
def service(source: TopologySource) -> PinglistService:
    return PinglistService(source, PinglistConfig(interval_s=5.0))


@pytest.fixture
def fetches() -> list[Fetch]:
    return []


def http_client(app: FastAPI) -> httpx.AsyncClient:
    # httpx over ASGI rather than starlette's TestClient, which warns (and warnings are errors).
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://controller")


@pytest.fixture
async def client(
    service: PinglistService, fetches: list[Fetch]
) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(router(service, on_fetch=lambda *seen: fetches.append(seen)))
    async with http_client(app) as test_client:
        yield test_client


async def test_get_pinglist_returns_the_document_with_a_strong_etag(
    client: httpx.AsyncClient, source: TopologySource
) -> None:
    response = await client.get("/api/v1/pinglist/h11")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    model = PinglistModel.model_validate_json(response.content)
    assert response.headers["etag"] == f'"{model.version}"'
    assert response.headers["cache-control"] == "no-cache"
    assert model.server == "h11"
    assert model.address == "127.0.1.11"
    assert [(p.name, p.scope.value) for p in model.peers] == [
        ("h12", "intra_tor"),
        ("h21", "inter_tor"),
        ("h31", "inter_dc"),  # every podset has at most 2 servers: all are chosen
    ]
    assert {p.interval_s for p in model.peers} == {5.0}
    assert {p.port for p in model.peers} == {9781}
    expected = to_wire(generate_pinglist(source.topology, "h11", interval_s=5.0))
    assert model == expected


async def test_if_none_match_gives_304_with_the_etag_and_no_body(client: httpx.AsyncClient) -> None:
    etag = (await client.get("/api/v1/pinglist/h11")).headers["etag"]
    for header in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        response = await client.get("/api/v1/pinglist/h11", headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.headers["etag"] == etag
        assert response.content == b""
    stale = await client.get(
        "/api/v1/pinglist/h11", headers={"If-None-Match": '"0123456789abcdef"'}
    )
    assert stale.status_code == 200
    assert stale.headers["etag"] == etag
    other = await client.get("/api/v1/pinglist/h12", headers={"If-None-Match": etag})
    assert other.status_code == 200  # another server's version is not this one's


async def test_etag_changes_when_the_topology_file_changes_and_only_then(
    client: httpx.AsyncClient, source: TopologySource, topology_file: Path
) -> None:
    first = (await client.get("/api/v1/pinglist/h11")).headers["etag"]

    # Same content, new stamp: re-read, same digest, same ETag.
    write(topology_file, TOPOLOGY, mtime_ns=2_000_000_000)
    assert source.reload_if_changed() is False
    again = await client.get("/api/v1/pinglist/h11", headers={"If-None-Match": first})
    assert again.status_code == 304

    write(topology_file, GROWN, mtime_ns=3_000_000_000)
    assert source.reload_if_changed() is True
    changed = await client.get("/api/v1/pinglist/h11", headers={"If-None-Match": first})
    assert changed.status_code == 200
    assert changed.headers["etag"] != first
    model = PinglistModel.model_validate_json(changed.content)
    assert [p.name for p in model.peers if p.scope.value == "intra_tor"] == ["h12", "h13"]
    assert (await client.get("/api/v1/pinglist/h13")).status_code == 200

    # A broken edit keeps the last good topology, so the pinglist and its ETag stay.
    write(topology_file, "servers: [oops\n", mtime_ns=4_000_000_000)
    assert source.reload_if_changed() is False
    assert source.reload_errors == 1
    kept = await client.get("/api/v1/pinglist/h11")
    assert kept.headers["etag"] == changed.headers["etag"]


async def test_unknown_server_is_404_with_a_json_detail(
    client: httpx.AsyncClient, service: PinglistService, fetches: list[Fetch]
) -> None:
    response = await client.get("/api/v1/pinglist/nobody")
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown server 'nobody': not in the topology"}
    assert "etag" not in response.headers
    assert (await client.get("/api/v1/pinglist/127.9.9.9")).status_code == 404
    assert fetches == []
    assert service.statistics().unknown_total == 2


async def test_removing_a_server_turns_its_fetch_into_404(
    client: httpx.AsyncClient, source: TopologySource, topology_file: Path
) -> None:
    assert (await client.get("/api/v1/pinglist/h12")).status_code == 200
    without_h12 = "\n".join(line for line in TOPOLOGY.splitlines() if "h12" not in line) + "\n"
    write(topology_file, without_h12, mtime_ns=5_000_000_000)
    assert source.reload_if_changed() is True
    assert (await client.get("/api/v1/pinglist/h12")).status_code == 404


async def test_lookup_by_address_serves_the_same_pinglist(
    client: httpx.AsyncClient, fetches: list[Fetch]
) -> None:
    by_name = await client.get("/api/v1/pinglist/h21")
    by_address = await client.get("/api/v1/pinglist/127.0.2.21")
    assert by_address.status_code == 200
    assert by_address.content == by_name.content
    assert by_address.headers["etag"] == by_name.headers["etag"]
    version = by_name.headers["etag"].strip('"')
    assert fetches == [("h21", "127.0.2.21", version), ("h21", "127.0.2.21", version)]


async def test_on_fetch_is_called_for_200_and_304(
    client: httpx.AsyncClient, fetches: list[Fetch]
) -> None:
    etag = (await client.get("/api/v1/pinglist/h31")).headers["etag"]
    await client.get("/api/v1/pinglist/h31", headers={"If-None-Match": etag})
    await client.get("/api/v1/pinglist/ghost")
    assert fetches == [("h31", "127.0.3.31", etag.strip('"'))] * 2


async def test_statistics_count_answers_and_cache_use(
    client: httpx.AsyncClient, service: PinglistService
) -> None:
    etag = (await client.get("/api/v1/pinglist/h11")).headers["etag"]
    await client.get("/api/v1/pinglist/h11", headers={"If-None-Match": etag})
    await client.get("/api/v1/pinglist/127.0.1.11")
    await client.get("/api/v1/pinglist/h12")
    await client.get("/api/v1/pinglist/x")
    stats = service.statistics()
    assert stats.served_total == 3
    assert stats.not_modified_total == 1
    assert stats.unknown_total == 1
    assert stats.cache_misses_total == 2  # h11 once (by name and by address), h12 once
    assert stats.cache_hits_total == 2
    assert stats.cache_size == 2
    assert stats.cache_evictions_total == 0
    assert stats.topology_servers == 4
    assert len(stats.topology_digest) == 16


def test_cache_is_bounded_and_dropped_on_a_new_topology(
    source: TopologySource, topology_file: Path
) -> None:
    service = PinglistService(source, PinglistConfig(), max_cached=2)
    for name in ("h11", "h12", "h21", "h11"):
        service.pinglist(name)
    stats = service.statistics()
    assert stats.cache_size == 2
    assert stats.cache_evictions_total == 2  # h11 evicted by h21, then h12 by h11
    assert stats.cache_misses_total == 4
    write(topology_file, GROWN, mtime_ns=6_000_000_000)
    assert source.reload_if_changed()
    service.pinglist("h11")
    assert service.statistics().cache_size == 1
    assert service.statistics().cache_misses_total == 5
    with pytest.raises(ValueError, match="max_cached"):
        PinglistService(source, PinglistConfig(), max_cached=0)


def test_replicas_serve_identical_documents(topology_file: Path) -> None:
    one = PinglistService(TopologySource.from_file(topology_file), PinglistConfig())
    two = PinglistService(TopologySource.from_file(topology_file), PinglistConfig())
    for name in ("h11", "h12", "h21", "h31"):
        assert one.fetch(name) == two.fetch(name)


def test_service_config_flows_into_the_pinglist(source: TopologySource) -> None:
    config = PinglistConfig(
        interval_s=2.0, timeout_s=1.5, max_peers=1, inter_dc_per_podset=0, port=9000
    )
    model = PinglistService(source, config).pinglist("h11")
    assert model.timeout_s == 1.5
    assert [(p.name, p.port, p.interval_s) for p in model.peers] == [("h12", 9000, 2.0)]
    assert model.truncated == 1  # h21 (inter-ToR) left out; no inter-DC with 0 per podset
    with pytest.raises(UnknownServerError):
        PinglistService(source, config).pinglist("nope")


def test_service_fetch_without_http(service: PinglistService) -> None:
    fetch = service.fetch("127.0.1.12")
    assert (fetch.name, fetch.address, fetch.not_modified) == ("h12", "127.0.1.12", False)
    assert fetch.body is not None
    assert PinglistModel.model_validate_json(fetch.body).version == fetch.version
    again = service.fetch("h12", cached_versions=[fetch.version])
    assert again.not_modified
    assert again.body is None


def test_parse_if_none_match() -> None:
    assert parse_if_none_match(None) == ()
    assert parse_if_none_match("") == ()
    assert parse_if_none_match('"a"') == ("a",)
    assert parse_if_none_match(' W/"a" , "b",junk, *') == ("a", "b", "*")


async def test_route_is_documented_in_openapi(service: PinglistService) -> None:
    app = FastAPI()
    app.include_router(router(service))
    operation = app.openapi()["paths"]["/api/v1/pinglist/{server}"]["get"]
    assert {"200", "304", "404"} <= set(operation["responses"])
    async with http_client(app) as client:
        assert (await client.get("/api/v1/pinglist/h11")).status_code == 200  # on_fetch is optional
