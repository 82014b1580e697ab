"""Bulk synthetic probe records for the analysis benchmarks, written by DuckDB straight to Parquet.

Not a benchmark itself: ``analysis_ten_minute.py`` and ``analysis_fast_path.py`` use it. The
fleet is :func:`pingmesh.core.analysis.synthetic.synthetic_topology` of a :class:`FleetShape`
(default 4 DCs x 8 podsets x 16 ToRs x 24 servers = 12,288 servers); every pair of every
server's Pingmesh pinglist (intra-ToR, i-to-i inter-ToR, inter-DC; 1.9 M pairs) is probed once
per *round*, at a per-pair phase inside the round, so a round is one Parquet file sorted by
time, in the raw store's layout (``dt=…/hour=…/part-….parquet``) and with its exact schema.
RTTs are 60-240 µs plus an exponential tail; one probe in 10^4 needs a retransmission and one
in 10^5 times out. A fault can be injected: a ToR that black-holes a share of the pairs through
it, or a spine tier that drops 2 % of the SYNs between the podsets of a DC.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from pingmesh.analysis.queries import string_literal
from pingmesh.core.analysis.synthetic import FleetShape, synthetic_topology
from pingmesh.core.pinglist import generate_pinglist
from pingmesh.core.topology import Topology
from pingmesh.store.raw import RAW_SCHEMA

DEFAULT_SHAPE = FleetShape(dcs=4, podsets_per_dc=8, tors_per_podset=16, servers_per_tor=24)
T0 = 1_800_000_000 - 1_800_000_000 % 3600  # 2027-01-15 08:00 UTC, hour-aligned
_DUCK_TYPES = {
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.string(): "VARCHAR",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.int64(): "BIGINT",
}


@dataclass(frozen=True, slots=True)
class Generated:
    """What was written."""

    topology: Topology
    pairs: int
    rows: int
    files: list[Path]
    seconds: float


def pairs_table(topology: Topology, *, inter_dc_per_podset: int = 2) -> pa.Table:
    """Every (source, destination) pair of the fleet's pinglists, with placements."""
    by_name = {s.name: s for s in topology.servers}
    cols: dict[str, list[object]] = {
        k: []
        for k in (
            "agent",
            "src_addr",
            "dst",
            "dst_addr",
            "scope",
            "src_tor",
            "src_podset",
            "src_dc",
            "dst_tor",
            "dst_podset",
            "dst_dc",
        )
    }
    for server in topology.servers:
        pinglist = generate_pinglist(topology, server.name, inter_dc_per_podset=inter_dc_per_podset)
        for peer in pinglist.peers:
            dst = by_name[peer.name]
            for key, value in (
                ("agent", server.name),
                ("src_addr", server.address),
                ("dst", dst.name),
                ("dst_addr", dst.address),
                ("scope", peer.scope.value),
                ("src_tor", server.tor),
                ("src_podset", server.podset),
                ("src_dc", server.dc),
                ("dst_tor", dst.tor),
                ("dst_podset", dst.podset),
                ("dst_dc", dst.dc),
            ):
                cols[key].append(value)
    table = pa.table(cols)
    return table.append_column("pid", pa.array(range(table.num_rows), type=pa.int64()))


def _fault_sql(fault: str | None, k: int) -> tuple[str, str]:
    """(extra timeout condition, extra retransmission condition) for the fault in round k."""
    if fault is None:
        return "FALSE", "FALSE"
    if fault == "black_hole":  # ToR dc1-ps1-t1 black-holes 30 % of the pairs through it
        return (
            "((src_tor = 'dc1-ps1-t1' OR dst_tor = 'dc1-ps1-t1') AND hash(pid, 'hole') % 100 < 30)",
            "FALSE",
        )
    if fault == "silent_drop":  # the spines of dc1 drop 2 % of SYNs between its podsets
        return "FALSE", (
            "(src_dc = 'dc1' AND dst_dc = 'dc1' AND src_podset <> dst_podset"
            f" AND hash(pid, {k}, 'drop') % 1000 < 20)"
        )
    raise ValueError(f"fault: {fault!r} is not black_hole or silent_drop")


def generate(
    root: Path,
    *,
    start_s: int = T0,
    rounds: int,
    round_s: float,
    shape: FleetShape = DEFAULT_SHAPE,
    fault: str | None = None,
    threads: int | None = None,
) -> Generated:
    """Write ``rounds`` rounds of every pair, one file each, starting at ``start_s``."""
    started = time.monotonic()
    topology = synthetic_topology(shape)
    pairs = pairs_table(topology)
    _fault_sql(fault, 0)  # a bad name fails before any work
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    if threads:
        conn.execute(f"SET threads = {int(threads)}")
    conn.register("pairs", pairs)
    files: list[Path] = []
    for k in range(rounds):
        at = start_s + k * round_s
        hour = int(at // 3600 * 3600)
        directory = (
            root
            / time.strftime("dt=%Y-%m-%d", time.gmtime(hour))
            / time.strftime("hour=%H", time.gmtime(hour))
        )
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-bench{k:05d}.parquet"
        timeout_if, retransmit_if = _fault_sql(fault, k)
        lost = f"(hash(pid, {k}, 'lost') % 100000 = 0 OR {timeout_if})"
        rx = f"(hash(pid, {k}, 'rx') % 10000 = 0 OR {retransmit_if})"
        columns = {
            "time": f"make_timestamp(CAST(({at} + (hash(pid, 'phase') % 1000000) / 1e6 * {round_s})"
            " * 1e6 AS BIGINT))::TIMESTAMPTZ",
            "batch_id": f"'bench-' || agent || '-{k}'",
            "agent": "agent",
            "src_addr": "src_addr",
            "src_port": f"32768 + hash(pid, {k}, 'port') % 28000",
            "dst": "dst",
            "dst_addr": "dst_addr",
            "dst_port": "9781",
            "kind": "'tcp'",
            "scope": "scope",
            "outcome": f"CASE WHEN {lost} THEN 'timeout' ELSE 'ok' END",
            "rtt_us": f"CASE WHEN {lost} THEN NULL ELSE 60 + hash(pid, 'base') % 180"
            f" - 40 * ln((hash(pid, {k}, 'jit') % 1000000 + 1) / 1e6) END",
            "rtt_clock_us": "NULL",
            "retransmits": f"CASE WHEN {lost} THEN 2 WHEN {rx} THEN 1 ELSE 0 END",
            "size_bytes": "0",
            "detail": f"CASE WHEN {lost} THEN 'timeout' ELSE '' END",
        }
        select = ", ".join(
            f"CAST({columns.get(f.name, f.name if f.name in pairs.column_names else 'NULL')}"
            f" AS {_DUCK_TYPES[f.type]}) AS {f.name}"
            for f in RAW_SCHEMA
        )
        conn.execute(
            f"COPY (SELECT {select} FROM pairs ORDER BY time) TO {string_literal(str(path))}"
            " (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)"
        )
        files.append(path)
    conn.close()
    return Generated(
        topology=topology,
        pairs=pairs.num_rows,
        rows=pairs.num_rows * rounds,
        files=files,
        seconds=time.monotonic() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--round-s", type=float, default=10.0)
    parser.add_argument("--fault", choices=["black_hole", "silent_drop"])
    args = parser.parse_args()
    made = generate(args.root, rounds=args.rounds, round_s=args.round_s, fault=args.fault)
    print(f"figure: generated_rows {made.rows} rows")
    print(f"figure: generated_seconds {made.seconds:.1f} s")


if __name__ == "__main__":
    main()
