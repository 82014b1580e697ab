"""A small fleet with a day of analysed history and raw probes, for the drill-down tests.

36 servers (2 DCs × 2 podsets × 3 ToRs × 3 servers); each window has the SLA rows of every
scope and the matrix at every level, built from server pairs that follow Pingmesh's pinglist
shape (a full mesh inside each ToR, server *i* of each ToR with server *i* of every other).
``SICK_TOR``'s inbound links are slow (P99 9 ms) and lose probes in the newest windows; the
raw store holds the probes of the last 15 minutes for every server pair into it plus one
healthy pair, each probe with its own source port.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from pingmesh.core.topology import Server, Topology, topology_from_servers
from pingmesh.store.raw import RAW_SCHEMA, RawStore
from pingmesh.store.results import MatrixRow, ResultsDB, SlaRow, WindowRow
from tests.web.fleet import grid_topology

SICK_TOR = "d1p2t3"
HEALTHY_PAIR = ("d1p1t1s1", "d1p1t2s1")
SICK_RECENT_S = 1800  # the sick ToR is sick in the windows that start in the last 30 min


def mesh_topology() -> Topology:
    """The fleet, with two services: ``search`` (servers 1) and ``storage`` (the sick ToR)."""
    grid = grid_topology(dcs=2, podsets=2, tors=3, servers=3)
    services = {
        "search": [s.name for s in grid.servers if s.name.endswith("s1")],
        "storage": [s.name for s in grid.servers if s.tor == SICK_TOR],
    }
    return topology_from_servers(grid.servers, services)


def server_pairs(topology: Topology) -> list[tuple[Server, Server]]:
    """Pingmesh-shaped pairs: intra-ToR full mesh; server i ↔ server i of every other ToR."""
    pairs = []
    by_tor: dict[str, list[Server]] = defaultdict(list)
    for s in topology.servers:
        by_tor[s.tor].append(s)
    for members in by_tor.values():
        pairs += [(a, b) for a in members for b in members if a is not b]
    tors = sorted(by_tor)
    for i in range(max(len(m) for m in by_tor.values())):
        column = [by_tor[t][i] for t in tors if i < len(by_tor[t])]
        pairs += [(a, b) for a in column for b in column if a.tor != b.tor]
    return pairs


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    probes: int
    failures: int
    retransmitted: int
    rtts: tuple[float, ...]


def _stats(cells: list[Cell]) -> dict[str, Any]:
    probes = sum(c.probes for c in cells)
    failures = sum(c.failures for c in cells)
    retx = sum(c.retransmitted for c in cells)
    rtts = sorted(r for c in cells for r in c.rtts)

    def q(p: float) -> float | None:
        if not rtts:
            return None
        return rtts[max(0, min(len(rtts) - 1, int(p * len(rtts) + 0.999999) - 1))]

    successes = probes - failures
    return {
        "probes": probes,
        "successes": successes,
        "failures": failures,
        "retransmitted": retx,
        "p50_us": q(0.5),
        "p90_us": q(0.9),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "drop_rate": None if successes == 0 else retx / successes,
    }


def _cell(rng: random.Random, src: Server, dst: Server, sick: bool) -> Cell:
    base = 250.0 if src.tor == dst.tor else 900.0 if src.dc == dst.dc else 2400.0
    if sick and dst.tor == SICK_TOR:
        rtts = (*tuple(base * 2 + rng.random() * 8000 for _ in range(9)), 9000.0)
        return Cell(probes=12, failures=2, retransmitted=1, rtts=rtts)
    rtts = tuple(base * (0.8 + 0.4 * rng.random()) for _ in range(10))
    return Cell(probes=10, failures=0, retransmitted=0, rtts=rtts)


def write_window(
    db: ResultsDB,
    topology: Topology,
    kind: str,
    start: int,
    length_s: int,
    *,
    sick: bool,
    rng: random.Random,
) -> None:
    """One analysed window of every scope and level, as the analysis would write it."""
    cells = {(a.name, b.name): _cell(rng, a, b, sick) for a, b in server_pairs(topology)}
    place = {s.name: s for s in topology.servers}
    sla: list[SlaRow] = []
    matrix: list[MatrixRow] = []
    for level in ("server", "tor", "podset", "dc"):
        grouped: dict[tuple[str, str], list[Cell]] = defaultdict(list)
        by_src: dict[str, list[Cell]] = defaultdict(list)
        for (a, b), cell in cells.items():
            sa, sb = place[a].entity(level), place[b].entity(level)  # type: ignore[arg-type]
            grouped[(sa, sb)].append(cell)
            by_src[sa].append(cell)
        for (sa, sb), group in sorted(grouped.items()):
            matrix.append(
                MatrixRow(window=kind, window_start=start, level=level, src=sa, dst=sb,
                          **_stats(group))
            )  # fmt: skip
        for entity, group in sorted(by_src.items()):
            sla.append(
                SlaRow(window=kind, window_start=start, scope=level, entity=entity,
                       **_stats(group))
            )  # fmt: skip
    for service, members in sorted(topology.services.items()):
        group = [c for (a, _), c in cells.items() if a in members]
        sla.append(
            SlaRow(window=kind, window_start=start, scope="service", entity=service,
                   **_stats(group))
        )  # fmt: skip
    records = sum(c.probes for c in cells.values())
    db.write_window(
        WindowRow(window=kind, window_start=start, window_end=start + length_s,
                  records=records, computed_at_s=start + length_s + 5.0),
        sla,
        matrix,
    )  # fmt: skip


def fill_history(db: ResultsDB, topology: Topology, now_s: float) -> dict[str, int]:
    """A day of 10m windows and 10 minutes of 30 s windows (every 10 s); returns the newest
    window start of each kind."""
    rng = random.Random(7)
    now = int(now_s)
    newest_ten = now - now % 600 - 600
    for start in range(newest_ten - 143 * 600, newest_ten + 1, 600):
        write_window(db, topology, "10m", start, 600, sick=start >= now - SICK_RECENT_S, rng=rng)
    newest_fast = now - now % 10 - 40
    for start in range(newest_fast - 59 * 10, newest_fast + 1, 10):
        write_window(db, topology, "30s", start, 30, sick=True, rng=rng)
    return {"10m": newest_ten, "30s": newest_fast}


def fill_raw(raw: RawStore, topology: Topology, now_s: float) -> int:
    """Probes of the last 15 minutes into ``SICK_TOR`` and on ``HEALTHY_PAIR``; returns how
    many were written."""
    rng = random.Random(11)
    place = {s.name: s for s in topology.servers}
    chosen = [(a, b) for a, b in server_pairs(topology) if b.tor == SICK_TOR]
    chosen.append((place[HEALTHY_PAIR[0]], place[HEALTHY_PAIR[1]]))
    rows = []
    port = 40_000
    for k in range(90):
        at = now_s - 900 + k * 10
        for a, b in chosen:
            port += 1
            sick = b.tor == SICK_TOR
            failed = sick and k % 6 == 0
            rows.append(
                {
                    "time": datetime.fromtimestamp(at + rng.random(), tz=UTC),
                    "batch_id": f"b{k}",
                    "agent": a.name,
                    "src_addr": a.address,
                    "src_port": port,
                    "dst": b.name,
                    "dst_addr": b.address,
                    "dst_port": 9781,
                    "kind": "tcp",
                    "scope": "intra_tor" if a.tor == b.tor else "inter_tor",
                    "outcome": "timeout" if failed else "ok",
                    "rtt_us": None if failed else (4000.0 if sick else 300.0) * (1 + rng.random()),
                    "rtt_clock_us": None,
                    "retransmits": 1 if sick and k % 6 == 3 else 0,
                    "size_bytes": 0,
                    "detail": "no SYN-ACK within 3.5 s" if failed else "",
                    "src_tor": a.tor,
                    "src_podset": a.podset,
                    "src_dc": a.dc,
                    "dst_tor": b.tor,
                    "dst_podset": b.podset,
                    "dst_dc": b.dc,
                }
            )
    raw.write(pa.Table.from_pylist(rows, schema=RAW_SCHEMA))
    return len(rows)
