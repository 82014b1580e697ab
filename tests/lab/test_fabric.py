"""The lab's fabric for real: connectivity, ECMP by source port, traceroute, and each fault.

Every check is made with real packets: the agent's own TCP connect prober run inside a
server's namespace (``Lab.probe``), a UDP traceroute that reads ICMP answers from the socket
error queue (``udptrace.py``), the kernel's interface counters and the rules' nftables counters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pingmesh.errors import ConfigError, LabError
from pingmesh.lab.commands import SubprocessRunner
from pingmesh.lab.fabric import Fabric, list_namespaces, sweep
from pingmesh.lab.faults import (
    BlackHole,
    CpuStarve,
    HostDown,
    LinkDown,
    PortBlackHole,
    RandomDrop,
)
from pingmesh.lab.lab import Lab, LabOptions, ProbeOutcome
from pingmesh.lab.plan import LabShape, build_plan
from pingmesh.lab.processes import is_alive, is_stopped, spawn_in_namespace

from .conftest import PREFIX, SCRATCH_MGMT_NET, SCRATCH_PREFIX

pytestmark = [pytest.mark.netns, pytest.mark.slow]

UDPTRACE = Path(__file__).with_name("udptrace.py")
A = "dc1-ps1-t1-h1"  # under the ToR that most tests break
A2 = "dc1-ps1-t1-h2"
FAR = "dc1-ps2-t2-h3"  # another podset: the path crosses a spine
NEAR = "dc1-ps1-t2-h3"  # same podset, other ToR: no spine
TOR = "dc1-ps1-t1"


def _ok(results: list[ProbeOutcome]) -> int:
    return sum(r.outcome == "ok" for r in results)


def _trace(lab: Lab, src: str, dst: str, *, count: int, sport: int = 40001) -> list[dict[str, Any]]:
    plan = lab.plan()
    source = plan.node(src)
    done = subprocess.run(
        lab.exec_argv(
            src,
            [
                sys.executable,
                str(UDPTRACE),
                source.address,
                plan.node(dst).address,
                "--count",
                str(count),
                "--sport",
                str(sport),
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_tor_reaches_every_other_tor(lab: Lab) -> None:
    plan = lab.plan()
    tors = plan.nodes_of("tor")
    for src_tor in tors:
        src = plan.tor_servers(src_tor.name)[0]
        for dst_tor in tors:
            dst = plan.tor_servers(dst_tor.name)[-1]
            if dst.name == src.name:
                continue
            results = lab.probe(src.name, dst.name, count=3, timeout_s=2.0)
            assert _ok(results) == 3, (src.name, dst.name, results)


def test_traceroute_shows_every_hop_of_the_clos(lab: Lab) -> None:
    plan = lab.plan()
    traces = _trace(lab, A, FAR, count=16)
    leaves1 = {n.address for n in plan.nodes_of("leaf") if n.podset == "dc1-ps1"}
    leaves2 = {n.address for n in plan.nodes_of("leaf") if n.podset == "dc1-ps2"}
    spines = {n.address for n in plan.nodes_of("spine")}
    for trace in traces:
        hops = trace["hops"]
        assert trace["reached"], trace
        # No hop is missing: ICMP rate limits are off in every namespace (16 × 6 answers).
        assert len(hops) == 6, trace
        assert None not in hops, trace
        assert hops[0] == plan.node(TOR).address
        assert hops[1] in leaves1
        assert hops[2] in spines
        assert hops[3] in leaves2
        assert hops[4] == plan.node("dc1-ps2-t2").address
        assert hops[5] == plan.node(FAR).address


def test_ecmp_spreads_flows_over_every_path_by_source_port(lab: Lab) -> None:
    traces = _trace(lab, A, FAR, count=32)
    paths = {tuple(t["hops"][1:4]) for t in traces}
    # 2 leaves × 2 spines × 2 leaves = 8 paths; 32 ports use most of them, both spines.
    assert {p[1] for p in paths} == {n.address for n in lab.plan().nodes_of("spine")}
    assert len(paths) >= 4, paths
    # The same 5-tuple always takes the same path (the hash is deterministic).
    again = _trace(lab, A, FAR, count=32)
    assert [t["hops"] for t in again] == [t["hops"] for t in traces]


def test_black_hole_drops_exactly_the_chosen_pairs(lab: Lab) -> None:
    fault = lab.inject(BlackHole(tor=TOR, pairs=((A, FAR),)))
    try:
        assert _ok(lab.probe(A, FAR, count=6, timeout_s=1.2)) == 0
        assert _ok(lab.probe(FAR, A, count=6, timeout_s=1.2)) == 0
        assert _ok(lab.probe(A2, FAR, count=6, timeout_s=1.2)) == 6  # same ToR, other pair
        assert _ok(lab.probe(A, NEAR, count=6, timeout_s=1.2)) == 6
        status = {f.fault.fault_id: f for f in lab.status().faults}
        assert (status[fault.fault_id].dropped_packets or 0) > 0
    finally:
        lab.clear(fault.fault_id)
    assert _ok(lab.probe(A, FAR, count=6, timeout_s=1.2)) == 6


def test_port_black_hole_drops_one_port_class_both_ways(lab: Lab) -> None:
    fault = lab.inject(PortBlackHole(tor=TOR, one_in=4))
    try:
        for src, dst in ((A, FAR), (FAR, A)):
            results = lab.probe(
                src,
                dst,
                count=48,
                timeout_s=1.2,
            )
            for r in results:
                dropped = r.src_port & 6 == 0
                assert (r.outcome != "ok") == dropped, r
            assert 0 < _ok(results) < len(results)
    finally:
        lab.clear(fault.fault_id)


def test_random_drop_at_a_spine_costs_retransmissions_only_across_spines(lab: Lab) -> None:
    spine = "dc1-s1"
    fault = lab.inject(RandomDrop(node=spine, percent=40))
    try:
        across = lab.probe(A, FAR, count=40, timeout_s=3.5)
        inside = lab.probe(A, NEAR, count=20, timeout_s=3.5)
        assert sum(r.retransmits > 0 or r.outcome != "ok" for r in across) > 0
        assert all(r.outcome == "ok" and r.retransmits == 0 for r in inside)
    finally:
        lab.clear(fault.fault_id)


def test_random_drop_on_one_link_hits_only_the_flows_over_it(lab: Lab) -> None:
    fault = lab.inject(RandomDrop(node=TOR, peer="dc1-ps1-l1", percent=50))
    try:
        over = lab.probe(A, FAR, count=40, timeout_s=3.5)
        other_tor = lab.probe("dc1-ps2-t1-h1", FAR, count=20, timeout_s=3.5)
        assert sum(r.retransmits > 0 or r.outcome != "ok" for r in over) > 0
        assert all(r.outcome == "ok" and r.retransmits == 0 for r in other_tor)
        status = {f.fault.fault_id: f for f in lab.status().faults}
        assert (status[fault.fault_id].dropped_packets or 0) > 0
    finally:
        lab.clear(fault.fault_id)


def test_link_down_breaks_flows_over_it_and_clearing_restores_every_route(lab: Lab) -> None:
    plan = lab.plan()
    fabric = Fabric(plan, SubprocessRunner())
    before = {n: _routes(plan.node(n).namespace) for n in (TOR, "dc1-ps1-l1")}
    fault = lab.inject(LinkDown(a=TOR, b="dc1-ps1-l1"))
    try:
        assert fabric.link_packets(TOR)["l1"] is not None
        results = lab.probe(FAR, A, count=24, timeout_s=1.2)
        assert _ok(results) < len(results)
        assert _ok(results) > 0  # flows hashed over the other leaf still get through
    finally:
        lab.clear(fault.fault_id)
    assert {n: _routes(plan.node(n).namespace) for n in before} == before
    assert _ok(lab.probe(FAR, A, count=12, timeout_s=1.2)) == 12


def test_link_down_with_reroute_is_absorbed_by_ecmp(lab: Lab) -> None:
    fault = lab.inject(LinkDown(a=TOR, b="dc1-ps1-l1", reroute=True))
    try:
        assert _ok(lab.probe(FAR, A, count=24, timeout_s=1.2)) == 24
        traces = _trace(lab, FAR, A, count=8)
        assert all(t["hops"][3] != lab.plan().node("dc1-ps1-l1").address for t in traces)
    finally:
        lab.clear(fault.fault_id)


def _routes(namespace: str) -> list[str]:
    done = subprocess.run(
        ["ip", "-n", namespace, "route", "show"], capture_output=True, text=True, check=True
    )
    return sorted(done.stdout.splitlines())


def test_host_down_stops_the_agent_and_clearing_starts_it_again(lab: Lab) -> None:
    state = lab.store.load()
    assert state is not None
    old = state.agents[A2].record()
    fault = lab.inject(HostDown(host=A2))
    try:
        assert not is_alive(old)
        assert _ok(lab.probe(FAR, A2, count=4, timeout_s=1.2)) == 0
        assert lab.status().agents_stopped_by_faults == (A2,)
        with pytest.raises(ConfigError, match="already has fault"):
            lab.inject(CpuStarve(host=A2))
    finally:
        lab.clear(fault.fault_id)
    state = lab.store.load()
    assert state is not None
    new = state.agents[A2].record()
    assert new.pid != old.pid
    assert is_alive(new)
    deadline = time.monotonic() + 30
    while _ok(lab.probe(FAR, A2, count=2, timeout_s=1.2)) < 2:  # its responder is back
        assert time.monotonic() < deadline, "the restarted agent never answered"
        time.sleep(0.5)


def test_cpu_starvation_stops_and_continues_the_agent(lab: Lab) -> None:
    state = lab.store.load()
    assert state is not None
    agent = state.agents[A].record()
    fault = lab.inject(CpuStarve(host=A, stop_ms=300, period_ms=400))
    try:
        deadline = time.monotonic() + 10
        while not is_stopped(agent):
            assert time.monotonic() < deadline, "the agent was never stopped"
            time.sleep(0.02)
        # the kernel still answers for a stopped agent: the network looks fine from outside
        assert _ok(lab.probe(FAR, A, count=4, timeout_s=2.0)) == 4
    finally:
        lab.clear(fault.fault_id)
    time.sleep(0.2)
    assert is_alive(agent)
    assert not is_stopped(agent)
    state = lab.store.load()
    assert state is not None
    assert state.helpers == {}


def test_clear_all_puts_back_every_rule_link_and_agent(lab: Lab) -> None:
    plan = lab.plan()
    before = _routes(plan.node("dc1-s1").namespace)
    lab.inject(PortBlackHole(tor=TOR))
    lab.inject(LinkDown(a="dc1-ps2-l1", b="dc1-s1"))
    lab.inject(HostDown(host="dc1-ps2-t1-h2"))
    cleared = lab.clear_all()
    assert len(cleared) == 3
    status = lab.status()
    assert status.faults == ()
    assert status.agents_running == status.agents_planned
    assert _routes(plan.node("dc1-s1").namespace) == before
    assert _ok(lab.probe(A, FAR, count=16, timeout_s=1.2)) == 16


def test_status_and_cli_show_the_lab(lab: Lab) -> None:
    status = lab.status()
    assert status.ready
    assert status.server_running
    assert status.namespaces == status.namespaces_planned == len(lab.plan().nodes)
    assert status.url == "http://198.19.240.2:8080"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pingmesh",
            "lab",
            "status",
            "--prefix",
            PREFIX,
            "--state-dir",
            str(lab.options.state_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["url"] == status.url
    assert doc["agents_running"] == 12


def test_clearing_an_unknown_fault_is_a_usage_error(lab: Lab) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pingmesh",
            "lab",
            "fault",
            "clear",
            "f999",
            "--prefix",
            PREFIX,
            "--state-dir",
            str(lab.options.state_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "no fault 'f999'" in done.stderr


# -- labs that a test builds and removes itself --------------------------------------------


def test_sweep_removes_a_lab_without_its_state_file(lab_session_clean: None) -> None:
    runner = SubprocessRunner()
    plan = build_plan(
        LabShape(podsets=1, tors=1, servers=1, leaves=1, spines=1),
        prefix=SCRATCH_PREFIX,
        mgmt_net=SCRATCH_MGMT_NET,
    )
    try:
        Fabric(plan, runner).build()
        server = plan.servers[0]
        sleeper = spawn_in_namespace(server.namespace, ["sleep", "600"], log=Path(os.devnull))
        assert is_alive(sleeper)
        with pytest.raises(LabError, match="already has"):
            Fabric(plan, runner).build()
    finally:
        report = sweep(runner, SCRATCH_PREFIX)
    assert report.namespaces == len(plan.nodes)
    assert report.processes == 1
    assert report.host_link
    assert list_namespaces(runner, SCRATCH_PREFIX) == ()
    assert not is_alive(sleeper)


def test_a_failed_lab_up_removes_what_it_made(lab_session_clean: None, tmp_path: Path) -> None:
    broken = Lab(
        LabOptions(
            prefix=SCRATCH_PREFIX,
            state_dir=tmp_path / "state",
            data_dir=tmp_path / "data",
            mgmt_net=SCRATCH_MGMT_NET,
            python="/nonexistent/python3",  # the server cannot start
        )
    )
    with pytest.raises(LabError, match="server exited at start"):
        broken.up(LabShape(podsets=1, tors=1, servers=1, leaves=1, spines=1), wait_s=0)
    assert list_namespaces(SubprocessRunner(), SCRATCH_PREFIX) == ()
    assert broken.store.load() is None
    with pytest.raises(LabError, match="no lab"):
        broken.status()


def test_lab_commands_need_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "pingmesh",
            "lab",
            "up",
            "--prefix",
            SCRATCH_PREFIX,
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert done.returncode == 1, done.stderr
    assert "the lab needs root" in done.stderr
    assert list_namespaces(SubprocessRunner(), SCRATCH_PREFIX) == ()
