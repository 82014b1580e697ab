"""Probe scheduling: when each peer is due, and how fast an agent may probe in all.

Theory of operation
-------------------
**Per-peer schedule.** Every peer is probed once per its interval (PM §3.4.1), and the interval
is a hard *minimum* (PM §3.4.2: a hard-coded floor bounds the worst-case probe traffic).
:class:`ProbeSchedule` keeps one heap entry ``(due_ns, seq, key)`` per peer, so a tick costs
``O(k log n)`` for the ``k`` peers that are due, never a scan of all ``n`` peers.

- *Jitter.* A peer that joins gets its first probe at ``now + U[0, interval)``, drawn from an
  injected :class:`random.Random`. Agents that start (or receive a new pinglist) together
  therefore spread their probes over the interval instead of probing in lockstep, and each
  agent's own probes are spread evenly rather than fired in one burst.
- *Rescheduling.* A peer returned by :meth:`ProbeSchedule.due` at time ``now`` is next due at
  ``now + interval``, not at ``due + interval``. If the caller is late, the peer's phase
  shifts instead of the peer being probed twice in quick succession; consecutive probes of a
  peer are therefore never closer than its interval. A caller that wakes exactly at
  :meth:`ProbeSchedule.next_due_ns` probes each peer exactly once per interval.
- *No clumps.* A caller that was held up for ``L`` (all probe slots busy, the process
  suspended) collects at once every peer that fell due during ``L``. Rescheduled at the same
  ``now + interval``, they would stay in one clump forever, hitting the rate cap together
  round after round. So a peer that is late by ``L`` gets ``U[0, min(L, interval))`` more:
  the clump spreads back over about the time it took to form, and the interval stays a
  minimum.
- *Pinglist changes.* :meth:`ProbeSchedule.replace` keeps the due time of every peer that
  stays with the same interval, schedules new peers with jitter, and forgets removed peers
  *lazily*: their heap entries stay until they surface and are then discarded, because the
  entry's ``seq`` no longer matches the peer's state. The heap is rebuilt only when stale
  entries outnumber live ones, so the cost of a change is amortised ``O(n log n)`` in the
  size of the new pinglist, and ticks never rescan.

**Global rate cap.** :class:`TokenBucket` caps the probes of the whole agent (all peers) at a
rate with a bounded burst. It is implemented as the Generic Cell Rate Algorithm (GCRA, ITU-T
I.371, "virtual scheduling"), which is exactly a token bucket of depth ``burst`` refilled at
``rate``, but keeps a single integer — the theoretical arrival time — so it is exact in
integer nanoseconds and never drifts: in any window of ``W`` ns at most
``burst + W // emission_interval_ns`` acquisitions succeed.

Everything here is pure: time arrives as ``now_ns`` (monotonic nanoseconds) and randomness
through the injected generator.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _PeerState:
    interval_ns: int
    due_ns: int
    last_ns: int | None  # when the peer was last returned by due(); None: never yet
    seq: int  # matches the peer's one live heap entry


class ProbeSchedule(Generic[K]):
    """When each peer is next due: a heap of due times with jittered starts.

    Peers are identified by hashable keys; each has an interval in nanoseconds. See the module
    docstring for the theory of operation.
    """

    def __init__(self, *, rng: random.Random) -> None:
        self._rng = rng
        self._peers: dict[K, _PeerState] = {}
        self._heap: list[tuple[int, int, K]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, key: object) -> bool:
        return key in self._peers

    def interval_ns(self, key: K) -> int:
        """The interval of a scheduled peer (``KeyError`` if it is not scheduled)."""
        return self._peers[key].interval_ns

    def replace(self, peers: Mapping[K, int], now_ns: int) -> None:
        """Make ``peers`` (key → interval in ns, > 0) the whole peer set.

        Peers that stay with the same interval keep their due time. A peer whose interval
        changed is next due one new interval after its last probe, or at a jittered time in
        the next new interval if that moment has passed, so a change never makes a peer be
        probed sooner than its new interval after its last probe. New peers start at a
        jittered time in their first interval.
        """
        for key, interval in peers.items():
            if not isinstance(interval, int) or interval <= 0:
                raise ValueError(f"interval_ns for peer {key!r}: {interval!r} is not > 0")
        new: dict[K, _PeerState] = {}
        for key, interval in peers.items():
            old = self._peers.get(key)
            if old is not None and old.interval_ns == interval:
                new[key] = old
                continue
            if old is not None and old.last_ns is not None and old.last_ns + interval > now_ns:
                due = old.last_ns + interval
            else:
                due = now_ns + self._rng.randrange(interval)
            last = None if old is None else old.last_ns
            state = _PeerState(interval_ns=interval, due_ns=due, last_ns=last, seq=next(self._seq))
            new[key] = state
            heapq.heappush(self._heap, (due, state.seq, key))
        self._peers = new
        # Lazy deletion leaves stale entries behind; rebuild once they dominate so the heap
        # (and the memory it holds) stays proportional to the live peer set.
        if len(self._heap) > 2 * len(self._peers) + 64:
            self._heap = [(s.due_ns, s.seq, k) for k, s in self._peers.items()]
            heapq.heapify(self._heap)

    def due(self, now_ns: int, *, limit: int | None = None, slack_ns: int = 0) -> list[K]:
        """The peers due at ``now_ns`` (earliest first, at most ``limit``), rescheduled.

        Every peer returned is next due at ``now_ns + interval``, plus a random part of its
        lateness (at most one more interval) to break up clumps; see the module docstring.
        Lateness up to ``slack_ns`` is the caller's own choice (it wakes up at most that often,
        coalescing due times) and forms no clump, so it earns no extra delay.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit: {limit} is negative")
        out: list[K] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns and (limit is None or len(out) < limit):
            _, seq, key = heapq.heappop(heap)
            state = self._peers.get(key)
            if state is None or state.seq != seq:
                continue  # a removed or rescheduled peer's stale entry
            out.append(key)
            late_ns = now_ns - state.due_ns - slack_ns
            spread_ns = self._rng.randrange(min(late_ns, state.interval_ns)) if late_ns > 0 else 0
            state.last_ns = now_ns
            state.due_ns = now_ns + state.interval_ns + spread_ns
            state.seq = next(self._seq)
            heapq.heappush(heap, (state.due_ns, state.seq, key))
        return out

    def next_due_ns(self) -> int | None:
        """When the earliest peer is due, or ``None`` without peers."""
        heap = self._heap
        while heap:
            due, seq, key = heap[0]
            state = self._peers.get(key)
            if state is not None and state.seq == seq:
                return due
            heapq.heappop(heap)  # stale: drop it now rather than look at it again
        return None


