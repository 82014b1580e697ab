"""Every SQL statement of the analysis, in one place.

Theory of operation
-------------------
**One scan, histograms, then everything else from the histograms.** A window of raw probes
(the relation ``raw``, columns of :data:`pingmesh.store.raw.RAW_SCHEMA`) is read through the
view :func:`probes_view_sql`, which adds per probe: its latency bucket, whether it is a drop
event and in the drop basis, and whether the agents' host-noise signals flag it. Three grouped
scans then summarise the window (:func:`aggregate_sql`):

- ``src_h``: per source server and latency bucket (its ToR, podset and DC carried along);
- ``cell_h``: per src ToR → dst ToR cell and latency bucket;
- ``pairs``: per server pair, counts only (coverage and the detectors).

Each of the first two is a *histogram with counters*: one row per (key, noisy, bucket), where
``bucket`` is the DDSketch bucket of :class:`pingmesh.core.stats.LatencyHistogram`
(``ceil(ln(rtt) / ln γ)``, γ = (1 + α)/(1 − α), α = 1 %; :data:`ZERO_BUCKET` for RTTs below
``MIN_VALUE``; NULL for failed probes) and the counters are those of
:class:`pingmesh.store.results.Stats`. Histograms with equal buckets merge exactly by adding
counts, so every SLA — per server, ToR, podset, DC, DC pair and service — and every matrix cell
comes from these two tables (:func:`sla_sql`, :func:`matrix_sql`), and a 1-hour or 1-day window
is the same tables of its 10-minute windows added up (:func:`merge_sql`): rolled up, never
recomputed from raw (PM §3.5's 10 min / 1 h / 1 d jobs).

**Percentiles** are read from the histograms at the nearest rank — the smallest bucket whose
cumulative count reaches ``ceil(q × n)``, computed exactly (decimal ``q``), the rank
``percentile_disc`` uses — and reported as the bucket's representative ``2γ^i / (γ + 1)``
clamped to the window's exact minimum and maximum, as ``LatencyHistogram.quantile`` does. So
every percentile is within α (1 %) of the RTT a probe really had at that rank, at every scale.

Definitions (PM §4.2, §4.3; see :mod:`pingmesh.core.analysis.model`):

- ``successes``: outcome ``ok``; ``failures``: every other outcome; ``timeouts``: ``timeout``.
- ``retransmitted``: successful probes that needed a retransmission.
- Drop rate: TCP kinds (``tcp``, ``tcp_echo``, ``http``, ``https``) use Pingmesh's estimator,
  retransmitted ÷ successful probes (failed probes are left out: a failure cannot tell loss
  from a dead peer); ``udp`` and ``icmp`` measure loss directly, timeouts ÷ (successes +
  timeouts). ``drop_events`` and ``drop_basis`` pool the two, so the rate of a mixed set is
  ``drop_events / drop_basis``, NULL without a basis.
- Host noise: a probe whose source's event loop was late to send it or to read its answer
  (``send_lag_us``, ``recv_lag_us``) or whose responder held it (``dwell_us``) beyond the
  configured bounds is *noisy*. Noisy probes count in the SLA (it is what the fleet saw) but
  not in what the detectors see. Files written before those columns existed read as not
  noisy: the view only names the columns the files have (:func:`noise_expression`).

Portability
-----------
The window statements are plain SQL that DuckDB and Spark SQL (3.4+: ``any_value``) both run:
``GROUP BY``, window functions, ``CASE``, ``CAST``, ``UNION ALL``, ``TIMESTAMP`` literals (read
in the session time zone, which must be UTC). Engine-specific are only the statements that
make ``raw`` a view over files (:func:`duckdb_raw_view_sql`) and that write Parquet
(:func:`copy_to_parquet_sql`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pingmesh.core.stats import DEFAULT_RELATIVE_ACCURACY, MIN_VALUE

RAW_RELATION = "raw"
"""The name under which every statement reads the raw store."""

ALPHA = DEFAULT_RELATIVE_ACCURACY
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LN_GAMMA = math.log(GAMMA)
ZERO_BUCKET = -1_000_000
"""The bucket of RTTs below ``MIN_VALUE`` (reported as 0), below every real bucket."""

QUANTILES: tuple[tuple[str, str], ...] = (
    ("p50_us", "0.5"),
    ("p90_us", "0.9"),
    ("p99_us", "0.99"),
    ("p999_us", "0.999"),
)
"""(column, q as an exact decimal literal)."""

COUNTERS: tuple[str, ...] = (
    "probes",
    "successes",
    "timeouts",
    "retransmitted",
    "drop_events",
    "drop_basis",
)
"""The counters of every histogram row (summed when histograms merge)."""

RTT_EXTREMES: tuple[str, ...] = ("rtt_min", "rtt_max")

PAIR_ALL_COUNTERS: tuple[str, ...] = (
    "all_probes",
    "all_successes",
    "all_retransmitted",
    "all_drop_events",
    "all_drop_basis",
)
"""Counters of every probe of a pair (the clean ones are :data:`COUNTERS`)."""

PAIR_KEYS: tuple[str, ...] = ("agent", "dst")

_PROBE_COUNTERS = ("TRUE", "ok = 1", "lost = 1", "rx = 1", "drop_event = 1", "drop_counted = 1")
"""What a probe of ``probes`` must be to count in each of :data:`COUNTERS`."""
_PROBE_ALL_COUNTERS = ("TRUE", "ok = 1", "rx = 1", "drop_event = 1", "drop_counted = 1")
"""What a probe of ``probes`` must be to count in each of :data:`PAIR_ALL_COUNTERS`."""

STATS_COLUMNS: tuple[str, ...] = (
    "probes",
    "successes",
    "failures",
    "retransmitted",
    *(name for name, _ in QUANTILES),
    "drop_rate",
)
"""The statistics that SLA and matrix statements return, in this order, after their keys."""

TCP_KINDS = ("tcp", "tcp_echo", "http", "https")
DIRECT_LOSS_KINDS = ("udp", "icmp")

NOISE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("send_lag_us", "lag"),
    ("recv_lag_us", "lag"),
    ("dwell_us", "dwell"),
)
"""Host-noise columns of the raw store (added by the agent later; optional) and their bound."""

SOURCE_KEYS: tuple[str, ...] = ("agent", "src_tor", "src_podset", "src_dc")
CELL_KEYS: tuple[str, ...] = ("src_tor", "dst_tor", "src_podset", "dst_podset", "src_dc", "dst_dc")
PAIR_PLACEMENT: tuple[str, ...] = (
    "src_tor",
    "src_podset",
    "src_dc",
    "dst_tor",
    "dst_podset",
    "dst_dc",
)

ENTITY_SCOPES: tuple[tuple[str, str], ...] = (
    ("server", "agent"),
    ("tor", "src_tor"),
    ("podset", "src_podset"),
    ("dc", "src_dc"),
)
"""SLA scopes computed from the source histogram: (scope, the column naming the entity)."""

MATRIX_LEVELS: tuple[tuple[str, str, str], ...] = (
    ("tor", "src_tor", "dst_tor"),
    ("podset", "src_podset", "dst_podset"),
    ("dc", "src_dc", "dst_dc"),
)

PAIR_SEPARATOR = "->"


def _double(value: float) -> str:
    return f"CAST('{value!r}' AS DOUBLE)"


def timestamp_literal(ts_s: int) -> str:
    """A SQL ``TIMESTAMP`` literal for UNIX second ``ts_s`` (read in the UTC session zone)."""
    return f"TIMESTAMP '{datetime.fromtimestamp(ts_s, tz=UTC):%Y-%m-%d %H:%M:%S}'"


def window_predicate(start_s: int, end_s: int) -> str:
    """Rows whose probe time is in ``[start_s, end_s)``."""
    return f"time >= {timestamp_literal(start_s)} AND time < {timestamp_literal(end_s)}"


def string_literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _in_list(values: Sequence[str]) -> str:
    return ", ".join(string_literal(v) for v in values)


def noise_expression(columns: Collection[str], *, lag_us: float, dwell_us: float) -> str:
    """The boolean expression that flags a noisy probe, over the noise columns present."""
    bounds = {"lag": lag_us, "dwell": dwell_us}
    terms = [
        f"COALESCE({name}, 0) > {_double(bounds[bound])}"
        for name, bound in NOISE_COLUMNS
        if name in columns
    ]
    return "(" + " OR ".join(terms) + ")" if terms else "FALSE"


def bucket_expression(rtt: str = "rtt_us") -> str:
    """The histogram bucket of a successful probe's RTT (see the module docstring)."""
    return (
        f"CASE WHEN {rtt} < {_double(MIN_VALUE)} THEN {ZERO_BUCKET}"
        f" ELSE CAST(CEIL(LN({rtt}) / {_double(LN_GAMMA)}) AS INTEGER) END"
    )


