"""Agent peak rate: the highest sustained TCP-connect probe rate on one core.

Target (issue 3): at least 10,000 probes/s with under 1 % of the probes lost to the agent
itself.

The measured agent is pinned to one CPU (``taskset``), the responder agent to the other; for a
rate R the agent probes 2·R distinct 127.x.y.1 addresses every 2 s, with its rate cap raised
out of the way, recording every probe to a results file. Each step runs ``--duration``
seconds after a warm-up. "Lost to the agent itself" is strict: 1 − (probes that ended ``ok``
÷ probes the pinglist asks for), so it counts probes skipped by a cap, probes that failed (on
loopback every failure is the prober's own doing) *and* the probes that never happened
because the agent fell behind (the interval is a minimum, so a late agent probes each peer a
little less often). The peak is the highest ``ok`` rate of a step with less than 1 % lost.

The machine is shared: the pinned CPU's busy share from ``/proc/stat`` is printed next to
the agent's own, so that a step limited by other processes on that CPU is visible.

Prints ``figure: NAME VALUE UNIT`` lines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _agent_bench import (
    agent_argv,
    cpu_seconds,
    figure,
    free_port,
    load_average,
    loopback_addresses,
    scrape,
    start,
    stop,
    total,
    wait_http,
    write_agent_config,
    write_pinglist,
)


def cpu_busy(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU so far (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stream:
        for line in stream:
            if line.startswith(f"cpu{cpu} "):
                values = [int(v) for v in line.split()[1:]]
                idle = values[3] + values[4]  # idle + iowait
                return sum(values) - idle, sum(values)
    raise ValueError(f"cpu{cpu}: not in /proc/stat")


def run_step(work: Path, rate: int, args: argparse.Namespace, echo_port: int) -> dict[str, float]:
    """One rate step; the agent's figures."""
    interval_s = 2.0
    peers = [
        (f"p{i}", address, echo_port, "tcp", 0)
        for i, address in enumerate(loopback_addresses(round(rate * interval_s)))
    ]
    pinglist = write_pinglist(
        work / f"pinglist-{rate}.json", peers, interval_s=interval_s, timeout_s=2.0
    )
    http = free_port()
    config = write_agent_config(
        work / f"agent-{rate}.json",
        responder_port=free_port(),
        http_port=http,
        max_probe_rate=rate * 2,
        max_concurrent_probes=4096,
        probe_tick_s=args.tick,
    )
    agent = start(
        agent_argv(
            "--pinglist", str(pinglist), "--results", str(work / "results.jsonl"),
            "--config", str(config),
        ),
        cpu=args.agent_cpu,
        log=work / "agent.log",
    )  # fmt: skip
    metrics = f"http://127.0.0.1:{http}/metrics"
    try:
        wait_http(metrics)
        time.sleep(args.warmup)
        before = scrape(metrics)
        busy0 = cpu_busy(args.agent_cpu)
        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
        time.sleep(args.duration)
        cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
        busy1 = cpu_busy(args.agent_cpu)
        after = scrape(metrics)
    finally:
        stop(agent)
        (work / "results.jsonl").unlink(missing_ok=True)
    elapsed = t1 - t0

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    done = delta("pingmesh_agent_probes_total")
    ok = delta("pingmesh_agent_probes_total", outcome="ok")
    expected = rate * elapsed
    lag_n = delta("pingmesh_agent_loop_lag_seconds_count")
    return {
        "rate": rate,
        "done_per_s": done / elapsed,
        "ok_per_s": ok / elapsed,
        "failed_per_s": (done - ok) / elapsed,
        "lost_ratio": max(0.0, 1 - ok / expected),
        "cpu_percent": 100 * (cpu1 - cpu0) / elapsed,
        "core_busy_percent": 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        "rate_limited": delta("pingmesh_agent_probes_rate_limited_total"),
        "mean_lag_ms": 1e3 * delta("pingmesh_agent_loop_lag_seconds_sum") / lag_n if lag_n else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        default="2500,5000,7500,10000,12500,15000",
        help="probes/s steps, comma-separated",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--agent-cpu", type=int, default=0, help="CPU the agent is pinned to")
    parser.add_argument("--responder-cpu", type=int, default=1)
    parser.add_argument("--tick", type=float, default=0.01, help="probe_tick_s of the agent")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        echo_port = free_port()
        responder = start(
            agent_argv(
                "--pinglist",
                str(write_pinglist(work / "empty.json", [], interval_s=10)),
                "--bind",
                "0.0.0.0",
                "--config",
                str(write_agent_config(work / "r.json", responder_port=echo_port, http_port=0)),
            ),
            cpu=args.responder_cpu,
            log=work / "responder.log",
        )
        peak = 0.0
        try:
            time.sleep(1)
            for rate in (int(r) for r in args.rates.split(",")):
                step = run_step(work, rate, args, echo_port)
                print(
                    f"# rate {rate}/s: ok {step['ok_per_s']:.0f}/s,"
                    f" failed {step['failed_per_s']:.0f}/s, lost {100 * step['lost_ratio']:.2f} %,"
                    f" agent cpu {step['cpu_percent']:.0f} % (its core busy"
                    f" {step['core_busy_percent']:.0f} %), rate-limited {step['rate_limited']:.0f},"
                    f" mean loop lag {step['mean_lag_ms']:.2f} ms; load {load_average()}",
                    flush=True,
                )
                if step["lost_ratio"] < 0.01:
                    peak = max(peak, step["ok_per_s"])
        finally:
            stop(responder)
        figure("agent_peak_tcp_connect_rate", peak, "probes/s")


if __name__ == "__main__":
    main()