class TokenBucket:
    """A global rate cap: at most ``rate_per_s`` on average, bursts of at most ``burst``.

    GCRA (see the module docstring): ``try_acquire`` succeeds when the theoretical arrival
    time is no more than ``(burst - 1)`` emission intervals ahead of ``now_ns``. The bucket
    starts full.
    """

    def __init__(self, *, rate_per_s: float, burst: int = 1) -> None:
        if not math.isfinite(rate_per_s) or rate_per_s <= 0:
            raise ValueError(f"rate_per_s: {rate_per_s} is not a positive number")
        if burst < 1:
            raise ValueError(f"burst: {burst} is not >= 1")
        # Round the interval up so that the enforced rate never exceeds the configured one.
        self.emission_interval_ns = max(1, math.ceil(1e9 / rate_per_s))
        self.burst = burst
        self._tolerance_ns = (burst - 1) * self.emission_interval_ns
        self._tat_ns: int | None = None  # theoretical arrival time; None: bucket full

    def try_acquire(self, now_ns: int) -> bool:
        """Take one token if there is one at ``now_ns``."""
        tat = now_ns if self._tat_ns is None else max(self._tat_ns, now_ns)
        if tat - now_ns > self._tolerance_ns:
            return False
        self._tat_ns = tat + self.emission_interval_ns
        return True

    def delay_ns(self, now_ns: int) -> int:
        """How long from ``now_ns`` until :meth:`try_acquire` would succeed (0: now)."""
        if self._tat_ns is None:
            return 0
        return max(0, self._tat_ns - self._tolerance_ns - now_ns)


