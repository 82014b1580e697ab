"""Fixtures of the store tests: every results-database test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's results database lives: a SQLite file, or a fresh PostgreSQL schema.

    The PostgreSQL variant starts the session's real server (see ``tests/conftest.py``) and is
    skipped only where its binaries are not installed.
    """
    if request.param == "sqlite":
        return tmp_path / "r.sqlite"
    url: str = request.getfixturevalue("postgres_url")
    return url
