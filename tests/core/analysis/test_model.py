"""Counts, findings and detector parameters refuse what cannot be."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingmesh.core.analysis.model import (
    Counts,
    DetectorConfig,
    Finding,
    Thresholds,
    pair_entity,
    tier_entity,
)

counts = st.builds(
    lambda probes, s, t, r, e, b: Counts(
        probes=probes,
        successes=min(s, probes),
        timeouts=min(t, probes - min(s, probes)),
        retransmitted=min(r, s, probes),
        drop_events=min(e, b),
        drop_basis=b,
    ),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(0, 1000),
)


@given(a=counts, b=counts)
def test_adding_then_taking_out_gives_back(a: Counts, b: Counts) -> None:
    assert (a + b).without(b) == a


@given(a=counts, b=counts)
def test_taking_out_never_goes_negative(a: Counts, b: Counts) -> None:
    rest = a.without(b)  # validated on construction: it cannot be inconsistent
    assert rest.probes <= a.probes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probes": 1, "successes": 2}, "successes"),
        ({"probes": 2, "successes": 1, "retransmitted": 2}, "retransmitted"),
        ({"drop_events": 2, "drop_basis": 1}, "drop_events"),
        ({"probes": -1}, "negative"),
    ],
)
def test_impossible_counts_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Counts(**kwargs)


def test_drop_rate_and_failures() -> None:
    c = Counts(probes=10, successes=8, timeouts=1, retransmitted=2, drop_events=2, drop_basis=8)
    assert (c.failures, c.drop_rate) == (2, 0.25)
    assert Counts().drop_rate is None


def test_names_and_parameters() -> None:
    assert pair_entity("h1", "h2") == "h1->h2"
    assert tier_entity("spine", "dc1") == "spine@dc1"
    with pytest.raises(ValueError, match="severity"):
        Finding(kind="black_hole", scope="tor", entity="t1", severity="loud")
    with pytest.raises(ValueError, match="entity"):
        Finding(kind="black_hole", scope="tor", entity="")
    with pytest.raises(ValueError, match="per_scope"):
        DetectorConfig(per_scope={"galaxy": Thresholds()})
    tight = Thresholds(drop_rate=1e-4, p99_us=500.0)
    config = DetectorConfig(per_scope={"tor": tight})
    assert config.thresholds_for("tor") == tight
    assert config.thresholds_for("dc") == Thresholds()
    with pytest.raises(ValueError, match="thresholds"):
        Thresholds(drop_rate=0.0)
