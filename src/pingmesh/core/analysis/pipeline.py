"""One evaluation of the detectors, in the order that makes their answers trustworthy.

1. **Host or network** (:mod:`.host`): hosts down, unreachable or noisy; their pairs are
   excluded from everything after.
2. **Black holes** (:mod:`.blackhole`) in the fast window, with the port history of the watched
   pairs for type 2.
3. **Silent drops** (:mod:`.silent_drop`) in the fast window *and* over longer horizons (by
   default 2 and 10 minutes): a big drop shows within seconds, a small one needs minutes of
   probes to be told from baseline, and a new one is diluted in a long horizon. Longer
   horizons have more evidence, so their findings come first; a shorter one's finding is added
   only when its component shares no ToR cell with a longer one's (a new fault that the long
   horizon cannot yet see; a few probes cannot tell a leaf from the spine above it).
4. **SLA thresholds** (:mod:`.sla_alerts`) in the fast window, without the probes of the
   pairs that steps 1–3 explain.

Steps 2–4 also leave out what *earlier* windows explained (``recent``, an
:class:`~.lifecycle.Explained` kept by the caller's :class:`~.lifecycle.ExplanationMemory`),
as long as the scale they look at overlaps it: the edges of a fault that has just ended (a
black-holed SYN retransmitted after the fix, a host refusing while it comes back) are that
fault's, not new ones. A black hole's own pairs are never hidden from the black-hole
detector, nor a silent drop's from the silent-drop detector: memory only keeps a fault from
being blamed twice.
5. **Devices** (:mod:`.voting`): for each black-hole and silent-drop finding, the traced paths
   of its failing 5-tuples (asked for in earlier rounds) are voted on; an unambiguous device
   becomes a finding of its own (scope ``device``, entity its address), and the ranking is
   added to the parent's evidence either way.
6. **What to trace next**: the failing 5-tuples of each such finding, worst pairs first, as
   :class:`~.tracing.TraceRequest` values for the central planner — each both ways: from the
   source as the probe went, and from the destination with the ports swapped, as its reply
   went. A finding's requests carry its key (``kind|scope|entity``) as their reason, which is
   how step 5 finds its paths.

Pure: facts in, findings and requests out; time is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pingmesh.core.analysis.blackhole import detect_black_holes
from pingmesh.core.analysis.host import detect_hosts
from pingmesh.core.analysis.lifecycle import Explained
from pingmesh.core.analysis.model import (
    CellFacts,
    DetectorConfig,
    Finding,
    PairFacts,
    PortUse,
    WindowFacts,
)
from pingmesh.core.analysis.silent_drop import SilentDropVerdict, detect_silent_drops
from pingmesh.core.analysis.sla_alerts import detect_sla_breaches
from pingmesh.core.analysis.tracing import TraceRequest
from pingmesh.core.analysis.voting import (
    TIER_DEPTH,
    TracedPath,
    path_evidence,
    ranking_evidence,
    vote,
)
from pingmesh.core.topology import Topology

KINDS: frozenset[str] = frozenset(
    {
        "host_down",
        "host_unreachable",
        "tor_down",
        "podset_down",
        "host_noise",
        "host_drops",
        "black_hole",
        "silent_drop",
        "high_latency",
        "packet_loss",
    }
)
"""Every kind of finding the pipeline makes (the incidents it owns)."""

TRACED_KINDS = ("black_hole", "silent_drop")


def reason_of(finding: Finding) -> str:
    """The reason string of the traces asked for a finding: its key."""
    return "|".join(finding.key)[:200]


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """The findings of one evaluation, and the traces worth asking for."""

    findings: tuple[Finding, ...]
    requests: tuple[TraceRequest, ...]
    excluded: frozenset[str]
    black_pairs: frozenset[tuple[str, str]] = frozenset()  # black-holed in the window
    black_tors: frozenset[str] = frozenset()  # blamed for a black hole in the window
    dropping_pairs: frozenset[tuple[str, str]] = frozenset()  # behind a silent drop


CANDIDATES_PER_TRACE = 10
"""Offer the planner this many times more 5-tuples than it may take per finding: pairs traced
recently are skipped there, and the next worst ones should be ready to take their place."""


def _requests(finding: Finding, pairs: Sequence[PairFacts], per_finding: int) -> list[TraceRequest]:
    out: list[TraceRequest] = []
    reason = reason_of(finding)
    for pair in pairs:
        for sample in pair.samples:
            if len(out) >= per_finding * CANDIDATES_PER_TRACE:
                return out
            if sample.dst_port <= 0:
                continue  # ICMP has no ports: a TCP traceroute cannot keep its 5-tuple
            priority = float(pair.counts.drop_events + pair.counts.timeouts)
            out.append(
                TraceRequest(
                    agent=pair.src,
                    dst=pair.dst,
                    dst_addr=sample.dst_addr,
                    dst_port=sample.dst_port,
                    src_port=sample.src_port if sample.src_port > 0 else None,
                    reason=reason,
                    priority=priority,
                )
            )
            if sample.src_port > 0 and sample.dst_port > 0:
                # The reply's path: from the destination, ports swapped.
                out.append(
                    TraceRequest(
                        agent=pair.dst,
                        dst=pair.src,
                        dst_addr=sample.src_addr,
                        dst_port=sample.src_port,
                        src_port=sample.dst_port,
                        reason=reason,
                        priority=priority,
                    )
                )
            break  # one 5-tuple per pair: spread the traces over pairs
    return out


def _with_votes(
    finding: Finding, paths: Sequence[TracedPath], min_flows: int, limit: int
) -> tuple[Finding, Finding | None]:
    # A tier above the ToRs (leaf, spine, core) rules out the routers below it (see .voting).
    tier = finding.entity.partition("@")[0] if finding.scope == "tier" else ""
    result = vote(paths, min_flows=min_flows, skip_edges=TIER_DEPTH.get(tier, 0))
    evidence = dict(finding.evidence)
    evidence["votes"] = ranking_evidence(result, limit)
    evidence["traced_flows"] = result.flows
    if result.suspect is not None:
        evidence["device"] = result.suspect.device
    parent = Finding(
        kind=finding.kind,
        scope=finding.scope,
        entity=finding.entity,
        severity=finding.severity,
        summary=finding.summary,
        evidence=evidence,
    )
    if result.suspect is None:
        return parent, None
    suspect = result.suspect
    device = Finding(
        kind=finding.kind,
        scope="device",
        entity=suspect.device,
        summary=f"device {suspect.device}: on {suspect.flows} of {result.flows} traced failing "
        f"flows ({suspect.votes:.2f} votes) of {finding.scope} {finding.entity}",
        evidence={
            "parent": {"kind": finding.kind, "scope": finding.scope, "entity": finding.entity},
            "votes": ranking_evidence(result, limit),
            "paths": path_evidence(sorted(paths, key=lambda p: p.flow), limit),
            "pairs": finding.evidence.get("pairs", []),
        },
    )
    return parent, device


def evaluate(
    topology: Topology,
    *,
    window: WindowFacts,
    horizon: WindowFacts | None = None,
    extra_horizons: Sequence[WindowFacts] = (),
    ports: Mapping[tuple[str, str], Sequence[PortUse]] | None = None,
    last_seen_s: Mapping[str, float] | None = None,
    now_s: float,
    config: DetectorConfig,
    paths: Mapping[str, Sequence[TracedPath]] | None = None,
    vote_min_flows: int = 3,
    traces_per_finding: int = 5,
    recent: Explained | None = None,
) -> Evaluation:
    """Run every detector (see the module docstring)."""
    paths = paths or {}
    limit = config.max_evidence_items
    recent = recent or Explained()
    # Two fast windows: a fault's edge probes (sent before it ended, answered after) are
    # at most a probe timeout plus an alignment step after the last window that saw it.
    margin_s = 2.0 * (window.end_s - window.start_s)

    def earlier(facts: WindowFacts) -> Explained:
        return recent.overlapping(facts.start_s, margin_s)

    def black_before(facts: WindowFacts, before: Explained) -> set[tuple[str, str]]:
        tors = before.black_tors
        through = {p.key for p in facts.pairs if p.src_tor in tors or p.dst_tor in tors}
        return set(before.black_pairs) | through

    hosts = detect_hosts(
        topology, window, last_seen_s=last_seen_s or {}, now_s=now_s, config=config
    )
    excluded = hosts.excluded
    holes = detect_black_holes(
        topology,
        window,
        excluded=excluded | set(earlier(window).hosts),
        config=config,
        ports=ports,
    )
    black = set(holes.explained)
    # Longest horizon first: more evidence, so its findings take precedence; a shorter one
    # adds a finding only where no longer one blames a component sharing a cell with it.
    scales = sorted(
        [f for f in (window, horizon, *(extra_horizons or ())) if f is not None and f.cells],
        key=lambda f: f.start_s,
    )
    silent: list[Finding] = []
    suspects: dict[tuple[str, str, str], tuple[PairFacts, ...]] = {}
    kept: list[SilentDropVerdict] = []
    seen_cells: list[CellFacts] = []
    for facts in scales:
        before = earlier(facts)
        verdict = detect_silent_drops(
            topology,
            facts.cells,
            servers=facts.servers,
            pairs=facts.pairs,
            excluded=excluded | set(before.hosts),
            config=config,
            horizon_s=facts.end_s - facts.start_s,
            explained=black | black_before(facts, before),
        )
        seen_cells.extend(facts.cells)
        for finding in verdict.findings:
            component = verdict.components.get(finding.key)
            if finding.key in suspects or (
                component is not None and any(v.overlaps(component, seen_cells) for v in kept)
            ):
                continue
            silent.append(finding)
            suspects[finding.key] = verdict.suspects.get(finding.key, ())
        kept.append(verdict)
    dropping = {p.key for pairs in suspects.values() for p in pairs}
    before = earlier(window)
    gone_hosts = excluded | set(before.hosts)
    accounted = black | dropping | black_before(window, before) | set(before.dropping_pairs)
    breaches = detect_sla_breaches(
        topology,
        window.sla,
        config=config,
        explained=[
            p
            for p in window.pairs
            if p.key in accounted or p.src in gone_hosts or p.dst in gone_hosts
        ],
    )

    symptom_pairs = {(s.src, s.dst): s.pair for s in holes.symptoms if s.pair is not None}
    findings: list[Finding] = list(hosts.findings)
    requests: list[TraceRequest] = []
    for finding in [*holes.findings, *silent]:
        if finding.kind == "black_hole":
            listed = finding.evidence.get("pairs", [])
            keys = (
                [
                    (str(p["src"]), str(p["dst"]))
                    for p in listed
                    if isinstance(p, Mapping) and "src" in p and "dst" in p
                ]
                if isinstance(listed, list)
                else []
            )
            pairs = [symptom_pairs[k] for k in keys if k in symptom_pairs]
        else:
            pairs = list(suspects.get(finding.key, ()))
        requests.extend(_requests(finding, pairs, traces_per_finding))
        traced = paths.get(reason_of(finding))
        if traced:
            parent, device = _with_votes(finding, traced, vote_min_flows, limit)
            findings.append(parent)
            if device is not None:
                findings.append(device)
        else:
            findings.append(finding)
    findings.extend(breaches)
    return Evaluation(
        findings=tuple(findings),
        requests=tuple(requests),
        excluded=excluded,
        black_pairs=frozenset(black),
        black_tors=holes.blamed_tors,
        dropping_pairs=frozenset(dropping),
    )
