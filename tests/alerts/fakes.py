"""Test doubles for what the alert engine gets through its constructor."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pingmesh.alerts.notifiers import AlertMessage
from pingmesh.errors import NotifyError
from pingmesh.wire.tasks import Hop, TracerouteResult


@dataclass
class RecordingNotifier:
    """Keeps every message; fails the next ``fail`` sends."""

    name: str = "fake"
    kind: str = "fake"
    fail: int = 0
    messages: list[AlertMessage] = field(default_factory=list)
    attempts: int = 0

    async def send(self, message: AlertMessage) -> None:
        self.attempts += 1
        if self.fail > 0:
            self.fail -= 1
            raise NotifyError(f"{self.name}: refused on purpose")
        self.messages.append(message)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind}

    def events(self) -> list[tuple[str, str]]:
        return [(m.event, m.alert.subject) for m in self.messages]


@dataclass
class FakeTracer:
    """Hands out task ids; a result appears once the test calls :meth:`finish`."""

    requests: list[tuple[str, str, str]] = field(default_factory=list)
    results: dict[str, TracerouteResult] = field(default_factory=dict)

    def request_trace(self, src_server: str, dst_server: str, *, reason: str) -> str | None:
        self.requests.append((src_server, dst_server, reason))
        return f"trace-{len(self.requests)}"

    def trace_result(self, task_id: str) -> TracerouteResult | None:
        return self.results.get(task_id)

    def finish(self, task_id: str, *, src: str, dst: str) -> None:
        self.results[task_id] = TracerouteResult(
            task_id=task_id,
            agent=src,
            time=datetime(2027, 1, 15, 8, 0, tzinfo=UTC),
            src_addr="198.18.1.1",
            src_port=40001,
            dst=dst,
            dst_addr="198.18.3.1",
            dst_port=9781,
            hops=(
                Hop(ttl=1, address="198.18.1.254", rtt_us=80.0),
                Hop(ttl=2, address=None, rtt_us=None),
                Hop(ttl=3, address="198.18.3.1", rtt_us=410.0),
            ),
            reached=True,
        )
