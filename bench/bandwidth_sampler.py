"""CPU cost of the bandwidth sampler (target: at most 0.5 % of one core at the defaults).

Runs the real sampler (``/proc/net/dev`` + ifindex from sysfs, 500 ms samples, 1 s reports,
a sink that keeps nothing) for ``--seconds`` and divides the CPU time this process used by the
wall time. Then times the work of one sample alone (read + parse + meter) in a tight loop, and
how that scales with the number of interfaces (a synthetic ``/proc/net/dev``).

Prints ``figure: NAME VALUE UNIT`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import tempfile
import time
from pathlib import Path

from pingmesh.agent.bandwidth import (
    BandwidthMeter,
    BandwidthReport,
    BandwidthSampler,
    ProcNetDevSource,
)
from pingmesh.clock import SystemClock

HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
    "drop fifo colls carrier compressed\n"
)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run_sampler(seconds: float, sample_s: float, report_s: float) -> tuple[float, int]:
    reports: list[int] = []

    def sink(report: BandwidthReport) -> None:
        reports.append(len(report.interfaces))

    sampler = BandwidthSampler(
        source=ProcNetDevSource(),
        sink=sink,
        clock=SystemClock(),
        sample_interval_s=sample_s,
        report_interval_s=report_s,
    )
    task = asyncio.create_task(sampler.run())
    await asyncio.sleep(0.5)  # past start-up
    cpu0, wall0 = _cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, wall1 = _cpu_s(), time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return (cpu1 - cpu0) / (wall1 - wall0), sampler.statistics().meter.interfaces


def _per_sample_us(source: ProcNetDevSource, rounds: int) -> float:
    meter = BandwidthMeter()
    start = time.perf_counter()
    for i in range(rounds):
        meter.observe(source.read(), i * 500_000_000)
        if i % 2:
            meter.take_report()
    return (time.perf_counter() - start) / rounds * 1e6


def _synthetic(directory: Path, interfaces: int) -> Path:
    lines = [
        f"  if{i}: {i * 1000} {i} 0 0 0 0 0 0 {i * 2000} {i * 2} 0 0 0 0 0 0"
        for i in range(interfaces)
    ]
    path = directory / f"dev{interfaces}"
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="run the sampler this long")
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--report-interval", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5000, help="tight-loop samples")
    args = parser.parse_args()

    share, interfaces = asyncio.run(
        _run_sampler(args.seconds, args.sample_interval, args.report_interval)
    )
    print(f"figure: sampler_interfaces {interfaces} interfaces")
    print(f"figure: sampler_cpu_share {share * 100:.4f} percent_of_one_core")
    real_us = _per_sample_us(ProcNetDevSource(), args.rounds)
    print(f"figure: sample_cost_real {real_us:.1f} us_per_sample")
    print(
        f"figure: sampler_cpu_share_computed {real_us * 1e-6 / args.sample_interval * 100:.4f} "
        "percent_of_one_core"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for count in (10, 100, 1000):
            path = _synthetic(Path(tmp), count)
            cost = _per_sample_us(ProcNetDevSource(path, sysfs=None), max(200, args.rounds // 10))
            print(f"figure: sample_cost_{count}_interfaces {cost:.1f} us_per_sample")


if __name__ == "__main__":
    main()
