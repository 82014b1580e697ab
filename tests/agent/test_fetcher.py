"""The pinglist fetcher against a real HTTP controller stub."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from pingmesh.agent.fetcher import PinglistFetcher
from pingmesh.agent.http_client import H11Client
from pingmesh.agent.pinglist_policy import PinglistState
from tests.agent.stubs import ControllerStub, free_port, pinglist_for

PEERS = pinglist_for("a", "127.0.0.1", [("b", "127.0.0.2", 9781), ("c", "127.0.0.3", 9781)])


@pytest.fixture
async def client() -> AsyncIterator[H11Client]:
    http = H11Client()
    yield http
    await http.aclose()


def make_fetcher(
    client: H11Client,
    url: str,
    changes: list[PinglistState],
    *,
    name: str = "a",
    refresh_s: float = 60.0,
) -> PinglistFetcher:
    return PinglistFetcher(
        client=client,
        controller=url,
        name=name,
        refresh_s=refresh_s,
        fail_closed_after=3,
        on_change=changes.append,
        rng=random.Random(0),
        timeout_s=5.0,
    )


async def test_200_then_304(controller: ControllerStub, client: H11Client) -> None:
    controller.pinglists["a"] = PEERS
    changes: list[PinglistState] = []
    fetcher = make_fetcher(client, controller.url, changes)
    state = await fetcher.refresh()
    assert state.probing
    assert state.pinglist == PEERS.to_plan()
    state = await fetcher.refresh()
    assert state.probing
    assert "if-none-match" not in controller.fetch_headers[0]
    assert controller.fetch_headers[1]["if-none-match"] == f'"{PEERS.version}"'
    stats = fetcher.statistics()
    assert (stats.ok, stats.not_modified, stats.failed, stats.not_found) == (1, 1, 0, 0)
    assert stats.peers == 2
    assert stats.pinglist_version == PEERS.version
    assert len(changes) == 1  # a 304 is no change


async def test_a_name_that_is_the_address_is_accepted(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.pinglists["127.0.0.1"] = PEERS
    fetcher = make_fetcher(client, controller.url, [], name="127.0.0.1")
    assert (await fetcher.refresh()).probing


async def test_404_stops_probing_at_once(controller: ControllerStub, client: H11Client) -> None:
    controller.pinglists["a"] = PEERS
    changes: list[PinglistState] = []
    fetcher = make_fetcher(client, controller.url, changes)
    await fetcher.refresh()
    del controller.pinglists["a"]
    state = await fetcher.refresh()
    assert not state.probing
    assert "404" in state.reason
    assert [c.probing for c in changes] == [True, False]
    assert fetcher.statistics().not_found == 1


async def test_three_failures_fail_closed_then_recover(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.pinglists["a"] = PEERS
    changes: list[PinglistState] = []
    fetcher = make_fetcher(client, controller.url, changes)
    await fetcher.refresh()
    controller.pinglist_status = 503
    assert (await fetcher.refresh()).probing
    assert (await fetcher.refresh()).probing
    state = await fetcher.refresh()
    assert not state.probing
    assert "HTTP 503" in state.reason
    assert fetcher.statistics().consecutive_failures == 3
    controller.pinglist_status = None
    state = await fetcher.refresh()
    assert state.probing
    # The ETag was forgotten with the pinglist: the recovery fetch is a full 200.
    assert "if-none-match" not in controller.fetch_headers[-1]
    stats = fetcher.statistics()
    assert (stats.ok, stats.failed, stats.consecutive_failures) == (2, 3, 0)
    assert [c.probing for c in changes] == [True, False, True]


async def test_an_unreachable_controller_is_a_failure(client: H11Client) -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    fetcher = make_fetcher(client, url, [])
    state = await fetcher.refresh()
    assert not state.probing
    assert state.consecutive_failures == 1
    assert "ConnectionRefusedError" in state.reason


async def test_an_empty_pinglist_stops_probing(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.pinglists["a"] = PEERS
    fetcher = make_fetcher(client, controller.url, [])
    await fetcher.refresh()
    controller.pinglists["a"] = pinglist_for("a", "127.0.0.1", [])
    state = await fetcher.refresh()
    assert not state.probing
    assert "empty" in state.reason


async def test_an_invalid_pinglist_is_a_failure_naming_the_field(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.pinglist_body = b'{"version": "x", "server": "a", "address": "1", "peers": 7}'
    fetcher = make_fetcher(client, controller.url, [])
    state = await fetcher.refresh()
    assert not state.probing
    assert "field peers" in state.reason
    assert fetcher.statistics().failed == 1


async def test_a_pinglist_for_another_server_is_a_failure(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.pinglists["a"] = pinglist_for("zz", "127.0.0.9", [("b", "127.0.0.2", 9781)])
    fetcher = make_fetcher(client, controller.url, [])
    state = await fetcher.refresh()
    assert not state.probing
    assert "'zz'" in state.reason


async def test_run_refreshes_periodically_and_cancels_cleanly(
    controller: ControllerStub, client: H11Client
) -> None:
    controller.pinglists["a"] = PEERS
    fetcher = make_fetcher(client, controller.url, [], refresh_s=0.05)
    task = asyncio.create_task(fetcher.run())
    async with asyncio.timeout(10):
        while len(controller.fetch_headers) < 4:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = fetcher.statistics()
    assert stats.ok == 1
    # Every completed exchange was counted; at most the one cancelled mid-flight was not.
    answered = stats.ok + stats.not_modified
    assert len(controller.fetch_headers) - 1 <= answered <= len(controller.fetch_headers)
    assert stats.failed == 0
    assert stats.probing
