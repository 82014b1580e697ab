"""The ``pingmesh lab`` command line: its arguments, and the lines it shows.

:func:`add_lab_parser` adds the ``lab`` command to ``pingmesh``'s parser; :func:`run_lab` runs
it and hands every line to ``announce`` (the CLI prints them: ``pingmesh.cli`` is the only
package that prints). Importing this module imports only :mod:`argparse`, so ``pingmesh agent``
stays light; the lab itself is imported when a ``lab`` command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pingmesh.lab.lab import Lab, LabStatus

Announce = Callable[[str], None]
EXIT_OK = 0


def add_lab_parser(commands: Any, *, version: str) -> None:
    """Add ``lab`` and its subcommands to the subparsers object ``commands``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", default="pmlab", help="lab name: namespaces are PREFIX-…")
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/run/pingmesh-lab"),
        help="where the lab's state file lives (default /run/pingmesh-lab)",
    )
    lab = commands.add_parser(
        "lab",
        help="a virtual data-centre fabric in network namespaces, to break on purpose (root)",
        description="Build a Clos fabric in network namespaces with pingmesh running on it, "
        "inject faults with nftables, and watch pingmesh find them. Needs root.",
    )
    lab.add_argument("--version", action="version", version=f"pingmesh {version}")
    sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    sub.required = True

    up = sub.add_parser("up", parents=[common], help="build the fabric, start server and agents")
    up.add_argument("--dcs", type=int, default=1)
    up.add_argument("--podsets", type=int, default=2, help="podsets per DC")
    up.add_argument("--tors", type=int, default=2, help="ToRs per podset")
    up.add_argument("--servers", type=int, default=3, help="servers per ToR")
    up.add_argument("--leaves", type=int, default=2, help="leaf routers per podset")
    up.add_argument("--spines", type=int, default=2, help="spine routers per DC")
    up.add_argument("--cores", type=int, default=2, help="core routers (with 2+ DCs)")
    up.add_argument("--port", type=int, default=8080, help="the server's port")
    up.add_argument("--data", type=Path, metavar="DIR", help="default /var/lib/pingmesh-lab/PREFIX")
    up.add_argument("--mgmt-net", default="198.19.0.0/20", help="management network (198.19/16)")
    up.add_argument(
        "--config", type=Path, help="pingmesh config (server/agent) to override lab defaults"
    )
    up.add_argument("--wait", type=float, default=60.0, help="wait for agents, s (0: no)")

    down = sub.add_parser("down", parents=[common], help="remove everything the lab made")
    down.add_argument("--purge", action="store_true", help="also delete the data directory")

    status = sub.add_parser("status", parents=[common], help="what is up, faults in force")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.add_argument("--nodes", action="store_true", help="also list every node")

    fault = sub.add_parser("fault", help="inject, list and clear faults")
    kinds = fault.add_subparsers(dest="fault_command", metavar="FAULT")
    kinds.required = True
    bh = kinds.add_parser("black-hole", parents=[common], help="a ToR drops chosen pairs")
    bh.add_argument("--tor", required=True)
    bh.add_argument(
        "--pair",
        action="append",
        metavar="A:B",
        help="servers whose packets the ToR drops (repeat); default: from the pinglists",
    )
    bh.add_argument("--every", type=int, default=2, help="default pairs: every N-th peer")
    pbh = kinds.add_parser(
        "port-black-hole", parents=[common], help="a ToR drops 1 in N ephemeral ports"
    )
    pbh.add_argument("--tor", required=True)
    pbh.add_argument("--one-in", type=int, default=4, help="a power of two (default 4)")
    drop = kinds.add_parser("drop", parents=[common], help="random drop at a router or a link")
    where = drop.add_mutually_exclusive_group(required=True)
    where.add_argument("--at", metavar="ROUTER", help="a ToR, leaf, spine or core")
    where.add_argument("--link", metavar="A:B", help="the link between two nodes")
    drop.add_argument("--percent", type=float, required=True)
    ld = kinds.add_parser("link-down", parents=[common], help="take a link down")
    ld.add_argument("--link", metavar="A:B", required=True)
    ld.add_argument(
        "--reroute", action="store_true", help="routes converge around it (as with BGP)"
    )
    hd = kinds.add_parser("host-down", parents=[common], help="stop an agent, interfaces down")
    hd.add_argument("--host", required=True)
    cs = kinds.add_parser(
        "cpu-starve", parents=[common], help="SIGSTOP/SIGCONT an agent (host noise)"
    )
    cs.add_argument("--host", required=True)
    cs.add_argument("--stop-ms", type=int, default=1500)
    cs.add_argument("--period-ms", type=int, default=2000)
    kinds.add_parser("list", parents=[common], help="the faults in force")
    clear = kinds.add_parser("clear", parents=[common], help="remove faults")
    clear.add_argument("fault_ids", nargs="*", metavar="FAULT_ID")
    clear.add_argument("--all", action="store_true", help="every fault; repairs the whole lab")

    probe = sub.add_parser(
        "probe", parents=[common], help="real TCP connect probes between two servers"
    )
    probe.add_argument("src")
    probe.add_argument("dst")
    probe.add_argument("--count", type=int, default=20)
    probe.add_argument("--timeout", type=float, default=3.5, help="per probe, s")
    probe.add_argument("--port", type=int, default=9781)

    run = sub.add_parser("exec", parents=[common], help="run a command inside a node")
    run.add_argument("node")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND …")


