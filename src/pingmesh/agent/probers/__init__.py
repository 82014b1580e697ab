"""Probers: one module per probe kind; each returns a ProbeResult and never raises."""

from __future__ import annotations

from typing import Protocol

from pingmesh.core.probe import ProbeKind, ProbeResult
from pingmesh.wire.pinglist import PeerModel


class Prober(Protocol):
    """Probes one peer once.

    ``probe`` never raises: every failure is a :class:`~pingmesh.core.probe.ProbeResult` with
    an outcome and its detail. Only :class:`asyncio.CancelledError` propagates, after the
    prober has released everything it held (sockets).
    """

    @property
    def kind(self) -> ProbeKind:
        """The probe kind this prober implements."""
        ...

    async def probe(self, peer: PeerModel, *, timeout_s: float) -> ProbeResult:
        """Probe ``peer`` once, giving up after ``timeout_s``."""
        ...
