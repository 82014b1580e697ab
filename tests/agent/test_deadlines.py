"""One timer for many probes' timeouts: order, re-arming, early ends, the drain hook."""

from __future__ import annotations

import asyncio

from pingmesh.agent.probers.deadlines import Deadlines
from pingmesh.clock import SystemClock


async def test_entries_expire_oldest_first_and_ended_ones_never() -> None:
    expired: list[str] = []
    drained: list[int] = []
    table: Deadlines[int, str] = Deadlines(
        clock=SystemClock(),
        on_expire=lambda key, probe: expired.append(probe),
        drain=lambda: drained.append(len(table)),
    )
    for key, name in enumerate("abcd"):
        table.add(key, name, 0.05)
    assert table.pop(1) == "b"  # ended early: never expires
    assert table.get(2) == "c"
    assert len(table) == 3
    while len(table):
        await asyncio.sleep(0.02)
    assert expired == ["a", "c", "d"]
    assert drained  # the drain hook ran before anything expired
    assert drained[0] == 3
    # The timer re-arms for entries added later.
    table.add(7, "late", 0.05)
    while len(table):
        await asyncio.sleep(0.02)
    assert expired[-1] == "late"


async def test_what_the_drain_ends_does_not_expire() -> None:
    expired: list[str] = []
    table: Deadlines[int, str] = Deadlines(
        clock=SystemClock(),
        on_expire=lambda key, probe: expired.append(probe),
        drain=lambda: table.pop(0),  # "the answer was in the socket"
    )
    table.add(0, "answered", 0.01)
    table.add(1, "lost", 0.01)
    while len(table):
        await asyncio.sleep(0.02)
    assert expired == ["lost"]


async def test_clear_forgets_everything() -> None:
    expired: list[str] = []
    table: Deadlines[int, str] = Deadlines(
        clock=SystemClock(), on_expire=lambda key, probe: expired.append(probe)
    )
    table.add(0, "x", 0.01)
    assert list(table.values()) == ["x"]
    table.clear()
    await asyncio.sleep(0.05)
    assert expired == []
    assert 0 not in table
