"""``pingmesh lab``: bring a fabric up with pingmesh running on it, break it, mend it, remove it.

:meth:`Lab.up` builds the fabric (:mod:`pingmesh.lab.fabric`), writes the topology of its
servers and a config tuned for quick detection, starts ``pingmesh server`` in the management
namespace and ``pingmesh agent`` in every server namespace — detached, so that they outlive the
command (:mod:`pingmesh.lab.processes`) — and records all of it in the state file
(:mod:`pingmesh.lab.state`). Should anything fail half-way, what was made is removed again.

:meth:`Lab.inject` and :meth:`Lab.clear` add and remove faults (:mod:`pingmesh.lab.faults`)
under the state lock: nftables rules are recomputed for the routers concerned from *all* the
faults in force and replaced in one transaction; links and hosts are taken down and brought
back with their routes re-applied (Linux forgets the routes over an interface that goes down).
:meth:`Lab.clear_all` puts every part back as planned, whatever state it is in, so it is also
the repair for a lab that someone changed by hand.

:meth:`Lab.down` stops what the state file names and then sweeps every namespace with the
lab's prefix, so it works without a state file as well (after a crash, or a reboot's worth of
leftovers in the data directory).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import ValidationError

from pingmesh.config import AgentConfig, ServerConfig, load_config_file
from pingmesh.core.topology import dump_topology_yaml
from pingmesh.errors import ConfigError, LabError
from pingmesh.lab.commands import CommandRunner, SubprocessRunner
from pingmesh.lab.fabric import Fabric, SweepReport, list_namespaces, sweep
from pingmesh.lab.faults import (
    ActiveFault,
    CpuStarve,
    Fault,
    HostDown,
    LinkDown,
    describe,
    fault_routers,
    nft_rules,
    validate_fault,
)
from pingmesh.lab.plan import (
    DEFAULT_MGMT_NET,
    DEFAULT_PREFIX,
    MGMT_PORT,
    SERVER_PORT,
    LabPlan,
    LabShape,
    build_plan,
    valid_prefix,
)
from pingmesh.lab.processes import (
    ProcessRecord,
    is_alive,
    send,
    spawn_in_namespace,
    stop_all,
)
from pingmesh.lab.state import FaultModel, LabStateModel, ProcessModel, StateStore

log = logging.getLogger(__name__)

Announce = Callable[[str], None]
DEFAULT_STATE_DIR = Path("/run/pingmesh-lab")
DEFAULT_DATA_ROOT = Path("/var/lib/pingmesh-lab")
DEFAULT_PORT = 8080
SERVER_READY_S = 60.0
POLL_S = 0.5

# Quick detection on a small fabric: 1 s per pair, a 10 s fast window analysed every 2 s.
# The lag covers a probe's life before it can be read: the 3.5 s timeout (a timeout is
# recorded at its send time), the 1 s upload interval, the collector's flush, and a second
# to spare; with less, the newest timeouts would miss their slice (read once) for good.
# At 1 probe per pair per second the fast window alone has the evidence of a 1 % drop, so
# the silent-drop horizon is the window too: a fault that is fixed ends its incident within
# seconds instead of the minutes a long horizon takes to forget it. An agent silent for 15 s
# is down (R-Pingmesh uses 20 s; the lab's agents upload every second).
LAB_SERVER_DEFAULTS: dict[str, Any] = {
    "agent_down_after_s": 10.0,
    "pinglist": {"interval_s": 1.0},
    "analysis": {
        "fast_window_s": 10,
        "fast_every_s": 2,
        "lag_s": 6,
        "incidents": {"silent_drop_horizon_s": 10, "host_down_after_s": 15.0},
    },
    "collector": {"flush_interval_s": 0.5},
}
LAB_AGENT_DEFAULTS: dict[str, Any] = {"upload_interval_s": 1.0, "refresh_s": 5.0}


def _quiet(_: str) -> None:
    pass


def require_root() -> None:
    """LabError unless this process may create namespaces (it must be root)."""
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root: network namespaces, veth pairs, routes and nftables need "
            "CAP_NET_ADMIN and CAP_SYS_ADMIN (try: sudo pingmesh lab …)"
        )


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class LabOptions:
    """Where a lab lives and how it is reached."""

    prefix: str = DEFAULT_PREFIX
    state_dir: Path = DEFAULT_STATE_DIR
    data_dir: Path | None = None  # default: DEFAULT_DATA_ROOT / prefix
    port: int = DEFAULT_PORT
    mgmt_net: str = DEFAULT_MGMT_NET
    config_file: Path | None = None  # a pingmesh config whose sections override the lab's
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self) -> None:
        valid_prefix(self.prefix)
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"lab: port {self.port} is not 1-65535")

    @property
    def resolved_data_dir(self) -> Path:
        """The data directory (server data, logs, generated files)."""
        return self.data_dir if self.data_dir is not None else DEFAULT_DATA_ROOT / self.prefix


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultStatus:
    """A fault in force and the packets its rules dropped so far (None: no rules)."""

    fault: ActiveFault
    description: str
    dropped_packets: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LabStatus:
    """What ``pingmesh lab status`` shows."""

    prefix: str
    url: str
    data_dir: str
    shape: LabShape
    namespaces: int
    namespaces_planned: int
    ready: bool
    server_running: bool
    agents_running: int
    agents_planned: int
    agents_stopped_by_faults: tuple[str, ...]
    faults: tuple[FaultStatus, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeOutcome:
    """One probe of :meth:`Lab.probe`."""

    src_port: int
    outcome: str
    rtt_us: float | None
    retransmits: int
    detail: str


class Lab:
    """One lab, by prefix; see the module docstring."""

    def __init__(
        self,
        options: LabOptions,
        *,
        runner: CommandRunner | None = None,
        announce: Announce = _quiet,
    ) -> None:
        self.options = options
        self._runner: CommandRunner = runner if runner is not None else SubprocessRunner()
        self._announce = announce
        self.store = StateStore(options.state_dir, options.prefix)

    # -- the pieces ------------------------------------------------------------------------

    def _load(self) -> tuple[LabStateModel, LabPlan]:
        state = self.store.load()
        if state is None:
            raise LabError(
                f"no lab {self.options.prefix!r} is up (no {self.store.path}); "
                "start one with `pingmesh lab up`"
            )
        plan = build_plan(LabShape(**state.shape), prefix=state.prefix, mgmt_net=state.mgmt_net)
        return state, plan

    def plan(self) -> LabPlan:
        """The plan of the lab that is up."""
        return self._load()[1]

    def url(self) -> str:
        """The dashboard and API base URL of the lab that is up."""
        state, plan = self._load()
        return _url(plan, state.port)

    def _fabric(self, plan: LabPlan) -> Fabric:
        return Fabric(plan, self._runner, announce=self._announce)

    # -- up --------------------------------------------------------------------------------

    def up(self, shape: LabShape, *, wait_s: float = 60.0) -> LabStatus:
        """Build the fabric, start the server and the agents; see the module docstring."""
        require_root()
        opts = self.options
        plan = build_plan(shape, prefix=opts.prefix, mgmt_net=opts.mgmt_net)
        data_dir = opts.resolved_data_dir.absolute()
        url = _url(plan, opts.port)
        document = self._config_document(plan, url)
        with self.store.locked():
            if self.store.load() is not None and list_namespaces(self._runner, opts.prefix):
                raise LabError(
                    f"lab {opts.prefix!r} is already up; `pingmesh lab down --prefix "
                    f"{opts.prefix}` first, or use another --prefix"
                )
            state = LabStateModel(
                prefix=opts.prefix,
                mgmt_net=plan.mgmt_net,
                shape=asdict(shape),
                data_dir=str(data_dir),
                port=opts.port,
                python=opts.python,
                created_at_s=time.time(),
            )
            try:
                (data_dir / "logs").mkdir(parents=True, exist_ok=True)
                (data_dir / "topology.yaml").write_text(
                    dump_topology_yaml(plan.topology()), encoding="utf-8"
                )
                (data_dir / "pingmesh.yaml").write_text(
                    yaml.safe_dump(document, sort_keys=False), encoding="utf-8"
                )
            except OSError as exc:
                raise LabError(f"{data_dir}: cannot write the lab's files: {exc.strerror}") from exc
            self.store.save(state)  # first, so that a crash while building is found again
            try:
                self._fabric(plan).build()
                self._announce(f"starting pingmesh server at {url}")
                state.server = ProcessModel.of(self._start_server(plan, state))
                self.store.save(state)
                self._wait_server(url, state.server.record(), data_dir)
                self._announce(f"starting {len(plan.servers)} agents")
                for server in plan.servers:
                    state.agents[server.name] = ProcessModel.of(
                        self._start_agent(plan, state, server.name)
                    )
                state.ready = True
                self.store.save(state)
            except BaseException:
                self._announce("lab up failed; removing what was made")
                self._teardown(state)
                raise
        self._wait_agents(url, len(plan.servers), wait_s)
        return self.status()

    def _config_document(self, plan: LabPlan, url: str) -> dict[str, Any]:
        user_server = load_config_file(self.options.config_file, "server")
        user_agent = load_config_file(self.options.config_file, "agent")
        server = _merge(LAB_SERVER_DEFAULTS, user_server)
        agent = _merge(LAB_AGENT_DEFAULTS, user_agent)
        where = f"{self.options.config_file}: " if self.options.config_file else ""
        for model, section, extra in (
            (ServerConfig, "server", server),
            (AgentConfig, "agent", {**agent, "controller": url, "name": plan.servers[0].name}),
        ):
            try:
                model.model_validate(extra)
            except ValidationError as exc:
                first = exc.errors()[0]
                name = ".".join(str(p) for p in first["loc"])
                raise ConfigError(f"{where}field {section}.{name}: {first['msg']}") from exc
        return {"server": server, "agent": agent}

    def _start_server(self, plan: LabPlan, state: LabStateModel) -> ProcessRecord:
        data_dir = Path(state.data_dir)
        argv = [
            state.python,
            "-m",
            "pingmesh",
            "--log-level",
            "warning",
            "server",
            "--config",
            str(data_dir / "pingmesh.yaml"),
            "--listen",
            f"{plan.server_listen_address}:{state.port}",
            "--data",
            str(data_dir / "data"),
            "--topology",
            str(data_dir / "topology.yaml"),
        ]
        return spawn_in_namespace(
            plan.mgmt.namespace, argv, log=data_dir / "logs" / "server.log", env=_child_env()
        )

    def _start_agent(self, plan: LabPlan, state: LabStateModel, name: str) -> ProcessRecord:
        node = plan.node(name)
        data_dir = Path(state.data_dir)
        argv = [
            state.python,
            "-m",
            "pingmesh",
            "--log-level",
            "warning",
            "agent",
            "--controller",
            _url(plan, state.port),
            "--name",
            name,
            "--bind",
            node.address,
            "--config",
            str(data_dir / "pingmesh.yaml"),
        ]
        return spawn_in_namespace(
            node.namespace, argv, log=data_dir / "logs" / f"agent-{name}.log", env=_child_env()
        )

    def _wait_server(self, url: str, server: ProcessRecord, data_dir: Path) -> None:
        deadline = time.monotonic() + SERVER_READY_S
        with _client() as client:
            while time.monotonic() < deadline:
                if not is_alive(server):
                    tail = _tail(data_dir / "logs" / "server.log")
                    raise LabError(f"pingmesh server exited at start: {tail}")
                try:
                    if client.get(f"{url}/api/v1/agents").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(POLL_S)
        raise LabError(f"pingmesh server did not answer at {url} within {SERVER_READY_S:g} s")

    def _wait_agents(self, url: str, planned: int, wait_s: float) -> None:
        if wait_s <= 0:
            return
        deadline = time.monotonic() + wait_s
        last = -1
        with _client() as client:
            while True:
                up = agents_up(client, url)
                if up != last and up is not None:
                    self._announce(f"{up}/{planned} agents reporting")
                    last = up
                if up == planned:
                    return
                if time.monotonic() >= deadline:
                    self._announce(
                        f"only {max(last, 0)}/{planned} agents reporting after {wait_s:g} s; "
                        "see the agent logs"
                    )
                    return
                time.sleep(POLL_S)

    # -- down ------------------------------------------------------------------------------

    def down(self, *, purge: bool = False) -> SweepReport:
        """Stop everything and remove every namespace of the lab (see the module docstring)."""
        require_root()
        with self.store.locked():
            try:
                state = self.store.load()
            except LabError as exc:
                self._announce(f"ignoring the state file: {exc}")
                state = None
            report = self._teardown(state)
            if purge:
                data_dir = (
                    Path(state.data_dir) if state is not None else self.options.resolved_data_dir
                )
                if data_dir.exists():
                    shutil.rmtree(data_dir)
                    self._announce(f"removed {data_dir}")
        return report

    def _teardown(self, state: LabStateModel | None) -> SweepReport:
        extra = state.processes() if state is not None else []
        helpers = [h.record() for h in state.helpers.values()] if state is not None else []
        stop_all(helpers)  # first: each continues its stopped agent on the way out
        report = sweep(
            self._runner,
            self.options.prefix,
            host_port=f"{self.options.prefix}-m",
            extra=extra,
            announce=self._announce,
        )
        self.store.remove()
        return report

    # -- status ----------------------------------------------------------------------------

    def status(self) -> LabStatus:
        """What is up, what runs, and the faults in force with their drop counters."""
        state, plan = self._load()
        fabric = self._fabric(plan)
        namespaces = list_namespaces(self._runner, plan.prefix)
        faults = []
        drops: dict[str, dict[str, int]] = {}
        for active in state.active_faults():
            routers = fault_routers(active.fault)
            count: int | None = None
            if routers and namespaces:
                count = 0
                for router in routers:
                    if router not in drops:
                        drops[router] = fabric.nft_drops(router)
                    count += drops[router].get(active.fault_id, 0)
            faults.append(
                FaultStatus(fault=active, description=describe(active.fault), dropped_packets=count)
            )
        stopped = tuple(
            a.fault.host for a in state.active_faults() if isinstance(a.fault, HostDown)
        )
        return LabStatus(
            prefix=state.prefix,
            url=_url(plan, state.port),
            data_dir=state.data_dir,
            shape=plan.shape,
            namespaces=len(namespaces),
            namespaces_planned=len(plan.nodes),
            ready=state.ready,
            server_running=state.server is not None and is_alive(state.server.record()),
            agents_running=sum(is_alive(a.record()) for a in state.agents.values()),
            agents_planned=len(plan.servers),
            agents_stopped_by_faults=stopped,
            faults=tuple(faults),
        )

    # -- faults ----------------------------------------------------------------------------

    def inject(self, fault: Fault) -> ActiveFault:
        """Put ``fault`` in force; returns it with the id that clears it."""
        require_root()
        with self.store.locked():
            state, plan = self._load()
            fault = validate_fault(plan, fault)
            active = state.active_faults()
            _check_conflicts(fault, active)
            new = ActiveFault(
                fault_id=f"f{state.next_fault}", fault=fault, started_at_s=time.time()
            )
            state.next_fault += 1
            self._apply(state, plan, new, [*active, new])
            state.faults.append(FaultModel.of(new))
            self.store.save(state)
        return new

    def _apply(
        self,
        state: LabStateModel,
        plan: LabPlan,
        new: ActiveFault,
        everything: list[ActiveFault],
    ) -> None:
        fabric = self._fabric(plan)
        fault = new.fault
        for router in fault_routers(fault):
            fabric.apply_nft(router, nft_rules(plan, router, everything))
        match fault:
            case LinkDown(a=a, b=b, reroute=reroute):
                fabric.set_link(plan.link(a, b), up=False)
                if reroute:
                    fabric.apply_routes(plan.routes(down=_rerouted(everything)))
            case HostDown(host=host):
                agent = state.agents.get(host)
                if agent is not None:
                    stop_all([agent.record()])
                fabric.set_ports(host, [SERVER_PORT, MGMT_PORT], up=False)
            case CpuStarve(host=host, stop_ms=stop_ms, period_ms=period_ms):
                agent = state.agents.get(host)
                if agent is None or not is_alive(agent.record()):
                    raise LabError(f"cpu_starve: the agent of {host} is not running")
                helper = spawn_in_namespace(
                    plan.node(host).namespace,
                    [
                        state.python,
                        "-m",
                        "pingmesh.lab.starve",
                        "--pid",
                        str(agent.pid),
                        "--start-ticks",
                        str(agent.start_ticks),
                        "--stop-ms",
                        str(stop_ms),
                        "--period-ms",
                        str(period_ms),
                    ],
                    log=Path(state.data_dir) / "logs" / f"starve-{new.fault_id}.log",
                    env=_child_env(),
                )
                state.helpers[new.fault_id] = ProcessModel.of(helper)

    def clear(self, fault_id: str) -> ActiveFault:
        """Remove the fault ``fault_id``; ConfigError if there is none."""
        require_root()
        with self.store.locked():
            state, plan = self._load()
            active = state.active_faults()
            found = [a for a in active if a.fault_id == fault_id]
            if not found:
                known = ", ".join(a.fault_id for a in active) or "none"
                raise ConfigError(f"lab: no fault {fault_id!r} in force (in force: {known})")
            gone = found[0]
            rest = [a for a in active if a.fault_id != fault_id]
            self._unapply(state, plan, gone, rest)
            state.faults = [FaultModel.of(a) for a in rest]
            self.store.save(state)
        return gone

    def _unapply(
        self, state: LabStateModel, plan: LabPlan, gone: ActiveFault, rest: list[ActiveFault]
    ) -> None:
        fabric = self._fabric(plan)
        fault = gone.fault
        for router in fault_routers(fault):
            fabric.apply_nft(router, nft_rules(plan, router, rest))
        down_now = _down_links(rest)
        match fault:
            case LinkDown(a=a, b=b, reroute=reroute):
                fabric.set_link(plan.link(a, b), up=True)
                routes = plan.routes(down=down_now)
                fabric.apply_routes(routes, only=None if reroute else (a, b))
            case HostDown(host=host):
                fabric.set_ports(host, [SERVER_PORT, MGMT_PORT], up=True)
                tor = plan.node(host).tor
                assert tor is not None
                fabric.apply_routes(plan.routes(down=down_now), only=(host, tor))
                state.agents[host] = ProcessModel.of(self._start_agent(plan, state, host))
            case CpuStarve(host=host):
                helper = state.helpers.pop(gone.fault_id, None)
                if helper is not None:
                    stop_all([helper.record()])
                agent = state.agents.get(host)
                if agent is not None:
                    send(agent.record(), signal.SIGCONT)

    def clear_all(self) -> tuple[ActiveFault, ...]:
        """Remove every fault and put every part back as planned; returns what was cleared."""
        require_root()
        with self.store.locked():
            state, plan = self._load()
            gone = tuple(state.active_faults())
            fabric = self._fabric(plan)
            stop_all(h.record() for h in state.helpers.values())
            state.helpers.clear()
            for router in plan.routers:
                fabric.apply_nft(router.name, [])
            for link in plan.links:
                fabric.set_link(link, up=True)
            for server in plan.servers:
                fabric.set_ports(server.name, [MGMT_PORT], up=True)
            fabric.apply_routes(plan.routes())
            for name, agent in list(state.agents.items()):
                record = agent.record()
                if is_alive(record):
                    send(record, signal.SIGCONT)
                else:
                    state.agents[name] = ProcessModel.of(self._start_agent(plan, state, name))
            state.faults = []
            self.store.save(state)
        return gone

    # -- probing ---------------------------------------------------------------------------

    def probe(
        self,
        src: str,
        dst: str,
        *,
        count: int = 20,
        port: int = 9781,
        timeout_s: float = 3.5,
        concurrency: int = 8,
    ) -> list[ProbeOutcome]:
        """``count`` real TCP connect probes from server ``src`` to server ``dst``."""
        state, plan = self._load()
        source, target = plan.node(src), plan.node(dst)
        for node in (source, target):
            if node.role != "server":
                raise ConfigError(f"lab probe: {node.name!r} is a {node.role}, not a server")
        result = self._runner.run(
            [
                "ip",
                "netns",
                "exec",
                source.namespace,
                state.python,
                "-m",
                "pingmesh.lab.measure",
                "--bind",
                source.address,
                "--to",
                target.address,
                "--port",
                str(port),
                "--count",
                str(count),
                "--timeout",
                str(timeout_s),
                "--concurrency",
                str(concurrency),
            ]
        )
        out = []
        for line in result.stdout.splitlines():
            data = json.loads(line)
            out.append(ProbeOutcome(**data))
        return out

    def exec_argv(self, node: str, argv: Iterable[str]) -> list[str]:
        """The command line that runs ``argv`` inside ``node``'s namespace."""
        plan = self.plan()
        return ["ip", "netns", "exec", plan.node(node).namespace, *argv]


