"""The results database: what the analysis writes and the API reads.

SQLite by default (one file under the data directory). Every method is synchronous and
short; async callers use ``asyncio.to_thread``. One connection guarded by a lock serves all
threads; WAL mode lets readers proceed while a job writes.

Times are stored as integer UNIX seconds (UTC) so that the same schema works unchanged on
PostgreSQL later; the API turns them into RFC 3339.

Schema migrations are numbered; :data:`MIGRATIONS` is append-only.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from pingmesh.errors import StoreError

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        first_seen_s REAL NOT NULL,
        last_seen_s REAL NOT NULL,
        last_fetch_s REAL,
        last_upload_s REAL,
        pinglist_version TEXT
    );
    CREATE TABLE windows (
        window TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        window_end INTEGER NOT NULL,
        records INTEGER NOT NULL,
        computed_at_s REAL NOT NULL,
        PRIMARY KEY (window, window_start)
    );
    CREATE TABLE sla (
        window TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        scope TEXT NOT NULL,
        entity TEXT NOT NULL,
        probes INTEGER NOT NULL,
        successes INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        retransmitted INTEGER NOT NULL,
        p50_us REAL, p90_us REAL, p99_us REAL, p999_us REAL,
        drop_rate REAL,
        PRIMARY KEY (window, window_start, scope, entity)
    );
    CREATE TABLE matrix (
        window TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        level TEXT NOT NULL,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        probes INTEGER NOT NULL,
        successes INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        retransmitted INTEGER NOT NULL,
        p50_us REAL, p90_us REAL, p99_us REAL, p999_us REAL,
        drop_rate REAL,
        PRIMARY KEY (window, window_start, level, src, dst)
    );
    """,
)


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


class ResultsDB:
    """The results database (SQLite)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the results database: {exc}") from exc
        self._lock = threading.Lock()
        self._migrate()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        with self._lock:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this pingmesh "
                    f"({len(MIGRATIONS)}); upgrade pingmesh"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                try:
                    self._db.executescript(
                        f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;"
                    )
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise StoreError(f"{self.path}: migration {number} failed: {exc}") from exc

    def _query(self, row_type: type[_Row], sql: str, params: Sequence[Any] = ()) -> list[_Row]:
        names = _columns(row_type)
        with self._lock:
            try:
                cursor = self._db.execute(sql.format(columns=", ".join(names)), params)
                return [row_type(**dict(zip(names, r, strict=True))) for r in cursor.fetchall()]
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: query failed: {exc}") from exc

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
        with self._lock:
            try:
                self._db.execute(
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
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot record agent {name!r}: {exc}") from exc

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
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for table in ("sla", "matrix", "windows"):
                    self._db.execute(
                        f"DELETE FROM {table} WHERE window = ? AND window_start = ?", key
                    )
                self._db.executemany(
                    f"INSERT INTO sla ({', '.join(sla_names)}) "
                    f"VALUES ({', '.join('?' * len(sla_names))})",
                    (astuple(r) for r in sla),
                )
                self._db.executemany(
                    f"INSERT INTO matrix ({', '.join(matrix_names)}) "
                    f"VALUES ({', '.join('?' * len(matrix_names))})",
                    (astuple(r) for r in matrix),
                )
                self._db.execute(
                    "INSERT INTO windows (window, window_start, window_end, records, computed_at_s)"
                    " VALUES (?, ?, ?, ?, ?)",
                    astuple(window),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: cannot write window {key}: {exc}") from exc

    def latest_window(self, window: str) -> WindowRow | None:
        """The most recent analysed window of kind ``window`` (e.g. ``30s``, ``10m``)."""
        rows = self._query(
            WindowRow,
            "SELECT {columns} FROM windows WHERE window = ? ORDER BY window_start DESC LIMIT 1",
            (window,),
        )
        return rows[0] if rows else None

    def window_at(self, window: str, at_s: float) -> WindowRow | None:
        """The newest window of kind ``window`` that contains the instant ``at_s``."""
        rows = self._query(
            WindowRow,
            "SELECT {columns} FROM windows WHERE window = ? AND window_start <= ?"
            " AND window_end > ? ORDER BY window_start DESC LIMIT 1",
            (window, at_s, at_s),
        )
        return rows[0] if rows else None

    def windows(self, window: str, *, limit: int = 100) -> list[WindowRow]:
        """The most recent analysed windows of one kind, newest first."""
        return self._query(
            WindowRow,
            "SELECT {columns} FROM windows WHERE window = ? ORDER BY window_start DESC LIMIT ?",
            (window, limit),
        )

    def sla(self, window: str, window_start: int, scope: str) -> list[SlaRow]:
        """The SLA rows of one window for one scope, by entity."""
        return self._query(
            SlaRow,
            "SELECT {columns} FROM sla WHERE window = ? AND window_start = ? AND scope = ?"
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
        sql = "SELECT {columns} FROM matrix WHERE window = ? AND window_start = ? AND level = ?"
        params: list[Any] = [window, window_start, level]
        if src is not None:
            sql += " AND src = ?"
            params.append(src)
        if dst is not None:
            sql += " AND dst = ?"
            params.append(dst)
        return self._query(MatrixRow, sql + " ORDER BY src, dst", params)
