"""HTTP edge of the collector: ``POST /api/v1/results``.

The body is read here, not by FastAPI, so that its size is capped before it is buffered: a
``Content-Length`` above the cap is refused at once without reading, and a body without one
(chunked) is refused as soon as it grows past the cap.  Errors map to statuses as the API
contract says; the ``detail`` is one line that names what is wrong:

====================  ======  ================================================================
refused               status  ``detail``
====================  ======  ================================================================
too large             413     the cap in bytes
not JSON, bad field   422     ``records.3.rtt_us: Input should be greater than or equal to 0``
unknown agent         404     ``unknown server 'h9': not in the topology``
not stored            503     why (disk, shutting down, busy); the agent retries
====================  ======  ================================================================

A duplicate (retried) batch is a success: 200 with ``duplicate: true``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from pingmesh.collector.service import Collector
from pingmesh.config import CollectorConfig
from pingmesh.errors import BatchError, StoreError, UnknownServerError
from pingmesh.wire.results import BatchAck, ResultBatchModel

RESULTS_PATH = "/api/v1/results"


class _BodyTooLargeError(Exception):
    pass


def router(collector: Collector, config: CollectorConfig) -> APIRouter:
    """The collector's routes (full paths, no prefix needed)."""
    api = APIRouter(tags=["collector"])
    cap = config.max_body_bytes

    @api.post(
        RESULTS_PATH,
        response_model=BatchAck,
        summary="Upload a batch of probe results (idempotent by batch_id)",
        responses={
            404: {"description": "the agent is not in the topology"},
            413: {"description": f"the body is larger than {cap} bytes"},
            422: {"description": "the body is not a valid result batch"},
            503: {"description": "the batch could not be stored now; retry"},
        },
    )
    async def post_results(request: Request) -> Response:
        try:
            body = await _read_capped(request, cap)
        except _BodyTooLargeError:
            return _error(413, f"request body larger than {cap} bytes")
        except ValueError as exc:
            return _error(400, str(exc))
        except ClientDisconnect:
            return _error(400, "client disconnected while sending the body")
        try:
            batch = ResultBatchModel.model_validate_json(body)
        except ValidationError as exc:
            return _error(422, validation_detail(exc))
        try:
            ack = await collector.submit(batch)
        except BatchError as exc:
            return _error(422, str(exc))
        except UnknownServerError as exc:
            return _error(404, str(exc))
        except StoreError as exc:
            return _error(503, str(exc))
        return JSONResponse(ack.model_dump(mode="json"))

    return api


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValueError(f"Content-Length: {declared!r} is not a number")
        if int(declared) > cap:
            raise _BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


def validation_detail(exc: ValidationError) -> str:
    """One line naming the first field at fault, e.g. ``records.3.rtt_us: Input should …``."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "invalid result batch"
    first = errors[0]
    path = ".".join(str(part) for part in first["loc"]) or "body"
    message = " ".join(str(first["msg"]).split())
    others = len(errors) - 1
    more = f" (and {others} more error{'s' if others > 1 else ''})" if others else ""
    return f"{path}: {message}{more}"


def _error(status: int, detail: str) -> Response:
    content: dict[str, Any] = {"detail": detail}
    return JSONResponse(content, status_code=status)
