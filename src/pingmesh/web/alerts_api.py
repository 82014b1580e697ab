"""The alerts API (``/api/v1/alerts…``): history, the active set (and whether the dashboard
should sound), one alert with its evidence and notifications, acknowledge, mute, rules and
notifiers.

Changes (ack, mute, rules) need ``Authorization: Bearer <alerts.write_token>`` when that token
is configured. Secrets are never answered: notifiers are described by
:meth:`~pingmesh.alerts.notifiers.Notifier.describe`, which reports only whether a password
or a secret is set.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from pingmesh.alerts.engine import AlertEngine
from pingmesh.alerts.rules import AlertRule
from pingmesh.alerts.setup import rule_from_config
from pingmesh.config import AlertRuleConfig
from pingmesh.errors import ConfigError
from pingmesh.store.alerts import Alert, Mute
from pingmesh.web.api import parse_rfc3339, utc
from pingmesh.web.app import ERROR_RESPONSES

MAX_DURATION_S = 30 * 86400
AuthHeader = Annotated[str | None, Header(description="Bearer <alerts.write_token>")]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class AlertOut(_Out):
    """One alert (``evidence`` and ``trace`` only in the single-alert answer)."""

    id: str
    rule_id: str
    rule_name: str
    kind: str = Field(description="metric, or incident:<kind>")
    severity: str
    scope: str
    subject: str
    level: str = Field(description="the level of the node or link the alert is about")
    summary: str
    state: Literal["firing", "resolved"]
    started_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    window_start: datetime | None
    value: float | None
    threshold: float | None
    incident_id: str | None
    acked_at: datetime | None
    acked_by: str | None
    ack_note: str | None
    muted: bool = Field(description="a mute covers it now: notifiers stay silent")
    pairs: int = Field(description="affected server pairs in the evidence")
    trace_task_id: str | None
    has_trace: bool


class NotificationOut(_Out):
    """One event of the alert for one notifier."""

    event: str
    notifier: str
    state: str
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    last_error: str | None


class AlertDetailOut(AlertOut):
    """One alert with its evidence, traceroute and notifications."""

    evidence: dict[str, Any]
    trace: dict[str, Any] | None
    notifications: list[NotificationOut]


class AlertsOut(_Out):
    """A list of alerts, newest first."""

    generated_at: datetime
    alerts: list[AlertOut]


class ActiveOut(_Out):
    """The firing alerts and whether the dashboard should sound."""

    generated_at: datetime
    firing: int
    unacknowledged: int
    sound: bool = Field(description="a firing alert is neither acknowledged nor muted")
    alerts: list[AlertOut]


class AckIn(BaseModel):
    """Who acknowledges, and a note."""

    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=80)
    note: str = Field(default="", max_length=500)


class MuteIn(BaseModel):
    """Mute the alert's subject (or every subject of its rule) for a while."""

    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=80)
    duration_s: float = Field(gt=0, le=MAX_DURATION_S)
    reason: str = Field(default="", max_length=500)
    whole_rule: bool = Field(default=False, description="every subject of the rule")


class MuteOut(_Out):
    """A mute."""

    id: str
    rule_id: str
    subject: str
    until: datetime
    created_at: datetime
    created_by: str
    reason: str
    active: bool


class RuleOut(_Out):
    """One rule in force."""

    id: str
    name: str
    origin: str = Field(description="default (a preset), config, or api (deletable here)")
    description: str
    scope: str
    level: str
    entity: str
    window: str
    percentile: str
    latency_us: float | None
    loss_ratio: float | None
    drop_rate: float | None
    min_probes: int
    n: int
    m: int
    incident_kinds: list[str]
    severity: str


def rule_out(rule: AlertRule) -> RuleOut:
    """The API form of a rule."""
    values = asdict(rule)
    values["id"] = values.pop("rule_id")
    values["incident_kinds"] = list(rule.incident_kinds)
    values["name"] = rule.name or rule.rule_id
    return RuleOut(**values, description=rule.describe())


