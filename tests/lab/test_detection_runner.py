"""The scenario runner against a fake fault injector and a fake incident source (no root)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pingmesh.lab.detection import (
    IncidentView,
    QuietTimeoutError,
    parse_incidents,
    run_scenario,
    scenarios,
    summarize,
)
from pingmesh.lab.faults import ActiveFault, BlackHole, Fault
from pingmesh.lab.plan import LabShape, build_plan

PLAN = build_plan(LabShape(dcs=1, podsets=2, tors=2, servers=3, leaves=2, spines=2))
TABLE = scenarios(PLAN, observe_s=0.05)
FAST = {"bound_s": 2.0, "clear_bound_s": 2.0, "quiet_s": 0.5, "poll_s": 0.01, "settle_s": 0.2}


def _incident(kind: str, scope: str, entity: str, *, ended: bool = False) -> IncidentView:
    return IncidentView(
        kind=kind,
        scope=scope,
        entity=entity,
        started_at="2099-01-01T00:00:00Z",
        ended_at="2099-01-01T00:01:00Z" if ended else None,
    )


@dataclass
class FakeFabric:
    """Opens ``opens`` once a fault is injected (after ``delay_polls`` polls), ends it on clear."""

    opens: list[IncidentView]
    delay_polls: int = 3
    keep_open_after_clear: bool = False
    injected: list[Fault] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    polls_since_inject: int = -1
    ended: bool = False
    preexisting: list[IncidentView] = field(default_factory=list)
    after_clear: list[IncidentView] = field(default_factory=list)  # the fault's end opens them
    polls_since_clear: int = -1

    def inject(self, fault: Fault) -> ActiveFault:
        self.injected.append(fault)
        self.polls_since_inject = 0
        return ActiveFault(fault_id="f1", fault=fault, started_at_s=0.0)

    def clear(self, fault_id: str) -> ActiveFault:
        self.cleared.append(fault_id)
        self.ended = not self.keep_open_after_clear
        self.polls_since_clear = 0
        return ActiveFault(fault_id=fault_id, fault=self.injected[-1], started_at_s=0.0)

    def since(self, since_s: float) -> list[IncidentView]:
        out = list(self.preexisting)
        if self.polls_since_inject >= 0:
            self.polls_since_inject += 1
            if self.polls_since_inject > self.delay_polls:
                out += [_incident(i.kind, i.scope, i.entity, ended=self.ended) for i in self.opens]
        if self.polls_since_clear >= 0:
            self.polls_since_clear += 1
            if self.polls_since_clear > self.delay_polls:
                out += [_incident(i.kind, i.scope, i.entity) for i in self.after_clear]
        return out


def test_a_matching_incident_is_detected_and_cleared() -> None:
    fake = FakeFabric(opens=[_incident("black_hole", "tor", "dc1-ps1-t1")])
    result = run_scenario(fake, fake, TABLE["black_hole"], **FAST)
    assert result.passed, result
    assert result.time_to_detect_s is not None
    assert result.time_to_clear_s is not None
    assert isinstance(fake.injected[0], BlackHole)
    assert fake.cleared == ["f1"]
    assert "time_to_detect_s=" in result.line()


def test_the_wrong_entity_is_not_a_detection_and_is_a_false_incident() -> None:
    fake = FakeFabric(opens=[_incident("black_hole", "tor", "dc1-ps2-t1")])
    result = run_scenario(fake, fake, TABLE["black_hole"], **FAST)
    assert not result.detected
    assert [i.entity for i in result.false_incidents] == ["dc1-ps2-t1"]
    assert fake.cleared == ["f1"]  # cleared although nothing was found


def test_pairs_across_the_faulty_part_are_tolerated_others_are_false() -> None:
    fake = FakeFabric(
        opens=[
            _incident("black_hole", "tor", "dc1-ps1-t1"),
            _incident("black_hole", "pair", "dc1-ps1-t1-h1->dc1-ps2-t1-h1"),
            _incident("black_hole", "pair", "dc1-ps2-t1-h1->dc1-ps2-t2-h1"),
        ]
    )
    result = run_scenario(fake, fake, TABLE["black_hole"], **FAST)
    assert result.detected
    assert [i.entity for i in result.false_incidents] == ["dc1-ps2-t1-h1->dc1-ps2-t2-h1"]


def test_the_spine_may_be_named_by_address_or_by_tier() -> None:
    for entity, scope in (("198.18.2.1", "device"), ("spine@dc1", "tier"), ("dc1-s1", "device")):
        fake = FakeFabric(opens=[_incident("silent_drop", scope, entity)])
        assert run_scenario(fake, fake, TABLE["spine_drop"], **FAST).passed, entity
    fake = FakeFabric(opens=[_incident("silent_drop", "device", "198.18.2.2")])  # other spine
    assert not run_scenario(fake, fake, TABLE["spine_drop"], **FAST).detected


def test_an_incident_that_opens_after_the_fault_is_cleared_is_false() -> None:
    # A black hole's clear lets its dropped SYNs through on retry: blamed on the DC, that is a
    # false incident of this scenario, not a leftover for the next one to wait out.
    fake = FakeFabric(
        opens=[_incident("black_hole", "tor", "dc1-ps1-t1")],
        after_clear=[_incident("packet_loss", "dc", "dc1")],
    )
    result = run_scenario(fake, fake, TABLE["black_hole"], **FAST)
    assert result.detected
    assert result.cleared
    assert [i.entity for i in result.false_incidents] == ["dc1"]


def test_an_incident_that_never_ends_is_reported() -> None:
    fake = FakeFabric(
        opens=[_incident("host_down", "server", "dc1-ps2-t2-h1")], keep_open_after_clear=True
    )
    result = run_scenario(fake, fake, TABLE["host_down"], **FAST)
    assert result.detected
    assert not result.cleared


def test_host_noise_is_tolerated_under_cpu_starvation_but_not_network_blame() -> None:
    starved = "dc1-ps1-t2-h3"
    fake = FakeFabric(opens=[_incident("host_noise", "server", starved)], delay_polls=0)
    assert run_scenario(fake, fake, TABLE["cpu_starve"], **FAST).passed
    fake = FakeFabric(opens=[_incident("silent_drop", "tor", "dc1-ps1-t2")], delay_polls=0)
    result = run_scenario(fake, fake, TABLE["cpu_starve"], **FAST)
    assert [i.kind for i in result.false_incidents] == ["silent_drop"]


def test_a_clean_run_with_an_incident_fails() -> None:
    fake = FakeFabric(opens=[_incident("black_hole", "tor", "dc1-ps1-t1")], delay_polls=1)
    fake.polls_since_inject = 0  # nothing is injected in a clean run; an incident opens anyway
    result = run_scenario(fake, fake, TABLE["clean"], **FAST)
    assert not result.passed
    assert fake.injected == []


def test_incidents_open_before_the_scenario_hold_it_up() -> None:
    fake = FakeFabric(opens=[], preexisting=[_incident("black_hole", "tor", "dc1-ps1-t1")])
    with pytest.raises(QuietTimeoutError, match="still open"):
        run_scenario(fake, fake, TABLE["black_hole"], **FAST)
    assert fake.injected == []


def test_the_api_answer_may_be_a_list_or_an_object() -> None:
    item = {"kind": "black_hole", "scope": "tor", "entity": "t1", "started_at": "x"}
    assert parse_incidents([item]) == parse_incidents({"incidents": [item]})
    assert parse_incidents([item])[0].is_open
    with pytest.raises(ValueError, match="expected a list"):
        parse_incidents({"incidents": "nope"})


def test_summarize_gives_median_and_worst() -> None:
    assert summarize([]) is None
    assert summarize([3.0, 1.0, 2.0]) == (2.0, 3.0)
    assert summarize([4.0, 1.0, 2.0, 3.0]) == (2.5, 4.0)
