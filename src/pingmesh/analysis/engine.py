"""A DuckDB session that runs the statements of :mod:`.queries` and turns results into rows.

Each job opens its own in-memory session (jobs share nothing; a failed job leaves nothing
behind); the fast path keeps one open for its slices. Every method blocks (DuckDB runs in the
calling thread and its own worker threads): callers use ``asyncio.to_thread``. DuckDB's errors
become :class:`~pingmesh.errors.StoreError` naming what failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pingmesh.analysis import queries
from pingmesh.core.analysis.model import Counts, EntitySla
from pingmesh.core.topology import Topology
from pingmesh.errors import StoreError
from pingmesh.store.results import MatrixRow, SlaRow

_STATS = len(queries.STATS_COLUMNS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Expected:
    """What the pinglists promise: pairs per (source, destination DC), and the services."""

    rows: tuple[tuple[str, str, str, str, str, int], ...]  # agent, tor, podset, dc, dst_dc, n
    members: tuple[tuple[str, str], ...]  # service, agent

    @classmethod
    def empty(cls) -> Expected:
        """Nothing known: no coverage, no services."""
        return cls(rows=(), members=())


def members_of(topology: Topology) -> tuple[tuple[str, str], ...]:
    """(service, server) for every service of the topology."""
    return tuple(
        (service, m) for service, names in sorted(topology.services.items()) for m in names
    )


def _arrow(
    names: Sequence[str], rows: Iterable[Sequence[Any]], types: Sequence[pa.DataType]
) -> pa.Table:
    columns: list[list[Any]] = [[] for _ in names]
    for row in rows:
        for i, value in enumerate(row):
            columns[i].append(value)
    return pa.table({n: pa.array(c, type=t) for n, c, t in zip(names, columns, types, strict=True)})


def _stats(values: Sequence[Any]) -> dict[str, Any]:
    stats = dict(zip(queries.STATS_COLUMNS, values, strict=True))
    for name in ("probes", "successes", "failures", "retransmitted"):
        stats[name] = int(stats[name] or 0)
    for name in (*(n for n, _ in queries.QUANTILES), "drop_rate"):
        if stats[name] is not None:
            stats[name] = float(stats[name])
    return stats


def _counts(row: Sequence[Any]) -> Counts:
    """Counts from ``probes, successes, failures, retransmitted, …, timeouts, drop_events,
    drop_basis`` (the tail of an SLA or matrix row)."""
    probes, successes, _failures, retransmitted = (int(v or 0) for v in row[:4])
    timeouts, events, basis = (int(v or 0) for v in row[_STATS : _STATS + 3])
    return Counts(
        probes=probes,
        successes=successes,
        timeouts=timeouts,
        retransmitted=retransmitted,
        drop_events=events,
        drop_basis=basis,
    )


class Session:
    """One in-memory DuckDB connection and the tables of one window (or of the fast path)."""

    def __init__(self, *, threads: int | None = None, memory_limit: str | None = None) -> None:
        try:
            self._conn = duckdb.connect(":memory:")
            for statement in queries.DUCKDB_SESSION_SQL:
                self._conn.execute(statement)
            if threads is not None:
                self._conn.execute(f"SET threads = {int(threads)}")
            if memory_limit is not None:
                self._conn.execute(f"SET memory_limit = {queries.string_literal(memory_limit)}")
        except duckdb.Error as exc:
            raise StoreError(f"analysis: cannot open DuckDB: {exc}") from exc
        self._registered: dict[str, pa.Table] = {}
        self._sla_counts: dict[tuple[str, str], Counts] = {}

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def execute(self, sql: str, what: str = "statement") -> None:
        """Run one statement; StoreError names ``what`` failed."""
        try:
            self._conn.execute(sql)
        except duckdb.Error as exc:
            raise StoreError(f"analysis: {what} failed: {exc}") from exc

    def query(self, sql: str, what: str = "query") -> list[tuple[Any, ...]]:
        """Run a query and return its rows."""
        try:
            return self._conn.execute(sql).fetchall()
        except duckdb.Error as exc:
            raise StoreError(f"analysis: {what} failed: {exc}") from exc

    def register(self, name: str, table: pa.Table) -> None:
        """Make an Arrow table queryable as ``name``."""
        self._registered[name] = table
        try:
            self._conn.register(name, table)
        except duckdb.Error as exc:
            raise StoreError(f"analysis: cannot register {name}: {exc}") from exc

    def columns(self, relation: str) -> list[str]:
        """The column names of ``relation``."""
        return [str(r[0]) for r in self.query(f"DESCRIBE {relation}", f"describe {relation}")]

    def copy_to(self, relation: str, path: Path) -> None:
        """Write ``relation`` to a Parquet file."""
        self.execute(queries.copy_to_parquet_sql(relation, path), f"writing {path}")

    # -- raw windows ---------------------------------------------------------------------------

    def open_raw(
        self,
        files: Sequence[Path],
        start_s: int,
        end_s: int,
        *,
        lag_us: float,
        dwell_us: float,
    ) -> None:
        """Make ``probes`` the window ``[start_s, end_s)`` of ``files`` (at least one)."""
        self.execute(queries.duckdb_raw_view_sql(files), f"reading {len(files)} raw files")
        self.execute(
            queries.probes_view_sql(
                start_s,
                end_s,
                columns=self.columns(queries.RAW_RELATION),
                lag_us=lag_us,
                dwell_us=dwell_us,
            ),
            "the probes view",
        )

    def summarise(
        self, *, suffix: str = "", pair_cap: int = 0, tor_cells_max: int | None = None
    ) -> tuple[bool, bool]:
        """``src_h``, ``cell_h`` and ``pairs`` (each + ``suffix``) from ``probes``, and the
        pair histogram ``pair_h`` when the window has at most ``pair_cap`` server pairs.

        With ``tor_cells_max``, a window with more ToR cells than that gets a podset-cell
        histogram in ``cell_h`` instead (:func:`~.queries.podset_cell_histogram_sql`).
        Returns (whether ``pair_h`` was made, whether ``cell_h`` is per podset).
        """
        for statement in queries.placement_sql():
            self.execute(statement, "placement")
        for statement in queries.pairs_sql(f"pairs{suffix}"):
            self.execute(statement, "pairs")
        for statement in queries.source_histogram_sql(f"src_h{suffix}"):
            self.execute(statement, "source histogram")
        coarse = False
        if tor_cells_max is not None:
            cells = self.query(
                f"SELECT COUNT(*) FROM (SELECT DISTINCT src_tor, dst_tor FROM pairs{suffix}"
                " WHERE dst_tor IS NOT NULL) c",
                "cells",
            )
            coarse = int(cells[0][0]) > tor_cells_max
        make = queries.podset_cell_histogram_sql if coarse else queries.cell_histogram_sql
        for statement in make(f"cell_h{suffix}"):
            self.execute(statement, "cell histogram")
        pairs = self.query(f"SELECT COUNT(*) FROM pairs{suffix} WHERE dst_tor IS NOT NULL")
        if int(pairs[0][0]) > pair_cap:
            return False, coarse
        self.execute(queries.pair_histogram_sql(f"pair_h{suffix}"), "pair histogram")
        return True, coarse

    def register_expected(self, expected: Expected) -> None:
        """Register ``expected`` and ``members`` (for coverage and service SLAs)."""
        self.register(
            "expected",
            _arrow(
                ("agent", "tor", "podset", "dc", "dst_dc", "pairs_expected"),
                expected.rows,
                (pa.string(),) * 5 + (pa.int64(),),
            ),
        )
        self.register(
            "members",
            _arrow(("service", "agent"), expected.members, (pa.string(), pa.string())),
        )

    # -- outputs -------------------------------------------------------------------------------

    def coverage(
        self, reported: str, *, sub_windows: int = 1
    ) -> dict[tuple[str, str], tuple[int, float]]:
        """(scope, entity) → (pairs expected, coverage) from ``expected`` and ``reported``
        (agent, src_dc, dst_dc, pairs_reported); the latter summed over ``sub_windows``."""
        n = max(int(sub_windows), 1)
        sep = queries.PAIR_SEPARATOR
        sql = f"""