class AlertsApi:
    """The alerts API over an :class:`AlertEngine` (its store, rules and notifiers)."""

    def __init__(self, engine: AlertEngine, *, default_window: str) -> None:
        self._engine = engine
        self._store = engine.store
        self._clock = engine.clock
        token = engine.config.write_token
        self._token = token.get_secret_value() if token is not None else None
        self._default_window = default_window
        self.router = self._build_router()

    def _check(self, authorization: str | None) -> None:
        if self._token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            raise HTTPException(
                status_code=401,
                detail="header 'Authorization': changing alerts needs 'Bearer <write_token>'",
            )

    def _out(self, alert: Alert, now_s: float) -> dict[str, Any]:
        pairs = alert.evidence.get("pairs")
        return {
            "id": alert.alert_id,
            "rule_id": alert.rule_id,
            "rule_name": alert.rule_name,
            "kind": alert.kind,
            "severity": alert.severity,
            "scope": alert.scope,
            "subject": alert.subject,
            "level": str(alert.evidence.get("level", alert.scope)),
            "summary": alert.summary,
            "state": alert.state,
            "started_at": utc(alert.started_at_s),
            "updated_at": utc(alert.updated_at_s),
            "resolved_at": utc(alert.resolved_at_s),
            "window_start": utc(alert.window_start),
            "value": alert.value,
            "threshold": alert.threshold,
            "incident_id": alert.incident_id,
            "acked_at": utc(alert.acked_at_s),
            "acked_by": alert.acked_by,
            "ack_note": alert.ack_note,
            "muted": self._store.mute_for(alert.rule_id, alert.subject, now_s=now_s) is not None,
            "pairs": len(pairs) if isinstance(pairs, list) else 0,
            "trace_task_id": alert.trace_task_id,
            "has_trace": alert.trace is not None,
        }

    def _detail(self, alert: Alert) -> AlertDetailOut:
        now_s = self._clock.now_s()
        return AlertDetailOut(
            **self._out(alert, now_s),
            evidence=dict(alert.evidence),
            trace=dict(alert.trace) if alert.trace is not None else None,
            notifications=[
                NotificationOut(
                    event=n.event,
                    notifier=n.notifier,
                    state=n.state,
                    attempts=n.attempts,
                    created_at=utc(n.created_at_s),
                    sent_at=utc(n.sent_at_s),
                    last_error=n.last_error,
                )
                for n in self._store.notifications(alert.alert_id)
            ],
        )

    def _mute_out(self, mute: Mute, now_s: float) -> MuteOut:
        return MuteOut(
            id=mute.mute_id,
            rule_id=mute.rule_id,
            subject=mute.subject,
            until=utc(mute.until_s),
            created_at=utc(mute.created_at_s),
            created_by=mute.created_by,
            reason=mute.reason,
            active=mute.until_s > now_s,
        )

    def _get(self, alert_id: str) -> Alert:
        alert = self._store.get(alert_id)
        if alert is None:
            raise HTTPException(status_code=404, detail=f"no alert {alert_id!r}")
        return alert

    def _build_router(self) -> APIRouter:
        api = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])

        @api.get("", response_model=AlertsOut, responses=ERROR_RESPONSES, summary="History")
        def list_alerts(
            state: Annotated[Literal["firing", "resolved"] | None, Query()] = None,
            since: Annotated[str | None, Query(description="RFC 3339")] = None,
            until: Annotated[str | None, Query(description="RFC 3339")] = None,
            limit: Annotated[int, Query(ge=1, le=5000)] = 500,
        ) -> AlertsOut:
            """Alerts active at some time in ``[since, until]`` (firing ones always), newest
            first."""
            try:
                since_s = parse_rfc3339("since", since).timestamp() if since else None
                until_s = parse_rfc3339("until", until).timestamp() if until else None
            except ValueError as exc:
                raise HTTPException(status_code=422, detail=str(exc)) from exc
            now_s = self._clock.now_s()
            alerts = self._store.history(since_s=since_s, until_s=until_s, state=state, limit=limit)
            return AlertsOut(
                generated_at=utc(now_s),
                alerts=[AlertOut(**self._out(a, now_s)) for a in alerts],
            )

        @api.get("/active", response_model=ActiveOut, summary="Firing alerts; sound or not")
        def active() -> ActiveOut:
            """The firing alerts. ``sound`` is true while one is neither acknowledged nor
            muted: the dashboard plays its alarm then."""
            now_s = self._clock.now_s()
            alerts = [AlertOut(**self._out(a, now_s)) for a in self._store.firing()]
            unacked = [a for a in alerts if a.acked_at is None]
            return ActiveOut(
                generated_at=utc(now_s),
                firing=len(alerts),
                unacknowledged=len(unacked),
                sound=any(not a.muted for a in unacked),
                alerts=alerts,
            )

        @api.get("/rules", response_model=list[RuleOut], summary="The rules in force")
        def rules() -> list[RuleOut]:
            """Presets, config rules and API rules, with what makes each fire."""
            return [rule_out(r) for r in self._engine.rules.all()]

        @api.post("/rules", response_model=RuleOut, responses=ERROR_RESPONSES, summary="Add a rule")
        def add_rule(body: AlertRuleConfig, authorization: AuthHeader = None) -> RuleOut:
            """Add (or replace) a rule; the body has the fields of a config rule."""
            self._check(authorization)
            try:
                rule = rule_from_config(body, default_window=self._default_window)
                rule = AlertRule(**{**asdict(rule), "origin": "api"})
                self._engine.rules.put(rule, now_s=self._clock.now_s())
            except (ConfigError, ValueError) as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from exc
            self._engine.wake()
            return rule_out(rule)

        @api.delete("/rules/{rule_id}", responses=ERROR_RESPONSES, summary="Remove a rule")
        def delete_rule(rule_id: str, authorization: AuthHeader = None) -> dict[str, str]:
            """Remove an API rule; its firing alerts resolve on the next pass."""
            self._check(authorization)
            try:
                found = self._engine.rules.delete(rule_id)
            except ValueError as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from exc
            if not found:
                raise HTTPException(status_code=404, detail=f"no API rule {rule_id!r}")
            self._engine.wake()
            return {"deleted": rule_id}

        @api.get("/mutes", response_model=list[MuteOut], summary="Mutes")
        def mutes(active_only: bool = True) -> list[MuteOut]:
            """The mutes (only those still in force unless ``active_only=false``)."""
            now_s = self._clock.now_s()
            found = self._store.mutes(now_s=now_s if active_only else None)
            return [self._mute_out(m, now_s) for m in found]

        @api.delete("/mutes/{mute_id}", responses=ERROR_RESPONSES, summary="Unmute")
        def unmute(mute_id: str, authorization: AuthHeader = None) -> dict[str, str]:
            """Remove a mute."""
            self._check(authorization)
            if not self._store.delete_mute(mute_id):
                raise HTTPException(status_code=404, detail=f"no mute {mute_id!r}")
            return {"deleted": mute_id}

        @api.get("/notifiers", summary="Notifiers (no secrets)")
        def notifiers() -> list[dict[str, Any]]:
            """Each notifier's name, kind and settings; passwords and secrets only as
            ``password_set`` / ``secret_set``."""
            return [n.describe() for n in self._engine.notifiers.values()]

        @api.get(
            "/{alert_id}",
            response_model=AlertDetailOut,
            responses=ERROR_RESPONSES,
            summary="One alert with its evidence",
        )
        def get_alert(alert_id: str) -> AlertDetailOut:
            """The alert, its evidence (affected pairs, breach, window), the traceroute and
            every notification with its state."""
            return self._detail(self._get(alert_id))

        @api.post(
            "/{alert_id}/ack",
            response_model=AlertDetailOut,
            responses=ERROR_RESPONSES,
            summary="Acknowledge",
        )
        def ack(alert_id: str, body: AckIn, authorization: AuthHeader = None) -> AlertDetailOut:
            """Acknowledge: the alert keeps firing, the dashboard stops sounding for it."""
            self._check(authorization)
            self._get(alert_id)
            alert = self._store.acknowledge(
                alert_id, by=body.by, note=body.note, now_s=self._clock.now_s()
            )
            assert alert is not None
            return self._detail(alert)

        @api.post(
            "/{alert_id}/mute", response_model=MuteOut, responses=ERROR_RESPONSES, summary="Mute"
        )
        def mute(alert_id: str, body: MuteIn, authorization: AuthHeader = None) -> MuteOut:
            """Silence the notifiers for this alert's subject (or its whole rule) for
            ``duration_s``; pending notices are dropped, the alert still shows."""
            self._check(authorization)
            alert = self._get(alert_id)
            now_s = self._clock.now_s()
            created = self._store.add_mute(
                rule_id=alert.rule_id,
                subject="*" if body.whole_rule else alert.subject,
                until_s=now_s + body.duration_s,
                by=body.by,
                reason=body.reason,
                now_s=now_s,
            )
            return self._mute_out(created, now_s)

        return api
