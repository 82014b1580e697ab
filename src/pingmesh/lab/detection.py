"""Fault → incident scenarios: does pingmesh find what the lab broke, and only that?

Theory of operation
-------------------
A scenario is a fault and what pingmesh should say about it (an :class:`Expectation`: the
incident kinds and the entities that count as naming the fault; PINGMESH-AND-SUCCESSORS.md §2.5,
§6.1.12–13), or, for host noise and a clean run, that it should say nothing about the network.
:func:`run_scenario`:

1. waits until no incident is open (:func:`wait_quiet`), and snapshots the incidents seen so
   far, so that only incidents opened *during* the scenario are judged;
2. injects the fault, then polls ``GET /api/v1/incidents?since=…`` once a second until an
   incident matches (time to detection = first poll that shows it − injection) or the bound
   passes;
3. always clears the fault, then polls until the matching incident has ended (time to clear)
   and, for at least ``settle_s`` after the clear (the fast window plus the analysis lag: as
   long as the fault's probes can be in what the analysis sees), until no incident is open,
   so that an incident that the fault's *end* opens is judged here and not taken for a
   leftover by the next scenario;
4. any other incident opened meanwhile is *false* unless the scenario tolerates it (an incident
   about the same entity, or host noise on a starved host).

The times are observed from outside, as an operator would: injection to the first API answer
that shows the incident, so they include the agents' upload interval, the analysis lag and
window, and the poll period (≤ 1 s).

Used by ``tests/lab`` (one assertion per scenario) and by ``bench/lab_detection.py`` (the same
scenarios N times, median and worst).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from pingmesh.lab.faults import (
    ActiveFault,
    BlackHole,
    CpuStarve,
    Fault,
    HostDown,
    LinkDown,
    PortBlackHole,
    RandomDrop,
    default_black_hole_pairs,
)
from pingmesh.lab.plan import LabPlan

DEFAULT_BOUND_S = 90.0  # a test fails past this; the target (issue 6) is 60 s
DEFAULT_QUIET_S = 90.0
# The lab's fast window (10 s) + analysis lag (6 s) + one step (2 s): the last window that
# holds a probe sent before the clear is judged by then (LAB_SERVER_DEFAULTS).
DEFAULT_SETTLE_S = 18.0
PAIR_SEPARATOR = "->"  # how the analysis names a pair: ``src->dst``
POLL_S = 1.0
NETWORK_KINDS = frozenset(
    {"black_hole", "silent_drop", "packet_loss", "high_latency", "link_down", "device_fault"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentView:
    """An incident as the API shows it (only what the scenarios judge)."""

    kind: str
    scope: str
    entity: str
    started_at: str
    ended_at: str | None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What tells two incidents apart across polls."""
        return (self.kind, self.scope, self.entity, self.started_at)

    @property
    def is_open(self) -> bool:
        """True until the incident has ended."""
        return self.ended_at is None

    def __str__(self) -> str:
        end = f"ended {self.ended_at}" if self.ended_at else "open"
        return f"{self.kind} {self.scope}/{self.entity} (started {self.started_at}, {end})"


def parse_incidents(document: Any) -> list[IncidentView]:
    """Incidents from the API's answer: a JSON list, or an object with an ``incidents`` list."""
    items = document.get("incidents", []) if isinstance(document, Mapping) else document
    if not isinstance(items, list):
        raise ValueError(  # noqa: TRY004 - bad data from a peer, not a caller's type error
            f"/api/v1/incidents: expected a list of incidents, got {type(items).__name__}"
        )
    out = []
    for item in items:
        out.append(
            IncidentView(
                kind=str(item["kind"]),
                scope=str(item.get("scope", "")),
                entity=str(item.get("entity", "")),
                started_at=str(item.get("started_at", "")),
                ended_at=item.get("ended_at"),
                evidence=item.get("evidence") or {},
            )
        )
    return out


