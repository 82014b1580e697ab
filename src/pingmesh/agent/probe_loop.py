"""The probe loop: asks the schedule which peers are due and probes them, bounded.

Theory of operation
-------------------
The pure :class:`~pingmesh.core.schedule.ProbeSchedule` decides *who* is due; this shell
decides *whether* and *how many at once*:

1. Sleep until the earliest due time, or until the pinglist changes. Wake-ups are coalesced
   to at most one per ``tick_s`` (200 ms by default): every wake-up of a mostly idle process
   starts with cold caches, and at 250 probes a second (2,500 peers every 10 s) going from
   20 to 5 wake-ups a second saves about a third of the agent's CPU (measured with
   ``bench/agent_efficiency.py``). A probe up to a tick late does not matter: the interval
   is a minimum (PM §3.4.2), and that lateness earns no extra delay in the schedule
   (``slack_ns``). The price: the probes of one tick start together (tens of SYNs within a
   few milliseconds), and their ``rtt_clock_us``/``recv_lag_us`` include the agent's own
   batch (the kernel RTTs do not).
2. For each due peer, take a token from the global :class:`~pingmesh.core.schedule.TokenBucket`
   (``max_probe_rate``). Without one, the probe is skipped and counted: the cap bounds the
   agent's worst-case traffic (PM §3.4.2), and skipping (rather than queueing) keeps a backlog
   from building up; the peer comes up again one interval later.
3. Start the probe if a slot of the concurrency cap (``max_concurrent_probes``) is free, else
   wait for one: the number of probes in flight is bounded by the cap, never by the pinglist.
   At most ``CHUNK`` probes start before the loop lets answers and timers run, so an agent
   that falls behind degrades gracefully: it probes each peer a little less often (the
   interval is a minimum), and never lets answers sit unread until they time out.
   Callback probers (:class:`~pingmesh.agent.probers.StartingProber`: TCP connect, UDP,
   ICMP) run without a task; the others (TCP echo, HTTP) run as tasks of the loop's
   :class:`asyncio.TaskGroup`.
4. Each probe's result goes to ``sink`` (aggregates, the uploader and/or the results file).

**Event-loop lag.** Each wake-up is a timer we set ourselves, so how late it fires is the
event loop's lag at that moment: a direct measure of a busy host (R-Pingmesh §2: host load
leaks into user-space RTTs). It is recorded with every probe started in that wake-up
(``send_lag_us``) and kept as a histogram for ``/metrics``.

Counters satisfy ``started == completed + cancelled + in_flight`` at every moment, including
after a cancellation midway: when the loop is cancelled, every probe still in flight is
cancelled with it (its socket closed) and counted, and every prober closes what it shares
between probes (UDP source ports, the ICMP socket, the TCP prober's epoll set).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from pingmesh.agent.aggregates import HistogramSnapshot
from pingmesh.agent.probers import ProbeHandle, Prober, StartingProber
from pingmesh.clock import Clock
from pingmesh.core.probe import Outcome, ProbeKind, ProbePlan, ProbeResult, ProbeTarget
from pingmesh.core.schedule import ProbeSchedule, TokenBucket
from pingmesh.core.stats import LatencyHistogram

logger = logging.getLogger(__name__)

CHUNK = 256  # due peers started before the loop lets answers and timers run

# What makes two pinglist entries the same probe target; the interval is scheduling data.
PeerKey = tuple[str, str, int, ProbeKind, int]


def peer_key(peer: ProbeTarget) -> PeerKey:
    """The schedule key of a peer."""
    return (peer.name, peer.address, peer.port, peer.kind, peer.size_bytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeLoopStatistics:
    """A snapshot of the probe loop's counters."""

    probing: bool
    peers: int
    pinglist_version: str | None
    started: int
    completed: int
    cancelled: int
    in_flight: int
    rate_limited: int
    retransmitted: int  # completed probes with at least one retransmission
    outcomes: tuple[tuple[ProbeKind, Outcome, int], ...]
    wakeups: int
    loop_lag: HistogramSnapshot  # how late the loop's own timers fired
    loop_lag_max_s: float

    def count(self, outcome: Outcome, kind: ProbeKind | None = None) -> int:
        """Completed probes that ended in ``outcome`` (of ``kind``, or of every kind)."""
        return sum(n for k, o, n in self.outcomes if o is outcome and kind in (None, k))


class _InFlight:
    """A callback probe under way (its handle arrives after ``start`` returns)."""

    __slots__ = ("done", "handle")

    def __init__(self) -> None:
        self.done = False
        self.handle: ProbeHandle | None = None


