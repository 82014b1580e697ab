"""Silent random drops: drop rates above baseline, and the part of the fabric that explains them.

Theory of operation
-------------------
PM §5.2 (reference §2.5.2): a switch that drops a small share of packets at random (a bad
fabric module, a CRC-corrupting line card) shows nothing in its counters; Pingmesh saw the drop
rate of a DC rise from 1e-4–1e-5 to ~2e-3 and read the *pattern* of the pod-pair heatmap to
name the tier (PM §6.3, Fig. 8: a red cross the width of a podset is its Leaf layer; red
everywhere but green squares on the diagonal is the Spine layer; reference §6.1 item 13a).

We read the same pattern from counts rather than colours, so that it works at any drop rate
and any fleet size. Each part of a three-tier Clos carries a known set of ToR-pair cells:

==============  ==========================================================================
component       the cells (src ToR → dst ToR) whose probes cross it
==============  ==========================================================================
ToR ``t``       every cell with ``t`` at one end (including ``t → t``)
``leaf@p``      cells between two different ToRs with one end in podset ``p``
``spine@d``     cells between two different podsets with one end in DC ``d``
``core@fabric``  cells between two DCs
==============  ==========================================================================

1. **What is already explained goes.** Pairs with an excluded host at an end (down,
   unreachable; reference §6.1 item 12) and pairs that are black holes are taken out of the
   cells and of the servers' own counts.
2. **Suspects.** Every component, and every *host*, is a suspect when its own drop rate is
   :func:`~.significance.elevated` above the baseline (at ``significance``, 1e-6: this is what
   keeps false alarms out) and splitting its probes from all others is significant (G ≥
   −2 ln α with α = ``localization_significance``, 1e-3, the χ²₁ tail bound: this only
   decides *where*, so a few events suffice once the rate is proven high). A host's probes
   are those it sent and received; it is a suspect only while its ToR-mates (without their
   probes to and from it) are not elevated — otherwise it is its ToR. A host that drops
   (its NIC, its stack, a starved responder whose accept queue overflows) is ``host_drops``,
   not the network.
3. **The best split wins.** The suspect with the largest G separates the drop events from the
   rest best: the faulty part's own probes, no bigger or smaller set, give the cleanest
   split (ties go to the smaller set).
4. **Explaining away.** Its probes are taken out and steps 2–3 repeat, so that two faults at
   once are both found, and the first no longer makes its neighbours look guilty — a host
   that drops makes its partners' pairs look bad, a spine makes every server behind it look
   bad, and both are explained before anyone else is blamed. (Taking a host out removes its
   pairs with drop events exactly; the basis of its clean pairs stays in the cells, which
   only biases against blaming the network.)

The tier says *where*; the device is named by voting over traceroutes of the failing
5-tuples (:mod:`.voting`), which is why every finding carries its worst pairs and 5-tuples.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from pingmesh.core.analysis.model import (
    ZERO,
    CellFacts,
    Counts,
    DetectorConfig,
    Finding,
    PairFacts,
    ServerFacts,
    pair_evidence,
    tier_entity,
    tuple_evidence,
)
from pingmesh.core.analysis.significance import elevated, g_statistic
from pingmesh.core.topology import Topology

MAX_COMPONENTS = 8
"""At most this many components per evaluation (explaining away stops there)."""


_Place = tuple[
    str, str, str, str, str, str
]  # src_tor, dst_tor, src_podset, dst_podset, src_dc, dst_dc


@dataclass(frozen=True, slots=True, kw_only=True)
class Component:
    """A part of the fabric: a ToR (``tier`` ``tor``), the leaves of a podset (``leaf``), the
    spines of a DC (``spine``) or the core; ``where`` names the ToR, podset or DC."""

    tier: str
    where: str

    @property
    def scope(self) -> str:
        """The incident scope: ``tor`` for a ToR, ``tier`` for the others."""
        return "tor" if self.tier == "tor" else "tier"

    @property
    def entity(self) -> str:
        """The incident entity: the ToR's name, or ``leaf@ps1``, ``spine@dc1``, ``core@fabric``."""
        return self.where if self.tier == "tor" else tier_entity(self.tier, self.where)

    def crosses(self, c: _Place) -> bool:
        """Whether the probes of cell ``c`` cross this component (module docstring table)."""
        src_tor, dst_tor, src_podset, dst_podset, src_dc, dst_dc = c
        if self.tier == "tor":
            return self.where in (src_tor, dst_tor)
        if self.tier == "leaf":
            return src_tor != dst_tor and self.where in (src_podset, dst_podset)
        if self.tier == "spine":
            return src_podset != dst_podset and self.where in (src_dc, dst_dc)
        return src_dc != dst_dc


def components(topology: Topology) -> list[Component]:
    """Every ToR, leaf layer, spine layer and the core of ``topology``."""
    out = [Component(tier="tor", where=t) for t in topology.tors()]
    out += [Component(tier="leaf", where=p) for p in topology.podsets()]
    out += [Component(tier="spine", where=d) for d in topology.dcs()]
    if len(topology.dcs()) > 1:
        out.append(Component(tier="core", where="fabric"))
    return out


