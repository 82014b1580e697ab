"""Probers: one module per probe kind; each returns a ProbeResult and never raises.

Two shapes, one contract (:class:`Prober`):

- every prober has ``async probe()``: probe one peer once;
- the cheap, high-rate kinds (TCP connect, UDP echo, ICMP echo) are also
  :class:`StartingProber`\\ s: ``start()`` sends the probe and returns at once, and the result
  arrives later through a callback, straight from the event loop's readiness callback. No task,
  future or timeout context per probe: at thousands of probes a second that overhead is more
  than the probe itself (measured: ~23 µs of CPU per probe with a task, against ~46 µs for
  the probe's own system calls). The probe loop owns every started probe and cancels what is
  left when it stops, so nothing outlives it.

Whatever the shape, a failure is a :class:`~pingmesh.core.probe.ProbeResult` with an outcome
and its detail; only :class:`asyncio.CancelledError` propagates from ``probe()``, after the
prober has released what it held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from pingmesh.core.probe import ProbeKind, ProbeResult, Scope

OnDone = Callable[[ProbeResult], None]


class Peer(Protocol):
    """What a prober needs to know of a peer: a :class:`~pingmesh.core.probe.Peer`, or
    the wire's :class:`~pingmesh.wire.pinglist.PeerModel` (both fit)."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def kind(self) -> ProbeKind: ...
    @property
    def scope(self) -> Scope: ...
    @property
    def size_bytes(self) -> int: ...


class ProbeHandle(Protocol):
    """A started probe."""

    def cancel(self) -> None:
        """Abandon the probe: release its socket and timer; its callback will not run."""
        ...


class Prober(Protocol):
    """Probes one peer once; see the module docstring."""

    @property
    def kind(self) -> ProbeKind:
        """The probe kind this prober implements."""
        ...

    async def probe(
        self, peer: Peer, *, timeout_s: float, send_lag_us: float | None = None
    ) -> ProbeResult:
        """Probe ``peer`` once, giving up after ``timeout_s``."""
        ...

    def close(self) -> None:
        """Release what the prober shares between probes (sockets); probes can reopen it."""
        ...


class StartedProbe(ProbeHandle, Protocol):
    """A probe of a :class:`StartingProber`, made but not yet sent."""

    def begin(self) -> None:
        """Send it; exceptions propagate (:meth:`StartingProber.start` turns them into data)."""
        ...

    def abandon(self, detail: str) -> None:
        """End it as ``error`` with ``detail``, releasing what it holds."""
        ...


@runtime_checkable
class StartingProber(Prober, Protocol):
    """A prober whose probes run on callbacks; see the module docstring.

    A prober subclasses this and makes its probes (``_new_probe``); ``start`` and ``probe``
    are the same for every kind and are written here.
    """

    def start(
        self,
        peer: Peer,
        *,
        timeout_s: float,
        on_done: OnDone,
        send_lag_us: float | None = None,
    ) -> ProbeHandle:
        """Send the probe now; ``on_done`` gets the result exactly once, unless cancelled.

        ``on_done`` may be called before ``start`` returns (a probe that fails at once).
        """
        probe = self._new_probe(peer, timeout_s, on_done, send_lag_us)
        try:
            probe.begin()
        except Exception as exc:  # noqa: BLE001 - a probe never raises; keep the why as data
            probe.abandon(f"{type(exc).__name__}: {exc}"[:200])
        return probe

    def _new_probe(
        self, peer: Peer, timeout_s: float, on_done: OnDone, send_lag_us: float | None
    ) -> StartedProbe:
        """One probe of ``peer``, not yet sent."""
        ...

    async def probe(
        self, peer: Peer, *, timeout_s: float, send_lag_us: float | None = None
    ) -> ProbeResult:
        """Probe ``peer`` once (start, then wait for the callback); never raises but
        :class:`asyncio.CancelledError`, after cancelling the probe."""
        future: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()

        def done(result: ProbeResult) -> None:
            if not future.done():
                future.set_result(result)

        handle = self.start(peer, timeout_s=timeout_s, on_done=done, send_lag_us=send_lag_us)
        try:
            return await future
        except asyncio.CancelledError:
            handle.cancel()
            raise
