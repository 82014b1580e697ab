"""Analysis jobs: one window of the raw store in, SLA and matrix rows out.

A job is synchronous and blocking (DuckDB runs in the calling thread and its own worker
threads); the runner calls it through ``asyncio.to_thread``.  Each job opens its own in-memory
DuckDB connection over exactly the Parquet files of the hour partitions the window touches, so
jobs share nothing and a failed job leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from pingmesh.analysis import queries
from pingmesh.errors import StoreError
from pingmesh.store.raw import RawStore
from pingmesh.store.results import MatrixRow, SlaRow, WindowRow

_UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))


def window_name(length_s: int) -> str:
    """The name of a window kind from its length: 30 → ``30s``, 600 → ``10m``, 3600 → ``1h``."""
    if length_s <= 0:
        raise ValueError(f"length_s: {length_s} is not positive")
    for unit_s, suffix in _UNITS:
        if length_s % unit_s == 0:
            return f"{length_s // unit_s}{suffix}"
    raise AssertionError("unreachable: every length is a whole number of seconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowResult:
    """Everything one job computed for one window, ready for ``ResultsDB.write_window``."""

    window: WindowRow
    sla: tuple[SlaRow, ...]
    matrix: tuple[MatrixRow, ...]


def compute_window(
    raw: RawStore, window: str, start_s: int, end_s: int, *, now_s: float
) -> WindowResult:
    """Statistics of the probes sent in ``[start_s, end_s)`` (see :mod:`.queries`).

    A window with no files gives an empty result (``records == 0``).  Raises
    :class:`StoreError` when the store cannot be read or queried.
    """
    if start_s >= end_s:
        raise ValueError(f"window {window}: start {start_s} is not before end {end_s}")
    files = raw.files_between(start_s, end_s)
    sla: tuple[SlaRow, ...] = ()
    matrix: tuple[MatrixRow, ...] = ()
    if files:
        sla_rows, matrix_rows = _query(files, start_s, end_s, window)
        sla = tuple(
            SlaRow(window=window, window_start=start_s, scope=scope, entity=entity, **stats)
            for scope, entity, stats in ((r[0], r[1], _stats(r[2:])) for r in sla_rows)
        )
        matrix = tuple(
            MatrixRow(window=window, window_start=start_s, level=level, src=src, dst=dst, **stats)
            for level, src, dst, stats in ((r[0], r[1], r[2], _stats(r[3:])) for r in matrix_rows)
        )
    # Every record has a source server, so the server-level probes add up to the records.
    records = sum(row.probes for row in sla if row.scope == "server")
    return WindowResult(
        window=WindowRow(
            window=window,
            window_start=start_s,
            window_end=end_s,
            records=records,
            computed_at_s=now_s,
        ),
        sla=sla,
        matrix=matrix,
    )


def _query(
    files: Sequence[object], start_s: int, end_s: int, window: str
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    connection = duckdb.connect(":memory:")
    try:
        for statement in queries.DUCKDB_SESSION_SQL:
            connection.execute(statement)
        connection.execute(queries.duckdb_raw_view_sql([str(f) for f in files]))
        sla_rows = connection.execute(queries.sla_sql(start_s, end_s)).fetchall()
        matrix_rows = connection.execute(queries.matrix_sql(start_s, end_s)).fetchall()
    except duckdb.Error as exc:
        raise StoreError(
            f"window {window} [{start_s}, {end_s}): query over {len(files)} raw-store files "
            f"failed: {exc}"
        ) from exc
    finally:
        connection.close()
    return sla_rows, matrix_rows


def _stats(values: Sequence[Any]) -> dict[str, Any]:
    stats = dict(zip(queries.STATS_COLUMNS, values, strict=True))
    for name in ("probes", "successes", "failures", "retransmitted"):
        stats[name] = int(stats[name])  # DuckDB sums are HUGEINT
    for name in (*(n for n, _ in queries.QUANTILES), "drop_rate"):
        if stats[name] is not None:
            stats[name] = float(stats[name])
    return stats
