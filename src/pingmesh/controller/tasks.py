"""The server side of the traceroute task contract (:mod:`pingmesh.wire.tasks`).

- ``GET /api/v1/tasks/{server}``: the tasks waiting for that agent (leased for a while once
  handed out, so that a poll does not start the same trace twice); 404 for a server the
  topology does not name.
- ``POST /api/v1/traceroutes``: an agent's results; idempotent (a retried post stores nothing
  new); results of unknown tasks are kept (a restarted server may have lost its plan) and
  counted. 400 when a result says it comes from another agent than the batch.

:class:`TracerouteService` is also where traces are *chosen*: every request — from the
detectors (:mod:`pingmesh.analysis.detect`) or from the alert engine (the ``Tracer`` protocol:
:meth:`TracerouteService.request_trace` / :meth:`TracerouteService.trace_result`) — goes
through one :class:`~pingmesh.core.analysis.tracing.TracePlanner`, so the fleet-wide rate limit
holds whoever asks.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from pingmesh.clock import Clock
from pingmesh.config import TracerouteConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.analysis.tracing import PlannedTask, TracePlanner, TraceRequest
from pingmesh.core.analysis.voting import TracedPath, flow_key
from pingmesh.errors import BatchError, UnknownServerError
from pingmesh.store.traceroutes import TracerouteStore
from pingmesh.web.app import ERROR_RESPONSES
from pingmesh.wire.tasks import TaskList, TracerouteBatch, TracerouteResult

MAX_TASKS_PER_POLL = 10


class TracerouteAck(BaseModel):
    """The answer to a posted batch."""

    model_config = ConfigDict(frozen=True)

    accepted: int
    duplicates: int
    unknown_tasks: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TracerouteStatistics:
    """Counters of the traceroute service (they feed ``/metrics``)."""

    tasks_planned_total: int
    tasks_rate_limited_total: int
    tasks_cooled_down_total: int
    tasks_agent_busy_total: int
    tasks_over_incident_budget_total: int
    tasks_issued_total: int
    polls_total: int
    results_stored_total: int
    results_duplicate_total: int
    results_unknown_task_total: int
    batches_rejected_total: int


def traced_path(result: TracerouteResult, *, failing: bool = True) -> TracedPath:
    """A stored result as the voting sees it."""
    return TracedPath(
        flow=flow_key(result.src_addr, result.src_port, result.dst_addr, result.dst_port),
        hops=tuple(h.address for h in sorted(result.hops, key=lambda h: h.ttl)),
        failing=failing,
        reached=result.reached,
        src_addr=result.src_addr,
        dst_addr=result.dst_addr,
    )


class TracerouteService:
    """Chooses, hands out and collects traceroutes (see the module docstring). Thread-safe."""

    def __init__(
        self,
        store: TracerouteStore,
        source: TopologySource,
        config: TracerouteConfig,
        *,
        clock: Clock,
        probe_port: int = 9781,
    ) -> None:
        self.store = store
        self.probe_port = probe_port
        self.source = source
        self.config = config
        self.clock = clock
        self._planner = TracePlanner(
            per_minute=config.per_minute,
            burst=config.burst,
            per_incident=config.per_incident,
            max_pending_per_agent=config.max_pending_per_agent,
            pair_cooldown_s=config.pair_cooldown_s,
            task_ttl_s=config.task_ttl_s,
        )
        self._lock = threading.Lock()
        self._counts = {
            "tasks_issued_total": 0,
            "polls_total": 0,
            "results_stored_total": 0,
            "results_duplicate_total": 0,
            "results_unknown_task_total": 0,
            "batches_rejected_total": 0,
        }

    def statistics(self) -> TracerouteStatistics:
        """A snapshot of the counters."""
        with self._lock:
            planner = self._planner.statistics()
            return TracerouteStatistics(
                tasks_planned_total=planner.planned_total,
                tasks_rate_limited_total=planner.rate_limited_total,
                tasks_cooled_down_total=planner.cooled_down_total,
                tasks_agent_busy_total=planner.agent_busy_total,
                tasks_over_incident_budget_total=planner.over_incident_budget_total,
                **self._counts,
            )

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    # -- choosing ------------------------------------------------------------------------------

    def request(self, requests: Iterable[TraceRequest], *, now_s: float) -> list[PlannedTask]:
        """Plan and store tasks for ``requests`` (rate-limited); returns the tasks created."""
        if not self.config.enabled:
            return []
        wanted = list(requests)
        if not wanted:
            return []
        pending = self.store.pending_counts(now_s=now_s)
        with self._lock:
            planned = self._planner.plan(wanted, now_s=now_s, pending=pending)
        self.store.add_tasks(planned, max_hops=self.config.max_hops)
        return planned

    def request_trace(self, src_server: str, dst_server: str, *, reason: str) -> str | None:
        """The alert engine's ``Tracer``: trace ``src_server → dst_server`` (any source port)."""
        topology = self.source.topology
        src, dst = topology.server(src_server), topology.server(dst_server)
        if src is None or dst is None:
            return None
        planned = self.request(
            [
                TraceRequest(
                    agent=src.name,
                    dst=dst.name,
                    dst_addr=dst.address,
                    dst_port=self.probe_port,
                    src_port=None,
                    reason=reason[:200] or "alert",
                )
            ],
            now_s=self.clock.now_s(),
        )
        return planned[0].task_id if planned else None

    def trace_result(self, task_id: str) -> TracerouteResult | None:
        """The alert engine's ``Tracer``: the result of a task, None until reported."""
        return self.store.result(task_id)

    def paths_for(self, reasons: Collection[str], *, since_s: float) -> dict[str, list[TracedPath]]:
        """The traced paths of the tasks created for ``reasons`` since ``since_s``."""
        out: dict[str, list[TracedPath]] = {}
        for reason, result in self.store.results_for(reasons, since_s=since_s):
            out.setdefault(reason, []).append(traced_path(result))
        return out

    # -- agents --------------------------------------------------------------------------------

    def tasks_for(self, server: str) -> TaskList:
        """The tasks to hand to ``server`` now; UnknownServerError if not in the topology."""
        topology = self.source.topology
        known = topology.server(server)
        if known is None:
            raise UnknownServerError(server)
        rows = self.store.issue(known.name, now_s=self.clock.now_s(), limit=MAX_TASKS_PER_POLL)
        self._count("polls_total")
        self._count("tasks_issued_total", len(rows))
        return TaskList(server=known.name, tasks=tuple(r.to_wire() for r in rows))

    def accept(self, batch: TracerouteBatch) -> TracerouteAck:
        """Store an agent's results; BatchError if a result names another agent."""
        if self.source.topology.server(batch.agent) is None:
            self._count("batches_rejected_total")
            raise UnknownServerError(batch.agent)
        for i, result in enumerate(batch.results):
            if result.agent != batch.agent:
                self._count("batches_rejected_total")
                raise BatchError(
                    f"body field 'results.{i}.agent': {result.agent!r} is not the batch's "
                    f"agent {batch.agent!r}"
                )
        stored = self.store.store_results(batch.results, now_s=self.clock.now_s())
        self._count("results_stored_total", stored.stored)
        self._count("results_duplicate_total", stored.duplicates)
        self._count("results_unknown_task_total", stored.unknown_tasks)
        return TracerouteAck(
            accepted=stored.stored, duplicates=stored.duplicates, unknown_tasks=stored.unknown_tasks
        )


def tasks_router(service: TracerouteService) -> APIRouter:
    """``GET /api/v1/tasks/{server}`` and ``POST /api/v1/traceroutes``."""
    api = APIRouter(prefix="/api/v1", tags=["tasks"])

    @api.get(
        "/tasks/{server}",
        response_model=TaskList,
        responses={404: ERROR_RESPONSES[400] | {"description": "server not in the topology"}},
        summary="The traceroute tasks waiting for one agent",
    )
    def get_tasks(server: str) -> TaskList:
        """Tasks the analysis chose for this agent: trace towards ``dst_addr:dst_port`` keeping
        ``src_port`` (the failing probe's), so the trace takes the probe's ECMP path.

        A task handed out is not handed out again for a while unless its result is missing.
        """
        return service.tasks_for(server)

    @api.post(
        "/traceroutes",
        response_model=TracerouteAck,
        responses=ERROR_RESPONSES,
        summary="Post traceroute results",
    )
    def post_traceroutes(batch: TracerouteBatch) -> TracerouteAck:
        """Store an agent's traceroute results (idempotent per task and agent)."""
        return service.accept(batch)

    return api