def _url(plan: LabPlan, port: int) -> str:
    return f"http://{plan.server_listen_address}:{port}"


def _client() -> httpx.Client:
    # trust_env=False: a proxy from the environment must never see lab traffic.
    return httpx.Client(timeout=5.0, trust_env=False)


def agents_up(client: httpx.Client, url: str) -> int | None:
    """How many agents the server reports ``up``; None if it cannot say."""
    try:
        reply = client.get(f"{url}/api/v1/agents")
        if reply.status_code != 200:
            return None
        return sum(1 for a in reply.json()["agents"] if a.get("status") == "up")
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {path})"
    return " | ".join(text[-lines:]) or f"(empty log {path})"


def _down_links(faults: Iterable[ActiveFault]) -> set[frozenset[str]]:
    return {frozenset((f.fault.a, f.fault.b)) for f in faults if isinstance(f.fault, LinkDown)}


def _rerouted(faults: Iterable[ActiveFault]) -> set[frozenset[str]]:
    return {
        frozenset((f.fault.a, f.fault.b))
        for f in faults
        if isinstance(f.fault, LinkDown) and f.fault.reroute
    }


def _check_conflicts(fault: Fault, active: list[ActiveFault]) -> None:
    for other in active:
        match (fault, other.fault):
            case (HostDown(host=h) | CpuStarve(host=h), HostDown(host=o) | CpuStarve(host=o)) if (
                h == o
            ):
                raise ConfigError(
                    f"lab: {h} already has fault {other.fault_id} ({describe(other.fault)}); "
                    "clear it first"
                )
            case (LinkDown(a=a, b=b), LinkDown(a=oa, b=ob)) if {a, b} == {oa, ob}:
                raise ConfigError(f"lab: link {a} - {b} is already down ({other.fault_id})")