def probes_view_sql(
    start_s: int, end_s: int, *, columns: Collection[str], lag_us: float, dwell_us: float
) -> str:
    """The view ``probes``: the window's raw rows with what every aggregate needs."""
    direct = _in_list(DIRECT_LOSS_KINDS)
    return f"""
CREATE OR REPLACE TEMP VIEW probes AS
SELECT
  agent, dst, time, src_addr, src_port, dst_addr, dst_port, kind, outcome, retransmits, rtt_us,
  src_tor, src_podset, src_dc, dst_tor, dst_podset, dst_dc,
  {noise_expression(columns, lag_us=lag_us, dwell_us=dwell_us)} AS noisy,
  CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END AS ok,
  CASE WHEN outcome = 'timeout' THEN 1 ELSE 0 END AS lost,
  CASE WHEN outcome = 'ok' AND retransmits > 0 THEN 1 ELSE 0 END AS rx,
  CASE WHEN outcome = 'ok' AND rtt_us IS NOT NULL THEN {bucket_expression()} END AS bucket,
  CASE WHEN kind IN ({direct}) THEN CASE WHEN outcome = 'timeout' THEN 1 ELSE 0 END
       ELSE CASE WHEN outcome = 'ok' AND retransmits > 0 THEN 1 ELSE 0 END END AS drop_event,
  CASE WHEN kind IN ({direct}) THEN CASE WHEN outcome IN ('ok', 'timeout') THEN 1 ELSE 0 END
       ELSE CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END END AS drop_counted
FROM {RAW_RELATION}
WHERE {window_predicate(start_s, end_s)}
"""


