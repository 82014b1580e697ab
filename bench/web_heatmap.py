"""A 1,000 × 1,000 ToR heatmap in headless Chromium: how long until it is drawn.

Builds a topology of N ToRs (one server each), writes one 30 s window whose ToR matrix has
every one of the N × N cells (a realistic mix: mostly green, some yellow and red, a few
failed, holes) directly into a ResultsDB, serves the dashboard with uvicorn on 127.0.0.1 and
opens it in Debian's Chromium (Playwright). Target (issue 5): the heatmap renders in ≤ 1 s.

Figures (``figure: NAME VALUE UNIT``), medians over --runs page loads:

- ``web_heatmap_render_ms``: classifying the cells and drawing the canvas (in the page);
- ``web_heatmap_fetch_ms``: the ``/api/v1/heatmap?format=columns`` request, from the
  browser's Resource Timing (server time + transfer); the server builds a window's heatmap
  once and then answers from its cache, so ``web_heatmap_first_fetch_ms`` and
  ``web_heatmap_first_load_to_ready_ms`` are the first page load's, which built it;
- ``web_heatmap_load_to_ready_ms``: from navigation start to the drawn heatmap;
- ``web_heatmap_bytes``: the size of the JSON answer.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from playwright.sync_api import sync_playwright

from pingmesh.alerts.engine import AlertEngine, RuleBook
from pingmesh.clock import SystemClock
from pingmesh.config import ServerConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.topology import Server, topology_from_servers
from pingmesh.store.alerts import AlertStore
from pingmesh.store.results import ResultsDB
from pingmesh.web.alerts_api import AlertsApi
from pingmesh.web.api import Api
from pingmesh.web.app import create_app

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def build(db: ResultsDB, tors: int, now_s: float) -> TopologySource:
    """N ToRs in 10 DCs × 10 podsets; one window with every cell of the ToR matrix."""
    servers = []
    for k in range(tors):
        dc, podset = k % 10, (k // 10) % 10
        servers.append(
            Server(
                name=f"s{k:04d}",
                address=f"10.{k // 65536}.{(k // 256) % 256}.{k % 256}",
                dc=f"dc{dc}",
                podset=f"dc{dc}-ps{podset}",
                tor=f"dc{dc}-ps{podset}-t{k:04d}",
            )
        )
    topology = topology_from_servers(servers)
    names = topology.entities("tor")
    start = int(now_s) - 40
    db.database.execute(
        'INSERT INTO windows ("window", window_start, window_end, records, computed_at_s)'
        " VALUES (?, ?, ?, ?, ?)",
        ("30s", start, start + 30, tors * tors * 10, now_s - 2),
    )

    def rows() -> Iterator[tuple[Any, ...]]:
        for i, src in enumerate(names):
            for j, dst in enumerate(names):
                h = (i * 7919 + j * 104729) % 1000
                if h < 20:
                    continue  # no data
                failures = 10 if h < 25 else (1 if h < 60 else 0)
                p99 = None if failures == 10 else 900.0 + (h * 13 % 6000)
                yield ("30s", start, "tor", src, dst, 10, 10 - failures, failures, 0,
                       None if p99 is None else p99 / 3, None, p99, None, 0.0)  # fmt: skip

    with db.database.transaction():
        db.database.executemany(
            'INSERT INTO matrix ("window", window_start, level, src, dst, probes, successes,'
            " failures, retransmitted, p50_us, p90_us, p99_us, p999_us, drop_rate)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
    return TopologySource(topology)


class ServerThread(threading.Thread):
    def __init__(self, app: object) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)  # type: ignore[arg-type]
        )

    def run(self) -> None:
        self.server.run(sockets=[self.sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tors", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        now_s = time.time()
        db = ResultsDB(Path(tmp) / "results.sqlite")
        t = time.perf_counter()
        source = build(db, args.tors, now_s)
        print(f"# wrote {args.tors**2} cells in {time.perf_counter() - t:.1f} s")
        config = ServerConfig()
        clock = SystemClock()
        api = Api(db, source, config, clock=clock, max_heatmap_cells=args.tors**2)
        store = AlertStore(db.database)
        engine = AlertEngine(
            store, db, RuleBook([], store), source=source, clock=clock, config=config.alerts
        )
        app = create_app([api.router, AlertsApi(engine, default_window="10m").router])
        server = ServerThread(app)
        server.start()
        while not server.server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.port}/#/overview?window=30s"
        render, fetch, ready, size = [], [], [], 0
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            for _ in range(args.runs):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                page.wait_for_selector('#heatmap[data-state="ready"]', timeout=120_000)
                cells = int(page.get_attribute("#heatmap", "data-cells") or 0)
                assert cells == args.tors**2, cells
                render.append(float(page.get_attribute("#heatmap", "data-render-ms") or "nan"))
                timing = page.evaluate(
                    """() => {
                      const e = performance.getEntriesByType("resource")
                        .filter((r) => r.name.includes("/api/v1/heatmap"))[0];
                      return [e.responseEnd - e.startTime, e.encodedBodySize,
                              Number(document.querySelector("#heatmap").dataset.readyMs)];
                    }"""
                )
                fetch.append(timing[0])
                size = int(timing[1])
                ready.append(timing[2])
                page.close()
            browser.close()
        server.server.should_exit = True
        server.join(timeout=20)
        db.close()
    print(f"figure: web_heatmap_cells {args.tors**2} cells")
    print(f"figure: web_heatmap_render_ms {statistics.median(render):.0f} ms")
    print(f"figure: web_heatmap_fetch_ms {statistics.median(fetch):.0f} ms")
    print(f"figure: web_heatmap_load_to_ready_ms {statistics.median(ready):.0f} ms")
    print(f"figure: web_heatmap_first_fetch_ms {fetch[0]:.0f} ms")
    print(f"figure: web_heatmap_first_load_to_ready_ms {ready[0]:.0f} ms")
    print(f"figure: web_heatmap_bytes {size} bytes")


if __name__ == "__main__":
    main()
