"""The web application: API routers, the dashboard, the docs page and error mapping.

Errors are mapped here, at the HTTP boundary, once for every router:

- request validation (FastAPI)  → 422, ``detail`` is one line naming the parameter or field;
- :class:`~pingmesh.errors.InputError`          → 400;
- :class:`~pingmesh.errors.UnknownServerError`  → 404;
- :class:`~pingmesh.errors.ControllerError`     → 502;
- :class:`~pingmesh.errors.StoreError`          → 503 (the results DB failed; try again).

``/docs`` is our own page rendering ``/openapi.json`` (no Swagger UI: it loads from a CDN).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from pingmesh import __version__
from pingmesh.errors import (
    ControllerError,
    InputError,
    PingmeshError,
    StoreError,
    UnknownServerError,
)
from pingmesh.web.dashboard import dashboard_router

log = logging.getLogger(__name__)

_WHERE = {
    "query": "query parameter",
    "path": "path parameter",
    "header": "header",
    "cookie": "cookie",
    "body": "body field",
}
_MAX_INPUT_CHARS = 60


class ErrorOut(BaseModel):
    """Every error answer: one line that names what is wrong."""

    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a value the API does not support (yet)"},
    422: {"model": ErrorOut, "description": "a parameter or field that is not valid"},
}


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_response(document: Any) -> Response:
    """A JSON answer serialised in one pass (datetimes as RFC 3339; NaN is an error).

    For big documents of our own making: FastAPI's encoder walks every value first.
    """
    return Response(
        content=json.dumps(document, default=_json_default, separators=(",", ":"), allow_nan=False),
        media_type="application/json",
    )


def describe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line for a list of pydantic/FastAPI errors, naming the first parameter at fault.

    ``[{"loc": ("query", "scope"), "msg": "Input should be 'tor' or 'dc'", "input": "x"}]``
    becomes ``query parameter 'scope': Input should be 'tor' or 'dc' (got 'x')``.
    """
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    msg = first.get("msg", "invalid")
    name = ".".join(loc[1:])
    if name:
        line = f"{_WHERE.get(loc[0], loc[0])} {name!r}: {msg}"
    else:  # the whole body (or an error without a location)
        line = f"{loc[0] if loc else 'request'}: {msg}"
    given = first.get("input")
    if isinstance(given, str | int | float) and first.get("type") != "missing":
        shown = repr(given)
        if len(shown) > _MAX_INPUT_CHARS:
            shown = shown[: _MAX_INPUT_CHARS - 3] + "..."
        line += f" (got {shown})"
    if len(errors) > 1:
        more = len(errors) - 1
        line += f" (and {more} more problem{'s' if more > 1 else ''})"
    return line


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        status_code=422, content={"detail": describe_validation_errors(exc.errors())}
    )


def _status_of(exc: PingmeshError) -> int:
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, UnknownServerError):
        return 404
    if isinstance(exc, ControllerError):
        return 502
    if isinstance(exc, StoreError):
        return 503
    return 500


async def _pingmesh_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PingmeshError)
    status = _status_of(exc)
    if status >= 500:
        log.error("request failed: %s", exc, exc_info=exc)
    return JSONResponse(status_code=status, content={"detail": str(exc)})


def create_app(routers: Sequence[APIRouter], *, title: str = "pingmesh") -> FastAPI:
    """The ASGI app: ``routers``, the dashboard at ``/`` and the API docs at ``/docs``."""
    app = FastAPI(
        title=title,
        version=__version__,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        openapi_url="/openapi.json",
    )
    for api in routers:
        app.include_router(api)
    app.include_router(dashboard_router())
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PingmeshError, _pingmesh_error)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description
            )
            app.openapi_schema = _document_our_errors(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _document_our_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document tell the truth about 422: ``{"detail": "one line"}``.

    FastAPI documents its own list-of-errors body for every route with parameters; our
    handler replaces that body, so the document is rewritten to match.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorOut"] = ErrorOut.model_json_schema()
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            response = operation.get("responses", {}).get("422")
            if response is not None:
                response["description"] = "a parameter or field that is not valid"
                response["content"] = {"application/json": {"schema": error_ref}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
