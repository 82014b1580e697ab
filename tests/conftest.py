"""Fixtures for every test package: a real PostgreSQL server for the tests that claim PostgreSQL.

``postgres_server`` (session scope) runs Debian's PostgreSQL binaries: ``initdb`` into a fresh
temporary directory, ``pg_ctl start`` listening on a unix socket only (no TCP port to collide
with anything), as the ``postgres`` user when the tests run as root (PostgreSQL refuses to run
as root), and ``pg_ctl stop`` at the end of the session. It is skipped only when the binaries
are absent (``make test`` installs them).

``postgres_url`` gives each test a schema of its own in that server (creating a schema is
cheap; a database per test would copy a template), dropped afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_PORT = 5432  # only names the socket file: the server listens on no TCP port


@dataclass(frozen=True, slots=True)
class PostgresServer:
    """A running PostgreSQL server of the test session."""

    socket_dir: Path
    port: int
    user: str
    database: str

    def url(self, *, schema: str | None = None) -> str:
        """A libpq URL for this server (optionally with ``search_path`` set to ``schema``)."""
        url = (
            f"postgresql://{self.user}@/{self.database}"
            f"?host={quote(str(self.socket_dir))}&port={self.port}"
        )
        if schema is not None:
            url += "&options=" + quote(f"-csearch_path={schema}")
        return url


def _pg_bin() -> Path | None:
    found = sorted(glob.glob(PG_BIN_GLOB), key=lambda p: int(Path(p).parent.name))
    for candidate in reversed(found):
        if (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _as_user(command: list[str], user: str | None) -> list[str]:
    if user is None:
        return command
    return ["runuser", "-u", user, "--", *command]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session (see the module docstring)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not installed (Debian package 'postgresql')")
    run_as = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="pingmesh-pg-"))
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    if run_as is not None:
        shutil.chown(base, run_as)
        shutil.chown(sockets, run_as)
    user = "pingmesh"
    subprocess.run(
        _as_user(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            run_as,
        ),
        check=True,
        capture_output=True,
    )
    options = (
        f"-c listen_addresses='' -k {sockets} -p {PG_PORT} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        _as_user(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(base / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            run_as,
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(socket_dir=sockets, port=PG_PORT, user=user, database="postgres")
    finally:
        subprocess.run(
            _as_user(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], run_as
            ),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty schema of the session's PostgreSQL server."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin_url = postgres_server.url()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield postgres_server.url(schema=schema)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
