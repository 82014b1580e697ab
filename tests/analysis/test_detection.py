"""Detection end to end on the shell: synthetic probes with a fault in a real raw store, the
fast path every 10 s, the detector, a real incident store — and agents that answer traceroute
tasks through the task service, so that voting can name the device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pingmesh.analysis.detect import IncidentDetector
from pingmesh.analysis.fastpath import FastPath
from pingmesh.analysis.fileindex import RawFileIndex
from pingmesh.clock import FakeClock
from pingmesh.config import IncidentConfig, TracerouteConfig
from pingmesh.controller.tasks import TracerouteService
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.analysis.synthetic import BlackHole, Fault, RandomDrop, simulate_trace
from pingmesh.store.incidents import Incident, IncidentStore
from pingmesh.store.results import ResultsDB
from pingmesh.store.traceroutes import TracerouteStore
from pingmesh.wire.tasks import Hop, TracerouteBatch, TracerouteResult
from tests.analysis.synthetic_store import (
    FABRIC,
    SERVERS,
    T0,
    TOPOLOGY,
    synthetic_rows,
    write_in_flushes,
)

EVERY, WINDOW, HORIZON = 10, 30, 600


class Rig:
    """The fast path, the detector and the stores, driven through simulated time."""

    def __init__(self, root: Path, faults: Sequence[Fault], *, minutes: int = 10) -> None:
        self.faults = tuple(faults)
        self.end = T0 + minutes * 60
        rows = synthetic_rows(T0, self.end, self.faults)
        self.raw = write_in_flushes(root / "raw", rows)
        self.db = ResultsDB(root / "results.sqlite")
        self.incidents = IncidentStore(self.db.database)
        self.clock = FakeClock(T0)
        self.traces = TracerouteService(
            TracerouteStore(self.db.database),
            TopologySource(TOPOLOGY),
            TracerouteConfig(per_minute=600, burst=50, per_incident=10),
            clock=self.clock,
        )
        self.fast = FastPath(
            RawFileIndex(self.raw), every_s=EVERY, window_s=WINDOW, horizon_s=HORIZON
        )
        self.detector = IncidentDetector(self.incidents, IncidentConfig(), traces=self.traces)
        self.opened_at: dict[tuple[str, str, str], float] = {}

    def close(self) -> None:
        self.fast.close()
        self.db.close()

    def window(self, end_s: int, *, agents_answer: bool = False) -> None:
        """One fast window ending at ``end_s``, as the runner runs it 10 s later."""
        self.fast.add_slice(end_s - EVERY, end_s)
        now = end_s + 10.0
        self.clock._now_s = now
        _, facts = self.fast.run_window("30s", end_s - WINDOW, end_s, now_s=now)
        seen = dict.fromkeys(SERVERS, now - 3.0)
        outcome = self.detector.run(TOPOLOGY, facts, last_seen_s=seen, now_s=now)
        for incident in self.incidents.open_incidents():
            self.opened_at.setdefault(incident.key, incident.started_at_s)
        assert len(outcome.opened) == len(set(outcome.opened))
        if agents_answer:
            self.answer_tasks(now)

    def answer_tasks(self, now: float) -> None:
        """Every agent polls its tasks and reports the path of each 5-tuple."""
        for name in SERVERS:
            tasks = self.traces.tasks_for(name).tasks
            if not tasks:
                continue
            src = TOPOLOGY.server(name)
            assert src is not None
            results = []
            for task in tasks:
                dst = TOPOLOGY.server(task.dst)
                assert dst is not None
                assert task.src_port is not None
                hops, reached = simulate_trace(
                    FABRIC,
                    src,
                    dst,
                    src_port=task.src_port,
                    dst_port=task.dst_port,
                    faults=self.faults,
                )
                results.append(
                    TracerouteResult(
                        task_id=task.task_id,
                        agent=name,
                        time=self._utc(now),
                        src_addr=src.address,
                        src_port=task.src_port,
                        dst=dst.name,
                        dst_addr=dst.address,
                        dst_port=task.dst_port,
                        hops=tuple(Hop(ttl=i + 1, address=h) for i, h in enumerate(hops)),
                        reached=reached,
                    )
                )
            self.traces.accept(TracerouteBatch(agent=name, results=tuple(results)))

    @staticmethod
    def _utc(now: float) -> datetime:
        return datetime.fromtimestamp(now, tz=UTC)

    def run(self, start: int, end: int, **kwargs: bool) -> None:
        for window_end in range(start, end + 1, EVERY):
            self.window(window_end, **kwargs)

    def all_incidents(self) -> list[Incident]:
        return self.incidents.list(limit=10_000)


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


def make(tmp_path: Path, made: list[Rig], faults: Sequence[Fault], name: str, **kw: int) -> Rig:
    rig = Rig(tmp_path / name, faults, **kw)
    made.append(rig)
    return rig


def test_clean_data_opens_nothing(tmp_path: Path, rig_factory: list[Rig]) -> None:
    rig = make(tmp_path, rig_factory, [], "clean", minutes=5)
    rig.run(T0 + 100, rig.end, agents_answer=True)
    assert rig.all_incidents() == []
    stats = rig.detector.statistics()
    assert stats.evaluations_total == (rig.end - T0 - 100) // EVERY + 1
    assert stats.traces_planned_total == 0


def test_a_black_hole_opens_once_within_a_minute_and_closes_after(
    tmp_path: Path, rig_factory: list[Rig]
) -> None:
    tor = "dc2-ps1-t2"
    start, stop = T0 + 120, T0 + 220
    rig = make(
        tmp_path,
        rig_factory,
        [BlackHole(device=f"tor:{tor}", share=0.3, start_s=start, end_s=stop)],
        "hole",
        minutes=5,
    )
    rig.run(T0 + 90, rig.end)
    incidents = rig.all_incidents()
    assert [i.key for i in incidents] == [("black_hole", "tor", tor)]
    (hole,) = incidents
    # Opened from the first window that holds two failed probes of a pair: within 60 s of the
    # first faulty probe (simulated time, the runner's lag included).
    assert start < hole.started_at_s <= start + 60
    # Closed three clear windows after the last faulty probes left the 30 s window.
    assert hole.ended_at_s is not None
    assert stop + WINDOW <= hole.ended_at_s <= stop + WINDOW + 3 * EVERY + 10
    assert hole.evidence["pairs"]
    assert all("src_port" in t for t in hole.evidence["five_tuples"])


def test_a_silent_drop_at_a_spine_is_voted_down_to_the_device(
    tmp_path: Path, rig_factory: list[Rig]
) -> None:
    spine = "spine:dc1:2"
    rig = make(tmp_path, rig_factory, [RandomDrop(device=spine, rate=0.08)], "spine", minutes=6)
    rig.run(T0 + 60, rig.end, agents_answer=True)
    open_keys = {i.key for i in rig.incidents.open_incidents()}
    address = FABRIC.address[spine]
    assert ("silent_drop", "tier", "spine@dc1") in open_keys
    assert ("silent_drop", "device", address) in open_keys
    assert {k for k in open_keys if k[0] in ("silent_drop", "black_hole")} == {
        ("silent_drop", "tier", "spine@dc1"),
        ("silent_drop", "device", address),
    }
    device = next(i for i in rig.incidents.open_incidents() if i.scope == "device")
    assert device.evidence["parent"]["entity"] == "spine@dc1"
    assert device.evidence["votes"][0]["device"] == address
    # Every failing flow crossed it, one way or the other (probe or reply).
    flows: dict[str, set[str]] = {}
    for path in device.evidence["paths"]:
        flows.setdefault(path["flow"], set()).update(h for h in path["hops"] if h)
    assert flows
    assert all(address in hops for hops in flows.values())
    tier = next(i for i in rig.incidents.open_incidents() if i.entity == "spine@dc1")
    assert tier.evidence["device"] == address
    assert rig.traces.statistics().results_stored_total >= 3


def test_a_restarted_detector_keeps_what_is_open(tmp_path: Path, rig_factory: list[Rig]) -> None:
    tor = "dc1-ps2-t1"
    rig = make(
        tmp_path, rig_factory, [BlackHole(device=f"tor:{tor}", share=0.3)], "restart", minutes=2
    )
    rig.run(T0 + 30, T0 + 60)
    (first,) = rig.incidents.open_incidents()
    rig.detector = IncidentDetector(rig.incidents, IncidentConfig(), traces=rig.traces)
    rig.run(T0 + 70, T0 + 120)
    (still,) = rig.incidents.open_incidents()
    assert still.incident_id == first.incident_id
    assert len(rig.all_incidents()) == 1


def test_a_short_horizon_is_never_staler_than_a_quarter_of_itself(tmp_path: Path) -> None:
    # The lab's silent-drop horizon is its fast window: a horizon cached for the default 30 s
    # would keep a fixed fault (and its incident) for 30 s more than the horizon itself.
    raw = write_in_flushes(tmp_path / "raw", synthetic_rows(T0, T0 + 120))
    fast = FastPath(RawFileIndex(raw), every_s=EVERY, window_s=WINDOW, horizon_s=40)
    try:
        for end in range(T0 + 50, T0 + 100, EVERY):
            fast.add_slice(end - EVERY, end)
            _, facts = fast.run_window("30s", end - WINDOW, end, now_s=end + 10.0)
            assert facts.horizon.end_s == end
            assert facts.horizon.start_s == end - 40
    finally:
        fast.close()
    # A long one still is recomputed only every tenth of its length (a minute for 10 min).
    fast = FastPath(RawFileIndex(raw), every_s=EVERY, window_s=WINDOW, horizon_s=HORIZON)
    try:
        ends = []
        for end in range(T0 + 50, T0 + 120, EVERY):
            fast.add_slice(end - EVERY, end)
            _, facts = fast.run_window("30s", end - WINDOW, end, now_s=end + 10.0)
            ends.append(facts.horizon.end_s)
        assert len(set(ends)) == 2
    finally:
        fast.close()