def _count_if(condition: str) -> str:
    """How many rows of the group meet ``condition``.

    A COUNT of a condition, not a ``SUM`` of 0/1 values: the same numbers, exactly, as
    BIGINT rather than HUGEINT, and (measured, DuckDB 2.0) the per-pair table of a 10 M-probe
    slice — 13 counters into 1.8 M pairs — takes 2.4 CPU s instead of 4.7.
    """
    return "COUNT(*)" if condition == "TRUE" else f"COUNT(CASE WHEN {condition} THEN 1 END)"


def _counter_aggregates() -> str:
    return ", ".join(
        f"{_count_if(condition)} AS {name}"
        for name, condition in zip(COUNTERS, _PROBE_COUNTERS, strict=True)
    )


def placement_sql() -> list[str]:
    """Where each source and each destination was placed at ingest: ``src_place`` (agent →
    ToR, podset, DC), ``dst_place`` (dst → …) and ``tor_place`` (ToR → podset, DC).

    Read once per window from few groups and joined to the aggregates afterwards: carrying
    placement strings through the big aggregates (``ANY_VALUE`` per group, over a million
    groups) costs more than the aggregates themselves.
    """
    return [
        (
            "CREATE OR REPLACE TEMP TABLE src_place AS SELECT agent, ANY_VALUE(src_tor) AS src_tor,"
            " ANY_VALUE(src_podset) AS src_podset, ANY_VALUE(src_dc) AS src_dc"
            " FROM probes GROUP BY agent"
        ),
        (
            "CREATE OR REPLACE TEMP TABLE dst_place AS SELECT dst, ANY_VALUE(dst_tor) AS dst_tor,"
            " ANY_VALUE(dst_podset) AS dst_podset, ANY_VALUE(dst_dc) AS dst_dc"
            " FROM probes GROUP BY dst"
        ),
        (
            "CREATE OR REPLACE TEMP TABLE tor_place AS SELECT tor, ANY_VALUE(podset) AS podset,"
            " ANY_VALUE(dc) AS dc FROM ("
            " SELECT src_tor AS tor, src_podset AS podset, src_dc AS dc FROM src_place"
            " UNION ALL SELECT dst_tor, dst_podset, dst_dc FROM dst_place) t"
            " WHERE tor IS NOT NULL GROUP BY tor"
        ),
    ]


