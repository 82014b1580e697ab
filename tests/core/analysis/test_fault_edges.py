"""A fault's edges are its own: what the detectors see in the windows right after a fix.

A black hole that is cleared lets the SYNs it dropped through on their retry: those probes
succeed *with a retransmission*, Pingmesh's drop signal, in the windows after the fix. Without
memory of the black hole the threshold detector blamed them on the whole DC (the lab's false
``packet_loss dc/dc1``) and the silent-drop detector on the ToR. Synthetic probes every second
(as in the lab), the retries after the fix made by hand as the Linux client makes them.
"""

from __future__ import annotations

from typing import Any

import pytest

from pingmesh.core.analysis.lifecycle import Explained, ExplanationMemory
from pingmesh.core.analysis.model import DetectorConfig, Finding
from pingmesh.core.analysis.pipeline import evaluate
from pingmesh.core.analysis.synthetic import (
    SYN_TIMES_S,
    BlackHole,
    Fabric,
    FleetShape,
    HostDown,
    ProbePlan,
    generate_probes,
    synthetic_topology,
)
from tests.core.analysis.reference import window_facts

SHAPE = FleetShape()
TOPOLOGY = synthetic_topology(SHAPE)
FABRIC = Fabric(TOPOLOGY, SHAPE)
T0 = 1_800_000_000 - 1_800_000_000 % 3600
FIX = T0 + 40.0
TOR = "dc1-ps1-t1"
CONFIG = DetectorConfig()
WINDOW_S = 10


