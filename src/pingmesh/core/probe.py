"""What a probe is and what it can come back with.

Probe failures are data, never exceptions: every probe ends in exactly one :class:`Outcome`
and keeps the detail of why (an errno name, a timeout stage).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MIN_INTERVAL_S = 1.0  # hard floor on the per-pair probe interval (DESIGN.md, "Defaults and limits")
MAX_PAYLOAD_BYTES = 64 * 1024  # Pingmesh's hard payload cap (PM §3.4.2)


class ProbeKind(enum.StrEnum):
    """How a peer is probed; chosen per peer by the pinglist."""

    TCP = "tcp"  # TCP connect: SYN / SYN-ACK round trip, fresh connection and source port


class Scope(enum.StrEnum):
    """Which of Pingmesh's three complete graphs a probe belongs to (PM §3.3.1)."""

    INTRA_TOR = "intra_tor"
    INTER_TOR = "inter_tor"
    INTER_DC = "inter_dc"


class Outcome(enum.StrEnum):
    """How one probe ended."""

    OK = "ok"
    TIMEOUT = "timeout"  # no answer within the probe timeout (SYNs lost or host down)
    REFUSED = "refused"  # the peer's kernel answered with RST: host up, responder down
    UNREACHABLE = "unreachable"  # ICMP unreachable / no route
    RESET = "reset"  # the connection was reset after it was established
    ERROR = "error"  # anything else, with the errno name in the detail


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """One probe, as the agent records it.

    ``rtt_us`` is the best RTT we have: the kernel's (``TCP_INFO``) when it gave one, else the
    monotonic clock's; ``rtt_clock_us`` is always the clock's, so the two can be compared.
    ``time_ns`` is wall-clock UTC nanoseconds when the probe was sent.
    """

    time_ns: int
    src_addr: str
    src_port: int
    dst: str
    dst_addr: str
    dst_port: int
    kind: ProbeKind
    scope: Scope
    outcome: Outcome
    rtt_us: float | None = None
    rtt_clock_us: float | None = None
    retransmits: int = 0
    size_bytes: int = 0
    detail: str = ""

    def __post_init__(self) -> None:
        if self.outcome is Outcome.OK and self.rtt_us is None:
            raise ValueError("rtt_us: a successful probe must have an RTT")
        if self.rtt_us is not None and self.rtt_us < 0:
            raise ValueError(f"rtt_us: {self.rtt_us} is negative")
        if self.retransmits < 0:
            raise ValueError(f"retransmits: {self.retransmits} is negative")
        if not 0 <= self.src_port <= 65535 or not 0 < self.dst_port <= 65535:
            raise ValueError(f"port: {self.src_port} -> {self.dst_port} out of range")
