"""The pinglist document: what the controller serves and ``agent --pinglist FILE`` reads."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pingmesh.core.probe import MAX_PAYLOAD_BYTES, MIN_INTERVAL_S, ProbeKind, Scope
from pingmesh.wire import SCHEMA_VERSION


class PeerModel(BaseModel):
    """One peer to probe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    address: str
    port: int = Field(default=9781, ge=1, le=65535)
    kind: ProbeKind = ProbeKind.TCP
    scope: Scope
    interval_s: float = Field(default=10.0, ge=MIN_INTERVAL_S)
    size_bytes: int = Field(default=0, ge=0, le=MAX_PAYLOAD_BYTES)


class PinglistModel(BaseModel):
    """A server's pinglist.

    ``version`` is a digest of the content, so every controller replica gives the same version
    (and ``ETag``) for the same topology. An empty ``peers`` list means: only answer probes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    version: str
    server: str
    address: str
    timeout_s: float = Field(default=3.5, gt=0, le=60)
    peers: tuple[PeerModel, ...] = ()
    truncated: int = Field(default=0, ge=0, description="peers left out by the per-server cap")
