"""Synthetic raw-store rows with known values, for the analysis tests."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pyarrow as pa

from pingmesh.store.raw import RAW_SCHEMA

# name -> (tor, podset, dc)
PLACEMENT = {
    "a1": ("t1", "ps1", "dc1"),
    "a2": ("t1", "ps1", "dc1"),
    "b1": ("t2", "ps1", "dc1"),
    "c1": ("t3", "ps2", "dc2"),
}

# 2027-01-15 08:00:00 UTC: aligned to the hour, so to every window length used here.
T0_S = 1_800_000_000 - 1_800_000_000 % 3600


def probe(
    at_s: float,
    src: str,
    dst: str,
    *,
    outcome: str = "ok",
    rtt_us: float | None = 100.0,
    retransmits: int = 0,
    batch_id: str = "batch-0001",
) -> dict[str, Any]:
    src_tor, src_podset, src_dc = PLACEMENT[src]
    dst_tor, dst_podset, dst_dc = PLACEMENT.get(dst, (None, None, None))
    return {
        "time": datetime.fromtimestamp(at_s, tz=UTC),
        "batch_id": batch_id,
        "agent": src,
        "src_addr": "127.0.0.1",
        "src_port": 40000,
        "dst": dst,
        "dst_addr": "127.0.0.2",
        "dst_port": 9781,
        "kind": "tcp",
        "scope": "inter_tor",
        "outcome": outcome,
        "rtt_us": rtt_us if outcome == "ok" else None,
        "rtt_clock_us": rtt_us,
        "retransmits": retransmits,
        "size_bytes": 0,
        "detail": "",
        "src_tor": src_tor,
        "src_podset": src_podset,
        "src_dc": src_dc,
        "dst_tor": dst_tor,
        "dst_podset": dst_podset,
        "dst_dc": dst_dc,
    }


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def nearest_rank(values: list[float], q: float) -> float | None:
    """The reference percentile: the smallest value whose rank is at least ``q × n``."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(Fraction(str(q)) * len(ordered))  # exact: 0.9 × 10 is 9, not 9.000…1
    return ordered[max(1, rank) - 1]
