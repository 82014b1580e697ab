"""Hysteresis between what a window shows and what stays open as an incident.

Theory of operation
-------------------
The fast path judges overlapping windows every few seconds. A pair probed every 10 s has two or
three probes in a 30 s window, and sometimes one: a black hole that is still there may not be
*provable* in every window. Reconciling each window's findings directly would close and reopen
the incident — and alerts fire on every change of state (reference §6.1 item 17). So a finding
opens after ``open_after`` consecutive windows that show it (1: speed matters most), and closes
only after ``close_after`` consecutive windows that do not; while it waits to close it keeps its
last evidence. A restarted server seeds the open ones from the incident store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pingmesh.core.analysis.model import Finding


@dataclass(slots=True)
class _State:
    finding: Finding
    hits: int = 0
    misses: int = 0
    open: bool = False


class Debouncer:
    """Turns each window's findings into the set that should be open (module docstring)."""

    def __init__(self, *, open_after: int = 1, close_after: int = 3) -> None:
        if open_after < 1 or close_after < 1:
            raise ValueError("open_after and close_after must be at least 1")
        self._open_after = open_after
        self._close_after = close_after
        self._states: dict[tuple[str, str, str], _State] = {}

    def seed(self, findings: Iterable[Finding]) -> None:
        """Mark ``findings`` open (incidents that were open before a restart)."""
        for finding in findings:
            self._states[finding.key] = _State(finding=finding, hits=self._open_after, open=True)

    def update(self, findings: Iterable[Finding]) -> list[Finding]:
        """Feed one window's findings; returns the findings that are open now, by key."""
        seen: set[tuple[str, str, str]] = set()
        for finding in findings:
            if finding.key in seen:
                continue
            seen.add(finding.key)
            state = self._states.get(finding.key)
            if state is None:
                state = self._states[finding.key] = _State(finding=finding)
            state.finding = finding
            state.hits += 1
            state.misses = 0
            if state.hits >= self._open_after:
                state.open = True
        for key in list(self._states):
            if key in seen:
                continue
            state = self._states[key]
            state.hits = 0
            state.misses += 1
            if not state.open or state.misses >= self._close_after:
                del self._states[key]
        return [s.finding for _, s in sorted(self._states.items()) if s.open]

    def open_keys(self) -> set[tuple[str, str, str]]:
        """The keys that are open."""
        return {k for k, s in self._states.items() if s.open}