_HIST_TAIL = (
    "noisy, bucket, probes, successes, timeouts, retransmitted, drop_events, drop_basis,"
    " rtt_min, rtt_max"
)


def histogram_sql(table: str, keys: Sequence[str], *, where: str = "TRUE") -> str:
    """Aggregate ``probes`` into ``table``: one row per (keys, noisy, bucket) with counters and
    the RTT extremes of its successful probes (which clamp the percentiles, as
    ``LatencyHistogram`` does)."""
    key_list = ", ".join(keys)
    return f"""
CREATE OR REPLACE TEMP TABLE {table} AS
SELECT {key_list}, noisy, bucket,
  {_counter_aggregates()},
  MIN(rtt_us) AS rtt_min,
  MAX(rtt_us) AS rtt_max
FROM probes
WHERE {where}
GROUP BY {key_list}, noisy, bucket
"""


def source_histogram_sql(table: str) -> list[str]:
    """``table``: the source histogram keyed by agent, with its placement joined on."""
    return [
        histogram_sql(f"{table}__by_agent", ("agent",)),
        (
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT h.agent, p.src_tor, p.src_podset,"
            f" p.src_dc, {', '.join('h.' + c.strip() for c in _HIST_TAIL.split(','))}"
            f" FROM {table}__by_agent h LEFT JOIN src_place p ON h.agent = p.agent"
        ),
        f"DROP TABLE {table}__by_agent",
    ]


def cell_histogram_sql(table: str) -> list[str]:
    """``table``: the ToR-cell histogram, with the cells' podsets and DCs joined on."""
    return [
        histogram_sql(f"{table}__by_cell", ("src_tor", "dst_tor"), where="dst_tor IS NOT NULL"),
        (
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT h.src_tor, h.dst_tor,"
            " s.podset AS src_podset, d.podset AS dst_podset, s.dc AS src_dc, d.dc AS dst_dc,"
            f" {', '.join('h.' + c.strip() for c in _HIST_TAIL.split(','))}"
            f" FROM {table}__by_cell h LEFT JOIN tor_place s ON h.src_tor = s.tor"
            " LEFT JOIN tor_place d ON h.dst_tor = d.tor"
        ),
        f"DROP TABLE {table}__by_cell",
    ]


def podset_cell_histogram_sql(table: str) -> list[str]:
    """``table`` in the cell histogram's shape, but per podset cell (the ToR columns NULL): for
    a fast window with too many ToR cells to draw; the podset and DC matrices and the DC-pair
    SLAs come from it all the same."""
    return [
        histogram_sql(
            f"{table}__by_podset", ("src_podset", "dst_podset"), where="dst_tor IS NOT NULL"
        ),
        (
            "CREATE OR REPLACE TEMP TABLE podset_place AS SELECT podset, ANY_VALUE(dc) AS dc"
            " FROM tor_place GROUP BY podset"
        ),
        (
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT CAST(NULL AS VARCHAR) AS src_tor,"
            " CAST(NULL AS VARCHAR) AS dst_tor, h.src_podset, h.dst_podset, s.dc AS src_dc,"
            f" d.dc AS dst_dc, {', '.join('h.' + c.strip() for c in _HIST_TAIL.split(','))}"
            f" FROM {table}__by_podset h LEFT JOIN podset_place s ON h.src_podset = s.podset"
            " LEFT JOIN podset_place d ON h.dst_podset = d.podset"
        ),
        f"DROP TABLE {table}__by_podset",
    ]


