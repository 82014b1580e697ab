"""Bandwidth storage: reports by agent and interface, partitioned by UTC day, kept 7 days.

Theory of operation
-------------------
Each report of an agent becomes one row per interface, keyed by ``(day, agent, report_id,
interface)``; ``day`` is the UTC day of the report's end (days since 1970-01-01) and is the
partition key. A report retried by the agent lands in the same day and hits the same key, so it
is stored once (``INSERT … ON CONFLICT DO NOTHING``) and counted as a duplicate: that is what
makes delivery exactly-once on top of the transport's at-least-once retries, across server
restarts too, since the key lives in the database.

*Partitions.* On PostgreSQL ``bandwidth_stats`` is a declaratively partitioned table (``PARTITION
BY RANGE (day)``, migration 0005) and each day is a partition ``bandwidth_stats_pYYYYMMDD``;
queries name the parent with a ``day`` range, so the planner prunes partitions. SQLite has no
partitioning: each day is a table of its own with the same columns, and a query reads the
``UNION ALL`` of the days it spans. On both, ``bandwidth_partitions`` records which days exist.
A day's partition is created with the first report of that day.

*Retention* drops whole partitions: a day is dropped once all of it is older than the cut-off
(``(day + 1) × 86400 <= cutoff_s``), so nothing newer than the cut-off is ever deleted, and the
cost does not grow with the number of rows (the original ran a row-by-row ``DELETE`` once a day,
first 24 h after start-up). Agents not heard from since the cut-off are forgotten as well.

Every method is synchronous and short; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pingmesh.store.database import Database

DAY_S = 86400
DEFAULT_RETENTION_DAYS = 7
MAX_SERIES_POINTS = 2000

_COLUMNS = (
    "day",
    "agent",
    "report_id",
    "interface",
    "start_s",
    "end_s",
    "interval_s",
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_peak_bytes_per_s",
    "tx_peak_bytes_per_s",
    "received_at_s",
)

# The columns of a SQLite day table: those of the PostgreSQL parent table in migration 0005.
_SQLITE_DAY_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    day INTEGER NOT NULL,
    agent TEXT NOT NULL,
    report_id TEXT NOT NULL,
    interface TEXT NOT NULL,
    start_s DOUBLE PRECISION NOT NULL,
    end_s DOUBLE PRECISION NOT NULL,
    interval_s DOUBLE PRECISION NOT NULL,
    rx_bytes BIGINT NOT NULL,
    tx_bytes BIGINT NOT NULL,
    rx_packets BIGINT NOT NULL,
    tx_packets BIGINT NOT NULL,
    rx_peak_bytes_per_s DOUBLE PRECISION NOT NULL,
    tx_peak_bytes_per_s DOUBLE PRECISION NOT NULL,
    received_at_s DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (day, agent, report_id, interface)
)"""


