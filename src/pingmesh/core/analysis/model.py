"""The facts that the detectors see, and their parameters.

A window of probes is summarised (by DuckDB in the shell, or by the pure reference in the tests)
into counts per server pair, per server, per ToR-pair cell and per SLA entity. Every count is of
*clean* probes: probes that the agents' host-noise signals (event-loop lag, responder dwell)
did not flag, because a probe from or to a starved host says nothing about the network
(R-Pingmesh §6, ByteTracker §2; reference §6.1 item 12). ``noisy`` fields count the others.

Definitions (PM §4.2; reference §6.1 item 4):

- ``successes``: outcome ``ok``; ``timeouts``: outcome ``timeout`` (packets lost, or the host
  is down); the other failures (``refused``, ``reset``, …) are ``probes - successes -
  timeouts``: the host answered, so the network delivered.
- ``retransmitted``: successful probes that needed a retransmission (TCP kinds).
- ``drop_events / drop_basis`` is the drop rate: for TCP kinds Pingmesh's estimator
  (retransmitted ÷ successful probes); for UDP and ICMP direct loss (timeouts ÷ probes that
  either came back or were lost). Pooled over kinds, so a mixed pinglist has one drop rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SCOPES = ("server", "tor", "podset", "dc", "dc_pair", "service")
"""The SLA scopes that have thresholds."""

PAIR_SEPARATOR = "->"
"""Joins two names into one entity (``h11->h12``, ``dc1->dc2``); names never contain ``>``."""


def pair_entity(src: str, dst: str) -> str:
    """The entity name of an ordered pair."""
    return f"{src}{PAIR_SEPARATOR}{dst}"


def tier_entity(tier: str, where: str) -> str:
    """The entity name of a tier of devices: ``leaf@ps1``, ``spine@dc1``, ``core@fabric``."""
    return f"{tier}@{where}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    """Probe counts of some set of probes (see the module docstring)."""

    probes: int = 0
    successes: int = 0
    timeouts: int = 0
    retransmitted: int = 0
    drop_events: int = 0
    drop_basis: int = 0

    def __post_init__(self) -> None:
        for name in ("probes", "successes", "timeouts", "retransmitted", "drop_events"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: {getattr(self, name)} is negative")
        if self.successes + self.timeouts > self.probes:
            raise ValueError(
                f"successes + timeouts: {self.successes} + {self.timeouts} > {self.probes} probes"
            )
        if self.retransmitted > self.successes:
            raise ValueError(f"retransmitted: {self.retransmitted} > {self.successes} successes")
        if not 0 <= self.drop_events <= self.drop_basis:
            raise ValueError(f"drop_events: {self.drop_events} > drop_basis {self.drop_basis}")

    @property
    def failures(self) -> int:
        """Probes that did not succeed."""
        return self.probes - self.successes

    @property
    def drop_rate(self) -> float | None:
        """``drop_events / drop_basis``, None without a basis."""
        return self.drop_events / self.drop_basis if self.drop_basis else None

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            probes=self.probes + other.probes,
            successes=self.successes + other.successes,
            timeouts=self.timeouts + other.timeouts,
            retransmitted=self.retransmitted + other.retransmitted,
            drop_events=self.drop_events + other.drop_events,
            drop_basis=self.drop_basis + other.drop_basis,
        )

    def without(self, other: Counts) -> Counts:
        """These counts with ``other``'s taken out (a subset of them), never below zero."""
        probes = max(self.probes - other.probes, 0)
        successes = min(max(self.successes - other.successes, 0), probes)
        timeouts = min(max(self.timeouts - other.timeouts, 0), probes - successes)
        basis = max(self.drop_basis - other.drop_basis, 0)
        return Counts(
            probes=probes,
            successes=successes,
            timeouts=timeouts,
            retransmitted=min(max(self.retransmitted - other.retransmitted, 0), successes),
            drop_events=min(max(self.drop_events - other.drop_events, 0), basis),
            drop_basis=basis,
        )


ZERO = Counts()