def cells_from_pairs_sql(pairs: str) -> str:
    """Clean counters per ToR cell, from the pair table (no second scan of the probes)."""
    keys = ", ".join(CELL_KEYS)
    sums = ", ".join(f"SUM({c}) AS {c}" for c in COUNTERS)
    return (
        f"SELECT {keys}, {sums} FROM {pairs} WHERE src_tor IS NOT NULL AND dst_tor IS NOT NULL"
        f" GROUP BY {keys} HAVING SUM(probes) > 0"
    )


def pair_histogram_sql(table: str) -> str:
    """Aggregate ``probes`` per (server pair, noisy, latency bucket)."""
    return histogram_sql(table, ("agent", "dst"), where="dst_tor IS NOT NULL")


def pairs_sql(table: str = "pairs") -> list[str]:
    """Per server pair: clean counters, how many were noisy, the counters of all its probes,
    and the placement of both ends (``*_place`` must exist)."""
    clean = ", ".join(
        f"{_count_if('NOT noisy' if condition == 'TRUE' else f'NOT noisy AND {condition}')}"
        f" AS {name}"
        for name, condition in zip(COUNTERS, _PROBE_COUNTERS, strict=True)
    )
    every = ", ".join(
        f"{_count_if(condition)} AS {name}"
        for name, condition in zip(PAIR_ALL_COUNTERS, _PROBE_ALL_COUNTERS, strict=True)
    )
    return [
        f"""
CREATE OR REPLACE TEMP TABLE {table} AS
SELECT c.agent, c.dst, s.src_tor, s.src_podset, s.src_dc, d.dst_tor, d.dst_podset, d.dst_dc,
  {", ".join("c." + c for c in COUNTERS)}, c.noisy,
  {", ".join("c." + c for c in PAIR_ALL_COUNTERS)}
FROM (
  SELECT agent, dst, {clean}, {_count_if("noisy")} AS noisy, {every}
  FROM probes GROUP BY agent, dst
) c
LEFT JOIN src_place s ON c.agent = s.agent
LEFT JOIN dst_place d ON c.dst = d.dst
"""
    ]


def samples_sql(table: str, *, per_pair: int, limit: int) -> str:
    """Some failed or retransmitted clean probes per pair (newest first), at most ``limit``."""
    return f"""
CREATE OR REPLACE TEMP TABLE {table} AS
SELECT agent, dst, time, src_addr, src_port, dst_addr, dst_port, kind, outcome, retransmits
FROM (
  SELECT *, row_number() OVER (PARTITION BY agent, dst ORDER BY time DESC) AS nth
  FROM probes
  WHERE NOT noisy AND (lost = 1 OR drop_event = 1)
) ranked
WHERE nth <= {int(per_pair)}
ORDER BY agent, dst, time DESC
LIMIT {int(limit)}
"""


def ports_sql(table: str, watch: str) -> str:
    """Clean probes per (pair, source port) for the pairs in ``watch`` (type-2 black holes)."""
    return f"""
CREATE OR REPLACE TEMP TABLE {table} AS
SELECT p.agent, p.dst, p.src_port, COUNT(*) AS probes, SUM(p.lost) AS timeouts
FROM probes p JOIN {watch} w ON p.agent = w.agent AND p.dst = w.dst
WHERE NOT p.noisy
GROUP BY p.agent, p.dst, p.src_port
"""


def coverage_sql(table: str, pairs: str = "pairs") -> str:
    """Pairs that reported, per source and destination DC (for coverage)."""
    return f"""
CREATE OR REPLACE TEMP TABLE {table} AS
SELECT agent, src_dc, dst_dc, COUNT(*) AS pairs_reported
FROM {pairs}
GROUP BY agent, src_dc, dst_dc
"""


