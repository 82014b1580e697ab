"""PostgreSQL behind the :class:`~pingmesh.store.database.Database` interface (psycopg 3).

Chosen by URL: ``open_database("postgresql://user@host:5432/pingmesh")`` (libpq's URL syntax,
so ``?host=/run/postgresql`` reaches a unix socket and ``?options=-csearch_path%3Dx`` picks a
schema).

*One SQL text for both databases.* The store modules write ``?`` placeholders, as SQLite does;
:func:`translate_placeholders` turns them into psycopg's ``%s`` (skipping string literals,
quoted identifiers and comments) and every literal ``%`` into ``%%``. Translations are cached:
the store modules use a few dozen statements.

*Thread safety.* One connection behind one re-entrant lock, like the SQLite implementation:
the results database sees a few writes a second and reads from API handlers, which one
connection serves. Outside :meth:`transaction` the connection is in autocommit mode; inside,
the lock is held for the whole transaction, so statements of other threads wait instead of
joining it.

*Failures.* Every psycopg error becomes a :class:`~pingmesh.errors.StoreError` naming the
database (without its password). A connection that broke (the server restarted) is replaced
by a new one on the next call; the call that found it broken fails, since re-running a
statement that may have committed is not safe in general.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from pingmesh.errors import StoreError
from pingmesh.store.database import Dialect

CONNECT_TIMEOUT_S = 10

_TOKEN = re.compile(
    r"""
      '(?:[^']|'')*'          # a string literal
    | "(?:[^"]|"")*"          # a quoted identifier
    | --[^\n]*                # a line comment
    | /\*.*?\*/               # a block comment
    | \?                      # a placeholder
    | %                       # a literal percent sign
    """,
    re.VERBOSE | re.DOTALL,
)
_cache: dict[str, str] = {}


def translate_placeholders(sql: str) -> str:
    """``?`` → ``%s`` outside literals, identifiers and comments; every ``%`` → ``%%``."""
    cached = _cache.get(sql)
    if cached is not None:
        return cached

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "?":
            return "%s"
        # psycopg parses every "%" of the text, literals and comments included.
        return text.replace("%", "%%")

    translated = _TOKEN.sub(replace, sql)
    if len(_cache) < 10_000:
        _cache[sql] = translated
    return translated


def redact_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


class PostgresDatabase:
    """PostgreSQL through one psycopg connection; see the module docstring."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        self._dsn = url
        self._lock = threading.RLock()
        self._in_transaction = False
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise StoreError(f"{self.url}: cannot connect: {_one_line(exc)}") from exc

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn.closed or self._conn.broken:
            if self._in_transaction:
                raise StoreError(f"{self.url}: the connection broke inside a transaction")
            self._conn = self._connect()
        return self._conn

    def _fail(self, what: str, exc: psycopg.Error) -> StoreError:
        return StoreError(f"{self.url}: {what}: {_one_line(exc)}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute(translate_placeholders(sql), tuple(params))
            except psycopg.Error as exc:
                raise self._fail("statement failed", exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            conn = self._connection()
            batch = list(rows)
            if not batch:
                return
            try:
                with conn.cursor() as cursor:
                    cursor.executemany(translate_placeholders(sql), batch)
            except psycopg.Error as exc:
                raise self._fail("statement failed", exc) from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.cursor() as cursor:
                    cursor.execute(translate_placeholders(sql), tuple(params))
                    return list(cursor.fetchall())
            except psycopg.Error as exc:
                raise self._fail("query failed", exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._in_transaction:  # nested: part of the outer transaction
                yield
                return
            conn = self._connection()
            self._in_transaction = True
            try:
                with conn.transaction():
                    yield
            except psycopg.Error as exc:
                raise self._fail("transaction failed", exc) from exc
            finally:
                self._in_transaction = False

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __del__(self) -> None:
        # Like SQLite's connection, a forgotten database closes when collected (psycopg
        # would warn instead).
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
