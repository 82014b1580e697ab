"""``pingmesh server``: controller + collector + analysis + web in one process.

One asyncio loop runs, under one TaskGroup: the HTTP server (uvicorn), the collector's group
commit, the analysis jobs, the topology watcher and the agents-seen writer. Cancelling
:meth:`PingmeshServer.run` stops them all; the collector flushes what it has accepted first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from pingmesh.alerts.engine import AlertEngine, RuleBook, Tracer
from pingmesh.alerts.setup import notifiers_from_config, rules_from_config
from pingmesh.analysis.runner import AnalysisRunner
from pingmesh.clock import Clock, SystemClock
from pingmesh.collector.routes import RESULTS_PATH
from pingmesh.collector.routes import router as collector_router
from pingmesh.collector.service import Collector
from pingmesh.config import ServerConfig
from pingmesh.controller.routes import router as controller_router
from pingmesh.controller.service import PinglistService
from pingmesh.controller.tasks import TracerouteService, tasks_router
from pingmesh.controller.topology_source import TopologySource
from pingmesh.errors import ConfigError
from pingmesh.server.metrics import metrics_router
from pingmesh.server.quic import QuicListener, results_handler
from pingmesh.server.seen import AgentsSeen
from pingmesh.server.tls import QuicSecurity, prepare_quic_security
from pingmesh.store.alerts import AlertStore
from pingmesh.store.bandwidth import BandwidthStore
from pingmesh.store.incidents import IncidentStore
from pingmesh.store.raw import RawStore
from pingmesh.store.results import ResultsDB
from pingmesh.store.rollups import RollupStore
from pingmesh.store.traceroutes import TracerouteStore
from pingmesh.web.alerts_api import AlertsApi
from pingmesh.web.api import Api
from pingmesh.web.app import create_app
from pingmesh.web.bandwidth_api import BANDWIDTH_PATH, BandwidthService
from pingmesh.web.history_api import HistoryApi
from pingmesh.web.incidents_api import IncidentsApi
from pingmesh.web.topology_api import TopologyApi

log = logging.getLogger(__name__)

TOPOLOGY_CHECK_S = 5.0
SEEN_FLUSH_S = 2.0


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); raises ConfigError naming the value."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"field listen: {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the CLI owns signals and cancels us."""

    def install_signal_handlers(self) -> None:
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStatistics:
    """The server's own figures."""

    topology_servers: int
    topology_reload_errors_total: int
    agents_flushed_total: int


