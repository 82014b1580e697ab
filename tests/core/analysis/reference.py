"""A pure-Python reference of the window facts, straight from the definitions.

It serves twice: as the fast input of the detector tests (no DuckDB), and as the oracle that
the fast path's SQL must agree with (tests/analysis/test_fastpath.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from pingmesh.core.analysis.model import (
    CellFacts,
    Counts,
    EntitySla,
    PairFacts,
    PortUse,
    ProbeSample,
    ServerFacts,
    WindowFacts,
)
from pingmesh.core.topology import Topology

LAG_US = 50_000.0
DWELL_US = 50_000.0
DIRECT = ("udp", "icmp")


def noisy(row: Mapping[str, Any]) -> bool:
    return (
        (row.get("send_lag_us") or 0) > LAG_US
        or (row.get("recv_lag_us") or 0) > LAG_US
        or (row.get("dwell_us") or 0) > DWELL_US
    )


def counts_of(rows: Iterable[Mapping[str, Any]]) -> Counts:
    probes = successes = timeouts = rx = events = basis = 0
    for r in rows:
        ok = r["outcome"] == "ok"
        lost = r["outcome"] == "timeout"
        probes += 1
        successes += ok
        timeouts += lost
        rx += ok and r["retransmits"] > 0
        if r["kind"] in DIRECT:
            events += lost
            basis += ok or lost
        else:
            events += ok and r["retransmits"] > 0
            basis += ok
    return Counts(
        probes=probes,
        successes=successes,
        timeouts=timeouts,
        retransmitted=rx,
        drop_events=events,
        drop_basis=basis,
    )


def nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(Fraction(str(q)) * len(ordered))
    return ordered[max(1, rank) - 1]


def _in(rows: Iterable[Mapping[str, Any]], start_s: float, end_s: float) -> list[Mapping[str, Any]]:
    return [r for r in rows if start_s <= r["time"].timestamp() < end_s]


def window_facts(
    topology: Topology,
    rows: Iterable[Mapping[str, Any]],
    start_s: float,
    end_s: float,
    *,
    samples_per_pair: int = 3,
) -> WindowFacts:
    """The facts of ``[start_s, end_s)`` by definition."""
    chosen = _in(rows, start_s, end_s)
    clean = [r for r in chosen if not noisy(r)]
    by_pair: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    noisy_pair: dict[tuple[str, str], int] = {}
    for r in chosen:
        key = (r["agent"], r["dst"])
        if noisy(r):
            noisy_pair[key] = noisy_pair.get(key, 0) + 1
            by_pair.setdefault(key, [])
        else:
            by_pair.setdefault(key, []).append(r)
    servers: dict[str, dict[str, Any]] = {}
    for (src, dst), rs in by_pair.items():
        c = counts_of(rs)
        n = noisy_pair.get((src, dst), 0)
        for name, role in ((src, "out"), (dst, "in")):
            place = topology.server(name)
            if place is None:
                continue
            entry = servers.setdefault(
                name,
                {
                    "name": name,
                    "tor": place.tor,
                    "podset": place.podset,
                    "dc": place.dc,
                    "sent": Counts(),
                    "received": Counts(),
                    "peers_out": 0,
                    "dead_out": 0,
                    "peers_in": 0,
                    "dead_in": 0,
                    "noisy_out": 0,
                    "noisy_in": 0,
                },
            )
            entry["sent" if role == "out" else "received"] += c
            entry[f"noisy_{role}"] += n
            if c.probes:
                entry[f"peers_{role}"] += 1
                entry[f"dead_{role}"] += c.successes == 0
    pairs = []
    for (src, dst), rs in sorted(by_pair.items()):
        c = counts_of(rs)
        if not (c.timeouts or c.drop_events) or topology.server(dst) is None:
            continue
        bad = sorted(
            (r for r in rs if r["outcome"] == "timeout" or _event(r)),
            key=lambda r: r["time"],
            reverse=True,
        )[:samples_per_pair]
        r0 = rs[0]
        pairs.append(
            PairFacts(
                src=src,
                dst=dst,
                src_tor=r0["src_tor"],
                src_podset=r0["src_podset"],
                src_dc=r0["src_dc"],
                dst_tor=r0["dst_tor"],
                dst_podset=r0["dst_podset"],
                dst_dc=r0["dst_dc"],
                counts=c,
                noisy=noisy_pair.get((src, dst), 0),
                samples=tuple(
                    ProbeSample(
                        time_s=r["time"].timestamp(),
                        src_addr=r["src_addr"],
                        src_port=r["src_port"],
                        dst_addr=r["dst_addr"],
                        dst_port=r["dst_port"],
                        kind=r["kind"],
                        outcome=r["outcome"],
                        retransmits=r["retransmits"],
                    )
                    for r in bad
                ),
            )
        )
    by_cell: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for r in clean:
        if r["dst_tor"] is None:
            continue
        key = (
            r["src_tor"],
            r["dst_tor"],
            r["src_podset"],
            r["dst_podset"],
            r["src_dc"],
            r["dst_dc"],
        )
        by_cell.setdefault(key, []).append(r)
    cells = tuple(
        CellFacts(
            src_tor=k[0],
            dst_tor=k[1],
            src_podset=k[2],
            dst_podset=k[3],
            src_dc=k[4],
            dst_dc=k[5],
            counts=counts_of(v),
        )
        for k, v in sorted(by_cell.items())
    )
    return WindowFacts(
        start_s=start_s,
        end_s=end_s,
        servers={n: ServerFacts(**e) for n, e in servers.items()},
        pairs=tuple(pairs),
        cells=cells,
        sla=tuple(entity_sla(topology, clean)),
    )


def _event(r: Mapping[str, Any]) -> bool:
    if r["kind"] in DIRECT:
        return bool(r["outcome"] == "timeout")
    return bool(r["outcome"] == "ok" and r["retransmits"] > 0)


def entity_sla(topology: Topology, rows: list[Mapping[str, Any]]) -> list[EntitySla]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    members: dict[str, list[str]] = {}
    for service, names in topology.services.items():
        for name in names:
            members.setdefault(name, []).append(service)
    for r in rows:
        for scope, column in (
            ("server", "agent"),
            ("tor", "src_tor"),
            ("podset", "src_podset"),
            ("dc", "src_dc"),
        ):
            groups.setdefault((scope, r[column]), []).append(r)
        for service in members.get(r["agent"], []):
            groups.setdefault(("service", service), []).append(r)
        if r["dst_dc"] is not None:
            groups.setdefault(("dc_pair", f"{r['src_dc']}->{r['dst_dc']}"), []).append(r)
    return [
        EntitySla(
            scope=scope,
            entity=entity,
            counts=counts_of(rs),
            p99_us=nearest_rank([r["rtt_us"] for r in rs if r["outcome"] == "ok"], 0.99),
        )
        for (scope, entity), rs in sorted(groups.items())
    ]


def port_history(
    rows: Iterable[Mapping[str, Any]], start_s: float, end_s: float
) -> dict[tuple[str, str], tuple[PortUse, ...]]:
    """Per pair that had a clean timeout: clean probes and timeouts per source port."""
    chosen = [r for r in _in(rows, start_s, end_s) if not noisy(r)]
    watched = {(r["agent"], r["dst"]) for r in chosen if r["outcome"] == "timeout"}
    uses: dict[tuple[str, str], dict[int, list[int]]] = {}
    for r in chosen:
        key = (r["agent"], r["dst"])
        if key in watched:
            slot = uses.setdefault(key, {}).setdefault(r["src_port"], [0, 0])
            slot[0] += 1
            slot[1] += r["outcome"] == "timeout"
    return {
        key: tuple(PortUse(src_port=p, probes=n, timeouts=t) for p, (n, t) in sorted(v.items()))
        for key, v in uses.items()
    }
