"""Alert rules and the N-of-M evaluation that turns windows into firing and resolved states.

Theory of operation
-------------------
A *metric rule* watches one scope: the per-entity SLAs (``server``, ``tor``, ``podset``,
``dc``, ``service``: the probes an entity's servers sent) or the src → dst links of the matrix
at one level (``link``).  Each analysed window of the rule's kind gives every subject a
verdict: *bad* when any threshold that the rule sets is exceeded (the latency percentile,
the loss ratio ``failures / probes``, or the drop rate, PM §4.2) and the window has at least
``min_probes`` probes; *good* otherwise, including when the subject has no row (no data is not
a breach; a dead host is the analysis' ``host_down`` incident).

A subject fires when at least ``n`` of its last ``m`` windows were bad, and resolves when fewer
than ``n`` are.  This is SmartPing's rule (``src/funcs/alert.go``: a target is unhealthy when
more than ``Thdoccnum`` of its minutes in the last ``Thdchecksec`` seconds were bad, not
necessarily consecutive) with windows instead of minutes, and it is edge-triggered like
SmartPing's ``StartAlert``: only a change of state produces an event.  Unlike SmartPing the
state survives a restart: the engine primes these trackers from the stored windows and
reconciles them with the alerts stored as firing, so a still-bad subject does not alert twice.

Each subject's last ``m`` verdicts are the low ``m`` bits of one integer, so a window costs
one shift per tracked subject and a popcount; subjects whose bits are all zero are forgotten,
which keeps memory proportional to the subjects that were recently bad.

An *incident rule* fires while the analysis keeps an incident of one of its kinds open (the
incident store already opens and closes incidents on changes of state only).

Presets: :func:`smartping_rule` (avg delay > 200 ms or loss > 30 %, more than 3 bad in 900 s;
SmartPing ``conf/config-base.json``) and :func:`pingmesh_rule` (drop rate > 1e-3 or P99 > 5 ms,
PM §4.3).  This module is pure: no clock, no I/O.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

RuleScope = Literal["server", "tor", "podset", "dc", "service", "link", "incident"]
Level = Literal["server", "tor", "podset", "dc"]
Percentile = Literal["p50", "p90", "p99", "p999"]
Severity = Literal["critical", "warning", "info"]

RULE_SCOPES: tuple[str, ...] = ("server", "tor", "podset", "dc", "service", "link", "incident")
LEVELS: tuple[str, ...] = ("server", "tor", "podset", "dc")
PERCENTILES: tuple[str, ...] = ("p50", "p90", "p99", "p999")
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
MAX_M = 1024
LINK_SEPARATOR = "->"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class WindowStats(Protocol):
    """What a rule reads of an SLA row or a matrix cell (``store.results.Stats``)."""

    @property
    def probes(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def p50_us(self) -> float | None: ...
    @property
    def p90_us(self) -> float | None: ...
    @property
    def p99_us(self) -> float | None: ...
    @property
    def p999_us(self) -> float | None: ...
    @property
    def drop_rate(self) -> float | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRule:
    """One alert rule; an invalid rule cannot be built (ValueError names the field)."""

    rule_id: str
    name: str = ""
    scope: RuleScope = "link"
    level: Level = "tor"  # links only: the matrix level whose cells are watched
    entity: str = "*"  # glob over entity names; for links over "src->dst"
    window: str = "10m"  # the window kind evaluated (its name: 30s, 10m, …)
    percentile: Percentile = "p99"
    latency_us: float | None = None
    loss_ratio: float | None = None
    drop_rate: float | None = None
    min_probes: int = 1
    n: int = 1
    m: int = 1
    incident_kinds: tuple[str, ...] = ()  # incident rules: these kinds (empty: every kind)
    severity: Severity = "critical"
    origin: Literal["default", "config", "api"] = "config"

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.rule_id):
            raise ValueError(
                f"rule_id: {self.rule_id!r} must be 1-64 letters, digits, '_', '.', '-'"
            )
        if self.scope not in RULE_SCOPES:
            raise ValueError(f"scope: {self.scope!r} is not one of {', '.join(RULE_SCOPES)}")
        if self.level not in LEVELS:
            raise ValueError(f"level: {self.level!r} is not one of {', '.join(LEVELS)}")
        if self.percentile not in PERCENTILES:
            raise ValueError(f"percentile: {self.percentile!r} is not one of {PERCENTILES}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity: {self.severity!r} is not one of {SEVERITIES}")
        if not self.entity:
            raise ValueError("entity: must not be empty (use '*' for every entity)")
        if not 1 <= self.m <= MAX_M:
            raise ValueError(f"m: {self.m} is not between 1 and {MAX_M}")
        if not 1 <= self.n <= self.m:
            raise ValueError(f"n: {self.n} is not between 1 and m ({self.m})")
        if self.min_probes < 1:
            raise ValueError(f"min_probes: {self.min_probes} must be at least 1")
        for name in ("latency_us", "loss_ratio", "drop_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: {value} must be a finite number >= 0")
        if self.loss_ratio is not None and self.loss_ratio > 1:
            raise ValueError(f"loss_ratio: {self.loss_ratio} is a ratio (0-1), not a percentage")
        if self.scope == "incident":
            if self.thresholds_set:
                raise ValueError("an incident rule has no latency/loss/drop-rate threshold")
        elif not self.thresholds_set:
            raise ValueError(
                f"rule {self.rule_id!r}: a {self.scope} rule needs at least one of "
                "latency_us, loss_ratio, drop_rate"
            )

    @property
    def thresholds_set(self) -> bool:
        """True when the rule sets a metric threshold."""
        return any(v is not None for v in (self.latency_us, self.loss_ratio, self.drop_rate))

    @property
    def is_incident_rule(self) -> bool:
        """True for a rule that follows the analysis' incidents."""
        return self.scope == "incident"

    @property
    def watched_level(self) -> str:
        """The matrix level (links) or SLA scope (entities) this rule reads."""
        return self.level if self.scope == "link" else self.scope

    def covers(self, subject: str) -> bool:
        """True when ``subject`` (an entity, or ``src->dst``) is one this rule watches."""
        return self.entity == "*" or fnmatch.fnmatchcase(subject, self.entity)

    def covers_incident(self, kind: str) -> bool:
        """True when an incident of ``kind`` is one this rule follows."""
        return not self.incident_kinds or kind in self.incident_kinds

    def describe(self) -> str:
        """One line: what makes a window bad and how many it takes."""
        if self.is_incident_rule:
            kinds = ", ".join(self.incident_kinds) or "any kind"
            return f"an open incident ({kinds})"
        parts = []
        if self.latency_us is not None:
            parts.append(f"{self.percentile.upper()} > {format_us(self.latency_us)}")
        if self.loss_ratio is not None:
            parts.append(f"loss > {self.loss_ratio * 100:g} %")
        if self.drop_rate is not None:
            parts.append(f"drop rate > {self.drop_rate:g}")
        target = f"{self.level} link" if self.scope == "link" else self.scope
        return (
            f"{target} {self.entity}: {' or '.join(parts)} in {self.n} of the last "
            f"{self.m} {self.window} windows"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Breach:
    """Why a window was bad: the first exceeded threshold, its value and the limit."""

    metric: str  # p99_us, loss_ratio, drop_rate, …
    value: float
    threshold: float
    probes: int

    def describe(self) -> str:
        """``P99 9.00 ms > 5.00 ms`` and the like."""
        if self.metric.endswith("_us"):
            name = self.metric.removesuffix("_us").upper()
            return f"{name} {format_us(self.value)} > {format_us(self.threshold)}"
        if self.metric == "loss_ratio":
            return f"loss {self.value * 100:.1f} % > {self.threshold * 100:g} %"
        return f"drop rate {self.value:.2g} > {self.threshold:g}"


def format_us(us: float) -> str:
    """Microseconds for people: ``850 µs``, ``4.50 ms``, ``1.20 s``."""
    if us >= 1_000_000:
        return f"{us / 1e6:.2f} s"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} µs"