WITH r AS (
  SELECT agent, dst_dc, SUM(pairs_reported) AS reported FROM {reported} GROUP BY agent, dst_dc
), j AS (
  SELECT e.agent, e.tor, e.podset, e.dc, e.dst_dc, e.pairs_expected,
    LEAST(COALESCE(r.reported, 0), e.pairs_expected * {n}) AS reported
  FROM expected e LEFT JOIN r ON e.agent = r.agent AND e.dst_dc = r.dst_dc
), scoped AS (
  SELECT 'server' AS scope, agent AS entity, pairs_expected, reported FROM j
  UNION ALL SELECT 'tor', tor, pairs_expected, reported FROM j
  UNION ALL SELECT 'podset', podset, pairs_expected, reported FROM j
  UNION ALL SELECT 'dc', dc, pairs_expected, reported FROM j
  UNION ALL SELECT 'dc_pair', dc || '{sep}' || dst_dc, pairs_expected, reported FROM j
  UNION ALL SELECT 'service', m.service, j.pairs_expected, j.reported
    FROM j JOIN members m ON j.agent = m.agent
)
SELECT scope, entity, SUM(pairs_expected), SUM(reported) FROM scoped GROUP BY scope, entity
"""
        out: dict[tuple[str, str], tuple[int, float]] = {}
        for scope, entity, expected_raw, reported_n in self.query(sql, "coverage"):
            expected_n = int(expected_raw or 0)
            if expected_n > 0:
                out[(scope, entity)] = (expected_n, min(1.0, float(reported_n) / (expected_n * n)))
        return out

    def entity_histogram(self, *, source: str = "src_h", cells: str = "cell_h") -> None:
        """``ent_h``: the source histogram expanded to every SLA entity."""
        self.execute(
            queries.entity_histogram_sql("ent_h", source, cells, members="members"),
            "entity histogram",
        )

    def sla_rows(
        self,
        window: str,
        window_start: int,
        *,
        coverage: Mapping[tuple[str, str], tuple[int, float]] | None = None,
    ) -> list[SlaRow]:
        """The SLA rows of ``ent_h`` (call :meth:`entity_histogram` first)."""
        rows = []
        self._sla_counts = {}
        for r in self.query(queries.sla_sql("ent_h"), "SLA"):
            scope, entity = str(r[0]), str(r[1])
            self._sla_counts[(scope, entity)] = _counts(r[2:])
            cov = (coverage or {}).get((scope, entity))
            rows.append(
                SlaRow(
                    window=window,
                    window_start=window_start,
                    scope=scope,
                    entity=entity,
                    pairs_expected=cov[0] if cov else None,
                    coverage=cov[1] if cov else None,
                    **_stats(r[2 : 2 + _STATS]),
                )
            )
        return rows

    def clean_sla(self, sla: Sequence[SlaRow] | None = None) -> list[EntitySla]:
        """The clean SLA of every entity of ``ent_h`` (what the threshold detector sees).

        ``sla``: the window's SLA rows, which are the answer when no probe was noisy (the
        common case: one query less).
        """
        known = self._sla_counts
        if (
            sla is not None
            and all((r.scope, r.entity) in known for r in sla)
            and not self.query("SELECT 1 FROM ent_h WHERE noisy LIMIT 1")
        ):
            return [
                EntitySla(
                    scope=r.scope,
                    entity=r.entity,
                    counts=known[(r.scope, r.entity)],
                    p99_us=r.p99_us,
                )
                for r in sla
            ]
        out = []
        for r in self.query(queries.sla_sql("ent_h", clean_only=True), "clean SLA"):
            stats = r[2:]
            p99 = stats[queries.STATS_COLUMNS.index("p99_us")]
            out.append(
                EntitySla(
                    scope=str(r[0]),
                    entity=str(r[1]),
                    counts=_counts(stats),
                    p99_us=None if p99 is None else float(p99),
                )
            )
        return out

    def outputs(
        self,
        window: str,
        window_start: int,
        expected: Expected,
        *,
        sub_windows: int = 1,
        pair_histograms: bool = False,
        pair_fallback: str | None = None,
        pair_limit: int = 0,
        coverage: bool = True,
    ) -> tuple[list[SlaRow], list[MatrixRow]]:
        """SLA and matrix rows of ``src_h``, ``cell_h`` and the reported pairs ``cov``; the
        server-level cells from ``pair_h`` if ``pair_histograms``, else the worst
        ``pair_limit`` pairs of ``pair_fallback`` (a pairs table) without percentiles."""
        self.register_expected(expected)
        covered = (
            self.coverage("cov", sub_windows=sub_windows) if expected.rows and coverage else None
        )
        self.entity_histogram()
        sla = self.sla_rows(window, window_start, coverage=covered)
        matrix = self.matrix_rows(window, window_start, pairs="pair_h" if pair_histograms else None)
        if not pair_histograms and pair_fallback is not None and pair_limit > 0:
            sql = queries.pair_matrix_fallback_sql(pair_fallback, pair_limit)
            matrix.extend(self._matrix(window, window_start, sql))
        return sla, matrix

    def _matrix(self, window: str, window_start: int, sql: str) -> list[MatrixRow]:
        return [
            MatrixRow(
                window=window,
                window_start=window_start,
                level=str(r[0]),
                src=str(r[1]),
                dst=str(r[2]),
                **_stats(r[3 : 3 + _STATS]),
            )
            for r in self.query(sql, "matrix")
        ]

    def matrix_rows(
        self, window: str, window_start: int, *, source: str = "cell_h", pairs: str | None = None
    ) -> list[MatrixRow]:
        """The src × dst cells at the ToR, podset and DC levels (and server, from ``pairs``)."""
        return self._matrix(window, window_start, queries.matrix_sql(source, pairs=pairs))
