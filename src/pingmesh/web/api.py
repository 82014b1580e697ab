"""The read side of the JSON API: agents, SLAs and the src × dst heatmap (``/api/v1``).

The results database stores UNIX seconds; this edge speaks RFC 3339 UTC and microseconds.
Handlers are plain ``def`` functions: :class:`~pingmesh.store.results.ResultsDB` blocks, so
FastAPI runs them in its thread pool and the event loop stays free.

Window kinds are named after their length as the analysis names them (``30s``, ``10m``; a
lab config with a 10 s fast window has ``10s``), so they come from ``config.analysis``.
Choosing a window: without ``at`` the newest analysed window of the asked kind; with ``at``
the newest window of that kind that contains the instant (fast windows overlap). When there
is none the answer says so in ``note`` and carries no rows: the API never answers a
10-minute question with 30-second data behind the caller's back.

Heatmaps of an analysed window are built once: the analysis writes a window whole and
replaces it whole (with a new ``computed_at``), so the JSON of its cells is kept in a
least-recently-used cache bounded in bytes, keyed by the window, its ``computed_at``, the
level, metric, DC, format and the topology's digest. The same key is the answer's weak
``ETag``: a client that polls sends ``If-None-Match`` and gets ``304`` until a new window
(or topology) changes the answer. (The dashboard does not: a revalidated answer would keep
the ``generated_at`` of its first fetch, from which the page judges how old the data is.)
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from pingmesh.analysis.jobs import window_name
from pingmesh.clock import Clock
from pingmesh.config import ServerConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.topology import Level, Topology
from pingmesh.store.results import AgentRow, ResultsDB, WindowRow
from pingmesh.web.app import ERROR_RESPONSES

SlaScope = Literal["server", "tor", "podset", "dc", "service"]
HeatmapLevel = Literal["tor", "podset", "dc"]
Metric = Literal["p99", "drop_rate"]

# In the contract (DESIGN.md); rollups that the analysis may write.  A kind answers 400 until
# the results database holds a window of it.
FUTURE_WINDOWS: tuple[str, ...] = ("1h", "1d")
ROLLUP_LENGTHS_S: dict[str, int] = {"1h": 3600, "1d": 86400}
BUILT_SCOPES: tuple[str, ...] = ("server", "tor", "podset", "dc", "service")

DEFAULT_MAX_HEATMAP_CELLS = 100_000
# ``at=`` is resolved by scanning windows newest first; bounded so that a request for a
# very old time costs at most this many rows (30 s windows every 10 s: ~1 day).


# Query parameters, module level so that FastAPI can resolve the (postponed) annotations.
ScopeParam = Annotated[SlaScope, Query(description=f"one of {', '.join(BUILT_SCOPES)}")]
AtParam = Annotated[
    str | None,
    Query(description="RFC 3339 time: answer from the newest window that contains it"),
]
LevelParam = Annotated[HeatmapLevel, Query(description="tor, podset or dc")]
MetricParam = Annotated[Metric, Query(description="p99 (µs) or drop_rate (0–1)")]
DcParam = Annotated[str | None, Query(description="only the entities of this DC")]
FormatParam = Annotated[
    Literal["cells", "columns"],
    Query(
        description="cells: a list of objects (default); columns: parallel arrays "
        "(values, probes, failures), about 6x smaller for big matrices"
    ),
]


# -- response models (they are the OpenAPI documentation) ---------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class AgentStatus(enum.StrEnum):
    """How the server sees an agent."""

    UP = "up"  # heard from within ``agent_down_after_s``
    DOWN = "down"  # heard from before, not since
    NEVER_SEEN = "never_seen"  # in the topology, never heard from
    REMOVED = "removed"  # heard from, but no longer in the topology


class AgentOut(_Out):
    """One agent: a server of the topology, or an agent seen that the topology dropped."""

    name: str
    address: str = Field(description="the topology's address; the last reported one if removed")
    dc: str | None = Field(description="null when the server is no longer in the topology")
    podset: str | None
    tor: str | None
    status: AgentStatus
    first_seen: datetime | None
    last_seen: datetime | None = Field(description="last pinglist fetch or result upload")
    last_fetch: datetime | None
    last_upload: datetime | None
    pinglist_version: str | None


class AgentCounts(_Out):
    """How many agents have each status."""

    up: int
    down: int
    never_seen: int
    removed: int


class AgentsOut(_Out):
    """Every agent, by name."""

    generated_at: datetime = Field(description="server time of this answer")
    down_after_s: float = Field(description="an agent not heard from for this long is down")
    counts: AgentCounts
    agents: list[AgentOut]


class WindowKindOut(_Out):
    """A kind of analysis window and its newest analysed window."""

    name: str = Field(description="the value of window= (its length: 30s, 10m, ...)")
    role: Literal["fast", "ten_minute", "rollup"]
    length_s: int
    every_s: int = Field(description="a new window of this kind is analysed this often")
    latest_start: datetime | None = Field(description="null until one has been analysed")
    latest_end: datetime | None
    computed_at: datetime | None


class WindowsOut(_Out):
    """The window kinds the analysis builds."""

    default: str = Field(description="the window that /sla and /heatmap use by default")
    kinds: list[WindowKindOut]
    not_built: list[str] = Field(description="in the contract, answered with 400 for now")


class SlaRowOut(_Out):
    """The SLA of one entity in one window."""

    entity: str
    probes: int
    successes: int
    failures: int
    retransmitted: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    p999_us: float | None
    drop_rate: float | None = Field(
        description="probes that needed a SYN retransmission / successful probes (PM §4.2)"
    )


class SlaOut(_Out):
    """Per-entity SLAs of one analysed window."""

    window: str
    scope: str
    window_start: datetime | None = Field(description="null when no window matches")
    window_end: datetime | None
    computed_at: datetime | None
    note: str | None = Field(description="why there are no rows, when there are none")
    rows: list[SlaRowOut]


class HeatmapCell(_Out):
    """One src × dst cell; ``value`` is null when there is no data or no probe succeeded."""

    src: str
    dst: str
    value: float | None
    probes: int
    failures: int


class Thresholds(_Out):
    """Colours: green below ``green_below``, red above ``red_above``, yellow between."""

    green_below: float
    red_above: float


class HeatmapHead(_Out):
    """Everything of a heatmap but its cells."""

    level: str
    metric: str
    unit: Literal["us", "ratio"]
    window: str
    dc: str | None = Field(description="the DC the entities were restricted to, if any")
    window_start: datetime | None
    window_end: datetime | None
    computed_at: datetime | None
    generated_at: datetime
    note: str | None
    thresholds: Thresholds
    entities: list[str]


class HeatmapOut(HeatmapHead):
    """The src × dst matrix of one window at one level.

    ``cells`` is dense and row-major: ``cells[i * len(entities) + j]`` is
    ``entities[i] → entities[j]``; a cell without data has ``probes`` 0 and ``value`` null.
    """

    cells: list[HeatmapCell]


# -- pure helpers --------------------------------------------------------------------------


def agent_status(
    *, last_seen_s: float | None, in_topology: bool, now_s: float, down_after_s: float
) -> AgentStatus:
    """The status of one agent at ``now_s``."""
    if not in_topology:
        return AgentStatus.REMOVED
    if last_seen_s is None:
        return AgentStatus.NEVER_SEEN
    if now_s - last_seen_s <= down_after_s:
        return AgentStatus.UP
    return AgentStatus.DOWN


def finite(value: float | None) -> float | None:
    """``value``, or None for NaN and the infinities (JSON has none; pydantic writes null)."""
    return value if value is not None and math.isfinite(value) else None


def utc(seconds: float | None) -> datetime | None:
    """UNIX seconds as an aware UTC datetime (to the millisecond), or None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(round(seconds, 3), tz=UTC)


