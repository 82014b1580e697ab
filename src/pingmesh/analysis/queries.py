"""Every SQL statement of the analysis, in one place.

Theory of operation
-------------------
A window's statistics come from two statements over a relation called ``raw`` that has the
columns of :data:`pingmesh.store.raw.RAW_SCHEMA`:

- :func:`sla_sql`: per entity (server, ToR, podset, DC) the probes *sent by* the entity's
  servers (the source side, as Pingmesh's per-server perf counters count them, PM §3.5):
  probes, successes, failures, retransmitted, P50/P90/P99/P99.9 RTT and drop rate.
- :func:`matrix_sql`: the same statistics per (source entity, destination entity) pair at
  each level; the server level has only the pairs that were probed.

Definitions (PM §4.2, §4.3):

- ``successes``: probes with outcome ``ok``; ``failures``: every other outcome.
- ``retransmitted``: successful probes that needed at least one SYN retransmission
  (``retransmits > 0``, read from ``TCP_INFO`` by the agent).  A probe counts once however
  many retransmissions it needed: successive drops in one connection are not independent.
- ``drop_rate = retransmitted / successes``, NULL when nothing succeeded.  Failed probes are
  left out of the denominator because a failure cannot tell packet loss from a dead peer.
- Percentiles are of ``rtt_us`` over successful probes, by ``percentile_disc`` (nearest rank:
  the smallest RTT whose rank is at least ``q × n``).  Discrete rather than interpolated
  because (1) every figure is an RTT that a probe really saw, never a blend of two; (2) with
  few probes the tail is not pulled down by interpolation (P99 of 50 probes is the slowest
  one, which is what an SLA should show); (3) the 1 h and 1 d rollups from histograms will
  also read a value at a rank, so the windows stay comparable.
- A destination that the topology does not name (``dst_tor`` NULL) counts in its source's
  SLA but in no matrix cell: matrix cells are between topology entities.

Portability
-----------
The statements are plain SQL that both DuckDB (embedded) and Spark SQL run unchanged (Spark
3.5+, or 3.3.4/3.4.2: earlier ``percentile_disc`` gave wrong ranks, SPARK-44871):
``GROUPING SETS``/``GROUPING()``, ``percentile_disc(q) WITHIN GROUP (ORDER BY …)``, ``CASE``,
``CAST``, and ``TIMESTAMP 'YYYY-MM-DD HH:MM:SS'`` literals, which both engines read in the
session time zone — the engine must run with its session time zone set to UTC (DuckDB:
``SET TimeZone = 'UTC'``; Spark: ``spark.sql.session.timeZone=UTC``).  The only
engine-specific statement is the one that makes ``raw`` a view over the store's files
(:func:`duckdb_raw_view_sql`; on Spark, ``spark.read.parquet(*paths)
.createOrReplaceTempView("raw")``), so the storage location is a parameter of that one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

RAW_RELATION = "raw"
"""The name under which every statement reads the raw store."""

QUANTILES: tuple[tuple[str, float], ...] = (
    ("p50_us", 0.5),
    ("p90_us", 0.9),
    ("p99_us", 0.99),
    ("p999_us", 0.999),
)

STATS_COLUMNS: tuple[str, ...] = (
    "probes",
    "successes",
    "failures",
    "retransmitted",
    *(name for name, _ in QUANTILES),
    "drop_rate",
)
"""The statistics columns that every statement returns, in this order, after its keys."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelColumns:
    """Where a level's source and destination entity names live in ``raw``."""

    level: str
    src: str
    dst: str


LEVEL_COLUMNS: tuple[LevelColumns, ...] = (
    LevelColumns(level="server", src="agent", dst="dst"),
    LevelColumns(level="tor", src="src_tor", dst="dst_tor"),
    LevelColumns(level="podset", src="src_podset", dst="dst_podset"),
    LevelColumns(level="dc", src="src_dc", dst="dst_dc"),
)

_OK = "outcome = 'ok'"