def day_of(time_s: float) -> int:
    """The UTC day (days since 1970-01-01) of an instant."""
    return int(time_s // DAY_S)


def partition_name(day: int) -> str:
    """``bandwidth_stats_pYYYYMMDD`` for a day number."""
    return "bandwidth_stats_p" + datetime.fromtimestamp(day * DAY_S, tz=UTC).strftime("%Y%m%d")


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceSample:
    """One interface in one report, as stored."""

    interface: str
    interval_s: float
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_peak_bytes_per_s: float
    tx_peak_bytes_per_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredReport:
    """One report of one agent."""

    report_id: str
    start_s: float
    end_s: float
    interfaces: tuple[InterfaceSample, ...]

    def __post_init__(self) -> None:
        if self.end_s < self.start_s:
            raise ValueError(f"report {self.report_id}: end_s is before start_s")


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestResult:
    """How many reports were new, and how many were already stored."""

    accepted: int
    duplicate: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesPoint:
    """The traffic of one interface in one time bucket ``[start_s, start_s + step)``."""

    start_s: float
    interval_s: float  # seconds measured within the bucket
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_peak_bytes_per_s: float
    tx_peak_bytes_per_s: float

    @property
    def rx_bytes_per_s(self) -> float:
        """Average download rate over what was measured."""
        return self.rx_bytes / self.interval_s if self.interval_s > 0 else 0.0

    @property
    def tx_bytes_per_s(self) -> float:
        """Average upload rate over what was measured."""
        return self.tx_bytes / self.interval_s if self.interval_s > 0 else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceSummary:
    """Totals of one agent's interface over a time range."""

    agent: str
    alias: str
    interface: str
    last_end_s: float
    interval_s: float
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Talker:
    """One agent's traffic over a time range (the top-talkers list)."""

    agent: str
    alias: str
    interval_s: float  # seconds measured, summed over its interfaces
    rx_bytes: int
    tx_bytes: int

    @property
    def total_bytes(self) -> int:
        """Both directions."""
        return self.rx_bytes + self.tx_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthStoreStatistics:
    """Counters of the bandwidth store."""

    partitions: int
    reports_accepted_total: int
    reports_duplicate_total: int
    rows_written_total: int
    partitions_created_total: int
    partitions_dropped_total: int


class BandwidthStore:
    """Bandwidth reports in the results database; see the module docstring.

    ``database`` must have had its migrations applied (``ResultsDB`` does that).
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._days: set[int] = {
            int(row[0]) for row in database.query("SELECT day FROM bandwidth_partitions")
        }
        self._accepted = 0
        self._duplicate = 0
        self._rows = 0
        self._created = 0
        self._dropped = 0

    # -- writing ---------------------------------------------------------------------------

    def ingest(
        self, agent: str, alias: str, reports: Sequence[StoredReport], *, now_s: float
    ) -> IngestResult:
        """Store ``reports`` of ``agent`` (each once, whatever was stored before)."""
        by_day: dict[int, list[StoredReport]] = {}
        for report in reports:
            by_day.setdefault(day_of(report.end_s), []).append(report)
        accepted = duplicate = rows = 0
        with self._lock, self.database.transaction():
            for day, group in sorted(by_day.items()):
                table = self._ensure_partition(day, now_s=now_s)
                stored = self._stored_ids(table, agent, [r.report_id for r in group])
                fresh: list[tuple[Any, ...]] = []
                seen_now: set[str] = set()
                for report in group:
                    if report.report_id in stored or report.report_id in seen_now:
                        duplicate += 1
                        continue
                    seen_now.add(report.report_id)
                    accepted += 1
                    fresh.extend(_rows(day, agent, report, now_s))
                if fresh:
                    self.database.executemany(
                        f"INSERT INTO {self._target(table)} ({', '.join(_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(_COLUMNS))}) ON CONFLICT DO NOTHING",
                        fresh,
                    )
                    rows += len(fresh)
            self.database.execute(
                "INSERT INTO bandwidth_clients (agent, alias, first_seen_s, last_seen_s)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (agent) DO UPDATE SET"
                " alias = excluded.alias, last_seen_s = excluded.last_seen_s",
                (agent, alias, now_s, now_s),
            )
            self._accepted += accepted
            self._duplicate += duplicate
            self._rows += rows
        return IngestResult(accepted=accepted, duplicate=duplicate)

    def drop_before(self, cutoff_s: float) -> list[int]:
        """Drop every day partition entirely older than ``cutoff_s``; returns the days dropped."""
        first_kept = day_of(cutoff_s)  # day d ends at (d + 1) × 86400 <= cutoff_s iff d < this
        with self._lock, self.database.transaction():
            days = [
                int(row[0])
                for row in self.database.query(
                    "SELECT day FROM bandwidth_partitions WHERE day < ? ORDER BY day",
                    (first_kept,),
                )
            ]
            for day in days:
                self.database.execute(f"DROP TABLE IF EXISTS {partition_name(day)}")
                self.database.execute("DELETE FROM bandwidth_partitions WHERE day = ?", (day,))
            self.database.execute(
                "DELETE FROM bandwidth_clients WHERE last_seen_s < ?", (cutoff_s,)
            )
            self._days.difference_update(days)
            self._dropped += len(days)
        return days

    def apply_retention(
        self, *, now_s: float, retention_days: int = DEFAULT_RETENTION_DAYS
    ) -> list[int]:
        """Drop what is older than ``retention_days`` before ``now_s``."""
        if retention_days < 1:
            raise ValueError(f"retention_days: {retention_days} is not >= 1")
        return self.drop_before(now_s - retention_days * DAY_S)

    # -- reading ---------------------------------------------------------------------------

    def partitions(self) -> list[int]:
        """The days that have a partition, oldest first."""
        return [
            int(row[0])
            for row in self.database.query("SELECT day FROM bandwidth_partitions ORDER BY day")
        ]

    def series(
        self, agent: str, interface: str, *, start_s: float, end_s: float, step_s: float
    ) -> list[SeriesPoint]:
        """The traffic of one interface in buckets of ``step_s`` over ``[start_s, end_s)``.

        A report belongs to the bucket that holds its end; buckets are aligned on multiples of
        ``step_s`` since the epoch, so the same bucket has the same figures in every request.
        """
        if not step_s > 0 or not end_s > start_s:
            raise ValueError("series: needs end_s > start_s and step_s > 0")
        if (end_s - start_s) / step_s > MAX_SERIES_POINTS:
            raise ValueError(f"series: more than {MAX_SERIES_POINTS} points; use a larger step")
        source = self._source(start_s, end_s)
        if source is None:
            return []
        bucket = self._bucket_expr()
        rows = self.database.query(
            f"SELECT {bucket} AS bucket, SUM(interval_s), SUM(rx_bytes), SUM(tx_bytes),"
            " SUM(rx_packets), SUM(tx_packets), MAX(rx_peak_bytes_per_s),"
            " MAX(tx_peak_bytes_per_s)"
            f" FROM {source} AS s WHERE agent = ? AND interface = ? AND end_s >= ? AND end_s < ?"
            " GROUP BY bucket ORDER BY bucket",
            (step_s, *self._source_params(start_s, end_s), agent, interface, start_s, end_s),
        )
        return [
            SeriesPoint(
                start_s=float(r[0]) * step_s,
                interval_s=float(r[1]),
                rx_bytes=int(r[2]),
                tx_bytes=int(r[3]),
                rx_packets=int(r[4]),
                tx_packets=int(r[5]),
                rx_peak_bytes_per_s=float(r[6]),
                tx_peak_bytes_per_s=float(r[7]),
            )
            for r in rows
        ]

    def reports(
        self, agent: str, interface: str, *, start_s: float, end_s: float
    ) -> list[tuple[str, StoredReport]]:
        """Every stored report of one interface ending in ``[start_s, end_s)``, by end time.

        Each as ``(report_id, report)`` with that one interface (for audits and tests: one
        row per report, so at most a few days' worth should be asked for).
        """
        source = self._source(start_s, end_s)
        if source is None:
            return []
        rows = self.database.query(
            "SELECT report_id, start_s, end_s, interval_s, rx_bytes, tx_bytes, rx_packets,"
            " tx_packets, rx_peak_bytes_per_s, tx_peak_bytes_per_s"
            f" FROM {source} AS s WHERE agent = ? AND interface = ? AND end_s >= ? AND end_s < ?"
            " ORDER BY end_s, report_id",
            (*self._source_params(start_s, end_s), agent, interface, start_s, end_s),
        )
        return [
            (
                str(r[0]),
                StoredReport(
                    report_id=str(r[0]),
                    start_s=float(r[1]),
                    end_s=float(r[2]),
                    interfaces=(
                        InterfaceSample(
                            interface=interface,
                            interval_s=float(r[3]),
                            rx_bytes=int(r[4]),
                            tx_bytes=int(r[5]),
                            rx_packets=int(r[6]),
                            tx_packets=int(r[7]),
                            rx_peak_bytes_per_s=float(r[8]),
                            tx_peak_bytes_per_s=float(r[9]),
                        ),
                    ),
                ),
            )
            for r in rows
        ]

    def interfaces(self, *, start_s: float, end_s: float) -> list[InterfaceSummary]:
        """Every (agent, interface) with a report ending in ``[start_s, end_s)``, by name."""
        source = self._source(start_s, end_s)
        if source is None:
            return []
        rows = self.database.query(
            "SELECT s.agent, COALESCE(MAX(c.alias), ''), s.interface, MAX(s.end_s),"
            " SUM(s.interval_s), SUM(s.rx_bytes), SUM(s.tx_bytes)"
            f" FROM {source} AS s LEFT JOIN bandwidth_clients AS c ON c.agent = s.agent"
            " WHERE s.end_s >= ? AND s.end_s < ?"
            " GROUP BY s.agent, s.interface ORDER BY s.agent, s.interface",
            (*self._source_params(start_s, end_s), start_s, end_s),
        )
        return [
            InterfaceSummary(
                agent=r[0],
                alias=r[1],
                interface=r[2],
                last_end_s=float(r[3]),
                interval_s=float(r[4]),
                rx_bytes=int(r[5]),
                tx_bytes=int(r[6]),
            )
            for r in rows
        ]

    def top_talkers(
        self,
        *,
        start_s: float,
        end_s: float,
        limit: int = 10,
        exclude_interfaces: Iterable[str] = ("lo",),
    ) -> list[Talker]:
        """The agents that moved the most bytes (both ways), by reports ending in the range.

        Loopback is left out by default: it is not network traffic.
        """
        if limit < 1:
            raise ValueError(f"limit: {limit} is not >= 1")
        source = self._source(start_s, end_s)
        if source is None:
            return []
        excluded = list(exclude_interfaces)
        not_in = ""
        if excluded:
            not_in = f" AND s.interface NOT IN ({', '.join('?' * len(excluded))})"
        rows = self.database.query(
            "SELECT s.agent, COALESCE(MAX(c.alias), ''), SUM(s.interval_s),"
            " SUM(s.rx_bytes), SUM(s.tx_bytes)"
            f" FROM {source} AS s LEFT JOIN bandwidth_clients AS c ON c.agent = s.agent"
            f" WHERE s.end_s >= ? AND s.end_s < ?{not_in}"
            " GROUP BY s.agent ORDER BY SUM(s.rx_bytes) + SUM(s.tx_bytes) DESC, s.agent LIMIT ?",
            (*self._source_params(start_s, end_s), start_s, end_s, *excluded, limit),
        )
        return [
            Talker(
                agent=r[0],
                alias=r[1],
                interval_s=float(r[2]),
                rx_bytes=int(r[3]),
                tx_bytes=int(r[4]),
            )
            for r in rows
        ]

    def statistics(self) -> BandwidthStoreStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return BandwidthStoreStatistics(
                partitions=len(self._days),
                reports_accepted_total=self._accepted,
                reports_duplicate_total=self._duplicate,
                rows_written_total=self._rows,
                partitions_created_total=self._created,
                partitions_dropped_total=self._dropped,
            )

    # -- partitions --------------------------------------------------------------------------

    def _ensure_partition(self, day: int, *, now_s: float) -> str:
        name = partition_name(day)
        if day in self._days:
            return name
        if self.database.dialect == "postgresql":
            self.database.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF bandwidth_stats"
                f" FOR VALUES FROM ({day}) TO ({day + 1})"
            )
        else:
            self.database.execute(_SQLITE_DAY_TABLE.format(name=name))
            self.database.execute(
                f"CREATE INDEX IF NOT EXISTS {name}_series ON {name} (agent, interface, end_s)"
            )
        self.database.execute(
            "INSERT INTO bandwidth_partitions (day, table_name, created_at_s) VALUES (?, ?, ?)"
            " ON CONFLICT (day) DO NOTHING",
            (day, name, now_s),
        )
        self._days.add(day)
        self._created += 1
        return name

    def _target(self, table: str) -> str:
        # PostgreSQL routes rows through the parent; SQLite writes the day table itself.
        return "bandwidth_stats" if self.database.dialect == "postgresql" else table

    def _stored_ids(self, table: str, agent: str, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self.database.query(
                f"SELECT DISTINCT report_id FROM {table} WHERE agent = ?"
                f" AND report_id IN ({', '.join('?' * len(chunk))})",
                (agent, *chunk),
            )
            found.update(str(r[0]) for r in rows)
        return found

    def _days_between(self, start_s: float, end_s: float) -> list[int]:
        first, last = day_of(start_s), day_of(end_s)
        with self._lock:
            return sorted(d for d in self._days if first <= d <= last)

    def _source(self, start_s: float, end_s: float) -> str | None:
        """What to select from for ``[start_s, end_s)``: the parent, or a union of days."""
        if self.database.dialect == "postgresql":
            # The parent sees every partition, also those another server created.
            return "(SELECT * FROM bandwidth_stats WHERE day BETWEEN ? AND ?)"
        days = self._days_between(start_s, end_s)
        if not days:
            return None
        return "(" + " UNION ALL ".join(f"SELECT * FROM {partition_name(d)}" for d in days) + ")"

    def _source_params(self, start_s: float, end_s: float) -> tuple[Any, ...]:
        if self.database.dialect == "postgresql":
            return (day_of(start_s), day_of(end_s))
        return ()

    def _bucket_expr(self) -> str:
        # floor(end_s / step): PostgreSQL's CAST rounds, SQLite's truncates (end_s is positive).
        if self.database.dialect == "postgresql":
            return "CAST(floor(s.end_s / ?) AS BIGINT)"
        return "CAST(s.end_s / ? AS INTEGER)"


def _rows(day: int, agent: str, report: StoredReport, now_s: float) -> list[tuple[Any, ...]]:
    return [
        (
            day,
            agent,
            report.report_id,
            i.interface,
            report.start_s,
            report.end_s,
            i.interval_s,
            i.rx_bytes,
            i.tx_bytes,
            i.rx_packets,
            i.tx_packets,
            i.rx_peak_bytes_per_s,
            i.tx_peak_bytes_per_s,
            now_s,
        )
        for i in report.interfaces
    ]
