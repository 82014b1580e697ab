"""The agent: answers probes, probes its peers, and reports what it saw (PM §3.4).

Two modes:

- **controller mode** (``controller`` + ``name``): the pinglist comes from
  ``GET {controller}/api/v1/pinglist/{name}`` (fail closed, see
  :mod:`pingmesh.agent.pinglist_policy`), results are uploaded in batches (through the on-disk
  spool when ``spool_dir`` is set), and traceroute tasks are polled and run
  (:mod:`pingmesh.agent.tasks`);
- **standalone mode** (``pinglist_file``): a static pinglist (the controller's JSON) and results
  written as JSON lines to ``results_file`` (a path or ``-``), no controller, no uploads.

In both modes the responders (TCP and UDP echo on ``responder_port``; the HTTP endpoint with
``/ping`` and ``/metrics`` on ``http_port`` unless it is 0) run all the time: an agent that
does not probe still answers (PM §3.4.2). ICMP is answered by the kernel.

:meth:`Agent.run` binds every listener *before* it starts anything else, so an unusable address
is a plain :class:`~pingmesh.errors.ConfigError` that names it; then it runs the components in
one :class:`asyncio.TaskGroup` until cancelled. On the way out, probes in flight are cancelled
(their sockets closed), results not yet uploaded get one bounded attempt
(``upload_timeout_s``; with a spool, what is left stays on disk for the next start), the
results file is flushed, and every socket is closed.

Every probe result goes to the local aggregates (:mod:`pingmesh.agent.aggregates`), then to
the uploader and/or the results file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from pingmesh.agent.aggregates import AggregatesStatistics, LocalAggregates
from pingmesh.agent.config import AgentConfig
from pingmesh.agent.fetcher import FetcherStatistics, PinglistFetcher
from pingmesh.agent.http_client import H11Client, HttpClient
from pingmesh.agent.metrics import HttpStatistics, MetricsServer, render_agent_metrics
from pingmesh.agent.pinglist_policy import PinglistState
from pingmesh.agent.probe_loop import ProbeLoop, ProbeLoopStatistics
from pingmesh.agent.probers import Prober
from pingmesh.agent.probers.http import HttpProber
from pingmesh.agent.probers.icmp import IcmpEchoProber, IcmpProberStatistics
from pingmesh.agent.probers.tcp import TcpConnectProber
from pingmesh.agent.probers.tcp_echo import TcpEchoProber
from pingmesh.agent.probers.udp import UdpEchoProber, UdpProberStatistics
from pingmesh.agent.responder import Responder, ResponderStatistics
from pingmesh.agent.results_file import ResultsFileStatistics, ResultsFileWriter
from pingmesh.agent.spool import ResultSpool
from pingmesh.agent.udp_responder import UdpResponder, UdpResponderStatistics
from pingmesh.agent.uploader import Uploader, UploaderStatistics
from pingmesh.clock import Clock, SystemClock
from pingmesh.core.probe import ProbeKind, ProbePlan, ProbeResult
from pingmesh.core.schedule import source_ports_for_paths
from pingmesh.errors import ConfigError, PinglistError
from pingmesh.wire.pinglist import parse_plan

if TYPE_CHECKING:
    from pingmesh.agent.tasks import TaskRunner, TaskRunnerStatistics
    from pingmesh.agent.transport.uplink import Uplink, UplinkStatistics

logger = logging.getLogger(__name__)

MAX_PINGLIST_FILE_BYTES = 32 * 1024 * 1024
RESULTS_FLUSH_S = 1.0  # results-file lines reach the file at most this late


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLimits:
    """The safety limits in force (``/metrics`` shows them next to what is used)."""

    min_interval_s: float
    max_payload_bytes: int
    max_probe_rate: float
    max_concurrent_probes: int
    probe_timeout_s: float
    responder_max_connections: int
    responder_max_per_source: int
    max_pending_batches: int
    spool_max_bytes: int | None
    per_peer_metrics_max_peers: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatistics:
    """A snapshot of every component (what ``/metrics`` shows)."""

    mode: str  # "controller" or "standalone"
    probing: bool
    reason: str  # why not probing; "" while probing
    limits: AgentLimits
    probes: ProbeLoopStatistics
    aggregates: AggregatesStatistics
    responder: ResponderStatistics
    udp_responder: UdpResponderStatistics
    udp: UdpProberStatistics
    icmp: IcmpProberStatistics
    fetcher: FetcherStatistics | None
    uploader: UploaderStatistics | None
    tasks: TaskRunnerStatistics | None
    results_file: ResultsFileStatistics | None
    http: HttpStatistics | None
    uplink: UplinkStatistics | None = None


def load_pinglist_file(path: Path) -> ProbePlan:
    """Read a pinglist JSON file; a bad one is a ``PinglistError`` naming file and field."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_PINGLIST_FILE_BYTES + 1)
    except OSError as exc:
        raise PinglistError(f"{path}: cannot read pinglist: {exc.strerror}") from exc
    if len(raw) > MAX_PINGLIST_FILE_BYTES:
        raise PinglistError(f"{path}: pinglist larger than {MAX_PINGLIST_FILE_BYTES} bytes")
    try:
        return parse_plan(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        where = f"field {field}: " if field else ""
        raise PinglistError(f"{path}: {where}{first['msg']}") from exc


def _https_context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"field agent.https_ca_file: cannot load {ca_file}: {exc}") from exc