def rfc3339(seconds: float) -> str:
    """UNIX seconds as RFC 3339 UTC (what ``since`` takes)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class IncidentSource(Protocol):
    """Where incidents are read from (the API; a fake in tests)."""

    def since(self, since_s: float) -> list[IncidentView]:
        """Incidents open at or after ``since_s``."""
        ...


class FaultInjector(Protocol):
    """What injects and clears faults (a :class:`~pingmesh.lab.lab.Lab`; a fake in tests)."""

    def inject(self, fault: Fault) -> ActiveFault:
        """Put ``fault`` in force."""
        ...

    def clear(self, fault_id: str) -> ActiveFault:
        """Remove fault ``fault_id``."""
        ...


class IncidentsClient:
    """Reads ``/api/v1/incidents`` of one server."""

    def __init__(self, base_url: str, client: httpx.Client) -> None:
        self._url = f"{base_url}/api/v1/incidents"
        self._client = client

    def since(self, since_s: float) -> list[IncidentView]:
        """Incidents open at or after ``since_s``; raises httpx errors and ValueError."""
        reply = self._client.get(self._url, params={"since": rfc3339(since_s)})
        reply.raise_for_status()
        return parse_incidents(reply.json())


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """Which incidents name the fault: any of ``kinds`` about any of ``entities``."""

    kinds: frozenset[str]
    entities: frozenset[str]

    def matches(self, incident: IncidentView) -> bool:
        """True if ``incident`` names the fault."""
        return incident.kind in self.kinds and incident.entity in self.entities

    def __str__(self) -> str:
        return f"{'|'.join(sorted(self.kinds))} about {'|'.join(sorted(self.entities))}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A fault and what pingmesh should say about it (``expect`` None: nothing)."""

    name: str
    fault: Fault | None  # None: a clean run
    expect: Expectation | None
    tolerate: Callable[[IncidentView], bool] = lambda _: False
    observe_s: float = 0.0  # for expect=None: how long to watch


