"""What a probe is and what it can come back with.

Probe failures are data, never exceptions: every probe ends in exactly one :class:`Outcome`
and keeps the detail of why (an errno name, a timeout stage).

What ``rtt_us`` means depends on the kind, always "the network's round trip, as exactly as we
can read it":

==========  ===========================================================================
kind        ``rtt_us``
==========  ===========================================================================
tcp         the kernel's SYN / SYN-ACK sample (``TCP_INFO``), else the monotonic clock
tcp_echo    request sent → whole echo received (kernel receive timestamp), minus the
            responder's dwell
udp         datagram sent → echo received (kernel receive timestamp), minus the dwell
icmp        echo request sent → echo reply received (kernel receive timestamp)
http(s)     request sent → whole response received: the user-visible time of the
            exchange on a fresh connection (its phases in ``connect_us``, ``tls_us``,
            ``ttfb_us``)
==========  ===========================================================================

``rtt_clock_us`` is always what the agent's own clock saw, dwell included, so the kernel's
and the agent's views can be compared. The host-noise signals (``send_lag_us``,
``recv_lag_us``, ``dwell_us``) let the analysis tell a busy host from a bad network
(reference §5, §6.1 item 7; R-Pingmesh's and ByteTracker's lesson).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MIN_INTERVAL_S = 1.0  # hard floor on the per-pair probe interval (DESIGN.md, "Defaults and limits")
MAX_PAYLOAD_BYTES = 64 * 1024  # Pingmesh's hard payload cap (PM §3.4.2)
MAX_UDP_PAYLOAD_BYTES = 65_507  # the largest UDP payload IPv4 can carry (65535 - 20 - 8)


class ProbeKind(enum.StrEnum):
    """How a peer is probed; chosen per peer by the pinglist."""

    TCP = "tcp"  # TCP connect: SYN / SYN-ACK round trip, fresh connection and source port
    TCP_ECHO = "tcp_echo"  # TCP payload echo of ``size_bytes`` on a fresh connection
    HTTP = "http"  # GET /ping on a fresh connection, with phase times
    HTTPS = "https"  # the same over TLS
    UDP = "udp"  # one datagram echoed, sequence-numbered; source port from a rotating set
    ICMP = "icmp"  # ICMP echo (raw socket as root, else a ping socket)

    @property
    def uses_port(self) -> bool:
        """False for ICMP, which has no ports (its peers carry port 0)."""
        return self is not ProbeKind.ICMP


class Scope(enum.StrEnum):
    """Which of Pingmesh's three complete graphs a probe belongs to (PM §3.3.1)."""

    INTRA_TOR = "intra_tor"
    INTER_TOR = "inter_tor"
    INTER_DC = "inter_dc"


class Outcome(enum.StrEnum):
    """How one probe ended."""

    OK = "ok"
    TIMEOUT = "timeout"  # no answer within the probe timeout (packets lost or host down)
    REFUSED = "refused"  # the peer's kernel answered with RST / port unreachable: host up
    UNREACHABLE = "unreachable"  # ICMP unreachable / no route
    RESET = "reset"  # the connection was reset after it was established
    BAD_REPLY = "bad_reply"  # an answer that is not the echo (corrupted, short, HTTP non-2xx)
    ERROR = "error"  # anything else, with the errno name in the detail


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """One probe, as the agent records it (see the module docstring for ``rtt_us``).

    ``time_ns`` is wall-clock UTC nanoseconds when the probe was sent. Optional fields are
    ``None`` when the kind does not measure them:

    - ``send_lag_us``: how late the agent's event loop woke up to send this probe (its
      timer's lateness): a busy sender, not a slow network;
    - ``recv_lag_us``: how long after the kernel received the answer the agent handled it
      (kernel receive timestamp, or for TCP connect the clock RTT minus the kernel RTT);
    - ``dwell_us``: how long the responder held the probe (kernel receive → reply sent);
    - ``connect_us``, ``tls_us``, ``ttfb_us``: phases of TCP echo and HTTP(S) probes;
    - ``seq``: the sequence number of a UDP or ICMP probe.
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
    send_lag_us: float | None = None
    recv_lag_us: float | None = None
    dwell_us: float | None = None
    connect_us: float | None = None
    tls_us: float | None = None
    ttfb_us: float | None = None
    seq: int | None = None

    def __post_init__(self) -> None:
        if self.outcome is Outcome.OK and self.rtt_us is None:
            raise ValueError("rtt_us: a successful probe must have an RTT")
        if self.rtt_us is not None and self.rtt_us < 0:
            raise ValueError(f"rtt_us: {self.rtt_us} is negative")
        if self.retransmits < 0:
            raise ValueError(f"retransmits: {self.retransmits} is negative")
        low = 1 if self.kind.uses_port else 0
        if not 0 <= self.src_port <= 65535 or not low <= self.dst_port <= 65535:
            raise ValueError(f"port: {self.src_port} -> {self.dst_port} out of range")
        if self.seq is not None and self.seq < 0:
            raise ValueError(f"seq: {self.seq} is negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeTarget:
    """One pinglist entry as the agent keeps it: a peer and how to probe it.

    The wire model (:class:`~pingmesh.wire.pinglist.PeerModel`) is validated at the edge and
    turned into this: a pydantic model costs ~1.3 KB per peer, this ~0.2 KB, and an agent
    holds thousands (PM §3.4.2: the whole agent in under 45 MB).
    """

    name: str
    address: str
    port: int
    kind: ProbeKind
    scope: Scope
    interval_s: float
    size_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbePlan:
    """A pinglist as the agent keeps it (see :class:`ProbeTarget`)."""

    version: str
    server: str
    address: str
    timeout_s: float
    targets: tuple[ProbeTarget, ...] = ()
    truncated: int = 0
