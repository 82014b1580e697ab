"""Memory of the collector's batch-id deduplication, for ``--agents`` agents over ``--hours``.

Two phases:

- ``rebuild``: a raw store holding ``--hours`` of batches (``--agents`` agents, one batch per
  agent every ``--batch-interval-s``, the agent's default upload interval) is generated once
  (kept under ``--data`` for the next run), then a fresh child process builds a real
  :class:`~pingmesh.collector.service.Collector` over it, with its clock at the end of the
  data, and runs ``start()``: the rebuild of the deduplication memory from the files, which
  is what a restarted collector holds.  Measured twice, each in its own child: the RSS added
  by ``start()`` and the peak RSS on the way (``/proc``, ``ru_maxrss``), then the Python heap
  that the collector keeps and its peak (``tracemalloc``, which slows the child, so it is not
  timed).  This phase only uses the collector's public API, so it measures any version of it:
  run it with ``PYTHONPATH=/copy/of/old/src`` for the figures before a change.
- ``live``: the deduplication memory alone (:class:`~pingmesh.collector.dedup.BatchIdMemory`),
  fed the same day batch by batch in time order with expiry, as the collector does: its
  largest size, the heap it holds at the end, the slowest single ``add`` (a merge of runs
  stalls the event loop that long) and the mean cost of a lookup.

Prints ``figure: NAME VALUE UNIT`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from pingmesh.clock import FakeClock
from pingmesh.collector.service import Collector
from pingmesh.config import CollectorConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.topology import topology_from_servers
from pingmesh.store.raw import HOUR_S, RAW_SCHEMA, RawStore

T0_S = 1_800_000_000  # an hour boundary; the data covers [T0_S, T0_S + hours * 3600)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _prefixes(agents: int) -> list[str]:
    # The agent's batch ids: a per-process random 64-bit hex prefix and a sequence number.
    return [secrets.token_hex(8) for _ in range(agents)]


def _batch_ids(prefixes: list[str], hour: int, interval_s: float) -> tuple[list[str], list[int]]:
    """Ids and record times (µs) of every batch whose records lie in ``hour``, time order."""
    per_hour = int(HOUR_S / interval_s)
    ids: list[str] = []
    times_us: list[int] = []
    for slot in range(per_hour):
        seq = hour * per_hour + slot
        base_us = (T0_S + hour * HOUR_S) * 1_000_000 + int(slot * interval_s * 1e6)
        for index, prefix in enumerate(prefixes):
            ids.append(f"{prefix}-{seq:010d}")
            times_us.append(base_us + index)  # agents spread over the interval's first ms
    return ids, times_us


def _generate(root: Path, args: argparse.Namespace) -> None:
    marker = root / ".complete"
    if marker.exists():
        print(f"# reusing the raw store in {root}")
        return
    shutil.rmtree(root, ignore_errors=True)
    raw = RawStore(root)
    prefixes = _prefixes(args.agents)
    started = time.monotonic()
    for hour in range(args.hours):
        ids, times_us = _batch_ids(prefixes, hour, args.batch_interval_s)
        step = -(-len(ids) // args.files_per_hour)
        for first in range(0, len(ids), step):
            chunk = ids[first : first + step]
            raw.write(_table(chunk, times_us[first : first + step]))
    print(f"# generated {args.hours} h of batches in {time.monotonic() - started:.0f} s")
    marker.touch()


def _table(ids: list[str], times_us: list[int]) -> pa.Table:
    """One record per batch: the ids are what matters here, the rest is plausible filler."""
    n = len(ids)
    fill: dict[str, pa.Array] = {
        "time": pa.array(times_us, type=pa.timestamp("us", tz="UTC")),
        "batch_id": pa.array(ids, type=pa.string()),
    }
    for field in RAW_SCHEMA:
        if field.name in fill:
            continue
        if field.nullable:
            fill[field.name] = pa.nulls(n, type=field.type)
        elif pa.types.is_string(field.type):
            value = {"kind": "tcp", "scope": "inter_tor", "outcome": "ok"}.get(field.name, "x")
            fill[field.name] = pa.array([value] * n, type=field.type)
        else:
            fill[field.name] = pa.array([0] * n, type=field.type)
    return pa.table(fill, schema=RAW_SCHEMA)


# -- the rebuild phase, in a child ----------------------------------------------------------


def _child(root: Path, mode: str, now_s: float) -> None:
    collector = Collector(
        RawStore(root),
        TopologySource(topology_from_servers(())),
        CollectorConfig(),
        clock=FakeClock(now_s),
    )
    if mode == "tracemalloc":
        tracemalloc.start()
        asyncio.run(collector.start())
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ids = collector.statistics().dedup_ids
        print(f"figure: dedup_rebuild_heap_bytes {current} bytes")
        print(f"figure: dedup_rebuild_heap_peak_bytes {peak} bytes")
        print(f"figure: dedup_rebuild_heap_bytes_per_id {current / max(ids, 1):.1f} bytes")
        return
    before = _rss_bytes()
    started = time.monotonic()
    cpu_started = time.process_time()
    asyncio.run(collector.start())
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    after = _rss_bytes()
    stats = collector.statistics()
    print(f"figure: dedup_rebuild_ids {stats.dedup_ids} ids")
    print(f"figure: dedup_rebuild_seconds {elapsed:.2f} s")
    print(f"figure: dedup_rebuild_cpu_seconds {cpu:.2f} s")
    print(f"figure: dedup_rebuild_rss_added_bytes {after - before} bytes")
    print(f"figure: dedup_rebuild_rss_peak_added_bytes {_peak_rss_bytes() - before} bytes")
    for name in ("dedup_size_bytes", "dedup_buckets"):
        if hasattr(stats, name):  # not in every version of the collector
            print(f"figure: {name} {getattr(stats, name)} {name.rsplit('_', 1)[-1]}")


def _rebuild(root: Path, args: argparse.Namespace) -> None:
    for mode in ("rss", "tracemalloc"):
        command = [sys.executable, __file__, "--child", mode, "--data", str(root)]
        command += ["--hours", str(args.hours)]
        subprocess.run(command, check=True, env=os.environ, stdout=sys.stdout)


# -- the live phase --------------------------------------------------------------------------


def _live(args: argparse.Namespace) -> None:
    # Imported here so that the rebuild phase also runs against an older collector.
    from pingmesh.collector.dedup import BatchIdMemory  # noqa: PLC0415
    from pingmesh.collector.service import CLOCK_STEP_SLACK_S  # noqa: PLC0415

    prefixes = _prefixes(args.agents)
    # Twice: tracemalloc (heap figures) slows every allocation, so the times come from a
    # second pass without it.
    for traced in (True, False):
        memory = BatchIdMemory(
            horizon_s=CollectorConfig().dedup_horizon_s, slack_s=CLOCK_STEP_SLACK_S
        )
        if traced:
            tracemalloc.start()
        largest = 0
        slowest_add_s = 0.0
        lookup_s = {True: 0.0, False: 0.0}  # by whether the id was there
        lookups = 0
        for hour in range(args.hours):
            ids, times_us = _batch_ids(prefixes, hour, args.batch_interval_s)
            for first in range(0, len(ids), args.agents):  # one upload interval at a time
                memory.expire(times_us[first] / 1e6 + args.batch_interval_s)
                last = min(first + args.agents, len(ids))
                if traced:
                    for index in range(first, last):
                        memory.add(ids[index], times_us[index] / 1e6)
                    largest = max(largest, memory.statistics().ids)
                    continue
                # The collector looks every batch up before storing it: time a sample, a new
                # batch and a copy of one stored in the previous interval.
                for index, there in ((first, False), (first - args.agents, True)):
                    if index >= 0:
                        started = time.perf_counter()
                        found = memory.contains(ids[index], times_us[index] / 1e6)
                        lookup_s[there] += time.perf_counter() - started
                        assert found is there
                lookups += 1
                for index in range(first, last):
                    started = time.perf_counter()
                    memory.add(ids[index], times_us[index] / 1e6)
                    slowest_add_s = max(slowest_add_s, time.perf_counter() - started)
        stats = memory.statistics()
        if traced:
            del ids, times_us  # the bench's own data: not the memory's
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"figure: dedup_live_max_ids {largest} ids")
            print(f"figure: dedup_live_ids_at_end {stats.ids} ids")
            print(f"figure: dedup_live_expired_ids {stats.expired_ids_total} ids")
            print(f"figure: dedup_live_size_bytes {stats.size_bytes} bytes")
            print(f"figure: dedup_live_heap_bytes {current} bytes")
            print(f"figure: dedup_live_heap_peak_bytes {peak} bytes")
            print(f"figure: dedup_live_heap_bytes_per_id {current / max(stats.ids, 1):.1f} bytes")
        else:
            print(f"figure: dedup_live_slowest_add_seconds {slowest_add_s:.4f} s")
            for there, name in ((False, "new"), (True, "stored")):
                mean_us = lookup_s[there] / max(lookups, 1) * 1e6
                print(f"figure: dedup_live_lookup_{name}_us {mean_us:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--hours", type=int, default=24, help="hours of batches")
    parser.add_argument("--batch-interval-s", type=float, default=5.0, help="per agent")
    parser.add_argument("--files-per-hour", type=int, default=60, help="raw files per hour")
    parser.add_argument(
        "--data", type=Path, default=None, help="raw store to reuse (generated if incomplete)"
    )
    parser.add_argument("--phase", choices=["rebuild", "live", "all"], default="all")
    parser.add_argument("--child", choices=["rss", "tracemalloc"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.data, args.child, T0_S + args.hours * HOUR_S)
        return
    print(f"# {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {args.agents} agents, {args.hours} h")
    temporary = args.data is None
    root = Path(tempfile.mkdtemp(prefix="pingmesh-dedup-")) if temporary else args.data
    try:
        if args.phase in ("rebuild", "all"):
            _generate(root, args)
            _rebuild(root, args)
        if args.phase in ("live", "all"):
            _live(args)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    print(f"figure: load_average_1min {os.getloadavg()[0]:.2f} load")


if __name__ == "__main__":
    main()
