"""The agent's HTTP client with its uploads carried over QUIC, falling back to HTTP.

Theory of operation
-------------------
Everything the agent sends to the server goes through one
:class:`~pingmesh.agent.http_client.HttpClient`: the probe-result uploader, the bandwidth
spool, the pinglist fetcher and the task runner. :class:`QuicFallbackClient` wraps the agent's
plain client (:class:`~pingmesh.agent.http_client.H11Client`) and moves the *uploads*
(``POST`` to :data:`QUIC_PATHS`) onto QUIC without those components knowing: they keep their
own batching, retries and idempotent ids, and see ordinary
:class:`~pingmesh.agent.http_client.HttpResponse` answers. Everything else (the pinglist and
task requests) goes over HTTP as before. Reusing the agent's own small client, rather than a
second HTTP stack, keeps the agent within its memory budget (PM §3.4.2).

*Fallback and backoff.* While QUIC works, uploads use it. When a QUIC request fails (no
handshake, no answer, the server's port unreachable) the request is sent over HTTP at once if
``fallback_http`` is on, and QUIC is not tried again until a backoff has passed: jittered and
exponential from ``backoff_initial_s`` up to ``backoff_max_s`` while the failures go on, reset
by the first success. So a server whose UDP port is blocked costs one failed handshake per
backoff period, not one per upload, and after a server restart the agent is back on QUIC
within one backoff period of the server coming back. Without the fallback a failed request
raises :class:`~pingmesh.errors.TransportError`, a
:class:`~pingmesh.errors.ControllerError` that the callers already treat as "retry later".

*Timeouts.* Over QUIC the client's own ``connect_timeout_s`` and ``request_timeout_s`` bound
a request (they leave the connection in a known state); ``timeout_s`` bounds it over HTTP.

Uploads carry ``Authorization: Bearer TOKEN`` and ``X-Pingmesh-Agent`` when they go over HTTP,
so the server can check the same identity that QUIC's hello proves.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from pingmesh.agent.http_client import HttpClient, HttpResponse
from pingmesh.clock import Clock
from pingmesh.errors import TransportError

logger = logging.getLogger(__name__)

QUIC_PATHS = frozenset({"/api/v1/results", "/api/v1/bandwidth"})
AGENT_HEADER = "X-Pingmesh-Agent"


class QuicRequester(Protocol):
    """What the fallback needs from QUIC (:class:`~pingmesh.agent.transport.quic.QuicClient`)."""

    async def request(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of the answer; raises :class:`~pingmesh.errors.TransportError`."""
        ...

    async def aclose(self) -> None:
        """Close the connection."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackStatistics:
    """Where the uploads went (``/metrics``)."""

    quic_requests_total: int
    http_requests_total: int  # every request that went over HTTP (pinglist fetches too)
    http_uploads_total: int  # uploads that went over HTTP (no QUIC, or QUIC had failed)
    http_fallbacks_total: int  # uploads sent over HTTP because QUIC had just failed
    quic_failures_total: int
    quic_backoff_seconds: float  # how long until QUIC is tried again (0: now)


class QuicFallbackClient:
    """:class:`~pingmesh.agent.http_client.HttpClient` that routes uploads over QUIC when it
    works; see the module docstring."""

    def __init__(
        self,
        *,
        quic: QuicRequester | None,
        http: HttpClient,
        clock: Clock,
        rng: random.Random,
        agent: str,
        token: str | None,
        fallback_http: bool = True,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("backoff_initial_s must be > 0 and <= backoff_max_s")
        self.quic = quic
        self._http = http
        self._clock = clock
        self._rng = rng
        self._agent = agent
        self._token = token
        self._fallback = fallback_http
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._failures = 0  # consecutive
        self._retry_at_ns = 0
        self._quic_requests = 0
        self._http_requests = 0
        self._http_uploads = 0
        self._fallbacks = 0
        self._quic_failures = 0

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout_s: float,
        max_body_bytes: int = 1024 * 1024,
    ) -> HttpResponse:
        """One request: an upload over QUIC if it works, anything else over HTTP."""
        path = urlsplit(url).path
        if method == "POST" and path in QUIC_PATHS:
            headers = {**(headers or {}), AGENT_HEADER: self._agent}
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token}"
            if self.quic is not None:
                if self._quic_due():
                    try:
                        return await self._over_quic(path, body, max_body_bytes)
                    except TransportError as exc:
                        self._quic_failed(exc)
                        if not self._fallback:
                            raise
                        self._fallbacks += 1
                elif not self._fallback:
                    raise TransportError("quic: waiting before the next attempt")
            self._http_uploads += 1
        self._http_requests += 1
        return await self._http.request(
            method,
            url,
            headers=headers,
            body=body,
            timeout_s=timeout_s,
            max_body_bytes=max_body_bytes,
        )

    async def aclose(self) -> None:
        """Close the QUIC connection and every HTTP connection."""
        try:
            if self.quic is not None:
                await self.quic.aclose()
        finally:
            await self._http.aclose()

    def statistics(self) -> FallbackStatistics:
        """A snapshot of the counters."""
        wait_ns = max(0, self._retry_at_ns - self._clock.monotonic_ns())
        return FallbackStatistics(
            quic_requests_total=self._quic_requests,
            http_requests_total=self._http_requests,
            http_uploads_total=self._http_uploads,
            http_fallbacks_total=self._fallbacks,
            quic_failures_total=self._quic_failures,
            quic_backoff_seconds=wait_ns / 1e9 if self._failures else 0.0,
        )

    def _quic_due(self) -> bool:
        return self._failures == 0 or self._clock.monotonic_ns() >= self._retry_at_ns

    async def _over_quic(self, path: str, body: bytes, max_body_bytes: int) -> HttpResponse:
        assert self.quic is not None
        status, answer = await self.quic.request(path, body)
        self._quic_requests += 1
        if self._failures:
            logger.info("quic: back after %d failures", self._failures)
        self._failures = 0
        return HttpResponse(
            status=status,
            headers={"content-type": "application/json"},
            body=answer if len(answer) <= max_body_bytes else None,
        )

    def _quic_failed(self, exc: TransportError) -> None:
        self._quic_failures += 1
        ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** min(self._failures, 30))
        self._failures += 1
        delay_s = ceiling * self._rng.uniform(0.5, 1.0)
        self._retry_at_ns = self._clock.monotonic_ns() + int(delay_s * 1e9)
        log = logger.warning if self._failures == 1 else logger.info
        meanwhile = "HTTP meanwhile, " if self._fallback else ""
        log("%s; %sQUIC again in %.1f s", exc, meanwhile, delay_s)
