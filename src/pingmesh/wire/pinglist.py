"""The pinglist document: what the controller serves and ``agent --pinglist FILE`` reads.

Two readings of one schema:

- :class:`PinglistModel` / :class:`PeerModel`: the pydantic models the controller builds and
  serves (and everything that wants the document as objects);
- :func:`parse_plan`: what an agent uses. It validates the same JSON by the same rules straight
  into the compact :class:`~pingmesh.core.probe.ProbePlan`, without a pydantic model per peer
  (~1.3 KB each; an agent with 2,500 peers would hold 3 MB, and the peak of building them is
  more than the agent's whole probe state: PM §3.4.2's memory budget). The field constraints
  are declared once (the ``Annotated`` aliases below) and the cross-field rule once
  (:func:`check_peer`), so the two cannot drift; a test checks that both accept and refuse the
  same documents.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from pingmesh.core.probe import (
    MAX_PAYLOAD_BYTES,
    MAX_UDP_PAYLOAD_BYTES,
    MIN_INTERVAL_S,
    ProbeKind,
    ProbePlan,
    ProbeTarget,
    Scope,
)
from pingmesh.wire import SCHEMA_VERSION

DEFAULT_PORTS = {
    ProbeKind.TCP: 9781,
    ProbeKind.TCP_ECHO: 9781,
    ProbeKind.UDP: 9781,
    ProbeKind.HTTP: 9782,
    ProbeKind.HTTPS: 443,
    ProbeKind.ICMP: 0,
}
"""Where each kind is answered (DESIGN.md: echo responder on 9781, HTTP on 9782); a peer
without a ``port`` gets its kind's."""

PeerName = Annotated[str, Field(min_length=1, max_length=128)]
Port = Annotated[int, Field(ge=0, le=65535)]
IntervalS = Annotated[float, Field(ge=MIN_INTERVAL_S)]
SizeBytes = Annotated[int, Field(ge=0, le=MAX_PAYLOAD_BYTES)]
TimeoutS = Annotated[float, Field(gt=0, le=60)]
Count = Annotated[int, Field(ge=0)]


def check_peer(kind: ProbeKind, port: int, size_bytes: int) -> None:
    """The rules across a peer's fields (``ValueError`` naming the field)."""
    if kind is ProbeKind.ICMP:
        if port != 0:
            raise ValueError(f"port: {port} given for an icmp peer (icmp has no port)")
    elif port == 0:
        raise ValueError(f"port: 0 is not a port for a {kind.value} peer")
    if kind is ProbeKind.UDP and size_bytes > MAX_UDP_PAYLOAD_BYTES:
        raise ValueError(f"size_bytes: {size_bytes} exceeds {MAX_UDP_PAYLOAD_BYTES} for a udp peer")


def _default_port(data: Any) -> Any:
    if isinstance(data, dict) and "port" not in data:
        try:
            kind = ProbeKind(data.get("kind", ProbeKind.TCP))
        except ValueError:
            return data  # the kind's own validation names the problem
        return {**data, "port": DEFAULT_PORTS[kind]}
    return data


class PeerModel(BaseModel):
    """One peer to probe, with one probe kind.

    ``port`` is 0 for ICMP (which has none) and 1-65535 otherwise (default: where agents
    answer the kind). ``size_bytes`` is the probe's payload: the TCP echo request, the UDP
    datagram or the ICMP payload (each has a small minimum; 0 means the default), capped at
    64 KiB (65,507 bytes for UDP).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: PeerName
    address: str
    port: Port = 9781
    kind: ProbeKind = ProbeKind.TCP
    scope: Scope
    interval_s: IntervalS = 10.0
    size_bytes: SizeBytes = 0

    @model_validator(mode="before")
    @classmethod
    def _port_of_kind(cls, data: Any) -> Any:
        return _default_port(data)

    @model_validator(mode="after")
    def _kind_fits(self) -> PeerModel:
        check_peer(self.kind, self.port, self.size_bytes)
        return self


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
    timeout_s: TimeoutS = 3.5
    peers: tuple[PeerModel, ...] = ()
    truncated: Count = Field(default=0, description="peers left out by the per-server cap")

    def to_plan(self) -> ProbePlan:
        """The compact form the agent keeps (see :func:`parse_plan`)."""
        return ProbePlan(
            version=self.version,
            server=self.server,
            address=self.address,
            timeout_s=self.timeout_s,
            targets=tuple(
                _target(
                    name=p.name,
                    address=p.address,
                    port=p.port,
                    kind=p.kind,
                    scope=p.scope,
                    interval_s=p.interval_s,
                    size_bytes=p.size_bytes,
                )
                for p in self.peers
            ),
            truncated=self.truncated,
        )


def _target(
    *,
    name: str,
    address: str,
    port: int,
    kind: ProbeKind,
    scope: Scope,
    interval_s: float,
    size_bytes: int,
) -> ProbeTarget:
    # Interned: a peer probed in several ways shares its strings.
    return ProbeTarget(
        name=sys.intern(name),
        address=sys.intern(address),
        port=port,
        kind=kind,
        scope=scope,
        interval_s=interval_s,
        size_bytes=size_bytes,
    )


# -- the agent's reading: slotted dataclasses, the same constraints -------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _PeerRow:
    __pydantic_config__ = ConfigDict(extra="forbid")

    # The same fields in the same order as PeerModel: errors are reported in field order.
    name: PeerName
    address: str
    port: Port = -1  # -1: not given, the kind's default (a real port is never negative)
    kind: ProbeKind = ProbeKind.TCP
    scope: Scope
    interval_s: IntervalS = 10.0
    size_bytes: SizeBytes = 0

    def __post_init__(self) -> None:
        check_peer(self.kind, self.effective_port, self.size_bytes)

    @property
    def effective_port(self) -> int:
        return DEFAULT_PORTS[self.kind] if self.port == -1 else self.port


@dataclass(frozen=True, slots=True, kw_only=True)
class _PlanDoc:
    __pydantic_config__ = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    version: str
    server: str
    address: str
    timeout_s: TimeoutS = 3.5
    peers: tuple[_PeerRow, ...] = ()
    truncated: Count = 0


_PLAN_ADAPTER: TypeAdapter[_PlanDoc] | None = None


def parse_plan(document: bytes | str) -> ProbePlan:
    """Validate a pinglist document (JSON) into a :class:`~pingmesh.core.probe.ProbePlan`.

    Raises :class:`pydantic.ValidationError` exactly where :class:`PinglistModel` would.
    """
    global _PLAN_ADAPTER  # noqa: PLW0603 - built on first use: agents that never parse skip it
    if _PLAN_ADAPTER is None:
        _PLAN_ADAPTER = TypeAdapter(_PlanDoc)
    doc = _PLAN_ADAPTER.validate_json(document)
    return ProbePlan(
        version=doc.version,
        server=doc.server,
        address=doc.address,
        timeout_s=doc.timeout_s,
        targets=tuple(
            _target(
                name=p.name,
                address=p.address,
                port=p.effective_port,
                kind=p.kind,
                scope=p.scope,
                interval_s=p.interval_s,
                size_bytes=p.size_bytes,
            )
            for p in doc.peers
        ),
        truncated=doc.truncated,
    )
