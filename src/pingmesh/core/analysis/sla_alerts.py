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
probes is not a 1.1e-3 drop rate). A P99 that retransmissions alone can make — they are at
least ``1 - 0.99`` of the successes, and each waited a retransmission timeout — is a drop
rate in disguise and needs its evidence too: three retried SYNs in 200 probes are not a
1-second P99. Counts are of clean probes (see :mod:`.model`).

A threshold says *that* something is wrong; the other detectors say *what*. The probes of the
pairs they explain (a black hole and its edges, a host that is down, the lossy pairs behind a
silent drop — ``explained``) are taken out of each entity's counts before it is judged (from
the source's server, ToR, podset and DC, and the DC pair), so that a black-holed ToR is one
``black_hole`` incident and not also ``packet_loss`` of its DC. The P99 cannot be recomputed
without them, so it is not judged when their retransmitted probes alone make up
``1 - 0.99`` of the entity's successes: each waited a retransmission timeout (≥ 200 ms), so
they alone put the P99 over any threshold, and it says nothing about the rest. Services are
judged on all their probes (a service owner wants to hear about their service either way).
"""

from __future__ import annotations

from collections.abc import Collection

from pingmesh.core.analysis.model import (
    PAIR_SEPARATOR,
    ZERO,
    Counts,
    DetectorConfig,
    EntitySla,
    Finding,
    PairFacts,
    pair_entity,
)
from pingmesh.core.topology import Topology

KINDS = ("high_latency", "packet_loss")
P99_TAIL = 0.01


def _judged(sla: EntitySla, kind: str, config: DetectorConfig) -> bool:
    counts = sla.counts
    if kind == "high_latency":
        retried = counts.retransmitted
        return (
            counts.successes >= config.min_latency_probes
            and sla.p99_us is not None
            and not (retried >= P99_TAIL * counts.successes and retried < config.min_drop_events)
        )
    return counts.drop_basis > 0


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


def without_explained(
    sla: Collection[EntitySla], explained: Collection[PairFacts]
) -> list[EntitySla]:
    """``sla`` with the probes of the ``explained`` pairs taken out (module docstring)."""
    if not explained:
        return list(sla)
    taken: dict[tuple[str, str], Counts] = {}
    for pair in explained:
        for key in (
            ("server", pair.src),
            ("tor", pair.src_tor),
            ("podset", pair.src_podset),
            ("dc", pair.src_dc),
            ("dc_pair", pair_entity(pair.src_dc, pair.dst_dc)),
        ):
            taken[key] = taken.get(key, ZERO) + pair.counts
    out = []
    for row in sla:
        gone = taken.get((row.scope, row.entity))
        if gone is None:
            out.append(row)
            continue
        p99 = row.p99_us
        if gone.retransmitted and gone.retransmitted >= P99_TAIL * row.counts.successes:
            p99 = None  # their retransmission timeouts alone are the P99
        out.append(
            EntitySla(
                scope=row.scope, entity=row.entity, counts=row.counts.without(gone), p99_us=p99
            )
        )
    return out


def detect_sla_breaches(
    topology: Topology,
    sla: Collection[EntitySla],
    *,
    config: DetectorConfig,
    explained: Collection[PairFacts] = (),
) -> list[Finding]:
    """``high_latency`` and ``packet_loss`` findings (see the module docstring);
    ``explained``: the pairs other detectors explain."""
    rows: dict[tuple[str, str], EntitySla] = {
        (s.scope, s.entity): s for s in without_explained(sla, explained)
    }
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
