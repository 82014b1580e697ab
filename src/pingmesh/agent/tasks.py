"""Tasks from the server: 5-tuple-preserving TCP traceroutes on request (wire/tasks.py).

The analysis asks for a traceroute of a failing probe's 5-tuple (centrally rate-limited);
this runner is the agent's side of that contract:

- every ``poll_s`` (± 20 %), ``GET {controller}/api/v1/tasks/{name}``; a 404 (no such
  endpoint, or no tasks for us) or a connection failure just means "try later" (counted);
- each task not seen before runs once (ids are remembered, bounded), one trace at a time, and
  at most ``max_per_minute`` traces a minute *locally* too (a token bucket): the agent must
  stay safe even if the server misbehaves; a task over the rate is left for a later poll
  (the server keeps offering it until it gets a result), counted;
- results are posted as a :class:`~pingmesh.wire.tasks.TracerouteBatch` to
  ``POST {controller}/api/v1/traceroutes``; results that cannot be posted wait for the next
  cycle, at most ``max_pending_results`` of them (oldest dropped, counted).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from pydantic import ValidationError

from pingmesh.agent.http_client import HttpClient
from pingmesh.agent.probers.traceroute import TcpTraceroute
from pingmesh.clock import Clock
from pingmesh.core.schedule import TokenBucket
from pingmesh.errors import ControllerError
from pingmesh.wire.tasks import Hop, TaskList, TracerouteBatch, TracerouteResult, TracerouteTask

logger = logging.getLogger(__name__)

POLL_JITTER = 0.2
MAX_TASKLIST_BYTES = 1024 * 1024
_REMEMBERED_TASKS = 4096
_MAX_RESULTS_PER_POST = 100  # TracerouteBatch's limit


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRunnerStatistics:
    """A snapshot of the task runner's counters."""

    polls_ok: int
    polls_not_found: int
    polls_failed: int
    traces_run: int
    traces_rate_limited: int
    results_posted: int
    post_failures: int
    results_dropped: int
    results_pending: int


class TaskRunner:
    """Polls for tasks, runs them, posts results; see the module docstring."""

    def __init__(
        self,
        *,
        client: HttpClient,
        controller: str,
        name: str,
        tracer: TcpTraceroute,
        clock: Clock,
        rng: random.Random,
        poll_s: float = 10.0,
        max_per_minute: float = 6.0,
        timeout_s: float = 10.0,
        max_pending_results: int = 100,
    ) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s: {poll_s} is not > 0")
        if not max_per_minute > 0:
            raise ValueError(f"max_per_minute: {max_per_minute} is not > 0")
        self._client = client
        base = controller.rstrip("/")
        self.tasks_url = f"{base}/api/v1/tasks/{quote(name, safe='')}"
        self.results_url = f"{base}/api/v1/traceroutes"
        self._name = name
        self._tracer = tracer
        self._clock = clock
        self._rng = rng
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._limiter = TokenBucket(rate_per_s=max_per_minute / 60, burst=1)
        self._max_pending = max_pending_results
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._pending: collections.deque[TracerouteResult] = collections.deque()
        self._polls_ok = 0
        self._polls_not_found = 0
        self._polls_failed = 0
        self._traces = 0
        self._rate_limited = 0
        self._posted = 0
        self._post_failures = 0
        self._dropped = 0

    async def run(self) -> None:
        """Poll, trace and post every ``poll_s`` until cancelled."""
        while True:
            await self.cycle()
            jitter = self._rng.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)
            await asyncio.sleep(self._poll_s * jitter)

    async def cycle(self) -> None:
        """One poll, the traces it asks for (rate permitting), one post."""
        tasks = await self.poll()
        for task in tasks:
            if task.task_id in self._done:
                continue
            if not self._limiter.try_acquire(self._clock.monotonic_ns()):
                self._rate_limited += 1
                continue
            self._remember(task.task_id)
            self._queue(await self.run_task(task))
        await self.post()

    async def poll(self) -> tuple[TracerouteTask, ...]:
        """The tasks the server has for us (none when it cannot say)."""
        try:
            response = await self._client.request(
                "GET",
                self.tasks_url,
                headers={"Accept": "application/json"},
                timeout_s=self._timeout_s,
                max_body_bytes=MAX_TASKLIST_BYTES,
            )
        except ControllerError as exc:
            self._polls_failed += 1
            logger.debug("task poll failed: %s", exc)
            return ()
        if response.status == 404:
            self._polls_not_found += 1
            return ()
        if response.status != 200 or response.body is None:
            self._polls_failed += 1
            return ()
        try:
            tasks = TaskList.model_validate_json(response.body)
        except ValidationError as exc:
            self._polls_failed += 1
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(document)"
            logger.warning("invalid task list: field %s: %s", field, first["msg"])
            return ()
        self._polls_ok += 1
        return tasks.tasks

    async def run_task(self, task: TracerouteTask) -> TracerouteResult:
        """Trace one task's 5-tuple."""
        self._traces += 1
        time = datetime.fromtimestamp(self._clock.now_s(), tz=UTC)
        trace = await self._tracer.trace(
            task.dst_addr, task.dst_port, src_port=task.src_port, max_hops=task.max_hops
        )
        return TracerouteResult(
            task_id=task.task_id,
            agent=self._name,
            time=time,
            src_addr=trace.src_addr,
            src_port=trace.src_port,
            dst=task.dst,
            dst_addr=task.dst_addr,
            dst_port=task.dst_port,
            hops=tuple(Hop(ttl=h.ttl, address=h.address, rtt_us=h.rtt_us) for h in trace.hops),
            reached=trace.reached,
            detail=trace.detail,
        )

    async def post(self) -> None:
        """Post the results waiting (up to one batch); they stay queued if that fails."""
        if not self._pending:
            return
        results = tuple(list(self._pending)[:_MAX_RESULTS_PER_POST])
        body = TracerouteBatch(agent=self._name, results=results).model_dump_json().encode()
        try:
            response = await self._client.request(
                "POST",
                self.results_url,
                body=body,
                headers={"Content-Type": "application/json"},
                timeout_s=self._timeout_s,
            )
        except ControllerError as exc:
            self._post_failures += 1
            logger.info("posting traceroutes failed: %s", exc)
            return
        if 200 <= response.status < 300 or (
            400 <= response.status < 500 and response.status not in (404, 408, 429)
        ):
            if response.status >= 300:  # refused for good: do not retry it forever
                logger.warning("server refused traceroutes: HTTP %d", response.status)
                self._dropped += len(results)
            else:
                self._posted += len(results)
            for _ in results:
                self._pending.popleft()
            return
        self._post_failures += 1

    def statistics(self) -> TaskRunnerStatistics:
        """A snapshot of the counters."""
        return TaskRunnerStatistics(
            polls_ok=self._polls_ok,
            polls_not_found=self._polls_not_found,
            polls_failed=self._polls_failed,
            traces_run=self._traces,
            traces_rate_limited=self._rate_limited,
            results_posted=self._posted,
            post_failures=self._post_failures,
            results_dropped=self._dropped,
            results_pending=len(self._pending),
        )

    def _remember(self, task_id: str) -> None:
        self._done[task_id] = None
        if len(self._done) > _REMEMBERED_TASKS:
            self._done.popitem(last=False)

    def _queue(self, result: TracerouteResult) -> None:
        self._pending.append(result)
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self._dropped += 1
