"""Detection on the fast path: facts → findings → incidents, and the traces to ask for.

Each fast window the runner hands :meth:`IncidentDetector.run` the window's and the horizon's
facts (:class:`~.fastpath.FastFacts`). The pure pipeline (:mod:`pingmesh.core.analysis.pipeline`)
finds the problems; the :class:`~pingmesh.core.analysis.lifecycle.Debouncer` decides which stay
open; :meth:`IncidentStore.reconcile <pingmesh.store.incidents.IncidentStore.reconcile>` opens,
updates and closes incidents on changes of state only; the traceroute service plans traces of
the failing 5-tuples, whose paths the next rounds vote on.

The detector also keeps an :class:`~pingmesh.core.analysis.lifecycle.ExplanationMemory` of
what earlier rounds explained (black-holed pairs, lossy pairs, hosts down), so that a fault's
edges in the windows after it are not blamed on something else.

The detector owns the incident kinds of :data:`~pingmesh.core.analysis.pipeline.KINDS` and no
others (the alert engine and other writers keep theirs). After a restart it starts from the
incidents that are open in the store, so nothing reopens or flaps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from pingmesh.analysis.fastpath import FastFacts
from pingmesh.config import IncidentConfig
from pingmesh.controller.tasks import TracerouteService
from pingmesh.core.analysis.lifecycle import Debouncer, ExplanationMemory
from pingmesh.core.analysis.model import DetectorConfig, Finding, Thresholds
from pingmesh.core.analysis.pipeline import KINDS, TRACED_KINDS, evaluate, reason_of
from pingmesh.core.analysis.sla_alerts import KINDS as SLA_KINDS
from pingmesh.core.topology import Topology
from pingmesh.store.incidents import Detection, IncidentStore

log = logging.getLogger(__name__)


def detector_config(config: IncidentConfig) -> DetectorConfig:
    """The pure detector parameters from the server config."""
    return DetectorConfig(
        thresholds=Thresholds(
            drop_rate=config.thresholds.drop_rate, p99_us=config.thresholds.p99_us
        ),
        per_scope={
            scope: Thresholds(drop_rate=t.drop_rate, p99_us=t.p99_us)
            for scope, t in config.per_scope.items()
        },
        min_latency_probes=config.min_latency_probes,
        min_drop_events=config.min_drop_events,
        host_down_after_s=config.host_down_after_s,
        host_unreachable_share=config.host_unreachable_share,
        host_min_peers=config.host_min_peers,
        host_noise_share=config.host_noise_share,
        black_hole_min_probes=config.black_hole_min_probes,
        tor_score_threshold=config.tor_score_threshold,
        max_pair_incidents=config.max_pair_incidents,
        baseline_drop_rate=config.baseline_drop_rate,
        silent_drop_factor=config.silent_drop_factor,
        significance=config.significance,
        localization_significance=config.localization_significance,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionStatistics:
    """Counters of the detector."""

    evaluations_total: int
    evaluation_failures_total: int
    findings: int
    incidents_open: int
    incidents_opened_total: int
    incidents_closed_total: int
    traces_planned_total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionOutcome:
    """What one run changed."""

    findings: tuple[Finding, ...]
    opened: tuple[str, ...]
    closed: tuple[str, ...]
    traces_planned: int


class IncidentDetector:
    """Runs the pipeline on the fast path's facts and keeps the incidents (module docstring)."""

    def __init__(
        self,
        incidents: IncidentStore,
        config: IncidentConfig,
        *,
        traces: TracerouteService | None = None,
        vote_window_s: float = 900.0,
        vote_min_flows: int = 3,
        traces_per_finding: int = 5,
    ) -> None:
        self._incidents = incidents
        self._config = detector_config(config)
        self._traces = traces
        self._vote_window_s = vote_window_s
        self._vote_min_flows = vote_min_flows
        self._traces_per_finding = traces_per_finding
        self._debouncer = Debouncer(
            open_after=config.open_after_windows,
            close_after=config.close_after_windows,
            open_after_kinds=dict.fromkeys(SLA_KINDS, config.sla_open_after_windows),
        )
        self._memory = ExplanationMemory()
        self._lock = threading.Lock()
        self._seeded = False
        self._evaluations = 0
        self._failures = 0
        self._findings = 0
        self._open = 0
        self._opened = 0
        self._closed = 0
        self._planned = 0
        self._reasons: dict[str, float] = {}  # reason of traces asked for -> when

    def statistics(self) -> DetectionStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return DetectionStatistics(
                evaluations_total=self._evaluations,
                evaluation_failures_total=self._failures,
                findings=self._findings,
                incidents_open=self._open,
                incidents_opened_total=self._opened,
                incidents_closed_total=self._closed,
                traces_planned_total=self._planned,
            )

    def count_failure(self) -> None:
        """Count a run that failed (the runner logs it)."""
        with self._lock:
            self._failures += 1

    def run(
        self,
        topology: Topology,
        facts: FastFacts,
        *,
        last_seen_s: Mapping[str, float],
        now_s: float,
    ) -> DetectionOutcome:
        """One round (blocking: the incident store and the trace store are databases)."""
        with self._lock:
            if not self._seeded:
                self._debouncer.seed(self._store_open())
                self._seeded = True
        paths = {}
        if self._traces is not None:
            reasons = {
                reason_of(Finding(kind=k, scope=s, entity=e))
                for k, s, e in self._debouncer.open_keys()
                if k in TRACED_KINDS and s != "device"
            }
            # Findings of this round are not known yet: ask for every open one's paths, and
            # for the ones that will be found, the paths of earlier rounds (same reason).
            reasons |= self._recent_reasons(now_s)
            paths = self._traces.paths_for(reasons, since_s=now_s - self._vote_window_s)
        with self._lock:
            recent = self._memory.snapshot()
        evaluation = evaluate(
            topology,
            window=facts.window,
            horizon=facts.horizon,
            extra_horizons=facts.extra,
            ports=facts.ports,
            last_seen_s=last_seen_s,
            now_s=now_s,
            config=self._config,
            paths=paths,
            vote_min_flows=self._vote_min_flows,
            traces_per_finding=self._traces_per_finding,
            recent=recent,
        )
        window = facts.window
        longest_s = max(
            (f.end_s - f.start_s for f in (window, facts.horizon, *facts.extra)), default=0.0
        )
        with self._lock:
            current = self._debouncer.update(evaluation.findings)
            self._memory.remember(
                end_s=window.end_s,
                black_pairs=evaluation.black_pairs,
                black_tors=evaluation.black_tors,
                dropping_pairs=evaluation.dropping_pairs,
                hosts=evaluation.excluded,
                keep_s=longest_s + 2.0 * (window.end_s - window.start_s),
            )
        result = self._incidents.reconcile(
            (
                Detection(
                    kind=f.kind,
                    scope=f.scope,
                    entity=f.entity,
                    severity=f.severity,
                    summary=f.summary,
                    evidence=f.evidence,
                )
                for f in current
            ),
            kinds=KINDS,
            now_s=now_s,
        )
        planned = 0
        if self._traces is not None and evaluation.requests:
            planned = len(self._traces.request(evaluation.requests, now_s=now_s))
            with self._lock:
                self._reasons.update({r.reason: now_s for r in evaluation.requests})
        for incident in result.opened:
            log.warning(
                "incident opened: %s %s %s: %s",
                incident.kind,
                incident.scope,
                incident.entity,
                incident.summary,
            )
        for incident in result.closed:
            log.warning("incident closed: %s %s %s", incident.kind, incident.scope, incident.entity)
        with self._lock:
            self._evaluations += 1
            self._findings = len(evaluation.findings)
            self._open = len(current)
            self._opened += len(result.opened)
            self._closed += len(result.closed)
            self._planned += planned
        return DetectionOutcome(
            findings=evaluation.findings,
            opened=tuple(i.incident_id for i in result.opened),
            closed=tuple(i.incident_id for i in result.closed),
            traces_planned=planned,
        )

    def _recent_reasons(self, now_s: float) -> set[str]:
        with self._lock:
            horizon = now_s - self._vote_window_s
            for reason in [r for r, at in self._reasons.items() if at < horizon]:
                del self._reasons[reason]
            return set(self._reasons)

    def _store_open(self) -> list[Finding]:
        return [
            Finding(
                kind=i.kind,
                scope=i.scope,
                entity=i.entity,
                severity=i.severity,
                summary=i.summary,
                evidence=dict(i.evidence),
            )
            for i in self._incidents.open_incidents(KINDS)
        ]