def merge_sql(table: str, source: str, keys: Sequence[str]) -> str:
    """Add up histogram rows of ``source`` with equal keys (rolling windows up)."""
    key_list = ", ".join((*keys, "noisy", "bucket"))
    sums = ", ".join(f"SUM({c}) AS {c}" for c in COUNTERS)
    return f"""
CREATE OR REPLACE TEMP TABLE {table} AS
SELECT {key_list}, {sums}, MIN(rtt_min) AS rtt_min, MAX(rtt_max) AS rtt_max
FROM {source}
GROUP BY {key_list}
"""


def empty_histogram_sql(table: str, keys: Sequence[str]) -> str:
    """An empty histogram table with ``keys`` (a window with nothing of that part)."""
    columns = [f"{k} VARCHAR" for k in keys]
    columns += ["noisy BOOLEAN", "bucket INTEGER"]
    columns += [f"{c} BIGINT" for c in COUNTERS]
    columns += ["rtt_min DOUBLE", "rtt_max DOUBLE"]
    return f"CREATE OR REPLACE TEMP TABLE {table} ({', '.join(columns)})"


def _quantile_select(keys: Sequence[str], source: str, where: str) -> str:
    """Per ``keys``: counters, RTT extremes and the quantile buckets of ``source``'s rows."""
    key_list = ", ".join(keys)
    partition = ", ".join(keys)
    picks = ",\n    ".join(
        f"MIN(CASE WHEN cum >= GREATEST(1, CEIL({q} * total)) THEN bucket END) AS b_{name}"
        for name, q in QUANTILES
    )
    return f"""
WITH rows_ AS (
  SELECT * FROM {source} WHERE {where}
), stats AS (
  SELECT {key_list}, {", ".join(f"SUM({c}) AS {c}" for c in COUNTERS)},
    MIN(rtt_min) AS rtt_min, MAX(rtt_max) AS rtt_max
  FROM rows_ GROUP BY {key_list}
), hist AS (
  SELECT {key_list}, bucket, SUM(successes) AS c
  FROM rows_ WHERE bucket IS NOT NULL GROUP BY {key_list}, bucket
), cum AS (
  SELECT {key_list}, bucket,
    SUM(c) OVER (PARTITION BY {partition} ORDER BY bucket
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum,
    SUM(c) OVER (PARTITION BY {partition}) AS total
  FROM hist
), picked AS (
  SELECT {key_list},
    {picks}
  FROM cum GROUP BY {key_list}
)
SELECT s.*, {", ".join(f"p.b_{name}" for name, _ in QUANTILES)}
FROM stats s LEFT JOIN picked p ON {" AND ".join(f"s.{k} = p.{k}" for k in keys)}
"""


def _representative(bucket: str) -> str:
    gamma = _double(GAMMA)
    return (
        f"CASE WHEN {bucket} IS NULL THEN NULL WHEN {bucket} = {ZERO_BUCKET} THEN 0.0"
        f" ELSE LEAST(GREATEST(2 * POW({gamma}, {bucket}) / ({gamma} + 1), rtt_min), rtt_max) END"
    )


def _stats_projection() -> str:
    quantiles = ", ".join(f"{_representative('b_' + name)} AS {name}" for name, _ in QUANTILES)
    return (
        "probes, successes, probes - successes AS failures, retransmitted, "
        f"{quantiles}, "
        "CASE WHEN drop_basis > 0 THEN CAST(drop_events AS DOUBLE) / drop_basis END AS drop_rate, "
        "timeouts, drop_events, drop_basis"
    )