class _ComponentSums:
    """Drop events and basis of every component's cells, from one pass over the cells.

    A component's cells are "one end is X" (minus "both ends are X", counted once), at the ToR,
    podset (between different ToRs) or DC (between different podsets) level, or "between
    DCs": so each component's sum is a few dictionary lookups, not a scan of every cell.
    """

    def __init__(self, table: Mapping[_Place, Counts]) -> None:
        # A cell counts once for each distinct end: both of its ToRs (podsets, DCs) are
        # crossed by its probes, and a cell inside one is counted once.
        one: dict[tuple[str, str], list[int]] = {}
        core = [0, 0, 0]

        def add(key: tuple[str, str], events: int, basis: int) -> None:
            slot = one.get(key)
            if slot is None:
                one[key] = [events, basis, 1]
            else:
                slot[0] += events
                slot[1] += basis
                slot[2] += 1

        for (st, dt, sp, dp, sd, dd), counts in table.items():
            events, basis = counts.drop_events, counts.drop_basis
            add(("tor", st), events, basis)
            if st != dt:
                add(("tor", dt), events, basis)
                add(("leaf", sp), events, basis)
                if dp != sp:
                    add(("leaf", dp), events, basis)
                    add(("spine", sd), events, basis)
                    if dd != sd:
                        add(("spine", dd), events, basis)
                        core[0] += events
                        core[1] += basis
                        core[2] += 1
        self.one = one
        self.core = core

    def inside(self, component: Component) -> tuple[int, int, int]:
        """(drop events, drop basis, cells) of the component."""
        if component.tier == "core":
            events, basis, cells = self.core
            return events, basis, cells
        events, basis, cells = self.one.get((component.tier, component.where), (0, 0, 0))
        return events, basis, cells


def _place(c: CellFacts | PairFacts) -> _Place:
    return (c.src_tor, c.dst_tor, c.src_podset, c.dst_podset, c.src_dc, c.dst_dc)


@dataclass(frozen=True, slots=True, kw_only=True)
class SilentDropVerdict:
    """Findings, and for each the pairs whose 5-tuples are worth tracing (worst first) and the
    component it blames."""

    findings: tuple[Finding, ...]
    suspects: Mapping[tuple[str, str, str], tuple[PairFacts, ...]]
    components: Mapping[tuple[str, str, str], Component] = field(default_factory=dict)

    def overlaps(self, component: Component, cells: Collection[CellFacts]) -> bool:
        """True when ``component`` shares a cell of ``cells`` with one of the findings'."""
        places = [_place(c) for c in cells]
        return any(
            component.crosses(p) and mine.crosses(p)
            for mine in self.components.values()
            for p in places
        )


def _total(cells: Mapping[_Place, Counts]) -> Counts:
    """Drop events and basis of all the cells (the other counters are not needed here)."""
    events = basis = 0
    for counts in cells.values():
        events += counts.drop_events
        basis += counts.drop_basis
    return Counts(drop_events=events, drop_basis=basis)