def _pair(text: str) -> tuple[str, str]:
    from pingmesh.errors import ConfigError  # noqa: PLC0415 - loaded on use

    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise ConfigError(f"lab: {text!r} is not A:B (two node names)")
    return a, b


def run_lab(args: argparse.Namespace, *, announce: Announce) -> int:
    """Run a ``pingmesh lab`` command; errors propagate as PingmeshError (the CLI maps them)."""
    from pingmesh.errors import ConfigError  # noqa: PLC0415 - loaded on use
    from pingmesh.lab.faults import (  # noqa: PLC0415 - loaded on use
        BlackHole,
        CpuStarve,
        Fault,
        HostDown,
        LinkDown,
        PortBlackHole,
        RandomDrop,
        default_black_hole_pairs,
        describe,
    )
    from pingmesh.lab.lab import Lab, LabOptions, require_root  # noqa: PLC0415 - loaded on use
    from pingmesh.lab.plan import LabShape  # noqa: PLC0415 - loaded on use

    # httpx logs every request at INFO; the lab polls the server while it waits.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    command = args.lab_command
    options = LabOptions(
        prefix=args.prefix,
        state_dir=args.state_dir,
        data_dir=getattr(args, "data", None),
        port=getattr(args, "port", 8080) if command == "up" else 8080,
        mgmt_net=getattr(args, "mgmt_net", "198.19.0.0/20"),
        config_file=getattr(args, "config", None),
    )
    lab = Lab(options, announce=announce)

    if command == "up":
        shape = LabShape(
            dcs=args.dcs,
            podsets=args.podsets,
            tors=args.tors,
            servers=args.servers,
            leaves=args.leaves,
            spines=args.spines,
            cores=args.cores,
        )
        status = lab.up(shape, wait_s=args.wait)
        announce(f"pingmesh lab: dashboard at {status.url}/")
        announce(
            f"pingmesh lab: {status.agents_planned} servers; break it with "
            f"`pingmesh lab fault …`, remove it with `pingmesh lab down"
            f"{'' if args.prefix == 'pmlab' else ' --prefix ' + args.prefix}`"
        )
        announce(f"pingmesh lab: data and logs in {status.data_dir}")
        return EXIT_OK
    if command == "down":
        report = lab.down(purge=args.purge)
        announce(
            f"pingmesh lab: removed {report.namespaces} namespaces, stopped "
            f"{report.processes} processes"
            + (f", deleted {args.prefix}-m" if report.host_link else "")
        )
        return EXIT_OK
    if command == "status":
        status = lab.status()
        if args.json:
            announce(json.dumps(_status_json(status, lab if args.nodes else None), indent=2))
        else:
            for line in _status_lines(status):
                announce(line)
            if args.nodes:
                for line in _node_lines(lab):
                    announce(line)
        return EXIT_OK
    if command == "probe":
        require_root()
        results = lab.probe(
            args.src, args.dst, count=args.count, timeout_s=args.timeout, port=args.port
        )
        outcomes: dict[str, int] = {}
        for r in results:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        ok = [r for r in results if r.outcome == "ok"]
        retrans = sum(1 for r in ok if r.retransmits > 0)
        rtts = sorted(r.rtt_us for r in ok if r.rtt_us is not None)
        median = f"{rtts[len(rtts) // 2]:.0f} µs" if rtts else "-"
        announce(
            f"{args.src} → {args.dst}: {len(results)} probes; "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            + f"; {retrans} needed a SYN retransmission; median RTT {median}"
        )
        return EXIT_OK
    if command == "exec":
        require_root()
        argv = [a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise ConfigError("lab exec: give a command after the node (… exec NODE -- CMD)")
        full = lab.exec_argv(args.node, argv)
        os.execvp(full[0], full)  # noqa: S606 - the user's own command, in the lab
    # fault …
    sub = args.fault_command
    if sub == "list":
        status = lab.status()
        if not status.faults:
            announce("no faults in force")
        for line in _fault_lines(status):
            announce(line)
        return EXIT_OK
    if sub == "clear":
        if args.all == bool(args.fault_ids):
            raise ConfigError("lab fault clear: give fault ids, or --all (not both)")
        cleared = lab.clear_all() if args.all else [lab.clear(f) for f in args.fault_ids]
        for active in cleared:
            announce(f"cleared {active.fault_id}: {describe(active.fault)}")
        if args.all:
            announce("every link, route, rule and agent is back as planned")
        return EXIT_OK
    fault: Fault
    if sub == "black-hole":
        if args.pair:
            pairs = tuple(_pair(p) for p in args.pair)
        else:
            pairs = default_black_hole_pairs(lab.plan(), args.tor, every=args.every)
        fault = BlackHole(tor=args.tor, pairs=pairs)
    elif sub == "port-black-hole":
        fault = PortBlackHole(tor=args.tor, one_in=args.one_in)
    elif sub == "drop":
        if args.at is not None:
            fault = RandomDrop(node=args.at, percent=args.percent)
        else:
            a, b = _pair(args.link)
            fault = RandomDrop(node=a, peer=b, percent=args.percent)
    elif sub == "link-down":
        a, b = _pair(args.link)
        fault = LinkDown(a=a, b=b, reroute=args.reroute)
    elif sub == "host-down":
        fault = HostDown(host=args.host)
    elif sub == "cpu-starve":
        fault = CpuStarve(host=args.host, stop_ms=args.stop_ms, period_ms=args.period_ms)
    else:  # pragma: no cover - argparse allows only the choices above
        raise ConfigError(f"lab fault: unknown fault {sub!r}")
    active = lab.inject(fault)
    announce(f"{active.fault_id}: {describe(active.fault)}")
    announce(f"clear it with `pingmesh lab fault clear {active.fault_id}`")
    return EXIT_OK


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fault_lines(status: LabStatus) -> list[str]:
    lines = []
    for f in status.faults:
        dropped = "" if f.dropped_packets is None else f", {f.dropped_packets} packets dropped"
        lines.append(
            f"  {f.fault.fault_id:<4} {f.description} (since {_when(f.fault.started_at_s)}"
            f"{dropped})"
        )
    return lines


def _status_lines(status: LabStatus) -> list[str]:
    shape = status.shape
    return [
        (
            f"lab {status.prefix}: {'up' if status.ready else 'NOT READY'}, "
            f"{status.namespaces}/{status.namespaces_planned} namespaces"
        ),
        f"dashboard: {status.url}/",
        f"shape: {shape.dcs} DC × {shape.podsets} podsets × {shape.tors} ToRs × "
        f"{shape.servers} servers; {shape.leaves} leaves per podset, {shape.spines} spines "
        f"per DC" + (f", {shape.cores} cores" if shape.dcs > 1 else ""),
        f"server: {'running' if status.server_running else 'NOT RUNNING'}; agents: "
        f"{status.agents_running}/{status.agents_planned} running"
        + (
            f" ({', '.join(status.agents_stopped_by_faults)} stopped by host-down)"
            if status.agents_stopped_by_faults
            else ""
        ),
        "faults: none" if not status.faults else "faults:",
        *_fault_lines(status),
        f"data and logs: {status.data_dir}",
    ]


def _node_lines(lab: Lab) -> list[str]:
    plan = lab.plan()
    lines = ["nodes:"]
    for node in plan.nodes:
        extra = f" mgmt {node.mgmt_address}" if node.mgmt_address else ""
        lines.append(
            f"  {node.role:<6} {node.name:<20} {node.address:<15}{extra}  ({node.namespace})"
        )
    return lines


def _status_json(status: LabStatus, lab: Lab | None) -> dict[str, Any]:
    from dataclasses import asdict  # noqa: PLC0415 - loaded on use

    doc: dict[str, Any] = {
        "prefix": status.prefix,
        "url": status.url,
        "ready": status.ready,
        "data_dir": status.data_dir,
        "shape": asdict(status.shape),
        "namespaces": status.namespaces,
        "namespaces_planned": status.namespaces_planned,
        "server_running": status.server_running,
        "agents_running": status.agents_running,
        "agents_planned": status.agents_planned,
        "faults": [
            {
                "fault_id": f.fault.fault_id,
                "description": f.description,
                "started_at": _when(f.fault.started_at_s),
                "dropped_packets": f.dropped_packets,
                "fault": asdict(f.fault.fault),
            }
            for f in status.faults
        ],
    }
    if lab is not None:
        doc["nodes"] = [asdict(n) for n in lab.plan().nodes]
    return doc
