"""The pinglist fetcher: polls the controller and applies the fail-closed policy.

Agents pull (PM §3.3.2): ``GET {controller}/api/v1/pinglist/{name}`` with ``If-None-Match``,
every ``refresh_s`` ± 20 % so that a fleet started together does not poll in lockstep. Every
HTTP exchange becomes a :class:`~pingmesh.agent.pinglist_policy.FetchOutcome`; what it means
for probing is decided by the pure :func:`~pingmesh.agent.pinglist_policy.next_state`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from pydantic import ValidationError

from pingmesh.agent.http_client import HttpClient
from pingmesh.agent.pinglist_policy import (
    FetchOutcome,
    FetchResult,
    PinglistState,
    next_state,
)
from pingmesh.errors import ControllerError
from pingmesh.wire.pinglist import parse_plan

logger = logging.getLogger(__name__)

REFRESH_JITTER = 0.2  # each wait is refresh_s × U[1 - j, 1 + j]
MAX_PINGLIST_BYTES = 32 * 1024 * 1024  # a pinglist of 5000 peers is ~1 MB


@dataclass(frozen=True, slots=True, kw_only=True)
class FetcherStatistics:
    """A snapshot of the fetcher's counters."""

    ok: int
    not_modified: int
    not_found: int
    failed: int
    consecutive_failures: int
    probing: bool
    pinglist_version: str | None
    peers: int
    reason: str


class PinglistFetcher:
    """Keeps the agent's pinglist current; calls ``on_change`` when the state in force changes.

    ``on_change`` receives the new :class:`PinglistState` whenever its pinglist (or whether it
    probes) changes; it must not block.
    """

    def __init__(
        self,
        *,
        client: HttpClient,
        controller: str,
        name: str,
        refresh_s: float,
        fail_closed_after: int,
        on_change: Callable[[PinglistState], None],
        rng: random.Random,
        timeout_s: float = 10.0,
    ) -> None:
        if not refresh_s > 0:
            raise ValueError(f"refresh_s: {refresh_s} is not > 0")
        if fail_closed_after < 1:
            raise ValueError(f"fail_closed_after: {fail_closed_after} is not >= 1")
        if not name:
            raise ValueError("name: empty")
        self._client = client
        self.url = f"{controller.rstrip('/')}/api/v1/pinglist/{quote(name, safe='')}"
        self._name = name
        self._refresh_s = refresh_s
        self._fail_closed_after = fail_closed_after
        self._on_change = on_change
        self._rng = rng
        self._timeout_s = timeout_s
        self._state = PinglistState()
        self._counts = dict.fromkeys(FetchResult, 0)

    @property
    def state(self) -> PinglistState:
        """The pinglist state in force."""
        return self._state

    async def run(self) -> None:
        """Fetch now, then every ``refresh_s`` (jittered), until cancelled."""
        while True:
            await self.refresh()
            jitter = self._rng.uniform(1 - REFRESH_JITTER, 1 + REFRESH_JITTER)
            await asyncio.sleep(self._refresh_s * jitter)

    async def refresh(self) -> PinglistState:
        """One fetch, applied; the resulting state."""
        outcome = await self.fetch()
        return self.apply(outcome)

    async def fetch(self) -> FetchOutcome:
        """One ``GET`` of the pinglist; every failure is an outcome, never an exception."""
        headers = {"Accept": "application/json"}
        if self._state.etag is not None:
            headers["If-None-Match"] = self._state.etag
        try:
            response = await self._client.request(
                "GET",
                self.url,
                headers=headers,
                timeout_s=self._timeout_s,
                max_body_bytes=MAX_PINGLIST_BYTES,
            )
        except ControllerError as exc:
            return FetchOutcome(result=FetchResult.FAILED, detail=str(exc)[:200])
        status = response.status
        etag = response.headers.get("etag")
        body = response.body
        if status == 304:
            return FetchOutcome(result=FetchResult.NOT_MODIFIED)
        if status == 404:
            return FetchOutcome(result=FetchResult.NOT_FOUND, detail=_short(body))
        if status != 200:
            return FetchOutcome(result=FetchResult.FAILED, detail=f"HTTP {status}: {_short(body)}")
        if body is None:
            return FetchOutcome(
                result=FetchResult.FAILED,
                detail=f"pinglist larger than {MAX_PINGLIST_BYTES} bytes",
            )
        try:
            pinglist = parse_plan(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(document)"
            return FetchOutcome(
                result=FetchResult.FAILED,
                detail=f"invalid pinglist: field {field}: {first['msg']}"[:200],
            )
        if self._name not in (pinglist.server, pinglist.address):
            return FetchOutcome(
                result=FetchResult.FAILED,
                detail=f"pinglist is for {pinglist.server!r}, not {self._name!r}",
            )
        return FetchOutcome(result=FetchResult.OK, pinglist=pinglist, etag=etag)

    def apply(self, outcome: FetchOutcome) -> PinglistState:
        """Count ``outcome``, step the fail-closed policy, notify on a change."""
        self._counts[outcome.result] += 1
        old = self._state
        new = next_state(old, outcome, fail_closed_after=self._fail_closed_after)
        self._state = new
        if outcome.result is FetchResult.FAILED:
            logger.warning(
                "pinglist fetch from %s failed (%d in a row): %s",
                self.url,
                new.consecutive_failures,
                outcome.detail,
            )
        if new.pinglist is not old.pinglist or new.probing != old.probing:
            if new.probing:
                assert new.pinglist is not None
                logger.info(
                    "pinglist %s in force: %d peers",
                    new.pinglist.version,
                    len(new.pinglist.targets),
                )
            else:
                logger.warning("not probing: %s", new.reason)
            self._on_change(new)
        return new

    def statistics(self) -> FetcherStatistics:
        """A snapshot of the counters and the state in force."""
        state = self._state
        return FetcherStatistics(
            ok=self._counts[FetchResult.OK],
            not_modified=self._counts[FetchResult.NOT_MODIFIED],
            not_found=self._counts[FetchResult.NOT_FOUND],
            failed=self._counts[FetchResult.FAILED],
            consecutive_failures=state.consecutive_failures,
            probing=state.probing,
            pinglist_version=state.pinglist.version if state.pinglist is not None else None,
            peers=len(state.pinglist.targets) if state.pinglist is not None else 0,
            reason=state.reason,
        )


def _short(body: bytes | None) -> str:
    if body is None:
        return "(long body)"
    return " ".join(body[:160].decode("utf-8", "replace").split())
