"""Traceroute tasks for the agents, and the paths they report (migration 0003).

A task is created by the analysis (or the alert engine) through the central planner
(:mod:`pingmesh.core.analysis.tracing`), handed to its agent by ``GET /api/v1/tasks/{server}``
and finished when the agent posts its result to ``POST /api/v1/traceroutes``. A task that is
handed out is *leased* for ``lease_s``: it is not handed out again unless the agent has not
answered by then (an agent that restarted forgets what it was doing). A task expires at
``expires_at_s``: its path would no longer tell how the probe went.

Results are kept per (task, agent) and posted results are idempotent: a retried post stores
nothing new. SQL works on SQLite and PostgreSQL (``?`` placeholders; booleans as 0/1).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pingmesh.core.analysis.tracing import PlannedTask
from pingmesh.store.database import Database
from pingmesh.wire.tasks import Hop, TracerouteResult, TracerouteTask

DEFAULT_LEASE_S = 30.0
_TASK_COLUMNS = (
    "task_id",
    "server",
    "dst",
    "dst_addr",
    "dst_port",
    "src_port",
    "max_hops",
    "reason",
    "created_at_s",
    "issued_at_s",
    "expires_at_s",
    "done_at_s",
)
_RESULT_COLUMNS = (
    "task_id",
    "agent",
    "time_s",
    "src_addr",
    "src_port",
    "dst",
    "dst_addr",
    "dst_port",
    "reached",
    "hops",
    "detail",
    "received_at_s",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRow:
    """One task as stored."""

    task_id: str
    server: str
    dst: str
    dst_addr: str
    dst_port: int
    src_port: int | None
    max_hops: int
    reason: str
    created_at_s: float
    issued_at_s: float | None
    expires_at_s: float
    done_at_s: float | None

    def to_wire(self) -> TracerouteTask:
        """The task as the agent gets it."""
        return TracerouteTask(
            task_id=self.task_id,
            dst=self.dst,
            dst_addr=self.dst_addr,
            dst_port=self.dst_port,
            src_port=self.src_port,
            max_hops=self.max_hops,
            reason=self.reason[:200],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredResults:
    """What one posted batch did."""

    stored: int
    duplicates: int
    unknown_tasks: int


def _result_from_row(row: tuple[Any, ...]) -> TracerouteResult:
    values = dict(zip(_RESULT_COLUMNS, row, strict=True))
    return TracerouteResult(
        task_id=values["task_id"],
        agent=values["agent"],
        time=datetime.fromtimestamp(float(values["time_s"]), tz=UTC),
        src_addr=values["src_addr"],
        src_port=int(values["src_port"]),
        dst=values["dst"],
        dst_addr=values["dst_addr"],
        dst_port=int(values["dst_port"]),
        hops=tuple(Hop(**h) for h in json.loads(values["hops"])),
        reached=bool(values["reached"]),
        detail=values["detail"],
    )


class TracerouteStore:
    """Tasks and results in the results database."""

    def __init__(self, database: Database, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.database = database
        self.lease_s = lease_s

    def _tasks(self, where: str, params: tuple[Any, ...]) -> list[TaskRow]:
        rows = self.database.query(
            f"SELECT {', '.join(_TASK_COLUMNS)} FROM traceroute_tasks {where}", params
        )
        return [TaskRow(**dict(zip(_TASK_COLUMNS, r, strict=True))) for r in rows]

    def add_tasks(self, tasks: Iterable[PlannedTask], *, max_hops: int = 16) -> int:
        """Store planned tasks; returns how many."""
        rows = [
            (
                t.task_id,
                t.request.agent,
                t.request.dst,
                t.request.dst_addr,
                t.request.dst_port,
                t.request.src_port,
                max_hops,
                t.request.reason[:200],
                t.created_at_s,
                None,
                t.expires_at_s,
                None,
            )
            for t in tasks
        ]
        if rows:
            marks = ", ".join("?" * len(_TASK_COLUMNS))
            self.database.executemany(
                f"INSERT INTO traceroute_tasks ({', '.join(_TASK_COLUMNS)}) VALUES ({marks})", rows
            )
        return len(rows)

    def task(self, task_id: str) -> TaskRow | None:
        """One task by id."""
        rows = self._tasks("WHERE task_id = ?", (task_id,))
        return rows[0] if rows else None

    def issue(self, server: str, *, now_s: float, limit: int = 10) -> list[TaskRow]:
        """The tasks to hand to ``server`` now (unfinished, unexpired, not leased), marked
        as handed out."""
        with self.database.transaction():
            rows = self._tasks(
                "WHERE server = ? AND done_at_s IS NULL AND expires_at_s > ?"
                " AND (issued_at_s IS NULL OR issued_at_s <= ?)"
                " ORDER BY created_at_s, task_id LIMIT ?",
                (server, now_s, now_s - self.lease_s, limit),
            )
            for row in rows:
                self.database.execute(
                    "UPDATE traceroute_tasks SET issued_at_s = ? WHERE task_id = ?",
                    (now_s, row.task_id),
                )
        return rows

    def pending_counts(self, *, now_s: float) -> dict[str, int]:
        """Unfinished, unexpired tasks per agent."""
        rows = self.database.query(
            "SELECT server, COUNT(*) FROM traceroute_tasks WHERE done_at_s IS NULL"
            " AND expires_at_s > ? GROUP BY server",
            (now_s,),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def store_results(self, results: Iterable[TracerouteResult], *, now_s: float) -> StoredResults:
        """Store posted results (idempotent), finishing their tasks."""
        stored = duplicates = unknown = 0
        with self.database.transaction():
            for result in results:
                task = self.task(result.task_id)
                if task is None:
                    unknown += 1
                exists = self.database.query(
                    "SELECT 1 FROM traceroutes WHERE task_id = ? AND agent = ?",
                    (result.task_id, result.agent),
                )
                if exists:
                    duplicates += 1
                    continue
                hops = json.dumps([h.model_dump(mode="json") for h in result.hops])
                marks = ", ".join("?" * len(_RESULT_COLUMNS))
                self.database.execute(
                    f"INSERT INTO traceroutes ({', '.join(_RESULT_COLUMNS)}) VALUES ({marks})",
                    (
                        result.task_id,
                        result.agent,
                        result.time.timestamp(),
                        result.src_addr,
                        result.src_port,
                        result.dst,
                        result.dst_addr,
                        result.dst_port,
                        1 if result.reached else 0,
                        hops,
                        result.detail,
                        now_s,
                    ),
                )
                if task is not None:
                    self.database.execute(
                        "UPDATE traceroute_tasks SET done_at_s = ? WHERE task_id = ?",
                        (now_s, result.task_id),
                    )
                stored += 1
        return StoredResults(stored=stored, duplicates=duplicates, unknown_tasks=unknown)

    def result(self, task_id: str) -> TracerouteResult | None:
        """The (first) result of a task, or None."""
        rows = self.database.query(
            f"SELECT {', '.join(_RESULT_COLUMNS)} FROM traceroutes WHERE task_id = ?"
            " ORDER BY received_at_s LIMIT 1",
            (task_id,),
        )
        return _result_from_row(rows[0]) if rows else None

    def results_for(
        self, reasons: Collection[str], *, since_s: float
    ) -> list[tuple[str, TracerouteResult]]:
        """(reason, result) of the tasks with one of ``reasons`` created since ``since_s``."""
        if not reasons:
            return []
        marks = ", ".join("?" * len(reasons))
        columns = ", ".join(f"r.{c}" for c in _RESULT_COLUMNS)
        rows = self.database.query(
            f"SELECT t.reason, {columns} FROM traceroutes r JOIN traceroute_tasks t"
            f" ON r.task_id = t.task_id WHERE t.reason IN ({marks}) AND t.created_at_s >= ?"
            " ORDER BY r.task_id",
            (*sorted(reasons), since_s),
        )
        return [(str(r[0]), _result_from_row(r[1:])) for r in rows]

    def delete_before(self, ts_s: float) -> int:
        """Delete tasks created and results received before ``ts_s``; returns the rows gone."""
        old_tasks = self.database.query(
            "SELECT COUNT(*) FROM traceroute_tasks WHERE created_at_s < ?", (ts_s,)
        )[0][0]
        old_results = self.database.query(
            "SELECT COUNT(*) FROM traceroutes WHERE received_at_s < ?", (ts_s,)
        )[0][0]
        with self.database.transaction():
            self.database.execute("DELETE FROM traceroutes WHERE received_at_s < ?", (ts_s,))
            self.database.execute("DELETE FROM traceroute_tasks WHERE created_at_s < ?", (ts_s,))
        return int(old_tasks) + int(old_results)
