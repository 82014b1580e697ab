"""The results database: what the analysis writes and the API reads.

SQLite by default (one file under the data directory), reached through
:class:`~pingmesh.store.database.Database` so that the same code and migrations serve
PostgreSQL. Every method is synchronous and short; async callers use ``asyncio.to_thread``.

Times are stored as UNIX seconds (UTC); the API turns them into RFC 3339.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from pingmesh.store.database import Database, migrate, open_database


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRow:
    """What the server knows of one agent."""

    name: str
    address: str
    first_seen_s: float
    last_seen_s: float
    last_fetch_s: float | None
    last_upload_s: float | None
    pinglist_version: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowRow:
    """One analysed window."""

    window: str
    window_start: int
    window_end: int
    records: int
    computed_at_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """Latency and loss of a set of probes.

    ``drop_rate`` is Pingmesh's estimator (PM §4.2): probes that needed a SYN retransmission
    divided by *successful* probes; None when nothing succeeded (then ``failures`` says why).
    """

    probes: int
    successes: int
    failures: int
    retransmitted: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    p999_us: float | None
    drop_rate: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SlaRow(Stats):
    """The SLA of one entity (server, ToR, podset, DC, DC pair, service) in one window.

    ``pairs_expected``: the pairs the entity's servers are meant to probe (their pinglists);
    ``coverage``: the share of those that reported in the window (0–1; for a rollup the mean
    over its sub-windows). Both None when the analysis did not know the pinglists.
    """

    window: str
    window_start: int
    scope: str
    entity: str
    pairs_expected: int | None = None
    coverage: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MatrixRow(Stats):
    """One src × dst cell of the matrix at one level in one window."""

    window: str
    window_start: int
    level: str
    src: str
    dst: str


_Row = TypeVar("_Row", AgentRow, WindowRow, SlaRow, MatrixRow)


def _columns(row_type: type[Any]) -> list[str]:
    return [f.name for f in fields(row_type)]


def _quoted(names: Iterable[str]) -> str:
    # "window" is a reserved word in PostgreSQL; quoting every column keeps one SQL text.
    return ", ".join(f'"{n}"' for n in names)


class ResultsDB:
    """The analysis results: agents seen, windows, SLAs, matrices."""

    def __init__(self, target: Path | str | Database, *, now_s: float | None = None) -> None:
        self.database = target if not isinstance(target, Path | str) else open_database(target)
        self.path = self.database.url.removeprefix("sqlite:///")
        migrate(self.database, now_s=time.time() if now_s is None else now_s)

    def close(self) -> None:
        """Close the database."""
        self.database.close()

    def _query(self, row_type: type[_Row], sql: str, params: Sequence[Any] = ()) -> list[_Row]:
        names = _columns(row_type)
        rows = self.database.query(sql.format(columns=_quoted(names)), params)
        return [row_type(**dict(zip(names, r, strict=True))) for r in rows]

    # -- agents -----------------------------------------------------------------------------

    def record_agent_seen(
        self,
        name: str,
        address: str,
        *,
        now_s: float,
        fetched: bool = False,
        uploaded: bool = False,
        pinglist_version: str | None = None,
    ) -> None:
        """Note that agent ``name`` fetched its pinglist or uploaded results at ``now_s``."""
        self.database.execute(
            """
                    INSERT INTO agents (name, address, first_seen_s, last_seen_s,
                                        last_fetch_s, last_upload_s, pinglist_version)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (name) DO UPDATE SET
                        address = excluded.address,
                        last_seen_s = excluded.last_seen_s,
                        last_fetch_s = COALESCE(excluded.last_fetch_s, agents.last_fetch_s),
                        last_upload_s = COALESCE(excluded.last_upload_s, agents.last_upload_s),
                        pinglist_version = COALESCE(excluded.pinglist_version,
                                                    agents.pinglist_version)
                    """,
            (
                name,
                address,
                now_s,
                now_s,
                now_s if fetched else None,
                now_s if uploaded else None,
                pinglist_version,
            ),
        )

    def agents(self) -> list[AgentRow]:
        """Every agent the server has heard from, by name."""
        return self._query(AgentRow, "SELECT {columns} FROM agents ORDER BY name")

    # -- analysis windows -------------------------------------------------------------------

    def write_window(
        self,
        window: WindowRow,
        sla: Iterable[SlaRow],
        matrix: Iterable[MatrixRow],
    ) -> None:
        """Store one analysed window, replacing an earlier result for the same window."""
        sla_names, matrix_names = _columns(SlaRow), _columns(MatrixRow)
        key = (window.window, window.window_start)
        with self.database.transaction():
            for table in ("sla", "matrix", "windows"):
                self.database.execute(
                    f'DELETE FROM {table} WHERE "window" = ? AND window_start = ?', key
                )
            self.database.executemany(
                f"INSERT INTO sla ({_quoted(sla_names)}) "
                f"VALUES ({', '.join('?' * len(sla_names))})",
                (astuple(r) for r in sla),
            )
            self.database.executemany(
                f"INSERT INTO matrix ({_quoted(matrix_names)}) "
                f"VALUES ({', '.join('?' * len(matrix_names))})",
                (astuple(r) for r in matrix),
            )
            self.database.execute(
                f"INSERT INTO windows ({_quoted(_columns(WindowRow))}) VALUES (?, ?, ?, ?, ?)",
                astuple(window),
            )

    def latest_window(self, window: str) -> WindowRow | None:
        """The most recent analysed window of kind ``window`` (e.g. ``30s``, ``10m``)."""
        rows = self._query(
            WindowRow,
            'SELECT {columns} FROM windows WHERE "window" = ? ORDER BY window_start DESC LIMIT 1',
            (window,),
        )
        return rows[0] if rows else None

    def window_at(self, window: str, at_s: float) -> WindowRow | None:
        """The newest window of kind ``window`` that contains the instant ``at_s``."""
        rows = self._query(
            WindowRow,
            'SELECT {columns} FROM windows WHERE "window" = ? AND window_start <= ?'
            " AND window_end > ? ORDER BY window_start DESC LIMIT 1",
            (window, at_s, at_s),
        )
        return rows[0] if rows else None

    def windows(self, window: str, *, limit: int = 100) -> list[WindowRow]:
        """The most recent analysed windows of one kind, newest first."""
        return self._query(
            WindowRow,
            'SELECT {columns} FROM windows WHERE "window" = ? ORDER BY window_start DESC LIMIT ?',
            (window, limit),
        )

    def sla(self, window: str, window_start: int, scope: str) -> list[SlaRow]:
        """The SLA rows of one window for one scope, by entity."""
        return self._query(
            SlaRow,
            'SELECT {columns} FROM sla WHERE "window" = ? AND window_start = ? AND scope = ?'
            " ORDER BY entity",
            (window, window_start, scope),
        )

    def matrix(
        self,
        window: str,
        window_start: int,
        level: str,
        *,
        src: str | None = None,
        dst: str | None = None,
    ) -> list[MatrixRow]:
        """The src × dst cells of one window at one level (optionally one row or column)."""
        sql = 'SELECT {columns} FROM matrix WHERE "window" = ? AND window_start = ? AND level = ?'
        params: list[Any] = [window, window_start, level]
        if src is not None:
            sql += " AND src = ?"
            params.append(src)
        if dst is not None:
            sql += " AND dst = ?"
            params.append(dst)
        return self._query(MatrixRow, sql + " ORDER BY src, dst", params)

    # -- history (ranges of windows; added for the dashboard's graphs) ------------------------

    def windows_between(
        self, window: str, start_s: float, end_s: float, *, limit: int = 2000
    ) -> list[WindowRow]:
        """The windows of one kind that start in ``[start_s, end_s)``, newest first."""
        return self._query(
            WindowRow,
            'SELECT {columns} FROM windows WHERE "window" = ? AND window_start >= ?'
            " AND window_start < ? ORDER BY window_start DESC LIMIT ?",
            (window, start_s, end_s, limit),
        )

    def matrix_series(
        self,
        window: str,
        level: str,
        window_starts: Sequence[int],
        *,
        src: Sequence[str] | None = None,
        dst: Sequence[str] | None = None,
    ) -> list[MatrixRow]:
        """The cells of the given windows at ``level``, optionally only of some sources or
        destinations, by window start. Every lookup is a primary-key seek."""
        if not window_starts:
            return []
        sql = 'SELECT {columns} FROM matrix WHERE "window" = ? AND level = ?'
        params: list[Any] = [window, level]
        sql += f" AND window_start IN ({', '.join('?' * len(window_starts))})"
        params.extend(window_starts)
        for column, values in (("src", src), ("dst", dst)):
            if values is not None:
                if not values:
                    return []
                sql += f" AND {column} IN ({', '.join('?' * len(values))})"
                params.extend(values)
        return self._query(MatrixRow, sql + " ORDER BY window_start, src, dst", params)

    def sla_series(
        self, window: str, scope: str, window_starts: Sequence[int], *, entity: str | None = None
    ) -> list[SlaRow]:
        """The SLA rows of the given windows for one scope (optionally one entity)."""
        if not window_starts:
            return []
        sql = (
            'SELECT {columns} FROM sla WHERE "window" = ? AND scope = ?'
            f" AND window_start IN ({', '.join('?' * len(window_starts))})"
        )
        params: list[Any] = [window, scope, *window_starts]
        if entity is not None:
            sql += " AND entity = ?"
            params.append(entity)
        return self._query(SlaRow, sql + " ORDER BY window_start, entity", params)

    def sla_values(self, window: str, window_start: int, scope: str) -> list[tuple[Any, ...]]:
        """Like :meth:`sla`, as plain tuples ``(entity, probes, successes, failures,
        retransmitted, p50_us, p90_us, p99_us, p999_us, drop_rate)``: the lean read behind
        answers of a thousand rows."""
        return self.database.query(
            "SELECT entity, probes, successes, failures, retransmitted, p50_us, p90_us, p99_us,"
            ' p999_us, drop_rate FROM sla WHERE "window" = ? AND window_start = ? AND scope = ?'
            " ORDER BY entity",
            (window, window_start, scope),
        )

    def matrix_values(
        self, window: str, window_start: int, level: str, column: str
    ) -> list[tuple[Any, ...]]:
        """(src, dst, ``column``, probes, failures) of every cell: the lean read behind big
        heatmaps (no row objects). ``column`` is one of the statistics columns."""
        if column not in {f.name for f in fields(Stats)}:
            raise ValueError(f"column: {column!r} is not a statistics column")
        # The rows as the driver returns them (BIGINT columns are ints in both dialects):
        # copying a million tuples would cost more than the query.
        return self.database.query(
            f'SELECT src, dst, "{column}", probes, failures FROM matrix'
            ' WHERE "window" = ? AND window_start = ? AND level = ?',
            (window, window_start, level),
        )

    def matrix_series_values(
        self,
        window: str,
        level: str,
        window_starts: Sequence[int],
        *,
        src: Sequence[str] | None = None,
        dst: Sequence[str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Like :meth:`matrix_series`, as plain tuples ``(window_start, src, dst, probes,
        failures, retransmitted, p50_us, p90_us, p99_us, p999_us, drop_rate)``: the lean read
        behind pages that show many cells or series at once."""
        if not window_starts or (src is not None and not src) or (dst is not None and not dst):
            return []
        sql = (
            "SELECT window_start, src, dst, probes, failures, retransmitted, p50_us, p90_us,"
            ' p99_us, p999_us, drop_rate FROM matrix WHERE "window" = ? AND level = ?'
            f" AND window_start IN ({', '.join('?' * len(window_starts))})"
        )
        params: list[Any] = [window, level, *window_starts]
        for column, values in (("src", src), ("dst", dst)):
            if values is not None:
                sql += f" AND {column} IN ({', '.join('?' * len(values))})"
                params.extend(values)
        return self.database.query(sql, params)
