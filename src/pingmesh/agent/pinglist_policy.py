"""Fail-closed pinglist policy: given a fetch outcome, what the agent probes (pure).

Theory of operation (PM §3.4.2, "Agent safety")
-----------------------------------------------
The agent must never become the cause of an incident, so it *fails closed*: it probes only
while it holds a pinglist that the controller recently confirmed, and keeps answering probes
in every state.

==================  ====================================================================
outcome             next state
==================  ====================================================================
200 + pinglist      use it (probing if it has peers; an empty one means "only answer")
304 Not Modified    keep the current pinglist; the controller confirmed it
404 Not Found       drop the pinglist at once: removing pinglists is the kill switch
failure             keep the pinglist until ``fail_closed_after`` failures in a row, then
                    drop it ("fails to reach the controller 3 times")
==================  ====================================================================

Any answer from the controller (200, 304, 404) resets the failure count. A dropped pinglist
also forgets its ``ETag``, so the next successful fetch is a full 200 that is checked again.
:func:`next_state` is a pure function of the current state and the outcome; the fetcher does
the I/O and applies it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from pingmesh.core.probe import ProbePlan


class FetchResult(enum.StrEnum):
    """What one pinglist fetch came back with (the label of the fetch counter)."""

    OK = "ok"
    NOT_MODIFIED = "not_modified"
    NOT_FOUND = "not_found"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchOutcome:
    """One fetch: ``pinglist``/``etag`` with ``OK``, ``detail`` saying why otherwise."""

    result: FetchResult
    pinglist: ProbePlan | None = None
    etag: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if (self.result is FetchResult.OK) != (self.pinglist is not None):
            raise ValueError("pinglist: present exactly when the fetch result is ok")


@dataclass(frozen=True, slots=True, kw_only=True)
class PinglistState:
    """What the agent holds: the pinglist in force, its ETag, and why it is not probing."""

    pinglist: ProbePlan | None = None
    etag: str | None = None
    consecutive_failures: int = 0
    reason: str = "no pinglist yet"  # why probing is off; "" while probing

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0:
            raise ValueError(f"consecutive_failures: {self.consecutive_failures} is negative")

    @property
    def probing(self) -> bool:
        """True when there is a pinglist with peers in force."""
        return self.pinglist is not None and len(self.pinglist.targets) > 0


def next_state(
    state: PinglistState, outcome: FetchOutcome, *, fail_closed_after: int
) -> PinglistState:
    """The state after ``outcome``; see the table in the module docstring."""
    if fail_closed_after < 1:
        raise ValueError(f"fail_closed_after: {fail_closed_after} is not >= 1")
    match outcome.result:
        case FetchResult.OK:
            assert outcome.pinglist is not None
            return PinglistState(
                pinglist=outcome.pinglist,
                etag=outcome.etag,
                reason="" if outcome.pinglist.targets else "empty pinglist: only answering",
            )
        case FetchResult.NOT_MODIFIED:
            if state.pinglist is None:
                # We sent no ETag we still honour, so a 304 cannot confirm anything.
                return _failed(state, "304 Not Modified without a pinglist", fail_closed_after)
            return replace(state, consecutive_failures=0)
        case FetchResult.NOT_FOUND:
            detail = f": {outcome.detail}" if outcome.detail else ""
            return PinglistState(reason=f"no pinglist for this server (404){detail}")
        case FetchResult.FAILED:
            return _failed(state, outcome.detail or "fetch failed", fail_closed_after)


def _failed(state: PinglistState, detail: str, fail_closed_after: int) -> PinglistState:
    failures = state.consecutive_failures + 1
    if failures < fail_closed_after and state.pinglist is not None:
        return replace(state, consecutive_failures=failures)
    if state.pinglist is not None:
        reason = f"controller failed {failures} times in a row (last: {detail})"
    else:
        reason = f"no pinglist: {detail}"
    return PinglistState(consecutive_failures=failures, reason=reason)
