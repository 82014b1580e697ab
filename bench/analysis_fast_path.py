"""The fast path against 1 million probe records per second of ingest.

Target (issue "Analysis"): the fast path keeps up with 1 M records/s. Records for ``--seconds``
of such ingest are generated straight to Parquet (``analysis_data.py``: 12,288 servers, every
pinglist pair probed about every 1.8 s) in a temporary directory, deleted afterwards. Then the
fast path runs as the runner runs it, once per 10 s slice: read the slice's raw files (only
those whose time range overlaps it), summarise it in DuckDB, merge the 30 s window, write its
SLA and matrix rows to a SQLite results database, and run the detectors (incidents and
traceroute planning included). It keeps up when a slice takes less than the 10 s it covers.

Prints ``figure: NAME VALUE UNIT`` lines: the slowest and the median slice, and the sustained
rate (records per second of processing).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from analysis_data import T0, generate
from pingmesh.analysis.detect import IncidentDetector
from pingmesh.analysis.expected import expected_pairs
from pingmesh.analysis.fastpath import FastPath
from pingmesh.analysis.fileindex import RawFileIndex
from pingmesh.clock import FakeClock
from pingmesh.config import IncidentConfig, PinglistConfig, TracerouteConfig
from pingmesh.controller.tasks import TracerouteService
from pingmesh.controller.topology_source import TopologySource
from pingmesh.store.incidents import IncidentStore
from pingmesh.store.raw import RawStore
from pingmesh.store.results import ResultsDB
from pingmesh.store.traceroutes import TracerouteStore

EVERY_S, WINDOW_S = 10, 30


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1e6, help="records per second")
    parser.add_argument("--seconds", type=int, default=60, help="seconds of ingest")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the data (temp)")
    parser.add_argument("--fault", choices=["black_hole", "silent_drop"])
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pingmesh-bench-", dir=args.dir))
    try:
        pairs = 1_843_392
        round_s = pairs / args.rate
        rounds = int(args.seconds / round_s)
        made = generate(base / "raw", rounds=rounds, round_s=round_s, fault=args.fault)
        print(f"figure: fast_path_generated_records {made.rows} records")
        print(f"figure: fast_path_ingest_rate {made.rows / (rounds * round_s):.0f} records/s")
        topology = made.topology
        expected = expected_pairs(topology, PinglistConfig())
        db = ResultsDB(base / "results.sqlite")
        clock = FakeClock(T0)
        source = TopologySource(topology)
        traces = TracerouteService(
            TracerouteStore(db.database), source, TracerouteConfig(), clock=clock
        )
        detector = IncidentDetector(IncidentStore(db.database), IncidentConfig(), traces=traces)
        fast = FastPath(
            RawFileIndex(RawStore(base / "raw")), every_s=EVERY_S, window_s=WINDOW_S, horizon_s=600
        )
        seen = {s.name: T0 + args.seconds for s in topology.servers}
        durations: list[float] = []
        cpu_used: list[float] = []
        records = 0
        for end in range(T0 + EVERY_S, T0 + args.seconds + 1, EVERY_S):
            started = time.monotonic()
            cpu_started = _cpu_s()
            info = fast.add_slice(end - EVERY_S, end)
            sliced = time.monotonic()
            result, facts = fast.run_window(
                "30s", end - WINDOW_S, end, now_s=end + 10.0, expected=expected
            )
            windowed = time.monotonic()
            db.write_window(result.window, result.sla, result.matrix)
            written = time.monotonic()
            outcome = detector.run(topology, facts, last_seen_s=seen, now_s=end + 10.0)
            took = time.monotonic() - started
            cpu_used.append(_cpu_s() - cpu_started)
            print(
                f"  read+summarise {sliced - started:.2f} s, window {windowed - sliced:.2f} s,"
                f" write {written - windowed:.2f} s, detect {started + took - written:.2f} s"
            )
            durations.append(took)
            records += info.records
            print(
                f"slice [{end - EVERY_S - T0}, {end - T0}) s: {info.records} records in "
                f"{info.files} files, {took:.2f} s, findings {len(outcome.findings)}"
            )
        fast.close()
        db.close()
        print(f"figure: fast_path_slice_seconds_median {statistics.median(durations):.2f} s")
        print(f"figure: fast_path_slice_seconds_max {max(durations):.2f} s")
        print(f"figure: fast_path_records_per_second {records / sum(durations):.0f} records/s")
        # Shared machine: CPU time over two cores bounds a slice on idle cores from below.
        idle = [c / 2 for c in cpu_used]
        median_idle = statistics.median(idle)
        print(
            f"figure: fast_path_slice_seconds_lower_bound_two_idle_cores_median {median_idle:.2f} s"
        )
        idle_rate = records / sum(idle)
        print(
            f"figure: fast_path_records_per_second_upper_bound_two_idle_cores {idle_rate:.0f}"
            " records/s"
        )
        print(f"figure: load_average_1min {os.getloadavg()[0]:.2f} load")
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"figure: fast_path_peak_rss_bytes {peak_kib * 1024} bytes")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
