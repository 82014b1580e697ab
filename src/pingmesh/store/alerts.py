"""Alerts in the results database (migration 0004): alerts, their notifications, mutes, rules.

An alert is fired and resolved by the alert engine on a change of state; each change writes,
in the same transaction, one *notification* row per notifier (``pending``, or ``suppressed``
when a mute covers the alert).  The dispatcher sends pending rows and marks them ``sent`` (or
``failed`` after its last attempt), so an event reaches each notifier once even across
restarts: a row already ``sent`` is never sent again.  (A crash between a send and its mark
can repeat that one message; webhooks carry the delivery id so a receiver can drop it.)

Every method is synchronous and short; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pingmesh.store.database import Database

MAX_EVIDENCE_BYTES = 64 * 1024
AlertState = Literal["firing", "resolved"]
Event = Literal["firing", "resolved"]
NotificationState = Literal["pending", "sent", "failed", "suppressed"]

_ALERT_COLUMNS = (
    "alert_id",
    "rule_id",
    "rule_name",
    "kind",
    "severity",
    "scope",
    "subject",
    "summary",
    "state",
    "started_at_s",
    "updated_at_s",
    "resolved_at_s",
    "window_start",
    "value",
    "threshold",
    "incident_id",
    "acked_at_s",
    "acked_by",
    "ack_note",
    "evidence",
    "trace_task_id",
    "trace",
)
_NOTIFICATION_COLUMNS = (
    "alert_id",
    "event",
    "notifier",
    "state",
    "attempts",
    "created_at_s",
    "not_before_s",
    "next_attempt_s",
    "sent_at_s",
    "last_error",
)
_MUTE_COLUMNS = ("mute_id", "rule_id", "subject", "until_s", "created_at_s", "created_by", "reason")


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _json(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, sort_keys=True, default=str)
    if len(text.encode()) > MAX_EVIDENCE_BYTES:
        text = json.dumps({"truncated": True, "bytes": len(text.encode())})
    return text


def alert_id(rule_id: str, subject: str, started_at_s: float) -> str:
    """A stable id for one firing of ``rule_id`` on ``subject``."""
    digest = hashlib.sha256(f"{rule_id}|{subject}|{started_at_s:.3f}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One alert as stored."""

    alert_id: str
    rule_id: str
    rule_name: str
    kind: str  # metric | incident
    severity: str
    scope: str
    subject: str
    summary: str
    state: AlertState
    started_at_s: float
    updated_at_s: float
    resolved_at_s: float | None
    window_start: int | None
    value: float | None
    threshold: float | None
    incident_id: str | None
    acked_at_s: float | None
    acked_by: str | None
    ack_note: str | None
    evidence: Mapping[str, Any]
    trace_task_id: str | None
    trace: Mapping[str, Any] | None

    @property
    def key(self) -> tuple[str, str]:
        """(rule_id, subject): what stays the same across firings of one problem."""
        return (self.rule_id, self.subject)

    @property
    def is_firing(self) -> bool:
        """True until resolved."""
        return self.state == "firing"


