"""The agent: answers probes, probes its peers, and reports what it saw (PM §3.4).

Two modes:

- **controller mode** (``controller`` + ``name``): the pinglist comes from
  ``GET {controller}/api/v1/pinglist/{name}`` (fail closed, see
  :mod:`pingmesh.agent.pinglist_policy`) and results are uploaded in batches;
- **standalone mode** (``pinglist_file``): a static pinglist (the controller's JSON) and results
  written as JSON lines to ``results_file`` (a path or ``-``), no controller, no uploads.

In both modes the responder (and the HTTP endpoint, unless ``http_port`` is 0) run all the
time: an agent that does not probe still answers (PM §3.4.2).

:meth:`Agent.run` binds every listener *before* it starts anything else, so an unusable address
is a plain :class:`~pingmesh.errors.ConfigError` that names it; then it runs the components in
one :class:`asyncio.TaskGroup` until cancelled. On the way out, results not yet uploaded get one
bounded attempt (``upload_timeout_s``), the results file is flushed, and every socket is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from pingmesh import __version__
from pingmesh.agent.fetcher import FetcherStatistics, PinglistFetcher
from pingmesh.agent.metrics import AgentCollector, HttpStatistics, MetricsServer
from pingmesh.agent.pinglist_policy import PinglistState
from pingmesh.agent.probe_loop import ProbeLoop, ProbeLoopStatistics
from pingmesh.agent.probers.tcp import TcpConnectProber
from pingmesh.agent.responder import Responder, ResponderStatistics
from pingmesh.agent.results_file import ResultsFileStatistics, ResultsFileWriter
from pingmesh.agent.uploader import Uploader, UploaderStatistics
from pingmesh.clock import Clock, SystemClock
from pingmesh.config import AgentConfig
from pingmesh.core.probe import ProbeKind, ProbeResult
from pingmesh.errors import ConfigError, PinglistError
from pingmesh.wire.pinglist import PinglistModel

logger = logging.getLogger(__name__)

MAX_PINGLIST_FILE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatistics:
    """A snapshot of every component (what ``/metrics`` shows)."""

    mode: str  # "controller" or "standalone"
    probing: bool
    reason: str  # why not probing; "" while probing
    probes: ProbeLoopStatistics
    responder: ResponderStatistics
    fetcher: FetcherStatistics | None
    uploader: UploaderStatistics | None
    results_file: ResultsFileStatistics | None
    http: HttpStatistics | None


def load_pinglist_file(path: Path) -> PinglistModel:
    """Read a pinglist JSON file; a bad one is a ``PinglistError`` naming file and field."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_PINGLIST_FILE_BYTES + 1)
    except OSError as exc:
        raise PinglistError(f"{path}: cannot read pinglist: {exc.strerror}") from exc
    if len(raw) > MAX_PINGLIST_FILE_BYTES:
        raise PinglistError(f"{path}: pinglist larger than {MAX_PINGLIST_FILE_BYTES} bytes")
    try:
        return PinglistModel.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        where = f"field {field}: " if field else ""
        raise PinglistError(f"{path}: {where}{first['msg']}") from exc


