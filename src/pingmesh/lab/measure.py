"""``python -m pingmesh.lab.measure``: a burst of real TCP connect probes, as JSON lines.

Run inside a server's namespace (``ip netns exec NS python -m pingmesh.lab.measure …``, which
is what :meth:`pingmesh.lab.lab.Lab.probe` and ``pingmesh lab probe`` do), it probes one peer
``count`` times with the agent's own :class:`~pingmesh.agent.probers.tcp.TcpConnectProber`
(fresh source port per probe, RTT and SYN retransmissions from ``TCP_INFO``) and prints one
JSON object per probe: ``src_port``, ``outcome``, ``rtt_us``, ``retransmits``, ``detail``. It
is how the lab shows, with the same probes pingmesh uses, that a fault drops what it should.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from pingmesh.agent.probers.tcp import TcpConnectProber
from pingmesh.clock import SystemClock
from pingmesh.core.probe import ProbeResult, Scope
from pingmesh.wire.pinglist import PeerModel

MAX_COUNT = 100_000
MAX_CONCURRENCY = 256


async def measure(
    *,
    bind: str,
    address: str,
    port: int,
    count: int,
    timeout_s: float,
    concurrency: int,
) -> list[ProbeResult]:
    """``count`` TCP connect probes to ``address:port`` from ``bind``, ``concurrency`` at once."""
    prober = TcpConnectProber(bind_addr=bind, clock=SystemClock())
    peer = PeerModel(name=address, address=address, port=port, scope=Scope.INTER_TOR)
    gate = asyncio.Semaphore(concurrency)
    results: list[ProbeResult] = []

    async def one() -> None:
        async with gate:
            results.append(await prober.probe(peer, timeout_s=timeout_s))

    async with asyncio.TaskGroup() as tasks:
        for _ in range(count):
            tasks.create_task(one())
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pingmesh.lab.measure",
        description="TCP connect probes to one peer, one JSON line per probe.",
    )
    parser.add_argument("--bind", required=True, help="source address")
    parser.add_argument("--to", required=True, dest="address", help="peer address")
    parser.add_argument("--port", type=int, default=9781)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=3.5, help="per probe, seconds")
    parser.add_argument("--concurrency", type=int, default=8)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probes and print them; exit 2 on bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1 <= args.count <= MAX_COUNT:
        parser.error(f"--count {args.count} must be 1-{MAX_COUNT}")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency {args.concurrency} must be 1-{MAX_CONCURRENCY}")
    if not 0 < args.timeout <= 60:
        parser.error(f"--timeout {args.timeout} must be above 0 and at most 60")
    results = asyncio.run(
        measure(
            bind=args.bind,
            address=args.address,
            port=args.port,
            count=args.count,
            timeout_s=args.timeout,
            concurrency=args.concurrency,
        )
    )
    for r in results:
        line = {
            "src_port": r.src_port,
            "outcome": r.outcome.value,
            "rtt_us": r.rtt_us,
            "retransmits": r.retransmits,
            "detail": r.detail,
        }
        sys.stdout.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
