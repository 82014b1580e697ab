"""SLA threshold incidents: ``high_latency`` (P99) and ``packet_loss`` (drop rate), per scope.

Theory of operation
-------------------
Pingmesh decides "is it the network?" with two numbers and simple thresholds: drop rate > 1e-3
or P99 > 5 ms (PM §4.3, reference §2.4); ours are configurable per scope. A threshold alone
says *that* something is wrong, and fires at every level of the hierarchy at once (a DC-wide
problem breaches the DC, each of its podsets, ToRs and servers). So breaches are reported at
the level that explains them:

- Walking down from each DC, an entity that breaches is reported if its breach is *broad* —
  more than half of its children that have enough data breach too (or it is a server) — and
  nothing below it is reported. A narrow breach (one bad server lifting its ToR's P99) is
  passed down to the children that breach; if none does on its own, the entity itself is
  reported.
- Services and DC pairs (``dc1->dc2``, only between two DCs) are judged each on its own: they
  cut across the hierarchy, and a service owner wants to hear about their service.

A judgement needs evidence: a P99 needs ``min_latency_probes`` successful probes (below that it
is just the slowest probe), a drop rate ``min_drop_events`` events (one retransmission in 900
probes is not a 1.1e-3 drop rate). Counts are of clean probes (see :mod:`.model`).
"""

from __future__ import annotations

from collections.abc import Collection

from pingmesh.core.analysis.model import PAIR_SEPARATOR, DetectorConfig, EntitySla, Finding
from pingmesh.core.topology import Topology

KINDS = ("high_latency", "packet_loss")


def _judged(sla: EntitySla, kind: str, config: DetectorConfig) -> bool:
    if kind == "high_latency":
        return sla.counts.successes >= config.min_latency_probes and sla.p99_us is not None
    return sla.counts.drop_basis > 0


def _breaches(sla: EntitySla, kind: str, config: DetectorConfig) -> bool:
    limits = config.thresholds_for(sla.scope)
    if kind == "high_latency":
        return _judged(sla, kind, config) and (sla.p99_us or 0.0) > limits.p99_us
    rate = sla.counts.drop_rate
    return (
        sla.counts.drop_events >= config.min_drop_events
        and rate is not None
        and rate > limits.drop_rate
    )


def _finding(sla: EntitySla, kind: str, config: DetectorConfig, breaching: list[str]) -> Finding:
    limits = config.thresholds_for(sla.scope)
    if kind == "high_latency":
        summary = (
            f"{sla.scope} {sla.entity}: P99 {sla.p99_us:.0f} µs over the {limits.p99_us:.0f} µs "
            "threshold"
        )
        evidence: dict[str, object] = {
            "p99_us": sla.p99_us,
            "threshold_us": limits.p99_us,
            "successes": sla.counts.successes,
        }
    else:
        summary = (
            f"{sla.scope} {sla.entity}: drop rate {sla.counts.drop_rate:.2e} over the "
            f"{limits.drop_rate:.0e} threshold"
        )
        evidence = {
            "drop_rate": sla.counts.drop_rate,
            "threshold": limits.drop_rate,
            "drop_events": sla.counts.drop_events,
            "drop_basis": sla.counts.drop_basis,
        }
    if breaching:
        evidence["children_breaching"] = breaching[: config.max_evidence_items]
    return Finding(
        kind=kind, scope=sla.scope, entity=sla.entity, summary=summary, evidence=evidence
    )


def detect_sla_breaches(
    topology: Topology, sla: Collection[EntitySla], *, config: DetectorConfig
) -> list[Finding]:
    """``high_latency`` and ``packet_loss`` findings (see the module docstring)."""
    rows: dict[tuple[str, str], EntitySla] = {(s.scope, s.entity): s for s in sla}
    children: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for server in topology.servers:
        for parent, child in (
            (("dc", server.dc), ("podset", server.podset)),
            (("podset", server.podset), ("tor", server.tor)),
            (("tor", server.tor), ("server", server.name)),
        ):
            kids = children.setdefault(parent, [])
            if child not in kids:
                kids.append(child)
    findings: list[Finding] = []
    for kind in KINDS:

        def walk(node: tuple[str, str], kind: str = kind) -> list[Finding]:
            row = rows.get(node)
            kids = [k for k in sorted(children.get(node, [])) if k in rows]
            judged = [k for k in kids if _judged(rows[k], kind, config)]
            breaching = [k for k in judged if _breaches(rows[k], kind, config)]
            breached = row is not None and _breaches(row, kind, config)
            if breached and (not judged or 2 * len(breaching) > len(judged)):
                assert row is not None
                return [_finding(row, kind, config, [k[1] for k in breaching])]
            below = [f for k in kids for f in walk(k)]
            if not below and row is not None and _breaches(row, kind, config):
                return [_finding(row, kind, config, [])]
            return below

        for dc in topology.dcs():
            findings.extend(walk(("dc", dc)))
        for (scope, _entity), row in sorted(rows.items()):
            between_dcs = scope == "dc_pair" and len(set(row.entity.split(PAIR_SEPARATOR, 1))) == 2
            if (scope == "service" or between_dcs) and _breaches(row, kind, config):
                findings.append(_finding(row, kind, config, []))
    return findings
