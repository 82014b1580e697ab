"""Incidents: what the analysis found, as a lifecycle (opened → updated → closed).

A detector reports what it sees *now* as :class:`Detection` values; :meth:`IncidentStore.reconcile`
turns that into incidents: a detection with no open incident of the same (kind, scope, entity)
opens one, a detection with one updates it (evidence, summary, severity), and an open incident
of the detector's kinds that is no longer detected is closed. So incidents open and close on a
change of state only, and the alerting downstream sees each state change exactly once.

``evidence`` is a JSON object (pairs, 5-tuples, paths, votes…), bounded in size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pingmesh.store.database import Database

MAX_EVIDENCE_BYTES = 64 * 1024
SEVERITIES = ("critical", "warning", "info")
_COLUMNS = (
    "incident_id",
    "kind",
    "scope",
    "entity",
    "severity",
    "summary",
    "started_at_s",
    "updated_at_s",
    "ended_at_s",
    "evidence",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Detection:
    """One problem a detector sees in the current window."""

    kind: str  # black_hole, silent_drop, host_down, high_latency, packet_loss, …
    scope: str  # server, tor, podset, dc, tier, device, pair, …
    entity: str  # t2, spine, 198.18.0.1, h11->h12, …
    severity: str = "critical"
    summary: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("kind", "scope", "entity"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must not be empty")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity: {self.severity!r} is not one of {SEVERITIES}")

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the problem across windows."""
        return (self.kind, self.scope, self.entity)


@dataclass(frozen=True, slots=True, kw_only=True)
class Incident:
    """One incident as stored."""

    incident_id: str
    kind: str
    scope: str
    entity: str
    severity: str
    summary: str
    started_at_s: float
    updated_at_s: float
    ended_at_s: float | None
    evidence: Mapping[str, Any]

    @property
    def is_open(self) -> bool:
        """True until the incident is closed."""
        return self.ended_at_s is None

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, scope, entity)."""
        return (self.kind, self.scope, self.entity)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileResult:
    """What one reconciliation changed."""

    opened: tuple[Incident, ...] = ()
    updated: tuple[Incident, ...] = ()
    closed: tuple[Incident, ...] = ()


def _evidence_json(evidence: Mapping[str, Any]) -> str:
    text = json.dumps(evidence, sort_keys=True, default=str)
    if len(text.encode()) > MAX_EVIDENCE_BYTES:
        text = json.dumps({"truncated": True, "bytes": len(text.encode())})
    return text


def incident_id(kind: str, scope: str, entity: str, started_at_s: float) -> str:
    """A stable id: the same incident gets the same id on every replica."""
    digest = hashlib.sha256(f"{kind}|{scope}|{entity}|{started_at_s:.3f}".encode())
    return digest.hexdigest()[:16]


class IncidentStore:
    """Incidents in the results database (migration 0002)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def _rows(self, where: str, params: tuple[Any, ...], limit: int) -> list[Incident]:
        rows = self.database.query(
            f"SELECT {', '.join(_COLUMNS)} FROM incidents {where}"
            " ORDER BY started_at_s DESC, incident_id LIMIT ?",
            (*params, limit),
        )
        out = []
        for row in rows:
            values = dict(zip(_COLUMNS, row, strict=True))
            values["evidence"] = json.loads(values["evidence"])
            out.append(Incident(**values))
        return out

    def get(self, incident_id: str) -> Incident | None:
        """One incident by id."""
        rows = self._rows("WHERE incident_id = ?", (incident_id,), 1)
        return rows[0] if rows else None

    def open_incidents(self, kinds: Collection[str] | None = None) -> list[Incident]:
        """The open incidents (of ``kinds``, if given), newest first."""
        if kinds is None:
            return self._rows("WHERE ended_at_s IS NULL", (), 100_000)
        if not kinds:
            return []
        marks = ", ".join("?" * len(kinds))
        return self._rows(
            f"WHERE ended_at_s IS NULL AND kind IN ({marks})", tuple(sorted(kinds)), 100_000
        )

    def list(self, *, since_s: float | None = None, limit: int = 1000) -> list[Incident]:
        """Incidents active at or after ``since_s`` (open ones always), newest first."""
        if since_s is None:
            return self._rows("", (), limit)
        return self._rows("WHERE ended_at_s IS NULL OR ended_at_s >= ?", (since_s,), limit)

    def reconcile(
        self, detections: Iterable[Detection], *, kinds: Collection[str], now_s: float
    ) -> ReconcileResult:
        """Make the open incidents of ``kinds`` match ``detections`` (see the module doc)."""
        detected: dict[tuple[str, str, str], Detection] = {}
        for detection in detections:
            if detection.kind not in kinds:
                raise ValueError(f"kind: {detection.kind!r} is not among {sorted(kinds)}")
            detected[detection.key] = detection
        opened, updated, closed = [], [], []
        with self.database.transaction():
            current = {i.key: i for i in self.open_incidents(kinds)}
            for key, detection in detected.items():
                evidence = _evidence_json(detection.evidence)
                existing = current.get(key)
                if existing is None:
                    new_id = incident_id(*key, now_s)
                    self.database.execute(
                        f"INSERT INTO incidents ({', '.join(_COLUMNS)})"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                        (new_id, *key, detection.severity, detection.summary, now_s, now_s,
                         evidence),
                    )  # fmt: skip
                    opened.append(new_id)
                else:
                    self.database.execute(
                        "UPDATE incidents SET severity = ?, summary = ?, updated_at_s = ?,"
                        " evidence = ? WHERE incident_id = ?",
                        (detection.severity, detection.summary, now_s, evidence,
                         existing.incident_id),
                    )  # fmt: skip
                    updated.append(existing.incident_id)
            for key, incident in current.items():
                if key not in detected:
                    self.database.execute(
                        "UPDATE incidents SET ended_at_s = ?, updated_at_s = ?"
                        " WHERE incident_id = ?",
                        (now_s, now_s, incident.incident_id),
                    )
                    closed.append(incident.incident_id)

        def fetch(ids: list[str]) -> tuple[Incident, ...]:
            return tuple(i for i in (self.get(x) for x in ids) if i is not None)

        return ReconcileResult(opened=fetch(opened), updated=fetch(updated), closed=fetch(closed))