def scenarios(
    plan: LabPlan, *, drop_percent: float = 10.0, observe_s: float = 30.0
) -> dict[str, Scenario]:
    """The standard scenarios for ``plan``, each on a part of the fabric chosen for it.

    An incident *names* a fault when its kind is expected and its entity is the faulty part:
    by name, by address (once the analysis names devices from traceroutes), or as the tier
    that holds it (``leaf@dc1-ps1``, ``spine@dc1``: until it can name the device). Incidents
    about single pairs (``a->b``) whose path crosses the faulty part are true too, and are
    tolerated; anything else is a false incident.
    """
    tors = plan.nodes_of("tor")
    tor = tors[0]
    assert tor.podset is not None
    leaf = plan.node(plan.links_of(tor.name)[0].other(tor.name))
    spine = plan.nodes_of("spine")[0]
    host = plan.tor_servers(tors[-1].name)[0]
    starved = plan.tor_servers(tors[1].name)[-1]
    under_tor = {s.name for s in plan.tor_servers(tor.name)}
    podset_of = {s.name: s.podset for s in plan.servers}

    def about(*names: str) -> frozenset[str]:
        out = set()
        for name in names:
            out.add(name)
            if plan.has_node(name):
                out.add(plan.node(name).address)
        return frozenset(out)

    def tolerating(
        expect: Expectation, crosses: Callable[[str, str], bool]
    ) -> Callable[[IncidentView], bool]:
        def tolerate(incident: IncidentView) -> bool:
            if incident.entity in expect.entities:
                return True
            pair = _pair(incident)
            return pair is not None and crosses(*pair)

        return tolerate

    def via_tor(a: str, b: str) -> bool:
        return a in under_tor or b in under_tor

    def across_podsets(a: str, b: str) -> bool:
        return podset_of.get(a) != podset_of.get(b)

    def with_host(a: str, b: str) -> bool:
        return host.name in (a, b)

    black = Expectation(kinds=frozenset({"black_hole"}), entities=about(tor.name))
    spine_drop = Expectation(
        kinds=frozenset({"silent_drop"}),
        entities=about(spine.name) | {f"spine@{spine.dc}", "spine"},
    )
    link_parts = about(tor.name, leaf.name) | {f"leaf@{tor.podset}"}
    link_drop = Expectation(kinds=frozenset({"silent_drop"}), entities=link_parts)
    link_down = Expectation(kinds=frozenset({"black_hole", "silent_drop"}), entities=link_parts)
    host_down = Expectation(kinds=frozenset({"host_down"}), entities=about(host.name))
    starved_names = about(starved.name)
    out = [
        Scenario(name="clean", fault=None, expect=None, observe_s=observe_s),
        Scenario(
            name="black_hole",
            fault=BlackHole(tor=tor.name, pairs=default_black_hole_pairs(plan, tor.name)),
            expect=black,
            tolerate=tolerating(black, via_tor),
        ),
        Scenario(
            name="port_black_hole",
            fault=PortBlackHole(tor=tor.name, one_in=4),
            expect=black,
            tolerate=tolerating(black, via_tor),
        ),
        Scenario(
            name="spine_drop",
            fault=RandomDrop(node=spine.name, percent=drop_percent),
            expect=spine_drop,
            tolerate=tolerating(spine_drop, across_podsets),
        ),
        Scenario(
            name="link_drop",
            fault=RandomDrop(node=tor.name, peer=leaf.name, percent=drop_percent),
            expect=link_drop,
            tolerate=tolerating(link_drop, via_tor),
        ),
        Scenario(
            name="link_down",
            fault=LinkDown(a=tor.name, b=leaf.name),
            expect=link_down,
            tolerate=tolerating(link_down, via_tor),
        ),
        Scenario(
            name="host_down",
            fault=HostDown(host=host.name),
            expect=host_down,
            tolerate=tolerating(host_down, with_host),
        ),
        Scenario(
            name="cpu_starve",
            fault=CpuStarve(host=starved.name),
            expect=None,
            # Host noise may be reported — about the starved host, never as the network.
            tolerate=lambda i: (
                i.entity in starved_names
                and i.kind not in NETWORK_KINDS
                and i.kind not in ("host_down", "host_unreachable")
            ),
            observe_s=observe_s,
        ),
    ]
    return {s.name: s for s in out}


def _pair(incident: IncidentView) -> tuple[str, str] | None:
    if incident.scope != "pair":
        return None
    a, sep, b = incident.entity.partition(PAIR_SEPARATOR)
    return (a, b) if sep else None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    """What happened in one scenario."""

    name: str
    expected: str  # the expectation, for people
    detected: bool  # the matching incident appeared (always True when nothing is expected)
    time_to_detect_s: float | None
    cleared: bool  # the matching incident ended after the fault was cleared
    time_to_clear_s: float | None
    matched: IncidentView | None
    false_incidents: tuple[IncidentView, ...]
    seen: tuple[IncidentView, ...]  # every incident opened during the scenario

    @property
    def passed(self) -> bool:
        """Detected, cleared, and nothing false."""
        return self.detected and self.cleared and not self.false_incidents

    def line(self) -> str:
        """One line for a log: the figures the benchmark and the tests report."""
        ttd = "-" if self.time_to_detect_s is None else f"{self.time_to_detect_s:.1f}"
        ttc = "-" if self.time_to_clear_s is None else f"{self.time_to_clear_s:.1f}"
        return (
            f"scenario={self.name} detected={self.detected} time_to_detect_s={ttd} "
            f"cleared={self.cleared} time_to_clear_s={ttc} "
            f"false_incidents={len(self.false_incidents)}"
        )


class QuietTimeoutError(AssertionError):
    """Incidents stayed open before a scenario could start."""