def parse_rfc3339(name: str, text: str) -> datetime:
    """Parse an RFC 3339 time with a timezone; ValueError names the parameter."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ValueError(
            f"query parameter {name!r}: {text!r} is not an RFC 3339 time with a timezone "
            "(e.g. 2027-01-15T08:00:00Z)"
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowKind:
    """A kind of analysis window, as the analysis names and schedules it."""

    name: str
    role: Literal["fast", "ten_minute", "rollup"]
    length_s: int
    every_s: int

    @property
    def overlapping(self) -> bool:
        """True when windows of this kind overlap (the fast kind: 30 s every 10 s)."""
        return self.every_s < self.length_s


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiStatistics:
    """Counters of the read API (they feed ``/metrics``)."""

    agents_requests_total: int
    windows_requests_total: int
    sla_requests_total: int
    heatmap_requests_total: int
    rejected_requests_total: int  # answered 400/422 by these handlers
    heatmap_over_limit_total: int  # refused: more cells than ``max_heatmap_cells``
    heatmap_cells_served_total: int
    heatmap_cache_hits_total: int
    heatmap_cache_misses_total: int
    heatmap_cache_evictions_total: int
    heatmap_not_modified_total: int  # answered 304 to If-None-Match
    heatmap_cache_bytes: int  # the JSON held now (at most ``heatmap.cache_max_bytes``)
    heatmap_cache_entries: int


class DocumentCache:
    """Text by key, least recently used out first, at most ``max_bytes`` of it (thread-safe).

    A text bigger than the whole budget is not kept. ``max_bytes`` 0 keeps nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: {max_bytes} must not be negative")
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Any, ...], str] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: tuple[Any, ...]) -> str | None:
        """The text under ``key``, or None (counted as a hit or a miss)."""
        with self._lock:
            text = self._items.get(key)
            if text is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return text

    def put(self, key: tuple[Any, ...], text: str) -> None:
        """Keep ``text`` under ``key``, evicting the least recently used to make room.

        Sizes are counted in characters: the cached JSON is ASCII (``ensure_ascii``).
        """
        size = len(text)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            while self._items and self._bytes + size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)
                self.evictions += 1
            self._items[key] = text
            self._bytes += size

    def size(self) -> tuple[int, int]:
        """(bytes, entries) held now."""
        with self._lock:
            return self._bytes, len(self._items)