@dataclass(frozen=True, slots=True, kw_only=True)
class PortUse:
    """How one source port of a pair fared in the window (type-2 black holes, PM §5.1)."""

    src_port: int
    probes: int
    timeouts: int

    def __post_init__(self) -> None:
        if not 0 <= self.timeouts <= self.probes or self.probes < 1:
            raise ValueError(f"port {self.src_port}: {self.timeouts} timeouts of {self.probes}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSample:
    """One failed or retransmitted probe with its 5-tuple: evidence, and what gets traced."""

    time_s: float
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    kind: str
    outcome: str
    retransmits: int

    def five_tuple(self) -> dict[str, object]:
        """The 5-tuple as evidence (protocol from the probe kind)."""
        proto = {"udp": "udp", "icmp": "icmp"}.get(self.kind, "tcp")
        return {
            "src_addr": self.src_addr,
            "src_port": self.src_port,
            "dst_addr": self.dst_addr,
            "dst_port": self.dst_port,
            "proto": proto,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PairFacts:
    """One ordered server pair in the window, with its placement as stored at ingest.

    Only pairs with something to explain (a clean timeout or drop event) are handed to the
    detectors; ``samples`` holds some of their failed or retransmitted probes.
    """

    src: str
    dst: str
    src_tor: str
    src_podset: str
    src_dc: str
    dst_tor: str
    dst_podset: str
    dst_dc: str
    counts: Counts
    noisy: int = 0
    samples: tuple[ProbeSample, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        """(src, dst)."""
        return (self.src, self.dst)

    @property
    def black(self) -> bool:
        """Every clean probe timed out."""
        return self.counts.probes > 0 and self.counts.timeouts == self.counts.probes


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerFacts:
    """One server in the window: the probes it sent and the probes sent to it.

    ``peers_out``: destinations it probed (clean probes); ``dead_out``: of those, the ones
    where every clean probe failed. ``peers_in`` / ``dead_in`` the same for its sources.
    """

    name: str
    tor: str
    podset: str
    dc: str
    sent: Counts = ZERO
    received: Counts = ZERO
    peers_out: int = 0
    dead_out: int = 0
    peers_in: int = 0
    dead_in: int = 0
    noisy_out: int = 0
    noisy_in: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.dead_out <= self.peers_out or not 0 <= self.dead_in <= self.peers_in:
            raise ValueError(f"server {self.name}: more dead peers than peers")


@dataclass(frozen=True, slots=True, kw_only=True)
class CellFacts:
    """One src ToR → dst ToR cell of the window (clean probes)."""

    src_tor: str
    dst_tor: str
    src_podset: str
    dst_podset: str
    src_dc: str
    dst_dc: str
    counts: Counts


@dataclass(frozen=True, slots=True, kw_only=True)
class EntitySla:
    """The clean SLA of one entity (scope ``server``/``tor``/``podset``/``dc``: probes sent by
    its servers; ``dc_pair``: between two DCs; ``service``: sent by its members)."""

    scope: str
    entity: str
    counts: Counts
    p99_us: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowFacts:
    """Everything the window-scale detectors need about ``[start_s, end_s)``."""

    start_s: float
    end_s: float
    servers: Mapping[str, ServerFacts] = field(default_factory=dict)
    pairs: tuple[PairFacts, ...] = ()
    cells: tuple[CellFacts, ...] = ()
    sla: tuple[EntitySla, ...] = ()

    def __post_init__(self) -> None:
        if not self.start_s < self.end_s:
            raise ValueError(f"window: start {self.start_s} is not before end {self.end_s}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """Alert thresholds of one scope: drop rate above ``drop_rate`` or P99 above ``p99_us``."""

    drop_rate: float = 1e-3
    p99_us: float = 5000.0

    def __post_init__(self) -> None:
        if not 0 < self.drop_rate <= 1 or not self.p99_us > 0:
            raise ValueError(f"thresholds: {self.drop_rate}, {self.p99_us} µs out of range")


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """The detectors' parameters (``IncidentConfig`` of the server config, made pure)."""

    thresholds: Thresholds = Thresholds()
    per_scope: Mapping[str, Thresholds] = field(default_factory=dict)
    min_latency_probes: int = 100
    min_drop_events: int = 5
    host_down_after_s: float = 30.0
    host_unreachable_share: float = 1.0
    host_min_peers: int = 3
    host_noise_share: float = 0.2
    black_hole_min_probes: int = 2
    tor_score_threshold: float = 0.5
    max_pair_incidents: int = 10
    baseline_drop_rate: float = 1e-4
    silent_drop_factor: float = 5.0
    significance: float = 1e-6
    localization_significance: float = 1e-3
    max_evidence_items: int = 20

    def __post_init__(self) -> None:
        unknown = sorted(set(self.per_scope) - set(SCOPES))
        if unknown:
            raise ValueError(f"per_scope: {unknown[0]!r} is not one of {SCOPES}")
        if not 0 < self.baseline_drop_rate < 1:
            raise ValueError(f"baseline_drop_rate: {self.baseline_drop_rate} out of (0, 1)")
        for name in ("significance", "localization_significance"):
            if not 0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name}: {getattr(self, name)} out of (0, 0.5)")
        for name in ("host_unreachable_share", "host_noise_share", "tor_score_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}: {getattr(self, name)} out of (0, 1]")
        for name in ("min_latency_probes", "min_drop_events", "black_hole_min_probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")

    def thresholds_for(self, scope: str) -> Thresholds:
        """The thresholds of ``scope`` (its own, else the default)."""
        return self.per_scope.get(scope, self.thresholds)


SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One problem a detector sees in the window; the shell turns it into an incident.

    (kind, scope, entity) identifies the problem across windows; ``evidence`` is JSON-able.
    """

    kind: str
    scope: str
    entity: str
    severity: str = "critical"
    summary: str = ""
    evidence: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("kind", "scope", "entity"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must not be empty")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity: {self.severity!r} is not one of {SEVERITIES}")

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, scope, entity)."""
        return (self.kind, self.scope, self.entity)


def pair_evidence(
    pairs: list[PairFacts] | tuple[PairFacts, ...], limit: int
) -> list[dict[str, object]]:
    """The worst pairs first (most drop events, then timeouts), as evidence rows."""
    ranked = sorted(
        pairs,
        key=lambda p: (-p.counts.drop_events, -p.counts.timeouts, p.src, p.dst),
    )
    return [
        {
            "src": p.src,
            "dst": p.dst,
            "probes": p.counts.probes,
            "timeouts": p.counts.timeouts,
            "drop_events": p.counts.drop_events,
            "drop_basis": p.counts.drop_basis,
        }
        for p in ranked[:limit]
    ]


def tuple_evidence(
    pairs: list[PairFacts] | tuple[PairFacts, ...], limit: int
) -> list[dict[str, object]]:
    """5-tuples of the failed or retransmitted probes of ``pairs``, at most ``limit``."""
    out: list[dict[str, object]] = []
    for pair in pairs:
        for sample in pair.samples:
            if len(out) >= limit:
                return out
            out.append(
                {
                    **sample.five_tuple(),
                    "outcome": sample.outcome,
                    "retransmits": sample.retransmits,
                }
            )
    return out