class ProbeLoop:
    """Probes the peers of the pinglist in force; see the module docstring."""

    def __init__(
        self,
        *,
        probers: Mapping[ProbeKind, Prober],
        sink: Callable[[ProbeResult], None],
        clock: Clock,
        rng: random.Random,
        max_probe_rate: float,
        max_concurrent_probes: int,
        burst: int | None = None,
        tick_s: float = 0.2,
    ) -> None:
        if max_concurrent_probes < 1:
            raise ValueError(f"max_concurrent_probes: {max_concurrent_probes} is not >= 1")
        if not 0 <= tick_s <= 1:
            raise ValueError(f"tick_s: {tick_s} is outside 0-1 s")
        self._probers = dict(probers)
        self._starting = {
            kind: isinstance(prober, StartingProber) for kind, prober in self._probers.items()
        }
        self._sink = sink
        self._clock = clock
        self._schedule: ProbeSchedule[PeerKey] = ProbeSchedule(rng=rng)
        # A burst of a tenth of a second of probes absorbs jitter clumps without letting the
        # cap be exceeded for long.
        self._limiter = TokenBucket(
            rate_per_s=max_probe_rate,
            burst=burst if burst is not None else max(1, int(max_probe_rate / 10)),
        )
        self._max_concurrent = max_concurrent_probes
        self._tick_ns = round(tick_s * 1e9)
        self._peers: dict[PeerKey, ProbeTarget] = {}
        self._pinglist: ProbePlan | None = None
        self._timeout_s = 3.5
        self._waiter: asyncio.Future[bool] | None = None
        self._slot_waiter: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()
        self._changed_waiters = 0
        self._callbacks: set[_InFlight] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._started = 0
        self._completed = 0
        self._cancelled = 0
        self._in_flight = 0
        self._rate_limited = 0
        self._retransmitted = 0
        self._outcomes: dict[tuple[ProbeKind, Outcome], int] = {}
        self._wakeups = 0
        self._lag = LatencyHistogram()

    @property
    def probing(self) -> bool:
        """True while there are peers to probe."""
        return bool(self._peers)

    @property
    def timeout_s(self) -> float:
        """The per-probe timeout in force (the pinglist's)."""
        return self._timeout_s

    def set_pinglist(self, pinglist: ProbePlan | None) -> None:
        """Probe the peers of ``pinglist`` from now on (``None`` or no peers: stop probing).

        Peers that stay keep their place in the schedule; in-flight probes finish.
        """
        peers = {} if pinglist is None else {peer_key(p): p for p in pinglist.targets}
        self._schedule.replace(
            {key: round(p.interval_s * 1e9) for key, p in peers.items()},
            self._clock.monotonic_ns(),
        )
        self._peers = peers
        self._pinglist = pinglist if peers else None
        if pinglist is not None:
            self._timeout_s = pinglist.timeout_s
        self._wake()
        self._notify()

    async def run(self) -> None:
        """Probe due peers until cancelled; in-flight probes are cancelled with it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                deadline_ns: int | None = None
                wake_ns = 0
                chunk_lag_us: float | None = None
                while True:
                    now_ns = self._clock.monotonic_ns()
                    lag_us: float | None = None
                    if deadline_ns is not None:
                        lag_us = max(0, now_ns - deadline_ns) / 1000
                        self._lag.add(lag_us)
                        deadline_ns = None
                    else:
                        lag_us = chunk_lag_us  # a later chunk of the same wake-up
                    if chunk_lag_us is None:
                        self._wakeups += 1
                    due = self._schedule.due(now_ns, limit=CHUNK, slack_ns=self._tick_ns)
                    for key in due:
                        # The clock is read again for each token: waiting for a slot takes time.
                        if not self._limiter.try_acquire(self._clock.monotonic_ns()):
                            self._rate_limited += 1
                            continue
                        while self._in_flight >= self._max_concurrent:
                            self._slot_waiter = loop.create_future()
                            await self._slot_waiter
                        peer = self._peers.get(key)
                        if peer is None:  # removed by a pinglist change while we waited
                            continue
                        self._start(peer, lag_us)
                    if len(due) == CHUNK:
                        # More are due: let answers and timers run first, so that a busy
                        # agent sheds load by probing later (the interval is a minimum),
                        # never by leaving answers unread until they time out.
                        chunk_lag_us = lag_us
                        await asyncio.sleep(0)
                        continue
                    chunk_lag_us = None
                    next_ns = self._schedule.next_due_ns()
                    now_ns = self._clock.monotonic_ns()
                    if next_ns is not None and next_ns <= now_ns:
                        continue
                    self._waiter = loop.create_future()
                    timer = None
                    if next_ns is not None:
                        wake_ns = max(next_ns, now_ns + self._tick_ns)
                        timer = loop.call_later((wake_ns - now_ns) / 1e9, _resolve, self._waiter)
                    try:
                        if await self._waiter:  # woken by our timer: measure its lateness
                            deadline_ns = wake_ns
                    finally:
                        self._waiter = None
                        if timer is not None:
                            timer.cancel()
        finally:
            self._tasks = None
            for pending in list(self._callbacks):
                self._cancel(pending)
            for prober in self._probers.values():
                prober.close()  # shared sockets; reopened if the loop runs again

    async def wait_probing(self) -> None:
        """Return once the loop has peers to probe."""
        await self._wait_for(lambda: self.probing)

    async def wait_not_probing(self) -> None:
        """Return once the loop has no peers to probe."""
        await self._wait_for(lambda: not self.probing)

    async def wait_completed(self, count: int) -> None:
        """Return once at least ``count`` probes have completed."""
        await self._wait_for(lambda: self._completed >= count)

    def statistics(self) -> ProbeLoopStatistics:
        """A snapshot of the counters."""
        return ProbeLoopStatistics(
            probing=self.probing,
            peers=len(self._peers),
            pinglist_version=self._pinglist.version if self._pinglist is not None else None,
            started=self._started,
            completed=self._completed,
            cancelled=self._cancelled,
            in_flight=self._in_flight,
            rate_limited=self._rate_limited,
            retransmitted=self._retransmitted,
            # Every outcome of every kind in use, zeros included: a counter that appears
            # only at its first increment hides that increment from rate().
            outcomes=tuple(
                (kind, outcome, self._outcomes.get((kind, outcome), 0))
                for kind in sorted({k for k, _ in self._outcomes} | {k[3] for k in self._peers})
                for outcome in Outcome
            ),
            wakeups=self._wakeups,
            loop_lag=HistogramSnapshot.of(self._lag),
            loop_lag_max_s=max(self._lag.max, 0.0) / 1e6 if self._lag.total else 0.0,
        )

    # -- probes -----------------------------------------------------------------------------

    def _start(self, peer: ProbeTarget, lag_us: float | None) -> None:
        self._started += 1
        self._in_flight += 1
        prober = self._probers.get(peer.kind)
        if prober is None:
            self._complete(
                ProbeResult(
                    time_ns=round(self._clock.now_s() * 1e9),
                    src_addr="",
                    src_port=0,
                    dst=peer.name,
                    dst_addr=peer.address,
                    dst_port=peer.port,
                    kind=peer.kind,
                    scope=peer.scope,
                    outcome=Outcome.ERROR,
                    detail=f"no prober for kind {peer.kind.value!r}",
                )
            )
            return
        if self._starting[peer.kind]:
            starter = cast(StartingProber, prober)  # checked once, in __init__
            pending = _InFlight()
            self._callbacks.add(pending)

            def done(result: ProbeResult) -> None:
                if pending.done:
                    return
                pending.done = True
                self._callbacks.discard(pending)
                self._complete(result)

            handle = starter.start(
                peer, timeout_s=self._timeout_s, on_done=done, send_lag_us=lag_us
            )
            if not pending.done:
                pending.handle = handle
            return
        assert self._tasks is not None
        task = self._tasks.create_task(self._run_task(prober, peer, lag_us))
        # A task cancelled before it first runs never enters its coroutine, so the
        # accounting of abnormal ends is in a done callback.
        task.add_done_callback(self._task_done)

    async def _run_task(self, prober: Prober, peer: ProbeTarget, lag_us: float | None) -> None:
        try:
            result = await prober.probe(peer, timeout_s=self._timeout_s, send_lag_us=lag_us)
        except Exception as exc:  # a prober bug must not end the agent's probing
            logger.exception("%s prober raised", peer.kind.value)
            result = ProbeResult(
                time_ns=round(self._clock.now_s() * 1e9),
                src_addr="",
                src_port=0,
                dst=peer.name,
                dst_addr=peer.address,
                dst_port=peer.port,
                kind=peer.kind,
                scope=peer.scope,
                outcome=Outcome.ERROR,
                detail=f"prober failed: {type(exc).__name__}: {exc}"[:200],
            )
        self._complete(result)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # A probe that ended normally did its own accounting; this covers the others.
        if not task.cancelled() and task.exception() is None:
            return
        self._in_flight -= 1
        if task.cancelled():
            self._cancelled += 1
        self._slot_freed()
        self._notify()

    def _cancel(self, pending: _InFlight) -> None:
        if pending.done:
            return
        pending.done = True
        self._callbacks.discard(pending)
        if pending.handle is not None:
            pending.handle.cancel()
        self._in_flight -= 1
        self._cancelled += 1
        self._notify()

    def _complete(self, result: ProbeResult) -> None:
        key = (result.kind, result.outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1
        self._completed += 1
        if result.retransmits > 0 and result.outcome is Outcome.OK:
            self._retransmitted += 1
        try:
            self._sink(result)
        except Exception:
            # A broken sink must not stop probing (nor lose the accounting below).
            logger.exception("probe result sink failed")
        # Last, with no await in between: a snapshot never sees a probe both completed and
        # in flight.
        self._in_flight -= 1
        self._slot_freed()
        self._notify()

    # -- waking -----------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    def _slot_freed(self) -> None:
        waiter = self._slot_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            self._slot_waiter = None

    def _notify(self) -> None:
        # Wake every waiter of the current generation; later waiters wait on a fresh event.
        # Only when someone waits: at thousands of probes a second, a fresh Event per probe
        # would be a real cost.
        if self._changed_waiters:
            self._changed.set()
            self._changed = asyncio.Event()
            self._changed_waiters = 0

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed_waiters += 1
            await self._changed.wait()


def _resolve(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(True)
