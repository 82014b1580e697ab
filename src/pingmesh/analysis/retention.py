"""Retention: what is kept how long, and removing the rest.

- Raw probes: ``raw_days`` (default 7); whole hour partitions are deleted
  (:meth:`RawStore.drop_partitions_before <pingmesh.store.raw.RawStore.drop_partitions_before>`).
- Rollup histograms: ``rollup_days`` (default 60, Pingmesh kept two months, PM §4.3); whole day
  directories (:meth:`RollupStore.drop_before <pingmesh.store.rollups.RollupStore.drop_before>`).
- Results database: the rows of fast windows for ``fast_results_hours`` (they come every few
  seconds), of 10-minute, 1-hour and 1-day windows for ``rollup_days``; closed incidents for
  ``rollup_days``; traceroute tasks and paths for ``traceroute_days``. These are deleted by
  window start (an index prefix of every table); a PostgreSQL deployment that partitions the
  tables by time can drop partitions instead.

A partition or day is removed only once it has *ended* before the cutoff, so nothing newer
than the retention is ever lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from pingmesh.config import RetentionConfig
from pingmesh.store.database import Database
from pingmesh.store.raw import RawStore
from pingmesh.store.rollups import RollupStore
from pingmesh.store.traceroutes import TracerouteStore

DAY_S = 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionOutcome:
    """What one pass removed."""

    raw_partitions: int
    rollup_days: int
    result_rows: int
    incidents: int
    traceroute_rows: int


def _count(db: Database, sql: str, params: tuple[object, ...]) -> int:
    return int(db.query(sql, params)[0][0])


def delete_windows_before(db: Database, window: str, ts_s: float) -> int:
    """Delete the windows of kind ``window`` that start before ``ts_s`` with their SLA and
    matrix rows; returns the rows deleted."""
    total = 0
    with db.transaction():
        for table in ("sla", "matrix", "windows"):
            where = f'FROM {table} WHERE "window" = ? AND window_start < ?'
            total += _count(db, f"SELECT COUNT(*) {where}", (window, ts_s))
            db.execute(f"DELETE {where}", (window, ts_s))
    return total


def apply_retention(
    config: RetentionConfig,
    *,
    now_s: float,
    raw: RawStore,
    db: Database,
    fast_window: str,
    kept_windows: tuple[str, ...],
    rollups: RollupStore | None = None,
    traces: TracerouteStore | None = None,
) -> RetentionOutcome:
    """One retention pass at ``now_s`` (see the module docstring)."""
    raw_cutoff = now_s - config.raw_days * DAY_S
    rollup_cutoff = now_s - config.rollup_days * DAY_S
    partitions = raw.drop_partitions_before(raw_cutoff)
    days = rollups.drop_before(rollup_cutoff) if rollups is not None else 0
    rows = delete_windows_before(db, fast_window, now_s - config.fast_results_hours * 3600.0)
    for window in kept_windows:
        rows += delete_windows_before(db, window, rollup_cutoff)
    incidents = _count(db, "SELECT COUNT(*) FROM incidents WHERE ended_at_s < ?", (rollup_cutoff,))
    db.execute("DELETE FROM incidents WHERE ended_at_s < ?", (rollup_cutoff,))
    traced = (
        traces.delete_before(now_s - config.traceroute_days * DAY_S) if traces is not None else 0
    )
    return RetentionOutcome(
        raw_partitions=partitions,
        rollup_days=days,
        result_rows=rows,
        incidents=incidents,
        traceroute_rows=traced,
    )
