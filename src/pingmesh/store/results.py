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
    """The SLA of one entity (server, ToR, podset, DC) in one window."""

    window: str
    window_start: int
    scope: str
    entity: str


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