class Agent:
    """One agent; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
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
        self.mode = "controller" if config.controller is not None else "standalone"
        self._reason = "not started"
        self.responder = Responder(
            bind=config.bind,
            port=config.responder_port,
            max_connections=config.responder_max_connections,
        )
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(AgentCollector(self.statistics))
        self.http: MetricsServer | None = None
        if config.http_port != 0:
            self.http = MetricsServer(
                bind=config.bind, port=config.http_port, registry=self._registry
            )
        self.results_file: ResultsFileWriter | None = None
        if config.results_file is not None:
            self.results_file = ResultsFileWriter(config.results_file)
        self.probes = ProbeLoop(
            probers={ProbeKind.TCP: TcpConnectProber(bind_addr=config.bind, clock=self._clock)},
            sink=self._record,
            clock=self._clock,
            rng=self._rng,
            max_probe_rate=config.max_probe_rate,
            max_concurrent_probes=config.max_concurrent_probes,
        )
        self.fetcher: PinglistFetcher | None = None
        self.uploader: Uploader | None = None
        self._listening = asyncio.Event()

    @property
    def registry(self) -> CollectorRegistry:
        """The agent's own Prometheus registry (what ``/metrics`` serves)."""
        return self._registry

    async def run(self) -> None:
        """Run until cancelled; see the module docstring for start-up and shutdown."""
        pinglist = None
        if self.config.pinglist_file is not None:
            pinglist = load_pinglist_file(self.config.pinglist_file)
        async with contextlib.AsyncExitStack() as stack:
            await self._listen(stack)
            if self.config.controller is not None:
                client = await stack.enter_async_context(
                    httpx.AsyncClient(
                        headers={"User-Agent": f"pingmesh-agent/{__version__}"},
                        timeout=self.config.upload_timeout_s,
                    )
                )
                self._build_controller_components(client)
            if self.results_file is not None:
                self.results_file.open()
                stack.callback(self.results_file.close)
            if pinglist is not None:
                self._apply_standalone(pinglist)
            else:
                self._reason = "no pinglist yet"
            self._listening.set()
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self.responder.serve(), name="responder")
                    if self.http is not None:
                        tasks.create_task(self.http.serve(), name="http")
                    tasks.create_task(self.probes.run(), name="probe-loop")
                    if self.fetcher is not None:
                        tasks.create_task(self.fetcher.run(), name="fetcher")
                    if self.uploader is not None:
                        tasks.create_task(self.uploader.run(), name="uploader")
            finally:
                self._listening.clear()
                if self.uploader is not None:
                    await self.uploader.flush(timeout_s=self.config.upload_timeout_s)

    async def wait_listening(self) -> None:
        """Return once the responder (and HTTP endpoint) accept connections."""
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

    def statistics(self) -> AgentStatistics:
        """A snapshot of every component."""
        probes = self.probes.statistics()
        return AgentStatistics(
            mode=self.mode,
            probing=probes.probing,
            reason="" if probes.probing else self._reason,
            probes=probes,
            responder=self.responder.statistics(),
            fetcher=self.fetcher.statistics() if self.fetcher is not None else None,
            uploader=self.uploader.statistics() if self.uploader is not None else None,
            results_file=self.results_file.statistics() if self.results_file else None,
            http=self.http.statistics() if self.http is not None else None,
        )

    async def _listen(self, stack: contextlib.AsyncExitStack) -> None:
        listeners: list[tuple[str, Responder | MetricsServer]] = [
            ("responder_port", self.responder)
        ]
        if self.http is not None:
            listeners.append(("http_port", self.http))
        for field, listener in listeners:
            try:
                await listener.start()
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, "error")
                raise ConfigError(
                    f"field agent.{field}: cannot listen on {listener.bind}:{listener.port}: "
                    f"{name} ({exc.strerror or exc})"
                ) from exc
            stack.push_async_callback(listener.aclose)

    def _build_controller_components(self, client: httpx.AsyncClient) -> None:
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

    def _on_pinglist_state(self, state: PinglistState) -> None:
        self._reason = state.reason
        if self.uploader is not None and state.pinglist is not None:
            self.uploader.set_identity(
                agent_name=state.pinglist.server, pinglist_version=state.pinglist.version
            )
        self.probes.set_pinglist(state.pinglist if state.probing else None)

    def _apply_standalone(self, pinglist: PinglistModel) -> None:
        if pinglist.peers:
            logger.info("standalone pinglist %s: %d peers", pinglist.version, len(pinglist.peers))
        else:
            self._reason = "empty pinglist: only answering"
            logger.warning("not probing: %s", self._reason)
        self.probes.set_pinglist(pinglist)

    def _record(self, result: ProbeResult) -> None:
        if self.uploader is not None:
            self.uploader.submit(result)
        if self.results_file is not None:
            self.results_file.write(result)
