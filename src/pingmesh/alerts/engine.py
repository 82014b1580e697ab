"""The alert engine: rules over analysed windows and incidents → alerts → notifiers.

Theory of operation
-------------------
Every ``evaluate_every_s`` the engine runs one *evaluation* (synchronous, in a worker thread,
because the results database blocks) and one *dispatch* (async):

1. Evaluation, per metric rule: read the windows of the rule's kind that are newer than the
   last one it saw (at most ``m``: older verdicts would fall out of the N-of-M history anyway),
   oldest first; give each subject a verdict (:func:`pingmesh.alerts.rules.breach`) and feed
   the rule's :class:`~pingmesh.alerts.rules.NOfM`.  Then *reconcile*: subjects that should be
   firing but have no firing alert in the store fire; firing alerts whose subject no longer
   qualifies resolve.  The store, not memory, says what is firing, so after a restart (the
   trackers are primed from the last ``m`` stored windows) a problem that persists does not
   alert again and one that ended while the server was down gets its recovery notice.
   Incident rules reconcile the open incidents of their kinds with their firing alerts the
   same way.
2. When an alert fires it carries evidence: the affected server pairs of that window, worst
   first, and a traceroute requested through the injected :class:`Tracer` for the worst pair
   (SmartPing runs MTR before it mails, ``src/funcs/alert.go``; kconmon-ng runs MTR on
   failure).  Its firing notices are held until the trace result arrives or ``trace_wait_s``
   passes, whichever comes first, so the message usually carries the path.
3. Dispatch sends the due notifications (one task per notifier, each in order), marks each
   ``sent``, or schedules a retry with exponential backoff, ``failed`` after
   ``send_attempts``.  See :mod:`pingmesh.store.alerts` for the once-only bookkeeping.

Rules come from the config (plus the SmartPing, Pingmesh and incident presets unless
``default_rules`` is false) and from the API (stored in the database).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pingmesh.alerts.notifiers import AlertMessage, Notifier
from pingmesh.alerts.rules import (
    AlertRule,
    Breach,
    NOfM,
    breach,
    link_subject,
    split_link,
)
from pingmesh.clock import Clock
from pingmesh.config import AlertsConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.errors import NotifyError, PingmeshError
from pingmesh.store.alerts import Alert, AlertStore, NewAlert, Notification
from pingmesh.store.incidents import Incident, IncidentStore
from pingmesh.store.results import MatrixRow, ResultsDB, Stats, WindowRow
from pingmesh.wire.tasks import TracerouteResult

log = logging.getLogger(__name__)

MAX_EVIDENCE_PAIRS = 20
TRACE_GIVE_UP_S = 3600.0  # stop waiting for a traceroute result after this long
MAX_DISPATCH_PER_PASS = 200


class Tracer(Protocol):
    """Asks an agent for a traceroute of one pair and reads the result (issue 4's task queue).

    ``request_trace`` returns a task id, or None when no trace can be taken (rate limit,
    unknown server); it must not block for long.  ``trace_result`` returns None until the
    agent has reported.
    """

    def request_trace(self, src_server: str, dst_server: str, *, reason: str) -> str | None: ...

    def trace_result(self, task_id: str) -> TracerouteResult | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertEngineStatistics:
    """Counters of the alert engine (they feed ``/metrics``)."""

    rules: int
    alerts_firing: int
    tracked_subjects: int
    evaluations_total: int
    evaluation_failures_total: int
    windows_evaluated_total: int
    alerts_fired_total: int
    alerts_resolved_total: int
    notifications_sent_total: int
    notification_failures_total: int  # failed attempts (each retried until send_attempts)
    notifications_given_up_total: int
    traces_requested_total: int
    trace_request_failures_total: int
    traces_received_total: int


@dataclass(slots=True)
class _Tracker:
    rule: AlertRule
    nofm: NOfM
    last_start: int | None = None


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def _stats_dict(row: Stats) -> dict[str, Any]:
    return {
        "probes": row.probes,
        "failures": row.failures,
        "p50_us": row.p50_us,
        "p99_us": row.p99_us,
        "drop_rate": row.drop_rate,
    }


class RuleBook:
    """The rules in force: fixed ones (presets and config) plus those stored via the API."""

    def __init__(self, fixed: Sequence[AlertRule], store: AlertStore) -> None:
        ids = [r.rule_id for r in fixed]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"alerts.rules: rule id {dupes[0]!r} is used twice")
        self._fixed = tuple(fixed)
        self._store = store

    def all(self) -> list[AlertRule]:
        """Every rule, fixed first; a stored rule that no longer validates is skipped."""
        rules = list(self._fixed)
        fixed_ids = {r.rule_id for r in self._fixed}
        for rule_id, definition in self._store.rules():
            if rule_id in fixed_ids:
                continue
            try:
                rules.append(AlertRule(**{**definition, "rule_id": rule_id, "origin": "api"}))
            except (TypeError, ValueError) as exc:
                log.warning("alert rule %s from the database is not valid: %s", rule_id, exc)
        return rules

    def put(self, rule: AlertRule, *, now_s: float) -> None:
        """Store a rule made through the API (ValueError if it would replace a fixed rule)."""
        if any(r.rule_id == rule.rule_id for r in self._fixed):
            raise ValueError(
                f"rule_id: {rule.rule_id!r} is defined in the config; choose another id"
            )
        definition = {k: v for k, v in asdict(rule).items() if k not in ("rule_id", "origin")}
        definition["incident_kinds"] = list(rule.incident_kinds)
        self._store.put_rule(rule.rule_id, definition, now_s=now_s)

    def delete(self, rule_id: str) -> bool:
        """Remove an API rule (ValueError for a config rule); False if there is none."""
        if any(r.rule_id == rule_id for r in self._fixed):
            raise ValueError(f"rule {rule_id!r} is defined in the config; remove it there")
        return self._store.delete_rule(rule_id)


class AlertEngine:
    """Evaluates the rules, records alerts and drives the notifiers (see module docstring)."""

    def __init__(
        self,
        store: AlertStore,
        results: ResultsDB,
        rules: RuleBook,
        *,
        source: TopologySource,
        clock: Clock,
        config: AlertsConfig,
        notifiers: Sequence[Notifier] = (),
        incidents: IncidentStore | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        names = [n.name for n in notifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"alerts: two notifiers share a name: {sorted(names)}")
        self.store = store
        self.results = results
        self.rules = rules
        self.source = source
        self.clock = clock
        self.config = config
        self.notifiers = {n.name: n for n in notifiers}
        self.incidents = incidents
        self.tracer = tracer
        self._trackers: dict[str, _Tracker] = {}
        # Server-level matrices read for evidence during one pass: when many links of one
        # window fire together (a sick ToR), the window is read once, not once per alert.
        self._pass_pairs: dict[tuple[str, int], list[MatrixRow]] = {}
        self._lock = threading.Lock()  # evaluation runs in a thread; statistics() may not
        self._counts = dict.fromkeys(
            (
                "evaluations_total",
                "evaluation_failures_total",
                "windows_evaluated_total",
                "alerts_fired_total",
                "alerts_resolved_total",
                "notifications_sent_total",
                "notification_failures_total",
                "notifications_given_up_total",
                "traces_requested_total",
                "trace_request_failures_total",
                "traces_received_total",
            ),
            0,
        )
        self._gauges = {"rules": 0, "alerts_firing": 0, "tracked_subjects": 0}
        self._wake = asyncio.Event()

    # -- statistics ---------------------------------------------------------------------------

    def statistics(self) -> AlertEngineStatistics:
        """A snapshot of the counters and gauges."""
        with self._lock:
            return AlertEngineStatistics(**self._gauges, **self._counts)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    # -- the loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Run the next pass now (e.g. after a rule or mute changed)."""
        self._wake.set()

    async def run(self) -> None:
        """Evaluate and dispatch every ``evaluate_every_s`` until cancelled."""
        while True:
            await self.run_once()
            self._wake.clear()
            try:
                async with asyncio.timeout(self.config.evaluate_every_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def run_once(self) -> None:
        """One evaluation and one dispatch; failures are logged and counted, not raised."""
        try:
            await asyncio.to_thread(self.evaluate)
        except PingmeshError:
            self._count("evaluation_failures_total")
            log.exception("alert evaluation failed")
        await self.dispatch()

    # -- evaluation (blocking) ----------------------------------------------------------------

    def evaluate(self) -> None:
        """One evaluation pass over every rule (blocking: call it in a thread)."""
        now_s = self.clock.now_s()
        rules = self.rules.all()
        self._count("evaluations_total")
        cache: dict[tuple[str, int, str, str], Any] = {}
        self._pass_pairs = {}
        live_ids = {r.rule_id for r in rules}
        for rule_id in list(self._trackers):
            if rule_id not in live_ids:
                del self._trackers[rule_id]
        for rule in rules:
            if rule.is_incident_rule:
                self._evaluate_incidents(rule, now_s)
            else:
                self._evaluate_metric(rule, now_s, cache)
        # Alerts of rules that no longer exist resolve: nobody would ever resolve them.
        for alert in self.store.firing():
            if alert.rule_id not in live_ids:
                self._resolve(alert, now_s, summary=f"{alert.summary} (rule removed)")
        self._poll_traces(now_s)
        with self._lock:
            self._gauges["rules"] = len(rules)
            self._gauges["alerts_firing"] = len(self.store.firing())
            self._gauges["tracked_subjects"] = sum(len(t.nofm) for t in self._trackers.values())

    def _tracker(self, rule: AlertRule) -> _Tracker:
        tracker = self._trackers.get(rule.rule_id)
        if tracker is None or tracker.rule != rule:  # new, or redefined: start afresh
            tracker = _Tracker(rule=rule, nofm=NOfM(rule.n, rule.m))
            self._trackers[rule.rule_id] = tracker
        return tracker

    def _rows(
        self, rule: AlertRule, window: WindowRow, cache: dict[tuple[str, int, str, str], Any]
    ) -> Mapping[str, Stats]:
        key = (window.window, window.window_start, rule.scope, rule.watched_level)
        rows = cache.get(key)
        if rows is None:
            if rule.scope == "link":
                rows = {
                    link_subject(r.src, r.dst): r
                    for r in self.results.matrix(window.window, window.window_start, rule.level)
                }
            else:
                rows = {
                    r.entity: r
                    for r in self.results.sla(window.window, window.window_start, rule.scope)
                }
            cache[key] = rows
        return rows

    def _evaluate_metric(
        self, rule: AlertRule, now_s: float, cache: dict[tuple[str, int, str, str], Any]
    ) -> None:
        tracker = self._tracker(rule)
        recent = sorted(
            self.results.windows(rule.window, limit=rule.m), key=lambda w: w.window_start
        )
        last_window: WindowRow | None = None
        last_rows: Mapping[str, Stats] = {}
        for window in recent:
            if tracker.last_start is not None and window.window_start <= tracker.last_start:
                continue
            rows = self._rows(rule, window, cache)
            breaches: dict[str, Breach] = {}
            for subject, row in rows.items():
                if not rule.covers(subject):
                    continue
                why = breach(rule, row)
                if why is not None:
                    breaches[subject] = why
            tracker.nofm.observe(breaches)
            tracker.last_start = window.window_start
            last_window, last_rows = window, rows
            self._count("windows_evaluated_total")
        should_fire = tracker.nofm.firing()
        current = {a.subject: a for a in self.store.firing(rule.rule_id)}
        for subject, alert in current.items():
            if subject not in should_fire:
                bad = tracker.nofm.state(subject)
                count = bad.bad_count(rule.m) if bad else 0
                self._resolve(
                    alert,
                    now_s,
                    summary=f"{self._what(rule, subject)}: {count} of the last {rule.m} "
                    f"{rule.window} windows bad (fewer than {rule.n})",
                )
        for subject, state in sorted(should_fire.items()):
            if subject in current:
                continue
            why = state.last_breach
            assert why is not None  # a firing subject has had a bad window
            seen = last_window or (recent[-1] if recent else None)
            rows = last_rows or (self._rows(rule, seen, cache) if seen else {})
            self._fire_metric(
                rule,
                subject,
                why,
                bad_count=state.bad_count(rule.m),
                window=seen,
                rows=rows,
                now_s=now_s,
            )

    def _what(self, rule: AlertRule, subject: str) -> str:
        if rule.scope == "link":
            return f"{rule.level} link {subject}"
        return f"{rule.scope} {subject}"

    def _fire_metric(
        self,
        rule: AlertRule,
        subject: str,
        why: Breach,
        *,
        bad_count: int,
        window: WindowRow | None,
        rows: Mapping[str, Stats],
        now_s: float,
    ) -> None:
        summary = (
            f"{self._what(rule, subject)}: {why.describe()} "
            f"({bad_count} of the last {rule.m} {rule.window} windows)"
        )
        pairs = self._affected_pairs(rule, subject, window) if window else []
        evidence: dict[str, Any] = {
            "rule": rule.describe(),
            "level": rule.watched_level,
            "subject": subject,
            "window": rule.window,
            "window_start": _iso(window.window_start) if window else None,
            "window_end": _iso(window.window_end) if window else None,
            "breach": {
                "metric": why.metric,
                "value": why.value,
                "threshold": why.threshold,
                "probes": why.probes,
            },
            "bad_windows": bad_count,
            "of_windows": rule.m,
            "stats": _stats_dict(rows[subject]) if subject in rows else None,
            "pairs": pairs,
        }
        self._fire(
            NewAlert(
                rule_id=rule.rule_id,
                rule_name=rule.name or rule.rule_id,
                kind="metric",
                severity=rule.severity,
                scope=rule.scope,
                subject=subject,
                summary=summary,
                window_start=window.window_start if window else None,
                value=why.value,
                threshold=why.threshold,
                evidence=evidence,
            ),
            pairs,
            now_s,
        )

    def _members(self, level: str, entity: str) -> set[str]:
        topology = self.source.topology
        if level == "service":
            return set(topology.services.get(entity, ()))
        if level == "server":
            return {entity}
        return {s.name for s in topology.servers if s.entity(level) == entity}  # type: ignore[arg-type]

    def _affected_pairs(
        self, rule: AlertRule, subject: str, window: WindowRow
    ) -> list[dict[str, Any]]:
        """The server pairs behind ``subject`` in ``window``: bad ones first, then the worst."""
        link = split_link(subject) if rule.scope == "link" else None
        level = rule.watched_level
        if link is not None:
            srcs, dsts = self._members(level, link[0]), self._members(level, link[1])
        else:
            srcs, dsts = self._members(level, subject), None
        if level == "server" and link is not None:
            rows = self.results.matrix(
                window.window, window.window_start, "server", src=link[0], dst=link[1]
            )
        elif len(srcs) == 1:
            rows = self.results.matrix(
                window.window, window.window_start, "server", src=next(iter(srcs))
            )
        else:
            key = (window.window, window.window_start)
            if key not in self._pass_pairs:
                self._pass_pairs[key] = self.results.matrix(
                    window.window, window.window_start, "server"
                )
            rows = self._pass_pairs[key]
        scored: list[tuple[int, float, dict[str, Any]]] = []
        for row in rows:
            if row.src not in srcs or (dsts is not None and row.dst not in dsts):
                continue
            why = breach(rule, row)
            item = {"src": row.src, "dst": row.dst, **_stats_dict(row)}
            if why is not None:
                item["why"] = why.describe()
            worst = row.p99_us if row.p99_us is not None else float("inf")
            scored.append((0 if why is not None else 1, -worst, item))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [item for _, _, item in scored[:MAX_EVIDENCE_PAIRS]]

    def _evaluate_incidents(self, rule: AlertRule, now_s: float) -> None:
        if self.incidents is None:
            return
        kinds = list(rule.incident_kinds) or None
        open_now: dict[str, Incident] = {}
        for incident in self.incidents.open_incidents(kinds):
            subject = incident_subject(incident)
            if rule.covers_incident(incident.kind) and rule.covers(subject):
                open_now[subject] = incident
        current = {a.subject: a for a in self.store.firing(rule.rule_id)}
        for subject, alert in current.items():
            if subject not in open_now:
                self._resolve(alert, now_s, summary=f"{alert.summary} (incident closed)")
        for subject, incident in sorted(open_now.items()):
            if subject in current:
                continue
            pairs = _incident_pairs(incident.evidence)
            evidence = {
                "incident": {
                    "id": incident.incident_id,
                    "kind": incident.kind,
                    "scope": incident.scope,
                    "entity": incident.entity,
                    "started_at": _iso(incident.started_at_s),
                },
                "level": incident.scope,
                "subject": incident.entity,
                "pairs": pairs,
                "details": dict(incident.evidence),
            }
            self._fire(
                NewAlert(
                    rule_id=rule.rule_id,
                    rule_name=rule.name or rule.rule_id,
                    kind=f"incident:{incident.kind}",
                    severity=incident.severity if incident.severity else rule.severity,
                    scope=incident.scope,
                    subject=subject,
                    summary=incident.summary
                    or f"{incident.kind} on {incident.scope} {incident.entity}",
                    incident_id=incident.incident_id,
                    evidence=evidence,
                ),
                pairs,
                now_s,
            )

    def _fire(self, new: NewAlert, pairs: Sequence[Mapping[str, Any]], now_s: float) -> None:
        task_id = self._request_trace(new, pairs)
        hold = self.config.trace_wait_s if task_id is not None else 0.0
        alert = self.store.fire(
            NewAlert(**{**_fields(new), "trace_task_id": task_id}),
            now_s=now_s,
            notifiers=list(self.notifiers),
            not_before_s=now_s + hold,
        )
        self._count("alerts_fired_total")
        log.warning("alert firing: %s", alert.summary)

    def _request_trace(self, new: NewAlert, pairs: Sequence[Mapping[str, Any]]) -> str | None:
        if self.tracer is None:
            return None
        topology = self.source.topology
        for pair in pairs:
            src, dst = str(pair.get("src", "")), str(pair.get("dst", ""))
            if topology.server(src) is None or topology.server(dst) is None:
                continue
            try:
                task_id = self.tracer.request_trace(
                    src, dst, reason=f"alert {new.rule_id} {new.subject}"[:200]
                )
            except PingmeshError as exc:
                self._count("trace_request_failures_total")
                log.warning("traceroute for alert %s failed: %s", new.subject, exc)
                return None
            if task_id is not None:
                self._count("traces_requested_total")
            return task_id
        return None

    def _resolve(self, alert: Alert, now_s: float, *, summary: str) -> None:
        resolved = self.store.resolve(
            alert.alert_id, now_s=now_s, notifiers=list(self.notifiers), summary=summary
        )
        if resolved is not None:
            self._count("alerts_resolved_total")
            log.warning("alert resolved: %s", resolved.summary)

    def _poll_traces(self, now_s: float) -> None:
        if self.tracer is None:
            return
        for alert in self.store.pending_traces():
            assert alert.trace_task_id is not None
            try:
                result = self.tracer.trace_result(alert.trace_task_id)
            except PingmeshError as exc:
                log.warning("traceroute result %s: %s", alert.trace_task_id, exc)
                result = None
            if result is not None:
                self.store.update_evidence(
                    alert.alert_id, now_s=now_s, trace=result.model_dump(mode="json")
                )
                self.store.release(alert.alert_id, now_s=now_s)
                self._count("traces_received_total")
            elif now_s - alert.started_at_s > TRACE_GIVE_UP_S:
                self.store.update_evidence(
                    alert.alert_id,
                    now_s=now_s,
                    trace={"status": "no result", "task_id": alert.trace_task_id},
                )

    # -- dispatch (async) ---------------------------------------------------------------------

    async def dispatch(self) -> int:
        """Send every due notification; returns how many were delivered."""
        now_s = self.clock.now_s()
        try:
            due = await asyncio.to_thread(
                self.store.due_notifications, now_s=now_s, limit=MAX_DISPATCH_PER_PASS
            )
        except PingmeshError:
            log.exception("alert dispatch: cannot read notifications")
            return 0
        by_notifier: dict[str, list[Notification]] = {}
        for n in due:
            by_notifier.setdefault(n.notifier, []).append(n)
        sent = 0

        async def one_notifier(name: str, queue: list[Notification]) -> None:
            nonlocal sent
            for n in queue:
                if await self._deliver(n):
                    sent += 1
                else:
                    break  # keep this notifier's messages in order: retry from here later

        async with asyncio.TaskGroup() as tasks:
            for name, queue in by_notifier.items():
                tasks.create_task(one_notifier(name, queue), name=f"notify-{name}")
        return sent

    async def _deliver(self, n: Notification) -> bool:
        notifier = self.notifiers.get(n.notifier)
        if notifier is None:
            await asyncio.to_thread(
                self.store.mark_failed_attempt,
                n,
                error=f"notifier {n.notifier!r} is no longer configured",
                next_attempt_s=None,
            )
            self._count("notifications_given_up_total")
            return False
        alert = await asyncio.to_thread(self.store.get, n.alert_id)
        if alert is None:
            return False
        message = AlertMessage(
            event=n.event,
            alert=alert,
            delivery_id=f"{n.alert_id}:{n.event}:{n.notifier}",
            dashboard_url=self.config.dashboard_url,
        )
        try:
            await notifier.send(message)
        except (NotifyError, TimeoutError) as exc:
            attempts = n.attempts + 1
            self._count("notification_failures_total")
            retry: float | None = None
            if attempts < self.config.send_attempts:
                retry = self.clock.now_s() + self.config.retry_after_s * 2 ** (attempts - 1)
            else:
                self._count("notifications_given_up_total")
            log.warning("notifier %s: %s (attempt %d)", n.notifier, exc or "timeout", attempts)
            await asyncio.to_thread(
                self.store.mark_failed_attempt,
                n,
                error=str(exc) or type(exc).__name__,
                next_attempt_s=retry,
            )
            return False
        await asyncio.to_thread(self.store.mark_sent, n, now_s=self.clock.now_s())
        self._count("notifications_sent_total")
        return True


def _fields(new: NewAlert) -> dict[str, Any]:
    return {name: getattr(new, name) for name in NewAlert.__dataclass_fields__}


def incident_subject(incident: Incident) -> str:
    """The subject of an incident alert: ``kind@scope/entity`` (one alert per incident key)."""
    return f"{incident.kind}@{incident.scope}/{incident.entity}"


def _incident_pairs(evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Server pairs named by an incident's evidence, whatever shape the detector used."""
    found: list[dict[str, Any]] = []
    for key in ("pairs", "affected_pairs", "bad_pairs"):
        value = evidence.get(key)
        if not isinstance(value, list):
            continue
        for item in value:
            if isinstance(item, Mapping) and "src" in item and "dst" in item:
                found.append(dict(item))
            elif isinstance(item, list | tuple) and len(item) >= 2:
                found.append({"src": str(item[0]), "dst": str(item[1])})
    return found[:MAX_EVIDENCE_PAIRS]


def build_message_preview(alert: Alert, event: str = "firing") -> AlertMessage:
    """The message a notifier would get for ``alert`` (for the API's preview)."""
    return AlertMessage(
        event="firing" if event == "firing" else "resolved",
        alert=alert,
        delivery_id=f"{alert.alert_id}:{event}:preview",
    )


def subjects_of(alerts: Iterable[Alert]) -> Callable[[str, str], bool]:
    """A predicate ``(level, name) -> bool``: is this node or link under a firing alert?"""
    marked: set[tuple[str, str]] = set()
    for alert in alerts:
        level = str(alert.evidence.get("level", alert.scope))
        subject = str(alert.evidence.get("subject", alert.subject))
        marked.add((level, subject))
    return lambda level, name: (level, name) in marked
