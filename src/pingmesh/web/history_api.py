"""The drill-down API: a heatmap cell → its server pairs → a pair's history → its raw probes,
and a server's forward and reverse graphs (``/api/v1/pairs``, ``/history``, ``/node``,
``/probes``).

Series are columnar (one array per statistic, aligned with ``start``) so a graph of hundreds
of windows costs one small JSON document.  Choosing the windows of a time range: with
``window=auto`` the coarsest kind whose windows, laid end to end, give at least
``min_points`` and at most ``max_points`` points (or, if none gives that many, the finest
that fits), among the kinds whose windows reach back to the start of the range — so a long
range reads the analysis's rollups (1 h, 1 d: a week of a pair is 168 rows, not 1,008).
Windows of an overlapping kind (the fast one: 30 s every 10 s) are thinned to those that do
not overlap, so each probe counts once in a graph.  A window in the range with no row for the
series is a gap (``probes`` 0, statistics null), drawn as such, never interpolated.

A rollup exists only once every window below it is analysed, so the newest hour (or day) of
a range is not rolled up yet. With ``window=auto`` that stretch — at most two rollup lengths
after the newest rollup window in the range — is read from the next finer kinds, newest data
included; ``resolutions`` says which kinds a series is made of. Points carry their own
``start``/``end``, so graphs place windows of different lengths correctly.

Raw probes are read with DuckDB straight from the raw store's Parquet files of the hours the
range touches, filtered by pair and time, newest first, bounded by ``limit``.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import duckdb
from fastapi import APIRouter, HTTPException, Query

from pingmesh.analysis import queries
from pingmesh.clock import Clock
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.topology import Topology
from pingmesh.errors import StoreError
from pingmesh.store.raw import RawStore
from pingmesh.store.results import ResultsDB, Stats, WindowRow
from pingmesh.web.api import Api, WindowKind, finite, parse_rfc3339, utc
from pingmesh.web.app import ERROR_RESPONSES, json_response

Level = Literal["server", "tor", "podset", "dc"]
LEVELS: tuple[str, ...] = ("server", "tor", "podset", "dc")
SERIES_FIELDS: tuple[str, ...] = (
    "probes",
    "failures",
    "retransmitted",
    "p50_us",
    "p90_us",
    "p99_us",
    "p999_us",
    "drop_rate",
)
DEFAULT_RANGE_S = 6 * 3600
MAX_RANGE_S = 400 * 86400
# Graphs of one series (a pair, an entity's SLA) are ~700 px wide: the coarsest kind that
# gives at least DEFAULT_MIN_POINTS points (a day: 10 min; a week: 1 h; a year: 1 d).
DEFAULT_MAX_POINTS = 720
DEFAULT_MIN_POINTS = 100
MAX_PROBES = 10_000
MAX_PAIRS = 5000
MAX_NODE_PEERS = 400
# A node page draws one thumbnail per peer and direction, ~250 px wide: fewer points each.
# A day reads hourly rollups; a week, daily ones then the hours of today (168 hours × ~50
# peers × 2 directions would be ~17 k cells, more than a page should cost the server).
NODE_MAX_POINTS = 96
NODE_MIN_POINTS = 24
# The stretch after a range's newest rollup window that finer kinds fill, in rollup lengths:
# what a rollup's lag leaves uncovered (rollups far behind leave a gap rather than a flood).
TAIL_LENGTHS = 2

LevelParam = Annotated[Level, Query(description="server, tor, podset or dc")]
TimeParam = Annotated[str | None, Query(description="RFC 3339 time with a timezone")]
WindowParam = Annotated[
    str, Query(description="a window kind (30s, 10m, 1h, …) or auto: the finest that fits")
]


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryStatistics:
    """Counters of the drill-down API (they feed ``/metrics``)."""

    pairs_requests_total: int
    history_requests_total: int
    node_requests_total: int
    probes_requests_total: int
    probes_rows_served_total: int
    rejected_requests_total: int


def stats_out(row: Stats | None) -> dict[str, Any]:
    """The statistics of a row as JSON-ready values (null when there is no row)."""
    if row is None:
        return {"probes": 0, "failures": 0, "retransmitted": 0, "p50_us": None, "p90_us": None,
                "p99_us": None, "p999_us": None, "drop_rate": None}  # fmt: skip
    return {
        "probes": row.probes,
        "failures": row.failures,
        "retransmitted": row.retransmitted,
        "p50_us": finite(row.p50_us),
        "p90_us": finite(row.p90_us),
        "p99_us": finite(row.p99_us),
        "p999_us": finite(row.p999_us),
        "drop_rate": finite(row.drop_rate),
    }


def values_out(values: Sequence[Any]) -> dict[str, Any]:
    """:func:`stats_out` of a lean row's statistics, ``(probes, failures, retransmitted,
    p50_us, p90_us, p99_us, p999_us, drop_rate)``; latencies rounded to 0.1 µs (far below
    what a probe resolves), which keeps big answers short."""
    probes, failures, retransmitted, p50, p90, p99, p999, drop = values
    return {
        "probes": int(probes),
        "failures": int(failures),
        "retransmitted": int(retransmitted),
        "p50_us": None if p50 is None or not math.isfinite(p50) else round(p50, 1),
        "p90_us": None if p90 is None or not math.isfinite(p90) else round(p90, 1),
        "p99_us": None if p99 is None or not math.isfinite(p99) else round(p99, 1),
        "p999_us": None if p999 is None or not math.isfinite(p999) else round(p999, 1),
        "drop_rate": finite(drop),
    }


@functools.lru_cache(maxsize=16384)
def _iso(seconds: int) -> str:
    # Every series of a node page repeats the same window times: format each once.
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()


def series(windows: Sequence[WindowRow], rows: Iterable[Stats], key: Any) -> dict[str, list[Any]]:
    """Columnar series over ``windows`` (oldest first) from ``rows`` keyed by ``key(row)``.

    ``key`` maps a row to its window start; windows without a row are gaps.
    """
    by_start = {key(r): r for r in rows}
    out: dict[str, list[Any]] = {"start": [], "end": []}
    for name in SERIES_FIELDS:
        out[name] = []
    for w in windows:
        out["start"].append(_iso(w.window_start))
        out["end"].append(_iso(w.window_end))
        values = stats_out(by_start.get(w.window_start))
        for name in SERIES_FIELDS:
            out[name].append(values[name])
    return out


def columns_by_peer(
    windows: Sequence[WindowRow],
    rows: Iterable[tuple[Any, ...]],
    *,
    peer_column: int,
    peers: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """One columnar series per peer over ``windows`` from ``matrix_series_values`` tuples;
    the time axis is the caller's (``start``/``end`` once per answer, not per peer).

    The hot loop of the node page (a week of a server is ~15 k cells): plain list stores,
    unpacked rows, no calls per value but the rounding. Latencies are rounded to 0.1 µs (far
    below what a probe resolves), which keeps the answer short; non-finite values become null
    (JSON has no NaN).
    """
    index = {w.window_start: k for k, w in enumerate(windows)}
    n = len(windows)

    def empty() -> list[list[Any]]:
        # One list per SERIES_FIELDS entry, in that order.
        return [[0] * n, [0] * n, [0] * n, *([None] * n for _ in SERIES_FIELDS[3:])]

    out: dict[str, list[list[Any]]] = {peer: empty() for peer in peers or ()}
    isfinite = math.isfinite
    for row in rows:
        peer = row[peer_column]
        columns = out.get(peer)
        if columns is None:
            if peers is not None:
                continue
            columns = out[peer] = empty()
        k = index.get(row[0])
        if k is None:
            continue
        _, _, _, probes, failures, retransmitted, p50, p90, p99, p999, drop = row
        columns[0][k] = int(probes)
        columns[1][k] = int(failures)
        columns[2][k] = int(retransmitted)
        if p50 is not None and isfinite(p50):
            columns[3][k] = round(p50, 1)
        if p90 is not None and isfinite(p90):
            columns[4][k] = round(p90, 1)
        if p99 is not None and isfinite(p99):
            columns[5][k] = round(p99, 1)
        if p999 is not None and isfinite(p999):
            columns[6][k] = round(p999, 1)
        if drop is not None and isfinite(drop):
            columns[7][k] = drop
    return [
        {"peer": peer, **dict(zip(SERIES_FIELDS, out[peer], strict=True))} for peer in sorted(out)
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class Points:
    """How many points a graph wants: ``auto`` reads the coarsest kind that gives the range at
    least ``low`` of them and at most ``high``."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if self.high < 2:
            raise ValueError(f"max_points: {self.high} must be at least 2")
        if not 1 <= self.low <= self.high:
            raise ValueError(f"min_points: {self.low} must be between 1 and {self.high}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """Consecutive windows of one kind, oldest first: a series is one or more of them."""

    kind: WindowKind
    windows: tuple[WindowRow, ...]

    @property
    def starts(self) -> list[int]:
        """The window starts, for the queries."""
        return [w.window_start for w in self.windows]


def thin(windows: Sequence[WindowRow], kind: WindowKind) -> list[WindowRow]:
    """Oldest first; of an overlapping kind, only windows that do not overlap each other."""
    ordered = sorted(windows, key=lambda w: w.window_start)
    if not kind.overlapping:
        return ordered
    out: list[WindowRow] = []
    for w in ordered:
        if not out or w.window_start >= out[-1].window_end:
            out.append(w)
    return out


class HistoryApi:
    """Pairs of a cell, history of a pair or entity, forward/reverse graphs, raw probes."""

    def __init__(
        self,
        db: ResultsDB,
        raw: RawStore | None,
        source: TopologySource,
        api: Api,
        *,
        clock: Clock,
        max_points: int = DEFAULT_MAX_POINTS,
        min_points: int = DEFAULT_MIN_POINTS,
        node_max_points: int = NODE_MAX_POINTS,
        node_min_points: int = NODE_MIN_POINTS,
    ) -> None:
        self._points = Points(low=min_points, high=max_points)
        try:
            self._node_points = Points(low=node_min_points, high=node_max_points)
        except ValueError as exc:
            raise ValueError(f"node_{exc}") from None
        self._db = db
        self._raw = raw
        self._source = source
        self._api = api
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            (
                "pairs_requests_total",
                "history_requests_total",
                "node_requests_total",
                "probes_requests_total",
                "probes_rows_served_total",
                "rejected_requests_total",
            ),
            0,
        )
        self.router = self._build_router()

    def statistics(self) -> HistoryStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return HistoryStatistics(**self._counts)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _reject(self, status: int, detail: str) -> HTTPException:
        self._count("rejected_requests_total")
        return HTTPException(status_code=status, detail=detail)

    # -- helpers ------------------------------------------------------------------------------

    def _members(self, topology: Topology, level: str, entity: str, what: str) -> list[str]:
        if level == "server":
            if topology.server(entity) is None:
                raise self._reject(404, f"query parameter {what!r}: no server {entity!r}")
            return [entity]
        members = [s.name for s in topology.servers if s.entity(level) == entity]  # type: ignore[arg-type]
        if not members:
            raise self._reject(404, f"query parameter {what!r}: no {level} {entity!r}")
        return members

    def _range(self, start: str | None, end: str | None) -> tuple[float, float]:
        try:
            end_s = parse_rfc3339("end", end).timestamp() if end else self._clock.now_s()
            start_s = (
                parse_rfc3339("start", start).timestamp() if start else end_s - DEFAULT_RANGE_S
            )
        except ValueError as exc:
            raise self._reject(422, str(exc)) from exc
        if start_s >= end_s:
            raise self._reject(422, "query parameter 'start': must be before 'end'")
        if end_s - start_s > MAX_RANGE_S:
            raise self._reject(
                422, f"query parameters 'start'/'end': at most {MAX_RANGE_S // 86400} days"
            )
        return start_s, end_s

    def choose_kind(
        self, window: str, start_s: float, end_s: float, points: Points | None = None
    ) -> WindowKind:
        """The kind named by ``window``; for ``auto`` the coarsest kind that gives the range
        at least ``points.low`` points and at most ``points.high`` — a graph that shows
        enough from the fewest rows — or, when none gives that many, the finest that fits."""
        wanted = points or self._points
        low, high = wanted.low, wanted.high
        kinds = self._api.kinds()
        if window != "auto":
            for kind in kinds:
                if kind.name == window:
                    return kind
            names = ", ".join(k.name for k in kinds)
            raise self._reject(
                422, f"query parameter 'window': {window!r} is not one of auto, {names}"
            )
        span = end_s - start_s
        fitting = [k for k in kinds if span / k.length_s <= high]

        def reaches_back(kind: WindowKind) -> bool:
            # Short-lived kinds (the fast windows are kept for hours, not weeks) only when
            # they reach back to the start of the range; otherwise a coarser kind that does.
            return bool(self._db.windows_between(kind.name, 0, start_s + kind.length_s, limit=1))

        for kind in reversed(fitting):
            if span / kind.length_s >= low and reaches_back(kind):
                return kind
        for kind in fitting:
            if reaches_back(kind):
                return kind  # none gives enough points: the most there are
        return fitting[0] if fitting else kinds[-1]  # nothing reaches back that far

    def _windows(
        self, kind: WindowKind, start_s: float, end_s: float, max_points: int
    ) -> list[WindowRow]:
        # Enough rows for every window of the range, capped: overlapping kinds have
        # length/every times more windows than points.
        wanted = int((end_s - start_s) / kind.every_s) + 2
        rows = self._db.windows_between(
            kind.name, start_s, end_s, limit=min(wanted, max_points * 8)
        )
        chosen = thin(rows, kind)
        return chosen[-max_points:]

    def plan(
        self, window: str, start_s: float, end_s: float, points: Points | None = None
    ) -> list[Segment]:
        """The windows a series over ``[start_s, end_s)`` is read from, oldest first: those
        of the chosen kind and, for ``auto`` with a rollup kind, the newest stretch that the
        rollup does not cover yet from the finer kinds (coarsest first)."""
        points = points or self._points
        limit = points.high
        kind = self.choose_kind(window, start_s, end_s, points)
        windows = self._windows(kind, start_s, end_s, limit)
        segments = [Segment(kind=kind, windows=tuple(windows))]
        if window != "auto" or kind.role != "rollup" or not windows:
            return segments
        cursor = windows[-1].window_end
        stop = min(end_s, cursor + TAIL_LENGTHS * kind.length_s)
        finer = [k for k in self._api.kinds() if k.length_s < kind.length_s and not k.overlapping]
        for tail_kind in sorted(finer, key=lambda k: -k.length_s):
            if cursor >= stop:
                break
            tail = self._windows(tail_kind, cursor, stop, limit)
            if tail:
                segments.append(Segment(kind=tail_kind, windows=tuple(tail)))
                cursor = tail[-1].window_end
        return segments

    def _head(self, segments: Sequence[Segment], start_s: float, end_s: float) -> dict[str, Any]:
        kind = segments[0].kind
        return {
            "window": kind.name,
            "length_s": kind.length_s,
            # Which kinds the points come from, oldest first (more than one: a rollup plus
            # the finer windows after it that it does not cover yet).
            "resolutions": [
                {"window": s.kind.name, "length_s": s.kind.length_s, "points": len(s.windows)}
                for s in segments
            ],
            "start": utc(start_s),
            "end": utc(end_s),
            "generated_at": utc(self._clock.now_s()),
        }

    # -- endpoints ----------------------------------------------------------------------------

    def pairs(self, level: Level, src: str, dst: str, window: str, at: str | None) -> Any:
        """The server pairs behind one cell of the ``level`` matrix, worst first."""
        self._count("pairs_requests_total")
        topology = self._source.topology
        srcs = self._members(topology, level, src, "src")
        dsts = self._members(topology, level, dst, "dst")
        row, note = self._api.pick_window(window, at)
        head = {
            "level": level,
            "src": src,
            "dst": dst,
            "window": window,
            "window_start": utc(row.window_start) if row else None,
            "window_end": utc(row.window_end) if row else None,
            "note": note,
            "src_servers": len(srcs),
            "dst_servers": len(dsts),
        }
        if row is None:
            return {**head, "cell": None, "pairs": [], "truncated": False}
        cell = self._db.matrix(row.window, row.window_start, level, src=src, dst=dst)
        rows = self._db.matrix_series(row.window, "server", [row.window_start], src=srcs, dst=dsts)

        def badness(r: Stats) -> tuple[int, float]:
            if r.successes == 0:
                return (0, 0.0)
            return (1, -(r.p99_us or 0.0))

        rows.sort(key=badness)
        pairs = [{"src": r.src, "dst": r.dst, **stats_out(r)} for r in rows[:MAX_PAIRS]]
        return {
            **head,
            "cell": stats_out(cell[0]) if cell else None,
            "pairs": pairs,
            "truncated": len(rows) > MAX_PAIRS,
        }

    def history(
        self,
        level: Level,
        src: str,
        dst: str,
        *,
        start: str | None,
        end: str | None,
        window: str,
    ) -> Any:
        """One src → dst series at ``level`` over a time range."""
        self._count("history_requests_total")
        topology = self._source.topology
        self._members(topology, level, src, "src")
        self._members(topology, level, dst, "dst")
        start_s, end_s = self._range(start, end)
        segments = self.plan(window, start_s, end_s)
        windows = [w for s in segments for w in s.windows]
        rows = [
            r
            for s in segments
            for r in self._db.matrix_series(s.kind.name, level, s.starts, src=[src], dst=[dst])
        ]
        return {
            **self._head(segments, start_s, end_s),
            "level": level,
            "src": src,
            "dst": dst,
            "series": series(windows, rows, lambda r: r.window_start),
        }

    def sla_history(
        self, scope: str, entity: str, start: str | None, end: str | None, window: str
    ) -> Any:
        """One entity's SLA series over a time range."""
        self._count("history_requests_total")
        start_s, end_s = self._range(start, end)
        segments = self.plan(window, start_s, end_s)
        windows = [w for s in segments for w in s.windows]
        rows = [
            r
            for s in segments
            for r in self._db.sla_series(s.kind.name, scope, s.starts, entity=entity)
        ]
        return {
            **self._head(segments, start_s, end_s),
            "scope": scope,
            "entity": entity,
            "series": series(windows, rows, lambda r: r.window_start),
        }

    def node(self, server: str, start: str | None, end: str | None, window: str) -> Any:
        """SmartPing's two pages for one server: forward (it → each peer) and reverse (each
        peer → it). Peers are the destinations it probed in the range; Pingmesh pinglists
        are symmetric, so they are also the servers that probed it."""
        self._count("node_requests_total")
        topology = self._source.topology
        place = topology.server(server)
        if place is None:
            raise self._reject(404, f"path parameter 'server': no server {server!r}")
        start_s, end_s = self._range(start, end)
        segments = self.plan(window, start_s, end_s, self._node_points)
        windows = [w for s in segments for w in s.windows]
        # Lean tuples, columns filled by index: a day of a server with ~50 peers is ~15 k
        # cells, and row objects plus per-cell dicts would cost more than the query. The
        # segments' windows never share a start, so one index by start serves them all.
        forward_rows = [
            r
            for s in segments
            for r in self._db.matrix_series_values(s.kind.name, "server", s.starts, src=[server])
        ]
        peers = sorted({r[2] for r in forward_rows})[:MAX_NODE_PEERS]
        reverse_rows = [
            r
            for s in segments
            for r in self._db.matrix_series_values(
                s.kind.name, "server", s.starts, src=peers, dst=[server]
            )
        ]
        forward = columns_by_peer(windows, forward_rows, peer_column=2, peers=peers)
        reverse = columns_by_peer(windows, reverse_rows, peer_column=1, peers=None)
        return {
            **self._head(segments, start_s, end_s),
            "server": server,
            "address": place.address,
            "dc": place.dc,
            "podset": place.podset,
            "tor": place.tor,
            # The time axis of every series (the range itself is range_start/range_end).
            "range_start": utc(start_s),
            "range_end": utc(end_s),
            "start": [_iso(w.window_start) for w in windows],
            "end": [_iso(w.window_end) for w in windows],
            "forward": forward,
            "reverse": reverse,
        }

    def probes(
        self,
        level: Level,
        src: str,
        dst: str,
        *,
        start: str | None,
        end: str | None,
        limit: int,
        failed_only: bool,
    ) -> Any:
        """The raw probes from ``src`` to ``dst`` (entities at ``level``), newest first."""
        self._count("probes_requests_total")
        if self._raw is None:
            raise self._reject(400, "this server has no raw store to read probes from")
        topology = self._source.topology
        self._members(topology, level, src, "src")
        start_s, end_s = self._range(start, end)
        src_column, dst_column = {
            "server": ("agent", "dst"),
            "tor": ("src_tor", "dst_tor"),
            "podset": ("src_podset", "dst_podset"),
            "dc": ("src_dc", "dst_dc"),
        }[level]
        files = [str(f) for f in self._raw.files_between(start_s, end_s)]
        rows: list[tuple[Any, ...]] = []
        if files:
            sql = (
                "SELECT epoch_us(time), agent, src_addr, src_port, dst, dst_addr, dst_port, kind,"
                " outcome, rtt_us, retransmits, size_bytes, detail FROM raw"
                f" WHERE {src_column} = ? AND {dst_column} = ?"
                " AND time >= to_timestamp(?) AND time < to_timestamp(?)"
                + (" AND outcome <> 'ok'" if failed_only else "")
                + " ORDER BY time DESC LIMIT ?"
            )
            # Times cross the boundary as numbers: DuckDB would need pytz for tz-aware values.
            params = [src, dst, start_s, end_s, limit + 1]
            connection = duckdb.connect(":memory:")
            try:
                for statement in queries.DUCKDB_SESSION_SQL:
                    connection.execute(statement)
                connection.execute(queries.duckdb_raw_view_sql(files))
                rows = connection.execute(sql, params).fetchall()
            except duckdb.Error as exc:
                raise StoreError(f"raw probes {src} -> {dst}: query failed: {exc}") from exc
            finally:
                connection.close()
        truncated = len(rows) > limit
        rows = rows[:limit]
        self._count("probes_rows_served_total", len(rows))
        names = ("time", "agent", "src_addr", "src_port", "dst", "dst_addr", "dst_port", "kind",
                 "outcome", "rtt_us", "retransmits", "size_bytes", "detail")  # fmt: skip
        out = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            item["time"] = datetime.fromtimestamp(item["time"] / 1e6, tz=UTC).isoformat()
            item["protocol"] = "tcp"  # every probe kind rides on TCP today
            out.append(item)
        return {
            "level": level,
            "src": src,
            "dst": dst,
            "start": utc(start_s),
            "end": utc(end_s),
            "files": len(files),
            "truncated": truncated,
            "probes": out,
        }

    # -- routing ------------------------------------------------------------------------------

    def _build_router(self) -> APIRouter:
        api = APIRouter(prefix="/api/v1", tags=["drill-down"])

        @api.get("/pairs", responses=ERROR_RESPONSES, summary="The server pairs behind a cell")
        def get_pairs(
            src: Annotated[str, Query(min_length=1, max_length=128)],
            dst: Annotated[str, Query(min_length=1, max_length=128)],
            level: LevelParam = "tor",
            window: Annotated[str, Query(description="window kind")] = self._api.default_window,
            at: TimeParam = None,
        ) -> Any:
            """Every probed server pair from ``src`` to ``dst`` (entities at ``level``) in
            one window (the newest, or the one containing ``at``), failed and slowest first;
            plus the cell itself."""
            return json_response(self.pairs(level, src, dst, window, at))

        @api.get("/history", responses=ERROR_RESPONSES, summary="A pair's history")
        def get_history(  # noqa: PLR0917 - FastAPI passes query parameters by name
            src: Annotated[str, Query(min_length=1, max_length=128)],
            dst: Annotated[str, Query(min_length=1, max_length=128)],
            level: LevelParam = "server",
            start: TimeParam = None,
            end: TimeParam = None,
            window: WindowParam = "auto",
        ) -> Any:
            """Columnar series (``start``, ``probes``, ``failures``, ``p50_us`` … ``p999_us``,
            ``drop_rate``) of one src → dst pair over ``[start, end)`` (default: the last 6
            hours). Windows without data are gaps (``probes`` 0). ``resolutions``: the window
            kinds the points come from (with ``auto``, a rollup and then the finer windows
            it does not cover yet)."""
            return json_response(self.history(level, src, dst, start=start, end=end, window=window))

        @api.get("/history/sla", responses=ERROR_RESPONSES, summary="An entity's SLA history")
        def get_sla_history(
            scope: Annotated[
                Literal["server", "tor", "podset", "dc", "service"], Query(description="scope")
            ],
            entity: Annotated[str, Query(min_length=1, max_length=128)],
            start: TimeParam = None,
            end: TimeParam = None,
            window: WindowParam = "auto",
        ) -> Any:
            """Columnar SLA series of one entity over ``[start, end)``."""
            return json_response(self.sla_history(scope, entity, start, end, window))

        @api.get("/node/{server}", responses=ERROR_RESPONSES, summary="Forward/reverse graphs")
        def get_node(
            server: str,
            start: TimeParam = None,
            end: TimeParam = None,
            window: WindowParam = "auto",
        ) -> Any:
            """``forward``: this server → each peer; ``reverse``: each peer → this server;
            one columnar series per peer over ``[start, end)``."""
            return json_response(self.node(server, start, end, window))

        @api.get("/probes", responses=ERROR_RESPONSES, summary="Raw probes with 5-tuples")
        def get_probes(  # noqa: PLR0917 - FastAPI passes query parameters by name
            src: Annotated[str, Query(min_length=1, max_length=128)],
            dst: Annotated[str, Query(min_length=1, max_length=128)],
            level: LevelParam = "server",
            start: TimeParam = None,
            end: TimeParam = None,
            limit: Annotated[int, Query(ge=1, le=MAX_PROBES)] = 200,
            failed_only: bool = False,
        ) -> Any:
            """Every probe from ``src`` to ``dst`` in ``[start, end)``, newest first: time,
            5-tuple (``src_addr``, ``src_port``, ``dst_addr``, ``dst_port``, ``protocol``),
            outcome, RTT, SYN retransmissions, size and detail."""
            return json_response(
                self.probes(
                    level, src, dst, start=start, end=end, limit=limit, failed_only=failed_only
                )
            )

        return api
