"""Packet black holes: pairs that fail deterministically, and the ToR (or tier) behind them.

Theory of operation
-------------------
PM §5.1 (reference §2.5.1). A black hole drops the packets that match some pattern, every
time: *type 1* keys on (src IP, dst IP) — A cannot reach B while A reaches C and D, and all
four are healthy; *type 2* keys on the 5-tuple — A reaches B:Y from source port X but never
from port Z (an ECMP fault). Both were TCAM faults fixed by reloading the switch.

1. **Symptom.** The paper does not define it; our reading (reference §2.5.1): a pair shows
   type 1 when every clean probe of it in the window timed out (at least
   ``black_hole_min_probes``) while its source succeeds towards others and others succeed
   towards its destination (both ends healthy; the host detector has already removed the
   hosts that fail from or to everybody). It shows type 2 when, over the horizon, its probes
   split by source port into ports that *always* fail (at least two such ports, each used at
   least twice) and ports that always succeed, with no port that did both: random loss does
   not look like that, a hash-keyed fault does. This needs the source ports to repeat, which
   the agents' rotating source-port sets (UDP) make them do. TCP probes take a fresh port
   each, but the kernel retries a lost SYN on the *same* 5-tuple (Linux: at 1 s and 3 s
   within the 3.5 s timeout), so a TCP timeout is one flow failing every try. A pair shows
   type 2 in the window, too, when at least ``TYPE2_MIN_FAILING_PORTS`` of its TCP probes
   timed out after retrying (on as many source ports) while it had successes and *not one*
   retransmission or lost UDP/ICMP probe: under random loss of a share ``q`` of packets a
   probe with ``k`` tries times out with probability ``q^k`` and succeeds after a retry with
   ``q - q^k``, so each timeout should come with ``q^(1-k) - 1`` retried successes (3 for
   ``q`` = 0.5, ``k`` = 3); flows that fail every try while the others never lose a packet
   are keyed on the 5-tuple. How sure: the log-likelihood ratio (G) of "each flow lives or
   dies" (timeouts at rate ``t/(t+s)``) against the best random loss (``q = kt/(kt+s)``,
   which also owes the missing retried successes) must reach ``-2 ln TYPE2_FLOW_ALPHA``; a
   few heavy-loss pairs that pass by chance do not make a ToR candidate, which takes half
   its servers at once (step 2). A host that has just gone away looks the same for a
   window — its pairs succeeded, then every probe times out — but on *every* pair towards
   it (or from it) at once, up to the window's end, which no 5-tuple-keyed fault does: a
   server whose every peer (at least ``host_min_peers``) saw its newest probes time out is
   left to the host detector, which calls it as soon as the window holds only failures.
2. **ToR score** = the share of a ToR's servers that have a symptomatic pair (as source or
   destination). ToRs scoring at least ``tor_score_threshold`` (with at least two such
   servers, or all of a one-server ToR) are *candidates*.
3. **Escalation.** If every ToR of a podset (two or more) is a candidate, the fault is
   probably in the Leaf or Spine layer above them (PM §5.1 step 3): one incident for the
   tier (``leaf@podset``), to be handled by engineers rather than by reloading ToRs.
4. **Explaining away.** A faulty ToR makes its *partners* look symptomatic too (with
   Pingmesh's i-to-i inter-ToR graph, server *i* of every other ToR probes server *i* of the
   faulty one). So candidates are taken greedily, tiers first, each time the one with the
   highest share of symptomatic pairs among the pairs it carries, and a candidate's score is
   recomputed over the pairs not yet explained before it is taken: a partner ToR whose pairs
   the faulty ToR explains drops below the threshold. A podset is not escalated when one of
   its ToRs alone carries ``SINGLE_TOR_SHARE`` of its symptomatic pairs.
5. Symptomatic pairs that no ToR or tier explains are reported one by one (scope ``pair``,
   severity warning) up to ``max_pair_incidents``, or else as one incident per DC.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from pingmesh.core.analysis.model import (
    DetectorConfig,
    Finding,
    PairFacts,
    PortUse,
    WindowFacts,
    pair_entity,
    tier_entity,
    tuple_evidence,
)
from pingmesh.core.topology import Topology

SINGLE_TOR_SHARE = 0.8
"""A podset whose best ToR alone carries this share of its symptomatic pairs is not escalated."""

TYPE2_MIN_FAILING_PORTS = 2
TYPE2_MIN_USES = 2
TYPE2_FLOW_ALPHA = 0.01


def retried_timeout_ports(pair: PairFacts) -> tuple[int, ...] | None:
    """The source ports of a pair's TCP probes that failed every try, when the window shows
    the flow-keyed pattern (see the module docstring: timeouts after retries on at least
    ``TYPE2_MIN_FAILING_PORTS`` ports, successes, and no retransmission or loss at all);
    else None."""
    counts = pair.counts
    if (
        counts.timeouts < TYPE2_MIN_FAILING_PORTS
        or counts.successes < 1
        or counts.retransmitted
        or counts.drop_events
    ):
        return None
    retried = [
        s
        for s in pair.samples
        if s.outcome == "timeout" and s.retransmits >= 1 and s.src_port > 0 and s.dst_port > 0
    ]
    ports = {s.src_port for s in retried}
    if len(ports) < TYPE2_MIN_FAILING_PORTS:
        return None
    tries = 1 + max(s.retransmits for s in retried)
    if flow_keyed_g(counts.timeouts, counts.successes, tries) < -2.0 * math.log(TYPE2_FLOW_ALPHA):
        return None
    return tuple(sorted(ports))


def flow_keyed_g(timeouts: int, successes: int, tries: int) -> float:
    """G statistic of "each flow lives or dies" against random loss of each try, for
    ``timeouts`` probes that failed ``tries`` tries and ``successes`` that needed one (no
    retried success at all; module docstring)."""
    t, s = timeouts, successes
    if t <= 0 or s <= 0 or tries < 2:
        return 0.0
    dead = t / (t + s)
    flows = t * math.log(dead) + s * math.log(1 - dead)
    q = tries * t / (tries * t + s)
    packets = tries * t * math.log(q) + s * math.log(1 - q)
    return max(2.0 * (flows - packets), 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Symptom:
    """A black-holed pair: ``kind`` 1 (the pair) or 2 (some source ports of it)."""

    src: str
    dst: str
    kind: int
    probes: int
    failing_ports: tuple[int, ...] = ()
    pair: PairFacts | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackHoleVerdict:
    """The findings, every symptomatic pair (for tracing), the ToRs blamed (alone or as a
    tier), and every pair they explain: the symptomatic ones and any other pair with a
    timeout or a retransmission through a blamed ToR (a type-2 hole kills few enough flows
    of some pairs that they do not show the pattern on their own; their losses are still
    its doing)."""

    findings: tuple[Finding, ...]
    symptoms: tuple[Symptom, ...]
    explained: frozenset[tuple[str, str]] = frozenset()
    blamed_tors: frozenset[str] = frozenset()


def type2_ports(ports: Collection[PortUse]) -> tuple[int, ...] | None:
    """The deterministically failing source ports of a pair, or None when its port pattern is
    not a type-2 black hole (see the module docstring)."""
    failing = [u for u in ports if u.timeouts == u.probes]
    good = [u for u in ports if u.timeouts == 0]
    mixed = [u for u in ports if 0 < u.timeouts < u.probes]
    repeated = [u for u in failing if u.probes >= TYPE2_MIN_USES]
    if mixed or not good or len(repeated) < TYPE2_MIN_FAILING_PORTS:
        return None
    return tuple(sorted(u.src_port for u in failing))


def find_symptoms(
    topology: Topology,
    facts: WindowFacts,
    *,
    excluded: Collection[str],
    config: DetectorConfig,
    ports: Mapping[tuple[str, str], Collection[PortUse]] | None = None,
) -> list[Symptom]:
    """The symptomatic pairs of the window (type 1) and of the port horizon (type 2)."""

    def healthy(src: str, dst: str) -> bool:
        if src in excluded or dst in excluded:
            return False
        if topology.server(src) is None or topology.server(dst) is None:
            return False
        s, d = facts.servers.get(src), facts.servers.get(dst)
        return s is not None and d is not None and s.sent.successes > 0 and d.received.successes > 0

    found: dict[tuple[str, str], Symptom] = {}
    for pair in facts.pairs:
        enough = pair.counts.probes >= config.black_hole_min_probes
        if pair.black and enough and healthy(pair.src, pair.dst):
            found[pair.key] = Symptom(
                src=pair.src, dst=pair.dst, kind=1, probes=pair.counts.probes, pair=pair
            )
    by_key = {p.key: p for p in facts.pairs}
    retried_found: dict[tuple[str, str], Symptom] = {}
    for pair in facts.pairs:
        if pair.key in found or not healthy(pair.src, pair.dst):
            continue
        retried = retried_timeout_ports(pair)
        if retried is not None:
            retried_found[pair.key] = Symptom(
                src=pair.src,
                dst=pair.dst,
                kind=2,
                probes=pair.counts.probes,
                failing_ports=retried,
                pair=pair,
            )
    going = _hosts_going_away(facts, config)
    found.update(
        {k: v for k, v in retried_found.items() if k[0] not in going and k[1] not in going}
    )
    for key, uses in sorted((ports or {}).items()):
        if key in found or not healthy(*key):
            continue
        failing = type2_ports(uses)
        if failing is not None:
            found[key] = Symptom(
                src=key[0],
                dst=key[1],
                kind=2,
                probes=sum(u.probes for u in uses),
                failing_ports=failing,
                pair=by_key.get(key),
            )
    return [found[k] for k in sorted(found)]


def _hosts_going_away(facts: WindowFacts, config: DetectorConfig) -> set[str]:
    """Servers whose every peer in one direction (at least ``host_min_peers``) saw the pair's
    newest probes time out, up to the end of the window: a host that has just gone away
    (module docstring)."""
    inbound: dict[str, int] = {}
    outbound: dict[str, int] = {}
    length_s = facts.end_s - facts.start_s
    for pair in facts.pairs:
        failed = [s.time_s for s in pair.samples if s.outcome == "timeout"]
        if not pair.counts.timeouts or not failed:
            continue
        step_s = length_s / max(pair.counts.probes, 1)  # the pair's probe interval
        if max(failed) >= facts.end_s - 2 * step_s:
            outbound[pair.src] = outbound.get(pair.src, 0) + 1
            inbound[pair.dst] = inbound.get(pair.dst, 0) + 1
    going = set()
    for name, server in facts.servers.items():
        for count, peers in (
            (inbound.get(name, 0), server.peers_in),
            (outbound.get(name, 0), server.peers_out),
        ):
            if peers >= config.host_min_peers and count >= config.host_unreachable_share * peers:
                going.add(name)
    return going


@dataclass(slots=True)
class _Candidate:
    kind: str  # "tier" or "tor"
    name: str
    tors: tuple[str, ...]


def detect_black_holes(
    topology: Topology,
    facts: WindowFacts,
    *,
    excluded: Collection[str],
    config: DetectorConfig,
    ports: Mapping[tuple[str, str], Collection[PortUse]] | None = None,
) -> BlackHoleVerdict:
    """Black-hole findings of the window (see the module docstring)."""
    symptoms = find_symptoms(topology, facts, excluded=excluded, config=config, ports=ports)
    if not symptoms:
        return BlackHoleVerdict(findings=(), symptoms=())
    limit = config.max_evidence_items
    tor_of = {s.name: s.tor for s in topology.servers}
    # Pairs each ToR carries (each end counts once), from the window's server facts.
    carried: dict[str, int] = {}
    for name, server in facts.servers.items():
        tor = tor_of.get(name)
        if tor is not None:
            carried[tor] = carried.get(tor, 0) + server.peers_out + server.peers_in
    podset_tors: dict[str, list[str]] = {}
    for tor in topology.tors():
        podset_tors.setdefault(topology.tor_servers(tor)[0].podset, []).append(tor)

    def touching(pool: list[Symptom], tors: Collection[str]) -> list[Symptom]:
        return [s for s in pool if tor_of[s.src] in tors or tor_of[s.dst] in tors]

    def ends_in(pool: list[Symptom], tor: str) -> int:
        return sum((tor_of[s.src] == tor) + (tor_of[s.dst] == tor) for s in pool)

    def score(pool: list[Symptom], tor: str) -> tuple[float, int]:
        members = {s.name for s in topology.tor_servers(tor)}
        sick = {n for s in pool for n in (s.src, s.dst) if n in members}
        return len(sick) / len(members), len(sick)

    def candidate_tor(pool: list[Symptom], tor: str) -> bool:
        share, sick = score(pool, tor)
        size = len(topology.tor_servers(tor))
        return share >= config.tor_score_threshold and sick >= min(2, size)

    def pair_share(pool: list[Symptom], tors: Collection[str]) -> float:
        total = sum(carried.get(t, 0) for t in tors)
        return sum(ends_in(pool, t) for t in tors) / total if total else 0.0

    remaining = list(symptoms)
    chosen: list[tuple[_Candidate, list[Symptom]]] = []
    taken_tors: set[str] = set()
    while remaining:
        options: list[tuple[int, float, str, _Candidate]] = []
        sick_tors = {
            t for t in topology.tors() if t not in taken_tors and candidate_tor(remaining, t)
        }
        for podset, tors in sorted(podset_tors.items()):
            if len(tors) < 2 or not all(t in sick_tors for t in tors):
                continue
            own = touching(remaining, tors)
            # One ToR — of this podset or any other — behind most of the podset's pairs is
            # that ToR's fault, not the tier's (a faulty ToR makes its partners look sick).
            best = max(len(touching(own, [t])) for t in sick_tors)
            if best >= SINGLE_TOR_SHARE * len(own):
                continue
            options.append(
                (
                    0,
                    -pair_share(remaining, tors),
                    podset,
                    _Candidate(kind="tier", name=podset, tors=tuple(tors)),
                )
            )
        for tor in sorted(sick_tors):
            options.append(
                (
                    1,
                    -pair_share(remaining, [tor]),
                    tor,
                    _Candidate(kind="tor", name=tor, tors=(tor,)),
                )
            )
        if not options:
            break
        best_option = min(options, key=lambda o: (o[0], o[1], o[2]))[3]
        own = touching(remaining, best_option.tors)
        chosen.append((best_option, own))
        taken_tors.update(best_option.tors)
        remaining = [s for s in remaining if s not in own]

    findings: list[Finding] = []
    for candidate, own in chosen:
        kinds = sorted({s.kind for s in own})
        pairs_ev = [
            {
                "src": s.src,
                "dst": s.dst,
                "type": s.kind,
                "probes": s.probes,
                **({"failing_ports": list(s.failing_ports[:limit])} if s.failing_ports else {}),
            }
            for s in own[:limit]
        ]
        tuples = tuple_evidence([s.pair for s in own if s.pair is not None], limit)
        if candidate.kind == "tor":
            share, sick = score(own, candidate.name)
            findings.append(
                Finding(
                    kind="black_hole",
                    scope="tor",
                    entity=candidate.name,
                    summary=f"ToR {candidate.name}: {sick} of "
                    f"{len(topology.tor_servers(candidate.name))} servers have black-holed "
                    f"pairs ({len(own)} pairs, type {'/'.join(map(str, kinds))}); reload it",
                    evidence={
                        "score": round(share, 4),
                        "servers_with_symptom": sick,
                        "pair_share": round(pair_share(own, candidate.tors), 6),
                        "types": kinds,
                        "action": "reload the ToR (PM §5.1)",
                        "pairs": pairs_ev,
                        "five_tuples": tuples,
                    },
                )
            )
        else:
            findings.append(
                Finding(
                    kind="black_hole",
                    scope="tier",
                    entity=tier_entity("leaf", candidate.name),
                    summary=f"podset {candidate.name}: every ToR ({len(candidate.tors)}) has "
                    f"black-holed pairs ({len(own)} pairs): the Leaf or Spine layer above it",
                    evidence={
                        "tier": "leaf_or_spine",
                        "podset": candidate.name,
                        "tors": list(candidate.tors),
                        "types": kinds,
                        "action": "notify network engineers (PM §5.1)",
                        "pairs": pairs_ev,
                        "five_tuples": tuples,
                    },
                )
            )
    if remaining and len(remaining) <= config.max_pair_incidents:
        for s in remaining:
            findings.append(
                Finding(
                    kind="black_hole",
                    scope="pair",
                    entity=pair_entity(s.src, s.dst),
                    severity="warning",
                    summary=f"{s.src} -> {s.dst}: every probe "
                    + (
                        "fails"
                        if s.kind == 1
                        else f"from source ports {list(s.failing_ports[:5])} fails"
                    )
                    + " while both ends are healthy (black hole, type "
                    f"{s.kind})",
                    evidence={
                        "type": s.kind,
                        "probes": s.probes,
                        "failing_ports": list(s.failing_ports[:limit]),
                        "pairs": [{"src": s.src, "dst": s.dst}],
                        "five_tuples": tuple_evidence([s.pair] if s.pair else [], limit),
                    },
                )
            )
    elif remaining:
        dc_of = {s.name: s.dc for s in topology.servers}
        by_dc: dict[str, list[Symptom]] = {}
        for s in remaining:
            by_dc.setdefault(dc_of[s.src], []).append(s)
        for dc, pool in sorted(by_dc.items()):
            findings.append(
                Finding(
                    kind="black_hole",
                    scope="dc",
                    entity=dc,
                    summary=f"DC {dc}: {len(pool)} black-holed pairs that no ToR or tier explains",
                    evidence={
                        "pairs": [
                            {"src": s.src, "dst": s.dst, "type": s.kind} for s in pool[:limit]
                        ],
                        "count": len(pool),
                        "five_tuples": tuple_evidence(
                            [s.pair for s in pool if s.pair is not None], limit
                        ),
                    },
                )
            )
    blamed_tors = frozenset(t for candidate, _ in chosen for t in candidate.tors)
    explained = {(s.src, s.dst) for s in symptoms} | {
        p.key for p in facts.pairs if p.src_tor in blamed_tors or p.dst_tor in blamed_tors
    }
    return BlackHoleVerdict(
        findings=tuple(findings),
        symptoms=tuple(symptoms),
        explained=frozenset(explained),
        blamed_tors=blamed_tors,
    )
