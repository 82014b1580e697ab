"""The probe loop: asks the schedule which peers are due and probes them, bounded.

Theory of operation
-------------------
The pure :class:`~pingmesh.core.schedule.ProbeSchedule` decides *who* is due; this shell
decides *whether* and *how many at once*:

1. Sleep until the earliest due time, or until the pinglist changes.
2. For each due peer, take a token from the global :class:`~pingmesh.core.schedule.TokenBucket`
   (``max_probe_rate``). Without one, the probe is skipped and counted: the cap bounds the
   agent's worst-case traffic (PM §3.4.2), and skipping (rather than queueing) keeps a backlog
   from building up; the peer comes up again one interval later.
3. Take a slot of the concurrency cap (``max_concurrent_probes``, a semaphore) *before*
   creating the probe's task, so the number of tasks is bounded by the cap, never by the
   pinglist; when every slot is busy the loop waits.
4. Each probe's result goes to ``sink`` (the uploader and/or the results file).

Counters satisfy ``started == completed + cancelled + in_flight`` at every moment, including
after a cancellation midway.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pingmesh.agent.probers import Prober
from pingmesh.clock import Clock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult
from pingmesh.core.schedule import ProbeSchedule, TokenBucket
from pingmesh.wire.pinglist import PeerModel, PinglistModel

logger = logging.getLogger(__name__)

# What makes two pinglist entries the same probe target; the interval is scheduling data.
PeerKey = tuple[str, str, int, ProbeKind, int]


def peer_key(peer: PeerModel) -> PeerKey:
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
    retransmitted: int  # completed probes with at least one SYN retransmission
    outcomes: tuple[tuple[ProbeKind, Outcome, int], ...]

    def count(self, outcome: Outcome, kind: ProbeKind | None = None) -> int:
        """Completed probes that ended in ``outcome`` (of ``kind``, or of every kind)."""
        return sum(n for k, o, n in self.outcomes if o is outcome and kind in (None, k))


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
    ) -> None:
        if max_concurrent_probes < 1:
            raise ValueError(f"max_concurrent_probes: {max_concurrent_probes} is not >= 1")
        self._probers = dict(probers)
        self._sink = sink
        self._clock = clock
        self._schedule: ProbeSchedule[PeerKey] = ProbeSchedule(rng=rng)
        # A burst of a tenth of a second of probes absorbs jitter clumps without letting the
        # cap be exceeded for long.
        self._limiter = TokenBucket(
            rate_per_s=max_probe_rate,
            burst=burst if burst is not None else max(1, int(max_probe_rate / 10)),
        )
        self._slots = asyncio.Semaphore(max_concurrent_probes)
        self._peers: dict[PeerKey, PeerModel] = {}
        self._pinglist: PinglistModel | None = None
        self._timeout_s = 3.5
        self._wakeup = asyncio.Event()
        self._changed = asyncio.Event()
        self._started = 0
        self._cancelled = 0
        self._in_flight = 0
        self._rate_limited = 0
        self._retransmitted = 0
        self._outcomes = {(k, o): 0 for k in self._probers for o in Outcome}

    @property
    def probing(self) -> bool:
        """True while there are peers to probe."""
        return bool(self._peers)

    def set_pinglist(self, pinglist: PinglistModel | None) -> None:
        """Probe the peers of ``pinglist`` from now on (``None`` or no peers: stop probing).

        Peers that stay keep their place in the schedule; in-flight probes finish.
        """
        peers = {} if pinglist is None else {peer_key(p): p for p in pinglist.peers}
        self._schedule.replace(
            {key: round(p.interval_s * 1e9) for key, p in peers.items()},
            self._clock.monotonic_ns(),
        )
        self._peers = peers
        self._pinglist = pinglist if peers else None
        if pinglist is not None:
            self._timeout_s = pinglist.timeout_s
        self._wakeup.set()
        self._notify()

    async def run(self) -> None:
        """Probe due peers until cancelled; in-flight probes are cancelled with it."""
        async with asyncio.TaskGroup() as probes:
            while True:
                for key in self._schedule.due(self._clock.monotonic_ns()):
                    # The clock is read again for each token: waiting for a slot takes time.
                    if not self._limiter.try_acquire(self._clock.monotonic_ns()):
                        self._rate_limited += 1
                        continue
                    await self._slots.acquire()
                    peer = self._peers.get(key)
                    if peer is None:  # removed by a pinglist change while we waited
                        self._slots.release()
                        continue
                    self._started += 1
                    self._in_flight += 1
                    task = probes.create_task(self._probe(peer, self._timeout_s))
                    # A task cancelled before it first runs never enters its coroutine, so
                    # the accounting of abnormal ends is in a done callback.
                    task.add_done_callback(self._probe_done)
                self._wakeup.clear()
                next_ns = self._schedule.next_due_ns()
                delay_s = None if next_ns is None else (next_ns - self._clock.monotonic_ns()) / 1e9
                if delay_s is not None and delay_s <= 0:
                    continue
                try:
                    async with asyncio.timeout(delay_s):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass

    async def wait_probing(self) -> None:
        """Return once the loop has peers to probe."""
        await self._wait_for(lambda: self.probing)

    async def wait_not_probing(self) -> None:
        """Return once the loop has no peers to probe."""
        await self._wait_for(lambda: not self.probing)

    async def wait_completed(self, count: int) -> None:
        """Return once at least ``count`` probes have completed."""
        await self._wait_for(lambda: self._completed() >= count)

    def statistics(self) -> ProbeLoopStatistics:
        """A snapshot of the counters."""
        return ProbeLoopStatistics(
            probing=self.probing,
            peers=len(self._peers),
            pinglist_version=self._pinglist.version if self._pinglist is not None else None,
            started=self._started,
            completed=self._completed(),
            cancelled=self._cancelled,
            in_flight=self._in_flight,
            rate_limited=self._rate_limited,
            retransmitted=self._retransmitted,
            outcomes=tuple((k, o, n) for (k, o), n in self._outcomes.items()),
        )

    async def _probe(self, peer: PeerModel, timeout_s: float) -> None:
        prober = self._probers.get(peer.kind)
        if prober is None:
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
                detail=f"no prober for kind {peer.kind.value!r}",
            )
        else:
            result = await prober.probe(peer, timeout_s=timeout_s)
        key = (result.kind, result.outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1
        if result.retransmits > 0:
            self._retransmitted += 1
        self._sink(result)
        # Last, with no await in between: a snapshot never sees a probe both completed and
        # in flight.
        self._in_flight -= 1
        self._slots.release()
        self._notify()

    def _probe_done(self, task: asyncio.Task[None]) -> None:
        # A probe that ended normally did its own accounting; this covers the others,
        # including a task cancelled before it first ran (it never entered _probe).
        if not task.cancelled() and task.exception() is None:
            return
        self._in_flight -= 1
        self._slots.release()
        if task.cancelled():
            self._cancelled += 1
        self._notify()

    def _completed(self) -> int:
        return sum(self._outcomes.values())

    def _notify(self) -> None:
        # Wake every waiter of the current generation; later waiters wait on a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()
