"""Hysteresis: open at once, close only after a few clear windows."""

from __future__ import annotations

import pytest

from pingmesh.core.analysis.lifecycle import Debouncer
from pingmesh.core.analysis.model import Finding


def hole(tor: str, pairs: int = 1) -> Finding:
    return Finding(kind="black_hole", scope="tor", entity=tor, evidence={"pairs": pairs})


def test_opens_at_once_and_closes_after_three_clear_windows() -> None:
    d = Debouncer(open_after=1, close_after=3)
    assert [f.entity for f in d.update([hole("t1")])] == ["t1"]
    # Not provable in the next two windows (too few probes): still open, last evidence kept.
    assert [f.evidence for f in d.update([])] == [{"pairs": 1}]
    assert [f.entity for f in d.update([])] == ["t1"]
    assert d.update([]) == []
    assert d.open_keys() == set()


def test_a_window_that_sees_it_again_resets_the_count() -> None:
    d = Debouncer(close_after=2)
    d.update([hole("t1")])
    d.update([])
    assert d.update([hole("t1", pairs=5)])[0].evidence == {"pairs": 5}
    assert d.update([]) != []
    assert d.update([]) == []


def test_open_after_two_windows() -> None:
    d = Debouncer(open_after=2, close_after=1)
    assert d.update([hole("t1")]) == []
    assert [f.entity for f in d.update([hole("t1")])] == ["t1"]
    # A one-off that never reached two windows leaves no state behind.
    d.update([hole("t2")])
    d.update([])
    assert d.open_keys() == set()


def test_seeded_findings_are_open() -> None:
    d = Debouncer(close_after=1)
    d.seed([hole("t9")])
    assert d.open_keys() == {("black_hole", "tor", "t9")}
    assert d.update([]) == []


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Debouncer(close_after=0)


def test_threshold_kinds_may_wait_longer_to_open() -> None:
    d = Debouncer(open_after=1, close_after=1, open_after_kinds={"packet_loss": 3})
    loss = Finding(kind="packet_loss", scope="dc", entity="dc1")
    assert d.update([loss, hole("t1")]) == [hole("t1")]
    assert d.update([loss, hole("t1")]) == [hole("t1")]
    # The third window in a row opens it; a localised finding that explains it would have
    # taken it out of the threshold's counts before that, and it would never have opened.
    assert {f.kind for f in d.update([loss, hole("t1")])} == {"packet_loss", "black_hole"}
    d.update([])
    assert d.update([loss]) == []