def detect_silent_drops(
    topology: Topology,
    cells: Collection[CellFacts],
    *,
    servers: Mapping[str, ServerFacts],
    pairs: Collection[PairFacts],
    excluded: Collection[str],
    config: DetectorConfig,
    horizon_s: float,
    explained: Collection[tuple[str, str]] = (),
) -> SilentDropVerdict:
    """Silent-drop findings over one horizon (see the module docstring).

    ``explained``: pairs another detector already explains (black holes): their probes are
    taken out like an excluded host's.
    """
    limit = config.max_evidence_items
    baseline, factor, alpha = (
        config.baseline_drop_rate,
        config.silent_drop_factor,
        config.significance,
    )
    g_min = -2.0 * math.log(config.localization_significance)
    table: dict[_Place, Counts] = {}
    for cell in cells:
        place = _place(cell)
        known = table.get(place)
        table[place] = cell.counts if known is None else known + cell.counts
    own: dict[str, Counts] = {
        name: server.sent + server.received
        for name, server in servers.items()
        if name not in excluded and topology.server(name) is not None
    }

    def take_out(pair: PairFacts) -> None:
        """Take a pair's probes out of its cell and out of its ends' own counts."""
        key = _place(pair)
        if key in table:
            table[key] = table[key].without(pair.counts)
        for end in (pair.src, pair.dst):
            if end in own:
                own[end] = own[end].without(pair.counts)

    gone = set(explained)
    live_pairs: list[PairFacts] = []
    for pair in pairs:
        if pair.src in excluded or pair.dst in excluded or pair.key in gone:
            take_out(pair)
        else:
            live_pairs.append(pair)

    by_server: dict[str, list[PairFacts]] = {}
    for pair in live_pairs:
        by_server.setdefault(pair.src, []).append(pair)
        by_server.setdefault(pair.dst, []).append(pair)

    def mates_of(name: str, tor_sums: Mapping[str, Counts]) -> Counts:
        tor = servers[name].tor
        total = tor_sums[tor].without(own[name])
        # The mates' probes to and from this server are its evidence, not theirs.
        for pair in by_server.get(name, ()):
            if id(pair) not in live:
                continue
            other = pair.dst if pair.src == name else pair.src
            if other in own and servers[other].tor == tor:
                total = total.without(pair.counts)
        return total

    def is_elevated(counts: Counts) -> bool:
        return elevated(
            counts.drop_events, counts.drop_basis, baseline=baseline, factor=factor, alpha=alpha
        )

    findings: list[Finding] = []
    suspects: dict[tuple[str, str, str], tuple[PairFacts, ...]] = {}
    blamed: dict[tuple[str, str, str], Component] = {}
    candidates = components(topology)
    for _ in range(MAX_COMPONENTS):
        total = _total(table)
        if total.drop_events == 0:
            break
        # (−G, size, entity, component or server name, inside counts)
        best: tuple[float, int, str, Component | str, Counts] | None = None
        sums = _ComponentSums(table)
        for component in candidates:
            events, basis, size = sums.inside(component)
            if not elevated(events, basis, baseline=baseline, factor=factor, alpha=alpha):
                continue
            g = g_statistic(events, basis, total.drop_events - events, total.drop_basis - basis)
            key = (-g, size, component.entity)
            if g >= g_min and (best is None or key < best[:3]):
                inside = Counts(drop_events=events, drop_basis=basis)
                best = (-g, size, component.entity, component, inside)
        tor_sums: dict[str, Counts] = {}
        for name, mine in own.items():
            tor = servers[name].tor
            tor_sums[tor] = tor_sums.get(tor, ZERO) + mine
        live = {id(p) for p in live_pairs}
        for name, mine in own.items():
            # A host is a suspect only if its ToR-mates are not: otherwise it is the ToR.
            if not is_elevated(mine) or is_elevated(mates_of(name, tor_sums)):
                continue
            g = g_statistic(
                mine.drop_events,
                mine.drop_basis,
                max(total.drop_events - mine.drop_events, 0),
                max(total.drop_basis - mine.drop_basis, 0),
            )
            key = (-g, 0, name)
            if g >= g_min and (best is None or key < best[:3]):
                best = (-g, 0, name, name, mine)
        if best is None:
            break
        neg_g, size, _, chosen, inside = best
        if isinstance(chosen, str):
            theirs = [p for p in live_pairs if chosen in (p.src, p.dst)]
            theirs.sort(key=lambda p: (-p.counts.drop_events, p.src, p.dst))
            mates = mates_of(chosen, tor_sums)
            tor = servers[chosen].tor
            finding = Finding(
                kind="host_drops",
                scope="server",
                entity=chosen,
                severity="warning",
                summary=f"{chosen}: drop rate {inside.drop_rate:.2e} while the other servers of "
                f"ToR {tor} see {mates.drop_rate or 0:.2e}: the host drops, not the network",
                evidence={
                    "drop_rate": inside.drop_rate,
                    "drop_events": inside.drop_events,
                    "drop_basis": inside.drop_basis,
                    "tor_mates_drop_rate": mates.drop_rate,
                    "g": round(-neg_g, 3),
                    "horizon_s": horizon_s,
                    "pairs": pair_evidence(theirs, limit),
                },
            )
            for pair in theirs:
                take_out(pair)
            own.pop(chosen, None)
        else:
            candidates = [c for c in candidates if c is not chosen]
            theirs = [p for p in live_pairs if chosen.crosses(_place(p)) and p.counts.drop_events]
            theirs.sort(key=lambda p: (-p.counts.drop_events, p.src, p.dst))
            finding = Finding(
                kind="silent_drop",
                scope=chosen.scope,
                entity=chosen.entity,
                summary=f"{chosen.entity}: drop rate {inside.drop_rate:.2e} over {size} ToR "
                f"pairs in {horizon_s:.0f} s, baseline {baseline:.0e} (silent drop, "
                f"{chosen.tier} tier)",
                evidence={
                    "tier": chosen.tier,
                    "drop_rate": inside.drop_rate,
                    "drop_events": inside.drop_events,
                    "drop_basis": inside.drop_basis,
                    "baseline": baseline,
                    "g": round(-neg_g, 3),
                    "cells": size,
                    "horizon_s": horizon_s,
                    "pairs": pair_evidence(theirs, limit),
                    "five_tuples": tuple_evidence(theirs, limit),
                },
            )
            suspects[finding.key] = tuple(theirs)
            blamed[finding.key] = chosen
            crossing = [p for p in live_pairs if chosen.crosses(_place(p))]
            for pair in crossing:
                for end in (pair.src, pair.dst):
                    if end in own:
                        own[end] = own[end].without(pair.counts)
            for place in [p for p in table if chosen.crosses(p)]:
                del table[place]
            theirs = crossing
        findings.append(finding)
        dropped = {id(p) for p in theirs}
        live_pairs = [p for p in live_pairs if id(p) not in dropped]
    return SilentDropVerdict(findings=tuple(findings), suspects=suspects, components=blamed)
