"""The fast path: raw probes read once, in slices, for the 30-second window and the detectors.

Theory of operation
-------------------
Alerts need seconds, not Pingmesh's 20 minutes (reference §3.0: R-Pingmesh analyses every 20 s,
deTector every 30 s). Every ``every_s`` the runner hands the fast path the newest *slice*
``[t − every_s, t)``; the fast path reads only the raw files whose time range overlaps it
(:class:`~.fileindex.RawFileIndex`), summarises it in DuckDB into the same histograms as the
10-minute job (:mod:`.queries`) plus what the detectors need, and keeps those summaries in a
long-lived in-memory DuckDB session, one set of rows per slice:

============  ================================================  =========================
table          per slice                                         kept for
============  ================================================  =========================
fs_src_h       source histogram                                  the fast window
fs_cell_h      ToR-cell histogram                                the fast window
fs_pairs       every pair's clean counts                         the fast window
fs_cells       clean counts per ToR cell                         the detection horizon
fs_servers     clean counts per server, as source and as dest.   the detection horizon
fs_anom        the pairs on the anomaly watch list               the detection horizon
fs_samples     a few failed / retransmitted probes per pair      the detection horizon
fs_ports       per source port, the pairs on the watch list      the detection horizon
============  ================================================  =========================

The fast window (``window_s``, e.g. 30 s) is the merge of its slices: SLA and matrix rows for
the dashboard, and the facts of the black-hole, host and SLA detectors. The silent-drop detector
also looks at longer horizons (2 and 10 minutes by default), because small drop rates need many
probes to be told from the baseline; those change slowly and are recomputed every
``horizon_every_s`` (30 s) or a tenth of their length, whichever is longer, not every
window. So each raw record is read once by the fast
path, whatever the window and horizons: at 1 M records/s a slice is 10 M rows, aggregated in
DuckDB, never in Python.

Type-2 black holes need per-port history (:mod:`pingmesh.core.analysis.blackhole`): a pair
joins the *port watch list* when it has a timeout, and from then on every slice counts its
probes per source port. Likewise a pair joins the *anomaly watch list* with its first timeout or
drop event, and from then on every slice keeps its counts, so that the horizon's per-pair rates
are rates (only the clean slices before the first anomaly are missing from them).

Slices that were not computed (the server was down, or a slice was skipped) are simply
missing: the windows are made of the slices that exist. Records that arrive after their
slice was read are not in the fast path (they are in the 10-minute job, which waits longer).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pingmesh.analysis import queries
from pingmesh.analysis.engine import Expected, Session
from pingmesh.analysis.fileindex import RawFileIndex
from pingmesh.analysis.jobs import JobOptions, WindowResult
from pingmesh.core.analysis.model import (
    CellFacts,
    Counts,
    PairFacts,
    PortUse,
    ProbeSample,
    ServerFacts,
    WindowFacts,
)
from pingmesh.store.results import WindowRow

_COUNTER_COLS = ", ".join(f"{c} BIGINT" for c in queries.COUNTERS)
_PLACE_COLS = ", ".join(f"{c} VARCHAR" for c in queries.PAIR_PLACEMENT)
_SOURCE_COLS = ", ".join(f"{k} VARCHAR" for k in queries.SOURCE_KEYS)
_CELL_COLS = ", ".join(f"{k} VARCHAR" for k in queries.CELL_KEYS)
_HIST_TAIL = f"noisy BOOLEAN, bucket INTEGER, {_COUNTER_COLS}, rtt_min DOUBLE, rtt_max DOUBLE"
_ALL_COLS = ", ".join(f"{c} BIGINT" for c in queries.PAIR_ALL_COUNTERS)
_PAIR_COLS = (
    f"slice BIGINT, agent VARCHAR, dst VARCHAR, {_PLACE_COLS}, {_COUNTER_COLS}, noisy BIGINT, "
    f"{_ALL_COLS}"
)

_TABLES: dict[str, str] = {
    "fs_src_h": f"slice BIGINT, {_SOURCE_COLS}, {_HIST_TAIL}",
    "fs_cell_h": f"slice BIGINT, {_CELL_COLS}, {_HIST_TAIL}",
    "fs_pair_h": f"slice BIGINT, agent VARCHAR, dst VARCHAR, {_HIST_TAIL}",
    "fs_pairs": _PAIR_COLS,
    "fs_anom": _PAIR_COLS,
    "fs_cells": f"slice BIGINT, {_CELL_COLS}, {_COUNTER_COLS}",
    "fs_servers": (
        f"slice BIGINT, role VARCHAR, name VARCHAR, tor VARCHAR, podset VARCHAR, dc VARCHAR, "
        f"{_COUNTER_COLS}, peers BIGINT, dead BIGINT, noisy BIGINT"
    ),
    "fs_samples": (
        "slice BIGINT, agent VARCHAR, dst VARCHAR, time TIMESTAMPTZ, src_addr VARCHAR, "
        "src_port INTEGER, dst_addr VARCHAR, dst_port INTEGER, kind VARCHAR, outcome VARCHAR, "
        "retransmits INTEGER"
    ),
    "fs_ports": (
        "slice BIGINT, agent VARCHAR, dst VARCHAR, src_port INTEGER, probes BIGINT, timeouts BIGINT"
    ),
    "fs_watch": "agent VARCHAR, dst VARCHAR, last_slice BIGINT",
    "fs_awatch": "agent VARCHAR, dst VARCHAR, last_slice BIGINT",
}
_WATCHES = ("fs_watch", "fs_awatch")
_WINDOW_TABLES = ("fs_src_h", "fs_cell_h", "fs_pair_h", "fs_pairs")
_PAIR_SELECT = ", ".join(
    (
        "agent",
        "dst",
        *queries.PAIR_PLACEMENT,
        *queries.COUNTERS,
        "noisy",
        *queries.PAIR_ALL_COUNTERS,
    )
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceInfo:
    """One slice read from the raw store."""

    start_s: int
    end_s: int
    files: int
    records: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FastFacts:
    """What the detectors see: the fast window, the horizon, and the watched pairs' ports."""

    window: WindowFacts
    horizon: WindowFacts
    ports: dict[tuple[str, str], tuple[PortUse, ...]]
    extra: tuple[WindowFacts, ...] = ()  # horizons between the window and the horizon
    window_slices: int
    horizon_slices: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FastPathStatistics:
    """Counters of the fast path."""

    slices_total: int
    slices_empty_total: int
    records_total: int
    slices_held: int
    watched_pairs: int
    samples_capped_total: int
    coarse_slices_total: int  # too many ToR cells: no ToR matrix in the fast window


