"""Analysis jobs: a window of the raw store (or of rollups) in, SLA and matrix rows out.

- :func:`compute_window`: the 10-minute job. One DuckDB session reads exactly the Parquet files
  of the hour partitions the window touches, summarises the window into histograms
  (:mod:`.queries`), derives every SLA and matrix cell from them, and — given a rollup store —
  keeps the histograms for the rollups.
- :func:`rollup_window`: the 1-hour and 1-day jobs. The same histograms, added up from the
  stored windows of the kind below (10 min → 1 h → 1 d); raw data is not read.

A job is synchronous and blocking; the runner calls it through ``asyncio.to_thread``. Each
opens its own in-memory session, so jobs share nothing and a failed job leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pingmesh.analysis import queries
from pingmesh.analysis.engine import Expected, Session
from pingmesh.store.raw import RawStore
from pingmesh.store.results import MatrixRow, SlaRow, WindowRow
from pingmesh.store.rollups import RollupStore

_UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))

_EMPTY_COVERAGE = (
    "CREATE OR REPLACE TEMP TABLE cov (agent VARCHAR, src_dc VARCHAR, dst_dc VARCHAR,"
    " pairs_reported BIGINT)"
)


def window_name(length_s: int) -> str:
    """The name of a window kind from its length: 30 → ``30s``, 600 → ``10m``, 3600 → ``1h``."""
    if length_s <= 0:
        raise ValueError(f"length_s: {length_s} is not positive")
    for unit_s, suffix in _UNITS:
        if length_s % unit_s == 0:
            return f"{length_s // unit_s}{suffix}"
    raise AssertionError("unreachable: every length is a whole number of seconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOptions:
    """How probes are judged (host-noise bounds) and how much DuckDB may use."""

    lag_us: float = 50_000.0
    dwell_us: float = 50_000.0
    threads: int | None = None
    memory_limit: str | None = None
    pair_cells_max: int = 200_000
    """A window with more server pairs than this keeps no per-pair histogram: its
    server-level cells are the worst ``pair_fallback_max`` pairs, without percentiles."""
    pair_fallback_max: int = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowResult:
    """Everything one job computed for one window, ready for ``ResultsDB.write_window``."""

    window: WindowRow
    sla: tuple[SlaRow, ...]
    matrix: tuple[MatrixRow, ...]


def _result(
    window: str,
    start_s: int,
    end_s: int,
    *,
    now_s: float,
    sla: Sequence[SlaRow] = (),
    matrix: Sequence[MatrixRow] = (),
) -> WindowResult:
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
        sla=tuple(sla),
        matrix=tuple(matrix),
    )


def _write_parts(
    session: Session, rollups: RollupStore, window: str, start_s: int, *, with_pairs: bool
) -> None:
    def writer(directory: Path) -> None:
        session.copy_to("src_h", directory / "sources.parquet")
        session.copy_to("cell_h", directory / "cells.parquet")
        session.copy_to("cov", directory / "coverage.parquet")
        if with_pairs:
            session.copy_to("pair_h", directory / "pairs.parquet")

    rollups.write(window, start_s, writer)


def compute_window(
    raw: RawStore,
    window: str,
    start_s: int,
    end_s: int,
    *,
    now_s: float,
    expected: Expected | None = None,
    rollups: RollupStore | None = None,
    options: JobOptions | None = None,
    files: Sequence[Path] | None = None,
) -> WindowResult:
    """Statistics of the probes sent in ``[start_s, end_s)``, from the raw store.

    A window with no files gives an empty result (``records == 0``) and writes no rollup.
    Raises :class:`~pingmesh.errors.StoreError` when the store cannot be read or queried.
    """
    if start_s >= end_s:
        raise ValueError(f"window {window}: start {start_s} is not before end {end_s}")
    options = options or JobOptions()
    expected = expected or Expected.empty()
    chosen = list(files) if files is not None else raw.files_between(start_s, end_s)
    if not chosen:
        return _result(window, start_s, end_s, now_s=now_s)
    with Session(threads=options.threads, memory_limit=options.memory_limit) as session:
        session.open_raw(chosen, start_s, end_s, lag_us=options.lag_us, dwell_us=options.dwell_us)
        with_pairs, _ = session.summarise(pair_cap=options.pair_cells_max)
        session.execute(queries.coverage_sql("cov"), "coverage")
        sla, matrix = session.outputs(
            window,
            start_s,
            expected,
            pair_histograms=with_pairs,
            pair_fallback="pairs",
            pair_limit=options.pair_fallback_max,
        )
        if rollups is not None and sla:
            _write_parts(session, rollups, window, start_s, with_pairs=with_pairs)
    return _result(window, start_s, end_s, now_s=now_s, sla=sla, matrix=matrix)


def rollup_window(
    rollups: RollupStore,
    window: str,
    start_s: int,
    end_s: int,
    *,
    source_window: str,
    ten_minute_s: int,
    now_s: float,
    expected: Expected | None = None,
    options: JobOptions | None = None,
) -> WindowResult:
    """The window ``[start_s, end_s)`` of kind ``window`` rolled up from the stored windows of
    kind ``source_window`` inside it; coverage is averaged over its ten-minute windows."""
    if start_s >= end_s:
        raise ValueError(f"window {window}: start {start_s} is not before end {end_s}")
    options = options or JobOptions()
    expected = expected or Expected.empty()
    sources = rollups.files(source_window, start_s, end_s, "sources")
    if not sources:
        return _result(window, start_s, end_s, now_s=now_s)
    cells = rollups.files(source_window, start_s, end_s, "cells")
    coverage = rollups.files(source_window, start_s, end_s, "coverage")
    pairs = rollups.files(source_window, start_s, end_s, "pairs")
    # Per-pair histograms roll up only if every window below kept them.
    with_pairs = bool(pairs) and len(pairs) == len(sources)
    with Session(threads=options.threads, memory_limit=options.memory_limit) as session:
        session.execute(queries.duckdb_parquet_view_sql("src_in", sources), "source parts")
        session.execute(queries.merge_sql("src_h", "src_in", queries.SOURCE_KEYS), "merge")
        if cells:
            session.execute(queries.duckdb_parquet_view_sql("cell_in", cells), "cell parts")
            session.execute(queries.merge_sql("cell_h", "cell_in", queries.CELL_KEYS), "merge")
        else:
            session.execute(queries.empty_histogram_sql("cell_h", queries.CELL_KEYS), "cells")
        if coverage:
            session.execute(queries.duckdb_parquet_view_sql("cov_in", coverage), "coverage")
            session.execute(
                "CREATE OR REPLACE TEMP TABLE cov AS SELECT agent, src_dc, dst_dc,"
                " SUM(pairs_reported) AS pairs_reported FROM cov_in GROUP BY agent, src_dc, dst_dc",
                "coverage",
            )
        else:
            session.execute(_EMPTY_COVERAGE, "coverage")
        if with_pairs:
            session.execute(queries.duckdb_parquet_view_sql("pair_in", pairs), "pair parts")
            session.execute(queries.merge_sql("pair_h", "pair_in", queries.PAIR_KEYS), "merge")
        sub_windows = max((end_s - start_s) // ten_minute_s, 1)
        sla, matrix = session.outputs(
            window, start_s, expected, sub_windows=sub_windows, pair_histograms=with_pairs
        )
        if sla:
            _write_parts(session, rollups, window, start_s, with_pairs=with_pairs)
    return _result(window, start_s, end_s, now_s=now_s, sla=sla, matrix=matrix)
