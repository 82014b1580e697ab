"""Host or network? Decided first, so that a host's trouble is never blamed on the fabric.

Theory of operation
-------------------
Reference §6.1 item 12 (R-Pingmesh §4, ByteTracker §3): before looking for a faulty switch,
take out what the hosts explain.

- **host_down**: the server's agent has stopped reporting (no upload for
  ``host_down_after_s``; R-Pingmesh uses 20 s). Probes towards it fail because it is gone.
- **host_unreachable**: a target that fails from (nearly) every source at once — at least
  ``host_min_peers`` sources probed it and a share ``host_unreachable_share`` of them saw
  every probe fail — is a host problem (its NIC, its stack, its responder), not a network
  one: three independent ECMP paths failing together is "almost impossible" (ByteTracker's
  argument). The same rule on the source side catches a server that can reach nobody.
- Pingmesh's **white cross** (PM §6.3, Fig. 8b): when every server under a ToR is down or
  unreachable the ToR (or its power) is gone — one ``tor_down`` incident instead of one per
  server; when every ToR of a podset is, one ``podset_down``.
- **host_noise**: a server whose probes (sent or received) were mostly flagged by the agents'
  host-noise signals (event-loop lag, responder dwell): the measurements of that host are
  not trustworthy. Those probes are already left out of every count the network detectors
  see; this finding (severity ``info``) says why the host's data look thin.

The servers found down or unreachable are *excluded*: every pair with one of them at an end
is left out of the black-hole and silent-drop detectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pingmesh.core.analysis.model import DetectorConfig, Finding, PairFacts, WindowFacts
from pingmesh.core.topology import Topology

NOISE_MIN_PROBES = 10
"""A server needs this many flagged probes before it is called noisy."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostVerdict:
    """What the host detector found, and the servers the network detectors must ignore."""

    findings: tuple[Finding, ...]
    excluded: frozenset[str]


def _pairs_of(pairs: tuple[PairFacts, ...], server: str, limit: int) -> list[dict[str, object]]:
    touching = [p for p in pairs if server in (p.src, p.dst)]
    touching.sort(key=lambda p: (-p.counts.failures, p.src, p.dst))
    return [
        {"src": p.src, "dst": p.dst, "probes": p.counts.probes, "failures": p.counts.failures}
        for p in touching[:limit]
    ]


def detect_hosts(
    topology: Topology,
    facts: WindowFacts,
    *,
    last_seen_s: Mapping[str, float],
    now_s: float,
    config: DetectorConfig,
) -> HostVerdict:
    """Host findings of the window ending at ``facts.end_s``, judged at ``now_s``.

    ``last_seen_s``: when each agent last uploaded results (agents never heard from are not
    judged: a fleet that is starting up is not down).
    """
    limit = config.max_evidence_items
    down: dict[str, Finding] = {}
    for server in topology.servers:
        seen = last_seen_s.get(server.name)
        if seen is not None and now_s - seen > config.host_down_after_s:
            silent = now_s - seen
            down[server.name] = Finding(
                kind="host_down",
                scope="server",
                entity=server.name,
                summary=f"{server.name}: its agent has not reported for {silent:.0f} s",
                evidence={
                    "last_seen_s": seen,
                    "silent_s": round(silent, 3),
                    "pairs": _pairs_of(facts.pairs, server.name, limit),
                },
            )
    unreachable: dict[str, Finding] = {}
    for name, seen_facts in sorted(facts.servers.items()):
        if name in down or topology.server(name) is None:
            continue
        inbound = (
            seen_facts.peers_in >= config.host_min_peers
            and seen_facts.dead_in >= config.host_unreachable_share * seen_facts.peers_in
        )
        outbound = (
            seen_facts.peers_out >= config.host_min_peers
            and seen_facts.dead_out >= config.host_unreachable_share * seen_facts.peers_out
        )
        if not (inbound or outbound):
            continue
        direction = "both" if inbound and outbound else "inbound" if inbound else "outbound"
        unreachable[name] = Finding(
            kind="host_unreachable",
            scope="server",
            entity=name,
            summary=(
                f"{name}: probes fail {'to' if inbound else 'from'} it from "
                f"{seen_facts.dead_in if inbound else seen_facts.dead_out} of "
                f"{seen_facts.peers_in if inbound else seen_facts.peers_out} peers at once: "
                "a host problem, not the network"
            ),
            evidence={
                "direction": direction,
                "dead_in": seen_facts.dead_in,
                "peers_in": seen_facts.peers_in,
                "dead_out": seen_facts.dead_out,
                "peers_out": seen_facts.peers_out,
                "pairs": _pairs_of(facts.pairs, name, limit),
            },
        )
    gone = set(down) | set(unreachable)
    findings: dict[str, Finding] = {**down, **unreachable}
    # The white cross: whole ToRs, then whole podsets.
    dead_tors: dict[str, list[str]] = {}
    for tor in topology.tors():
        members = [s.name for s in topology.tor_servers(tor)]
        if len(members) >= 2 and all(m in gone for m in members):
            dead_tors[tor] = members
    by_podset: dict[str, list[str]] = {}
    for tor in topology.tors():
        by_podset.setdefault(topology.tor_servers(tor)[0].podset, []).append(tor)
    covered: set[str] = set()
    grouped: list[Finding] = []
    for podset, tors in sorted(by_podset.items()):
        if len(tors) >= 2 and all(t in dead_tors for t in tors):
            members = sorted(m for t in tors for m in dead_tors[t])
            covered.update(members)
            grouped.append(
                Finding(
                    kind="podset_down",
                    scope="podset",
                    entity=podset,
                    summary=f"podset {podset}: all {len(members)} servers of its "
                    f"{len(tors)} ToRs are down or unreachable (power?)",
                    evidence={"tors": sorted(tors), "servers": members[:limit]},
                )
            )
    for tor, members in sorted(dead_tors.items()):
        if members[0] in covered:
            continue
        covered.update(members)
        grouped.append(
            Finding(
                kind="tor_down",
                scope="tor",
                entity=tor,
                summary=f"ToR {tor}: all {len(members)} servers under it are down or unreachable",
                evidence={"servers": members[:limit]},
            )
        )
    out = [f for name, f in sorted(findings.items()) if name not in covered]
    out.extend(grouped)
    for name, seen_facts in sorted(facts.servers.items()):
        noisy = seen_facts.noisy_out + seen_facts.noisy_in
        total = noisy + seen_facts.sent.probes + seen_facts.received.probes
        if name in gone or noisy < NOISE_MIN_PROBES or noisy < config.host_noise_share * total:
            continue
        out.append(
            Finding(
                kind="host_noise",
                scope="server",
                entity=name,
                severity="info",
                summary=f"{name}: {noisy} of {total} probes flagged by host-noise signals "
                "(event-loop lag, responder dwell); they do not count against the network",
                evidence={
                    "noisy_out": seen_facts.noisy_out,
                    "noisy_in": seen_facts.noisy_in,
                    "probes": total,
                },
            )
        )
    return HostVerdict(findings=tuple(out), excluded=frozenset(gone))