def entity_histogram_sql(
    table: str, source: str = "src_h", cells: str = "cell_h", *, members: str | None = None
) -> str:
    """Expand the source histogram to every SLA entity: rows of (scope, entity, noisy, bucket).

    ``members`` names a relation (service, agent) for the per-service SLAs.
    """
    # Every scope but the server is merged here, per (entity, noisy, bucket): a ToR's rows
    # are then one per bucket instead of one per server and bucket, which makes the quantile
    # step below several times cheaper on a big fleet (the source histogram has one row per
    # server and bucket already).
    merged = ", ".join(
        (
            *(f"SUM({c}) AS {c}" for c in COUNTERS),
            "MIN(rtt_min) AS rtt_min",
            "MAX(rtt_max) AS rtt_max",
        )
    )
    cols = ", ".join((*COUNTERS, *RTT_EXTREMES))
    server_scope, server_column = ENTITY_SCOPES[0]
    parts = [
        (
            f"SELECT '{server_scope}' AS scope, {server_column} AS entity, noisy, bucket, {cols}"
            f" FROM {source} WHERE {server_column} IS NOT NULL"
        )
    ]
    parts.extend(
        f"SELECT '{scope}' AS scope, {column} AS entity, noisy, bucket, {merged} FROM {source}"
        f" WHERE {column} IS NOT NULL GROUP BY {column}, noisy, bucket"
        for scope, column in ENTITY_SCOPES[1:]
    )
    if members is not None:
        parts.append(
            f"SELECT 'service' AS scope, m.service AS entity, s.noisy, s.bucket, {merged}"
            f" FROM {source} s JOIN {members} m ON s.agent = m.agent"
            " GROUP BY m.service, s.noisy, s.bucket"
        )
    sep = PAIR_SEPARATOR
    parts.append(
        f"SELECT 'dc_pair' AS scope, src_dc || '{sep}' || dst_dc AS entity, noisy, bucket,"
        f" {merged} FROM {cells} WHERE src_dc IS NOT NULL AND dst_dc IS NOT NULL"
        " GROUP BY src_dc, dst_dc, noisy, bucket"
    )
    union = "\nUNION ALL\n".join(parts)
    return f"CREATE OR REPLACE TEMP TABLE {table} AS\n{union}\n"


def sla_sql(source: str = "ent_h", *, clean_only: bool = False) -> str:
    """Per (scope, entity): ``STATS_COLUMNS`` then ``timeouts, drop_events, drop_basis``."""
    where = "NOT noisy" if clean_only else "TRUE"
    return f"""
SELECT scope, entity, {_stats_projection()}
FROM ({_quantile_select(("scope", "entity"), source, where)}) q
ORDER BY scope, entity
"""


def matrix_sql(
    source: str = "cell_h", *, pairs: str | None = None, clean_only: bool = False
) -> str:
    """Per (level, src, dst) at the ToR, podset and DC levels — and at the server level from
    the pair histogram ``pairs`` when given: ``STATS_COLUMNS`` then ``timeouts, drop_events,
    drop_basis``."""
    where = "NOT noisy" if clean_only else "TRUE"
    cols = ", ".join((*COUNTERS, *RTT_EXTREMES))
    parts = [
        f"SELECT '{level}' AS level, {src} AS src, {dst} AS dst, noisy, bucket, {cols}"
        f" FROM {source} WHERE {src} IS NOT NULL AND {dst} IS NOT NULL"
        for level, src, dst in MATRIX_LEVELS
    ]
    if pairs is not None:
        parts.append(
            f"SELECT 'server' AS level, agent AS src, dst, noisy, bucket, {cols} FROM {pairs}"
        )
    expanded = "(" + "\nUNION ALL\n".join(parts) + ") expanded"
    return f"""
SELECT level, src, dst, {_stats_projection()}
FROM ({_quantile_select(("level", "src", "dst"), expanded, where)}) q
ORDER BY level, src, dst
"""


def pair_matrix_fallback_sql(pairs: str, limit: int) -> str:
    """Server-level cells from the pair counters alone (no histogram: percentiles NULL), for
    the pairs with a failure or a drop event, worst first, at most ``limit``: what is kept
    when a window has too many pairs for a histogram each."""
    return f"""
SELECT 'server' AS level, agent AS src, dst,
  all_probes, all_successes, all_probes - all_successes, all_retransmitted,
  CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE),
  CASE WHEN all_drop_basis > 0 THEN CAST(all_drop_events AS DOUBLE) / all_drop_basis END,
  timeouts, all_drop_events, all_drop_basis
FROM {pairs}
WHERE dst_tor IS NOT NULL AND (all_probes > all_successes OR all_drop_events > 0)
ORDER BY all_probes - all_successes + all_drop_events DESC, agent, dst
LIMIT {int(limit)}
"""


