"""Agent efficiency: CPU and peak RSS while probing 2,500 loopback peers every 10 s (250/s).

Target (issue 3, after Pingmesh's C++ agent, PM §3.4.2: ~2,500 peers, < 45 MB, 0.26 % of 16
cores): at most 2 % of one core and 45 MB peak RSS, TCP connect probes, for >= 2 minutes.

Set-up, all on loopback: one responder agent (``pingmesh agent``, empty pinglist) listens on
0.0.0.0:P; the measured agent probes 2,500 distinct 127.x.y.1 addresses on port P, each every
10 s, and records every probe — to a results file (``--mode standalone``) or by uploading
batches to a small stub controller in this process (``--mode controller``; issue 7's
bandwidth sampler is switched off there, so the figure is the prober's alone, unless
``--bandwidth`` turns the sampler and its uplink on, reporting over HTTP to the stub, or
``--quic`` also sends every upload over QUIC to a listener in this process). CPU is read
from ``/proc/PID/stat`` over the measurement window after a warm-up; the peak RSS is VmHWM.

On loopback the kernel's handling of the *responder's* side of each handshake runs in the
prober's context (softirq on the same CPU), so the prober is charged for both ends.

Prints ``figure: NAME VALUE UNIT`` lines.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _agent_bench import (
    agent_argv,
    cpu_seconds,
    figure,
    free_port,
    load_average,
    loopback_addresses,
    memory_kb,
    scrape,
    start,
    stop,
    total,
    wait_http,
    write_agent_config,
    write_pinglist,
)


class _Stub(BaseHTTPRequestHandler):
    pinglist = b""
    records = 0
    batches = 0
    bandwidth_reports = 0

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/pinglist/"):
            self._answer(200, self.pinglist)
        else:
            self._answer(404, b'{"detail": "none"}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        handler = _ANSWERS.get(self.path)
        if handler is None:
            self._answer(404, b"{}")
        else:
            self._answer(*handler(body))

    def log_message(self, *_: object) -> None:
        return

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _results(body: bytes) -> tuple[int, bytes]:
    _Stub.records += body.count(b'"outcome"')
    _Stub.batches += 1
    ack = {"batch_id": json.loads(body)["batch_id"], "accepted": 0, "duplicate": False}
    return 200, json.dumps(ack).encode()


def _bandwidth(body: bytes) -> tuple[int, bytes]:
    reports = len(json.loads(body)["reports"])
    _Stub.bandwidth_reports += reports
    return 200, json.dumps({"accepted": reports, "duplicate": 0}).encode()


_ANSWERS = {"/api/v1/results": _results, "/api/v1/bandwidth": _bandwidth}


def _start_quic(work: Path) -> tuple[int, Path, str]:
    """A QUIC listener (the server's) in a thread: (port, CA file, token of agent "bench")."""
    import asyncio  # noqa: PLC0415 - only with --quic
    import datetime as dt  # noqa: PLC0415

    from pingmesh.server.quic import AgentIdentity, Handler, QuicListener  # noqa: PLC0415
    from pingmesh.server.tls import prepare_quic_security  # noqa: PLC0415

    security = prepare_quic_security(
        tls_dir=work / "tls", hosts=("127.0.0.1",), now=dt.datetime.now(dt.UTC)
    )

    def handler(path: str) -> Handler:
        async def handle(body: bytes, _who: AgentIdentity) -> tuple[int, bytes]:
            return _ANSWERS[path](body)

        return handle

    listener = QuicListener(
        host="127.0.0.1",
        port=0,
        certificate=security.certificate,
        private_key=security.private_key,
        authenticator=security.authenticator,
        handlers={path: handler(path) for path in _ANSWERS},
    )
    listener.bind()
    threading.Thread(target=lambda: asyncio.run(listener.serve()), daemon=True).start()
    assert security.ca_certificate is not None
    return listener.port, security.ca_certificate, security.authenticator.token_for("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=2500)
    parser.add_argument("--interval", type=float, default=10.0, help="per-peer interval, s")
    parser.add_argument("--duration", type=float, default=120.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--mode", choices=["standalone", "controller"], default="standalone")
    parser.add_argument("--kind", default="tcp", help="probe kind (tcp, udp, icmp, …)")
    parser.add_argument(
        "--tick", type=float, default=None, help="probe_tick_s (default: the agent's)"
    )
    parser.add_argument(
        "--bandwidth",
        action="store_true",
        help="controller mode: the bandwidth sampler and its uplink on (reports over HTTP)",
    )
    parser.add_argument(
        "--quic",
        action="store_true",
        help="controller mode: as --bandwidth, and every upload over QUIC (aioquic loaded)",
    )
    args = parser.parse_args()
    if (args.bandwidth or args.quic) and args.mode != "controller":
        parser.error("--bandwidth and --quic need --mode controller")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        echo_port, agent_port, agent_http = free_port(), free_port(), free_port()
        responder = start(
            agent_argv(
                "--pinglist",
                str(write_pinglist(work / "empty.json", [], interval_s=10)),
                "--bind",
                "0.0.0.0",
                "--config",
                str(write_agent_config(work / "r.json", responder_port=echo_port, http_port=0)),
            ),
            log=work / "responder.log",
        )
        port = 0 if args.kind == "icmp" else echo_port
        peers = [
            (f"p{i}", address, port, args.kind, 0)
            for i, address in enumerate(loopback_addresses(args.peers))
        ]
        pinglist = write_pinglist(work / "pinglist.json", peers, interval_s=args.interval)
        config: dict[str, object] = {"responder_port": agent_port, "http_port": agent_http}
        if args.tick is not None:
            config["probe_tick_s"] = args.tick
        server: ThreadingHTTPServer | None = None
        if args.mode == "standalone":
            source = ["--pinglist", str(pinglist), "--results", str(work / "results.jsonl")]
        else:
            _Stub.pinglist = pinglist.read_bytes()
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{server.server_address[1]}"
            source = ["--controller", url, "--name", "bench"]
            config["bandwidth"] = {"enabled": args.bandwidth or args.quic}
            config["task_poll_s"] = 10.0
            if args.quic:
                quic_port, ca_file, token = _start_quic(work)
                (work / "bench.token").write_text(token + "\n")
                config["transport"] = {
                    "quic": f"127.0.0.1:{quic_port}",
                    "ca_file": str(ca_file),
                    "token_file": str(work / "bench.token"),
                    "fallback_http": False,  # measure QUIC, not a silent fallback
                }
        agent = start(
            agent_argv(
                *source,
                "--config",
                str(write_agent_config(work / "a.json", **config)),
            ),
            log=work / "agent.log",
        )
        metrics = f"http://127.0.0.1:{agent_http}/metrics"
        try:
            wait_http(metrics)
            time.sleep(args.warmup)
            before = scrape(metrics)
            cpu0, rcpu0, t0 = cpu_seconds(agent.pid), cpu_seconds(responder.pid), time.monotonic()
            time.sleep(args.duration)
            cpu1, rcpu1, t1 = cpu_seconds(agent.pid), cpu_seconds(responder.pid), time.monotonic()
            after = scrape(metrics)
            memory = memory_kb(agent.pid)
        finally:
            stop(agent)
            stop(responder)
            if server is not None:
                server.shutdown()
        elapsed = t1 - t0
        probes = total(after, "pingmesh_agent_probes_total") - total(
            before, "pingmesh_agent_probes_total"
        )
        ok = total(after, "pingmesh_agent_probes_total", outcome="ok") - total(
            before, "pingmesh_agent_probes_total", outcome="ok"
        )
        lag_sum = total(after, "pingmesh_agent_loop_lag_seconds_sum") - total(
            before, "pingmesh_agent_loop_lag_seconds_sum"
        )
        lag_count = total(after, "pingmesh_agent_loop_lag_seconds_count") - total(
            before, "pingmesh_agent_loop_lag_seconds_count"
        )
        uplink = "quic" if args.quic else "http" if args.bandwidth else "off"
        print(
            f"# mode={args.mode} kind={args.kind} peers={args.peers} interval={args.interval}s"
            f" bandwidth={uplink if args.mode == 'controller' else 'off'}"
        )
        print(f"# measured {elapsed:.1f} s after {args.warmup:g} s warm-up; load {load_average()}")
        figure("agent_cpu_percent_of_one_core", 100 * (cpu1 - cpu0) / elapsed, "%")
        figure("agent_peak_rss", memory["VmHWM"] / 1024, "MiB")
        figure("agent_rss_at_end", memory["VmRSS"] / 1024, "MiB")
        figure("agent_probe_rate", probes / elapsed, "probes/s")
        figure("agent_probes_ok_ratio", ok / probes if probes else 0, "ratio")
        figure("agent_cpu_per_probe", 1e6 * (cpu1 - cpu0) / probes if probes else 0, "us")
        figure("agent_mean_loop_lag", 1e3 * lag_sum / lag_count if lag_count else 0, "ms")
        figure("responder_cpu_percent_of_one_core", 100 * (rcpu1 - rcpu0) / elapsed, "%")
        if args.mode == "controller":
            figure("records_uploaded", _Stub.records, "records")
        if args.bandwidth or args.quic:
            figure("bandwidth_reports_received", _Stub.bandwidth_reports, "reports")
            figure(
                "agent_quic_requests",
                total(after, "pingmesh_agent_uplink_quic_requests_total"),
                "requests",
            )


if __name__ == "__main__":
    main()
