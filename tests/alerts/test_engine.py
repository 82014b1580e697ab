"""The alert engine over a real results database: N-of-M firing, recovery, restarts, mutes,
incidents, traceroute evidence, retries and cancellation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from pingmesh.alerts.engine import AlertEngine, RuleBook, incident_subject
from pingmesh.alerts.rules import AlertRule
from pingmesh.clock import FakeClock
from pingmesh.config import AlertsConfig, TracerouteConfig
from pingmesh.controller.tasks import TracerouteService
from pingmesh.controller.topology_source import TopologySource
from pingmesh.store.alerts import AlertStore
from pingmesh.store.incidents import Detection, IncidentStore
from pingmesh.store.results import ResultsDB
from pingmesh.store.traceroutes import TracerouteStore
from pingmesh.wire.tasks import Hop, TracerouteBatch, TracerouteResult
from tests.alerts.fakes import FakeTracer, RecordingNotifier
from tests.web.fleet import matrix_row, sla_row, window

LINK_RULE = AlertRule(
    rule_id="tor-p99",
    name="ToR P99",
    scope="link",
    level="tor",
    window="30s",
    latency_us=5000.0,
    n=2,
    m=3,
)


def _write(db: ResultsDB, start: int, *, t1_t2_p99: float, h11_h21_p99: float = 900.0) -> None:
    """One 30 s window: the t1→t2 ToR cell and the server pairs behind it."""
    db.write_window(
        window("30s", start, 30, computed_at_s=start + 40),
        [sla_row("30s", start, "tor", "t1", 40, p99_us=t1_t2_p99)],
        [
            matrix_row("30s", start, "tor", "t1", "t2", 40, p99_us=t1_t2_p99),
            matrix_row("30s", start, "tor", "t2", "t1", 40, p99_us=800.0),
            matrix_row("30s", start, "server", "h11", "h21", 20, p99_us=h11_h21_p99),
            matrix_row("30s", start, "server", "h12", "h21", 20, p99_us=t1_t2_p99),
        ],
    )


def _engine(
    alerts: AlertStore,
    results: ResultsDB,
    source: TopologySource,
    clock: FakeClock,
    *,
    rules: list[AlertRule],
    notifiers: list[RecordingNotifier],
    incidents: IncidentStore | None = None,
    tracer: FakeTracer | None = None,
    config: AlertsConfig | None = None,
) -> AlertEngine:
    return AlertEngine(
        alerts,
        results,
        RuleBook(rules, alerts),
        source=source,
        clock=clock,
        config=config or AlertsConfig(trace_wait_s=20.0, retry_after_s=10.0, send_attempts=3),
        notifiers=notifiers,
        incidents=incidents,
        tracer=tracer,
    )


async def test_n_of_m_fires_once_and_sends_a_recovery_notice(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    mail, hook = RecordingNotifier(name="mail"), RecordingNotifier(name="hook")
    engine = _engine(alerts, results, source, clock, rules=[LINK_RULE], notifiers=[mail, hook])
    start = int(clock.now_s()) - 100

    _write(results, start, t1_t2_p99=9000.0)  # bad 1 of 1: n=2 not reached
    await engine.run_once()
    assert alerts.firing() == []

    _write(results, start + 10, t1_t2_p99=9000.0)  # bad 2 of 2: fires
    clock.advance(10)
    await engine.run_once()
    (alert,) = alerts.firing()
    assert alert.subject == "t1->t2"
    assert alert.value == 9000.0
    assert alert.threshold == 5000.0
    assert "2 of the last 3 30s windows" in alert.summary
    # Evidence: the server pairs behind the ToR link, the bad one first.
    pairs = alert.evidence["pairs"]
    assert [(p["src"], p["dst"]) for p in pairs] == [("h12", "h21"), ("h11", "h21")]
    assert "P99 9.00 ms > 5.00 ms" in pairs[0]["why"]
    assert "why" not in pairs[1]
    assert mail.events() == [("firing", "t1->t2")]
    assert hook.events() == [("firing", "t1->t2")]

    # Still bad, then 2 of 3 bad after a good window: no new message, still one alert.
    for offset, p99 in ((20, 9000.0), (30, 700.0)):
        _write(results, start + offset, t1_t2_p99=p99)
        clock.advance(10)
        await engine.run_once()
    assert [a.alert_id for a in alerts.firing()] == [alert.alert_id]
    assert mail.events() == [("firing", "t1->t2")]

    _write(results, start + 40, t1_t2_p99=700.0)  # 1 of the last 3 bad: resolved
    clock.advance(10)
    await engine.run_once()
    assert alerts.firing() == []
    resolved = alerts.get(alert.alert_id)
    assert resolved is not None
    assert resolved.state == "resolved"
    assert resolved.resolved_at_s == clock.now_s()
    assert mail.events() == [("firing", "t1->t2"), ("resolved", "t1->t2")]
    assert hook.events() == [("firing", "t1->t2"), ("resolved", "t1->t2")]
    await engine.run_once()
    assert len(mail.messages) == 2  # nothing is sent twice

    stats = engine.statistics()
    assert (stats.alerts_fired_total, stats.alerts_resolved_total) == (1, 1)
    assert stats.notifications_sent_total == 4
    assert stats.windows_evaluated_total == 5


async def test_a_restart_neither_repeats_a_firing_alert_nor_forgets_it(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    start = int(clock.now_s()) - 100
    first = RecordingNotifier(name="mail")
    engine = _engine(alerts, results, source, clock, rules=[LINK_RULE], notifiers=[first])
    _write(results, start, t1_t2_p99=9000.0)
    _write(results, start + 10, t1_t2_p99=9000.0)
    await engine.run_once()
    assert first.events() == [("firing", "t1->t2")]

    # A new process: its trackers are primed from the stored windows; still bad, no message.
    second = RecordingNotifier(name="mail")
    again = _engine(alerts, results, source, clock, rules=[LINK_RULE], notifiers=[second])
    await again.run_once()
    assert second.messages == []
    assert len(alerts.firing()) == 1

    # The problem ended while nobody was running: the next process sends the recovery.
    _write(results, start + 20, t1_t2_p99=700.0)
    _write(results, start + 30, t1_t2_p99=700.0)
    third = RecordingNotifier(name="mail")
    last = _engine(alerts, results, source, clock, rules=[LINK_RULE], notifiers=[third])
    await last.run_once()
    assert third.events() == [("resolved", "t1->t2")]
    assert alerts.firing() == []


async def test_a_mute_suppresses_notices_and_an_ack_is_recorded(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    mail = RecordingNotifier(name="mail")
    engine = _engine(alerts, results, source, clock, rules=[LINK_RULE], notifiers=[mail])
    alerts.add_mute(
        rule_id="tor-p99",
        subject="t1->*",
        until_s=clock.now_s() + 3600,
        by="oncall",
        reason="maintenance",
        now_s=clock.now_s(),
    )
    start = int(clock.now_s()) - 100
    _write(results, start, t1_t2_p99=9000.0)
    _write(results, start + 10, t1_t2_p99=9000.0)
    await engine.run_once()
    (alert,) = alerts.firing()  # the alert exists and shows on the dashboard …
    assert mail.messages == []  # … but nobody is told
    assert [n.state for n in alerts.notifications(alert.alert_id)] == ["suppressed"]

    acked = alerts.acknowledge(alert.alert_id, by="oncall", note="looking", now_s=clock.now_s())
    assert acked is not None
    assert (acked.acked_by, acked.ack_note, acked.state) == ("oncall", "looking", "firing")

    _write(results, start + 20, t1_t2_p99=700.0)
    _write(results, start + 30, t1_t2_p99=700.0)
    await engine.run_once()
    assert alerts.firing() == []
    assert mail.messages == []  # no recovery notice for a firing notice never sent


async def test_a_mute_added_while_a_notice_waits_suppresses_it(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    mail = RecordingNotifier(name="mail")
    tracer = FakeTracer()  # a trace is requested, so the firing notice is held
    engine = _engine(
        alerts, results, source, clock, rules=[LINK_RULE], notifiers=[mail], tracer=tracer
    )
    start = int(clock.now_s()) - 100
    _write(results, start, t1_t2_p99=9000.0)
    _write(results, start + 10, t1_t2_p99=9000.0)
    await engine.run_once()
    (alert,) = alerts.firing()
    alerts.add_mute(
        rule_id="*", subject="*", until_s=clock.now_s() + 60, by="x", reason="", now_s=0.0
    )
    clock.advance(30)
    await engine.run_once()
    assert mail.messages == []
    assert [n.state for n in alerts.notifications(alert.alert_id)] == ["suppressed"]


async def test_the_firing_notice_waits_for_the_traceroute(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    mail = RecordingNotifier(name="mail")
    tracer = FakeTracer()
    engine = _engine(
        alerts, results, source, clock, rules=[LINK_RULE], notifiers=[mail], tracer=tracer
    )
    start = int(clock.now_s()) - 100
    _write(results, start, t1_t2_p99=9000.0)
    _write(results, start + 10, t1_t2_p99=9000.0)
    await engine.run_once()
    # The worst server pair behind the link is traced.
    assert tracer.requests == [("h12", "h21", "alert tor-p99 t1->t2")]
    (alert,) = alerts.firing()
    assert alert.trace_task_id == "trace-1"
    assert mail.messages == []  # held for the trace

    clock.advance(5)
    await engine.run_once()
    assert mail.messages == []

    tracer.finish("trace-1", src="h12", dst="h21")
    clock.advance(1)
    await engine.run_once()
    (message,) = mail.messages
    assert message.alert.trace is not None
    assert [h["ttl"] for h in message.alert.trace["hops"]] == [1, 2, 3]
    text = message.text()
    assert "198.18.1.254" in text
    assert "???" in text  # the silent hop, as MTR prints it
    assert engine.statistics().traces_received_total == 1


async def test_without_a_trace_result_the_notice_goes_after_trace_wait(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    mail = RecordingNotifier(name="mail")
    engine = _engine(
        alerts, results, source, clock, rules=[LINK_RULE], notifiers=[mail], tracer=FakeTracer()
    )
    start = int(clock.now_s()) - 100
    _write(results, start, t1_t2_p99=9000.0)
    _write(results, start + 10, t1_t2_p99=9000.0)
    await engine.run_once()
    clock.advance(21)
    await engine.run_once()
    (message,) = mail.messages
    assert message.alert.trace is None
    assert "requested (task trace-1), no result yet" in message.text()


async def test_incident_alerts_follow_the_incidents(
    alerts: AlertStore,
    results: ResultsDB,
    incidents: IncidentStore,
    source: TopologySource,
    clock: FakeClock,
) -> None:
    mail = RecordingNotifier(name="mail")
    rule = AlertRule(rule_id="holes", scope="incident", incident_kinds=("black_hole",))
    tracer = FakeTracer()
    engine = _engine(
        alerts,
        results,
        source,
        clock,
        rules=[rule],
        notifiers=[mail],
        incidents=incidents,
        tracer=tracer,
        config=AlertsConfig(trace_wait_s=0.0),
    )
    kinds = {"black_hole", "silent_drop"}
    hole = Detection(
        kind="black_hole",
        scope="tor",
        entity="t2",
        summary="ToR t2 drops every probe of 3 pairs",
        evidence={"pairs": [["h11", "h21"], {"src": "h12", "dst": "h21"}]},
    )
    drop = Detection(kind="silent_drop", scope="tor", entity="t3")
    (opened, _) = incidents.reconcile([hole, drop], kinds=kinds, now_s=clock.now_s()).opened
    await engine.run_once()
    (alert,) = alerts.firing()  # silent_drop is not this rule's kind
    assert alert.subject == incident_subject(opened) == "black_hole@tor/t2"
    assert alert.incident_id == opened.incident_id
    assert alert.kind == "incident:black_hole"
    assert alert.evidence["pairs"][0] == {"src": "h11", "dst": "h21"}
    assert tracer.requests[0][:2] == ("h11", "h21")
    assert mail.events() == [("firing", "black_hole@tor/t2")]

    clock.advance(30)
    incidents.reconcile([hole, drop], kinds=kinds, now_s=clock.now_s())  # still open: quiet
    await engine.run_once()
    assert len(mail.messages) == 1

    clock.advance(30)
    incidents.reconcile([drop], kinds=kinds, now_s=clock.now_s())  # the hole is gone
    await engine.run_once()
    assert mail.events() == [("firing", "black_hole@tor/t2"), ("resolved", "black_hole@tor/t2")]
    assert alerts.firing() == []


async def test_a_failing_notifier_is_retried_with_backoff_then_given_up(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    flaky, dead = RecordingNotifier(name="flaky", fail=1), RecordingNotifier(name="dead", fail=99)
    engine = _engine(alerts, results, source, clock, rules=[LINK_RULE], notifiers=[flaky, dead])
    start = int(clock.now_s()) - 100
    _write(results, start, t1_t2_p99=9000.0)
    _write(results, start + 10, t1_t2_p99=9000.0)
    await engine.run_once()
    assert flaky.messages == []
    (alert,) = alerts.firing()
    await engine.run_once()  # not due yet: the retry waits retry_after_s
    assert flaky.attempts == 1
    clock.advance(10)
    await engine.run_once()
    assert flaky.events() == [("firing", "t1->t2")]
    clock.advance(20)  # the third attempt of "dead" is due after 10 + 20 s
    await engine.run_once()
    states = {n.notifier: (n.state, n.attempts) for n in alerts.notifications(alert.alert_id)}
    assert states == {"flaky": ("sent", 2), "dead": ("failed", 3)}
    assert "refused on purpose" in (alerts.notifications(alert.alert_id)[0].last_error or "dead")
    stats = engine.statistics()
    assert stats.notifications_given_up_total == 1
    assert stats.notification_failures_total == 4


async def test_rules_from_the_api_are_evaluated_and_their_removal_resolves(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    mail = RecordingNotifier(name="mail")
    book = RuleBook([], alerts)
    engine = AlertEngine(
        alerts, results, book, source=source, clock=clock, config=AlertsConfig(), notifiers=[mail]
    )
    book.put(
        AlertRule(rule_id="t1-out", scope="tor", entity="t1", window="30s", latency_us=5000.0),
        now_s=clock.now_s(),
    )
    _write(results, int(clock.now_s()) - 50, t1_t2_p99=9000.0)
    await engine.run_once()
    (alert,) = alerts.firing()
    assert (alert.scope, alert.subject) == ("tor", "t1")
    assert [r.origin for r in book.all()] == ["api"]
    assert book.delete("t1-out")
    await engine.run_once()
    assert alerts.firing() == []
    assert mail.events() == [("firing", "t1"), ("resolved", "t1")]
    with pytest.raises(ValueError, match="defined in the config"):
        RuleBook([LINK_RULE], alerts).put(LINK_RULE, now_s=0.0)


async def test_cancelling_the_engine_leaves_a_consistent_store(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    gate = asyncio.Event()

    class SlowNotifier(RecordingNotifier):
        async def send(self, message: object) -> None:
            gate.set()
            await asyncio.sleep(3600)

    slow = SlowNotifier(name="slow")
    engine = _engine(alerts, results, source, clock, rules=[LINK_RULE], notifiers=[slow])
    start = int(clock.now_s()) - 100
    _write(results, start, t1_t2_p99=9000.0)
    _write(results, start + 10, t1_t2_p99=9000.0)
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(gate.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (alert,) = alerts.firing()
    # The interrupted send stays pending (not sent, not failed): the next process sends it.
    (note,) = alerts.notifications(alert.alert_id)
    assert (note.state, note.attempts) == ("pending", 0)
    fresh = RecordingNotifier(name="slow")
    await _engine(alerts, results, source, clock, rules=[LINK_RULE], notifiers=[fresh]).run_once()
    assert fresh.events() == [("firing", "t1->t2")]


async def test_the_controllers_traceroute_service_is_a_tracer(
    alerts: AlertStore, results: ResultsDB, source: TopologySource, clock: FakeClock
) -> None:
    """The real task queue (issue 4) behind the Tracer protocol: the alert's trace is handed
    to the source agent on its next poll, and the agent's result lands in the evidence."""
    service = TracerouteService(
        TracerouteStore(results.database), source, TracerouteConfig(), clock=clock
    )
    mail = RecordingNotifier(name="mail")
    engine = _engine(
        alerts, results, source, clock, rules=[LINK_RULE], notifiers=[mail], tracer=service
    )
    start = int(clock.now_s()) - 100
    _write(results, start, t1_t2_p99=9000.0)
    _write(results, start + 10, t1_t2_p99=9000.0)
    await engine.run_once()
    (alert,) = alerts.firing()
    (task,) = service.tasks_for("h12").tasks
    assert task.task_id == alert.trace_task_id
    assert (task.dst, task.dst_addr) == ("h21", source.topology.server("h21").address)  # type: ignore[union-attr]
    service.accept(
        TracerouteBatch(
            agent="h12",
            results=(
                TracerouteResult(
                    task_id=task.task_id,
                    agent="h12",
                    time=datetime.fromtimestamp(clock.now_s(), tz=UTC),
                    src_addr="198.18.2.1",
                    src_port=40123,
                    dst="h21",
                    dst_addr=task.dst_addr,
                    dst_port=task.dst_port,
                    hops=(Hop(ttl=1, address="198.18.2.254", rtt_us=50.0),),
                    reached=False,
                ),
            ),
        )
    )
    await engine.run_once()
    (message,) = mail.messages
    assert message.alert.trace is not None
    assert message.alert.trace["hops"][0]["address"] == "198.18.2.254"