def breach(rule: AlertRule, stats: WindowStats) -> Breach | None:
    """The first threshold of ``rule`` that ``stats`` exceeds, or None (a good window).

    Checked in the order latency, loss, drop rate. A window with fewer than ``min_probes``
    probes is good: too few probes to judge.
    """
    if stats.probes < rule.min_probes:
        return None
    if rule.latency_us is not None:
        value = getattr(stats, f"{rule.percentile}_us")
        if value is not None and value > rule.latency_us:
            return Breach(
                metric=f"{rule.percentile}_us",
                value=float(value),
                threshold=rule.latency_us,
                probes=stats.probes,
            )
    if rule.loss_ratio is not None and stats.probes > 0:
        loss = stats.failures / stats.probes
        if loss > rule.loss_ratio:
            return Breach(
                metric="loss_ratio", value=loss, threshold=rule.loss_ratio, probes=stats.probes
            )
    if (
        rule.drop_rate is not None
        and stats.drop_rate is not None
        and stats.drop_rate > rule.drop_rate
    ):
        return Breach(
            metric="drop_rate",
            value=float(stats.drop_rate),
            threshold=rule.drop_rate,
            probes=stats.probes,
        )
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubjectState:
    """One subject's recent verdicts: bit 0 is the newest window (1 = bad)."""

    bits: int
    last_breach: Breach | None

    def bad_count(self, m: int) -> int:
        """How many of the last ``m`` windows were bad."""
        return (self.bits & ((1 << m) - 1)).bit_count()


