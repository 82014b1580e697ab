"""PostgresDatabase on a real PostgreSQL server: placeholders, transactions, threads, failures."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from pingmesh.errors import StoreError
from pingmesh.store.database import open_database
from pingmesh.store.postgres import PostgresDatabase, redact_url, translate_placeholders


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT ? + ?", "SELECT %s + %s"),
        ("SELECT '?', ? -- why?\n", "SELECT '?', %s -- why?\n"),
        ("SELECT \"a?b\" FROM t WHERE x LIKE '50%'", "SELECT \"a?b\" FROM t WHERE x LIKE '50%%'"),
        ("SELECT 'it''s ?' || ?", "SELECT 'it''s ?' || %s"),
        ("/* ? */ SELECT ? % 2", "/* ? */ SELECT %s %% 2"),
    ],
)
def test_placeholders_are_translated_outside_literals(sql: str, expected: str) -> None:
    assert translate_placeholders(sql) == expected


def test_passwords_never_appear_in_names() -> None:
    assert redact_url("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_url("postgresql://u@db/x") == "postgresql://u@db/x"


@pytest.fixture
def db(postgres_url: str) -> Iterator[PostgresDatabase]:
    database = open_database(postgres_url)
    assert isinstance(database, PostgresDatabase)
    database.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
    yield database
    database.close()


def test_statements_queries_and_percent_signs(db: PostgresDatabase) -> None:
    db.execute("INSERT INTO t (k, v) VALUES ('50%?', ?)", (1,))
    db.executemany("INSERT INTO t (k, v) VALUES (?, ?)", [("a", 2), ("b", 3)])
    assert db.query("SELECT k, v FROM t WHERE k LIKE '50%' ") == [("50%?", 1)]
    assert db.query("SELECT COUNT(*) FROM t") == [(3,)]
    db.executemany("INSERT INTO t (k, v) VALUES (?, ?)", [])  # nothing to do


def test_a_transaction_commits_whole_or_not_at_all(db: PostgresDatabase) -> None:
    with db.transaction():
        db.execute("INSERT INTO t (k, v) VALUES ('x', 1)")
        with db.transaction():  # nested: part of the outer one
            db.execute("INSERT INTO t (k, v) VALUES ('y', 2)")

    def conflicting() -> None:
        with db.transaction():
            db.execute("INSERT INTO t (k, v) VALUES ('z', 3)")
            db.execute("INSERT INTO t (k, v) VALUES ('x', 4)")  # conflicts: all rolls back

    with pytest.raises(StoreError, match="duplicate key"):
        conflicting()
    assert db.query("SELECT k FROM t ORDER BY k") == [("x",), ("y",)]


def test_many_threads_share_the_database(db: PostgresDatabase) -> None:
    def worker(n: int) -> None:
        for i in range(50):
            with db.transaction():
                db.execute("INSERT INTO t (k, v) VALUES (?, ?)", (f"{n}-{i}", i))
                db.query("SELECT COUNT(*) FROM t")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert db.query("SELECT COUNT(*) FROM t") == [(400,)]


def test_a_broken_connection_is_replaced(db: PostgresDatabase, postgres_url: str) -> None:
    (pid,) = db.query("SELECT pg_backend_pid()")[0]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreError, match="query failed"):
        db.query("SELECT 1")  # this call finds it broken
    assert db.query("SELECT 1") == [(1,)]  # the next one has a new connection


def test_errors_name_the_database_and_what_failed(postgres_url: str) -> None:
    with pytest.raises(StoreError, match="cannot connect"):
        open_database(postgres_url.replace("@/postgres", "@/no_such_database"))
    db = open_database(postgres_url)
    with pytest.raises(StoreError, match=r"statement failed: .*no_such_table"):
        db.execute("INSERT INTO no_such_table VALUES (1)")
    db.close()
