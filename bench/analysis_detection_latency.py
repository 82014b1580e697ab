"""From the first faulty probe to an open incident, through a real server.

Target (issue "Analysis"): <= 60 s. A real ``PingmeshServer`` (default analysis config: 30 s fast
window every 10 s, 10 s lag for late uploads) runs on 127.0.0.1 with a synthetic 32-server
fleet. Synthetic agents post their probe records to ``POST /api/v1/results`` every 5 s, as real
agents batch them, in real time; after a clean warm-up a fault starts in the synthetic fabric.
The benchmark polls ``GET /api/v1/incidents?open_only=true`` and reports the time from the send
time of the first probe the fault affected to the moment the expected incident is listed:

- ``black_hole``: a ToR black-holes 30 % of the pairs through it → ``black_hole`` on the ToR;
- ``silent_drop``: a spine drops 5 % of the packets through it → ``silent_drop`` on the spine
  tier (or the spine device);
- ``host_down``: an agent and its host stop → ``host_unreachable`` or ``host_down``.

Prints ``figure: NAME VALUE UNIT`` lines (per fault, and the worst).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from pingmesh.config import ServerConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.analysis.synthetic import (
    BlackHole,
    Fabric,
    Fault,
    FleetShape,
    HostDown,
    ProbePlan,
    RandomDrop,
    generate_probes,
    synthetic_topology,
)
from pingmesh.server.app import PingmeshServer

SHAPE = FleetShape()
UPLOAD_EVERY_S = 5.0
RECORD_FIELDS = (
    "src_addr",
    "src_port",
    "dst",
    "dst_addr",
    "dst_port",
    "kind",
    "scope",
    "outcome",
    "rtt_us",
    "rtt_clock_us",
    "retransmits",
    "size_bytes",
    "detail",
    "send_lag_us",
    "recv_lag_us",
    "dwell_us",
)


def faulty(row: dict[str, Any], fault: Fault, fabric: Fabric) -> bool:
    """Did ``fault`` touch this probe? (the first such probe starts the clock)"""
    if isinstance(fault, HostDown):
        return bool(row["dst"] == fault.server)
    if isinstance(fault, BlackHole):
        return bool(row["outcome"] == "timeout")
    return bool(row["retransmits"] > 0 and row["outcome"] == "ok")


SCENARIOS: dict[str, tuple[Callable[[float], Fault], Callable[[dict[str, Any]], bool]]] = {
    "black_hole": (
        lambda at: BlackHole(device="tor:dc1-ps2-t1", share=0.3, start_s=at),
        lambda i: bool(i["kind"] == "black_hole" and i["entity"] == "dc1-ps2-t1"),
    ),
    "silent_drop": (
        lambda at: RandomDrop(device="spine:dc2:1", rate=0.05, start_s=at),
        lambda i: bool(
            (i["kind"] == "silent_drop" and "spine" in i["entity"])
            or (i["kind"] == "silent_drop" and i["scope"] == "device")
        ),
    ),
    "host_down": (
        lambda at: HostDown(server="dc2-ps1-t2-h3", start_s=at),
        lambda i: bool(
            i["kind"] in ("host_down", "host_unreachable") and i["entity"] == "dc2-ps1-t2-h3"
        ),
    ),
}


async def measure(name: str, *, warmup_s: float, timeout_s: float) -> float | None:
    make_fault, matches = SCENARIOS[name]
    topology = synthetic_topology(SHAPE)
    fabric = Fabric(topology, SHAPE)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "topology.yaml").write_text("servers: []\n")
        config = ServerConfig(listen="127.0.0.1:0", data_dir=Path(tmp) / "data")
        server = PingmeshServer(config, TopologySource(topology))
        server.bind()
        runner = asyncio.create_task(server.run())
        start = time.time()
        fault_at = start + warmup_s
        fault = make_fault(fault_at)
        plan = ProbePlan(
            start_s=start,
            end_s=start + warmup_s + timeout_s + 30,
            inter_dc_per_podset=2,
            faults=(fault,),
        )
        rows = sorted(generate_probes(topology, fabric, plan), key=lambda r: r["time"])
        first_faulty = next(
            (
                r["time"].timestamp()
                for r in rows
                if r["time"].timestamp() >= fault_at and faulty(r, fault, fabric)
            ),
            None,
        )
        sent = 0
        found_at: float | None = None
        try:
            await server.wait_started()
            async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
                next_upload = start + UPLOAD_EVERY_S
                while time.time() < fault_at + timeout_s:
                    now = time.time()
                    if now >= next_upload:
                        batch: dict[str, list[dict[str, Any]]] = {}
                        while sent < len(rows) and rows[sent]["time"].timestamp() <= now - 4.0:
                            row = rows[sent]  # 4 s: the probe's timeout, then it is known
                            batch.setdefault(row["agent"], []).append(row)
                            sent += 1
                        await asyncio.gather(*(upload(client, a, rs) for a, rs in batch.items()))
                        next_upload += UPLOAD_EVERY_S
                    if now >= fault_at and found_at is None:
                        body = (
                            await client.get("/api/v1/incidents", params={"open_only": "true"})
                        ).json()
                        if any(matches(i) for i in body["incidents"]):
                            found_at = time.time()
                            break
                    await asyncio.sleep(0.5)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    if found_at is None or first_faulty is None:
        return None
    return found_at - first_faulty


async def upload(client: httpx.AsyncClient, agent: str, rows: list[dict[str, Any]]) -> None:
    records = [{"time": r["time"].isoformat(), **{k: r[k] for k in RECORD_FIELDS}} for r in rows]
    body = {
        "batch_id": f"lat-{agent}-{rows[0]['time'].timestamp():.3f}",
        "agent": agent,
        "sent_at": datetime.now(tz=UTC).isoformat(),
        "records": records,
    }
    answer = await client.post("/api/v1/results", json=body)
    answer.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faults", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--warmup", type=float, default=90.0, help="clean seconds first")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    worst = 0.0
    for name in args.faults:
        latency = asyncio.run(measure(name, warmup_s=args.warmup, timeout_s=args.timeout))
        shown = "nan" if latency is None else f"{latency:.1f}"
        print(f"figure: detection_latency_{name}_s {shown} s", flush=True)
        worst = max(worst, latency if latency is not None else float("inf"))
    print(f"figure: detection_latency_worst_s {worst:.1f} s")


if __name__ == "__main__":
    main()
