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

Some kinds wait longer to open (``open_after_kinds``): a threshold breach says *that* the drop
rate or the P99 is high, and the detectors that say *where* need a few more probes of a fault
that has just begun (a localisation test needs more events than a threshold). Held back for a
few windows (as a Prometheus rule's ``for:``), a breach that the localising detector then
explains — and takes out of the threshold's counts — never opens at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pingmesh.core.analysis.model import Finding


@dataclass(slots=True)
class _State:
    finding: Finding
    hits: int = 0
    misses: int = 0
    open: bool = False


class Debouncer:
    """Turns each window's findings into the set that should be open (module docstring)."""

    def __init__(
        self,
        *,
        open_after: int = 1,
        close_after: int = 3,
        open_after_kinds: Mapping[str, int] | None = None,
    ) -> None:
        kinds = dict(open_after_kinds or {})
        if open_after < 1 or close_after < 1 or any(n < 1 for n in kinds.values()):
            raise ValueError("open_after and close_after must be at least 1")
        self._open_after = open_after
        self._open_after_kinds = kinds
        self._close_after = close_after
        self._states: dict[tuple[str, str, str], _State] = {}

    def seed(self, findings: Iterable[Finding]) -> None:
        """Mark ``findings`` open (incidents that were open before a restart)."""
        for finding in findings:
            self._states[finding.key] = _State(
                finding=finding, hits=self._needed(finding.kind), open=True
            )

    def _needed(self, kind: str) -> int:
        return self._open_after_kinds.get(kind, self._open_after)

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
            if state.hits >= self._needed(finding.kind):
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Explained:
    """What earlier windows explained, and the end of the last window that did.

    ``black_pairs``: pairs found black-holed; ``black_tors``: ToRs found black-holing (every
    pair through one is its); ``dropping_pairs``: pairs a silent-drop finding blamed on a
    part of the fabric; ``hosts``: servers found down or unreachable. Values are window ends
    (UNIX seconds).
    """

    black_pairs: Mapping[tuple[str, str], float] = field(default_factory=dict)
    dropping_pairs: Mapping[tuple[str, str], float] = field(default_factory=dict)
    hosts: Mapping[str, float] = field(default_factory=dict)
    black_tors: Mapping[str, float] = field(default_factory=dict)

    def overlapping(self, start_s: float, margin_s: float) -> Explained:
        """What was explained late enough that a window starting at ``start_s`` still holds
        its probes: the ones last explained by a window ending after ``start_s - margin_s``."""
        floor = start_s - margin_s
        return Explained(
            black_pairs={k: v for k, v in self.black_pairs.items() if v > floor},
            dropping_pairs={k: v for k, v in self.dropping_pairs.items() if v > floor},
            hosts={k: v for k, v in self.hosts.items() if v > floor},
            black_tors={k: v for k, v in self.black_tors.items() if v > floor},
        )


class ExplanationMemory:
    """Remembers what the detectors explained, so that the *edges* of a fault are its own.

    Theory of operation
    -------------------
    A fault leaves traces in the windows after it ends: a SYN that a black hole dropped just
    before it was cleared is retransmitted after, and succeeds — a retransmission, Pingmesh's
    drop signal (PM §4.2) — and the probes of a host that comes back are refused, then
    retried. Those probes sit in every window (and longer horizon) that overlaps the fault,
    but the pair no longer *looks* black-holed and the host no longer looks down, so without
    memory the threshold detector reports the retransmissions as packet loss of the whole
    DC, and the silent-drop detector as a lossy ToR — false incidents, right as the real one
    closes. So a pair or host that a finding explained stays explained for every window that
    starts less than ``margin_s`` (two fast windows: the probe timeout and the alignment fit
    in it) after the last window that explained it; entries are forgotten once no horizon
    reaches back to them.
    """

    def __init__(self) -> None:
        self._black: dict[tuple[str, str], float] = {}
        self._dropping: dict[tuple[str, str], float] = {}
        self._hosts: dict[str, float] = {}
        self._tors: dict[str, float] = {}

    def remember(
        self,
        *,
        end_s: float,
        black_pairs: Iterable[tuple[str, str]] = (),
        dropping_pairs: Iterable[tuple[str, str]] = (),
        hosts: Iterable[str] = (),
        black_tors: Iterable[str] = (),
        keep_s: float,
    ) -> None:
        """Record what the window ending at ``end_s`` explained; forget what ended more than
        ``keep_s`` before it."""
        _note(self._black, black_pairs, end_s, keep_s)
        _note(self._dropping, dropping_pairs, end_s, keep_s)
        _note(self._hosts, hosts, end_s, keep_s)
        _note(self._tors, black_tors, end_s, keep_s)

    def snapshot(self) -> Explained:
        """What is remembered now."""
        return Explained(
            black_pairs=dict(self._black),
            dropping_pairs=dict(self._dropping),
            hosts=dict(self._hosts),
            black_tors=dict(self._tors),
        )


K = TypeVar("K")


def _note(table: dict[K, float], keys: Iterable[K], end_s: float, keep_s: float) -> None:
    for key in keys:
        table[key] = max(table.get(key, end_s), end_s)
    for key in [k for k, at in table.items() if at < end_s - keep_s]:
        del table[key]
