"""API latency with a week of data for 1,000 servers (target, issue 5: p99 ≤ 100 ms).

Generates, directly into a ResultsDB (SQLite), what a week of analysis writes for 1,000
servers (2 DCs × 5 podsets × 5 ToRs × 20 servers): every 10-minute window (1,008) with the
SLA rows of every scope and the ToR/podset/DC matrices; the server-pair matrix (Pingmesh's
pinglist shape: every server with its ToR mates and with server *i* of every other ToR of its
DC, ~43 k pairs per window) for the last ``--pair-days`` days; the 1-hour and 1-day rollups of
those windows, written after the windows they roll up as the analysis runner writes them
(same rows, same keys; the statistics are random); an hour of 30 s windows (every 10 s) with
SLAs and the ToR matrix. ``--db PATH`` keeps the database, and a later run with the same
``--db`` reuses it (generating takes a few minutes and ~8 GB).

Then serves the whole web API (uvicorn, in its own process) and asks each endpoint
``--requests`` times, one request at a time, at random windows and pairs; prints p50 and p99
per endpoint and over all of them, the window kinds each endpoint answered from, and the load
average before and after.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from pingmesh.core.topology import Server, Topology, topology_from_servers
from pingmesh.store.results import ResultsDB

# Each window's rows are copied from a template of its cells with fresh random statistics by
# one INSERT … SELECT: the keys and their order are the analysis's, and a week for 1,000
# servers takes minutes rather than an hour of Python loops.
_UNIFORM = "((random() & 1048575) / 1048576.0)"
_STATS = (
    "?, ? - f, f, 0, p50, p50 * 1.5, p50 * 3, p50 * 5, 0.0 FROM"
    f" (SELECT *, base * (0.9 + 0.2 * {_UNIFORM}) AS p50,"
    " CASE WHEN (random() & 127) = 0 THEN 1 ELSE 0 END AS f FROM {template} ORDER BY rowid)"
)
MATRIX_SQL = (
    'INSERT INTO matrix ("window", window_start, level, src, dst, probes, successes, failures,'
    " retransmitted, p50_us, p90_us, p99_us, p999_us, drop_rate)"
    " SELECT ?, ?, level, src, dst, " + _STATS
)
SLA_SQL = (
    'INSERT INTO sla ("window", window_start, scope, entity, probes, successes, failures,'
    " retransmitted, p50_us, p90_us, p99_us, p999_us, drop_rate)"
    " SELECT ?, ?, scope, entity, " + _STATS.format(template="entities")
)
WINDOW_SQL = (
    'INSERT INTO windows ("window", window_start, window_end, records, computed_at_s)'
    " VALUES (?, ?, ?, ?, ?)"
)
HOUR_S, DAY_S = 3600, 86400


def fleet() -> Topology:
    servers = []
    for d in range(1, 3):
        for p in range(1, 6):
            for t in range(1, 6):
                for s in range(1, 21):
                    tor = f"d{d}p{p}t{t}"
                    servers.append(
                        Server(name=f"{tor}s{s}", address=f"10.{d}.{p * 16 + t}.{s}",
                               dc=f"d{d}", podset=f"d{d}p{p}", tor=tor)
                    )  # fmt: skip
    return topology_from_servers(servers, {"search": [x.name for x in servers[::7]]})


def pairs(topology: Topology) -> list[tuple[str, str]]:
    by_tor: dict[str, list[Server]] = {}
    for s in topology.servers:
        by_tor.setdefault(s.tor, []).append(s)
    out = [(a.name, b.name) for m in by_tor.values() for a in m for b in m if a is not b]
    for members in by_tor.values():
        for i, a in enumerate(members):
            for other, ms in by_tor.items():
                if other != a.tor and ms[0].dc == a.dc and i < len(ms):
                    out.append((a.name, ms[i].name))
    return out


def generate(db: ResultsDB, topology: Topology, now_s: float, pair_days: float) -> int:
    """A week of what the analysis writes, in the order the runner writes it: each 10-minute
    window, then the hour it completes (rolled up), then the day it completes; and the last
    hour of 30 s windows. Like the runner, hours and days start at the first whole one."""
    now = int(now_s)
    newest = now - now % 600 - 600
    first = newest - 1007 * 600
    levels = [
        (level, src, dst)
        for level in ("dc", "podset", "tor")
        for src, dst in sorted({(a.entity(level), b.entity(level))
                                for a in topology.servers for b in topology.servers[::20]})
    ]  # fmt: skip
    server_pairs = sorted(pairs(topology))
    scopes = [(scope, e) for scope in ("dc", "podset", "server", "tor")
              for e in topology.entities(scope)] + [("service", "search")]  # fmt: skip
    database = db.database
    database.execute("CREATE TEMP TABLE cells (level TEXT, src TEXT, dst TEXT, base REAL)")
    database.execute("CREATE TEMP TABLE pair_cells (level TEXT, src TEXT, dst TEXT, base REAL)")
    database.execute("CREATE TEMP TABLE entities (scope TEXT, entity TEXT, base REAL)")
    database.executemany("INSERT INTO cells VALUES (?, ?, ?, 1200.0)", levels)
    database.executemany("INSERT INTO pair_cells VALUES ('server', ?, ?, 400.0)", server_pairs)
    database.executemany("INSERT INTO entities VALUES (?, ?, 800.0)", scopes)
    pair_from = newest - pair_days * DAY_S
    rows = 0

    def write(kind: str, start: int, length: int, *, with_pairs: bool) -> int:
        # Probes per cell grow with the window (400 per ToR cell, 60 per server pair, 3,000
        # per entity in 10 minutes), as a rollup adds its windows up.
        scale = length // 600 or 1
        with database.transaction():
            database.execute(
                MATRIX_SQL.format(template="cells"), (kind, start, scale * 400, scale * 400)
            )
            if with_pairs:
                database.execute(
                    MATRIX_SQL.format(template="pair_cells"), (kind, start, scale * 60, scale * 60)
                )
            database.execute(SLA_SQL, (kind, start, scale * 3000, scale * 3000))
            database.execute(WINDOW_SQL, (kind, start, start + length, 1, start + length + 5.0))
        return len(levels) + len(scopes) + (len(server_pairs) if with_pairs else 0)

    t0 = time.perf_counter()
    hour_from = -(-first // HOUR_S) * HOUR_S  # the first whole hour
    day_from = -(-hour_from // DAY_S) * DAY_S
    for k, start in enumerate(range(first, newest + 1, 600)):
        rows += write("10m", start, 600, with_pairs=start >= pair_from)
        end = start + 600
        if end % HOUR_S == 0 and end - HOUR_S >= hour_from:
            # Per-pair histograms roll up only when every window below kept them.
            rows += write("1h", end - HOUR_S, HOUR_S, with_pairs=end - HOUR_S >= pair_from)
        if end % DAY_S == 0 and end - DAY_S >= day_from:
            rows += write("1d", end - DAY_S, DAY_S, with_pairs=end - DAY_S >= pair_from)
        if k % 100 == 0:
            print(f"# 10m window {k}/1008: {rows} rows, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)  # fmt: skip
    fast_newest = now - now % 10 - 20
    for start in range(fast_newest - 359 * 10, fast_newest + 1, 10):
        rows += write("30s", start, 30, with_pairs=False)
    return rows


def serve(path: str, topology_yaml: str, port_box: Any) -> None:
    import uvicorn  # noqa: PLC0415

    from pingmesh.alerts.engine import AlertEngine, RuleBook  # noqa: PLC0415
    from pingmesh.clock import SystemClock  # noqa: PLC0415
    from pingmesh.config import ServerConfig  # noqa: PLC0415
    from pingmesh.controller.topology_source import TopologySource  # noqa: PLC0415
    from pingmesh.core.topology import parse_topology  # noqa: PLC0415
    from pingmesh.store.alerts import AlertStore  # noqa: PLC0415
    from pingmesh.web.alerts_api import AlertsApi  # noqa: PLC0415
    from pingmesh.web.api import Api  # noqa: PLC0415
    from pingmesh.web.app import create_app  # noqa: PLC0415
    from pingmesh.web.history_api import HistoryApi  # noqa: PLC0415
    from pingmesh.web.topology_api import TopologyApi  # noqa: PLC0415

    db = ResultsDB(path)
    source = TopologySource(parse_topology(topology_yaml, filename="bench.yaml"))
    config, clock = ServerConfig(), SystemClock()
    api = Api(db, source, config, clock=clock)
    store = AlertStore(db.database)
    engine = AlertEngine(
        store, db, RuleBook([], store), source=source, clock=clock, config=config.alerts
    )
    app = create_app([
        api.router,
        HistoryApi(db, None, source, api, clock=clock).router,
        TopologyApi(db, source, api, config.heatmap, firing_alerts=store.firing).router,
        AlertsApi(engine, default_window="10m").router,
    ])  # fmt: skip
    sock = socket.socket()
    # As the server's own listener should: no Nagle delay between a response's head and body.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port_box.value = sock.getsockname()[1]
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)).run(
        sockets=[sock]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="per endpoint")
    parser.add_argument("--pair-days", type=float, default=7.0)
    parser.add_argument("--db", type=Path, help="reuse (or keep) this database file")
    args = parser.parse_args()
    from pingmesh.core.topology import dump_topology_yaml  # noqa: PLC0415

    topology = fleet()
    now_s = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "results.sqlite"
        fresh = not path.exists()
        db = ResultsDB(path)
        if fresh:
            t = time.perf_counter()
            rows = generate(db, topology, now_s, args.pair_days)
            print(f"# generated {rows} rows in {time.perf_counter() - t:.0f} s; "
                  f"{path.stat().st_size / 1e9:.2f} GB")  # fmt: skip
        newest = db.latest_window("10m")
        assert newest is not None
        db.close()
        port = multiprocessing.Value("i", 0)
        child = multiprocessing.Process(
            target=serve, args=(str(path), dump_topology_yaml(topology), port), daemon=True
        )
        child.start()
        client = httpx.Client(timeout=30, trust_env=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    port.value
                    and client.get(f"http://127.0.0.1:{port.value}/api/v1/windows").is_success
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port.value}/api/v1"
        rng = random.Random(2)
        servers = [s.name for s in topology.servers]
        tors = topology.entities("tor")
        server_pairs = pairs(topology)
        week_start = newest.window_start - 1007 * 600

        def at() -> str:
            t = rng.randrange(week_start, newest.window_start + 600)
            return datetime.fromtimestamp(t, tz=UTC).isoformat()

        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, tz=UTC).isoformat()

        def recent_pair() -> tuple[str, str]:
            return rng.choice(server_pairs)

        end = newest.window_start + 600
        pair_s = int(86400 * args.pair_days)
        endpoints: dict[str, Any] = {
            "agents": lambda: ("/agents", {}),
            "windows": lambda: ("/windows", {}),
            "sla_server": lambda: ("/sla", {"scope": "server", "window": "10m", "at": at()}),
            "sla_tor": lambda: ("/sla", {"scope": "tor", "window": "10m", "at": at()}),
            "heatmap_tor": lambda: ("/heatmap", {"level": "tor", "window": "10m", "at": at()}),
            # What a dashboard polls: the newest window (built once, then from the cache).
            "heatmap_tor_latest": lambda: ("/heatmap", {"level": "tor", "window": "10m"}),
            "heatmap_tor_columns": lambda: (
                "/heatmap", {"level": "tor", "window": "10m", "at": at(), "format": "columns"}),
            "heatmap_fast": lambda: ("/heatmap", {"level": "tor", "window": "30s"}),
            "pairs": lambda: ("/pairs", {"level": "tor", "src": rng.choice(tors),
                                         "dst": rng.choice(tors), "window": "10m",
                                         "at": iso(end - rng.randrange(1, pair_s))}),
            "history_pair_24h": lambda: ("/history", dict(zip(("src", "dst"), recent_pair(),
                                         strict=True), start=iso(end - 86400), end=iso(end))),
            "history_pair_7d": lambda: ("/history", dict(zip(("src", "dst"), recent_pair(),
                                        strict=True), start=iso(end - 7 * 86400), end=iso(end))),
            "history_tor_7d": lambda: ("/history", {"level": "tor", "src": rng.choice(tors),
                                       "dst": rng.choice(tors), "start": iso(end - 7 * 86400),
                                       "end": iso(end)}),
            "history_sla_7d": lambda: ("/history/sla", {"scope": "server",
                                       "entity": rng.choice(servers),
                                       "start": iso(end - 7 * 86400), "end": iso(end)}),
            "node_6h": lambda: (f"/node/{rng.choice(servers)}", {"start": iso(end - 6 * 3600),
                                                                 "end": iso(end)}),
            "node_24h": lambda: (f"/node/{rng.choice(servers)}", {"start": iso(end - 86400),
                                                                  "end": iso(end)}),
            "node_7d": lambda: (f"/node/{rng.choice(servers)}", {"start": iso(end - 7 * 86400),
                                                                 "end": iso(end)}),
            "topology_tor": lambda: ("/topology", {"level": "tor", "window": "10m", "at": at()}),
            "alerts_active": lambda: ("/alerts/active", {}),
            "alerts_history": lambda: ("/alerts", {}),
        }  # fmt: skip
        every: list[float] = []
        print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for name, make in endpoints.items():
            times = []
            kinds: set[str] = set()
            for _ in range(args.requests):
                path_, params = make()
                t = time.perf_counter()
                reply = client.get(base + path_, params=params)
                times.append((time.perf_counter() - t) * 1000)
                if reply.status_code != 200:
                    raise SystemExit(f"{name}: {reply.status_code} {reply.text[:200]}")
                body = reply.json()
                if isinstance(body, dict):
                    for part in body.get("resolutions") or [body]:
                        if isinstance(part.get("window"), str):
                            kinds.add(f"{part['window']}")
            times.sort()
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
            every += times
            print(f"# {name}: windows {', '.join(sorted(kinds)) or '-'}")
            print(f"figure: web_api_{name}_p50_ms {statistics.median(times):.1f} ms")
            print(f"figure: web_api_{name}_p99_ms {p99:.1f} ms")
        every.sort()
        print(f"figure: web_api_all_p99_ms {every[int(0.99 * len(every))]:.1f} ms")
        print(f"figure: web_api_all_max_ms {every[-1]:.1f} ms")
        print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        child.terminate()
        child.join(timeout=10)


if __name__ == "__main__":
    main()