class Api:
    """The read API over the results database and the topology.

    ``router`` is the :class:`fastapi.APIRouter` to include in an app; ``statistics()``
    counts what it served and refused.
    """

    def __init__(
        self,
        db: ResultsDB,
        source: TopologySource,
        config: ServerConfig,
        *,
        clock: Clock,
        max_heatmap_cells: int = DEFAULT_MAX_HEATMAP_CELLS,
    ) -> None:
        if max_heatmap_cells < 1:
            raise ValueError(f"max_heatmap_cells: {max_heatmap_cells} must be at least 1")
        self._db = db
        self._source = source
        self._config = config
        self._clock = clock
        self._max_cells = max_heatmap_cells
        self._heatmaps = DocumentCache(config.heatmap.cache_max_bytes)
        analysis = config.analysis
        self._kinds = (
            WindowKind(
                name=window_name(analysis.fast_window_s),
                role="fast",
                length_s=analysis.fast_window_s,
                every_s=analysis.fast_every_s,
            ),
            WindowKind(
                name=window_name(analysis.ten_minute_window_s),
                role="ten_minute",
                length_s=analysis.ten_minute_window_s,
                every_s=analysis.ten_minute_window_s,
            ),
        )
        if self._kinds[0].name == self._kinds[1].name:
            raise ValueError(
                f"config.analysis: the fast and ten-minute windows are both {self._kinds[0].name}"
            )
        self.default_window = self._kinds[1].name  # DESIGN.md: SLAs default to 10 minutes
        self._lock = threading.Lock()
        self._counts = {
            "agents_requests_total": 0,
            "windows_requests_total": 0,
            "sla_requests_total": 0,
            "heatmap_requests_total": 0,
            "rejected_requests_total": 0,
            "heatmap_over_limit_total": 0,
            "heatmap_cells_served_total": 0,
            "heatmap_not_modified_total": 0,
        }
        self.router = self._build_router()

    def statistics(self) -> ApiStatistics:
        """An immutable snapshot of the counters."""
        cache = self._heatmaps
        held_bytes, entries = cache.size()
        with self._lock:
            return ApiStatistics(
                **self._counts,
                heatmap_cache_hits_total=cache.hits,
                heatmap_cache_misses_total=cache.misses,
                heatmap_cache_evictions_total=cache.evictions,
                heatmap_cache_bytes=held_bytes,
                heatmap_cache_entries=entries,
            )

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _reject(self, status_code: int, detail: str) -> HTTPException:
        self._count("rejected_requests_total")
        return HTTPException(status_code=status_code, detail=detail)

    # -- endpoints -------------------------------------------------------------------------

    def agents(self) -> AgentsOut:
        """Every server of the topology, plus agents seen that the topology no longer has."""
        self._count("agents_requests_total")
        now_s = self._clock.now_s()
        down_after_s = self._config.agent_down_after_s
        topology = self._source.topology
        seen = {row.name: row for row in self._db.agents()}
        # Plain dicts, validated once as a whole below: a thousand models built one by one
        # in Python would cost more than the rest of the request.
        out: list[dict[str, Any]] = []
        for server in topology.servers:
            row = seen.get(server.name)
            out.append(
                self._agent_out(
                    name=server.name,
                    address=server.address,
                    place=(server.dc, server.podset, server.tor),
                    row=row,
                    status=agent_status(
                        last_seen_s=row.last_seen_s if row else None,
                        in_topology=True,
                        now_s=now_s,
                        down_after_s=down_after_s,
                    ),
                )
            )
        for name, row in seen.items():
            if topology.server(name) is None:
                out.append(
                    self._agent_out(
                        name=name,
                        address=row.address,
                        place=(None, None, None),
                        row=row,
                        status=AgentStatus.REMOVED,
                    )
                )
        out.sort(key=lambda a: a["name"])
        counts = dict.fromkeys(AgentStatus, 0)
        for agent in out:
            counts[agent["status"]] += 1
        return AgentsOut.model_validate(
            {
                "generated_at": datetime.fromtimestamp(now_s, tz=UTC),
                "down_after_s": down_after_s,
                "counts": {status.value: n for status, n in counts.items()},
                "agents": out,
            }
        )

    @staticmethod
    def _agent_out(
        *,
        name: str,
        address: str,
        place: tuple[str | None, str | None, str | None],
        row: AgentRow | None,
        status: AgentStatus,
    ) -> dict[str, Any]:
        """The fields of one :class:`AgentOut`."""
        return {
            "name": name,
            "address": address,
            "dc": place[0],
            "podset": place[1],
            "tor": place[2],
            "status": status,
            "first_seen": utc(row.first_seen_s) if row else None,
            "last_seen": utc(row.last_seen_s) if row else None,
            "last_fetch": utc(row.last_fetch_s) if row else None,
            "last_upload": utc(row.last_upload_s) if row else None,
            "pinglist_version": row.pinglist_version if row else None,
        }

    def kinds(self) -> list[WindowKind]:
        """The window kinds, shortest first: the configured ones, plus each rollup kind
        (``1h``, ``1d``) once the results database holds a window of it."""
        kinds = list(self._kinds)
        for name in FUTURE_WINDOWS:
            if self._db.latest_window(name) is not None:
                length = ROLLUP_LENGTHS_S[name]
                kinds.append(WindowKind(name=name, role="rollup", length_s=length, every_s=length))
        return sorted(kinds, key=lambda k: k.length_s)

    def windows(self) -> WindowsOut:
        """The window kinds, fast first, each with its newest analysed window."""
        self._count("windows_requests_total")
        kinds = []
        built = self.kinds()
        for kind in built:
            latest = self._db.latest_window(kind.name)
            kinds.append(
                WindowKindOut(
                    name=kind.name,
                    role=kind.role,
                    length_s=kind.length_s,
                    every_s=kind.every_s,
                    latest_start=utc(latest.window_start) if latest else None,
                    latest_end=utc(latest.window_end) if latest else None,
                    computed_at=utc(latest.computed_at_s) if latest else None,
                )
            )
        names = {k.name for k in built}
        return WindowsOut(
            default=self.default_window,
            kinds=kinds,
            not_built=[n for n in FUTURE_WINDOWS if n not in names],
        )

    def sla(self, scope: SlaScope, window: str, at: str | None) -> Response:
        """Per-entity SLAs of one window, as a JSON response of the shape of :class:`SlaOut`.

        The rows are written as JSON directly, like the heatmap's cells: a thousand of them
        validated as models would cost more than the rest of the request, and their values
        come from our own database.
        """
        self._count("sla_requests_total")
        if scope not in BUILT_SCOPES:
            raise self._reject(
                400,
                f"query parameter 'scope': {scope!r} is not built yet; "
                f"supported: {', '.join(BUILT_SCOPES)}",
            )
        row, note = self.pick_window(window, at)
        records = [] if row is None else self._db.sla_values(row.window, row.window_start, scope)
        if row is not None and not records:
            note = f"the {window} window has no {scope} rows"
        document = SlaOut(
            window=window,
            scope=scope,
            window_start=utc(row.window_start) if row else None,
            window_end=utc(row.window_end) if row else None,
            computed_at=utc(row.computed_at_s) if row else None,
            note=note,
            rows=[],
        ).model_dump(mode="json")
        document["rows"] = [
            {"entity": entity, "probes": probes, "successes": successes, "failures": failures,
             "retransmitted": retransmitted, "p50_us": finite(p50), "p90_us": finite(p90),
             "p99_us": finite(p99), "p999_us": finite(p999), "drop_rate": finite(drop)}
            for entity, probes, successes, failures, retransmitted, p50, p90, p99, p999, drop
            in records
        ]  # fmt: skip
        return Response(
            content=json.dumps(document, separators=(",", ":"), allow_nan=False),
            media_type="application/json",
        )

    def heatmap(
        self,
        level: HeatmapLevel,
        metric: Metric,
        window: str,
        at: str | None,
        dc: str | None,
        *,
        form: Literal["cells", "columns"] = "cells",
        if_none_match: str | None = None,
    ) -> Response:
        """The dense src × dst matrix of one window at one level, as a JSON response.

        The document has the shape of :class:`HeatmapOut`. Cells are written as JSON
        directly, not through models: with up to ``max_heatmap_cells`` of them, validating
        each would cost more than the rest of the request, and their values come from our
        own database. With ``form="columns"`` the cells are three parallel row-major arrays
        instead (``values``, ``probes``, ``failures``), which a million-cell matrix needs.
        The cells of an analysed window come from the cache when they can (see the module
        docstring); ``if_none_match`` holding the answer's ETag gives a bodiless 304.
        """
        self._count("heatmap_requests_total")
        digest = self._source.digest
        topology = self._source.topology
        entities = self._entities(topology, level, dc)
        n = len(entities)
        if n * n > self._max_cells:
            self._count("heatmap_over_limit_total")
            raise self._reject(
                400,
                f"level {level!r} has {n} entities ({n * n} cells), over the "
                f"limit of {self._max_cells} cells; restrict it with dc= or use a coarser level",
            )
        row, note = self.pick_window(window, at)
        heat = self._config.heatmap
        if metric == "p99":
            thresholds = Thresholds(green_below=heat.green_below_us, red_above=heat.red_above_us)
        else:
            thresholds = Thresholds(
                green_below=heat.drop_green_below, red_above=heat.drop_red_above
            )
        head = HeatmapHead(
            level=level,
            metric=metric,
            unit="us" if metric == "p99" else "ratio",
            window=window,
            dc=dc,
            window_start=utc(row.window_start) if row else None,
            window_end=utc(row.window_end) if row else None,
            computed_at=utc(row.computed_at_s) if row else None,
            generated_at=datetime.fromtimestamp(self._clock.now_s(), tz=UTC),
            note=note,
            thresholds=thresholds,
            entities=list(entities),
        )
        headers: dict[str, str] = {}
        key: tuple[Any, ...] | None = None
        if row is not None:
            # Everything the answer but ``generated_at`` depends on (thresholds: this
            # instance's config). No key without a window: one may appear at any moment.
            key = (level, metric, window, dc, form, row.window_start, row.computed_at_s, digest)
            tag = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
            headers = {"ETag": f'W/"{tag}"', "Cache-Control": "no-cache"}
            if if_none_match is not None and _etag_matches(if_none_match, tag):
                self._count("heatmap_not_modified_total")
                return Response(status_code=304, headers=headers)
        body = self._heatmaps.get(key) if key is not None else None
        if body is None:
            body = self._heatmap_body(entities, level, metric, row, form)
            # A topology reloaded meanwhile would have made the cells of another entity list.
            if key is not None and self._source.digest == digest:
                self._heatmaps.put(key, body)
        self._count("heatmap_cells_served_total", n * n)
        document = json.dumps(head.model_dump(mode="json"), separators=(",", ":"))
        return Response(
            content=f"{document[:-1]},{body}}}",
            media_type="application/json",
            headers=headers,
        )

    def _heatmap_body(
        self,
        entities: Sequence[str],
        level: Level,
        metric: Metric,
        row: WindowRow | None,
        form: Literal["cells", "columns"],
    ) -> str:
        """The cells of a heatmap as the JSON members that follow its head (no braces)."""
        n = len(entities)
        values: list[float | None] = [None] * (n * n)
        probes = [0] * (n * n)
        failures = [0] * (n * n)
        if row is not None:
            index = {name: i for i, name in enumerate(entities)}
            column = "p99_us" if metric == "p99" else "drop_rate"
            for src, dst, value, count, failed in self._db.matrix_values(
                row.window, row.window_start, level, column
            ):
                i, j = index.get(src), index.get(dst)
                if i is None or j is None:
                    continue  # an entity the topology no longer has (or outside ``dc``)
                k = i * n + j
                values[k] = finite(value)
                probes[k] = count
                failures[k] = failed

        def dumps(value: Any) -> str:
            return json.dumps(value, separators=(",", ":"), allow_nan=False)

        if form == "columns":
            return f'"values":{dumps(values)},"probes":{dumps(probes)},"failures":{dumps(failures)}'
        cells = [
            {"src": src, "dst": dst, "value": values[k], "probes": probes[k],
             "failures": failures[k]}
            for k, (src, dst) in enumerate((s, d) for s in entities for d in entities)
        ]  # fmt: skip
        return f'"cells":{dumps(cells)}'

    # -- shared ----------------------------------------------------------------------------

    def _entities(self, topology: Topology, level: Level, dc: str | None) -> Sequence[str]:
        if dc is None:
            return topology.entities(level)
        if dc not in topology.dcs():
            raise self._reject(
                400,
                f"query parameter 'dc': {dc!r} is not a DC of the topology "
                f"(known: {', '.join(topology.dcs())})",
            )
        return sorted({s.entity(level) for s in topology.servers if s.dc == dc})

    def pick_window(self, kind: str, at: str | None) -> tuple[WindowRow | None, str | None]:
        """The window to answer from and None, or None and why there is none.

        Raises HTTPException 400/422 for a kind that is not built or not a kind at all.
        """
        kinds = self.kinds()
        built = ", ".join(k.name for k in kinds)
        if kind in FUTURE_WINDOWS and kind not in {k.name for k in kinds}:
            raise self._reject(
                400, f"query parameter 'window': {kind!r} is not built yet; supported: {built}"
            )
        if kind not in {k.name for k in kinds}:
            raise self._reject(
                422, f"query parameter 'window': {kind!r} is not a window kind; built: {built}"
            )
        if at is None:
            row = self._db.latest_window(kind)
            if row is None:
                return None, f"no {kind} window has been analysed yet"
            return row, None
        try:
            at_s = parse_rfc3339("at", at).timestamp()
        except ValueError as exc:
            raise self._reject(422, str(exc)) from exc
        row = self._db.window_at(kind, at_s)
        if row is None:
            return None, f"no {kind} window contains {at}"
        return row, None

    # -- routing ---------------------------------------------------------------------------

    def _build_router(self) -> APIRouter:
        api = APIRouter(prefix="/api/v1", tags=["results"])
        names = [k.name for k in self._kinds]
        # A default value rather than Annotated: the choices come from this instance's
        # config, and postponed annotations cannot see local variables.
        window_query: Any = Query(
            default=self.default_window,
            description=f"window kind; built: {', '.join(names)} "
            f"({' and '.join(FUTURE_WINDOWS)} once the analysis has rolled one up)",
            json_schema_extra={"enum": [*names, *FUTURE_WINDOWS]},
        )

        @api.get("/agents", response_model=AgentsOut, summary="Every agent and its status")
        def get_agents() -> Response:
            """Every server of the topology, plus agents seen that the topology no longer has.

            ``up``: heard from within ``down_after_s``; ``down``: heard from before, not
            since; ``never_seen``: in the topology, never heard from; ``removed``: heard
            from, no longer in the topology.
            """
            return model_response(self.agents())

        @api.get("/windows", response_model=WindowsOut, summary="The analysis window kinds")
        def get_windows() -> WindowsOut:
            """The kinds of window that ``window=`` accepts, fast first.

            Each with its newest analysed window (null until the analysis produced one).
            """
            return self.windows()

        @api.get(
            "/sla",
            response_model=SlaOut,
            responses=ERROR_RESPONSES,
            summary="Per-entity SLAs of one window",
        )
        def get_sla(
            scope: ScopeParam,
            window: str = window_query,
            at: AtParam = None,
        ) -> Response:
            """Probes, failures, P50/P90/P99/P99.9 (µs) and drop rate per entity.

            Without ``at``: the newest window of that kind. If there is none, ``rows`` is
            empty and ``note`` says why; another window kind is never substituted.
            """
            return self.sla(scope, window, at)

        @api.get(
            "/heatmap",
            response_model=HeatmapOut,
            responses=ERROR_RESPONSES,
            summary="The src × dst matrix of one window at one level",
        )
        def get_heatmap(  # noqa: PLR0917 - FastAPI passes query parameters by name
            level: LevelParam = "tor",
            metric: MetricParam = "p99",
            window: str = window_query,
            at: AtParam = None,
            dc: DcParam = None,
            format: FormatParam = "cells",  # noqa: A002 - the query parameter's name
            if_none_match: Annotated[str | None, Header()] = None,
        ) -> Response:
            """Every entity of the level (sorted) and the dense src × dst cells, row-major.

            ``value`` is the P99 in µs or the drop rate; null with ``probes`` 0 means no
            data, null with ``probes`` > 0 means every probe failed. ``thresholds`` are the
            configured colours: green below, red above, yellow between. With
            ``format=columns``: ``values``, ``probes`` and ``failures`` arrays instead of
            ``cells`` (same row-major order). An analysed window's answer carries a weak
            ``ETag``; sent back in ``If-None-Match`` it gets ``304 Not Modified`` until the
            window is recomputed or a newer one is asked for.
            """
            # Serialised by ``heatmap`` rather than by FastAPI, which would validate every
            # cell; the response model above still documents the shape.
            return self.heatmap(
                level, metric, window, at, dc, form=format, if_none_match=if_none_match
            )

        return api


def model_response(model: BaseModel) -> Response:
    """A model as JSON, serialised once by pydantic.

    FastAPI would validate a returned model against ``response_model`` again and encode it
    in Python; for a thousand agents or SLA rows that costs more than building them. The
    route's ``response_model`` still documents the shape.
    """
    return Response(content=model.model_dump_json(), media_type="application/json")


def _etag_matches(header: str, tag: str) -> bool:
    """RFC 9110 §13.1.2: If-None-Match compares weakly (``W/`` ignored); ``*`` matches."""
    for item in header.split(","):
        candidate = item.strip().removeprefix("W/")
        if candidate in {"*", f'"{tag}"'}:
            return True
    return False


def router(
    db: ResultsDB,
    source: TopologySource,
    config: ServerConfig,
    *,
    clock: Clock,
    max_heatmap_cells: int = DEFAULT_MAX_HEATMAP_CELLS,
) -> APIRouter:
    """The read API (``/api/v1/agents``, ``/sla``, ``/heatmap``) as a router.

    Use :class:`Api` instead to also read its ``statistics()``.
    """
    return Api(db, source, config, clock=clock, max_heatmap_cells=max_heatmap_cells).router