def _retried_after_fix(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timeouts whose later SYNs left after the fix: the first of them got through."""
    out = []
    for row in rows:
        sent_s = row["time"].timestamp()
        later = [t for t in SYN_TIMES_S if sent_s + t >= FIX]
        if row["outcome"] == "timeout" and row["kind"] == "tcp" and later:
            rtt_us = later[0] * 1e6 + 90.0
            out.append(
                {
                    **row,
                    "outcome": "ok",
                    "retransmits": SYN_TIMES_S.index(later[0]),
                    "rtt_us": rtt_us,
                    "rtt_clock_us": rtt_us,
                    "detail": "",
                }
            )
        else:
            out.append(row)
    return out


def _rows(fault: BlackHole | HostDown) -> list[dict[str, Any]]:
    plan = ProbePlan(start_s=T0, end_s=T0 + 60, interval_s=1.0, faults=(fault,))
    return _retried_after_fix(list(generate_probes(TOPOLOGY, FABRIC, plan)))


def _evaluate(rows: list[dict[str, Any]], end_s: float, recent: Explained | None) -> Any:
    window = window_facts(TOPOLOGY, rows, end_s - WINDOW_S, end_s)
    return evaluate(
        TOPOLOGY,
        window=window,
        last_seen_s={s.name: end_s - 1.0 for s in TOPOLOGY.servers},
        now_s=end_s + 1.0,
        config=CONFIG,
        recent=recent,
    )


def _keys(found: tuple[Finding, ...]) -> set[tuple[str, str, str]]:
    return {f.key for f in found}


@pytest.mark.parametrize(("share", "per_port"), [(0.4, False), (0.25, True)])
def test_a_cleared_black_hole_is_not_packet_loss_of_its_dc(share: float, per_port: bool) -> None:
    # Type 1 (pairs) or type 2 (one flow in four, found from the SYN retries).
    hole = BlackHole(device=f"tor:{TOR}", share=share, per_port=per_port, start_s=T0, end_s=FIX)
    rows = _rows(hole)
    memory = ExplanationMemory()
    during = _evaluate(rows, FIX - 4, None)
    assert _keys(during.findings) == {("black_hole", "tor", TOR)}
    assert during.black_pairs
    assert during.black_tors == {TOR}
    memory.remember(
        end_s=FIX - 4, black_pairs=during.black_pairs, black_tors=during.black_tors, keep_s=60.0
    )

    after_end = FIX + 8  # the window holds the fix and the retried SYNs
    forgetful = _keys(_evaluate(rows, after_end, None).findings)
    # The bug: the retries of the black-holed SYNs look like loss at the ToR (or of the DC).
    assert forgetful & {("silent_drop", "tor", TOR), ("packet_loss", "dc", "dc1")}
    remembered = _evaluate(rows, after_end, memory.snapshot())
    assert _keys(remembered.findings) == set()


def test_memory_lasts_as_long_as_the_windows_overlap_the_fault() -> None:
    rows = _rows(BlackHole(device=f"tor:{TOR}", share=0.4, start_s=T0, end_s=FIX))
    during = _evaluate(rows, FIX - 4, None)
    memory = ExplanationMemory()
    memory.remember(end_s=FIX - 4, black_pairs=during.black_pairs, keep_s=60.0)
    # Two windows after the last that saw the black hole, the pairs are the network's again.
    late = memory.snapshot().overlapping(FIX - 4 + 2 * WINDOW_S, 2 * WINDOW_S)
    assert late.black_pairs == {}
    assert memory.snapshot().overlapping(FIX + 8 - WINDOW_S, 2 * WINDOW_S).black_pairs


def test_a_host_that_comes_back_is_not_a_black_hole() -> None:
    host = "dc1-ps1-t1-h2"
    # Its SYNs retried after it came back: with a 1 s interval the pairs towards it show
    # timeouts, then successes (some retried): a host edge, not a flow-keyed black hole.
    rows = _rows(HostDown(server=host, start_s=T0, end_s=FIX))
    during = _evaluate(rows, FIX - 4, None)
    assert ("host_down", "server", host) in _keys(during.findings) or (
        "host_unreachable",
        "server",
        host,
    ) in _keys(during.findings)
    memory = ExplanationMemory()
    memory.remember(end_s=FIX - 4, hosts=during.excluded, keep_s=60.0)
    # Without memory its retried SYNs are loss and latency of its DC, and a host that drops.
    assert _keys(_evaluate(rows, FIX + 4, None).findings)
    for end_s in (FIX + 4, FIX + 8):
        assert _keys(_evaluate(rows, end_s, memory.snapshot()).findings) == set()


def test_the_memory_forgets_what_no_horizon_reaches() -> None:
    memory = ExplanationMemory()
    memory.remember(end_s=100.0, black_pairs=[("a", "b")], hosts=["h"], keep_s=30.0)
    memory.remember(end_s=120.0, dropping_pairs=[("c", "d")], keep_s=30.0)
    assert memory.snapshot().black_pairs == {("a", "b"): 100.0}
    memory.remember(end_s=140.0, keep_s=30.0)
    snap = memory.snapshot()
    assert snap.black_pairs == {}
    assert snap.hosts == {}
    assert snap.dropping_pairs == {("c", "d"): 120.0}


def test_a_finding_seen_again_is_remembered_from_its_latest_window() -> None:
    memory = ExplanationMemory()
    memory.remember(end_s=100.0, black_pairs=[("a", "b")], keep_s=30.0)
    memory.remember(end_s=110.0, black_pairs=[("a", "b")], keep_s=30.0)
    assert memory.snapshot().black_pairs == {("a", "b"): 110.0}


def test_a_host_going_away_is_not_a_flow_keyed_black_hole() -> None:
    # For the first seconds of a host failure its pairs look like the flow-keyed pattern
    # (successes, then timeouts after every SYN retry, no retried success) — on every pair
    # towards it, to the window's end. That is the host's, not its ToR's.
    host = "dc1-ps1-t1-h2"
    fault = HostDown(server=host, start_s=T0 + 30)
    plan = ProbePlan(start_s=T0, end_s=T0 + 60, interval_s=1.0, faults=(fault,))
    rows = list(generate_probes(TOPOLOGY, FABRIC, plan))
    for end_s in range(T0 + 32, T0 + 40, 2):
        assert _keys(_evaluate(rows, end_s, None).findings) == set(), end_s
    assert _keys(_evaluate(rows, T0 + 40, None).findings) == {("host_unreachable", "server", host)}
    # A black hole's onset on some of a server's pairs is the black hole, found as early.
    hole = BlackHole(device=f"tor:{TOR}", share=0.4, start_s=T0 + 30)
    plan = ProbePlan(start_s=T0, end_s=T0 + 60, interval_s=1.0, faults=(hole,))
    rows = list(generate_probes(TOPOLOGY, FABRIC, plan))
    assert ("black_hole", "tor", TOR) in _keys(_evaluate(rows, T0 + 34, None).findings)


def test_every_pair_through_a_black_holing_tor_is_its_own_at_the_end() -> None:
    # A port black hole found only in its last windows: pairs that never showed the pattern
    # had SYNs in flight at the fix too; the ToR, remembered, explains them (the lab's false
    # host_drops on a server under the ToR, at the clear).
    hole = BlackHole(device=f"tor:{TOR}", share=0.25, per_port=True, start_s=T0, end_s=FIX)
    rows = _rows(hole)
    memory = ExplanationMemory()
    memory.remember(end_s=FIX - 4, black_tors=[TOR], keep_s=60.0)
    for end_s in (FIX + 4, FIX + 8):
        assert _keys(_evaluate(rows, end_s, memory.snapshot()).findings) == set()
