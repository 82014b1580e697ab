"""The topology view's data (``/api/v1/topology``) and the services (``/api/v1/services``).

Nodes are the entities of one level (DCs, podsets, ToRs, or the servers of one ToR or DC),
links the measured src → dst cells between them in one window.  Each gets a state from the
heatmap's thresholds (``ok`` green, ``warn`` yellow, ``bad`` red, ``failed`` every probe
failed, ``nodata``) and ``alerting`` when a firing alert points at it: a link or node turns
red when its rule fires, as in SmartPing's topology page (``html/topology.html``).  An alert
on a finer level marks the node or link that contains it (a server-pair alert marks its ToR
link in the ToR view).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from pingmesh.alerts.rules import split_link
from pingmesh.config import HeatmapConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.topology import Topology
from pingmesh.store.alerts import Alert
from pingmesh.store.results import ResultsDB, Stats
from pingmesh.web.api import Api, utc
from pingmesh.web.app import ERROR_RESPONSES, json_response
from pingmesh.web.history_api import stats_out, values_out

Level = Literal["server", "tor", "podset", "dc"]
_ORDER = {"server": 0, "tor": 1, "podset": 2, "dc": 3}
MAX_NODES = 600
MAX_LINKS = 40_000


@dataclass(frozen=True, slots=True, kw_only=True)
class TopologyStatistics:
    """Counters of the topology API."""

    topology_requests_total: int
    rejected_requests_total: int


def state_of(p99_us: float | None, probes: int, heat: HeatmapConfig) -> str:
    """ok / warn / bad / failed / nodata by the heatmap's P99 thresholds."""
    if probes == 0:
        return "nodata"
    if p99_us is None:
        return "failed"
    if p99_us > heat.red_above_us:
        return "bad"
    if p99_us >= heat.green_below_us:
        return "warn"
    return "ok"


def lift(topology: Topology, from_level: str, name: str, to_level: str) -> str | None:
    """The entity at ``to_level`` that contains ``name`` (an entity at ``from_level``)."""
    if from_level == to_level:
        return name
    if _ORDER.get(from_level, 9) > _ORDER[to_level]:
        return None  # a coarser alert does not point at one finer node
    for server in topology.servers:
        if server.entity(from_level) == name:  # type: ignore[arg-type]
            return server.entity(to_level)  # type: ignore[arg-type]
    return None