def source_ports_for_paths(paths: int, probability: float) -> int:
    """How many distinct source ports cover ``paths`` ECMP paths with ``probability``.

    Theory of operation (coupon collector; R-Pingmesh Eq. 1, reference §6.1 item 3 and §6.2):
    if every flow (5-tuple) is hashed onto one of ``m`` equal-cost paths uniformly and
    independently, ``n`` flows with distinct source ports cover all ``m`` paths with
    probability ``sum_{i=0..m} (-1)^i C(m, i) (1 - i/m)^n``. That alternating sum cancels
    catastrophically in floating point for large ``m``, so we compute the same probability
    with the equivalent occupancy recurrence instead: after each new flow, the chance of
    having seen exactly ``k`` paths is ``P'(k) = P(k)·k/m + P(k-1)·(m-k+1)/m``. The answer is
    the smallest ``n`` with ``P(m) ≥ probability`` (m = 16, p = 0.99 → 115; m = 64 → 557).
    """
    if paths < 1:
        raise ValueError(f"paths: {paths} is not >= 1")
    if not 0 < probability < 1:
        raise ValueError(f"probability: {probability} must be between 0 and 1 (exclusive)")
    if paths == 1:
        return 1
    occupied = [0.0] * (paths + 1)  # occupied[k]: P(exactly k paths seen)
    occupied[0] = 1.0
    flows = 0
    while occupied[paths] < probability:
        flows += 1
        for k in range(min(flows, paths), 0, -1):
            occupied[k] = occupied[k] * k / paths + occupied[k - 1] * (paths - k + 1) / paths
        occupied[0] = 0.0
    return flows


class PerSourceLimiter(Generic[K]):
    """A rate cap per source (e.g. per peer address), in bounded memory.

    Each source gets its own GCRA bucket (as :class:`TokenBucket`: ``rate_per_s``, bursts of
    ``burst``). At most ``max_sources`` buckets are kept; a new source evicts the one seen
    least recently. An evicted source comes back with a full bucket, so a flood of distinct
    (spoofed) sources can at worst make the limiter forget — it never grows memory, and the
    responder's global cap still bounds the total.
    """

    def __init__(self, *, rate_per_s: float, burst: int, max_sources: int = 4096) -> None:
        if not math.isfinite(rate_per_s) or rate_per_s <= 0:
            raise ValueError(f"rate_per_s: {rate_per_s} is not a positive number")
        if burst < 1:
            raise ValueError(f"burst: {burst} is not >= 1")
        if max_sources < 1:
            raise ValueError(f"max_sources: {max_sources} is not >= 1")
        self.emission_interval_ns = max(1, math.ceil(1e9 / rate_per_s))
        self._tolerance_ns = (burst - 1) * self.emission_interval_ns
        self.max_sources = max_sources
        self._tat: OrderedDict[K, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tat)

    def try_acquire(self, source: K, now_ns: int) -> bool:
        """Take one token of ``source``'s bucket if it has one at ``now_ns``."""
        tat = self._tat.get(source)
        if tat is None:
            if len(self._tat) >= self.max_sources:
                self._tat.popitem(last=False)
            tat = now_ns
        else:
            self._tat.move_to_end(source)
            tat = max(tat, now_ns)
        if tat - now_ns > self._tolerance_ns:
            self._tat[source] = tat
            return False
        self._tat[source] = tat + self.emission_interval_ns
        return True