class PingmeshServer:
    """All server components wired together."""

    def __init__(
        self,
        config: ServerConfig,
        source: TopologySource,
        *,
        clock: Clock | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.clock = clock or SystemClock()
        self.host, self.port = parse_listen(config.listen)
        data_dir = config.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"field data_dir: cannot create {data_dir}: {exc.strerror}") from exc
        self.raw = RawStore(data_dir / "raw")
        self.db = ResultsDB(config.db or data_dir / "results.sqlite")
        self.seen = AgentsSeen(self.db, clock=self.clock)
        self.pinglists = PinglistService(source, config.pinglist)
        self.collector = Collector(
            self.raw, source, config.collector, clock=self.clock, on_upload=self.seen.uploaded
        )
        # Analysis (issue 4): four time scales, rollups, detection, traceroute tasks.
        self.rollups = RollupStore(data_dir / "rollups")
        self.traceroutes = TracerouteService(
            TracerouteStore(self.db.database),
            source,
            config.analysis.traceroute,
            clock=self.clock,
            probe_port=config.pinglist.port,
        )
        self.incidents = IncidentStore(self.db.database)
        self.analysis = AnalysisRunner(
            self.raw,
            self.db,
            config.analysis,
            clock=self.clock,
            source=source,
            pinglist=config.pinglist,
            rollups=self.rollups,
            incidents=self.incidents,
            traces=self.traceroutes,
        )
        self.incidents_api = IncidentsApi(self.incidents, clock=self.clock)
        self._agents_flushed = 0
        self.api = Api(self.db, source, config, clock=self.clock)
        # Alerting (issue 5): rules over the windows and incidents, notifiers, and the
        # dashboard's drill-down, topology and alerts APIs.
        self.alert_store = AlertStore(self.db.database)
        self.alerts = AlertEngine(
            self.alert_store,
            self.db,
            RuleBook(rules_from_config(config.alerts, config.analysis), self.alert_store),
            source=source,
            clock=self.clock,
            config=config.alerts,
            notifiers=notifiers_from_config(config.alerts),
            incidents=self.incidents,
            tracer=tracer if tracer is not None else self.traceroutes,
        )
        self.history = HistoryApi(self.db, self.raw, source, self.api, clock=self.clock)
        self.topology_api = TopologyApi(
            self.db, source, self.api, config.heatmap, firing_alerts=self.alert_store.firing
        )
        self.alerts_api = AlertsApi(self.alerts, default_window=self.api.default_window)
        # Bandwidth over QUIC (issue 7): storage, API and page; the QUIC listener if asked for.
        self.quic_security: QuicSecurity | None = None
        self.quic: QuicListener | None = None
        if config.quic_listen is not None:
            quic_host, quic_port = parse_listen(config.quic_listen)
            self.quic_security = prepare_quic_security(
                tls_dir=config.tls_dir or data_dir / "tls",
                hosts=config.tls_hosts or (quic_host, "localhost"),
                now=datetime.datetime.now(datetime.UTC),
                certificate=config.tls_cert,
                private_key=config.tls_key,
                agent_secret=config.agent_secret_file,
            )
        self.bandwidth = BandwidthService(
            BandwidthStore(self.db.database),
            clock=self.clock,
            authenticator=self.quic_security.authenticator if self.quic_security else None,
            retention_days=config.bandwidth_retention_days,
        )
        if self.quic_security is not None:
            self.quic = QuicListener(
                host=quic_host,
                port=quic_port,
                certificate=self.quic_security.certificate,
                private_key=self.quic_security.private_key,
                authenticator=self.quic_security.authenticator,
                handlers={
                    RESULTS_PATH: results_handler(self.collector, lambda: source.topology),
                    BANDWIDTH_PATH: self.bandwidth.handle_quic,
                },
            )
        self.app = create_app(
            [
                controller_router(self.pinglists, on_fetch=self.seen.fetched),
                collector_router(self.collector, config.collector),
                self.api.router,
                self.incidents_api.router,
                tasks_router(self.traceroutes),
                self.history.router,
                self.topology_api.router,
                self.alerts_api.router,
                self.bandwidth.router,
                metrics_router(
                    {
                        "server": self.statistics,
                        "controller": self.pinglists.statistics,
                        "collector": self.collector.statistics,
                        "analysis": self.analysis.statistics,
                        "fast_path": self.analysis.fast_path_statistics,
                        "raw_index": self.analysis.file_index_statistics,
                        "rollups": self.rollups.statistics,
                        "traceroutes": self.traceroutes.statistics,
                        "incidents_api": self.incidents_api.statistics,
                        **(
                            {"detection": self.analysis.detector.statistics}
                            if self.analysis.detector is not None
                            else {}
                        ),
                        "web": self.api.statistics,
                        "raw": self.raw.statistics,
                        "alerts": self.alerts.statistics,
                        "drilldown": self.history.statistics,
                        "topology": self.topology_api.statistics,
                        "bandwidth": self.bandwidth.statistics,
                        "bandwidth_store": self.bandwidth.store.statistics,
                        **({"quic": self.quic.statistics} if self.quic is not None else {}),
                    }
                ),
            ]
        )
        self._uvicorn: _Uvicorn | None = None
        self._socket: socket.socket | None = None

    @classmethod
    def from_config(cls, config: ServerConfig, *, clock: Clock | None = None) -> PingmeshServer:
        """Build the server from its config; the topology file is required."""
        if config.topology is None:
            raise ConfigError("field topology: the server needs --topology FILE")
        return cls(config, TopologySource.from_file(config.topology), clock=clock)

    @property
    def url(self) -> str:
        """The base URL of the API and dashboard."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def statistics(self) -> ServerStatistics:
        """The server's own figures (for ``/metrics``)."""
        return ServerStatistics(
            topology_servers=len(self.source.topology.servers),
            topology_reload_errors_total=self.source.reload_errors,
            agents_flushed_total=self._agents_flushed,
        )

    def bind(self) -> None:
        """Open the listening socket now (so a busy port is an error before anything runs).

        With port 0 the kernel picks a free port, and :attr:`port` and :attr:`url` tell which.
        """
        if self._socket is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family, backlog=1024)
        except OSError as exc:
            raise ConfigError(
                f"field listen: cannot listen on {self.config.listen}: {exc.strerror}"
            ) from exc
        # Accepted connections inherit it: without, a response's head and body wait on
        # Nagle + delayed ACK (~40 ms per request on loopback, measured by bench/web_api.py).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = sock.getsockname()[1]
        self._socket = sock
        if self.quic is not None:
            self.quic.bind()

    async def wait_started(self) -> None:
        """Return once the HTTP server accepts connections."""
        # uvicorn offers a flag, not an event, to say it has started.
        while self._uvicorn is None or not self._uvicorn.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def run(self) -> None:
        """Run every component until cancelled."""
        self.bind()
        assert self._socket is not None
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._uvicorn = _Uvicorn(config)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._serve_http(self._uvicorn), name="http")
                tasks.create_task(self.collector.run(), name="collector")
                tasks.create_task(self.analysis.run(), name="analysis")
                tasks.create_task(self._watch_topology(), name="topology")
                tasks.create_task(self._flush_seen(), name="seen")
                if self.config.alerts.enabled:
                    tasks.create_task(self.alerts.run(), name="alerts")
                tasks.create_task(self.bandwidth.run(), name="bandwidth-retention")
                if self.quic is not None:
                    tasks.create_task(self.quic.serve(), name="quic")
        finally:
            await asyncio.to_thread(self._flush_seen_once)
            self.db.close()

    async def _serve_http(self, server: _Uvicorn) -> None:
        assert self._socket is not None
        serving = asyncio.create_task(server.serve(sockets=[self._socket]))
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            server.should_exit = True
            await serving
            raise
        finally:
            self._socket.close()
            self._socket = None

    async def _watch_topology(self) -> None:
        while True:
            await asyncio.sleep(TOPOLOGY_CHECK_S)
            if await asyncio.to_thread(self.source.reload_if_changed):
                log.info("topology changed: now %d servers", len(self.source.topology.servers))

    async def _flush_seen(self) -> None:
        while True:
            await asyncio.sleep(SEEN_FLUSH_S)
            await asyncio.to_thread(self._flush_seen_once)

    def _flush_seen_once(self) -> None:
        self._agents_flushed += self.seen.flush()
