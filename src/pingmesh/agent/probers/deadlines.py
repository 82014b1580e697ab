"""Probes waiting for an answer, oldest first, and one timer for all their timeouts.

Theory of operation
-------------------
A timer per probe (``loop.call_later``) costs an object that outlives the probe: a cancelled
timer stays in the event loop's heap until it comes up. At hundreds of probes a second those
leftovers — and the memory arenas they pin between short-lived objects — grow the agent by
megabytes. Callback probers instead put each waiting probe in a :class:`Deadlines` table: a
dict, which keeps insertion order, so with one timeout for all the oldest entry is also the
first to expire. One timer is armed for the oldest entry's deadline; when it fires, the
expired entries are handed to ``on_expire`` in order and the timer is re-armed for the new
oldest. A probe that ends leaves the table at once, so in steady state the timer fires about
once per timeout period, not once per probe.

If the timeout changes (a new pinglist), a shorter deadline can sit behind a longer one; that
entry then expires when its predecessor does, at most the old timeout late.

An answer can be in the kernel and still unread when the timer fires, because the event loop
was busy: the optional ``drain`` callback (read what is ready) runs first, so a busy agent
does not turn its own backlog into false timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from pingmesh.clock import Clock

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")


class Deadlines(Generic[K, P]):
    """Waiting probes by key, oldest first, with their deadlines; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock,
        on_expire: Callable[[K, P], None],
        drain: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_expire = on_expire
        self._drain = drain
        self._entries: dict[K, tuple[int, P]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> P | None:
        """The probe waiting under ``key``, if any."""
        entry = self._entries.get(key)
        return entry[1] if entry is not None else None

    def values(self) -> Iterator[P]:
        """The waiting probes, oldest first (a copy: safe to end them while iterating)."""
        return iter([probe for _, probe in self._entries.values()])

    def add(self, key: K, probe: P, timeout_s: float) -> None:
        """Wait for ``probe`` under ``key`` for at most ``timeout_s``."""
        deadline_ns = self._clock.monotonic_ns() + round(timeout_s * 1e9)
        self._entries[key] = (deadline_ns, probe)
        if self._timer is None:
            self._arm(deadline_ns)

    def pop(self, key: K) -> P | None:
        """Stop waiting for the probe under ``key`` (it ended); the probe, if it was there."""
        entry = self._entries.pop(key, None)
        return entry[1] if entry is not None else None

    def clear(self) -> None:
        """Forget every entry and the timer."""
        self._entries.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, deadline_ns: int) -> None:
        delay_s = max(0.0, (deadline_ns - self._clock.monotonic_ns()) / 1e9)
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._drain is not None:
            self._drain()  # answers already in, unread only because the loop was busy
        now_ns = self._clock.monotonic_ns()
        entries = self._entries
        while entries:
            key = next(iter(entries))
            deadline_ns, probe = entries[key]
            if deadline_ns > now_ns:
                self._arm(deadline_ns)
                return
            del entries[key]
            self._on_expire(key, probe)