def wait_quiet(
    incidents: IncidentSource,
    *,
    timeout_s: float = DEFAULT_QUIET_S,
    since_s: float = 0.0,
    poll_s: float = POLL_S,
) -> list[IncidentView]:
    """Wait until no incident is open; returns every incident seen (the snapshot)."""
    deadline = time.monotonic() + timeout_s
    seen: list[IncidentView] = []
    while True:
        try:
            seen = incidents.since(since_s)
        except (httpx.HTTPError, ValueError):
            seen = []
            still = ["(the incidents API did not answer)"]
        else:
            still = [str(i) for i in seen if i.is_open]
            if not still:
                return seen
        if time.monotonic() >= deadline:
            raise QuietTimeoutError(
                f"incidents still open after {timeout_s:g} s: {'; '.join(still)}"
            )
        time.sleep(poll_s)


def run_scenario(
    lab: FaultInjector,
    incidents: IncidentSource,
    scenario: Scenario,
    *,
    bound_s: float = DEFAULT_BOUND_S,
    clear_bound_s: float = DEFAULT_BOUND_S,
    quiet_s: float = DEFAULT_QUIET_S,
    history_since_s: float = 0.0,
    poll_s: float = POLL_S,
    settle_s: float = DEFAULT_SETTLE_S,
) -> ScenarioResult:
    """Run one scenario (see the module docstring); the fault is always cleared."""
    quiet = wait_quiet(incidents, timeout_s=quiet_s, since_s=history_since_s, poll_s=poll_s)
    before = {i.identity for i in quiet}
    seen: dict[tuple[str, str, str, str], IncidentView] = {}
    expect = scenario.expect

    def poll(since_s: float) -> list[IncidentView]:
        try:
            current = incidents.since(since_s)
        except (httpx.HTTPError, ValueError):
            return []
        new = [i for i in current if i.identity not in before]
        for incident in new:
            seen[incident.identity] = incident
        return new

    start_s = time.time()
    start = time.monotonic()
    fault_id = lab.inject(scenario.fault).fault_id if scenario.fault is not None else None
    matched: IncidentView | None = None
    time_to_detect: float | None = None
    try:
        if expect is None:
            while time.monotonic() - start < scenario.observe_s:
                poll(history_since_s)
                time.sleep(poll_s)
        else:
            while time.monotonic() - start < bound_s:
                hits = [i for i in poll(history_since_s) if expect.matches(i)]
                if hits:
                    matched = hits[0]
                    time_to_detect = time.monotonic() - start
                    break
                time.sleep(poll_s)
    finally:
        if fault_id is not None:
            lab.clear(fault_id)
    cleared_at = time.monotonic()
    time_to_clear: float | None = None
    cleared = matched is None and expect is None
    key = matched.identity[:3] if matched is not None else None
    while True:
        current = poll(history_since_s)
        open_now = [i for i in current if i.is_open]
        elapsed = time.monotonic() - cleared_at
        if key is not None and not cleared and not any(i.identity[:3] == key for i in open_now):
            cleared = True
            time_to_clear = elapsed
        settled = (cleared or key is None) and not open_now and elapsed >= settle_s
        if settled or elapsed >= clear_bound_s:
            break
        time.sleep(poll_s)
    false = tuple(
        i
        for i in seen.values()
        if not (expect is not None and expect.matches(i))
        and not scenario.tolerate(i)
        and _opened_after(i, start_s - 60.0)
    )
    return ScenarioResult(
        name=scenario.name,
        expected=str(expect) if expect is not None else "no incident about the network",
        detected=expect is None or matched is not None,
        time_to_detect_s=time_to_detect,
        cleared=cleared,
        time_to_clear_s=time_to_clear,
        matched=matched,
        false_incidents=false,
        seen=tuple(seen.values()),
    )


def _opened_after(incident: IncidentView, since_s: float) -> bool:
    try:
        started = datetime.fromisoformat(incident.started_at.replace("Z", "+00:00"))
    except ValueError:
        return True
    return started.timestamp() >= since_s


def summarize(values: Iterable[float]) -> tuple[float, float] | None:
    """(median, worst) of ``values``, or None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return median, ordered[-1]
