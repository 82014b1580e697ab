"""A raw store of synthetic probes (with injected faults), for the analysis tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pingmesh.analysis.synthetic import write_rows_with_noise
from pingmesh.core.analysis.synthetic import (
    Fabric,
    Fault,
    FleetShape,
    ProbePlan,
    generate_probes,
    synthetic_topology,
)
from pingmesh.store.raw import RawStore

SHAPE = FleetShape()
TOPOLOGY = synthetic_topology(SHAPE, services={"search": ["dc1-ps1-t1-h1", "dc2-ps2-t2-h4"]})
FABRIC = Fabric(TOPOLOGY, SHAPE)
T0 = 1_800_000_000 - 1_800_000_000 % 3600
SERVERS = [s.name for s in TOPOLOGY.servers]


def synthetic_rows(
    start_s: float, end_s: float, faults: Sequence[Fault] = (), *, seed: int = 1, udp: bool = False
) -> list[dict[str, Any]]:
    plan = ProbePlan(
        start_s=start_s,
        end_s=end_s,
        seed=seed,
        faults=tuple(faults),
        udp_servers=frozenset(SERVERS) if udp else frozenset(),
    )
    return list(generate_probes(TOPOLOGY, FABRIC, plan))


def write_in_flushes(root: Path, rows: list[dict[str, Any]], every_s: float = 5.0) -> RawStore:
    """Write rows as the collector would: a file per flush, by arrival (send time here)."""
    raw = RawStore(root)
    by_flush: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_flush.setdefault(int(row["time"].timestamp() // every_s), []).append(row)
    for _, chunk in sorted(by_flush.items()):
        write_rows_with_noise(root, chunk)
    return raw