def _needs_uplink(config: AgentConfig) -> bool:
    """Issue 7's uplink (QUIC uploads, bandwidth sampler): only when configured."""
    if config.controller is None:
        return False
    return config.transport.quic is not None or config.bandwidth.enabled


class Agent:
    """One agent; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        http_client: HttpClient | None = None,
    ) -> None:
        if config.controller is None and config.pinglist_file is None:
            raise ConfigError("agent: needs a controller (with a name) or a pinglist_file")
        if config.controller is not None and config.pinglist_file is not None:
            raise ConfigError("agent: takes a controller or a pinglist_file, not both")
        if config.controller is not None:
            if not config.name:
                raise ConfigError("field agent.name: required with a controller")
            if not config.controller.startswith(("http://", "https://")):
                raise ConfigError(
                    f"field agent.controller: {config.controller!r} is not an http(s) URL"
                )
        self.config = config
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else random.Random()
        self._http_client = http_client
        self.mode = "controller" if config.controller is not None else "standalone"
        self._reason = "not started"
        self.responder = Responder(
            bind=config.bind,
            port=config.responder_port,
            max_connections=config.responder_max_connections,
            max_per_source=config.responder_max_per_source,
        )
        self.udp_responder = UdpResponder(
            bind=config.bind,
            port=config.responder_port,
            per_source_rate=config.udp_responder_per_source_rate,
            global_rate=config.udp_responder_rate,
        )
        self.http: MetricsServer | None = None
        if config.http_port != 0:
            self.http = MetricsServer(
                bind=config.bind, port=config.http_port, render=self.render_metrics
            )
        self.results_file: ResultsFileWriter | None = None
        if config.results_file is not None:
            self.results_file = ResultsFileWriter(config.results_file)
        self.aggregates = LocalAggregates(
            window_s=config.aggregate_window_s,
            per_peer_limit=config.per_peer_metrics_max_peers,
        )
        bind = config.bind
        self.udp_prober = UdpEchoProber(
            bind_addr=bind,
            clock=self._clock,
            rng=self._rng,
            source_ports=source_ports_for_paths(config.udp_ecmp_paths, config.udp_path_coverage),
            rotate_fraction_per_hour=config.udp_rotate_per_hour,
        )
        self.icmp_prober = IcmpEchoProber(
            bind_addr=bind, clock=self._clock, rng=self._rng, socket_kind=config.icmp_socket
        )
        # The system's CA store costs ~1 MB: loaded only when an HTTPS peer appears.
        https_context = (
            _https_context(config.https_ca_file) if config.https_ca_file is not None else None
        )
        self.probers: dict[ProbeKind, Prober] = {
            ProbeKind.TCP: TcpConnectProber(bind_addr=bind, clock=self._clock),
            ProbeKind.TCP_ECHO: TcpEchoProber(bind_addr=bind, clock=self._clock, rng=self._rng),
            ProbeKind.HTTP: HttpProber(kind=ProbeKind.HTTP, bind_addr=bind, clock=self._clock),
            ProbeKind.HTTPS: HttpProber(
                kind=ProbeKind.HTTPS, bind_addr=bind, clock=self._clock, ssl_context=https_context
            ),
            ProbeKind.UDP: self.udp_prober,
            ProbeKind.ICMP: self.icmp_prober,
        }
        self.probes = ProbeLoop(
            probers=self.probers,
            sink=self._record,
            clock=self._clock,
            rng=self._rng,
            max_probe_rate=config.max_probe_rate,
            max_concurrent_probes=config.max_concurrent_probes,
            tick_s=config.probe_tick_s,
        )
        self.fetcher: PinglistFetcher | None = None
        self.uploader: Uploader | None = None
        self.tasks: TaskRunner | None = None
        self.spool: ResultSpool | None = None
        if config.spool_dir is not None:
            self.spool = ResultSpool(config.spool_dir, max_bytes=config.spool_max_bytes)
        self.uplink: Uplink | None = None
        if _needs_uplink(config) and http_client is None:
            from pingmesh.agent.transport.uplink import Uplink  # noqa: PLC0415 - heavy, optional

            self.uplink = Uplink(config, clock=self._clock, rng=self._rng)
        self._listening = asyncio.Event()

    async def run(self) -> None:
        """Run until cancelled; see the module docstring for start-up and shutdown."""
        pinglist = None
        if self.config.pinglist_file is not None:
            pinglist = load_pinglist_file(self.config.pinglist_file)
        async with contextlib.AsyncExitStack() as stack:
            await self._listen(stack)
            if self.config.controller is not None:
                client = self._http_client
                if client is None:
                    client = self._make_client(stack)
                self._build_controller_components(client)
            if self.results_file is not None:
                self.results_file.open()
                stack.callback(self.results_file.close)
            if pinglist is not None:
                self._apply_standalone(pinglist)
            else:
                self._reason = "no pinglist yet"
            if self.uploader is not None:
                self.uploader.recover()
            self._listening.set()
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self.responder.serve(), name="responder")
                    tasks.create_task(self.udp_responder.serve(), name="udp-responder")
                    if self.http is not None:
                        tasks.create_task(self.http.serve(), name="http")
                    tasks.create_task(self.probes.run(), name="probe-loop")
                    if self.fetcher is not None:
                        tasks.create_task(self.fetcher.run(), name="fetcher")
                    if self.uploader is not None:
                        tasks.create_task(self.uploader.run(), name="uploader")
                    if self.tasks is not None:
                        tasks.create_task(self.tasks.run(), name="tasks")
                    if self.uplink is not None:
                        tasks.create_task(self.uplink.run(), name="uplink")
                    if self.results_file is not None:
                        tasks.create_task(self._flush_results(), name="results-file")
            finally:
                self._listening.clear()
                self._close_probers()
                if self.uploader is not None:
                    await self.uploader.flush(timeout_s=self.config.upload_timeout_s)
                if self.uplink is not None:
                    await self.uplink.flush(timeout_s=self.config.upload_timeout_s)

    async def wait_listening(self) -> None:
        """Return once the responders (and HTTP endpoint) accept connections."""
        await self._listening.wait()

    async def wait_probing(self) -> None:
        """Return once the agent is probing peers."""
        await self.probes.wait_probing()

    async def wait_not_probing(self) -> None:
        """Return once the agent has no peers to probe (it still answers)."""
        await self.probes.wait_not_probing()

    async def wait_probes(self, count: int) -> None:
        """Return once at least ``count`` probes have completed."""
        await self.probes.wait_completed(count)

    def limits(self) -> AgentLimits:
        """The safety limits in force."""
        config = self.config
        return AgentLimits(
            min_interval_s=1.0,
            max_payload_bytes=64 * 1024,
            max_probe_rate=config.max_probe_rate,
            max_concurrent_probes=config.max_concurrent_probes,
            probe_timeout_s=self.probes.timeout_s,
            responder_max_connections=config.responder_max_connections,
            responder_max_per_source=config.responder_max_per_source,
            max_pending_batches=config.max_pending_batches,
            spool_max_bytes=config.spool_max_bytes if config.spool_dir is not None else None,
            per_peer_metrics_max_peers=config.per_peer_metrics_max_peers,
        )

    def statistics(self) -> AgentStatistics:
        """A snapshot of every component."""
        probes = self.probes.statistics()
        return AgentStatistics(
            mode=self.mode,
            probing=probes.probing,
            reason="" if probes.probing else self._reason,
            limits=self.limits(),
            probes=probes,
            aggregates=self.aggregates.statistics(self._clock.monotonic_ns()),
            responder=self.responder.statistics(),
            udp_responder=self.udp_responder.statistics(),
            udp=self.udp_prober.statistics(),
            icmp=self.icmp_prober.statistics(),
            fetcher=self.fetcher.statistics() if self.fetcher is not None else None,
            uploader=self.uploader.statistics() if self.uploader is not None else None,
            tasks=self.tasks.statistics() if self.tasks is not None else None,
            results_file=self.results_file.statistics() if self.results_file else None,
            http=self.http.statistics() if self.http is not None else None,
            uplink=self.uplink.statistics() if self.uplink is not None else None,
        )

    def render_metrics(self) -> bytes:
        """The Prometheus text exposition of :meth:`statistics`, now."""
        return render_agent_metrics(self.statistics())

    def _make_client(self, stack: contextlib.AsyncExitStack) -> HttpClient:
        client: HttpClient = H11Client(ssl_context=None)
        if self.uplink is not None:
            # The uplink reuses this client (no second HTTP stack: PM §3.4.2's memory budget).
            client = self.uplink.attach(client)
        stack.push_async_callback(client.aclose)
        return client

    async def _listen(self, stack: contextlib.AsyncExitStack) -> None:
        listeners: list[tuple[str, Responder | UdpResponder | MetricsServer]] = [
            ("responder_port", self.responder),
            ("responder_port", self.udp_responder),
        ]
        if self.http is not None:
            listeners.append(("http_port", self.http))
        for field, listener in listeners:
            try:
                await listener.start()
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, "error")
                proto = "udp" if isinstance(listener, UdpResponder) else "tcp"
                raise ConfigError(
                    f"field agent.{field}: cannot listen on {listener.bind}:{listener.port}"
                    f" ({proto}): {name} ({exc.strerror or exc})"
                ) from exc
            stack.push_async_callback(listener.aclose)

    def _build_controller_components(self, client: HttpClient) -> None:
        config = self.config
        assert config.controller is not None
        assert config.name is not None
        self.uploader = Uploader(
            client=client,
            controller=config.controller,
            agent_name=config.name,
            clock=self._clock,
            rng=self._rng,
            interval_s=config.upload_interval_s,
            max_batch_records=config.max_batch_records,
            attempts=config.upload_attempts,
            timeout_s=config.upload_timeout_s,
            max_pending_batches=config.max_pending_batches,
            spool=self.spool,
        )
        self.fetcher = PinglistFetcher(
            client=client,
            controller=config.controller,
            name=config.name,
            refresh_s=config.refresh_s,
            fail_closed_after=config.fail_closed_after,
            on_change=self._on_pinglist_state,
            rng=self._rng,
        )
        if config.task_poll_s > 0:
            # Imported here: standalone agents never load the task models.
            from pingmesh.agent.probers.traceroute import TcpTraceroute  # noqa: PLC0415
            from pingmesh.agent.tasks import TaskRunner  # noqa: PLC0415

            self.tasks = TaskRunner(
                client=client,
                controller=config.controller,
                name=config.name,
                tracer=TcpTraceroute(bind_addr=config.bind, clock=self._clock),
                clock=self._clock,
                rng=self._rng,
                poll_s=config.task_poll_s,
                max_per_minute=config.traceroutes_per_minute,
            )

    def _on_pinglist_state(self, state: PinglistState) -> None:
        self._reason = state.reason
        if self.uploader is not None and state.pinglist is not None:
            self.uploader.set_identity(
                agent_name=state.pinglist.server, pinglist_version=state.pinglist.version
            )
        self._set_pinglist(state.pinglist if state.probing else None)

    def _apply_standalone(self, pinglist: ProbePlan) -> None:
        if pinglist.targets:
            logger.info("standalone pinglist %s: %d peers", pinglist.version, len(pinglist.targets))
        else:
            self._reason = "empty pinglist: only answering"
            logger.warning("not probing: %s", self._reason)
        self._set_pinglist(pinglist)

    def _set_pinglist(self, pinglist: ProbePlan | None) -> None:
        self.aggregates.set_peers(
            (t.name, t.kind) for t in (pinglist.targets if pinglist is not None else ())
        )
        self.probes.set_pinglist(pinglist)

    async def _flush_results(self) -> None:
        assert self.results_file is not None
        while True:
            await asyncio.sleep(RESULTS_FLUSH_S)
            self.results_file.flush()

    def _close_probers(self) -> None:
        for prober in self.probers.values():
            prober.close()

    def _record(self, result: ProbeResult) -> None:
        self.aggregates.add(result, self._clock.monotonic_ns())
        if self.uploader is not None:
            self.uploader.submit(result)
        if self.results_file is not None:
            self.results_file.write(result)
