"""Small fleets and analysed windows for the web tests (real ResultsDB rows)."""

from __future__ import annotations

from typing import Any

from pingmesh.core.topology import Server, Topology, topology_from_servers
from pingmesh.store.results import MatrixRow, ResultsDB, SlaRow, WindowRow

NOW_S = 1_800_000_000.0


def small_topology() -> Topology:
    """Two DCs; dc1 has podsets ps1 (t1, t2) and ps2 (t3); dc2 has ps3 (t4)."""
    place = {
        "h11": ("dc1", "ps1", "t1"),
        "h12": ("dc1", "ps1", "t1"),
        "h21": ("dc1", "ps1", "t2"),
        "h31": ("dc1", "ps2", "t3"),
        "h41": ("dc2", "ps3", "t4"),
    }
    return topology_from_servers(
        Server(name=name, address=f"198.18.{i}.1", dc=dc, podset=podset, tor=tor)
        for i, (name, (dc, podset, tor)) in enumerate(sorted(place.items()), start=1)
    )


def grid_topology(*, dcs: int, podsets: int, tors: int, servers: int) -> Topology:
    """``dcs`` × ``podsets`` × ``tors`` × ``servers`` (names d1, d1p1, d1p1t1, d1p1t1s1)."""
    out = []
    for d in range(1, dcs + 1):
        for p in range(1, podsets + 1):
            for t in range(1, tors + 1):
                for s in range(1, servers + 1):
                    tor = f"d{d}p{p}t{t}"
                    out.append(
                        Server(
                            name=f"{tor}s{s}",
                            address=f"198.18.{d * 16 + p}.{t * 8 + s}",
                            dc=f"d{d}",
                            podset=f"d{d}p{p}",
                            tor=tor,
                        )
                    )
    return topology_from_servers(out)


def _stats(probes: int, p99_us: float | None, failures: int, retransmitted: int) -> dict[str, Any]:
    successes = probes - failures
    return {
        "probes": probes,
        "successes": successes,
        "failures": failures,
        "retransmitted": retransmitted,
        "p50_us": None if p99_us is None else p99_us / 3,
        "p90_us": None if p99_us is None else p99_us / 2,
        "p99_us": p99_us,
        "p999_us": None if p99_us is None else p99_us * 1.5,
        "drop_rate": None if successes == 0 else retransmitted / successes,
    }


def sla_row(
    kind: str,
    start: int,
    scope: str,
    entity: str,
    probes: int,
    *,
    p99_us: float | None,
    failures: int = 0,
    retransmitted: int = 0,
) -> SlaRow:
    """An SLA row; percentiles derived from ``p99_us``, drop rate from ``retransmitted``."""
    return SlaRow(
        window=kind,
        window_start=start,
        scope=scope,
        entity=entity,
        **_stats(probes, p99_us, failures, retransmitted),
    )


def matrix_row(
    kind: str,
    start: int,
    level: str,
    src: str,
    dst: str,
    probes: int,
    *,
    p99_us: float | None,
    failures: int = 0,
    retransmitted: int = 0,
) -> MatrixRow:
    """A matrix cell; percentiles derived from ``p99_us``, drop rate from ``retransmitted``."""
    return MatrixRow(
        window=kind,
        window_start=start,
        level=level,
        src=src,
        dst=dst,
        **_stats(probes, p99_us, failures, retransmitted),
    )


def window(kind: str, start: int, length_s: int, *, computed_at_s: float) -> WindowRow:
    return WindowRow(
        window=kind,
        window_start=start,
        window_end=start + length_s,
        records=1000,
        computed_at_s=computed_at_s,
    )


def write_small_windows(db: ResultsDB) -> dict[str, int]:
    """Two 10m windows and two 30s windows for :func:`small_topology`; returns their starts.

    The newest 10m window's ToR matrix: t1→t1 1.2 ms (green), t1→t2 4.5 ms (yellow),
    t2→t1 9 ms (red), t3→t4 all failed, t4→t3 0.8 ms with 2 failures, t9→t1 (a ToR the
    topology no longer has). Every other of the 16 cells has no data.
    """
    ten_old = int(NOW_S) - 1200
    ten_new = int(NOW_S) - 600
    fast_old = int(NOW_S) - 50
    fast_new = int(NOW_S) - 40
    db.write_window(
        window("10m", ten_old, 600, computed_at_s=ten_old + 610),
        [sla_row("10m", ten_old, "tor", "t1", 50, p99_us=700.0)],
        [],
    )
    sla = [
        sla_row("10m", ten_new, "server", "h11", 100, p99_us=900.0, retransmitted=1),
        sla_row("10m", ten_new, "server", "h12", 100, p99_us=950.0),
        sla_row("10m", ten_new, "tor", "t1", 200, p99_us=1000.0, failures=3),
        sla_row("10m", ten_new, "tor", "t2", 100, p99_us=9000.0),
        sla_row("10m", ten_new, "podset", "ps1", 300, p99_us=2000.0),
        sla_row("10m", ten_new, "dc", "dc1", 400, p99_us=2500.0),
    ]
    matrix = [
        matrix_row("10m", ten_new, "tor", "t1", "t1", 40, p99_us=1200.0),
        matrix_row("10m", ten_new, "tor", "t1", "t2", 40, p99_us=4500.0, retransmitted=1),
        matrix_row("10m", ten_new, "tor", "t2", "t1", 40, p99_us=9000.0),
        matrix_row("10m", ten_new, "tor", "t3", "t4", 10, p99_us=None, failures=10),
        matrix_row("10m", ten_new, "tor", "t4", "t3", 10, p99_us=800.0, failures=2),
        matrix_row("10m", ten_new, "tor", "t9", "t1", 10, p99_us=500.0),
        matrix_row("10m", ten_new, "dc", "dc1", "dc2", 20, p99_us=3000.0),
    ]
    db.write_window(window("10m", ten_new, 600, computed_at_s=ten_new + 610), sla, matrix)
    for start, p99 in ((fast_old, 100.0), (fast_new, 200.0)):
        db.write_window(
            window("30s", start, 30, computed_at_s=start + 40),
            [sla_row("30s", start, "tor", "t1", 10, p99_us=p99)],
            [matrix_row("30s", start, "tor", "t1", "t2", 10, p99_us=p99)],
        )
    return {"10m_old": ten_old, "10m": ten_new, "30s_old": fast_old, "30s": fast_new}
