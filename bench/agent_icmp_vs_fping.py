"""ICMP side by side: the agent against fping and prometheus-smokeping-prober, same targets.

Target (issue 3): CPU per probe below smokeping_prober's and within 2x of fping's, measured in
the same run.

Each tool in turn (never two at once: a raw ICMP socket sees every echo reply on the host)
pings the same ``--targets`` loopback addresses (127.x.y.1, answered by the kernel) at the
same total rate: every target every ``--interval`` seconds (2,500 every 10 s: 250/s).

- the agent: ``pingmesh agent`` with an ICMP pinglist, recording every probe to a results
  file; probes counted from its ``/metrics``;
- fping 5: ``fping -l -p INTERVAL -i GAP -Q 5`` (loop, per-target period, gap between any
  two pings; interval summaries on stderr give the probes sent);
- smokeping_prober: every target as an argument, ``--ping.interval``, ``--privileged``;
  probes counted from its ``smokeping_requests_total``.

CPU is read from ``/proc/PID/stat`` over the same window after a warm-up. Prints ``figure:
NAME VALUE UNIT`` lines, including the ratios.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
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

_XMT = re.compile(rb"xmt/rcv/%loss = (\d+)/(\d+)")


def measure_agent(
    work: Path, targets: list[str], args: argparse.Namespace
) -> tuple[float, float, float]:
    """(CPU seconds, probes, seconds) of the agent over the window."""
    http = free_port()
    pinglist = write_pinglist(
        work / "icmp.json",
        [(f"p{i}", address, 0, "icmp", 0) for i, address in enumerate(targets)],
        interval_s=args.interval,
    )
    config = write_agent_config(
        work / "agent.json", responder_port=free_port(), http_port=http, icmp_socket="raw"
    )
    agent = start(
        agent_argv(
            "--pinglist", str(pinglist), "--results", str(work / "results.jsonl"),
            "--config", str(config),
        ),
        log=work / "agent.log",
    )  # fmt: skip
    metrics = f"http://127.0.0.1:{http}/metrics"
    try:
        wait_http(metrics)
        time.sleep(args.warmup)
        before = scrape(metrics)
        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()  # scrapes stay out of the window
        time.sleep(args.duration)
        cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
        after = scrape(metrics)
    finally:
        stop(agent)
    probes = total(after, "pingmesh_agent_probes_total", kind="icmp") - total(
        before, "pingmesh_agent_probes_total", kind="icmp"
    )
    ok = total(after, "pingmesh_agent_probes_total", kind="icmp", outcome="ok") - total(
        before, "pingmesh_agent_probes_total", kind="icmp", outcome="ok"
    )
    print(f"# agent: {probes:.0f} probes, {ok:.0f} ok")
    return cpu1 - cpu0, probes, t1 - t0


def measure_fping(
    work: Path, targets: list[str], args: argparse.Namespace
) -> tuple[float, float, float]:
    """(CPU seconds, probes, seconds) of fping over the window."""
    gap_ms = max(1, round(args.interval * 1000 / len(targets)))
    log = work / "fping.err"
    with log.open("wb") as err:
        fping = subprocess.Popen(
            ["fping", "-l", "-p", str(round(args.interval * 1000)), "-i", str(gap_ms),
             "-Q", "5", *targets],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
        try:
            time.sleep(args.warmup)
            offset0, cpu0, t0 = log.stat().st_size, cpu_seconds(fping.pid), time.monotonic()
            time.sleep(args.duration)
            offset1, cpu1, t1 = log.stat().st_size, cpu_seconds(fping.pid), time.monotonic()
        finally:
            stop(fping)
    chunk = log.read_bytes()[offset0:offset1]
    sent = sum(int(m.group(1)) for m in _XMT.finditer(chunk))
    print(f"# fping: -i {gap_ms} ms, {sent} probes in the window's summaries")
    return cpu1 - cpu0, float(sent), t1 - t0


def measure_smokeping(
    work: Path, targets: list[str], args: argparse.Namespace
) -> tuple[float, float, float] | None:
    """(CPU seconds, probes, seconds) of smokeping_prober over the window, or None."""
    binary = shutil.which("prometheus-smokeping-prober") or shutil.which("smokeping_prober")
    if binary is None:
        print("# smokeping_prober: not installed (apt-get install prometheus-smokeping-prober)")
        return None
    port = free_port()
    prober = start(
        [binary, f"--web.listen-address=127.0.0.1:{port}", f"--ping.interval={args.interval:g}s",
         "--privileged", "--log.level=warn", *targets],
        log=work / "smokeping.log",
    )  # fmt: skip
    metrics = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(metrics, timeout_s=300)  # it starts one pinger per target before serving
        time.sleep(args.warmup)
        before = scrape(metrics)
        cpu0, t0 = cpu_seconds(prober.pid), time.monotonic()  # scrapes stay out of the window
        time.sleep(args.duration)
        cpu1, t1 = cpu_seconds(prober.pid), time.monotonic()
        after = scrape(metrics)
    finally:
        stop(prober)
    sent = total(after, "smokeping_requests_total") - total(before, "smokeping_requests_total")
    print(f"# smokeping_prober: {sent:.0f} probes")
    return cpu1 - cpu0, sent, t1 - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=2500)
    parser.add_argument("--interval", type=float, default=10.0, help="per-target interval, s")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds per tool")
    parser.add_argument("--warmup", type=float, default=15.0)
    args = parser.parse_args()
    targets = loopback_addresses(args.targets)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"# {args.targets} targets every {args.interval:g} s; load {load_average()}")
        results: dict[str, tuple[float, float, float]] = {
            "agent": measure_agent(work, targets, args),
            "fping": measure_fping(work, targets, args),
        }
        smokeping = measure_smokeping(work, targets, args)
        if smokeping is not None:
            results["smokeping_prober"] = smokeping
        print(f"# done; load {load_average()}")
    per_probe = {}
    for tool, (cpu, probes, seconds) in results.items():
        per_probe[tool] = 1e6 * cpu / probes if probes else float("nan")
        figure(f"{tool}_cpu_per_probe", per_probe[tool], "us")
        figure(f"{tool}_cpu_percent_of_one_core", 100 * cpu / seconds, "%")
        figure(f"{tool}_probe_rate", probes / seconds, "probes/s")
    figure("agent_over_fping_cpu_per_probe", per_probe["agent"] / per_probe["fping"], "ratio")
    if "smokeping_prober" in per_probe:
        figure(
            "agent_over_smokeping_cpu_per_probe",
            per_probe["agent"] / per_probe["smokeping_prober"],
            "ratio",
        )


if __name__ == "__main__":
    main()