@dataclass(frozen=True, slots=True, kw_only=True)
class NewAlert:
    """What the engine knows when an alert fires."""

    rule_id: str
    rule_name: str
    kind: str
    severity: str
    scope: str
    subject: str
    summary: str
    window_start: int | None = None
    value: float | None = None
    threshold: float | None = None
    incident_id: str | None = None
    evidence: Mapping[str, Any]
    trace_task_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One event of one alert for one notifier."""

    alert_id: str
    event: Event
    notifier: str
    state: NotificationState
    attempts: int
    created_at_s: float
    not_before_s: float
    next_attempt_s: float
    sent_at_s: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mute:
    """Silence the notifications of one rule on one subject (glob) until ``until_s``."""

    mute_id: str
    rule_id: str  # '*' for every rule
    subject: str  # a subject or a glob
    until_s: float
    created_at_s: float
    created_by: str
    reason: str


class AlertStore:
    """Alerts, notifications, mutes and API-defined rules (migration 0004)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    # -- alerts -----------------------------------------------------------------------------

    def _alerts(self, where: str, params: Sequence[Any], limit: int) -> list[Alert]:
        rows = self.database.query(
            f"SELECT {_quoted(_ALERT_COLUMNS)} FROM alerts {where}"
            " ORDER BY started_at_s DESC, alert_id LIMIT ?",
            (*params, limit),
        )
        out = []
        for row in rows:
            values = dict(zip(_ALERT_COLUMNS, row, strict=True))
            values["evidence"] = json.loads(values["evidence"])
            values["trace"] = json.loads(values["trace"]) if values["trace"] else None
            if values["window_start"] is not None:
                values["window_start"] = int(values["window_start"])
            out.append(Alert(**values))
        return out

    def get(self, alert_id: str) -> Alert | None:
        """One alert by id."""
        rows = self._alerts("WHERE alert_id = ?", (alert_id,), 1)
        return rows[0] if rows else None

    def firing(self, rule_id: str | None = None) -> list[Alert]:
        """The firing alerts (of one rule), newest first."""
        if rule_id is None:
            return self._alerts("WHERE state = 'firing'", (), 1_000_000)
        return self._alerts("WHERE state = 'firing' AND rule_id = ?", (rule_id,), 1_000_000)

    def history(
        self,
        *,
        since_s: float | None = None,
        until_s: float | None = None,
        state: AlertState | None = None,
        limit: int = 500,
    ) -> list[Alert]:
        """Alerts active in ``[since_s, until_s]`` (firing ones always), newest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if since_s is not None:
            clauses.append("(resolved_at_s IS NULL OR resolved_at_s >= ?)")
            params.append(since_s)
        if until_s is not None:
            clauses.append("started_at_s <= ?")
            params.append(until_s)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._alerts(where, params, limit)

    def fire(
        self,
        new: NewAlert,
        *,
        now_s: float,
        notifiers: Sequence[str],
        not_before_s: float | None = None,
    ) -> Alert:
        """Store a new firing alert and one notification per notifier, in one transaction.

        Notifications are ``suppressed`` when an active mute covers the alert; otherwise
        ``pending`` and due at ``not_before_s`` (default: now).
        """
        new_id = alert_id(new.rule_id, new.subject, now_s)
        muted = self.mute_for(new.rule_id, new.subject, now_s=now_s) is not None
        due = now_s if not_before_s is None else not_before_s
        with self.database.transaction():
            self.database.execute(
                f"INSERT INTO alerts ({_quoted(_ALERT_COLUMNS)}) VALUES "
                f"({', '.join('?' * len(_ALERT_COLUMNS))})",
                (
                    new_id,
                    new.rule_id,
                    new.rule_name,
                    new.kind,
                    new.severity,
                    new.scope,
                    new.subject,
                    new.summary,
                    "firing",
                    now_s,
                    now_s,
                    None,
                    new.window_start,
                    new.value,
                    new.threshold,
                    new.incident_id,
                    None,
                    None,
                    None,
                    _json(new.evidence),
                    new.trace_task_id,
                    None,
                ),
            )
            self._add_notifications(
                new_id, "firing", notifiers, muted=muted, now_s=now_s, due_s=due
            )
        alert = self.get(new_id)
        assert alert is not None
        return alert

    def resolve(
        self, alert_id: str, *, now_s: float, notifiers: Sequence[str], summary: str | None = None
    ) -> Alert | None:
        """Mark a firing alert resolved and queue its recovery notices; None if not firing.

        A notifier that never sent (nor will send) the firing notice gets no recovery notice:
        its firing notification was suppressed by a mute, or failed for good.
        """
        with self.database.transaction():
            current = self.get(alert_id)
            if current is None or not current.is_firing:
                return None
            sets = "state = 'resolved', resolved_at_s = ?, updated_at_s = ?"
            params: list[Any] = [now_s, now_s]
            if summary is not None:
                sets += ", summary = ?"
                params.append(summary)
            self.database.execute(
                f"UPDATE alerts SET {sets} WHERE alert_id = ?", (*params, alert_id)
            )
            told = {
                n.notifier
                for n in self.notifications(alert_id)
                if n.event == "firing" and n.state in ("pending", "sent")
            }
            muted = self.mute_for(current.rule_id, current.subject, now_s=now_s) is not None
            self._add_notifications(
                alert_id,
                "resolved",
                [n for n in notifiers if n in told],
                muted=muted,
                now_s=now_s,
                due_s=now_s,
            )
        return self.get(alert_id)

    def update_evidence(
        self,
        alert_id: str,
        *,
        now_s: float,
        evidence: Mapping[str, Any] | None = None,
        trace_task_id: str | None = None,
        trace: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace the evidence, the traceroute task id or the traceroute result."""
        sets: list[str] = ["updated_at_s = ?"]
        params: list[Any] = [now_s]
        if evidence is not None:
            sets.append("evidence = ?")
            params.append(_json(evidence))
        if trace_task_id is not None:
            sets.append("trace_task_id = ?")
            params.append(trace_task_id)
        if trace is not None:
            sets.append("trace = ?")
            params.append(_json(trace))
        self.database.execute(
            f"UPDATE alerts SET {', '.join(sets)} WHERE alert_id = ?", (*params, alert_id)
        )

    def acknowledge(self, alert_id: str, *, by: str, note: str, now_s: float) -> Alert | None:
        """Acknowledge an alert (it keeps firing, the dashboard stops sounding for it)."""
        self.database.execute(
            "UPDATE alerts SET acked_at_s = ?, acked_by = ?, ack_note = ?, updated_at_s = ?"
            " WHERE alert_id = ?",
            (now_s, by, note, now_s, alert_id),
        )
        return self.get(alert_id)

    def pending_traces(self) -> list[Alert]:
        """Firing or recent alerts whose traceroute was requested and has no result yet."""
        return self._alerts("WHERE trace_task_id IS NOT NULL AND trace IS NULL", (), 1000)

    # -- notifications ----------------------------------------------------------------------

    def _add_notifications(
        self,
        alert_id: str,
        event: Event,
        notifiers: Sequence[str],
        *,
        muted: bool,
        now_s: float,
        due_s: float,
    ) -> None:
        state = "suppressed" if muted else "pending"
        self.database.executemany(
            f"INSERT INTO alert_notifications ({_quoted(_NOTIFICATION_COLUMNS)}) VALUES "
            f"({', '.join('?' * len(_NOTIFICATION_COLUMNS))}) "
            "ON CONFLICT (alert_id, event, notifier) DO NOTHING",
            [(alert_id, event, n, state, 0, now_s, due_s, due_s, None, None) for n in notifiers],
        )

    def _notification_rows(self, where: str, params: Sequence[Any]) -> list[Notification]:
        rows = self.database.query(
            f"SELECT {_quoted(_NOTIFICATION_COLUMNS)} FROM alert_notifications {where}"
            " ORDER BY created_at_s, alert_id, event DESC, notifier",
            params,
        )
        return [Notification(**dict(zip(_NOTIFICATION_COLUMNS, r, strict=True))) for r in rows]

    def notifications(self, alert_id: str) -> list[Notification]:
        """Every notification of one alert (firing before resolved)."""
        return self._notification_rows("WHERE alert_id = ?", (alert_id,))

    def due_notifications(self, *, now_s: float, limit: int = 100) -> list[Notification]:
        """Pending notifications whose time has come, oldest first.

        A recovery notice waits while the firing notice of the same alert and notifier is
        still pending, so that the two always arrive in order.
        """
        rows = self._notification_rows("WHERE state = 'pending' AND next_attempt_s <= ?", (now_s,))
        waiting = {
            (n.alert_id, n.notifier)
            for n in self._notification_rows("WHERE state = 'pending' AND event = 'firing'", ())
        }
        out = [n for n in rows if n.event == "firing" or (n.alert_id, n.notifier) not in waiting]
        return out[:limit]

    def mark_sent(self, n: Notification, *, now_s: float) -> None:
        """The notifier accepted the message."""
        self.database.execute(
            "UPDATE alert_notifications SET state = 'sent', attempts = attempts + 1,"
            " sent_at_s = ?, last_error = NULL WHERE alert_id = ? AND event = ? AND notifier = ?",
            (now_s, n.alert_id, n.event, n.notifier),
        )

    def mark_failed_attempt(
        self, n: Notification, *, error: str, next_attempt_s: float | None
    ) -> None:
        """A send failed: retry at ``next_attempt_s``, or give up (``failed``) when None."""
        state = "failed" if next_attempt_s is None else "pending"
        self.database.execute(
            "UPDATE alert_notifications SET state = ?, attempts = attempts + 1, last_error = ?,"
            " next_attempt_s = ? WHERE alert_id = ? AND event = ? AND notifier = ?",
            (
                state,
                error[:500],
                n.next_attempt_s if next_attempt_s is None else next_attempt_s,
                n.alert_id,
                n.event,
                n.notifier,
            ),
        )

    def release(self, alert_id: str, *, now_s: float) -> None:
        """Make the held (never attempted) notifications of an alert due now."""
        self.database.execute(
            "UPDATE alert_notifications SET next_attempt_s = ? WHERE alert_id = ?"
            " AND state = 'pending' AND attempts = 0 AND next_attempt_s > ?",
            (now_s, alert_id, now_s),
        )

    def suppress_pending(self, rule_id: str, subject_glob: str) -> int:
        """Suppress the pending notifications of alerts that a new mute covers."""
        rows = self.database.query(
            "SELECT n.alert_id, a.rule_id, a.subject FROM alert_notifications n"
            " JOIN alerts a ON a.alert_id = n.alert_id WHERE n.state = 'pending'",
        )
        hit = sorted(
            {
                alert
                for alert, rule, subject in rows
                if _mute_covers(rule_id, subject_glob, rule, subject)
            }
        )
        for alert in hit:
            self.database.execute(
                "UPDATE alert_notifications SET state = 'suppressed'"
                " WHERE alert_id = ? AND state = 'pending'",
                (alert,),
            )
        return len(hit)

    # -- mutes ------------------------------------------------------------------------------

    def add_mute(
        self, *, rule_id: str, subject: str, until_s: float, by: str, reason: str, now_s: float
    ) -> Mute:
        """Mute ``rule_id`` ('*': every rule) on ``subject`` (a glob) until ``until_s``."""
        mute = Mute(
            mute_id=uuid.uuid4().hex[:16],
            rule_id=rule_id,
            subject=subject,
            until_s=until_s,
            created_at_s=now_s,
            created_by=by,
            reason=reason,
        )
        with self.database.transaction():
            self.database.execute(
                f"INSERT INTO alert_mutes ({_quoted(_MUTE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    mute.mute_id,
                    mute.rule_id,
                    mute.subject,
                    mute.until_s,
                    mute.created_at_s,
                    mute.created_by,
                    mute.reason,
                ),
            )
            self.suppress_pending(rule_id, subject)
        return mute

    def mutes(self, *, now_s: float | None = None) -> list[Mute]:
        """The mutes (only those still active at ``now_s``, if given), newest first."""
        where, params = ("WHERE until_s > ?", (now_s,)) if now_s is not None else ("", ())
        rows = self.database.query(
            f"SELECT {_quoted(_MUTE_COLUMNS)} FROM alert_mutes {where}"
            " ORDER BY created_at_s DESC, mute_id",
            params,
        )
        return [Mute(**dict(zip(_MUTE_COLUMNS, r, strict=True))) for r in rows]

    def delete_mute(self, mute_id: str) -> bool:
        """Remove a mute; False when there is none with that id."""
        with self.database.transaction():
            found = self.database.query(
                "SELECT mute_id FROM alert_mutes WHERE mute_id = ?", (mute_id,)
            )
            self.database.execute("DELETE FROM alert_mutes WHERE mute_id = ?", (mute_id,))
        return bool(found)

    def mute_for(self, rule_id: str, subject: str, *, now_s: float) -> Mute | None:
        """The active mute that covers (``rule_id``, ``subject``), if any."""
        for mute in self.mutes(now_s=now_s):
            if _mute_covers(mute.rule_id, mute.subject, rule_id, subject):
                return mute
        return None

    # -- rules defined through the API ------------------------------------------------------

    def rules(self) -> list[tuple[str, dict[str, Any]]]:
        """(rule_id, definition) of every rule stored through the API."""
        rows = self.database.query(
            "SELECT rule_id, definition FROM alert_rules ORDER BY created_at_s, rule_id"
        )
        return [(str(r[0]), json.loads(r[1])) for r in rows]

    def put_rule(self, rule_id: str, definition: Mapping[str, Any], *, now_s: float) -> None:
        """Store (or replace) a rule definition."""
        self.database.execute(
            "INSERT INTO alert_rules (rule_id, definition, created_at_s) VALUES (?, ?, ?)"
            " ON CONFLICT (rule_id) DO UPDATE SET definition = excluded.definition",
            (rule_id, json.dumps(dict(definition), sort_keys=True), now_s),
        )

    def delete_rule(self, rule_id: str) -> bool:
        """Remove an API rule; False when there is none with that id."""
        with self.database.transaction():
            found = self.database.query(
                "SELECT rule_id FROM alert_rules WHERE rule_id = ?", (rule_id,)
            )
            self.database.execute("DELETE FROM alert_rules WHERE rule_id = ?", (rule_id,))
        return bool(found)


def _mute_covers(mute_rule: str, mute_subject: str, rule_id: str, subject: str) -> bool:
    return (mute_rule in ("*", rule_id)) and (
        mute_subject in ("*", subject) or fnmatch.fnmatchcase(subject, mute_subject)
    )