class TopologyApi:
    """``/topology`` and ``/services``."""

    def __init__(
        self,
        db: ResultsDB,
        source: TopologySource,
        api: Api,
        heat: HeatmapConfig,
        *,
        firing_alerts: Callable[[], Sequence[Alert]] = list,
    ) -> None:
        self._db = db
        self._source = source
        self._api = api
        self._heat = heat
        self._firing = firing_alerts
        self._lock = threading.Lock()
        self._counts = {"topology_requests_total": 0, "rejected_requests_total": 0}
        self.router = self._build_router()

    def statistics(self) -> TopologyStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return TopologyStatistics(**self._counts)

    def _reject(self, status: int, detail: str) -> HTTPException:
        with self._lock:
            self._counts["rejected_requests_total"] += 1
        return HTTPException(status_code=status, detail=detail)

    def topology(
        self, level: Level, window: str, at: str | None, dc: str | None, tor: str | None
    ) -> dict[str, Any]:
        """Nodes and links of one level in one window (see the module docstring)."""
        with self._lock:
            self._counts["topology_requests_total"] += 1
        topology = self._source.topology
        servers = [
            s
            for s in topology.servers
            if (dc is None or s.dc == dc) and (tor is None or s.tor == tor)
        ]
        if not servers:
            raise self._reject(404, f"no servers match dc={dc!r} tor={tor!r}")
        names = sorted({s.entity(level) for s in servers})
        if len(names) > MAX_NODES:
            raise self._reject(
                400,
                f"level {level!r} has {len(names)} nodes here, over {MAX_NODES}; "
                "restrict it with dc= or tor=, or use a coarser level",
            )
        parent = {s.entity(level): (s.dc, s.podset, s.tor) for s in servers}
        row, note = self._api.pick_window(window, at)
        sla: dict[str, Stats] = {}
        # Lean (window_start, src, dst, statistics…) tuples: a ToR view is thousands of
        # links, and row objects would cost more than the query.
        cells: list[tuple[Any, ...]] = []
        wanted = set(names)
        if row is not None:
            scope = level
            sla = {r.entity: r for r in self._db.sla(row.window, row.window_start, scope)}
            in_view = names if level == "server" else None  # a server view is one ToR or DC
            cells = [
                c
                for c in self._db.matrix_series_values(
                    row.window, level, [row.window_start], src=in_view, dst=in_view
                )
                if c[1] in wanted and c[2] in wanted
            ]
            cells.sort(key=lambda c: (c[1], c[2]))
        alerting_nodes: dict[str, list[str]] = {}
        alerting_links: dict[tuple[str, str], list[str]] = {}
        alerts_out = []
        for alert in self._firing():
            a_level = str(alert.evidence.get("level", alert.scope))
            subject = str(alert.evidence.get("subject", alert.subject))
            link = split_link(subject)
            hit = False
            if link is not None:
                src = lift(topology, a_level, link[0], level)
                dst = lift(topology, a_level, link[1], level)
                if src in wanted and dst in wanted and src is not None and dst is not None:
                    alerting_links.setdefault((src, dst), []).append(alert.alert_id)
                    hit = True
            else:
                node = lift(topology, a_level, subject, level)
                if node in wanted and node is not None:
                    alerting_nodes.setdefault(node, []).append(alert.alert_id)
                    hit = True
            if hit:
                alerts_out.append(
                    {"id": alert.alert_id, "summary": alert.summary, "severity": alert.severity}
                )
        # A node's own health: its self cell (inside the ToR, podset or DC) where there is
        # one; the SLA of what it sent would paint every node red for one sick destination.
        own = {c[1]: c for c in cells if c[1] == c[2]}
        nodes = []
        for name in names:
            self_cell = own.get(name)
            stats = values_out(self_cell[3:]) if self_cell else stats_out(sla.get(name))
            dc_, podset, tor_ = parent[name]
            nodes.append(
                {
                    "id": name,
                    "dc": dc_,
                    "podset": podset,
                    "tor": tor_ if level == "server" else None,
                    "state": state_of(stats["p99_us"], stats["probes"], self._heat),
                    "alerts": alerting_nodes.get(name, []),
                    **stats,
                }
            )
        links = []
        for cell in cells[:MAX_LINKS]:
            src, dst = cell[1], cell[2]
            stats = values_out(cell[3:])
            links.append(
                {
                    "src": src,
                    "dst": dst,
                    "state": state_of(stats["p99_us"], stats["probes"], self._heat),
                    "alerts": alerting_links.get((src, dst), []),
                    **stats,
                }
            )
        return {
            "level": level,
            "window": window,
            "dc": dc,
            "tor": tor,
            "window_start": utc(row.window_start) if row else None,
            "window_end": utc(row.window_end) if row else None,
            "note": note,
            "thresholds": {
                "green_below_us": self._heat.green_below_us,
                "red_above_us": self._heat.red_above_us,
            },
            "nodes": nodes,
            "links": links,
            "links_truncated": len(cells) > MAX_LINKS,
            "alerts": alerts_out,
        }

    def services(self) -> dict[str, Any]:
        """The services of the topology and their servers."""
        topology = self._source.topology
        return {
            "services": [
                {"name": name, "servers": list(members)}
                for name, members in sorted(topology.services.items())
            ]
        }

    def _build_router(self) -> APIRouter:
        api = APIRouter(prefix="/api/v1", tags=["topology"])

        @api.get("/topology", responses=ERROR_RESPONSES, summary="Nodes and links, by state")
        def get_topology(
            level: Annotated[Level, Query(description="server, tor, podset or dc")] = "tor",
            window: Annotated[str, Query(description="window kind")] = self._api.default_window,
            at: Annotated[str | None, Query(description="RFC 3339 time")] = None,
            dc: Annotated[str | None, Query(description="only this DC")] = None,
            tor: Annotated[str | None, Query(description="only this ToR")] = None,
        ) -> Any:
            """Every entity of ``level`` (a node, with its SLA) and every measured link
            between them in one window, each with a state and the firing alerts on it."""
            return json_response(self.topology(level, window, at, dc, tor))

        @api.get("/services", summary="Services and their servers")
        def get_services() -> Any:
            """The ``services`` of the topology file (for per-service SLAs)."""
            return self.services()

        return api