def _counts(values: Sequence[Any]) -> Counts:
    # Called for every cell and server of every window (10⁵ a window on a big fleet): plain
    # indexing, no generator.
    return Counts(
        probes=int(values[0] or 0),
        successes=int(values[1] or 0),
        timeouts=int(values[2] or 0),
        retransmitted=int(values[3] or 0),
        drop_events=int(values[4] or 0),
        drop_basis=int(values[5] or 0),
    )


class FastPath:
    """Slices in, fast windows and detector facts out (see the module docstring).

    Thread-safe: one call at a time (the runner calls it from worker threads).
    """

    def __init__(
        self,
        index: RawFileIndex,
        *,
        every_s: int,
        window_s: int,
        horizon_s: int,
        options: JobOptions | None = None,
        samples_per_pair: int = 3,
        samples_per_slice: int = 20_000,
        max_watched: int = 5_000,
        max_anomalous_pairs: int = 50_000,
        tor_cells_max: int = 20_000,
        extra_horizons_s: tuple[int, ...] = (120,),
        horizon_every_s: int = 30,
    ) -> None:
        if window_s % every_s or horizon_s < window_s:
            raise ValueError("window_s must be a multiple of every_s and horizon_s >= window_s")
        self._index = index
        self.every_s = every_s
        self.window_s = window_s
        self.horizon_s = horizon_s
        self._options = options or JobOptions()
        self._samples_per_pair = samples_per_pair
        self._samples_per_slice = samples_per_slice
        self._max_watched = max_watched
        self._max_anomalous = max_anomalous_pairs
        self._tor_cells_max = tor_cells_max
        self.extra_horizons_s = extra_horizons_s
        self.horizon_every_s = horizon_every_s
        self._horizons: dict[int, WindowFacts] = {}
        self._coarse_total = 0
        self._lock = threading.Lock()
        self._session = Session(
            threads=self._options.threads, memory_limit=self._options.memory_limit
        )
        for table, columns in _TABLES.items():
            self._session.execute(f"CREATE TABLE {table} ({columns})", f"create {table}")
        self._slices: dict[int, SliceInfo] = {}
        self._without_pairs: set[int] = set()  # slices too big for per-pair histograms
        self._slices_total = 0
        self._empty_total = 0
        self._records_total = 0
        self._capped_total = 0

    def close(self) -> None:
        """Close the DuckDB session."""
        with self._lock:
            self._session.close()

    def statistics(self) -> FastPathStatistics:
        """A snapshot of the counters."""
        with self._lock:
            watched = self._session.query("SELECT COUNT(*) FROM fs_watch")[0][0]
            return FastPathStatistics(
                slices_total=self._slices_total,
                slices_empty_total=self._empty_total,
                records_total=self._records_total,
                slices_held=len(self._slices),
                watched_pairs=int(watched),
                samples_capped_total=self._capped_total,
                coarse_slices_total=self._coarse_total,
            )

    def has_slice(self, start_s: int) -> bool:
        """True when the slice starting at ``start_s`` has been read."""
        with self._lock:
            return start_s in self._slices

    # -- slices --------------------------------------------------------------------------------

    def add_slice(self, start_s: int, end_s: int) -> SliceInfo:
        """Read the raw probes of ``[start_s, end_s)`` and keep their summaries."""
        files = self._index.files_overlapping(start_s, end_s)
        with self._lock:
            s = self._session
            if start_s in self._slices:  # read again: replace it
                for table in _TABLES:
                    if table not in _WATCHES:
                        s.execute(f"DELETE FROM {table} WHERE slice = {int(start_s)}", "replace")
            records = 0
            with_pairs = False
            if files:
                s.open_raw(
                    files,
                    start_s,
                    end_s,
                    lag_us=self._options.lag_us,
                    dwell_us=self._options.dwell_us,
                )
                with_pairs, coarse = s.summarise(
                    suffix="_new",
                    pair_cap=self._options.pair_cells_max,
                    tor_cells_max=self._tor_cells_max,
                )
                if coarse:
                    self._coarse_total += 1
                records = int(s.query("SELECT COALESCE(SUM(probes), 0) FROM src_h_new")[0][0])
            if records:
                self._insert_slice(start_s, with_pairs=with_pairs)
            if not with_pairs and records:
                self._without_pairs.add(start_s)
            else:
                self._without_pairs.discard(start_s)
            info = SliceInfo(start_s=start_s, end_s=end_s, files=len(files), records=records)
            self._slices[start_s] = info
            self._slices_total += 1
            self._records_total += records
            if not records:
                self._empty_total += 1
            self._prune(end_s)
            return info

    def _insert_slice(self, start_s: int, *, with_pairs: bool) -> None:
        s, at = self._session, int(start_s)
        s.execute(f"INSERT INTO fs_src_h SELECT {at}, * FROM src_h_new", "slice sources")
        # Per ToR cell, or per podset cell when there were too many ToR cells to draw every
        # few seconds (the ToR columns NULL: no ToR matrix in the fast window, the podset and
        # DC matrices and the DC-pair SLAs as always; the 10-minute window has the ToR matrix).
        s.execute(f"INSERT INTO fs_cell_h SELECT {at}, * FROM cell_h_new", "slice cells")
        if with_pairs:
            s.execute(f"INSERT INTO fs_pair_h SELECT {at}, * FROM pair_h_new", "slice pairs")
        pair_cols = _PAIR_SELECT
        if with_pairs:
            s.execute(f"INSERT INTO fs_pairs SELECT {at}, {pair_cols} FROM pairs_new", "pairs")
        s.execute(
            f"INSERT INTO fs_awatch SELECT agent, dst, {at} FROM pairs_new"
            " WHERE timeouts > 0 OR drop_events > 0",
            "anomaly watch",
        )
        self._bound_watch("fs_awatch", "awatch_now", self._max_anomalous)
        s.execute(
            f"INSERT INTO fs_anom SELECT {at}, {pair_cols} FROM pairs_new p"
            " JOIN awatch_now w USING (agent, dst)",
            "slice anomalies",
        )
        s.execute(
            f"INSERT INTO fs_cells SELECT {at}, *"
            f" FROM ({queries.cells_from_pairs_sql('pairs_new')}) c",
            "slice clean cells",
        )
        s.execute(
            f"INSERT INTO fs_servers SELECT {at}, *"
            f" FROM ({queries.servers_sql('pairs_new', placed=True)}) v",
            "slice servers",
        )
        s.execute(
            queries.samples_sql(
                "samples_new", per_pair=self._samples_per_pair, limit=self._samples_per_slice
            ),
            "slice samples",
        )
        if int(s.query("SELECT COUNT(*) FROM samples_new")[0][0]) >= self._samples_per_slice:
            self._capped_total += 1
        s.execute(f"INSERT INTO fs_samples SELECT {at}, * FROM samples_new", "slice samples")
        # The watch list: pairs with a timeout now, newest first, bounded.
        s.execute(
            f"INSERT INTO fs_watch SELECT agent, dst, {at} FROM pairs_new WHERE timeouts > 0",
            "watch",
        )
        self._bound_watch("fs_watch", "watch_now", self._max_watched)
        s.execute(queries.ports_sql("ports_new", "watch_now"), "slice ports")
        s.execute(f"INSERT INTO fs_ports SELECT {at}, * FROM ports_new", "slice ports")

    def _bound_watch(self, table: str, now: str, limit: int) -> None:
        """Keep each pair of a watch list once (newest first), at most ``limit``; ``now`` is
        the list as a temp table."""
        s = self._session
        s.execute(
            f"CREATE OR REPLACE TEMP TABLE {now} AS SELECT agent, dst,"
            f" MAX(last_slice) AS last_slice FROM {table} GROUP BY agent, dst"
            f" ORDER BY last_slice DESC LIMIT {int(limit)}",
            "watch",
        )
        s.execute(f"DELETE FROM {table}", "watch")
        s.execute(f"INSERT INTO {table} SELECT * FROM {now}", "watch")

    def _prune(self, newest_end_s: int) -> None:
        window_floor = newest_end_s - self.window_s
        horizon_floor = newest_end_s - self.horizon_s
        for table in _TABLES:
            if table in _WATCHES:
                self._session.execute(
                    f"DELETE FROM {table} WHERE last_slice < {int(horizon_floor)}", "prune"
                )
                continue
            floor = window_floor if table in _WINDOW_TABLES else horizon_floor
            self._session.execute(f"DELETE FROM {table} WHERE slice < {int(floor)}", "prune")
        for start in [k for k in self._slices if k < horizon_floor]:
            del self._slices[start]
        self._without_pairs = {k for k in self._without_pairs if k >= window_floor}

    # -- windows ------------------------------------------------------------------------------

    def _between(self, start_s: int, end_s: int) -> str:
        return f"slice >= {int(start_s)} AND slice < {int(end_s)}"

    def run_window(
        self,
        window: str,
        start_s: int,
        end_s: int,
        *,
        now_s: float,
        expected: Expected | None = None,
    ) -> tuple[WindowResult, FastFacts]:
        """The fast window ``[start_s, end_s)`` from its slices: its SLA and matrix rows, and
        the detectors' facts (the window, and the horizon that ends with it)."""
        expected = expected or Expected.empty()
        with self._lock:
            s = self._session
            between = self._between(start_s, end_s)
            # The slices' source rows as they are, not merged first: the SLA step groups them
            # per entity and bucket anyway (sums and extremes merge in any order), and merging
            # a million rows a slice beforehand cost more than it saved there (measured).
            s.execute(
                "CREATE OR REPLACE TEMP VIEW src_h AS SELECT * EXCLUDE (slice) FROM fs_src_h"
                f" WHERE {between}",
                "window sources",
            )
            s.execute(
                queries.merge_sql(
                    "cell_h", f"(SELECT * FROM fs_cell_h WHERE {between}) w", queries.CELL_KEYS
                ),
                "window cells",
            )
            with_pairs = not any(start_s <= k < end_s for k in self._without_pairs)
            if with_pairs:
                s.execute(
                    queries.merge_sql(
                        "pair_h", f"(SELECT * FROM fs_pair_h WHERE {between}) w", queries.PAIR_KEYS
                    ),
                    "window pairs",
                )
            placement = ", ".join(f"ANY_VALUE({c}) AS {c}" for c in queries.PAIR_PLACEMENT)
            sums = ", ".join(
                f"SUM({c}) AS {c}" for c in (*queries.COUNTERS, "noisy", *queries.PAIR_ALL_COUNTERS)
            )
            # A fleet with more pairs than ``pair_cells_max`` keeps no per-slice pair table:
            # the window's pairs are then the watched (anomalous) ones, its servers' facts are
            # summed per slice, and it has no coverage (the 10-minute window has).
            source = "fs_pairs" if with_pairs else "fs_anom"
            s.execute(
                f"CREATE OR REPLACE TEMP TABLE w_pairs AS SELECT agent, dst, {placement}, {sums}"
                f" FROM {source} WHERE {between} GROUP BY agent, dst",
                "window pairs",
            )
            if with_pairs:
                s.execute(queries.coverage_sql("cov", "w_pairs"), "window coverage")
            else:
                s.execute(queries.coverage_sql("cov", "w_pairs") + " LIMIT 0", "no coverage")
            sla, matrix = s.outputs(
                window,
                start_s,
                expected,
                pair_histograms=with_pairs,
                pair_fallback="w_pairs",
                pair_limit=self._options.pair_fallback_max,
                coverage=with_pairs,
            )
            window_facts = WindowFacts(
                start_s=start_s,
                end_s=end_s,
                servers=(
                    self._servers_of_pairs("w_pairs")
                    if with_pairs
                    else self._servers_of_slices(start_s, end_s)
                ),
                pairs=self._anomalous("w_pairs", start_s, end_s),
                cells=self._cells(f"(SELECT * FROM fs_cells WHERE {between}) c", clean=False),
                sla=tuple(s.clean_sla(sla)),
            )
            horizon_start = end_s - self.horizon_s
            hz = self._between(horizon_start, end_s)
            horizon_facts = self._cached_horizon(self.horizon_s, end_s)
            extra = tuple(
                self._cached_horizon(length, end_s)
                for length in self.extra_horizons_s
                if self.window_s < length < self.horizon_s
            )
            ports: dict[tuple[str, str], list[PortUse]] = {}
            for agent, dst, port, probes, timeouts in s.query(
                "SELECT agent, dst, src_port, SUM(probes), SUM(timeouts) FROM fs_ports"
                f" WHERE {hz} GROUP BY agent, dst, src_port ORDER BY agent, dst, src_port",
                "horizon ports",
            ):
                ports.setdefault((str(agent), str(dst)), []).append(
                    PortUse(src_port=int(port), probes=int(probes), timeouts=int(timeouts))
                )
            window_slices = sum(1 for k in self._slices if start_s <= k < end_s)
            horizon_slices = sum(1 for k in self._slices if horizon_start <= k < end_s)
        records = sum(row.probes for row in sla if row.scope == "server")
        result = WindowResult(
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
        facts = FastFacts(
            window=window_facts,
            horizon=horizon_facts,
            extra=extra,
            ports={k: tuple(v) for k, v in ports.items()},
            window_slices=window_slices,
            horizon_slices=horizon_slices,
        )
        return result, facts

    def _cached_horizon(self, length_s: int, end_s: int) -> WindowFacts:
        """The horizon of ``length_s`` ending at ``end_s``, or the one computed less than
        ``horizon_every_s`` ago (long horizons change slowly; recomputing them every window
        would cost more than the window itself on a big fleet). Never staler than a quarter
        of its length: a short horizon that lagged by more would hold a fault that has ended
        (and its incident) open for longer than the horizon itself."""
        cached = self._horizons.get(length_s)
        every_s = max(self.horizon_every_s, length_s // 10)  # 10 min: every minute
        every_s = min(every_s, max(length_s // 4, self.every_s))
        if cached is not None and 0 <= end_s - cached.end_s < every_s:
            return cached
        facts = self._horizon(end_s - length_s, end_s)
        self._horizons[length_s] = facts
        return facts

    def _horizon(self, start_s: int, end_s: int) -> WindowFacts:
        """What the silent-drop detector sees over ``[start_s, end_s)``."""
        s, between = self._session, self._between(start_s, end_s)
        placement = ", ".join(f"ANY_VALUE({c}) AS {c}" for c in queries.PAIR_PLACEMENT)
        sums = ", ".join(
            f"SUM({c}) AS {c}" for c in (*queries.COUNTERS, "noisy", *queries.PAIR_ALL_COUNTERS)
        )
        s.execute(
            f"CREATE OR REPLACE TEMP TABLE h_anom AS SELECT agent, dst, {placement}, {sums}"
            f" FROM fs_anom WHERE {between} GROUP BY agent, dst",
            "horizon anomalies",
        )
        return WindowFacts(
            start_s=start_s,
            end_s=end_s,
            servers=self._servers_of_slices(start_s, end_s),
            pairs=self._anomalous("h_anom", start_s, end_s),
            cells=self._cells(f"(SELECT * FROM fs_cells WHERE {between}) c", clean=False),
        )

    def _servers_of_pairs(self, pairs: str) -> dict[str, ServerFacts]:
        return self._servers(self._session.query(queries.servers_sql(pairs), "window servers"))

    def _servers_of_slices(self, start_s: int, end_s: int) -> dict[str, ServerFacts]:
        sums = ", ".join(f"SUM({c})" for c in (*queries.COUNTERS, "peers", "dead", "noisy"))
        rows = self._session.query(
            f"SELECT role, name, ANY_VALUE(tor), ANY_VALUE(podset), ANY_VALUE(dc), {sums}"
            f" FROM fs_servers WHERE {self._between(start_s, end_s)} GROUP BY role, name",
            "horizon servers",
        )
        return self._servers(rows)

    @staticmethod
    def _servers(rows: list[tuple[object, ...]]) -> dict[str, ServerFacts]:
        parts: dict[str, dict[str, object]] = {}
        n = len(queries.COUNTERS)
        for row in rows:
            role, name, tor, podset, dc = (str(v) if v is not None else "" for v in row[:5])
            counts = _counts(row[5 : 5 + n])
            peers, dead, noisy = (int(v or 0) for v in row[5 + n : 8 + n])  # type: ignore[call-overload]
            entry = parts.setdefault(name, {"name": name, "tor": tor, "podset": podset, "dc": dc})
            if role == "src":
                entry.update(sent=counts, peers_out=peers, dead_out=dead, noisy_out=noisy)
                entry.update(tor=tor, podset=podset, dc=dc)
            else:
                entry.update(received=counts, peers_in=peers, dead_in=dead, noisy_in=noisy)
        return {name: ServerFacts(**fields) for name, fields in parts.items()}  # type: ignore[arg-type]

    def _anomalous(self, pairs: str, start_s: int, end_s: int) -> tuple[PairFacts, ...]:
        s = self._session
        cols = ", ".join(("agent", "dst", *queries.PAIR_PLACEMENT, *queries.COUNTERS, "noisy"))
        rows = s.query(
            f"SELECT {cols} FROM {pairs} WHERE (timeouts > 0 OR drop_events > 0)"
            " AND dst_tor IS NOT NULL AND src_tor IS NOT NULL"
            f" ORDER BY drop_events + timeouts DESC, agent, dst LIMIT {self._max_anomalous}",
            "anomalous pairs",
        )
        samples: dict[tuple[str, str], list[ProbeSample]] = {}
        if rows:
            s.execute(
                f"CREATE OR REPLACE TEMP TABLE anom_keys AS SELECT agent, dst FROM {pairs}"
                " WHERE timeouts > 0 OR drop_events > 0",
                "anomalous keys",
            )
            for r in s.query(
                "SELECT x.agent, x.dst, epoch(x.time), x.src_addr, x.src_port, x.dst_addr,"
                " x.dst_port, x.kind, x.outcome, x.retransmits"
                " FROM fs_samples x JOIN anom_keys k ON x.agent = k.agent AND x.dst = k.dst"
                f" WHERE x.{self._between(start_s, end_s)}"
                " ORDER BY x.agent, x.dst, x.time DESC",
                "samples",
            ):
                bucket = samples.setdefault((str(r[0]), str(r[1])), [])
                if len(bucket) < self._samples_per_pair:
                    bucket.append(
                        ProbeSample(
                            time_s=float(r[2]),
                            src_addr=str(r[3]),
                            src_port=int(r[4]),
                            dst_addr=str(r[5]),
                            dst_port=int(r[6]),
                            kind=str(r[7]),
                            outcome=str(r[8]),
                            retransmits=int(r[9]),
                        )
                    )
        n = len(queries.COUNTERS)
        out = []
        for r in rows:
            src, dst = str(r[0]), str(r[1])
            out.append(
                PairFacts(
                    src=src,
                    dst=dst,
                    src_tor=str(r[2]),
                    src_podset=str(r[3]),
                    src_dc=str(r[4]),
                    dst_tor=str(r[5]),
                    dst_podset=str(r[6]),
                    dst_dc=str(r[7]),
                    counts=_counts(r[8 : 8 + n]),
                    noisy=int(r[8 + n] or 0),
                    samples=tuple(samples.get((src, dst), ())),
                )
            )
        return tuple(out)

    def _cells(self, source: str, *, clean: bool) -> tuple[CellFacts, ...]:
        keys = ", ".join(queries.CELL_KEYS)
        sums = ", ".join(f"SUM({c})" for c in queries.COUNTERS)
        where = "NOT noisy" if clean else "TRUE"
        rows = self._session.query(
            f"SELECT {keys}, {sums} FROM {source} WHERE {where} AND src_tor IS NOT NULL"
            f" AND dst_tor IS NOT NULL GROUP BY {keys}",
            "cells",
        )
        return tuple(
            CellFacts(
                src_tor=str(r[0]),
                dst_tor=str(r[1]),
                src_podset=str(r[2]),
                dst_podset=str(r[3]),
                src_dc=str(r[4]),
                dst_dc=str(r[5]),
                counts=_counts(r[6:12]),
            )
            for r in rows
        )
