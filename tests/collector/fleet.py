"""A small fleet, result batches and a running collector for the collector tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pingmesh.clock import FakeClock
from pingmesh.collector.service import Collector
from pingmesh.config import CollectorConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.topology import Server, topology_from_servers
from pingmesh.store.raw import RawStore
from pingmesh.wire.results import ResultBatchModel

NOW_S = 1_800_000_000.0

SERVERS = (
    Server(name="h11", address="127.0.1.11", dc="dc1", podset="ps1", tor="t1"),
    Server(name="h12", address="127.0.1.12", dc="dc1", podset="ps1", tor="t1"),
    Server(name="h21", address="127.0.2.21", dc="dc1", podset="ps2", tor="t2"),
    Server(name="h31", address="127.0.3.31", dc="dc2", podset="ps3", tor="t3"),
)


def topology_source() -> TopologySource:
    return TopologySource(topology_from_servers(SERVERS))


def record(index: int, *, at_s: float = NOW_S - 5, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "time": datetime.fromtimestamp(at_s, tz=UTC).isoformat(),
        "src_addr": "127.0.1.11",
        "src_port": 40000 + index,
        "dst": "h21",
        "dst_addr": "127.0.2.21",
        "dst_port": 9781,
        "kind": "tcp",
        "scope": "inter_tor",
        "outcome": "ok",
        "rtt_us": 100.0 + index,
        "rtt_clock_us": 110.0 + index,
        "retransmits": 0,
        "size_bytes": 0,
        "detail": "",
    }
    values.update(overrides)
    return values


def batch_dict(batch_id: str, *, agent: str = "h11", records: int = 3) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "batch_id": batch_id,
        "agent": agent,
        "pinglist_version": "v1",
        "sent_at": datetime.fromtimestamp(NOW_S, tz=UTC).isoformat(),
        "records": [record(i) for i in range(records)],
    }


def batch(batch_id: str, *, agent: str = "h11", records: int = 3) -> ResultBatchModel:
    return ResultBatchModel.model_validate(batch_dict(batch_id, agent=agent, records=records))


def batch_of(batch_id: str, records: list[dict[str, Any]], agent: str = "h11") -> ResultBatchModel:
    data = batch_dict(batch_id, agent=agent, records=0)
    data["records"] = records
    return ResultBatchModel.model_validate(data)


def stored_rows(root: Path) -> list[dict[str, Any]]:
    """Every row in the raw store under ``root``, in a stable order."""
    rows: list[dict[str, Any]] = []
    for path in RawStore(root).files_between(0, 2**40):
        rows.extend(pq.read_table(path).to_pylist())
    return sorted(rows, key=lambda r: (r["batch_id"], r["src_port"]))


def make_collector(
    root: Path,
    *,
    flush_interval_s: float = 0.01,
    clock: FakeClock | None = None,
    uploads: list[tuple[str, str]] | None = None,
) -> Collector:
    config = CollectorConfig(flush_interval_s=flush_interval_s, max_body_bytes=8192)
    return Collector(
        RawStore(root),
        topology_source(),
        config,
        clock=clock or FakeClock(NOW_S),
        on_upload=None if uploads is None else lambda name, addr: uploads.append((name, addr)),
    )


@contextlib.asynccontextmanager
async def running(collector: Collector) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``collector`` for the duration of the block; cancel it (and wait) at the end."""
    task = asyncio.create_task(collector.run())
    started = asyncio.create_task(collector.wait_running())
    try:
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # run() failed at start: show why
        yield task
    finally:
        started.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
