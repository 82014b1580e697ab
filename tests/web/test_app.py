"""The app: error mapping, the OpenAPI document, /docs and the packaged static files."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
from fastapi import APIRouter

from pingmesh.errors import (
    ControllerError,
    InputError,
    PingmeshError,
    StoreError,
    TopologyError,
    UnknownServerError,
)
from pingmesh.web.app import create_app, describe_validation_errors
from pingmesh.web.dashboard import MEDIA_BY_SUFFIX, STATIC_FILES
from tests.web.client import TestClient


def _raising_router() -> APIRouter:
    errors: dict[str, PingmeshError] = {
        "input": InputError("field 'x': must be positive"),
        "topology": TopologyError("is missing", file="t.yaml", line=3, field="tor"),
        "unknown": UnknownServerError("h99"),
        "controller": ControllerError("controller at 127.0.0.1:1 refused"),
        "store": StoreError("results.sqlite: query failed: disk I/O error"),
    }
    api = APIRouter()

    @api.get("/boom/{kind}")
    def boom(kind: str) -> None:
        raise errors[kind]

    @api.get("/items/{item_id}")
    def item(item_id: int, limit: int = 10) -> dict[str, int]:
        return {"item_id": item_id, "limit": limit}

    return api


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app([_raising_router()], title="test"))


@pytest.mark.parametrize(
    ("kind", "status", "detail"),
    [
        ("input", 400, "field 'x': must be positive"),
        ("topology", 400, "t.yaml:3: field 'tor': is missing"),
        ("unknown", 404, "unknown server 'h99': not in the topology"),
        ("controller", 502, "controller at 127.0.0.1:1 refused"),
        ("store", 503, "results.sqlite: query failed: disk I/O error"),
    ],
)
def test_pingmesh_errors_map_to_http_statuses(
    client: TestClient, kind: str, status: int, detail: str
) -> None:
    response = client.get(f"/boom/{kind}")
    assert response.status_code == status
    assert response.json() == {"detail": detail}


def test_validation_errors_are_one_line_naming_the_parameter(client: TestClient) -> None:
    response = client.get("/items/seven", params={"limit": "many"})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "path parameter 'item_id': Input should be a valid integer, unable to parse "
        "string as an integer (got 'seven') (and 1 more problem)"
    }


def test_describe_validation_errors() -> None:
    assert describe_validation_errors([]) == "invalid request"
    assert (
        describe_validation_errors(
            [{"loc": ("body", "records", 0, "rtt_us"), "msg": "bad", "type": "x", "input": -1}]
        )
        == "body field 'records.0.rtt_us': bad (got -1)"
    )
    assert (
        describe_validation_errors([{"loc": ("body",), "msg": "Field required", "type": "missing"}])
        == "body: Field required"
    )
    long = describe_validation_errors(
        [{"loc": ("query", "q"), "msg": "bad", "type": "x", "input": "y" * 500}]
        + [{"loc": ("query", "r"), "msg": "bad", "type": "x"}] * 2
    )
    assert long.startswith("query parameter 'q': bad (got 'yyy")
    assert long.endswith("...) (and 2 more problems)")
    assert len(long) < 120


def test_openapi_documents_our_error_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "test"
    responses = spec["paths"]["/items/{item_id}"]["get"]["responses"]
    assert responses["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"
    }
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["ErrorOut"]["required"] == ["detail"]
    # The dashboard's own routes are not API.
    assert "/" not in spec["paths"]
    assert "/static/{name}" not in spec["paths"]


def test_docs_is_our_own_page_with_no_swagger_or_cdn(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert 'src="static/docs.js"' in response.text
    assert client.get("/redoc").status_code == 404
    script = client.get("/static/docs.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "openapi.json" in script.text


def test_the_dashboard_is_served_at_the_root(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert '<canvas id="heatmap"' in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]
    for name in ("app.js", "style.css", "favicon.svg"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/favicon.ico").headers["content-type"] == "image/svg+xml"
    missing = client.get("/static/../app.py")
    assert missing.status_code == 404
    unknown = client.get("/static/secret.txt")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "no static file 'secret.txt'"}


def test_static_files_reference_nothing_outside_this_server() -> None:
    root = resources.files("pingmesh.web").joinpath("static")
    shipped = sorted(p.name for p in root.iterdir() if p.is_file())
    assert set(STATIC_FILES) <= set(shipped)
    # Files another page adds (e.g. bandwidth.*) are served by their suffix.
    assert all(Path(name).suffix in MEDIA_BY_SUFFIX for name in shipped)
    external = re.compile(
        r"""(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(\s*['"]?https?""", re.I
    )
    for name in shipped:
        text = root.joinpath(name).read_text(encoding="utf-8")
        # The SVG's XML namespace is an identifier, not something a browser fetches.
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        text = text.replace('"http://www.w3.org/2000/svg"', "")  # createElementNS
        assert not external.search(text), f"{name} references {external.search(text)}"