def servers_sql(pairs: str, *, placed: bool = False) -> str:
    """Per server and role (``src``/``dst``): clean counters, peers, dead peers, noisy.

    ``placed``: ``pairs`` took its placement from ``src_place`` and ``dst_place``
    (:func:`pairs_sql`), which still exist; they are joined to the servers then, which costs
    a tenth of carrying the placement through the grouping (``ANY_VALUE`` over every pair).
    """
    sums = ", ".join(f"SUM({c}) AS {c}" for c in COUNTERS)
    peers = (
        f"{_count_if('probes > 0')} AS peers,"
        f" {_count_if('probes > 0 AND successes = 0')} AS dead,"
        " SUM(noisy) AS noisy"
    )
    if placed:
        cols = ", ".join((*COUNTERS, "peers", "dead", "noisy"))
        return f"""
SELECT 'src' AS role, g.agent AS name, p.src_tor, p.src_podset, p.src_dc, {cols}
FROM (SELECT agent, {sums}, {peers} FROM {pairs} GROUP BY agent) g
LEFT JOIN src_place p ON g.agent = p.agent
UNION ALL
SELECT 'dst' AS role, g.dst AS name, p.dst_tor, p.dst_podset, p.dst_dc, {cols}
FROM (SELECT dst, {sums}, {peers} FROM {pairs} WHERE dst_tor IS NOT NULL GROUP BY dst) g
LEFT JOIN dst_place p ON g.dst = p.dst
"""
    return f"""
SELECT 'src' AS role, agent AS name, ANY_VALUE(src_tor) AS tor, ANY_VALUE(src_podset) AS podset,
  ANY_VALUE(src_dc) AS dc, {sums}, {peers}
FROM {pairs} GROUP BY agent
UNION ALL
SELECT 'dst' AS role, dst AS name, ANY_VALUE(dst_tor), ANY_VALUE(dst_podset), ANY_VALUE(dst_dc),
  {sums}, {peers}
FROM {pairs} WHERE dst_tor IS NOT NULL GROUP BY dst
"""


def duckdb_raw_view_sql(files: Sequence[Path | str]) -> str:
    """DuckDB: make ``raw`` a view over ``files`` (at least one).

    Hive partitioning is off: the partition columns would only repeat ``time``.  Union by name
    keeps files written before a column was added readable.
    """
    if not files:
        raise ValueError("files: a view needs at least one file")
    listed = ", ".join(string_literal(str(f)) for f in files)
    return (
        f"CREATE OR REPLACE TEMP VIEW {RAW_RELATION} AS SELECT * FROM read_parquet("
        f"[{listed}], hive_partitioning = false, union_by_name = true)"
    )


def duckdb_parquet_view_sql(name: str, files: Sequence[Path | str]) -> str:
    """DuckDB: make ``name`` a view over the Parquet ``files`` (rollup parts)."""
    if not files:
        raise ValueError("files: a view needs at least one file")
    listed = ", ".join(string_literal(str(f)) for f in files)
    return (
        f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM read_parquet([{listed}],"
        " hive_partitioning = false, union_by_name = true)"
    )


def copy_to_parquet_sql(relation: str, path: Path | str) -> str:
    """DuckDB: write ``relation`` to one zstd Parquet file."""
    return (
        f"COPY (SELECT * FROM {relation}) TO {string_literal(str(path))}"
        " (FORMAT parquet, COMPRESSION zstd)"
    )


DUCKDB_SESSION_SQL: tuple[str, ...] = (
    "SET TimeZone = 'UTC'",
    "SET preserve_insertion_order = false",
)
"""DuckDB: statements to run on a fresh connection before any query above."""
