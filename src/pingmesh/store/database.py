"""The results database connection: one small interface, SQLite now, PostgreSQL by URL later.

Every store module (results, incidents, alerts, bandwidth) talks to a :class:`Database` and
writes SQL that both SQLite and PostgreSQL accept: ``?`` placeholders (translated for
PostgreSQL), ``INTEGER``/``BIGINT``/``DOUBLE PRECISION``/``TEXT`` columns, ``INSERT … ON
CONFLICT … DO UPDATE``. Times are UNIX seconds.

Migrations are files in ``store/migrations/``: ``NNNN_name.sql``, applied in order once each and
recorded in ``schema_migrations``. A migration that needs dialect-specific SQL ships
``NNNN_name.sqlite.sql`` and ``NNNN_name.postgresql.sql`` instead. The list is append-only:
never edit a migration that has shipped; add a new one.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

from pingmesh.errors import StoreError

Dialect = Literal["sqlite", "postgresql"]
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(sqlite|postgresql))?\.sql$")


class Database(Protocol):
    """What the store modules need from a database connection.

    Implementations are thread-safe: calls may come from several threads (asyncio.to_thread).
    """

    dialect: Dialect
    url: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement (in its own transaction unless inside :meth:`transaction`)."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for every row."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return every row."""
        ...

    def transaction(self) -> Any:
        """A context manager: statements inside commit together or not at all."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class SqliteDatabase:
    """SQLite in WAL mode behind one lock (readers do not block the writer for long)."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.url = f"sqlite:///{path}"
        self._path = str(path)
        try:
            self._conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: cannot open the results database: {exc}") from exc
        self._lock = threading.RLock()
        self._in_transaction = False

    def _fail(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"{self._path}: {what}: {exc}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            try:
                self._conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise self._fail("statement failed", exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            try:
                self._conn.executemany(sql, rows)
            except sqlite3.Error as exc:
                raise self._fail("statement failed", exc) from exc

    def executescript(self, script: str) -> None:
        """Run several statements (migrations)."""
        with self._lock:
            try:
                self._conn.executescript(script)
            except sqlite3.Error as exc:
                raise self._fail("script failed", exc) from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise self._fail("query failed", exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._in_transaction:  # nested: part of the outer transaction
                yield
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._fail("cannot begin a transaction", exc) from exc
            self._in_transaction = True
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._conn.execute("ROLLBACK")
                    raise self._fail("commit failed", exc) from exc
            finally:
                self._in_transaction = False

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_database(target: Path | str) -> Database:
    """Open the results database named by a path or URL (``sqlite:///path``, ``postgresql://…``).

    Raises :class:`StoreError` for a URL scheme this build does not support.
    """
    text = str(target)
    if text.startswith("sqlite:///"):
        return SqliteDatabase(text.removeprefix("sqlite:///"))
    if text.startswith(("postgresql://", "postgres://")):
        from pingmesh.store.postgres import PostgresDatabase  # noqa: PLC0415 - psycopg is heavy

        return PostgresDatabase(text)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise StoreError(
            f"database {text!r}: unsupported scheme {scheme!r} "
            "(use sqlite:///PATH or postgresql://…)"
        )
    return SqliteDatabase(text)


def available_migrations(dialect: Dialect) -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every shipped migration for ``dialect``, in order."""
    chosen: dict[int, tuple[str, str, bool]] = {}
    folder = resources.files("pingmesh.store") / "migrations"
    for entry in folder.iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match is None:
            continue
        version, name, only = int(match[1]), match[2], match[3]
        if only is not None and only != dialect:
            continue
        specific = only is not None
        if version in chosen and chosen[version][2] and not specific:
            continue
        if version in chosen and chosen[version][0] != name:
            raise StoreError(f"migrations: two migrations numbered {version:04d}")
        chosen[version] = (name, entry.read_text(encoding="utf-8"), specific)
    versions = sorted(chosen)
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"migrations: numbering has a gap: {versions}")
    return [(v, chosen[v][0], chosen[v][1]) for v in versions]


def migrate(db: Database, *, now_s: float) -> list[int]:
    """Apply every migration that ``db`` lacks; returns the versions applied.

    Each migration runs in its own transaction with its record in ``schema_migrations``.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_s DOUBLE PRECISION NOT NULL)"
    )
    applied = {int(row[0]) for row in db.query("SELECT version FROM schema_migrations")}
    shipped = available_migrations(db.dialect)
    newest = max((v for v, _, _ in shipped), default=0)
    unknown = sorted(v for v in applied if v > newest)
    if unknown:
        raise StoreError(
            f"{db.url}: schema version {max(unknown)} is newer than this pingmesh "
            f"({newest}); upgrade pingmesh"
        )
    done = []
    for version, name, sql in shipped:
        if version in applied:
            continue
        with db.transaction():
            for statement in _statements(sql):
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_s) VALUES (?, ?, ?)",
                (version, name, now_s),
            )
        done.append(version)
    return done


def _statements(script: str) -> list[str]:
    """Split a migration into statements (our migrations have no ';' inside literals)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
