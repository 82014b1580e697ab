"""Which failing 5-tuples get traced: chosen centrally, rate-limited, worst first.

Theory of operation
-------------------
A traceroute costs the switches: every hop answers from its control-plane CPU, which switches
rate-limit (007, R-Pingmesh; reference §3.3, §3.5). So the server, not the agents, decides
what is traced (reference §6.1 item 13e), and it keeps the fleet-wide rate bounded:

- a **token bucket** (``per_minute``, ``burst``) caps new tasks for the whole fleet;
- at most ``per_incident`` tasks per finding per planning round, worst pairs first, so that
  one big incident cannot starve the others;
- a pair traced recently (``pair_cooldown_s``) is not traced again: its path is known;
- an agent with ``max_pending_per_agent`` unfinished tasks gets no more.

Each request keeps the failing probe's source port, so the trace follows the probe's ECMP path
(PM §5.2; R-Pingmesh's 5-tuple-preserving path tracing). Refusals are counted by reason. The
planner holds only its bucket and the cooldown table; time is an argument.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRequest:
    """A 5-tuple worth tracing, from ``agent`` (its source) to ``dst``."""

    agent: str
    dst: str
    dst_addr: str
    dst_port: int
    src_port: int | None
    reason: str
    priority: float = 0.0

    def __post_init__(self) -> None:
        if not self.agent or not self.dst:
            raise ValueError("agent and dst must not be empty")
        if not 0 <= self.dst_port <= 65535:
            raise ValueError(f"dst_port: {self.dst_port} out of range")
        if self.src_port is not None and not 1 <= self.src_port <= 65535:
            raise ValueError(f"src_port: {self.src_port} out of range")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedTask:
    """A task to hand to ``request.agent``."""

    task_id: str
    request: TraceRequest
    created_at_s: float
    expires_at_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannerStatistics:
    """Counters of the planner."""

    planned_total: int
    rate_limited_total: int
    cooled_down_total: int
    agent_busy_total: int
    over_incident_budget_total: int


class TracePlanner:
    """Chooses traceroute tasks (see the module docstring)."""

    def __init__(
        self,
        *,
        per_minute: float = 30.0,
        burst: int = 10,
        per_incident: int = 5,
        max_pending_per_agent: int = 2,
        pair_cooldown_s: float = 600.0,
        task_ttl_s: float = 120.0,
    ) -> None:
        if per_minute <= 0 or burst < 1 or per_incident < 1 or max_pending_per_agent < 1:
            raise ValueError("per_minute, burst, per_incident and max_pending must be positive")
        self._rate_per_s = per_minute / 60.0
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last_s: float | None = None
        self._per_incident = per_incident
        self._max_pending = max_pending_per_agent
        self._cooldown_s = pair_cooldown_s
        self._ttl_s = task_ttl_s
        self._traced: dict[tuple[str, str], float] = {}
        self._sequence = 0
        self._planned = 0
        self._rate_limited = 0
        self._cooled = 0
        self._busy = 0
        self._over_budget = 0

    def statistics(self) -> PlannerStatistics:
        """A snapshot of the counters."""
        return PlannerStatistics(
            planned_total=self._planned,
            rate_limited_total=self._rate_limited,
            cooled_down_total=self._cooled,
            agent_busy_total=self._busy,
            over_incident_budget_total=self._over_budget,
        )

    def _refill(self, now_s: float) -> None:
        if self._last_s is not None and now_s > self._last_s:
            self._tokens = min(
                self._burst, self._tokens + (now_s - self._last_s) * self._rate_per_s
            )
        if self._last_s is None or now_s > self._last_s:
            self._last_s = now_s
        horizon = now_s - self._cooldown_s
        for key in [k for k, at in self._traced.items() if at <= horizon]:
            del self._traced[key]

    def task_id(self, request: TraceRequest, now_s: float) -> str:
        """A unique, readable task id."""
        self._sequence += 1
        digest = hashlib.sha256(
            f"{request.agent}|{request.dst}|{request.src_port}|{now_s}|{self._sequence}".encode()
        ).hexdigest()[:12]
        return f"tr-{int(now_s)}-{digest}"

    def plan(
        self,
        requests: Iterable[TraceRequest],
        *,
        now_s: float,
        pending: Mapping[str, int] | None = None,
    ) -> list[PlannedTask]:
        """The tasks to create now, from ``requests`` (highest priority first within each
        reason); ``pending`` is each agent's count of unfinished tasks."""
        self._refill(now_s)
        busy = dict(pending or {})
        by_reason: dict[str, list[TraceRequest]] = {}
        for request in requests:
            by_reason.setdefault(request.reason, []).append(request)
        # Round-robin over the reasons, worst first within each, so every incident gets a turn.
        queues = [
            sorted(rs, key=lambda r: (-r.priority, r.agent, r.dst, r.src_port or 0))
            for _, rs in sorted(by_reason.items())
        ]
        taken = [0] * len(queues)
        planned: list[PlannedTask] = []
        while any(queues):
            for i, queue in enumerate(queues):
                if not queue:
                    continue
                request = queue.pop(0)
                key = (request.agent, request.dst)
                if taken[i] >= self._per_incident:
                    self._over_budget += 1
                    continue
                if key in self._traced:
                    self._cooled += 1
                    continue
                if busy.get(request.agent, 0) >= self._max_pending:
                    self._busy += 1
                    continue
                if self._tokens < 1.0:
                    self._rate_limited += 1
                    continue
                self._tokens -= 1.0
                taken[i] += 1
                busy[request.agent] = busy.get(request.agent, 0) + 1
                self._traced[key] = now_s
                self._planned += 1
                planned.append(
                    PlannedTask(
                        task_id=self.task_id(request, now_s),
                        request=request,
                        created_at_s=now_s,
                        expires_at_s=now_s + self._ttl_s,
                    )
                )
        return planned
