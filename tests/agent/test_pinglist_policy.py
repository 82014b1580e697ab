"""The fail-closed pinglist policy (pure state machine)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingmesh.agent.pinglist_policy import (
    FetchOutcome,
    FetchResult,
    PinglistState,
    next_state,
)
from tests.agent.stubs import pinglist_for

FULL = pinglist_for("a", "127.0.0.1", [("b", "127.0.0.2", 9781)]).to_plan()
EMPTY = pinglist_for("a", "127.0.0.1", []).to_plan()
OK = FetchOutcome(result=FetchResult.OK, pinglist=FULL, etag='"v1"')
NOT_MODIFIED = FetchOutcome(result=FetchResult.NOT_MODIFIED)
NOT_FOUND = FetchOutcome(result=FetchResult.NOT_FOUND, detail="unknown server")
FAILED = FetchOutcome(result=FetchResult.FAILED, detail="ConnectError: refused")


def step(state: PinglistState, outcome: FetchOutcome) -> PinglistState:
    return next_state(state, outcome, fail_closed_after=3)


def test_starts_not_probing() -> None:
    state = PinglistState()
    assert not state.probing
    assert state.reason == "no pinglist yet"


def test_a_pinglist_with_peers_starts_probing() -> None:
    state = step(PinglistState(), OK)
    assert state.probing
    assert state.etag == '"v1"'
    assert state.reason == ""


def test_an_empty_pinglist_only_answers() -> None:
    state = step(step(PinglistState(), OK), FetchOutcome(result=FetchResult.OK, pinglist=EMPTY))
    assert not state.probing
    assert state.pinglist is EMPTY  # kept, so 304s keep confirming it
    assert "empty pinglist" in state.reason


def test_not_modified_keeps_the_pinglist_and_clears_failures() -> None:
    state = step(step(step(PinglistState(), OK), FAILED), FAILED)
    assert state.consecutive_failures == 2
    state = step(state, NOT_MODIFIED)
    assert state.probing
    assert state.consecutive_failures == 0


def test_not_found_is_the_kill_switch() -> None:
    state = step(step(PinglistState(), OK), NOT_FOUND)
    assert not state.probing
    assert state.pinglist is None
    assert state.etag is None
    assert "404" in state.reason
    assert "unknown server" in state.reason


def test_three_failures_fail_closed() -> None:
    state = step(PinglistState(), OK)
    state = step(state, FAILED)
    assert state.probing
    state = step(state, FAILED)
    assert state.probing
    state = step(state, FAILED)
    assert not state.probing
    assert state.etag is None  # the next success is a full, checked 200
    assert "3 times in a row" in state.reason
    assert "ConnectError" in state.reason
    # and it recovers
    state = step(state, OK)
    assert state.probing
    assert state.consecutive_failures == 0


def test_not_modified_without_a_pinglist_counts_as_a_failure() -> None:
    state = step(PinglistState(), NOT_MODIFIED)
    assert not state.probing
    assert state.consecutive_failures == 1
    assert "304" in state.reason


@given(
    outcomes=st.lists(st.sampled_from([OK, NOT_MODIFIED, NOT_FOUND, FAILED]), max_size=40),
    limit=st.integers(1, 5),
)
def test_probing_only_on_a_recently_confirmed_pinglist(
    outcomes: list[FetchOutcome], limit: int
) -> None:
    """Probing implies: the last controller answer was a 200/304 for a pinglist with peers,
    and fewer than ``limit`` failures followed it."""
    state = PinglistState()
    last_answer: FetchResult | None = None
    failures_since = 0
    for outcome in outcomes:
        state = next_state(state, outcome, fail_closed_after=limit)
        if outcome.result is FetchResult.FAILED:
            failures_since += 1
        else:
            last_answer, failures_since = outcome.result, 0
        if state.probing:
            assert last_answer in (FetchResult.OK, FetchResult.NOT_MODIFIED)
            assert failures_since < limit
        if last_answer is FetchResult.NOT_FOUND and failures_since == 0:
            assert not state.probing
        assert state.probing == (state.reason == "")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="fail_closed_after"):
        next_state(PinglistState(), OK, fail_closed_after=0)
    with pytest.raises(ValueError, match="pinglist"):
        FetchOutcome(result=FetchResult.OK)
    with pytest.raises(ValueError, match="consecutive_failures"):
        PinglistState(consecutive_failures=-1)