class NOfM:
    """The verdict history of every subject of one rule (see the module docstring).

    Pure and synchronous: feed it one window at a time with :meth:`observe`; ask
    :meth:`firing` which subjects are at or over ``n`` bad of the last ``m``.
    """

    def __init__(self, n: int, m: int) -> None:
        if not 1 <= n <= m <= MAX_M:
            raise ValueError(f"n-of-m: need 1 <= n ({n}) <= m ({m}) <= {MAX_M}")
        self.n = n
        self.m = m
        self._mask = (1 << m) - 1
        self._states: dict[str, SubjectState] = {}

    def __len__(self) -> int:
        return len(self._states)

    def observe(self, breaches: Mapping[str, Breach]) -> set[str]:
        """Add one window: ``breaches`` are its bad subjects; returns the subjects that changed.

        Every tracked subject not in ``breaches`` gets a good verdict for this window.
        """
        changed: set[str] = set()
        for subject in list(self._states):
            if subject in breaches:
                continue
            old = self._states[subject]
            bits = (old.bits << 1) & self._mask
            if (old.bits.bit_count() >= self.n) != (bits.bit_count() >= self.n):
                changed.add(subject)
            if bits:
                self._states[subject] = SubjectState(bits=bits, last_breach=old.last_breach)
            else:
                del self._states[subject]
        for subject, why in breaches.items():
            old_state = self._states.get(subject)
            old_bits = old_state.bits if old_state else 0
            bits = ((old_bits << 1) | 1) & self._mask
            if (old_bits.bit_count() >= self.n) != (bits.bit_count() >= self.n):
                changed.add(subject)
            self._states[subject] = SubjectState(bits=bits, last_breach=why)
        return changed

    def is_firing(self, subject: str) -> bool:
        """True when ``subject`` had at least ``n`` bad windows of the last ``m``."""
        state = self._states.get(subject)
        return state is not None and state.bits.bit_count() >= self.n

    def firing(self) -> dict[str, SubjectState]:
        """Every subject at or over the threshold, with its state."""
        return {s: st for s, st in self._states.items() if st.bits.bit_count() >= self.n}

    def state(self, subject: str) -> SubjectState | None:
        """The state of one subject (None when it has had no bad window lately)."""
        return self._states.get(subject)


def link_subject(src: str, dst: str) -> str:
    """The subject name of a link: ``src->dst``."""
    return f"{src}{LINK_SEPARATOR}{dst}"


def split_link(subject: str) -> tuple[str, str] | None:
    """``src->dst`` → (src, dst); None when ``subject`` is not a link."""
    src, sep, dst = subject.partition(LINK_SEPARATOR)
    return (src, dst) if sep and src and dst else None


def smartping_rule(
    *, rule_id: str = "smartping", window: str, every_s: int, level: Level = "server"
) -> AlertRule:
    """SmartPing's default rule on ``level`` links: 200 ms / 30 % / 900 s / 3.

    SmartPing compares the average delay; a window here has no mean, so its median stands in.
    "More than 3 bad minutes in 900 s" becomes "at least 4 bad windows among those that start
    in the last 900 s", i.e. ``m = 900 / every_s`` windows of the fast kind.
    """
    m = max(4, min(MAX_M, math.ceil(900 / every_s)))
    return AlertRule(
        rule_id=rule_id,
        name="SmartPing defaults: median > 200 ms or loss > 30 %, more than 3 bad in 900 s",
        scope="link",
        level=level,
        window=window,
        percentile="p50",
        latency_us=200_000.0,
        loss_ratio=0.30,
        n=4,
        m=m,
        severity="critical",
        origin="default",
    )


def pingmesh_rule(
    *, rule_id: str = "pingmesh", window: str, level: Level = "tor", n: int = 1, m: int = 1
) -> AlertRule:
    """Pingmesh's SLA alert (PM §4.3): drop rate > 1e-3 or P99 > 5 ms, on ``level`` links."""
    return AlertRule(
        rule_id=rule_id,
        name="Pingmesh SLA: P99 > 5 ms or drop rate > 1e-3",
        scope="link",
        level=level,
        window=window,
        percentile="p99",
        latency_us=5000.0,
        drop_rate=1e-3,
        min_probes=10,
        n=n,
        m=m,
        severity="warning",
        origin="default",
    )


def incident_rule(*, rule_id: str = "incidents", kinds: Iterable[str] = ()) -> AlertRule:
    """Alert on every incident the analysis opens (of ``kinds``, or every kind)."""
    return AlertRule(
        rule_id=rule_id,
        name="Incidents found by the analysis",
        scope="incident",
        incident_kinds=tuple(kinds),
        severity="critical",
        origin="default",
    )