def _stats_sql() -> str:
    ok_rtt = f"CASE WHEN {_OK} THEN rtt_us END"
    lines = [
        "COUNT(*) AS probes",
        f"SUM(CASE WHEN {_OK} THEN 1 ELSE 0 END) AS successes",
        f"SUM(CASE WHEN {_OK} THEN 0 ELSE 1 END) AS failures",
        f"SUM(CASE WHEN {_OK} AND retransmits > 0 THEN 1 ELSE 0 END) AS retransmitted",
        *(
            f"percentile_disc({q}) WITHIN GROUP (ORDER BY {ok_rtt}) AS {name}"
            for name, q in QUANTILES
        ),
        (
            f"CASE WHEN SUM(CASE WHEN {_OK} THEN 1 ELSE 0 END) > 0"
            f" THEN CAST(SUM(CASE WHEN {_OK} AND retransmits > 0 THEN 1 ELSE 0 END) AS DOUBLE)"
            f" / SUM(CASE WHEN {_OK} THEN 1 ELSE 0 END) END AS drop_rate"
        ),
    ]
    return ",\n    ".join(lines)


def timestamp_literal(ts_s: int) -> str:
    """A SQL ``TIMESTAMP`` literal for UNIX second ``ts_s`` (read in the UTC session zone)."""
    return f"TIMESTAMP '{datetime.fromtimestamp(ts_s, tz=UTC):%Y-%m-%d %H:%M:%S}'"


def window_predicate(start_s: int, end_s: int) -> str:
    """Rows whose probe time is in ``[start_s, end_s)``."""
    return f"time >= {timestamp_literal(start_s)} AND time < {timestamp_literal(end_s)}"


def _level_case(pick: str) -> str:
    """The level name, or the column ``pick`` names for it, of a GROUPING SETS output row."""
    *first, last = LEVEL_COLUMNS
    whens = " ".join(f"WHEN GROUPING({lc.src}) = 0 THEN {pick.format(lc=lc)}" for lc in first)
    return f"CASE {whens} ELSE {pick.format(lc=last)} END"


def sla_sql(start_s: int, end_s: int) -> str:
    """Per-entity statistics of the window: columns ``scope, entity, *STATS_COLUMNS``."""
    sets = ", ".join(f"({lc.src})" for lc in LEVEL_COLUMNS)
    return f"""
SELECT * FROM (
  SELECT
    {_level_case("'{lc.level}'")} AS scope,
    {_level_case("{lc.src}")} AS entity,
    {_stats_sql()}
  FROM {RAW_RELATION}
  WHERE {window_predicate(start_s, end_s)}
  GROUP BY GROUPING SETS ({sets})
) per_entity
WHERE entity IS NOT NULL
ORDER BY scope, entity
"""


def matrix_sql(start_s: int, end_s: int) -> str:
    """Per (src, dst) statistics of the window: columns ``level, src, dst, *STATS_COLUMNS``."""
    sets = ", ".join(f"({lc.src}, {lc.dst})" for lc in LEVEL_COLUMNS)
    return f"""
SELECT * FROM (
  SELECT
    {_level_case("'{lc.level}'")} AS level,
    {_level_case("{lc.src}")} AS src,
    {_level_case("{lc.dst}")} AS dst,
    {_stats_sql()}
  FROM {RAW_RELATION}
  WHERE {window_predicate(start_s, end_s)} AND dst_tor IS NOT NULL
  GROUP BY GROUPING SETS ({sets})
) per_pair
WHERE src IS NOT NULL AND dst IS NOT NULL
ORDER BY level, src, dst
"""


def _string_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def duckdb_raw_view_sql(files: Sequence[Path | str]) -> str:
    """DuckDB: make ``raw`` a view over ``files`` (at least one).

    Hive partitioning is off: the partition columns would only repeat ``time``.  Union by name
    keeps files written before a column was added readable.
    """
    if not files:
        raise ValueError("files: a view needs at least one file")
    listed = ", ".join(_string_literal(str(f)) for f in files)
    return (
        f"CREATE OR REPLACE TEMP VIEW {RAW_RELATION} AS SELECT * FROM read_parquet("
        f"[{listed}], hive_partitioning = false, union_by_name = true)"
    )


DUCKDB_SESSION_SQL: tuple[str, ...] = ("SET TimeZone = 'UTC'",)
"""DuckDB: statements to run on a fresh connection before any query above."""
