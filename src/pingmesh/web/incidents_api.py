"""``GET /api/v1/incidents``: the problems the analysis found (DESIGN.md, HTTP API).

Each incident has ``kind`` (``black_hole``, ``silent_drop``, ``host_down``, ``host_unreachable``,
``tor_down``, ``podset_down``, ``host_noise``, ``host_drops``, ``high_latency``,
``packet_loss``), ``scope`` and ``entity`` (``tor``/``t2``; ``tier``/``spine@dc1``;
``device``/``198.18.1.4``; ``server``/``h11``; ``pair``/``h11->h12``; ``dc_pair``/``dc1->dc2``),
``started_at`` and ``ended_at`` (RFC 3339 UTC; ``ended_at`` null while open), and ``evidence``
(pairs, 5-tuples, paths, votes). ``since`` keeps the incidents active at or after that time
(open ones always); filters narrow by kind, scope, entity, or to the open ones.

Handlers are plain ``def``: the incident store blocks, so FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from pingmesh.clock import Clock
from pingmesh.store.incidents import Incident, IncidentStore
from pingmesh.web.app import ERROR_RESPONSES

MAX_LIMIT = 10_000
_SCAN = 20_000  # rows read before filtering (the store filters only by time)


class IncidentOut(BaseModel):
    """One incident."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    scope: str
    entity: str
    severity: str = Field(description="critical, warning or info")
    summary: str
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None = Field(description="null while the incident is open")
    open: bool
    evidence: dict[str, Any]


class IncidentsOut(BaseModel):
    """Incidents, newest first."""

    model_config = ConfigDict(frozen=True)

    generated_at: datetime
    since: datetime | None
    count: int
    incidents: list[IncidentOut]


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(round(seconds, 3), tz=UTC)


def incident_out(incident: Incident) -> IncidentOut:
    """The API form of a stored incident."""
    started = _utc(incident.started_at_s)
    updated = _utc(incident.updated_at_s)
    assert started is not None
    assert updated is not None
    return IncidentOut(
        id=incident.incident_id,
        kind=incident.kind,
        scope=incident.scope,
        entity=incident.entity,
        severity=incident.severity,
        summary=incident.summary,
        started_at=started,
        updated_at=updated,
        ended_at=_utc(incident.ended_at_s),
        open=incident.is_open,
        evidence=dict(incident.evidence),
    )


def parse_since(text: str) -> datetime:
    """An RFC 3339 time with a timezone; ValueError names the parameter."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ValueError(
            f"query parameter 'since': {text!r} is not an RFC 3339 time with a timezone "
            "(e.g. 2027-01-15T08:00:00Z)"
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentsApiStatistics:
    """Counters of the incidents API."""

    incidents_requests_total: int
    incidents_rejected_total: int
    incidents_served_total: int


SinceParam = Annotated[
    str | None,
    Query(description="RFC 3339: incidents active at or after this time (open ones always)"),
]
KindParam = Annotated[str | None, Query(description="only this kind (e.g. black_hole)")]
ScopeParam = Annotated[str | None, Query(description="only this scope (e.g. tor, tier, device)")]
EntityParam = Annotated[str | None, Query(description="only this entity (e.g. t2, spine@dc1)")]
OpenParam = Annotated[bool, Query(description="only the incidents still open")]
LimitParam = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many")]


class IncidentsApi:
    """The incidents router and its counters."""

    def __init__(self, store: IncidentStore, *, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = {
            "incidents_requests_total": 0,
            "incidents_rejected_total": 0,
            "incidents_served_total": 0,
        }
        self.router = self._build_router()

    def statistics(self) -> IncidentsApiStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return IncidentsApiStatistics(**self._counts)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def incidents(
        self,
        *,
        since: str | None = None,
        kind: str | None = None,
        scope: str | None = None,
        entity: str | None = None,
        open_only: bool = False,
        limit: int = 1000,
    ) -> IncidentsOut:
        """The incidents that match, newest first."""
        self._count("incidents_requests_total")
        since_at: datetime | None = None
        if since is not None:
            try:
                since_at = parse_since(since)
            except ValueError as exc:
                self._count("incidents_rejected_total")
                raise HTTPException(status_code=422, detail=str(exc)) from exc
        if open_only:
            found = self._store.open_incidents([kind] if kind else None)
        else:
            found = self._store.list(
                since_s=since_at.timestamp() if since_at else None, limit=_SCAN
            )
        chosen = [
            i
            for i in found
            if (kind is None or i.kind == kind)
            and (scope is None or i.scope == scope)
            and (entity is None or i.entity == entity)
            and (since_at is None or i.is_open or (i.ended_at_s or 0) >= since_at.timestamp())
        ][:limit]
        self._count("incidents_served_total", len(chosen))
        return IncidentsOut(
            generated_at=datetime.fromtimestamp(self._clock.now_s(), tz=UTC),
            since=since_at,
            count=len(chosen),
            incidents=[incident_out(i) for i in chosen],
        )

    def incident(self, incident_id: str) -> IncidentOut:
        """One incident; 404 when there is none with that id."""
        found = self._store.get(incident_id)
        if found is None:
            self._count("incidents_rejected_total")
            raise HTTPException(status_code=404, detail=f"no incident {incident_id!r}")
        return incident_out(found)

    def _build_router(self) -> APIRouter:
        api = APIRouter(prefix="/api/v1", tags=["incidents"])

        @api.get(
            "/incidents",
            response_model=IncidentsOut,
            responses=ERROR_RESPONSES,
            summary="Detected problems: black holes, silent drops, hosts down, SLA breaches",
        )
        def get_incidents(
            *,
            since: SinceParam = None,
            kind: KindParam = None,
            scope: ScopeParam = None,
            entity: EntityParam = None,
            open_only: OpenParam = False,
            limit: LimitParam = 1000,
        ) -> IncidentsOut:
            """Incidents newest first: kind, scope, entity, start, end (null while open),
            severity, summary and evidence (pairs, 5-tuples, paths, votes)."""
            return self.incidents(
                since=since,
                kind=kind,
                scope=scope,
                entity=entity,
                open_only=open_only,
                limit=limit,
            )

        @api.get(
            "/incidents/{incident_id}",
            response_model=IncidentOut,
            responses={404: ERROR_RESPONSES[400] | {"description": "no such incident"}},
            summary="One incident",
        )
        def get_incident(incident_id: str) -> IncidentOut:
            """One incident by its id."""
            return self.incident(incident_id)

        return api


def incidents_router(store: IncidentStore, *, clock: Clock) -> APIRouter:
    """``GET /api/v1/incidents`` (and ``/incidents/{id}``) as a router.

    Use :class:`IncidentsApi` to also read its ``statistics()``.
    """
    return IncidentsApi(store, clock=clock).router
