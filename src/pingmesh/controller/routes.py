"""HTTP face of the controller: ``GET /api/v1/pinglist/{server}`` with ``ETag``/304.

Agents poll (the pull model of PM §3.3.2), so most answers are 304 Not Modified: the ``ETag``
is the pinglist's content version, identical on every replica. A 404 is the kill switch: the
agent stops probing and keeps answering probes (PM §3.4.2).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from pingmesh.controller.service import PinglistService
from pingmesh.errors import UnknownServerError
from pingmesh.wire.pinglist import PinglistModel

OnFetch = Callable[[str, str, str], None]
"""Called as ``on_fetch(name, address, version)`` after every successful fetch (200 or 304)."""


def parse_if_none_match(value: str | None) -> tuple[str, ...]:
    """The entity tags of an ``If-None-Match`` header, unquoted; ``"*"`` stays ``"*"``.

    If-None-Match uses the weak comparison (RFC 9110 §13.1.2), so a ``W/`` prefix is ignored.
    """
    if not value:
        return ()
    tags = []
    for raw in value.split(","):
        tag = raw.strip()
        if tag == "*":
            tags.append(tag)
            continue
        tag = tag.removeprefix("W/")
        if len(tag) >= 2 and tag[0] == tag[-1] == '"':
            tags.append(tag[1:-1])
    return tuple(tags)


def router(service: PinglistService, on_fetch: OnFetch | None = None) -> APIRouter:
    """The controller's routes, under ``/api/v1``."""
    api = APIRouter(prefix="/api/v1", tags=["controller"])

    @api.get(
        "/pinglist/{server}",
        response_model=PinglistModel,
        responses={
            304: {"description": "The client's version (If-None-Match) is current"},
            404: {"description": "Not in the topology: stop probing, keep answering"},
        },
        summary="The pinglist of one server (by name or address)",
    )
    def get_pinglist(server: str, request: Request) -> Response:
        cached = parse_if_none_match(request.headers.get("if-none-match"))
        try:
            fetch = service.fetch(server, cached_versions=cached)
        except UnknownServerError as exc:
            return JSONResponse(status_code=404, content={"detail": str(exc)})
        if on_fetch is not None:
            on_fetch(fetch.name, fetch.address, fetch.version)
        headers = {"ETag": f'"{fetch.version}"', "Cache-Control": "no-cache"}
        if fetch.body is None:
            return Response(status_code=304, headers=headers)
        return Response(content=fetch.body, media_type="application/json", headers=headers)

    return api
