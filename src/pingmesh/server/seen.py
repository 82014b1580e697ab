"""Which agents the server has heard from, kept in memory and written out in the background.

Request handlers only touch a dict (no database write on the hot path); ``flush`` writes the
changes to the results database every few seconds, in a thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pingmesh.clock import Clock
from pingmesh.store.results import ResultsDB


@dataclass(slots=True)
class _Seen:
    address: str
    at_s: float
    fetched: bool = False
    uploaded: bool = False
    version: str | None = None


class AgentsSeen:
    """Collects "agent X fetched / uploaded at T" events between flushes."""

    def __init__(self, db: ResultsDB, *, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Seen] = {}

    def fetched(self, name: str, address: str, version: str) -> None:
        """Agent ``name`` fetched its pinglist (``version``)."""
        with self._lock:
            seen = self._pending.setdefault(name, _Seen(address, self._clock.now_s()))
            seen.at_s, seen.fetched, seen.version = self._clock.now_s(), True, version

    def uploaded(self, name: str, address: str) -> None:
        """Agent ``name`` uploaded a result batch."""
        with self._lock:
            seen = self._pending.setdefault(name, _Seen(address, self._clock.now_s()))
            seen.at_s, seen.uploaded = self._clock.now_s(), True

    def flush(self) -> int:
        """Write what was seen since the last flush; returns the number of agents written."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for name, seen in pending.items():
            self._db.record_agent_seen(
                name,
                seen.address,
                now_s=seen.at_s,
                fetched=seen.fetched,
                uploaded=seen.uploaded,
                pinglist_version=seen.version,
            )
        return len(pending)
